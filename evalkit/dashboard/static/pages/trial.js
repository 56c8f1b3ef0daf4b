// Trial: one try's result, verdict, test output, agent logs and timings, and its trajectory call by call.
import { fileUrl, get, trialUrl } from "../api.js";
import * as charts from "../charts.js";
import { badge, fmt, h, kv, link, message, pre, route, section, mount } from "../dom.js";
import { callCard } from "./calls.js";

const PAGE = 50;

export async function trialPage(ctx) {
  const [job, tryName] = ctx.args;
  const call = Number(ctx.params.get("call") || 0);
  const offset = Math.max(0, Number(ctx.params.get("offset") ?? Math.floor(call / PAGE) * PAGE) || 0);
  const [t, calls] = await Promise.all([get(trialUrl(job, tryName)), get(`${trialUrl(job, tryName)}/trajectory`, { offset, limit: PAGE })]);
  const stats = h("div", { class: "traj-stats" }, message("counting…"));
  mount(ctx.main,
    h("h1", null, link("Jobs", route("")), " / ", link(job, route("job", job)), " / ", tryName, " ",
      t.error ? badge(t.error.kind || "error", "error") : badge(t.reward >= 1 ? "passed" : "failed", t.reward >= 1 ? "ok" : "fail")),
    section("Result", h("div", { class: "cols" },
      kv([["task", t.task], ["attempt", t.attempt], ["try", t.try_index], ["agent", t.agent],
          ["reward", t.reward === null ? "none" : fmt.num(t.reward)],
          ["rewards", t.rewards ? Object.entries(t.rewards).map(([k, v]) => `${k}=${v}`).join(", ") : "–"]]),
      kv([["error", t.error ? `${t.error.type} (${t.error.kind}${t.error.phase ? `, in ${t.error.phase}` : ""})` : "none"],
          ["exit code", t.exit_code], ["timed out", t.timed_out ? "yes" : "no"],
          ["started", fmt.date(t.started_at)], ["duration", fmt.secs(t.duration_sec)],
          ["files", h("span", null, link("result.json", fileUrl("jobs", job, tryName, "result.json"), { target: "_blank" }))]]),
    ), t.error?.message ? pre(t.error.message, { class: "text error-text" }) : null,
    t.tries.length > 1 ? h("p", null, "tries of this trial: ", t.tries.map((r) => [r.try === tryName ? h("strong", null, r.try) : link(r.try, route("trial", job, r.try)), " "])) : null),
    section("Timings", t.phases.length
      ? h("div", { class: "cols" },
          h("table", { class: "data" }, h("thead", null, h("tr", null, ["phase", "started", "finished", "seconds"].map((c) => h("th", null, c)))),
            h("tbody", null, t.phases.map((p) => h("tr", null, h("td", null, p.name), h("td", null, fmt.date(p.started_at)), h("td", null, fmt.date(p.finished_at)), h("td", { class: "num" }, fmt.secs(p.seconds)))))),
          charts.bar("trial-phases", "Seconds per phase", t.phases.map((p) => p.name), [{ label: "seconds", data: t.phases.map((p) => p.seconds) }], { horizontal: true }))
      : message("no phase timings")),
    section("Verifier", t.verdict ? pre(JSON.stringify(t.verdict, null, 2), { "data-verdict": "" }) : message("no verdict.json"),
      Object.entries(t.tests).map(([name, f]) => [h("h3", null, name, " ", link("raw", fileUrl("jobs", job, tryName, "evaluation", name), { target: "_blank", class: "small" })),
        pre(f.text), f.truncated ? message(`showing the first ${f.text.length} of ${f.size} bytes`) : null]),
      t.problems.map((p) => message(p, "warn"))),
    section("Agent logs", t.agent_logs.length ? t.agent_logs.map((f) => h("details", null,
      h("summary", null, `${f.name} (${fmt.int(f.size)} bytes)`), " ", link("raw", fileUrl("jobs", job, tryName, "agent", f.name), { target: "_blank", class: "small" }),
      f.text !== undefined ? pre(f.text) : message("not a readable file"))) : message("no agent logs")),
    section("Trajectory", t.trajectory.exists
      ? [stats, h("p", { class: "small" }, link("raw litellm-trajectory.jsonl", fileUrl("jobs", job, tryName, "agent", "litellm-trajectory.jsonl"), { target: "_blank" })),
         pager(job, tryName, calls), h("div", { class: "calls" }, calls.calls.map(callCard)), pager(job, tryName, calls),
         calls.problems.map((p) => message(p, "warn"))]
      : message("this try made no model calls through the gateway")),
  );
  if (ctx.params.get("call")) document.querySelector(`[data-call="${call}"]`)?.scrollIntoView();
  if (t.trajectory.exists) {
    get(`${trialUrl(job, tryName)}/stats`).then((s) => stats.replaceChildren(kv([
      ["calls", fmt.int(s.n_calls)], ["tool calls", fmt.int(s.n_tool_calls)], ["failed calls", fmt.int(s.n_errors)],
      ["tokens in / out", `${fmt.int(s.input_tokens)} / ${fmt.int(s.output_tokens)}`], ["cost", fmt.usd(s.cost_usd)],
      ["model time span", fmt.secs(s.duration_sec)]]))).catch((err) => stats.replaceChildren(message(err.message, "error")));
  }
}

function pager(job, tryName, page) {
  const base = route("trial", job, tryName);
  const first = page.offset, last = page.offset + page.calls.length - 1;
  return h("nav", { class: "pager" },
    page.offset > 0 ? link("‹ previous", `${base}?offset=${Math.max(0, page.offset - page.limit)}`) : h("span", { class: "muted" }, "‹ previous"),
    ` calls ${page.calls.length ? `${first}–${last}` : "none"} `,
    page.has_more ? link("next ›", `${base}?offset=${page.offset + page.limit}`) : h("span", { class: "muted" }, "next ›"));
}
