"""Post-training int8 quantisation, and the two references a compiled network is checked against.

    scales = calibrate(graph, calib_x)        # per-tensor scales from calibration data
    qgraph = quantize(graph, scales)          # int8 weights, int32 biases, requantisation
    q = run_int8(qgraph, x)                   # the integer reference: what the tile computes
    y = run_float(graph, x)                   # the float reference
    print(quant_report(graph, qgraph, x, labels))

The scheme (symmetric, per tensor, zero point 0; docs/compiler_frontend.md has the formulas):

* Scales: s_t = max|t| / 127 over the calibration data for every activation t, and
  s_W = max|W| / 127 for every gemm/conv weight (a tensor that is all zero gets scale 1);
  a scale the graph carries (`Graph.quant_scales`, an ONNX QDQ model's) is used instead.
  Ops that move int8 values without arithmetic (maxpool, relu on its own, flatten, reshape) and
  avgpool give their output their input's scale (a QDQ model's own scale for such an output
  is not used: the tile does not requantise there).
* Host input: x_q = clip(rint(x / s_x), -128, 127) (`quantize_tensor`; rint rounds half to even).
* gemm / conv: W_q = clip(rint(W / s_W), -127, 127) int8, b_q = rint(b / (s_x s_W)) int32,
  acc = sum x_q W_q + b_q in int32 (gemm: over the last axis of x [B, ..., K]; conv: over
  each window's taps, dilated, and the C / group channels of the output's group),
  y_q = requantize(acc, scale, shift, relu) with scale / 2**shift ~= s_x s_W / s_y
  (`requant_params`: scale < 2**16, shift <= 47). A relu that is the only consumer of a
  gemm/conv/add output is fused into it (`relu=True`, the output scale is the relu output's).
* add, on the vector unit in FP32 (`d1tile.sw.vector_kernels.reference_add`):
  y_q = int8(FP32(a_q) x FP32(s_a / s_y) + FP32(b_q) x FP32(s_b / s_y)), or + FP32(c / s_y)
  for a constant c, each operation rounded to FP32, relu if fused, then rounded to nearest
  even and saturated.
* maxpool: max of int8 windows (strides, dilations, ceil_mode), padding never wins (exact,
  output scale = input scale).
* avgpool, on the vector unit in FP32 (`reference_pool`): the FP32 sum of the window's int8
  taps inside the input (exact) times FP32(1 / divisor), rounded to nearest even; the divisor
  is the number of taps inside the input, or with count_include_pad inside the padded extent
  (`d1tile.sw.conv.WindowGeometry.divisor`). Output scale = input scale.
* relu alone: max(x_q, 0); flatten / reshape: the same int8 values.
* softmax runs on the host, on the dequantised tile outputs (`run_quantized`).

Every requantisation calls `d1tile.sim.vector.requantize`, the vector unit's own arithmetic, so
the tile's int8 output equals `run_int8`'s bit for bit. Quantisation problems found at compile
time (a multiplier out of range, a bias that does not fit int32 with the worst-case
accumulation) raise `CompileError` naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import floor, prod
from typing import Callable

import numpy as np

from d1tile.dtypes import MATRIX_TYPES, ElemType
from d1tile.sim.vector import requantize, SCALE_BITS
from d1tile.sw.errors import CompileError
from d1tile.sw.ir import OPS, Graph, Node, window_out


__all__ = [
    "run_float", "calibrate", "quantize", "run_int8", "int32_accumulators", "run_quantized",
    "finish_on_host",
    "quant_report", "QuantReport", "QuantGraph", "QuantOp", "requant_params",
    "quantize_tensor", "dequantize", "windows", "MAX_SHIFT", "FLOAT_KERNELS", "INT8_KERNELS",
    "QUANTIZERS", "range_warnings",
]

INT8_MIN, INT8_MAX = -128, 127
INT32_MAX = (1 << 31) - 1
MAX_SCALE = (1 << SCALE_BITS) - 1
MAX_SHIFT = 47
"""The largest requantisation shift the compiler uses (the tile accepts 0..63; 47 keeps the
rounding term and the exact product well inside int64)."""


# --- inputs ------------------------------------------------------------------------------------

def _input_arrays(graph: Graph, inputs) -> dict[str, np.ndarray]:
    """Graph input name -> array in the graph's shape. `inputs` is an array (single-input
    graphs) or a dict. The batch (dim 0) may be any size; the other dims must match the
    graph's up to axes of size 1, which never reorder data (an ONNX signal [B, C, L] feeds the
    IR's [B, C, 1, L] input)."""
    if not isinstance(inputs, dict):
        if len(graph.inputs) != 1:
            raise ValueError(f"graph '{graph.name}' has inputs {graph.inputs}: pass a dict")
        inputs = {graph.inputs[0]: inputs}
    arrays = {}
    for name in graph.inputs:
        if name not in inputs:
            raise ValueError(f"input '{name}' is missing")
        x = np.asarray(inputs[name])
        want = graph.tensors[name].shape[1:]
        squeezed = lambda dims: tuple(d for d in dims if d != 1)
        if x.ndim < 1 or x.shape[0] < 1 or squeezed(x.shape[1:]) != squeezed(want):
            raise ValueError(f"input '{name}' has shape {list(x.shape)}; expected [batch, "
                             f"{', '.join(map(str, want))}]")
        arrays[name] = x.reshape((len(x),) + tuple(want))
    return arrays


def _batched(shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
    return (batch,) + tuple(shape[1:])


# --- windows: one definition for both references ----------------------------------------------

def _axis_taps(size: int, kernel: int, stride: int, lo: int, dilation: int,
               count: int) -> tuple[np.ndarray, np.ndarray]:
    """[count, kernel] input index of each window's taps along one axis (clipped into the
    input) and whether it is inside the input."""
    index = (np.arange(count)[:, None] * stride - lo + np.arange(kernel)[None, :] * dilation)
    inside = (index >= 0) & (index < size)
    return np.clip(index, 0, size - 1), inside


def _window_sizes(attrs: dict, hw, kernel) -> tuple[int, int]:
    (sh, sw), (pt, pl, pb, pr) = attrs["strides"], attrs["pads"]
    dh, dw = attrs.get("dilations", (1, 1))
    ceil_mode = bool(attrs.get("ceil_mode", False))
    return (window_out(hw[0], kernel[0], sh, pt, pb, dh, ceil_mode),
            window_out(hw[1], kernel[1], sw, pl, pr, dw, ceil_mode))


def windows(x: np.ndarray, attrs: dict, kernel, pad_value) -> np.ndarray:
    """[B, C, OH, OW, kh, kw] windows of NCHW `x`: the taps of each window (strides, pads,
    dilations, ceil_mode from `attrs`; `d1tile.sw.ir.window_out` counts them), `pad_value`
    wherever a tap falls outside the input (the padding, and beyond it in ceil mode)."""
    (kh, kw), (sh, sw), (pt, pl, _, _) = kernel, attrs["strides"], attrs["pads"]
    dh, dw = attrs.get("dilations", (1, 1))
    oh, ow = _window_sizes(attrs, x.shape[2:], kernel)
    rows, row_in = _axis_taps(x.shape[2], kh, sh, pt, dh, oh)       # [OH, kh]
    cols, col_in = _axis_taps(x.shape[3], kw, sw, pl, dw, ow)       # [OW, kw]
    taps = x[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # B, C, OH, OW, kh, kw
    inside = row_in[:, None, :, None] & col_in[None, :, None, :]
    return np.where(inside, taps, np.asarray(pad_value, dtype=taps.dtype))


def _window_counts(hw: tuple[int, int], attrs: dict) -> np.ndarray:
    """[OH, OW] divisor of each average-pooling window: its taps inside the input, or with
    count_include_pad those inside the padded extent [-pads_begin, size + pads_end) (ONNX's
    rule: the taps beyond it that ceil_mode adds never count)."""
    kernel = attrs["kernel"]
    (sh, sw), (pt, pl, pb, pr) = attrs["strides"], attrs["pads"]
    dh, dw = attrs.get("dilations", (1, 1))
    oh, ow = _window_sizes(attrs, hw, kernel)
    include = bool(attrs.get("count_include_pad", False))
    counts = []
    for size, k, s, d, lo, hi, n in ((hw[0], kernel[0], sh, dh, pt, pb, oh),
                                     (hw[1], kernel[1], sw, dw, pl, pr, ow)):
        # taps of the padded axis [0, lo + size + hi), or of the input [lo, lo + size)
        _, inside = _axis_taps(size + lo + hi if include else size, k, s,
                               0 if include else lo, d, n)
        counts.append(inside.sum(axis=1))
    return counts[0][:, None] * counts[1][None, :]


def _conv_product(x: np.ndarray, w: np.ndarray, attrs: dict, pad_value=0) -> np.ndarray:
    """sum over each window's taps and the group's input channels of x w: x [B, C, H, W],
    w [O, C / group, kh, kw] -> [B, O, OH, OW]; exact for int64 arrays (integer products and
    sums), float64 otherwise."""
    group = int(attrs.get("group", 1))
    win = windows(x, attrs, w.shape[2:], pad_value)            # B, C, OH, OW, kh, kw
    if group == 1:
        out = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))     # B, OH, OW, O
        return out.transpose(0, 3, 1, 2)
    b, c, oh, ow, kh, kw = win.shape
    win = win.reshape(b, group, c // group, oh, ow, kh, kw)
    wg = w.reshape(group, w.shape[0] // group, c // group, kh, kw)
    out = np.einsum("bgcyxij,gocij->bgoyx", win, wg)
    return out.reshape(b, w.shape[0], oh, ow)


# --- the float reference -----------------------------------------------------------------------

def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _float_avgpool(node, x, consts):
    win = windows(x, node.attrs, node.attrs["kernel"], 0.0).sum(axis=(-2, -1))
    return win / _window_counts(x.shape[2:], node.attrs)


FLOAT_KERNELS: dict[str, Callable] = {
    "gemm": lambda n, x, c: x @ c[1] + c[2],
    "conv": lambda n, x, c: _conv_product(x, c[1], n.attrs) + c[2][None, :, None, None],
    "relu": lambda n, x, c: np.maximum(x, 0),
    "add": lambda n, x, c: x + c[1],
    "maxpool": lambda n, x, c: windows(x, n.attrs, n.attrs["kernel"], -np.inf).max(axis=(-2, -1)),
    "avgpool": _float_avgpool,
    "flatten": lambda n, x, c: x.reshape(x.shape[0], -1),
    "reshape": lambda n, x, c: x.reshape(_batched(n.attrs["shape"], x.shape[0])),
    "softmax": lambda n, x, c: _softmax(x, n.attrs["axis"]),
}
"""IR op -> float64 kernel(node, first input, [all inputs as arrays]). add sees its operands in
node order as c[0] (= x) and c[1]; gemm/conv see W = c[1], b = c[2]."""


def _run_float_node(node: Node, values: dict, graph: Graph) -> np.ndarray:
    args = [graph.initializers[i].astype(np.float64) if graph.is_constant(i) else values[i]
            for i in node.inputs]
    if node.op == "add" and graph.is_constant(node.inputs[0]):
        args = args[::-1]
    return FLOAT_KERNELS[node.op](node, args[0], args)


def run_float(graph: Graph, inputs, *, keep: bool = False) -> dict[str, np.ndarray]:
    """The float reference: graph outputs (every tensor if `keep`) as float64 arrays, computed
    with float64 arithmetic from the float32 constants. `inputs`: see `_input_arrays`."""
    values = {k: v.astype(np.float64) for k, v in _input_arrays(graph, inputs).items()}
    for node in graph.nodes:
        values[node.output] = _run_float_node(node, values, graph)
    return values if keep else {o: values[o] for o in graph.outputs}


# --- calibration -------------------------------------------------------------------------------

def _max_scale(array: np.ndarray) -> float:
    peak = float(np.max(np.abs(array))) if array.size else 0.0
    return peak / INT8_MAX if peak > 0 else 1.0


def calibrate(graph: Graph, calib_inputs) -> dict[str, float]:
    """Per-tensor symmetric scales: tensor name -> max|t| / 127 over `calib_inputs` (run through
    `run_float`) for every activation, and max|W| / 127 for every gemm/conv weight (a tensor
    that is zero everywhere gets scale 1); except that a scale the graph carries
    (`Graph.quant_scales`: a QDQ model's own) is taken as it is."""
    values = run_float(graph, calib_inputs, keep=True)
    scales = {name: _max_scale(v) for name, v in values.items()}
    for node in graph.nodes:
        if node.op in ("gemm", "conv"):
            scales[node.inputs[1]] = _max_scale(graph.initializers[node.inputs[1]])
    scales.update(graph.quant_scales)
    return scales


# --- quantised graph ---------------------------------------------------------------------------

def requant_params(multiplier: float, where: str = "requantisation") -> tuple[int, int]:
    """(scale, shift) with scale / 2**shift ~= `multiplier`, scale < 2**16, shift <= 47: the
    largest shift whose rounded scale fits 16 bits (relative error <= 2**-16 for multipliers in
    [2**-32, 1]). Raises `CompileError` if the multiplier is not positive, too large (>= 2**16)
    or too small (below 2**-48: every output would be 0)."""
    m = float(multiplier)
    if not (np.isfinite(m) and m > 0):
        raise CompileError(f"{where}: multiplier {m} must be positive and finite")
    shift = MAX_SHIFT
    while shift > 0 and floor(m * 2.0 ** shift + 0.5) > MAX_SCALE:
        shift -= 1
    scale = floor(m * 2.0 ** shift + 0.5)
    if scale > MAX_SCALE:
        raise CompileError(f"{where}: multiplier {m:.4g} is too large for the vector unit's "
                           f"REQUANT (scale < 2**{SCALE_BITS} at shift 0)")
    if scale == 0:
        raise CompileError(f"{where}: multiplier {m:.4g} is too small for the vector unit's "
                           f"REQUANT (below 2**-{MAX_SHIFT + 1}: every output would be 0)")
    return scale, shift


SATURATION_WARNING = 1.5
"""`range_warnings`: a tensor the input drives beyond this many times its calibrated range."""
COARSE_WARNING = 16
"""`range_warnings`: a tensor whose values stay within 1/COARSE_WARNING of its calibrated range
(fewer than 8 of the 127 int8 steps)."""


def range_warnings(graph: Graph, scales: dict, inputs, most: int = 3) -> list[str]:
    """Where the calibration and this input disagree: the activations (the input and every
    node's output) whose values, run through the float graph, reach more than
    `SATURATION_WARNING` x their int8 range (127 x scale: they saturate) or stay below
    1 / `COARSE_WARNING` of it (they get only a few int8 steps), the worst `most` first; one
    line each. Empty when they agree."""
    values = run_float(graph, inputs, keep=True)
    found = []
    for name, v in values.items():
        if name not in scales or graph.is_constant(name) or not v.size:
            continue
        limit = INT8_MAX * scales[name]
        peak = float(np.max(np.abs(v)))
        if peak > SATURATION_WARNING * limit:
            share = float(np.mean(np.abs(v) > limit))
            found.append((peak / limit, f"tensor '{name}' reaches {peak:.4g} with this input, "
                                        f"its calibrated range is {limit:.4g}: {share:.1%} of its "
                                        "values saturate"))
        elif 0 < peak < limit / COARSE_WARNING:
            found.append((limit / peak, f"tensor '{name}' stays within {peak:.4g} with this "
                                        f"input, its calibrated range is {limit:.4g}: it gets "
                                        f"{max(1, round(peak / scales[name]))} of the 127 int8 "
                                        "steps"))
    found.sort(key=lambda item: -item[0])
    lines = [line for _, line in found[:most]]
    if len(found) > most:
        lines.append(f"... and {len(found) - most} more tensors whose range disagrees with the "
                     "calibration")
    return lines


def quantize_tensor(x, scale: float) -> np.ndarray:
    """Host-side quantisation of an activation: clip(rint(x / scale), -128, 127) as int8."""
    return np.clip(np.rint(np.asarray(x, np.float64) / scale), INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize(q, scale: float) -> np.ndarray:
    """q * scale as float64."""
    return np.asarray(q).astype(np.float64) * scale


@dataclass
class QuantOp:
    """One op of the quantised graph, with everything the tile needs to compute it.

    `inputs` / `output` name int8 activations (their scales are in `QuantGraph.scales`). For the
    requantising ops (gemm, conv, add, avgpool): `acc` is the int32 accumulator described in
    the module docstring and the output is `requantize(acc, scale, shift, relu)`; `multiplier`
    is the real value scale / 2**shift approximates. `scale`/`shift` are ints, or for an
    avgpool whose window counts vary (padding with count_include_pad off) [OH, OW] arrays.
    """
    op: str
    name: str                        # the IR node(s) it computes, e.g. "fc1+relu1"
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)   # the IR node's attributes
    weight: np.ndarray | None = None  # int8: gemm [K, F], conv [O, C, kh, kw]
    bias: np.ndarray | None = None    # int32 added to acc: gemm [F], conv [O]
    factors: tuple[float, ...] = ()   # add: the FP32 multiplier q of each input (s_in / s_y)
    const: np.ndarray | None = None   # add of a constant: c / s_y, one sample's shape (float)
    scale: int | np.ndarray | None = None
    shift: int | np.ndarray | None = None
    relu: bool = False
    multiplier: float | np.ndarray | None = None

    @property
    def requantizes(self) -> bool:
        return self.scale is not None


@dataclass
class QuantGraph:
    """A quantised graph: `ops` run on the tile in order over int8 tensors, from `inputs`
    (quantised on the host with their scales) to `outputs` (the tile's int8 results);
    `host_nodes` (softmax) then run on the host on the dequantised outputs and produce the
    float graph's outputs. `scales` holds every int8 tensor's scale."""
    graph: Graph
    ops: list[QuantOp]
    scales: dict[str, float]
    inputs: list[str]
    outputs: list[str]
    host_nodes: list[Node]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.graph.tensors[name].shape

    def op(self, name: str) -> QuantOp:
        for q in self.ops:
            if q.name == name or name in q.name.split("+"):
                return q
        raise KeyError(name)

    def __str__(self) -> str:
        def requant(q):
            if not q.requantizes:
                return ""
            if np.ndim(q.scale):
                return (f"  requant per position ({len(np.unique(q.scale))} distinct)"
                        f"{' relu' if q.relu else ''}")
            return (f"  requant {q.scale} >> {q.shift} (~{q.multiplier:.4g})"
                    f"{' relu' if q.relu else ''}")

        lines = [f"quantised graph '{self.graph.name}' (batch {self.graph.batch})"]
        lines += [f"  input  {i} {list(self.shape(i))} int8 scale {self.scales[i]:.4g}"
                  for i in self.inputs]
        width = max((len(q.name) for q in self.ops), default=0)
        for q in self.ops:
            parts = [f"  {q.name:<{width}}  {q.output} {list(self.shape(q.output))} = {q.op}("
                     f"{', '.join(q.inputs)})"]
            if q.weight is not None:
                parts.append(f"  W int8 {'x'.join(map(str, q.weight.shape))}")
            if q.bias is not None:
                parts.append(f"  bias int32 {'x'.join(map(str, q.bias.shape))}")
            if q.factors:
                parts.append(f"  q {[float(f'{f:.4g}') for f in q.factors]}"
                             + ("  + constant" if q.const is not None else ""))
            lines.append("".join(parts) + requant(q))
        lines += [f"  output {o} {list(self.shape(o))} int8 scale {self.scales[o]:.4g}"
                  for o in self.outputs]
        lines += [f"  host   {n.output} = {n.op}({', '.join(n.inputs)}) on the dequantised "
                  "values" for n in self.host_nodes]
        return "\n".join(lines)


class _Quantizer:
    """State of one `quantize` run: the float graph, the calibrated scales, the chosen ones."""

    def __init__(self, graph: Graph, calibrated: dict[str, float]):
        self.graph = graph
        self.calibrated = calibrated
        self.scales: dict[str, float] = {}

    def calibrated_scale(self, name: str) -> float:
        if name not in self.calibrated:
            raise CompileError(f"tensor '{name}': no int8 scale (the model's Q/DQ pairs give "
                               "none for it and no calibration inputs were given)")
        s = float(self.calibrated[name])
        if not (np.isfinite(s) and s > 0):
            raise CompileError(f"tensor '{name}': scale {s} must be positive and finite")
        return s

    def weight(self, node: Node) -> tuple[np.ndarray, float]:
        """W_q and s_W: the scale given, else the graph's own (`quant_scales`), else
        max|W| / 127."""
        name = node.inputs[1]
        w = self.graph.initializers[name]
        s_w = float(self.calibrated.get(name, self.graph.quant_scales.get(name, _max_scale(w))))
        return np.clip(np.rint(w / s_w), -INT8_MAX, INT8_MAX).astype(np.int8), s_w

    def int32(self, node: Node, values: np.ndarray, worst_acc: int, what: str) -> np.ndarray:
        """`values` rounded to int32, checked so that acc = values + worst_acc cannot
        overflow."""
        q = np.rint(values)
        peak = float(np.max(np.abs(q))) if q.size else 0.0
        if peak + worst_acc > INT32_MAX:
            raise CompileError(f"{node.where()}: the {what} reaches {peak:.3g} at the "
                               f"accumulator's scale; with the products it may overflow int32")
        return q.astype(np.int32)


def _quantize_matmul(qz: _Quantizer, node: Node, out: str, relu: bool) -> QuantOp:
    x = node.inputs[0]
    w_q, s_w = qz.weight(node)
    s_x, s_y = qz.scales[x], qz.calibrated_scale(out)
    depth = prod(w_q.shape[1:]) if node.op == "conv" else w_q.shape[0]
    bias = qz.int32(node, qz.graph.initializers[node.inputs[2]] / (s_x * s_w),
                    depth * -INT8_MIN * INT8_MAX, "bias")
    m = s_x * s_w / s_y
    scale, shift = requant_params(m, node.where())
    qz.scales[out] = s_y
    return QuantOp(node.op, node.name, [x], out, dict(node.attrs), weight=w_q, bias=bias,
                   scale=scale, shift=shift, relu=relu, multiplier=m)


def _quantize_add(qz: _Quantizer, node: Node, out: str, relu: bool) -> QuantOp:
    """y = pack(FP32(a) x s_a / s_y + FP32(b) x s_b / s_y) on the vector unit
    (`d1tile.sw.vector_kernels.reference_add`), or + c / s_y for a constant c."""
    s_y = qz.calibrated_scale(out)
    act = [i for i in node.inputs if not qz.graph.is_constant(i)]
    const = [i for i in node.inputs if qz.graph.is_constant(i)]
    factors = tuple(qz.scales[a] / s_y for a in act)
    c = None
    if const:
        c = qz.graph.initializers[const[0]].astype(np.float64)
        sample = qz.graph.shape(act[0])[1:]
        if c.ndim > len(sample):     # a leading batch dim of 1 (the IR allows no other)
            c = c[0]
        c = np.broadcast_to(c, sample) / s_y
    for q in factors:
        if not (np.isfinite(np.float32(q)) and np.float32(q) > 0):
            raise CompileError(f"{node.where()}: the input to output scale ratio {q:.4g} is "
                               "not a positive FP32 number")
    qz.scales[out] = s_y
    return QuantOp("add", node.name, act, out, {}, factors=factors, const=c, relu=relu)


def _quantize_avgpool(qz: _Quantizer, node: Node, out: str, relu: bool) -> QuantOp:
    """The window mean on the vector unit: FP32 sums of the int8 taps inside the image,
    times FP32(1 / divisor), rounded to nearest even (`reference_pool`); the output keeps the
    input's scale."""
    x = node.inputs[0]
    qz.scales[out] = qz.scales[x]
    return QuantOp("avgpool", node.name, [x], out, dict(node.attrs))


def _quantize_move(qz: _Quantizer, node: Node, out: str, relu: bool) -> QuantOp:
    """Ops that move int8 values without arithmetic: the output keeps the input's scale."""
    qz.scales[out] = qz.scales[node.inputs[0]]
    return QuantOp(node.op, node.name, [node.inputs[0]], out, dict(node.attrs))


QUANTIZERS: dict[str, Callable] = {
    "gemm": _quantize_matmul,
    "conv": _quantize_matmul,
    "add": _quantize_add,
    "avgpool": _quantize_avgpool,
    "maxpool": _quantize_move,
    "relu": _quantize_move,
    "flatten": _quantize_move,
    "reshape": _quantize_move,
}
"""IR op -> quantizer(state, node, output name, fused relu) -> QuantOp."""

_FUSES_RELU = frozenset({"gemm", "conv", "add"})


def _fused_relu(graph: Graph, node: Node) -> Node | None:
    """The relu fused into `node`: its only consumer, when `node`'s output is not a graph
    output."""
    if node.op not in _FUSES_RELU or node.output in graph.outputs:
        return None
    users = graph.consumers(node.output)
    return users[0] if len(users) == 1 and users[0].op == "relu" else None


def split_ops(graph: Graph, make_op) -> tuple[list, list, list]:
    """The lowering's walk over a validated graph, shared by the int8 and bf16 paths: (the
    tile ops, each `make_op(node, output, relu fused)` with a fused relu's output and the name
    "node+relu"; the host ops; the tensors the tile outputs: the graph's outputs, a host op's
    input in place of its output, each once)."""
    ops, host, fused = [], [], set()
    for node in graph.nodes:
        if node.name in fused:
            continue
        if OPS[node.op].host:
            host.append(node)
            continue
        relu = _fused_relu(graph, node)
        out = node.output
        if relu is not None:
            fused.add(relu.name)
            out = relu.output
        op = make_op(node, out, relu is not None)
        if relu is not None:
            op.name = f"{node.name}+{relu.name}"
        ops.append(op)
    host_inputs = {n.output: n.inputs[0] for n in host}
    outputs = []
    for o in graph.outputs:
        t = host_inputs.get(o, o)
        if t not in outputs:
            outputs.append(t)
    return ops, host, outputs


def quantize(graph: Graph, scales: dict[str, float]) -> QuantGraph:
    """Quantise a validated `graph` with `scales` (from `calibrate`; weight scales may be left
    out, they are then computed from the weights). Fuses relus, splits off the host ops, and
    builds one `QuantOp` per tile op with its int8 weights, int32 bias and requantisation.
    Raises `CompileError` naming the node for anything the tile cannot represent."""
    graph.validate()
    qz = _Quantizer(graph, scales)
    for name in graph.inputs:
        qz.scales[name] = qz.calibrated_scale(name)
    ops, host, outputs = split_ops(
        graph, lambda node, out, relu: QUANTIZERS[node.op](qz, node, out, relu))
    if any(t not in qz.scales for t in outputs):
        raise CompileError(f"graph '{graph.name}': a host op reads a graph input directly; "
                           "nothing would run on the tile")
    return QuantGraph(graph, ops, qz.scales, list(graph.inputs), outputs, host)


# --- the integer reference ---------------------------------------------------------------------

def _as_int32(acc: np.ndarray, q: QuantOp) -> np.ndarray:
    # quantize() bounds every accumulator to int32; this guards the reference itself.
    if acc.size and (acc.max() > INT32_MAX or acc.min() < -INT32_MAX - 1):
        raise AssertionError(f"{q.name}: int32 accumulator overflow")
    return acc.astype(np.int32)


def _int8_gemm(q: QuantOp, xs):
    return _as_int32(MATRIX_TYPES[ElemType.INT8].exact(xs[0], q.weight) + q.bias, q)


def _int8_conv(q: QuantOp, xs):
    acc = _conv_product(xs[0].astype(np.int64), q.weight.astype(np.int64), q.attrs)
    return _as_int32(acc + q.bias.astype(np.int64)[None, :, None, None], q)


INT32_KERNELS: dict[str, Callable] = {"gemm": _int8_gemm, "conv": _int8_conv}
"""Requantising ops: kernel(op, int8 inputs) -> the int32 accumulator."""


def _int8_add(q: QuantOp, xs):
    from d1tile.sw.vector_kernels import reference_add
    b = xs[1] if len(xs) > 1 else None
    const = None if q.const is None else np.broadcast_to(q.const, xs[0].shape)
    qb = q.factors[1] if len(q.factors) > 1 else 1.0
    return reference_add(xs[0], b, ElemType.INT8, q.factors[0], qb, q.relu, const)


def window_geometry(attrs: dict, shape, kind: str, cp: int | None = None):
    """The `WindowGeometry` of a pool node over NCHW `shape` (C stored channels per pixel
    unless `cp` is given)."""
    from d1tile.sw.conv import WindowGeometry
    _, c, h, w = shape
    return WindowGeometry(h, w, c if cp is None else cp, tuple(attrs["kernel"]),
                          tuple(attrs["strides"]), tuple(attrs["pads"]),
                          tuple(attrs.get("dilations", (1, 1))), kind,
                          bool(attrs.get("count_include_pad", False)),
                          bool(attrs.get("ceil_mode", False)))


def _int8_pool(kind: str) -> Callable:
    """The window max (exact) or mean of int8 NCHW values as the vector unit computes them
    (`d1tile.sw.vector_kernels.reference_pool`)."""
    def run(q: QuantOp, xs):
        from d1tile.sw.vector_kernels import reference_pool
        x = xs[0]
        geom = window_geometry(q.attrs, x.shape, kind)
        y = reference_pool(geom, x.transpose(0, 2, 3, 1), ElemType.INT8)
        return y.reshape(len(x), geom.out_h, geom.out_w, -1).transpose(0, 3, 1, 2)
    return run


INT8_KERNELS: dict[str, Callable] = {
    "add": _int8_add,
    "avgpool": _int8_pool("avg"),
    "maxpool": _int8_pool("max"),
    "relu": lambda q, xs: np.maximum(xs[0], 0).astype(np.int8),
    "flatten": lambda q, xs: xs[0].reshape(xs[0].shape[0], -1),
    "reshape": lambda q, xs: xs[0].reshape(_batched(q.attrs["shape"], xs[0].shape[0])),
}
"""Ops without REQUANT: kernel(op, int8 inputs) -> int8 output: exact (maxpool, relu,
flatten, reshape) or the vector unit's FP32 arithmetic (add, avgpool)."""


def _execute(qgraph: QuantGraph, inputs):
    arrays = _input_arrays(qgraph.graph, inputs)
    values = {n: quantize_tensor(arrays[n], qgraph.scales[n]) for n in qgraph.inputs}
    accs = {}
    for q in qgraph.ops:
        xs = [values[i] for i in q.inputs]
        if q.op in INT32_KERNELS:
            acc = INT32_KERNELS[q.op](q, xs)
            accs[q.output] = acc
            values[q.output] = requantize(acc, q.scale, q.shift, q.relu)
        else:
            values[q.output] = INT8_KERNELS[q.op](q, xs)
    return values, accs


def run_int8(qgraph: QuantGraph, inputs, *, keep: bool = False) -> dict[str, np.ndarray]:
    """The integer reference: float `inputs` are quantised on the host (`quantize_tensor`),
    then every op runs in integers exactly as the tile does. Returns the tile's int8 outputs
    (`qgraph.outputs`; every int8 tensor if `keep`)."""
    values, _ = _execute(qgraph, inputs)
    return values if keep else {o: values[o] for o in qgraph.outputs}


def int32_accumulators(qgraph: QuantGraph, inputs) -> dict[str, np.ndarray]:
    """Output name -> the int32 accumulator of each requantising op (bias included, before
    REQUANT): what the tile's MREAD + bias ADD leave in SRAM, for debugging a lowering."""
    return _execute(qgraph, inputs)[1]


def run_quantized(qgraph: QuantGraph, inputs) -> dict[str, np.ndarray]:
    """The float graph's outputs as the quantised pipeline computes them: `run_int8`, the tile
    outputs dequantised, then the host ops (softmax) in float64."""
    return finish_on_host(qgraph, run_int8(qgraph, inputs))


def finish_on_host(qgraph: QuantGraph, tile_outputs: dict) -> dict[str, np.ndarray]:
    """The graph's outputs from the tile's int8 outputs: dequantised, then the host ops."""
    values = {o: dequantize(q, qgraph.scales[o]) for o, q in tile_outputs.items()}
    for node in qgraph.host_nodes:
        values[node.output] = _run_float_node(node, values, qgraph.graph)
    return {o: values[o] for o in qgraph.graph.outputs}


# --- quantisation error ------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantReport:
    """How far the int8 pipeline is from the float reference on some data.

    `max_abs_error`: max |dequantised tile output - float value| over the tile outputs (the
    logits, before a host softmax); `max_abs_value`: the float outputs' max |value|, for scale.
    `agreement`: fraction of samples whose argmax (over dim 1 of the first tile output) is the
    same; the accuracies are None without labels."""
    samples: int
    max_abs_error: float
    max_abs_value: float
    agreement: float
    float_accuracy: float | None = None
    int8_accuracy: float | None = None

    def __str__(self) -> str:
        text = (f"{self.samples} samples: max |error| {self.max_abs_error:.4g} (values up to "
                f"{self.max_abs_value:.4g}), argmax agreement {100 * self.agreement:.1f} %")
        if self.float_accuracy is not None:
            text += (f", accuracy float {100 * self.float_accuracy:.1f} % / int8 "
                     f"{100 * self.int8_accuracy:.1f} %")
        return text


def quant_report(graph: Graph, qgraph: QuantGraph, inputs, labels=None) -> QuantReport:
    """Compare `run_int8` (dequantised) with `run_float` on `inputs` (and `labels`)."""
    floats = run_float(graph, inputs, keep=True)
    ints = run_int8(qgraph, inputs)
    err = peak = 0.0
    for o in qgraph.outputs:
        err = max(err, float(np.max(np.abs(dequantize(ints[o], qgraph.scales[o]) - floats[o]))))
        peak = max(peak, float(np.max(np.abs(floats[o]))))
    first = qgraph.outputs[0]
    pred_f = floats[first].reshape(len(floats[first]), -1).argmax(axis=1)
    pred_q = ints[first].reshape(len(ints[first]), -1).argmax(axis=1)
    acc_f = acc_q = None
    if labels is not None:
        labels = np.asarray(labels)
        acc_f, acc_q = float(np.mean(pred_f == labels)), float(np.mean(pred_q == labels))
    return QuantReport(len(pred_f), err, peak, float(np.mean(pred_f == pred_q)), acc_f, acc_q)
