"""The `d1tile` command line.

Every user error (bad config, bad option value, missing tool) ends with a one-line message on
stderr and exit status 2; a failed check (a mismatch against the reference) with status 1.
"""

from __future__ import annotations

import argparse
import sys

from .hw.verilator import SimulationFailed
from . import __version__
from .params import PRESETS, ConfigError, TileConfig, parse_grid


class CheckFailed(Exception):
    """A run finished but its result disagrees with the reference."""


def config_from_args(args) -> TileConfig:
    cfg = TileConfig.preset(args.preset)
    if getattr(args, "grid", None):
        rows, cols = parse_grid(args.grid)
        cfg = cfg.with_grid(rows, cols)
    return cfg


def _add_config_options(parser, default_preset="default"):
    parser.add_argument("--preset", default=default_preset,
                        help=f"named configuration (default: {default_preset}); see `d1tile config`")
    parser.add_argument("--grid", metavar="RxC", help="override the grid size, e.g. 2x2")


def cmd_config(args) -> int:
    cfg = config_from_args(args)
    print(f"preset {args.preset}: {cfg}")
    derived = {
        "nodes": cfg.nodes, "word_bytes": cfg.word_bytes, "sram_words": cfg.sram_words,
        "bank_words": cfg.bank_words, "macs_per_cycle (node)": cfg.macs_per_cycle,
        "peak_macs_per_cycle (grid)": cfg.peak_macs_per_cycle, "coord_bits": cfg.coord_bits,
    }
    for name, value in derived.items():
        print(f"  {name:28} {value}")
    print(f"presets (--preset): " + "; ".join(
        f"{p.name} {p.rows}x{p.cols} nodes, N = {p.mac_dim}, {p.sram_kib} KiB SRAM"
        for p in PRESETS.values()))
    print(f"grids (--grid RxC): 1 to {TileConfig.MAX_GRID} rows and columns")
    return 0


def _backends(name: str) -> list[str]:
    return ["model", "rtl"] if name == "both" else [name]


def _load_array(path: str, option: str):
    import numpy as np
    from .sw.onnx_frontend import float32_input
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{option} {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{option} {path}: not a NumPy .npy array ({exc})") from None
    return float32_input(array, f"{option} {path}")


def _single_input(model, why: str) -> tuple:
    """The model's one input: (name, dims as `input_signature` gives them, dims as text with
    "?" for a symbolic one); a model with another number of inputs is refused (`why`)."""
    from .sw.onnx_frontend import input_signature
    signature = input_signature(model)
    if len(signature) != 1:
        raise ValueError(f"{model}: the model has {len(signature)} inputs; {why}")
    (name, dims), = signature.items()
    return name, dims, "[" + ", ".join(str(d if d is not None else "?") for d in dims) + "]"


def _check_writable(path: str | None, option: str, *others) -> None:
    """Fail before any work (no partial output) when `path` cannot be written: its directory
    missing or not writable, the path a directory or a file we may not replace, or the same
    file as another output's (`others`: (option, path) pairs)."""
    import os
    from pathlib import Path
    if path is None:
        return
    target = Path(path)
    parent = target.resolve().parent
    if target.is_dir():
        raise ValueError(f"{option} {path}: is a directory (give a file name)")
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: the directory {parent} is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise ValueError(f"{option} {path}: the file exists and is not writable")
    probe = target.with_name(f".{target.name}.tmp")     # what `_write_outputs` will write
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot be written ({exc.strerror or exc})") from None
    for other, other_path in others:
        if other_path is not None and Path(other_path).resolve() == target.resolve():
            raise ValueError(f"{option} {path}: the same file as {other}")


def _check_directory(path: str | None, option: str, names, *others) -> None:
    """Fail before any work when directory `path` cannot take the files `names`: a file (not a
    directory) at `path` or above it, or the nearest existing folder not writable; in an
    existing directory each file is checked as `_check_writable` checks an output (`others`:
    its (option, path) pairs). A missing directory is created when the outputs are written."""
    import os
    from pathlib import Path
    if path is None:
        return
    target = Path(path).absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == target else f" ({existing} is a file)"
        raise ValueError(f"{option} {path}: not a directory{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: the directory {existing} is not writable")
    for other, other_path in others:
        if other_path is not None and Path(other_path).absolute() == target:
            raise ValueError(f"{option} {path}: the same path as {other}")
    if existing == target:
        for name in names:
            _check_writable(str(Path(path) / name), option, *others)
        return
    probe = existing / f".{target.name}.tmp"       # what `_write_outputs` will make
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot be made in {existing} "
                         f"({exc.strerror or exc})") from None


def _pictures():
    """`d1tile.sw.plots`, imported when pictures are asked for (it brings matplotlib)."""
    from .sw import plots
    return plots


def _check_outputs(args, plots: str) -> None:
    """`run`'s and `train`'s outputs (--out, --report, --trace, --plots DIR with the files
    `d1tile.sw.plots.<plots>` names), each checked before any work and against the others
    (matplotlib is imported only with --plots)."""
    _check_writable(args.out, "--out")
    _check_writable(args.report, "--report", ("--out", args.out))
    _check_writable(args.trace, "--trace", ("--out", args.out), ("--report", args.report))
    if args.plots:
        _check_directory(args.plots, "--plots", getattr(_pictures(), plots), ("--out", args.out),
                         ("--report", args.report), ("--trace", args.trace))


def _report_files(args, report, trace, draws) -> list:
    """The (path, writer) pairs of --report, --trace and --plots DIR (`draws()`: the
    pictures' {file name: draw}, called only with --plots)."""
    from pathlib import Path
    files = []
    if args.report:
        files.append((args.report, _json_writer(report)))
    if args.trace:
        files.append((args.trace, _json_writer(trace, compact=True)))
    if args.plots:
        files += [(str(Path(args.plots) / name), draw) for name, draw in draws().items()]
    return files


def _write_outputs(outputs: list) -> None:
    """[(path, write)]: every `write(tmp_path)` first, then the renames, so a failure leaves
    no output at all (nor a half-written one, nor a directory made for them); an OS error is
    one line (ValueError). Missing directories of the paths are created."""
    import os
    from pathlib import Path
    tmps = [(Path(path).with_name(f".{Path(path).name}.tmp"), path, write)
            for path, write in outputs]
    made = []
    try:
        for tmp, _, write in tmps:
            for folder in reversed([tmp.parent, *tmp.parent.parents]):
                if not folder.exists():
                    folder.mkdir()
                    made.append(folder)
            write(tmp)
        for tmp, path, _ in tmps:
            os.replace(tmp, path)
    except OSError as exc:
        what = next((path for tmp, path, _ in tmps if str(tmp) == str(exc.filename)),
                    exc.filename)
        raise ValueError(f"cannot write {what}: {exc.strerror or exc}") from None
    finally:
        for tmp, _, _ in tmps:
            if tmp.exists():
                tmp.unlink()
        for folder in reversed(made):       # empty unless every output was written
            if not any(folder.iterdir()):
                folder.rmdir()


def _json_writer(value, *, compact: bool = False):
    """A `_write_outputs` writer of `value` as JSON (indented, or compact for large traces)."""
    import json
    text = (json.dumps(value, separators=(",", ":")) if compact
            else json.dumps(value, indent=2) + "\n")
    return lambda tmp: tmp.write_text(text)


def _save_report(path: str, report) -> None:
    _write_outputs([(path, _json_writer(report))])


def _check_run(reports: list) -> None:
    for report in reports:
        if not report["bit_exact"]:
            raise CheckFailed(f"{report['model']}: the tile's outputs differ from the integer "
                              f"reference (max |diff| {report['max_abs_diff_vs_reference']})")
        if report["model_and_rtl_identical"] is False:
            raise CheckFailed(f"{report['model']}: the cycle model and the RTL differ (cycles "
                              f"{report['cycles']})")


def cmd_run(args) -> int:
    import numpy as np
    from .sw.compiler import compile_model
    from .sw.onnx_frontend import load_onnx
    from .sw.quant import finish_on_host, range_warnings
    from .sw.report import run_network, summary
    cfg = config_from_args(args)
    backends = _backends(args.backend)
    _check_outputs(args, "RUN_PLOTS")
    x = _load_array(args.input, "--input")
    calib = _load_array(args.calib, "--calib") if args.calib else x
    labels = None
    if args.labels:
        labels = _load_array(args.labels, "--labels")
        if labels.shape != (len(x),):
            raise ValueError(f"--labels {args.labels}: expected {len(x)} class labels, one per "
                             f"input, not shape {list(labels.shape)}")
        if not np.all(labels == np.rint(labels)):
            bad = labels[labels != np.rint(labels)][0]
            raise ValueError(f"--labels {args.labels}: class labels must be integers "
                             f"(found {bad:g})")
        labels = labels.astype(np.int64)
    name, dims, shown = _single_input(args.model, "`d1tile run` feeds exactly one")
    if dims and (len(dims) != x.ndim
                 or any(isinstance(d, int) and d != n for d, n in zip(dims, x.shape))):
        raise ValueError(f"--input {args.input}: shape {list(x.shape)}, the model's input "
                         f"'{name}' is {shown}")
    # Symbolic dimensions (a dynamic batch) take the input's sizes.
    static = dims and all(isinstance(d, int) for d in dims)
    graph = load_onnx(args.model, input_shapes=None if static else {name: x.shape})
    want = tuple(graph.shape(graph.inputs[0]))
    if tuple(calib.shape[1:]) != want[1:]:
        raise ValueError(f"--calib {args.calib}: shape {list(calib.shape)}, the model's input "
                         f"samples are {list(want[1:])}")
    if labels is not None:
        classes = graph.shape(graph.outputs[0])[-1]
        if labels.min() < 0 or labels.max() >= classes:
            bad = labels[(labels < 0) | (labels >= classes)][0]
            raise ValueError(f"--labels {args.labels}: label {bad} is outside the model's "
                             f"{classes} classes (0..{classes - 1})")
    if args.out and len(graph.outputs) > 1 and not args.out.endswith(".npz"):
        raise ValueError(f"--out {args.out}: the model has {len(graph.outputs)} outputs; give "
                         "a .npz file")
    if args.dtype == "bf16" and args.calib:
        print(f"d1tile run: note: --calib {args.calib} is not used with --dtype bf16")
    compiled = compile_model(graph, cfg, calib if args.dtype == "int8" else None,
                             dtype=args.dtype)
    print(f"d1tile run: {args.model} compiled for a {cfg.rows}x{cfg.cols} tile (preset "
          f"{args.preset}, {args.dtype}), backend {args.backend}")
    warnings = []
    if args.dtype == "int8":        # the calibration's ranges against this input's
        warnings = range_warnings(graph, compiled.qgraph.scales, x)
        for line in warnings:
            print(f"d1tile run: warning: {line}")
        if warnings:
            print("d1tile run: warning: the int8 results follow the integer reference "
                  "(bit-exact) but may be far from the float model: calibrate with inputs "
                  "like these (--calib)")
    net = run_network(compiled, x, backends, labels=labels, log=print,
                      timeline=bool(args.trace))
    report = net.report()
    report["model"] = str(args.model)
    report["warnings"] = warnings
    print(summary(report))
    files = []
    if args.out:
        first = next(iter(net.executions.values()))
        outputs = finish_on_host(compiled.qgraph, first.outputs)

        def write(tmp):
            # A file object, not a path: np.save would add ".npy" to the temporary name.
            with open(tmp, "wb") as f:
                if len(outputs) == 1:
                    np.save(f, next(iter(outputs.values())))
                else:
                    np.savez(f, **outputs)

        files.append((args.out, write))
    files += _report_files(args, report, net.chrome_trace if args.trace else None,
                           lambda: _pictures().run_plots(net, report))
    _write_outputs(files)
    if args.out:
        print(f"  outputs       {args.out}")
    if args.report:
        print(f"  report        {args.report}")
    if args.trace:
        print(f"  trace         {args.trace} (the cycle model's run; open it in "
              "ui.perfetto.dev)")
    if args.plots:
        print(f"  plots         {', '.join(_pictures().RUN_PLOTS)} in {args.plots}")
    _check_run([report])
    return 0


def _bar(total: int, desc: str, unit: str):
    """A progress bar (tqdm) on stderr when it is a terminal; None when it is not (CI, a pipe,
    a log file): nothing is printed there. The bar is removed when it is closed."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=f"  {desc}", unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def _bar_print(line: str) -> None:
    """`print` for lines written while a progress bar may be drawn: on a terminal through tqdm,
    which clears the bar, prints the line and draws the bar again below it."""
    if sys.stderr.isatty():
        from tqdm import tqdm
        tqdm.write(line, file=sys.stdout)
    else:
        print(line)


def _step_progress():
    """A training run's progress on a terminal: `progress(step, total, cycle)` for
    `train_on_tile`, a bar of the steps with the cycle; None off a terminal."""
    if not sys.stderr.isatty():
        return None
    bars = {}

    def show(step, total, cycle):
        bar = bars.get(total) or bars.setdefault(total, _bar(total, "cycle model", "step"))
        bar.update(step - bar.n)
        bar.set_postfix_str(f"cycle {cycle:,}", refresh=False)
        if step == total:
            bar.close()
    return show


def _verify_progress():
    """`verify`'s progress on a terminal: a bar per stage (interpreter, model, RTL)."""
    if not sys.stderr.isatty():
        return None
    bars = {}

    def show(stage, done, total):
        bar = bars.get(stage) or bars.setdefault(stage, _bar(total, stage, "program"))
        bar.update(done - bar.n)
        if done == total:
            bar.close()
    return show


def _noc_progress(packets: int, label: str):
    """`noc-stress`'s progress on a terminal: packets generated of `packets`, with the
    cycle and the copies delivered."""
    bar = _bar(packets, label, "pkt")
    if bar is None:
        return None, None

    def show(generated, delivered, cycle):
        bar.update(generated - bar.n)
        bar.set_postfix_str(f"cycle {cycle:,}, {delivered:,} delivered", refresh=False)
    return show, bar


def cmd_train(args) -> int:
    import numpy as np
    from .sw.onnx_frontend import load_onnx
    from .sw.train_run import train_on_tile
    from .sw.training import Sgd
    cfg = config_from_args(args)
    backends = _backends(args.backend)
    _check_outputs(args, "TRAIN_PLOTS")
    if args.trace and args.backend == "rtl":
        raise ValueError("--trace: the trace is the cycle model's run (--backend model or both)")
    x = _load_array(args.data, "--data")
    labels = _load_array(args.labels, "--labels")
    val = None
    if (args.val_data is None) != (args.val_labels is None):
        raise ValueError("--val-data and --val-labels go together")
    if args.val_data:
        val = (_load_array(args.val_data, "--val-data"),
               _load_array(args.val_labels, "--val-labels"))
    if args.stages is not None and args.stages < 1:
        raise ValueError(f"--stages {args.stages}: give 1 or more")
    if args.batch < 1 or args.epochs < 1:
        raise ValueError(f"--batch {args.batch} --epochs {args.epochs}: both must be >= 1")
    opt = Sgd(args.lr, args.momentum, args.weight_decay)
    if args.optimizer != "sgd":
        raise ValueError(f"--optimizer {args.optimizer}: the tile runs SGD (with momentum and "
                         "weight decay) so far; Adam is not implemented")
    name, dims, shown = _single_input(args.model, "training takes exactly one")
    for option, path, data in (("--data", args.data, x),
                               ("--val-data", args.val_data, val[0] if val else None)):
        if data is not None and dims and (
                len(dims) != data.ndim
                or any(isinstance(d, int) and d != n for d, n in zip(dims[1:], data.shape[1:]))):
            raise ValueError(f"{option} {path}: shape {list(data.shape)}, the model's input "
                             f"'{name}' is {shown}")
    graph = load_onnx(args.model, input_shapes={name: (args.batch, *x.shape[1:])})
    print(f"d1tile train: {args.model} on a {cfg.rows}x{cfg.cols} tile (preset {args.preset}), "
          f"{args.loss} loss, SGD lr {args.lr} momentum {args.momentum} weight decay "
          f"{args.weight_decay}, weights {args.weights}, batch {args.batch}, "
          f"{args.epochs} epochs, backend {args.backend}")
    run = train_on_tile(graph, x, labels, cfg=cfg, loss=args.loss, epochs=args.epochs,
                        progress=_step_progress(),
                        batch=args.batch, opt=opt, weights=args.weights, seed=args.seed,
                        init=args.init, backends=backends, val=val, log=_bar_print,
                        timeline=bool(args.trace), stages=args.stages)
    for note in run.notes:
        print(f"  note: {note}")
    for e in range(run.epochs):
        print("  " + run.epoch_line(e))
    report = run.report()
    report["model"] = str(args.model)
    print(f"  cycles per step {np.mean(run.step_cycles):,.0f} (ideal {run.ideal_cycles_per_step:,.0f}"
          f" = MACs of forward and backward over the tile's peak), by phase:")
    for st, phases in enumerate(report["stage_phases_mean_cycles"]):
        names = report["partition"]["stages"][st]
        print(f"    stage {st + 1} ({', '.join(names)}): " +
              ", ".join(f"{k} {v:,.0f}" for k, v in phases.items()))
    print(f"  bit-exact with the NumPy reference (losses every step, weights every epoch): "
          f"{'yes' if run.bit_exact else 'NO: ' + run.mismatch}")
    if run.model_and_rtl_identical is not None:
        print(f"  cycle model and RTL: "
              f"{'identical cycles, counters and streams' if run.model_and_rtl_identical else 'DIFFERENT'}")
    files = []
    if args.out:
        import onnx
        model = run.onnx()
        files.append((args.out, lambda tmp: onnx.save(model, str(tmp))))
    files += _report_files(args, report, run.trace,
                           lambda: _pictures().train_plots(report))
    _write_outputs(files)
    if args.out:
        print(f"  trained model {args.out}")
    if args.report:
        print(f"  report        {args.report}")
    if args.trace:
        print(f"  trace         {args.trace} (the cycle model's run; open it in ui.perfetto.dev)")
    if args.plots:
        print(f"  plots         {', '.join(_pictures().TRAIN_PLOTS)} in {args.plots}")
    if not run.bit_exact:
        raise CheckFailed(f"the tile's training differs from the reference: {run.mismatch}")
    if run.model_and_rtl_identical is False:
        raise CheckFailed("the cycle model and the RTL differ")
    return 0


def cmd_demo(args) -> int:
    from .sw.compiler import compile_model
    from .sw.report import run_network, summary
    from .sw.toy_models import TOY_MODELS, digits_split
    cfg = config_from_args(args)
    backends = _backends(args.backend)
    _check_writable(args.report, "--report")
    names = args.models.split(",")
    for name in names:
        if name not in TOY_MODELS and name != "train":
            raise ValueError(f"--models: unknown model {name!r}; known: "
                             f"{', '.join(TOY_MODELS)}, train")
    train = "train" in names
    names = [name for name in names if name != "train"]
    if train and not 32 <= args.train_samples <= len(digits_split()[0]):
        raise ValueError(f"--train-samples {args.train_samples}: give 32.."
                         f"{len(digits_split()[0])} (the training digits)")
    test_images = len(digits_split()[2])
    batch = test_images if args.batch is None else args.batch
    if not 1 <= batch <= test_images:
        raise ValueError(f"--batch {batch}: give 1..{test_images} (the test set's size)")
    print(f"d1tile demo: toy models on sklearn's 8x8 digits, {batch} test images, on the "
          f"{cfg.rows}x{cfg.cols} tile (preset {args.preset}), backend {args.backend}")
    reports = []
    for name in names:
        print(f"{name}: training (NumPy / scikit-learn), exporting to ONNX, quantising, "
              "compiling ...")
        toy = TOY_MODELS[name](batch=batch)
        compiled = compile_model(toy.model, cfg, toy.calib_x)
        net = run_network(compiled, toy.test_x[:batch], backends, labels=toy.test_y[:batch],
                          log=print)
        report = net.report()
        reports.append(report)
        print(summary(report))
    if reports:
        exact = all(r["bit_exact"] for r in reports)
        print(f"all outputs bit-exact with the integer reference: {'yes' if exact else 'NO'}")
    if reports and "rtl" in backends and "model" in backends:
        same = all(r["model_and_rtl_identical"] for r in reports)
        verdict = "identical cycles, counters and outputs" if same else "DIFFERENT"
        print(f"cycle model and RTL: {verdict}")
    trained = _demo_training(args, backends) if train else []
    if args.report:
        _save_report(args.report, {r["model"]: r for r in reports + trained})
        print(f"report: {args.report}")
    _check_run(reports)
    for r in trained:
        if not r["bit_exact_vs_reference"]:
            raise CheckFailed(f"{r['model']}: the tile's training differs from the reference: "
                              f"{r['mismatch']}")
        if r["model_and_rtl_identical"] is False:
            raise CheckFailed(f"{r['model']}: the cycle model and the RTL differ")
    return 0


DEMO_TRAIN_SAMPLES = 640        # the first 640 training digits: 20 steps of 32 per epoch


def _demo_training(args, backends) -> list:
    """The toy MLP's structure trained from random weights on the digits, on the cycle model
    (the `train` preset: 256 KiB per node); with the RTL, a few steps of a small MLP on the
    tiny tile on both backends, compared."""
    import numpy as np
    from .sw.onnx_frontend import load_onnx
    from .sw.toy_models import digits_split, mlp_model
    from .sw.train_run import train_on_tile
    from .sw.training import Sgd
    tx, ty, vx, vy = digits_split()
    cfg = TileConfig.preset("train")
    if getattr(args, "grid", None):
        cfg = cfg.with_grid(*parse_grid(args.grid))
    n = args.train_samples
    if not 32 <= n <= len(tx):
        raise ValueError(f"--train-samples {n}: give 32..{len(tx)} (the training digits)")
    print(f"train: the toy MLP (64-64-10) from random weights on {n} training digits, 3 "
          f"epochs of batch 32, SGD lr 0.1 momentum 0.9, cross-entropy, FP32 master weights, "
          f"on the {cfg.rows}x{cfg.cols} tile (preset train: {cfg.sram_kib} KiB per node), "
          "cycle model")
    graph = load_onnx(mlp_model(batch=32).model, input_shapes={"x": (32, 64)})
    run = train_on_tile(graph, tx[:n], ty[:n], cfg=cfg, loss="cross-entropy", epochs=3,
                        batch=32, opt=Sgd(0.1, 0.9), init="random", seed=0,
                        val=(vx, vy), log=_bar_print, progress=_step_progress())
    for e in range(run.epochs):
        print("  " + run.epoch_line(e))
    report = run.report()
    report["model"] = "train: toy MLP"
    print(f"  cycles per step {np.mean(run.step_cycles):,.0f} (ideal "
          f"{run.ideal_cycles_per_step:,.0f}), by phase (the loss: the logits' round trip to "
          "the host, softmax cross-entropy):")
    for st, phases in enumerate(report["stage_phases_mean_cycles"]):
        names = report["partition"]["stages"][st]
        print(f"    stage {st + 1} ({', '.join(names)}): " +
              ", ".join(f"{k} {v:,.0f}" for k, v in phases.items()))
    print(f"  bit-exact with the NumPy reference of the tile's arithmetic (loss every step, "
          f"weights every epoch): {'yes' if run.bit_exact else 'NO: ' + run.mismatch}")
    reports = [report]
    if "rtl" in backends:
        from .sw.graph_api import GraphBuilder
        tiny = TileConfig.preset("tiny")
        r = np.random.default_rng(0)
        g = GraphBuilder("small")
        x = g.input("x", (8, 3))
        h = g.relu(g.gemm(x, r.normal(size=(3, 4)).astype(np.float32),
                          np.zeros(4, np.float32), name="fc1"))
        y = g.gemm(h, r.normal(size=(4, 3)).astype(np.float32), np.zeros(3, np.float32),
                   name="fc2")
        data = r.normal(size=(16, 3)).astype(np.float32)
        labels = (data[:, 0] > 0).astype(np.int64) + (data[:, 1] > 0)
        print("train on the RTL: a 3-4-3 MLP, 2 steps of batch 8 on the tiny tile, the cycle "
              "model and the Verilator RTL")
        small = train_on_tile(g.build(outputs=[y]), data, labels, cfg=tiny,
                              loss="cross-entropy", epochs=1, batch=8, opt=Sgd(0.25, 0.5),
                              backends=["model", "rtl"], log=print)
        rep = small.report()
        rep["model"] = "train: 3-4-3 MLP on the RTL"
        same = "identical cycles, counters and streams" if small.model_and_rtl_identical \
            else "DIFFERENT"
        print(f"  {small.cycles:,} cycles on both; cycle model and RTL: {same}; bit-exact with "
              f"the reference: {'yes' if small.bit_exact else 'NO'}")
        reports.append(rep)
    return reports


def cmd_matrix_demo(args) -> int:
    from .hw.matrix_demo import run_demo
    cfg = config_from_args(args)
    m, k, n = args.shape
    for name, value in zip("mkn", args.shape):
        if value < 1:   # checked before anything is printed: no partial output
            raise ValueError(f"--shape: dimension {name}={value} must be a positive integer")
    kind = ("int8 x int8 -> int32" if args.dtype == "int8"
            else "bf16 x bf16 -> fp32 (standard normal operands)")
    print(f"d1tile matrix-demo: random {kind} ({m}x{k}) @ ({k}x{n}) on the "
          f"{cfg.mac_dim}x{cfg.mac_dim} matrix unit of preset {args.preset!r}, RTL on Verilator "
          f"(seed {args.seed})")
    result = run_demo(cfg, m, k, n, args.seed, dtype=args.dtype, log=print)
    print(f"  cycles        {result['cycles']}")
    print(f"  ideal cycles  {result['ideal_cycles']:g}  (m*k*n / {cfg.macs_per_cycle} MACs per cycle)")
    print(f"  utilisation   {100 * result['utilisation']:.1f} %")
    if args.dtype == "int8":
        print(f"  vs NumPy      {'bit-exact' if result['match'] else 'MISMATCH'}")
    else:
        print(f"  vs reference  {'bit-exact' if result['match'] else 'MISMATCH'} "
              "(d1tile.numerics.bf16_matmul: FP32 sums added k after k)")
        print(f"  vs float64    max |error| {result['max_abs_error']:.3g} (results up to "
              f"{result['reference_max_abs']:.3g}), max relative error "
              f"{result['max_rel_error']:.3g}")
    if not result["match"]:
        raise CheckFailed(f"the matrix unit's product differs from the {args.dtype} reference "
                          f"in {result['mismatches']} elements")
    return 0


SWEEP_RATES = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"
"""The offered loads of `noc-stress --sweep-rates` without a list."""


def _rates(text: str) -> list[float]:
    """--sweep-rates' list: comma-separated offered loads, each run once, in the order given."""
    try:
        rates = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep-rates {text}: give comma-separated rates, e.g. "
                         f"{SWEEP_RATES}") from None
    if not rates:
        raise ValueError(f"--sweep-rates {text!r}: no rate given")
    return rates


def _noc_stopped(stats) -> bool:
    """The run stopped at the cycle cap with nothing else wrong."""
    return bool(stats.stopped) and not (stats.duplicated or stats.reordered or stats.broken
                                        or stats.misdelivered or stats.deadlock)


def cmd_noc_stress(args) -> int:
    from .sim import noc
    cfg = config_from_args(args)
    if args.backend == "rtl":
        from .hw.noc_run import run_rtl as run
    else:
        run = noc.run_model
    kwargs = {"log": print} if args.backend == "rtl" else {}
    # Argument errors surface before anything is printed.
    sweep = args.sweep_rates is not None
    if sweep and args.rate is not None:
        raise ValueError("--rate and --sweep-rates: give one (the sweep runs each of its rates)")
    if args.plots and not sweep:
        raise ValueError("--plots needs --sweep-rates (the picture is latency against offered "
                         "load)")
    rates = _rates(args.sweep_rates) if sweep else [0.5 if args.rate is None else args.rate]
    traffics = [noc.NocTraffic(cfg, packets=args.packets, rate=rate, seed=args.seed,
                               multicast=args.multicast) for rate in rates]
    if args.max_cycles < 1:
        raise ValueError(f"--max-cycles {args.max_cycles}: give at least 1")
    if args.plots:
        from .sw.plots import NOC_PLOT
        _check_directory(args.plots, "--plots", [NOC_PLOT])
    for rate, traffic in zip(rates, traffics):
        if traffic.expected_cycles() > args.max_cycles:
            print(f"d1tile noc-stress: warning: at --rate {rate} generating {args.packets} "
                  f"packets takes about {traffic.expected_cycles():,} cycles, more than "
                  f"--max-cycles {args.max_cycles:,}")
    mc = f" ({args.multicast:g} of them multicasts)" if args.multicast else ""
    at = (f"at each of {len(rates)} offered loads" if sweep
          else f"at {rates[0]} flits/node/cycle")
    print(f"d1tile noc-stress: {cfg.rows}x{cfg.cols} mesh ({args.preset}), {args.packets} packets"
          f"{mc} {at}, seed {args.seed}, backend {args.backend}")

    def run_at(rate):
        show, bar = (_noc_progress(args.packets, f"rate {rate:g}") if args.backend == "model"
                     else (None, None))
        try:
            return run(cfg, packets=args.packets, rate=rate, seed=args.seed,
                       multicast=args.multicast, max_cycles=args.max_cycles,
                       **({"progress": show} if show else kwargs))
        finally:
            if bar is not None:
                bar.close()

    if not sweep:
        stats = run_at(rates[0])
        print(stats.summary())
        if _noc_stopped(stats):
            raise CheckFailed(f"stopped at --max-cycles {args.max_cycles:,} with "
                              f"{stats.planned - stats.injected} of {stats.planned} packets never "
                              "injected (raise --max-cycles or --rate)")
        if not stats.ok:
            raise CheckFailed("packets were lost, duplicated, reordered or broken, or the mesh "
                              "stalled")
        return 0
    print(f"  {'rate':>6}{'cycles':>10}{'latency mean':>14}{'p99':>6}{'max':>6}"
          f"{'delivered':>11}  (latency in cycles; rate and delivered in flits/node/cycle)")
    done, failed = [], []
    for rate in rates:
        stats = run_at(rate)
        verdict = ("" if stats.ok else "  STOPPED at --max-cycles" if _noc_stopped(stats)
                   else f"  FAILED: lost {stats.lost}, duplicated {stats.duplicated}, "
                        f"reordered {stats.reordered}, broken {stats.broken}, misdelivered "
                        f"{stats.misdelivered}" + (", deadlock" if stats.deadlock else ""))
        print(f"  {rate:>6g}{stats.cycles:>10,}{stats.latency_mean:>14.2f}{stats.latency_p99:>6}"
              f"{stats.latency_max:>6}{stats.flits / max(stats.cycles, 1) / cfg.nodes:>11.3f}"
              f"{verdict}")
        (done if stats.ok else failed).append((rate, stats))
    if args.plots and done:
        from pathlib import Path
        from .sw.plots import latency_vs_load
        where = {"model": "cycle model", "rtl": "RTL"}[args.backend]
        title = (f"noc-stress: {cfg.rows}x{cfg.cols} mesh ({args.preset}), {args.packets} packets"
                 f"{mc} per load, seed {args.seed}, {where}\nlatency and throughput against "
                 "offered load")
        path = Path(args.plots) / NOC_PLOT
        _write_outputs([(path, lambda tmp: latency_vs_load(tmp, done, cfg.nodes, title))])
        print(f"  plot          {path}")
    if failed:
        raise CheckFailed(f"at --rate {', '.join(f'{r:g}' for r, _ in failed)}: stopped at "
                          "--max-cycles, or packets were lost, duplicated, reordered or broken, "
                          "or the mesh stalled" + (" (left out of the plot)" if args.plots
                                                   else ""))
    return 0


def cmd_verify(args) -> int:
    from .sw.verify import verify
    cfg = config_from_args(args)
    if args.random_programs < 1:
        raise ValueError(f"--random-programs {args.random_programs}: give at least 1")
    if args.only is not None and not 0 <= args.only < args.random_programs:
        raise ValueError(f"--only {args.only} is not one of the {args.random_programs} programs")
    if args.trace and args.only is None:
        raise ValueError("--trace needs --only I (the trace of one program)")
    _check_writable(args.trace, "--trace")
    rtl = args.backend == "rtl"
    against = "RTL (Verilator) vs functional interpreter" if rtl else "functional interpreter"
    print(f"d1tile verify: {args.random_programs if args.only is None else 1} random program(s), "
          f"seed {args.seed}, {cfg.rows}x{cfg.cols} grid, preset {args.preset}: cycle model vs "
          f"{against}")
    report = verify(cfg, args.random_programs, args.seed, only=args.only, rtl=rtl,
                    progress=_verify_progress())
    rtl_part = (f"RTL: {report.rtl_seconds:.2f} s (+ {report.build_seconds:.1f} s build)" if rtl
                else "RTL: not run (--backend model)")
    print(f"model: {report.model_cycles} cycles in {report.model_seconds:.2f} s; {rtl_part}")
    print(report.exercised_line())
    print(f"{report.programs} programs: {report.mismatches} mismatches")
    if args.trace:
        from .sw.runtime import ModelDevice
        from .sw.verify import program_for
        device = ModelDevice(cfg, timeline=True)
        device.load(program_for(cfg, args.seed, args.only))
        device.run()
        _write_outputs([(args.trace, _json_writer(device.chrome_trace(), compact=True))])
        print(f"trace: {args.trace} (program {args.only} on the cycle model; the RTL agreed to "
              f"the cycle: {'yes' if rtl and not report.mismatches else 'not run' if not rtl else 'NO'})")
    return 1 if report.mismatches else 0


def cmd_cost(args) -> int:
    from .hw.cost import BLOCKS, MATRIX_VARIANTS, matrix_unit_cost, node_cost
    cfg = config_from_args(args)
    names = [*BLOCKS, "glue"]
    if args.block is not None and args.block not in names:
        raise ValueError(f"--block {args.block!r}: not a block of the node; blocks: "
                         f"{', '.join(names)}")
    _check_writable(args.json, "--json")
    print(f"d1tile cost: one node of preset {cfg.name} (N = {cfg.mac_dim}, {cfg.sram_kib} KiB "
          f"SRAM), {cfg.rows}x{cfg.cols} grid; generic cells from Yosys, not mapped to a "
          "technology")
    report = node_cost(cfg, log=print)
    by_type = ({variant: matrix_unit_cost(cfg, variant, log=print)[0]
                for variant in MATRIX_VARIANTS} if args.block in (None, "matrix") else {})
    if report.cached:
        print("  (cached: build/cost/)")
    tile = report.tile(cfg.nodes)
    rows = [(name, report.blocks[name]) for name in names
            if args.block is None or name == args.block]
    if args.block is None:
        rows += [("node", report.node), (f"tile ({cfg.nodes} nodes)", tile)]
    print(f"  {'block':<16}{'cells':>11}{'flip-flops':>12}{'memory bits':>13}{'NAND2-eq':>12}")
    for name, b in rows:
        print(f"  {name:<16}{b.cells:>11,}{b.flops:>12,}{b.memory_bits:>13,}{b.nand2:>12,.0f}")
    if args.block is not None:
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(rows[0][1].by_kind.items(),
                                                          key=lambda kv: -kv[1]))
        print(f"  cells by kind: {kinds}")
    if by_type:
        print("  the matrix unit alone (without the engine that feeds it), by element type:")
        for variant, b in by_type.items():
            print(f"  {'unit ' + variant:<16}{b.cells:>11,}{b.flops:>12,}{b.memory_bits:>13,}"
                  f"{b.nand2:>12,.0f}")
        extra = by_type["int8+bf16"].nand2 - by_type["int8"].nand2
        print(f"  BF16 adds {extra:,.0f} NAND2-eq to an int8-only unit "
              f"({extra / by_type['int8'].nand2:.1f}x its size)")
    print("  NAND2-eq: transistors of static CMOS gates / 4, memory bits as 6T cells "
          "(docs/cost.md)")
    if args.json:
        out = report.to_json()
        out["matrix_unit_by_type"] = {
            v: {"cells": b.cells, "flops": b.flops, "nand2": b.nand2,
                "by_kind": b.by_kind} for v, b in by_type.items()}
        out["tile"] = {"nodes": cfg.nodes, "cells": tile.cells, "flops": tile.flops,
                       "memory_bits": tile.memory_bits, "nand2": tile.nand2}
        _write_outputs([(args.json, _json_writer(out))])
        print(f"  json          {args.json}")
    return 0


def cmd_sweep(args) -> int:
    from pathlib import Path
    from .sw.sweep import CSV_FILE, PLOT, RESULTS, load_spec, run_sweep
    spec_path, ray = args.spec, args.ray
    if spec_path is None and ray is not None and ray.endswith(".toml"):
        spec_path, ray = ray, "local"       # `sweep --ray SPEC.toml`: --ray took the spec
    if spec_path is None:
        raise ValueError("give the sweep's SPEC.toml (docs/sweeps.md)")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers {args.workers}: give at least 1")
    spec = load_spec(spec_path)
    out = Path(args.out) if args.out else Path("out") / Path(spec_path).stem
    summary = run_sweep(spec, out, workers=args.workers, ray=ray,
                        retry_errors=args.retry_errors, log=print)
    rate = (f", {summary.points_per_second:.2f} points/s" if summary.ran else "")
    failed = f", {summary.failed} failed (their rows say why)" if summary.failed else ""
    print(f"d1tile sweep: ran {summary.ran} points in {summary.seconds:.1f} s{rate}{failed}; "
          f"{summary.skipped} skipped (already there); {summary.rows} rows")
    print(f"  results       {out / RESULTS}, {out / CSV_FILE}")
    print(f"  plot          {out / PLOT}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="d1tile", description="A runnable model of a D1-style training tile.")
    parser.add_argument("--version", action="version", version=f"d1tile {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="print a configuration and its derived sizes")
    _add_config_options(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("run", help="compile an ONNX model onto the tile and run it")
    _add_config_options(p)
    p.add_argument("model", metavar="MODEL.onnx", help="the network (ONNX, opset 7 or later; below 13 upgraded)")
    p.add_argument("--input", required=True, metavar="X.npy",
                   help="the input batch (float, the model's input shape)")
    p.add_argument("--calib", metavar="C.npy",
                   help="calibration inputs for the int8 scales (default: the input itself)")
    p.add_argument("--dtype", choices=("int8", "bf16"), default="int8",
                   help="int8 (calibrated, quantised) or bf16 (the float model in BF16 with "
                        "FP32 accumulation, no calibration); default int8")
    p.add_argument("--backend", choices=("model", "rtl", "both"), default="model",
                   help="cycle model, Verilator RTL, or both compared (default: model)")
    p.add_argument("--labels", metavar="L.npy",
                   help="class labels of the inputs: report the accuracy (argmax of the output)")
    p.add_argument("--out", metavar="Y.npy",
                   help="write the outputs (dequantised, host ops applied); .npz for several")
    p.add_argument("--report", metavar="R.json", help="write the JSON report")
    p.add_argument("--trace", metavar="T.json",
                   help="write the cycle model's run as a Chrome / Perfetto trace (one process "
                        "per node, a track per engine; the last run when the batch is split)")
    p.add_argument("--plots", metavar="DIR",
                   help="write pictures into DIR (made if missing): utilisation.png (matrix "
                        "unit busy per node), links.png (flits per mesh link), layers.png "
                        "(cycles per layer against ideal)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train an MLP on the tile (forward, loss, backward, "
                       "all-reduce and SGD in one program), checked bit for bit")
    _add_config_options(p, default_preset="train")
    p.add_argument("model", metavar="MODEL.onnx", help="the network: Gemm/MatMul(+Add) layers "
                   "with ReLUs (an MLP), optionally ending in Softmax")
    p.add_argument("--data", required=True, metavar="X.npy", help="training samples [n, ...]")
    p.add_argument("--labels", required=True, metavar="Y.npy",
                   help="class labels [n] (one-hot targets for mse) or mse targets [n, classes]")
    p.add_argument("--val-data", metavar="V.npy", help="validation samples (accuracy per epoch)")
    p.add_argument("--val-labels", metavar="W.npy", help="validation class labels")
    p.add_argument("--loss", choices=("cross-entropy", "mse"), default="cross-entropy",
                   help="cross-entropy (default; the softmax on the host, the tile's vector unit "
                        "has no exp) or mse (on the tile; class labels become one-hot targets)")
    p.add_argument("--epochs", type=int, default=1, help="epochs (default 1)")
    p.add_argument("--batch", type=int, default=32,
                   help="mini-batch: mac_dim samples per node (default 32)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    p.add_argument("--momentum", type=float, default=0.9, help="momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--weights", choices=("fp32", "bf16-sr"), default="fp32",
                   help="fp32 master weights (default), or BF16 weights updated with "
                        "stochastic rounding (bf16-sr)")
    p.add_argument("--init", choices=("model", "random"), default="model",
                   help="start from the model's weights (default) or from He-normal ones")
    p.add_argument("--seed", type=int, default=0, help="batch order and --init random (default 0)")
    p.add_argument("--stages", type=int, metavar="S",
                   help="the layers in S groups over the grid's rows (default: the partition "
                        "the cycle model runs fastest, each candidate measured)")
    p.add_argument("--backend", choices=("model", "rtl", "both"), default="model",
                   help="model (default), rtl (Verilator), or both, compared")
    p.add_argument("--out", metavar="TRAINED.onnx", help="write the trained model")
    p.add_argument("--report", metavar="R.json", help="write the JSON report")
    p.add_argument("--trace", metavar="T.json",
                   help="write the cycle model's run as a Perfetto / Chrome trace")
    p.add_argument("--plots", metavar="DIR",
                   help="write loss.png: the loss per step, the tile's beside float32")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="the toy MLP and CNN compiled onto the tile and run, and "
                       "the toy MLP trained on it")
    _add_config_options(p)
    p.add_argument("--backend", choices=("model", "rtl", "both"), default="model",
                   help="cycle model, Verilator RTL, or both compared (default: model)")
    p.add_argument("--train-samples", type=int, default=DEMO_TRAIN_SAMPLES, metavar="N",
                   help=f"training digits for `train` (default {DEMO_TRAIN_SAMPLES}: 20 steps "
                        "per epoch)")
    p.add_argument("--models", default="mlp,cnn,train",
                   help="comma-separated (default: mlp,cnn,train; train: the toy MLP trained "
                        "on the tile)")
    p.add_argument("--batch", type=int,
                   help="test images, one batch (default: the whole test set, 360)")
    p.add_argument("--report", metavar="R.json", help="write the JSON reports")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("matrix-demo",
                       help="a random int8 or bf16 matrix product on the matrix unit's RTL")
    _add_config_options(p)
    p.add_argument("--dtype", choices=("int8", "bf16"), default="int8",
                   help="operand type (default int8; bf16 accumulates in FP32)")
    p.add_argument("--shape", nargs=3, type=int, metavar=("M", "K", "N"), default=(32, 64, 32),
                   help="matrix product shape (default: 32 64 32)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.set_defaults(func=cmd_matrix_demo)

    p = sub.add_parser("noc-stress", help="random traffic from every node through the mesh")
    _add_config_options(p)
    p.add_argument("--packets", type=int, default=2000, help="packets in total (default 2000)")
    p.add_argument("--rate", type=float,
                   help="offered load, flits per node per cycle, in (0, 1] (default 0.5)")
    p.add_argument("--sweep-rates", nargs="?", const=SWEEP_RATES, metavar="R,R,...",
                   help="run the same traffic at each offered load and print a line per load "
                        f"(default loads: {SWEEP_RATES}); instead of --rate")
    p.add_argument("--plots", metavar="DIR",
                   help="with --sweep-rates: write DIR/noc_latency.png, latency (mean, p99, "
                        "max) and delivered throughput against offered load")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument("--multicast", type=float, default=0.0, metavar="FRACTION",
                   help="the fraction of packets that are multicasts to a run of the source's "
                        "row or column, in [0, 1] (default 0)")
    p.add_argument("--backend", choices=("model", "rtl"), default="model")
    p.add_argument("--max-cycles", type=int, default=10_000_000, metavar="C",
                   help="stop (and fail) after C cycles if packets are still to be injected or "
                        "delivered (default 10,000,000)")
    p.set_defaults(func=cmd_noc_stress)

    p = sub.add_parser("cost", help="gates, flip-flops and memory bits per block, from the RTL "
                                    "(Yosys)")
    _add_config_options(p, default_preset="tiny")
    p.add_argument("--block", metavar="NAME", help="one block only, with its cells by kind")
    p.add_argument("--json", metavar="OUT.json", help="write the figures as JSON")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("verify", help="random programs on the cycle model and the RTL, compared")
    _add_config_options(p, default_preset="tiny")
    p.add_argument("--random-programs", type=int, default=20, metavar="N",
                   help="how many random programs (default 20)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument("--only", type=int, metavar="I",
                   help="run only program I of the N (the reproducer of a mismatch)")
    p.add_argument("--trace", metavar="T.json",
                   help="with --only I: write program I's run on the cycle model as a Chrome / "
                        "Perfetto trace")
    p.add_argument("--backend", choices=("rtl", "model"), default="rtl",
                   help="rtl (default): the cycle model, the Verilator RTL and the interpreter; "
                        "model: the cycle model against the interpreter only (no Verilator "
                        "build, any grid)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("sweep", help="configurations x workloads x seeds on the cycle model: "
                                     "a table (Parquet, CSV) and a Pareto plot")
    p.add_argument("spec", nargs="?", metavar="SPEC.toml",
                   help="the sweep: its grid, workloads and seeds (docs/sweeps.md)")
    p.add_argument("--out", metavar="DIR",
                   help="results.parquet, results.csv and pareto.png go here; points already "
                        "in it are skipped (default: out/<SPEC's name>)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes (or a local Ray's CPUs) running points at once (default: "
                        "the CPUs this process may use; 1: in this process); on a Ray "
                        "cluster, the most tasks in flight (default: no bound)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the points as Ray tasks: on a Ray started for the sweep, or on "
                        "the cluster at ADDRESS (auto, HOST:PORT, ray://HOST:10001)")
    p.add_argument("--retry-errors", action="store_true",
                   help="run again the points whose earlier rows are errors")
    p.set_defaults(func=cmd_sweep)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError) as exc:
        print(f"d1tile {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (CheckFailed, SimulationFailed) as exc:
        print(f"d1tile {args.command}: FAILED: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:   # tool missing, build failure: the message says what to do
        print(f"d1tile {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:     # Ctrl-C: outputs are written only at the end, atomically
        print(f"d1tile {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
