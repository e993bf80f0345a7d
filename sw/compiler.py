"""The compiler driver: a network (ONNX or `GraphBuilder`) to a `TileProgram`, as an ordered list
of passes, and its execution on a device.

    compiled = compile_model("mlp.onnx", cfg, calibration_inputs)
    run = execute(compiled, get_device("model", cfg), x)        # float input
    run.outputs["logits"], run.result.cycles, run.reference["logits"]

Passes (`PASSES`, each a function of the `Compilation` that it fills in):

1. `front_end`: ONNX -> graph IR (`sw/onnx_frontend.py`), normalised; or a `Graph` as it is.
2. `quantise`: per-tensor int8 scales from the calibration inputs, then the quantised graph
   (`sw/quant.py`).
3. `lower`: every quantised op through the lowering table `LINEAR` onto the tile kernels
   (`sw/kernels.py`); an op without a lowering is a `CompileError` naming it.
4. `finish`: the per-node programs (with HALT), what to read back.

Every tile op becomes one matrix layer of the kernels (gemm, conv unrolled, add, avgpool,
relu; a maxpool fused into its producer or as a selection; flatten/reshape move nothing; the
comment above `Linear` and docs/compiler.md tell how); softmax runs on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from d1tile.dtypes import MATRIX_TYPES
from d1tile.params import TileConfig
from d1tile.sw.errors import CompileError
from d1tile.sw.ir import Graph
from d1tile.sw.kernels import KernelBuilder, load_activation, unpack_activation
from d1tile.sw.quant import (calibrate, quantize, quantize_tensor, run_float, run_int8,
                             windows)


__all__ = ["Compilation", "LayerInfo", "compile_model", "execute", "Execution", "References",
           "references", "PASSES", "LINEAR"]


@dataclass
class Compilation:
    cfg: TileConfig
    source: object
    calibration: dict
    graph: Graph | None = None
    qgraph: object = None
    builder: KernelBuilder | None = None
    layouts: dict = field(default_factory=dict)      # tensor name -> ActivationLayout on the tile
    orders: dict = field(default_factory=dict)       # tensor name -> ONNX index of each stored
    #                                                  feature (see lower)
    tile_program: object = None
    macs: int = 0                                    # multiply-accumulates of the tile's layers
    layers: list = field(default_factory=list)       # LayerInfo per tile layer, in order

    @property
    def input_name(self) -> str:
        return self.qgraph.inputs[0]

    @property
    def ideal_cycles(self) -> float:
        return self.macs / self.cfg.peak_macs_per_cycle


@dataclass
class LayerInfo:
    """One layer on the tile: the quantised ops it computes, the network's multiply-accumulates
    for them (`macs`: gemm and conv only), those the matrix units perform (`tile_macs`:
    unrolled zeros, pooling and adds included) and the kernel's `LayerPlan`."""
    name: str
    ops: list
    macs: int
    tile_macs: int
    plan: object


def front_end(c: Compilation) -> None:
    if isinstance(c.source, Graph):
        c.graph = c.source
        return
    from d1tile.sw.onnx_frontend import load_onnx
    c.graph = load_onnx(c.source)


def quantise(c: Compilation) -> None:
    if len(c.graph.inputs) != 1:
        raise CompileError(f"graph '{c.graph.name}': {len(c.graph.inputs)} inputs; the tile "
                           "runtime feeds exactly one")
    c.qgraph = quantize(c.graph, calibrate(c.graph, c.calibration))


# -- lowering: every tile op as a quantised matrix layer -----------------------------------------
#
# Activations live on the tile as [batch, features] int8 (`ActivationLayout`) whose stored
# features are a chosen order of the tensor's ONNX features (`Compilation.orders`): an NCHW
# tensor is stored channels-last, (h, w, c), so that a block of N stored features is N channels
# at one position and a convolution's K runs are bands of input rows; a [batch, F] tensor in
# its own order. Flatten and reshape keep ONNX's flat feature index, so they move nothing.
# (Storing a convolution's host input as im2col patches, which makes each output block's K
# run exactly its patch, was measured and left out: for the toy CNN it cut the matrix units'
# MACs from 2x to 1.3x the network's but not the cycles, which are bound by each tile's
# accumulator readout at such small K, while the 9x larger input cost load time and SRAM.)
#
# Every other op becomes one `KernelBuilder.quantised_layer`: Y = requantize(X @ W + b) with an
# int8 matrix W, first built over ONNX feature indices (`Linear`):
#   gemm     the layer's weights;
#   conv     unrolled: W[(c, iy, ix), (o, oy, ox)] = w[o, c, dy, dx] where input pixel (iy, ix)
#            is element (dy, dx) of output (oy, ox)'s window (stride, padding);
#            K runs (kernels.md) skip the all-zero words of each feature block;
#   add      k_a I stacked on k_b I over the two inputs' features (a constant: bias);
#   avgpool  the 0/1 window sums, requantised by 1 / count;
#   relu     I with the REQUANT's ReLU (scale 1, shift 0 is exact on int8);
# then its rows gathered in each input's stored order and its columns in the output's. A
# maxpool is a *pooled* layer: candidate p's weights are the columns of the p-th element of
# every window (padding: another element of the same window), max-reduced on the int32
# accumulators. It fuses into the layer that produces its input when that layer has no other
# use (the producer's columns gathered per candidate), else it selects from the int8 activation
# (I's columns, scale 1, shift 0).


@dataclass
class Linear:
    """One op as a matrix layer over the tile activations `inputs` (features concatenated).
    `weight` rows are ONNX feature indices of the inputs, one after the other; columns are ONNX
    feature indices of the output."""
    name: str
    inputs: list                 # tensor names
    weight: np.ndarray           # int64 [K, F] with int8 values
    bias: np.ndarray             # int64 [F] with int32 values
    scale: int
    shift: int
    relu: bool
    macs: int                    # the op's own multiply-accumulates (gemm, conv), else 0


def _window_sources(shape, attrs, kernel) -> np.ndarray:
    """[C, OH, OW, kh, kw]: the flat input feature (c, h, w) of each window element, -1 where
    the window covers padding."""
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape((1, *shape))
    return windows(index, attrs, kernel, -1)[0]


def channels_last(shape) -> np.ndarray:
    """The stored order of a tensor of sample shape `shape`: ONNX flat index of each stored
    feature, (h, w, c) for (C, H, W), the identity otherwise."""
    n = int(np.prod(shape))
    if len(shape) != 3:
        return np.arange(n)
    return np.arange(n).reshape(shape).transpose(1, 2, 0).reshape(-1)


def _linear_gemm(c: Compilation, op) -> Linear:
    k, f = op.weight.shape
    return Linear(op.name, [op.inputs[0]], op.weight.astype(np.int64),
                  op.bias.astype(np.int64), int(op.scale), int(op.shift), bool(op.relu),
                  c.graph.batch * k * f)


def _linear_conv(c: Compilation, op) -> Linear:
    x_shape = c.graph.shape(op.inputs[0])[1:]
    _, _, oh, ow = c.graph.shape(op.output)
    o, ch, kh, kw = op.weight.shape
    positions = oh * ow
    macs = c.graph.batch * o * positions * ch * kh * kw
    bias = np.repeat(op.bias.astype(np.int64), positions)
    src = _window_sources(x_shape, op.attrs, (kh, kw))                       # C, OH, OW, kh, kw
    w = np.zeros((int(np.prod(x_shape)), o * positions), dtype=np.int64)
    pos = np.arange(positions)
    for ci in range(ch):
        for dy in range(kh):
            for dx in range(kw):
                rows = src[ci, :, :, dy, dx].reshape(-1)
                valid = rows >= 0
                for oi in range(o):
                    w[rows[valid], oi * positions + pos[valid]] = op.weight[oi, ci, dy, dx]
    return Linear(op.name, [op.inputs[0]], w, bias, int(op.scale), int(op.shift),
                  bool(op.relu), macs)


def _features(c: Compilation, name: str) -> int:
    return int(np.prod(c.graph.shape(name)[1:]))


def _linear_add(c: Compilation, op) -> Linear:
    f = _features(c, op.output)
    eye = np.eye(f, dtype=np.int64)
    w = np.concatenate([k * eye for k in op.input_weights])
    bias = np.zeros(f, dtype=np.int64) if op.bias is None else \
        op.bias.astype(np.int64).reshape(-1)
    return Linear(op.name, list(op.inputs), w, bias, int(op.scale), int(op.shift),
                  bool(op.relu), 0)


def _linear_avgpool(c: Compilation, op) -> Linear:
    if np.ndim(op.scale):
        raise CompileError(
            f"node '{op.name}' (avgpool): with count_include_pad=0 and padding the divisor "
            "differs between positions, and the tile's REQUANT has one multiplier per layer "
            "(use count_include_pad=1 or no padding)")
    x_shape = c.graph.shape(op.inputs[0])[1:]
    src = _window_sources(x_shape, op.attrs, op.attrs["kernel"])
    n_in, n_out = int(np.prod(x_shape)), int(np.prod(src.shape[:3]))
    w = np.zeros((n_in, n_out), dtype=np.int64)
    out = np.arange(n_out)
    for element in src.reshape(n_out, -1).T:
        valid = element >= 0
        w[element[valid], out[valid]] += 1
    return Linear(op.name, [op.inputs[0]], w, np.zeros(n_out, dtype=np.int64),
                  int(op.scale), int(op.shift), False, 0)


def _identity(c: Compilation, op, relu: bool = False) -> Linear:
    """I over `op`'s input, scale 1, shift 0: exact on int8 (a relu, a maxpool's selection)."""
    f = _features(c, op.inputs[0])
    return Linear(op.name, [op.inputs[0]], np.eye(f, dtype=np.int64),
                  np.zeros(f, dtype=np.int64), 1, 0, relu, 0)


def _linear_relu(c: Compilation, op) -> Linear:
    return _identity(c, op, relu=True)


LINEAR = {"gemm": _linear_gemm, "conv": _linear_conv, "add": _linear_add,
          "avgpool": _linear_avgpool, "relu": _linear_relu}
"""Quantised op -> its matrix layer (module comment above)."""


def _pool_candidates(c: Compilation, pool) -> np.ndarray:
    """[P, F_out]: for maxpool `pool`, the input feature (ONNX index) of candidate p of each
    output feature (a window element over padding takes the window's first real element
    instead; max is not changed by a repeat)."""
    x_shape = c.graph.shape(pool.inputs[0])[1:]
    src = _window_sources(x_shape, pool.attrs, pool.attrs["kernel"])
    per_out = src.reshape(-1, src.shape[3] * src.shape[4])         # F_out, P
    first = np.array([row[row >= 0][0] for row in per_out])
    return np.where(per_out >= 0, per_out, first[:, None]).T


def _stored_rows(c: Compilation, lin: Linear) -> np.ndarray:
    """`lin`'s weight rows in its inputs' stored orders."""
    parts, at = [], 0
    for t in lin.inputs:
        n = _features(c, t)
        parts.append(lin.weight[at:at + n][c.orders[t]])
        at += n
    return np.concatenate(parts)


def _emit(c: Compilation, name: str, lin: Linear, output: str, op_names, pool=None) -> bool:
    """Lower `lin` (pooled by maxpool `pool` if given) as one layer writing `output`; returns
    False, emitting nothing, when the pooled candidates of an output have different biases."""
    order = channels_last(c.graph.shape(output)[1:])
    if pool is None:
        cols, bias = order, lin.bias[order]
    else:
        cols = _pool_candidates(c, pool)[:, order]                 # [P, F_out stored]
        biases = lin.bias[cols]
        if not np.all(biases == biases[:1]):
            return False
        bias = biases[0]
    inputs = []
    for t in lin.inputs:
        if t not in c.layouts:
            raise CompileError(f"node '{name}': its input '{t}' is not on the tile")
        inputs.append(c.layouts[t])
    rows = _stored_rows(c, lin)
    weight = rows[:, cols] if pool is None else np.stack([rows[:, k] for k in cols])
    c.layouts[output] = c.builder.quantised_layer(name, inputs, weight, bias, lin.scale,
                                                  lin.shift, relu=lin.relu)
    c.orders[output] = order
    layer = c.builder.layers[-1]
    c.macs += lin.macs
    c.layers.append(LayerInfo(name, op_names, lin.macs, _tile_macs(c.cfg, layer), layer))
    return True


def _tile_macs(cfg: TileConfig, layer) -> int:
    """The multiply-accumulates the matrix units perform for a layer (zeros included)."""
    n = cfg.mac_dim
    per_word = MATRIX_TYPES[layer.dtype].vectors_per_word(cfg)
    return sum((k1 - k0) * per_word * n * n
               for p in layer.plans.values() for i, _ in p.tiles for k0, k1 in layer.kruns[i])


def _single_user(c: Compilation, tensor: str):
    """The one quantised op reading `tensor`, when it has exactly one and is not an output."""
    if tensor in c.qgraph.outputs:
        return None
    users = [q for q in c.qgraph.ops if tensor in q.inputs]
    return users[0] if len(users) == 1 else None


def _place_input(c: Compilation) -> None:
    """The host input's stored order (channels-last) and its staging regions."""
    name = c.input_name
    shape = c.graph.shape(name)
    order = c.orders[name] = channels_last(shape[1:])
    c.layouts[name] = c.builder.input(name, batch=shape[0], features=len(order))


DENSE_HOST_BYTES = 256 << 20
"""The most host memory one layer's dense matrix may take (int64 [K, F], before the kernels
keep only its nonzero K runs): a bound on the compiler's memory, checked before the matrix is
built (`check_dense`)."""


def _valid_taps(size: int, kernel: int, stride: int, lo: int, out: int) -> int:
    """Window elements over real (not padding) inputs along one axis, summed over the `out`
    output positions: sum over tap d and position o of [0 <= o * stride - lo + d < size]."""
    at = np.arange(out)[:, None] * stride - lo + np.arange(kernel)[None, :]
    return int(((at >= 0) & (at < size)).sum())


def _size(nbytes: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def check_dense(c: Compilation, op) -> None:
    """Before `op`'s matrix layer is built: its dense weights [K, F] (K input features, F
    output features; a convolution or pooling unrolled over every output position) and how
    many of them are nonzero, from the shapes alone. Refuse, in one line naming the op, a
    layer whose nonzero weights alone exceed the tile's SRAM (the kernels store every nonzero
    weight at least once) or whose dense matrix exceeds `DENSE_HOST_BYTES` on the host."""
    graph, cfg = c.graph, c.cfg
    x_shape = graph.shape(op.inputs[0])[1:]
    k = sum(_features(c, t) for t in op.inputs)
    f = _features(c, op.output)
    how = "its dense matrix"
    if op.op in ("conv", "avgpool", "maxpool"):
        kh, kw = op.weight.shape[2:] if op.op == "conv" else op.attrs["kernel"]
        _, oh, ow = graph.shape(op.output)[1:]
        sh, sw = op.attrs["strides"]
        pt, pl, _, _ = op.attrs["pads"]
        taps = (_valid_taps(x_shape[1], kh, sh, pt, oh) * _valid_taps(x_shape[2], kw, sw, pl, ow))
        channels = op.weight.shape[0] * op.weight.shape[1] if op.op == "conv" else x_shape[0]
        nonzero = channels * taps
        how = f"unrolled over its {oh * ow} output positions"
    elif op.op == "gemm":
        nonzero = int(np.count_nonzero(op.weight))
    else:                       # add, relu: identity blocks
        nonzero = k
    dense = k * f * 8
    if op.op == "maxpool":      # an identity [K, K], then its P = kh kw candidates [P, K, F]
        dense = 8 * k * max(k, kh * kw * f)
    sram = cfg.nodes * cfg.sram_kib * 1024
    where = f"node '{op.name}' ({op.op})"
    if nonzero > sram:
        raise CompileError(
            f"{where}: lowered as one matrix layer ({how}), it has {nonzero:,} nonzero int8 "
            f"weights ({_size(nonzero)}), more than the tile's SRAM ({cfg.rows}x{cfg.cols} "
            f"nodes x {cfg.sram_kib} KiB = {_size(sram)})")
    if dense > DENSE_HOST_BYTES:
        raise CompileError(
            f"{where}: lowered as one matrix layer ({how}), its dense [{k}, {f}] weight matrix "
            f"would take {_size(dense)} of host memory, more than the compiler's "
            f"{_size(DENSE_HOST_BYTES)} per layer")


def lower(c: Compilation) -> None:
    c.builder = KernelBuilder(c.cfg)
    _place_input(c)
    done = set()
    for op in c.qgraph.ops:
        if op.name in done:
            continue
        if op.op in ("flatten", "reshape"):
            if op.inputs[0] not in c.layouts:
                raise CompileError(f"node '{op.name}' ({op.op}): its input '{op.inputs[0]}' is "
                                   "not on the tile")
            # The ONNX flat index of every feature is unchanged: same words, same order.
            c.layouts[op.output] = c.layouts[op.inputs[0]]
            c.orders[op.output] = c.orders[op.inputs[0]]
            continue
        if op.op == "maxpool":
            check_dense(c, op)
            _emit(c, op.name, _identity(c, op), op.output, [op.op], pool=op)
            continue
        make = LINEAR.get(op.op)
        if make is None:
            lowered = ", ".join(sorted([*LINEAR, "maxpool", "flatten", "reshape"]))
            raise CompileError(f"node '{op.name}' ({op.op}): no lowering onto the tile "
                               f"(lowered: {lowered})")
        check_dense(c, op)
        lin = make(c, op)
        user = _single_user(c, op.output)
        if user is not None and user.op == "maxpool" and _emit(
                c, f"{op.name}+{user.name}", lin, user.output, [op.op, user.op], pool=user):
            done.add(user.name)
            continue
        _emit(c, op.name, lin, op.output, [op.op])


def to_stored(order: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[batch, ONNX features] -> [batch, stored features]."""
    return x[:, order]


def from_stored(order: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """[batch, stored features] -> [batch, ONNX features]."""
    out = np.empty_like(stored)
    out[:, order] = stored
    return out


def finish(c: Compilation) -> None:
    for name in c.qgraph.outputs:
        c.builder.read(c.layouts[name])
    c.tile_program = c.builder.finish()


PASSES = (front_end, quantise, lower, finish)


def compile_model(source, cfg: TileConfig, calibration) -> Compilation:
    """Run the passes. `calibration`: input arrays (one batch, or a dict name -> array)."""
    if not isinstance(calibration, dict):
        calibration = {"__single__": np.asarray(calibration)}
    c = Compilation(cfg, source, calibration)
    for step in PASSES:
        if step is quantise and "__single__" in c.calibration:
            c.calibration = {c.graph.inputs[0]: c.calibration.pop("__single__")}
        step(c)
    return c


@dataclass(frozen=True)
class References:
    """What a run is checked against, for one input: the integer reference's int8 tile outputs
    (`run_int8`) and the float graph's values of the same tensors (`run_float`)."""
    int8: dict
    floats: dict


def references(c: Compilation, x) -> References:
    name = c.input_name
    x = np.asarray(x, dtype=np.float32)
    floats = run_float(c.graph, {name: x}, keep=True)
    return References(run_int8(c.qgraph, {name: x}), {k: floats[k] for k in c.qgraph.outputs})


@dataclass
class Execution:
    outputs: dict        # tile output name -> int8 array read back from the tile
    reference: dict      # the same from the integer reference (run_int8)
    float_values: dict   # the float graph's values of the same tensors
    result: object       # the device's RunResult

    @property
    def max_abs_diff(self) -> int:
        return max(int(np.max(np.abs(self.outputs[k].astype(np.int32)
                                     - self.reference[k].astype(np.int32))))
                   for k in self.outputs)


def execute(c: Compilation, device, x, refs: References | None = None) -> Execution:
    """Quantise the float input `x`, run the compiled program on `device`, read the outputs
    back; also run the integer and float references on the same input (or take them from
    `refs`, `references(c, x)`, when several devices run it)."""
    name = c.input_name
    x = np.asarray(x, dtype=np.float32)
    xq = quantize_tensor(x, c.qgraph.scales[name])
    tp = _with_input(c, xq)
    device.load(tp)
    result = device.run()
    if result.hang or result.faults:
        raise RuntimeError(f"the run did not finish: {result.hang or result.faults}")
    outputs = {k: from_stored(c.orders[k], unpack_activation(c.layouts[k], result))
               .reshape(c.qgraph.shape(k)) for k in c.qgraph.outputs}
    refs = refs if refs is not None else references(c, x)
    return Execution(outputs, refs.int8, refs.floats, result)


def _with_input(c: Compilation, xq) -> object:
    """The compiled program with this input's words loaded (the program itself is reused)."""
    from copy import deepcopy
    tp = deepcopy(c.tile_program)
    load_activation(tp, c.layouts[c.input_name],
                    to_stored(c.orders[c.input_name], xq.reshape(len(xq), -1)))
    return tp
