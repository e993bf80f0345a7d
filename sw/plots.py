"""Pictures, as PNG files: where a run's cycles and flits went, a mesh's latency against load,
the cost against the MACs, a training run's loss.

    for name, draw in run_plots(net, report).items():     # `d1tile run --plots DIR`
        draw(Path(DIR) / name)
    latency_vs_load("noc_latency.png", sweep, cfg.nodes, title)   # `noc-stress --sweep-rates`
    cost_vs_macs("cost_scaling.png", points)              # bench/cost_scaling.py --plot
    loss_curve("loss.png", {"tile": [...], "float32": [...]}, title)
    sweep_pareto("pareto.png", rows, title)              # `d1tile sweep` (d1tile.sw.sweep)

Each picture is two functions: one computes what is drawn from plain results (an array, a
list of numbers: what the tests check), the other draws it with a title, labelled axes and
units. The drawing uses matplotlib's object-oriented API (`matplotlib.figure.Figure`, never
`pyplot`): a figure saved to PNG is rendered by the Agg canvas, so nothing needs a display and
no global backend is chosen. A drawing function writes exactly the path it is given, as PNG
whatever its suffix (the command line writes a temporary name first, then renames), and
returns the `Figure`, whose artists hold the numbers drawn.

The pictures of a run (`run_plots`, units in the docs' "Pictures" section):

* `utilisation.png`, the per-node heat map: each node's matrix-unit busy cycles (counter
  `busy_matrix`) as a percentage of the run's cycles (to the last DONE; a batch split over
  runs: both summed over the runs). Busy counts the cycles a MATMUL occupied the unit, whatever
  share of its N x N MACs the operands used.
* `links.png`, the mesh: every directed link between neighbours, and each row's link to and
  from the host at the east edge, with the flits that crossed it, as counted by the sending
  router (`flits_out_<port>`; into the mesh from the host: the receiving router's
  `flits_in_east`) from reset until the node's counters were read back (loading, run and
  read-back traffic).
* `layers.png`: per part of the run (load, each layer, finish) its cycles beside its ideal
  (its MACs / the grid's peak MACs per cycle), the layer's utilisation written beside it: the
  report's `cycles_breakdown` and `layers` (`d1tile.sw.report`).
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from d1tile.contracts import STEP
from d1tile.formats import Port
from d1tile.params import TileConfig
from d1tile.sw.sweep import CONFIG_FIELDS, config_label


__all__ = ["RUN_PLOTS", "TRAIN_PLOTS", "train_plots", "NOC_PLOT", "matrix_busy", "link_flits", "layer_parts", "noc_points",
           "utilisation_map", "link_map", "layer_chart", "latency_vs_load", "cost_vs_macs",
           "loss_curve", "run_plots", "pareto_front", "sweep_points", "sweep_pareto"]

RUN_PLOTS = ("utilisation.png", "links.png", "layers.png")
TRAIN_PLOTS = ("loss.png",)
"""The files `d1tile run --plots DIR` writes into DIR."""

NOC_PLOT = "noc_latency.png"
"""The file `d1tile noc-stress --sweep-rates --plots DIR` writes into DIR."""

_DPI = 120


def _save(fig: Figure, path) -> None:
    fig.savefig(path, format="png", dpi=_DPI)


def _font(rows: int, cols: int) -> float:
    """Text inside a grid cell: smaller as the grid grows (8 pt on 4x4, 6 on 15x15)."""
    return max(6.0, 9.0 - 0.2 * max(rows, cols))


# -- what is drawn -----------------------------------------------------------------------------

def matrix_busy(result, cfg: TileConfig) -> np.ndarray:
    """A (rows, cols) array: node (x, y)'s matrix-unit busy cycles (`busy_matrix`) / the run's
    cycles (`result.cycles`), at [y, x]; NaN for a node the run did not report. `result` is a
    `RunResult` or anything with its `cycles` and `nodes` ((x, y) -> NodeReport): a
    `d1tile.sw.compiler.Runs` sums both over its runs."""
    busy = np.full((cfg.rows, cfg.cols), np.nan)
    for (x, y), report in result.nodes.items():
        if "busy_matrix" in report.counters:
            busy[y, x] = report.counters["busy_matrix"] / max(result.cycles, 1)
    return busy


def link_flits(result, cfg: TileConfig) -> dict:
    """{(from, to): flits} for every directed link of the mesh: between neighbours, and between
    each east-edge node (cols - 1, y) and the host, whose coordinates are (cols, y). A link's
    flits are its sender's `flits_out_<port>` counter; the host's, into the mesh, the receiving
    node's `flits_in_east`. A node the run did not report counts 0."""
    out = {}
    for y in range(cfg.rows):
        for x in range(cfg.cols):
            counters = result.nodes[(x, y)].counters if (x, y) in result.nodes else {}
            for port, (dx, dy) in STEP.items():
                to = (x + dx, y + dy)
                if 0 <= to[1] < cfg.rows and (0 <= to[0] < cfg.cols or port == Port.EAST):
                    out[((x, y), to)] = counters.get(f"flits_out_{port.name.lower()}", 0)
            if x == cfg.cols - 1:
                out[((cfg.cols, y), (x, y))] = counters.get("flits_in_east", 0)
    return out


def layer_parts(report: dict) -> list:
    """[(name, cycles, ideal cycles)] of a run report's parts in order: "load", each layer,
    "finish" (their cycles add up to the run's; load and finish have no MACs: ideal 0)."""
    parts = [("load", report["cycles_breakdown"]["load"], 0.0)]
    parts += [(layer["name"], layer["cycles"], layer["ideal_cycles"])
              for layer in report["layers"]]
    parts.append(("finish", report["cycles_breakdown"]["finish"], 0.0))
    return parts


def noc_points(sweep, nodes: int) -> dict:
    """Arrays over a noc-stress sweep [(offered load, NocStats)], sorted by load: "rate"
    (flits offered per node per cycle), "mean", "p99", "max" (latency, cycles from the head's
    injection to the tail's ejection) and "throughput" (flits delivered per node per cycle, over
    the whole run)."""
    points = sorted(sweep, key=lambda p: p[0])
    return {
        "rate": np.array([rate for rate, _ in points], dtype=float),
        "mean": np.array([s.latency_mean for _, s in points], dtype=float),
        "p99": np.array([s.latency_p99 for _, s in points], dtype=float),
        "max": np.array([s.latency_max for _, s in points], dtype=float),
        "throughput": np.array([s.flits / max(s.cycles, 1) / nodes for _, s in points]),
    }


# -- drawings ----------------------------------------------------------------------------------

def utilisation_map(path, busy: np.ndarray, title: str) -> Figure:
    """The heat map of `matrix_busy`'s array (fractions, drawn as % of the run's cycles), one
    cell per node, row 0 (north) at the top, each cell labelled with its percentage."""
    rows, cols = busy.shape
    fig = Figure(figsize=(min(max(6.5, 2.5 + 0.8 * cols), 14), min(2.0 + 0.7 * rows, 12)),
                 layout="constrained")
    ax = fig.add_subplot()
    percent = 100 * np.asarray(busy, dtype=float)
    cmap = colormaps["viridis"].with_extremes(bad="0.85")     # grey: a node not reported
    image = ax.imshow(np.ma.masked_invalid(percent), cmap=cmap, vmin=0, vmax=100)
    size = _font(rows, cols)
    for (y, x), value in np.ndenumerate(percent):
        text = "-" if math.isnan(value) else f"{value:.0f}"
        ax.text(x, y, text, ha="center", va="center", fontsize=size,
                color="white" if value <= 60 else "black")      # NaN compares False
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_xlabel("x (column; the host is east)")
    ax.set_ylabel("y (row; north at the top)")
    fig.suptitle(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="matrix unit busy (% of run cycles)")
    _save(fig, path)
    return fig


def link_map(path, cfg: TileConfig, links: dict, title: str) -> Figure:
    """The mesh: a square per node at (x, y), the host as a bar east of the last column, and an
    arrow per directed link of `links` ({(from, to): flits}, `link_flits`), coloured and
    labelled by its flits; the two directions between a pair are drawn side by side."""
    rows, cols = cfg.rows, cfg.cols
    fig = Figure(figsize=(min(3.0 + 1.3 * (cols + 1), 18), min(1.6 + 1.2 * rows, 16)),
                 layout="constrained")
    ax = fig.add_subplot()
    peak = max(links.values(), default=0)
    norm, cmap = Normalize(0, max(peak, 1)), "plasma"
    mappable = ScalarMappable(norm, cmap)
    size = _font(rows, cols)
    half = 0.22                         # half a node's square
    for y in range(rows):
        for x in range(cols):
            ax.add_patch(_square(x, y, half))
            ax.text(x, y, f"{x},{y}", ha="center", va="center", fontsize=size, color="0.3")
    host = _rectangle(cols - half + 0.1, -half, 2 * half - 0.2, rows - 1 + 2 * half)
    ax.add_patch(host)
    ax.text(cols, (rows - 1) / 2, "host", ha="center", va="center", rotation=90,
            fontsize=size + 1, color="0.3")
    offset = 0.09                       # the two directions of a link, side by side
    for (a, b), flits in sorted(links.items()):
        (ax_, ay), (bx, by) = a, b
        dx, dy = bx - ax_, by - ay
        # Shift to the right of the direction of travel (y grows downwards on the page).
        sx, sy = -dy * offset, dx * offset
        start = (ax_ + dx * half + sx, ay + dy * half + sy)
        end = (bx - dx * half + sx, by - dy * half + sy)
        if bx == cols and dx:            # to the host's bar
            end = (bx - half + 0.1 + sx, by + sy)
        if ax_ == cols and dx:           # from the host's bar
            start = (ax_ - half + 0.1 + sx, ay + sy)
        colour = mappable.to_rgba(flits)
        ax.annotate("", xy=end, xytext=start,
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.8,
                                    shrinkA=0, shrinkB=0))
        mid = ((start[0] + end[0]) / 2 + 1.6 * sx, (start[1] + end[1]) / 2 + 1.6 * sy)
        ax.text(*mid, f"{flits:,}", ha="center", va="center", fontsize=size - 1,
                rotation=90 if dy else 0, color="black", gid="flits")
    ax.set_xlim(-0.6, cols + 0.6)
    ax.set_ylim(rows - 0.4, -0.6)       # row 0 (north) at the top
    ax.set_aspect("equal")
    ax.set_xticks(range(cols + 1), [*map(str, range(cols)), "host"])
    ax.set_yticks(range(rows))
    ax.set_xlabel("x (column)")
    ax.set_ylabel("y (row; north at the top)")
    fig.suptitle(title, fontsize=10)
    fig.colorbar(mappable, ax=ax, label="flits over the link (one direction)", shrink=0.8)
    _save(fig, path)
    return fig


def _square(x, y, half):
    return _rectangle(x - half, y - half, 2 * half, 2 * half)


def _rectangle(x, y, width, height):
    return Rectangle((x, y), width, height, facecolor="0.93", edgecolor="0.5")


def layer_chart(path, parts: list, title: str) -> Figure:
    """Horizontal bars per part of the run (`layer_parts`: name, cycles, ideal): its cycles
    and, below it, its ideal cycles; a layer with MACs gets its utilisation (ideal / cycles)
    written at the end of its bar."""
    names = [name for name, _, _ in parts]
    cycles = np.array([c for _, c, _ in parts], dtype=float)
    ideal = np.array([i for _, _, i in parts], dtype=float)
    fig = Figure(figsize=(8, 1.4 + 0.55 * len(parts)), layout="constrained")
    ax = fig.add_subplot()
    at = np.arange(len(parts))
    ax.barh(at - 0.2, cycles, height=0.4, color="tab:blue", label="cycles (cycle model)")
    ax.barh(at + 0.2, ideal, height=0.4, color="tab:green",
            label="ideal: MACs / peak MACs per cycle")
    for i, (n, best) in enumerate(zip(cycles, ideal)):
        note = f"{n:,.0f}" + (f"  (utilisation {100 * best / n:.0f} %)" if best and n else "")
        ax.text(n, i - 0.2, " " + note, va="center", fontsize=8)
    ax.set_yticks(at, names)
    ax.invert_yaxis()                   # the run's order, top to bottom
    ax.set_xlim(0, max(cycles.max(initial=0), ideal.max(initial=0), 1) * 1.35)
    ax.set_xlabel("cycles")
    ax.set_ylabel("part of the run")
    fig.suptitle(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    return fig


def latency_vs_load(path, sweep, nodes: int, title: str) -> Figure:
    """Latency (mean, p99, max; cycles) against offered load (flits per node per cycle) of a
    noc-stress sweep [(rate, NocStats)] on a mesh of `nodes` nodes (`noc_points`), with the
    delivered throughput below it on the same load axis."""
    p = noc_points(sweep, nodes)
    fig = Figure(figsize=(7, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    top.plot(p["rate"], p["mean"], "o-", label="mean")
    top.plot(p["rate"], p["p99"], "s--", label="99th percentile")
    top.plot(p["rate"], p["max"], "^:", label="max")
    top.set_ylabel("latency (cycles, head injected\nto tail ejected)")
    top.set_ylim(bottom=0)
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    bottom.plot(p["rate"], p["rate"], color="0.6", lw=1, label="= offered")
    bottom.plot(p["rate"], p["throughput"], "o-", color="tab:purple", label="delivered")
    bottom.set_xlabel("offered load (flits per node per cycle)")
    bottom.set_ylabel("throughput\n(flits/node/cycle)")
    bottom.set_xlim(left=0)
    bottom.set_ylim(bottom=0)
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    _save(fig, path)
    return fig


def cost_vs_macs(path, points: list,
                 title: str = "cost against peak MACs per cycle") -> Figure:
    """Cost (NAND2 equivalents) against one node's peak MACs per cycle, log-log: one line per
    series. `points`: [{"macs": peak MACs per cycle, "label": the point's name (e.g. "N = 4"),
    and a NAND2-equivalent figure per series name, e.g. "matrix unit": ..., "node": ...}];
    a point without a series' figure is left out of that line."""
    points = sorted(points, key=lambda p: p["macs"])
    series = list(dict.fromkeys(k for p in points for k in p if k not in ("macs", "label")))
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    for name, marker in zip(series, "os^vD*"):
        have = [p for p in points if name in p]
        line, = ax.plot([p["macs"] for p in have], [p[name] for p in have], marker + "-",
                        label=name)
        for p in have:
            ax.annotate(f"{p[name]:,.0f}", (p["macs"], p[name]), textcoords="offset points",
                        xytext=(6, -10), fontsize=7, color=line.get_color())
    ax.margins(x=0.15)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    macs = [p["macs"] for p in points]
    ax.set_xticks(macs, [f"{m}\n{p.get('label', '')}" for m, p in zip(macs, points)])
    ax.minorticks_off()
    ax.set_xlabel("peak MACs per cycle (one node)")
    ax.set_ylabel("cost (NAND2 equivalents)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    return fig


def loss_curve(path, steps_losses: dict[str, list[float]], title: str, *,
               ylabel: str = "loss") -> Figure:
    """The loss against the training step, one line per named curve (e.g. {"tile": [...],
    "float32": [...]}, loss i at step i); a curve's NaN or infinite losses are left as gaps.
    `ylabel`: the loss's name and unit (default "loss")."""
    if not steps_losses:
        raise ValueError("loss_curve: no curves to draw")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, losses in steps_losses.items():
        values = np.asarray(losses, dtype=float)
        values = np.where(np.isfinite(values), values, np.nan)
        ax.plot(np.arange(len(values)), values, marker="." if len(values) <= 50 else None,
                label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    return fig


# -- a run's pictures --------------------------------------------------------------------------

def run_plots(net, report: dict) -> dict:
    """{file name (`RUN_PLOTS`): draw(path)} for a `d1tile.sw.report.NetworkRun` and its report
    (`net.report()`, with the name to show in "model"). The counters are the cycle model's run
    when it ran (with both backends they are the RTL's too: the run checks it), else the RTL's;
    the per-layer cycles are the cycle model's (`d1tile.sw.report.layer_cycles`)."""
    cfg = net.compiled.cfg
    backend = "model" if "model" in net.executions else next(iter(net.executions))
    result = net.executions[backend].result
    what = (f"{report['model']} ({report['dtype']}, batch {report['batch']}) on the "
            f"{cfg.rows}x{cfg.cols} tile, preset {cfg.name}")
    runs = report.get("runs", 1)
    over = f", {runs} runs summed" if runs > 1 else ""
    busy, links, parts = matrix_busy(result, cfg), link_flits(result, cfg), layer_parts(report)
    where = {"model": "cycle model", "rtl": "RTL"}[backend]
    return {
        "utilisation.png": lambda path: utilisation_map(
            path, busy, f"{what}\nmatrix unit busy per node, % of the run's "
                        f"{result.cycles:,} cycles ({where}{over})"),
        "links.png": lambda path: link_map(
            path, cfg, links, f"{what}\nflits per link, from reset to the counters' "
                              f"read-back ({where}{over})"),
        "layers.png": lambda path: layer_chart(
            path, parts, f"{what}\ncycles per part of the run against ideal"
                         + (f" (the last of {runs} runs)" if runs > 1 else "")),
    }


def train_plots(report: dict) -> dict:
    """{file name (`TRAIN_PLOTS`): draw(path)} for a `d1tile train` report: the loss after
    every step on the tile and in the float32 training beside it."""
    loss = "cross-entropy" if report["loss"] == "cross-entropy" else "mean squared error"
    title = (f"{report['model']}: training loss, batch {report['batch']}, "
             f"{report['epochs']} epochs of {report['steps_per_epoch']} steps")
    weights = ("FP32 master weights" if report.get("weights", "fp32") == "fp32"
               else "BF16 weights, stochastic rounding")
    curves = {f"tile (BF16 operands, {weights})": report["losses"],
              "float32 (NumPy)": report["float32_losses"]}
    return {"loss.png": lambda path: loss_curve(path, curves, title,
                                                ylabel=f"{loss} (mean over the mini-batch)")}


# -- a sweep's Pareto plot ---------------------------------------------------------------------

SWEEP_AXES = {"sram_kib": "SRAM per node (KiB)",
              "tile_nand2": "tile area proxy (NAND2 equivalents)"}
"""The x axes of `sweep_pareto`: a row's column and its label."""



def pareto_front(points) -> list[int]:
    """The indices of the points [(x, y)] that no other point beats (another with x and y no
    larger and one of them smaller; of equal points, the first), in increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def sweep_points(rows, x: str) -> dict:
    """{workload: [(x, cycles, label)]}: per workload, one point per configuration of the rows
    that ran (status "ok", with cycles and column `x`), its cycles the mean over the seeds;
    `label` names the configuration by the fields that differ between the rows' configurations
    ("2x2 N=4 KiB=8")."""
    good = [r for r in rows if r.get("status") == "ok" and r.get("cycles") is not None
            and r.get(x) is not None]
    varying = [f for f in CONFIG_FIELDS if len({r.get(f) for r in good}) > 1]
    groups = {}
    for r in good:
        config = tuple(r.get(f) for f in CONFIG_FIELDS)
        groups.setdefault(r["workload"], {}).setdefault(config, []).append(r)
    out = {}
    for workload, configs in groups.items():
        points = []
        for runs in configs.values():
            points.append((float(runs[0][x]), float(np.mean([r["cycles"] for r in runs])),
                           config_label(runs[0], varying)))
        out[workload] = sorted(points)
    return out


def sweep_pareto(path, rows, title: str) -> Figure:
    """Cycles against SRAM per node, one panel per workload, every configuration a point and
    the Pareto front (the configurations no other beats on both) joined and labelled; a second
    column of panels against the tile's area proxy when the rows have it (`cost = true`)."""
    axes_x = ["sram_kib"] + (["tile_nand2"] if any(r.get("tile_nand2") is not None
                                                   for r in rows) else [])
    data = {x: sweep_points(rows, x) for x in axes_x}
    workloads = list(dict.fromkeys(w for x in axes_x for w in data[x]))
    n = max(len(workloads), 1)
    fig = Figure(figsize=(6.5 * len(axes_x), 1.2 + 3.4 * n), layout="constrained")
    grid = np.atleast_2d(np.asarray(fig.subplots(n, len(axes_x), squeeze=False)))
    if not workloads:
        for ax in grid[0]:
            ax.text(0.5, 0.5, "no point ran (see the error column)", ha="center",
                    va="center", transform=ax.transAxes)
            ax.set_axis_off()
    for row, workload in enumerate(workloads):
        for col, x in enumerate(axes_x):
            ax = grid[row, col]
            points = data[x].get(workload, [])
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            ax.plot(xs, ys, "o", color="0.65", ms=5, label="configuration")
            front = [points[i] for i in pareto_front([(p[0], p[1]) for p in points])]
            if front:
                ax.plot([p[0] for p in front], [p[1] for p in front], "o-",
                        drawstyle="steps-post", color="tab:red", ms=6, label="Pareto front")
                right = max(xs)
                for fx, fy, label in front:     # the rightmost label goes to its left
                    ax.annotate(label, (fx, fy), textcoords="offset points",
                                xytext=(-5, 4) if fx == right and len(set(xs)) > 1 else (5, 4),
                                ha="right" if fx == right and len(set(xs)) > 1 else "left",
                                fontsize=7, color="tab:red")
            if x == "sram_kib":
                ax.set_xscale("log", base=2)
                ticks = sorted(set(xs))
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
                ax.minorticks_off()
            else:
                ax.set_xscale("log")
            if ys and max(ys) > 20 * min(ys):
                ax.set_yscale("log")
            ax.margins(x=0.12, y=0.12)
            ax.set_xlabel(SWEEP_AXES[x])
            ax.set_ylabel("cycles (mean over seeds)")
            ax.set_title(workload, fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if row == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"{title}\ncycles against cost, lower left is better", fontsize=10)
    _save(fig, path)
    return fig
