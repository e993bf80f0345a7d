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
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{option} {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{option} {path}: not a NumPy .npy array ({exc})") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{option} {path}: expected a numeric .npy array")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{option} {path}: complex values ({array.dtype}) are not supported")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{option} {path}: contains NaN or infinite values")
    with np.errstate(over="ignore"):
        out = array.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{option} {path}: values beyond float32's range (up to "
                         f"{float(np.max(np.abs(array))):.4g})")
    return out


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


def _write_outputs(outputs: list) -> None:
    """[(path, write)]: every `write(tmp_path)` first, then the renames, so a failure leaves
    no output at all (nor a half-written one); an OS error is one line (ValueError)."""
    import os
    from pathlib import Path
    tmps = [(Path(path).with_name(f".{Path(path).name}.tmp"), path, write)
            for path, write in outputs]
    try:
        for tmp, _, write in tmps:
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
    from .sw.onnx_frontend import input_signature, load_onnx
    from .sw.quant import finish_on_host, range_warnings
    from .sw.report import run_network, summary
    cfg = config_from_args(args)
    backends = _backends(args.backend)
    _check_writable(args.out, "--out")
    _check_writable(args.report, "--report", ("--out", args.out))
    _check_writable(args.trace, "--trace", ("--out", args.out), ("--report", args.report))
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
    signature = input_signature(args.model)
    if len(signature) != 1:
        raise ValueError(f"{args.model}: the model has {len(signature)} inputs; `d1tile run` "
                         "feeds exactly one")
    (name, dims), = signature.items()
    shown = "[" + ", ".join(str(d if d is not None else "?") for d in dims) + "]"
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
    if args.report:
        files.append((args.report, _json_writer(report)))
    if args.trace:
        files.append((args.trace, _json_writer(net.chrome_trace, compact=True)))
    _write_outputs(files)
    if args.out:
        print(f"  outputs       {args.out}")
    if args.report:
        print(f"  report        {args.report}")
    if args.trace:
        print(f"  trace         {args.trace} (the cycle model's run; open it in "
              "ui.perfetto.dev)")
    _check_run([report])
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
        if name not in TOY_MODELS:
            raise ValueError(f"--models: unknown model {name!r}; known: {', '.join(TOY_MODELS)}")
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
    exact = all(r["bit_exact"] for r in reports)
    print(f"all outputs bit-exact with the integer reference: {'yes' if exact else 'NO'}")
    if "rtl" in backends and "model" in backends:
        same = all(r["model_and_rtl_identical"] for r in reports)
        verdict = "identical cycles, counters and outputs" if same else "DIFFERENT"
        print(f"cycle model and RTL: {verdict}")
    if args.report:
        _save_report(args.report, {r["model"]: r for r in reports})
        print(f"report: {args.report}")
    _check_run(reports)
    return 0


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


def cmd_noc_stress(args) -> int:
    from .sim import noc
    cfg = config_from_args(args)
    if args.backend == "rtl":
        from .hw.noc_run import run_rtl as run
    else:
        run = noc.run_model
    kwargs = {"log": print} if args.backend == "rtl" else {}
    # Argument errors surface before anything is printed.
    traffic = noc.NocTraffic(cfg, packets=args.packets, rate=args.rate, seed=args.seed,
                             multicast=args.multicast)
    if args.max_cycles < 1:
        raise ValueError(f"--max-cycles {args.max_cycles}: give at least 1")
    if traffic.expected_cycles() > args.max_cycles:
        print(f"d1tile noc-stress: warning: at --rate {args.rate} generating {args.packets} "
              f"packets takes about {traffic.expected_cycles():,} cycles, more than --max-cycles "
              f"{args.max_cycles:,}")
    mc = f" ({args.multicast:g} of them multicasts)" if args.multicast else ""
    print(f"d1tile noc-stress: {cfg.rows}x{cfg.cols} mesh ({args.preset}), {args.packets} packets"
          f"{mc} at {args.rate} flits/node/cycle, seed {args.seed}, backend {args.backend}")
    stats = run(cfg, packets=args.packets, rate=args.rate, seed=args.seed,
                multicast=args.multicast, max_cycles=args.max_cycles, **kwargs)
    print(stats.summary())
    if stats.stopped and not (stats.duplicated or stats.reordered or stats.broken
                              or stats.misdelivered or stats.deadlock):
        raise CheckFailed(f"stopped at --max-cycles {args.max_cycles:,} with "
                          f"{stats.planned - stats.injected} of {stats.planned} packets never "
                          "injected (raise --max-cycles or --rate)")
    if not stats.ok:
        raise CheckFailed("packets were lost, duplicated, reordered or broken, or the mesh stalled")
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
    report = verify(cfg, args.random_programs, args.seed, only=args.only, rtl=rtl)
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
    from .hw.cost import BLOCKS, node_cost
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
    print("  NAND2-eq: transistors of static CMOS gates / 4, memory bits as 6T cells "
          "(docs/cost.md)")
    if args.json:
        out = report.to_json()
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
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the toy MLP and CNN compiled onto the tile and run")
    _add_config_options(p)
    p.add_argument("--backend", choices=("model", "rtl", "both"), default="model",
                   help="cycle model, Verilator RTL, or both compared (default: model)")
    p.add_argument("--models", default="mlp,cnn", help="comma-separated (default: mlp,cnn)")
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
    p.add_argument("--rate", type=float, default=0.5,
                   help="offered load, flits per node per cycle, in (0, 1] (default 0.5)")
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
