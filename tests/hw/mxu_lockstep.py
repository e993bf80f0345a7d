"""Simulator-independent lockstep harness of the matrix engine's test top (`mxu_top`, built by
tests/test_mxu.py: `MatrixEngineTop`): the engine (with its `MatrixUnit`) + a
`NodeSRAM(cfg, 4 read, 3 write)`, node read ports 0, 2, 3 and write ports 0, 2 brought out as
contention ports (`c_read0__*`, ..., `c_write2__*`), and the engine's own SRAM ports, its operand
beats and its row requests mirrored on probe outputs (`mx_*`, `beat_*`, `row_*`).

`MxuLockstep` plays the sequencer and the other requesters. Per cycle the simulator adapter
calls `inputs()` (what to drive after the rising edge) and then `check(observed)` with every
output of the top sampled in the same cycle, after the inputs settled. `check` compares the
DUT's engine requests and grants, `idle`, `busy`, each operand beat (payload included), each row
request and its acceptance, and the contention ports' grants and read data, with the models
(`MatrixEngineModel` + `SRAMModel`), then clocks the models. The first difference raises
`LockstepError` naming the cycle, the signal, the expected and the got value.

Phases, driven by the tests: `fill()` writes random words to every SRAM word through the
contention write ports (half of them random bits, half packed with BF16 values of moderate size,
so that BF16 products are not all NaN and Inf); `issue()` queues instructions, each started when the engine is idle
after its gap (or, for `force`, regardless of `idle`, to check that it is ignored), while the
contention ports make random requests (held until granted, like every requester): reads biased
to the banks the current instruction uses, writes only to a scratch area at the top of each bank
(`scratch`), which random instructions never touch; `readback()` reads words back through the
contention read ports. `functional` is the memory as a NumPy execution of the accepted
instructions makes it (`matmul_reference_words`, independent of the cycle model);
`final_check()` compares it with the words read back and with the SRAM model.

MATMULs are INT8 or BF16 (`random_matmul` picks either; a BF16 MATMUL without `clear` after an
INT8 one reinterprets the accumulator bits, as the hardware does).

Imports no simulator: the cocotb bench (tb_mxu.py) and the quick Amaranth-sim test share it.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from d1tile import numerics
from d1tile.dtypes import ELEMENTS, MATRIX_TYPES, ElemType
from d1tile.formats import word_from_lanes
from d1tile.hw.matrix import pack_operands
from d1tile.isa import Opcode, decode, encode
from d1tile.sim.mxu import MatrixEngineModel, matmul_reference_words
from d1tile.sim.sram import SRAMModel


CONTEND_READS = (0, 2, 3)    # node read ports besides the engine's 1
CONTEND_WRITES = (0, 2)      # node write ports besides the engine's 1
SCRATCH = 4                  # words at the top of each bank: the only contention write targets


class LockstepError(AssertionError):
    """The DUT and the models disagree."""


def input_names() -> list[str]:
    names = ["cmd__start", "cmd__instr"]
    for i in CONTEND_READS:
        names += [f"c_read{i}__en", f"c_read{i}__addr"]
    for j in CONTEND_WRITES:
        names += [f"c_write{j}__{s}" for s in ("en", "addr", "data", "mask")]
    return names


def output_names() -> list[str]:
    names = ["cmd__idle", "busy", "mx_rd_en", "mx_rd_addr", "mx_rd_ready", "mx_wr_en",
             "mx_wr_addr", "mx_wr_data", "mx_wr_mask", "mx_wr_ready", "beat_valid",
             "beat_payload", "row_valid", "row_index", "row_ready"]
    names += [f"c_read{i}__{s}" for i in CONTEND_READS for s in ("ready", "data")]
    names += [f"c_write{j}__ready" for j in CONTEND_WRITES]
    return names


def matmul(a, b, kw, clear, dtype=ElemType.INT8) -> int:
    return encode(Opcode.MATMUL, a=a, b=b, kw=kw, clear=int(clear), type=int(dtype))


def mread(dst, row0, nrows) -> int:
    return encode(Opcode.MREAD, dst=dst, row0=row0, nrows=nrows)


class MxuLockstep:
    """Models, stimulus and checks of one test (see the module docstring)."""

    def __init__(self, cfg, rng, log=print):
        self.cfg = cfg
        self.rng = rng
        self.log = log
        self.model = MatrixEngineModel(cfg)
        self.sram = SRAMModel(cfg, 4, 3)
        self.full = (1 << cfg.word_bytes) - 1
        self.n = cfg.mac_dim
        self.cycle = 0
        # sequencer stub
        self.program: deque = deque()     # (gap, word, force)
        self.gap = None                   # cycles still to wait before the head of `program`
        self.trace: list[dict] = []       # one entry per start pulse (see `_record`)
        self._running: dict | None = None  # the entry of the last instruction taken
        # contention requesters: held requests, queues of directed requests, random rates
        self.held_reads = {i: None for i in CONTEND_READS}
        self.held_writes = {j: None for j in CONTEND_WRITES}
        self.directed: set[tuple[str, int]] = set()   # ("r"/"w", port) holding a queued request
        self.read_queue = {i: deque() for i in CONTEND_READS}
        self.write_queue = {j: deque() for j in CONTEND_WRITES}
        self.read_prob = {i: 0.0 for i in CONTEND_READS}
        self.write_prob = {j: 0.0 for j in CONTEND_WRITES}
        self.hot_banks: list[int] = []
        # functional memory (None: unknown) and accumulators
        self.functional: list[int | None] = [None] * cfg.sram_words
        self.acc = np.zeros((self.n, self.n), dtype=np.uint32)       # accumulator bits
        self.readback_words: dict[int, int] = {}
        self.pending_readback: set[int] = set()
        # the DUT's read data due this cycle per contention port:
        # (addr, word, is a readback, functional word at the grant)
        self.due = {i: None for i in CONTEND_READS}
        self.engine_data = None
        # statistics
        self.engine_read_refusals = 0
        self.engine_write_refusals = 0
        self.refused_by_engine = 0          # port 2/3 reads refused because port 1 had the bank
        self.beat_cycles: list[int] = []
        self.write_cycles: list[int] = []
        # this cycle's decisions (set by inputs())
        self._start = False
        self._instr = 0
        self._reads = {}
        self._writes = {}

    # -- address space -------------------------------------------------------------------

    def bank_of(self, addr: int) -> int:
        return addr >> self.cfg.bank_addr_bits

    def is_scratch(self, addr: int) -> bool:
        return addr % self.cfg.bank_words >= self.cfg.bank_words - SCRATCH

    def random_range(self, length: int) -> int:
        """Start of a random range of `length` words inside one bank, clear of the scratch."""
        span = self.cfg.bank_words - SCRATCH
        length = min(length, span)
        bank = self.rng.randrange(self.cfg.sram_banks)
        return bank * self.cfg.bank_words + self.rng.randrange(span - length + 1)

    def random_matmul(self, max_kw: int) -> int:
        kw = self.rng.randint(1, min(max_kw, self.cfg.bank_words - SCRATCH))
        return matmul(self.random_range(kw), self.random_range(kw), kw, self.rng.random() < 0.5,
                      self.rng.choice(list(MATRIX_TYPES)))

    def random_word(self) -> int:
        """Random bits, or BF16 values of moderate size (normal, no overflow in short sums)."""
        cfg = self.cfg
        if self.rng.random() < 0.5:
            return self.rng.getrandbits(cfg.word_bits)
        values = [self.rng.gauss(0.0, 4.0) for _ in range(ELEMENTS[ElemType.BF16].per_word(cfg))]
        return ELEMENTS[ElemType.BF16].pack(cfg, numerics.bf16_bits(values))

    def random_mread(self) -> int:
        row0 = self.rng.randrange(self.n)
        nrows = self.rng.randint(1, self.n - row0)
        return mread(self.random_range(nrows), row0, nrows)

    # -- phases ----------------------------------------------------------------------------

    def fill(self):
        """Queue writes of random words to every SRAM word (banks interleaved over the two
        contention write ports, so both are granted every cycle)."""
        cfg = self.cfg
        order = [b * cfg.bank_words + k for k in range(cfg.bank_words)
                 for b in range(cfg.sram_banks)]
        for n, addr in enumerate(order):
            port = CONTEND_WRITES[n % len(CONTEND_WRITES)]
            self.write_queue[port].append((addr, self.random_word(), self.full))

    def issue(self, word: int, gap: int = 0, force: bool = False):
        """Queue an instruction: started `gap` cycles after the engine is idle and the previous
        one started (`force`: started after `gap` cycles whatever `idle` says). Nothing starts
        while directed writes (`fill`) are pending."""
        self.program.append((gap, word, force))

    def contention(self, reads=0.0, writes=0.0):
        """Random request rates: a probability per contention port (dict) or one for all."""
        for i in CONTEND_READS:
            self.read_prob[i] = reads[i] if isinstance(reads, dict) else reads
        for j in CONTEND_WRITES:
            self.write_prob[j] = writes[j] if isinstance(writes, dict) else writes

    def readback(self, addrs):
        """Queue reads of `addrs` on contention ports 0 and 2 (alternately); the words are
        collected in `readback_words` and compared by `final_check`."""
        self.pending_readback.update(addrs)
        for n, addr in enumerate(addrs):
            self.read_queue[CONTEND_READS[n % 2]].append(addr)

    @property
    def busy(self) -> bool:
        """Work left: instructions to issue, the engine running, directed requests (fill,
        readback) not yet granted or their data not yet seen. Random contention does not
        count."""
        return (bool(self.program) or not self.model.idle
                or any(self.read_queue.values()) or any(self.write_queue.values())
                or bool(self.directed) or bool(self.pending_readback))

    # -- one cycle ---------------------------------------------------------------------------

    def _random_read(self) -> int:
        cfg = self.cfg
        if self.hot_banks and self.rng.random() < 0.75:
            bank = self.rng.choice(self.hot_banks)
            return bank * cfg.bank_words + self.rng.randrange(cfg.bank_words)
        return self.rng.randrange(cfg.sram_words)

    def _random_write(self):
        cfg = self.cfg
        banks = self.hot_banks if self.hot_banks and self.rng.random() < 0.75 \
            else range(cfg.sram_banks)
        addr = (self.rng.choice(list(banks)) * cfg.bank_words + cfg.bank_words - SCRATCH
                + self.rng.randrange(SCRATCH))
        return addr, self.rng.getrandbits(cfg.word_bits), self.full

    def inputs(self) -> dict[str, int]:
        """Decide and return this cycle's inputs of the top (driven right after the edge)."""
        rng = self.rng
        model = self.model
        # Sequencer stub: the gap counts from the cycle the instruction could first start.
        self._start, self._instr = False, 0
        filling = any(self.write_queue.values()) or any(k == "w" for k, _ in self.directed)
        if self.program and not filling:
            gap, word, force = self.program[0]
            if self.gap is None:
                self.gap = gap
            if self.gap > 0:
                if force or model.idle:
                    self.gap -= 1
            elif force or model.idle:
                self._start, self._instr = True, word
                self.program.popleft()
                self.gap = None
        # No random requests while filling: before the fill the DUT's words are unknown.
        for i in CONTEND_READS:
            if self.held_reads[i] is None:
                if self.read_queue[i]:
                    self.held_reads[i] = self.read_queue[i].popleft()
                    self.directed.add(("r", i))
                elif not filling and rng.random() < self.read_prob[i]:
                    self.held_reads[i] = self._random_read()
        for j in CONTEND_WRITES:
            if self.held_writes[j] is None:
                if self.write_queue[j]:
                    self.held_writes[j] = self.write_queue[j].popleft()
                    self.directed.add(("w", j))
                elif not filling and rng.random() < self.write_prob[j]:
                    self.held_writes[j] = self._random_write()
        values = {"cmd__start": int(self._start),
                  # Random bits when not starting: the engine must ignore `instr` then.
                  "cmd__instr": self._instr if self._start else rng.getrandbits(64)}
        for i in CONTEND_READS:
            addr = self.held_reads[i]
            values[f"c_read{i}__en"] = int(addr is not None)
            values[f"c_read{i}__addr"] = (rng.randrange(self.cfg.sram_words) if addr is None
                                          else addr)
        for j in CONTEND_WRITES:
            request = self.held_writes[j]
            values[f"c_write{j}__en"] = int(request is not None)
            addr, data, mask = request if request is not None else (
                rng.randrange(self.cfg.sram_words), rng.getrandbits(self.cfg.word_bits),
                rng.getrandbits(self.cfg.word_bytes))
            values[f"c_write{j}__addr"] = addr
            values[f"c_write{j}__data"] = data
            values[f"c_write{j}__mask"] = mask
        return values

    def _mismatch(self, what, expected, got):
        raise LockstepError(f"cycle {self.cycle}: {what}: model expects {expected}, DUT has "
                            f"{got} (engine: {self.model.describe()})")

    def _expect(self, observed, name, expected):
        got = observed[name]
        if got != int(expected):
            fmt = (lambda v: f"{v:#x}") if name.endswith(("data", "payload")) else (lambda v: v)
            self._mismatch(name, fmt(int(expected)), fmt(got))

    def check(self, observed: dict[str, int]):
        """Compare the DUT's outputs of this cycle with the models, then clock the models."""
        model, sram = self.model, self.sram
        cycle = self.cycle
        self._expect(observed, "cmd__idle", model.idle)
        self._expect(observed, "busy", model.busy)
        read_addr = model.sram_reads()[0]
        self._expect(observed, "mx_rd_en", read_addr is not None)
        if read_addr is not None:
            self._expect(observed, "mx_rd_addr", read_addr)
        write_req = model.sram_writes()[0]
        self._expect(observed, "mx_wr_en", write_req is not None)
        if write_req is not None:
            self._expect(observed, "mx_wr_addr", write_req[0])
            self._expect(observed, "mx_wr_data", write_req[1])
            self._expect(observed, "mx_wr_mask", write_req[2])
        beat = model.beat()
        self._expect(observed, "beat_valid", beat is not None)
        if beat is not None:
            self._expect(observed, "beat_payload", pack_operands(self.cfg, *beat))
            self.beat_cycles.append(cycle)
        row = model.row_request()
        self._expect(observed, "row_valid", row is not None)

        reads = [self.held_reads[0], read_addr, self.held_reads[2], self.held_reads[3]]
        writes = [self.held_writes[0], write_req, self.held_writes[2]]
        engine_data = self.engine_data
        read_grants, write_grants = sram.step(reads, writes)
        for port, granted in enumerate(read_grants):
            if reads[port] is not None:
                name = "mx_rd_ready" if port == 1 else f"c_read{port}__ready"
                self._expect(observed, name, granted)
        for port, granted in enumerate(write_grants):
            if writes[port] is not None:
                name = "mx_wr_ready" if port == 1 else f"c_write{port}__ready"
                self._expect(observed, name, granted)
        if row is not None:
            self._expect(observed, "row_index", row)
            self._expect(observed, "row_ready", model.row_ready(write_grants[1]))
        # Contention read data granted last cycle, checked when the word's contents are known.
        for i in CONTEND_READS:
            if self.due[i] is not None:
                addr, word, readback, functional = self.due[i]
                self._expect(observed, f"c_read{i}__data", word)
                if readback:
                    self.readback_words[addr] = (observed[f"c_read{i}__data"], functional)
                    self.pending_readback.discard(addr)
            # A readback keeps the functional word as the read sees it: before this cycle's
            # writes.
            readback = ("r", i) in self.directed
            self.due[i] = ((reads[i], sram.read_data[i], readback, self.functional[reads[i]])
                           if read_grants[i] else None)

        # Bookkeeping of the other requesters and statistics.
        if read_addr is not None and not read_grants[1]:
            self.engine_read_refusals += 1
        if write_req is not None and not write_grants[1]:
            self.engine_write_refusals += 1
        if read_addr is not None and read_grants[1]:
            bank = self.bank_of(read_addr)
            self.refused_by_engine += sum(
                1 for p in (2, 3) if reads[p] is not None and self.bank_of(reads[p]) == bank)
        if write_req is not None and write_grants[1]:
            self.write_cycles.append(cycle)
        for i in CONTEND_READS:
            if read_grants[i]:
                self.held_reads[i] = None
                self.directed.discard(("r", i))
        for j in CONTEND_WRITES:
            if write_grants[j]:
                addr, data, mask = writes[j]
                old = self.functional[addr]
                self.functional[addr] = data if mask == self.full else (
                    None if old is None else _merge(old, data, mask, self.cfg.word_bytes))
                self.held_writes[j] = None
                self.directed.discard(("w", j))

        if self._start:
            self._record(cycle, self._instr, accepted=model.idle)
        model.tick(self._start, self._instr, [read_grants[1]], [write_grants[1]], [engine_data])
        self.engine_data = sram.read_data[1]
        if self._start:
            self.trace[-1]["idle_next"] = model.idle
        # The model's state is now that of the next cycle: note when `idle` is high again.
        running = self._running
        if running is not None and running["idle_cycle"] is None and model.idle:
            running["idle_cycle"] = cycle + 1
        self.cycle += 1

    def _record(self, cycle, word, accepted):
        """A start pulse: apply the instruction functionally if the engine takes it."""
        ins = decode(word)
        taken = accepted and ((ins.op == Opcode.MATMUL and ins.kw > 0 and ins.type in MATRIX_TYPES)
                              or (ins.op == Opcode.MREAD and ins.nrows > 0))
        entry = {"start": cycle, "word": word, "instr": ins, "taken": taken,
                 "idle_cycle": None if taken else cycle,
                 "first_beat": len(self.beat_cycles), "first_write": len(self.write_cycles)}
        self.trace.append(entry)
        if not taken:
            return
        self._running = entry
        cfg = self.cfg
        if ins.op == Opcode.MATMUL:
            a_words = [self.functional[(ins.a + w) % cfg.sram_words] for w in range(ins.kw)]
            b_words = [self.functional[(ins.b + w) % cfg.sram_words] for w in range(ins.kw)]
            if None in a_words or None in b_words:
                raise LockstepError(f"cycle {cycle}: MATMUL {ins} reads words of unknown contents")
            self.acc = matmul_reference_words(cfg, a_words, b_words, ins.type, acc=self.acc,
                                              clear=bool(ins.clear))
            self.hot_banks = sorted({self.bank_of((x + w) % cfg.sram_words)
                                     for x in (ins.a, ins.b) for w in (0, ins.kw - 1)})
        else:
            for r in range(ins.nrows):
                row = (ins.row0 + r) % self.n
                self.functional[(ins.dst + r) % cfg.sram_words] = word_from_lanes(self.acc[row])
            self.hot_banks = sorted({self.bank_of((ins.dst + r) % cfg.sram_words)
                                     for r in (0, ins.nrows - 1)})

    # -- results -------------------------------------------------------------------------

    def final_check(self):
        """The words read back (against the functional memory when they were read) and the
        SRAM model (against the functional memory now)."""
        for addr, (got, expected) in sorted(self.readback_words.items()):
            if expected is not None and got != expected:
                raise AssertionError(f"SRAM[{addr}] read back {got:#x}, NumPy execution expects "
                                     f"{expected:#x}")
        model_mem = self.sram.dump()
        for addr, expected in enumerate(self.functional):
            if expected is not None and model_mem[addr] != expected:
                raise AssertionError(f"SRAM model word {addr} is {model_mem[addr]:#x}, NumPy "
                                     f"execution expects {expected:#x}")

    def timing(self, entry) -> dict:
        """Beat and write cycles of a trace entry (relative to its start cycle)."""
        index = self.trace.index(entry)
        nxt = next((e for e in self.trace[index + 1:] if e["taken"]), None)
        beats = self.beat_cycles[entry["first_beat"]:nxt["first_beat"] if nxt else None]
        writes = self.write_cycles[entry["first_write"]:nxt["first_write"] if nxt else None]
        s = entry["start"]
        return {"beats": [c - s for c in beats], "writes": [c - s for c in writes],
                "idle": None if entry["idle_cycle"] is None else entry["idle_cycle"] - s}


def _merge(old: int, new: int, mask: int, nbytes: int) -> int:
    out, src = old.to_bytes(nbytes, "little"), new.to_bytes(nbytes, "little")
    return int.from_bytes(bytes(src[k] if mask >> k & 1 else out[k] for k in range(nbytes)),
                          "little")


__all__ = ["MxuLockstep", "LockstepError", "input_names", "output_names", "matmul", "mread",
           "SCRATCH", "CONTEND_READS", "CONTEND_WRITES"]
