"""Pareto plots of a search, as PNG (matplotlib) and interactive HTML (plotly).

One function computes what a plot shows; the two renderers only draw it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from objectives.pareto import ACCURACY_METRICS
from search.spec import SearchSpec
from search.study import Row, feasible_front, front_hypervolume

AXES = {"latency_ms_p90": "latency (ms, p90)", "size_bytes": "size (bytes of weights)",
        "energy_mj": "energy per inference (mJ)"}


INTERACTIVE_FILE = "interactive.html"

# Above this ratio between the largest and smallest x, the axis is logarithmic: candidates 100x over the budget
# would otherwise squeeze every feasible point into one vertical line at the left.
LOG_AXIS_RATIO = 20.0


@dataclass(frozen=True)
class ScatterInfo:
    x_metric: str
    x_label: str
    points: list[tuple[float, float, bool, str]]  # x, accuracy, feasible, hover text
    front: list[tuple[float, float, int]]  # x, accuracy, trial number
    budget: float | None
    provenance: str
    floor: float | None = None  # the accuracy floor, when the search has one
    y_label: str = "accuracy"  # the search's accuracy metric, in words

    @property
    def log_x(self) -> bool:
        xs = [p[0] for p in self.points if p[0] > 0] + ([self.budget] if self.budget else [])
        return bool(xs) and max(xs) / min(xs) > LOG_AXIS_RATIO


def _hover(r: Row) -> str:
    k = r.knobs
    return (f"trial {r.number}<br>{k['precision']} width {k['width']:g}<br>sparsity {k['sparsity']:g} "
            f"({k['pruning']})<br>T {k['temperature']:g}, alpha {k['alpha']:g}")


def scatter_info(all_rows: list[Row], front: list[Row], x_metric: str, spec: SearchSpec,
                 floor: float | None = None) -> ScatterInfo | None:
    done = [r for r in all_rows if r.state == "COMPLETE" and x_metric in r.metrics and r.reused_from is None]
    if not done:
        return None
    points = [(r.value(x_metric), r.quality, r.feasible, _hover(r)) for r in done]
    line = sorted((r.value(x_metric), r.quality, r.number) for r in front if x_metric in r.metrics)
    provenance = ", ".join(sorted({r.metrics[x_metric][2] for r in done}))
    return ScatterInfo(x_metric, AXES.get(x_metric, x_metric), points, line,
                       spec.latency_budget_ms if x_metric == "latency_ms_p90" else None, provenance, floor,
                       ACCURACY_METRICS[spec.metric])


def staircase(front: list[tuple[float, float, int]]) -> list[tuple[float, float]]:
    """The front's points that no other beats on both axes of this view (x down, accuracy up), by x: the step line.
    A point of the four-objective front can lie below it when it wins on an objective the view does not show."""
    steps: list[tuple[float, float]] = []
    for x, y, _ in sorted(front, key=lambda p: (p[0], -p[1])):
        if not steps or y > steps[-1][1]:
            steps.append((x, y))
    return steps


def hypervolume_history(all_rows: list[Row], bounds: list[float]) -> list[tuple[int, float]]:
    """Normalised hypervolume of the feasible front after each finished trial."""
    ordered = sorted(all_rows, key=lambda r: r.number)
    return [(i + 1, front_hypervolume(feasible_front(ordered[: i + 1]), bounds)) for i in range(len(ordered))]


@contextmanager
def png_axes(path: Path, size: tuple[float, float] = (7, 4.5)):
    """Axes of a new headless matplotlib figure, laid out and written to ``path`` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=110)
    try:
        yield ax
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _png(info: ScatterInfo, path: Path, title: str) -> Path:
    with png_axes(path) as ax:
        _draw_scatter(ax, info, title)
    return path


def _draw_scatter(ax, info: ScatterInfo, title: str) -> None:
    if info.log_x:
        ax.set_xscale("log")
    for feasible, style in ((True, dict(c="tab:blue", marker="o", label="feasible")),
                            (False, dict(c="tab:gray", marker="x", label="infeasible"))):
        pts = [(x, y) for x, y, f, _ in info.points if f == feasible]
        if pts:
            ax.scatter(*zip(*pts), **style)
    if info.front:
        xs, ys, _ = zip(*info.front)
        ax.scatter(xs, ys, s=110, facecolors="none", edgecolors="tab:red", label="feasible Pareto front (all objectives)")
        ax.step(*zip(*staircase(info.front)), where="post", color="tab:red", label="front in this view")
        for x, y, n in info.front:
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="tab:red")
    if info.budget is not None:
        ax.axvline(info.budget, color="tab:orange", linestyle="--", label=f"latency budget {info.budget:g} ms")
        ax.axvspan(info.budget, max([info.budget * 1.05] + [p[0] for p in info.points]) * 1.1, color="tab:gray",
                   alpha=0.12, label="over budget")
    if info.floor is not None:
        ax.axhline(info.floor, color="tab:purple", linestyle=":", label=f"{info.y_label} floor {info.floor:.3f}")
    ax.set_xlabel(f"{info.x_label} [{info.provenance}]")
    ax.set_ylabel(f"{info.y_label} (validation, compiled artifact)")
    ax.set_title(title)
    # below the axes: inside, "best" still covered points (the budget's span leaves it little room)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, frameon=False)


def _scatter_plotly(info: ScatterInfo, title: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    for feasible, name, symbol in ((True, "feasible", "circle"), (False, "infeasible (over budget)", "x")):
        pts = [p for p in info.points if p[2] == feasible]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name=name,
                                     marker_symbol=symbol, text=[p[3] for p in pts], hoverinfo="text+x+y"))
    if info.front:
        fig.add_trace(go.Scatter(x=[p[0] for p in info.front], y=[p[1] for p in info.front], mode="markers+text",
                                 name="feasible Pareto front (all objectives)", marker=dict(size=14, symbol="circle-open"),
                                 text=[f"trial {p[2]}" for p in info.front], textposition="top left"))
        line = staircase(info.front)
        fig.add_trace(go.Scatter(x=[p[0] for p in line], y=[p[1] for p in line], mode="lines", line_shape="hv",
                                 name="front in this view"))
    if info.budget is not None:
        # the budget's label left of its line, the region's at its right edge: both at the line wrote one on the other
        fig.add_vline(x=info.budget, line_dash="dash", annotation_text=f"budget {info.budget:g} ms",
                      annotation_position="top left")
        fig.add_vrect(x0=info.budget, x1=max([info.budget * 1.05] + [p[0] for p in info.points]) * 1.1,
                      fillcolor="grey", opacity=0.12, line_width=0, annotation_text="over budget",
                      annotation_position="top right")
    if info.log_x:
        fig.update_xaxes(type="log")
    if info.floor is not None:
        fig.add_hline(y=info.floor, line_dash="dot", annotation_text=f"{info.y_label} floor {info.floor:.3f}")
    fig.update_layout(title=title, xaxis_title=f"{info.x_label} [{info.provenance}]",
                      yaxis_title=f"{info.y_label} (validation, compiled artifact)")
    return fig


def summary_columns(metric: str = "accuracy") -> tuple[str, ...]:
    """The front table's header; ``metric`` is the search's accuracy metric."""
    return ("trial", "precision", "width", "sparsity", ACCURACY_METRICS[metric], "p90 ms", "KiB", "mJ")


def front_table(front: list[Row]) -> list[tuple[str, ...]]:
    """The knobs and objectives of the front, one row per candidate, most accurate first."""
    table = []
    for r in sorted(front, key=lambda r: -r.quality):
        k = r.knobs
        pruned = f"{k['sparsity']:g} {k['pruning']}" if k["sparsity"] else "0"  # an unpruned model's mode: none
        table.append((str(r.number), k["precision"], f"{k['width']:g}", pruned,
                      f"{r.quality:.4f}", f"{r.value('latency_ms_p90'):.4g}",
                      f"{r.value('size_bytes') / 1024:.1f}", f"{r.value('energy_mj'):.3g}"))
    return table


def summary_figure(all_rows: list[Row], front: list[Row], spec: SearchSpec, path: Path, bounds: list[float],
                   floor: float | None = None) -> Path | None:
    """One picture of a search: accuracy vs latency with the front, hypervolume over trials, the front's knobs."""
    info = scatter_info(all_rows, front, "latency_ms_p90", spec, floor)
    history = hypervolume_history(all_rows, bounds)
    if info is None or not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = front_table(front)
    fig = plt.figure(figsize=(11, 5 + 0.3 * len(table)), dpi=110)
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 0.5 + 0.3 * max(1, len(table))], width_ratios=[1.5, 1])
    try:
        _draw_scatter(fig.add_subplot(grid[0, 0]), info, "accuracy vs p90 latency")
        ax = fig.add_subplot(grid[0, 1])
        ax.plot(*zip(*history), marker=".")
        ax.set_xlabel("finished trials")
        ax.set_ylabel("normalised hypervolume (0-1)")
        ax.set_ylim(0, max(0.05, min(1.0, max(hv for _, hv in history) * 1.15)))
        ax.set_title("hypervolume of the feasible front")
        for a in fig.axes:
            a.grid(alpha=0.3)
        ax = fig.add_subplot(grid[1, :])
        ax.axis("off")
        if table:
            cells = ax.table(cellText=table, colLabels=summary_columns(spec.metric), loc="upper center",
                             cellLoc="center")
            cells.auto_set_font_size(False)
            cells.set_fontsize(9)
            cells.scale(1, 1.3)
            ax.set_title(f"the feasible front ({len(table)} candidate{'s' if len(table) > 1 else ''}); latency "
                         f"{info.provenance}", fontsize=9)
        else:
            ax.set_title("no candidate met the latency budget", fontsize=9)
        fig.suptitle(f"search {spec.name}: {spec.dataset} on {spec.target}, budget {spec.latency_budget_ms:g} ms "
                     f"(p90), {len(all_rows)} trials")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def pareto_figures(all_rows: list[Row], front: list[Row], spec: SearchSpec, out_dir: Path, bounds: list[float],
                   floor: float | None = None, interactive: bool = True) -> list[Path]:
    """Every plot of the parent run, written to ``out_dir``: a PNG per view, and with ``interactive`` one HTML page
    of them all with the knobs on hover (``INTERACTIVE_FILE``)."""
    out, figures = [], []
    for metric in ("latency_ms_p90", "size_bytes", "energy_mj"):
        info = scatter_info(all_rows, front, metric, spec, floor)
        if info is None:
            continue
        stem = f"pareto_accuracy_vs_{metric.split('_')[0]}"
        title = f"{spec.name}: accuracy vs {metric.split('_')[0]} on {spec.target}"
        out.append(_png(info, out_dir / f"{stem}.png", title))
        if interactive:
            figures.append(_scatter_plotly(info, title))
    history = hypervolume_history(all_rows, bounds)
    if history:
        out.append(_hypervolume_png(history, out_dir / "hypervolume.png", spec))
    if interactive and (parallel := _parallel_plotly(all_rows)):
        figures.append(parallel)
    if figures:
        out.append(_page(figures, out_dir / INTERACTIVE_FILE, f"{spec.name}: Pareto views and knobs"))
    return out


def _page(figures: list, path: Path, title: str) -> Path:
    """One HTML page of plotly figures that carries plotly.js once: 4.8 MB of script each would make every
    figure a file of that size in the store, sent again to a tracking server each time it is logged."""
    import html

    parts = [fig.to_html(full_html=False, include_plotlyjs=i == 0) for i, fig in enumerate(figures)]
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
                    f"<body>{''.join(parts)}</body></html>")
    return path


def _hypervolume_png(history, path: Path, spec: SearchSpec) -> Path:
    with png_axes(path, (6, 3.5)) as ax:
        ax.plot(*zip(*history), marker=".")
        ax.set_xlabel("finished trials")
        ax.set_ylabel("normalised hypervolume (0-1)")
        ax.set_ylim(0, max(0.05, min(1.0, max(hv for _, hv in history) * 1.15)))
        ax.set_title(f"{spec.name}: hypervolume of the feasible front (accuracy, latency/budget, size, energy "
                     "on a unit scale)", fontsize=8)
    return path


def _parallel_plotly(all_rows: list[Row]):
    import plotly.graph_objects as go

    done = [r for r in all_rows if r.state == "COMPLETE" and r.reused_from is None]
    if not done:
        return None
    precisions = sorted({r.knobs["precision"] for r in done})
    dims = [dict(label="precision", values=[precisions.index(r.knobs["precision"]) for r in done],
                 tickvals=list(range(len(precisions))), ticktext=precisions)]
    dims += [dict(label=k, values=[float(r.knobs[k]) for r in done]) for k in ("width", "sparsity", "temperature",
                                                                                  "alpha")]
    metric = done[0].objective
    dims += [dict(label=m, values=[r.value(m) for r in done]) for m in (metric, "latency_ms_p90", "size_bytes")]
    fig = go.Figure(go.Parcoords(line=dict(color=[r.quality for r in done], colorscale="Viridis",
                                           showscale=True), dimensions=dims))
    fig.update_layout(title=f"knobs -> objectives (colour: {ACCURACY_METRICS[metric]})")
    return fig
