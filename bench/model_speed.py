"""Speed of the cycle model alone, in node-cycles per second (simulated cycles x nodes / wall
seconds), on a compute-bound and a communication-bound workload.

    .venv/bin/python bench/model_speed.py [--repeat R] [--only compute,network,noc] [--profile N]

Workloads (all on the default preset's 4x4 tile, fixed seeds):

* `compute`: every node computes, as in a bf16 training step, from its START (after about
  1,300 cycles of loading its program) to its HALT: per phase a BF16 MATMUL (kw = 32 words,
  64 beats) and its MREAD, then the FP32 vector work around it (bias FADD, FRELU, FMASK,
  FAXPY, FMUL, FMAX, an FSUM reduction, FP32 -> BF16 with RNE and with stochastic rounding,
  BF16 -> FP32), and a SEND of its rows to the east neighbour, whose arrival the next phase
  WAITs for. The operands are `numerics.random_fp32` values (some NaN, Inf, subnormal), so the
  special cases of the contract are on the path too.
* `network`: the residual network (`d1tile.sw.networks`, bf16, batch 16) compiled onto the
  tile and run: loading, multicasts and feeds around MATMUL- and vector-heavy layers.
* `noc`: `d1tile noc-stress` on the model (`d1tile.sim.noc.run_model`, 4x4, 20,000 packets at
  0.3 flits per node per cycle): the mesh alone, no node model.

Each line prints the simulated cycles, the best wall time of `--repeat` runs with node-cycles
per second, the same on CPU time (steadier on a shared machine) and a digest of the results
(`RunResult.comparable()`: every DONE cycle, counter and word read back; or the noc
statistics): a change that makes the model faster must leave every digest as it was.
`--profile N` runs each workload once more under cProfile and prints its N most expensive
functions.

Measured on the project's 2-core VM on 2026-12-07, `--repeat 3`, wall time (CPU time within
2 %), node-cycles per second, every digest identical before and after (bench/README.md,
"The cycle model's own speed", says what changed):

| workload | cycles | before | after | speed-up | digest |
| --- | ---: | ---: | ---: | ---: | --- |
| compute | 5,495 | 53,600 | 203,000 | 3.8x | 747a5192d4f6184a |
| network | 11,249 | 68,700 | 220,200 | 3.2x | 187f84ba6ea8ccb7 |
| noc | 10,396 | 195,400 | 201,000 | 1.0x (the mesh model is unchanged) | d7b8d3aed60c7b27 |
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import random
import sys
import time
from dataclasses import asdict

import numpy as np

from d1tile import numerics
from d1tile.dtypes import ElemType
from d1tile.params import TileConfig
from d1tile.sim.tile import TileModel
from d1tile.sw.program import TileProgram

WORKLOADS = ("compute", "network", "noc")


def digest(data) -> str:
    """A short hash of plain data (the results a faster model must not change)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def fp32_word(cfg: TileConfig, rng: random.Random, special: float = 0.05) -> int:
    word = 0
    for lane in range(cfg.lanes):
        word |= numerics.random_fp32(rng, special) << (32 * lane)
    return word


def bf16_word(cfg: TileConfig, rng: random.Random, special: float = 0.05) -> int:
    word = 0
    for k in range(2 * cfg.lanes):
        word |= (numerics.random_fp32(rng, special) >> 16) << (16 * k)
    return word


def compute_program(cfg: TileConfig, seed: int = 1, phases: int = 16, kw: int = 32) -> TileProgram:
    """The `compute` workload (module docstring)."""
    rng = random.Random(seed)
    tp = TileProgram(cfg)
    n = cfg.mac_dim
    a, b = 0, kw                          # BF16 operands
    bias, mask, w = 2 * kw, 2 * kw + 1, 2 * kw + 2      # FP32 words
    out, h, g = 128, 128 + n, 128 + 2 * n               # n rows each
    s, m, hb, hs, back = 160, 161, 170, 180, 190
    inbox = 256                           # phase p: n words at inbox + p * n
    for node in tp.nodes:
        tp.load(node, a, [bf16_word(cfg, rng) for _ in range(2 * kw)])
        tp.load(node, bias, [fp32_word(cfg, rng) for _ in range(3)])
        tp.load(node, w, [fp32_word(cfg, rng) for _ in range(n)])
    for node in tp.nodes:
        x, y = node
        p = tp.node(x, y)
        p.fscale(-0.0625)
        p.seed(rng.randrange(1 << 32))
        for phase in range(phases):
            bank = phase % 2
            p.matmul(a, b, kw, clear=True, dtype=ElemType.BF16, bank=bank)
            p.mread(out, 0, n, bank=bank)
            p.fvec("FADD", out, out, bias, n, bfix=True)
            p.fvec("FRELU", h, out, 0, n)
            p.fvec("FMASK", g, out, mask, n, bfix=True)
            p.fvec("FAXPY", w, g, w, n)
            p.fvec("FMUL", g, h, w, n)
            p.fvec("FMAX", g, g, out, n)
            p.fvec("FSUM", s, h, 0, n)
            p.fcvt("FP32", "BF16", hb, h, n)
            p.fcvt("FP32", "BF16", hs, w, n, stochastic=True)
            p.fcvt("BF16", "FP32", back, hb, n)
            if phase:
                p.wait(phase % 16, 1)
                p.fvec("FADD", h, h, inbox + (phase - 1) * n, n)
            east = ((x + 1) % cfg.cols, y)
            p.send(h, n, east, inbox + phase * n, counter=(phase + 1) % 16)
        p.wait(phases % 16, 1)
        p.halt()
        tp.read(node, out, back + n - out)
    return tp


def network_program(cfg: TileConfig, batch: int = 16):
    """The `network` workload: the bf16 residual network compiled for `batch` test images,
    with their input loaded."""
    from d1tile.sw.compiler import _with_input, compile_model
    from d1tile.sw.networks import NETWORKS
    net = NETWORKS["resnet"](batch=batch)
    compiled = compile_model(net.model, cfg, None, dtype="bf16")
    return _with_input(compiled, np.asarray(net.test_x[:batch], dtype=np.float32))


def run_tile(cfg: TileConfig, tp) -> tuple[int, str]:
    result = TileModel(cfg).run(tp)
    return (result.total_cycles + 1) * cfg.nodes, digest(result.comparable())


def run_noc(cfg: TileConfig) -> tuple[int, str]:
    from d1tile.sim.noc import run_model
    stats = run_model(cfg, packets=20000, rate=0.3, seed=1)
    return stats.cycles * cfg.nodes, digest(asdict(stats))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each workload; the fastest is kept (default 1)")
    parser.add_argument("--only", default=",".join(WORKLOADS),
                        help=f"comma-separated workloads (default: {','.join(WORKLOADS)})")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile one more run of each and print its N costliest functions")
    args = parser.parse_args(argv)
    names = args.only.split(",")
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    cfg = TileConfig.preset("default")
    jobs = {}
    if "compute" in names:
        tp = compute_program(cfg)
        jobs["compute"] = lambda: run_tile(cfg, tp)
    if "network" in names:
        net = network_program(cfg)
        jobs["network"] = lambda: run_tile(cfg, net)
    if "noc" in names:
        jobs["noc"] = lambda: run_noc(cfg)
    print(f"model speed on {cfg.key}, best of {args.repeat}", flush=True)
    for name, job in jobs.items():
        wall, cpu, digests = [], [], set()
        for _ in range(args.repeat):
            started, started_cpu = time.perf_counter(), time.process_time()
            node_cycles, dig = job()
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
            digests.add(dig)
        if len(digests) != 1:
            print(f"{name}: results differ from run to run: {sorted(digests)}")
            return 1
        print(f"{name:8} {node_cycles // cfg.nodes:>8,} cycles  {min(wall):6.2f} s  "
              f"{node_cycles / min(wall):>9,.0f} node-cycles/s  (CPU {min(cpu):6.2f} s  "
              f"{node_cycles / min(cpu):>9,.0f})  digest {digests.pop()}", flush=True)
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(job)
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
