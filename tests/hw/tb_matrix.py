"""cocotb bench of `d1tile.hw.matrix.MatrixUnit` (top `matrix_unit`).

Every test drives the operand and readout-request streams (random idle cycles unless the test is
about timing), takes `rd_data` with random back-pressure, samples every control signal once per
cycle, and ends with `MatrixBench.check()`:

* scoreboard: the handshake logs are replayed, in cycle order, on `MatrixUnitRef` (a readout
  accepted in cycle r sees the beats accepted in cycles < r, the documented same-cycle rule), and
  each row read must equal the reference's row;
* protocol: `operands.ready` is 1 every cycle, `busy` is high exactly in the cycles
  `busy_at` predicts, `rd_req.ready` follows its documented formula, every row appears
  `READOUT_LATENCY` cycle after its request and is held, unchanged, until taken.

Tests that compute whole products also compare with NumPy (`A.astype(int32) @ B`) for INT8
and with `matmul_reference(A, B, BF16)` (the k-by-k FP32 reference of the numeric contract) for
BF16, bit for bit; BF16 operands are drawn to hit the corner cases (zeros of both signs,
subnormals, infinities, NaNs, the largest values, exact ties, cancellation).
"""

from __future__ import annotations

import numpy as np

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from bench_config import bench_config
from d1tile import numerics as nx
from d1tile.dtypes import ElemType
from d1tile.hw.matrix import pack_operands, unpack_row
from d1tile.hw.testbench import TB, StreamDriver, StreamSink
from d1tile.sim.matrix import (ACC_LATENCY, READOUT_LATENCY, MatrixUnitRef, busy_at,
                               earliest_readout_cycle, first_row_cycle, matmul_reference,
                               outer_product_beats)

INT8, BF16 = ElemType.INT8, ElemType.BF16
BF16_SPECIALS = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x0001, 0x807F,
                 0x0080, 0x8080, 0x7F7F, 0xFF7F, 0x3F80, 0xBF80, 0x3F81, 0x0081]


class _DirectLog:
    """Stands in for a StreamDriver when a test drives the stream's pins itself."""

    def __init__(self):
        self.sent: list[tuple[int, int | None]] = []
        self.queue: list[int] = []
        self.idle = True


class MatrixBench:
    """Drivers, sink, per-cycle monitor and scoreboard around one MatrixUnit.

    With `drive=False` the operand and request pins are left to the test, which appends
    `(cycle, payload)` to `ops.sent` / `req.sent` (and the beats to `beats`) itself.
    """

    def __init__(self, dut, op_valid=1.0, req_valid=1.0, rd_ready=1.0, drive=True):
        self.dut = dut
        self.tb = TB(dut)
        self.cfg = bench_config()
        self.n = self.cfg.mac_dim
        self.rng = np.random.default_rng(self.tb.rng.getrandbits(32))
        if drive:
            self.ops = StreamDriver(self.tb, "operands", op_valid)
            self.req = StreamDriver(self.tb, "rd_req", req_valid)
        else:
            self.ops, self.req = _DirectLog(), _DirectLog()
            dut.operands__valid.value = 0
            dut.rd_req__valid.value = 0
        self.rows = StreamSink(self.tb, "rd_data", rd_ready)
        self.beats: list[tuple[np.ndarray, np.ndarray, bool, ElemType]] = []   # in send order
        self.samples: dict[int, dict[str, int]] = {}
        self.tb.log.info("matrix bench: N=%d, operand valid %.2f, request valid %.2f, "
                         "rd_data ready %.2f", self.n, op_valid, req_valid, rd_ready)

    async def start(self):
        await self.tb.start()
        cocotb.start_soon(self._monitor())

    async def _monitor(self):
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            self.samples[self.tb.cycle] = {
                "op_ready": int(dut.operands__ready.value),
                "busy": int(dut.busy.value),
                "req_ready": int(dut.rd_req__ready.value),
                "rd_valid": int(dut.rd_data__valid.value),
                "rd_ready": int(dut.rd_data__ready.value),
                "rd_payload": int(dut.rd_data__payload.value),
            }

    # -- stimulus ----------------------------------------------------------------------------

    def random_int8(self, *shape) -> np.ndarray:
        return self.rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)

    def random_bf16(self, *shape, special: float = 0.05) -> np.ndarray:
        """BF16 bit patterns: mostly standard normal values, some of them scaled to extreme
        exponents, and `special` of them corner cases."""
        values = self.rng.standard_normal(shape) * np.exp2(self.rng.choice(
            [0, 0, 0, 0, -60, 60, -120, 120], size=shape))
        bits = nx.bf16_bits(values).astype(np.int64)
        corner = self.rng.random(shape) < special
        bits[corner] = self.rng.choice(BF16_SPECIALS, size=int(corner.sum()))
        return bits

    def send_beat(self, a, b, clear: bool, dtype=INT8):
        self.beats.append((np.asarray(a), np.asarray(b), bool(clear), dtype))
        self.ops.send(pack_operands(self.cfg, a, b, clear, dtype))

    def send_product(self, A, B, clear: bool = True, dtype=INT8):
        """The beats of A @ B; `clear` on the first one when `clear`."""
        for k, (a, b) in enumerate(outer_product_beats(A, B)):
            self.send_beat(a, b, clear and k == 0, dtype)

    def request_rows(self, rows):
        for row in rows:
            self.req.send(int(row))

    def random_order(self) -> list[int]:
        return [int(i) for i in self.rng.permutation(self.n)]

    async def wait_idle(self, limit: int = 20000):
        """Until every queued beat and request was accepted and every requested row taken."""
        start = self.tb.cycle
        while not (self.ops.idle and self.req.idle
                   and len(self.rows.received) == len(self.req.sent)):
            assert self.tb.cycle - start < limit, (
                f"cycle {self.tb.cycle}: not idle after {limit} cycles: {len(self.ops.queue)} "
                f"beats and {len(self.req.queue)} requests queued, {len(self.rows.received)} of "
                f"{len(self.req.sent)} rows taken")
            await RisingEdge(self.dut.clk)
        # Let the monitor record the cycle of the last transfer.
        await RisingEdge(self.dut.clk)

    async def read_matrix(self, order=None, dtype=INT8) -> np.ndarray:
        """Once every queued beat is accepted, request all rows (random order by default), wait,
        and return the N x N result as `dtype`'s results (int32 values, or FP32 bits)."""
        order = self.random_order() if order is None else order
        await self.ops.drain()
        first = len(self.rows.received)
        self.request_rows(order)
        await self.wait_idle()
        result = np.zeros((self.n, self.n), dtype=np.int64)
        for row, (_, payload) in zip(order, self.rows.received[first:]):
            result[row] = unpack_row(self.cfg, payload, dtype)
        return result

    # -- checks ------------------------------------------------------------------------------

    def check(self):
        """Scoreboard and protocol checks over everything logged so far."""
        assert len(self.ops.sent) == len(self.beats), "operand log and beat list disagree"
        beat_cycles = [cycle for cycle, _ in self.ops.sent]
        beat_set = set(beat_cycles)

        # Replay: requests before beats within a cycle (a same-cycle readout sees the old sums).
        events = [(cycle, 0, idx) for idx, (cycle, _) in enumerate(self.req.sent)]
        events += [(cycle, 1, idx) for idx, (cycle, _) in enumerate(self.ops.sent)]
        ref = MatrixUnitRef(self.cfg)
        expected_rows = []
        for cycle, kind, idx in sorted(events):
            if kind == 0:
                expected_rows.append(ref.read_row(self.req.sent[idx][1]))
            else:
                a, b, clear, dtype = self.beats[idx]
                ref.mac(a, b, clear, dtype)

        assert len(self.rows.received) == len(self.req.sent), (
            f"{len(self.req.sent)} requests accepted but {len(self.rows.received)} rows taken")
        for idx, ((req_cycle, row), (data_cycle, payload), expected) in enumerate(
                zip(self.req.sent, self.rows.received, expected_rows)):
            got = unpack_row(self.cfg, payload, BF16)       # raw 32-bit lanes
            assert got == [int(x) for x in expected], (
                f"read #{idx} of row {row} (request accepted in cycle {req_cycle}, data taken in "
                f"cycle {data_cycle}): expected {list(map(int, expected))}, got {got}")
            # The row is valid READOUT_LATENCY after the request, then held until taken.
            valid_from = req_cycle + READOUT_LATENCY
            assert data_cycle >= valid_from, (
                f"read #{idx}: row taken in cycle {data_cycle}, before its request "
                f"(cycle {req_cycle}) + latency {READOUT_LATENCY}")
            for cycle in range(valid_from, data_cycle + 1):
                sample = self.samples[cycle]
                assert sample["rd_valid"] == 1, (
                    f"read #{idx}: rd_data.valid low in cycle {cycle}; expected high from cycle "
                    f"{valid_from} (request in cycle {req_cycle}) until taken in {data_cycle}")
                assert sample["rd_payload"] == payload, (
                    f"read #{idx}: rd_data.payload changed in cycle {cycle} while waiting: "
                    f"expected {payload:#x}, got {sample['rd_payload']:#x}")
                if cycle < data_cycle:
                    assert sample["rd_ready"] == 0, (
                        f"read #{idx}: valid and ready in cycle {cycle} but the sink logged the "
                        f"transfer in cycle {data_cycle}")

        for cycle, sample in sorted(self.samples.items()):
            assert sample["op_ready"] == 1, f"cycle {cycle}: operands.ready is 0, expected 1"
            recent = [t for t in range(cycle - ACC_LATENCY, cycle + 1) if t in beat_set]
            busy = busy_at(cycle, recent)
            assert sample["busy"] == int(busy), (
                f"cycle {cycle}: busy expected {int(busy)}, got {sample['busy']} "
                f"(beats accepted in cycles {recent} of {cycle - ACC_LATENCY}..{cycle})")
            req_ready = int(not busy and (not sample["rd_valid"] or sample["rd_ready"]))
            assert sample["req_ready"] == req_ready, (
                f"cycle {cycle}: rd_req.ready expected {req_ready} (busy {int(busy)}, rd_data "
                f"valid {sample['rd_valid']} ready {sample['rd_ready']}), got {sample['req_ready']}")
        self.tb.log.info("checked %d beats, %d reads, %d cycles", len(beat_cycles),
                         len(expected_rows), len(self.samples))


def _assert_matrix(got, expected, what, bits=False):
    """All elements equal; `bits`: they are FP32 bit patterns (printed in hex)."""
    expected = np.asarray(expected, dtype=np.int64)
    bad = np.argwhere(got != expected)
    show = (lambda v: f"{int(v):#010x}") if bits else (lambda v: f"{int(v)}")
    assert bad.size == 0, (
        f"{what}: {len(bad)} of {got.size} elements differ; first at {tuple(bad[0])}: expected "
        f"{show(expected[tuple(bad[0])])}, got {show(got[tuple(bad[0])])}"
        + ("" if bits else f"\nexpected:\n{expected}\ngot:\n{got}"))


@cocotb.test()
async def test_directed(dut):
    """Zero rows after reset; a hand-built product; a second product with `clear`; full rate."""
    bench = MatrixBench(dut)
    await bench.start()
    n = bench.n
    assert not (await bench.read_matrix()).any(), "accumulators are not zero after reset"

    i = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    A = ((i - k) % 7 - 3).astype(np.int8)                 # (N, K=N)
    B = ((k.T + 1) * (np.arange(n)[None, :] - 1)).astype(np.int8)
    bench.send_product(A, B)
    _assert_matrix(await bench.read_matrix(list(range(n))), A.astype(np.int32) @ B,
                   "directed product")
    bench.send_product(np.eye(n, dtype=np.int8), B)         # clear discards the first product
    _assert_matrix(await bench.read_matrix(), B, "identity @ B after clear")
    bench.check()


@cocotb.test()
async def test_random_products(dut):
    """Back-to-back random products, K in 1..3N, `clear` on each first beat; random idle cycles
    on both request streams and random back-pressure on rd_data."""
    bench = MatrixBench(dut)
    tb_rng = bench.tb.rng
    bench.ops.valid_prob = tb_rng.uniform(0.3, 1.0)
    bench.req.valid_prob = tb_rng.uniform(0.3, 1.0)
    bench.rows.ready_prob = tb_rng.uniform(0.2, 1.0)
    bench.tb.log.info("probabilities: operands %.2f, requests %.2f, rd_data ready %.2f",
                      bench.ops.valid_prob, bench.req.valid_prob, bench.rows.ready_prob)
    await bench.start()
    n = bench.n
    for product in range(12):
        k = int(bench.rng.integers(1, 3 * n + 1))
        A, B = bench.random_int8(n, k), bench.random_int8(k, n)
        bench.send_product(A, B)
        got = await bench.read_matrix()
        _assert_matrix(got, A.astype(np.int32) @ B, f"product {product} (K={k})")
        _assert_matrix(got, matmul_reference(A, B), f"product {product} (K={k}) vs reference")
    bench.check()


@cocotb.test()
async def test_accumulate_two_streams(dut):
    """A1 @ B1 with clear, then A2 @ B2 without: the rows hold the sum."""
    bench = MatrixBench(dut, op_valid=0.6, req_valid=0.7, rd_ready=0.5)
    await bench.start()
    n = bench.n
    k1, k2 = (int(x) for x in bench.rng.integers(1, 3 * n + 1, size=2))
    A1, B1 = bench.random_int8(n, k1), bench.random_int8(k1, n)
    A2, B2 = bench.random_int8(n, k2), bench.random_int8(k2, n)
    bench.send_product(A1, B1, clear=True)
    bench.send_product(A2, B2, clear=False)
    expected = A1.astype(np.int32) @ B1 + A2.astype(np.int32) @ B2
    _assert_matrix(await bench.read_matrix(), expected, f"A1 @ B1 + A2 @ B2 (K={k1}+{k2})")
    bench.check()


@cocotb.test()
async def test_extremes(dut):
    """All -128 and all 127 operands over K = 3N beats (the largest sums of the tests)."""
    bench = MatrixBench(dut, op_valid=0.8, req_valid=0.8, rd_ready=0.6)
    await bench.start()
    n = bench.n
    k = 3 * n
    for a_val, b_val in ((-128, -128), (127, 127), (-128, 127), (127, -128)):
        A = np.full((n, k), a_val, dtype=np.int8)
        B = np.full((k, n), b_val, dtype=np.int8)
        bench.send_product(A, B)
        _assert_matrix(await bench.read_matrix(), A.astype(np.int32) @ B,
                       f"all {a_val} @ all {b_val}")
    bench.check()


@cocotb.test()
async def test_interleaved(dut):
    """Beats (with and without clear) and readout requests queued together: requests land
    between beats, in the same cycle as beats and while beats are in flight. The scoreboard's
    cycle replay checks what each readout saw."""
    bench = MatrixBench(dut, op_valid=0.5, req_valid=0.5, rd_ready=0.5)
    await bench.start()
    n = bench.n
    for _ in range(16 * n):
        bench.send_beat(bench.random_int8(n), bench.random_int8(n), bench.rng.random() < 0.1)
    bench.request_rows(int(x) for x in bench.rng.integers(0, n, size=6 * n))
    await bench.wait_idle()
    same_cycle = {c for c, _ in bench.ops.sent} & {c for c, _ in bench.req.sent}
    bench.tb.log.info("%d cycles had a beat and a readout request accepted together",
                      len(same_cycle))
    bench.check()


@cocotb.test()
async def test_timing(dut):
    """Full rate: K beats back to back and a readout request offered in every cycle from the
    cycle after the first beat. The first request must be accepted exactly when the last beat
    reaches the accumulators, the first row must be valid READOUT_LATENCY later, and the rows
    must follow one per cycle (rd_data always ready)."""
    bench = MatrixBench(dut, drive=False)
    await bench.start()
    n = bench.n
    clk = dut.clk
    for trial in range(3):
        k = int(bench.rng.integers(1, 3 * n + 1))
        A, B = bench.random_int8(n, k), bench.random_int8(k, n)
        beats = outer_product_beats(A, B)
        order = bench.random_order()
        first_read = len(bench.rows.received)
        bench.beats.extend((a, b, i == 0, INT8) for i, (a, b) in enumerate(beats))
        # Drive the pins directly so that the offer cycles are exact.
        next_beat = 0
        next_req = 0
        req_offered_from = None
        while next_beat < k or next_req < n:
            await RisingEdge(clk)
            offer_beat = next_beat < k
            dut.operands__valid.value = int(offer_beat)
            if offer_beat:
                a, b = beats[next_beat]
                dut.operands__payload.value = pack_operands(bench.cfg, a, b, next_beat == 0)
            offer_req = next_beat > 0 and next_req < n
            dut.rd_req__valid.value = int(offer_req)
            if offer_req:
                dut.rd_req__payload.value = order[next_req]
                if req_offered_from is None:
                    req_offered_from = bench.tb.cycle
            await ReadOnly()
            cycle = bench.tb.cycle
            if offer_beat and int(dut.operands__ready.value):
                bench.ops.sent.append((cycle, None))
                next_beat += 1
            if offer_req and int(dut.rd_req__ready.value):
                bench.req.sent.append((cycle, order[next_req]))
                next_req += 1
        await RisingEdge(clk)
        dut.operands__valid.value = 0
        dut.rd_req__valid.value = 0
        await bench.wait_idle()

        beat_cycles = [c for c, _ in bench.ops.sent[-k:]]
        last_beat = beat_cycles[-1]
        assert beat_cycles == list(range(beat_cycles[0], last_beat + 1)), (
            f"trial {trial}: beats not accepted back to back: cycles {beat_cycles}")
        req_cycles = [c for c, _ in bench.req.sent[-n:]]
        row_cycles = [c for c, _ in bench.rows.received[first_read:]]
        expect_req = earliest_readout_cycle(last_beat)
        assert req_offered_from <= expect_req, "bench error: requests offered too late"
        assert req_cycles[0] == expect_req, (
            f"trial {trial} (K={k}): last beat in cycle {last_beat}; first readout request "
            f"expected in cycle {expect_req} (ACC_LATENCY {ACC_LATENCY}), got {req_cycles[0]}")
        assert row_cycles[0] == first_row_cycle(last_beat), (
            f"trial {trial} (K={k}): first row expected in cycle {first_row_cycle(last_beat)}, "
            f"got {row_cycles[0]}")
        expected_rows = list(range(row_cycles[0], row_cycles[0] + n))
        assert row_cycles == expected_rows, (
            f"trial {trial} (K={k}): rows expected one per cycle in {expected_rows}, "
            f"got {row_cycles}")
        got = np.zeros((n, n), dtype=np.int64)
        for row, (_, payload) in zip(order, bench.rows.received[first_read:]):
            got[row] = unpack_row(bench.cfg, payload)
        _assert_matrix(got, A.astype(np.int32) @ B, f"timing trial {trial} (K={k})")
    bench.check()


@cocotb.test()
async def test_bf16_random_products(dut):
    """BF16 products with K in 1..3N and a long one (K = 64N), operands biased to the corner
    cases, random idle cycles and back-pressure: bit-exact with the k-by-k FP32 reference."""
    bench = MatrixBench(dut, op_valid=0.8, req_valid=0.8, rd_ready=0.7)
    await bench.start()
    n = bench.n
    for product in range(10):
        k = 64 * n if product == 9 else int(bench.rng.integers(1, 3 * n + 1))
        A, B = bench.random_bf16(n, k), bench.random_bf16(k, n)
        bench.send_product(A, B, dtype=BF16)
        _assert_matrix(await bench.read_matrix(dtype=BF16), matmul_reference(A, B, BF16),
                       f"bf16 product {product} (K={k})", bits=True)
    bench.check()


@cocotb.test()
async def test_bf16_directed_corners(dut):
    """Each row of A against a B chosen so that every accumulator meets one corner case:
    -0 products with clear, Inf, NaN (canonical out), Inf - Inf, overflow to Inf, products
    below the flush threshold, exact ties (half an ulp, both parities), catastrophic
    cancellation (x + y - x), and a long alternating sum."""
    bench = MatrixBench(dut)
    await bench.start()
    n = bench.n
    big, one, tiny = 0x7F00, 0x3F80, 0x0180          # 2**127, 1, 2**-124
    cases = {
        "signed zeros": ([0x8000, 0x0000], [0x0000, 0x8000]),
        "infinities": ([0x7F80, one], [one, 0xFF80]),
        "nan": ([0x7FC1, one], [one, one]),
        "overflow": ([big, big], [0x4000, 0x4000]),            # 2**128 + 2**128
        "flush": ([tiny, tiny], [0x0180, 0x8180]),               # 2**-248, ±
        "tie even": ([one, one], [0x3F80, 0x3380]),              # 1 + 2**-24
        "tie odd": ([one, one, one], [0x3F80, 0x3400, 0x3380]),   # 1 + 2**-23 + 2**-24
        "cancellation": ([big, one, big], [0x3F80, 0x3F80, 0xBF80]),
    }
    for name, (a_col, b_row) in cases.items():
        k = len(a_col)
        A = np.tile(np.array(a_col, dtype=np.int64), (n, 1))
        B = np.tile(np.array(b_row, dtype=np.int64)[:, None], (1, n))
        bench.send_product(A, B, dtype=BF16)
        _assert_matrix(await bench.read_matrix(dtype=BF16), matmul_reference(A, B, BF16), name,
                       bits=True)
    bench.check()


@cocotb.test()
async def test_mixed_types(dut):
    """INT8 and BF16 beats interleaved, with and without clear, and readouts among them: the
    accumulators are the same 32-bit registers, reinterpreted by each beat's type."""
    bench = MatrixBench(dut, op_valid=0.6, req_valid=0.5, rd_ready=0.6)
    await bench.start()
    n = bench.n
    for _ in range(12 * n):
        if bench.rng.random() < 0.5:
            bench.send_beat(bench.random_int8(n), bench.random_int8(n),
                            bench.rng.random() < 0.1, INT8)
        else:
            bench.send_beat(bench.random_bf16(n), bench.random_bf16(n),
                            bench.rng.random() < 0.1, BF16)
    bench.request_rows(int(x) for x in bench.rng.integers(0, n, size=4 * n))
    await bench.wait_idle()
    bench.check()
