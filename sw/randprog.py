"""Random valid multi-node programs, for `d1tile verify` and the randomised tests.

Every generated program is race-free, so its result is defined by the functional interpreter
and every timed execution (cycle model, RTL) must reproduce it, and it cannot deadlock:

* Each node's SRAM is split in two halves: the *private* half, loaded with random words and used
  by the node's own matrix and vector instructions (whose overlaps the sequencer's hazard check
  orders), and the *inbox* half, which only receives messages.
* Every message (a SEND from one node to another, or to itself, or an MCAST to a run of the
  sender's row or column) has its own inbox slot at each receiver (an MCAST's at the same
  address in all of them), so no slot is written twice; the receiver reads a slot only after a
  WAIT on the message's counter.
* The program runs in phases: in phase p every node does some local work, sends its phase-p
  messages, waits for its phase-p messages, then may use them. Sends never wait on receives of
  the same phase, so the phases cannot deadlock. Each phase bumps its own counters (a message of
  a later phase may arrive before one of an earlier phase, and must not satisfy its WAIT).

The programs mix every instruction: MATMUL (INT8 and BF16, with and without clear, either
accumulator bank), MREAD (any rows of either bank, a third transposed; and "ping-pong" runs, MATMUL into one bank, its
MREAD, a MATMUL into the other bank, ..., so that readouts overlap products), VEC (all ops, fixed b,
REQUANT packing), FVEC (every FP32 op, fixed b, the reductions), FCVT (every conversion, stochastic
rounding), SETQ, SETR (q and reseeds), NOP, SEND (including zero-length signals, sends to self
and streams to the host, which no node waits for),
SHAPE and shaped SENDs and MCASTs (gathers with any stride, a row repeated, scatters, zero rows,
rectangle multicasts)
and WAIT, with ranges that often overlap inside the private half, to exercise the hazard check.
Every node's whole SRAM is read back.

The loaded words are drawn to reach the corner cases of every element type (`random_word`):
random bits, FP32 lanes and BF16 halves from `numerics.SPECIAL_FP32` (signed zeros, subnormals,
infinities, NaNs with payloads, the largest and smallest normals, values one ulp apart so that
sums tie or cancel), values at both ends of the exponent range, ordinary values, and small
integers.
"""

from __future__ import annotations

import random

import struct

from d1tile import isa, numerics
from d1tile.dtypes import ELEMENTS, MATRIX_TYPES, ElemType
from d1tile.isa import ACC_BANKS, CONVERSIONS, SYNC_COUNTERS, FaultCode, FVecOp, Opcode, VecOp
from d1tile.params import TileConfig
from d1tile.sw.program import TileProgram
from d1tile.vector_ops import VECTOR_OPS


__all__ = ["random_tile_program", "random_word"]




def _fp32_lane(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.5:
        return numerics.random_fp32(rng, special=0.5)
    return struct.unpack("<I", struct.pack("<f", rng.gauss(0.0, 8.0)))[0]


def random_word(cfg: TileConfig, rng: random.Random) -> int:
    """One SRAM word for random programs: random bits, small integers (int8 / int32 lanes), FP32
    lanes or BF16 halves drawn from `numerics.SPECIAL_FP32`, values at both ends of the
    exponent range and ordinary values."""
    kind = rng.random()
    if kind < 0.25:
        return rng.getrandbits(cfg.word_bits)
    if kind < 0.4:
        return ELEMENTS[ElemType.INT8].pack(
            cfg, [rng.randint(-128, 127) for _ in range(ELEMENTS[ElemType.INT8].per_word(cfg))])
    if kind < 0.7:
        return ELEMENTS[ElemType.FP32].pack(cfg, [_fp32_lane(rng) for _ in range(cfg.lanes)])
    halves = ELEMENTS[ElemType.BF16].per_word(cfg)
    return ELEMENTS[ElemType.BF16].pack(cfg, [_fp32_lane(rng) >> 16 for _ in range(halves)])


def _private(cfg: TileConfig, word: int, half: int) -> bool:
    """The instruction is valid and its SRAM ranges lie in words [0, half)."""
    instr = isa.decode(word)
    if isa.validate(cfg, instr)[0] != FaultCode.NONE:
        return False
    r = isa.hazard_ranges(instr)
    return all(hi <= half for lo, hi in (r.read0, r.read1, r.write)
               if lo < hi and lo < isa.ACC_RANGE_BASE)


def _extent(n: int, shape) -> tuple[int, int]:
    """(source words read from src, destination words spanned from dst) of a transfer of n
    words with `shape` = (rows, sstride, dstride, zero[, span]) or None."""
    if shape is None:
        return n, n
    rows, sstride, dstride, zero = shape[:4]
    return (0 if zero else (rows - 1) * sstride + n), (rows - 1) * dstride + n


def _span(rng: random.Random, lo: int, hi: int, n: int) -> int:
    """A random start for n words inside [lo, hi)."""
    return rng.randrange(lo, hi - n + 1)


def random_tile_program(cfg: TileConfig, rng: random.Random, *, phases: int = 3,
                        ops_per_phase: int = 4, max_words: int = 8,
                        read_back: bool = True) -> TileProgram:
    """A random race-free `TileProgram` for `cfg` (see the module docstring)."""
    tp = TileProgram(cfg)
    words = cfg.sram_words
    half = words // 2
    nodes = tp.nodes
    max_words = max(1, min(max_words, half // 8))
    inbox_next = {node: half for node in nodes}
    # Filled per phase: messages[p] = [(src, dst, n, src_addr, dst_addr, counter)]
    for node in nodes:
        tp.load(node, 0, [random_word(cfg, rng) for _ in range(half)])
    programs = {node: tp.node(*node) for node in nodes}
    usable = {node: [(0, half)] for node in nodes}   # regions a node may read

    def region(node, n):
        lo, hi = rng.choice([r for r in usable[node] if r[1] - r[0] >= n] or [(0, half)])
        return _span(rng, lo, hi, n)

    def vector_op(node):
        """A random VEC, FVEC or FCVT: its op, n, sources, and a destination in place or clear
        of the sources (a later element must never read what an earlier one wrote), checked
        with `isa.validate`; a NOP if no destination fits."""
        p = programs[node]
        family = rng.choice([Opcode.VEC, Opcode.FVEC, Opcode.FVEC, Opcode.FCVT])
        if family == Opcode.VEC:
            choice = rng.choice(list(VecOp))
            fields = dict(vop=int(choice))
            spec = VECTOR_OPS[int(choice)]
        elif family == Opcode.FVEC:
            choice = rng.choice(list(FVecOp))
            fields = dict(fop=int(choice))
            spec = VECTOR_OPS[isa.FVEC_BASE + int(choice)]
        else:
            (stype, dtype, sr), code = rng.choice(list(CONVERSIONS.items()))
            fields = dict(stype=int(stype), dtype=int(dtype), sr=sr)
            spec = VECTOR_OPS[code]
        n = rng.randint(1, min(max_words, (1 << isa.FORMATS[family].field("n").width) - 1))
        a = region(node, spec.source_words(n))
        if family != Opcode.FCVT:
            bfix = spec.binary and rng.random() < 0.3
            b = region(node, 1 if bfix else n) if spec.binary else 0
            fields.update(bfix=int(bfix), b=b)
        out = spec.dest_words(n)
        for _ in range(20):
            dst = a if rng.random() < 0.25 else _span(rng, 0, half, out)
            word = isa.encode(family, dst=dst, a=a, n=n, **fields)
            if isa.validate(cfg, isa.decode(word)) == (FaultCode.NONE, 0):
                p.emit(family, dst=dst, a=a, n=n, **fields)
                return
        p.nop()

    def stepped_op(node, counts):
        """Inside loops of these counts (outermost first): STEPs of random levels and strides,
        then a MATMUL, MREAD or vector instruction that is valid, and reads and writes only the
        private half, at every iteration (drawn again until it is; a plain local op if not)."""
        p = programs[node]
        levels = rng.sample(range(len(counts)), rng.randint(1, len(counts)))
        steps = [(level, [rng.choice([0, 0, 1, 2, 3, -1]) for _ in range(3)]) for level in levels]
        # Every offset vector the instruction sees: one iteration per enclosing loop.
        variants = [(0, 0, 0)]
        for level, strides in steps:
            count = counts[len(counts) - 1 - level]
            variants = [tuple(o + s * i for o, s in zip(v, strides))
                        for v in variants for i in range(max(count, 1))]
        for _ in range(20):
            trial = TileProgram(cfg).node(*node)
            saved, programs[node] = programs[node], trial
            try:
                rng.choice([matmul_op, mread_op, vector_op])(node)
            finally:
                programs[node] = saved
            word = trial.words[-1] if trial.words else isa.encode(Opcode.NOP)
            if isa.decode(word).op == Opcode.NOP:
                continue
            if all(_private(cfg, isa.stepped(word, tuple(o & 0xFFFF for o in v)), half)
                   for v in set(variants)):
                for level, strides in steps:
                    p.step(*strides, level=level)
                p.word(word)
                return
        local_op(node, counts, loops=False)

    def loop_op(node, counts):
        """A LOOP (count 0, 1 or more) around a few local ops, stepped ops and loops; an inner
        loop is followed by one more instruction (a body may not end with an inner loop's)."""
        p = programs[node]
        count = rng.choice([0, 1, 2, rng.randint(2, 4)])
        inner = counts + [count]
        with p.loop(count):
            for _ in range(rng.randint(1, 3)):
                r = rng.random()
                if r < 0.25 and len(inner) < isa.LOOP_DEPTH:
                    loop_op(node, inner)
                    local_op(node, inner, loops=False)
                elif r < 0.7:
                    stepped_op(node, inner)
                else:
                    local_op(node, inner, loops=False)

    def random_shape(n):
        """(rows, sstride, dstride, zero) for a shaped transfer of rows of n words: gathers
        (a stride, or 0: a row repeated), scatters (gaps between destination rows), zeros."""
        rows = rng.randint(1, 4)
        sstride = rng.choice([0, n, n + rng.randint(1, 3), rng.randint(1, 8)])
        dstride = rng.choice([n, n, n + rng.randint(1, 3), 0 if rows == 1 else n])
        return rows, sstride, dstride, rng.random() < 0.15

    def matmul_op(node, bank=None):
        kw = rng.randint(1, max_words)
        programs[node].matmul(region(node, kw), region(node, kw), kw, clear=rng.random() < 0.7,
                              dtype=rng.choice(list(MATRIX_TYPES)),
                              bank=rng.randrange(ACC_BANKS) if bank is None else bank)

    def mread_op(node, bank=None):
        row0 = rng.randrange(cfg.mac_dim)
        nrows = rng.randint(1, cfg.mac_dim - row0)
        programs[node].mread(_span(rng, 0, half, nrows), row0, nrows,
                             bank=rng.randrange(ACC_BANKS) if bank is None else bank,
                             transpose=rng.random() < 0.3)

    def local_op(node, counts=(), loops=True):
        p = programs[node]
        kind = rng.choice(["matmul", "matmul", "mread", "pingpong", "vec", "vec", "vec", "setq",
                           "setr", "nop"] + (["loop"] if loops else []))
        if kind == "loop":
            loop_op(node, list(counts))
        elif kind == "matmul":
            matmul_op(node)
        elif kind == "mread":
            mread_op(node)
        elif kind == "pingpong":
            bank = rng.randrange(ACC_BANKS)
            for _ in range(rng.randint(2, 4)):
                matmul_op(node, bank)
                mread_op(node, bank)
                bank = (bank + 1) % ACC_BANKS
        elif kind == "vec":
            vector_op(node)
        elif kind == "setq":
            p.setq(rng.randrange(1 << 16), rng.randrange(48), rng.random() < 0.5)
        elif kind == "setr":
            if rng.random() < 0.6:
                p.setr("SCALE", rng.choice([_fp32_lane(rng), 0x3F80_0000, 0x3C23_D70A]))
            else:
                p.setr("SEED", rng.getrandbits(32))
        else:
            p.nop()

    phase_sets = min(phases, SYNC_COUNTERS)     # phase p uses the counters c = p (mod phase_sets)
    for phase in range(phases):
        messages = []
        mcasts = []
        for src in nodes:
            if rng.random() < 0.3:
                # a multicast to a run of the sender's row or column, or (shaped, with a
                # span) to a rectangle, one inbox slot (the same address) at every receiver
                col = rng.random() < 0.5
                size, other = (cfg.rows, cfg.cols) if col else (cfg.cols, cfg.rows)
                first = rng.randrange(size)
                last = rng.randint(first, size - 1)
                n = rng.choice([0, 1, rng.randint(1, max_words)])
                shape = random_shape(n) if rng.random() < 0.4 else None
                rect = None
                if shape is not None and rng.random() < 0.5:
                    s0 = rng.randrange(other)
                    rect = (s0, rng.randint(s0, other - 1))
                    shape = (*shape, rect)
                instr = isa.Instruction(Opcode.MCAST, dict(
                    col=int(col), first=first, last=last,
                    **({"span": 1, "span_first": rect[0], "span_last": rect[1]} if rect else {})),
                    0)
                run = isa.mcast_receivers(instr, src)
                hull, span = _extent(n, shape)
                at = max(inbox_next[r] for r in run)
                if at + span <= words and hull <= half:
                    counter = rng.randrange(phase % phase_sets, SYNC_COUNTERS, phase_sets)
                    mcasts.append((src, run, n, _span(rng, 0, half, hull) if hull else 0, at,
                                   counter, col, first, last, shape))
                    for r in run:
                        inbox_next[r] = at + span
            for _ in range(rng.randint(0, 2)):
                dst = rng.choice(nodes)
                n = rng.choice([0, 1, rng.randint(1, max_words)])
                # repeat: None (one SEND), or the count of a LOOP around a stepped SEND
                # or a shaped SEND (rows gathered with a stride, scattered, or zeros)
                repeat = rng.choice([0, 1, 2, 3]) if rng.random() < 0.25 else None
                shape = random_shape(n) if repeat is None and rng.random() < 0.3 else None
                if shape is None:
                    hull = total = n * (1 if repeat is None else repeat)
                else:
                    hull, total = _extent(n, shape)
                # a LOOP of count 0 moves nothing, but its SEND must still name valid words
                if inbox_next[dst] + max(total, n) > words or hull > half:
                    continue
                counter = rng.randrange(phase % phase_sets, SYNC_COUNTERS, phase_sets)
                messages.append((src, dst, n, _span(rng, 0, half, hull) if hull else 0,
                                 inbox_next[dst], counter, repeat, shape))
                inbox_next[dst] += total
            if rng.random() < 0.25:
                # a stream to the host (x == cols, any y: it leaves through the sender's row),
                # plain, looped or shaped like the SENDs above
                n = rng.choice([0, 1, rng.randint(1, max_words)])
                repeat = rng.choice([0, 1, 2, 3]) if rng.random() < 0.25 else None
                shape = random_shape(n) if repeat is None and rng.random() < 0.3 else None
                hull, total = ((n * (1 if repeat is None else repeat),) * 2 if shape is None
                               else _extent(n, shape))
                if hull <= half and max(total, n) <= words:
                    messages.append((src, (cfg.cols, rng.randrange(cfg.rows)), n,
                                     _span(rng, 0, half, hull) if hull else 0,
                                     rng.randint(0, words - max(total, n)),
                                     rng.randrange(SYNC_COUNTERS), repeat, shape))
        for node in nodes:
            for _ in range(rng.randint(0, ops_per_phase)):
                local_op(node)
        for src, run, n, src_addr, dst_addr, counter, col, first, last, shape in mcasts:
            if shape is not None:
                programs[src].shape(*shape)
            programs[src].mcast(src_addr, n, dst_addr, counter=counter,
                                shaped=shape is not None,
                                **{"column" if col else "row": (first, last)})
        for src, dst, n, src_addr, dst_addr, counter, repeat, shape in messages:
            if shape is not None:
                programs[src].shape(*shape)
                programs[src].send(src_addr, n, dst, dst_addr, counter, shaped=True)
            elif repeat is None:
                programs[src].send(src_addr, n, dst, dst_addr, counter)
            else:   # message k: words src_addr + k n.. to dst_addr + k n..
                with programs[src].loop(repeat):
                    programs[src].step(n, n)
                    programs[src].send(src_addr, n, dst, dst_addr, counter)
        for node in nodes:
            incoming = {}
            for src, dst, n, src_addr, dst_addr, counter, repeat, shape in messages:
                times = 1 if repeat is None else repeat
                span = _extent(n, shape)[1] if shape else n * times
                if dst == node and times:
                    incoming[counter] = incoming.get(counter, 0) + times
                    if span:
                        usable[node].append((dst_addr, dst_addr + span))
            for src, run, n, src_addr, dst_addr, counter, *_, shape in mcasts:
                if node in run:
                    incoming[counter] = incoming.get(counter, 0) + 1
                    span = _extent(n, shape)[1]
                    if span:
                        usable[node].append((dst_addr, dst_addr + span))
            for counter, count in sorted(incoming.items(), key=lambda _: rng.random()):
                programs[node].wait(counter, count)
        for node in nodes:
            for _ in range(rng.randint(0, ops_per_phase // 2)):
                local_op(node)
    for node in nodes:
        programs[node].halt()
        if read_back:
            tp.read(node, 0, words)
    return tp
