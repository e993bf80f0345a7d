"""MAC utilisation of the reference networks (LeNet-5, residual, depthwise-separable) and the toy
models compiled onto the tile.

    .venv/bin/python bench/network_utilisation.py                  # default 4x4, batch 64
    .venv/bin/python bench/network_utilisation.py --batch 32 --models lenet5,resnet

For each network (`d1tile.sw.networks.NETWORKS` and `d1tile.sw.toy_models.TOY_MODELS`), compiles
it for one batch of test images, runs it on the cycle model with the issue trace
(`d1tile.sw.report.run_network`), checks the logits bit for bit against the integer reference,
and prints:

* `cycles` (reset to the last DONE: loading included), `ideal_cycles` = the network's MACs /
  the grid's peak, utilisation = ideal / cycles, and the tile's (int8 or bf16) and the
  float accuracy on the batch;
* `tile MACs`: what the matrix units multiply, and the matrix units' busy share over the run
  (sum of `busy_matrix` over the nodes / (nodes x cycles));
* per layer (load, each layer, finish; they add up to `cycles`): cycles, ideal cycles and
  utilisation;
* for LeNet-5, the tile's accuracy on all 360 test images beside the float model's: the test
  set runs through the tile in batches of the compiled size (the last one padded with the
  first images, whose results are dropped), every batch checked bit for bit.

A network that does not compile is reported with the compiler's message and the others still
run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from d1tile.params import ConfigError, TileConfig, parse_grid
from d1tile.sw.compiler import compile_model, execute
from d1tile.sw.errors import CompileError
from d1tile.sw.networks import NETWORKS
from d1tile.sw.report import run_network
from d1tile.sw.runtime import get_device
from d1tile.sw.toy_models import TOY_MODELS

MODELS = {**TOY_MODELS, **NETWORKS}

# The networks whose accuracy is measured on the whole test set, not only the batch.
WHOLE_TEST_SET = ("lenet5",)


def measure(cfg: TileConfig, name: str, batch: int, dtype: str = "int8") -> dict:
    toy = MODELS[name](batch=batch)
    start = time.perf_counter()
    compiled = compile_model(toy.model, cfg, toy.calib_x if dtype == "int8" else None,
                             dtype=dtype)
    net = run_network(compiled, toy.test_x[:batch], labels=toy.test_y[:batch])
    report = net.report()
    if not report["bit_exact"]:
        raise RuntimeError(f"{name} ({dtype}): the tile's logits differ from the reference")
    result = net.executions["model"].result
    busy = sum(r.counters["busy_matrix"] for r in result.nodes.values())
    report["matrix_busy"] = busy / (cfg.nodes * result.cycles)
    report["wall"] = time.perf_counter() - start
    if name in WHOLE_TEST_SET:
        report["test_set"] = whole_test_set(compiled, toy, batch)
    return report


def whole_test_set(compiled, toy, batch: int) -> dict:
    """The tile's and the float accuracy over every test image, run in batches of `batch`."""
    n = len(toy.test_x)
    tile, floats = [], []
    for start in range(0, n, batch):
        idx = np.arange(start, start + batch) % n
        run = execute(compiled, get_device("model", compiled.cfg), toy.test_x[idx])
        if run.max_abs_diff != 0:
            raise RuntimeError(f"images {start}..: the tile's logits differ from the "
                               "reference")
        keep = slice(0, min(batch, n - start))
        tile.append(run.outputs["logits"].argmax(1)[keep])
        floats.append(run.float_values["logits"].argmax(1)[keep])
    return {"images": n, "runs": -(-n // batch),
            "tile": float(np.mean(np.concatenate(tile) == toy.test_y)),
            "float": float(np.mean(np.concatenate(floats) == toy.test_y))}


def show(report: dict, out=print) -> None:
    cycles = report["cycles"]["model"]
    dtype = report.get("dtype", "int8")
    out(f"{report['model']} ({dtype}): batch {report['batch']} on {report['preset']} "
        f"{report['grid']} ({report['peak_macs_per_cycle']} MACs/cycle), "
        f"bit-exact, {report['wall']:.1f} s wall")
    acc = report["accuracy"]
    out(f"  cycles {cycles:,}   ideal {report['ideal_cycles']:,.0f}   utilisation "
        f"{100 * report['mac_utilisation']['model']:.1f} %   accuracy {dtype} "
        f"{100 * acc['tile']:.1f} % (float {100 * acc['float']:.1f} %) on the batch")
    if "test_set" in report:
        t = report["test_set"]
        out(f"  all {t['images']} test images ({t['runs']} runs, each bit-exact): accuracy {dtype} "
            f"{100 * t['tile']:.1f} % (float {100 * t['float']:.1f} %)")
    out(f"  MACs {report['macs']:,} (network)   {report['tile_macs']:,} (matrix units, "
        f"{report['tile_macs'] / report['macs']:.2f}x)   matrix units busy "
        f"{100 * report['matrix_busy']:.1f} % of node-cycles")
    out(f"  {'part':<28}{'cycles':>9}{'share':>8}{'ideal':>9}{'util.':>8}")
    rows = [("load", report["cycles_breakdown"]["load"], None)]
    rows += [(layer["name"], layer["cycles"], layer["ideal_cycles"]) for layer in report["layers"]]
    rows.append(("finish", report["cycles_breakdown"]["finish"], None))
    for part, n, ideal in rows:
        util = f"{100 * ideal / n:7.1f}%" if ideal and n else f"{'':8}"
        ideal_text = f"{ideal:9.0f}" if ideal is not None else f"{'':9}"
        out(f"  {part:<28}{n:9,}{100 * n / cycles:7.1f}%{ideal_text}{util}".rstrip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--grid", metavar="RxC")
    parser.add_argument("--batch", type=int, default=64, help="test images per run (default 64)")
    parser.add_argument("--dtype", choices=("int8", "bf16", "both"), default="both")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated (default: {','.join(MODELS)})")
    args = parser.parse_args(argv)
    try:
        cfg = TileConfig.preset(args.preset)
        if args.grid:
            cfg = cfg.with_grid(*parse_grid(args.grid))
    except ConfigError as exc:
        print(f"network_utilisation: error: {exc}", file=sys.stderr)
        return 2
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)} (known: {', '.join(MODELS)})")
    if not 1 <= args.batch <= 360:
        parser.error(f"--batch {args.batch}: give 1..360 (the test set)")
    failed = False
    dtypes = ("int8", "bf16") if args.dtype == "both" else (args.dtype,)
    summary = []
    for name in names:
        for dtype in dtypes:
            try:
                report = measure(cfg, name, args.batch, dtype)
            except CompileError as exc:
                failed = True
                print(f"{name} ({dtype}): batch {args.batch} on {cfg.name} {cfg.rows}x{cfg.cols}:"
                      f" does not compile: {exc}")
                summary.append((name, dtype, None, None))
                continue
            show(report)
            summary.append((name, dtype, report["cycles"]["model"],
                            report["mac_utilisation"]["model"]))
    print(f"\nsummary, batch {args.batch} on {cfg.name} {cfg.rows}x{cfg.cols}:")
    for name, dtype, cycles, util in summary:
        print(f"  {name:<8}{dtype:<6}" + ("does not compile" if cycles is None else
                                          f"{cycles:>9,} cycles {100 * util:6.1f} %"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
