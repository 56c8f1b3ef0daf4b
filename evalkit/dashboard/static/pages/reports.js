// The analysis reports of <job>/analysis/ (evalkit/analysis/reports.py), each rendered as tables.
// Loaded after the job page is shown; a report that is missing, damaged or of an unknown shape is shown raw.
import { fileUrl } from "../api.js";
import { add, dataTable, fmt, h, link, message, pre, route, section } from "../dom.js";

const RENDERERS = {
  "status.json": statusReport,
  "report_failed.json": failedReport,
  "report_resolved.json": resolvedReport,
  "report_task_analysis.json": taskReport,
  "traj_analysis/score_comparison.json": scoreReport,
  "instance_analysis/correlations.json": correlationsReport,
  "instance_analysis/summary.json": summaryReport,
};

export function analysisSection(job, files) {
  if (!files.length) return section("Analysis", message("Not analysed yet: `evalkit analyze artifacts/jobs/<job>` writes the reports shown here."));
  const body = h("div", { class: "reports" }, message("loading reports…"));
  Promise.all(files.map(async (rel) => {
    const box = h("div", { class: "report", "data-report": rel }, h("h3", null, rel, " ", link("raw", fileUrl("jobs", job, "analysis", rel), { target: "_blank", class: "small" })));
    try {
      const response = await fetch(fileUrl("jobs", job, "analysis", rel));
      if (!response.ok) throw new Error(`${response.status}`);
      const data = JSON.parse(await response.text());
      add(box, (RENDERERS[rel] || raw)(job, data));
    } catch (err) {
      box.append(message(`unreadable: ${err.message}`, "error"));
    }
    return box;
  })).then((boxes) => body.replaceChildren(...boxes));
  return section("Analysis", body);
}

function raw(job, data) {
  return pre(JSON.stringify(data, null, 2));
}

const notes = (data) => (Array.isArray(data.notes) && data.notes.length ? h("ul", { class: "notes" }, data.notes.map((n) => h("li", null, String(n)))) : null);

function statusReport(job, data) {
  return [message(data.ok ? "all steps ran" : "some steps failed", data.ok ? "muted" : "warn"),
    Array.isArray(data.errors) && data.errors.length ? h("ul", null, data.errors.map((e) => h("li", null, String(e)))) : null];
}

function counts(obj, descriptions = {}) {
  const rows = Object.entries(obj || {}).map(([k, v]) => ({ name: k, count: v.count, fraction: v.fraction, description: descriptions[k] || "" }));
  return dataTable({ name: "counts", pageSize: 50, rows, columns: [
    { label: "", key: "name" }, { label: "count", key: "count", num: true }, { label: "share", key: "fraction", num: true, render: (r) => fmt.pct(r.fraction) },
    { label: "", key: "description" },
  ] });
}

function failedReport(job, d) {
  return [
    message(`${d.n_failed} of ${d.n_trials} trials not resolved${d.n_unreadable ? `, ${d.n_unreadable} unreadable` : ""}`),
    notes(d),
    h("h4", null, "Primary causes"), counts(d.causes, d.cause_descriptions),
    h("h4", null, "By kind"), counts(d.by_kind),
    h("h4", null, "Failed trials"),
    dataTable({ name: "failed-trials", rows: d.trials || [], pageSize: 50, columns: [
      { label: "trial", key: "trial", render: (t) => link(t.trial, route("trial", job, t.try_dir)) },
      { label: "cause", key: "cause" }, { label: "phase", key: "phase" }, { label: "error", key: "error_type" },
      { label: "reward", key: "reward", num: true, render: (t) => fmt.num(t.reward, 2) },
      { label: "failing tests", value: (t) => (t.failing_tests || []).join(", ") },
      { label: "last model error", key: "last_model_error" },
    ] }),
    d.judge ? [h("h4", null, "LLM judge"), pre(JSON.stringify(d.judge, null, 2))] : null,
  ];
}

function distributions(obj) {
  const rows = Object.entries(obj || {}).map(([feature, v]) => ({ feature, ...v }));
  return dataTable({ name: "distributions", rows, pageSize: 50, columns: [
    { label: "", key: "feature" }, { label: "n", key: "n", num: true },
    ...["mean", "median", "p10", "p90", "min", "max"].map((k) => ({ label: k, key: k, num: true, render: (r) => fmt.num(r[k], 2) })),
  ] });
}

function resolvedReport(job, d) {
  return [message(`${d.n_resolved} of ${d.n_trials} trials resolved`), notes(d), distributions(d.distributions)];
}

function taskReport(job, d) {
  const out = [notes(d), h("h4", null, "Tiers"), counts(d.tiers, d.tier_definitions)];
  for (const [key, groups] of Object.entries(d.breakdowns || {})) {
    const rows = Object.entries(groups).map(([value, g]) => ({ value, ...g }));
    out.push(h("h4", null, `By ${key}`), dataTable({ name: `breakdown-${key}`, rows, pageSize: 50, columns: [
      { label: key, key: "value" }, { label: "tasks", key: "n_tasks", num: true }, { label: "trials", key: "n_trials", num: true },
      { label: "pass rate", key: "pass_rate", num: true, render: (r) => fmt.pct(r.pass_rate) },
      { label: "mean reward", key: "mean_reward", num: true, render: (r) => fmt.num(r.mean_reward) },
    ] }));
  }
  if (d.gold) out.push(message(`gold dataset: ${d.gold.available ? `${d.gold.n_instances} instances` : "not available"}${d.gold.note ? ` — ${d.gold.note}` : ""}`));
  return out;
}

function scoreReport(job, d) {
  return [message(`${d.n_resolved} resolved vs ${d.n_unresolved} unresolved trials; ${d.effect_size || ""}`), notes(d),
    dataTable({ name: "score-comparison", rows: d.features || [], pageSize: 50, columns: [
      { label: "feature", key: "feature" },
      { label: "resolved mean", value: (f) => f.resolved?.mean ?? null, num: true, render: (f) => fmt.num(f.resolved?.mean, 2) },
      { label: "unresolved mean", value: (f) => f.unresolved?.mean ?? null, num: true, render: (f) => fmt.num(f.unresolved?.mean, 2) },
      { label: "difference", key: "mean_difference", num: true, render: (f) => fmt.num(f.mean_difference, 2) },
      { label: "Cliff's δ", key: "cliffs_delta", num: true, render: (f) => fmt.num(f.cliffs_delta, 2) },
    ] })];
}

function correlationsReport(job, d) {
  return [message(`against ${d.target}`), notes(d), dataTable({ name: "correlations", rows: d.correlations || [], pageSize: 50, columns: [
    { label: "feature", key: "feature" }, { label: "n", key: "n", num: true },
    { label: "Pearson", key: "pearson", num: true, render: (c) => fmt.num(c.pearson, 2) },
    { label: "Spearman", key: "spearman", num: true, render: (c) => fmt.num(c.spearman, 2) },
  ] })];
}

function summaryReport(job, d) {
  return [message(`${d.n_instances} instances; target ${d.target}`), notes(d), distributions(d.features)];
}
