// Compare: two jobs task by task with the paired statistics of `evalkit compare`, and one task's
// trajectories from both jobs side by side, step by step.
import { get } from "../api.js";
import * as charts from "../charts.js";
import { add, dataTable, fmt, h, link, message, mount, route, section } from "../dom.js";
import { callCard } from "./calls.js";

const PAGE = 20;

export async function comparePage(ctx) {
  const p = ctx.params;
  const a = p.get("a") || "", b = p.get("b") || "", k = p.get("k") || "1";
  const list = await get("/api/jobs");
  const names = list.jobs.map((j) => j.name);
  const choose = (label, value) => h("select", { name: label, "aria-label": `job ${label}` }, h("option", { value: "" }, "(choose)"), names.map((n) => h("option", { value: n, selected: n === value }, n)));
  const selA = choose("a", a), selB = choose("b", b);
  const kIn = h("input", { type: "number", min: 1, value: k, name: "k", "aria-label": "k", class: "narrow" });
  const form = h("form", { class: "compare-form", onsubmit: (e) => {
    e.preventDefault();
    location.hash = `${route("compare")}?${new URLSearchParams({ a: selA.value, b: selB.value, k: kIn.value })}`;
  } }, "A ", selA, " B ", selB, " k ", kIn, " ", h("button", { type: "submit" }, "Compare"));
  mount(ctx.main, h("h1", null, "Compare two jobs"), section("Jobs", form));
  if (!a || !b) {
    add(ctx.main, message("Choose job A (the baseline) and job B."));
    return;
  }
  const c = await get("/api/compare", { a, b, k });
  const estimates = [c.mean_reward, c.pass_at_k].filter(Boolean);
  add(ctx.main,
    section("Verdict", h("p", { class: "verdict" }, c.verdict),
      h("table", { class: "data" },
        h("thead", null, h("tr", null, ["metric", "A", "B", "B − A", "95% CI (paired bootstrap)", "MDE"].map((x) => h("th", null, x)))),
        h("tbody", null, estimates.map((e) => h("tr", null, h("td", null, e.metric), h("td", { class: "num" }, fmt.num(e.a)), h("td", { class: "num" }, fmt.num(e.b)),
          h("td", { class: "num" }, fmt.num(e.difference)), h("td", { class: "num" }, `[${fmt.num(e.ci_low)}, ${fmt.num(e.ci_high)}]`), h("td", { class: "num" }, fmt.num(e.mde)))))),
      h("p", null, `McNemar on ${c.mcnemar.n_pairs} (task, attempt) pairs: A only ${c.mcnemar.a_only}, B only ${c.mcnemar.b_only}, both ${c.mcnemar.both}, neither ${c.mcnemar.neither}; p = ${c.mcnemar.p_value.toPrecision(4)} (${c.mcnemar.method})`),
      message(`${c.n_common_tasks} common tasks${c.only_in_a.length ? `; only in A: ${c.only_in_a.length}` : ""}${c.only_in_b.length ? `; only in B: ${c.only_in_b.length}` : ""}; ${c.n_bootstrap} bootstrap resamples, seed ${c.seed}`)),
    section("Per task", h("div", { class: "charts" }, charts.bar("task-differences", "B − A mean reward per task", c.tasks.map((t) => t.task), [{ label: "B − A", data: c.tasks.map((t) => t.difference) }], { yTitle: "difference" })),
      dataTable({ name: "compare-tasks", rows: c.tasks, columns: [
        { label: "task", key: "task", render: (t) => link(t.task, `${route("compare")}?${new URLSearchParams({ a, b, k, task: t.task })}`) },
        { label: "A mean reward", key: "a_mean_reward", num: true, render: (t) => fmt.num(t.a_mean_reward) },
        { label: "B mean reward", key: "b_mean_reward", num: true, render: (t) => fmt.num(t.b_mean_reward) },
        { label: "B − A", key: "difference", num: true, render: (t) => fmt.num(t.difference) },
        { label: `A pass@${c.k}`, key: "a_pass_at_k", num: true, render: (t) => fmt.num(t.a_pass_at_k) },
        { label: `B pass@${c.k}`, key: "b_pass_at_k", num: true, render: (t) => fmt.num(t.b_pass_at_k) },
      ] })),
  );
  add(ctx.main, await sideBySide(a, b, k, c.tasks.map((t) => t.task), p));
}

async function sideBySide(a, b, k, tasks, p) {
  const task = p.get("task") || "", attempt = p.get("attempt") || "0", offset = Number(p.get("offset") || 0);
  const go = (extra) => `${route("compare")}?${new URLSearchParams({ a, b, k, task, attempt, ...extra })}`;
  const pickTask = h("select", { "aria-label": "task", onchange: (e) => { location.hash = `${route("compare")}?${new URLSearchParams({ a, b, k, task: e.target.value, attempt })}`; } },
    h("option", { value: "" }, "(choose a task)"), tasks.map((t) => h("option", { value: t, selected: t === task }, t)));
  const pickAttempt = h("input", { type: "number", min: 0, value: attempt, class: "narrow", "aria-label": "attempt",
    onchange: (e) => { location.hash = go({ attempt: e.target.value, offset: 0 }); } });
  const box = section("Trajectories side by side", h("p", null, "task ", pickTask, " attempt ", pickAttempt));
  if (!task) return box;
  const r = await get("/api/compare/trajectories", { a, b, task, attempt, offset, limit: PAGE });
  const head = (label, job, tryName) => h("th", null, `${label}: `, tryName ? link(`${job} / ${tryName}`, route("trial", job, tryName)) : `${job} (no finished trial)`);
  add(box,
    h("table", { class: "side-by-side", "data-aligned": "" },
      h("thead", null, h("tr", null, h("th", null, "step"), head("A", a, r.a_try), head("B", b, r.b_try))),
      h("tbody", null, r.rows.map((row) => h("tr", null, h("td", { class: "num" }, row.step),
        h("td", null, row.a ? callCard(row.a) : message("—")), h("td", null, row.b ? callCard(row.b) : message("—")))))),
    r.rows.length ? null : message("neither trial made model calls"),
    h("nav", { class: "pager" },
      offset > 0 ? link("‹ previous", go({ offset: Math.max(0, offset - PAGE) })) : null, " ",
      r.has_more ? link("next ›", go({ offset: offset + PAGE })) : null),
  );
  return box;
}
