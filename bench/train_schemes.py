"""FP32 master weights against BF16 weights with stochastic rounding, as the tile trains.

    .venv/bin/python bench/train_schemes.py                  # toy MLP, 3 epochs, 3 seeds
    .venv/bin/python bench/train_schemes.py --epochs 5 --seeds 0,1,2,3 --lr 0.05

Trains the toy MLP (64-64-10, ReLU) on the digits' 1,437 training images from He-normal
weights, batches of 32 (a permutation per epoch), SGD with momentum 0.9, cross-entropy, three
ways with the same initial weights and batch order: `TileTrainReference` (the tile's arithmetic,
bit for bit: what `d1tile train` computes on the `train` preset's 4 x 8 samples) with FP32
master weights and with BF16 weights updated with stochastic rounding (`--weights bf16-sr`),
and float32 (`FloatTrainer`). The reference rather than the cycle model, for speed: the tests
check that the tile's training equals it bit for bit. Prints the test accuracy (360 images, float32 forward of each
epoch's weights) after every epoch and the mean over the seeds, and the wall time.

Measured (3 epochs, lr 0.1, seeds 0, 1, 2; mean test accuracy after epochs 1 / 2 / 3):
see docs/training.md ("Two weight schemes").
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from d1tile.sw.onnx_frontend import load_onnx
from d1tile.sw.toy_models import digits_split, mlp_model
from d1tile.sw.train_run import _accuracy
from d1tile.params import TileConfig
from d1tile.sw.train_kernels import TileTrainReference, plan_training
from d1tile.sw.training import FloatTrainer, Sgd, initial_params, training_graph


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    args = parser.parse_args(argv)
    tx, ty, vx, vy = digits_split()
    graph = load_onnx(mlp_model(batch=32).model, input_shapes={"x": (32, 64)})
    tg = training_graph(graph, "cross-entropy")
    plan = plan_training(tg, TileConfig.preset("train"), 32)
    opt = Sgd(args.lr, args.momentum)
    steps = len(tx) // 32
    results = {"fp32": [], "bf16-sr": [], "float32": []}
    start = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        params = initial_params(tg, seed)
        runs = {"fp32": TileTrainReference(plan, params, opt, weights="fp32", seed=seed),
                "bf16-sr": TileTrainReference(plan, params, opt, weights="bf16-sr", seed=seed),
                "float32": FloatTrainer(tg, params, opt)}
        accs = {k: [] for k in runs}
        rng = np.random.default_rng(seed)
        for _ in range(args.epochs):
            order = rng.permutation(len(tx))
            for s in range(steps):
                idx = order[s * 32:(s + 1) * 32]
                for run in runs.values():
                    run.step(tx[idx], ty[idx])
            for name, run in runs.items():
                p = run.params_f32() if name != "float32" else run.params
                accs[name].append(_accuracy(tg, p, vx, vy, 32))
        for name, a in accs.items():
            results[name].append(a)
            print(f"seed {seed} {name:8} " + " / ".join(f"{100 * v:.1f} %" for v in a))
    print(f"mean over seeds, test accuracy after each of {args.epochs} epochs:")
    for name, runs in results.items():
        mean = np.mean(runs, axis=0)
        print(f"  {name:8} " + " / ".join(f"{100 * v:.1f} %" for v in mean))
    print(f"wall time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
