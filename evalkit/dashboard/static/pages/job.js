// Job: scores, charts, the per-task table, the analysis reports, a regex search over the trajectories;
// while the job runs, a server-sent-event stream triggers a reload whenever its files change.
import { fileUrl, get, jobUrl, seg } from "../api.js";
import * as charts from "../charts.js";
import { destroyAll } from "../charts.js";
import { badge, dataTable, fmt, h, kv, link, message, route, section, selectFilter, mount } from "../dom.js";
import { analysisSection } from "./reports.js";

const tableStates = new Map();

export async function jobPage(ctx) {
  const [name] = ctx.args;
  const state = tableStates.get(name) || {};
  tableStates.set(name, state);
  let source = null;
  let timer = null;
  const reload = async () => {
    const data = await get(jobUrl(name));
    destroyAll();
    mount(ctx.main, ...render(name, data, state));
    if (data.summary.state === "running" && !source) {
      source = new EventSource(`${jobUrl(name)}/events`);
      source.addEventListener("change", (e) => {
        clearTimeout(timer);
        timer = setTimeout(() => reload().catch(() => {}), 300);
        if (!JSON.parse(e.data).running) { source.close(); source = null; }
      });
    }
    document.getElementById("status").replaceChildren(source ? badge("live", "running") : "");
  };
  ctx.onLeave(() => { clearTimeout(timer); source?.close(); document.getElementById("status").replaceChildren(); });
  await reload();
}

function render(name, data, state) {
  const s = data.summary;
  return [
    h("h1", null, h("a", { href: route("") }, "Jobs"), " / ", name, " ", badge(s.state)),
    s.state_note ? message(s.state_note, "warn") : null,
    section("Summary", h("div", { class: "cols" },
      kv([
        ["benchmark", s.benchmark], ["model", s.model], ["agent", s.agent], ["job id", s.job_id],
        ["started", fmt.date(s.started_at)], ["updated", fmt.date(s.updated_at)],
        ["attempts per task", data.config.n_attempts], ["concurrency", data.config.n_concurrent],
      ]),
      kv([
        ["trials done", `${s.n_done} / ${s.n_trials ?? "?"}`], ["errored", s.n_errored],
        ["mean reward [95% CI]", fmt.ci(s.mean_reward)], ["pass rate [95% CI]", fmt.ci(s.pass_rate)],
        [s.pass_at_k ? s.pass_at_k.name : "pass@k", fmt.ci(s.pass_at_k)], ["coverage", fmt.pct(s.coverage)],
        ["files", h("span", null, ["config.yaml", "results.json", "job.json"].map((f) => [link(f, fileUrl("jobs", name, f), { target: "_blank" }), " "]))],
      ]),
    ), data.metrics ? message(`${data.metrics.denominator}. ${data.metrics.interval}`, "muted small") : null),
    section("Charts", h("div", { class: "charts" }, chartsOf(data))),
    section("Tasks", tasksTable(name, data.tasks, state)),
    searchSection(name),
    analysisSection(name, data.analysis),
    data.unreadable.length || s.problems.length
      ? section("Problems", h("ul", null, s.problems.map((p) => h("li", null, p))))
      : null,
  ];
}

function chartsOf(data) {
  const out = [];
  const hist = data.reward_histogram;
  out.push(hist.counts.length ? charts.bar("reward-distribution", "Reward distribution (final tries)", hist.labels, [{ label: "trials", data: hist.counts }], { xTitle: "reward", yTitle: "trials" })
                              : emptyChart("reward-distribution", "Reward distribution", "no finished trial yet"));
  const curve = data.pass_at_k_curve.map((m) => ({ x: m.k, value: m.value, ci_low: m.ci_low, ci_high: m.ci_high }));
  out.push(curve.length ? charts.band("pass-at-k", "pass@k over k (95% CI across tasks)", curve, { xTitle: "k", yTitle: "pass@k", label: "pass@k", max: 1 })
                        : emptyChart("pass-at-k", "pass@k over k", "no finished trial yet"));
  const phases = Object.entries(data.phases);
  out.push(phases.length
    ? charts.bar("phase-times", "Time per phase (seconds)", phases.map(([p]) => p), [
        { label: "mean", data: phases.map(([, v]) => v.mean_sec) },
        { label: "p95", data: phases.map(([, v]) => v.p95_sec) },
      ], { horizontal: true, xTitle: "seconds" })
    : emptyChart("phase-times", "Time per phase", "no phase timings"));
  const errors = data.errors.causes || data.errors.by_type;
  const entries = Object.entries(errors || {});
  out.push(entries.length
    ? charts.bar("error-causes", data.errors.causes ? "Failure causes (analysis)" : "Errors by type (final tries)", entries.map(([k]) => k), [{ label: "trials", data: entries.map(([, v]) => v) }], { horizontal: true, xTitle: "trials" })
    : emptyChart("error-causes", "Errors", "no errors"));
  const c = data.concurrency;
  out.push(c.t.length ? charts.steps("concurrency", "Tries in flight", c.t, c.n, { xTitle: "seconds since the first start", yTitle: "tries" })
                      : emptyChart("concurrency", "Tries in flight", "no timings"));
  return out;
}

function emptyChart(name, title, why) {
  return h("figure", { class: "chart", "data-chart-empty": name }, h("figcaption", null, title), message(why));
}

function attemptChip(job, a) {
  const kind = a.error ? "error" : a.reward === null ? "none" : a.reward >= 1 ? "pass" : "fail";
  const label = a.reward === null ? (a.error || "no reward") : fmt.num(a.reward, 2);
  return link(label, route("trial", job, a.try), { class: `chip chip-${kind}`, title: `attempt ${a.attempt}${a.tries > 1 ? `, ${a.tries} tries` : ""}${a.error ? `: ${a.error}` : ""}` });
}

function tasksTable(job, rows, state) {
  const show = selectFilter("show", [["", "all tasks"], ["failing", "not all passed"], ["errors", "with errors"]], (v, r) =>
    !v || (v === "errors" ? r.n_errors > 0 : r.attempts.some((a) => !(a.reward >= 1))));
  return dataTable({
    name: "tasks", rows, state, filters: [show],
    columns: [
      { label: "task", key: "task" },
      { label: "attempts (reward)", value: (r) => r.attempts.map((a) => a.reward).join(" "), render: (r) => h("span", { class: "chips" }, r.attempts.map((a) => attemptChip(job, a))) },
      { label: "mean reward", key: "mean_reward", num: true, render: (r) => fmt.num(r.mean_reward) },
      { label: "errors", value: (r) => r.attempts.map((a) => a.error).filter(Boolean).join(", ") || null, render: (r) => r.attempts.map((a) => a.error).filter(Boolean).join(", ") },
      { label: "duration", key: "duration_sec", num: true, render: (r) => fmt.secs(r.duration_sec) },
      { label: "tokens in", key: "input_tokens", num: true, render: (r) => fmt.int(r.input_tokens) },
      { label: "tokens out", key: "output_tokens", num: true, render: (r) => fmt.int(r.output_tokens) },
      { label: "cost", key: "cost_usd", num: true, render: (r) => fmt.usd(r.cost_usd) },
    ],
  });
}

function searchSection(job) {
  const input = h("input", { type: "search", name: "q", placeholder: "regular expression, e.g. Traceback|error:", size: 40, "aria-label": "search pattern" });
  const caseBox = h("input", { type: "checkbox", "aria-label": "match case" });
  const out = h("div", { class: "search-results" });
  const run = async (e) => {
    e.preventDefault();
    out.replaceChildren(message("searching…"));
    try {
      const r = await get(`/api/jobs/${seg(job)}/search`, { q: input.value, case: caseBox.checked ? "1" : "" });
      const note = [`${r.matches.length} match${r.matches.length === 1 ? "" : "es"} in ${r.searched_calls} calls of ${r.searched_trials} trials`,
        r.truncated ? ` (stopped at ${r.max_matches})` : "", r.timed_out ? ` (stopped after ${r.seconds} s)` : ""].join("");
      out.replaceChildren(message(note), h("ol", { class: "matches" }, r.matches.map((m) => h("li", null,
        link(`${m.try} · call ${m.index}`, `${route("trial", job, m.try)}?call=${m.index}`), ` ${m.where}: `,
        h("code", null, m.before, h("mark", null, m.match), m.after)))));
    } catch (err) {
      out.replaceChildren(message(err.message, "error"));
    }
  };
  return section("Search the trajectories",
    h("form", { class: "search", onsubmit: run }, input, h("label", null, caseBox, " match case"), h("button", { type: "submit" }, "Search")), out);
}
