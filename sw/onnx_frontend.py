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
from d1tile.sw.ir import (COMPUTE_OPS, POOL_OPS, Graph, Node, Tensor, attribute,
                         canonical_attrs, infer_shape, normalize)


def float32_input(array, what: str) -> np.ndarray:
    """A model's input data as float32, or a `ValueError` in one line starting with `what`: it
    must be a real numeric NumPy array whose values are finite, also once in float32 (shared
    by `d1tile run`/`train`'s .npy options and the sweep's ONNX workloads)."""
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{what}: expected a numeric .npy array")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{what}: complex values ({array.dtype}) are not supported")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: contains NaN or infinite values")
    with np.errstate(over="ignore"):
        out = array.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{what}: values beyond float32's range (up to "
                         f"{float(np.max(np.abs(array))):.4g})")
    return out


__all__ = ["load_onnx", "input_signature", "LOWERINGS", "MIN_OPSET"]

MIN_OPSET = 7
INT8_SYMMETRIC = 127    # the tile's int8 weights are in [-127, 127]
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


_WINDOW_OPS = frozenset({"Conv", "MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool"})
_ELEMENTWISE = frozenset({"Relu", "Add", "QuantizeLinear", "DequantizeLinear"})


def _qdq_aliases(model: onnx.ModelProto) -> dict[str, str]:
    """ONNX tensor -> the activation it stands for, for the Q/DQ pairs of a QDQ model: a
    QuantizeLinear's output stands for its input, a DequantizeLinear's output (of a
    QuantizeLinear's output) for that. Whether a pair is one the tile can take is checked
    when its nodes are lowered."""
    quantized = {n.output[0] for n in model.graph.node
                 if n.op_type == "QuantizeLinear" and n.input and n.output}
    alias = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input and n.output:
            alias[n.output[0]] = n.input[0]
        elif n.op_type == "DequantizeLinear" and n.output and n.input \
                and n.input[0] in quantized:
            alias[n.output[0]] = n.input[0]
    return alias


def _signal_inputs(model: onnx.ModelProto) -> set[str]:
    """The rank-3 graph inputs that reach a Conv or pool through elementwise ops (Relu, Add,
    Q/DQ): 1-D signals [B, C, L], which the IR holds as [B, C, 1, L]."""
    found = set()
    for vi in _real_inputs(model):
        if len(vi.type.tensor_type.shape.dim) != 3:
            continue
        reach = {vi.name}
        for onode in model.graph.node:
            if not any(i in reach for i in onode.input):
                continue
            if onode.op_type in _WINDOW_OPS:
                found.add(vi.name)
                break
            if onode.op_type in _ELEMENTWISE:
                reach.update(o for o in onode.output if o)
    return found


class _Importer:
    """Lowers the nodes of one ONNX graph, in order, into IR nodes.

    Two ONNX tensors may be one IR tensor: the output of a Q/DQ pair is its input (`alias`,
    a QDQ model's quantisation is kept as scales: `scales`, `weight_scales`). A 1-D signal
    [B, C, L] is held *lifted*, as [B, C, 1, L] under its ONNX name (`lifted`), from a rank-3
    graph input that reaches a Conv or pool, and from every 1-D Conv or pool and the
    elementwise ops after them; an op that needs the ONNX shape reads it through a reshape
    (`activation`), a 1-D Conv or pool reads an unlifted signal through one (`signal`)."""

    def __init__(self, model: onnx.ModelProto, label: str):
        self.model = model
        self.label = label
        self.constants: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.alias = _qdq_aliases(model)
        self.lifted: set[str] = set()
        self.tensors: dict[str, Tensor] = {}
        signals = _signal_inputs(model)
        for vi in _real_inputs(model):
            shape = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
            if vi.name in signals:
                shape = shape[:2] + (1,) + shape[2:]
                self.lifted.add(vi.name)
            self.tensors[vi.name] = Tensor(vi.name, shape)
        self.inputs = list(self.tensors)
        self.outputs = {o.name for o in model.graph.output}
        self.readers: dict[str, int] = {}        # ONNX name -> nodes reading it
        self.users: dict[str, int] = {}          # activation -> nodes reading it, Q/DQ seen through
        self.reader_ops: dict[str, list[str]] = {}
        for onode in model.graph.node:
            for i in set(onode.input):
                self.readers[i] = self.readers.get(i, 0) + 1
                self.reader_ops.setdefault(i, []).append(onode.op_type)
                if onode.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                    self.users[self.resolve(i)] = self.users.get(self.resolve(i), 0) + 1
        self.producers = {o: n for n in model.graph.node for o in n.output}
        self.nodes: list[Node] = []
        self.initializers: dict[str, np.ndarray] = {}
        self.scales: dict[str, float] = {}         # activation -> the model's int8 scale
        self.q_scales: dict[str, float] = {}       # QuantizeLinear output -> its scale
        self.weight_scales: dict[str, float] = {}  # constant -> the scale of its int8 values
        self.reshaped: dict[str, str] = {}         # tensor -> its (un)lifted copy
        self.renamed: dict[str, str] = {}          # IR tensor -> the graph output it became
        self.node = None     # the ONNX node being lowered, its name
        self.name = ""

    # -- messages --
    def fail(self, reason: str):
        raise CompileError(f"node '{self.name}' ({self.node.op_type}): {reason}")

    # -- names --
    def resolve(self, name: str) -> str:
        """The tensor an ONNX name stands for (through Q/DQ pairs)."""
        while name in self.alias:
            name = self.alias[name]
        return name

    def fresh(self, base: str) -> str:
        """An unused tensor/node name starting with `base`."""
        taken = lambda n: (n in self.tensors or n in self.constants or n in self.initializers
                           or n in self.outputs or any(node.name == n for node in self.nodes))
        while taken(base):
            base += "_"
        return base

    # -- operands --
    def input(self, i: int) -> str | None:
        """The name of input i, or None if it is absent (optional and empty)."""
        ins = self.node.input
        return ins[i] if i < len(ins) and ins[i] else None

    def _tensor(self, i: int) -> str:
        """Input i as an activation of this graph, lifted or not."""
        raw = self.input(i)
        if raw is None:
            self.fail(f"input {i} is missing")
        name = self.resolve(raw)
        if name in self.constants:
            self.fail(f"input {i} ('{raw}') must be an activation, not a constant")
        if name not in self.tensors:
            self.fail(f"input {i} ('{raw}') is not computed by an earlier node")
        return name

    def activation(self, i: int, rank: int | None = None) -> str:
        """Input i as an activation in its ONNX shape (a lifted signal read through a
        reshape)."""
        name = self._tensor(i)
        if name in self.lifted:
            name = self._reshaped(name, self.onnx_shape(name), "1d")
        if rank is not None and len(self.tensors[name].shape) != rank:
            self.fail(f"input {i} ('{self.input(i)}') has shape "
                      f"{list(self.tensors[name].shape)}; only rank {rank} is supported")
        return name

    def signal(self, i: int, what: str) -> tuple[str, int]:
        """Input i of a Conv or pool as an IR image [B, C, H, W] and its spatial rank (1 for a
        signal [B, C, L], held as [B, C, 1, L])."""
        name = self._tensor(i)
        shape = self.onnx_shape(name)
        if len(shape) not in (3, 4):
            self.fail(f"input X has shape {list(shape)}; only 1-D and 2-D {what} (input "
                      "[N, C, L] or [N, C, H, W]) are supported")
        if len(shape) == 3 and name not in self.lifted:
            name = self._reshaped(name, shape[:2] + (1,) + shape[2:], "2d")
        return name, len(shape) - 2

    def elementwise(self, names: list[str]) -> tuple[list[str], bool]:
        """The activations of an elementwise op, all lifted when one is (the output is then
        lifted too)."""
        if not any(n in self.lifted for n in names):
            return names, False
        out = []
        for n in names:
            shape = self.tensors[n].shape
            out.append(n if n in self.lifted or len(shape) != 3 else
                       self._reshaped(n, shape[:2] + (1,) + shape[2:], "2d"))
        return out, True

    def _reshaped(self, name: str, shape: tuple, suffix: str) -> str:
        """An IR reshape of `name` to `shape` (emitted once per tensor)."""
        if name not in self.reshaped:
            out = self.fresh(f"{name}.{suffix}")
            node = Node("reshape", out, [name], [out], {"shape": tuple(shape)},
                        origin=self.node.op_type)
            self.tensors[out] = Tensor(out, infer_shape(node, [self.shape(name)], [None]))
            self.nodes.append(node)
            self.reshaped[name] = out
        return self.reshaped[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def onnx_shape(self, name: str) -> tuple[int, ...]:
        """The ONNX shape of an activation (a lifted one without its unit H)."""
        shape = self.tensors[name].shape
        return shape[:2] + shape[3:] if name in self.lifted else shape

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

    def weight_scale(self, i: int) -> float | None:
        """The scale of input i's int8 values when it is a dequantised constant (QDQ)."""
        return self.weight_scales.get(self.input(i))

    def add_constant(self, suffix: str, value: np.ndarray, scale: float | None = None) -> str:
        """A new constant named after the node (`fc1.W`); an ONNX constant of that name that only
        this node reads is shadowed, one that another node reads is not. `scale`: the scale of
        its int8 values, when it is a QDQ model's weight transformed."""
        name = f"{self.name}.{suffix}"
        while (name in self.initializers or name in self.tensors
               or (name in self.constants and self.readers.get(name, 0) > (name in self.node.input))):
            name += "_"
        self.initializers[name] = np.ascontiguousarray(value, dtype=np.float32)
        if scale is not None:
            self.weight_scales[name] = scale
        return name

    def use_constant(self, name: str) -> str:
        self.initializers[name] = self.constants[name]
        return name

    # -- emitting --
    def emit(self, op: str, inputs: list[str], attrs: dict | None = None, *,
             lifted: bool = False) -> None:
        """One IR node computing the ONNX node's first output (`lifted`: held as [B, C, 1,
        L])."""
        node = Node(op, self.name, inputs, [self.node.output[0]],
                    canonical_attrs(op, attrs or {}), origin=self.node.op_type)
        shapes = [self.initializers[i].shape if i in self.initializers else self.shape(i)
                  for i in inputs]
        consts = [self.initializers.get(i) for i in inputs]
        self.tensors[node.output] = Tensor(node.output, infer_shape(node, shapes, consts))
        if lifted:
            self.lifted.add(node.output)
        if op in COMPUTE_OPS:
            self._check_weight_scale(inputs[1])
        self.nodes.append(node)

    def _check_weight_scale(self, name: str) -> None:
        """A QDQ weight's int8 values must be the tile's: symmetric, in [-127, 127]."""
        scale = self.weight_scales.get(name)
        if scale is None:
            return
        q = np.rint(self.initializers[name].astype(np.float64) / scale)
        if q.size and (q.min() < -INT8_SYMMETRIC or q.max() > INT8_SYMMETRIC):
            self.fail(f"its int8 weights reach {int(q.min())}; the tile's weights are "
                      f"symmetric int8 in [-{INT8_SYMMETRIC}, {INT8_SYMMETRIC}]")

    def record_scale(self, name: str, scale: float) -> None:
        """The model quantises activation `name` with `scale`."""
        if self.scales.get(name, scale) != scale:
            self.fail(f"tensor '{name}' is quantised with two scales ({self.scales[name]:.6g} "
                      f"and {scale:.6g}); the tile holds one int8 copy per tensor")
        self.scales[name] = scale

    def rename(self, old: str, new: str) -> None:
        """IR tensor `old` is called `new` (a graph output named after its Q/DQ pair)."""
        for node in self.nodes:
            node.inputs = [new if i == old else i for i in node.inputs]
            node.outputs = [new if o == old else o for o in node.outputs]
        self.tensors[new] = Tensor(new, self.tensors.pop(old).shape)
        if old in self.scales:
            self.scales[new] = self.scales.pop(old)
        if old in self.lifted:
            self.lifted.discard(old)
            self.lifted.add(new)
        self.renamed[old] = new

    def run(self) -> Graph:
        for onode, name in zip(self.model.graph.node, _node_names(self.model)):
            self.node, self.name = onode, name
            attrs = {a.name: helper.get_attribute_value(a) for a in onode.attribute}
            LOWERINGS[onode.op_type].build(self, attrs)
        outputs = [self._output(vi.name) for vi in self.model.graph.output]
        scales = {t: s for t, s in self.scales.items() if t in self.tensors}
        weights = {n.inputs[1] for n in self.nodes if n.op in COMPUTE_OPS}
        scales.update({w: s for w, s in self.weight_scales.items() if w in weights})
        return Graph(self.model.graph.name or "onnx", self.inputs, outputs, self.nodes,
                     self.tensors, self.initializers, scales)

    def _output(self, name: str) -> str:
        """The IR tensor of graph output `name`, called `name` and in its ONNX shape."""
        tensor = self.resolve(name)
        if tensor in self.renamed or (tensor != name and tensor in self.outputs):
            raise CompileError(f"tensor '{name}': it is the same tensor as another graph "
                               f"output ('{self.renamed.get(tensor, tensor)}')")
        if tensor not in self.tensors or tensor in self.inputs:
            raise CompileError(f"tensor '{name}': a graph output must be computed by a node")
        if tensor in self.lifted:
            if tensor == name:
                tensor = self.fresh(f"{name}.2d")
                self.rename(name, tensor)
            shape = self.onnx_shape(tensor)
            self.nodes.append(Node("reshape", self.fresh(f"{name}.1d"), [tensor], [name],
                                   {"shape": shape}, origin="Reshape"))
            self.tensors[name] = Tensor(name, shape)
            if tensor in self.scales:
                self.scales[name] = self.scales[tensor]
        elif tensor != name:
            self.rename(tensor, name)
        return name


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


def _to_2d(values: tuple, spatial: int, pad: int) -> tuple:
    """Per-axis values of a 1-D op as a 2-D one's (H first: `pad`)."""
    return values if spatial == 2 else (pad,) + values


def _spatial(imp: _Importer, attrs: dict, sizes: tuple, kernel: tuple) -> tuple[tuple, tuple,
                                                                                tuple]:
    """(strides, pads as (top, left, bottom, right), dilations) of a 1-D or 2-D Conv or pool
    over spatial `sizes` from ONNX strides/pads/dilations/auto_pad, as a 2-D op's (a 1-D op
    is one with H = 1: stride 1, pads 0, dilation 1 along H)."""
    n = len(sizes)
    strides = _ints(imp, attrs, "strides", (1,) * n, n)
    dilations = _ints(imp, attrs, "dilations", (1,) * n, n)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad == "NOTSET":
        pads = _ints(imp, attrs, "pads", (0,) * 2 * n, 2 * n)  # ONNX: begins, then ends
        begin, end = pads[:n], pads[n:]
    elif "pads" in attrs:
        imp.fail(f"pads and auto_pad={auto_pad} are both given")
    elif auto_pad == "VALID":
        begin, end = (0,) * n, (0,) * n
    elif auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        imp.fail(f"auto_pad '{auto_pad}' is not supported")
    elif any(d != 1 for d in dilations):
        # The spec pads for the dilated extent, onnx.reference for the kernel; onnxruntime
        # refuses the combination.
        imp.fail(f"auto_pad={auto_pad} with dilations {list(dilations)} is not supported (ONNX "
                 "implementations pad it differently: give explicit pads)")
    else:
        begin, end = [], []
        for size, k, s in zip(sizes, kernel, strides):
            total = (-(-size // s) - 1) * s + k - size
            if total < 0:
                # The spec's padding is negative; ONNX implementations disagree on where it goes.
                imp.fail(f"auto_pad={auto_pad} with kernel {list(kernel)} and strides "
                         f"{list(strides)} gives negative padding, which ONNX implementations "
                         "treat differently (give explicit pads)")
            small, big = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
        begin, end = tuple(begin), tuple(end)
    begin, end = _to_2d(begin, n, 0), _to_2d(end, n, 0)
    return (_to_2d(strides, n, 1), (begin[0], begin[1], end[0], end[1]),
            _to_2d(dilations, n, 1))


def _no_ones(imp: _Importer, attrs: dict, key: str, default, supported, reason: str):
    value = attrs.get(key, default)
    if value not in supported:
        imp.fail(f"{key}={value} is not supported ({reason})")


# -- the lowerings, one per ONNX op type --

def _lower_matmul(imp: _Importer, attrs: dict):
    x = imp.activation(0)
    if len(imp.shape(x)) < 2:
        imp.fail(f"input A ('{imp.input(0)}') has shape {list(imp.shape(x))}; a 1-D A has no "
                 "batch dimension (only A [batch, ..., K] @ B [K, F] is supported)")
    w = imp.constant(1, "input B")
    if w.ndim != 2:
        imp.fail(f"input B has shape {list(w.shape)}; only a 2-D constant [K, F] is supported "
                 "(no 1-D or batched B)")
    imp.emit("gemm", [x, imp.use_constant(imp.input(1)),
                      imp.add_constant("b", np.zeros(w.shape[1], np.float32))])


def _lower_gemm(imp: _Importer, attrs: dict):
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    _no_ones(imp, attrs, "transA", 0, (0,), "A^T B sums over A's dim 0, the batch: the "
             "product would mix samples")
    _no_ones(imp, attrs, "transB", 0, (0, 1), "only 0 or 1")
    x = imp.activation(0, rank=2)
    w = imp.constant(1, "input B")
    if w.ndim != 2:
        imp.fail(f"input B has shape {list(w.shape)}; only a 2-D constant is supported")
    if attrs.get("transB", 0):
        w = w.T
    w = w * np.float32(alpha) if alpha != 1.0 else w     # alpha A B = A (alpha B)
    scale = imp.weight_scale(1)
    if scale is not None:        # a QDQ weight: alpha W has the int8 values +-q at |alpha| s
        scale = scale * abs(alpha) if alpha != 0 else None
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
    imp.emit("gemm", [x, imp.add_constant("W", w, scale), imp.add_constant("b", bias)])


def _kernel(imp: _Importer, attrs: dict, spatial: int, weight_shape=None) -> tuple[int, ...]:
    """The kernel's spatial shape: W's (checked against kernel_shape) or kernel_shape."""
    if weight_shape is not None:
        kernel = tuple(weight_shape[2:])
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != kernel:
            imp.fail(f"kernel_shape {list(attrs['kernel_shape'])} disagrees with W's "
                     f"{list(kernel)}")
        return kernel
    if "kernel_shape" not in attrs:
        imp.fail("kernel_shape is missing")
    return _ints(imp, attrs, "kernel_shape", None, spatial)


def _lower_conv(imp: _Importer, attrs: dict):
    """A 1-D or 2-D convolution, any group (depthwise: group = C) and dilations; a 1-D one is
    a 2-D one with H = 1 on the lifted signal, its weights [O, C / group, 1, k]."""
    x, spatial = imp.signal(0, "convolutions")
    w = imp.constant(1, "weight W")
    if w.ndim != spatial + 2:
        imp.fail(f"weight W has shape {list(w.shape)}; a {spatial}-D convolution needs "
                 f"[O, C / group, {', '.join('kh kw'.split()[2 - spatial:])}]")
    channels = imp.shape(x)[1]
    group = attrs.get("group", 1)
    if group < 1 or channels % group or w.shape[0] % group:
        imp.fail(f"group={group} does not divide the {channels} input and {w.shape[0]} output "
                 "channels")
    if w.shape[1] * group != channels:
        imp.fail(f"weight W {list(w.shape)} with group={group} expects {w.shape[1] * group} "
                 f"input channels, X has {channels}")
    kernel = _kernel(imp, attrs, spatial, w.shape)
    strides, pads, dilations = _spatial(imp, attrs, imp.onnx_shape(x)[2:], kernel)
    b = imp.constant(2, "bias B")
    bias = np.zeros(w.shape[0], np.float32) if b is None else b
    if bias.shape != (w.shape[0],):
        imp.fail(f"bias B has shape {list(bias.shape)}, it must be [{w.shape[0]}]")
    if spatial == 2:
        weight = imp.use_constant(imp.input(1))
    else:
        weight = imp.add_constant("W", w[:, :, None, :], imp.weight_scale(1))
    imp.emit("conv", [x, weight, imp.add_constant("b", bias)],
             {"strides": strides, "pads": pads, "dilations": dilations, "group": int(group)},
             lifted=spatial == 1)


def _pool(op: str):
    def lower(imp: _Importer, attrs: dict):
        x, spatial = imp.signal(0, "pools")
        kernel = _kernel(imp, attrs, spatial)
        ceil_mode = attrs.get("ceil_mode", 0)
        if ceil_mode not in (0, 1):
            imp.fail(f"ceil_mode={ceil_mode} must be 0 or 1")
        if ceil_mode and attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            imp.fail("ceil_mode=1 with auto_pad is not supported (ONNX defines ceil_mode for "
                     "explicit pads; give pads)")
        strides, pads, dilations = _spatial(imp, attrs, imp.onnx_shape(x)[2:], kernel)
        extra = {}
        if op == "avgpool":
            include = attrs.get("count_include_pad", 0)
            if include not in (0, 1):
                imp.fail(f"count_include_pad={include} must be 0 or 1")
            extra["count_include_pad"] = bool(include)
        imp.emit(op, [x], {"kernel": _to_2d(kernel, spatial, 1), "strides": strides,
                           "pads": pads, "dilations": dilations, "ceil_mode": bool(ceil_mode),
                           **extra}, lifted=spatial == 1)
    return lower


def _global_pool(op: str):
    def lower(imp: _Importer, attrs: dict):
        x, spatial = imp.signal(0, "pools")
        extra = {"count_include_pad": False} if op == "avgpool" else {}
        imp.emit(op, [x], {"kernel": imp.shape(x)[2:], "strides": (1, 1), "pads": (0, 0, 0, 0),
                           **extra}, lifted=spatial == 1)
    return lower


def _lower_relu(imp: _Importer, attrs: dict):
    (x,), lifted = imp.elementwise([imp._tensor(0)])
    imp.emit("relu", [x], lifted=lifted)


def _lower_add(imp: _Importer, attrs: dict):
    names = [imp.input(i) for i in (0, 1)]
    acts = [imp._tensor(i) for i, n in enumerate(names) if n not in imp.constants]
    acts, lifted = imp.elementwise(acts)
    rank = max((len(imp.onnx_shape(a)) for a in acts), default=0)
    operands = []
    for i, name in enumerate(names):
        if name not in imp.constants:
            operands.append(acts.pop(0))
            continue
        value = imp.constant(i, f"input {'AB'[i]}")
        if lifted and value.ndim <= rank:
            # broadcast against [B, C, L] = against [B, C, 1, L] with a unit H inserted
            value = value.reshape((1,) * (rank - value.ndim) + value.shape)
            operands.append(imp.add_constant("c", value.reshape(
                value.shape[:2] + (1,) + value.shape[2:])))
        else:
            operands.append(imp.use_constant(name))
    imp.emit("add", operands, lifted=lifted)


def _lower_flatten(imp: _Importer, attrs: dict):
    """Flatten along `axis` is the IR's flatten when its result is [B, prod(rest)]: axis 1, or
    a later axis after dims of size 1 (the batch stays dim 0, nothing crosses it)."""
    x = imp._tensor(0)
    shape = imp.onnx_shape(x)
    axis = int(attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis <= len(shape):
        imp.fail(f"axis={attrs.get('axis', 1)} is out of range for input shape {list(shape)}")
    if axis == 0 or any(d != 1 for d in shape[1:axis]):
        result = [int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))]
        imp.fail(f"axis={attrs.get('axis', 1)} flattens {list(shape)} to {result}, moving data "
                 "across the batch dimension (supported: axis 1, or a later axis after dims of "
                 "size 1, so that dim 0 stays the batch)")
    imp.emit("flatten", [x])


def _lower_reshape(imp: _Importer, attrs: dict):
    x = imp._tensor(0)
    spec = imp.constant(1, "input shape", float_only=False)
    if spec is None:
        imp.fail("input shape is missing")
    if spec.dtype != np.int64 or spec.ndim != 1:
        imp.fail(f"input shape must be a 1-D int64 constant, got {spec.dtype} {list(spec.shape)}")
    src = imp.onnx_shape(x)
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
    x = imp._tensor(0)
    producer = next((n for n in imp.nodes if n.output == x), None)
    if producer is None or producer.op not in ("conv", "gemm") or imp.users.get(x, 0) != 1 \
            or x in {imp.resolve(o) for o in imp.outputs}:
        imp.fail(f"its input '{imp.input(0)}' must be computed by a Conv or Gemm and read by "
                 "nothing else (BatchNormalization is folded into their weights and bias)")
    if producer.op == "gemm" and len(imp.shape(x)) != 2:
        imp.fail(f"its input '{imp.input(0)}' {list(imp.shape(x))} is a MatMul's over the last "
                 "axis, BatchNormalization normalises dim 1 (only a rank-2 Gemm or MatMul "
                 "output is folded)")
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
    # the folded weights are no longer the int8 values of a QDQ weight: no scale follows them
    producer.inputs[1:] = [imp.add_constant("W", w), imp.add_constant("b", (b - mean) * s + shift)]
    out = imp.node.output[0]
    producer.outputs = [out]
    imp.tensors[out] = Tensor(out, imp.tensors.pop(x).shape)
    if x in imp.lifted:
        imp.lifted.add(out)


# -- QDQ: the quantisation of a QDQ model, kept as scales --

def _qdq_params(imp: _Importer, int_types: tuple) -> tuple[float, np.dtype | None]:
    """(scale, zero point's dtype or None) of a QuantizeLinear/DequantizeLinear node, checked
    to be one the tile can take: one positive scale per tensor, zero point 0 of a signed type
    in `int_types` (symmetric)."""
    scale = imp.constant(1, "scale")
    if scale is None:
        imp.fail("input scale is missing")
    if scale.size != 1:
        imp.fail(f"per-channel scales ({scale.size} values along axis {_axis(imp)}) are not "
                 "supported (the tile's int8 scheme has one scale per tensor)")
    value = float(scale.reshape(-1)[0])
    if not (np.isfinite(value) and value > 0):
        imp.fail(f"scale {value} must be positive and finite")
    zero = imp.constant(2, "zero point", float_only=False)
    if zero is None:
        return value, None
    if zero.dtype == np.uint8:
        imp.fail("a uint8 zero point is asymmetric quantisation, which is not supported (the "
                 "tile's int8 scheme is symmetric: int8 with zero point 0)")
    if zero.dtype not in int_types:
        imp.fail(f"zero point dtype {zero.dtype} is not supported (only "
                 f"{' or '.join(np.dtype(t).name for t in int_types)})")
    if zero.size != 1:
        imp.fail(f"per-channel zero points ({zero.size} values along axis {_axis(imp)}) "
                 "are not supported (the tile's int8 scheme has one scale per tensor)")
    if int(zero.reshape(-1)[0]) != 0:
        imp.fail(f"zero point {int(zero.reshape(-1)[0])} is asymmetric quantisation, which is "
                 "not supported (only zero point 0: symmetric)")
    return value, zero.dtype


def _axis(imp: _Importer) -> int:
    """The node's `axis` attribute (ONNX's default 1)."""
    for a in imp.node.attribute:
        if a.name == "axis":
            return int(helper.get_attribute_value(a))
    return 1


def _lower_quantize(imp: _Importer, attrs: dict):
    """QuantizeLinear on an activation, read only by DequantizeLinear nodes (a Q/DQ pair):
    the pair is the activation itself (`_qdq_aliases`) and its scale is recorded for the
    quantiser."""
    x = imp._tensor(0)
    out = imp.node.output[0]
    if out in imp.outputs or any(r != "DequantizeLinear" for r in imp.reader_ops.get(out, [])):
        imp.fail(f"its output '{out}' must be read only by DequantizeLinear nodes (a Q/DQ pair "
                 "around an activation, as in QDQ models)")
    scale, zero = _qdq_params(imp, (np.int8,))
    if zero is None:
        imp.fail("without a zero point ONNX quantises to uint8, which is asymmetric (the "
                 "tile's int8 scheme is symmetric: int8 with zero point 0)")
    imp.record_scale(x, scale)
    imp.q_scales[out] = scale


def _lower_dequantize(imp: _Importer, attrs: dict):
    """DequantizeLinear of an int8 constant (a QDQ model's weights) or an int32 one (its
    biases) becomes the float constant q s, the scale of int8 values remembered (the
    quantiser takes it as s_W, so W_q are the model's int8 weights); of a QuantizeLinear's
    output, the end of a Q/DQ pair: nothing (it must undo its QuantizeLinear exactly)."""
    src = imp.input(0)
    out = imp.node.output[0]
    if src in imp.constants:
        q = imp.constants[src]
        if q.dtype == np.uint8:
            imp.fail(f"input x ('{src}') is uint8: asymmetric quantisation is not supported "
                     "(the tile's int8 scheme is symmetric: int8 with zero point 0)")
        if q.dtype not in (np.int8, np.int32):
            imp.fail(f"input x ('{src}') has dtype {q.dtype}; only int8 (weights) and int32 "
                     "(biases) are supported")
        scale, zero = _qdq_params(imp, (q.dtype.type,))
        imp.constants[out] = (q.astype(np.float64) * scale).astype(np.float32)
        if q.dtype == np.int8:
            imp.weight_scales[out] = scale
        return
    if out not in imp.alias:
        imp.fail(f"its input '{src}' must be a constant or a QuantizeLinear's output (QDQ "
                 "format)")
    scale, _ = _qdq_params(imp, (np.int8,))
    if scale != imp.q_scales[src]:
        quant = imp.producers[src]
        imp.fail(f"its scale {scale:.6g} differs from QuantizeLinear "
                 f"'{quant.name or quant.output[0]}''s {imp.q_scales[src]:.6g} (a requantisation "
                 "between the two is not supported)")


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
    "QuantizeLinear": Lowering(_lower_quantize, ("axis",)),
    "DequantizeLinear": Lowering(_lower_dequantize, ("axis",)),
}
"""ONNX op type -> how it becomes IR. The table is the list of supported ops."""


# --- the front end -------------------------------------------------------------------------------

def _keeps_last_window(node: Node, shape: tuple, onnx_shape: tuple, x_shape: tuple) -> bool:
    """Whether ONNX's `onnx_shape` for a ceil_mode pool's output is `shape` with a last
    window that starts in the end padding kept: ONNX 1.23's shape inference keeps it in some
    cases (e.g. size 8, kernel 2, stride 3, pads (0, 1): 4 windows), onnx.reference and
    onnxruntime drop it (3), and so does the compiler (`window_out`)."""
    if node is None or node.op not in POOL_OPS or not attribute(node, "ceil_mode"):
        return False
    kept = list(shape)
    for axis, (size, k, s, d, lo, hi) in enumerate(zip(
            x_shape[2:], node.attrs["kernel"], node.attrs["strides"],
            attribute(node, "dilations"), node.attrs["pads"][:2], node.attrs["pads"][2:])):
        span = size + lo + hi - (k - 1) * d - 1
        kept[2 + axis] = -(-span // s) + 1
    return tuple(kept) == tuple(onnx_shape)


def _check_shapes(graph: Graph, onnx_shapes: dict, lifted: set[str]):
    """Every shape the compiler computed equals ONNX's (a lifted signal's without its unit
    H), except after a pool where ONNX's shape inference keeps a window the executors drop
    (`_keeps_last_window`): the tensors computed from it are not compared."""
    unlift = lambda name, shape: shape[:2] + shape[3:] if name in lifted else shape
    differs = set()
    for node in graph.nodes:
        name = node.output
        ours = unlift(name, graph.tensors[name].shape)
        theirs = onnx_shapes.get(name)
        if any(i in differs for i in node.inputs):
            differs.add(name)
        elif theirs is not None and theirs != ours:
            if _keeps_last_window(node, ours, theirs,
                                  unlift(node.inputs[0], graph.shape(node.inputs[0]))):
                differs.add(name)
                continue
            raise CompileError(f"{node.where()}: the compiler computes shape "
                               f"{list(graph.tensors[name].shape)} for '{name}', ONNX shape "
                               f"inference {list(theirs)}")


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
    importer = _Importer(model, label)
    graph = normalize(importer.run())
    _check_shapes(graph, _onnx_shapes(model, label), importer.lifted)
    return graph
