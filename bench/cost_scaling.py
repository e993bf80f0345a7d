"""How the node's cost grows with its parameters (`d1tile cost`, docs/cost.md).

    .venv/bin/python bench/cost_scaling.py                 # mac_dim 2, 4, 8; router FIFO 2, 4, 8
    .venv/bin/python bench/cost_scaling.py --mac-dims 2,4 --fifo-depths 2

Synthesises one node per configuration (the tiny preset with one field changed; results cached
in build/cost/, the first mac_dim 8 node takes a few minutes) and prints, per configuration,
the matrix unit's and the router's cells and NAND2 equivalents, the node's, the peak MACs per
cycle and the node's NAND2 equivalents per MAC of peak.
"""

from __future__ import annotations

import argparse
import sys
import time

from d1tile.hw.cost import CostError, node_cost
from d1tile.params import ConfigError, TileConfig


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
    args = ap.parse_args(argv)
    try:
        base = TileConfig.preset("tiny")
        configs = [("mac_dim", n, base.replace(mac_dim=n))
                   for n in _ints(args.mac_dims, "--mac-dims")]
        configs += [("router_fifo_depth", d, base.replace(router_fifo_depth=d))
                    for d in _ints(args.fifo_depths, "--fifo-depths")]
    except (ValueError, ConfigError) as exc:
        print(f"cost_scaling: {exc}", file=sys.stderr)
        return 2
    print(f"{'field':<18}{'value':>6}{'matrix cells':>14}{'matrix NAND2':>14}"
          f"{'router NAND2':>14}{'node NAND2':>13}{'peak MACs':>11}{'NAND2/MAC':>11}{'time':>8}")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
