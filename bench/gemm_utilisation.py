"""MAC utilisation of the tile GEMM kernel (`d1tile.sw.kernels`) on the cycle model, int8 and
bf16.

    .venv/bin/python bench/gemm_utilisation.py                 # 256^3 on default, 32^3 on tiny, both types
    .venv/bin/python bench/gemm_utilisation.py --preset default --size 256 256 256 --dtype bf16

Runs C = X @ W (int8 X [M, K], W [K, N], int32 C read back; or bf16 X and W, FP32 C) compiled
by `KernelBuilder.gemm` on `TileModel`, checks C bit for bit against NumPy (int8) or
`reference_gemm_bf16` (bf16: the FP32 sums added k after k), and prints:

* `cycles` (`RunResult.cycles`: from reset to the last DONE, so it includes the host loading
  every program and the weights and activations through the east edge, and a C too large for
  the SRAM streamed out to the host while the nodes compute) and `total_cycles`
  (`RunResult.total_cycles`: also the read-back of C, when it stayed in SRAM, and the
  counters);
* `ideal_cycles` = M K N / (nodes * N^2), every MAC busy every cycle;
* **utilisation = ideal_cycles / cycles** (the headline figure; the target is >= 80 % for
  256^3 on the default tile), and for reference ideal / total_cycles and ideal / the compute
  phase (START to the last DONE of the critical node);
  * where the cycles of the critical node (the one whose DONE came last) go, from its counters and
  the timing contracts of `d1tile.sim.mxu`: host load before its START, MAC beats, MATMUL start-up,
  the MREAD issue cycle between tiles, the last tile's readout (the others overlap the next tile's
  MATMUL: two accumulator banks), and the rest (the first operands' gather, waits, HALT);
* a per-node table of the counters (busy_matrix, stall_*, DMA-out busy, flits, SRAM conflicts;
  the counters are read after the node's results, so DMA-out and flits include the read-back).
"""

from __future__ import annotations

import argparse
import sys
import time
from math import ceil

from d1tile.dtypes import MATRIX_TYPES, ElemType
from d1tile.params import TileConfig
from d1tile.sim.host import CHUNK
from d1tile.sim.mxu import ideal_matmul_cycles, matmul_cycles, mread_cycles
from d1tile.sim.tile import TileModel
from d1tile.sw.errors import CompileError
from d1tile.sw.kernels import gemm_matches_reference, random_gemm


def load_flits(tp) -> dict:
    """Flits the host sends on each row link before the nodes run (HostDriver's load phase), and
    the flits of the feeds it sends after the STARTs (`fed`)."""
    per_row = {}
    for (x, y) in tp.nodes:
        words = len(tp.words_of((x, y)))
        row = per_row.setdefault(y, {"programs": 0, "data": 0, "headers": 0, "starts": 0})
        row["programs"] += words
        row["headers"] += ceil(words / CHUNK)
        for _, data in tp.loads.get((x, y), []):
            row["data"] += len(data)
            row["headers"] += ceil(len(data) / CHUNK)
        row["starts"] += 1
    for (x, y), _, data, _ in tp.image().feeds:
        row = per_row[y]
        row["fed"] = row.get("fed", 0) + len(data) + ceil(len(data) / CHUNK)
    return per_row


def run_case(cfg: TileConfig, m: int, k: int, n: int, seed: int = 1,
             dtype=ElemType.INT8) -> dict:
    tp, kb, out, x, w = random_gemm(cfg, m, k, n, seed, dtype)
    started = time.monotonic()
    result = TileModel(cfg).run(tp)
    wall = time.monotonic() - started
    if result.faults or result.hang:
        raise RuntimeError(f"the run failed: faults {result.faults}, hang {result.hang}")
    if not gemm_matches_reference(cfg, out, result, x, w, dtype):
        raise RuntimeError(f"the tile's product differs from the {dtype.name} reference")
    layer = kb.layers[-1]
    return {"cfg": cfg, "m": m, "k": k, "n": n, "result": result, "wall": wall, "layer": layer,
            "ideal": m * k * n / cfg.peak_macs_per_cycle, "load": load_flits(tp),
            "dtype": dtype}


def report(case: dict, out=print) -> None:
    cfg, result, layer = case["cfg"], case["result"], case["layer"]
    m, k, n, ideal = case["m"], case["k"], case["n"], case["ideal"]
    kw, N = layer.kw, cfg.mac_dim
    dtype = case["dtype"]
    vpw = MATRIX_TYPES[dtype].vectors_per_word(cfg)
    kinds = {ElemType.INT8: ("int8", "int32", "NumPy"),
             ElemType.BF16: ("bf16", "fp32", "the bf16 reference")}[dtype]
    out(f"GEMM {m} x {k} x {n} ({kinds[0]} X [{m}, {k}] @ W [{k}, {n}] -> {kinds[1]}) on "
        f"{cfg.name}: {cfg.rows}x{cfg.cols} nodes of {N}x{N} MACs, cycle model "
        f"({case['wall']:.1f} s wall), result bit-exact with {kinds[2]}")
    cycles, total = result.cycles, result.total_cycles
    crit = max(result.nodes, key=lambda node: result.nodes[node].done_cycle)
    rep = result.nodes[crit]
    c = rep.counters
    pre = rep.done_cycle - c["cycles"]
    lines = [
        ("cycles (RunResult.cycles: reset to the last DONE)", f"{cycles:8d}"),
        ("total_cycles (with the read-back)", f"{total:8d}"),
        (f"ideal_cycles = {m}*{k}*{n} / ({cfg.nodes} nodes * {N * N} MACs)", f"{ideal:8.0f}"),
        ("utilisation = ideal / cycles", f"{100 * ideal / cycles:8.1f} %"),
        ("            = ideal / total_cycles", f"{100 * ideal / total:8.1f} %"),
        (f"            = ideal / compute phase of {crit} ({c['cycles']}: START to DONE)",
         f"{100 * ideal / c['cycles']:8.1f} %"),
    ]
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        out(f"  {label:{width}s} {value}")

    tiles = len(layer.plans[crit].tiles)
    beats = tiles * ideal_matmul_cycles(cfg, kw, dtype)
    startup = tiles * (matmul_cycles(cfg, kw, dtype) - ideal_matmul_cycles(cfg, kw, dtype))
    # Two accumulator banks: tile t's MREAD comes after tile t+1's MATMUL in the program, so
    # the MATMULs go back to back and each readout runs beside the next product; only the
    # last tile's rows wait.
    drain = mread_cycles(N, 1)
    rest = c["cycles"] - beats - startup - drain
    rows = load_flits_text(case["load"])
    out(f"  where the cycles of the critical node {crit} go ({tiles} tiles of kw = {kw} words):")
    items = [
        ("host load before its START, and its DONE's trip", pre, rows),
        (f"MAC beats ({vpw} kw per tile)", beats, "the ideal share of this node"),
        ("MATMUL start-up (3 per tile)", startup, "first beat 4 cycles after issue"),
        ("last tile's MREAD (N + 3)", drain, "the only readout not overlapped"),
        ("first operands, waits, HALT", rest,
         f"stall_wait {c['stall_wait']}, matrix idle while running "
         f"{c['cycles'] - c['busy_matrix']}"),
    ]
    for name, value, note in items:
        out(f"    {name:48s} {value:7d} {100 * value / rep.done_cycle:5.1f} %  {note}")
    out(f"    {'= DONE cycle of ' + str(crit):48s} {rep.done_cycle:7d}")
    out(f"    read-back after the last DONE: {total - cycles} cycles")
    msgs = layer.messages
    mcasts = sum(1 for mg in msgs if mg.receivers)
    words = sum(mg.n for mg in msgs)
    delivered = sum(mg.n * len(mg.deliveries()) for mg in msgs)
    out(f"  communication: {mcasts} MCASTs and {len(msgs) - mcasts} SENDs, {words} words sent, "
        f"{delivered} delivered (activation blocks down the columns, weight blocks along the "
        f"rows), overlapped with the MATMULs; exposed only as stall_wait")
    plans = layer.plans.values()
    if layer.stream:
        sends = sum(ceil(len(p.tiles) / layer.stream) for p in plans)
        words = sum(len(p.tiles) for p in plans) * N
        out(f"  result: streamed to the host while the nodes compute, {sends} SENDs of "
            f"{'one tile' if layer.stream == 1 else f'up to {layer.stream} tiles'}, {words} words ({words // cfg.rows} and "
            f"{sends // cfg.rows} headers per row link), from a ring of "
            f"{2 * layer.stream} tiles per node")
    else:
        out("  result: left in SRAM, read back after the last DONE")
    out("  per node (counters; busy_dma_out and flits_out include the node's read-back):")
    header = ["node", "tiles", "START~", "DONE", "running", "busy_matrix", "MAC util",
              "stall_wait", "stall_unit", "stall_hazard", "busy_dma_out", "flits_out", "sram_confl"]
    table = [header]
    for node in sorted(result.nodes, key=lambda nd: (nd[1], nd[0])):
        r = result.nodes[node]
        cc = r.counters
        t = len(layer.plans[node].tiles)
        flits = sum(cc[f"flits_out_{p}"] for p in ("north", "east", "south", "west"))
        table.append([str(node), str(t), str(r.done_cycle - cc["cycles"]), str(r.done_cycle),
                      str(cc["cycles"]), str(cc["busy_matrix"]),
                      f"{100 * t * ideal_matmul_cycles(cfg, kw, dtype) / max(cc['cycles'], 1):.1f} %",
                      str(cc["stall_wait"]), str(cc["stall_unit"]), str(cc["stall_hazard"]),
                      str(cc["busy_dma_out"]), str(flits), str(cc["sram_conflicts"])])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        out("    " + "  ".join(cell.rjust(wd) for cell, wd in zip(row, widths)))


def load_flits_text(load: dict) -> str:
    worst = max(load.values(), key=lambda r: sum(v for k, v in r.items() if k != "fed"))
    fed = max(row.get("fed", 0) for row in load.values())
    return (f"{sum(v for k, v in worst.items() if k != 'fed')} flits per row link: programs "
            f"{worst['programs']}, data {worst['data']}, headers {worst['headers']}, STARTs "
            f"{worst['starts']}; then {fed} flits of data fed while it runs")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["tiny", "default"],
                        help="one case on this preset (default: 256^3 and 256x128x256 on "
                             "default, then 32^3 on tiny)")
    parser.add_argument("--size", type=int, nargs=3, metavar=("M", "K", "N"),
                        help="M K N (default 256 256 256 on default, 32 32 32 on tiny)")
    parser.add_argument("--dtype", choices=["int8", "bf16", "both"], default="both",
                        help="operand type (default: both, int8 then bf16)")
    parser.add_argument("--grid", type=int, nargs=2, metavar=("ROWS", "COLS"),
                        help="the preset's node on another grid (e.g. 8 8)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    dtypes = [ElemType.INT8, ElemType.BF16] if args.dtype == "both" else \
        [ElemType[args.dtype.upper()]]
    if args.preset:
        sizes = {"default": (256, 256, 256), "tiny": (32, 32, 32)}
        cases = [(args.preset, tuple(args.size) if args.size else sizes[args.preset])]
    elif args.size:
        cases = [("default", tuple(args.size))]
    else:
        # 256^3 in bf16 needs twice the SRAM of int8 (every node keeps all of K): 96 KiB of
        # the 64 KiB; 256 x 128 x 256 takes in bf16 the words 256^3 takes in int8.
        # 1024 x 64 x 1024: C (4 MiB of int32) is 4 times the tile's SRAM, so it is streamed
        # to the host while the nodes compute (`KernelBuilder.gemm(out="auto")`).
        cases = [("default", (256, 256, 256)), ("default", (256, 128, 256)),
                 ("default", (1024, 64, 1024)), ("tiny", (32, 32, 32))]
    summary = []
    for preset, (m, k, n) in cases:
        for dtype in dtypes:
            print()
            try:
                cfg = TileConfig.preset(preset)
                if args.grid:
                    cfg = cfg.with_grid(*args.grid)
                case = run_case(cfg, m, k, n, args.seed, dtype)
            except CompileError as exc:
                print(f"GEMM {m} x {k} x {n} {dtype.name.lower()} on {preset}: does not fit: {exc}")
                summary.append((preset, m, k, n, dtype.name.lower(), None, None))
                continue
            report(case)
            summary.append((preset, m, k, n, dtype.name.lower(), case["ideal"],
                            case["result"].cycles))
    print("\nsummary: utilisation = ideal / cycles (host loading included)")
    for preset, m, k, n, kind, ideal, cycles in summary:
        if cycles is None:
            print(f"  {preset:8s} {m}x{k}x{n} {kind:5s} does not fit the node's SRAM")
            continue
        print(f"  {preset:8s} {m}x{k}x{n} {kind:5s} {cycles:8d} cycles, ideal {ideal:8.0f}: "
              f"{100 * ideal / cycles:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
