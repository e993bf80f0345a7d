"""The reference networks the compiler must run: LeNet-5, a small residual network and a
depthwise-separable (MobileNet-style) network, trained here in NumPy and exported to ONNX.

    from d1tile.sw.networks import NETWORKS
    net = NETWORKS["lenet5"](batch=32)   # ToyModel(model, calib_x, test_x, test_y, float_accuracy)
    compiled = compile_model(net.model, cfg, net.calib_x)

Data: the toy models' (`d1tile.sw.toy_models.digits_split`): sklearn's 8x8 digits, pixels in
[0, 1], 1437 training and 360 test images; calibration: the same 512 training images
(`_calibration`).

| name | input | layers |
| --- | --- | --- |
| `lenet5` | [B, 1, 28, 28] | Conv 5x5 6 -> Relu -> MaxPool 2 -> Conv 5x5 16 -> Relu -> MaxPool 2 -> Flatten 256 -> Gemm 120 -> Relu -> Gemm 84 -> Relu -> Gemm 10 -> Softmax |
| `resnet` | [B, 1, 8, 8] | Conv 3x3 pad 1, 8 -> Relu -> 2 x [Conv 3x3 -> Relu -> Conv 3x3 -> Add(block input) -> Relu] -> GlobalAveragePool -> Flatten 8 -> Gemm 10 -> Softmax |
| `dwsep` | [B, 1, 8, 8] | Conv 3x3 pad 1, 16 -> Relu -> DW 3x3 -> Relu -> PW 1x1 16 -> Relu -> DW 3x3 stride 2 -> Relu -> PW 1x1 32 -> Relu -> GlobalAveragePool -> Flatten 32 -> Gemm 10 -> Softmax |

LeNet-5 reads 28x28 images: the 8x8 digits upsampled **bilinearly** (`upsample`: half-pixel
centres, edges clamped, the convention of ONNX Resize `linear` / `half_pixel`), so that its
layer shapes are the classic ones (24x24x6, 12x12x6, 8x8x16, 4x4x16 = 256). The DW convolutions
are ONNX Convs with `group` = channels; every Conv and Gemm has a bias; all 3x3 convolutions
pad 1. Every network ends in Gemm "logits" -> Softmax "probs" (the softmax runs on the host).

Each network is one `Network`: a list of `Layer`s in topological order over named tensors. The
same list drives the NumPy forward pass (`forward`), its backward pass (training: softmax
cross-entropy, Adam, He-normal initialisation from a fixed seed, zero biases, minibatches in a
seeded order, float32) and the ONNX export (opset 13, static batch), so the exported model and
the NumPy model cannot describe different networks; `tests/test_networks.py` checks the export
against onnxruntime.

Trained weights are cached in the process (`functools.cache`) and on disk, as
`<D1TILE_MODEL_DIR or build/models>/<name>-<key>.npz`, where the key hashes this module's
source, `digits_split`'s, the training settings (seed included) and the NumPy and scikit-learn
versions: any change to how a network is trained gives a new file, so a stale one is never
read. A cache directory that cannot be written is skipped (the weights are then trained once
per process). Training takes 2 to 4 s per network on the project's 2-core machine.

Run as a script to write `<name>.onnx` with test images, labels and calibration inputs as .npy
files, and print each network's parameters and float test accuracy:
    python -m d1tile.sw.networks --out build/models --batch 64
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper

from d1tile.sw.toy_models import ToyModel, _calibration, _model, digits_split


__all__ = ["Layer", "Network", "Training", "LAYERS", "NETWORKS", "SPECS", "lenet5_model",
           "resnet_model", "dwsep_model", "upsample", "forward", "float_logits", "softmax", "export",
           "trained_params", "cache_path"]


class Layer(NamedTuple):
    """One op of a network. `kind` is a key of `LAYERS`; `inputs` and `output` name tensors
    ("x" is the network's input); the parameters are `<name>.W` and `<name>.b` (conv and gemm
    only). attrs: conv `kernel` (kh, kw), `out` channels, `strides`, `pads` (one value, all
    sides), `group`; maxpool `kernel` (= strides); gemm `out` features."""
    kind: str
    name: str
    inputs: tuple
    output: str
    attrs: dict = {}


@dataclass(frozen=True)
class Training:
    """How a network is trained: Adam (beta 0.9, 0.999) from `lr`, decayed to 0 along a cosine
    over the run, minibatches of `batch_size` drawn in a random order each epoch; `seed`
    drives the initialisation and the order."""
    epochs: int
    lr: float
    batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class Network:
    """A network: its name, input shape (C, H, W) without the batch, its layers in topological
    order (the last one's output is the logits), and how it is trained. `data` maps the
    digits [n, 64] to its input [n, C, H, W]."""
    name: str
    input_shape: tuple
    layers: tuple
    training: Training
    data: Callable = field(compare=False)

    @property
    def logits(self) -> str:
        return self.layers[-1].output


# --- Layers: forward, backward, shape, ONNX ---------------------------------------------------
#
# forward(inputs, params, attrs) -> (output, cache); backward(dy, cache, params, attrs,
# need_dx) -> (input gradients (None where need_dx is false), {parameter suffix: gradient}).

def _conv_out(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def _conv_forward(inputs, params, attrs):
    (x,), (w, b) = inputs, params
    n, c, h, wd = x.shape
    (kh, kw), s, p, g = attrs["kernel"], attrs["strides"], attrs["pads"], attrs["group"]
    oh, ow = _conv_out(h, kh, s, p), _conv_out(wd, kw, s, p)
    o, cg = w.shape[0], c // g
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::s, ::s][:, :, :oh, :ow]
    # im2col per group: [g, n*oh*ow, cg*kh*kw], one batched matrix product for all groups
    cols = (win.reshape(n, g, cg, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
            .reshape(g, n * oh * ow, cg * kh * kw))
    wmat = w.reshape(g, o // g, cg * kh * kw)
    y = cols @ wmat.transpose(0, 2, 1)                                  # g, n*oh*ow, o/g
    y = y.reshape(g, n, oh, ow, o // g).transpose(1, 0, 4, 2, 3).reshape(n, o, oh, ow)
    return y + b[:, None, None], (cols, x.shape, oh, ow)


def _conv_backward(dy, cache, params, attrs, need_dx):
    cols, (n, c, h, wd), oh, ow = cache
    w, _ = params
    (kh, kw), s, p, g = attrs["kernel"], attrs["strides"], attrs["pads"], attrs["group"]
    o, cg = w.shape[0], c // g
    # contiguous: NumPy's matmul falls back from BLAS to a slow loop on strided operands
    dyg = np.ascontiguousarray(
        dy.reshape(n, g, o // g, oh, ow).transpose(1, 0, 3, 4, 2)).reshape(g, -1, o // g)
    grads = {"W": (dyg.transpose(0, 2, 1) @ cols).reshape(w.shape), "b": dy.sum((0, 2, 3))}
    if not need_dx[0]:
        return [None], grads
    dcols = (dyg @ w.reshape(g, o // g, -1)).reshape(g, n, oh, ow, cg, kh, kw)
    dcols = dcols.transpose(1, 0, 4, 2, 3, 5, 6).reshape(n, c, oh, ow, kh, kw)
    dxp = np.zeros((n, c, h + 2 * p, wd + 2 * p), dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s] += dcols[..., i, j]
    return [dxp[:, :, p:p + h, p:p + wd]], grads


def _conv_shape(shapes, attrs):
    (c, h, w), (kh, kw), s, p = shapes[0], attrs["kernel"], attrs["strides"], attrs["pads"]
    return (attrs["out"], _conv_out(h, kh, s, p), _conv_out(w, kw, s, p))


def _conv_params(shapes, attrs):
    c = shapes[0][0]
    return {"W": (attrs["out"], c // attrs["group"], *attrs["kernel"]), "b": (attrs["out"],)}


def _conv_onnx(layer):
    a = layer.attrs
    return helper.make_node("Conv", [*layer.inputs, f"{layer.name}.W", f"{layer.name}.b"],
                            [layer.output], name=layer.name, kernel_shape=list(a["kernel"]),
                            strides=[a["strides"]] * 2, pads=[a["pads"]] * 4, group=a["group"])


def _relu_forward(inputs, params, attrs):
    y = np.maximum(inputs[0], 0)
    return y, inputs[0] > 0


def _relu_backward(dy, mask, params, attrs, need_dx):
    return [dy * mask], {}


def _maxpool_forward(inputs, params, attrs):
    x, k = inputs[0], attrs["kernel"]
    n, c, h, w = x.shape
    blocks = x[:, :, :h - h % k, :w - w % k].reshape(n, c, h // k, k, w // k, k)
    y = blocks.max(axis=(3, 5))
    # a tie shares the gradient, so the backward pass is the max's exact subgradient mean
    mask = blocks == y[:, :, :, None, :, None]
    return y, (mask / mask.sum(axis=(3, 5), keepdims=True), x.shape)


def _maxpool_backward(dy, cache, params, attrs, need_dx):
    share, (n, c, h, w) = cache
    k = attrs["kernel"]
    dx = np.zeros((n, c, h, w), dy.dtype)
    dx[:, :, :h - h % k, :w - w % k] = (share * dy[:, :, :, None, :, None]).reshape(
        n, c, h - h % k, w - w % k)
    return [dx], {}


def _gap_forward(inputs, params, attrs):
    x = inputs[0]
    return x.mean(axis=(2, 3), keepdims=True), x.shape


def _gap_backward(dy, shape, params, attrs, need_dx):
    return [np.broadcast_to(dy / (shape[2] * shape[3]), shape)], {}


def _add_forward(inputs, params, attrs):
    return inputs[0] + inputs[1], None


def _add_backward(dy, cache, params, attrs, need_dx):
    return [dy, dy], {}


def _flatten_forward(inputs, params, attrs):
    x = inputs[0]
    return x.reshape(len(x), -1), x.shape


def _flatten_backward(dy, shape, params, attrs, need_dx):
    return [dy.reshape(shape)], {}


def _gemm_forward(inputs, params, attrs):
    (x,), (w, b) = inputs, params
    return x @ w.T + b, x


def _gemm_backward(dy, x, params, attrs, need_dx):
    w, _ = params
    return [dy @ w if need_dx[0] else None], {"W": dy.T @ x, "b": dy.sum(0)}


class LayerKind(NamedTuple):
    """What the forward pass, training and the export need of one kind of layer: the NumPy
    forward and backward, the output shape (C, H, W) or (F,) without the batch, the parameter
    shapes, and the ONNX node."""
    forward: Callable
    backward: Callable
    shape: Callable
    onnx: Callable
    params: Callable | None = None


def _same_shape(shapes, attrs):
    return shapes[0]


def _onnx_node(op_type, **fixed):
    return lambda layer: helper.make_node(op_type, list(layer.inputs), [layer.output],
                                          name=layer.name, **fixed)


LAYERS = {
    "conv": LayerKind(_conv_forward, _conv_backward, _conv_shape, _conv_onnx, _conv_params),
    "relu": LayerKind(_relu_forward, _relu_backward, _same_shape, _onnx_node("Relu")),
    "maxpool": LayerKind(
        _maxpool_forward, _maxpool_backward,
        lambda s, a: (s[0][0], s[0][1] // a["kernel"], s[0][2] // a["kernel"]),
        lambda layer: helper.make_node(
            "MaxPool", list(layer.inputs), [layer.output], name=layer.name,
            kernel_shape=[layer.attrs["kernel"]] * 2, strides=[layer.attrs["kernel"]] * 2)),
    "gap": LayerKind(_gap_forward, _gap_backward, lambda s, a: (s[0][0], 1, 1),
                     _onnx_node("GlobalAveragePool")),
    "add": LayerKind(_add_forward, _add_backward, _same_shape, _onnx_node("Add")),
    "flatten": LayerKind(_flatten_forward, _flatten_backward,
                         lambda s, a: (int(np.prod(s[0])),), _onnx_node("Flatten", axis=1)),
    "gemm": LayerKind(
        _gemm_forward, _gemm_backward, lambda s, a: (a["out"],),
        lambda layer: helper.make_node(
            "Gemm", [*layer.inputs, f"{layer.name}.W", f"{layer.name}.b"], [layer.output],
            name=layer.name, transB=1),
        lambda s, a: {"W": (a["out"], s[0][0]), "b": (a["out"],)}),
}


def _shapes(net: Network) -> dict:
    """Every tensor's shape without the batch."""
    shapes = {"x": tuple(net.input_shape)}
    for layer in net.layers:
        shapes[layer.output] = LAYERS[layer.kind].shape(
            [shapes[t] for t in layer.inputs], layer.attrs)
    return shapes


def _param_shapes(net: Network) -> dict:
    shapes, out = _shapes(net), {}
    for layer in net.layers:
        make = LAYERS[layer.kind].params
        if make is not None:
            for suffix, shape in make([shapes[t] for t in layer.inputs], layer.attrs).items():
                out[f"{layer.name}.{suffix}"] = shape
    return out


def _layer_params(layer, params) -> tuple:
    """(W, b) of a conv or gemm, () for the others."""
    if LAYERS[layer.kind].params is None:
        return ()
    return params[f"{layer.name}.W"], params[f"{layer.name}.b"]


def forward(net: Network, params: dict, x: np.ndarray, *, keep: bool = False):
    """The network's logits for input `x` [n, C, H, W] (float32 throughout). With `keep`, also
    every layer's cache for `_backward`."""
    values, caches = {"x": x}, {}
    for layer in net.layers:
        y, cache_ = LAYERS[layer.kind].forward([values[t] for t in layer.inputs],
                                               _layer_params(layer, params), layer.attrs)
        values[layer.output] = y
        if keep:
            caches[layer.name] = cache_
    logits = values[net.logits]
    return (logits, caches) if keep else logits


def _backward(net: Network, params: dict, caches: dict, dlogits: np.ndarray) -> dict:
    """{parameter name: gradient} from the logits' gradient; a tensor read by several layers
    (a residual block's input) sums the gradients that flow back from each."""
    grads, out = {net.logits: dlogits}, {}
    for layer in reversed(net.layers):
        dy = grads.pop(layer.output)
        need = [t != "x" for t in layer.inputs]
        dxs, dparams = LAYERS[layer.kind].backward(dy, caches[layer.name],
                                                   _layer_params(layer, params), layer.attrs,
                                                   need)
        for suffix, g in dparams.items():
            out[f"{layer.name}.{suffix}"] = g
        for t, dx in zip(layer.inputs, dxs):
            if dx is not None and t != "x":
                grads[t] = grads[t] + dx if t in grads else dx
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _train(net: Network) -> dict:
    """Parameters {name: float32 array} after `net.training` (module docstring)."""
    t = net.training
    train_x, train_y, _, _ = digits_split()
    x = net.data(train_x)
    rng = np.random.default_rng(t.seed)
    params = {}
    for name, shape in _param_shapes(net).items():
        if name.endswith(".b"):
            params[name] = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            params[name] = rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    beta1, beta2, step = 0.9, 0.999, 0
    onehot = np.eye(10, dtype=np.float32)[train_y]
    total = t.epochs * -(-len(x) // t.batch_size)
    for _ in range(t.epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), t.batch_size):
            idx = order[start:start + t.batch_size]
            logits, caches = forward(net, params, x[idx], keep=True)
            dlogits = (softmax(logits) - onehot[idx]) / np.float32(len(idx))
            # cosine decay to 0: the last steps are small, so the weights kept are not a
            # snapshot of an oscillation
            lr = t.lr * 0.5 * (1 + np.cos(np.pi * step / total))
            step += 1
            lr *= np.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
            for k, g in _backward(net, params, caches, dlogits).items():
                m[k] = beta1 * m[k] + (1 - beta1) * g
                v[k] = beta2 * v[k] + (1 - beta2) * g * g
                params[k] = (params[k] - lr * m[k] / (np.sqrt(v[k]) + 1e-7)).astype(np.float32)
    return params


# --- The networks ------------------------------------------------------------------------------

LENET_SIZE = 28


def upsample(x: np.ndarray, size: int = LENET_SIZE) -> np.ndarray:
    """Bilinear upsampling of square images [..., h, h] to [..., size, size]: output pixel i
    samples the input at (i + 0.5) h / size - 0.5 (half-pixel centres), clamped to the edge
    pixels. Float32; a separable linear map, so values stay in the input's range."""
    h = x.shape[-1]
    src = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, h - 1)
    frac = (src - lo).astype(np.float32)
    a = np.zeros((size, h), np.float32)
    np.add.at(a, (np.arange(size), lo), 1 - frac)
    np.add.at(a, (np.arange(size), hi), frac)
    return (a @ x.astype(np.float32) @ a.T).astype(np.float32)


def _images(x):
    return x.reshape(-1, 1, 8, 8).astype(np.float32)


def _upsampled(x):
    return upsample(_images(x))


def _conv(name, src, out, kernel=3, strides=1, pads=1, group=1, dst=None):
    return Layer("conv", name, (src,), dst or name, {"kernel": (kernel, kernel), "out": out,
                                                     "strides": strides, "pads": pads,
                                                     "group": group})


def _relu(name, src):
    return Layer("relu", name, (src,), name)


def _head(src):
    """GlobalAveragePool -> Flatten -> Gemm 10 ("logits")."""
    return [Layer("gap", "gap", (src,), "gap"), Layer("flatten", "flatten", ("gap",), "flat"),
            Layer("gemm", "fc", ("flat",), "logits", {"out": 10})]


def _lenet5() -> Network:
    layers = [
        _conv("conv1", "x", 6, kernel=5, pads=0), _relu("relu1", "conv1"),
        Layer("maxpool", "pool1", ("relu1",), "pool1", {"kernel": 2}),
        _conv("conv2", "pool1", 16, kernel=5, pads=0), _relu("relu2", "conv2"),
        Layer("maxpool", "pool2", ("relu2",), "pool2", {"kernel": 2}),
        Layer("flatten", "flatten", ("pool2",), "flat"),
        Layer("gemm", "fc1", ("flat",), "fc1", {"out": 120}), _relu("relu3", "fc1"),
        Layer("gemm", "fc2", ("relu3",), "fc2", {"out": 84}), _relu("relu4", "fc2"),
        Layer("gemm", "fc3", ("relu4",), "logits", {"out": 10}),
    ]
    return Network("lenet5", (1, LENET_SIZE, LENET_SIZE), tuple(layers),
                   Training(epochs=6, lr=2e-3), _upsampled)


RESNET_CHANNELS = 8


def _resnet() -> Network:
    c = RESNET_CHANNELS
    layers = [_conv("stem", "x", c), _relu("stem.relu", "stem")]
    src = "stem.relu"
    for i in (1, 2):
        b = f"block{i}"
        layers += [_conv(f"{b}.conv1", src, c), _relu(f"{b}.relu1", f"{b}.conv1"),
                   _conv(f"{b}.conv2", f"{b}.relu1", c),
                   Layer("add", f"{b}.add", (f"{b}.conv2", src), f"{b}.add"),
                   _relu(f"{b}.relu2", f"{b}.add")]
        src = f"{b}.relu2"
    return Network("resnet", (1, 8, 8), tuple(layers + _head(src)),
                   Training(epochs=25, lr=5e-3), _images)


DWSEP_CHANNELS = (16, 32)


def _dwsep() -> Network:
    c1, c2 = DWSEP_CHANNELS
    layers = [
        _conv("stem", "x", c1), _relu("stem.relu", "stem"),
        _conv("dw1", "stem.relu", c1, group=c1), _relu("dw1.relu", "dw1"),
        _conv("pw1", "dw1.relu", c1, kernel=1, pads=0), _relu("pw1.relu", "pw1"),
        _conv("dw2", "pw1.relu", c1, strides=2, group=c1), _relu("dw2.relu", "dw2"),
        _conv("pw2", "dw2.relu", c2, kernel=1, pads=0), _relu("pw2.relu", "pw2"),
    ]
    return Network("dwsep", (1, 8, 8), tuple(layers + _head("pw2.relu")),
                   Training(epochs=15, lr=1e-2), _images)


SPECS = {"lenet5": _lenet5(), "resnet": _resnet(), "dwsep": _dwsep()}


# --- Cache, export, registry -------------------------------------------------------------------

def _cache_key(net: Network) -> str:
    import sklearn
    parts = [Path(__file__).read_text(), inspect.getsource(digits_split), net.name,
             repr(net.training), np.__version__, sklearn.__version__]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def cache_path(name: str) -> Path:
    """Where network `name`'s trained weights are cached on disk (module docstring)."""
    root = Path(os.environ.get("D1TILE_MODEL_DIR", "build/models")).absolute()
    return root / f"{name}-{_cache_key(SPECS[name])}.npz"


@cache
def trained_params(name: str) -> dict:
    """Network `name`'s trained parameters {"<layer>.W" / "<layer>.b": float32 array}, from the
    disk cache when it holds this training's weights, else trained and written there."""
    net, path = SPECS[name], cache_path(name)
    shapes = _param_shapes(net)
    try:
        with np.load(path) as stored:
            params = {k: stored[k] for k in shapes}
        if all(params[k].shape == s and params[k].dtype == np.float32
               for k, s in shapes.items()):
            return params
    except (OSError, KeyError, ValueError):
        pass
    params = _train(net)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # written under a temporary name and renamed: a concurrent reader never sees half a file
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **params)
        os.replace(tmp, path)
    except OSError:
        pass
    return params


def float_logits(name: str, x: np.ndarray) -> np.ndarray:
    """Network `name`'s float32 logits for its input `x` [n, C, H, W] (NumPy forward pass)."""
    return forward(SPECS[name], trained_params(name), np.asarray(x, np.float32))


def export(net: Network, params: dict, batch: int) -> onnx.ModelProto:
    """The ONNX model (opset 13): input "x" [batch, C, H, W], output "probs" [batch, 10] =
    Softmax of the last layer's "logits"."""
    nodes = [LAYERS[layer.kind].onnx(layer) for layer in net.layers]
    nodes.append(helper.make_node("Softmax", [net.logits], ["probs"], name="softmax", axis=1))
    return _model(nodes,
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                 [batch, *net.input_shape])],
                  [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 10])],
                  params, net.name)


def _network_model(name: str, batch: int) -> ToyModel:
    net, params = SPECS[name], trained_params(name)
    train_x, _, test_x, test_y = digits_split()
    test_in = net.data(test_x)
    accuracy = float(np.mean(forward(net, params, test_in).argmax(1) == test_y))
    return ToyModel(export(net, params, batch), net.data(_calibration(train_x)), test_in,
                    test_y, accuracy)


def lenet5_model(batch: int = 8) -> ToyModel:
    """LeNet-5 on the digits upsampled to 28x28: input "x" [batch, 1, 28, 28], output "probs"."""
    return _network_model("lenet5", batch)


def resnet_model(batch: int = 8) -> ToyModel:
    """The two-block residual network: input "x" [batch, 1, 8, 8], output "probs"."""
    return _network_model("resnet", batch)


def dwsep_model(batch: int = 8) -> ToyModel:
    """The depthwise-separable network: input "x" [batch, 1, 8, 8], output "probs"."""
    return _network_model("dwsep", batch)


NETWORKS = {"lenet5": lenet5_model, "resnet": resnet_model, "dwsep": dwsep_model}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/models"),
                        help="directory for the .onnx files (default: build/models)")
    parser.add_argument("--batch", type=int, default=8, help="static batch of the models")
    parser.add_argument("--networks", default=",".join(NETWORKS))
    args = parser.parse_args(argv)
    n_test = len(digits_split()[2])
    if not 1 <= args.batch <= n_test:
        parser.error(f"--batch {args.batch}: give 1..{n_test}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.networks.split(","):
        if name not in NETWORKS:
            parser.error(f"unknown network {name!r} (known: {', '.join(NETWORKS)})")
        net = NETWORKS[name](args.batch)
        path = args.out / f"{name}.onnx"
        onnx.save(net.model, path)
        np.save(args.out / f"{name}_x.npy", net.test_x[:args.batch])
        np.save(args.out / f"{name}_labels.npy", net.test_y[:args.batch])
        np.save(args.out / f"{name}_calib.npy", net.calib_x)
        n_params = sum(p.size for p in trained_params(name).values())
        print(f"{name}: wrote {path} ({n_params:,} parameters), {name}_x.npy, "
              f"{name}_labels.npy, {name}_calib.npy; float test accuracy "
              f"{100 * net.float_accuracy:.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
