"""Simulator-independent lockstep harness of the matrix engine's test top (`mxu_top`, built by
tests/test_mxu.py: `MatrixEngineTop`): the engine (with its `MatrixUnit`) + a
`NodeSRAM(cfg, 4 read, 3 write)`, node read ports 0, 2, 3 and write ports 0, 2 brought out as
contention ports (`c_read0__*`, ..., `c_write2__*`), and the engine's own SRAM ports, its operand
beats and its row requests mirrored on probe outputs (`mx_*`, `beat_*`, `row_*`).

`MxuLockstep` plays the sequencer (MATMULs on the `cmd` bus, MREADs on `rd_cmd`, in program
order, each when its half is idle and, as the sequencer's bank hazard rule has it, an MREAD not
while a MATMUL into its bank runs, a MATMUL not while an MREAD of its bank runs) and the other
requesters. Per cycle the simulator adapter
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
from d1tile.isa import ACC_BANKS, Opcode, decode, encode, hazard_ranges, overlaps
from d1tile.sim.mxu import MatrixEngineModel, matmul_reference_words
from d1tile.sim.sram import SRAMModel


CONTEND_READS = (0, 2, 3)    # node read ports besides the engine's 1
CONTEND_WRITES = (0, 2)      # node write ports besides the engine's 1
SCRATCH = 4                  # words at the top of each bank: the only contention write targets


class LockstepError(AssertionError):
    """The DUT and the models disagree."""


def input_names() -> list[str]:
    names = ["cmd__start", "cmd__instr", "rd_cmd__start", "rd_cmd__instr"]
    for i in CONTEND_READS:
        names += [f"c_read{i}__en", f"c_read{i}__addr"]
    for j in CONTEND_WRITES:
        names += [f"c_write{j}__{s}" for s in ("en", "addr", "data", "mask")]
    return names


def output_names() -> list[str]:
    names = ["cmd__idle", "rd_cmd__idle", "busy", "mx_rd_en", "mx_rd_addr", "mx_rd_ready",
             "mx_wr_en", "mx_wr_addr", "mx_wr_data", "mx_wr_mask", "mx_wr_ready", "beat_valid",
             "beat_payload", "row_valid", "row_index", "row_bank", "row_ready"]
    names += [f"c_read{i}__{s}" for i in CONTEND_READS for s in ("ready", "data")]
    names += [f"c_write{j}__ready" for j in CONTEND_WRITES]
    return names


def matmul(a, b, kw, clear, dtype=ElemType.INT8, bank=0) -> int:
    return encode(Opcode.MATMUL, a=a, b=b, kw=kw, clear=int(clear), type=int(dtype), bank=bank)


def mread(dst, row0, nrows, bank=0, tr=0) -> int:
    return encode(Opcode.MREAD, dst=dst, row0=row0, nrows=nrows, bank=bank, tr=tr)


def is_mread(word: int) -> bool:
    return (word & 0xF) == Opcode.MREAD


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
        self._running = {False: None, True: None}   # per half (MREAD?): its last entry taken
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
        self.acc = [np.zeros((self.n, self.n), dtype=np.uint32)      # accumulator bits
                    for _ in range(ACC_BANKS)]
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
        self._readout = False             # this cycle's start is on the rd_cmd bus
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
                      self.rng.choice(list(MATRIX_TYPES)), self.rng.randrange(ACC_BANKS))

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
        return mread(self.random_range(nrows), row0, nrows, self.rng.randrange(ACC_BANKS),
                     tr=int(self.rng.random() < 0.3))     # a third of them transposed

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
        """Queue an instruction: started `gap` cycles after it could start (its half idle, no
        bank hazard: module docstring) and the previous one started (`force`: started after
        `gap` cycles whatever `idle` says, on the bus of its opcode). Nothing starts while
        directed writes (`fill`) are pending."""
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
        return (bool(self.program) or not self.model.idle or not self.model.rd_idle
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
            self._readout = is_mread(word)
            ready = force or self._can_start(word)
            if self.gap is None:
                self.gap = gap
            if self.gap > 0:
                if ready:
                    self.gap -= 1
            elif ready:
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
        on_rd = self._start and self._readout
        on_mm = self._start and not self._readout
        values = {"cmd__start": int(on_mm), "rd_cmd__start": int(on_rd),
                  # Random bits when not starting: the engine must ignore `instr` then.
                  "cmd__instr": self._instr if on_mm else rng.getrandbits(64),
                  "rd_cmd__instr": self._instr if on_rd else rng.getrandbits(64)}
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

    def _can_start(self, word: int) -> bool:
        """Its half idle, and no hazard with what the other half runs: the sequencer's rule
        (`d1tile.isa.overlaps`: SRAM ranges and accumulator banks)."""
        model, readout = self.model, is_mread(word)
        if not (model.rd_idle if readout else model.idle):
            return False
        other_idle = model.idle if readout else model.rd_idle
        other = self._running[not readout]
        if other_idle or other is None:
            return True
        new = decode(word)
        if new.op not in (Opcode.MATMUL, Opcode.MREAD):
            return True
        return not overlaps(hazard_ranges(new), hazard_ranges(other["instr"]))

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
        self._expect(observed, "rd_cmd__idle", model.rd_idle)
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
            self._expect(observed, "beat_payload", pack_operands(self.cfg, *beat,
                                                                 bank=model.mbank))
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
            self._expect(observed, "row_bank", model.rbank)
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

        readout = self._readout
        on_rd, on_mm = self._start and readout, self._start and not readout
        if self._start:
            self._record(cycle, self._instr, readout,
                         accepted=model.rd_idle if readout else model.idle)
        model.tick(on_mm, self._instr if on_mm else 0, [read_grants[1]], [write_grants[1]],
                   [engine_data], on_rd, self._instr if on_rd else 0)
        self.engine_data = sram.read_data[1]
        if self._start:
            self.trace[-1]["idle_next"] = model.rd_idle if readout else model.idle
        # The model's state is now that of the next cycle: note when each half's `idle` is high
        # again.
        for half, idle in ((False, model.idle), (True, model.rd_idle)):
            running = self._running[half]
            if running is not None and running["idle_cycle"] is None and idle:
                running["idle_cycle"] = cycle + 1
        self.cycle += 1

    def _record(self, cycle, word, readout, accepted):
        """A start pulse (on the readout bus or not): apply the instruction functionally if the
        engine takes it."""
        ins = decode(word)
        taken = accepted and ((ins.op == Opcode.MATMUL and not readout and ins.kw > 0
                               and ins.type in MATRIX_TYPES)
                              or (ins.op == Opcode.MREAD and readout and ins.nrows > 0))
        entry = {"start": cycle, "word": word, "instr": ins, "taken": taken, "readout": readout,
                 "idle_cycle": None if taken else cycle,
                 "first_beat": len(self.beat_cycles), "first_write": len(self.write_cycles)}
        self.trace.append(entry)
        if not taken:
            return
        self._running[readout] = entry
        cfg = self.cfg
        if ins.op == Opcode.MATMUL:
            a_words = [self.functional[(ins.a + w) % cfg.sram_words] for w in range(ins.kw)]
            b_words = [self.functional[(ins.b + w) % cfg.sram_words] for w in range(ins.kw)]
            if None in a_words or None in b_words:
                raise LockstepError(f"cycle {cycle}: MATMUL {ins} reads words of unknown contents")
            self.acc[ins.bank] = matmul_reference_words(cfg, a_words, b_words, ins.type,
                                                        acc=self.acc[ins.bank],
                                                        clear=bool(ins.clear))
            self.hot_banks = sorted({self.bank_of((x + w) % cfg.sram_words)
                                     for x in (ins.a, ins.b) for w in (0, ins.kw - 1)})
        else:
            acc = self.acc[ins.bank]
            if ins.tr:          # the transposed readout: columns
                acc = acc.T
            for r in range(ins.nrows):
                row = (ins.row0 + r) % self.n
                self.functional[(ins.dst + r) % cfg.sram_words] = word_from_lanes(acc[row])
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
        """Beat and write cycles of a trace entry (relative to its start cycle): those up to the
        next instruction of the same half."""
        index = self.trace.index(entry)
        nxt = next((e for e in self.trace[index + 1:] if e["taken"]
                    and e["readout"] == entry["readout"]), None)
        beats = self.beat_cycles[entry["first_beat"]:nxt["first_beat"] if nxt else None]
        writes = self.write_cycles[entry["first_write"]:nxt["first_write"] if nxt else None]
        s = entry["start"]
        if entry["readout"]:
            beats = []      # the other half's
        else:
            writes = []
        return {"beats": [c - s for c in beats], "writes": [c - s for c in writes],
                "idle": None if entry["idle_cycle"] is None else entry["idle_cycle"] - s}


def _merge(old: int, new: int, mask: int, nbytes: int) -> int:
    out, src = old.to_bytes(nbytes, "little"), new.to_bytes(nbytes, "little")
    return int.from_bytes(bytes(src[k] if mask >> k & 1 else out[k] for k in range(nbytes)),
                          "little")


__all__ = ["MxuLockstep", "LockstepError", "input_names", "output_names", "matmul", "mread",
           "SCRATCH", "CONTEND_READS", "CONTEND_WRITES"]
