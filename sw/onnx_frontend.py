"""ONNX front end: an ONNX model (opset 7 or later) -> the compiler's IR (`d1tile.sw.ir.Graph`).

    graph = load_onnx("mlp.onnx")                       # a path, bytes or an onnx.ModelProto
    graph = load_onnx(model, input_shapes={"x": (8, 64)})   # fix a symbolic batch

The steps, in order (`load_onnx` reads as this list): read the model, check the operator set,
check that every node's op, attributes and outputs are supported, upgrade a model of opset 7 to
12 to opset 13 (`onnx.version_converter`, then check its nodes again), run the ONNX checker, fix the input shapes, lower every node through `LOWERINGS` (ONNX op type
-> IR constructor), normalise (`d1tile.sw.ir.normalize`: MatMul + Add(constant) becomes one
gemm, a bias Add after Conv joins its bias), and check every shape the compiler computed
against ONNX's own shape inference (a disagreement is an error, never a silent guess).

Supported (anything else raises `CompileError` naming the node, the op and the reason):

| ONNX op | becomes | accepted attributes |
| --- | --- | --- |
| MatMul | gemm, zero bias | x rank 2, B a constant [K, F] |
| Gemm | gemm | transA=0, transB 0 or 1, any alpha and beta (folded into W and the bias); B and C constants, C one value per output feature |
| BatchNormalization | folded into the preceding Conv's or Gemm's weights and bias | inference only (training_mode 0), constant scale, B, mean and var; right after a Conv or Gemm whose output only it reads |
| Conv | conv | 2-D (NCHW), constant W and B, auto_pad NOTSET/VALID/SAME_UPPER/SAME_LOWER (SAME_* become explicit pads; not with a kernel smaller than the stride), any strides and pads, dilations 1, group 1 |
| MaxPool | maxpool | 2-D, kernel_shape, strides, pads, auto_pad as Conv; ceil_mode 0, dilations 1; no Indices output |
| AveragePool | avgpool | as MaxPool, plus count_include_pad (0: divide by the non-padding count, ONNX's default; 1: by the kernel size) |
| GlobalMaxPool, GlobalAveragePool | maxpool / avgpool over the whole plane | |
| Relu | relu | |
| Add | add (or folded into the preceding gemm/conv's bias) | two activations of one shape, or activation + constant that does not vary along the batch |
| Flatten | flatten | axis 1 |
| Reshape | reshape | shape a constant (0 and -1 resolved, allowzero), dim 0 stays the batch |
| Softmax | softmax, on the host | axis not 0; its output must be a graph output |
| Constant | an initializer | value, value_float(s), value_int(s) |

Graph inputs are float32 with static shapes (a symbolic dimension is rejected unless
`input_shapes` fixes it). Weights are float32 constants (initializers or Constant nodes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import onnx.version_converter
from onnx import helper, numpy_helper

from d1tile.sw.errors import CompileError
from d1tile.sw.ir import Graph, Node, Tensor, infer_shape, normalize


__all__ = ["load_onnx", "input_signature", "LOWERINGS", "MIN_OPSET"]

MIN_OPSET = 7
UPGRADE_TO = 13     # models of opset MIN_OPSET .. UPGRADE_TO - 1 are upgraded to it
_ONNX_DOMAINS = ("", "ai.onnx")


# --- reading and checking the model --------------------------------------------------------------

def _read_model(source) -> tuple[onnx.ModelProto, str]:
    """The ModelProto and how messages name it."""
    if isinstance(source, onnx.ModelProto):
        return source, f"model '{source.graph.name or 'unnamed'}'"
    if isinstance(source, (bytes, bytearray)):
        label, data = "model bytes", bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        label = f"'{os.fspath(source)}'"
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CompileError(f"{label}: cannot read the file ({e.strerror or e})") from None
    else:
        raise CompileError(f"expected an ONNX file path, bytes or an onnx.ModelProto, not "
                           f"{type(source).__name__}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:   # protobuf's DecodeError and friends
        raise CompileError(f"{label}: not an ONNX model (it does not parse as an ONNX "
                           f"protobuf: {e})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise CompileError(f"{label}: not an ONNX model (no graph with nodes in it)")
    if isinstance(source, (str, os.PathLike)) and any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:   # weights saved beside the model file
            onnx.external_data_helper.load_external_data_for_model(
                model, os.path.dirname(os.path.abspath(source)))
        except Exception as e:
            raise CompileError(f"{label}: cannot read its external weight data ({e})") from None
    return model, label


def _check_opset(model: onnx.ModelProto, label: str) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _ONNX_DOMAINS]
    if not versions:
        raise CompileError(f"{label}: it imports no ONNX operator set (opset {MIN_OPSET} or "
                           "later is needed)")
    if versions[0] < MIN_OPSET:
        raise CompileError(f"{label}: opset {versions[0]} is not supported (opset {MIN_OPSET} "
                           "or later is needed)")
    return versions[0]


def _upgrade(model: onnx.ModelProto, label: str, version: int) -> onnx.ModelProto:
    """A model of an opset below `UPGRADE_TO`, converted to it by `onnx.version_converter`."""
    if version >= UPGRADE_TO:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, UPGRADE_TO)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompileError(f"{label}: opset {version} could not be upgraded to opset "
                           f"{UPGRADE_TO} by onnx.version_converter ({first})") from None
    return upgraded


def _run_checker(model: onnx.ModelProto, label: str, input_shapes: dict | None):
    """The ONNX checker. When it rejects the model, a node-level reason found by lowering the
    model anyway (e.g. "Gemm: input A has rank 3") is raised instead of the checker's message,
    which often names no node."""
    try:
        onnx.checker.check_model(model)
        return
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        invalid = CompileError(f"{label}: not a valid ONNX model ({first})")
    try:
        _Importer(_fix_input_shapes(model, input_shapes), label).run()
    except CompileError as specific:
        raise specific from None
    except Exception:   # the model is too broken to lower: the checker's message it is
        pass
    raise invalid


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    constants = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in constants]


def input_signature(source) -> dict[str, tuple]:
    """The model's inputs (initializers excluded) and their shapes: an int per static
    dimension, the dimension's name (or None) per symbolic one; an empty tuple when the input
    has no shape. For fixing a dynamic batch from the data: `load_onnx(source,
    input_shapes=...)`."""
    model, _ = _read_model(source)
    out = {}
    for vi in _real_inputs(model):
        tt = vi.type.tensor_type
        dims = tt.shape.dim if tt.HasField("shape") else []
        out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                             for d in dims)
    return out


def _fix_input_shapes(model: onnx.ModelProto, input_shapes: dict | None) -> onnx.ModelProto:
    """A copy of the model whose inputs all have static float32 shapes."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    input_shapes = dict(input_shapes or {})
    inputs = _real_inputs(fixed)
    for name in input_shapes:
        if name not in {i.name for i in inputs}:
            raise CompileError(f"input_shapes names '{name}', which is not a graph input "
                               f"(inputs: {', '.join(i.name for i in inputs)})")
    for vi in inputs:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise CompileError(f"tensor '{vi.name}': only tensor inputs are supported")
        if tt.elem_type != onnx.TensorProto.FLOAT:
            raise CompileError(f"tensor '{vi.name}': input dtype "
                               f"{onnx.TensorProto.DataType.Name(tt.elem_type)} is not supported "
                               "(only float32)")
        if not tt.HasField("shape"):
            if vi.name not in input_shapes:
                raise CompileError(f"tensor '{vi.name}': the input has no shape (dynamic shapes "
                                   "are not supported; pass input_shapes)")
            tt.shape.SetInParent()
        dims = tt.shape.dim
        if vi.name in input_shapes:
            want = [int(d) for d in input_shapes[vi.name]]
            if dims and len(dims) != len(want):
                raise CompileError(f"tensor '{vi.name}': input_shapes gives rank {len(want)}, "
                                   f"the model's input has rank {len(dims)}")
            for i, d in enumerate(dims):
                if d.HasField("dim_value") and d.dim_value != want[i]:
                    raise CompileError(f"tensor '{vi.name}': input_shapes gives dim {i} = "
                                       f"{want[i]}, the model fixes it to {d.dim_value}")
            del dims[:]
            for d in want:
                if d < 1:
                    raise CompileError(f"tensor '{vi.name}': input_shapes {want} must be "
                                       "positive")
                dims.add().dim_value = d
            continue
        for i, d in enumerate(dims):
            if not d.HasField("dim_value") or d.dim_value < 1:
                what = "batch dimension" if i == 0 else f"dimension {i}"
                symbol = f" '{d.dim_param}'" if d.dim_param else ""
                raise CompileError(f"tensor '{vi.name}': dynamic {what}{symbol} is not supported "
                                   f"(pass input_shapes={{'{vi.name}': (...)}} to fix it)")
    return fixed


def _onnx_shapes(model: onnx.ModelProto, label: str) -> dict[str, tuple[int, ...]]:
    """Static shapes ONNX's shape inference finds, for the cross-check."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompileError(f"{label}: ONNX shape inference fails ({first})") from None
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)
    return shapes


# --- lowering ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lowering:
    """How one ONNX op type becomes IR: `build(importer, onnx_node, name, attrs)` emits IR
    nodes; `attrs` lists the ONNX attributes it understands (any other is rejected); it
    produces `outputs` outputs (extra optional outputs are rejected)."""
    build: Callable
    attrs: tuple[str, ...] = ()
    outputs: int = 1


class _Importer:
    """Lowers the nodes of one ONNX graph, in order, into IR nodes."""

    def __init__(self, model: onnx.ModelProto, label: str):
        self.model = model
        self.label = label
        self.constants: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.tensors: dict[str, Tensor] = {}
        for vi in _real_inputs(model):
            shape = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
            self.tensors[vi.name] = Tensor(vi.name, shape)
        self.inputs = list(self.tensors)
        self.readers: dict[str, int] = {}
        for onode in model.graph.node:
            for i in set(onode.input):
                self.readers[i] = self.readers.get(i, 0) + 1
        self.nodes: list[Node] = []
        self.initializers: dict[str, np.ndarray] = {}
        self.node = None     # the ONNX node being lowered, its name
        self.name = ""

    # -- messages --
    def fail(self, reason: str):
        raise CompileError(f"node '{self.name}' ({self.node.op_type}): {reason}")

    # -- operands --
    def input(self, i: int) -> str | None:
        """The name of input i, or None if it is absent (optional and empty)."""
        ins = self.node.input
        return ins[i] if i < len(ins) and ins[i] else None

    def activation(self, i: int, rank: int | None = None) -> str:
        name = self.input(i)
        if name is None:
            self.fail(f"input {i} is missing")
        if name in self.constants:
            self.fail(f"input {i} ('{name}') must be an activation, not a constant")
        if name not in self.tensors:
            self.fail(f"input {i} ('{name}') is not computed by an earlier node")
        if rank is not None and len(self.tensors[name].shape) != rank:
            self.fail(f"input {i} ('{name}') has shape {list(self.tensors[name].shape)}; "
                      f"only rank {rank} is supported")
        return name

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def constant(self, i: int, what: str, *, float_only: bool = True) -> np.ndarray | None:
        name = self.input(i)
        if name is None:
            return None
        if name not in self.constants:
            self.fail(f"{what} ('{name}') must be a constant initializer (computed "
                      "weights or shapes are not supported)")
        value = self.constants[name]
        if float_only and value.dtype != np.float32:
            self.fail(f"{what} ('{name}') has dtype {value.dtype}; only float32 is supported")
        return value

    def add_constant(self, suffix: str, value: np.ndarray) -> str:
        """A new constant named after the node (`fc1.W`); an ONNX constant of that name that only
        this node reads is shadowed, one that another node reads is not."""
        name = f"{self.name}.{suffix}"
        while (name in self.initializers or name in self.tensors
               or (name in self.constants and self.readers.get(name, 0) > (name in self.node.input))):
            name += "_"
        self.initializers[name] = np.ascontiguousarray(value, dtype=np.float32)
        return name

    def use_constant(self, name: str) -> str:
        self.initializers[name] = self.constants[name]
        return name

    # -- emitting --
    def emit(self, op: str, inputs: list[str], attrs: dict | None = None) -> None:
        """One IR node computing the ONNX node's first output."""
        node = Node(op, self.name, inputs, [self.node.output[0]], attrs or {},
                    origin=self.node.op_type)
        shapes = [self.initializers[i].shape if i in self.initializers else self.shape(i)
                  for i in inputs]
        consts = [self.initializers.get(i) for i in inputs]
        self.tensors[node.output] = Tensor(node.output, infer_shape(node, shapes, consts))
        self.nodes.append(node)

    def run(self) -> Graph:
        for onode, name in zip(self.model.graph.node, _node_names(self.model)):
            self.node, self.name = onode, name
            attrs = {a.name: helper.get_attribute_value(a) for a in onode.attribute}
            LOWERINGS[onode.op_type].build(self, attrs)
        outputs = []
        for vi in self.model.graph.output:
            if vi.name not in self.tensors or vi.name in self.inputs:
                raise CompileError(f"tensor '{vi.name}': a graph output must be computed by a "
                                   "node")
            outputs.append(vi.name)
        return Graph(self.model.graph.name or "onnx", self.inputs, outputs, self.nodes,
                     self.tensors, self.initializers)


def _node_names(model: onnx.ModelProto) -> list[str]:
    """How messages and the IR name each ONNX node: its name, else "<OpType>_<index>"."""
    names: list[str] = []
    for index, onode in enumerate(model.graph.node):
        name = onode.name or f"{onode.op_type}_{index}"
        while name in names:
            name += "_"
        names.append(name)
    return names


def _check_supported(model: onnx.ModelProto):
    """Every node's domain, op type, attributes and outputs are ones `LOWERINGS` handles.
    Runs before the ONNX checker so that an unsupported node is named as such."""
    for onode, name in zip(model.graph.node, _node_names(model)):
        def fail(reason):
            raise CompileError(f"node '{name}' ({onode.op_type}): {reason}")
        if onode.domain not in _ONNX_DOMAINS:
            fail(f"operator domain '{onode.domain}' is not supported (only the ONNX domain)")
        lowering = LOWERINGS.get(onode.op_type)
        if lowering is None:
            fail(f"operator {onode.op_type} is not supported (supported: "
                 f"{', '.join(sorted(LOWERINGS))})")
        for a in onode.attribute:
            if a.name not in lowering.attrs:
                fail(f"attribute '{a.name}' is not supported")
        extra = [o for o in onode.output[lowering.outputs:] if o]
        if extra:
            fail(f"output(s) {extra} are not supported (only the first output)")


# -- attribute helpers --

def _ints(imp: _Importer, attrs: dict, key: str, default, count: int) -> tuple[int, ...]:
    value = attrs.get(key, default)
    value = tuple(int(v) for v in value)
    if len(value) != count:
        imp.fail(f"{key} {list(value)} must have {count} entries")
    return value


def _spatial(imp: _Importer, attrs: dict, x_shape, kernel) -> tuple[tuple, tuple]:
    """(strides, pads as (top, left, bottom, right)) from ONNX strides/pads/auto_pad."""
    strides = _ints(imp, attrs, "strides", (1, 1), 2)
    dilations = _ints(imp, attrs, "dilations", (1, 1), 2)
    if dilations != (1, 1):
        imp.fail(f"dilations {list(dilations)} are not supported (only 1)")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad == "NOTSET":
        b = _ints(imp, attrs, "pads", (0, 0, 0, 0), 4)   # ONNX: (h_begin, w_begin, h_end, w_end)
        return strides, b
    if "pads" in attrs:
        imp.fail(f"pads and auto_pad={auto_pad} are both given")
    if auto_pad == "VALID":
        return strides, (0, 0, 0, 0)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        imp.fail(f"auto_pad '{auto_pad}' is not supported")
    begin, end = [], []
    for size, k, s in zip(x_shape[2:], kernel, strides):
        total = (-(-size // s) - 1) * s + k - size
        if total < 0:
            # The spec's padding is negative; ONNX implementations disagree on where it goes.
            imp.fail(f"auto_pad={auto_pad} with kernel {list(kernel)} and strides "
                     f"{list(strides)} gives negative padding, which ONNX implementations "
                     "treat differently (give explicit pads)")
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return strides, (begin[0], begin[1], end[0], end[1])


def _no_ones(imp: _Importer, attrs: dict, key: str, default, supported, reason: str):
    value = attrs.get(key, default)
    if value not in supported:
        imp.fail(f"{key}={value} is not supported ({reason})")


# -- the lowerings, one per ONNX op type --

def _lower_matmul(imp: _Importer, attrs: dict):
    x = imp.activation(0)
    if len(imp.shape(x)) != 2:
        imp.fail(f"input 0 ('{x}') has shape {list(imp.shape(x))}; only 2-D MatMul "
                 "(x [batch, K] @ W [K, F]) is supported")
    w = imp.constant(1, "input B")
    if w.ndim != 2:
        imp.fail(f"input B has shape {list(w.shape)}; only a 2-D constant [K, F] is supported")
    imp.emit("gemm", [x, imp.use_constant(imp.input(1)),
                      imp.add_constant("b", np.zeros(w.shape[1], np.float32))])


def _lower_gemm(imp: _Importer, attrs: dict):
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    _no_ones(imp, attrs, "transA", 0, (0,), "only 0: A is the activation [batch, K]")
    _no_ones(imp, attrs, "transB", 0, (0, 1), "only 0 or 1")
    x = imp.activation(0, rank=2)
    w = imp.constant(1, "input B")
    if w.ndim != 2:
        imp.fail(f"input B has shape {list(w.shape)}; only a 2-D constant is supported")
    if attrs.get("transB", 0):
        w = w.T
    w = w * np.float32(alpha) if alpha != 1.0 else w     # alpha A B = A (alpha B)
    n_out = w.shape[1]
    c = imp.constant(2, "input C")
    if c is None:
        bias = np.zeros(n_out, np.float32)
    else:
        try:
            if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
                raise ValueError
            bias = np.broadcast_to(c.reshape(-1) if c.ndim == 2 else c, (n_out,))
        except ValueError:
            imp.fail(f"input C of shape {list(c.shape)} is not one value per output feature "
                     f"(it must broadcast to [1, {n_out}]: a bias that varies along the batch "
                     "is not supported)")
        bias = bias * np.float32(beta) if beta != 1.0 else bias
    imp.emit("gemm", [x, imp.add_constant("W", w), imp.add_constant("b", bias)])


def _lower_conv(imp: _Importer, attrs: dict):
    x = imp.activation(0)
    if len(imp.shape(x)) != 4:
        imp.fail(f"input X has shape {list(imp.shape(x))}; only 2-D convolutions (NCHW input) "
                 "are supported")
    _no_ones(imp, attrs, "group", 1, (1,), "only 1")
    w = imp.constant(1, "weight W")
    if w.ndim != 4:
        imp.fail(f"weight W has shape {list(w.shape)}; a 2-D convolution needs [O, C, kh, kw]")
    kernel = tuple(w.shape[2:])
    if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != kernel:
        imp.fail(f"kernel_shape {list(attrs['kernel_shape'])} disagrees with W's {list(kernel)}")
    strides, pads = _spatial(imp, attrs, imp.shape(x), kernel)
    b = imp.constant(2, "bias B")
    bias = np.zeros(w.shape[0], np.float32) if b is None else b
    if bias.shape != (w.shape[0],):
        imp.fail(f"bias B has shape {list(bias.shape)}, it must be [{w.shape[0]}]")
    imp.emit("conv", [x, imp.use_constant(imp.input(1)), imp.add_constant("b", bias)],
             {"strides": strides, "pads": pads})


def _pool(op: str):
    def lower(imp: _Importer, attrs: dict):
        x = imp.activation(0)
        if len(imp.shape(x)) != 4:
            imp.fail(f"input X has shape {list(imp.shape(x))}; only 2-D pooling (NCHW input) "
                     "is supported")
        if "kernel_shape" not in attrs:
            imp.fail("kernel_shape is missing")
        kernel = _ints(imp, attrs, "kernel_shape", None, 2)
        _no_ones(imp, attrs, "ceil_mode", 0, (0,), "only 0: output sizes round down")
        strides, pads = _spatial(imp, attrs, imp.shape(x), kernel)
        extra = {}
        if op == "avgpool":
            include = attrs.get("count_include_pad", 0)
            if include not in (0, 1):
                imp.fail(f"count_include_pad={include} must be 0 or 1")
            extra["count_include_pad"] = bool(include)
        imp.emit(op, [x], {"kernel": kernel, "strides": strides, "pads": pads, **extra})
    return lower


def _global_pool(op: str):
    def lower(imp: _Importer, attrs: dict):
        x = imp.activation(0, rank=4)
        extra = {"count_include_pad": False} if op == "avgpool" else {}
        imp.emit(op, [x], {"kernel": imp.shape(x)[2:], "strides": (1, 1), "pads": (0, 0, 0, 0),
                           **extra})
    return lower


def _lower_relu(imp: _Importer, attrs: dict):
    imp.emit("relu", [imp.activation(0)])


def _lower_add(imp: _Importer, attrs: dict):
    operands = []
    for i in (0, 1):
        name = imp.input(i)
        if name in imp.constants:
            imp.constant(i, f"input {'AB'[i]}")
            operands.append(imp.use_constant(name))
        else:
            operands.append(imp.activation(i))
    imp.emit("add", operands)


def _lower_flatten(imp: _Importer, attrs: dict):
    x = imp.activation(0)
    rank = len(imp.shape(x))
    axis = int(attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis != 1:
        imp.fail(f"axis={attrs.get('axis', 1)} is not supported (only 1: the batch stays dim 0 "
                 "and the rest is flattened)")
    imp.emit("flatten", [x])


def _lower_reshape(imp: _Importer, attrs: dict):
    x = imp.activation(0)
    spec = imp.constant(1, "input shape", float_only=False)
    if spec is None:
        imp.fail("input shape is missing")
    if spec.dtype != np.int64 or spec.ndim != 1:
        imp.fail(f"input shape must be a 1-D int64 constant, got {spec.dtype} {list(spec.shape)}")
    src = imp.shape(x)
    target = [int(d) for d in spec]
    if not attrs.get("allowzero", 0):
        for i, d in enumerate(target):
            if d == 0:
                if i >= len(src):
                    imp.fail(f"shape {list(spec)}: 0 at dim {i} copies a dim the input lacks")
                target[i] = src[i]
    if target.count(-1) > 1:
        imp.fail(f"shape {list(spec)} has more than one -1")
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1]))
        if known <= 0 or int(np.prod(src)) % known:
            imp.fail(f"cannot reshape {list(src)} to {list(spec)}")
        target[target.index(-1)] = int(np.prod(src)) // known
    imp.emit("reshape", [x], {"shape": tuple(target)})


def _lower_softmax(imp: _Importer, attrs: dict):
    x = imp.activation(0)
    axis = int(attrs.get("axis", -1))
    imp.emit("softmax", [x], {"axis": axis + len(imp.shape(x)) if axis < 0 else axis})


def _lower_constant(imp: _Importer, attrs: dict):
    if len(attrs) != 1:
        imp.fail("exactly one value attribute is needed")
    (key, value), = attrs.items()
    if key == "value":
        array = numpy_helper.to_array(value)
    elif key in ("value_float", "value_floats"):
        array = np.asarray(value, np.float32)
    else:   # value_int(s)
        array = np.asarray(value, np.int64)
    imp.constants[imp.node.output[0]] = array


def _lower_batchnorm(imp: _Importer, attrs: dict):
    """Y = (X - mean) / sqrt(var + epsilon) * scale + B per channel (dim 1), folded into the
    Conv or Gemm that computes X: W' = W s, b' = (b - mean) s + B with s = scale /
    sqrt(var + epsilon) per output channel (in float64, then float32)."""
    _no_ones(imp, attrs, "training_mode", 0, (0,), "only inference: the statistics are "
             "constants folded into the preceding Conv or Gemm")
    x = imp.activation(0)
    producer = next((n for n in imp.nodes if n.output == x), None)
    outputs = {o.name for o in imp.model.graph.output}
    if producer is None or producer.op not in ("conv", "gemm") or imp.readers.get(x, 0) != 1 \
            or x in outputs:
        imp.fail(f"its input '{x}' must be computed by a Conv or Gemm and read by nothing else "
                 "(BatchNormalization is folded into their weights and bias)")
    channels = imp.shape(x)[1]
    params = []
    for i, what in enumerate(("scale", "B", "input_mean", "input_var"), start=1):
        value = imp.constant(i, f"input {what}")
        if value is None or value.shape != (channels,):
            imp.fail(f"input {what} must be a constant of shape [{channels}] (one per channel), "
                     f"not {None if value is None else list(value.shape)}")
        params.append(value.astype(np.float64))
    scale, shift, mean, var = params
    epsilon = float(attrs.get("epsilon", 1e-5))
    if np.any(var + epsilon <= 0):
        imp.fail(f"input_var + epsilon must be positive (epsilon={epsilon:g})")
    s = scale / np.sqrt(var + epsilon)
    w = imp.initializers[producer.inputs[1]].astype(np.float64)
    b = imp.initializers[producer.inputs[2]].astype(np.float64)
    w = w * (s[:, None, None, None] if producer.op == "conv" else s[None, :])
    for old in producer.inputs[1:]:
        if sum(old in n.inputs for n in imp.nodes) == 1:
            del imp.initializers[old]
    producer.inputs[1:] = [imp.add_constant("W", w), imp.add_constant("b", (b - mean) * s + shift)]
    out = imp.node.output[0]
    producer.outputs = [out]
    imp.tensors[out] = Tensor(out, imp.tensors.pop(x).shape)


LOWERINGS: dict[str, Lowering] = {
    "MatMul": Lowering(_lower_matmul),
    "Gemm": Lowering(_lower_gemm, ("alpha", "beta", "transA", "transB")),
    "Conv": Lowering(_lower_conv, ("auto_pad", "dilations", "group", "kernel_shape", "pads",
                                   "strides")),
    "MaxPool": Lowering(_pool("maxpool"), ("auto_pad", "ceil_mode", "dilations", "kernel_shape",
                                           "pads", "storage_order", "strides")),
    "AveragePool": Lowering(_pool("avgpool"), ("auto_pad", "ceil_mode", "count_include_pad",
                                               "dilations", "kernel_shape", "pads", "strides")),
    "GlobalMaxPool": Lowering(_global_pool("maxpool")),
    "GlobalAveragePool": Lowering(_global_pool("avgpool")),
    "BatchNormalization": Lowering(_lower_batchnorm, ("epsilon", "momentum", "training_mode")),
    "Relu": Lowering(_lower_relu),
    "Add": Lowering(_lower_add),
    "Flatten": Lowering(_lower_flatten, ("axis",)),
    "Reshape": Lowering(_lower_reshape, ("allowzero",)),
    "Softmax": Lowering(_lower_softmax, ("axis",)),
    "Constant": Lowering(_lower_constant, ("value", "value_float", "value_floats", "value_int",
                                           "value_ints")),
}
"""ONNX op type -> how it becomes IR. The table is the list of supported ops."""


# --- the front end -------------------------------------------------------------------------------

def _check_shapes(graph: Graph, onnx_shapes: dict):
    for name, tensor in graph.tensors.items():
        theirs = onnx_shapes.get(name)
        if theirs is not None and theirs != tensor.shape:
            node = graph.producer(name)
            where = node.where() if node else f"tensor '{name}'"
            raise CompileError(f"{where}: the compiler computes shape {list(tensor.shape)} for "
                               f"'{name}', ONNX shape inference {list(theirs)}")


def load_onnx(source, *, input_shapes: dict | None = None) -> Graph:
    """Import an ONNX model as a normalised, validated IR `Graph`.

    `source` is a file path, the file's bytes or an `onnx.ModelProto`. `input_shapes` maps
    input names to static shapes, to fix symbolic dimensions (e.g. the batch). Raises
    `CompileError` for a file that cannot be read or is not an ONNX model, an opset below 7 (7
    to 12 are upgraded to 13 with `onnx.version_converter`), a
    dynamic shape, and any unsupported op, attribute or shape (naming the node and op).
    """
    model, label = _read_model(source)
    version = _check_opset(model, label)
    _check_supported(model)
    if version < UPGRADE_TO:
        model = _upgrade(model, label, version)
        _check_supported(model)
    _run_checker(model, label, input_shapes)
    model = _fix_input_shapes(model, input_shapes)
    graph = normalize(_Importer(model, label).run())
    _check_shapes(graph, _onnx_shapes(model, label))
    return graph
