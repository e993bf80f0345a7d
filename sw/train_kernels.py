"""Training on the tile: a multilayer perceptron's whole training step (forward, loss,
backward, all-reduce, SGD update) compiled into one program per node that runs E epochs of
mini-batches without reloading anything (docs/training.md, "On the tile").

    plan = plan_training(tg, cfg, batch=32)                 # refuses what it cannot run
    prog = TrainProgram(plan, params, Sgd(0.1, 0.9), steps_per_epoch=42, epochs=3)
    prog.feed(batches)                                      # [(x, labels or targets)] per step
    result = TileModel(cfg).run(prog.tp)                    # or any device
    out = prog.unpack(result)                               # losses, weights per epoch
    ref = TileTrainReference(plan, params, Sgd(0.1, 0.9))   # the same arithmetic in NumPy

The partition is data-parallel over node groups of one node: each of P = batch / N nodes (a
rectangle at the grid's north-west corner, chained in a snake) holds the whole network and N
samples of the mini-batch (its N lanes) and computes its partial gradients; the partial sums
are added along the chain in a fixed order (node 0 first), chunk after chunk; the chain's end
sends each chunk's sum to the chunk's owner, which updates it and multicasts the new BF16
forward words to the others. The tile's layout of a layer (K inputs, F outputs, N = mac_dim):
the bias is the weight row of a constant-1 input feature, so each layer is one matrix W_aug of
kp = roundup(K, N) + N rows and fp = roundup(F, N) columns, held as FP32 master weights (or, in
the bf16-sr scheme, as BF16 weights only), FP32 velocity and FP32 gradient in the *row*
layout (per output block i: word k = W_aug[k, block i], the block's N outputs in the lanes).
From them each step derives the BF16 operands: the forward words (FCVT, two rows k per word)
and, for the backward pass, the columns (each N x N tile transposed through the matrix unit:
MATMUL by the identity, exact). The cross-entropy's softmax runs on the host
(`d1tile.hostops`); the mse on the vector unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from d1tile import numerics
from d1tile.dtypes import ElemType, MATRIX_TYPES
from d1tile.formats import word_from_lanes, lanes_from_word
from d1tile.hostops import logits_from_words, softmax_xent_f32
from d1tile.isa import FVecOp
from d1tile.params import TileConfig
from d1tile.sw.errors import CompileError
from d1tile.sw.asm import Program
from d1tile.sw.program import TileProgram
from d1tile.sw.reroll import reroll


__all__ = ["TrainPlan", "DenseLayer", "plan_training", "TrainProgram", "TileTrainReference",
           "update_chunks", "sr_seed",
           "CHAIN", "TOTAL", "WEIGHTS", "HOST"]

CHAIN = 0           # sync counter: a partial-sum chunk from the previous node of the chain
TOTAL = 1           # sync counter: a chunk's sum, from the chain's end to the chunk's owner
WEIGHTS = 2         # sync counter: a chunk of updated forward weights from its owner
ACT = 3             # sync counter: the activations from the previous stage (two SENDs)
DZ = 4              # sync counter: the output's gradient from the next stage
FREE = 5            # sync counter: the next stage has read its input (it may take more)
LOSS = 30           # sync counter: the logits' gradient, from the host (cross-entropy)
HOST = 31           # sync counter: the host's per-step feed (a mini-batch)
FVEC_MAX = 127      # words per FVEC (its n field)
FCVT_MAX = 255      # elements per FCVT (its n field)
LOSS_TAG = 1        # the destination address of the loss words streamed to the host
FENCE_TAG = 2       # ... of the word sent ahead of the step's token (module docstring)
LOGITS_TAG = 3      # ... of the logits sent to the host for the cross-entropy (`d1tile.hostops`)


def _roundup(v: int, n: int) -> int:
    return -(-v // n) * n


@dataclass(frozen=True)
class DenseLayer:
    """One gemm of the network in the tile's form (module docstring)."""
    name: str
    weight: str                 # the parameter names
    bias: str | None
    k: int                      # inputs and outputs as the graph has them
    f: int
    relu: bool
    kpad: int                   # roundup(K, N): where the constant-1 input sits
    kp: int                     # kpad + N: rows of W_aug
    fp: int                     # roundup(F, N): columns of W_aug
    n: int                      # mac_dim


@dataclass
class TrainPlan:
    """What `plan_training` decided: the layers, the stages (contiguous groups of layers, one
    per grid row when there are several), the nodes of each stage's chain, and the rectangle
    the chain covers."""
    cfg: TileConfig
    tg: object                  # the TrainingGraph
    layers: list
    batch: int
    chains: list                # per stage: its nodes, chain order (node 0 first)
    rect: tuple                 # (columns, rows) of each stage's rectangle
    stages: list                # per stage: (first layer, last layer + 1)

    @property
    def n(self) -> int:
        return self.cfg.mac_dim

    @property
    def nodes(self) -> list:
        """The first stage's chain (the whole chain with one stage)."""
        return self.chains[0]

    @property
    def all_nodes(self) -> list:
        return [node for chain in self.chains for node in chain]

    @property
    def p(self) -> int:
        """Nodes per stage: the data-parallel replicas, N samples each."""
        return len(self.chains[0])

    @property
    def classes(self) -> int:
        return self.layers[-1].f

    def layer_words(self, li: int) -> int:
        layer = self.layers[li]
        return layer.kp * layer.fp // self.n

    def stage_words(self, st: int) -> int:
        """FP32 words of a stage's masters (and its velocity and gradients)."""
        l0, l1 = self.stages[st]
        return sum(self.layer_words(li) for li in range(l0, l1))

    @property
    def grad_words(self) -> int:
        return sum(self.layer_words(li) for li in range(len(self.layers)))

    def describe(self) -> str:
        groups = ", ".join("+".join(self.layers[li].name for li in range(l0, l1))
                           for l0, l1 in self.stages)
        if len(self.stages) == 1:
            return (f"data-parallel: {self.p} nodes x {self.n} samples, each the whole network")
        return (f"data-parallel over {self.p} columns x {self.n} samples, layers over "
                f"{len(self.stages)} rows ({groups})")


def _dense_chain(tg) -> list:
    """The network as a chain of gemm layers, each with or without a ReLU after it; anything
    else refused, one line naming the node."""
    g = tg.graph
    layers, pending = [], None
    for node in g.nodes:
        if node.op == "gemm":
            if pending is not None and node.inputs[0] != pending:
                raise CompileError(f"node '{node.name}' (gemm): training on the tile runs a chain "
                                   "of gemm layers, each reading the one before (an MLP)")
            if len(node.inputs) < 3 or node.inputs[2] not in tg.params:
                raise CompileError(f"node '{node.name}' (gemm): training on the tile needs a "
                                   "trained bias on every gemm")
            w = g.initializers[node.inputs[1]]
            layers.append([node.name, node.inputs[1], node.inputs[2], int(w.shape[0]),
                           int(w.shape[1]), False])
            pending = node.output
        elif node.op == "relu" and layers and node.inputs[0] == pending and not layers[-1][5]:
            layers[-1][5] = True
            pending = node.output
        elif node.op in ("flatten", "reshape") and not layers and len(g.shape(node.output)) == 2:
            pending = node.output
        else:
            raise CompileError(f"node '{node.name}' ({node.op}): training on the tile runs "
                               "chains of gemm layers with optional ReLUs (MLPs) so far; "
                               "convolutions, pools and adds train in the NumPy references only")
    if not layers:
        raise CompileError("training on the tile: the network has no gemm layer")
    if layers[-1][5]:
        raise CompileError(f"node '{layers[-1][0]}' (gemm): the last layer's output (the logits) "
                           "must not go through a ReLU")
    return layers


def split_layers(words: list, stages: int) -> list:
    """Contiguous groups of layers, `stages` of them, with the largest group's parameter words
    as small as it can be (layers in order; a first-fit search over the bound)."""
    if stages == 1:
        return [(0, len(words))]
    best = None
    from itertools import combinations
    for cuts in combinations(range(1, len(words)), stages - 1):
        bounds = (0, *cuts, len(words))
        worst = max(sum(words[a:b]) for a, b in zip(bounds, bounds[1:]))
        if best is None or worst < best[0]:
            best = (worst, list(zip(bounds, bounds[1:])))
    return best[1]


def plan_training(tg, cfg: TileConfig, batch: int, stages: int = 1) -> TrainPlan:
    """The tile's training layout for `tg` (a `TrainingGraph` of an MLP) and mini-batches of
    `batch` samples: P = batch / N nodes per stage, N samples each. One stage: every node holds
    the whole network, the P nodes a rectangle at the grid's north-west corner chained in a
    snake. S stages (model-parallel): the layers in S contiguous groups, stage s on grid row s,
    its P nodes in columns 0..P-1; activations go down a column, gradients up. Refuses, one
    line each, what it cannot run: another network, a batch that is not a multiple of N or
    does not fit the grid."""
    n = cfg.mac_dim
    if tg.loss not in ("mse", "cross-entropy"):
        raise CompileError(f"loss {tg.loss!r}: the tile trains with mse or cross-entropy")
    if tg.loss == "mse" and tg.classes > FVEC_MAX:
        raise CompileError(f"{tg.classes} outputs: the tile's mse loss sums at most {FVEC_MAX} "
                           "per sample (one FSUM)")
    if n < 2:
        raise CompileError("training on the tile needs mac_dim >= 2 (BF16 operands pair two "
                           "k-steps per word)")
    chain = _dense_chain(tg)
    if batch <= 0 or batch % n:
        raise CompileError(f"batch {batch}: training on the tile takes mini-batches of a multiple "
                           f"of mac_dim = {n} samples (N per node)")
    layers = []
    for i, (name, w, b, k, f, relu) in enumerate(chain):
        if i and k != chain[i - 1][4]:
            raise CompileError(f"node '{name}' (gemm): {k} inputs, the layer before has "
                               f"{chain[i - 1][4]} outputs")
        kin = layers[-1].fp if layers else k            # padded outputs feed the next layer
        kpad = _roundup(kin, n)
        layers.append(DenseLayer(name, w, b, k, f, relu, kpad, kpad + n, _roundup(f, n), n))
    p = batch // n
    if not 1 <= stages <= len(layers):
        raise CompileError(f"{stages} stages: give 1..{len(layers)} (the network's layers)")
    if stages == 1:
        cols = min(p, cfg.cols)
        rows = -(-p // cols)
        if rows * cols != p or rows > cfg.rows:
            raise CompileError(f"batch {batch}: {p} nodes of {n} samples do not make a rectangle "
                               f"of the {cfg.rows}x{cfg.cols} grid (up to {cfg.cols} nodes, or a "
                               f"multiple of {cfg.cols} up to {cfg.rows * cfg.cols}: batch <= "
                               f"{cfg.rows * cfg.cols * n})")
        nodes = []
        for y in range(rows):
            xs = range(cols) if y % 2 == 0 else range(cols - 1, -1, -1)
            nodes.extend((x, y) for x in xs)
        return TrainPlan(cfg, tg, layers, batch, [nodes], (cols, rows), [(0, len(layers))])
    if p > cfg.cols or stages > cfg.rows:
        raise CompileError(f"batch {batch} in {stages} stages: {p} nodes of {n} samples per row "
                           f"and {stages} rows do not fit the {cfg.rows}x{cfg.cols} grid")
    words = [layer.kp * layer.fp // n for layer in layers]
    groups = split_layers(words, stages)
    chains = [[(x, st) for x in range(p)] for st in range(stages)]
    return TrainPlan(cfg, tg, layers, batch, chains, (p, 1), groups)


# -- the parameters in the tile's form ---------------------------------------------------------

def augmented(layer: DenseLayer, w, b) -> np.ndarray:
    """W_aug [kp, fp] as float32: W in rows 0..K-1, the bias in row kpad, zeros elsewhere."""
    out = np.zeros((layer.kp, layer.fp), dtype=np.float32)
    out[:layer.k, :layer.f] = w
    out[layer.kpad, :layer.f] = b
    return out


def from_augmented(layer: DenseLayer, wa) -> tuple:
    """(W [K, F], b [F]) back from W_aug."""
    wa = np.asarray(wa)
    return wa[:layer.k, :layer.f], wa[layer.kpad, :layer.f]


def _row_layout_words(layer: DenseLayer, bits: np.ndarray) -> list[int]:
    """FP32 bits [kp, fp] in the row layout: per output block i, word k = W[k, block i]."""
    n = layer.n
    return [word_from_lanes(bits[k, i * n:(i + 1) * n])
            for i in range(layer.fp // n) for k in range(layer.kp)]


def _from_row_layout(layer: DenseLayer, words) -> np.ndarray:
    n = layer.n
    out = np.zeros((layer.kp, layer.fp), dtype=np.uint32)
    it = iter(words)
    for i in range(layer.fp // n):
        for k in range(layer.kp):
            out[k, i * n:(i + 1) * n] = lanes_from_word(next(it), n).astype(np.uint32)
    return out


# -- the program ---------------------------------------------------------------------------------

class _Sram:
    """Every node of the chain has the same map. Regions go into a preferred bank when they
    fit (the update's FAXPYs and the chain's FADDs read two streams: in two banks they take
    one cycle per word, in one bank two), else wherever there is room."""

    def __init__(self, cfg: TileConfig, banked: bool = True):
        """`banked` False: one bank as large as the SRAM (the regions one after another, no
        preference kept: what `_place` falls back to when the banks do not hold them)."""
        self.cfg, self.regions = cfg, []
        banks = cfg.sram_banks if banked else 1
        size = cfg.sram_words // banks
        self.free = [[b * size, (b + 1) * size] for b in range(banks)]
        self.top = 0                                  # the highest word used + 1

    @property
    def full(self) -> bool:
        return self.top > self.cfg.sram_words

    def alloc(self, name: str, words: int, bank: int = 0) -> int:
        words = max(0, int(words))
        order = [bank % len(self.free)] + [b for b in range(len(self.free)) if b != bank]
        for b in order:
            lo, hi = self.free[b]
            if hi - lo >= words:
                self.free[b][0] = lo + words
                break
        else:       # fits no bank: counted beyond the SRAM, so that `check` refuses the plan
            lo = max(self.top, self.cfg.sram_words)
        self.top = max(self.top, lo + words)
        self.regions.append((name, lo, words))
        return lo

    def check(self, plan: TrainPlan) -> None:
        have = self.cfg.sram_words
        if self.top > have:
            need = sum(words for _, _, words in self.regions)
            big = sorted(self.regions, key=lambda r: -r[2])[:4]
            what = ", ".join(f"{name} {words * self.cfg.word_bytes / 1024:.1f} KiB"
                             for name, _, words in big)
            raise CompileError(
                f"training {plan.tg.graph.name!r} needs {need * self.cfg.word_bytes / 1024:.1f} KiB "
                f"of SRAM per node in {self.cfg.sram_banks} banks (largest: {what}), the node has "
                f"{self.cfg.sram_kib} KiB: use a preset with more SRAM (--preset train) or a "
                "smaller network")


@dataclass
class _Regions:
    """One stage's SRAM map (the same on every node of the stage). Per-layer regions are dicts
    keyed by the layer's index in the network."""
    feed: int = 0
    feed_words: int = 0
    xb: dict = field(default_factory=dict)      # a layer's input, batch in the lanes (BF16)
    xt: dict = field(default_factory=dict)      # ... features in the lanes (per block N/2 words)
    yb: dict = field(default_factory=dict)      # a hidden layer's FP32 output, batch in lanes
    yt: dict = field(default_factory=dict)      # ... features in lanes (N words per block)
    wf: dict = field(default_factory=dict)      # forward BF16 operand words
    wb: dict = field(default_factory=dict)      # backward columns (not the first layer)
    m: int = 0                                  # the stage's masters, velocity, gradients
    v: int = 0
    g: int = 0
    recv: int = 0
    out: int = 0                                # the partial sums this node sends on
    moff: dict = field(default_factory=dict)    # each layer's offset in m / v / g
    tb: int = 0                                 # targets, batch in lanes (FP32, fp words)
    tt: int = 0                                 # targets, features in lanes
    zb: int = 0
    zt: int = 0
    tmp: int = 0                                # BF16 scratch of the logits' round trip
    sq: int = 0
    loss: int = 0
    dzb: dict = field(default_factory=dict)     # a layer's output gradient (BF16, both
    dzt: dict = field(default_factory=dict)     # layouts in one region: dzt = dzb + fp/2)
    dxb: int = 0                                # FP32 scratch of one dX tile, two layouts
    dxt: int = 0
    scratch: int = 0                            # FP32 columns of one k-block (transposition)
    ident: int = 0
    fence: int = 0                              # a word the next stage's fence writes
    sram_words: int = 0
    regions: list = field(default_factory=list)


class TrainProgram:
    """The training program of a `TrainPlan`: `steps_per_epoch` x `epochs` steps of SGD from
    `params` (float32, the graph's parameter names) with optimizer `opt` (`Sgd`). `feed` attaches
    the mini-batches; `tp` is the `TileProgram`; `unpack(result)` the losses and weights."""

    def __init__(self, plan: TrainPlan, params: dict, opt, *, steps_per_epoch: int,
                 epochs: int = 1, weights: str = "fp32", seed: int = 0, chunk: int = 64):
        if weights not in ("fp32", "bf16-sr"):
            raise CompileError(f"weights {weights!r} is not 'fp32' or 'bf16-sr'")
        self.scheme, self.seed = weights, int(seed)
        if steps_per_epoch < 1 or epochs < 1 or steps_per_epoch >= 1 << 16 or epochs >= 1 << 16:
            raise CompileError(f"{epochs} epochs of {steps_per_epoch} steps: each must be 1..65535")
        self.plan, self.cfg, self.opt = plan, plan.cfg, opt
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
        self.chunks = [update_chunks(plan, st, chunk) for st in range(len(plan.stages))]
        self.tp = TileProgram(plan.cfg)
        self.rs = [self._place(st) for st in range(len(plan.stages))]
        self.r = self.rs[0]
        self.sram_words = max(r.sram_words for r in self.rs)
        self.regions = self.rs[0].regions
        self.phase_pcs: dict = {}       # phase -> the pc of its first instruction on node 0
        self.stage_phase_pcs: dict = {}  # stage -> the same on the stage's first node
        self._emit()
        self._load(params)
        self._fed = False

    # -- SRAM ------------------------------------------------------------------------------------

    def _place(self, st: int) -> _Regions:
        """The stage's regions, each in the bank that keeps the streams read together apart;
        when the banks cannot hold them so, one after another (conflicts cost cycles, not
        correctness)."""
        r = self._place_in(st, banked=True)
        return r if r is not None else self._place_in(st, banked=False)

    def _place_in(self, st: int, banked: bool) -> _Regions | None:
        plan, n = self.plan, self.plan.n
        l0, l1 = plan.stages[st]
        nl = len(plan.layers)
        first_stage, last_stage = st == 0, st == len(plan.stages) - 1
        s, r = _Sram(self.cfg, banked), _Regions()
        first, last = plan.layers[l0], plan.layers[-1]
        mse = plan.tg.loss == "mse"
        # what the host feeds every step: the input on the first stage, mse targets on the last
        r.xb[l0] = s.alloc("input (batch in lanes)", first.kp // 2, bank=1)
        r.xt[l0] = s.alloc("input (features in lanes)", first.kp // 2, bank=1)
        r.tb = s.alloc("targets (batch in lanes)", last.fp if mse and last_stage else 0, bank=1)
        r.tt = s.alloc("targets (features in lanes)", last.fp if mse and last_stage else 0, bank=1)
        r.feed = r.xb[l0] if first_stage else r.tb
        x_words = first.kp if first_stage else 0
        t_words = 2 * last.fp if mse and last_stage else 0
        r.feed_words = x_words + t_words
        total = plan.stage_words(st)
        r.m = s.alloc("master weights", total, bank=1)
        r.v = s.alloc("velocity", total, bank=2) if self.opt.momentum else 0
        r.g = s.alloc("gradients", total, bank=3)
        r.recv = s.alloc("received partial sums", total, bank=2) if plan.p > 1 else 0
        r.out = s.alloc("partial sums to send", total, bank=0) if plan.p > 1 else 0
        off = 0
        for li in range(l0, l1):
            r.moff[li] = off
            off += plan.layer_words(li)
        for li in range(l0, l1):        # one region: the masters convert chunk by chunk
            layer = plan.layers[li]
            r.wf[li] = s.alloc(f"{layer.name} forward weights", layer.kp * layer.fp // (2 * n),
                               bank=0)
        for li in range(l0, l1):
            layer = plan.layers[li]
            if li:
                r.wb[li] = s.alloc(f"{layer.name} backward weights",
                                   layer.kpad * layer.fp // (2 * n), bank=0)
        if l0:      # the masks of the previous stage's output, from the received activations
            prev = plan.layers[l0 - 1]
            r.yb[l0 - 1] = s.alloc(f"{prev.name} output (FP32)", prev.fp, bank=2)
            r.yt[l0 - 1] = s.alloc(f"{prev.name} output (FP32, features in lanes)", prev.fp,
                                   bank=2)
            # dz of the previous stage's last layer, computed here and sent back up
            r.dzb[l0 - 1] = s.alloc(f"{prev.name} output gradient (two layouts)", prev.fp,
                                    bank=1)
            r.dzt[l0 - 1] = r.dzb[l0 - 1] + prev.fp // 2
        for li in range(l0, l1):
            layer = plan.layers[li]
            if li + 1 < nl:
                nxt = plan.layers[li + 1]
                r.yb[li] = s.alloc(f"{layer.name} output (FP32)", layer.fp, bank=2)
                r.yt[li] = s.alloc(f"{layer.name} output (FP32, features in lanes)", layer.fp,
                                   bank=2)
                r.xb[li + 1] = s.alloc(f"{nxt.name} input", nxt.kp // 2, bank=1)
                r.xt[li + 1] = s.alloc(f"{nxt.name} input (features in lanes)", nxt.kp // 2,
                                       bank=1)
            # both layouts in one region (the host or the next stage writes them at once)
            r.dzb[li] = s.alloc(f"{layer.name} output gradient (two layouts)", layer.fp, bank=1)
            r.dzt[li] = r.dzb[li] + layer.fp // 2
        if last_stage:
            r.zb = s.alloc("logits (FP32)", last.fp, bank=2)
            r.zt = s.alloc("logits (FP32, features in lanes)", last.fp if mse else 0, bank=2)
            r.tmp = s.alloc("logits (BF16)", last.fp // 2, bank=3)
            r.sq = s.alloc("squared errors", last.fp if mse else 0, bank=3)
            r.loss = s.alloc("loss", 1 if mse else 0, bank=3)
        r.dxb = s.alloc("dX tile", n, bank=2)
        r.dxt = s.alloc("dX tile (features in lanes)", n, bank=2)
        r.scratch = s.alloc("transposed columns",
                            max(plan.layers[li].fp for li in range(l0, l1)), bank=2)
        r.ident = s.alloc("identity", n // 2, bank=1)
        r.fence = s.alloc("fence word", 1, bank=3)
        if banked and s.full:
            return None
        s.check(plan)
        if first_stage:
            ends = [r.xb[l0], r.xt[l0], r.tb, r.tt, r.xb[l0] + r.feed_words]
            sizes = (first.kp // 2, first.kp // 2, *(2 * [t_words // 2]))
            if any(b - a != size for a, b, size in zip(ends, ends[1:], sizes)):
                raise CompileError(f"training {plan.tg.graph.name!r}: the mini-batch's "
                                   f"{r.feed_words} words do not fit one SRAM bank")
        elif r.tt != r.tb + t_words // 2:
            raise CompileError(f"training {plan.tg.graph.name!r}: the targets' {t_words} words "
                               "do not fit one SRAM bank")
        if any(r.wf[li + 1] != r.wf[li] + plan.layer_words(li) // 2 for li in range(l0, l1 - 1)):
            raise CompileError(f"training {plan.tg.graph.name!r}: the forward weights "
                               f"({total // 2} words) do not fit one SRAM bank")
        r.sram_words = sum(words for _, _, words in s.regions)    # in use (over the banks)
        r.regions = s.regions
        return r

    # -- code --------------------------------------------------------------------------------------

    def _emit(self) -> None:
        plan = self.plan
        for st, chain in enumerate(plan.chains):
            for index, node in enumerate(chain):
                body = Program(self.cfg, max_words=1 << 20)
                phases = self._step(body, st, index)
                words = body.words
                # each phase rolled alone, so that its first instruction is known
                rolled, starts = [], {}
                for name, (lo, hi) in phases.items():
                    starts[name] = len(rolled)
                    rolled += reroll(words[lo:hi], depth=2)
                prologue = Program(self.cfg, max_words=1 << 20)
                if self.scheme == "bf16-sr":            # this node's lanes' generators
                    prologue.seed(sr_seed(self.seed, st * plan.p + index))
                if st:          # the previous stage may send the first activations
                    prologue.send(self.rs[st].fence, 1, (node[0], node[1] - 1),
                                  self.rs[st - 1].fence, FREE)
                self._transposes(prologue, st, forward=True)
                prologue = reroll(prologue.words)
                p = self.tp.node(*node)
                p.max_words = 1 << 20           # checked against the instruction memory below
                for w in prologue:
                    p.word(w)
                if index == len(chain) - 1:     # phases are timed on the chain's last node
                    base = len(p) + 2                       # after the two LOOPs
                    self.stage_phase_pcs[st] = {name: base + pc for name, pc in starts.items()}
                if st == 0 and index == len(chain) - 1:
                    self.phase_pcs = self.stage_phase_pcs[0]
                    self.straight_words = len(words)
                r = self.rs[st]
                with p.loop(self.epochs):
                    with p.loop(self.steps_per_epoch):
                        for w in rolled:
                            p.word(w)
                        p.nop()             # the step's loop ends on an instruction of its own
                    # the masters after each epoch, to the host: each owner its chunks (the
                    # BF16 forward words themselves in the bf16-sr scheme)
                    l0 = plan.stages[st][0]
                    for lo, size in self.owned(st, index):
                        if self.scheme == "fp32":
                            p.send(r.m + lo, size, (self.cfg.cols, node[1]), lo)
                        else:
                            p.send(r.wf[l0] + lo // 2, size // 2, (self.cfg.cols, node[1]), lo)
                    p.nop()
                p.halt()
                self.program_words = max(getattr(self, "program_words", 0), len(p))
                if len(p) > self.cfg.imem_words:
                    raise CompileError(
                        f"training {plan.tg.graph.name!r} needs {len(p)} instructions on node "
                        f"{node} (one step: {len(words)} straight-line, {len(rolled)} rolled into "
                        f"loops; {len(prologue)} before the loops), its instruction memory holds "
                        f"{self.cfg.imem_words}")

    def _to_others(self, p, st: int, index: int, addr: int, n: int, counter: int) -> None:
        """Multicast words addr..addr+n-1 to the same words of every other node of the stage's
        chain (its rectangle less this node: the rows above and below as spanned multicasts,
        the parts of this node's row left and right of it as row multicasts)."""
        plan = self.plan
        cols, rows = plan.rect
        x, y = plan.chains[st][index]
        top = plan.chains[st][0][1]                 # the rectangle's first row
        for first, last in ((top, y - 1), (y + 1, top + rows - 1)):
            if first <= last:
                p.shape(1, span=(first, last))
                p.mcast(addr, n, addr, row=(0, cols - 1), counter=counter, shaped=True)
        for first, last in ((0, x - 1), (x + 1, cols - 1)):
            if first <= last:
                p.mcast(addr, n, addr, row=(first, last), counter=counter)

    def _transposes(self, p, st: int, forward: bool = False) -> None:
        """The BF16 operands from the FP32 masters: (with `forward`) the forward words, FCVT
        of the masters; the backward columns, each N x N tile of the forward words times the
        identity (exact), read out by rows and converted."""
        plan, r, n = self.plan, self.rs[st], self.plan.n
        l0, l1 = plan.stages[st]
        half = n // 2
        if forward:
            self._fcvt(p, ElemType.FP32, ElemType.BF16, r.wf[l0], r.m, plan.stage_words(st))
        for li in range(max(l0, 1), l1):
            layer = plan.layers[li]
            kwords = layer.kp // 2
            for a in range(layer.kpad // n):
                tiles = []
                for i in range(layer.fp // n):
                    def epi(bank, i=i):
                        p.mread(r.scratch + i * n, bank=bank)
                    tiles.append((r.wf[li] + i * kwords + a * half, r.ident, half, epi))
                self._tiles(p, tiles)
                self._fcvt(p, ElemType.FP32, ElemType.BF16, r.wb[li] + a * layer.fp // 2,
                           r.scratch, layer.fp)

    def _fcvt(self, p, stype, dtype, dst: int, a: int, rows: int,
              stochastic: bool = False) -> None:
        """FCVT of `rows` vectors of N (FP32 words; a BF16 word holds two), in chunks."""
        step = FCVT_MAX - FCVT_MAX % 2
        for lo in range(0, rows, step):
            p.fcvt(stype, dtype, dst + (lo // 2 if dtype == ElemType.BF16 else lo),
                   a + (lo // 2 if stype == ElemType.BF16 else lo), min(step, rows - lo),
                   stochastic=stochastic)

    def _fvec(self, p, op, dst: int, a: int, b: int, words: int, bfix: bool = False) -> None:
        for lo in range(0, words, FVEC_MAX):
            p.fvec(op, dst + lo, a + lo, b if bfix else b + lo, min(FVEC_MAX, words - lo), bfix)

    def _tiles(self, p, tiles) -> None:
        """MATMULs back to back on alternating accumulator banks, each tile's readout (its
        `epilogue(bank)`) issued after the next tile's MATMUL."""
        pending = None
        for t, (a, b, kw, epilogue) in enumerate(tiles):
            p.matmul(a, b, kw, clear=True, dtype=ElemType.BF16, bank=t % 2)
            if pending is not None:
                pending[0](pending[1])
            pending = (epilogue, t % 2)
        if pending is not None:
            pending[0](pending[1])

    def _step(self, p, st: int, index: int) -> dict:
        """One training step of stage `st` on its chain node `index`, straight-line. Returns
        the phases' pc ranges."""
        plan, r, n, cfg = self.plan, self.rs[st], self.plan.n, self.cfg
        layers, last = plan.layers, plan.layers[-1]
        l0, l1 = plan.stages[st]
        first_stage, last_stage = st == 0, st == len(plan.stages) - 1
        node = plan.chains[st][index]
        host = (cfg.cols, node[1])
        up = (node[0], node[1] - 1)                 # the previous stage's node, same column
        down = (node[0], node[1] + 1)
        half = n // 2
        mse = plan.tg.loss == "mse"
        phases, start = {}, 0

        def mark(name):
            nonlocal start
            if len(p) > start:          # an empty phase (no all-reduce on one node) is left out
                phases[name] = (start, len(p))
            start = len(p)

        if r.feed_words:
            p.wait(HOST, 1)
        if not first_stage:     # the activations from the previous stage, and their masks
            p.wait(ACT, 2)
            prev = layers[l0 - 1]
            if prev.relu:
                self._fcvt(p, ElemType.BF16, ElemType.FP32, r.yb[l0 - 1], r.xb[l0], prev.fp)
                self._fcvt(p, ElemType.BF16, ElemType.FP32, r.yt[l0 - 1], r.xt[l0], prev.fp)
        mark("load")
        # forward
        for li in range(l0, l1):
            layer = layers[li]
            kwords = layer.kp // 2
            hidden = li + 1 < len(layers)
            tiles = []
            for i in range(layer.fp // n):
                def epi(bank, li=li, i=i, hidden=hidden):
                    if hidden:
                        yb, yt = r.yb[li] + i * n, r.yt[li] + i * n
                        p.mread(yb, bank=bank)
                        p.mread(yt, bank=bank, transpose=True)
                        if layers[li].relu:
                            p.fvec(FVecOp.FRELU, yb, yb, yb, n)
                            p.fvec(FVecOp.FRELU, yt, yt, yt, n)
                        p.fcvt(ElemType.FP32, ElemType.BF16, r.xb[li + 1] + i * half, yb, n)
                        p.fcvt(ElemType.FP32, ElemType.BF16, r.xt[li + 1] + i * half, yt, n)
                    else:
                        p.mread(r.zb + i * n, bank=bank)
                        if mse:
                            p.mread(r.zt + i * n, bank=bank, transpose=True)
                tiles.append((r.wf[li] + i * kwords, r.xb[li], kwords, epi))
            self._tiles(p, tiles)
        if not last_stage:      # the output down the column, once the next stage is done
            out = layers[l1 - 1]            # with the previous one (its fence)
            nxt = self.rs[st + 1]
            p.wait(FREE, 1)
            p.send(r.xb[l1], out.fp // 2, down, nxt.xb[l1], ACT)
            p.send(r.xt[l1], out.fp // 2, down, nxt.xt[l1], ACT)
        mark("forward")
        if last_stage:
            f, fp = last.f, last.fp
            if not mse:
                # the logits in BF16 to the host, which writes their gradient back (`hostops`)
                self._fcvt(p, ElemType.FP32, ElemType.BF16, r.tmp, r.zb, fp)
                self._fcvt(p, ElemType.BF16, ElemType.FP32, r.zb, r.tmp, fp)
                p.send(r.zb, f, host, LOGITS_TAG)
                p.wait(LOSS, 1)
            else:
                # the mse loss and its gradient, in both layouts
                q = numerics.f32_bits(np.float64(2.0 / (plan.batch * f)))
                for z, t, dz in ((r.zb, r.tb, r.dzb[l1 - 1]), (r.zt, r.tt, r.dzt[l1 - 1])):
                    self._fcvt(p, ElemType.FP32, ElemType.BF16, r.tmp, z, fp)   # in BF16
                    self._fcvt(p, ElemType.BF16, ElemType.FP32, z, r.tmp, fp)
                    self._fvec(p, FVecOp.FSUB, z, z, t, fp)                     # d = z - t
                    if z == r.zb:
                        self._fvec(p, FVecOp.FMUL, r.sq, z, z, fp)
                        p.fvec(FVecOp.FSUM, r.loss, r.sq, 0, f)                  # per sample
                        p.send(r.loss, 1, host, LOSS_TAG)
                        p.setr("SCALE", int(q))
                    self._fvec(p, FVecOp.FSCALE, z, z, z, fp)                  # dz = d q
                    self._fcvt(p, ElemType.FP32, ElemType.BF16, dz, z, fp)
                if not first_stage:     # the targets are read: the host may feed the next
                    p.send(r.dzt[l1 - 1] + fp // 2 - 1, 1, host, FENCE_TAG)
                    p.send(0, 0, host, 0)
            mark("loss")
        else:
            p.wait(DZ, 1)           # the output's gradient, from the next stage
        # backward
        for li in range(l1 - 1, l0 - 1, -1):
            layer = layers[li]
            fwords = layer.fp // 2
            tiles = []
            if li:
                for a in range(layer.kpad // n):
                    def epi(bank, li=li, a=a):
                        p.mread(r.dxb, bank=bank)
                        p.mread(r.dxt, bank=bank, transpose=True)
                        if layers[li - 1].relu:
                            p.fvec(FVecOp.FMASK, r.dxb, r.dxb, r.yb[li - 1] + a * n, n)
                            p.fvec(FVecOp.FMASK, r.dxt, r.dxt, r.yt[li - 1] + a * n, n)
                        p.fcvt(ElemType.FP32, ElemType.BF16, r.dzb[li - 1] + a * half, r.dxb, n)
                        p.fcvt(ElemType.FP32, ElemType.BF16, r.dzt[li - 1] + a * half, r.dxt, n)
                    tiles.append((r.wb[li] + a * fwords, r.dzb[li], fwords, epi))
                if li == l0:        # the previous stage's gradient: sent as soon as it is here
                    self._tiles(p, tiles)
                    tiles = []
                    prev = layers[li - 1]
                    p.send(r.dzb[li - 1], prev.fp, up, self.rs[st - 1].dzb[li - 1], DZ)
            for i in range(layer.fp // n):
                for a in range(layer.kp // n):
                    def epi(bank, li=li, i=i, a=a, layer=layer):
                        p.mread(r.g + r.moff[li] + i * layer.kp + a * n, bank=bank)
                    tiles.append((r.xt[li] + a * half, r.dzt[li] + i * half, half, epi))
            self._tiles(p, tiles)
        # the input region is free once the stage's last dW tile (reading it) is read out: a
        # one-word SEND of that tile's last word waits for the MREAD; to the host a token
        # follows it, to the previous stage the word itself bumps its counter
        last_g = r.g + r.moff[l0] + plan.layer_words(l0) - 1
        if first_stage:
            p.send(last_g, 1, host, FENCE_TAG)
            p.send(0, 0, host, 0)
        else:
            p.send(last_g, 1, up, self.rs[st - 1].fence, FREE)
        mark("backward")
        count, chunks = plan.p, self.chunks[st]
        # all-reduce, update and forward words, chunk after chunk (docs/training.md): the
        # chain adds the partial sums in node order and its last node sends each chunk's sum to
        # the chunk's owner (chunk c: chain node c mod P), which updates its masters (SGD: g'
        # = w wd + g, v = v m + g', w = v (-lr) + w, each line one FAXPY), converts them to the
        # forward words and multicasts those to every other node of the stage
        opt = self.opt
        chain = plan.chains[st]
        nxt = chain[index + 1] if index + 1 < count else None
        mine = [(c, lo, size) for c, (lo, size) in enumerate(chunks) if c % count == index]
        wf0 = r.wf[l0]

        def reduce(c, lo, size):
            if index:
                p.wait(CHAIN, 1)
                p.fvec(FVecOp.FADD, (r.out if nxt else r.g) + lo, r.recv + lo, r.g + lo, size)
            if nxt is not None:
                p.send((r.out if index else r.g) + lo, size, nxt, r.recv + lo, CHAIN)
            elif c % count != index:
                p.send(r.g + lo, size, chain[c % count], r.g + lo, TOTAL)

        def update(lo, size):
            grad = r.g
            if self.scheme == "bf16-sr":    # the weights are the BF16 words: w as FP32 first
                self._fcvt(p, ElemType.BF16, ElemType.FP32, r.m + lo, wf0 + lo // 2, size)
            if opt.weight_decay:
                p.setr("SCALE", int(numerics.f32_bits(np.float64(opt.weight_decay))))
                p.fvec(FVecOp.FAXPY, r.g + lo, r.m + lo, r.g + lo, size)
            if opt.momentum:
                p.setr("SCALE", int(numerics.f32_bits(np.float64(opt.momentum))))
                p.fvec(FVecOp.FAXPY, r.v + lo, r.v + lo, r.g + lo, size)
                grad = r.v
            p.setr("SCALE", int(numerics.f32_bits(np.float64(-opt.lr))))
            p.fvec(FVecOp.FAXPY, r.m + lo, grad + lo, r.m + lo, size)
            self._fcvt(p, ElemType.FP32, ElemType.BF16, wf0 + lo // 2, r.m + lo, size,
                       stochastic=self.scheme == "bf16-sr")
            self._to_others(p, st, index, wf0 + lo // 2, size // 2, WEIGHTS)

        if count > 1:
            for c, (lo, size) in enumerate(chunks):
                reduce(c, lo, size)
        mark("all-reduce")
        for c, lo, size in mine:
            if index != count - 1:
                p.wait(TOTAL, 1)
            update(lo, size)
        if len(chunks) > len(mine):
            p.wait(WEIGHTS, len(chunks) - len(mine))
        mark("update")
        self._transposes(p, st)
        mark("backward weights")
        return phases

    # -- data --------------------------------------------------------------------------------------

    def _load(self, params: dict) -> None:
        plan, n = self.plan, self.plan.n
        spec = MATRIX_TYPES[ElemType.BF16]
        one = int(numerics.bf16_bits(1.0))
        ident = np.eye(n, dtype=np.int64) * one
        ident_words = [spec.pack_vectors(self.cfg, ident[2 * w:2 * w + 2]) for w in range(n // 2)]
        self.master0 = []
        for layer in plan.layers:
            wa = augmented(layer, params[layer.weight], params[layer.bias])
            self.master0.append(numerics.f32_bits(wa.astype(np.float64)))
        for st, chain in enumerate(plan.chains):
            r = self.rs[st]
            l0, l1 = plan.stages[st]
            m_words = [w for li in range(l0, l1)
                       for w in _row_layout_words(plan.layers[li], self.master0[li])]
            for node in chain:
                self.tp.load(node, r.m, m_words)
                if self.opt.momentum:
                    self.tp.load(node, r.v, [0] * len(m_words))
                self.tp.load(node, r.ident, ident_words)
                for li in range(max(l0, 1), l1):    # the constant-1 input of hidden layers
                    layer = plan.layers[li]
                    xa = np.zeros((n, layer.kp), dtype=np.int64)
                    xa[:, layer.kpad] = one
                    self.tp.load(node, r.xb[li] + layer.kpad // 2,
                                 _batch_words(self.cfg, xa)[layer.kpad // 2:])
                    self.tp.load(node, r.xt[li] + layer.kpad // 2,
                                 _feature_words(self.cfg, xa)[layer.kpad // 2:])
            for index, node in enumerate(chain):
                for lo, size in self.owned(st, index):
                    if self.scheme == "fp32":
                        self.tp.read(node, r.m + lo, size)
                    if self.opt.momentum:
                        self.tp.read(node, r.v + lo, size)
            if self.scheme == "bf16-sr":        # the same BF16 words on every node
                for node in chain:
                    self.tp.read(node, r.wf[l0], plan.stage_words(st) // 2)

    def owned(self, st: int, index: int) -> list:
        """The chunks (offset in the stage's words, words) that chain node `index` of stage
        `st` updates."""
        return [chunk for c, chunk in enumerate(self.chunks[st]) if c % self.plan.p == index]

    def feed(self, batches) -> None:
        """Attach the mini-batches: `steps_per_epoch x epochs` pairs (x [batch, K] float, and
        mse targets [batch, F] float or cross-entropy class labels [batch]), in order; each
        node's share is fed after the token of its previous step (one region, reused): the
        input to the first stage, mse targets to the last; the labels go to the host's
        cross-entropy (`d1tile.hostops`)."""
        plan, n = self.plan, self.plan.n
        batches = list(batches)
        if len(batches) != self.steps_per_epoch * self.epochs:
            raise CompileError(f"{len(batches)} mini-batches for {self.epochs} epochs of "
                               f"{self.steps_per_epoch} steps")
        xent = plan.tg.loss == "cross-entropy"
        one_stage = len(plan.stages) == 1
        self.labels = []
        for s, (x, t) in enumerate(batches):
            xa, tpad = step_operands(plan, x, None if xent else t)
            if xent:
                self.labels.append(np.asarray(t, dtype=np.int64).reshape(plan.batch))
            for index in range(plan.p):
                rows = slice(index * n, (index + 1) * n)
                first, final = plan.chains[0][index], plan.chains[-1][index]
                if one_stage:
                    words = feed_words(plan, xa[rows], None if xent else tpad[rows])
                    self.tp.feed(first, self.rs[0].feed, words, counter=HOST, key=(s,),
                                 gate=(first, s) if s else None)
                    continue
                self.tp.feed(first, self.rs[0].feed, feed_words(plan, xa[rows], None),
                             counter=HOST, key=(s,), gate=(first, s) if s else None)
                if not xent:
                    words = feed_words(plan, None, tpad[rows])
                    self.tp.feed(final, self.rs[-1].feed, words, counter=HOST, key=(s,),
                                 gate=(final, s) if s else None)
        if xent:
            last, r = plan.layers[-1], self.rs[-1]
            self.tp.host_ops = [
                {"kind": "softmax-xent", "node": list(node), "tag": LOGITS_TAG,
                 "dst": r.dzb[len(plan.layers) - 1], "counter": LOSS, "classes": last.f,
                 "rows": last.fp, "inv_batch": int(numerics.f32_bits(xent_inv_batch(plan))),
                 "labels": [[int(v) for v in y[index * n:(index + 1) * n]] for y in self.labels]}
                for index, node in enumerate(plan.chains[-1])]
        self._fed = True

    def unpack(self, result) -> dict:
        """From a run's result: the loss after every step (float32, as the host computes it
        from the last stage's streams), the masters after every epoch (streamed by their
        owners) and at the end, and the final velocity (per layer [kp, fp]: FP32 bits, or the
        BF16 weights' bits in the bf16-sr scheme)."""
        plan, n = self.plan, self.plan.n
        steps = self.steps_per_epoch * self.epochs
        xent = plan.tg.loss == "cross-entropy"
        tag = LOGITS_TAG if xent else LOSS_TAG
        per_node = []
        for node in plan.chains[-1]:
            packets = result.streams.get(node, [])
            words = [body for addr, body in packets if addr == tag and body]
            if len(words) != steps:
                raise RuntimeError(f"node {node} streamed {len(words)} loss packets, not {steps}")
            per_node.append(words)
        losses = []
        for s in range(steps):
            if xent:        # the host's own computation, again, from the streamed logits
                per = [softmax_xent_f32(logits_from_words(self.cfg, per_node[i][s], plan.classes),
                                        self.labels[s][i * n:(i + 1) * n],
                                        xent_inv_batch(plan))[0] for i in range(plan.p)]
                losses.append(xent_loss_value(plan, np.concatenate(per)))
            else:
                words = [lanes_from_word(per_node[i][s][0], n) for i in range(plan.p)]
                losses.append(mse_loss_value(plan, np.concatenate(words).astype(np.uint32)))
        sr = self.scheme == "bf16-sr"
        epochs = [[] for _ in range(self.epochs)]
        final_m, final_v = [], []
        for st, chain in enumerate(plan.chains):
            words = plan.stage_words(st)
            stage_epochs = [[0] * words for _ in range(self.epochs)]
            m, v = [0] * words, [0] * words
            for index, node in enumerate(chain):
                mine = self.owned(st, index)
                sent = [(addr, body) for addr, body in result.streams.get(node, [])
                        if addr not in (LOSS_TAG, FENCE_TAG, LOGITS_TAG) and body]
                if len(sent) != len(mine) * self.epochs:
                    raise RuntimeError(f"node {node} streamed {len(sent)} chunks of weights, "
                                       f"not {len(mine) * self.epochs}")
                for i, (addr, body) in enumerate(sent):
                    at = addr // 2 if sr else addr
                    stage_epochs[i // len(mine)][at:at + len(body)] = body
                for lo, size in mine:
                    if not sr:
                        m[lo:lo + size] = result.reads[(node, self.rs[st].m + lo, size)]
                    if self.opt.momentum:
                        v[lo:lo + size] = result.reads[(node, self.rs[st].v + lo, size)]
            if sr:
                l0 = plan.stages[st][0]
                held = [result.reads[(node, self.rs[st].wf[l0], words // 2)] for node in chain]
                if any(w != held[0] for w in held):
                    raise RuntimeError("the nodes' BF16 weights differ after the run")
                m = held[0]
                stage_epochs = [w[:words // 2] for w in stage_epochs]
            for e in range(self.epochs):
                epochs[e] += stage_epochs[e]
            final_m += m
            final_v += v
        split = self._split_bf16 if sr else self._split
        return {"losses": losses, "epochs": [split(w) for w in epochs],
                "masters": split(final_m), "velocity": self._split(final_v)}

    def phase_cycles(self, issue_trace, stage: int = 0) -> dict:
        """Cycles per phase per step on the last node of a stage's chain (the one that adds
        last: its all-reduce phase spans the chain's whole latency), from the model's issue
        trace (`ModelDevice(cfg, trace=True)`): from the first issue of a phase's first
        instruction to the next phase's (the last phase: to the next step's first, or the
        HALT). Every node has the same step period; waiting for other nodes counts in the
        phase that waits."""
        trace = issue_trace[self.plan.chains[stage][-1]]
        pcs = self.stage_phase_pcs[stage]
        firsts = {pc: name for name, pc in pcs.items()}
        order = list(pcs)
        marks = [(cycle, firsts[pc]) for pc, cycle in trace if pc in firsts]
        end = trace[-1][1]
        out = {name: [] for name in order}
        for i, (cycle, name) in enumerate(marks):
            nxt = marks[i + 1][0] if i + 1 < len(marks) else end
            out[name].append(nxt - cycle)
        return out

    def _split_bf16(self, words) -> list:
        """Forward words (every stage's, in order) -> per layer BF16 bits [kp, fp]."""
        spec = MATRIX_TYPES[ElemType.BF16]
        n = self.plan.n
        out, off = [], 0
        for layer in self.plan.layers:
            bits = np.zeros((layer.kp, layer.fp), dtype=np.uint16)
            for i in range(layer.fp // n):
                for w in range(layer.kp // 2):
                    vec = spec.operand_vectors(self.cfg, words[off])
                    bits[2 * w:2 * w + 2, i * n:(i + 1) * n] = vec
                    off += 1
            out.append(bits)
        return out

    def _split(self, words) -> list:
        """Masters' words (every stage's, in order) -> per layer FP32 bits [kp, fp]."""
        out, off = [], 0
        for li, layer in enumerate(self.plan.layers):
            size = self.plan.layer_words(li)
            out.append(_from_row_layout(layer, words[off:off + size]))
            off += size
        return out


def _batch_words(cfg: TileConfig, xa) -> list[int]:
    """BF16 bits [N samples, kp] -> kp/2 words, batch in lanes (word w: features 2w, 2w+1)."""
    spec = MATRIX_TYPES[ElemType.BF16]
    xa = np.asarray(xa, dtype=np.int64)
    return [spec.pack_vectors(cfg, xa[:, 2 * w:2 * w + 2].T) for w in range(xa.shape[1] // 2)]


def _feature_words(cfg: TileConfig, xa) -> list[int]:
    """BF16 bits [N samples, kp] -> per feature block of N: N/2 words (word w: samples 2w, 2w+1,
    the block's features in the lanes)."""
    spec = MATRIX_TYPES[ElemType.BF16]
    n = cfg.mac_dim
    xa = np.asarray(xa, dtype=np.int64)
    return [spec.pack_vectors(cfg, xa[2 * w:2 * w + 2, a * n:(a + 1) * n])
            for a in range(xa.shape[1] // n) for w in range(n // 2)]


def step_operands(plan: TrainPlan, x, t) -> tuple:
    """One mini-batch as the tile takes it: x augmented (BF16 bits [batch, kp], the 1 at kpad)
    and the mse targets padded (FP32 bits [batch, fp]; None for `t` None)."""
    first, last = plan.layers[0], plan.layers[-1]
    x = np.asarray(x, dtype=np.float64).reshape(plan.batch, -1)
    xa = np.zeros((plan.batch, first.kp), dtype=np.uint16)
    xa[:, :first.k] = numerics.bf16_from_f32_rne(numerics.f32_bits(x))
    xa[:, first.kpad] = numerics.bf16_bits(1.0)
    if t is None:
        return xa, None
    t = np.asarray(t, dtype=np.float64).reshape(plan.batch, -1)
    tpad = np.zeros((plan.batch, last.fp), dtype=np.uint32)
    tpad[:, :last.f] = numerics.f32_bits(t)
    return xa, tpad


def feed_words(plan: TrainPlan, xa, tpad) -> list[int]:
    """One node's feed: its N samples' input in both layouts, then its targets in both (mse;
    `tpad` None: none)."""
    cfg, n = plan.cfg, plan.n
    words = [] if xa is None else _batch_words(cfg, xa) + _feature_words(cfg, xa)
    if tpad is None:
        return words
    words += [word_from_lanes(tpad[:, f]) for f in range(tpad.shape[1])]
    words += [word_from_lanes(tpad[s, i * n:(i + 1) * n])
              for i in range(tpad.shape[1] // n) for s in range(n)]
    return words


def update_chunks(plan: TrainPlan, stage: int = 0, chunk: int = 64) -> list:
    """A stage's all-reduce and update chunks: (offset, words) of its gradients' row layout,
    `chunk` words each (even, 4..126), the last one shorter; chunk c belongs to chain node
    c mod P of the stage."""
    chunk = max(4, min(FVEC_MAX - 1, int(chunk)) // 2 * 2)
    total = plan.stage_words(stage)
    return [(lo, min(chunk, total - lo)) for lo in range(0, total, chunk)]


def sr_seed(seed: int, index: int) -> int:
    """The stochastic-rounding seed (SETR SEED) of node `index` = stage x P + its chain index:
    the run's seed + index."""
    return (int(seed) + int(index)) & 0xFFFF_FFFF


def xent_inv_batch(plan: TrainPlan) -> np.float32:
    """1 / batch in float32 (the cross-entropy's mean)."""
    return np.float32(1.0) / np.float32(plan.batch)


def xent_loss_value(plan: TrainPlan, per_sample) -> np.float32:
    """The mean cross-entropy from the per-sample losses (float32, in chain order): added
    sample after sample in float32, times 1 / batch (the host's arithmetic)."""
    total = np.float32(0)
    for v in np.asarray(per_sample, dtype=np.float32):
        total = np.float32(total + v)
    return np.float32(total * xent_inv_batch(plan))


def mse_loss_value(plan: TrainPlan, per_sample) -> np.float32:
    """The mean squared error from the per-sample sums (FP32 bits [batch], the nodes' lanes in
    chain order): added sample after sample from -0, times 1 / (batch F), as the host does."""
    total = numerics.fp32_sum(np.asarray(per_sample, dtype=np.uint32)[:, None])[0]
    inv = numerics.f32_bits(np.float64(1.0 / (plan.batch * plan.classes)))
    return np.float32(numerics.f32_value(numerics.fp32_mul(total, inv)))


# -- the reference ---------------------------------------------------------------------------------

class TileTrainReference:
    """The tile's training step in NumPy, bit for bit (docs/training.md, "On the tile"):
    the same padded, augmented matrices, the same operations from `d1tile.numerics` in the
    same order (the matrix unit's k-ordered FP32 sums, the transposition through the
    identity, the chain's node order)."""

    def __init__(self, plan: TrainPlan, params: dict, opt, *, weights: str = "fp32",
                 seed: int = 0, chunk: int = 64):
        if weights not in ("fp32", "bf16-sr"):
            raise CompileError(f"weights {weights!r} is not 'fp32' or 'bf16-sr'")
        self.plan, self.opt, self.scheme = plan, opt, weights
        f32 = [numerics.f32_bits(augmented(layer, params[layer.weight],
                                           params[layer.bias]).astype(np.float64))
               for layer in plan.layers]
        # fp32: the FP32 masters; bf16-sr: the BF16 weights (the first from RNE)
        self.master = f32 if weights == "fp32" else [numerics.bf16_from_f32_rne(m) for m in f32]
        self.velocity = [np.zeros_like(m) for m in f32]
        self.chunks = [update_chunks(plan, st, chunk) for st in range(len(plan.stages))]
        self.rng = [numerics.rng_seed_states(sr_seed(seed, i), plan.n)
                    for i in range(len(plan.stages) * plan.p)]
        self.losses: list = []

    def step(self, x, t) -> np.float32:
        plan, n = self.plan, self.plan.n
        layers = plan.layers
        xa, tpad = step_operands(plan, x, None if plan.tg.loss == "cross-entropy" else t)
        one = numerics.bf16_bits(1.0)
        wf = ([numerics.bf16_from_f32_rne(m) for m in self.master] if self.scheme == "fp32"
              else [m.copy() for m in self.master])
        acts, ys = [xa], []
        for li, layer in enumerate(layers):
            z = numerics.bf16_matmul(acts[-1], wf[li])
            if li + 1 < len(layers):
                y = numerics.fp32_relu(z) if layer.relu else z
                ys.append(y)
                nxt = np.zeros((plan.batch, layers[li + 1].kp), dtype=np.uint16)
                nxt[:, :layer.fp] = numerics.bf16_from_f32_rne(y)
                nxt[:, layers[li + 1].kpad] = one
                acts.append(nxt)
        zb = numerics.f32_from_bf16(numerics.bf16_from_f32_rne(z))
        f = layers[-1].f
        if tpad is None:            # cross-entropy on the host, node by node
            per, dz = [], np.zeros_like(zb)
            for i in range(plan.p):
                rows = slice(i * n, (i + 1) * n)
                loss_i, dz[rows, :f] = softmax_xent_f32(zb[rows, :f], np.asarray(t)[rows],
                                                        xent_inv_batch(plan))
                per.append(loss_i)
            loss = xent_loss_value(plan, np.concatenate(per))
        else:
            d = numerics.fp32_sub(zb, tpad)
            sq = numerics.fp32_mul(d, d)
            per_sample = numerics.fp32_sum(sq[:, :f].T)
            loss = mse_loss_value(plan, per_sample)
            q = numerics.f32_bits(np.float64(2.0 / (plan.batch * f)))
            dz = numerics.fp32_mul(d, q)
        grads = [None] * len(layers)
        for li in range(len(layers) - 1, -1, -1):
            layer = layers[li]
            dzb = numerics.bf16_from_f32_rne(dz)
            if li:
                cols = []
                for a in range(layer.kpad // n):
                    tile = numerics.bf16_matmul(wf[li][a * n:(a + 1) * n].T,
                                                np.eye(n, dtype=np.uint16) * one)
                    cols.append(numerics.bf16_from_f32_rne(tile))
                wt = np.concatenate(cols, axis=1)           # [fp, kpad]
                dx = numerics.bf16_matmul(dzb, wt)
                prev = layers[li - 1]
                dz_prev = numerics.fp32_mask(dx, ys[li - 1]) if prev.relu else dx
            total = None
            for i in range(plan.p):
                rows = slice(i * n, (i + 1) * n)
                part = numerics.bf16_matmul(acts[li][rows].T, dzb[rows])
                total = part if total is None else numerics.fp32_add(part, total)
            grads[li] = total
            if li:
                dz = dz_prev
        self._update(grads)
        self.losses.append(loss)
        return loss

    def _update(self, grads) -> None:
        opt = self.opt
        lr, mom, wd = (numerics.f32_bits(np.float64(v)) for v in (-opt.lr, opt.momentum,
                                                                  opt.weight_decay))
        new = []
        for li, g in enumerate(grads):
            w = self.master[li] if self.scheme == "fp32" else \
                numerics.f32_from_bf16(self.master[li])
            if opt.weight_decay:
                g = numerics.fp32_axpy(w, wd, g)
            if opt.momentum:
                g = numerics.fp32_axpy(self.velocity[li], mom, g)
                self.velocity[li] = g
            new.append(numerics.fp32_axpy(g, lr, w))
        if self.scheme == "fp32":
            self.master = new
            return
        # bf16-sr: each owner rounds its chunks' rows in order, one draw of its lanes' generators
        # per row (an FCVT with sr consumes one per FP32 word)
        plan, n = self.plan, self.plan.n
        for st, (l0, l1) in enumerate(plan.stages):
            rows = [(li, i, k) for li in range(l0, l1)
                    for i in range(plan.layers[li].fp // n) for k in range(plan.layers[li].kp)]
            for c, (lo, size) in enumerate(self.chunks[st]):
                owner = st * plan.p + c % plan.p
                for r in range(lo, lo + size):
                    li, i, k = rows[r]
                    self.rng[owner], rand = numerics.rng_next(self.rng[owner])
                    self.master[li][k, i * n:(i + 1) * n] = numerics.bf16_from_f32_sr(
                        new[li][k, i * n:(i + 1) * n], rand)

    def params_f32(self) -> dict:
        out = {}
        for layer, m in zip(self.plan.layers, self.master):
            m = m if self.scheme == "fp32" else numerics.f32_from_bf16(m)
            w, b = from_augmented(layer, numerics.f32_value(m).astype(np.float32))
            out[layer.weight], out[layer.bias] = w.copy(), b.copy()
        return out
