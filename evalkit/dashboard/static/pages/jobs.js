// Jobs: every job under artifacts/jobs/ with its state and scores, and the archived runs of index.yaml.
import { get } from "../api.js";
import { badge, dataTable, fmt, h, link, message, route, section, selectFilter, mount } from "../dom.js";

const tableState = {};

export async function jobsPage({ main }) {
  const data = await get("/api/jobs");
  const picked = new Set();
  const compareButton = h("button", { type: "button", disabled: true, onclick: () => {
    const [a, b] = [...picked];
    location.hash = `${route("compare")}?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`;
  } }, "Compare the two selected");
  const pick = (name) => h("input", { type: "checkbox", "aria-label": `select ${name}`, checked: picked.has(name), onchange: (e) => {
    e.target.checked ? picked.add(name) : picked.delete(name);
    compareButton.disabled = picked.size !== 2;
  } });
  const columns = [
    { label: "", key: "name", render: (j) => pick(j.name), value: () => "" },
    { label: "job", key: "name", render: (j) => link(j.name, route("job", j.name)) },
    { label: "benchmark", key: "benchmark" },
    { label: "model", key: "model" },
    { label: "agent", key: "agent" },
    { label: "started", key: "started_at", render: (j) => fmt.date(j.started_at) },
    { label: "state", key: "state", render: (j) => h("span", { title: j.state_note || "" }, badge(j.state)) },
    { label: "trials", value: (j) => j.n_done, num: true, render: (j) => `${j.n_done} / ${j.n_trials ?? "?"}` },
    { label: "mean reward [95% CI]", value: (j) => j.mean_reward?.value ?? null, num: true, render: (j) => fmt.ci(j.mean_reward) },
    { label: "pass@k", value: (j) => j.pass_at_k?.value ?? null, num: true, render: (j) => (j.pass_at_k ? `${j.pass_at_k.name} ${fmt.ci(j.pass_at_k)}` : "–") },
    { label: "coverage", key: "coverage", num: true, render: (j) => fmt.pct(j.coverage) },
    { label: "analysis", value: (j) => (j.has_analysis ? "yes" : "no"), render: (j) => (j.has_analysis ? badge("analysed", "ok") : "") },
  ];
  const state = selectFilter("state", [["", "any"], ["running", "running"], ["finished", "finished"], ["interrupted", "interrupted"]], (v, j) => !v || j.state === v);
  mount(main,
    h("h1", null, "Jobs"),
    data.jobs.length
      ? section("Jobs", dataTable({ name: "jobs", columns, rows: data.jobs, state: tableState, filters: [state] }), h("p", null, compareButton))
      : section("Jobs", message("No jobs yet: run one with `evalkit run config.yaml`; its directory appears under artifacts/jobs/.")),
    section("Archived runs (artifacts/index.yaml)", data.archived.length
      ? dataTable({ name: "archived", rows: data.archived, columns: [
          { label: "run", key: "run" },
          { label: "job", key: "job_name", render: (r) => (r.job ? link(r.job_name, route("job", r.job)) : r.job_name) },
          { label: "started", key: "started_at", render: (r) => fmt.date(r.started_at) },
          { label: "finished", key: "finished_at", render: (r) => fmt.date(r.finished_at) },
          { label: "status", key: "status", render: (r) => (r.status ? badge(r.status) : "–") },
          { label: "trials", key: "n_trials", num: true },
          { label: "mean reward", key: "mean_reward", num: true, render: (r) => fmt.num(r.mean_reward) },
          { label: "pass rate", key: "pass_rate", num: true, render: (r) => fmt.pct(r.pass_rate) },
        ] })
      : message("No archived runs.")),
    data.problems.length ? section("Problems", h("ul", null, data.problems.map((p) => h("li", null, p)))) : null,
  );
}
