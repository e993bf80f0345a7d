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

Every tile op goes to its kernel (`LOWER`): gemm to the GEMM kernel, conv to the implicit-GEMM
convolution (a relu and a max pool fused), add, relu and pooling to the vector unit; flatten
and reshape move nothing; the comment above `image_order` and docs/compiler.md tell how;
softmax runs on the host.
"""

from __future__ import annotations

import copy

from dataclasses import dataclass, field
from math import ceil

import numpy as np

from d1tile.dtypes import MATRIX_TYPES, ElemType
from d1tile.params import TileConfig
from d1tile.sw.bf16 import bits_to_float
from d1tile.sw.conv import (FOLDS, ConvGeometry, fold_order, fold_weights, folded,
                            reference_conv_bf16)
from d1tile.sw.errors import CapacityError, CompileError
from d1tile.sw.ir import Graph
from d1tile.sw.kernels import (KernelBuilder, conv_cost, load_activation, reference_layer_bf16,
                               unpack_activation)
from d1tile.sw.quant import (calibrate, quantize, quantize_tensor, run_float, run_int8,
                             window_geometry)
from d1tile.sw.vector_kernels import reference_add, reference_pool, reference_relu


__all__ = ["Compilation", "LayerInfo", "compile_model", "execute", "Execution", "Runs",
           "run_results", "References", "references", "PASSES", "LOWER", "image_order", "channels_last"]


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
    #                                                  feature, -1 for padding (see lower)
    images: dict = field(default_factory=dict)       # tensor name -> (H, W, cp) of an image
    image_origin: dict = field(default_factory=dict)  # flattened image -> the image tensor
    folds: dict = field(default_factory=dict)        # host input -> its fold (conv.FOLDS)
    # bf16: per layer (input tensors, output tensor, reference fn on the stored BF16 bits)
    bf16_layers: list = field(default_factory=list)
    fold_costs: dict = field(default_factory=dict)   # fold -> the cost model's estimate
    dtype: ElemType = ElemType.INT8                  # the tile's activation and operand type
    batch: int = 0                                   # the network's batch (`run_batch` per run)
    tile_program: object = None
    macs: int = 0                                    # multiply-accumulates of the tile's layers
    layers: list = field(default_factory=list)       # LayerInfo per tile layer, in order
    # The first convolution split over time into bands of output rows (`_band_conv`): set by
    # `lower` when the network does not fit otherwise; the host input is then placed band by
    # band (`band_input`: what `_place_input` found, for `_band_conv`).
    band_split: bool = False
    band_input: dict = field(default_factory=dict)

    @property
    def input_name(self) -> str:
        return self.qgraph.inputs[0]

    @property
    def ideal_cycles(self) -> float:
        """`macs` (those of one run) over the grid's peak."""
        return self.macs / self.cfg.peak_macs_per_cycle

    @property
    def run_batch(self) -> int:
        """The samples one run of the compiled program takes: the network's batch, or a part
        of it when the batch is split over runs (`compile_model`)."""
        return self.graph.batch

    def runs(self, samples: int) -> int:
        """How many runs `samples` inputs take."""
        return max(1, -(-samples // self.run_batch))


@dataclass
class LayerInfo:
    """One layer on the tile: the quantised ops it computes, the network's multiply-accumulates
    for them (`macs`: gemm and conv only), those the matrix units perform (`tile_macs`:
    padding channels, words of zeros and pool candidates included) and the kernel's plan
    (`LayerPlan`, or `VectorPlan` for a vector layer)."""
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
    if c.calibration:
        scales = calibrate(c.graph, c.calibration)
    elif c.graph.quant_scales:         # a QDQ model: its own scales, nothing to calibrate
        scales = dict(c.graph.quant_scales)
    else:
        raise CompileError("int8 needs calibration inputs (or a QDQ model, which carries its "
                           "own scales)")
    c.qgraph = quantize(c.graph, scales)


def prepare(c: Compilation) -> None:
    """The tile's ops: int8 (`quantise`), or bf16 (`d1tile.sw.bf16.bf16_graph`: the float
    weights as they are, no calibration)."""
    if c.dtype == ElemType.INT8:
        quantise(c)
        return
    if len(c.graph.inputs) != 1:
        raise CompileError(f"graph '{c.graph.name}': {len(c.graph.inputs)} inputs; the tile "
                           "runtime feeds exactly one")
    from d1tile.sw.bf16 import bf16_graph
    c.qgraph = bf16_graph(c.graph)


# -- lowering: every tile op onto its kernel ------------------------------------------------------
#
# Activations live on the tile as [batch, features] (`ActivationLayout`) whose stored features
# are a chosen order of the tensor's ONNX features, with padding (`Compilation.orders`: the
# ONNX flat index of each stored feature, -1 for a padding feature, which holds zeros). An NCHW
# tensor that a convolution or a pool reads is stored as an *image*: pixels in raster order,
# each its C channels padded to `cp` (a whole number of operand words: V for the host's
# input, the channel blocks x N for a layer's output), `Compilation.images[t] = (H, W, cp)`.
# Other tensors keep their ONNX order. Flatten and reshape keep every stored feature where it
# is; the gemm that reads them takes its weight rows in the stored order (zero rows for
# padding).
#
# The lowering table `LOWER` maps each quantised op to its kernel (d1tile.sw.kernels):
#   conv     `conv_layer`: an implicit GEMM, the weights stored once per node, the taps read
#            in place from the input image; a relu fused (REQUANT's), and a max pool that
#            reads nothing else and whose windows do not overlap fused (its candidates
#            max-reduced on the accumulators);
#   gemm     `quantised_layer` (the weight rows in the input's stored order);
#   add      `add_layer` on the vector unit (two activations, or a constant; a relu fused);
#   relu     `relu_layer` on the vector unit;
#   maxpool, avgpool (global ones included)  `pool_layer` on the vector unit;
#   flatten, reshape  nothing (the stored order carries over).


def image_order(channels: int, height: int, width: int, cp: int) -> np.ndarray:
    """The stored order of an NCHW sample [channels, height, width] as an image with `cp`
    stored channels per pixel: ONNX flat index c H W + h W + w of stored feature
    (h W + w) cp + c, -1 for c >= channels."""
    h, w, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(cp), indexing="ij")
    flat = c * height * width + h * width + w
    return np.where(c < channels, flat, -1).reshape(-1)


def channels_last(shape) -> np.ndarray:
    """The stored order of a tensor of sample shape `shape` with no padding: (h, w, c) for
    (C, H, W), the identity otherwise."""
    if len(shape) != 3:
        return np.arange(int(np.prod(shape)))
    c, h, w = shape
    return image_order(c, h, w, c)


def _features(c: Compilation, name: str) -> int:
    return int(np.prod(c.graph.shape(name)[1:]))


def _layout(c: Compilation, name: str, node: str, op: str):
    if name not in c.layouts:
        raise CompileError(f"node '{node}' ({op}): its input '{name}' is not on the tile")
    return c.layouts[name]


def _image(c: Compilation, name: str, node: str, op: str) -> tuple[int, int, int]:
    """(H, W, cp) of an image-stored tensor, or a CompileError naming the node."""
    if name not in c.images:
        raise CompileError(f"node '{node}' ({op}): its input '{name}' is not an NCHW image on "
                           "the tile (it was reshaped from a flat tensor)")
    return c.images[name]


def _vectors(c: Compilation) -> int:
    return MATRIX_TYPES[c.dtype].vectors_per_word(c.cfg)


def _bf16_layer(c: Compilation, inputs, output: str, fn) -> None:
    """Record a bf16 layer's reference (`d1tile.sw.bf16.bf16_reference`): fn maps the stored
    BF16 bits of `inputs` to those of `output`."""
    if c.dtype == ElemType.BF16:
        c.bf16_layers.append(([inputs] if isinstance(inputs, str) else list(inputs), output, fn))


def _record(c: Compilation, name: str, ops: list, macs: int, layer=None) -> None:
    """A tile layer's LayerInfo (the builder's last layer unless `layer` is given)."""
    layer = c.builder.layers[-1] if layer is None else layer
    c.macs += macs
    c.layers.append(LayerInfo(name, ops, macs, layer.matrix_macs(), layer))


def _users(c: Compilation, tensor: str) -> list:
    """The quantised ops reading `tensor`, in order."""
    return [q for q in c.qgraph.ops if tensor in q.inputs]


def _single_user(c: Compilation, tensor: str):
    """The one quantised op reading `tensor`, when it has exactly one and is not an output."""
    if tensor in c.qgraph.outputs:
        return None
    users = _users(c, tensor)
    return users[0] if len(users) == 1 else None


def _conv_geometry(c: Compilation, op, x_image, pool=None) -> ConvGeometry:
    """The geometry of conv `op` on its input image (H, W, cp), a max pool `pool` fused."""
    h, w, cp = x_image
    attrs = op.attrs
    weight = op.weight
    pool_geom = None
    if pool is not None:
        pool_geom = (tuple(pool.attrs["kernel"]), tuple(pool.attrs["strides"]),
                     tuple(pool.attrs["pads"]))
    return ConvGeometry(h, w, c.graph.shape(op.inputs[0])[1], cp, weight.shape[0],
                        tuple(weight.shape[2:]), tuple(attrs["strides"]), tuple(attrs["pads"]),
                        tuple(attrs.get("dilations", (1, 1))), int(attrs.get("group", 1)),
                        pool_geom)


def _fusable_pool(c: Compilation, op):
    """The max pool that reads only `op`'s output and can be fused into it (windows that do
    not overlap, no dilation, floor sizes), or None."""
    user = _single_user(c, op.output)
    if user is None or user.op != "maxpool":
        return None
    a = user.attrs
    if tuple(a.get("dilations", (1, 1))) != (1, 1) or a.get("ceil_mode", False):
        return None
    (kh, kw), (sh, sw) = a["kernel"], a["strides"]
    pt, pl, pb, pr = a["pads"]
    if sh < kh or sw < kw or max(pt, pb) >= kh or max(pl, pr) >= kw:
        return None
    return user


def _lower_conv(c: Compilation, op) -> list:
    pool = _fusable_pool(c, op)
    banded = c.band_input.get("conv") == op.name
    x = None if banded else _layout(c, op.inputs[0], op.name, op.op)
    weight = op.weight
    if op.inputs[0] in c.folds:         # the host folded the taps into the channels
        fold = c.folds[op.inputs[0]]
        geom = folded(_conv_geometry(c, op, _unfolded_image(c, op.inputs[0]), pool), fold,
                      _vectors(c))
        weight = fold_weights(weight, fold)
    else:
        geom = _conv_geometry(c, op, _image(c, op.inputs[0], op.name, op.op), pool)
    name = op.name if pool is None else f"{op.name}+{pool.name}"
    out = pool.output if pool is not None else op.output
    ops = [op.op] + ([pool.op] if pool is not None else [])
    if banded:
        y = _band_conv(c, op, ops, name, out, weight, geom)
    else:
        y = _conv_layer(c, op, name, x, weight, geom)
        _record(c, name, ops, geom.macs(c.graph.batch))
    if c.dtype == ElemType.BF16:
        batch, n, relu = c.graph.batch, c.cfg.mac_dim, bool(op.relu)
        _bf16_layer(c, op.inputs[0], out, lambda xs: reference_conv_bf16(
            geom, xs[0].reshape(batch, geom.in_h, geom.in_w, geom.cp), weight, op.bias, relu,
            n).reshape(batch, -1))
    cp = ceil(geom.out_c / c.cfg.mac_dim) * c.cfg.mac_dim
    c.layouts[out] = y
    c.images[out] = (geom.pooled_h, geom.pooled_w, cp)
    c.orders[out] = image_order(geom.out_c, geom.pooled_h, geom.pooled_w, cp)
    return [pool.name] if pool is not None else []


def _conv_layer(c: Compilation, op, name: str, x, weight, geom: ConvGeometry, **kwargs):
    if c.dtype == ElemType.INT8:
        return c.builder.conv_layer(name, x, weight, op.bias, geom, scale=int(op.scale),
                                    shift=int(op.shift), relu=bool(op.relu), **kwargs)
    return c.builder.conv_layer(name, x, weight, op.bias, geom, relu=bool(op.relu), **kwargs)


def _list_reader(c: Compilation, tensor: str) -> bool:
    """Whether `tensor` may be a list of parts side by side (a layer split over time): read
    only by GEMMs (which take their K as the parts concatenated), by flattens and reshapes
    whose outputs are such tensors, or by the host."""
    for q in _users(c, tensor):
        if q.op in ("flatten", "reshape"):
            if not _list_reader(c, q.output):
                return False
        elif not (q.op == "gemm" and q.inputs[0] == tensor):
            return False
    return True


def _band_splittable(c: Compilation) -> bool:
    """Whether the first convolution can be split over time (`_band_conv`): it reads the
    host input (its only reader) and its output (after a fused max pool) can be a list."""
    conv = _first_conv(c, c.input_name)
    if conv is None or len(c.graph.shape(c.input_name)) != 4:
        return False
    pool = _fusable_pool(c, conv)
    return _list_reader(c, pool.output if pool is not None else conv.output)


BAND_IMEM = 24
"""Instructions per node a band of a split convolution takes at least (its barrier, WAITs,
MATMULs, MREAD and VECs): `_band_conv` tries no more bands than the instruction memory holds
at this rate."""


def _band_conv(c: Compilation, op, ops: list, name: str, out: str, weight,
               geom: ConvGeometry):
    """**Split over time** (the first convolution, on the host input): the output rows cut
    into 2, 3, ... bands (`ConvGeometry.bands`), one layer each, one after another; band p's
    input rows are a host input of their own, placed where its MATMULs read them (the spans of
    the band) and fed once the barrier before the band has passed (gated feeds, in the words
    of the band before: `KernelBuilder.input(gated=True)`); the output is the list of the
    bands' outputs, kept on the tile, or, when the host is its only reader and it does not
    fit, sent to the host band by band (`conv_layer(out="host")`). Returns the list; the
    error of the finest split tried when none fits."""
    info, cfg = c.band_input, c.cfg
    vpw = _vectors(c)
    outs = ("sram", "host") if out in c.qgraph.outputs and not _users(c, out) else ("sram",)
    tried, last = set(), None
    for parts in range(2, min(geom.pooled_h, cfg.imem_words // BAND_IMEM) + 1):
        bands = geom.bands(parts)
        if len(bands) in tried:
            continue
        tried.add(len(bands))
        spans = [geom.spans(cfg.rows, geom.cp // vpw, band) for band in bands]
        reserve = {y: max((sp[y][1] - sp[y][0] for sp in spans if y in sp), default=0)
                   for y in range(cfg.rows)}
        for where in outs:
            before = copy.deepcopy(c.builder)
            try:
                xs, ys = [], []
                for k, band in enumerate(bands):
                    rows = f"[{band[0] // geom.pooled_w}:{band[1] // geom.pooled_w}]"
                    if k and c.builder._barrier_helps():
                        c.builder._add_barrier()       # band k takes band k - 1's words
                    xs.append(c.builder.input(
                        f"{info['name']}{rows}", batch=info["batch"], features=info["features"],
                        dtype=c.dtype, form="spans", gated=True, spans=spans[k],
                        reserve=reserve))
                    ys.append(_conv_layer(c, op, f"{name}{rows}", xs[-1], weight, geom,
                                          positions=band, out=where))
                    c.builder.release(xs[-1])
                    _record(c, f"{name}{rows}", ops, geom.band_macs(band, c.graph.batch),
                            c.builder.layers[-1])
                c.layouts[info["name"]] = xs
                return ys
            except CapacityError as exc:
                c.builder = before
                del c.layers[len(c.layers) - len(ys):]
                c.macs -= sum(geom.band_macs(b, c.graph.batch) for b in bands[:len(ys)])
                last = exc
    if last is None:
        raise CapacityError(f"layer {name!r}: its {geom.pooled_h} output rows cannot be split "
                            "into bands")
    raise CapacityError(f"down to {len(tried) and max(tried)} bands of output rows: {last}")


def _stored_rows(c: Compilation, name: str, weight: np.ndarray) -> np.ndarray:
    """`weight` [K, F] (rows: ONNX features of `name`) with its rows in the stored order
    (zero rows for padding features)."""
    order = c.orders[name]
    rows = np.zeros((len(order), weight.shape[1]), dtype=weight.dtype)
    rows[order >= 0] = weight[order[order >= 0]]
    return rows


def _lower_gemm(c: Compilation, op) -> list:
    """One GEMM layer; when it does not fit the tile (`CapacityError`) and only GEMMs (or the
    host) read its output, its output features split over time (`_split_gemm`)."""
    x = _layout(c, op.inputs[0], op.name, op.op)
    weight = _stored_rows(c, op.inputs[0], op.weight)
    k, f = op.weight.shape
    split = _splittable(c, op)
    before = copy.deepcopy(c.builder) if split else None
    try:
        y = _gemm_layer(c, op.name, x, weight, op.bias, op)
        infos = [(op.name, c.graph.batch * k * f)]
    except CapacityError as whole:
        if not split:
            raise
        c.builder = before
        y, infos = _split_gemm(c, op, x, weight, whole)
    for (name, macs), layer in zip(infos, c.builder.layers[-len(infos):]):
        _record(c, name, [op.op], macs, layer)
    if c.dtype == ElemType.BF16:
        cfg, relu = c.cfg, bool(op.relu)
        _bf16_layer(c, op.inputs[0], op.output, lambda xs: reference_layer_bf16(
            cfg, bits_to_float(xs[0]), weight, op.bias, relu))
    c.layouts[op.output] = y
    c.orders[op.output] = np.arange(f)
    return []


def _gemm_layer(c: Compilation, name: str, x, weight, bias, op):
    if c.dtype == ElemType.INT8:
        return c.builder.quantised_layer(name, x, weight, bias, int(op.scale), int(op.shift),
                                         relu=bool(op.relu))
    return c.builder.bf16_layer(name, x, weight, bias, relu=bool(op.relu))


def _splittable(c: Compilation, op) -> bool:
    """Whether a GEMM's output may be a list of parts: read only by GEMMs (which take their K
    as the parts concatenated) or by the host, and more than one feature block wide."""
    users = _users(c, op.output)
    return (op.weight.shape[1] > c.cfg.mac_dim
            and all(q.op == "gemm" and q.inputs[0] == op.output for q in users))


IMEM_PER_PART = 16
"""Instructions per node a part of a split GEMM takes at least (`_split_gemm` tries no more
parts than the instruction memory holds at this rate)."""


def _split_gemm(c: Compilation, op, x, weight, whole: CapacityError):
    """**Split over time**: the GEMM as 2, 3, ... layers one after another, each computing a
    contiguous range of the output's feature blocks with only those weights on the tile; a
    part's weights die after it, so the next part's take their words after a barrier (its
    weight staging fed by the host once the barrier's token has come: gated feeds). The output
    is the list of the parts' activations. Returns it and [(layer name, MACs)]; the error of
    the whole layer (and of the finest split) when no split fits."""
    n, (k, f) = c.cfg.mac_dim, op.weight.shape
    blocks = -(-f // n)
    tried, last = set(), None
    # every part costs each node a few instructions at least (its WAITs, a MATMUL, an MREAD,
    # the VECs): more parts than IMEM_PER_PART allows cannot fit the instruction memory
    for parts in range(2, min(blocks, c.cfg.imem_words // IMEM_PER_PART) + 1):
        per = -(-blocks // parts)
        if per in tried:
            continue
        tried.add(per)
        before = copy.deepcopy(c.builder)
        try:
            outs, infos = [], []
            for b0 in range(0, blocks, per):
                f0, f1 = b0 * n, min(f, (b0 + per) * n)
                name = f"{op.name}[{f0}:{f1}]"
                outs.append(_gemm_layer(c, name, x, weight[:, f0:f1], op.bias[f0:f1], op))
                infos.append((name, c.graph.batch * k * (f1 - f0)))
            return outs, infos
        except CapacityError as exc:
            c.builder = before
            last = exc
    if last is None:
        raise whole
    raise CapacityError(f"{whole} (nor with its {f} output features split over time, down "
                        f"to {len(range(0, blocks, per))} layers: {last})") from None


def _same_order(c: Compilation, op, names) -> np.ndarray:
    orders = [c.orders[t] for t in names]
    if any(len(o) != len(orders[0]) or not np.array_equal(o, orders[0]) for o in orders[1:]):
        raise CompileError(f"node '{op.name}' ({op.op}): its inputs "
                           f"{', '.join(repr(t) for t in names)} are stored in different "
                           "orders on the tile (a layout change is not supported)")
    return orders[0]


def _lower_add(c: Compilation, op) -> list:
    a = _layout(c, op.inputs[0], op.name, op.op)
    b = _layout(c, op.inputs[1], op.name, op.op) if len(op.inputs) > 1 else None
    order = _same_order(c, op, op.inputs)
    const = None
    if op.const is not None:
        flat = np.asarray(op.const, dtype=np.float64).reshape(-1)
        const = np.where(order >= 0, flat[np.maximum(order, 0)], 0.0)
    qa = op.factors[0] if op.factors else 1.0
    qb = op.factors[1] if len(op.factors) > 1 else 1.0
    y = c.builder.add_layer(op.name, a, b, const=const, qa=qa, qb=qb, relu=bool(op.relu))
    if c.dtype == ElemType.BF16:
        relu = bool(op.relu)
        _bf16_layer(c, op.inputs, op.output, lambda xs: reference_add(
            xs[0], xs[1] if len(xs) > 1 else None, ElemType.BF16, relu=relu, const=const))
    _alias(c, op.output, op.inputs[0], y)
    _record(c, op.name, [op.op], 0)
    return []


def _lower_relu(c: Compilation, op) -> list:
    y = c.builder.relu_layer(op.name, _layout(c, op.inputs[0], op.name, op.op))
    _bf16_layer(c, op.inputs[0], op.output, lambda xs: reference_relu(xs[0], ElemType.BF16))
    _alias(c, op.output, op.inputs[0], y)
    _record(c, op.name, [op.op], 0)
    return []


def _alias(c: Compilation, out: str, like: str, layout) -> None:
    """`out` is stored as `like` is (an elementwise op's output)."""
    c.layouts[out] = layout
    c.orders[out] = c.orders[like]
    if like in c.images:
        c.images[out] = c.images[like]


def _lower_pool(c: Compilation, op) -> list:
    x = _layout(c, op.inputs[0], op.name, op.op)
    h, w, cp = _image(c, op.inputs[0], op.name, op.op)
    shape = c.graph.shape(op.inputs[0])
    geom = window_geometry(op.attrs, (shape[0], cp, h, w), "max" if op.op == "maxpool" else "avg")
    y = c.builder.pool_layer(op.name, x, geom)
    batch = c.graph.batch
    _bf16_layer(c, op.inputs[0], op.output, lambda xs: reference_pool(
        geom, xs[0].reshape(batch, h, w, cp), ElemType.BF16).reshape(batch, -1))
    c.layouts[op.output] = y
    c.images[op.output] = (geom.out_h, geom.out_w, cp)
    c.orders[op.output] = image_order(shape[1], geom.out_h, geom.out_w, cp)
    _record(c, op.name, [op.op], 0)
    return []


def _lower_move(c: Compilation, op) -> list:
    """Flatten and reshape: the stored features stay where they are (ONNX's flat index of
    every feature is unchanged). A reshape to an NCHW shape whose image order is the stored
    order (a flatten undone) is an image again."""
    src = op.inputs[0]
    c.layouts[op.output] = _layout(c, src, op.name, op.op)
    _bf16_layer(c, src, op.output, lambda xs: xs[0])
    order = c.orders[op.output] = c.orders[src]
    shape = c.graph.shape(op.output)
    source_image = c.images.get(src) or c.images.get(c.image_origin.get(src))
    if source_image is not None:
        c.image_origin[op.output] = c.image_origin.get(src, src)
        if len(shape) == 4:
            cp = source_image[2]
            mine = image_order(shape[1], shape[2], shape[3], cp)
            if len(mine) == len(order) and np.array_equal(mine, order):
                c.images[op.output] = (shape[2], shape[3], cp)
    return []


LOWER = {"conv": _lower_conv, "gemm": _lower_gemm, "add": _lower_add, "relu": _lower_relu,
         "maxpool": _lower_pool, "avgpool": _lower_pool, "flatten": _lower_move,
         "reshape": _lower_move}
"""Quantised op -> its lowering (module comment above); each returns the names of the ops it
fused and that need no lowering of their own."""


def _first_conv(c: Compilation, name: str):
    """The conv that reads the host input `name`, when it is its only reader."""
    user = _single_user(c, name) if name not in c.qgraph.outputs else None
    return user if user is not None and user.op == "conv" else None


def _unfolded_image(c: Compilation, name: str) -> tuple[int, int, int]:
    _, ch, h, w = c.graph.shape(name)
    vpw = _vectors(c)
    return h, w, ceil(ch / vpw) * vpw


FOLD_SRAM_SHARE = 0.75
"""A fold of the host input may take at most this share of a node's SRAM (its words are
reused by the layers after it, behind a barrier, once the first convolution is done)."""


def choose_fold(c: Compilation, conv) -> tuple[str, dict]:
    """The host's layout of the input of `conv` (its only reader; `d1tile.sw.conv.FOLDS`),
    by the cost model `conv_cost` (the cycle model's timing functions): the fold with the
    fewest estimated cycles among those whose input fits `FOLD_SRAM_SHARE` of a node. Returns
    it and every fold's estimate (for the report)."""
    name = conv.inputs[0]
    geom = _conv_geometry(c, conv, _unfolded_image(c, name), _fusable_pool(c, conv))
    costs = {}
    for fold in FOLDS if geom.groups == 1 else ("none",):
        g = folded(geom, fold, _vectors(c))
        costs[fold] = conv_cost(c.cfg, g, c.dtype, c.graph.batch)
    fits = [f for f, e in costs.items() if e.sram <= FOLD_SRAM_SHARE * c.cfg.sram_words]
    best = min(fits or ["none"], key=lambda f: (costs[f].cycles, FOLDS.index(f)))
    return best, {f: e._asdict() if hasattr(e, "_asdict") else vars(e) for f, e in costs.items()}


def _place_input(c: Compilation) -> None:
    """The host input's stored order and staging regions: an NCHW input read by a conv or a
    pool is an image with its channels padded to whole operand words; when a conv is its only
    reader, the host folds its taps as the cost model chooses (`choose_fold`) and places it
    in the spans that conv reads (no messages: each node gets its input rows from the host,
    halos included); anything else is stored channels-last."""
    name = c.input_name
    shape = c.graph.shape(name)
    users = _users(c, name)
    if len(shape) == 4 and any(q.op in ("conv", "maxpool", "avgpool") for q in users):
        vpw = _vectors(c)
        image = _unfolded_image(c, name)
        conv = _first_conv(c, name)
        spans = None
        c.orders[name] = image_order(shape[1], *image)
        if conv is not None:
            fold, c.fold_costs = choose_fold(c, conv)
            plain = _conv_geometry(c, conv, image, _fusable_pool(c, conv))
            geom = folded(plain, fold, vpw)
            if fold != "none":
                c.folds[name] = fold
                c.orders[name] = fold_order(plain, fold, vpw)
            image = (geom.in_h, geom.in_w, geom.cp)
            spans = geom.spans(c.cfg.rows, geom.cp // vpw)
        if conv is None or fold == "none":
            c.images[name] = image
        if conv is not None and c.band_split:      # placed band by band (`_band_conv`)
            c.band_input = dict(name=name, batch=shape[0], features=len(c.orders[name]),
                                conv=conv.name)
            return
        c.layouts[name] = c.builder.input(name, batch=shape[0], features=len(c.orders[name]),
                                          dtype=c.dtype, form="spans" if spans else "auto",
                                          spans=spans)
        return
    order = c.orders[name] = channels_last(shape[1:])
    c.layouts[name] = c.builder.input(name, batch=shape[0], features=len(order), dtype=c.dtype)


def _last_uses(c: Compilation) -> dict:
    """op index -> the tensors whose last reader it is (a flatten or reshape reads its
    input for as long as its output is read: they share the stored words)."""
    source = {}
    for op in c.qgraph.ops:
        if op.op in ("flatten", "reshape"):
            source[op.output] = source.get(op.inputs[0], op.inputs[0])
    last = {}
    for k, op in enumerate(c.qgraph.ops):
        for t in op.inputs:
            last[source.get(t, t)] = k
    out = {}
    for t, k in last.items():
        out.setdefault(k, []).append(t)
    return out


_LOWERED = ("layouts", "orders", "images", "image_origin", "folds", "bf16_layers", "fold_costs",
            "layers", "band_input")
"""The fields of a `Compilation` that `lower` fills (reset before its second attempt)."""


def lower(c: Compilation) -> None:
    """Every op through `LOWER`; after the last reader of a tensor, its regions die
    (`KernelBuilder.release`), so that later layers may reuse their words. SRAM placement is
    first the faster one (each layer's regions in its own order, in the banks it prefers);
    if something does not fit, the whole graph once more with the compact one (`NodeSram`:
    the largest regions first, the host's at the top), whose error is the one reported."""
    saved = {name: copy.copy(getattr(c, name)) for name in _LOWERED}

    def reset():
        for name, value in saved.items():
            setattr(c, name, copy.copy(value))
        c.macs = 0

    try:
        _lower(c, compact=False)
        return
    except CompileError:
        reset()
    try:
        _lower(c, compact=True)
    except CapacityError as whole:
        if not _band_splittable(c):
            raise
        reset()
        c.band_split = True
        try:
            _lower(c, compact=False)
        except CapacityError as exc:
            c.band_split = False
            raise CapacityError(f"{whole} (nor with its first convolution split over time: "
                                f"{exc})") from None


def _lower(c: Compilation, compact: bool) -> None:
    c.builder = KernelBuilder(c.cfg, compact=compact)
    _place_input(c)
    done = set()
    last = _last_uses(c)
    keep = set(c.qgraph.outputs)
    for k, op in enumerate(c.qgraph.ops):
        if op.name not in done:
            make = LOWER.get(op.op)
            if make is None:
                raise CompileError(f"node '{op.name}' ({op.op}): no lowering onto the tile "
                                   f"(lowered: {', '.join(sorted(LOWER))})")
            done.update(make(c, op))
        for t in last.get(k, ()):
            if t not in keep and t in c.layouts and c.builder.layers:
                c.builder.release(c.layouts[t])


def to_stored(order: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[batch, ONNX features] -> [batch, stored features] (zeros for padding)."""
    out = x[:, np.maximum(order, 0)]
    out[:, order < 0] = 0
    return out


def from_stored(order: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """[batch, stored features] -> [batch, ONNX features] (padding dropped)."""
    real = order >= 0
    out = np.empty((stored.shape[0], int(real.sum())), dtype=stored.dtype)
    out[:, order[real]] = stored[:, real]
    return out


def finish(c: Compilation) -> None:
    for name in c.qgraph.outputs:
        c.builder.read(c.layouts[name])
    c.tile_program = c.builder.finish()


PASSES = (front_end, prepare, lower, finish)

DTYPES = {"int8": ElemType.INT8, "bf16": ElemType.BF16}
"""`compile_model`'s dtype: int8 (calibrated, quantised) or bf16 (BF16 operands and
activations, FP32 accumulation)."""


def compile_model(source, cfg: TileConfig, calibration=None, *, dtype: str = "int8") -> Compilation:
    """Run the passes. `calibration`: input arrays (one batch, or a dict name -> array), for
    int8; bf16 needs none.

    **Split over time.** When the network at its batch does not fit the tile (a
    `CapacityError`: a layer's regions do not fit a node's SRAM, or its program the
    instruction memory, also with dead regions reused), it is compiled for a smaller batch,
    halved until it fits, and `execute` runs the batch in several runs of that program, each
    fed its part of the input from the host edge (`Compilation.run_batch`, `Runs`). What does
    not fit even one sample at a time (the weights of one layer, say) is refused with the
    error of the whole batch."""
    if dtype not in DTYPES:
        raise CompileError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not isinstance(calibration, dict):
        calibration = {} if calibration is None else {"__single__": np.asarray(calibration)}
    c = Compilation(cfg, source, calibration, dtype=DTYPES[dtype])
    front_end(c)
    if "__single__" in c.calibration:
        c.calibration = {c.graph.inputs[0]: c.calibration.pop("__single__")}
    prepare(c)
    c.batch = c.graph.batch
    whole = last = None
    for batch in [c.batch, *_smaller_batches(c.batch)]:
        part = c
        if batch != c.batch:
            part = Compilation(cfg, source, c.calibration, graph=c.graph.with_batch(batch),
                               dtype=c.dtype, batch=c.batch)
            prepare(part)
        try:
            lower(part)
            finish(part)
            return part
        except CapacityError as exc:
            whole, last = whole or exc, exc
    if c.batch == 1:
        raise whole
    detail = "" if str(last) == str(whole) else f": {last}"
    raise CapacityError(f"{whole} (also with the batch of {c.batch} split into runs of one "
                        f"sample{detail})") from None


def _smaller_batches(batch: int) -> list[int]:
    """The batches a run may take when `batch` does not fit: halved (rounded up) down to 1."""
    out, b = [], batch
    while b > 1:
        b = -(-b // 2)
        out.append(b)
    return out


@dataclass(frozen=True)
class References:
    """What a run is checked against, for one input: the exact reference's tile outputs
    (int8: `run_int8`; bf16: `bf16_reference`, as float32 values of the BF16 bits) and the
    float graph's values of the same tensors (`run_float`)."""
    exact: dict
    floats: dict


def references(c: Compilation, x) -> References:
    name = c.input_name
    x = np.asarray(x, dtype=np.float32)
    floats = run_float(c.graph, {name: x}, keep=True)
    floats = {k: floats[k] for k in c.qgraph.outputs}
    if c.dtype == ElemType.BF16:
        from d1tile.sw.bf16 import bf16_reference, bits_to_float
        # the per-layer references take the compiled batch: run_batch samples at a time, as
        # the tile runs them (each sample on its own, so the padding changes nothing)
        parts = [bf16_reference(c, chunk) for chunk in _run_chunks(x, c.run_batch)]
        exact = {k: bits_to_float(np.concatenate([p[k] for p in parts])[:len(x)])
                 for k in parts[0]}
        return References(exact, floats)
    return References(run_int8(c.qgraph, {name: x}), floats)


@dataclass
class Execution:
    outputs: dict        # tile output name -> int8 values, or bf16 values (float32) read back
    reference: dict      # the same from the exact reference (run_int8 / bf16_reference)
    float_values: dict   # the float graph's values of the same tensors
    result: object       # the device's RunResult

    @property
    def bit_exact(self) -> bool:
        """Every output equals the reference's bit for bit (NaNs included)."""
        return all(np.array_equal(np.asarray(self.outputs[k]).view(np.uint8),
                                  np.asarray(self.reference[k]).view(np.uint8))
                   for k in self.outputs)

    @property
    def max_abs_diff(self) -> float:
        """0 when bit-exact; else the largest |tile - reference| (int8 steps, or bf16 values;
        infinity where one side is NaN and the other not)."""
        if self.bit_exact:
            return 0
        worst = 0.0
        for k in self.outputs:
            a = np.asarray(self.outputs[k], np.float64)
            b = np.asarray(self.reference[k], np.float64)
            with np.errstate(invalid="ignore"):
                d = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
            worst = max(worst, float(np.max(np.nan_to_num(d, nan=np.inf))))
        return worst


def execute(c: Compilation, device, x, refs: References | None = None) -> Execution:
    """Quantise the float input `x` (int8; bf16: rounded to BF16 when loaded), run the
    compiled program on `device`, read the outputs back; also run the exact and float
    references on the same input (or take them from `refs`, `references(c, x)`, when
    several devices run it). A batch other than `c.run_batch` runs in `c.runs(len(x))` runs
    of the program from a fresh tile, each fed `run_batch` samples (the last padded with
    repeats of its own, whose outputs are dropped); `Execution.result` is then `Runs`."""
    name = c.input_name
    x = np.asarray(x, dtype=np.float32)
    results, parts = [], []
    for chunk in _run_chunks(x, c.run_batch):
        xin = quantize_tensor(chunk, c.qgraph.scales[name]) if c.dtype == ElemType.INT8 else chunk
        device.load(_with_input(c, xin))
        result = device.run()
        if result.hang or result.faults:
            raise RuntimeError(f"the run did not finish: {result.hang or result.faults}")
        results.append(result)
        parts.append({k: from_stored(c.orders[k], _unpack(c.layouts[k], result))
                      .reshape(c.qgraph.shape(k)) for k in c.qgraph.outputs})
    outputs = {k: np.concatenate([p[k] for p in parts])[:len(x)] for k in c.qgraph.outputs}
    if c.dtype == ElemType.BF16:
        from d1tile.sw.bf16 import bits_to_float
        outputs = {k: bits_to_float(v) for k, v in outputs.items()}
    refs = refs if refs is not None else references(c, x)
    return Execution(outputs, refs.exact, refs.floats,
                     results[0] if len(results) == 1 else Runs(results))


def _run_chunks(x: np.ndarray, batch: int) -> list[np.ndarray]:
    """`x` in runs of `batch` samples, the last padded with repeats of its own samples."""
    chunks = []
    for start in range(0, max(len(x), 1), batch):
        chunk = x[start:start + batch]
        if len(chunk) != batch:
            chunk = np.take(chunk, np.arange(batch) % len(chunk), axis=0)
        chunks.append(chunk)
    return chunks


def run_results(result) -> list:
    """The RunResult of every run behind an `Execution.result` (one, or a `Runs`' all)."""
    return result.results if isinstance(result, Runs) else [result]


@dataclass
class Runs:
    """The results of a batch executed in several runs of one compiled program, read as one
    result: the cycles and every node's counters summed over the runs; `comparable()` is
    every run's, in order (what two backends must agree on)."""
    results: list

    @property
    def cycles(self) -> int:
        return sum(r.cycles for r in self.results)

    @property
    def total_cycles(self) -> int:
        return sum(r.total_cycles for r in self.results)

    @property
    def hang(self):
        return next((r.hang for r in self.results if r.hang), None)

    @property
    def faults(self) -> dict:
        return {node: f for r in self.results for node, f in r.faults.items()}

    @property
    def nodes(self) -> dict:
        from d1tile.sim.host import NodeReport
        out = {}
        for node in self.results[0].nodes:
            counters = {}
            for r in self.results:
                for k, v in r.nodes[node].counters.items():
                    counters[k] = counters.get(k, 0) + v
            out[node] = NodeReport(self.results[-1].nodes[node].done_cycle, counters=counters)
        return out

    def comparable(self) -> dict:
        return {"runs": [r.comparable() for r in self.results]}


def _unpack(layout, result) -> np.ndarray:
    """An output's values read back: [batch, features], a split layer's parts side by side."""
    if isinstance(layout, (list, tuple)):
        return np.concatenate([unpack_activation(part, result) for part in layout], axis=1)
    return unpack_activation(layout, result)


def _with_input(c: Compilation, xin) -> object:
    """The compiled program with this input's words loaded (the program itself is reused):
    int8 values, or floats for bf16."""
    from copy import deepcopy
    tp = deepcopy(c.tile_program)
    stored = to_stored(c.orders[c.input_name], xin.reshape(len(xin), -1))
    layouts = c.layouts[c.input_name]
    for layout in layouts if isinstance(layouts, list) else [layouts]:   # bands: in order
        load_activation(tp, layout, stored)
    return tp
