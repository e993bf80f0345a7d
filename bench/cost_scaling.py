"""How the node's cost grows with its parameters (`d1tile cost`, docs/cost.md).

    .venv/bin/python bench/cost_scaling.py     # mac_dim 2, 4, 8; router FIFO 2, 4, 8; grids
    .venv/bin/python bench/cost_scaling.py --mac-dims 2,4 --fifo-depths 2 --grids ''
    .venv/bin/python bench/cost_scaling.py --fifo-depths '' --grids '' --plot docs/pictures/cost_scaling.png

Synthesises one node per configuration (the tiny preset with one field changed; results cached
in build/cost/, the first mac_dim 8 node takes a few minutes) and prints, per configuration,
the matrix unit's and the router's cells and NAND2 equivalents, the node's, the peak MACs per
cycle and the node's NAND2 equivalents per MAC of peak; then, per mac_dim, the matrix unit alone
computing int8 only, BF16 only and both (the node's), and what BF16 adds to an int8 unit. With
`--plot PNG`, also draws the matrix block's, the int8-only unit's and the node's NAND2
equivalents against the peak MACs per cycle of the mac_dim configurations
(`d1tile.sw.plots.cost_vs_macs`, log-log).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from d1tile.hw.cost import MATRIX_VARIANTS, CostError, matrix_unit_cost, node_cost
from d1tile.params import ConfigError, TileConfig, parse_grid


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise ValueError(f"{what} {text!r}: give comma-separated integers") from None
    return values


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mac-dims", default="2,4,8")
    ap.add_argument("--fifo-depths", default="2,4,8")
    ap.add_argument("--grids", default="2x2,8x8,16x16",
                    help="grid sizes (RxC, comma-separated): the router's coordinates widen")
    ap.add_argument("--plot", metavar="PNG",
                    help="draw cost against peak MACs per cycle (the mac_dim rows) into PNG")
    args = ap.parse_args(argv)
    try:
        base = TileConfig.preset("tiny")
        mac_dims = _ints(args.mac_dims, "--mac-dims")
        configs = [("mac_dim", n, base.replace(mac_dim=n)) for n in mac_dims]
        configs += [("router_fifo_depth", d, base.replace(router_fifo_depth=d))
                    for d in _ints(args.fifo_depths, "--fifo-depths")]
        for grid in (g for g in args.grids.split(",") if g):
            rows, cols = parse_grid(grid)
            configs.append(("grid", grid, base.with_grid(rows, cols)))
    except (ValueError, ConfigError) as exc:
        print(f"cost_scaling: {exc}", file=sys.stderr)
        return 2
    if args.plot and not Path(args.plot).absolute().parent.is_dir():   # before minutes of Yosys
        print(f"cost_scaling: --plot {args.plot}: the directory {Path(args.plot).parent} does "
              "not exist", file=sys.stderr)
        return 2
    print(f"{'field':<18}{'value':>6}{'matrix cells':>14}{'matrix NAND2':>14}"
          f"{'router NAND2':>14}{'node NAND2':>13}{'peak MACs':>11}{'NAND2/MAC':>11}{'time':>8}")
    points = []
    for field, value, cfg in configs:
        started = time.monotonic()
        try:
            report = node_cost(cfg)
        except CostError as exc:
            print(f"{field:<18}{value:>6}  failed: {exc}")
            continue
        m, r, n = report.blocks["matrix"], report.blocks["router"], report.node
        print(f"{field:<18}{value:>6}{m.cells:>14,}{m.nand2:>14,.0f}{r.nand2:>14,.0f}"
              f"{n.nand2:>13,.0f}{cfg.macs_per_cycle:>11}{n.nand2 / cfg.macs_per_cycle:>11,.0f}"
              f"{time.monotonic() - started:>7.0f}s")
        if field == "mac_dim":
            points.append(scaling_point(cfg, report))
    if mac_dims:
        print(f"\nthe matrix unit alone, by element type (NAND2 equivalents)\n"
              f"{'mac_dim':<8}{'int8':>11}{'bf16':>11}{'int8+bf16':>11}{'BF16 adds':>11}"
              f"{'ratio':>7}{'time':>7}")
    for n in mac_dims:
        started = time.monotonic()
        try:
            units = {v: matrix_unit_cost(base.replace(mac_dim=n), v)[0] for v in MATRIX_VARIANTS}
        except CostError as exc:
            print(f"{n:<8}  failed: {exc}")
            continue
        i8, bf, both = (units[v].nand2 for v in MATRIX_VARIANTS)
        print(f"{n:<8}{i8:>11,.0f}{bf:>11,.0f}{both:>11,.0f}{both - i8:>11,.0f}"
              f"{both / i8:>6.1f}x{time.monotonic() - started:>6.0f}s")
        for point in points:
            if point["macs"] == n * n:
                point["matrix unit alone, int8 only"] = i8
    if args.plot and points:
        from d1tile.sw.plots import cost_vs_macs
        cost_vs_macs(args.plot, points, "one node's cost against its peak MACs per cycle\n"
                     f"(preset tiny, {base.sram_kib} KiB SRAM; generic cells from Yosys)")
        print(f"plot: {args.plot}")
    return 0


def scaling_point(cfg: TileConfig, report) -> dict:
    """One point of the plot: the configuration's peak MACs per cycle and N, and the matrix
    block's and the node's NAND2 equivalents (`d1tile.sw.plots.cost_vs_macs`)."""
    return {"macs": cfg.macs_per_cycle, "label": f"N = {cfg.mac_dim}",
            "matrix block (int8 + BF16 unit, engine)": report.blocks["matrix"].nand2,
            "node": report.node.nand2}


if __name__ == "__main__":
    sys.exit(main())
