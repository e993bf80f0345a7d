"""cocotb bench of the matrix-unit demo (run by `d1tile.hw.matrix_demo.run_demo`).

It computes a random int8 or bf16 (m x k) @ (k x n) product on one `MatrixUnit`, tiled over the
N x N unit: per output tile, k operand beats with `clear` on the first, then N readout requests;
m and n are padded with zeros up to multiples of N. The schedule is the fastest the unit allows
(see `d1tile.sim.matrix.tile_period`): beats back to back, readout requests offered from the cycle
after the last beat (the unit holds them off while `busy`), and the next tile's first beat in the
same cycle as the last readout request of the previous tile, which is safe only because that
request is then known to be accepted (`rd_data` is always ready, so `rd_req.ready` is `~busy`,
predicted by `busy_at`). A prediction that does not hold fails the bench.

Inputs (environment): `D1TILE_CONFIG` (TileConfig JSON) and `D1TILE_MATRIX_DEMO` (JSON with
m, k, n, seed, dtype and `out`, the path of the JSON report this bench writes).
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path

import numpy as np

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from .. import numerics
from ..dtypes import ElemType
from ..params import TileConfig
from ..sim.matrix import (busy_at, ideal_cycles, matmul_reference, tile_count,
                          tiled_matmul_cycles)
from .matrix import pack_operands, unpack_row
from .matrix_demo import DEMO_ENV
from .testbench import TB



@cocotb.test()
async def matrix_demo(dut):
    params = json.loads(os.environ[DEMO_ENV])
    cfg = TileConfig.from_json(os.environ["D1TILE_CONFIG"])
    m, k, n, seed = (int(params[name]) for name in ("m", "k", "n", "seed"))
    dtype = ElemType.BF16 if params.get("dtype") == "bf16" else ElemType.INT8
    dim = cfg.mac_dim
    tb = TB(dut)

    rng = np.random.default_rng(seed)
    if dtype == ElemType.BF16:
        A = numerics.bf16_bits(rng.standard_normal((m, k))).astype(np.int64)
        B = numerics.bf16_bits(rng.standard_normal((k, n))).astype(np.int64)
    else:
        A = rng.integers(-128, 128, size=(m, k)).astype(np.int64)
        B = rng.integers(-128, 128, size=(k, n)).astype(np.int64)
    rows_p, cols_p = -(-m // dim) * dim, -(-n // dim) * dim
    A_pad = np.zeros((rows_p, k), dtype=np.int64)      # zeros: +0 in both types
    A_pad[:m] = A
    B_pad = np.zeros((k, cols_p), dtype=np.int64)
    B_pad[:, :n] = B
    tiles = [(ti, tj) for ti in range(rows_p // dim) for tj in range(cols_p // dim)]
    assert len(tiles) == tile_count(cfg, m, n)

    def beat(tile: int, index: int) -> int:
        ti, tj = tiles[tile]
        a = A_pad[ti * dim:(ti + 1) * dim, index]
        b = B_pad[index, tj * dim:(tj + 1) * dim]
        return pack_operands(cfg, a, b, clear=index == 0, dtype=dtype)

    dut.operands__valid.value = 0
    dut.rd_req__valid.value = 0
    dut.rd_data__ready.value = 1
    await tb.start()

    C = np.zeros((rows_p, cols_p), dtype=np.int64)
    predicted = tiled_matmul_cycles(cfg, m, k, n)
    recent_beats: deque[int] = deque(maxlen=8)
    pending: deque[tuple[int, int]] = deque()   # (tile, row) of accepted requests
    tile, index, row = 0, 0, 0
    reading = False
    first_beat = last_row = None
    rows_left = len(tiles) * dim
    cycle = tb.cycle
    while rows_left:
        await RisingEdge(dut.clk)
        cycle += 1
        offer_beat = offer_req = overlap = False
        if tile < len(tiles) and not reading:
            offer_beat = True
            dut.operands__payload.value = beat(tile, index)
        elif tile < len(tiles):
            offer_req = True
            dut.rd_req__payload.value = row
            if row == dim - 1 and tile + 1 < len(tiles) and not busy_at(cycle, recent_beats):
                offer_beat = overlap = True
                dut.operands__payload.value = beat(tile + 1, 0)
        dut.operands__valid.value = int(offer_beat)
        dut.rd_req__valid.value = int(offer_req)

        await ReadOnly()
        assert tb.cycle == cycle, f"cycle count lost: bench {cycle}, TB {tb.cycle}"
        beat_taken = offer_beat and int(dut.operands__ready.value)
        req_taken = offer_req and int(dut.rd_req__ready.value)
        if offer_beat:
            assert beat_taken, f"cycle {cycle}: operands.ready low (the unit never stalls)"
            recent_beats.append(cycle)
            first_beat = cycle if first_beat is None else first_beat
        if overlap:
            assert req_taken, (
                f"cycle {cycle}: the next tile's first beat was sent with the last readout "
                f"request of tile {tile}, but the request was not accepted (busy predicted low)")
        if int(dut.rd_data__valid.value):
            done_tile, done_row = pending.popleft()
            ti, tj = tiles[done_tile]
            C[ti * dim + done_row, tj * dim:(tj + 1) * dim] = unpack_row(
                cfg, int(dut.rd_data__payload.value), dtype)
            rows_left -= 1
            last_row = cycle
        if req_taken:
            pending.append((tile, row))
            row += 1
            if row == dim:
                tile, index, row, reading = tile + 1, (1 if overlap else 0), 0, False
        elif beat_taken:
            index += 1
        if not reading and tile < len(tiles) and index == k:
            reading = True
        assert cycle - (first_beat or cycle) <= 2 * predicted + 100, (
            f"cycle {cycle}: demo still running, twice the predicted {predicted} cycles")

    expected = matmul_reference(A, B, dtype).astype(np.int64)
    got = C[:m, :n]
    wrong = np.argwhere(got != expected)
    cycles = last_row - first_beat + 1
    ideal = ideal_cycles(cfg, m, k, n)
    report = {
        "config": cfg.name, "mac_dim": dim, "dtype": dtype.name.lower(), "m": m, "k": k, "n": n,
        "seed": seed, "tiles": len(tiles), "cycles": cycles, "predicted_cycles": predicted,
        "ideal_cycles": ideal, "utilisation": ideal / cycles,
        "match": bool(wrong.size == 0), "mismatches": int(len(wrong)),
    }
    if dtype == ElemType.BF16:
        # The same BF16 operands multiplied in float64 (products exact, sums to 53 bits).
        exact = numerics.bf16_value(A) @ numerics.bf16_value(B)
        tile = numerics.f32_value(got)
        error = np.abs(tile - exact)
        report.update(max_abs_error=float(error.max()),
                      max_rel_error=float((error / np.maximum(np.abs(exact), 1e-30)).max()),
                      reference_max_abs=float(np.abs(exact).max()))
    if wrong.size:
        i, j = (int(x) for x in wrong[0])
        report["first_mismatch"] = {"row": i, "col": j, "expected": int(expected[i, j]),
                                    "got": int(got[i, j])}
    tb.log.info("matrix demo: %s", report)
    Path(params["out"]).write_text(json.dumps(report, indent=2))
