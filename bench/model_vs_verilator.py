"""Simulation speed: the cycle model (`d1tile.sim.tile.TileModel`) against the Verilator tile
(`d1tile.hw.tile_run.run_rtl`), on the same 4x4 programs.

    .venv/bin/python bench/model_vs_verilator.py [--preset tiny|default] [--programs N] [--seed S]
                                                 [--repeat R] [--grid RxC] [--model-only]

Runs a compute-heavy program (every node: MATMULs of kw = 16..64 words, MREADs, a REQUANT and
SENDs to its east and south neighbours, phase after phase; `compute_program`) and N random race-free programs
(`d1tile.sw.randprog`) on both backends, checks that the results are identical
(`RunResult.comparable()`), and prints simulated cycles, wall seconds and cycles per second for
each, with the Verilator build time apart. Each program runs in its own simulator launch; a
launch has a fixed cost (process start, cocotb start-up), measured with a lone-HALT program and
subtracted from the Verilator seconds the ratios are taken against (the total with it is
printed too).

Simulated cycles are the cycles the host driver steps through: loading, the run and the
read-back (`total_cycles + 1` per program).
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from d1tile.isa import VecOp
from d1tile.params import TileConfig
from d1tile.isa import requant_words
from d1tile.sim.tile import TileModel
from d1tile.sw.program import TileProgram
from d1tile.sw.randprog import random_tile_program


def compute_program(cfg: TileConfig, rng: random.Random, *, phases: int = 4,
                    matmuls: int = 4) -> TileProgram:
    """A compute-heavy, race-free program: in each phase every node runs `matmuls` MATMULs of
    kw = 16..64 words (fewer when the SRAM is small) over its loaded operands, reads the
    accumulators out (MREAD), requantises them (VEC REQUANT), sends the rows to its east and
    south neighbours (wrapping around the grid) and waits for the two messages it receives;
    the next phase also multiplies the rows it received. The results and inboxes are read back.
    """
    tp = TileProgram(cfg)
    n = cfg.mac_dim
    words = cfg.sram_words
    kw_max = min(64, words // 8)
    kw_min = min(16, kw_max)
    a_base, b_base = 0, kw_max
    out_base = 2 * kw_max                       # phase p: n accumulator rows at out_base + p*n
    q_base = out_base + phases * n              # phase p: requantised rows
    inbox = q_base + phases * requant_words(n)  # phase p: 2 messages of n words
    if inbox + 2 * phases * n > words:
        raise ValueError(f"{cfg.name}: {words} SRAM words are too few for {phases} phases")
    limit = 1 << cfg.word_bits
    for node in tp.nodes:
        tp.load(node, a_base, [rng.randrange(limit) for _ in range(2 * kw_max)])
    for node in tp.nodes:
        x, y = node
        p = tp.node(x, y)
        p.setq(rng.randrange(1, 1 << 16), rng.randrange(8, 24), relu=True)
        for phase in range(phases):
            for m in range(matmuls):
                kw = rng.randint(kw_min, kw_max)
                a = a_base + rng.randrange(kw_max - kw + 1)
                b = b_base + rng.randrange(kw_max - kw + 1)
                p.matmul(a, b, kw, clear=m == 0)
            if phase:
                # Multiply what the west neighbour sent last phase (after the WAIT below).
                p.matmul(inbox + 2 * (phase - 1) * n, b_base, n)
            out = out_base + phase * n
            p.mread(out, 0, n)
            p.vec(VecOp.REQUANT, q_base + phase * requant_words(n), out, 0, n)
            east, south = ((x + 1) % cfg.cols, y), (x, (y + 1) % cfg.rows)
            # Slot 0 of a phase's inbox takes the west neighbour's rows, slot 1 the north's.
            p.send(out, n, east, inbox + (2 * phase) * n, counter=phase % 16)
            p.send(out, n, south, inbox + (2 * phase + 1) * n, counter=phase % 16)
            p.wait(phase % 16, 2)
        p.halt()
        tp.read(node, out_base, inbox + 2 * phases * n - out_base)
    return tp


def trivial_program(cfg: TileConfig) -> TileProgram:
    """A lone HALT on every node: measures a simulator launch, not simulation."""
    return TileProgram(cfg)


def cycles_of(result) -> int:
    return result.total_cycles + 1


def bench_programs(cfg: TileConfig, seed: int, randoms: int) -> list[tuple[str, TileProgram]]:
    """The benchmark's programs: (name, TileProgram) for `compute` and `randoms` random ones."""
    programs = [("compute", compute_program(cfg, random.Random(seed)))]
    for k in range(randoms):
        programs.append((f"random{k}", random_tile_program(cfg, random.Random(seed * 1000 + k))))
    return programs


def tile_built(cfg: TileConfig) -> bool:
    """The Verilator tile of `cfg` is in the build cache for the current sources (so running
    on it does not build it first; the test is `d1tile.hw.verilator.build`'s)."""
    from d1tile.hw import verilator
    from d1tile.hw.tile_run import TOP
    key = f"{TOP}-{cfg.key}"
    directory = verilator.build_root() / f"{key}-notrace"
    stamp = directory / "build.stamp"
    return (stamp.exists() and (directory / TOP).exists()
            and stamp.read_text() == f"{verilator.source_digest()}-{key}")


def time_model(cfg: TileConfig, programs, repeat: int = 1):
    """Run each (name, TileProgram) on the cycle model `repeat` times: (results, best wall
    seconds of each, best CPU seconds of each; the CPU time is the steadier on a shared
    machine)."""
    results, seconds, cpu = [], [], []
    for _, tp in programs:
        best = best_cpu = None
        for _ in range(repeat):
            started, started_cpu = time.perf_counter(), time.process_time()
            result = TileModel(cfg).run(tp)
            took, took_cpu = time.perf_counter() - started, time.process_time() - started_cpu
            best = took if best is None else min(best, took)
            best_cpu = took_cpu if best_cpu is None else min(best_cpu, took_cpu)
        results.append(result)
        seconds.append(best)
        cpu.append(best_cpu)
    return results, seconds, cpu


def time_verilator(cfg: TileConfig, programs, repeat: int, cycles: list[int]) -> dict:
    """Run each (name, TileProgram) on the Verilator tile (built, or reused from the build
    cache) `repeat` times, one simulator launch per run. Returns the results, the build
    seconds, the launch cost (a lone-HALT program's wall time less its cycles at the measured
    rate), each program's best seconds less the launch (`net_s`) and their total with it
    (`total_s`). `cycles`: each program's simulated cycles (the model's)."""
    from d1tile.hw.tile_run import run_rtl
    launch: dict = {}
    launch_result = run_rtl([trivial_program(cfg)], timing=launch)[0]
    results, seconds = [], []
    for _, tp in programs:
        best = None
        for _ in range(repeat):
            timing: dict = {}
            result = run_rtl([tp], timing=timing)[0]
            best = timing["run_s"] if best is None else min(best, timing["run_s"])
        results.append(result)
        seconds.append(best)
    # A launch costs the lone-HALT run's wall time less its few hundred cycles, taken at the
    # measured rate.
    total = sum(seconds)
    rate = sum(cycles) / total
    launch_s = max(0.0, launch["run_s"] - cycles_of(launch_result) / rate)
    return {"results": results, "build_s": launch["build_s"], "launch_s": launch_s,
            "net_s": [max(s - launch_s, 1e-9) for s in seconds], "total_s": total}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "default"])
    parser.add_argument("--programs", type=int, default=3, help="random programs (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--grid", default="4x4", help="RxC (default 4x4)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every program this many times on each backend and keep the "
                             "fastest (default 1)")
    parser.add_argument("--model-only", action="store_true",
                        help="time the model alone (no Verilator build or run)")
    args = parser.parse_args(argv)
    rows, cols = (int(v) for v in args.grid.lower().split("x"))
    cfg = TileConfig.preset(args.preset).with_grid(rows, cols)
    programs = bench_programs(cfg, args.seed, args.programs)
    print(f"model vs Verilator on {cfg.key}, seed {args.seed}: {len(programs)} programs",
          flush=True)

    model_results, model_s, _ = time_model(cfg, programs, args.repeat)
    cycles = [cycles_of(r) for r in model_results]
    total_cycles, total_model = sum(cycles), sum(model_s)

    if args.model_only:
        _table([("program", "cycles", "model s", "model cyc/s")]
               + [(name, f"{c}", f"{s:.3f}", f"{c / s:,.0f}")
                  for (name, _), c, s in zip(programs, cycles, model_s)]
               + [("total", f"{total_cycles}", f"{total_model:.3f}",
                   f"{total_cycles / total_model:,.0f}")])
        return 0

    print("Verilator: building (or reusing) the tile, then one simulator launch per program "
          "...", flush=True)
    rtl = time_verilator(cfg, programs, args.repeat, cycles)
    net, launch_s, total_rtl, build_s = rtl["net_s"], rtl["launch_s"], rtl["total_s"], rtl["build_s"]
    mismatches = [name for (name, _), m, r in zip(programs, model_results, rtl["results"])
                  if m.comparable() != r.comparable()]

    rows = [("program", "cycles", "model s", "model cyc/s", "Verilator s", "Verilator cyc/s",
             "model/Verilator")]
    for (name, _), c, m, v in zip(programs, cycles, model_s, net):
        rows.append((name, f"{c}", f"{m:.3f}", f"{c / m:,.0f}", f"{v:.2f}", f"{c / v:,.0f}",
                     f"{v / m:.1f}x"))
    total_net = sum(net)
    rows.append(("total", f"{total_cycles}", f"{total_model:.3f}",
                 f"{total_cycles / total_model:,.0f}", f"{total_net:.2f}",
                 f"{total_cycles / total_net:,.0f}", f"{total_net / total_model:.1f}x"))
    print()
    _table(rows)
    print(f"\nVerilator seconds exclude the simulator launch ({launch_s:.2f} s each, measured "
          f"with a lone-HALT program); with it: {total_rtl:.2f} s, "
          f"{total_cycles / total_rtl:,.0f} cycles/s, model {total_rtl / total_model:.1f}x "
          "faster.")
    print(f"Verilator build of the tile: {build_s:.1f} s (about 0 when reused from the build "
          "cache).")
    if mismatches:
        print(f"MISMATCH between the model and the RTL on: {', '.join(mismatches)}")
        return 1
    print(f"results identical on all {len(programs)} programs (RunResult.comparable())")
    return 0


def _table(rows) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    sys.exit(main())
