"""MAC utilisation of the toy models (sklearn digits MLP and CNN) compiled onto the tile.

    .venv/bin/python bench/toy_utilisation.py                    # default 4x4, whole test set
    .venv/bin/python bench/toy_utilisation.py --batch 64 --preset default --grid 2x2

For each toy model (`d1tile.sw.toy_models`), compiles it for one batch of test images, runs it
on the cycle model with the issue trace (`d1tile.sw.report.run_network`), checks the logits
bit for bit against the integer reference, and prints:

* `cycles` (reset to the last DONE: loading included), `ideal_cycles` = the network's MACs /
  the grid's peak, utilisation = ideal / cycles;
* `tile MACs`: what the matrix units multiply (unrolled convolution zeros inside K windows,
  pooling candidates), and the matrix units' busy share over the run (sum of `busy_matrix`
  over the nodes / (nodes x cycles));
* per layer (load, each layer, finish; they add up to `cycles`): cycles, ideal cycles and
  utilisation.
"""

from __future__ import annotations

import argparse
import sys
import time

from d1tile.params import ConfigError, TileConfig, parse_grid
from d1tile.sw.compiler import compile_model
from d1tile.sw.report import run_network
from d1tile.sw.toy_models import TOY_MODELS, digits_split


def measure(cfg: TileConfig, name: str, batch: int) -> dict:
    toy = TOY_MODELS[name](batch=batch)
    start = time.perf_counter()
    compiled = compile_model(toy.model, cfg, toy.calib_x)
    net = run_network(compiled, toy.test_x[:batch], labels=toy.test_y[:batch])
    wall = time.perf_counter() - start
    report = net.report()
    if not report["bit_exact"]:
        raise RuntimeError(f"{name}: the tile's logits differ from the integer reference")
    result = net.executions["model"].result
    busy = sum(r.counters["busy_matrix"] for r in result.nodes.values())
    report["matrix_busy"] = busy / (cfg.nodes * result.cycles)
    report["wall"] = wall
    return report


def show(report: dict, out=print) -> None:
    cycles = report["cycles"]["model"]
    out(f"{report['model']}: batch {report['batch']} on {report['preset']} "
        f"{report['grid']} ({report['peak_macs_per_cycle']} MACs/cycle), "
        f"bit-exact, {report['wall']:.1f} s wall")
    acc = report["accuracy"]
    out(f"  cycles {cycles:,}   ideal {report['ideal_cycles']:,.0f}   utilisation "
        f"{100 * report['mac_utilisation']['model']:.1f} %   accuracy int8 "
        f"{100 * acc['tile']:.1f} % (float {100 * acc['float']:.1f} %)")
    out(f"  MACs {report['macs']:,} (network)   {report['tile_macs']:,} (matrix units, "
        f"{report['tile_macs'] / report['macs']:.2f}x)   matrix units busy "
        f"{100 * report['matrix_busy']:.1f} % of node-cycles")
    out(f"  {'part':<24}{'cycles':>9}{'share':>8}{'ideal':>9}{'util.':>8}")
    rows = [("load", report["cycles_breakdown"]["load"], None)]
    rows += [(layer["name"], layer["cycles"], layer["ideal_cycles"]) for layer in report["layers"]]
    rows.append(("finish", report["cycles_breakdown"]["finish"], None))
    for part, n, ideal in rows:
        util = f"{100 * ideal / n:7.1f}%" if ideal and n else f"{'':8}"
        ideal_text = f"{ideal:9.0f}" if ideal is not None else f"{'':9}"
        out(f"  {part:<24}{n:9,}{100 * n / cycles:7.1f}%{ideal_text}{util}".rstrip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--grid", metavar="RxC")
    parser.add_argument("--batch", type=int, help="test images (default: all 360)")
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args(argv)
    try:
        cfg = TileConfig.preset(args.preset)
        if args.grid:
            cfg = cfg.with_grid(*parse_grid(args.grid))
    except ConfigError as exc:
        print(f"toy_utilisation: error: {exc}", file=sys.stderr)
        return 2
    batch = args.batch or len(digits_split()[2])
    for name in args.models.split(","):
        show(measure(cfg, name, batch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
