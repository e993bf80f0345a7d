"""Simulator-independent lockstep harness of the vector engine's test top (`vpu_top`, built by
tests/test_vpu.py): the engine + a `NodeSRAM(cfg, 4 read, 3 write)`, with node read ports 0, 1
and write ports 0, 1 brought out as contention ports (`contend_read__i__*`,
`contend_write__j__*`) and the engine's own SRAM ports mirrored on probe outputs (`a_*`, `b_*`,
`w_*`).

`VpuLockstep` plays the sequencer (VEC, FVEC and FCVT words of every op of `VECTOR_OPS`, with
random SETQ values, SETR q, and reseeds with random seeds) and the other requesters. Per cycle
the simulator adapter calls `inputs()` (what to drive this cycle, after the rising edge) and
then `check(observed)` with every output of the top sampled in the same cycle (after the inputs
settled). `check` compares the DUT's engine requests, grants, `idle`, `busy` and the contention
ports' grants and read data with the models (`VectorEngineModel` + `SRAMModel`), then clocks
the models. The first difference raises `LockstepError` naming the cycle, the signal, the
expected and the got value.

Phases, driven by the test: `fill()` writes every SRAM word through the contention write ports
(random int32 / FP32 corner-case words, some the negation of their neighbour); `run()` issues
the queued instructions, each when the engine is idle after a random gap, while the contention
ports make random requests (held until granted, like every requester): reads to the banks the
engine is using, writes only to a scratch area at the top of each bank that no instruction
touches; `readback()` reads every word back through the contention read ports. `functional` is
the memory as `execute_vec` (and the contention writes) make it, independent of the cycle model,
with its own `VectorUnitState` mirror (reseeded as the instructions say); `final_check()`
compares it with the words read back and with the SRAM model, and the mirror's generator with
the cycle model's.

This module imports no simulator, so the cocotb bench (tb_vpu.py) and the quick Amaranth-sim
test share it.
"""

from __future__ import annotations

from collections import deque

from d1tile import isa
from d1tile import numerics
from d1tile.formats import word_from_lanes
from d1tile.isa import CONVERSIONS, FORMATS, Opcode
from d1tile.sim.sram import SRAMModel
from d1tile.sim.vector import VectorUnitState
from d1tile.sim.vpu import VectorEngineModel, execute_vec, vec_fields
from d1tile.vector_ops import VECTOR_OPS


CONTEND_READS = 2    # node read ports 0, 1 (higher priority than the engine's 2 and 3)
CONTEND_WRITES = 2   # node write ports 0, 1 (higher priority than the engine's 2)
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

FP_SPECIAL = numerics.SPECIAL_FP32

_CONVERSION_OF = {code: key for key, code in CONVERSIONS.items()}
_VEC_CODES = range(1 << FORMATS[Opcode.VEC].field("vop").width)
_FVEC_CODES = range(isa.FVEC_BASE, isa.FVEC_BASE + (1 << FORMATS[Opcode.FVEC].field("fop").width))
class LockstepError(AssertionError):
    """The DUT and the models disagree."""


def input_names() -> list[str]:
    names = ["cmd__start", "cmd__instr", "cmd__scale", "cmd__shift", "cmd__relu", "cmd__fscale",
             "cmd__seed", "cmd__reseed"]
    for i in range(CONTEND_READS):
        names += [f"contend_read__{i}__en", f"contend_read__{i}__addr"]
    for j in range(CONTEND_WRITES):
        names += [f"contend_write__{j}__{s}" for s in ("en", "addr", "data", "mask")]
    return names


def output_names() -> list[str]:
    names = ["cmd__idle", "busy", "a_en", "a_addr", "a_ready", "b_en", "b_addr", "b_ready",
             "w_en", "w_addr", "w_data", "w_mask", "w_ready"]
    for i in range(CONTEND_READS):
        names += [f"contend_read__{i}__ready", f"contend_read__{i}__data"]
    for j in range(CONTEND_WRITES):
        names.append(f"contend_write__{j}__ready")
    return names


def vec_word(op, dst, a, b, n, bfix=0) -> int:
    """A VEC word (integer ops, `VecOp`)."""
    return FORMATS[Opcode.VEC].pack(op=Opcode.VEC, vop=int(op), dst=dst, a=a, b=b, n=n,
                                    bfix=bfix)


def vector_word(code: int, dst: int, a: int, b: int, n: int, bfix: int = 0) -> int:
    """The instruction word of vector-unit op `code`: VEC for codes VEC's vop reaches (the
    integer ops), FVEC for FVEC's fop range (the FP32 ops), FCVT for the rest (the conversions,
    which have no b: `b`, `bfix` ignored). A code of no op gives an undefined vop / fop, or for
    FCVT an undefined type combination (FP32 -> FP32 with sr)."""
    if code in _VEC_CODES:
        return vec_word(code, dst, a, b, n, bfix)
    if code in _FVEC_CODES:
        return FORMATS[Opcode.FVEC].pack(op=Opcode.FVEC, fop=code - isa.FVEC_BASE, dst=dst, a=a,
                                         b=b, n=n, bfix=bfix)
    stype, dtype, sr = _CONVERSION_OF.get(code, (3, 3, 1))
    return FORMATS[Opcode.FCVT].pack(op=Opcode.FCVT, stype=int(stype), dtype=int(dtype), sr=sr,
                                     dst=dst, a=a, n=n)


def max_elements(code: int) -> int:
    """The largest n the instruction of op `code` can encode."""
    word = vector_word(code, 0, 0, 0, 0)
    return (1 << FORMATS[isa.decode(word).op].field("n").width) - 1


def op_name(code: int) -> str:
    spec = VECTOR_OPS.get(code)
    return spec.name if spec else f"undefined op {code}"


def describe_vec(instr: int) -> str:
    f = vec_fields(instr)
    return (f"{Opcode(f['opcode']).name} {op_name(f['code'])} dst={f['dst']} a={f['a']} "
            f"b={f['b']} n={f['n']} bfix={f['bfix']}")


def random_fp32(rng) -> int:
    """FP32 bits biased to the corner cases (`numerics.random_fp32`)."""
    return numerics.random_fp32(rng, special=0.2)


def random_q(rng) -> int:
    """A SETR q: mostly ordinary scales (powers of two, 1, random normals), some corner cases."""
    r = rng.random()
    if r < 0.3:
        return rng.choice((0x3F80_0000, 0x4000_0000, 0x3E80_0000, 0xBF80_0000, 0x4380_0000))
    if r < 0.5:
        return rng.choice(FP_SPECIAL)
    return random_fp32(rng)


class _Requester:
    """A contention port: a queue of requests, the head held until granted."""

    def __init__(self):
        self.queue: deque = deque()

    @property
    def request(self):
        return self.queue[0] if self.queue else None


class VpuLockstep:
    """See the module docstring. `rng` is a `random.Random` (the TB's, so runs replay)."""

    def __init__(self, cfg, rng, log=print):
        self.cfg = cfg
        self.rng = rng
        self.log = log
        self.words = cfg.sram_words
        self.full_mask = (1 << cfg.word_bytes) - 1
        self.model = VectorEngineModel(cfg)
        self.sram = SRAMModel(cfg, 2 + CONTEND_READS, 1 + CONTEND_WRITES)
        self.functional = [0] * self.words
        self.functional_state = VectorUnitState(cfg)   # the unit's state as execute_vec sees it
        self.due = [None] * self.sram.read_ports       # read data arriving this cycle
        self.readers = [_Requester() for _ in range(CONTEND_READS)]
        self.writers = [_Requester() for _ in range(CONTEND_WRITES)]
        self.cycle = 0
        self.read_back: dict[int, int] = {}
        # Scratch: the top eighth of every bank, for contention writes; instructions stay out.
        self.scratch = max(1, cfg.bank_words // 8)
        # The sequencer's side.
        self.vecs: deque = deque()       # (instr, scale, shift, relu, q, reseed, gap)
        self.gap = 0
        self.start_while_busy = 0.0
        self.runs: list[dict] = []       # per instruction issued: instr, start cycle, idle cycle
        self.contention = (0.0, 0.0)     # per-cycle probability of a new read / write request
        self._drive: dict | None = None

    # -- memory layout -------------------------------------------------------------------

    def bank_base(self, bank: int) -> int:
        return bank * self.cfg.bank_words

    def data_words(self, bank: int) -> range:
        """The words of `bank` that instructions may use (all but the scratch area)."""
        base = self.bank_base(bank)
        return range(base, base + self.cfg.bank_words - self.scratch)

    def scratch_words(self, bank: int) -> range:
        base = self.bank_base(bank)
        return range(base + self.cfg.bank_words - self.scratch, base + self.cfg.bank_words)

    # -- stimulus ------------------------------------------------------------------------

    def random_lane(self) -> int:
        """An int32 lane or FP32 bits, both biased to their corner cases (a word's BF16 halves
        and int8 bytes come out varied too)."""
        r = self.rng.random()
        if r < 0.15:
            return self.rng.choice((INT32_MIN, INT32_MAX, -1, 0, 1))
        if r < 0.35:
            return self.rng.randint(-3000, 3000)
        if r < 0.45:
            return self.rng.randint(INT32_MIN, INT32_MAX)
        bits = random_fp32(self.rng)
        return bits - (1 << 32) if bits >> 31 else bits

    def random_word(self) -> int:
        return word_from_lanes(self.random_lane() for _ in range(self.cfg.lanes))

    def related_word(self, word: int) -> int:
        """A word whose FP32 lanes are those of `word` negated and nudged by up to 2 ulps, so
        that FADD / FSUB / FSUM of neighbouring words cancel exactly or nearly."""
        lanes = []
        for k in range(self.cfg.lanes):
            bits = (word >> (32 * k)) & 0xFFFF_FFFF
            bits = ((bits ^ 0x8000_0000) + self.rng.randint(-2, 2)) & 0xFFFF_FFFF
            lanes.append(bits << (32 * k))
        return sum(lanes)

    def random_quant(self) -> tuple[int, int, int]:
        rng = self.rng
        if rng.random() < 0.6:
            return rng.randint(1, 300), rng.randint(0, 16), rng.randrange(2)
        return rng.randrange(1 << 16), rng.randrange(64), rng.randrange(2)

    def random_code(self) -> int:
        """A vector-unit op code: every op of the table alike, an undefined one now and then."""
        if self.rng.random() < 0.04:
            return self.rng.choice([c for c in (*_VEC_CODES, *_FVEC_CODES, 31)
                                    if c not in VECTOR_OPS])
        return self.rng.choice(sorted(VECTOR_OPS))

    def random_vec(self, max_n: int | None = None, same_bank: float = 0.3, op=None) -> int:
        """An instruction (of unit op code `op`, or a random one) with disjoint source and
        destination ranges inside the banks' data areas; a and b in the same bank with
        probability `same_bank`."""
        rng, cfg = self.rng, self.cfg
        code = self.random_code() if op is None else int(op)
        spec = VECTOR_OPS.get(code)
        area = cfg.bank_words - self.scratch
        limit = min(max_elements(code), area, max_n or 255)
        r = rng.random()
        n = rng.randint(1, 4) if r < 0.3 else rng.randint(5, max(5, min(32, limit))) if r < 0.8 \
            else rng.randint(1, limit)
        n = min(n, limit)
        bfix = rng.randrange(2)   # unary ops must ignore it
        src = spec.source_words(n) if spec else n
        out = spec.dest_words(n) if spec else n
        binary = bool(spec and spec.binary)
        b_len = 1 if bfix else n

        def place(length, bank=None):
            bank = rng.randrange(cfg.sram_banks) if bank is None else bank
            words = self.data_words(bank)
            start = rng.randint(words.start, words.stop - length)
            return start, bank

        for _ in range(1000):
            a, a_bank = place(src)
            b, _ = place(b_len, a_bank if rng.random() < same_bank else None)
            dst, _ = place(out)
            clash = dst < a + src and a < dst + out
            if binary:
                clash = clash or (dst < b + b_len and b < dst + out)
            if not clash:
                return vector_word(code, dst, a, b, n, bfix)
        raise RuntimeError("could not place an instruction's ranges")

    def queue_vec(self, instr: int, quant=(0, 0, 0), gap: int = 0, q: int = 0,
                  reseed: int | None = None):
        """Queue an instruction with its SETQ values, SETR q and, unless None, a reseed with
        that seed; it starts in the first idle cycle `gap` cycles after the previous one."""
        self.vecs.append((instr, *quant, q, reseed, gap))

    def queue_random(self, instr: int, gap: int = 0, reseed_prob: float = 0.3):
        """Queue `instr` with random SETQ values, q, and a reseed with probability
        `reseed_prob`."""
        rng = self.rng
        self.queue_vec(instr, self.random_quant(), gap, random_q(rng),
                       rng.getrandbits(32) if rng.random() < reseed_prob else None)

    def _new_contention(self):
        rng, cfg = self.rng, self.cfg
        p_read, p_write = self.contention
        busy_banks = [addr >> cfg.bank_addr_bits
                      for addr in self.model.sram_reads() if addr is not None]
        write = self.model.sram_writes()[0]
        if write is not None:
            busy_banks.append(write[0] >> cfg.bank_addr_bits)
        for reader in self.readers:
            if reader.request is None and rng.random() < p_read:
                if busy_banks and rng.random() < 0.7:
                    bank = rng.choice(busy_banks)
                    reader.queue.append(rng.randrange(self.bank_base(bank),
                                                      self.bank_base(bank) + cfg.bank_words))
                else:
                    reader.queue.append(rng.randrange(self.words))
        for writer in self.writers:
            if writer.request is None and rng.random() < p_write:
                bank = rng.choice(busy_banks) if busy_banks and rng.random() < 0.7 \
                    else rng.randrange(cfg.sram_banks)
                mask = self.full_mask if rng.random() < 0.5 else rng.getrandbits(cfg.word_bytes)
                writer.queue.append((rng.choice(self.scratch_words(bank)),
                                     rng.getrandbits(cfg.word_bits), mask))

    # -- one cycle -----------------------------------------------------------------------

    def inputs(self) -> dict[str, int]:
        """The values to drive this cycle (right after the rising edge)."""
        rng, cfg = self.rng, self.cfg
        model = self.model
        self._new_contention()
        start = False
        # Garbage on every command input while `start` is low: the engine must ignore it.
        instr, scale, shift, relu, q, seed, reseed = (
            rng.getrandbits(64), rng.getrandbits(16), rng.getrandbits(6), rng.getrandbits(1),
            rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(1))
        issue = None
        if self.vecs:
            if model.idle:
                if self.gap > 0:
                    self.gap -= 1
                else:
                    issue = self.vecs.popleft()
            elif rng.random() < self.start_while_busy:
                # Outside the command contract (start only while idle): must be ignored, and
                # so must its reseed.
                start = True
        if issue is not None:
            instr, scale, shift, relu, q, new_seed, gap = issue
            start = True
            reseed = int(new_seed is not None)
            if reseed:
                seed = new_seed
                self.functional_state.reseed(seed)
            self.gap = gap
            execute_vec(cfg, self.functional, instr, scale, shift, relu, q,
                        self.functional_state)
            self.runs.append({"instr": instr, "start": self.cycle, "idle": None})
        drive = {"cmd__start": int(start), "cmd__instr": instr, "cmd__scale": scale,
                 "cmd__shift": shift, "cmd__relu": relu, "cmd__fscale": q, "cmd__seed": seed,
                 "cmd__reseed": reseed}
        for i, reader in enumerate(self.readers):
            addr = reader.request
            drive[f"contend_read__{i}__en"] = int(addr is not None)
            drive[f"contend_read__{i}__addr"] = rng.randrange(self.words) if addr is None else addr
        for j, writer in enumerate(self.writers):
            request = writer.request
            drive[f"contend_write__{j}__en"] = int(request is not None)
            if request is None:
                request = (rng.randrange(self.words), rng.getrandbits(cfg.word_bits),
                           rng.getrandbits(cfg.word_bytes))
            (drive[f"contend_write__{j}__addr"], drive[f"contend_write__{j}__data"],
             drive[f"contend_write__{j}__mask"]) = request
        self._drive = drive
        return drive

    def mismatch(self, what, expected, got):
        raise LockstepError(f"cycle {self.cycle}: {what}: expected {expected}, got {got}; "
                            f"{self.model.describe()}")

    def check(self, obs: dict[str, int]) -> None:
        """Compare this cycle's outputs with the models, then clock the models."""
        drive, model = self._drive, self.model
        reads_engine = model.sram_reads()
        writes_engine = model.sram_writes()
        reads = [r.request for r in self.readers] + reads_engine
        writes = [w.request for w in self.writers] + writes_engine
        if obs["cmd__idle"] != model.idle or obs["busy"] != model.busy:
            self.mismatch("idle/busy", (int(model.idle), int(model.busy)),
                          (obs["cmd__idle"], obs["busy"]))
        for name, addr in (("a", reads_engine[0]), ("b", reads_engine[1])):
            if obs[f"{name}_en"] != (addr is not None):
                self.mismatch(f"read {name} en", int(addr is not None), obs[f"{name}_en"])
            if addr is not None and obs[f"{name}_addr"] != addr:
                self.mismatch(f"read {name} addr", addr, obs[f"{name}_addr"])
        write = writes_engine[0]
        if obs["w_en"] != (write is not None):
            self.mismatch("write en", int(write is not None), obs["w_en"])
        if write is not None:
            got = (obs["w_addr"], obs["w_data"], obs["w_mask"])
            if got != write:
                self.mismatch("write (addr, data, mask)",
                              (write[0], hex(write[1]), hex(write[2])),
                              (got[0], hex(got[1]), hex(got[2])))
        read_grants, write_grants = self.sram.step(reads, writes)
        got_reads = [obs[f"contend_read__{i}__ready"] for i in range(CONTEND_READS)] + \
            [obs["a_ready"], obs["b_ready"]]
        got_writes = [obs[f"contend_write__{j}__ready"] for j in range(CONTEND_WRITES)] + \
            [obs["w_ready"]]
        if got_reads != [int(g) for g in read_grants]:
            self.mismatch(f"read grants (ports 0..3, requests {reads})",
                          [int(g) for g in read_grants], got_reads)
        if got_writes != [int(g) for g in write_grants]:
            self.mismatch(f"write grants (ports 0..2, addresses "
                          f"{[None if w is None else w[0] for w in writes]})",
                          [int(g) for g in write_grants], got_writes)
        for i in range(CONTEND_READS):
            if self.due[i] is not None:
                addr, word = self.due[i]
                got = obs[f"contend_read__{i}__data"]
                if got != word:
                    self.mismatch(f"contention read port {i} data of addr {addr}", hex(word),
                                  hex(got))
                self.read_back[addr] = got
        # Clock: the engine model, the requesters, the bookkeeping.
        data = self.sram.read_data
        engine_due = [None if d is None else d[1] for d in self.due[2:]]
        model.tick(read_grants[2:], write_grants[2:], engine_due,
                   bool(drive["cmd__start"]), drive["cmd__instr"], drive["cmd__scale"],
                   drive["cmd__shift"], drive["cmd__relu"], q=drive["cmd__fscale"],
                   seed=drive["cmd__seed"], reseed=bool(drive["cmd__reseed"]))
        self.due = [(reads[i], data[i]) if g else None for i, g in enumerate(read_grants)]
        for reader, granted in zip(self.readers, read_grants):
            if granted:
                reader.queue.popleft()
        for writer, granted in zip(self.writers, write_grants):
            if granted:
                addr, _, _ = writer.queue.popleft()
                # Scratch or fill words, which no VEC is using: the merged word is the SRAM's.
                self.functional[addr] = self.sram.word(addr)
        if self.runs and self.runs[-1]["idle"] is None and model.idle and \
                self.cycle > self.runs[-1]["start"]:
            self.runs[-1]["idle"] = self.cycle + 1
        self.cycle += 1

    # -- phases (each returns when done; `step` is the simulator's one-cycle coroutine) ----

    @property
    def quiet(self) -> bool:
        return (not self.vecs and self.model.idle and all(r.request is None for r in self.readers)
                and all(w.request is None for w in self.writers)
                and all(d is None for d in self.due))

    async def run(self, step, max_cycles: int):
        """Cycle until the queued VECs have run and every request is served."""
        for _ in range(max_cycles):
            await step()
            if self.quiet:
                return
        raise LockstepError(f"not done after {max_cycles} cycles: {len(self.vecs)} instructions "
                            f"queued; "
                            f"{self.model.describe()}")

    async def fill(self, step):
        """Write every word through the contention write ports (random words, full masks; one
        in five the negated neighbour of the word below it, for cancellations)."""
        cfg = self.cfg
        order = [b * cfg.bank_words + k for k in range(cfg.bank_words)
                 for b in range(cfg.sram_banks)]
        saved, self.contention = self.contention, (0.0, 0.0)
        for k, addr in enumerate(order):
            if addr % cfg.bank_words and self.rng.random() < 0.2:
                word = self.related_word(self.functional[addr - 1])
            else:
                word = self.random_word()
            self.writers[k % CONTEND_WRITES].queue.append((addr, word, self.full_mask))
            self.functional[addr] = word
        await self.run(step, 4 * len(order) + 100)
        self.contention = saved

    async def readback(self, step):
        """Read every word through the contention read ports (checked against the SRAM model)."""
        saved, self.contention = self.contention, (0.0, 0.0)
        self.read_back.clear()
        cfg = self.cfg
        # Banks interleaved, so that the two readers are rarely on the same bank.
        order = [b * cfg.bank_words + k for k in range(cfg.bank_words)
                 for b in range(cfg.sram_banks)]
        for k, addr in enumerate(order):
            self.readers[k % CONTEND_READS].queue.append(addr)
        await self.run(step, 4 * self.words + 100)
        self.contention = saved

    def final_check(self):
        """The words read back and the SRAM model both equal the functional memory."""
        bad = [addr for addr in range(self.words)
               if self.read_back.get(addr) != self.functional[addr]]
        if bad:
            addr = bad[0]
            got = self.read_back.get(addr)
            raise LockstepError(
                f"{len(bad)} word(s) differ from the functional result (execute_vec), first at "
                f"{addr}: expected {self.functional[addr]:#x}, got "
                f"{'nothing' if got is None else hex(got)}; last instructions: "
                + "; ".join(describe_vec(r["instr"]) for r in self.runs[-5:]))
        assert self.sram.dump() == self.functional, "SRAM model differs from execute_vec"
        assert self.model.unit_state.rng == self.functional_state.rng, (
            f"generator states: cycle model {self.model.unit_state.rng}, execute_vec "
            f"{self.functional_state.rng}")
