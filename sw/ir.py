"""The compiler's graph IR: what every front end produces and every later stage consumes.

A `Graph` is a list of `Node`s in topological order over named tensors with static shapes:

* activations: the graph's inputs and every node's output, float32 in the source network, with
  a shape in `Graph.tensors` (dim 0 is always the batch);
* constants: `Graph.initializers`, NumPy float32 arrays (weights, biases, addends).

Ops (`OPS` is the table; each entry states arity, which inputs must be constants, the
attributes, and the shape rule):

| op | inputs | attrs | output |
| --- | --- | --- | --- |
| `gemm` | x [B, ..., K], W [K, F] const, b [F] const | | x @ W + b over the last axis, [B, ..., F] |
| `conv` | x [B, C, H, W], W [O, C / group, kh, kw] const, b [O] const | strides (sh, sw), pads (top, left, bottom, right); optional dilations (dh, dw) = (1, 1), group = 1 | [B, O, OH, OW], zero padding; C and O split into `group` groups (depthwise: group = C) |
| `relu` | x | | max(x, 0) |
| `add` | a, b | | a + b: two activations of one shape, or an activation and a constant that broadcasts to one sample's shape |
| `maxpool` | x [B, C, H, W] | kernel, strides, pads; optional dilations = (1, 1), ceil_mode = False | window max, padding never wins |
| `avgpool` | x [B, C, H, W] | kernel, strides, pads, count_include_pad; optional dilations, ceil_mode as maxpool | window mean, divided by the taps inside the padded extent (count_include_pad) or inside the input |
| `flatten` | x [B, ...] | | [B, prod(...)] |
| `reshape` | x [B, ...] | shape (static, shape[0] = B) | same data, new shape |
| `softmax` | x | axis (not 0) | softmax along axis; runs on the host (`OpSpec.host`) |

A 1-D convolution or pool is a 2-D one with H = 1 (kernel (1, k)) on a [B, C, 1, L] tensor.
Windows (`window_out`): along an axis of size n with pads (lo, hi), kernel k, stride s and
dilation d, the window extent is (k - 1) d + 1 and there are floor((n + lo + hi - extent) / s)
+ 1 windows, or with ceil_mode the ceiling, less a last window that would start in the end
padding (ONNX's rule). Optional attributes are left out when they have their default
(`canonical_attrs`), so both front ends give the same IR for the same network.

Every op has exactly one output. Every op maps each sample of the batch on its own (no op mixes
samples), so the references (`d1tile.sw.quant`) run any batch size; the graph's batch is the one
the tile is compiled for. A host op's output must be a graph output and feed no other node.

A graph may carry `quant_scales`: per-tensor int8 scales its source fixes (an ONNX QDQ model's
activation scales and weight scales), which `d1tile.sw.quant.calibrate` takes instead of its own.

`Graph.validate()` checks all of the above and raises `CompileError` naming the node, its op
and the reason. `normalize(graph)` runs the ordered `NORMALIZE_PASSES` (bias folding, reshape to
flatten, dead-node removal) that both front ends apply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from math import prod
from typing import Callable

import numpy as np

from d1tile.sw.errors import CompileError


__all__ = [
    "Tensor", "Node", "Graph", "OpSpec", "OPS", "COMPUTE_OPS", "POOL_OPS",
    "infer_shape", "pair", "pads4", "window_out", "canonical_attrs", "attribute", "normalize",
    "NORMALIZE_PASSES",
    "fold_bias_adds", "reshape_to_flatten", "drop_dead_nodes",
]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Tensor:
    """An activation: its name and static shape (dim 0 is the batch)."""
    name: str
    shape: Shape

    def __str__(self) -> str:
        return f"{self.name} {list(self.shape)}"


@dataclass
class Node:
    """One op application. `inputs` name activations or initializers; `outputs` has one name.
    `origin` is the front end's op it came from (e.g. "MatMul"), for messages."""
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    origin: str = ""

    @property
    def output(self) -> str:
        return self.outputs[0]

    def where(self) -> str:
        """How messages name this node: "node 'fc1' (gemm)"."""
        return f"node '{self.name}' ({self.origin or self.op})"


# --- attribute normalisation shared by the front ends ------------------------------------------

def pair(value, what: str = "value") -> tuple[int, int]:
    """An int or a 2-sequence as (h, w) integers."""
    if isinstance(value, (int, np.integer)):
        return (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise CompileError(f"{what} {list(value)} must have 2 entries (height, width)")
    return value


def pads4(value, what: str = "pads") -> tuple[int, int, int, int]:
    """Pads as (top, left, bottom, right): an int (all four), (ph, pw) (symmetric), or four
    values in the ONNX order (top, left, bottom, right)."""
    if isinstance(value, (int, np.integer)):
        return (int(value),) * 4
    value = tuple(int(v) for v in value)
    if len(value) == 2:
        return (value[0], value[1], value[0], value[1])
    if len(value) != 4:
        raise CompileError(f"{what} {list(value)} must have 2 or 4 entries")
    return value


# --- the op table --------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpSpec:
    """What an IR op accepts.

    `arity` inputs; inputs at `constant_inputs` must be initializers; `attrs` must all be
    present; `optional` attributes may be left out and then have the value given there (no
    other attributes are allowed); `infer(node, shapes, constants)` returns the output shape
    from the input shapes (and the constants' values, None for activations) or raises
    `CompileError`. `host` ops run on the host, after the tile.
    """
    arity: int
    constant_inputs: tuple[int, ...]
    attrs: tuple[str, ...]
    infer: Callable
    host: bool = False
    optional: dict = field(default_factory=dict)


def _fail(node: Node, reason: str):
    raise CompileError(f"{node.where()}: {reason}")


def _check_rank(node: Node, shape: Shape, rank: int, what: str):
    if len(shape) != rank:
        _fail(node, f"{what} must have rank {rank}, got shape {list(shape)}")


def window_out(size: int, kernel: int, stride: int, lo: int, hi: int, dilation: int = 1,
               ceil_mode: bool = False) -> int:
    """The number of windows along one axis (module docstring): floor, or with `ceil_mode`
    the ceiling less a last window that would start in the end padding; 0 or less when the
    window's extent exceeds the padded size."""
    span = size + lo + hi - (kernel - 1) * dilation - 1
    if span < 0:
        return 0
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + lo:
        out -= 1
    return out


def _window_out(node: Node, size: int, kernel: int, stride: int, lo: int, hi: int,
                axis: str, dilation: int = 1, ceil_mode: bool = False) -> int:
    if kernel < 1 or stride < 1 or dilation < 1 or lo < 0 or hi < 0:
        _fail(node, f"kernel {kernel}, stride {stride}, dilation {dilation} and pads ({lo}, "
                    f"{hi}) along {axis} must be positive (pads non-negative)")
    extent = (kernel - 1) * dilation + 1
    if size + lo + hi < extent:
        what = f"{kernel}-wide kernel" if dilation == 1 else \
            f"{kernel}-wide kernel (dilation {dilation}: {extent} wide)"
        _fail(node, f"the {what} does not fit the padded {axis} ({size} + {lo} + {hi})")
    return window_out(size, kernel, stride, lo, hi, dilation, ceil_mode)


def attribute(node: Node, key: str):
    """The value of attribute `key` of `node`: its own, or the op's default for an optional
    attribute it leaves out."""
    if key in node.attrs:
        return node.attrs[key]
    return OPS[node.op].optional[key]


def canonical_attrs(op: str, attrs: dict) -> dict:
    """`attrs` without the optional attributes that have their default value: the form both
    front ends emit."""
    defaults = OPS[op].optional
    return {k: v for k, v in attrs.items() if not (k in defaults and v == defaults[k])}


def _infer_gemm(node, shapes, consts):
    x, w, b = shapes
    if len(x) < 2:
        _fail(node, f"input x must have rank 2 or more ([batch, ..., K]), got shape {list(x)}")
    _check_rank(node, w, 2, "weight W")
    if x[-1] != w[0]:
        _fail(node, f"x {list(x)} and W {list(w)} do not chain (x @ W needs {x[-1]} rows in W)")
    if b != (w[1],):
        _fail(node, f"bias shape {list(b)} must be [{w[1]}]")
    return x[:-1] + (w[1],)


def _infer_conv(node, shapes, consts):
    x, w, b = shapes
    _check_rank(node, x, 4, "input x (NCHW)")
    _check_rank(node, w, 4, "weight W (O, C / group, kh, kw)")
    group = attribute(node, "group")
    if not isinstance(group, int) or group < 1:
        _fail(node, f"group {group} must be a positive integer")
    if w[1] * group != x[1]:
        _fail(node, f"W {list(w)} with group {group} expects {w[1] * group} input channels, "
                    f"x {list(x)} has {x[1]}")
    if w[0] % group:
        _fail(node, f"{w[0]} output channels do not split into {group} groups")
    if b != (w[0],):
        _fail(node, f"bias shape {list(b)} must be [{w[0]}]")
    sh, sw = node.attrs["strides"]
    pt, pl, pb, pr = node.attrs["pads"]
    dh, dw = attribute(node, "dilations")
    oh = _window_out(node, x[2], w[2], sh, pt, pb, "height", dh)
    ow = _window_out(node, x[3], w[3], sw, pl, pr, "width", dw)
    return (x[0], w[0], oh, ow)


def _windows_see_input(size: int, kernel: int, stride: int, lo: int, dilation: int,
                       count: int) -> bool:
    """Whether each of `count` windows along an axis has a tap inside the input."""
    return all(any(0 <= o * stride - lo + t * dilation < size for t in range(kernel))
               for o in range(count))


def _infer_pool(node, shapes, consts):
    (x,) = shapes
    _check_rank(node, x, 4, "input x (NCHW)")
    kh, kw = node.attrs["kernel"]
    sh, sw = node.attrs["strides"]
    pt, pl, pb, pr = node.attrs["pads"]
    dh, dw = attribute(node, "dilations")
    ceil_mode = bool(attribute(node, "ceil_mode"))
    if max(pt, pb) >= kh or max(pl, pr) >= kw:
        _fail(node, f"pads {[pt, pl, pb, pr]} must be smaller than the kernel {[kh, kw]} "
                    "(a window of padding only has no value)")
    oh = _window_out(node, x[2], kh, sh, pt, pb, "height", dh, ceil_mode)
    ow = _window_out(node, x[3], kw, sw, pl, pr, "width", dw, ceil_mode)
    if not (_windows_see_input(x[2], kh, sh, pt, dh, oh)
            and _windows_see_input(x[3], kw, sw, pl, dw, ow)):
        _fail(node, f"with dilations {[dh, dw]} and pads {[pt, pl, pb, pr]} some windows hold "
                    "padding only (a window with no input element has no value)")
    return (x[0], x[1], oh, ow)


def _infer_same(node, shapes, consts):
    return shapes[0]


def _infer_add(node, shapes, consts):
    (a, b), (ca, cb) = shapes, consts
    if ca is not None and cb is not None:
        _fail(node, "both inputs are constants (constant folding is not supported)")
    if ca is None and cb is None:
        if a != b:
            _fail(node, f"the two activations have shapes {list(a)} and {list(b)}; only equal "
                        "shapes are supported (no broadcasting between activations)")
        return a
    act, const = (a, b) if cb is not None else (b, a)
    sample = act[1:]
    # The constant must broadcast to one sample: it may not vary along the batch.
    cshape = const[1:] if len(const) == len(act) and const[:1] == (1,) else const
    if len(cshape) > len(sample) or np.broadcast_shapes(cshape, sample) != sample:
        _fail(node, f"the constant of shape {list(const)} does not broadcast to one sample of "
                    f"the activation {list(act)} (it may not vary along the batch)")
    return act


def _infer_flatten(node, shapes, consts):
    (x,) = shapes
    if len(x) < 2:
        _fail(node, f"input {list(x)} needs a batch dimension and at least one more")
    return (x[0], prod(x[1:]))


def _infer_reshape(node, shapes, consts):
    (x,) = shapes
    target = tuple(int(d) for d in node.attrs["shape"])
    if any(d < 1 for d in target):
        _fail(node, f"target shape {list(target)} must be static and positive")
    if prod(target) != prod(x):
        _fail(node, f"cannot reshape {list(x)} ({prod(x)} elements) to {list(target)} "
                    f"({prod(target)} elements)")
    if target[0] != x[0]:
        _fail(node, f"reshaping {list(x)} to {list(target)} moves data across the batch "
                    "dimension (dim 0 must stay the batch)")
    return target


def _infer_softmax(node, shapes, consts):
    (x,) = shapes
    axis = node.attrs["axis"]
    if not 1 <= axis < len(x):
        _fail(node, f"axis {axis} of a rank-{len(x)} tensor is not supported (a softmax "
                    "across the batch, axis 0, mixes samples)")
    return x


OPS: dict[str, OpSpec] = {
    "gemm":    OpSpec(3, (1, 2), (), _infer_gemm),
    "conv":    OpSpec(3, (1, 2), ("strides", "pads"), _infer_conv,
                      optional={"dilations": (1, 1), "group": 1}),
    "relu":    OpSpec(1, (), (), _infer_same),
    "add":     OpSpec(2, (), (), _infer_add),
    "maxpool": OpSpec(1, (), ("kernel", "strides", "pads"), _infer_pool,
                      optional={"dilations": (1, 1), "ceil_mode": False}),
    "avgpool": OpSpec(1, (), ("kernel", "strides", "pads", "count_include_pad"), _infer_pool,
                      optional={"dilations": (1, 1), "ceil_mode": False}),
    "flatten": OpSpec(1, (), (), _infer_flatten),
    "reshape": OpSpec(1, (), ("shape",), _infer_reshape),
    "softmax": OpSpec(1, (), ("axis",), _infer_softmax, host=True),
}

COMPUTE_OPS = frozenset({"gemm", "conv"})
"""Ops with int8 weights and an int32 bias: the matrix unit's work."""

POOL_OPS = frozenset({"maxpool", "avgpool"})


def infer_shape(node: Node, shapes: list[Shape], constants: list) -> Shape:
    """The output shape of `node` given its input shapes and constant values (None for an
    activation). Checks arity, constant positions and attributes; raises `CompileError`."""
    spec = OPS.get(node.op)
    if spec is None:
        raise CompileError(f"{node.where()}: unknown IR op (known: {', '.join(OPS)})")
    if len(node.inputs) != spec.arity or len(node.outputs) != 1:
        _fail(node, f"takes {spec.arity} input(s) and 1 output, got {len(node.inputs)} and "
                    f"{len(node.outputs)}")
    for i in spec.constant_inputs:
        if constants[i] is None:
            _fail(node, f"input {i} ('{node.inputs[i]}') must be a constant")
    for i, c in enumerate(constants):
        if i not in spec.constant_inputs and c is not None and node.op != "add":
            _fail(node, f"input {i} ('{node.inputs[i]}') must be an activation, not a constant")
    missing = [a for a in spec.attrs if a not in node.attrs]
    extra = [a for a in node.attrs if a not in spec.attrs and a not in spec.optional]
    if missing or extra:
        _fail(node, f"attributes {missing or extra} are {'missing' if missing else 'unknown'}")
    return tuple(int(d) for d in spec.infer(node, [tuple(s) for s in shapes], constants))


# --- the graph -----------------------------------------------------------------------------------

@dataclass
class Graph:
    """A network: `nodes` in topological order, `tensors` (activation name -> `Tensor`),
    `initializers` (constant name -> float32 array), graph `inputs` and `outputs` (activation
    names), and `quant_scales`: the int8 scales the source fixes (tensor or gemm/conv weight
    name -> positive scale; an ONNX QDQ model's, empty for a float network)."""
    name: str
    inputs: list[str]
    outputs: list[str]
    nodes: list[Node]
    tensors: dict[str, Tensor]
    initializers: dict[str, np.ndarray]
    quant_scales: dict[str, float] = field(default_factory=dict)

    # -- queries --
    def shape(self, name: str) -> Shape:
        if name in self.initializers:
            return tuple(self.initializers[name].shape)
        return self.tensors[name].shape

    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def producer(self, name: str) -> Node | None:
        return next((n for n in self.nodes if name in n.outputs), None)

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def batch(self) -> int:
        """The batch the graph is compiled for: dim 0 of its first input."""
        return self.tensors[self.inputs[0]].shape[0]

    def copy(self) -> "Graph":
        """A copy whose node list, nodes and dicts can be changed without touching this one
        (the initializer arrays are shared: passes replace arrays, they never write into one)."""
        return Graph(self.name, list(self.inputs), list(self.outputs),
                     [dataclasses.replace(n, inputs=list(n.inputs), outputs=list(n.outputs),
                                          attrs=dict(n.attrs)) for n in self.nodes],
                     dict(self.tensors), dict(self.initializers), dict(self.quant_scales))

    def with_batch(self, batch: int) -> "Graph":
        """The same network for another batch: dim 0 of every activation (and of every reshape's
        target shape) set to `batch`. Every op maps each sample on its own, so nothing else
        changes."""
        g = self.copy()
        g.tensors = {k: Tensor(t.name, (batch,) + tuple(t.shape[1:]))
                     for k, t in self.tensors.items()}
        for n in g.nodes:
            if n.op == "reshape":
                n.attrs["shape"] = (batch,) + tuple(n.attrs["shape"][1:])
        return g

    # -- checks --
    def validate(self) -> "Graph":
        """Check the graph's contract; returns the graph, raises `CompileError` naming the
        node or tensor at fault.

        Checked: unique node names; every input defined (graph input, initializer or an earlier
        node's output: topological order); every tensor produced once; ops, arity, constants
        and attributes per `OPS`; every output shape equal to its shape rule; graph inputs
        static and positive, all with the same batch; graph outputs produced by a node; host
        ops only at the end (their outputs are graph outputs and feed nothing); every
        `quant_scales` entry names an activation or a gemm/conv weight and is positive.
        """
        if not self.inputs:
            raise CompileError(f"graph '{self.name}': it has no inputs")
        if not self.outputs:
            raise CompileError(f"graph '{self.name}': it has no outputs")
        defined: set[str] = set()
        for name in self.inputs:
            if name in self.initializers:
                raise CompileError(f"tensor '{name}': a graph input cannot be a constant")
            shape = self.tensors[name].shape if name in self.tensors else None
            if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
                raise CompileError(f"tensor '{name}': input shape {shape} must be static, "
                                   "positive and include the batch")
            if shape[0] != self.batch:
                raise CompileError(f"tensor '{name}': batch {shape[0]} differs from the first "
                                   f"input's batch {self.batch}")
            defined.add(name)
        for name, array in self.initializers.items():
            if array.dtype != np.float32:
                raise CompileError(f"constant '{name}': dtype {array.dtype} is not float32")
        names: set[str] = set()
        for node in self.nodes:
            if node.name in names:
                raise CompileError(f"{node.where()}: another node has the same name")
            names.add(node.name)
            for i in node.inputs:
                if i not in defined and i not in self.initializers:
                    raise CompileError(f"{node.where()}: input '{i}' is not defined before it "
                                       "(nodes must be in topological order)")
            shapes = [self.shape(i) for i in node.inputs]
            consts = [self.initializers.get(i) for i in node.inputs]
            shape = infer_shape(node, shapes, consts)
            out = node.output
            if out in defined or out in self.initializers:
                raise CompileError(f"{node.where()}: output '{out}' is already defined")
            if out not in self.tensors or self.tensors[out].shape != shape:
                raise CompileError(f"{node.where()}: output '{out}' has shape "
                                   f"{list(self.tensors[out].shape) if out in self.tensors else None}"
                                   f", its op gives {list(shape)}")
            defined.add(out)
        for name in self.outputs:
            if self.producer(name) is None:
                raise CompileError(f"tensor '{name}': a graph output must be computed by a node")
        for node in self.nodes:
            if OPS[node.op].host:
                if node.output not in self.outputs or self.consumers(node.output):
                    raise CompileError(f"{node.where()}: runs on the host after the tile, so its "
                                       "output must be a graph output and feed no other node")
        weights = {n.inputs[1] for n in self.nodes if n.op in COMPUTE_OPS}
        for name, scale in self.quant_scales.items():
            if name not in self.tensors and name not in weights:
                raise CompileError(f"tensor '{name}': it has a quantisation scale but is not an "
                                   "activation or a gemm/conv weight of the graph")
            if not (np.isfinite(scale) and scale > 0):
                raise CompileError(f"tensor '{name}': quantisation scale {scale} must be "
                                   "positive and finite")
        return self

    def __str__(self) -> str:
        def operand(name):
            if name in self.initializers:
                return f"{name}<{'x'.join(map(str, self.initializers[name].shape)) or 'scalar'}>"
            return name

        def attr(v):
            return list(v) if isinstance(v, tuple) else v

        lines = [f"graph '{self.name}' (batch {self.batch})"]
        lines += [f"  input  {self.tensors[i]}" for i in self.inputs]
        width = max((len(n.name) for n in self.nodes), default=0)
        for n in self.nodes:
            attrs = " ".join(f"{k}={attr(v)}" for k, v in n.attrs.items())
            host = "  [host]" if OPS[n.op].host else ""
            lines.append(f"  {n.name:<{width}}  {self.tensors[n.output]} = {n.op}("
                         f"{', '.join(map(operand, n.inputs))}){' ' + attrs if attrs else ''}"
                         f"{host}")
        lines += [f"  output {self.tensors[o]}" for o in self.outputs]
        return "\n".join(lines)


# --- normalisation passes ------------------------------------------------------------------------

def fold_bias_adds(graph: Graph) -> Graph:
    """add(gemm/conv output, constant) -> the constant joins the bias, when the constant is one
    value per output feature (gemm: the last axis) or channel (conv: axis 1), or a scalar, and
    the gemm/conv output feeds only the add and is not a graph output. This is how ONNX
    MatMul + Add becomes one gemm."""
    graph = graph.copy()
    for add in list(graph.nodes):
        if add.op != "add":
            continue
        consts = [i for i in add.inputs if graph.is_constant(i)]
        acts = [i for i in add.inputs if not graph.is_constant(i)]
        if len(consts) != 1 or len(acts) != 1:
            continue
        prod_node = graph.producer(acts[0])
        if (prod_node is None or prod_node.op not in COMPUTE_OPS or acts[0] in graph.outputs
                or len(graph.consumers(acts[0])) != 1):
            continue
        const = graph.initializers[consts[0]]
        out_shape = graph.shape(acts[0])
        bias = graph.initializers[prod_node.inputs[2]]
        axis = 1 if prod_node.op == "conv" else len(out_shape) - 1
        channels = out_shape[axis]
        # The per-channel view of the constant: one value along `axis`, the same elsewhere.
        full = np.broadcast_to(const, np.broadcast_shapes(const.shape, out_shape))
        per_channel = np.moveaxis(full, axis, -1).reshape(-1, channels)[0]
        along = [1] * full.ndim
        along[axis] = channels
        if not np.array_equal(np.broadcast_to(per_channel.reshape(along), full.shape), full):
            continue
        new_bias = prod_node.inputs[2]
        if any(new_bias in n.inputs for n in graph.nodes if n is not prod_node):
            new_bias = f"{prod_node.name}.b"
            while new_bias in graph.initializers or new_bias in graph.tensors:
                new_bias += "_"
        graph.initializers[new_bias] = (bias + per_channel).astype(np.float32)
        prod_node.inputs[2] = new_bias
        del graph.tensors[prod_node.output]
        prod_node.outputs[0] = add.output
        graph.nodes.remove(add)
    return drop_dead_nodes(graph)


def reshape_to_flatten(graph: Graph) -> Graph:
    """reshape to [B, prod(rest)] is a flatten: one op for the lowering to know."""
    graph = graph.copy()
    for node in graph.nodes:
        if node.op == "reshape" and len(node.attrs["shape"]) == 2:
            node.op, node.attrs = "flatten", {}
    return graph


def drop_dead_nodes(graph: Graph) -> Graph:
    """Remove nodes whose outputs reach no graph output, then unused constants and tensors
    (and their `quant_scales`)."""
    graph = graph.copy()
    live = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if node.output in live:
            kept.append(node)
            live.update(node.inputs)
    graph.nodes = kept[::-1]
    graph.initializers = {k: v for k, v in graph.initializers.items() if k in live}
    graph.tensors = {k: v for k, v in graph.tensors.items() if k in live or k in graph.inputs}
    graph.quant_scales = {k: v for k, v in graph.quant_scales.items()
                          if k in graph.tensors or k in graph.initializers}
    return graph


NORMALIZE_PASSES: tuple[Callable[[Graph], Graph], ...] = (
    fold_bias_adds,
    reshape_to_flatten,
    drop_dead_nodes,
)
"""The passes every front end runs, in order, on the graph it built."""


def normalize(graph: Graph) -> Graph:
    """Run `NORMALIZE_PASSES` in order and validate the result."""
    graph.validate()
    for run_pass in NORMALIZE_PASSES:
        graph = run_pass(graph)
    return graph.validate()
