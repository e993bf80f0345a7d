"""Elementwise and pooling layers on the vector unit: adds (of two activations, or of a
constant), ReLUs and pooling windows (max, average, global) computed where the activations
are, in FP32, for int8 and bf16 alike. docs/kernels.md ("Vector layers") tells the story;
`KernelBuilder.add_layer`, `relu_layer` and `pool_layer` are the entry points.

Every op unpacks its operand words into FP32 lanes (`FCVT INT8 -> FP32` times the scalar q, or
`BF16 -> FP32`, both exact for q = 1), computes with `FVEC` (FADD, FMAX, FRELU, FSCALE) and
packs the result (`FCVT FP32 -> INT8` times q, rounded to nearest even and saturated, or
`FP32 -> BF16` rounded to nearest even), `PIECE` elements (FP32 words) at a time, in two
scratch regions of each node (ACC and TMP, in different banks). So the numbers are the
numeric contract's (`d1tile.numerics`); the references are `reference_add`,
`reference_pool` (and, for the quantised graph, `d1tile.sw.quant`'s, which call them).

* **Elementwise** (add, relu): the output has the first input's layout; each node computes its
  own segments. The second input's words for them are read where they are when the node holds
  them (both produced by layers of the same partition), else sent by their holders into a
  staging region first. A constant operand is FP32 words (one per feature, the value in every
  lane) the host loads with the programs.
* **Pooling**: the output positions are split over the grid rows as a convolution's
  (`d1tile.sw.conv.split_positions`), each node reading the input rows its windows cover
  (gathered from their holders, halos included); per output position and channel piece, the
  window's taps inside the image are unpacked one after another and reduced (FMAX, or FADD
  then the divisor's reciprocal), taps over the padding skipped.

Sends and WAITs: each node first WAITs for the host's feeds of the input regions it holds
(when a layer reads the host input), then issues every SEND of the layer, then WAITs for what
it receives (one counter per sending row, as the GEMM kernels), then computes. Sends depend
on nothing but feeds and the node's own earlier layers, so the programs cannot deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

import numpy as np

from d1tile import numerics
from d1tile.dtypes import ELEMENTS, ElemType
from d1tile.formats import word_from_lanes
from d1tile.isa import FVecOp
from d1tile.sw.conv import WindowGeometry
from d1tile.sw.errors import CompileError


__all__ = ["PIECE", "piece", "VectorPlan", "add_layer", "relu_layer", "pool_layer", "reference_add",
           "reference_relu", "reference_pool"]

PIECE = 124
"""FP32 words (elements) per vector instruction: FVEC's n is 7 bits (at most 127), and a piece
of int8 elements must start on a word (4 per word). Smaller on a small SRAM (`piece`)."""


def piece(cfg) -> int:
    """Elements per vector instruction on this configuration: `PIECE`, or a 16th of the
    node's SRAM words if that is less (the two scratch regions take 2 x piece words)."""
    return max(4, min(PIECE, cfg.sram_words // 16 // 4 * 4))

UNPACK = {ElemType.INT8: ElemType.INT8, ElemType.BF16: ElemType.BF16}


@dataclass
class VectorPlan:
    """One vector layer, for reports: its name, kind, type, every node's instructions
    (`pcs`: node -> (first, end)) and its messages."""
    name: str
    kind: str
    dtype: ElemType
    pcs: dict = field(default_factory=dict)
    messages: int = 0

    def matrix_macs(self) -> int:
        return 0

    @property
    def where(self) -> str:
        return f"layer {self.name!r}"


# -- references ----------------------------------------------------------------------------------

def _f32(q: float) -> np.uint32:
    return np.uint32(numerics.f32_bits(q))


def _unpack(values, dtype, q: float = 1.0) -> np.ndarray:
    """int8 values x q (FCVT INT8 -> FP32) or BF16 bits (BF16 -> FP32), as FP32 bits."""
    if dtype == ElemType.INT8:
        return numerics.fp32_mul(numerics.f32_from_int(np.asarray(values, np.int64)), _f32(q))
    return numerics.f32_from_bf16(np.asarray(values, np.uint16))


def _pack(bits, dtype, q: float = 1.0) -> np.ndarray:
    """FP32 bits to int8 (x q, RNE, saturating) or to BF16 bits (RNE)."""
    if dtype == ElemType.INT8:
        return numerics.int_from_f32(numerics.fp32_mul(bits, _f32(q)), -128, 127).astype(np.int8)
    return numerics.bf16_from_f32_rne(bits)


def reference_add(a, b, dtype, qa: float = 1.0, qb: float = 1.0, relu: bool = False,
                  const=None) -> np.ndarray:
    """What `add_layer` computes: FP32(a) x qa + FP32(b) x qb (two roundings of the products
    for int8, then one of the sum; bf16: a + b), or + the constant `const` (floats, rounded to
    FP32) instead of b; ReLU with `relu`; packed back (int8: RNE, saturated; bf16: RNE)."""
    acc = _unpack(a, dtype, qa)
    if b is not None:
        acc = numerics.fp32_add(acc, _unpack(b, dtype, qb))
    if const is not None:
        acc = numerics.fp32_add(acc, numerics.f32_bits(np.asarray(const, np.float64)))
    if relu:
        acc = numerics.fp32_relu(acc)
    return _pack(acc, dtype)


def reference_relu(a, dtype) -> np.ndarray:
    """What `relu_layer` computes (exact: max(a, 0))."""
    return reference_add(a, None, dtype, relu=True)


def reference_pool(geom: WindowGeometry, x, dtype) -> np.ndarray:
    """What `pool_layer` computes: x [B, H, W, cp] (int8 values or BF16 bits) -> [B,
    positions, cp]: per output position, the taps inside the image in order (dy, then dx),
    unpacked to FP32 and reduced one after another from the first (`numerics.fp32_max`, or
    `fp32_add` then x FP32(1 / divisor)), packed back."""
    x = np.asarray(x)
    out = np.zeros((x.shape[0], geom.positions, x.shape[3]),
                   dtype=np.int8 if dtype == ElemType.INT8 else np.uint16)
    for q in range(geom.positions):
        taps = geom.taps(q)
        acc = _unpack(x[:, taps[0][0], taps[0][1]], dtype)
        for iy, ix in taps[1:]:
            t = _unpack(x[:, iy, ix], dtype)
            acc = numerics.fp32_max(acc, t) if geom.kind == "max" else numerics.fp32_add(acc, t)
        if geom.kind == "avg":
            recip = 1.0 / geom.divisor(q)
            if dtype == ElemType.INT8:
                out[:, q] = _pack(acc, dtype, recip)
                continue
            acc = numerics.fp32_mul(acc, _f32(recip))
        out[:, q] = _pack(acc, dtype)
    return out


# -- the layers ----------------------------------------------------------------------------------

def _elements(dtype) -> int:
    """Elements of `dtype` per operand word (4 int8, 2 bf16)."""
    return ELEMENTS[dtype].groups


class _Emitter:
    """A vector layer's instructions on one node, with the scalar q tracked across layers
    (`KernelBuilder._q`) so that a SETR is emitted only when q changes."""

    def __init__(self, kb, node, plan: VectorPlan):
        self.kb, self.node, self.plan = kb, node, plan
        self.program = kb._scratch_program()      # straight-line; rolled by `done`
        self.dtype = plan.dtype

    @property
    def scratch(self) -> tuple[int, int]:
        """(ACC, TMP): the node's FP32 scratch regions, `piece` words each."""
        return self.kb._vector_scratch(self.node)

    def __call__(self, method, *args, **kwargs):
        self.kb._emit(self.node, self.plan.where, getattr(self.program, method), *args, **kwargs)

    def q(self, value: float) -> None:
        bits = int(numerics.f32_bits(value))
        if self.kb._q.get(self.node) != bits:
            self("fscale", value)
            self.kb._q[self.node] = bits

    def unpack(self, dst: int, src: int, n: int, q: float = 1.0) -> None:
        if self.dtype == ElemType.INT8:
            self.q(q)
            self("fcvt", ElemType.INT8, ElemType.FP32, dst=dst, a=src, n=n)
        else:
            self("fcvt", ElemType.BF16, ElemType.FP32, dst=dst, a=src, n=n)

    def pack(self, dst: int, src: int, n: int, q: float = 1.0) -> None:
        if self.dtype == ElemType.INT8:
            self.q(q)
            self("fcvt", ElemType.FP32, ElemType.INT8, dst=dst, a=src, n=n)
            return
        if q != 1.0:
            self.q(q)
            self("fvec", FVecOp.FSCALE, dst=src, a=src, b=src, n=n)
        self("fcvt", ElemType.FP32, ElemType.BF16, dst=dst, a=src, n=n)

    def done(self) -> None:
        """Roll the layer's instructions into loops and append them to the node's program."""
        if self.program.words:
            self.plan.pcs[self.node] = self.kb._append_rolled(self.node, self.plan.where,
                                                              self.program)


def _check_same(name, a, b) -> None:
    if b.batch != a.batch or b.features != a.features or b.dtype != a.dtype or b.cfg != a.cfg:
        raise CompileError(f"layer {name!r}: inputs {a.name!r} and {b.name!r} differ (batch "
                           f"{a.batch}/{b.batch}, features {a.features}/{b.features}, type "
                           f"{a.dtype.name}/{b.dtype.name})")


def _missing(layout, needs) -> tuple[dict, dict]:
    """Which of the words `needs` wants (node -> [(block, lo, hi)]) the node holds itself:
    (where, missing): where[(node, j, lo)] = their address on the node, missing[node] =
    [(j, lo, hi)] that must be sent to it."""
    where, missing = {}, {}
    for node, wanted in needs.items():
        for j, lo, hi in wanted:
            for seg in layout.segments.get(node, ()):
                if seg.block == j and seg.k0 <= lo and hi <= seg.k1:
                    where[(node, j, lo)] = seg.addr + lo - seg.k0
                    break
            else:
                missing.setdefault(node, []).append((j, lo, hi))
    return where, missing


def _place(kb, plan, requests: dict, compute) -> dict:
    """Place every node's regions of a vector layer (`requests`: node -> [(part, words, cls,
    host)]) and the FP32 scratch of the nodes in `compute` that have none yet, all or nothing,
    with the builder's reuse of dead regions behind a barrier when they do not fit
    (`KernelBuilder._with_reuse`). Returns node -> {part: address}."""
    from d1tile.sw.kernels import VACC, VTMP
    size = piece(kb.cfg)
    scratch = {}

    def attempt():
        scratch.clear()
        placed = {}
        for node in sorted(set(requests) | set(compute)):
            reqs = [(f"{plan.name}: {part}", words, cls, host)
                    for part, words, cls, host in requests.get(node, ())]
            if node in compute and node not in kb._scratch:
                reqs += [("vector ACC", size, VACC, False), ("vector TMP", size, VTMP, False)]
            addrs = kb._place(plan.where, node, reqs) if reqs else []
            parts = [part for part, *_ in requests.get(node, ())]
            placed[node] = dict(zip(parts, addrs))
            if len(addrs) > len(parts):
                scratch[node] = tuple(addrs[len(parts):])
        return placed

    placed = kb._with_reuse(attempt)
    kb._scratch.update(scratch)
    return placed


def _gather(kb, plan, layout, where, missing, staging) -> tuple[dict, dict]:
    """The messages that fill each node's staging region (`staging[node]`) with the words it
    misses (`_missing`), from their holders (`segment_holders`, one counter per sending row):
    (sends[node] = [(src, n, to, dst, counter)], receives[node] = {counter: messages}); adds
    the staged words to `where`."""
    from d1tile.sw.kernels import MAX_SEND_WORDS, segment_holders
    cols = kb.cfg.cols
    sends, receives = {}, {}
    for node, wanted in missing.items():
        base = staging[node]
        for j, lo, hi in wanted:
            where[(node, j, lo)] = base
            for holder, k0, k1, addr in segment_holders(layout, node[0], j):
                a, b = max(k0, lo), min(k1, hi)
                for start in range(a, b, MAX_SEND_WORDS):
                    n = min(MAX_SEND_WORDS, b - start)
                    counter = cols + holder[1]
                    sends.setdefault(holder, []).append(
                        (addr + start - k0, n, node, base + start - lo, counter))
                    got = receives.setdefault(node, {})
                    got[counter] = got.get(counter, 0) + 1
                    plan.messages += 1
            base += hi - lo
    return sends, receives


def _prologue(kb, plan, layouts, sends, receives) -> dict:
    """Per node: the WAIT for the host's feeds of the input regions it holds (a layer reading
    the host input), its SENDs, then the WAITs for what it receives. Returns the emitters."""
    from d1tile.sw.kernels import BARRIER_ROOT, HOST_COUNTER
    nodes = sorted(set(sends) | set(receives) | {n for lay in layouts for n in lay.segments})
    emitters = {}
    layer_index = len(kb.layers)
    for node in nodes:
        e = emitters[node] = _Emitter(kb, node, plan)
        fed = [seg.addr for lay in layouts if lay.fed for seg in lay.segments.get(node, ())
               if seg.addr in kb._unfed[node]]
        for addr in sorted(set(fed)):
            words = kb._unfed[node].pop(addr)
            gate = kb._gated.pop((node, addr), None)
            kb.tp.expect_feed(node, addr, words, counter=HOST_COUNTER, key=(layer_index, -1, -1),
                              gate=(BARRIER_ROOT, gate) if gate else None)
        if fed:
            e("wait", HOST_COUNTER, len(set(fed)))
        for src, n, to, dst, counter in sends.get(node, ()):
            e("send", src, n, to, dst, counter=counter)
    for node, got in receives.items():
        for counter, count in sorted(got.items()):
            emitters[node]("wait", counter, count)
    return emitters


def _register_fed(kb, layout) -> None:
    """A host input's segments become regions the host feeds (once)."""
    if layout.streamed is not None:
        raise CompileError(f"tensor {layout.name!r} was sent to the host, it is not on the tile")
    if layout.fed:
        for node, segs in layout.segments.items():
            for seg in segs:
                if (layout.name, node, seg.addr) not in kb._fed:
                    kb._fed.add((layout.name, node, seg.addr))
                    kb._unfed[node][seg.addr] = seg.words


def add_layer(kb, name: str, a, b=None, *, const=None, qa: float = 1.0, qb: float = 1.0,
              relu: bool = False):
    """y = pack(FP32(a) x qa + FP32(b) x qb), or + `const` (one float per feature of a, in
    its stored order, broadcast over the batch), ReLU with `relu` (`reference_add`). Returns
    the output `ActivationLayout` (a's layout, in new regions) and the plan."""
    from d1tile.sw.kernels import OPERAND, STAGE, ActivationLayout, Segment
    kb._check_open(name)
    where_ = f"layer {name!r}"
    if (b is None) == (const is None) and not relu:
        raise CompileError(f"{where_}: an add needs exactly one of a second input or a constant")
    if b is not None:
        _check_same(name, a, b)
    if a.dtype not in UNPACK:
        raise CompileError(f"{where_}: type {a.dtype.name} has no vector layers")
    if const is not None:
        const = np.asarray(const, dtype=np.float64).reshape(-1)
        if const.shape != (a.features,):
            raise CompileError(f"{where_}: the constant has {const.size} values, the input "
                               f"{a.features} features")
    plan = VectorPlan(name, "add" if (b is not None or const is not None) else "relu", a.dtype)
    g = _elements(a.dtype)
    n = kb.cfg.mac_dim
    _register_fed(kb, a)
    where, missing = {}, {}
    if b is not None:
        _register_fed(kb, b)
        where, missing = _missing(b, {node: [(s.block, s.k0, s.k1) for s in segs]
                                      for node, segs in a.segments.items()})
    ranges = {node: sorted({(s.k0, s.k1) for s in segs}) for node, segs in a.segments.items()}
    requests = {}
    for node, segs in a.segments.items():
        reqs = [("output", sum(s.words for s in segs), STAGE, False)]
        if node in missing:
            reqs.append((f"{b.name} staging", sum(hi - lo for _, lo, hi in missing[node]),
                         OPERAND, False))
        if const is not None:        # FP32 words, one per element of each distinct k-range
            reqs += [(f"constant {k0}", (k1 - k0) * g, STAGE, True) for k0, k1 in ranges[node]]
        requests[node] = reqs
    placed = _place(kb, plan, requests, set(a.segments))
    sends, receives = ({}, {}) if b is None else _gather(
        kb, plan, b, where, missing, {node: placed[node][f"{b.name} staging"] for node in missing})
    kb._barrier_due()
    emitters = _prologue(kb, plan, [a] + ([b] if b is not None else []), sends, receives)
    segments = {}
    size = piece(kb.cfg)
    for node, segs in sorted(a.segments.items()):
        e = emitters[node]
        acc, tmp = e.scratch
        consts = {}
        for k0, k1 in ranges[node] if const is not None else ():
            addr = placed[node][f"constant {k0}"]
            bits = numerics.f32_bits(const[k0 * g:k1 * g])
            kb.tp.load(node, addr, [word_from_lanes([int(v)] * n) for v in bits])
            consts[(k0, k1)] = addr
        at, outs = placed[node]["output"], []
        for s in segs:
            elements = s.words * g
            for e0 in range(0, elements, size):
                m = min(size, elements - e0)
                w0 = e0 // g
                e.unpack(acc, s.addr + w0, m, qa)
                if b is not None:
                    e.unpack(tmp, where[(node, s.block, s.k0)] + w0, m, qb)
                    e("fvec", FVecOp.FADD, dst=acc, a=acc, b=tmp, n=m)
                if const is not None:
                    e("fvec", FVecOp.FADD, dst=acc, a=acc, b=consts[(s.k0, s.k1)] + e0, n=m)
                if relu:
                    e("fvec", FVecOp.FRELU, dst=acc, a=acc, b=acc, n=m)
                e.pack(at + w0, acc, m)
            outs.append(Segment(s.block, s.k0, s.k1, at))
            at += s.words
        segments[node] = tuple(outs)
    for e in emitters.values():
        e.done()
    kb._retire_layer(plan)
    kb.layers.append(plan)
    return ActivationLayout(kb.cfg, name, a.batch, a.features, a.kwords, a.blocks, segments,
                            a.dtype), plan


def relu_layer(kb, name: str, a):
    """y = max(a, 0) on the vector unit (`reference_relu`)."""
    return add_layer(kb, name, a, relu=True)


def pool_layer(kb, name: str, x, geom: WindowGeometry, rows: int | None = None):
    """A max or average pool of the image `x` (`geom`: its window; the output keeps the
    stored channels `geom.cp`) on the vector unit (`reference_pool`). Returns the output
    image `ActivationLayout` and the plan."""
    from d1tile.sw.kernels import OPERAND, STAGE, ActivationLayout, Segment
    kb._check_open(name)
    cfg = kb.cfg
    where_ = f"layer {name!r}"
    g = _elements(x.dtype)
    if geom.cp % g:
        raise CompileError(f"{where_}: {geom.cp} stored channels are not whole "
                           f"{x.dtype.name} words")
    cwi = geom.cp // g
    if x.features != geom.in_h * geom.in_w * geom.cp:
        raise CompileError(f"{where_}: input {x.name!r} has {x.features} features, not the "
                           f"{geom.in_h}x{geom.in_w} image of {geom.cp} stored channels")
    plan = VectorPlan(name, f"{geom.kind}pool", x.dtype)
    split = geom.row_split(min(rows or cfg.rows, cfg.rows))
    row_words = geom.in_w * cwi
    needs, spans = {}, {}
    for col in range(cfg.cols):
        j0, j1 = x.blocks[col]
        for y, (q0, q1) in split.items():
            if j1 > j0:
                r0, r1 = geom.input_rows(q0, q1)
                spans[(col, y)] = (r0, r1)
                needs[(col, y)] = [(j, r0 * row_words, r1 * row_words) for j in range(j0, j1)]
    _register_fed(kb, x)
    where, missing = _missing(x, needs)
    requests = {node: [("output", len(wanted) * (split[node[1]][1] - split[node[1]][0]) * cwi,
                        STAGE, False)]
                + ([(f"{x.name} staging", sum(hi - lo for _, lo, hi in missing[node]), OPERAND,
                     False)] if node in missing else [])
                for node, wanted in needs.items()}
    placed = _place(kb, plan, requests, set(needs))
    sends, receives = _gather(kb, plan, x, where, missing,
                              {node: placed[node][f"{x.name} staging"] for node in missing})
    kb._barrier_due()
    emitters = _prologue(kb, plan, [x], sends, receives)
    size = piece(cfg)
    pieces = [(c0, min(geom.cp, c0 + size)) for c0 in range(0, geom.cp, size)]
    segments = {}
    for node, wanted in sorted(needs.items()):
        e = emitters.setdefault(node, _Emitter(kb, node, plan))
        acc, tmp = e.scratch
        q0, q1 = split[node[1]]
        r0 = spans[node][0]
        out = placed[node]["output"]
        outs = []
        for k, (j, lo, _) in enumerate(wanted):
            base = where[(node, j, lo)]
            at = out + k * (q1 - q0) * cwi
            for q in range(q0, q1):
                taps = geom.taps(q)
                recip = 1.0 / geom.divisor(q) if geom.kind == "avg" else 1.0
                for c0, c1 in pieces:
                    m = c1 - c0
                    src = [base + ((iy - r0) * geom.in_w + ix) * cwi + c0 // g for iy, ix in taps]
                    e.unpack(acc, src[0], m)
                    for s in src[1:]:
                        e.unpack(tmp, s, m)
                        op = FVecOp.FMAX if geom.kind == "max" else FVecOp.FADD
                        e("fvec", op, dst=acc, a=acc, b=tmp, n=m)
                    e.pack(at + (q - q0) * cwi + c0 // g, acc, m, recip)
            outs.append(Segment(j, q0 * cwi, q1 * cwi, at))
        segments[node] = tuple(outs)
    for e in emitters.values():
        e.done()
    kb._retire_layer(plan)
    kb.layers.append(plan)
    blocks = x.blocks
    return ActivationLayout(cfg, name, x.batch, geom.positions * geom.cp,
                            geom.positions * cwi, blocks, segments, x.dtype), plan
