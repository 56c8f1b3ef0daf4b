// Training runs: metrics of each evaluation over training steps, with their 95% intervals, from the SQLite
// store at artifacts/training/<run_id>.sqlite (schema: docs/architecture.md, "Training store").
import { fileUrl, get, seg } from "../api.js";
import * as charts from "../charts.js";
import { dataTable, fmt, h, link, message, route, section, mount } from "../dom.js";

const SHOWN = ["mean_reward", "pass_rate", "coverage"];

export async function trainingPage(ctx) {
  const [name] = ctx.args;
  if (!name) {
    const data = await get("/api/training");
    mount(ctx.main, h("h1", null, "Training runs"),
      data.runs.length
        ? data.runs.map((r) => section(h("span", null, link(r.run, route("training", r.run))), seriesCharts(r)))
        : section("Runs", message("no training runs: a training loop that evaluates checkpoints writes artifacts/training/<run_id>.sqlite, and its runs appear here.")),
      data.problems.length ? section("Problems", h("ul", null, data.problems.map((p) => h("li", null, p)))) : null);
    return;
  }
  const run = await get(`/api/training/${seg(name)}`);
  const picked = ctx.params.get("eval");
  const ev = run.evals.find((e) => String(e.id) === picked);
  mount(ctx.main,
    h("h1", null, link("Training runs", route("training")), " / ", name),
    section("Metrics over steps", seriesCharts(run)),
    section("Evaluations", dataTable({ name: "evals", rows: run.evals, columns: [
      { label: "step", key: "step", num: true, render: (e) => link(String(e.step), `${route("training", name)}?eval=${encodeURIComponent(e.id)}`) },
      { label: "benchmark", key: "benchmark" },
      { label: "mean reward [95% CI]", value: (e) => e.metrics.mean_reward ?? null, num: true, render: (e) => fmt.ci(metric(e.metrics, "mean_reward")) },
      { label: "pass rate [95% CI]", value: (e) => e.metrics.pass_rate ?? null, num: true, render: (e) => fmt.ci(metric(e.metrics, "pass_rate")) },
      { label: "rollouts", key: "n_rollouts", num: true },
      { label: "job", key: "job_dir", render: (e) => (e.job_dir ? e.job_dir : "–") },
      { label: "when", key: "created_at", render: (e) => fmt.date(e.created_at) },
    ] })),
    ev ? section(`Rollouts of step ${ev.step} (${ev.benchmark})`, dataTable({ name: "rollouts", rows: ev.rollouts, columns: [
      { label: "task", key: "task" }, { label: "attempt", key: "attempt", num: true },
      { label: "reward", key: "reward", num: true, render: (r) => fmt.num(r.reward, 2) }, { label: "error", key: "error_kind" },
      { label: "trajectory", key: "trajectory", render: trajectoryLink },
    ] })) : null,
  );
}

// A rollout's trajectory: its trial page when it is a job's, else the raw file.
const TRIAL = /^jobs\/([^/]+)\/([^/]+)\/agent\/litellm-trajectory\.jsonl$/;
function trajectoryLink(r) {
  if (!r.trajectory) return "–";
  const m = TRIAL.exec(r.trajectory);
  return m ? link("trajectory", route("trial", m[1], m[2])) : link("raw", fileUrl(r.trajectory), { target: "_blank" });
}

const metric = (flat, key) => (key in flat ? { value: flat[key], ci_low: flat[`${key}/ci_low`], ci_high: flat[`${key}/ci_high`] } : null);

function seriesCharts(run) {
  const out = [];
  for (const [benchmark, metrics] of Object.entries(run.series)) {
    const keys = Object.keys(metrics).sort((x, y) => (SHOWN.indexOf(x) + 1 || 99) - (SHOWN.indexOf(y) + 1 || 99) || x.localeCompare(y));
    for (const key of keys) {
      const points = metrics[key].map((p) => ({ x: p.step, value: p.value, ci_low: p.ci_low, ci_high: p.ci_high }));
      out.push(charts.band(`training-${key}`, `${benchmark}: ${key}`, points, { xTitle: "training step", yTitle: key, label: key, min: undefined }));
    }
  }
  return out.length ? h("div", { class: "charts" }, out) : message("no metrics recorded yet");
}
