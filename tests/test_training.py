"""Training graphs and their references (`d1tile.sw.training`): the backward steps derived over
the IR, the float64 gradients against finite differences (the autodiff check, bound below), the
bit-exact BF16 reference against exact arithmetic where every FP32 operation is exact, and
training the toy MLP on the digits beside float32.

The finite-difference bound: central differences with step h = 1e-6 in float64 have a
truncation error of order h^2 |f'''| and a rounding error of order 1e-16 |f| / h; for these
small networks (losses of order 1) |autodiff - difference| <= 1e-6 (1 + |autodiff|) holds with
a wide margin (measured: below 3e-9)."""

import numpy as np
import pytest

from conftest import bench_seed
from d1tile import numerics
from d1tile.sw.errors import CompileError
from d1tile.sw.graph_api import GraphBuilder
from d1tile.sw.training import (Bf16Reference, FloatTrainer, Sgd, float_loss_and_grads,
                                initial_params, training_graph)


def rng(*salt):
    return np.random.default_rng([bench_seed(), *salt])


def mlp(r, batch=8, k=12, h=16, f=5, softmax=True):
    g = GraphBuilder("mlp")
    x = g.input("x", (batch, k))
    y = g.relu(g.gemm(x, r.normal(size=(k, h)).astype(np.float32),
                      r.normal(size=h).astype(np.float32), name="fc1"))
    y = g.gemm(y, r.normal(size=(h, f)).astype(np.float32), r.normal(size=f).astype(np.float32),
               name="fc2")
    if softmax:
        y = g.softmax(y)
    return g.build(outputs=[y])


def residual_mlp(r, batch=8, k=8):
    """fc1's output is read twice (by relu and by the add): its gradient is the sum of two."""
    g = GraphBuilder("res")
    x = g.input("x", (batch, k))
    h = g.gemm(x, r.normal(size=(k, k)).astype(np.float32), r.normal(size=k).astype(np.float32),
               name="fc1")
    y = g.add(g.relu(g.gemm(g.relu(h), r.normal(size=(k, k)).astype(np.float32),
                            r.normal(size=k).astype(np.float32), name="fc2")), h, name="res")
    y = g.gemm(y, r.normal(size=(k, 4)).astype(np.float32), r.normal(size=4).astype(np.float32),
               name="fc3")
    return g.build(outputs=[y])


def cnn(r, batch=3):
    """Conv with stride and asymmetric padding, a grouped conv, max and average pools, a
    residual add, flatten, gemm."""
    g = GraphBuilder("cnn")
    x = g.input("x", (batch, 2, 7, 6))
    c1 = g.relu(g.conv(x, r.normal(size=(4, 2, 3, 3)).astype(np.float32),
                       r.normal(size=4).astype(np.float32), pads=(1, 0, 1, 1), name="c1"))
    c2 = g.conv(c1, r.normal(size=(4, 2, 3, 3)).astype(np.float32),
                r.normal(size=4).astype(np.float32), pads=1, groups=2, name="c2")
    s = g.add(c2, c1, name="res")
    p = g.maxpool(s, 2, name="mp")
    a = g.avgpool(p, 2, strides=1, pads=(0, 0, 1, 1), name="ap")
    y = g.gemm(g.flatten(a), r.normal(size=(24, 3)).astype(np.float32) / 4,
               r.normal(size=3).astype(np.float32), name="fc")
    return g.build(outputs=[y])


def test_the_backward_steps_are_derived_over_the_ir():
    tg = training_graph(residual_mlp(rng(1)), "mse")
    assert tg.params == ["fc1.W", "fc1.b", "fc2.W", "fc2.b", "fc3.W", "fc3.b"]
    names = [step.node.name for step in tg.steps]
    assert names[0] == "fc3" and names[-1] == "fc1"         # last node first
    h = tg.graph.node("fc1").output
    assert len(tg.contributions[h]) == 2                    # read by the relu and the add
    first = tg.graph.node("fc1")
    assert [s for s in tg.steps if s.node is first][0].grad_in == {}   # x needs no gradient
    sm = training_graph(mlp(rng(2)), "cross-entropy")
    assert tg.logits != sm.logits and sm.graph.producer(sm.logits).op == "gemm"


@pytest.mark.parametrize("make, loss", [(mlp, "cross-entropy"), (residual_mlp, "mse"),
                                        (cnn, "cross-entropy")], ids=["mlp", "residual", "cnn"])
def test_float64_gradients_match_finite_differences(make, loss):
    r = rng(3)
    tg = training_graph(make(r), loss)
    params = {k: v.astype(np.float64) for k, v in initial_params(tg, seed=bench_seed()).items()}
    # Zero biases (the He init) put a ReLU exactly on its kink wherever a whole row of its
    # input's producer is zero (one ReLU'd row all <= 0 feeding the next gemm: about 1 seed in
    # 30 for the residual MLP), where the one-sided slopes differ and no difference agrees
    # with the subgradient: random biases keep every pre-activation off 0.
    for name in tg.params:
        if params[name].ndim == 1:                          # a bias
            params[name] = r.normal(size=params[name].shape)
    shape = tg.graph.shape(tg.graph.inputs[0])
    x = r.normal(size=shape)
    labels = (r.integers(0, tg.classes, size=shape[0]) if loss == "cross-entropy"
              else r.normal(size=(shape[0], tg.classes)))
    _, grads = float_loss_and_grads(tg, params, x, labels, np.float64)
    h, worst = 1e-6, 0.0
    for name in tg.params:
        for _ in range(4):
            idx = tuple(int(r.integers(0, s)) for s in params[name].shape)
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][idx] += h
            minus[name][idx] -= h
            diff = (float_loss_and_grads(tg, plus, x, labels)[0]
                    - float_loss_and_grads(tg, minus, x, labels)[0]) / (2 * h)
            worst = max(worst, abs(grads[name][idx] - diff) / (1 + abs(grads[name][idx])))
    assert worst <= 1e-6, worst


def exact_case(r, batch=4, k=4, f=4):
    """Weights and inputs in {-1, 0, 1}, biases in {-1, 0, 1}, integer targets: every activation
    is a small integer (BF16-exact); an mse loss over B F = 16 elements, a learning rate and
    weight decay that are powers of two and momentum 1/2: every FP32 operation of the first
    step is exact, so the contract's result is the float64 one."""
    g = GraphBuilder("exact")
    x = g.input("x", (batch, k))

    def small(*shape):
        return r.integers(-1, 2, size=shape).astype(np.float32)
    y = g.gemm(g.relu(g.gemm(x, small(k, k), small(k), name="fc1")), small(k, f), small(f),
               name="fc2")
    tg = training_graph(g.build(outputs=[y]), "mse")
    return tg, small(batch, k), r.integers(-8, 9, size=(batch, f)).astype(np.float32)


def test_the_bf16_reference_is_exact_where_every_operation_is():
    """One step: the BF16 reference's loss, weights and velocity equal the float64 computation
    of the same formulas bit for bit (after it, the master weights are no longer BF16 values,
    so the next forward pass rounds them: the references part ways, as they should)."""
    r = rng(4)
    for _ in range(5):
        tg, x, t = exact_case(r)
        opt = Sgd(lr=2.0 ** -6, momentum=0.5, weight_decay=2.0 ** -4)
        ref = Bf16Reference(tg, tg.initial, opt)
        exact = FloatTrainer(tg, tg.initial, opt, np.float64)
        assert ref.step(x, t) == exact.step(x, t)
        for k in tg.params:
            assert np.array_equal(ref.master[k], numerics.f32_bits(exact.params[k])), k
            assert np.array_equal(ref.velocity[k], numerics.f32_bits(exact.velocity[k])), k


def test_gradient_sums_split_over_groups_keep_their_order():
    """Data-parallel groups add their partial sums in group order. A batch of 4 whose dz column
    is 1, 2^-24, 2^-24, -1 (x = 1): in one group ((1 + 2^-24) + 2^-24) - 1 = 0 (each 2^-24 is
    half an ulp of 1 and rounds away to even), in two groups (1 + 2^-24) + (2^-24 - 1) = 2^-24
    (the second part is exact). A random step is deterministic for each grouping."""
    r = rng(5)
    tg = training_graph(mlp(r, batch=16), "cross-entropy")
    ones = numerics.bf16_bits(np.ones((1, 4)))
    dz = numerics.bf16_bits(np.array([[1.0], [2.0 ** -24], [2.0 ** -24], [-1.0]]))
    sums = {}
    for groups in (1, 2):
        ref = Bf16Reference(tg, tg.initial, Sgd(lr=0.5), groups=groups)
        sums[groups] = numerics.f32_value(ref._batch_sum(ones, dz))[0, 0]
    assert sums == {1: 0.0, 2: 2.0 ** -24}
    x = r.normal(size=(16, 12)).astype(np.float32)
    y = r.integers(0, 5, size=16)
    for groups in (1, 2):
        masters = []
        for _ in range(2):
            ref = Bf16Reference(tg, initial_params(tg, 7), Sgd(lr=0.5), groups=groups)
            ref.step(x, y)
            masters.append(ref.master)
        assert all(np.array_equal(masters[0][k], masters[1][k]) for k in tg.params)


def test_stochastic_rounding_keeps_bf16_weights_and_is_seeded():
    r = rng(6)
    tg = training_graph(mlp(r, batch=8), "cross-entropy")
    x, y = r.normal(size=(8, 12)).astype(np.float32), r.integers(0, 5, size=8)
    opt = Sgd(lr=0.1, momentum=0.9)
    masters = []
    for seed in (1, 1, 2):
        ref = Bf16Reference(tg, initial_params(tg, 0), opt, scheme="bf16-sr", seed=seed)
        for _ in range(3):
            ref.step(x, y)
        assert all(v.dtype == np.uint16 for v in ref.master.values())
        masters.append(ref.master)
    assert all(np.array_equal(masters[0][k], masters[1][k]) for k in tg.params)
    assert any(not np.array_equal(masters[0][k], masters[2][k]) for k in tg.params)


@pytest.mark.parametrize("scheme", ["fp32", "bf16-sr"])
def test_the_toy_mlp_trains_on_the_digits_beside_float32(scheme):
    """From random initialisation, 2 epochs of batches of 32 (lr 0.1, momentum 0.9): the loss
    falls, and the test accuracy is within 2 points of float32 training with the same init
    and batch order."""
    from d1tile.sw.onnx_frontend import load_onnx
    from d1tile.sw.toy_models import digits_split, mlp_model
    tg = training_graph(load_onnx(mlp_model(batch=32).model), "cross-entropy")
    train_x, train_y, test_x, test_y = digits_split()
    init = initial_params(tg, seed=0)
    opt = Sgd(lr=0.1, momentum=0.9)
    ref = Bf16Reference(tg, init, opt, scheme=scheme)
    f32 = FloatTrainer(tg, init, opt)
    for _ in range(2):
        for i in range(0, len(train_x) - 31, 32):
            ref.step(train_x[i:i + 32], train_y[i:i + 32])
            f32.step(train_x[i:i + 32], train_y[i:i + 32])
    assert np.mean(ref.losses[-10:]) < 0.5 * np.mean(ref.losses[:10])
    tile = np.mean(FloatTrainer(tg, ref.params_f32(), opt).logits(test_x).argmax(1) == test_y)
    float32 = np.mean(f32.logits(test_x).argmax(1) == test_y)
    assert float32 > 0.9 and abs(tile - float32) <= 0.02, (tile, float32)


def test_what_cannot_be_trained_is_refused_in_one_line():
    r = rng(7)
    with pytest.raises(CompileError, match=r"^loss 'hinge' is not one of cross-entropy, mse$"):
        training_graph(mlp(r), "hinge")
    with pytest.raises(CompileError, match=r"\(softmax\): an mse loss on softmax outputs"):
        training_graph(mlp(r), "mse")
    tg = training_graph(cnn(r), "cross-entropy")
    with pytest.raises(CompileError, match=r"^node 'c1' \(conv\): the BF16 training reference "
                                           r"covers gemm, relu, add, flatten, reshape so far$"):
        Bf16Reference(tg, tg.initial, Sgd(lr=0.1))
    tg = training_graph(mlp(r), "cross-entropy")
    with pytest.raises(CompileError, match=r"^labels: a class label outside 0\.\.4$"):
        float_loss_and_grads(tg, tg.initial, np.zeros((8, 12)), np.full(8, 5))
    with pytest.raises(CompileError, match=r"^labels: cross-entropy needs 8 integer class"):
        float_loss_and_grads(tg, tg.initial, np.zeros((8, 12)), np.zeros(8))
    with pytest.raises(CompileError, match=r"^momentum=1\.0 must be below 1$"):
        Sgd(lr=0.1, momentum=1.0)
    with pytest.raises(CompileError, match=r"^lr=nan must be a finite number >= 0$"):
        Sgd(lr=float("nan"))
