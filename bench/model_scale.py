"""The cycle model's speed against the grid size, up to the largest grid (32 x 32), and its
ratio to the Verilator tile at every size whose Verilator build exists.

    .venv/bin/python bench/model_scale.py [--grids 2x2,4x4,8x8,16x16,18x20,32x32]
                                          [--preset tiny|default] [--programs N] [--seed S]
                                          [--repeat R] [--build RxC,...] [--no-verilator]

Per grid, the programs of `bench/model_vs_verilator.py` (`bench_programs`: its compute-heavy
program, MATMULs, MREADs, REQUANTs and SENDs to the east and south neighbours phase after
phase, and N random race-free programs, `d1tile.sw.randprog`: sends between any nodes,
multicasts, rectangles, streams to the host) run on `TileModel`; the line gives the simulated
cycles (loading, run and read-back, `total_cycles + 1`, summed over the programs), the wall
seconds (best of `--repeat`) and node-cycles per second (cycles x nodes / seconds), on the
wall time and on the CPU time (the steadier on a shared machine).

Where the Verilator tile of that configuration is in the build cache (`tile_built`; built by
`d1tile verify --grid RxC`, `model_vs_verilator.py --grid RxC`, or here with `--build RxC`),
the same programs run on it (`time_verilator`: one simulator launch per program, the launch's
fixed cost subtracted), the results are compared (`RunResult.comparable()`) and the ratio
printed; other sizes say "not built". Building is explicit because it is long: the tiny 2x2
tile builds in about 3 minutes, 8x8 in the time docs/architecture.md ("Scale") records; 16x16
and larger are not built (the 16x16 tile's Verilog takes minutes just to generate,
`bench/rtl_scale.py`).

Measured figures: docs/architecture.md, "Scale".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_vs_verilator import (_table, bench_programs, cycles_of, tile_built,  # noqa: E402
                                time_model, time_verilator)

from d1tile.params import ConfigError, TileConfig, parse_grid  # noqa: E402

GRIDS = "2x2,4x4,8x8,16x16,18x20,32x32"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grids", default=GRIDS, help=f"comma-separated RxC (default {GRIDS})")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "default"])
    parser.add_argument("--programs", type=int, default=1,
                        help="random programs besides the compute one (default 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each program on each backend; the fastest is kept")
    parser.add_argument("--build", default="", metavar="RxC,...",
                        help="build these grids' Verilator tiles first if they are not built "
                             "(long: one at a time)")
    parser.add_argument("--no-verilator", action="store_true",
                        help="the model alone, even where a Verilator build exists")
    args = parser.parse_args(argv)
    try:
        grids = [parse_grid(g) for g in args.grids.split(",")]
        build = {parse_grid(g) for g in args.build.split(",") if g}
        configs = [TileConfig.preset(args.preset).with_grid(r, c) for r, c in grids]
    except ConfigError as exc:
        parser.error(str(exc))
    print(f"model speed against grid size, preset {args.preset}, seed {args.seed}: compute "
          f"+ {args.programs} random program(s) per grid, best of {args.repeat}", flush=True)
    rows = [("grid", "nodes", "cycles", "model s", "model node-cyc/s", "(CPU time)", "Verilator s",
             "Verilator node-cyc/s", "model/Verilator")]
    notes, failed = [], False
    for cfg in configs:
        grid = f"{cfg.rows}x{cfg.cols}"
        started = time.perf_counter()
        programs = bench_programs(cfg, args.seed, args.programs)
        made = time.perf_counter() - started
        results, seconds, cpu = time_model(cfg, programs, args.repeat)
        cycles = [cycles_of(r) for r in results]
        total, model_s, model_cpu = sum(cycles), sum(seconds), sum(cpu)
        row = [grid, f"{cfg.nodes}", f"{total:,}", f"{model_s:.2f}",
               f"{total * cfg.nodes / model_s:,.0f}", f"{total * cfg.nodes / model_cpu:,.0f}"]
        print(f"{grid}: model {total:,} cycles in {model_s:.2f} s "
              f"({total * cfg.nodes / model_s:,.0f} node-cycles/s; CPU {model_cpu:.2f} s, "
              f"{total * cfg.nodes / model_cpu:,.0f}; programs made in {made:.1f} s)",
              flush=True)
        if args.no_verilator:
            row += ["-", "-", "not run"]
        elif not tile_built(cfg) and (cfg.rows, cfg.cols) not in build:
            row += ["-", "-", "not built"]
        else:
            print(f"{grid}: Verilator (building the tile first if needed) ...", flush=True)
            rtl = time_verilator(cfg, programs, args.repeat, cycles)
            net = sum(rtl["net_s"])
            row += [f"{net:.2f}", f"{total * cfg.nodes / net:,.0f}", f"{net / model_s:.1f}x"]
            if rtl["build_s"] > 1:
                notes.append(f"{grid}: Verilator build {rtl['build_s']:.0f} s")
            bad = [name for (name, _), m, r in zip(programs, results, rtl["results"])
                   if m.comparable() != r.comparable()]
            if bad:
                failed = True
                notes.append(f"{grid}: MISMATCH between the model and the RTL on {', '.join(bad)}")
            else:
                notes.append(f"{grid}: model and RTL results identical on {len(programs)} "
                             "programs")
        rows.append(tuple(row))
    print()
    _table(rows)
    if notes:
        print()
        for note in notes:
            print(note)
    print("\nVerilator seconds exclude the simulator launch (a lone-HALT program's, "
          "bench/model_vs_verilator.py); 'not built': no Verilator tile of that size in the "
          "build cache (--build RxC makes one).")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
