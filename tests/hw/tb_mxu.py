"""cocotb bench of the matrix engine's test top (`mxu_top`: `MatrixEngine` + `MatrixUnit` +
`NodeSRAM(cfg, 4 read, 3 write)`, see tests/test_mxu.py::MatrixEngineTop), in lockstep with
`MatrixEngineModel` + `SRAMModel` through the simulator-independent harness `mxu_lockstep.py`.

Every cycle the bench drives the top's inputs right after the rising edge (the sequencer's
command pulses, random requests on node read ports 0, 2, 3 and write ports 0, 2 held until
granted) and, in `ReadOnly`, hands every output to `MxuLockstep.check`, which compares the
engine's SRAM requests and grants, `idle`, `busy`, operand beats, row requests and the contention
ports' grants and read data with the models, then clocks them. The first difference fails the
test with the cycle, the signal, the expected and the observed value.

Each test first writes random words to the whole SRAM (the DUT's memory survives the reset
between tests; `create` returns when the fill is done), runs its instructions, reads the words
the engine wrote back through the contention ports and compares them, and the SRAM model, with
a NumPy execution of the accepted instructions. Timing assertions use the formulas of `d1tile.sim.mxu`.

Environment: `D1TILE_CONFIG` (bench_config.py); `D1TILE_MXU_RANDOM` = instructions per phase of
`random_programs` (default 40).
"""

from __future__ import annotations

import os

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from bench_config import bench_config
from d1tile.dtypes import ElemType
from d1tile.hw.testbench import TB
from d1tile.isa import Opcode, encode
from d1tile.sim.matrix import acc_latency
from d1tile.sim.mxu import MATMUL_FIRST_BEAT, ideal_matmul_cycles, matmul_cycles, mread_cycles
from mxu_lockstep import MxuLockstep, input_names, matmul, mread, output_names


class MxuBench(TB):
    """TB + the lockstep harness + the top's handles."""

    def __init__(self, dut):
        super().__init__(dut)
        self.cfg = bench_config()
        self.lock = MxuLockstep(self.cfg, self.rng, log=self.log.info)
        try:
            self.ins = {name: getattr(dut, name) for name in input_names()}
            self.outs = {name: getattr(dut, name) for name in output_names()}
        except AttributeError as exc:
            raise AssertionError(f"the top lacks a port the bench expects: {exc}") from None
        for handle in self.ins.values():
            handle.value = 0

    @classmethod
    async def create(cls, dut) -> "MxuBench":
        bench = cls(dut)
        await bench.start()
        bench.lock.fill()
        await bench.run()
        return bench

    async def run(self, max_cycles: int = 200_000):
        """Cycle in lockstep until the harness has no work left."""
        lock = self.lock
        clk = self.dut.clk
        limit = lock.cycle + max_cycles
        while lock.busy:
            for name, value in lock.inputs().items():
                self.ins[name].value = value
            await ReadOnly()
            lock.check({name: int(handle.value) for name, handle in self.outs.items()})
            await RisingEdge(clk)
            if lock.cycle >= limit:
                raise AssertionError(f"not done after {max_cycles} cycles (seed {self.seed}); "
                                     f"engine: {lock.model.describe()}")

    async def finish(self):
        """Read back every word an MREAD wrote and compare with the NumPy execution."""
        lock = self.lock
        lock.contention(0, 0)
        written = sorted({(e["instr"].dst + r) % self.cfg.sram_words for e in lock.trace
                          if e["taken"] and e["instr"].op == Opcode.MREAD
                          for r in range(e["instr"].nrows)})
        lock.readback(written)
        await self.run()
        lock.final_check()
        self.log.info("%d cycles checked in lockstep; %d beats, %d rows written; engine "
                      "refusals: %d reads, %d writes; port 2/3 reads refused for the engine: %d; "
                      "%d words read back", lock.cycle, lock.model.beats,
                      lock.model.rows_written, lock.engine_read_refusals,
                      lock.engine_write_refusals, lock.refused_by_engine, len(written))


def unit_busy_after(lock, entry) -> int:
    """Cycles after MREAD `entry`'s start in which the matrix unit is still busy with the beats
    of the last MATMUL into its bank (`acc_latency - 1` after its last beat); beats into the
    other bank do not count."""
    index = lock.trace.index(entry)
    for prev in reversed(lock.trace[:index]):
        if prev["taken"] and prev["instr"].op == Opcode.MATMUL \
                and prev["instr"].bank == entry["instr"].bank:
            beats = lock.timing(prev)["beats"]
            if not beats:
                return 0
            last = prev["start"] + beats[-1]
            return max(0, last + acc_latency() - 1 - entry["start"])
    return 0


@cocotb.test()
async def directed_timing(dut):
    """No contention. MATMULs of several kw, INT8 and BF16, each followed at once (in its
    last-beat cycle) by an MREAD of all rows, then after a gap by an MREAD of one row: beats at
    start + MATMUL_FIRST_BEAT + k, `idle` again after `matmul_cycles(kw, type)`; rows written
    one per cycle from start + 2 (+ the unit's busy cycles), `idle` after `mread_cycles`.
    Then the two banks overlapped: MATMUL into bank 0, its MREAD in the last-beat cycle, a
    MATMUL into bank 1 in the next cycle (its beats run while bank 0's rows are written), its
    MREAD, and so on: the same formulas, each half on its own."""
    bench = await MxuBench.create(dut)
    cfg, lock = bench.cfg, bench.lock
    n, bw = cfg.mac_dim, cfg.bank_words
    kws = [1, 2, 3, 16, 48]
    for dtype in (ElemType.INT8, ElemType.BF16):
        for kw in kws:
            lock.issue(matmul(lock.random_range(kw), lock.random_range(kw), kw, True, dtype))
            lock.issue(mread(lock.random_range(n), 0, n))
            lock.issue(mread(lock.random_range(1), n - 1, 1), gap=3)
    for dtype in (ElemType.INT8, ElemType.BF16):
        for kw in (1, 2, 16):
            for bank in (0, 1, 0, 1):
                # A in SRAM bank 0, B in bank 1, results in bank 2: no SRAM hazard between
                # a MATMUL and the MREAD beside it.
                lock.issue(matmul(0, bw, kw, True, dtype, bank))
                lock.issue(mread(2 * bw + n * bank, 0, n, bank))
    await bench.run()
    overlapped = 0
    for k, (prev, entry) in enumerate(zip(lock.trace, lock.trace[1:])):
        if entry["instr"].op == Opcode.MATMUL and prev["instr"].op == Opcode.MREAD \
                and entry["instr"].bank != prev["instr"].bank:
            # The MATMUL starts the cycle after the MREAD of the other bank, unless the MREAD
            # of its own bank still runs (the bank hazard), and beats while the other bank's
            # rows are written.
            own = [e for e in lock.trace[:k + 1] if e["instr"].op == Opcode.MREAD
                   and e["instr"].bank == entry["instr"].bank]
            expected = max([prev["start"] + 1] + ([own[-1]["idle_cycle"]] if own else []))
            assert entry["start"] == expected, (str(prev["instr"]), str(entry["instr"]),
                                                entry["start"], expected)
            first_beat = entry["start"] + lock.timing(entry)["beats"][0]
            last_write = prev["start"] + lock.timing(prev)["writes"][-1]
            overlapped += first_beat <= last_write
    assert overlapped, "no MREAD overlapped the next MATMUL"
    for entry in lock.trace:
        ins = entry["instr"]
        got = lock.timing(entry)
        if ins.op == Opcode.MATMUL:
            beats = ideal_matmul_cycles(cfg, ins.kw, ins.type)
            expected = {"beats": [MATMUL_FIRST_BEAT + k for k in range(beats)], "writes": [],
                        "idle": matmul_cycles(cfg, ins.kw, ins.type)}
            bench.log.info("MATMUL kw=%d type %s: %d cycles from start to idle (ideal %d beats, "
                           "formula V*kw+3 = %d)", ins.kw, ElemType(ins.type).name, got["idle"],
                           beats, matmul_cycles(cfg, ins.kw, ins.type))
        else:
            busy = unit_busy_after(lock, entry)
            expected = {"beats": [], "writes": [2 + busy + r for r in range(ins.nrows)],
                        "idle": mread_cycles(ins.nrows, busy)}
            bench.log.info("MREAD nrows=%d (unit busy %d): %d cycles from start to idle "
                           "(ideal %d)", ins.nrows, busy, got["idle"], ins.nrows)
        assert got == expected, f"{ins} started in cycle {entry['start']}: timing (relative to " \
                                f"the start) {got}, expected {expected}"
    await bench.finish()


@cocotb.test()
async def refused_requests_are_held(dut):
    """Heavy contention on the banks the engine uses: read port 0 and write port 0 (higher
    priority) refuse the engine's reads and writes, which it holds; ports 2 and 3 (lower) are
    refused while the engine has their bank. The lockstep checks every held request."""
    bench = await MxuBench.create(dut)
    lock = bench.lock
    lock.contention(reads={0: 0.7, 2: 0.7, 3: 0.7}, writes={0: 0.7, 2: 0.3})
    for _ in range(24):
        lock.issue(lock.random_matmul(12) if lock.rng.random() < 0.5 else lock.random_mread(),
                   gap=lock.rng.choice([0, 0, 2]))
    await bench.run()
    await bench.finish()
    assert lock.engine_read_refusals > 0, "no engine read was refused"
    assert lock.engine_write_refusals > 0, "no engine write was refused"
    assert lock.refused_by_engine > 0, "the engine never refused a lower-priority read"


@cocotb.test()
async def edge_cases(dut):
    """Ranges at the end of the SRAM and across bank boundaries, A and B the same words,
    accumulation without clear, single rows at both ends, back-to-back MATMULs and MREAD ->
    MATMUL; ignored commands (other opcodes, kw = 0, nrows = 0) and a start while busy leave the
    engine as it was. Reads contend on port 0 only (no contention writes)."""
    bench = await MxuBench.create(dut)
    cfg, lock = bench.cfg, bench.lock
    n, words, bank = cfg.mac_dim, cfg.sram_words, cfg.bank_words
    lock.contention(reads={0: 0.3, 2: 0.0, 3: 0.0}, writes=0.0)
    lock.issue(matmul(words - 4, bank - 2, 4, True))          # end of SRAM; across banks 0|1
    lock.issue(matmul(bank - 3, bank - 3, 5, False))          # A and B the same words
    lock.issue(matmul(bank - 3, 11, 3, False, ElemType.BF16))  # BF16 on top of INT8 sums
    lock.issue(mread(words - n, 0, n))                        # the last n words
    lock.issue(mread(2 * bank - 1, n - 1, 1))                 # last row; last word of bank 1
    lock.issue(matmul(0, words - 1, 1, True), gap=2)          # first word x last word
    lock.issue(matmul(5, 2 * bank + 5, 3, False))             # back to back with the previous
    lock.issue(mread(3 * bank - n // 2, 0, n))                # across banks 2|3
    lock.issue(matmul(7, 9, 2, True))                         # MREAD -> MATMUL back to back
    lock.issue(matmul(3, 9, 2, True, ElemType.BF16))          # BF16 after INT8, back to back
    ignored = [encode(Opcode.NOP), encode(Opcode.HALT), encode(Opcode.SETQ, scale=3),
               encode(Opcode.VEC, vop=0, dst=1, a=2, b=3, n=4), encode(Opcode.WAIT, value=1),
               encode(Opcode.SEND, src=0, n=1), matmul(0, 0, 0, True), mread(0, 0, 0), 0xB, 0xF,
               matmul(0, 4, 2, True, ElemType.INT32), matmul(0, 4, 2, True, ElemType.FP32)]
    for word in ignored:
        lock.issue(word, gap=1)
    lock.issue(matmul(10, 20, 8, False), gap=1)
    lock.issue(matmul(40, 50, 2, True), gap=5, force=True)    # while the MATMUL runs
    lock.issue(matmul(40, 50, 2, True), gap=9, force=True)    # still running (8 words)
    lock.issue(mread(60, 0, n))                               # waits for the MATMUL (bank 0)
    lock.issue(mread(30, 0, n), gap=2, force=True)            # while that MREAD runs
    await bench.run()
    trace = lock.trace
    for entry in trace:
        if entry["word"] in ignored:
            assert not entry["taken"] and entry["idle_next"], \
                f"{entry['instr']} (cycle {entry['start']}) was not ignored"
    taken = [e for e in trace if e["taken"]]
    back_to_back = (matmul(5, 2 * bank + 5, 3, False), matmul(7, 9, 2, True),
                    matmul(3, 9, 2, True, ElemType.BF16))
    assert sum(e["word"] in back_to_back for e in taken) == 3
    for prev, entry in zip(taken, taken[1:]):
        if entry["word"] in back_to_back:
            # Issued with gap 0: in the previous MATMUL's last-beat cycle / the MREAD's idle.
            last = prev["start"] + (lock.timing(prev)["beats"] or lock.timing(prev)["writes"])[-1]
            expected = last if prev["instr"].op == Opcode.MATMUL else last + 1
            assert entry["start"] == expected, \
                f"{entry['instr']} started in cycle {entry['start']}, expected {expected}"
    forced = [e for e in trace if not e["taken"] and e["word"] not in ignored]
    assert len(forced) == 3 and all(not e["idle_next"] for e in forced), \
        f"the starts while busy: {[(e['start'], str(e['instr'])) for e in forced]}"
    await bench.finish()


@cocotb.test()
async def random_programs(dut):
    """Random MATMUL/MREAD sequences with random gaps, in three phases: no contention, moderate
    and heavy random contention on all five other ports."""
    bench = await MxuBench.create(dut)
    lock = bench.lock
    rng = lock.rng
    count = int(os.environ.get("D1TILE_MXU_RANDOM", "40"))
    for phase, level in enumerate((0.0, 0.3, 0.6)):
        rates = {i: rng.uniform(0, level) for i in (0, 2, 3)}
        writes = {j: rng.uniform(0, level) for j in (0, 2)}
        lock.contention(reads=rates, writes=writes)
        start, beats = lock.cycle, lock.model.beats
        for _ in range(count):
            word = lock.random_matmul(24) if rng.random() < 0.6 else lock.random_mread()
            lock.issue(word, gap=rng.choice([0, 0, 0, 1, 2, 5]))
        await bench.run()
        cycles = lock.cycle - start
        bench.log.info("phase %d (contention up to %.1f): %d instructions in %d cycles, %d beats "
                       "(%.0f%% of the cycles)", phase, level, count, cycles,
                       lock.model.beats - beats, 100 * (lock.model.beats - beats) / cycles)
    await bench.finish()
