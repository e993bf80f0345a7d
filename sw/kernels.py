"""Tile kernels for GEMM layers: per-node programs, SRAM placement and host-side packing.

Two element types: int8 (quantised layers and the int8 GEMM) and bf16 (the bf16 GEMM, FP32
accumulators read back). What differs between them is the type table's (`d1tile.dtypes`):
V = 4 int8 or 2 bf16 k-steps per operand word, so a bf16 operand takes twice the words, SENDs
and SRAM of an int8 one for the same K, at the same MACs per cycle.

A layer Y = requant(X @ W + b) (X: int8 [batch, K], W: int8 [K, F], b: int32 [F]) is computed
transposed, Y^T = W^T X^T, output-stationary over the R x C grid, in the operand layout of
docs/architecture.md ("SRAM words and operand layout"); docs/kernels.md tells the whole story.

* **Partition.** Outputs are N x N tiles (N = `cfg.mac_dim`): feature block i (features
  iN .. iN+N-1) by batch block j (batch elements jN .. jN+N-1). Grid row y owns a contiguous
  range of feature blocks, grid column x a contiguous range of batch blocks (`split_even`), so
  node (x, y) computes every tile of (its row's features) x (its column's batch), one MATMUL
  over all of K and one MREAD per tile.
* **Activations** live on the tile as an `ActivationLayout`: X^T operand words, batch blocks
  over the columns, each block held by the nodes of its column as segments of its K words
  (whole blocks dealt over the rows for a host input, or one chunk of K per row). A layer's
  output is left in the chunk form, chunk y = the features grid row y computed, so it is the
  next layer's input as it stands.
* **Weights** are resident: the host loads each feature block's W words (and, for quantised
  layers, its N bias words) once, into the staging region of one *owner* node of the row
  (blocks dealt round-robin over the row's active columns).
* **Feeds.** The weight blocks and host input segments that a node first SENDs before its
  first MATMUL (slot -1) are loaded before the START; every other one is fed while the nodes
  run (`TileProgram.feed`, `expect_feed`): it bumps `HOST_COUNTER` on its holder when it has
  arrived, and the holder WAITs on it once, before the region's first SEND. The host sends a
  row's feeds in the order they are due, and a fed region's message goes no earlier than its
  due slot, so the rest of the data streams in beside the MATMULs. The first layer's senders
  of first operands are *early* nodes (`TileProgram.early`, unless that is every node of the
  row): loaded and STARTed first, they multicast while the rest of the row loads.
* **Gather, by multicast.** Every node pushes what it holds to the nodes that need it, itself
  included: each activation segment with one column MCAST down its column, each weight block
  with one row MCAST along its row (the receivers' regions are placed at one address,
  `NodeSram.common`; one receiver, or no common address: SENDs). Receivers WAIT on one counter
  per sender (weights from column x' on counter x', activations from row y' on counter
  C + y'); a sender's messages on one counter take one path and arrive in order, so a WAIT
  count always covers a prefix of the sender's list.
* **Overlap.** Every node of a row takes the weight blocks in one order, every node of a
  column its batch blocks in one order (`_order_tiles`), so each block is needed by all its
  receivers at the same tile. Each message is due one tile before that, and the sender issues
  it in the *slot* after one of its own MATMULs (earliest deadline first, filling each slot up
  to the MATMUL's duration), so the DMA streams while the matrix unit computes; only what the
  first tiles need goes before the first MATMUL.
* **Banks.** DMA-out only ever reads staging regions and the matrix unit only operand regions,
  and the allocator (`NodeSram`) puts the two classes in different banks, so sends never take
  SRAM read cycles from a MATMUL; results (MREAD rows) go to banks of a third class.

Programs are deadlock-free by construction: a message is sent in a slot no later than the tile
before its first use, and sends wait on nothing but the host's feeds (which the host sends
unconditionally after the STARTs, and which always arrive: XY routing, DMA-in always drains),
so every node can always reach the WAITs of its next tile (induction over tiles, then over
layers).

Typical use (a lowering chains layers; the plain GEMM is the benchmark's kernel)::

    kb = KernelBuilder(cfg)
    x = kb.input("x", batch=64, features=100)
    h = kb.quantised_layer("fc1", x, w1, b1, scale=..., shift=..., relu=True)
    y = kb.quantised_layer("fc2", h, w2, b2, scale=..., shift=...)
    kb.read(y)
    tp = kb.finish()
    load_activation(tp, x, x_int8)
    result = TileModel(cfg).run(tp)
    y_int8 = unpack_activation(y, result)     # == reference_layer(reference_layer(...), ...)

and in bf16 (values are rounded to BF16 on the host; C comes back as FP32)::

    x = kb.input("x", batch=64, features=100, dtype=ElemType.BF16)
    c = kb.gemm("fc1", x, w_float)
    ...
    c_fp32 = unpack_gemm(c, result)           # == reference_gemm_bf16(x_float, w_float)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

import numpy as np

from d1tile import numerics
from d1tile.dtypes import ELEMENTS, MATRIX_TYPES, ElemType, MatrixType
from d1tile.formats import lanes_from_word, word_from_lanes
from d1tile.isa import ACC_BANKS, FORMATS, SEND_MAX_WORDS, SYNC_COUNTERS, FVecOp, Opcode, VecOp
from d1tile.params import TileConfig
from d1tile.sim.dma import job_cycles
from d1tile.sim.mxu import matmul_cycles
from d1tile.sim.vector import SCALE_BITS, SHIFT_BITS, requantize
from d1tile.sim.vpu import vec_cycles
from d1tile.sw.asm import AsmError, Program
from d1tile.sw.conv import ConvGeometry
from d1tile.sw.errors import CapacityError, CompileError
from d1tile.sw.program import TileProgram
from d1tile.sw.reroll import reroll


__all__ = [
    "KernelBuilder", "ActivationLayout", "Segment", "GemmOutput", "NodeSram", "Region",
    "LayerPlan", "NodePlan", "Message", "schedule_sends", "split_even", "batch_blocks",
    "pack_activation", "load_activation", "unpack_activation", "unpack_gemm",
    "reference_gemm", "reference_gemm_bf16", "reference_layer", "reference_layer_bf16",
    "GEMM_TYPES", "ConvCost", "conv_cost", "random_gemm", "gemm_matches_reference",
]

GEMM_TYPES = (ElemType.INT8, ElemType.BF16)
"""The operand types of the kernels (`MATRIX_TYPES`): int8 values, or floats rounded to BF16."""

INT8_OUT_PER_WORD = ELEMENTS[ElemType.INT8].groups    # REQUANT packs 4 accumulator rows a word
BF16_OUT_PER_WORD = ELEMENTS[ElemType.BF16].groups    # FCVT FP32 -> BF16 packs 2 a word
OUT_PER_WORD = {ElemType.INT8: INT8_OUT_PER_WORD, ElemType.BF16: BF16_OUT_PER_WORD}
MAX_SEND_WORDS = SEND_MAX_WORDS
MAX_KW = (1 << FORMATS[Opcode.MATMUL].field("kw").width) - 1

# SRAM region classes: who reads them, hence which must not share a bank.
STAGE = "stage"       # read by DMA-out (SEND sources): activation chunks, weight blocks, outputs
OPERAND = "operand"   # read by the matrix unit (MATMUL a and b), written by DMA-in
RESULT = "result"     # written by MREAD, read by the vector unit or the host
GATED = "gated"       # `NodeSram.alloc`'s host=GATED: a host region that may be fed after a barrier
CANDIDATE = "cand"    # a pooled group's other candidates: not with RESULT, so that VEC MAX
#                       reads its operands from two banks (n + 3 cycles, not 2n + 3)
VACC = "vacc"         # the vector layers' FP32 scratch: ACC and TMP in different banks, so
VTMP = "vtmp"         # that FADD ACC, ACC, TMP takes n + 3 cycles, not 2n + 3
AVOID = {STAGE: {OPERAND}, OPERAND: {STAGE}, RESULT: {OPERAND, STAGE, CANDIDATE},
         CANDIDATE: {OPERAND, STAGE, RESULT}, VACC: {VTMP}, VTMP: {VACC}}

FEED_LEAD = 0
"""A message with a fed source is sent at most this many slots before its due slot."""
HOST_COUNTER = SYNC_COUNTERS - 1
"""The sync counter the host's feeds bump (weight blocks and inputs fed after the START); the
gather uses counters 0 .. rows + cols - 1."""
BARRIER_COUNTER = SYNC_COUNTERS - 2
"""The sync counter of the barriers before layers that reuse dead regions' words
(`KernelBuilder._emit_barrier`): possible when rows + cols <= 30."""

BARRIER_ROOT = (0, 0)
"""The node that collects a barrier's tokens, releases the grid and tells the host (a token the
host's gated feeds wait for)."""


def split_even(count: int, parts: int) -> list[tuple[int, int]]:
    """`count` items cut into `parts` contiguous ranges [lo, hi) whose sizes differ by at most
    one (the larger ones first); empty ranges when count < parts."""
    base, extra = divmod(count, parts)
    ranges, lo = [], 0
    for p in range(parts):
        hi = lo + base + (1 if p < extra else 0)
        ranges.append((lo, hi))
        lo = hi
    return ranges


def batch_blocks(cfg: TileConfig, batch: int) -> tuple[tuple[int, int], ...]:
    """The batch blocks (of N elements) each grid column owns: the same for every activation of
    a given batch, which is what lets any layer's output feed any later layer."""
    return tuple(split_even(ceil(batch / cfg.mac_dim), cfg.cols))


# -- layouts ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Segment:
    """Words [k0, k1) of batch block `block`, stored from SRAM word `addr` on."""
    block: int
    k0: int
    k1: int
    addr: int

    @property
    def words(self) -> int:
        return self.k1 - self.k0


@dataclass(frozen=True)
class ActivationLayout:
    """Where an activation X [batch, features] of type `dtype` (int8 or bf16) lives on the tile,
    as X^T operand words.

    Word w of batch block j holds features Vw .. Vw+V-1 (V = the type's vectors per word, 4 for
    int8, 2 for bf16), each as a vector of the N batch elements jN .. jN+N-1 (element s*N + i =
    X[jN + i, Vw + s], zero beyond the tensor); a block has
    `kwords` words. Grid column x owns the batch blocks `blocks[x]` = [j0, j1) (`batch_blocks`,
    the same for every activation of one batch), and the nodes of column x hold them as
    `segments[(x, y)]`: (block, words [k0, k1), address), contiguous on each node, block after
    block. Two forms occur:

    * **chunks** (every layer output, and host inputs with few batch blocks): node (x, y) holds
      chunk y, the same word range, of every block of its column; for a layer output chunk y is
      the features of the feature blocks grid row y computed;
    * **blocks** (host inputs with at least `rows` batch blocks per column): node (x, y) holds
      whole blocks, the column's blocks dealt round-robin over the rows (fewer, longer SENDs).

    Nodes that hold nothing have no entry in `segments`.
    """
    cfg: TileConfig
    name: str
    batch: int
    features: int
    kwords: int
    blocks: tuple[tuple[int, int], ...]
    segments: dict
    dtype: ElemType = ElemType.INT8
    fed: bool = False          # a host input: its segments are fed after the START
    # Sent to the host instead of kept (`conv_layer(out="host")`): node -> the offset, in the
    # words it streams to the host (`RunResult.streams`), of its segments' words.
    streamed: dict | None = None

    @property
    def mtype(self) -> MatrixType:
        return MATRIX_TYPES[self.dtype]

    def __post_init__(self):
        for node, segs in self.segments.items():
            for a, b in zip(segs, segs[1:]):
                if b.addr != a.addr + a.words:
                    raise ValueError(f"{self.name}: the segments of node {node} are not contiguous")

    def region(self, x: int, y: int) -> tuple[int, int]:
        """(address, words) of everything node (x, y) holds."""
        segs = self.segments[(x, y)]
        return segs[0].addr, sum(s.words for s in segs)

    def nodes(self):
        """The nodes holding a part of the activation."""
        return sorted(self.segments)


@dataclass(frozen=True)
class GemmOutput:
    """Where a plain GEMM's result C^T lives (int32 lanes for int8 operands, FP32 for bf16):
    node (x, y) holds, from word `base[(x, y)]`, one N-word tile per (feature block i of row y,
    batch block j of column x), in the order ((i - i0) * blocks_of_column + (j - j0)); word r
    of a tile is feature iN + r over the N batch elements jN .. jN+N-1."""
    cfg: TileConfig
    name: str
    batch: int
    features: int
    blocks: tuple[tuple[int, int], ...]       # batch blocks per column
    feature_blocks: tuple[tuple[int, int], ...]   # feature blocks per row
    base: dict
    dtype: ElemType = ElemType.INT8
    # Streamed to the host instead (`KernelBuilder.gemm(..., out="host")`): node -> (offset,
    # tiles): its tiles (i, j) in the order it sends them, N words each, from word `offset` of
    # its stream (`RunResult.streams`: what it sent to the host before this layer).
    streamed: dict | None = None

    def region(self, x: int, y: int) -> tuple[int, int]:
        """(address, words) of node (x, y)'s result tiles in SRAM (for a streamed output: its
        ring's address, and the words it streams)."""
        j0, j1 = self.blocks[x]
        i0, i1 = self.feature_blocks[y]
        return self.base[(x, y)], (i1 - i0) * (j1 - j0) * self.cfg.mac_dim


def segment_holders(layout: ActivationLayout, x: int, j: int) -> list[tuple]:
    """(holder, k0, k1, addr): who in column x holds which words [k0, k1) of batch block j of
    `layout`, each word once: where segments overlap (the spans of a host input), the holder
    of the lower row keeps the shared words."""
    segs = sorted(((node, seg) for node, ss in layout.segments.items() for seg in ss
                   if seg.block == j), key=lambda t: (t[0][1], t[1].k0))
    out, taken = [], []
    for node, seg in segs:
        if node[0] != x:
            raise AssertionError(f"{layout.name!r}: block {j} of column {x} held by {node}")
        pieces = [(seg.k0, seg.k1)]
        for t0, t1 in taken:
            pieces = [(p0, min(p1, t0)) for p0, p1 in pieces if p0 < t0] + \
                     [(max(p0, t1), p1) for p0, p1 in pieces if p1 > t1]
            pieces = [(p0, p1) for p0, p1 in pieces if p0 < p1]
        out += [(node, p0, p1, seg.addr + p0 - seg.k0) for p0, p1 in pieces]
        taken.append((seg.k0, seg.k1))
    return out


# -- SRAM allocation -------------------------------------------------------------------------

@dataclass
class Region:
    """Words [lo, hi) of a node's SRAM, of class `cls` (STAGE, OPERAND, RESULT, ...).

    `host` regions are written by the host (loaded before the START or fed while the nodes
    run, in the feeds' order, whatever the nodes do), so they never share words with another
    region; except a *gated* one (`gate`): fed only once the gate-th barrier has passed (the
    host waits for the barrier's token), it may reuse dead words as the nodes' regions do. The
    others may reuse the words of regions that are dead (`dies`: the last layer that uses them)
    once a barrier has come after their death (`NodeSram.reuse_from`)."""
    name: str
    lo: int
    hi: int
    cls: str
    host: bool = False
    dies: int | None = None          # None: alive to the end of the run
    kept: bool = False               # read back by the host: never dies
    gate: int | None = None          # a host region fed after the gate-th barrier (reuses words)

    @property
    def size(self) -> int:
        return self.hi - self.lo


class NodeSram:
    """Bank-aware allocation of one node's SRAM, with region lifetimes.

    `alloc(name, size, cls)` places a region of a class (`STAGE`, `OPERAND`, `RESULT`, ...) at
    the lowest address whose banks hold no live region of a class it must avoid (`AVOID`);
    when no such place exists, at the place touching the fewest such banks. Raises
    `CompileError` when the region does not fit at all.

    Reuse: a region that dies (`Region.dies`, set when the kernel builder knows its last
    user) leaves its words free for regions placed at or after a barrier that follows its
    death (`reuse_from`: the layer index of the last of the builder's `barriers`), except for
    host-written regions, which only take words no region has ever had: the host writes them
    before the START or while the nodes run, so they must not meet any other region. A
    region another node writes into is only reused after the barrier, when every node has
    finished the layers before it (`KernelBuilder._emit_barrier`)."""

    def __init__(self, cfg: TileConfig, node, compact: bool = False,
                 barriers: list | None = None):
        self.cfg = cfg
        self.node = node
        self.compact = compact
        self.regions: list[Region] = []
        # the layer indices with a barrier before them: the builder's list, shared by its nodes
        self.barriers = [] if barriers is None else barriers

    @property
    def reuse_from(self) -> int | None:
        """The layer index of the last barrier: regions dead before it are free."""
        return self.barriers[-1] if self.barriers else None

    @property
    def gate(self) -> int | None:
        """The barriers so far: what a gated host region placed now is fed after."""
        return len(self.barriers) or None

    def _dead(self, r: Region) -> bool:
        return r.dies is not None and self.reuse_from is not None and r.dies < self.reuse_from

    def _blocking(self, host: bool) -> list[Region]:
        """The regions a new region must not meet (all of them for a host-written one)."""
        return list(self.regions) if host else [r for r in self.regions if not self._dead(r)]

    @property
    def used(self) -> int:
        """Words held by live regions."""
        return sum(r.size for r in self._blocking(False))

    def _banks(self, lo: int, hi: int) -> set:
        shift = self.cfg.bank_addr_bits
        return set(range(lo >> shift, ((hi - 1) >> shift) + 1))

    def _free(self, host: bool = False) -> list[tuple[int, int]]:
        free, at = [], 0
        for r in sorted(self._blocking(host), key=lambda r: r.lo):
            if r.lo > at:
                free.append((at, r.lo))
            at = max(at, r.hi)
        if at < self.cfg.sram_words:
            free.append((at, self.cfg.sram_words))
        return free

    def alloc(self, name: str, size: int, cls: str, *, banks: bool = True,
              host: bool | str = False) -> int:
        """The region's address; `banks=False` ignores the bank rules (plain first fit).
        `host`: True for a region the host writes (words no region has ever had), GATED for
        one it may feed after the last barrier instead (`Region.gate`) when there are no such
        words."""
        try:
            return self._alloc(name, size, cls, banks, bool(host), None)
        except CapacityError:
            if host != GATED or not self.gate:
                raise
            return self._alloc(name, size, cls, banks, False, self.gate)

    def _alloc(self, name: str, size: int, cls: str, banks: bool, host: bool,
               gate: int | None) -> int:
        if size <= 0:
            raise ValueError(f"region {name!r}: size {size} must be positive")
        avoid = self._avoid(cls) if banks else set()
        best = None
        high = host and self.compact
        for lo, hi in self._free(host):
            # Compact: host-written regions, never reused, go as high as they fit (the end of a
            # free range or of a bank), so that the words regions die from stay together low.
            starts = self._starts(lo, hi)
            if high:
                starts = [hi - size] + [s - size for s in starts[1:]]
            for start in starts:
                if start < lo or start + size > hi:
                    continue
                where = -start if high else start
                score = (len(self._banks(start, start + size) & avoid), where)
                if best is None or score < best:
                    best = score
        if best is None:
            raise CapacityError(f"no room for {name} ({size} words) on node {self.node}")
        start = -best[1] if high else best[1]
        self.regions.append(Region(name, start, start + size, cls, host or gate is not None,
                                   gate=gate))
        return start

    def _avoid(self, cls: str) -> set:
        """The banks holding a live region of a class `cls` must avoid (`AVOID`)."""
        avoid = set()
        for r in self._blocking(False):
            if r.cls in AVOID[cls]:
                avoid |= self._banks(r.lo, r.hi)
        return avoid

    def _starts(self, lo: int, hi: int) -> list[int]:
        """The addresses tried in the free range [lo, hi): its start and the bank starts in it."""
        bank = self.cfg.bank_words
        return [lo] + list(range((lo // bank + 1) * bank, hi, bank))

    def conflicts(self, start: int, size: int, cls: str) -> int | None:
        """How many banks of [start, start + size) hold a live region of a class `cls` must
        avoid; None when the words are not all free (for a region the nodes write)."""
        if start < 0 or start + size > self.cfg.sram_words:
            return None
        if any(r.lo < start + size and start < r.hi for r in self._blocking(False)):
            return None
        return len(self._banks(start, start + size) & self._avoid(cls))

    def starts(self) -> list[int]:
        """The addresses `alloc` tries, over every free range."""
        return [s for lo, hi in self._free() for s in self._starts(lo, hi)]

    def take(self, name: str, start: int, size: int, cls: str) -> int:
        if self.conflicts(start, size, cls) is None:
            raise CapacityError(f"no room for {name} ({size} words) at {start} on node {self.node}")
        self.regions.append(Region(name, start, start + size, cls))
        return start

    @staticmethod
    def common(srams: list, name: str, size: int, cls: str) -> int | None:
        """Allocate one region at the same address on every node of `srams` (the lowest with
        the fewest bank conflicts over all of them), so one multicast can write it on all;
        None (nothing allocated) when no address is free on all of them."""
        best = None
        for start in sorted({s for sram in srams for s in sram.starts()}):
            scores = [sram.conflicts(start, size, cls) for sram in srams]
            if None not in scores and (best is None or (sum(scores), start) < best):
                best = (sum(scores), start)
        if best is None:
            return None
        for sram in srams:
            sram.take(name, best[1], size, cls)
        return best[1]

    def place(self, requests) -> list[int]:
        """Allocate [(name, size, cls)] or [(name, size, cls, host)] together: with the bank
        rules if they can be kept, else (free space too fragmented for them) by plain first
        fit; all or nothing. Compact: the largest first (small regions placed first would split
        the free space); else in the order given (the layer's own choice of banks: faster)."""
        kept = len(self.regions)
        order = range(len(requests))
        if self.compact:
            order = sorted(order, key=lambda k: -requests[k][1])
        for banks in (True, False):
            try:
                addrs = {}
                for k in order:
                    name, size, cls, *rest = requests[k]
                    addrs[k] = self.alloc(name, size, cls, banks=banks,
                                          host=rest[0] if rest else False)
                return [addrs[k] for k in range(len(requests))]
            except CompileError:
                del self.regions[kept:]
        total = sum(size for _, size, *_ in requests)
        raise CapacityError(f"{total} words do not fit the free space of node {self.node}, "
                           f"which is fragmented ({self.used} of {self.cfg.sram_words} words "
                           f"used)")

    def retire(self, lo: int, hi: int, layer: int) -> None:
        """The regions that start inside [lo, hi) die after `layer` (unless kept to the end);
        a region may be larger than what it holds (a reserved input staging, `input`)."""
        for r in self.regions:
            if lo <= r.lo < hi and r.dies is None and not r.kept:
                r.dies = layer

    def keep(self, lo: int, hi: int) -> None:
        """The regions inside [lo, hi) stay alive to the end (read back by the host)."""
        for r in self.regions:
            if lo <= r.lo and r.hi <= hi:
                r.dies, r.kept = None, True


# -- the kernel builder ------------------------------------------------------------------------

@dataclass
class Message:
    """One SEND (or MCAST) of a layer's gather; `first_use` is the first tile, over its
    receivers, that needs it, `slot` the sender's slot it is issued in (see
    `schedule_sends`). A multicast has `receivers` (a run of a row or a column, `receiver`
    the first) and each one's first use in `uses`; a SEND has neither."""
    sender: tuple
    receiver: tuple
    counter: int
    src: int
    n: int
    dst: int
    first_use: int
    rank: tuple
    slot: int | None = None
    receivers: tuple = ()
    uses: tuple = ()
    earliest: int = -1              # the first slot it may go in (a fed source: `_layer`)

    def deliveries(self):
        """(receiver, its first use) of every receiver."""
        if not self.receivers:
            return [(self.receiver, self.first_use)]
        return list(zip(self.receivers, self.uses))

    @property
    def due(self) -> int:
        """The last slot it may go in: the one before its first use."""
        return self.first_use - 1


@dataclass
class NodePlan:
    tiles: list = field(default_factory=list)       # [(i, j, q)] in execution order: feature
    #                                                 block i, batch block j, position q (0
    #                                                 for a GEMM; a conv's output position x P
    #                                                 + pool candidate)
    owned: list = field(default_factory=list)       # weight blocks it holds (owner)
    w_stage: int = 0                                # its owned weight blocks (stage)
    w_gate: int | None = None                       # fed after that many barriers (reused words)
    w_base: int = 0                                 # weights region (operand)
    x_base: int = 0                                 # activations region (operand): its
    #                                                 blocks' needed words, xstride apart
    out_base: int = 0                               # plain GEMM: result tiles (result)
    y_base: int = 0                                 # quantised: output chunks (stage)


@dataclass
class ConvPlan:
    """How a convolution (`KernelBuilder.conv_layer`) maps onto the grid: grid row y computes
    output positions `rows[y]` = [q0, q1) (raster order, pooled) of every output channel block
    for its column's batch blocks, and reads input rows `in_rows[y]` = [r0, r1) of each of them;
    `runs[i]` are feature block i's MATMUL runs before clipping (`d1tile.sw.conv`)."""
    geom: ConvGeometry
    runs: dict
    rows: dict
    in_rows: dict
    cwi: int                   # operand words per input pixel
    cwo: int                   # output words per output pixel (every channel block)
    cache: dict = field(default_factory=dict)

    def tile_runs(self, y: int, i: int, q: int, kruns=None) -> list[tuple[int, int, int]]:
        """Tile (i, ., q)'s MATMULs on grid row y (q = output position x P + candidate)."""
        key = (y, i, q)
        if key not in self.cache:
            p = self.geom.pool_size
            oy, ox = self.geom.candidates[q // p, q % p]
            self.cache[key] = self.geom.tile_runs(self.runs[i], int(oy), int(ox),
                                                  self.in_rows[y][0], self.cwi)
        return self.cache[key]


@dataclass
class LayerPlan:
    """One layer's plan, filled by the passes of `KernelBuilder._layer` in order (partition,
    tile order, instruction count, SRAM placement, weight loads, gather, send schedule, emit);
    `KernelBuilder.layers` keeps them for reports (bench/gemm_utilisation.py)."""
    name: str
    dtype: ElemType                     # the operand type of its MATMULs
    quant: tuple | None                 # (scale, shift, relu) of a layer with an activation
    #                                     output: int8 (REQUANT's) or bf16 (scale, shift 0)
    pool: int                           # feature blocks max-reduced into one output block
    inputs: list                        # ActivationLayouts, features concatenated
    offsets: list                       # each input's first word in a block of kw words
    kw: int                             # K words of an activation block
    width: int                          # weight words stored per block: the most in K runs
    wstride: int                        # words per weight block: width (+ N bias words)
    features: int                       # weight columns (candidate blocks when pooled)
    out_features: int                   # output features (after pooling)
    blocks: tuple                       # batch blocks per column
    fblocks: tuple                      # feature blocks per row
    kruns: dict                         # feature block -> [(k0, k1)]: its runs of nonzero K words
    active_cols: list
    active_rows: list
    plans: dict = field(default_factory=dict)       # node -> NodePlan
    owner: dict = field(default_factory=dict)       # (row, feature block) -> owner node
    first_w: dict = field(default_factory=dict)     # (node, i) -> first tile using block i
    first_x: dict = field(default_factory=dict)     # (node, j) -> first tile using block j
    messages: list = field(default_factory=list)
    pcs: dict = field(default_factory=dict)         # node -> (first, end): its instructions
    stream: int = 0      # plain GEMM streamed to the host: tiles per SEND (0: C stays in SRAM)
    # A bf16 layer whose last output block has padding rows: N mask words follow the bias, and
    # FVEC FMASK zeroes those rows (0 x NaN is NaN: the next layer's zero weights would not).
    mask: bool = False
    conv: ConvPlan | None = None    # a convolution's geometry and runs (None: a GEMM)
    send_out: bool = False          # a convolution whose nodes SEND their output to the host
    # Per computing node: the words [lo, hi) of each of its batch blocks that its tiles read
    # (the concatenated K of the inputs), held in its X region xstride = hi - lo words apart;
    # `inplace` nodes read them where the input holds them (no X region, no messages).
    xspan: dict = field(default_factory=dict)
    inplace: dict = field(default_factory=dict)     # node -> {batch block: address}
    direct: dict = field(default_factory=dict)      # node -> [(addr, n, first tile)]: fed
    #                                                 input regions its tiles read in place

    @property
    def where(self) -> str:
        return f"layer {self.name!r}"

    def xstride(self, node) -> int:
        lo, hi = self.xspan[node]
        return hi - lo

    def xaddr(self, node, j: int) -> int:
        """Where node's copy of the needed words of batch block j starts."""
        if node in self.inplace:
            return self.inplace[node][j]
        return self.plans[node].x_base + (j - self.blocks[node[0]][0]) * self.xstride(node)

    def tile_runs(self, node, i: int, q: int) -> list[tuple[int, int, int]]:
        """The MATMULs (a, b, n) of tile (i, ., q) on `node`: a the word offset in weight block
        i, b in the node's copy of the batch block (from `xaddr`), n words."""
        if self.conv is None:
            out, a = [], 0
            for k0, k1 in self.kruns[i]:
                out.append((a, k0, k1 - k0))
                a += k1 - k0
            return out
        return self.conv.tile_runs(node[1], i, q, self.kruns)

    def instructions(self, node, tiles: list) -> int:
        """Instructions of these tiles: a MATMUL per run of the tile and an MREAD per tile,
        for a streamed plain GEMM a SEND to the host per `stream` tiles, and for a quantised
        layer per group of `pool` tiles pool - 1 VEC MAX, a VEC ADD and a VEC REQUANT, plus a
        SETQ."""
        n = sum(len(self.tile_runs(node, i, q)) for i, _, q in tiles) + len(tiles)
        if not self.quant:
            return n + (ceil(len(tiles) / self.stream) if self.stream else 0)
        setq = 1 if tiles and self.dtype == ElemType.INT8 else 0
        sends = ceil(self.out_words(node) / MAX_SEND_WORDS) if self.send_out and tiles else 0
        return n + (len(tiles) // self.pool) * self.group_vectors + setq + sends

    def out_words(self, node) -> int:
        """A convolution's output words on `node` (its positions of its column's blocks)."""
        (q0, q1), (j0, j1) = self.conv.rows[node[1]], self.blocks[node[0]]
        return (j1 - j0) * (q1 - q0) * self.conv.cwo

    def out_offset(self, node, i: int, j: int, q: int) -> int:
        """Word offset, in node's output chunks, of the output block of the group that starts
        with tile (i, j, q)."""
        n, (x, y) = self.cfg_n, node
        per = n // OUT_PER_WORD[self.dtype]
        jl = j - self.blocks[x][0]
        if self.conv is None:
            i0, i1 = self.fblocks[y]
            return (jl * ((i1 - i0) // self.pool) + (i - i0) // self.pool) * per
        q0, q1 = self.conv.rows[y]
        return (jl * (q1 - q0) + (q // self.pool - q0)) * self.conv.cwo + i * per

    @property
    def cfg_n(self) -> int:
        return self.inputs[0].cfg.mac_dim

    def matrix_macs(self) -> int:
        """The multiply-accumulates the matrix units perform (every MATMUL's V kw N^2: zeros,
        padding channels and pool candidates included)."""
        cfg = self.inputs[0].cfg
        per_word = MATRIX_TYPES[self.dtype].vectors_per_word(cfg) * cfg.mac_dim ** 2
        return per_word * sum(k for node, p in self.plans.items() for i, _, q in p.tiles
                              for _, _, k in self.tile_runs(node, i, q))

    @property
    def group_vectors(self) -> int:
        """Vector instructions per group of `pool` tiles: pool - 1 maxima, the bias add, the
        output conversion (REQUANT; for bf16 FCVT, after an FRELU when the layer has relu and an
        FMASK when it has padding rows, `mask`)."""
        relu = self.dtype == ElemType.BF16 and self.quant[2]
        return self.pool + 1 + (1 if relu else 0) + (1 if self.mask else 0)


def schedule_sends(messages, tiles: dict, capacity: int) -> None:
    """Give every message its sender's slot: slot -1 is before the sender's first MATMUL, slot
    t right after MATMUL t. Per sender, earliest due first (then `rank`): a message goes in the
    current slot if it is due there or the slot still has room (`capacity` cycles of DMA time
    per slot, a SEND of n words costing `job_cycles(n) + 1`; slot -1 has no room, and the last
    slot, after the sender's last MATMUL, takes everything left). So no message is later than
    its due slot, and a sender's messages are issued in due order (what keeps every WAIT count
    a prefix of each sender's stream). `tiles`: node -> number of tiles."""
    by_sender = {}
    for m in messages:
        by_sender.setdefault(m.sender, []).append(m)
    for sender, ms in by_sender.items():
        last = tiles[sender] - 1
        ms.sort(key=lambda m: (m.due, m.rank, m.receiver, m.dst))
        slot, fill = -1, 0
        for m in ms:
            cost = job_cycles(m.n) + 1
            while slot < min(m.due, last) and (fill + cost > (capacity if slot >= 0 else 0)
                                               or slot < m.earliest):
                slot, fill = slot + 1, 0
            m.slot = slot
            fill += cost


class KernelBuilder:
    """Builds a `TileProgram` layer by layer (see the module docstring).

    Every method appends to the node programs in call order; `finish()` ends them with HALT and
    returns the program. Errors in what is asked (shapes, ranges, SRAM or instruction memory too
    small) raise `CompileError` naming the layer; start a new builder after one. The builder
    owns every node's SRAM (`sram`) and sync counters 0 .. rows+cols-1: a `tile_program` given
    to extend must not use SRAM or counters of its own."""

    def __init__(self, cfg: TileConfig, tile_program: TileProgram | None = None, *,
                 compact: bool = False):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        if cfg.rows + cfg.cols > HOST_COUNTER:
            raise CompileError(f"the GEMM kernels need rows + cols <= {HOST_COUNTER} sync "
                               f"counters (one more feeds the host's data); the grid is "
                               f"{cfg.rows}x{cfg.cols}")
        self.cfg = cfg
        self.tp = tile_program if tile_program is not None else TileProgram(cfg)
        if self.tp.cfg != cfg:
            raise ValueError("the tile program was made for another configuration")
        self.barriers: list = []       # layer indices with a barrier before them (reuse)
        self.sram = {node: NodeSram(cfg, node, compact, self.barriers) for node in self.tp.nodes}
        self._acc: dict = {}
        self._names: set = set()
        self._finished = False
        self.layers: list[LayerPlan] = []    # every layer's plan and messages, for reports
        # Regions fed by the host that no SEND has used yet: node -> {addr: words (weights) or
        # n (an input's segment, whose words come with `load_activation`)}; and every region
        # ever registered (an input read by two layers is fed once).
        self._unfed: dict = {node: {} for node in self.tp.nodes}
        self._gated: dict = {}      # (node, addr) -> barriers: a fed region gated on them
        self._fed: set = set()
        self._streamed: dict = {}      # node -> words it streams to the host in earlier layers
        self._scratch: dict = {}       # node -> (ACC, TMP) of the vector layers
        self._barriers_emitted: set = set()
        self._barrier_word: dict = {}  # (0, 0) -> the word the barrier tokens land in
        self._last_write: dict = {}    # node -> an address its last vector/MREAD wrote
        self._q: dict = {}             # node -> the FP32 bits SETR SCALE last set (vector layers)

    # -- activations -------------------------------------------------------------------------

    def input(self, name: str, batch: int, features: int, *, form: str = "auto",
              dtype=ElemType.INT8, spans: dict | None = None,
              gated: bool = False, reserve: dict | None = None) -> ActivationLayout:
        """Reserve the staging regions of a host-fed activation [batch, features] of type
        `dtype` (INT8 or BF16; fill them with `load_activation`). `form` is "blocks" (whole
        batch blocks dealt over the rows of each column), "chunks" (the K words split evenly
        over the rows), "auto": blocks when every active column has at least `rows` blocks
        (every node gets a share), else chunks; or "spans": node (x, y) holds the words
        `spans[y]` = (lo, hi) of every block of its column (spans may overlap: the host writes
        shared words to each node), which is how a convolution's input is placed where its
        MATMULs read it (`ConvGeometry.spans`: no messages at all).

        `gated`: the staging may take words dead before the last barrier when no never-used
        words are left; the host then feeds it once that barrier's token has come (a band of
        a convolution split over time, `conv_layer(positions=...)`). `reserve` = {grid row y:
        words per block}: node (x, y)'s staging takes at least that many words per block it
        holds (the bands of a split convolution reserve the largest band's, so that each band
        fits the words of the one before)."""
        self._check_open(name)
        for what, value in (("batch", batch), ("features", features)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise CompileError(f"tensor {name!r}: {what} must be a positive integer, "
                                   f"not {value!r}")
        if form not in ("auto", "blocks", "chunks", "spans"):
            raise ValueError(f"form={form!r}: use 'auto', 'blocks', 'chunks' or 'spans'")
        if (form == "spans") != (spans is not None):
            raise ValueError("spans= goes with form='spans' (and only with it)")
        if dtype not in GEMM_TYPES:
            raise CompileError(f"tensor {name!r}: type {dtype!r} is not one of "
                               f"{', '.join(t.name for t in GEMM_TYPES)}")
        dtype = ElemType(dtype)
        cfg = self.cfg
        blocks = batch_blocks(cfg, batch)
        kwords = ceil(features / MATRIX_TYPES[dtype].vectors_per_word(cfg))
        if form == "auto":
            form = "blocks" if all(j1 - j0 >= cfg.rows for j0, j1 in blocks if j1 > j0) \
                else "chunks"
        shape = {}        # node -> [(block, k0, k1)]
        chunks = split_even(kwords, cfg.rows)
        for (x, y) in self.tp.nodes:
            j0, j1 = blocks[x]
            if form == "blocks":
                held = [(j, 0, kwords) for j in range(j0, j1) if (j - j0) % cfg.rows == y]
            elif form == "spans":
                lo, hi = spans.get(y, (0, 0))
                if not 0 <= lo <= hi <= kwords:
                    raise CompileError(f"tensor {name!r}: span {(lo, hi)} of grid row {y} is "
                                       f"outside its {kwords} words")
                held = [(j, lo, hi) for j in range(j0, j1) if hi > lo]
            else:
                held = [(j, *chunks[y]) for j in range(j0, j1) if chunks[y][1] > chunks[y][0]]
            if held:
                shape[(x, y)] = held
        what = f"tensor {name!r}"
        size = {(x, y): max(sum(k1 - k0 for _, k0, k1 in held),
                            len(held) * (reserve or {}).get(y, 0))
                for (x, y), held in shape.items()}
        self._check_fits(what, {node: {"activation staging": size[node]} for node in shape})
        # Spans are read in place by the matrix unit: an operand region.
        cls = OPERAND if form == "spans" else STAGE
        segments = {}
        for node, held in shape.items():
            addr, = self._place(what, node, [(f"{name}: staging", size[node], cls,
                                              GATED if gated else True)])
            gate = self.sram[node].regions[-1].gate
            if gate:
                self._gated[(node, addr)] = gate
            segs = []
            for j, k0, k1 in held:
                segs.append(Segment(j, k0, k1, addr))
                addr += k1 - k0
            segments[node] = tuple(segs)
        return ActivationLayout(cfg, name, int(batch), int(features), kwords, blocks, segments,
                                dtype, fed=True)

    def read(self, what) -> None:
        """Ask for an activation (or a list of them: a layer split over time) or a GEMM result
        to be read back after the run (its regions then live to the end)."""
        if isinstance(what, (list, tuple)):
            for part in what:
                self.read(part)
            return
        for node, addr, size in self._regions_of(what):
            self.sram[node].keep(addr, addr + size)
        if isinstance(what, ActivationLayout):
            if what.streamed is not None:
                return          # it comes with the run's streams
            for node in what.nodes():
                self.tp.read(node, *what.region(*node))
        elif isinstance(what, GemmOutput):
            if what.streamed is not None:
                return          # it comes with the run's streams
            for node in sorted(what.base):
                self.tp.read(node, *what.region(*node))
        else:
            raise TypeError(f"read: expected an ActivationLayout or GemmOutput, not {what!r}")

    def finish(self) -> TileProgram:
        """End every program with HALT; the builder is closed afterwards."""
        if self._finished:
            raise RuntimeError("finish() was already called")
        for node, program in self.tp.programs.items():
            self._emit(node, "HALT", program.halt)
        self._finished = True
        return self.tp

    # -- layers ------------------------------------------------------------------------------

    def gemm(self, name: str, x, w, *, out: str = "auto") -> GemmOutput:
        """Plain GEMM C = X @ W. `out` = "sram": the result is left in SRAM (read it back
        with `read` and `unpack_gemm`); "host": it is streamed to the host while the nodes
        compute (each node MREADs its tiles into a ring of 2 G tiles and SENDs every G of them
        to the host edge of its row, G = 1 or `STREAM_TILES` by the load of the row's link,
        `_stream_group`; `unpack_gemm` takes them from `RunResult.streams`), so C need not fit
        the tile; "auto" (the default): "sram" when the result fits every node's SRAM beside
        the operands, else "host". `x` is an `ActivationLayout` (or a list of them, whose
        features are concatenated), `w` [K, F]: int8 values for int8 inputs (int32 C), floats for bf16
        inputs (rounded to BF16 on the host; FP32 C, every K step added in order: K runs of
        zero weights are not skipped for bf16, since skipping a 0 x x product is not neutral in
        floating point: -0 + +0 is +0, 0 x Inf is NaN)."""
        if out not in ("auto", "sram", "host"):
            raise ValueError(f"out={out!r}: use 'auto', 'sram' or 'host'")
        layer = self._layer(name, x, w, bias=None, quant=None, out=out)
        base = {node: p.out_base for node, p in layer.plans.items() if p.tiles}
        streamed = None
        if layer.stream:
            streamed = {}
            for node, p in layer.plans.items():
                if p.tiles:
                    streamed[node] = (self._stream(node, len(p.tiles) * self.cfg.mac_dim),
                                      tuple((i, j) for i, j, _ in p.tiles))
        return GemmOutput(self.cfg, name, layer.inputs[0].batch, layer.features, layer.blocks,
                          layer.fblocks, base, layer.dtype, streamed)

    def quantised_layer(self, name: str, x, w, b, scale: int, shift: int,
                        relu: bool = False) -> ActivationLayout:
        """Y = requantize(X @ W + b, scale, shift, relu) (`d1tile.sim.vector.requantize`), int8,
        left on the tile as the `ActivationLayout` of the next layer's input: node (x, y) holds
        the features of grid row y's feature blocks for its column's batch blocks (chunk y =
        words [i0 * N / 4, i1 * N / 4) for feature blocks [i0, i1)).

        `x`: `ActivationLayout` (or a list, features concatenated); `w`: int8 [K, F];
        `b`: int32 [F]; `scale` 0..65535, `shift` 0..63, one per layer.

        **Max pooling** (`w` int8 [P, K, F], P candidates): Y = max over p of
        requantize(X @ W[p] + b), computed as requantize(max_p (X @ W[p]) + b) on the int32
        accumulators (equal, since requantize is monotonic, whenever nothing wraps int32). A
        max pool after a layer is such a layer whose candidate p holds, for every output
        feature, the columns of the p-th element of its window. Each output block's P
        candidate blocks are computed on one node, one after the other, then reduced by P - 1
        VEC MAX before the bias ADD and the REQUANT."""
        if self.cfg.mac_dim % INT8_OUT_PER_WORD:
            raise CompileError(f"layer {name!r}: quantised layers need mac_dim to be a multiple "
                               f"of {INT8_OUT_PER_WORD} (REQUANT packs {INT8_OUT_PER_WORD} "
                               f"accumulator rows per word); it is {self.cfg.mac_dim}")
        if any(i.dtype != ElemType.INT8 for i in self._inputs(name, x)):
            raise CompileError(f"layer {name!r}: quantised layers take int8 inputs (bf16 "
                               "inputs go to bf16_layer or gemm)")
        for what, value, bits in (("scale", scale, SCALE_BITS), ("shift", shift, SHIFT_BITS)):
            if not isinstance(value, (int, np.integer)) or not 0 <= value < 1 << bits:
                raise CompileError(f"layer {name!r}: {what}={value!r} is outside "
                                   f"0..{(1 << bits) - 1}")
        return self._activation_layer(name, x, w, b, (int(scale), int(shift), bool(relu)),
                                      ElemType.INT8)

    def bf16_layer(self, name: str, x, w, b, relu: bool = False) -> ActivationLayout:
        """Y = bf16(relu(X @ W + b)), BF16 operands with FP32 accumulation
        (`reference_layer_bf16`): each tile's FP32 accumulator rows get the bias added by FVEC
        FADD (b rounded to FP32 on the host), FRELU with `relu`, and are rounded to BF16 by
        FCVT (round to nearest even), two rows per word, into the same output layout as
        `quantised_layer`'s (chunk y: words [i0 N / 2, i1 N / 2)), which is the next bf16
        layer's input as it stands.

        `x`: a bf16 `ActivationLayout` (or a list, features concatenated); `w`: floats [K, F]
        (rounded to BF16) or [P, K, F] for a max-pooled layer (the candidates' FP32 sums
        reduced by FVEC FMAX before the bias, as `quantised_layer` does); `b`: floats [F]."""
        if self.cfg.mac_dim % BF16_OUT_PER_WORD:
            raise CompileError(f"layer {name!r}: bf16 layers need an even mac_dim (FCVT packs "
                               f"{BF16_OUT_PER_WORD} rows per word); it is {self.cfg.mac_dim}")
        if any(i.dtype != ElemType.BF16 for i in self._inputs(name, x)):
            raise CompileError(f"layer {name!r}: bf16 layers take bf16 inputs")
        return self._activation_layer(name, x, w, b, (0, 0, bool(relu)), ElemType.BF16)

    def conv_layer(self, name: str, x, w, b, geom: ConvGeometry, *, scale: int | None = None,
                   shift: int | None = None, relu: bool = False, rows: int | None = None,
                   positions: tuple | None = None, out: str = "sram") -> ActivationLayout:
        """A convolution as an implicit GEMM (`d1tile.sw.conv`, docs/kernels.md): `x` an image
        activation (`geom.in_h` x `geom.in_w` pixels of `geom.cp` stored channels), `w`
        [out_c, in_c / groups, kh, kw], `b` [out_c]; int8 (`x` int8, integer `w`, int32 `b`,
        then requantize(., scale, shift, relu) as `quantised_layer`) or bf16 (`x` bf16, float
        `w` and `b` rounded to BF16 and FP32, relu, the rounding to BF16 as `bf16_layer`); a
        max pool fused when `geom.pool` is set. The output positions are split over `rows`
        grid rows (default: all), each computing every output channel block of its positions
        for its column's batch blocks, each weight block stored once per node. Returns the
        output as an image activation: positions x ob N stored channels (ob = ceil(out_c /
        N); channels beyond out_c are zeros), node (x, y) holding its positions of each of its
        column's blocks (`reference_conv`, `reference_conv_bf16` compute the same).

        **Split over time**: `positions` = (p0, p1) computes only those output positions (a
        band of whole output rows, `ConvGeometry.bands`); the output is then that band's
        features (p0 .. p1-1 of the whole output's, so the bands' outputs side by side are the
        whole output), and the input need only hold the rows the band reads (a host input
        placed in the band's spans, `input(form="spans", gated=True)`). `out="host"`: each
        node SENDs its output words to the host edge of its row after its last tile (the
        layout's `streamed`; `unpack_activation` takes them from the run's streams), so the
        output's words die with the layer."""
        if out not in ("sram", "host"):
            raise ValueError(f"out={out!r}: use 'sram' or 'host'")
        inputs = self._inputs(name, x)
        dtype = inputs[0].dtype
        if dtype == ElemType.INT8:
            if self.cfg.mac_dim % INT8_OUT_PER_WORD:
                raise CompileError(f"layer {name!r}: int8 layers need mac_dim to be a multiple "
                                   f"of {INT8_OUT_PER_WORD}; it is {self.cfg.mac_dim}")
            for what, value, bits in (("scale", scale, SCALE_BITS), ("shift", shift, SHIFT_BITS)):
                if not isinstance(value, (int, np.integer)) or not 0 <= value < 1 << bits:
                    raise CompileError(f"layer {name!r}: {what}={value!r} is outside "
                                       f"0..{(1 << bits) - 1}")
            quant = (int(scale), int(shift), bool(relu))
        else:
            if self.cfg.mac_dim % BF16_OUT_PER_WORD:
                raise CompileError(f"layer {name!r}: bf16 layers need an even mac_dim; it is "
                                   f"{self.cfg.mac_dim}")
            quant = (0, 0, bool(relu))
        p0, p1 = positions or (0, geom.positions)
        if not (isinstance(p0, (int, np.integer)) and isinstance(p1, (int, np.integer))
                and 0 <= p0 < p1 <= geom.positions):
            raise CompileError(f"layer {name!r}: positions {positions!r} are not a range of its "
                               f"{geom.positions} output positions")
        layer = self._layer(name, inputs, w, b, quant, conv=geom, rows=rows,
                            positions=(int(p0), int(p1)), out=out)
        plan, n = layer.conv, self.cfg.mac_dim
        segments, streamed = {}, {} if out == "host" else None
        for (x, y), p in layer.plans.items():
            if p.tiles:
                q0, q1 = plan.rows[y]
                j0, j1 = layer.blocks[x]
                size = (q1 - q0) * plan.cwo
                segments[(x, y)] = tuple(Segment(j, (q0 - p0) * plan.cwo, (q1 - p0) * plan.cwo,
                                                 p.y_base + (j - j0) * size)
                                         for j in range(j0, j1))
                if streamed is not None:
                    streamed[(x, y)] = self._stream((x, y), (j1 - j0) * size)
        ob = ceil(geom.out_c / n)
        return ActivationLayout(self.cfg, name, inputs[0].batch, (p1 - p0) * ob * n,
                                (p1 - p0) * plan.cwo, layer.blocks, segments, dtype,
                                streamed=streamed)

    def add_layer(self, name: str, a, b=None, *, const=None, qa: float = 1.0, qb: float = 1.0,
                  relu: bool = False) -> ActivationLayout:
        """y = FP32(a) x qa + FP32(b) x qb (or + a constant per feature), ReLU'd with `relu`,
        on the vector unit, where a lives (`d1tile.sw.vector_kernels.add_layer`)."""
        from d1tile.sw.vector_kernels import add_layer
        return add_layer(self, name, a, b, const=const, qa=qa, qb=qb, relu=relu)[0]

    def relu_layer(self, name: str, a) -> ActivationLayout:
        """max(a, 0) on the vector unit (`d1tile.sw.vector_kernels.relu_layer`)."""
        from d1tile.sw.vector_kernels import relu_layer
        return relu_layer(self, name, a)[0]

    def pool_layer(self, name: str, x, geom, rows: int | None = None) -> ActivationLayout:
        """A max or average pool on the vector unit (`d1tile.sw.vector_kernels.pool_layer`)."""
        from d1tile.sw.vector_kernels import pool_layer
        return pool_layer(self, name, x, geom, rows)[0]

    def _scratch_program(self) -> Program:
        """A program to emit one layer's straight-line instructions into, before rolling."""
        return Program(self.cfg, max_words=STRAIGHT_LINE_LIMIT * self.cfg.imem_words)

    def _append_rolled(self, node, where: str, prog: Program, what: str = "") -> tuple[int, int]:
        """Roll `prog` (one layer's straight-line instructions on `node`) into hardware loops
        (`reroll`) and append it to the node's program; returns its (first pc, end). A program
        that does not fit the instruction memory (with a HALT) is a CompileError with both
        counts."""
        target = self.tp.node(*node)
        pc0 = len(target)
        for word in reversed(prog.words):        # what the barrier's token waits for
            op = word & 0xF
            if op in (Opcode.MREAD, Opcode.VEC, Opcode.FVEC, Opcode.FCVT):
                self._last_write[node] = FORMATS[Opcode(op)].unpack(word)["dst"]
                break
        rolled = reroll(prog.words)
        if pc0 + len(rolled) + 1 > self.cfg.imem_words:
            raise CapacityError(
                f"{where} needs {pc0 + len(rolled) + 1} instructions on node {node} ({what}"
                f"{len(prog)} instructions straight-line, {len(rolled)} rolled into loops, "
                f"earlier layers {pc0} and the HALT), its instruction memory holds "
                f"{self.cfg.imem_words}")
        target.words.extend(rolled)
        return pc0, len(target)

    def _vector_scratch(self, node) -> tuple[int, int]:
        """The node's two FP32 scratch regions of the vector layers (placed with the first
        vector layer that computes on the node, `d1tile.sw.vector_kernels`)."""
        return self._scratch[node]

    def _activation_layer(self, name, x, w, b, quant, dtype) -> ActivationLayout:
        """The layer of `quantised_layer` or `bf16_layer`, and its output layout."""
        w = np.asarray(w)
        pool, out_features = 1, int(w.shape[-1]) if w.ndim else 0
        if w.ndim == 3:
            pool = w.shape[0]
            if pool < 1:
                raise CompileError(f"layer {name!r}: a pooled layer needs at least one candidate")
            w, b = _pool_columns(self.cfg, name, w, b, dtype)
        layer = self._layer(name, x, w, bias=b, quant=quant, pool=pool,
                            out_features=out_features)
        words = self.cfg.mac_dim // OUT_PER_WORD[dtype]   # output words per output block
        segments = {}
        for (x, y), p in layer.plans.items():
            if p.tiles:
                (i0, i1), (j0, j1) = layer.fblocks[y], layer.blocks[x]
                g0, g1 = i0 // pool, i1 // pool
                cw = (g1 - g0) * words
                segments[(x, y)] = tuple(
                    Segment(j, g0 * words, g1 * words, p.y_base + (j - j0) * cw)
                    for j in range(j0, j1))
        return ActivationLayout(self.cfg, name, layer.inputs[0].batch, out_features,
                                layer.fblocks[-1][1] // pool * words, layer.blocks, segments,
                                dtype)

    # -- internals ---------------------------------------------------------------------------

    def _check_open(self, name: str):
        if self._finished:
            raise RuntimeError("the builder is finished; start a new KernelBuilder")
        if not isinstance(name, str) or not name:
            raise CompileError(f"a layer or tensor needs a non-empty name, not {name!r}")
        if name in self._names:
            raise CompileError(f"the name {name!r} is used twice")
        self._names.add(name)

    def _fullest(self, needs: dict) -> tuple:
        """`needs`: node -> {part: words}. The node that would be fullest, and its words."""
        worst, total = None, -1
        for node, parts in needs.items():
            t = self.sram[node].used + sum(parts.values())
            if t > total:
                worst, total = node, t
        return worst, total

    def _fits(self, needs: dict) -> bool:
        return self._fullest(needs)[1] <= self.cfg.sram_words

    def _check_fits(self, what: str, needs: dict):
        """`needs`: node -> {part: words}. Raise the overflow error for the fullest node."""
        cfg = self.cfg
        worst, total = self._fullest(needs)
        if worst is None or total <= cfg.sram_words:
            return
        def size(words):
            nbytes = words * cfg.word_bytes
            return f"{nbytes / 1024:.1f} KiB" if nbytes >= 1024 else f"{nbytes} B"

        parts = ", ".join(f"{part} {size(words)}" for part, words in needs[worst].items())
        before = self.sram[worst].used
        if before:
            parts += f", earlier layers {size(before)}"
        raise CapacityError(f"{what} needs {size(total)} of SRAM per node (node {worst}: "
                           f"{parts}), the node has {cfg.sram_kib} KiB")

    def _place(self, what, node, requests) -> list[int]:
        try:
            return self.sram[node].place(requests)
        except CompileError as exc:
            raise type(exc)(f"{what}: {exc}") from None

    def _emit(self, node, what, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except AsmError as exc:
            raise CompileError(f"{what}: node {node}: {exc}") from None

    def _stream(self, node, words: int) -> int:
        """`node` streams `words` more words to the host: their offset in its stream."""
        offset = self._streamed.get(node, 0)
        self._streamed[node] = offset + words
        return offset

    def _inputs(self, name, x) -> list[ActivationLayout]:
        inputs = [x] if isinstance(x, ActivationLayout) else list(x)
        if not inputs or not all(isinstance(i, ActivationLayout) for i in inputs):
            raise CompileError(f"layer {name!r}: the input must be an ActivationLayout or a list "
                               f"of them, not {x!r}")
        for i in inputs:
            if i.cfg != self.cfg:
                raise CompileError(f"layer {name!r}: input {i.name!r} was placed for another "
                                   "configuration")
            if i.batch != inputs[0].batch:
                raise CompileError(f"layer {name!r}: inputs {inputs[0].name!r} and {i.name!r} "
                                   f"have batches {inputs[0].batch} and {i.batch}")
            if i.dtype != inputs[0].dtype:
                raise CompileError(f"layer {name!r}: inputs {inputs[0].name!r} and {i.name!r} "
                                   f"are {inputs[0].dtype.name} and {i.dtype.name}")
            if i.streamed is not None:
                raise CompileError(f"layer {name!r}: input {i.name!r} was sent to the host, it "
                                   "is not on the tile")
        return inputs

    def _layer(self, name, x, w, bias, quant, pool=1, out_features=None, out="sram",
               conv: ConvGeometry | None = None, rows: int | None = None,
               positions: tuple | None = None) -> LayerPlan:
        """The passes of one layer, in order; each reads and fills the `LayerPlan`."""
        self._check_open(name)
        if conv is None:
            layer, block_words = self._partition(name, x, w, bias, quant, pool, out_features)
            self._order_tiles(layer)
        else:
            layer, block_words = self._conv_partition(name, x, w, bias, quant, conv, rows,
                                                      positions)
            self._order_conv_tiles(layer)
        self._read_in_place(layer)
        tile_cycles = self._tile_cycles(layer)
        if conv is not None:
            layer.send_out = out == "host"
        elif out == "host" or (out == "auto" and not self._fits(self._sram_needs(layer))):
            layer.stream = self._stream_group(layer, tile_cycles)
        self._check_instruction_memory(layer)
        self._place_regions(layer)
        self._load_weights(layer, block_words, bias)
        self._register_inputs(layer)
        self._gather(layer)
        self._direct_feeds(layer)
        capacity = tile_cycles - 4
        if layer.stream:   # DMA-out also streams the results: a tile's share of a SEND
            capacity -= ceil((job_cycles(layer.stream * self.cfg.mac_dim) + 1) / layer.stream)
        if quant:      # the VECs issue first in a slot (group_vectors per group of pool tiles)
            capacity -= layer.group_vectors * vec_cycles(self.cfg.mac_dim) // pool
        # A message whose source the host feeds goes no earlier than FEED_LEAD slots before its
        # due one: its sender WAITs for the feed there, and an early slot would stall the
        # sender's MATMULs on a feed the host sends in due order.
        for m in layer.messages:
            if m.src in self._unfed[m.sender]:
                m.earliest = m.due - FEED_LEAD
        schedule_sends(layer.messages, {node: len(p.tiles) for node, p in layer.plans.items()},
                       capacity)
        self._barrier_due()
        self._emit_layer(layer)
        self._retire_layer(layer)
        self.layers.append(layer)
        return layer

    def _tile_cycles(self, layer: LayerPlan) -> int:
        """A tile's MATMUL time on the matrix engine (`matmul_cycles`): for a GEMM that of the
        blocks' mean K words; for a convolution the mean, over the busiest node's tiles, of
        its runs' MATMULs one after another."""
        if layer.conv is None:
            mean_kw = max(1, round(sum(k1 - k0 for runs in layer.kruns.values()
                                       for k0, k1 in runs) / len(layer.kruns)))
            return matmul_cycles(self.cfg, mean_kw, layer.dtype)
        node = max(layer.plans, key=lambda nd: len(layer.plans[nd].tiles))
        tiles = layer.plans[node].tiles
        total = sum(matmul_cycles(self.cfg, n, layer.dtype)
                    for i, _, q in tiles for _, _, n in layer.tile_runs(node, i, q))
        return max(1, round(total / max(1, len(tiles))))

    def _stream_group(self, layer: LayerPlan, tile_cycles: int) -> int:
        """Tiles per SEND of a streamed result: one (a packet of N + 1 flits per tile, and
        the shortest rolled program) while a row's results take at most `STREAM_LINK_SHARE` of
        its busiest node's compute time on the row's link to the host, else `STREAM_TILES`
        (fewer headers, for results that load the link)."""
        n = self.cfg.mac_dim
        tiles = {node: len(p.tiles) for node, p in layer.plans.items()}
        link = max(sum(t for (_, y), t in tiles.items() if y == row) * (n + 1)
                   for row in range(self.cfg.rows))
        compute = max(tiles.values()) * tile_cycles
        if link <= STREAM_LINK_SHARE * compute:
            return 1
        return min(STREAM_TILES, MAX_SEND_WORDS // n)

    def _partition(self, name, x, w, bias, quant, pool, out_features):
        """Check the arguments; lay out K (the inputs' words one after the other); split the
        feature blocks (in groups of `pool`) over the rows (the batch blocks are the inputs');
        find each feature block's K runs (the words where its weights are not all zero): only
        those are stored, sent and multiplied. Returns the plan and the padded weights
        (`_padded_weights`)."""
        cfg, n = self.cfg, self.cfg.mac_dim
        where = f"layer {name!r}"
        inputs = self._inputs(name, x)
        dtype = inputs[0].dtype
        vpw = MATRIX_TYPES[dtype].vectors_per_word(cfg)
        w = _operand_values(where, "weights", w, dtype)
        if w.ndim != 2:
            raise CompileError(f"{where}: weights must be a 2-D array, not {list(w.shape)}")
        k_total = sum(i.features for i in inputs)
        if w.shape[0] != k_total:
            names = " + ".join(f"{i.name!r} ({i.features})" for i in inputs)
            raise CompileError(f"{where}: weights have {w.shape[0]} rows but the input has "
                               f"{k_total} features ({names})")
        features = int(w.shape[1])
        if features < 1:
            raise CompileError(f"{where}: weights have no output features")
        if bias is not None:
            b = _check_bias(where, bias, features, dtype)
            if dtype == ElemType.INT8 and b.size and (b.min() < -2**31 or b.max() >= 2**31):
                raise CompileError(f"{where}: bias values must fit int32")
        offsets, kw = [], 0
        for i in inputs:
            offsets.append(kw)
            kw += i.kwords
        wpad = _padded_weights(n, vpw, inputs, offsets, kw, features, w)
        if dtype == ElemType.INT8:
            nz = wpad.reshape(kw, vpw, -1, n).any(axis=(1, 3)).T      # [block, K word]
            kruns = {i: k_runs(used) for i, used in enumerate(nz)}
        else:           # every K step, in order (see `gemm`)
            kruns = {i: [(0, kw)] for i in range(wpad.shape[1] // n)}
        width = max(sum(k1 - k0 for k0, k1 in runs) for runs in kruns.values())
        out_f = features if out_features is None else out_features
        mask = bool(quant) and dtype == ElemType.BF16 and out_f % n != 0
        wstride = width + (n if quant else 0) + (n if mask else 0)
        longest = max((seg.words for i in inputs for segs in i.segments.values() for seg in segs),
                      default=0)
        for what, value, limit in (("K words per block", kw, MAX_KW),
                                   ("words per weight block", wstride, MAX_SEND_WORDS),
                                   ("words in an activation segment", longest, MAX_SEND_WORDS)):
            if value > limit:
                raise CompileError(f"{where}: {value} {what} exceed the instruction limit "
                                   f"of {limit} (K = {k_total} is too large)")
        blocks = inputs[0].blocks
        fblocks = tuple((lo * pool, hi * pool)
                        for lo, hi in split_even(ceil(features / (n * pool)), cfg.rows))
        layer = LayerPlan(
            name, dtype, quant, pool, inputs, offsets, kw, width, wstride, features,
            features if out_features is None else out_features, blocks, fblocks, kruns,
            active_cols=[x for x in range(cfg.cols) if blocks[x][1] > blocks[x][0]],
            active_rows=[y for y in range(cfg.rows) if fblocks[y][1] > fblocks[y][0]],
            plans={node: NodePlan() for node in self.tp.nodes}, mask=mask)
        layer.xspan = {(x, y): (0, kw) for x in layer.active_cols for y in layer.active_rows}

        def block_words(i):
            words = _weight_words(cfg, dtype, wpad, i, kw)
            return [word for k0, k1 in kruns[i] for word in words[k0:k1]]
        return layer, block_words

    def _conv_partition(self, name, x, w, bias, quant, geom: ConvGeometry, rows, positions):
        """A convolution's plan: output positions split over `rows` grid rows (default all;
        fewer when there are fewer positions), every output channel block on every computing
        node, the batch blocks the input's; each block's runs (`ConvGeometry.runs`), its
        weights in run order, and the input rows each grid row reads."""
        cfg, n = self.cfg, self.cfg.mac_dim
        where = f"layer {name!r}"
        inputs = self._inputs(name, x)
        if len(inputs) != 1:
            raise CompileError(f"{where}: a convolution takes one input, not {len(inputs)}")
        xin = inputs[0]
        dtype = xin.dtype
        vpw = MATRIX_TYPES[dtype].vectors_per_word(cfg)
        if not isinstance(geom, ConvGeometry):
            raise CompileError(f"{where}: the geometry must be a ConvGeometry, not {geom!r}")
        if geom.cp % vpw:
            raise CompileError(f"{where}: {geom.cp} stored channels per pixel are not whole "
                               f"{dtype.name} operand words ({vpw} per word)")
        if xin.features != geom.in_h * geom.in_w * geom.cp:
            raise CompileError(f"{where}: input {xin.name!r} has {xin.features} features, not "
                               f"the {geom.in_h}x{geom.in_w} image of {geom.cp} stored channels "
                               f"({geom.in_h * geom.in_w * geom.cp})")
        w = _operand_values(where, "weights", w, dtype)
        kh, kwid = geom.kernel
        want = (geom.out_c, geom.in_c // geom.groups, kh, kwid)
        if w.shape != want:
            raise CompileError(f"{where}: weights have shape {list(w.shape)}, not {list(want)}")
        b = _check_bias(where, bias, geom.out_c, dtype)
        if dtype == ElemType.INT8 and b.size and (b.min() < -2**31 or b.max() >= 2**31):
            raise CompileError(f"{where}: bias values must fit int32")
        ob = ceil(geom.out_c / n)
        runs = {i: geom.runs(i, n, vpw) for i in range(ob)}
        kmats = {i: geom.block_kmatrix(w, i, n, vpw) for i in range(ob)}
        width = max(len(k) // vpw for k in kmats.values())
        longest = max(r.words for rs in runs.values() for r in rs)
        mask = bool(quant) and dtype == ElemType.BF16 and geom.out_c % n != 0
        wstride = width + n + (n if mask else 0)
        for what, value, limit in (("words in one MATMUL", longest, MAX_KW),
                                   ("words per weight block", wstride, MAX_SEND_WORDS)):
            if value > limit:
                raise CompileError(f"{where}: {value} {what} exceed the instruction limit of "
                                   f"{limit}")
        crows = geom.row_split(min(rows or cfg.rows, cfg.rows), positions)
        used = len(crows)
        plan = ConvPlan(geom, runs, crows, {y: geom.input_rows(*r) for y, r in crows.items()},
                        geom.cp // vpw, ob * n // OUT_PER_WORD[dtype])
        blocks = xin.blocks
        layer = LayerPlan(
            name, dtype, quant, geom.pool_size, inputs, [0], xin.kwords, width, wstride,
            geom.out_c, geom.out_c, blocks,
            tuple((0, ob) if y < used else (0, 0) for y in range(cfg.rows)), {},
            active_cols=[x for x in range(cfg.cols) if blocks[x][1] > blocks[x][0]],
            active_rows=list(range(used)),
            plans={node: NodePlan() for node in self.tp.nodes}, mask=mask, conv=plan)
        words_per_row = geom.in_w * plan.cwi
        for x in layer.active_cols:
            for y, (r0, r1) in plan.in_rows.items():
                layer.xspan[(x, y)] = (r0 * words_per_row, r1 * words_per_row)
        spec = MATRIX_TYPES[dtype]

        def block_words(i):
            k = kmats[i]
            return [spec.pack_vectors(cfg, k[vpw * t:vpw * t + vpw]) for t in range(len(k) // vpw)]
        return layer, block_words

    def _read_in_place(self, layer: LayerPlan) -> None:
        """When every computing node's input holds, on the node itself, the words each of its
        batch blocks needs (a host input placed in the spans a convolution reads,
        `input(form="spans")`), the nodes read them where they are: no X regions, no
        activation messages (`LayerPlan.inplace`). All or nothing, so that no region is both
        read in place and sent."""
        if len(layer.inputs) != 1:
            return
        layout = layer.inputs[0]
        inplace = {}
        for node, (lo, hi) in layer.xspan.items():
            if not layer.plans[node].tiles:
                continue
            where = {}
            for seg in layout.segments.get(node, ()):
                if seg.k0 <= lo and hi <= seg.k1:
                    where.setdefault(seg.block, seg.addr + lo - seg.k0)
            if not all(j in where for j in range(*layer.blocks[node[0]])):
                return
            inplace[node] = where
        layer.inplace = inplace

    def _direct_feeds(self, layer: LayerPlan) -> None:
        """The fed input regions the in-place nodes read with their MATMULs (no SEND feeds
        them): each is loaded before the START when the node's first tile reads it, else fed
        and WAITed for before the first tile that reads it (`_emit_layer`); a gated one is
        always fed, after its barrier's token."""
        for node, where in layer.inplace.items():
            layout = layer.inputs[0]
            for seg in layout.segments.get(node, ()):
                words = self._unfed[node].pop(seg.addr, None)
                if words is not None:
                    layer.direct.setdefault(node, []).append(
                        (seg.addr, words, layer.first_x[(node, seg.block)],
                         self._gated.pop((node, seg.addr), None)))

    def _order_tiles(self, layer: LayerPlan) -> None:
        """Owners of the weight blocks (dealt round-robin over the row's active columns) and
        every node's tile order, the same for every node of a row in its weight blocks and for
        every node of a column in its batch blocks, so that each block is multicast once to
        all of them: row y (the k-th active row) starts with the weight blocks of the owner in
        active column k mod C', then those of the next owners along the row; column x (the
        k-th active column) starts with the batch blocks held by active row k mod R', then by
        how far down the column from it the last part of a block comes from (within the later
        weight blocks, when every activation block is there, in order: their tiles roll into
        loops, `d1tile.sw.reroll`). So the first tile of every node needs, on each row, the
        blocks of about one node (a diagonal of the grid), which is what the host loads before
        the START (`_emit_layer`). A pooled layer deals and orders whole groups of `pool`
        blocks, and runs a group's tiles for one batch block one after the other."""
        rows = self.cfg.rows
        holders = {}                     # batch block -> rows of its column holding a part
        for i in layer.inputs:
            for (_, ys), segs in i.segments.items():
                for seg in segs:
                    holders.setdefault(seg.block, set()).add(ys)
        cols, pool, active_rows = layer.active_cols, layer.pool, layer.active_rows
        for row_pos, y in enumerate(active_rows):
            i0, i1 = layer.fblocks[y]
            for i in range(i0, i1):
                owner = (cols[(i - i0) // pool % len(cols)], y)
                layer.owner[(y, i)] = owner
                layer.plans[owner].owned.append(i)
            p0 = row_pos % len(cols)
            order = [g for ox in cols[p0:] + cols[:p0] for g in range(i0, i1, pool)
                     if layer.owner[(y, g)][0] == ox]
            for pos, x in enumerate(cols):
                q0 = active_rows[(pos + 1) % len(active_rows)]
                js = sorted(range(*layer.blocks[x]), key=lambda j: (
                    max(((ys - q0) % rows for ys in holders.get(j, ())), default=0), j))
                # After the first weight block every activation block has arrived: the later
                # ones take the batch blocks in order, so their tiles roll into loops.
                plain = list(range(*layer.blocks[x]))
                layer.plans[(x, y)].tiles = [(g + k, j, 0) for n, g in enumerate(order)
                                             for j in (js if n == 0 else plain)
                                             for k in range(pool)]
        self._first_uses(layer)

    @staticmethod
    def _first_uses(layer: LayerPlan) -> None:
        for node, p in layer.plans.items():
            for t, (i, j, _) in enumerate(p.tiles):
                layer.first_w.setdefault((node, i), t)
                layer.first_x.setdefault((node, j), t)

    def _order_conv_tiles(self, layer: LayerPlan) -> None:
        """A convolution's owners and tile order: the weight blocks of each computing row are
        dealt round-robin over its active columns, as the GEMM's are, and every node of row y
        (the k-th active row) takes them in one order starting with those of active column
        k mod C'; its tiles run batch block after batch block, output position after output
        position (raster order), block after block in that order, the pool's candidates of a
        position one after the other (a group)."""
        cols, pool = layer.active_cols, layer.pool
        ob = layer.fblocks[layer.active_rows[0]][1] if layer.active_rows else 0
        for row_pos, y in enumerate(layer.active_rows):
            for i in range(ob):
                owner = (cols[i % len(cols)], y)
                layer.owner[(y, i)] = owner
                layer.plans[owner].owned.append(i)
            p0 = row_pos % len(cols)
            order = [i for ox in cols[p0:] + cols[:p0] for i in range(ob)
                     if cols[i % len(cols)] == ox]
            q0, q1 = layer.conv.rows[y]
            for x in cols:
                layer.plans[(x, y)].tiles = [(i, j, q * pool + c) for j in range(*layer.blocks[x])
                                             for q in range(q0, q1) for i in order
                                             for c in range(pool)]
        self._first_uses(layer)

    def _instruction_counts(self, layer: LayerPlan) -> tuple[dict, dict]:
        """Per node: its program length after this layer (and a HALT), and its WAITs of this
        layer as (tile, counter) pairs; `_emit_layer` checks that it emits exactly this. The
        SENDs and MCASTs are the gather's messages (before `_gather`: one per weight block
        and activation segment, the multicast case)."""
        cols = self.cfg.cols
        count = {node: len(self.tp.programs[node]) if node in self.tp.programs else 0
                 for node in self.tp.nodes}
        waits = {node: set() for node in self.tp.nodes}
        for node, p in layer.plans.items():
            count[node] += layer.instructions(node, p.tiles)
        if layer.messages:
            for m in layer.messages:
                count[m.sender] += 1
                for receiver, use in m.deliveries():
                    waits[receiver].add((use, m.counter))
        else:       # before the gather: one multicast per weight block and input segment
            for node, p in layer.plans.items():
                count[node] += len(p.owned)
                for i in p.owned:
                    for x in layer.active_cols:
                        waits[(x, node[1])].add((layer.first_w[((x, node[1]), i)], node[0]))
            for i in layer.inputs:
                for (x, ys), segs in i.segments.items():
                    count[(x, ys)] += len(segs)
                    for seg in segs:
                        for y in layer.active_rows:
                            if ((x, y), seg.block) in layer.first_x and (x, y) not in \
                                    layer.inplace:
                                waits[(x, y)].add((layer.first_x[((x, y), seg.block)],
                                                   cols + ys))
        for node, regions in layer.direct.items():
            for addr, _, tile, gate in regions:
                if tile > 0 or gate:
                    waits[node].add(("direct", addr))
        first_slot = {}                  # one WAIT on HOST_COUNTER per fed region
        for m in layer.messages:
            if m.src in self._unfed[m.sender]:
                key = (m.sender, m.src)
                first_slot[key] = min(first_slot.get(key, m.slot), m.slot)
        for (sender, src), slot in first_slot.items():
            if slot >= 0 or (sender, src) in self._gated:     # gated: fed even at slot -1
                waits[sender].add(("host", src))
        for node in self.tp.nodes:
            count[node] += len(waits[node]) + 1
        return count, waits

    def _check_instruction_memory(self, layer: LayerPlan) -> None:
        """The straight-line program must stay below `STRAIGHT_LINE_LIMIT` x the instruction
        memory (what loop rerolling is given to work on: a bound on the compiler's memory);
        what has to fit the instruction memory is the rolled program (`_emit_layer`)."""
        count, waits = self._instruction_counts(layer)
        worst = max(self.tp.nodes, key=lambda node: count[node])
        limit = STRAIGHT_LINE_LIMIT * self.cfg.imem_words
        if count[worst] > limit:
            raise CapacityError(
                f"{layer.where} needs {count[worst]} straight-line instructions on node {worst} "
                f"({len(layer.plans[worst].tiles)} tiles: "
                f"{layer.instructions(worst, layer.plans[worst].tiles)} instructions, "
                f"{len(waits[worst])} WAITs, the SENDs, earlier layers and the HALT), more than "
                f"the {limit} ({STRAIGHT_LINE_LIMIT} x the instruction memory) the compiler "
                "rolls into loops")

    def _sram_needs(self, layer: LayerPlan) -> dict:
        """node -> {part: words} of the layer's regions."""
        n = self.cfg.mac_dim
        needs = {}
        for (x, y), p in layer.plans.items():
            parts = {}
            if p.owned:
                parts["weight staging"] = len(p.owned) * layer.wstride
            if p.tiles:
                nf = layer.fblocks[y][1] - layer.fblocks[y][0]
                nbx = layer.blocks[x][1] - layer.blocks[x][0]
                parts["weights"] = nf * layer.wstride
                if (x, y) not in layer.inplace:
                    parts["activations"] = nbx * layer.xstride((x, y))
                if layer.quant and layer.conv is not None:
                    parts["output chunks"] = layer.out_words((x, y))
                elif layer.quant:
                    parts["output chunks"] = nbx * nf // layer.pool * n // OUT_PER_WORD[layer.dtype]
                if layer.quant:
                    # Double-buffered groups: a group's first tile in "accumulator rows", the
                    # other candidates in "candidate rows", another bank (VEC MAX reads both).
                    have = self._acc.get((x, y), {})
                    for part, size in (("accumulator rows", 2 * n),
                                       ("candidate rows", 2 * (layer.pool - 1) * n)):
                        if size and have.get(part, (0, 0))[1] < size:
                            parts[part] = size
                elif layer.stream:
                    parts["result ring"] = min(2 * layer.stream, len(p.tiles)) * n
                else:
                    parts["results"] = nf * nbx * n
            if parts:
                needs[(x, y)] = parts
        return needs

    def _place_regions(self, layer: LayerPlan) -> None:
        """SRAM: check the fullest node first (a clear message), then place every node's
        regions by their classes (`NodeSram`); when they do not fit, a barrier before the
        layer lets them reuse the words of dead regions (`_with_reuse`)."""
        classes = {"weight staging": STAGE, "weights": OPERAND, "activations": OPERAND,
                   "output chunks": STAGE, "accumulator rows": RESULT,
                   "candidate rows": CANDIDATE, "results": RESULT, "result ring": RESULT}
        needs = self._sram_needs(layer)

        def attempt():
            self._check_fits(layer.where, needs)
            # The multicast destinations first, at one address per group: the weights of a
            # row's computing nodes, then the activations of a column's (`NodeSram.common`).
            placed = {node: {} for node in needs}
            groups = [("weights", [[(x, y) for x in layer.active_cols]
                                   for y in layer.active_rows]),
                      ("activations", [[(x, y) for y in layer.active_rows]
                                       for x in layer.active_cols])]
            for part, lists in groups:
                for group in lists:
                    group = [node for node in group if part in needs.get(node, {})]
                    if len(group) > 1 and len({needs[node][part] for node in group}) == 1:
                        addr = NodeSram.common([self.sram[node] for node in group],
                                               f"{layer.name}: {part}", needs[group[0]][part],
                                               classes[part])
                        if addr is not None:
                            for node in group:
                                placed[node][part] = addr
            for node, parts in sorted(needs.items()):
                rest = [part for part in parts if part not in placed[node]]
                placed[node].update(zip(rest, self._place(layer.where, node, [
                    (f"{layer.name}: {part}", parts[part], classes[part],
                     GATED if part == "weight staging" else False) for part in rest])))
            return placed

        placed = self._with_reuse(attempt)
        for node, addrs in placed.items():
            p, parts = layer.plans[node], needs[node]
            p.w_stage = addrs.get("weight staging", 0)
            if "weight staging" in addrs:
                p.w_gate = next(r.gate for r in reversed(self.sram[node].regions)
                                if r.lo == p.w_stage and r.name == f"{layer.name}: weight staging")
            p.w_base = addrs.get("weights", 0)
            p.x_base = addrs.get("activations", 0)
            p.y_base = addrs.get("output chunks", 0)
            p.out_base = addrs.get("results", addrs.get("result ring", 0))
            for part in ("accumulator rows", "candidate rows"):
                if part in addrs:
                    self._acc.setdefault(node, {})[part] = (addrs[part], parts[part])

    # -- region lifetimes and barriers ------------------------------------------------------------

    def _with_reuse(self, attempt):
        """Run `attempt` (placing one layer's regions, all nodes); if it does not fit, undo what
        it placed, put a barrier before this layer so that the words of regions dead before
        it can be reused (when there are such words and a barrier is possible), and try once
        more."""
        marks = {node: len(sram.regions) for node, sram in self.sram.items()}

        def undo():         # the regions placed since (the barrier's token word included)
            for node, sram in self.sram.items():
                del sram.regions[marks[node]:]

        try:
            return attempt()
        except CompileError as first:
            undo()
            if not self._barrier_helps():
                raise
            error = first
        try:
            self._add_barrier()
        except CapacityError:
            raise type(error)(f"{error} (and no word is left for a barrier's tokens)") from None
        try:
            return attempt()
        except CompileError:
            undo()                      # and the barrier: the builder as before the layer
            self.barriers.pop()
            if not any(r.name == "barrier tokens" for r in self.sram[BARRIER_ROOT].regions):
                self._barrier_word.pop(BARRIER_ROOT, None)
            raise type(error)(f"{error} (nor with the words of the earlier layers' dead "
                              "regions reused)") from None

    def _barrier_helps(self) -> bool:
        now = len(self.layers)
        if self.cfg.nodes == 1 or self.cfg.rows + self.cfg.cols > BARRIER_COUNTER:
            return False
        if self.barriers and self.barriers[-1] == now:
            return False
        last = self.barriers[-1] if self.barriers else None
        return any(r.dies is not None and r.dies < now and (last is None or r.dies >= last)
                   for sram in self.sram.values() for r in sram.regions)

    def _add_barrier(self) -> None:
        now = len(self.layers)
        if BARRIER_ROOT not in self._barrier_word:
            # Every node's token lands here while the root may still be in the layers before:
            # words no region has ever had (as a host region), never reused; placed now, before
            # the layer's regions take the last such words.
            self._barrier_word[BARRIER_ROOT], = self._place(
                "the barrier", BARRIER_ROOT, [("barrier tokens", 1, RESULT, True)])
        self.barriers.append(now)        # the nodes' `NodeSram.reuse_from` and `gate`

    def _retire_layer(self, layer) -> None:
        """The regions only `layer` uses (its weights and their staging, its gathered inputs,
        its staging of a second input) die after it."""
        index = len(self.layers)
        lasting = ("results", "result ring", "output", "accumulator rows", "candidate rows")
        if not getattr(layer, "send_out", False):          # sent to the host: dead once sent
            lasting += ("output chunks",)
        for sram in self.sram.values():
            for r in sram.regions:
                if r.name.startswith(f"{layer.name}: ") and r.dies is None and not r.kept and \
                        not r.name.endswith(lasting):
                    r.dies = index

    def release(self, what) -> None:
        """The regions of an activation (or a GEMM result) die after the last layer built so
        far: call it when a tensor's last reader has been lowered (the compiler does)."""
        if isinstance(what, (list, tuple)):
            for part in what:
                self.release(part)
            return
        index = len(self.layers) - 1
        for node, addr, size in self._regions_of(what):
            self.sram[node].retire(addr, addr + size, index)

    def _regions_of(self, what):
        if isinstance(what, ActivationLayout) and what.streamed is None:
            return [(node, *what.region(*node)) for node in what.nodes()]
        if isinstance(what, GemmOutput) and what.streamed is None:
            return [(node, *what.region(*node)) for node in sorted(what.base)]
        return []

    def _emit_barrier(self) -> None:
        """Every node sends a token to node (0, 0) (a one-word SEND of the last word its
        previous layer wrote, so that it leaves only when that layer's reads are done: the
        sequencer orders it after the write, which comes after every read the layer made);
        (0, 0) WAITs for all of them, sends the host a token (a zero-length SEND: the host
        feeds the regions gated on this barrier once it has it) and multicasts the release to
        the whole grid; every node WAITs for it. Only then does any node write into (or send
        into) reused words."""
        root = BARRIER_ROOT
        word = self._barrier_word[root]         # placed with the first barrier (`_add_barrier`)
        for node in self.tp.nodes:      # at most 6 instructions, and the HALT after
            used = len(self.tp.node(*node)) + (6 if node == root else 2) + 1
            if used > self.cfg.imem_words:
                raise CapacityError(f"the barrier before layer {len(self.layers)} needs {used} "
                                    f"instructions on node {node} (with the earlier layers and "
                                    f"the HALT), its instruction memory holds "
                                    f"{self.cfg.imem_words}")
        for node in self.tp.nodes:
            p = self.tp.node(*node)
            last = self._last_write.get(node)
            self._emit(node, "the barrier", p.send, last if last is not None else 0,
                       1 if last is not None else 0, root, word, counter=BARRIER_COUNTER)
        p = self.tp.node(*root)
        p.wait(BARRIER_COUNTER, self.cfg.nodes)
        p.send(0, 0, (self.cfg.cols, root[1]), 0)
        p.shape(1, span=(0, self.cfg.rows - 1))
        p.mcast(0, 0, 0, row=(0, self.cfg.cols - 1), counter=BARRIER_COUNTER, shaped=True)
        for node in self.tp.nodes:
            self.tp.node(*node).wait(BARRIER_COUNTER, 1)
        self._barriers_emitted.add(len(self.layers))

    def _barrier_due(self) -> None:
        """Emit the barrier of the layer about to be emitted, if it has one."""
        now = len(self.layers)
        if self.barriers and self.barriers[-1] == now and now not in self._barriers_emitted:
            self._emit_barrier()

    def _load_weights(self, layer: LayerPlan, block_words, bias) -> None:
        """The host loads each weight block (the words of its runs, `block_words(i)`,
        zero-padded to the layer's width, then its N bias words) once per row that computes
        it, into its owner's staging region."""
        cfg, n = self.cfg, self.cfg.mac_dim
        cache = {}
        for node, p in layer.plans.items():
            words = []
            for i in p.owned:
                if i not in cache:
                    cache[i] = block_words(i)
                runs = cache[i]
                words += runs + [0] * (layer.width - len(runs))
                if layer.quant:       # word r: feature i N + r's bias in every lane
                    hi = min(layer.features, (i + 1) * n)
                    if layer.dtype == ElemType.INT8:
                        b = np.zeros(n, dtype=np.int64)
                        b[:hi - i * n] = np.asarray(bias)[i * n:hi]
                    else:             # FP32 bits
                        b = np.zeros(n, dtype=np.uint32)
                        b[:hi - i * n] = numerics.f32_bits(np.asarray(bias)[i * n:hi])
                    words += [word_from_lanes([v] * n) for v in b]
                if layer.mask:        # word r: 1.0 where output feature (i // pool) N + r exists
                    g = i if layer.conv is not None else i // layer.pool
                    real = g * n + np.arange(n) < layer.out_features
                    one = int(numerics.f32_bits(1.0))
                    words += [word_from_lanes([one if r else 0] * n) for r in real]
            for k in range(len(p.owned)):       # fed at their first SEND (`_emit_layer`)
                addr = p.w_stage + k * layer.wstride
                self._unfed[node][addr] = words[k * layer.wstride:(k + 1) * layer.wstride]
                if p.w_gate:
                    self._gated[(node, addr)] = p.w_gate

    def _register_inputs(self, layer: LayerPlan) -> None:
        """The segments of the layer's host inputs that are not fed yet become fed regions."""
        for layout in layer.inputs:
            if layout.fed:
                for node, segs in layout.segments.items():
                    for seg in segs:
                        if (layout.name, node, seg.addr) not in self._fed:
                            self._fed.add((layout.name, node, seg.addr))
                            self._unfed[node][seg.addr] = seg.words

    def _gather(self, layer: LayerPlan) -> None:
        """Every message of the layer: each weight block from its owner to the nodes of the
        row that compute, each activation segment from its holder to the nodes of the column
        that compute, as one multicast (the receivers' regions are at one address,
        `_place_regions`; a SEND when there is one receiver, and a SEND per receiver if their
        addresses differ); with each receiver's first use and a rank that orders a sender's
        ties (activations first)."""
        cols = self.cfg.cols
        for (y, i), (ox, _) in layer.owner.items():
            src = layer.plans[(ox, y)]
            recvs = [(x, y) for x in layer.active_cols]
            self._message(layer, (ox, y), recvs, ox,
                          src.w_stage + src.owned.index(i) * layer.wstride, layer.wstride,
                          [layer.plans[r].w_base + (i - layer.fblocks[y][0]) * layer.wstride
                           for r in recvs],
                          [layer.first_w[(r, i)] for r in recvs], 1)
        for x in layer.active_cols:
            recvs = [(x, y) for y in layer.active_rows
                     if layer.plans[(x, y)].tiles and (x, y) not in layer.inplace]
            if not recvs:
                continue
            for j in range(*layer.blocks[x]):
                for holder, k0, k1, addr in self._holders(layer, x, j):
                    # Each receiver takes the part of the holder's words it reads; those that
                    # take the same part at the same address share one multicast.
                    parts = {}
                    for r in recvs:
                        lo, hi = layer.xspan[r]
                        a, b = max(k0, lo), min(k1, hi)
                        if a < b:
                            parts.setdefault((a, b), []).append(
                                (r, layer.xaddr(r, j) + a - lo))
                    for (a, b), got in sorted(parts.items()):
                        for start in range(a, b, MAX_SEND_WORDS):
                            size = min(MAX_SEND_WORDS, b - start)
                            self._message(layer, holder, [r for r, _ in got], cols + holder[1],
                                          addr + start - k0, size,
                                          [d + start - a for _, d in got],
                                          [layer.first_x[(r, j)] for r, _ in got], 0)

    @staticmethod
    def _holders(layer: LayerPlan, x: int, j: int) -> list[tuple]:
        """(holder, k0, k1, addr): who holds which words [k0, k1) of batch block j (in the
        concatenated K of the layer's inputs), each word once (`segment_holders`)."""
        out = []
        for layout, off in zip(layer.inputs, layer.offsets):
            out += [(node, off + k0, off + k1, addr)
                    for node, k0, k1, addr in segment_holders(layout, x, j)]
        return sorted(out, key=lambda t: t[1])

    @staticmethod
    def _message(layer, sender, recvs, counter, src, n, dsts, uses, rank) -> None:
        """One multicast when the receivers are several, take the words at one address and
        are a run of a row or a column; else a SEND per receiver."""
        if not recvs:
            return
        xs = sorted({r[0] for r in recvs})
        ys = sorted({r[1] for r in recvs})
        run = (len(xs) == 1 and ys == list(range(ys[0], ys[-1] + 1))) or \
              (len(ys) == 1 and xs == list(range(xs[0], xs[-1] + 1)))
        if len(recvs) > 1 and len(set(dsts)) == 1 and run:
            layer.messages.append(Message(sender, recvs[0], counter, src, n, dsts[0],
                                          min(uses), (rank, 0), receivers=tuple(recvs),
                                          uses=tuple(uses)))
            return
        for r, dst, use in zip(recvs, dsts, uses):
            layer.messages.append(Message(sender, r, counter, src, n, dst, use, (rank, 0)))

    def _emit_layer(self, layer: LayerPlan) -> None:
        """The instructions (see docs/kernels.md): per node, SETQ, the sends of slot -1, then per
        tile its WAITs, a MATMUL per K run of its block, the VECs of the previous group
        (MAX, bias ADD, REQUANT) when this tile starts a group, its slot's sends and its MREAD;
        the last group's VECs at the end."""
        n, pool = self.cfg.mac_dim, layer.pool
        count, _ = self._instruction_counts(layer)
        sends = {node: {} for node in self.tp.nodes}
        waits = {node: {} for node in self.tp.nodes}
        for m in sorted(layer.messages, key=lambda m: (m.due, m.rank, m.receiver, m.dst)):
            sends[m.sender].setdefault(m.slot, []).append(m)
            for receiver, use in m.deliveries():
                tile = waits[receiver].setdefault(use, {})
                tile[m.counter] = tile.get(m.counter, 0) + 1
        first_senders = []
        for node, p in layer.plans.items():
            if not p.tiles and not sends[node]:
                continue
            x, y = node
            (i0, i1), (j0, j1) = layer.fblocks[y], layer.blocks[x]
            pc0 = len(self.tp.node(x, y))
            # Straight-line first, into a scratch program; rolled into loops at the end.
            prog = self._scratch_program()

            def emit(method, *args, **kwargs):
                self._emit(node, layer.where, getattr(prog, method), *args, **kwargs)

            def send_slot(slot):
                for m in sends[node].get(slot, []):
                    fed = self._unfed[node].pop(m.src, None)
                    gate = self._gated.pop((node, m.src), None)
                    if fed is not None and slot < 0 and gate is None:
                        if not isinstance(fed, int):     # needed first: loaded before START
                            self.tp.load(node, m.src, fed)
                        else:       # an input's words: `load_activation` gives them
                            self.tp.expect_load(node, m.src, fed)
                    elif fed is not None:
                        key = (len(self.layers), m.due, slot)
                        # a gated region: after the gate-th barrier's token (`_emit_barrier`)
                        via = (BARRIER_ROOT, gate) if gate else None
                        if isinstance(fed, int):
                            self.tp.expect_feed(node, m.src, fed, counter=HOST_COUNTER, key=key,
                                                gate=via)
                        else:
                            self.tp.feed(node, m.src, fed, counter=HOST_COUNTER, key=key,
                                         gate=via)
                        emit("wait", HOST_COUNTER, 1)
                    if not m.receivers:
                        emit("send", m.src, m.n, m.receiver, m.dst, counter=m.counter)
                    elif m.receivers[0][1] == m.receivers[-1][1]:     # along the row
                        emit("mcast", m.src, m.n, m.dst, counter=m.counter,
                             row=(m.receivers[0][0], m.receivers[-1][0]))
                    else:
                        emit("mcast", m.src, m.n, m.dst, counter=m.counter,
                             column=(m.receivers[0][1], m.receivers[-1][1]))

            def acc(t):
                half, k = (t // pool) % 2, t % pool
                if k == 0:
                    return self._acc[node]["accumulator rows"][0] + half * n
                return self._acc[node]["candidate rows"][0] + (half * (pool - 1) + k - 1) * n

            def finish_group(g) -> list:
                """Group g's vector instructions (emitted by `drain`)."""
                first = g * pool
                i, j, q = p.tiles[first]
                a, bias = acc(first), p.w_base + (i - i0) * layer.wstride + layer.width
                out = p.y_base + layer.out_offset(node, i, j, q)
                if layer.dtype == ElemType.INT8:
                    return ([("vec", (VecOp.MAX,), dict(dst=a, a=a, b=acc(t), n=n))
                             for t in range(first + 1, first + pool)]
                            + [("vec", (VecOp.ADD,), dict(dst=a, a=a, b=bias, n=n)),
                               ("vec", (VecOp.REQUANT,), dict(a=a, n=n, dst=out))])
                code = [("fvec", (FVecOp.FMAX,), dict(dst=a, a=a, b=acc(t), n=n))
                        for t in range(first + 1, first + pool)]
                code.append(("fvec", (FVecOp.FADD,), dict(dst=a, a=a, b=bias, n=n)))
                if layer.quant[2]:
                    code.append(("fvec", (FVecOp.FRELU,), dict(dst=a, a=a, b=a, n=n)))
                if layer.mask:      # the padding rows of the last output block: +0
                    code.append(("fvec", (FVecOp.FMASK,), dict(dst=a, a=a, b=bias + n, n=n)))
                code.append(("fcvt", (ElemType.FP32, ElemType.BF16), dict(dst=out, a=a, n=n)))
                return code

            # A group's vector instructions are spread over the tile slots of the next group
            # (an equal share after each of its MATMULs): the vector engine runs one at a time,
            # and the in-order sequencer would otherwise stall the next MATMULs behind them.
            pending = []

            def drain(slots_left: int):
                share = len(pending) if slots_left <= 1 else len(pending) // slots_left
                for method, args, kwargs in pending[:share]:
                    emit(method, *args, **kwargs)
                del pending[:share]

            def mread(t):
                i, j, _ = p.tiles[t]
                bank = t % ACC_BANKS
                if layer.quant:
                    emit("mread", acc(t), bank=bank)
                elif layer.stream:      # into the ring; each group of `stream` tiles to the host
                    g, ring = layer.stream, min(2 * layer.stream, len(p.tiles))
                    emit("mread", p.out_base + t % ring * n, bank=bank)
                    if (t + 1) % g == 0 or t == len(p.tiles) - 1:
                        at = p.out_base + (t - t % g) % ring * n
                        emit("send", at, (t % g + 1) * n, (self.cfg.cols, y), at)
                else:
                    emit("mread", p.out_base + ((i - i0) * (j1 - j0) + (j - j0)) * n, bank=bank)

            if layer.quant and p.tiles and layer.dtype == ElemType.INT8:
                emit("setq", *layer.quant)
            if sends[node].get(-1) and not self.layers:
                first_senders.append(node)
            send_slot(-1)
            direct = {}                 # tile -> fed regions it is the first to read in place
            for addr, words, tile, gate in layer.direct.get(node, ()):
                if tile > 0 or gate:
                    self.tp.expect_feed(node, addr, words, counter=HOST_COUNTER,
                                        key=(len(self.layers), tile - 1, tile - 1),
                                        gate=(BARRIER_ROOT, gate) if gate else None)
                    direct[tile] = direct.get(tile, 0) + 1
                else:       # read by the first tile: loaded before the START
                    self.tp.expect_load(node, addr, words)
            for t, (i, j, q) in enumerate(p.tiles):
                for counter, value in sorted(waits[node].get(t, {}).items()):
                    emit("wait", counter, value)
                for _ in range(direct.get(t, 0)):
                    emit("wait", HOST_COUNTER, 1)
                at = p.w_base + (i - i0) * layer.wstride
                xb = layer.xaddr(node, j)
                bank = t % ACC_BANKS      # tile t accumulates while tile t - 1 is read out
                for r, (a, b, k) in enumerate(layer.tile_runs(node, i, q)):
                    emit("matmul", at + a, xb + b, k, clear=r == 0, dtype=layer.dtype, bank=bank)
                # The previous tile's MREAD after this tile's MATMUL: the MATMULs go back to
                # back on the matrix engine, the readout runs beside them.
                if t:
                    mread(t - 1)
                if layer.quant and t and t % pool == 0:
                    drain(1)                    # what is left of the group before
                    pending.extend(finish_group(t // pool - 1))
                if layer.quant:
                    drain(pool - t % pool)
                send_slot(t)
            if p.tiles:
                mread(len(p.tiles) - 1)
            if layer.quant and p.tiles:
                drain(1)
                pending.extend(finish_group(len(p.tiles) // pool - 1))
                drain(1)
            if layer.send_out and p.tiles:    # the output to the host edge of the row
                at, left = p.y_base, layer.out_words(node)
                while left:
                    k = min(left, MAX_SEND_WORDS)
                    emit("send", at, k, (self.cfg.cols, y), at)
                    at, left = at + k, left - k
            assert pc0 + len(prog) + 1 == count[node], (node, len(prog), count[node])
            layer.pcs[node] = self._append_rolled(node, layer.where, prog,
                                                  f"{len(p.tiles)} tiles: ")
        # The first layer's senders of first operands are loaded and STARTed first in their
        # rows (`TileImage.early`), so their multicasts run while the rest of the row loads;
        # in a row where every node is one of them that would only stagger the STARTs.
        for y in range(self.cfg.rows):
            row = [node for node in first_senders if node[1] == y]
            if len(row) < sum(1 for node, p in layer.plans.items() if node[1] == y and p.tiles):
                self.tp.early.extend(node for node in row if node not in self.tp.early)


@dataclass(frozen=True)
class ConvCost:
    """`conv_cost`'s estimate of a convolution layer whose input the host feeds: the busiest
    node's matrix and vector time, the busiest row link's input words, the fullest node's
    SRAM words for the layer, and the estimated cycles."""
    compute: int
    load: int
    sram: int
    cycles: int


def conv_cost(cfg: TileConfig, geom: ConvGeometry, dtype: ElemType, batch: int,
              rows: int | None = None) -> ConvCost:
    """The cost model of `conv_layer` on a host-fed input placed in the spans it reads, from
    the cycle model's timing functions: per output group (a position's pool candidates for
    one output block) the matrix engine's MATMULs (`matmul_cycles` of each run, clipping
    included) against the vector engine's epilogue (`vec_cycles`), whichever is longer (the
    two overlap); times the busiest column's batch blocks. The input crosses each row's host
    link once per node (N-lane words, a head flit per `CHUNK`); the nodes compute while the
    rest is fed, so the estimate is the longer of the two plus one block's share of the
    load (what the first tiles wait for)."""
    from d1tile.sim.host import CHUNK
    n = cfg.mac_dim
    vpw = MATRIX_TYPES[dtype].vectors_per_word(cfg)
    cwi = geom.cp // vpw
    ob = ceil(geom.out_c / n)
    split = geom.row_split(min(rows or cfg.rows, cfg.rows))
    spans = geom.spans(min(rows or cfg.rows, cfg.rows), cwi)
    nb = max(hi - lo for lo, hi in batch_blocks(cfg, batch))
    cols = sum(1 for lo, hi in batch_blocks(cfg, batch) if hi > lo)
    runs = {i: geom.runs(i, n, vpw) for i in range(ob)}
    epilogue = (geom.pool_size + 2 + (dtype == ElemType.BF16)) * vec_cycles(n)
    compute = 0
    for y, (q0, q1) in split.items():
        r0 = geom.input_rows(q0, q1)[0]
        total = 0
        for q in range(q0, q1):
            for i in range(ob):
                matrix = sum(matmul_cycles(cfg, k, dtype)
                             for oy, ox in geom.candidates[q]
                             for _, _, k in geom.tile_runs(runs[i], int(oy), int(ox), r0, cwi))
                total += max(matrix, epilogue)
        compute = max(compute, total * nb)
    words = {y: (hi - lo) * nb for y, (lo, hi) in spans.items()}
    load = max(cols * (w + ceil(w / CHUNK)) for w in words.values())
    width = max(sum(r.words for r in rs) for rs in runs.values())
    out_words = max(q1 - q0 for q0, q1 in split.values()) * nb * ob * n // OUT_PER_WORD[dtype]
    sram = max(words.values()) + 2 * ob * (width + n) + out_words
    return ConvCost(compute, load, sram, max(compute, load) + load // max(1, nb))


STREAM_TILES = 8
"""Tiles per SEND of a GEMM result streamed to the host (`KernelBuilder.gemm(out="host")`)
when the results load the row links (`STREAM_LINK_SHARE`); otherwise one tile per SEND. The
ring holds twice as many tiles, so one group is read out while the other is sent. 8 tiles of 8
words make a packet of 65 flits (1.5 % headers), 1 tile a packet of 9 (11 %); but one tile per
SEND rolls into a loop of 2 tiles, 8 into one of 16 (the programs: 120 against 295 words per
node for 1024 x 64 x 1024 on the default tile). Measured in docs/kernels.md."""

STREAM_LINK_SHARE = 0.9
"""One tile per SEND while a row's streamed results, N + 1 flits per tile, take at most this
share of the compute time on the row's link (measured: 1024 x 64 x 1024, share 0.54, 94.6 %
with one tile per SEND against 93.0 % with 8; 1024 x 32 x 1024, share 1.03, 85.5 % against
86.5 %)."""

STRAIGHT_LINE_LIMIT = 64
"""A layer's straight-line program (before loop rerolling) may be at most this many times the
instruction memory, per node."""

K_RUN_GAP = 1
"""All-zero words between two runs of a block's K words that are multiplied anyway rather than
split into another MATMUL (a MATMUL's start-up costs about what one word of beats does)."""


def k_runs(used) -> list[tuple[int, int]]:
    """The runs [k0, k1) of words where `used` (one bool per K word) is true, runs separated by
    at most `K_RUN_GAP` unused words merged; one word when nothing is used (an all-zero block
    still needs its MATMUL to clear the accumulators)."""
    hits = np.flatnonzero(used)
    if not hits.size:
        return [(0, 1)]
    runs = [[int(hits[0]), int(hits[0]) + 1]]
    for k in hits[1:]:
        if k - runs[-1][1] <= K_RUN_GAP:
            runs[-1][1] = int(k) + 1
        else:
            runs.append([int(k), int(k) + 1])
    return [tuple(r) for r in runs]


def _padded_weights(n: int, vpw: int, inputs, offsets, kw: int, features: int,
                    w) -> np.ndarray:
    """W [K, F] (int8 values or BF16 bits) as [V kw, F rounded up to whole blocks] int64: each
    input's rows from word `offset` on, zero rows where an input's features do not fill its
    last word."""
    rows = np.concatenate([vpw * off + np.arange(i.features)
                           for off, i in zip(offsets, inputs)])
    wpad = np.zeros((vpw * kw, ceil(features / n) * n), dtype=np.int64)
    wpad[rows, :features] = np.asarray(w)
    return wpad


def _weight_words(cfg: TileConfig, dtype, wpad: np.ndarray, i: int, kw: int) -> list[int]:
    """The kw W operand words of feature block i: word w, element s*N + r = W[Vw + s, iN + r]."""
    n = cfg.mac_dim
    spec = MATRIX_TYPES[dtype]
    vpw = spec.vectors_per_word(cfg)
    block = wpad[:, i * n:(i + 1) * n]              # (V kw, N)
    return [spec.pack_vectors(cfg, block[vpw * w:vpw * w + vpw]) for w in range(kw)]


def _operand_values(where: str, what: str, values, dtype) -> np.ndarray:
    """A tensor as the operand elements of `dtype`: int8 values (checked) as int64, or floats
    rounded to BF16 (RNE) as their bit patterns. CompileError naming the tensor otherwise."""
    arr = np.asarray(values)
    if dtype == ElemType.INT8:
        if not np.issubdtype(arr.dtype, np.integer):
            raise CompileError(f"{where}: {what} must be integers for int8, not {arr.dtype}")
        if arr.size and (arr.min() < -128 or arr.max() > 127):
            raise CompileError(f"{where}: {what} must be int8 (-128..127), found "
                               f"{int(arr.min())}..{int(arr.max())}")
        return arr.astype(np.int64)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CompileError(f"{where}: {what} must be numbers for bf16, not {arr.dtype}")
    return numerics.bf16_bits(arr.astype(np.float32)).astype(np.int64)


def _pool_columns(cfg: TileConfig, name: str, w: np.ndarray, b,
                  dtype=ElemType.INT8) -> tuple[np.ndarray, np.ndarray]:
    """A pooled layer's weights [P, K, F] and bias [F] as one [K, G P N] matrix and bias
    (G = ceil(F / N) output blocks): feature block g P + p holds candidate p of output block g,
    its row r output feature g N + r (zero columns beyond F)."""
    n = cfg.mac_dim
    pool, k, f = w.shape
    b = _check_bias(f"layer {name!r}", b, f, dtype)
    groups = ceil(f / n)
    wp = np.zeros((pool, k, groups * n), dtype=w.dtype)
    wp[:, :, :f] = w
    cols = wp.reshape(pool, k, groups, n).transpose(1, 2, 0, 3)       # k, group, p, row
    b = b.astype(np.int64) if dtype == ElemType.INT8 else b.astype(np.float64)
    bias = np.pad(b, (0, groups * n - f)).reshape(groups, 1, n)
    return cols.reshape(k, groups * pool * n), np.repeat(bias, pool, axis=1).reshape(-1)


def _check_bias(where: str, b, features: int, dtype=ElemType.INT8) -> np.ndarray:
    b = np.asarray(b)
    kind = np.integer if dtype == ElemType.INT8 else np.number
    if b.shape != (features,) or not np.issubdtype(b.dtype, kind) \
            or np.issubdtype(b.dtype, np.complexfloating):
        what = "an integer" if dtype == ElemType.INT8 else "a real"
        raise CompileError(f"{where}: bias must be {what} vector of {features} values, "
                           f"not {b.dtype} {list(b.shape)}")
    return b


# -- host side -------------------------------------------------------------------------------

def _activation_values(layout: ActivationLayout, x) -> np.ndarray:
    """x as the layout's operand elements (int8 values, or BF16 bits of floats), checked."""
    what = f"tensor {layout.name!r}"
    x = np.asarray(x)
    if x.shape != (layout.batch, layout.features):
        raise ValueError(f"{what}: expected shape {[layout.batch, layout.features]}, not "
                         f"{list(x.shape)}")
    try:
        return _operand_values(what, "values", x, layout.dtype)
    except CompileError as exc:
        raise ValueError(str(exc)) from None


def pack_activation(layout: ActivationLayout, x) -> dict:
    """NumPy [batch, features] (int8 values, or floats for bf16) -> {node: (address, words)}:
    what each node holds."""
    n = layout.cfg.mac_dim
    spec = layout.mtype
    vpw = spec.vectors_per_word(layout.cfg)
    x = _activation_values(layout, x)
    nblocks = max(hi for _, hi in layout.blocks)
    xpad = np.zeros((nblocks * n, vpw * layout.kwords), dtype=np.int64)
    xpad[:layout.batch, :layout.features] = x
    pieces = {}
    for node, segs in layout.segments.items():
        words = []
        for seg in segs:
            rows = xpad[seg.block * n:(seg.block + 1) * n]     # (N, features): batch x features
            for w in range(seg.k0, seg.k1):
                words.append(spec.pack_vectors(layout.cfg, rows[:, vpw * w:vpw * w + vpw].T))
        pieces[node] = (segs[0].addr, words)
    return pieces


def load_activation(tile_program: TileProgram, layout: ActivationLayout, x) -> None:
    """Add the host loads that put `x` on the tile in `layout` (an input of the program): one
    per segment, each the feed the program expects (`KernelBuilder`) or a load before the start."""
    for node, (addr, words) in pack_activation(layout, x).items():
        for seg in layout.segments[node]:
            k = seg.addr - addr
            tile_program.load(node, seg.addr, words[k:k + seg.words])


def _reads(result) -> dict:
    return result.reads if hasattr(result, "reads") else result


def unpack_activation(layout: ActivationLayout, result) -> np.ndarray:
    """The [batch, features] activation from a run's read-back (a `RunResult`, or its `reads`
    dict): int8 values, or BF16 bit patterns (uint16) for a bf16 layout;
    `KernelBuilder.read(layout)` must have asked for it; a streamed layout's words come from
    the run's streams (pass the `RunResult` or `FunctionalResult`)."""
    cfg, n = layout.cfg, layout.cfg.mac_dim
    spec = layout.mtype
    vpw = spec.vectors_per_word(cfg)
    nblocks = max(hi for _, hi in layout.blocks)
    out = np.zeros((nblocks * n, vpw * layout.kwords),
                   dtype=np.int8 if layout.dtype == ElemType.INT8 else np.uint16)
    for node, segs in layout.segments.items():
        words = iter(_held_words(layout, node, result))
        for seg in segs:
            for w in range(seg.k0, seg.k1):
                vectors = spec.operand_vectors(cfg, next(words))
                out[seg.block * n:(seg.block + 1) * n, vpw * w:vpw * w + vpw] = vectors.T
    return out[:layout.batch, :layout.features]


def _streamed_words(name: str, result, node, offset: int, size: int) -> list:
    """Words offset .. offset+size-1 of what `node` streamed to the host in the run `result`
    (a `RunResult` or `FunctionalResult`: their reads alone do not hold them)."""
    if not hasattr(result, "streams"):
        raise TypeError(f"{name!r} is streamed to the host: pass the run's result "
                        "(RunResult or FunctionalResult), not its reads")
    words = [w for _, body in result.streams.get(node, []) for w in body]
    if len(words) < offset + size:
        raise ValueError(f"{name!r}: node {node} streamed {len(words)} words, "
                         f"{offset + size} expected")
    return words[offset:offset + size]


def _held_words(layout: ActivationLayout, node, result) -> list:
    """The words node holds of `layout`: read back, or, for a streamed layout, from its stream."""
    if layout.streamed is None:
        return _reads(result)[(node, *layout.region(*node))]
    return _streamed_words(layout.name, result, node, layout.streamed[node],
                           layout.region(*node)[1])


def unpack_gemm(output: GemmOutput, result) -> np.ndarray:
    """The [batch, features] product from a run's read-back (`KernelBuilder.read(out)`), or
    from its streams for a streamed output (`result` a `RunResult` or `FunctionalResult`):
    int32 for int8 operands, float32 (the FP32 accumulators' bits) for bf16."""
    cfg, n = output.cfg, output.cfg.mac_dim
    nb_all = max(hi for _, hi in output.blocks)
    nf_all = max(hi for _, hi in output.feature_blocks)
    ct = np.zeros((nf_all * n, nb_all * n), dtype=np.int32)       # C^T, raw 32-bit lanes
    if output.streamed is not None:
        for node, (offset, tiles) in output.streamed.items():
            words = _streamed_words(output.name, result, node, offset, len(tiles) * n)
            for t, (i, j) in enumerate(tiles):
                ct[i * n:(i + 1) * n, j * n:(j + 1) * n] = [lanes_from_word(wd, n)
                                                            for wd in words[t * n:(t + 1) * n]]
        c = ct.T[:output.batch, :output.features].copy()
        return c.view(np.float32) if output.dtype == ElemType.BF16 else c
    reads = _reads(result)
    for (x, y), base in output.base.items():
        addr, size = output.region(x, y)
        words = reads[((x, y), addr, size)]
        (i0, i1), (j0, j1) = output.feature_blocks[y], output.blocks[x]
        for t, (i, j) in enumerate((i, j) for i in range(i0, i1) for j in range(j0, j1)):
            rows = [lanes_from_word(wd, n) for wd in words[t * n:(t + 1) * n]]
            ct[i * n:(i + 1) * n, j * n:(j + 1) * n] = rows
    c = ct.T[:output.batch, :output.features].copy()
    return c.view(np.float32) if output.dtype == ElemType.BF16 else c


# -- integer references ----------------------------------------------------------------------

def _wrap32(a: np.ndarray) -> np.ndarray:
    return ((a.astype(np.int64) + 2**31) % 2**32 - 2**31).astype(np.int64)


def random_gemm(cfg: TileConfig, m: int, k: int, n: int, seed: int, dtype=ElemType.INT8):
    """A GEMM of random operands compiled as one layer, its input loaded: (tile program, the
    builder, its `GemmOutput`, x [m, k], w [k, n]); int8 values, or standard normal floats
    that the kernel rounds to BF16. What the GEMM benchmarks and sweeps run
    (`gemm_matches_reference` checks its result)."""
    rng = np.random.default_rng(seed)
    if dtype == ElemType.BF16:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((k, n)).astype(np.float32)
    else:
        x = rng.integers(-128, 128, size=(m, k))
        w = rng.integers(-128, 128, size=(k, n))
    kb = KernelBuilder(cfg)
    layout = kb.input("x", m, k, dtype=dtype)
    out = kb.gemm("gemm", layout, w)
    kb.read(out)
    tp = kb.finish()
    load_activation(tp, layout, x)
    return tp, kb, out, x, w


def gemm_matches_reference(cfg: TileConfig, out: GemmOutput, result, x, w,
                           dtype=ElemType.INT8) -> bool:
    """Whether a run's GEMM output equals its reference bit for bit (`reference_gemm`, or
    `reference_gemm_bf16` for BF16)."""
    got = unpack_gemm(out, result)
    if dtype == ElemType.BF16:
        return np.array_equal(got.view(np.uint32), reference_gemm_bf16(cfg, x, w).view(np.uint32))
    return np.array_equal(got, reference_gemm(x, w))


def reference_gemm(x, w) -> np.ndarray:
    """What `KernelBuilder.gemm` computes for int8: X @ W in int32 (wrapping)."""
    return MATRIX_TYPES[ElemType.INT8].matmul(x, w)


def reference_gemm_bf16(cfg: TileConfig, x, w) -> np.ndarray:
    """What `KernelBuilder.gemm` computes for one bf16 input: X and W rounded to BF16, each C
    element accumulated in FP32 from -0 over the K steps in order, K padded with zeros to whole
    operand words as the tile pads it (`d1tile.numerics.bf16_matmul`; never a BLAS product).
    Returns float32."""
    vpw = MATRIX_TYPES[ElemType.BF16].vectors_per_word(cfg)
    xb = numerics.bf16_bits(np.asarray(x, dtype=np.float32))
    wb = numerics.bf16_bits(np.asarray(w, dtype=np.float32))
    k = xb.shape[1]
    pad = -k % vpw
    xb = np.pad(xb, ((0, 0), (0, pad)))
    wb = np.pad(wb, ((0, pad), (0, 0)))
    return MATRIX_TYPES[ElemType.BF16].matmul(xb, wb).view(np.float32)


def reference_layer_bf16(cfg: TileConfig, x, w, b, relu: bool = False) -> np.ndarray:
    """What `KernelBuilder.bf16_layer` computes, as BF16 bits (uint16) [batch, F]: each
    candidate's C as `reference_gemm_bf16` (FP32, k after k), for pooled weights [P, K, F] the
    candidates' maximum (`numerics.fp32_max`, candidate 0 first), then the bias added
    (`numerics.fp32_add`, b rounded to FP32), `numerics.fp32_relu` with `relu`, and the
    rounding to BF16 (`numerics.bf16_from_f32_rne`)."""
    w = np.asarray(w, dtype=np.float32)
    candidates = w if w.ndim == 3 else w[None]
    acc = None
    for wp in candidates:
        c = reference_gemm_bf16(cfg, x, wp).view(np.uint32)
        acc = c if acc is None else numerics.fp32_max(acc, c)
    acc = numerics.fp32_add(acc, numerics.f32_bits(np.asarray(b, dtype=np.float64))[None, :])
    if relu:
        acc = numerics.fp32_relu(acc)
    return numerics.bf16_from_f32_rne(acc)


def reference_layer(x, w, b, scale: int, shift: int, relu: bool = False) -> np.ndarray:
    """What `KernelBuilder.quantised_layer` computes: requantize(X @ W + b) with the tile's
    int32 wrap-around and the vector unit's own rounding (`d1tile.sim.vector.requantize`); for
    pooled weights [P, K, F], requantize(max_p (X @ W[p]) + b)."""
    w = np.asarray(w, dtype=np.int64)
    matmul = MATRIX_TYPES[ElemType.INT8].matmul
    if w.ndim == 3:
        products = np.max([matmul(x, wp) for wp in w], axis=0)
    else:
        products = matmul(x, w)
    return requantize(_wrap32(products.astype(np.int64) + np.asarray(b, dtype=np.int64)), scale,
                      shift, relu)
