// The router: the part of the URL after '#' names the page; each page module renders into <main>.
import { destroyAll } from "./charts.js";
import { h, mount } from "./dom.js";
import { jobsPage } from "./pages/jobs.js";
import { jobPage } from "./pages/job.js";
import { trialPage } from "./pages/trial.js";
import { comparePage } from "./pages/compare.js";
import { trainingPage } from "./pages/training.js";

const routes = { "": jobsPage, jobs: jobsPage, job: jobPage, trial: trialPage, compare: comparePage, training: trainingPage };
let cleanups = [];

// What the hash says: page name, decoded path parts and query parameters.
export function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map((p) => decodeURIComponent(p));
  return { page: parts[0] || "", args: parts.slice(1), params: new URLSearchParams(query) };
}

async function show() {
  for (const fn of cleanups) fn();
  cleanups = [];
  destroyAll();
  const { page, args, params } = parseHash();
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === (page === "job" || page === "trial" || page === "" ? "jobs" : page)));
  const main = document.getElementById("main");
  const render = routes[page];
  if (!render) {
    mount(main, h("p", { class: "error" }, `no such page: ${page}`));
    return;
  }
  const ctx = { main, args, params, onLeave: (fn) => cleanups.push(fn) };
  document.body.dataset.page = page || "jobs";
  document.body.dataset.ready = "0";
  try {
    await render(ctx);
  } catch (err) {
    mount(main, h("p", { class: "error" }, `could not load: ${err.message}`));
  }
  document.body.dataset.ready = "1";
}

window.addEventListener("hashchange", show);
show();
