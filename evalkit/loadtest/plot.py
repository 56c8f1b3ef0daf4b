"""`loadtest.png`: throughput and latency against load, one point per step, the saturation point marked.

matplotlib with the Agg backend (no display, no global backend switch: the figure is drawn on its own canvas).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evalkit.loadtest.report import LoadTestReport

_LOAD_LABEL = {
    "concurrency": "requests in flight",
    "rate": "requests/s offered",
    "poisson": "requests/s offered (Poisson)",
}


def plot_report(report: LoadTestReport, path: Path) -> None:
    """Draw the sweep into `path` (PNG). Blocking: call it from a thread."""
    steps = report.steps
    loads = [s.load for s in steps]
    x_label = "trials in flight" if report.workload == "replay" else _LOAD_LABEL[report.arrival]
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    throughput, latency = figure.subplots(1, 2)

    throughput.plot(loads, [s.requests_per_sec for s in steps], "o-", color="tab:blue", label="requests/s")
    throughput.set_ylabel("completed requests/s", color="tab:blue")
    tokens = throughput.twinx()
    tokens.plot(loads, [s.output_tokens_per_sec for s in steps], "s--", color="tab:orange", label="output tokens/s")
    tokens.set_ylabel("output tokens/s", color="tab:orange")
    throughput.set_title("Throughput")

    for name, color in (("ttft_ms", "tab:green"), ("e2e_ms", "tab:red")):
        for quantile, style in (("p50", "o-"), ("p99", "^:")):
            values = [getattr(getattr(s, name), quantile) if getattr(s, name) else float("nan") for s in steps]
            latency.plot(loads, values, style, color=color, label=f"{name[:-3].upper()} {quantile}")
    latency.set_ylabel("ms")
    latency.set_yscale("log")
    latency.set_title("Latency")
    latency.legend(fontsize="small")

    for axis in (throughput, latency):
        axis.set_xlabel(x_label)
        axis.grid(alpha=0.3)
        if len(set(loads)) > 1 and min(loads) > 0 and max(loads) / min(loads) >= 8:
            axis.set_xscale("log", base=2)
        if report.saturation.at_load is not None:
            axis.axvline(report.saturation.at_load, color="grey", linestyle="--", linewidth=1)
    if report.saturation.at_load is not None:
        throughput.annotate("saturation", (report.saturation.at_load, 0), xycoords=("data", "axes fraction"),
                            xytext=(4, 8), textcoords="offset points", color="grey")
    target = "through the evalkit gateway" if report.target == "gateway" else "direct"
    figure.suptitle(f"evalkit loadtest: {report.workload}, {target}")
    figure.savefig(path, dpi=110)
