"""Training a network on the tile, end to end: the data checked and cut into mini-batches, the
training program compiled once and run for every step of every epoch on the cycle model (and/or
the RTL), its losses and weights checked bit for bit against `TileTrainReference`, a float32
training of the same network, initialisation and batch order beside it, and the report.

    run = train_on_tile(graph, x, labels, cfg=TileConfig.preset("train"), epochs=3, batch=32,
                        opt=Sgd(0.1, 0.9), init="random", val=(vx, vy))
    run.report()                  # losses, accuracies, cycles per step and per phase, checks
    run.onnx()                    # the trained model (`d1tile run` and onnxruntime run it)

`d1tile train` is this with files; docs/training.md has the numbers it prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from d1tile import numerics
from d1tile.params import TileConfig
from d1tile.sw.errors import CompileError
from d1tile.sw.ir import Graph
from d1tile.sw.train_kernels import (TileTrainReference, TrainProgram, from_augmented,
                                     plan_training)
from d1tile.sw.training import FloatTrainer, Sgd, float_logits, initial_params, training_graph


__all__ = ["TrainRun", "train_on_tile", "choose_partition", "prepare_targets", "mlp_to_onnx"]


LOSS_ON_TILE = ("tile: the mse and its gradient on the vector unit; the host adds the nodes' "
                "per-sample sums (one word per node per step) into the loss")
LOSS_ON_HOST = ("host: each node streams its logits (one word per class) to the host, which "
                "computes the softmax cross-entropy in float32 (the vector unit has no exp) and "
                "writes dL/dz back (one word per class); the 'loss' phase's cycles are that round "
                "trip")


def _drop_softmax(graph: Graph, loss: str) -> tuple[Graph, bool]:
    """An mse loss reads the logits: a final softmax is left out of the training graph (and
    put back in the exported model). Cross-entropy drops it itself."""
    last = graph.producer(graph.outputs[0])
    if loss != "mse" or last is None or last.op != "softmax":
        return graph, last is not None and last.op == "softmax"
    g = graph.copy()
    last = g.producer(g.outputs[0])
    g.nodes = [n for n in g.nodes if n is not last]
    g.outputs = [last.inputs[0]]
    return g, True


def prepare_targets(tg, labels, what: str = "--labels") -> tuple:
    """(targets for the loss, class labels or None): for cross-entropy integer class labels;
    for mse either class labels (-> one-hot targets) or targets [n, classes]. Bad values are
    refused in one line (ValueError)."""
    y = np.asarray(labels)
    classes = tg.classes
    if y.ndim == 1:
        if not np.all(np.isfinite(y)) or not np.all(y == np.rint(y)):
            raise ValueError(f"{what}: class labels must be integers")
        y = y.astype(np.int64)
        if y.size and (y.min() < 0 or y.max() >= classes):
            bad = y[(y < 0) | (y >= classes)][0]
            raise ValueError(f"{what}: label {bad} is outside the model's {classes} classes "
                             f"(0..{classes - 1})")
        if tg.loss == "cross-entropy":
            return y, y
        return np.eye(classes, dtype=np.float32)[y], y
    if tg.loss == "cross-entropy":
        raise ValueError(f"{what}: cross-entropy needs one integer class label per sample, not "
                         f"an array of shape {list(y.shape)}")
    if y.ndim != 2 or y.shape[1] != classes:
        raise ValueError(f"{what}: mse needs class labels [n] or targets [n, {classes}], not "
                         f"shape {list(y.shape)}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{what}: contains NaN or infinite values")
    return y.astype(np.float32), None


def _check_data(graph: Graph, x, what: str) -> np.ndarray:
    want = tuple(graph.shape(graph.inputs[0])[1:])
    x = np.asarray(x)
    if x.ndim < 1 or tuple(x.shape[1:]) != want:
        raise ValueError(f"{what}: shape {list(x.shape)}, the model's samples are {list(want)}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: contains NaN or infinite values")
    return x.astype(np.float32)


def _step_counter(plan, total: int, progress):
    """A stream callback that calls `progress(step, total, cycle)` whenever every node of the
    last stage has streamed its loss (or logits) of one more step."""
    from d1tile.sw.train_kernels import LOGITS_TAG, LOSS_TAG
    tag = LOGITS_TAG if plan.tg.loss == "cross-entropy" else LOSS_TAG
    counts = {node: 0 for node in plan.chains[-1]}
    done = [0]

    def on_stream(node, addr, words, cycle):
        if node in counts and addr == tag and words:
            counts[node] += 1
            step = min(counts.values())
            if step > done[0]:
                done[0] = step
                progress(step, total, cycle)
    return on_stream


def _accuracy(tg, params: dict, x, labels, batch: int) -> float | None:
    """The share of samples whose largest float32 logit is the label (the weights as float32,
    evaluated in float32 on the host), or None without class labels."""
    if labels is None or not len(x):
        return None
    hits = 0
    for lo in range(0, len(x), batch):
        chunk = x[lo:lo + batch]
        pad = np.zeros((batch, *x.shape[1:]), dtype=np.float32)
        pad[:len(chunk)] = chunk
        z = float_logits(tg, params, pad, np.float32)[:len(chunk)]
        hits += int(np.sum(np.argmax(z, axis=1) == labels[lo:lo + batch]))
    return hits / len(x)


def _macs(plan) -> int:
    """MACs of one step of the network as written (not the tile's padding): forward, the dX
    of every layer but the first, dW (the biases' sums not counted)."""
    b = plan.batch
    fwd = sum(layer.k * layer.f for layer in plan.layers)
    dx = sum(layer.k * layer.f for layer in plan.layers[1:])
    return b * (2 * fwd + dx)


@dataclass
class TrainRun:
    """What `train_on_tile` did and measured (`report()` for all of it as plain data)."""
    cfg: TileConfig
    tg: object
    plan: object
    program: object
    opt: Sgd
    epochs: int
    steps_per_epoch: int
    losses: list                       # the tile's loss after every step (float32)
    reference_losses: list
    float_losses: list
    epoch_params: list                 # the tile's parameters after each epoch (float32)
    float_epoch_params: list
    accuracy: list                     # per epoch: (tile, float32) on the validation set
    bit_exact: bool
    mismatch: str | None
    cycles: int
    step_cycles: list
    phases: dict
    backends: list
    model_and_rtl_identical: bool | None
    softmax: bool                      # the graph ended with a softmax (kept in the export)
    seconds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    trace: dict | None = None          # the cycle model's run as a Perfetto trace (`timeline`)
    weights: str = "fp32"              # the weight scheme: fp32 masters or bf16-sr
    choice: list = field(default_factory=list)   # the partitions measured: [{stages, ...}]
    stage_phases: list = field(default_factory=list)   # per stage: its first node's phases

    @property
    def ideal_cycles_per_step(self) -> float:
        return _macs(self.plan) / self.cfg.peak_macs_per_cycle

    def params(self) -> dict:
        return self.epoch_params[-1]

    def epoch_line(self, e: int) -> str:
        s = self.steps_per_epoch
        tile = float(np.mean(self.losses[e * s:(e + 1) * s]))
        flt = float(np.mean(self.float_losses[e * s:(e + 1) * s]))
        cyc = float(np.mean(self.step_cycles[e * s:(e + 1) * s]))
        acc_t, acc_f = self.accuracy[e]
        acc = ("" if acc_t is None else
               f", val accuracy {100 * acc_t:.1f} % (float32 {100 * acc_f:.1f} %)")
        return (f"epoch {e + 1}/{self.epochs}: loss {tile:.5f} (float32 {flt:.5f}){acc}, "
                f"{cyc:,.0f} cycles/step, utilisation "
                f"{100 * self.ideal_cycles_per_step / cyc:.1f} %")

    def report(self) -> dict:
        plan = self.plan
        mean_step = float(np.mean(self.step_cycles))
        return {
            "model": self.tg.graph.name,
            "config": self.cfg.key,
            "loss": self.tg.loss,
            "loss_on": (LOSS_ON_HOST if self.tg.loss == "cross-entropy" else LOSS_ON_TILE),
            "optimizer": {"name": "sgd", "lr": self.opt.lr, "momentum": self.opt.momentum,
                          "weight_decay": self.opt.weight_decay},
            "weights": self.weights,
            "batch": plan.batch, "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch,
            "partition": {"kind": ("data-parallel" if len(plan.stages) == 1 else
                                   "data-parallel and layers over rows"),
                          "description": plan.describe(),
                          "stages": [[plan.layers[li].name for li in range(l0, l1)]
                                     for l0, l1 in plan.stages],
                          "nodes": [[list(n) for n in chain] for chain in plan.chains],
                          "samples_per_node": plan.n,
                          "all_reduce": "per stage: a chain in node order, chunks of "
                                        f"{self.program.chunks[0][0][1]} words, sums to each "
                                        "chunk's owner, updated forward weights multicast",
                          "choice": self.choice},
            "sram_kib_per_node": round(self.program.sram_words * self.cfg.word_bytes / 1024, 2),
            "program_words": self.program.program_words,
            "losses": [float(v) for v in self.losses],
            "float32_losses": [float(v) for v in self.float_losses],
            "accuracy": [{"tile": a, "float32": f} for a, f in self.accuracy],
            "cycles": self.cycles,
            "cycles_per_step": self.step_cycles,
            "phases_mean_cycles": {k: float(np.mean(v)) for k, v in self.phases.items()},
            "stage_phases_mean_cycles": [{k: float(np.mean(v)) for k, v in ph.items()}
                                         for ph in self.stage_phases],
            "ideal_cycles_per_step": self.ideal_cycles_per_step,
            "utilisation": self.ideal_cycles_per_step / mean_step,
            "bit_exact_vs_reference": self.bit_exact,
            "mismatch": self.mismatch,
            "backends": self.backends,
            "model_and_rtl_identical": self.model_and_rtl_identical,
            "seconds": self.seconds,
            "notes": self.notes,
        }

    def onnx(self):
        return mlp_to_onnx(self.plan, self.params(), softmax=self.softmax,
                           input_name=self.tg.graph.inputs[0])


def choose_partition(tg, cfg: TileConfig, batch: int, params: dict, opt: Sgd, *,
                     weights: str = "fp32", seed: int = 0, stages: int | None = None,
                     log=print) -> tuple:
    """(the plan, the table of candidates): the number of stages (groups of layers over the
    grid's rows, 1 = every node the whole network) that fits the nodes and whose training step
    the cycle model runs fastest. Each candidate is compiled and three steps of it run on the
    cycle model (the timing depends on the shapes, not on the values); the second step's
    cycles count (the first starts from the load, the last ends at the HALT). `stages` given: that one alone (still measured). One line per candidate
    through `log`; a partition that fits none is refused with each candidate's reason."""
    from d1tile.sim.tile import TileModel
    layers = len(plan_training(tg, cfg, batch).layers)
    candidates = [stages] if stages else range(1, layers + 1)
    table, best = [], None
    r = np.random.default_rng(0)
    shape = tg.graph.shape(tg.graph.inputs[0])
    for s in candidates:
        try:
            plan = plan_training(tg, cfg, batch, stages=s)
            program = TrainProgram(plan, params, opt, steps_per_epoch=3, weights=weights,
                                   seed=seed)
        except CompileError as exc:
            if stages:
                raise
            table.append({"stages": s, "error": str(exc)})
            continue
        x = r.normal(size=shape)
        y = (r.integers(0, tg.classes, size=batch) if tg.loss == "cross-entropy"
             else r.normal(size=(batch, tg.classes)))
        program.feed([(x, y)] * 3)
        model = TileModel(cfg, trace=True)
        model.run(program.tp)
        cycles = sum(v[1] for v in program.phase_cycles(model.issue_trace).values())
        table.append({"stages": s, "cycles_per_step": cycles,
                      "sram_kib": round(program.sram_words * cfg.word_bytes / 1024, 2),
                      "description": plan.describe()})
        if best is None or cycles < best[0]:
            best = (cycles, plan)
    for row in table:
        log(f"  partition, {row['stages']} stage{'s' if row['stages'] > 1 else ''}: " +
            (f"{row['cycles_per_step']:,} cycles per step, {row['sram_kib']} KiB per node"
             if "error" not in row else f"does not fit ({row['error']})"))
    if best is None:
        raise CompileError(" / ".join(f"{row['stages']} stages: {row['error']}" for row in table))
    return best[1], table


def mlp_to_onnx(plan, params: dict, *, softmax: bool, input_name: str = "x"):
    """The MLP with `params` as an ONNX model (opset 13, batch dimension "N"): Gemm (+ Relu)
    per layer, a Softmax at the end if the trained graph had one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits, prev = [], [], input_name
    for i, layer in enumerate(plan.layers):
        w = np.asarray(params[layer.weight], dtype=np.float32)
        b = np.asarray(params[layer.bias], dtype=np.float32)
        wn, bn = f"{layer.name}.W", f"{layer.name}.b"
        inits += [numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)]
        out = f"{layer.name}.out"
        nodes.append(helper.make_node("Gemm", [prev, wn, bn], [out], name=layer.name))
        if layer.relu:
            nodes.append(helper.make_node("Relu", [out], [f"{layer.name}.relu"],
                                          name=f"{layer.name}.relu"))
            out = f"{layer.name}.relu"
        prev = out
    if softmax:
        nodes.append(helper.make_node("Softmax", [prev], ["probs"], axis=1, name="softmax"))
        prev = "probs"
    graph = helper.make_graph(
        nodes, "trained",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", plan.layers[0].k])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", plan.layers[-1].f])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="d1tile train")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def train_on_tile(graph: Graph, x, labels, *, cfg: TileConfig, loss: str = "mse",
                  epochs: int = 1, batch: int = 32, opt: Sgd | None = None,
                  weights: str = "fp32", seed: int = 0, init: str = "model",
                  backends=("model",), val=None, log=print, progress=None,
                  timeline: bool = False, stages: int | None = None) -> TrainRun:
    """Train `graph` (an MLP, its batch dimension `batch`) on samples `x` with `labels` (class
    labels, or mse targets) for `epochs` epochs of mini-batches of `batch` (the samples
    shuffled per epoch from `seed`; a last partial batch dropped). `init`: "model" starts
    from the graph's weights, "random" from He-normal weights and zero biases (`seed`).
    `stages`: the layers in that many groups over the grid's rows (None: the partition
    `choose_partition` measures fastest). Everything is checked before anything runs
    (ValueError / CompileError, one line).
    `timeline`: keep the cycle model's timeline for a Perfetto trace (`TrainRun.trace`).
    `progress(step, steps, cycle)`: called as the cycle model finishes each step."""
    from d1tile.sw.runtime import ModelDevice, get_device
    opt = opt if opt is not None else Sgd(0.1, 0.9)
    if init not in ("model", "random"):
        raise ValueError(f"init {init!r} is not 'model' or 'random'")
    if not 1 <= epochs <= 65535:
        raise ValueError(f"epochs {epochs}: give 1..65535")
    if weights not in ("fp32", "bf16-sr"):
        raise ValueError(f"weights {weights!r} is not 'fp32' or 'bf16-sr'")
    g, softmax = _drop_softmax(graph, loss)
    tg = training_graph(g, loss)
    plan_training(tg, cfg, batch)           # the checks that do not depend on the partition
    x = _check_data(g, x, "--data")
    targets, classes_of = prepare_targets(tg, labels)
    if len(targets) != len(x):
        raise ValueError(f"--labels: {len(targets)} labels for {len(x)} samples")
    steps = len(x) // batch
    if steps < 1:
        raise ValueError(f"--data: {len(x)} samples, fewer than one mini-batch of {batch}")
    if steps * epochs > 65535:
        raise ValueError(f"{epochs} epochs of {steps} steps: at most 65535 steps per run")
    vx = vy = None
    if val is not None:
        vx = _check_data(g, val[0], "--val-data")
        _, vy = prepare_targets(tg, val[1], "--val-labels")
        if len(vx) != len(val[1]):
            raise ValueError(f"--val-labels: {len(val[1])} labels for {len(vx)} samples")
    params = initial_params(tg, seed) if init == "random" else tg.initial
    plan, choice = choose_partition(tg, cfg, batch, params, opt, weights=weights, seed=seed,
                                    stages=stages, log=log)
    rng = np.random.default_rng(seed)
    order = [rng.permutation(len(x))[:steps * batch] for _ in range(epochs)]
    batches = [(x[o[s * batch:(s + 1) * batch]], targets[o[s * batch:(s + 1) * batch]])
               for o in order for s in range(steps)]
    seconds = {}
    t0 = time.perf_counter()
    program = TrainProgram(plan, params, opt, steps_per_epoch=steps, epochs=epochs,
                           weights=weights, seed=seed)
    program.feed(batches)
    seconds["compile"] = time.perf_counter() - t0
    log(f"  {plan.describe()}; {steps} steps per epoch, "
        f"{program.sram_words * cfg.word_bytes / 1024:.1f} KiB of SRAM and "
        f"{program.program_words} instructions per node")
    results = {}
    for name in backends:
        t0 = time.perf_counter()
        device = (ModelDevice(cfg, trace=True, timeline=timeline) if name == "model"
                  else get_device(name, cfg))
        if name == "model" and progress is not None:
            device.on_stream = _step_counter(plan, steps * epochs, progress)
        device.load(program.tp)
        result = device.run()
        seconds[name] = time.perf_counter() - t0
        if result.hang or result.faults or result.misroute:
            raise RuntimeError(f"the training program did not finish on the {name}: "
                               f"{result.hang or result.faults or 'misrouted flits'}")
        results[name] = (result, device)
    first = results[backends[0]][0]
    out = program.unpack(first)
    identical = None
    if len(results) > 1:
        identical = results["model"][0].comparable() == results["rtl"][0].comparable()
    stage_phases = ([program.phase_cycles(results["model"][1].issue_trace, st)
                     for st in range(len(plan.stages))] if "model" in results else [])
    phases = stage_phases[0] if stage_phases else {}
    step_cycles = [sum(v[s] for v in phases.values()) for s in range(steps * epochs)] \
        if phases else [first.cycles / (steps * epochs)] * (steps * epochs)
    # the references, step by step
    t0 = time.perf_counter()
    ref = TileTrainReference(plan, params, opt, weights=weights, seed=seed)
    flt = FloatTrainer(tg, params, opt)
    ref_losses, mismatch, float_epochs = [], None, []
    for s, (xb, tb) in enumerate(batches):
        ref_losses.append(ref.step(xb, tb))
        flt.step(xb, tb)
        if s % steps == steps - 1:
            e = s // steps
            float_epochs.append({k: v.copy() for k, v in flt.params.items()})
            if mismatch is None and not all(np.array_equal(a, b) for a, b in
                                            zip(out["epochs"][e], ref.master)):
                mismatch = f"the weights after epoch {e + 1} differ from the reference"
    seconds["references"] = time.perf_counter() - t0
    for s, (a, b) in enumerate(zip(out["losses"], ref_losses)):
        if mismatch is None and numerics.f32_bits(a) != numerics.f32_bits(b):
            mismatch = f"the loss of step {s + 1} is {a!r}, the reference's {b!r}"
    if mismatch is None and not (
            all(np.array_equal(a, b) for a, b in zip(out["masters"], ref.master))
            and (not opt.momentum or all(np.array_equal(a, b) for a, b in
                                         zip(out["velocity"], ref.velocity)))):
        mismatch = "the final weights or velocity differ from the reference"
    epoch_params = []
    for masters in out["epochs"]:
        p = {}
        for layer, bits in zip(plan.layers, masters):
            if weights == "bf16-sr":
                bits = numerics.f32_from_bf16(bits)
            w, b = from_augmented(layer, numerics.f32_value(bits).astype(np.float32))
            p[layer.weight], p[layer.bias] = w.copy(), b.copy()
        epoch_params.append(p)
    accuracy = [(_accuracy(tg, p, vx, vy, batch), _accuracy(tg, fp, vx, vy, batch))
                if vx is not None else (None, None)
                for p, fp in zip(epoch_params, float_epochs)]
    notes = []
    if softmax and loss == "mse":
        notes.append("the mse loss reads the logits: the model's final Softmax is left out of "
                     "the training and kept in the exported model")
    run = TrainRun(cfg, tg, plan, program, opt, epochs, steps, out["losses"], ref_losses,
                   flt.losses, epoch_params, float_epochs, accuracy, mismatch is None,
                   mismatch, first.cycles, step_cycles, phases, list(backends), identical,
                   softmax, seconds, notes)
    run.weights = weights
    run.choice = choice
    run.stage_phases = stage_phases
    if timeline and "model" in results:
        run.trace = results["model"][1].chrome_trace()
    return run
