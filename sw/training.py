"""Training graphs and their references: reverse-mode differentiation over the graph IR, a loss
and an optimizer, and the three references a training run on the tile is checked against
(docs/training.md).

    tg = training_graph(graph, loss="cross-entropy")          # a `d1tile.sw.ir.Graph`
    params = initial_params(tg, seed=0)                         # or tg.initial (the graph's own)
    opt = Sgd(lr=0.1, momentum=0.9, weight_decay=1e-4)
    ref = Bf16Reference(tg, params, opt, scheme="fp32")         # the tile's arithmetic, bit for bit
    loss = ref.step(x, labels)                                   # one mini-batch
    f32 = FloatTrainer(tg, params, opt, np.float32)             # the float32 run beside it
    loss, grads = float_loss_and_grads(tg, params, x, labels, np.float64)   # the autodiff check

**The training graph** (`training_graph`): the forward graph (a softmax at its end is dropped:
the cross-entropy loss reads its input, the logits), the loss, the trained parameters (every
gemm and conv weight and bias; the constants of an add are not trained) and the backward steps,
derived by reverse-mode differentiation over the IR: each node, last to first, turns the
gradient of its output into its inputs' and its parameters' (`VJP_OPS`), and a tensor read by
several nodes sums their contributions in the order of the nodes. Every op of the IR except
softmax (anywhere but at the end) has a rule: gemm, conv (strides, pads, dilations, groups),
relu, maxpool, avgpool, add, flatten, reshape. What has none is refused in one line naming
the node.

**References.** (a) `Bf16Reference`: the numeric contract of training on the tile, one step
after another, in the datapath's own arithmetic (`d1tile.numerics`: BF16 operands, FP32
accumulation from -0 in a fixed order, FP32 vector ops, RNE or stochastic rounding to BF16); the
tile's weights, optimizer state and loss after every step must equal it bit for bit. It covers
gemm, relu, add, flatten and reshape so far (an MLP); a conv or pool in it is refused in one
line. (b) `float_loss_and_grads` in float64 against finite differences (tests). (c)
`FloatTrainer` in float32: the same network, initialisation and batch order, for the loss curve
and the accuracy beside the tile's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from d1tile import numerics
from d1tile.hostops import softmax_xent_f32
from d1tile.sw.errors import CompileError
from d1tile.sw.ir import Graph
from d1tile.sw.kernels import split_even
from d1tile.sw.quant import FLOAT_KERNELS, _axis_taps, _window_counts, _window_sizes, windows


__all__ = ["LOSSES", "TrainingGraph", "BackStep", "training_graph", "initial_params", "Sgd",
           "float_loss_and_grads", "FloatTrainer", "Bf16Reference", "BF16_OPS", "VJP_OPS",
           "loss_and_grad_f32", "float_logits"]

LOSSES = ("cross-entropy", "mse")

VJP_OPS = ("gemm", "conv", "relu", "maxpool", "avgpool", "add", "flatten", "reshape")
"""The ops reverse-mode differentiation has a rule for."""

BF16_OPS = ("gemm", "relu", "add", "flatten", "reshape")
"""The ops the bit-exact BF16 training reference covers so far."""


@dataclass(frozen=True)
class BackStep:
    """The backward rule of one forward node: `grad_out` is the gradient of its output; the
    node's activation inputs that need a gradient get one (`grad_in`: input name -> the name
    of its contribution), its parameters theirs (`param_grads`: parameter -> gradient name)."""
    node: object
    grad_out: str
    grad_in: dict
    param_grads: dict


@dataclass
class TrainingGraph:
    graph: Graph                 # the forward graph, its last node producing `logits`
    loss: str                    # one of LOSSES
    logits: str                  # the tensor the loss reads
    params: list                 # trained initializer names, in node order
    steps: list                  # BackStep per forward node that needs one, last node first
    contributions: dict = field(default_factory=dict)   # tensor -> [contribution names] in
    #                                                     the order of the nodes that read it

    @property
    def initial(self) -> dict:
        """The graph's own parameter values (float32 copies)."""
        return {p: np.array(self.graph.initializers[p], dtype=np.float32) for p in self.params}

    @property
    def classes(self) -> int:
        return int(self.graph.shape(self.logits)[-1])


def training_graph(graph: Graph, loss: str = "cross-entropy") -> TrainingGraph:
    """The training graph of `graph` with `loss` (module docstring). Refused (CompileError, one
    line): an unknown loss, more than one input or output, an op without a backward rule, a
    softmax that is not the last node or comes before an mse loss, logits that are not
    [batch, classes]."""
    if loss not in LOSSES:
        raise CompileError(f"loss {loss!r} is not one of {', '.join(LOSSES)}")
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise CompileError(f"a training graph needs one input and one output, not "
                           f"{len(graph.inputs)} and {len(graph.outputs)}")
    g = graph.copy()
    last = g.producer(g.outputs[0])
    if last is not None and last.op == "softmax":
        if loss != "cross-entropy":
            raise CompileError(f"node '{last.name}' (softmax): an {loss} loss on softmax outputs "
                               "is not supported (use cross-entropy, which reads the logits)")
        g.nodes = [n for n in g.nodes if n is not last]
        g.outputs = [last.inputs[0]]
    logits = g.outputs[0]
    for node in g.nodes:
        if node.op not in VJP_OPS:
            raise CompileError(f"node '{node.name}' ({node.op}): no backward rule for training "
                               f"(differentiated: {', '.join(VJP_OPS)})")
    if len(g.shape(logits)) != 2:
        raise CompileError(f"the loss reads '{logits}' of shape {list(g.shape(logits))}: it "
                           "needs [batch, classes] (add a flatten)")
    params = [name for node in g.nodes if node.op in ("gemm", "conv") for name in node.inputs[1:]
              if g.is_constant(name)]
    # Which activations need a gradient: those a parameter's path to the loss goes through.
    needs = set()
    for node in g.nodes:
        if any(t in needs or t in params for t in node.inputs):
            needs.add(node.output)
    steps, contributions = [], {}
    for node in reversed(g.nodes):
        if node.output not in needs:
            continue
        grad_in = {}
        for k, t in enumerate(node.inputs):
            if not g.is_constant(t) and t in needs and t not in grad_in:
                grad_in[t] = f"d{t}@{node.name}"
                contributions.setdefault(t, []).append((g.nodes.index(node), grad_in[t]))
        param_grads = {t: f"d{t}" for t in node.inputs if t in params}
        steps.append(BackStep(node, f"d{node.output}", grad_in, param_grads))
    contributions = {t: [name for _, name in sorted(c)] for t, c in contributions.items()}
    return TrainingGraph(g, loss, logits, params, steps, contributions)


def initial_params(tg: TrainingGraph, seed: int = 0) -> dict:
    """Random initial parameters (He-normal weights, zero biases), float32, from `seed`."""
    rng = np.random.default_rng(seed)
    out = {}
    for node in tg.graph.nodes:
        if node.op not in ("gemm", "conv"):
            continue
        w = tg.graph.initializers[node.inputs[1]]
        fan_in = w.shape[0] if node.op == "gemm" else int(np.prod(w.shape[1:]))
        out[node.inputs[1]] = (rng.standard_normal(w.shape) * np.sqrt(2.0 / fan_in)).astype(
            np.float32)
        if len(node.inputs) > 2 and node.inputs[2] in tg.params:
            out[node.inputs[2]] = np.zeros(tg.graph.shape(node.inputs[2]), dtype=np.float32)
    return out


@dataclass(frozen=True)
class Sgd:
    """SGD with momentum and weight decay: g' = w wd + g, v = v m + g', w = v (-lr) + w (v = g'
    without momentum); in FP32 on the tile, each line one FAXPY (the product rounded, then the
    sum: `d1tile.numerics.fp32_axpy`)."""
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self):
        for what, value in (("lr", self.lr), ("momentum", self.momentum),
                            ("weight_decay", self.weight_decay)):
            if not np.isfinite(value) or value < 0:
                raise CompileError(f"{what}={value!r} must be a finite number >= 0")
        if self.momentum >= 1:
            raise CompileError(f"momentum={self.momentum!r} must be below 1")


# -- the float executors (references b and c) ---------------------------------------------------

def _labels(tg: TrainingGraph, labels, batch: int) -> np.ndarray:
    y = np.asarray(labels)
    if tg.loss == "cross-entropy":
        if y.shape != (batch,) or not np.issubdtype(y.dtype, np.integer):
            raise CompileError(f"labels: cross-entropy needs {batch} integer class labels, "
                               f"not an array of shape {list(y.shape)} ({y.dtype})")
        if y.size and (y.min() < 0 or y.max() >= tg.classes):
            raise CompileError(f"labels: a class label outside 0..{tg.classes - 1}")
    elif y.shape != (batch, tg.classes):
        raise CompileError(f"targets: mse needs [{batch}, {tg.classes}], not {list(y.shape)}")
    return y


def _forward(tg: TrainingGraph, params: dict, x: np.ndarray, dtype) -> dict:
    g = tg.graph
    values = {g.inputs[0]: x.astype(dtype)}
    consts = {k: np.asarray(params.get(k, v), dtype=dtype) for k, v in g.initializers.items()}
    for node in g.nodes:
        ins = [values[t] if t in values else consts[t] for t in node.inputs]
        out = FLOAT_KERNELS[node.op](node, ins[0], ins)
        values[node.output] = np.asarray(out, dtype=dtype)
    return values


def _loss_grad(tg: TrainingGraph, z: np.ndarray, y: np.ndarray, dtype):
    """(mean loss, dL/dz) in `dtype` NumPy arithmetic."""
    b = z.shape[0]
    if tg.loss == "cross-entropy":
        m = z.max(axis=1, keepdims=True)
        e = np.exp(z - m)
        s = e.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(s)[:, 0] - (z - m)[np.arange(b), y])
        dz = e / s
        dz[np.arange(b), y] -= 1
        return dtype(loss), (dz / b).astype(dtype)
    diff = z - y.astype(dtype)
    return dtype(np.mean(diff * diff)), (2 * diff / diff.size).astype(dtype)


def _scatter_windows(dwin: np.ndarray, x_shape, attrs: dict, kernel) -> np.ndarray:
    """The gradient of `windows(x, ...)`: each tap's gradient added back where it read x (taps
    over the padding dropped)."""
    (kh, kw), (sh, sw), (pt, pl, _, _) = kernel, attrs["strides"], attrs["pads"]
    dh, dw = attrs.get("dilations", (1, 1))
    oh, ow = _window_sizes(attrs, x_shape[2:], kernel)
    rows, row_in = _axis_taps(x_shape[2], kh, sh, pt, dh, oh)
    cols, col_in = _axis_taps(x_shape[3], kw, sw, pl, dw, ow)
    inside = row_in[:, None, :, None] & col_in[None, :, None, :]
    dwin = np.where(inside, dwin, 0)
    dx = np.zeros(x_shape, dtype=dwin.dtype)
    r = np.broadcast_to(rows[:, None, :, None], inside.shape)
    c = np.broadcast_to(cols[None, :, None, :], inside.shape)
    for i in range(dwin.shape[0]):
        for ch in range(dwin.shape[1]):
            np.add.at(dx[i, ch], (r, c), dwin[i, ch])
    return dx


def _vjp(node, values: dict, consts: dict, dy: np.ndarray, graph: Graph) -> dict:
    """{input name: its gradient} for the node's inputs (activations and parameters)."""
    x = values.get(node.inputs[0], consts.get(node.inputs[0]))
    op, a = node.op, node.attrs
    if op == "gemm":
        w = consts[node.inputs[1]]
        x2 = x.reshape(-1, x.shape[-1])
        dy2 = dy.reshape(-1, dy.shape[-1])
        out = {node.inputs[0]: (dy2 @ w.T).reshape(x.shape), node.inputs[1]: x2.T @ dy2}
        if len(node.inputs) > 2:
            out[node.inputs[2]] = dy2.sum(axis=0)
        return out
    if op == "relu":
        return {node.inputs[0]: np.where(values[node.output] > 0, dy, 0).astype(dy.dtype)}
    if op == "add":
        out = {node.inputs[0]: dy}
        if not graph.is_constant(node.inputs[1]):
            out[node.inputs[1]] = dy if node.inputs[1] != node.inputs[0] else 2 * dy
        return out
    if op in ("flatten", "reshape"):
        return {node.inputs[0]: dy.reshape(x.shape)}
    if op == "maxpool":
        win = windows(x, a, a["kernel"], -np.inf)                   # B, C, OH, OW, kh, kw
        flat = win.reshape(*win.shape[:4], -1)
        first = flat.argmax(axis=-1)                                # the first maximum wins
        onehot = np.zeros_like(flat)
        np.put_along_axis(onehot, first[..., None], 1, axis=-1)
        dwin = (onehot * dy[..., None]).reshape(win.shape)
        return {node.inputs[0]: _scatter_windows(dwin, x.shape, a, a["kernel"])}
    if op == "avgpool":
        counts = _window_counts(x.shape[2:], a)
        share = dy / counts[None, None]
        kh, kw = a["kernel"]
        dwin = np.broadcast_to(share[..., None, None], (*dy.shape, kh, kw))
        return {node.inputs[0]: _scatter_windows(dwin, x.shape, a, a["kernel"])}
    if op == "conv":
        w = consts[node.inputs[1]]
        group = int(a.get("group", 1))
        win = windows(x, a, w.shape[2:], 0)                         # B, C, OH, OW, kh, kw
        bsz, c, oh, ow, kh, kw = win.shape
        o = w.shape[0]
        wg = w.reshape(group, o // group, c // group, kh, kw)
        dyg = dy.reshape(bsz, group, o // group, oh, ow)
        wing = win.reshape(bsz, group, c // group, oh, ow, kh, kw)
        dwin = np.einsum("bgoyx,gocij->bgcyxij", dyg, wg).reshape(win.shape)
        dw = np.einsum("bgoyx,bgcyxij->gocij", dyg, wing).reshape(w.shape)
        out = {node.inputs[0]: _scatter_windows(dwin, x.shape, a, w.shape[2:]),
               node.inputs[1]: dw}
        if len(node.inputs) > 2:
            out[node.inputs[2]] = dy.sum(axis=(0, 2, 3))
        return out
    raise CompileError(f"node '{node.name}' ({op}): no backward rule")


def float_loss_and_grads(tg: TrainingGraph, params: dict, x, labels, dtype=np.float64):
    """(loss, {parameter: gradient}) of one mini-batch in `dtype` NumPy arithmetic: the float
    references (float64 for the autodiff check, float32 for the training beside the tile)."""
    x = np.asarray(x)
    y = _labels(tg, labels, x.shape[0])
    values = _forward(tg, params, x, dtype)
    consts = {k: np.asarray(params.get(k, v), dtype=dtype)
              for k, v in tg.graph.initializers.items()}
    loss, dz = _loss_grad(tg, values[tg.logits], y, dtype)
    grads = {tg.logits: dz}
    got = {}
    for step in tg.steps:
        dy = grads[step.node.output]
        for name, g in _vjp(step.node, values, consts, dy, tg.graph).items():
            if name in step.param_grads:
                got[name] = np.asarray(g, dtype=dtype)
            elif name in step.grad_in:
                got[step.grad_in[name]] = np.asarray(g, dtype=dtype)
        for t in step.grad_in:                  # complete once its last reader is done
            parts = tg.contributions[t]
            if all(p in got for p in parts):
                total = got[parts[0]]
                for p in parts[1:]:
                    total = total + got[p]
                grads[t] = total
    return loss, {p: got[p] for p in tg.params}


def float_logits(tg: TrainingGraph, params: dict, x, dtype=np.float32) -> np.ndarray:
    """The logits of a batch (the graph's batch size) in `dtype` NumPy arithmetic."""
    return _forward(tg, params, np.asarray(x), dtype)[tg.logits]


class FloatTrainer:
    """Training in plain NumPy `dtype` arithmetic (float32: reference c), SGD as `Sgd` says."""

    def __init__(self, tg: TrainingGraph, params: dict, opt: Sgd, dtype=np.float32):
        self.tg, self.opt, self.dtype = tg, opt, dtype
        self.params = {k: np.array(v, dtype=dtype) for k, v in params.items()}
        self.velocity = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.losses: list[float] = []

    def step(self, x, labels) -> float:
        loss, grads = float_loss_and_grads(self.tg, self.params, x, labels, self.dtype)
        lr, m, wd = (self.dtype(v) for v in (self.opt.lr, self.opt.momentum,
                                             self.opt.weight_decay))
        for k, g in grads.items():
            g = self.params[k] * wd + g
            self.velocity[k] = self.velocity[k] * m + g
            self.params[k] = self.velocity[k] * -lr + self.params[k]
        self.losses.append(float(loss))
        return float(loss)

    def logits(self, x) -> np.ndarray:
        return _forward(self.tg, self.params, np.asarray(x), self.dtype)[self.tg.logits]


# -- the bit-exact BF16 / FP32 reference (reference a) --------------------------------------------

def loss_and_grad_f32(tg: TrainingGraph, z_bits: np.ndarray, labels) -> tuple:
    """The loss on the host, in float32 NumPy, from the logits' FP32 bits [B, F]: (mean loss as
    float32, dL/dz as FP32 bits). Cross-entropy: m = the row's maximum, e = exp(z - m), s = the
    sum of e over the classes added class after class, loss = mean over the batch (added sample
    after sample) of log s - (z_y - m), dz = (e / s - onehot) / B. mse: mean of (z - t)^2 (added
    element after element in row-major order), dz = 2 (z - t) / (B F). The same host function
    serves the tile's run and this reference, so the bits agree on one machine."""
    z = numerics.f32_value(z_bits).astype(np.float32)
    b, f = z.shape
    y = _labels(tg, labels, b)
    inv_b = np.float32(1.0) / np.float32(b)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if tg.loss == "cross-entropy":      # the host's function (`d1tile.hostops`)
            per, dz_bits = softmax_xent_f32(z_bits, y, inv_b)
            dz = numerics.f32_value(dz_bits).astype(np.float32)
        else:
            diff = (z - np.asarray(y, dtype=np.float32)).astype(np.float32)
            per = (diff * diff).astype(np.float32).reshape(-1)
            dz = (diff * (np.float32(2) / np.float32(b * f))).astype(np.float32)
            inv_b = np.float32(1.0) / np.float32(b * f)
        total = np.float32(0)
        for v in per:
            total = np.float32(total + v)
        loss = np.float32(total * inv_b)
    return loss, numerics.f32_bits(dz.astype(np.float64))


def _bf16(bits_f32: np.ndarray) -> np.ndarray:
    return numerics.bf16_from_f32_rne(bits_f32)


class Bf16Reference:
    """Training in the tile's arithmetic, bit for bit (docs/training.md, "The numeric contract").

    Per step, for each gemm (x [B, K] BF16, W [K, F], bias [F]):

    * forward: z = x W as the matrix unit computes it (`numerics.bf16_matmul`: BF16 operands,
      FP32 from -0, k = 0 first), + bias (FP32 add), relu on FP32, rounded to BF16 (RNE); the
      weights' BF16 operand is the master weights rounded (RNE) in the "fp32" scheme, the
      stored BF16 weights in "bf16-sr";
    * loss on the host (`loss_and_grad_f32`), dz rounded to BF16;
    * backward: dx = dz W^T (BF16 operands, FP32, f = 0 first), masked by the relu's output
      (`numerics.fp32_mask`: dx where y > 0, else +0) and rounded to BF16 as the next dz;
      dW = x^T dz summed over the batch (b = 0 first), db = the sum of dz over the batch (b = 0
      first, FP32 adds from -0); an add passes dz to both inputs, a tensor read twice gets the
      FP32 sum of its two gradients (the first reader's first) before rounding;
    * update (`Sgd`), per element in FP32 with `numerics.fp32_axpy`; "fp32": master weights and
      velocity FP32; "bf16-sr": weights stored BF16, updated in FP32 and rounded back
      stochastically (`numerics.bf16_from_f32_sr`), one 16-bit draw per element per step from a
      xorshift32 generator per parameter (`numerics.rng_seed_states(seed + index, 1)`), in
      row-major order.

    The gradients' sums over the batch are split into `groups` contiguous parts of the batch
    (the node groups of a data-parallel run: default one), each summed as above, then the
    parts added in order (part 0 first): the order an all-reduce must keep."""

    def __init__(self, tg: TrainingGraph, params: dict, opt: Sgd, *, scheme: str = "fp32",
                 seed: int = 0, groups: int = 1):
        for node in tg.graph.nodes:
            if node.op not in BF16_OPS:
                raise CompileError(f"node '{node.name}' ({node.op}): the BF16 training reference "
                                   f"covers {', '.join(BF16_OPS)} so far")
        if scheme not in ("fp32", "bf16-sr"):
            raise CompileError(f"weights scheme {scheme!r} is not 'fp32' or 'bf16-sr'")
        self.tg, self.opt, self.scheme, self.groups = tg, opt, scheme, int(groups)
        f32 = {k: numerics.f32_bits(np.asarray(v, dtype=np.float64)) for k, v in params.items()}
        if scheme == "fp32":
            self.master = f32
        else:
            self.master = {k: _bf16(v) for k, v in f32.items()}
        self.velocity = {k: np.zeros(v.shape, dtype=np.uint32) for k, v in f32.items()}
        self.rng = {k: numerics.rng_seed_states((seed + i) & 0xFFFF_FFFF, 1)
                    for i, k in enumerate(tg.params)}
        self.losses: list = []

    # the parameters as the forward reads them
    def _weight_bf16(self, name: str) -> np.ndarray:
        w = self.master[name]
        return _bf16(w) if self.scheme == "fp32" else w

    def _bias_f32(self, name: str) -> np.ndarray:
        b = self.master[name]
        return b if self.scheme == "fp32" else numerics.f32_from_bf16(b)

    def params_f32(self) -> dict:
        """The current parameters as float32 values (for a trained model)."""
        return {k: numerics.f32_value(v if self.scheme == "fp32" else
                                      numerics.f32_from_bf16(v)).astype(np.float32)
                for k, v in self.master.items()}

    def _batch_sum(self, x_t: np.ndarray, dz: np.ndarray) -> np.ndarray:
        """x_t [K, B] @ dz [B, F] (BF16 bits) with the sum over B split into the groups."""
        b = x_t.shape[1]
        acc = None
        for lo, hi in (r for r in split_even(b, self.groups) if r[1] > r[0]):
            part = numerics.bf16_matmul(x_t[:, lo:hi], dz[lo:hi])
            acc = part if acc is None else numerics.fp32_add(acc, part)
        return acc

    def forward(self, x) -> dict:
        """Every activation's BF16 bits (the logits' too) and, per relu, its FP32 input."""
        g = self.tg.graph
        vals = {g.inputs[0]: _bf16(numerics.f32_bits(np.asarray(x, dtype=np.float64)))}
        for node in g.nodes:
            src = vals[node.inputs[0]]
            if node.op == "gemm":
                z = numerics.bf16_matmul(src.reshape(-1, src.shape[-1]),
                                         self._weight_bf16(node.inputs[1]))
                if len(node.inputs) > 2:
                    z = numerics.fp32_add(z, self._bias_f32(node.inputs[2])[None, :])
                if self._relu_after(node):
                    vals[("pre", node.output)] = z
                vals[node.output] = _bf16(z).reshape(*src.shape[:-1], z.shape[-1])
            elif node.op == "relu":
                pre = vals.get(("pre", node.inputs[0]))
                f32 = pre if pre is not None else numerics.f32_from_bf16(src)
                vals[node.output] = _bf16(numerics.fp32_relu(f32)).reshape(src.shape)
            elif node.op == "add":
                other = (vals[node.inputs[1]] if node.inputs[1] in vals else
                         _bf16(numerics.f32_bits(g.initializers[node.inputs[1]].astype(
                             np.float64)))[None])
                total = numerics.fp32_add(numerics.f32_from_bf16(src),
                                          numerics.f32_from_bf16(other))
                vals[node.output] = _bf16(total)
            else:                                           # flatten, reshape: no arithmetic
                vals[node.output] = src.reshape(g.shape(node.output)[0], -1) \
                    if node.op == "flatten" else src.reshape(g.shape(node.output))
        return vals

    def _relu_after(self, node) -> bool:
        users = self.tg.graph.consumers(node.output)
        return len(users) == 1 and users[0].op == "relu"

    def step(self, x, labels) -> np.float32:
        """One mini-batch: forward, loss, backward, update. Returns the loss (float32)."""
        tg, g = self.tg, self.tg.graph
        vals = self.forward(x)
        loss, dz32 = loss_and_grad_f32(tg, numerics.f32_from_bf16(vals[tg.logits]), labels)
        grads32 = {tg.logits: dz32}            # FP32 bits of each tensor's gradient
        parts, pgrads = {}, {}
        for step in tg.steps:
            node = step.node
            dy32 = grads32[node.output]
            out = {}
            if node.op == "gemm":
                dz = _bf16(dy32)
                dz2 = dz.reshape(-1, dz.shape[-1])
                xin = vals[node.inputs[0]]
                x2 = xin.reshape(-1, xin.shape[-1])
                w = self._weight_bf16(node.inputs[1])
                out[node.inputs[0]] = numerics.bf16_matmul(dz2, w.T).reshape(*xin.shape[:-1],
                                                                             w.shape[0])
                out[node.inputs[1]] = self._batch_sum(x2.T, dz2)
                if len(node.inputs) > 2:
                    ones = np.full((1, dz2.shape[0]), numerics.bf16_bits(1.0), dtype=np.uint16)
                    out[node.inputs[2]] = self._batch_sum(ones, dz2)[0]
            elif node.op == "relu":
                y = numerics.f32_from_bf16(vals[node.output])
                out[node.inputs[0]] = numerics.fp32_mask(dy32, y)
            elif node.op == "add":
                out[node.inputs[0]] = dy32
                if not g.is_constant(node.inputs[1]):
                    out[node.inputs[1]] = dy32
            else:
                out[node.inputs[0]] = dy32.reshape(g.shape(node.inputs[0]))
            for name, gbits in out.items():
                if name in step.param_grads:
                    pgrads[name] = gbits
                elif name in step.grad_in:
                    parts[step.grad_in[name]] = gbits
            for t in step.grad_in:
                names = tg.contributions[t]
                if all(p in parts for p in names):
                    total = parts[names[0]]
                    for p in names[1:]:
                        total = numerics.fp32_add(total, parts[p])
                    grads32[t] = total
        self._update(pgrads)
        self.losses.append(loss)
        return loss

    def _update(self, grads: dict) -> None:
        opt = self.opt
        lr, m, wd = (numerics.f32_bits(np.float64(v)) for v in (-opt.lr, opt.momentum,
                                                                opt.weight_decay))
        for k in self.tg.params:
            gk = grads[k]
            w32 = self.master[k] if self.scheme == "fp32" else \
                numerics.f32_from_bf16(self.master[k])
            if opt.weight_decay:
                gk = numerics.fp32_axpy(w32, wd, gk)
            v = numerics.fp32_axpy(self.velocity[k], m, gk) if opt.momentum else gk
            self.velocity[k] = v
            new = numerics.fp32_axpy(v, lr, w32)
            if self.scheme == "fp32":
                self.master[k] = new
            else:
                rand = np.empty(new.size, dtype=np.uint32)
                states = self.rng[k]
                for i in range(new.size):
                    states, r = numerics.rng_next(states)
                    rand[i] = r[0]
                self.rng[k] = states
                self.master[k] = numerics.bf16_from_f32_sr(new, rand.reshape(new.shape))
