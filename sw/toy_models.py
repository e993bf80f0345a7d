"""The compiler's toy models: an MLP and a small CNN for sklearn's 8x8 digits, exported to ONNX.

    from d1tile.sw.toy_models import mlp_model, cnn_model
    toy = cnn_model()            # ToyModel(model, calib_x, test_x, test_y, float_accuracy)
    graph = load_onnx(toy.model)

Data: `sklearn.datasets.load_digits` (1797 images shipped inside scikit-learn, nothing is
downloaded), pixels scaled to [0, 1], a fixed stratified 80/20 split (seed 0): 1437 training and
360 test images. The calibration set is 512 training images (fixed seed).

* MLP: x [B, 64] -> 64 (ReLU) -> 10 -> softmax, trained with scikit-learn's MLPClassifier
  (adam, seed 0). Exported as MatMul + Add (layer 1, so the front end's folding is exercised)
  and Gemm transB=1 (layer 2), then Softmax.
* CNN: x [B, 1, 8, 8] -> Conv 3x3 pad 1, 8 channels -> ReLU -> MaxPool 2x2 -> Flatten (128) ->
  Gemm -> 10 -> softmax, trained here in NumPy (softmax cross-entropy, Adam, seed 0).

Both export with opset 13 and a static batch B (`batch`, default 8: one block of the default
tile's 8 lanes); the references run any batch. Weights are small (MLP 4.8 k, CNN 1.4 k
parameters) so the default 4x4 tile's 64 KiB per node holds them. Training takes a few seconds
and is cached per process.

Run as a script to write `mlp.onnx` and `cnn.onnx` (with a batch of test images, their labels
and the calibration inputs as .npy files) and print float and int8 accuracy:
    python -m d1tile.sw.toy_models --out build/models --batch 64
"""

from __future__ import annotations

import argparse
import warnings
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


__all__ = ["ToyModel", "digits_split", "mlp_model", "cnn_model", "TOY_MODELS", "OPSET"]

OPSET = 13
SEED = 0
CALIB_SAMPLES = 512


class ToyModel(NamedTuple):
    """A trained toy model: the ONNX model, calibration inputs, the test set and the float
    model's test accuracy (computed in NumPy from the exported float32 weights)."""
    model: onnx.ModelProto
    calib_x: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    float_accuracy: float


@cache
def digits_split():
    """(train_x, train_y, test_x, test_y): digits as float32 in [0, 1], [n, 64], fixed split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        x, digits.target, test_size=0.2, random_state=SEED, stratify=digits.target)
    return train_x, train_y, test_x, test_y


def _calibration(train_x: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    return train_x[rng.choice(len(train_x), CALIB_SAMPLES, replace=False)]


def _model(nodes, inputs, outputs, initializers, name) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v, np.float32), k)
                               for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="d1tile-toy-models")
    onnx.checker.check_model(model)
    return model


# --- MLP ---------------------------------------------------------------------------------------

@cache
def _train_mlp():
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    train_x, train_y, _, _ = digits_split()
    clf = MLPClassifier(hidden_layer_sizes=(64,), activation="relu", solver="adam",
                        batch_size=64, learning_rate_init=3e-3, max_iter=150, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(train_x, train_y)
    (w1, w2), (b1, b2) = clf.coefs_, clf.intercepts_
    return tuple(np.asarray(a, np.float32) for a in (w1, b1, w2, b2))


def _mlp_logits(x, w1, b1, w2, b2):
    return np.maximum(x @ w1 + b1, 0) @ w2 + b2


def mlp_model(batch: int = 8) -> ToyModel:
    """The MLP 64 -> 64 (ReLU) -> 10 -> softmax, input "x" [batch, 64], output "probs"."""
    w1, b1, w2, b2 = _train_mlp()
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.W"], ["fc1.mm"], name="fc1"),
        helper.make_node("Add", ["fc1.mm", "fc1.b"], ["fc1.out"], name="fc1.bias"),
        helper.make_node("Relu", ["fc1.out"], ["h1"], name="relu1"),
        helper.make_node("Gemm", ["h1", "fc2.W", "fc2.b"], ["logits"], name="fc2", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64])],
                   [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 10])],
                   {"fc1.W": w1, "fc1.b": b1, "fc2.W": w2.T, "fc2.b": b2}, "mlp")
    train_x, _, test_x, test_y = digits_split()
    accuracy = float(np.mean(_mlp_logits(test_x, w1, b1, w2, b2).argmax(1) == test_y))
    return ToyModel(model, _calibration(train_x), test_x, test_y, accuracy)


# --- CNN ---------------------------------------------------------------------------------------

CNN_CHANNELS = 8


def _im2col3x3(x: np.ndarray) -> np.ndarray:
    """[n, 1, 8, 8] -> [n * 64, 9]: the 3x3 windows (zero padding 1) at every pixel."""
    n = len(x)
    xp = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))   # n, 8, 8, 3, 3
    return win.reshape(n * 64, 9)


def _cnn_forward(x, wc, bc, wf, bf):
    """Logits and what the backward pass needs."""
    n = len(x)
    cols = _im2col3x3(x)
    z = (cols @ wc.reshape(CNN_CHANNELS, 9).T + bc).reshape(n, 8, 8, CNN_CHANNELS)
    z = z.transpose(0, 3, 1, 2)                                   # n, C, 8, 8
    a = np.maximum(z, 0)
    blocks = a.reshape(n, CNN_CHANNELS, 4, 2, 4, 2)
    p = blocks.max(axis=(3, 5))                                   # n, C, 4, 4
    f = p.reshape(n, -1)
    return f @ wf + bf, (cols, z, blocks, p, f)


@cache
def _train_cnn(epochs: int = 30, batch_size: int = 64, lr: float = 1e-2):
    train_x, train_y, _, _ = digits_split()
    x = train_x.reshape(-1, 1, 8, 8).astype(np.float64)
    rng = np.random.default_rng(SEED)
    params = [rng.normal(0, np.sqrt(2 / 9), (CNN_CHANNELS, 1, 3, 3)), np.zeros(CNN_CHANNELS),
              rng.normal(0, np.sqrt(2 / (16 * CNN_CHANNELS)), (16 * CNN_CHANNELS, 10)),
              np.zeros(10)]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    beta1, beta2, step = 0.9, 0.999, 0
    onehot = np.eye(10)[train_y]
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            xb, n = x[idx], len(idx)
            logits, (cols, z, blocks, p, f) = _cnn_forward(xb, *params)
            prob = np.exp(logits - logits.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            dlogits = (prob - onehot[idx]) / n
            d_wf, d_bf = f.T @ dlogits, dlogits.sum(0)
            dp = (dlogits @ params[2].T).reshape(p.shape)
            mask = blocks == p[:, :, :, None, :, None]
            da = (mask * dp[:, :, :, None, :, None]).reshape(z.shape)
            dz = (da * (z > 0)).transpose(0, 2, 3, 1).reshape(n * 64, CNN_CHANNELS)
            d_wc, d_bc = (dz.T @ cols).reshape(params[0].shape), dz.sum(0)
            step += 1
            for i, g in enumerate((d_wc, d_bc, d_wf, d_bf)):
                m, v = moments[i]
                m[:] = beta1 * m + (1 - beta1) * g
                v[:] = beta2 * v + (1 - beta2) * g * g
                m_hat, v_hat = m / (1 - beta1 ** step), v / (1 - beta2 ** step)
                params[i] = params[i] - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
    return tuple(np.asarray(p, np.float32) for p in params)


def cnn_model(batch: int = 8) -> ToyModel:
    """The CNN, input "x" [batch, 1, 8, 8], output "probs" [batch, 10]."""
    wc, bc, wf, bf = _train_cnn()
    nodes = [
        helper.make_node("Conv", ["x", "conv1.W", "conv1.b"], ["c1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Flatten", ["p1"], ["f1"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f1", "fc.W", "fc.b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    model = _model(nodes,
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
                   [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 10])],
                   {"conv1.W": wc, "conv1.b": bc, "fc.W": wf.T, "fc.b": bf}, "cnn")
    train_x, _, test_x, test_y = digits_split()
    test_x4 = test_x.reshape(-1, 1, 8, 8)
    logits, _ = _cnn_forward(test_x4, wc, bc, wf, bf)
    accuracy = float(np.mean(logits.argmax(1) == test_y))
    return ToyModel(model, _calibration(train_x).reshape(-1, 1, 8, 8), test_x4, test_y, accuracy)


TOY_MODELS = {"mlp": mlp_model, "cnn": cnn_model}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/models"),
                        help="directory for the .onnx files (default: build/models)")
    parser.add_argument("--batch", type=int, default=8, help="static batch of the models")
    args = parser.parse_args(argv)
    from d1tile.sw.onnx_frontend import load_onnx
    from d1tile.sw.quant import calibrate, quant_report, quantize
    if not 1 <= args.batch <= len(digits_split()[2]):
        parser.error(f"--batch {args.batch}: give 1..{len(digits_split()[2])}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in TOY_MODELS.items():
        toy = make(args.batch)
        path = args.out / f"{name}.onnx"
        onnx.save(toy.model, path)
        np.save(args.out / f"{name}_x.npy", toy.test_x[:args.batch])
        np.save(args.out / f"{name}_labels.npy", toy.test_y[:args.batch])
        np.save(args.out / f"{name}_calib.npy", toy.calib_x)
        graph = load_onnx(toy.model)
        qgraph = quantize(graph, calibrate(graph, toy.calib_x))
        report = quant_report(graph, qgraph, toy.test_x, toy.test_y)
        print(f"{name}: wrote {path}, the first {args.batch} test images {name}_x.npy (labels "
              f"{name}_labels.npy), calibration inputs {name}_calib.npy; {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
