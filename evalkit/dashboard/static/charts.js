// Charts through the vendored Chart.js (static/vendor/chart.umd.min.js, loaded as window.Chart).
// Every chart made while a page is shown is destroyed when the page changes.
import { h } from "./dom.js";

const Chart = window.Chart;
Chart.defaults.animation = false;
Chart.defaults.maintainAspectRatio = false;
Chart.defaults.font.family = "system-ui, sans-serif";

const live = new Set();
const BLUE = "#2f6fb3";
const BAND = "rgba(47, 111, 179, 0.18)";
const PALETTE = ["#2f6fb3", "#d9822b", "#3a9d5d", "#c23b3b", "#7d5ba6", "#8c6d31", "#c2549d", "#5f6b73"];

export function destroyAll() {
  for (const chart of live) chart.destroy();
  live.clear();
}

// A titled canvas; `name` is what tests and people look for (data-chart="…").
function frame(name, title, build) {
  const canvas = h("canvas", { "data-chart": name, "aria-label": title, role: "img" });
  const box = h("figure", { class: "chart" }, h("figcaption", null, title), h("div", { class: "chart-box" }, canvas));
  live.add(new Chart(canvas, build()));
  return box;
}

export function bar(name, title, labels, datasets, { horizontal = false, stacked = false, xTitle, yTitle } = {}) {
  return frame(name, title, () => ({
    type: "bar",
    data: { labels, datasets: datasets.map((d, i) => ({ backgroundColor: PALETTE[i % PALETTE.length], ...d })) },
    options: {
      indexAxis: horizontal ? "y" : "x",
      plugins: { legend: { display: datasets.length > 1 } },
      scales: {
        x: { stacked, title: { display: !!xTitle, text: xTitle } },
        y: { stacked, beginAtZero: true, title: { display: !!yTitle, text: yTitle } },
      },
    },
  }));
}

// A metric over x with its confidence band (the area between ci_low and ci_high).
export function band(name, title, points, { xTitle, yTitle, label = "value", min = 0, max } = {}) {
  const xy = (key) => points.map((p) => ({ x: p.x, y: p[key] ?? null }));
  return frame(name, title, () => ({
    type: "line",
    data: {
      datasets: [
        { label: "95% CI low", data: xy("ci_low"), borderWidth: 0, pointRadius: 0, fill: false },
        { label: "95% CI", data: xy("ci_high"), borderWidth: 0, pointRadius: 0, backgroundColor: BAND, fill: "-1" },
        { label, data: xy("value"), borderColor: BLUE, backgroundColor: BLUE, pointRadius: 3, fill: false },
      ],
    },
    options: {
      parsing: true,
      plugins: { legend: { labels: { filter: (item) => item.text !== "95% CI low" } } },
      scales: {
        x: { type: "linear", title: { display: !!xTitle, text: xTitle }, ticks: { precision: 0 } },
        y: { min, max, title: { display: !!yTitle, text: yTitle } },
      },
    },
  }));
}

// A step function over time (e.g. trials in flight).
export function steps(name, title, xs, ys, { xTitle, yTitle } = {}) {
  return frame(name, title, () => ({
    type: "line",
    data: { datasets: [{ label: yTitle || "value", data: xs.map((x, i) => ({ x, y: ys[i] })), stepped: true, borderColor: BLUE, pointRadius: 0, fill: false }] },
    options: {
      plugins: { legend: { display: false } },
      scales: {
        x: { type: "linear", title: { display: !!xTitle, text: xTitle } },
        y: { beginAtZero: true, ticks: { precision: 0 }, title: { display: !!yTitle, text: yTitle } },
      },
    },
  }));
}
