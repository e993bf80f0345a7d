"""Design-space sweeps: `d1tile sweep SPEC.toml` (docs/sweeps.md).

    spec = load_spec("examples/sweep.toml")        # SpecError (a ValueError) when it is wrong
    summary = run_sweep(spec, "out/sweep", workers=2)                # a local process pool
    summary = run_sweep(spec, "out/sweep", workers=2, ray="local")   # a Ray started for it
    rows = read_results("out/sweep")               # one dict per point

A spec names a grid of `TileConfig` fields (their cross product, over a preset), workloads (a
GEMM, an ONNX model with its input, a noc-stress load) and seeds; a *point* is one
(configuration, workload, seed) and runs on the cycle model (`run_point`), in a process of a
local pool (`concurrent.futures`, "spawn"), in a Ray task, or in this process (`workers=1`).

Every point gives one row (`COLUMNS`): its configuration, workload and seed, the code that ran
it, what it measured (cycles, utilisation, SRAM and instruction memory used, wall time) or its
error: a point that fails (does not compile, does not fit, disagrees with its reference, a
worker that died) is a row with `status` "error" and the message in `error`, never a traceback
and never lost. The rows are written to DIR/results.parquet and DIR/results.csv (the same
rows), rewritten atomically as points finish, so an interrupted sweep keeps what it finished;
a point whose key (`point_key`: a hash of the configuration's fields, the workload's parameters
and file contents, and the seed) is already in DIR is skipped, so running the spec again
resumes it. With `cost = true` the rows of each configuration get the node's and the tile's
area proxy (`d1tile.hw.cost`, NAND2 equivalents; cached per configuration). At the end,
DIR/pareto.png draws cycles against SRAM per node (and against the tile's area proxy when the
cost columns are there) per workload, with the Pareto front (`d1tile.sw.plots.sweep_pareto`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import socket
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from d1tile.params import PRESETS, ConfigError, TileConfig, parse_grid


__all__ = ["SpecError", "SweepSpec", "Workload", "Point", "SweepSummary", "COLUMNS",
           "COST_COLUMNS", "KINDS", "load_spec", "run_point", "run_sweep", "read_results",
           "point_key", "code_version", "node_area", "config_label"]

RESULTS, CSV_FILE, PLOT = "results.parquet", "results.csv", "pareto.png"
"""The files `run_sweep` writes into its directory."""

KINDS = ("gemm", "onnx", "noc", "train")
"""Workload kinds (docs/sweeps.md)."""

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TileConfig) if f.name != "name")
"""The TileConfig fields a grid can vary (and every row records); `name` is the `preset`."""

COLUMNS = [
    ("key", "string"), ("status", "string"), ("error", "string"),
    ("workload", "string"), ("kind", "string"), ("seed", "int"),
    ("preset", "string"), *[(f, "int") for f in CONFIG_FIELDS],
    ("nodes", "int"), ("peak_macs_per_cycle", "int"), ("dtype", "string"),
    ("cycles", "int"), ("total_cycles", "int"), ("ideal_cycles", "float"),
    ("utilisation", "float"), ("runs", "int"),
    ("sram_bytes_used", "int"), ("sram_use", "float"),
    ("imem_words_used", "int"), ("imem_use", "float"),
    ("latency_mean", "float"), ("latency_p99", "int"),
    ("wall_seconds", "float"), ("code_version", "string"), ("source_digest", "string"),
    ("host", "string"), ("workload_params", "string"),
]
"""The columns of a row, in order, with their types ("string", "int", "float"); empty (None)
where a workload does not report a figure (docs/sweeps.md, "Columns")."""

COST_COLUMNS = [("node_nand2", "float"), ("tile_nand2", "float"), ("cost_error", "string")]
"""The columns `cost = true` adds."""

_TYPES = dict(COLUMNS + COST_COLUMNS)

WRITE_EVERY = 5.0
"""Seconds between rewrites of the results while points finish (and once at the end)."""


class SpecError(ValueError):
    """A sweep spec that cannot run: the message names the file and what is wrong."""


# -- the spec ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    kind: str
    label: str
    params: dict                 # what the point key hashes (file contents as digests)
    record: dict                 # what the row's workload_params shows (file names too)
    seeded: bool                 # the seed changes what it runs (gemm operands, noc traffic)
    data: dict = field(default_factory=dict, compare=False, repr=False)   # file bytes


@dataclass(frozen=True)
class Point:
    index: int
    key: str
    config: TileConfig
    workload: Workload
    seed: int | None


@dataclass
class SweepSpec:
    path: Path
    configs: list
    workloads: list
    seeds: list
    cost: bool = False
    varying: tuple = ()          # the config fields the grid changes (for labels)

    def points(self) -> list[Point]:
        out = []
        for cfg in self.configs:
            for wl in self.workloads:
                for seed in (self.seeds if wl.seeded else [None]):
                    out.append(Point(len(out), point_key(cfg, wl, seed), cfg, wl, seed))
        return out


def point_key(cfg: TileConfig, workload: Workload, seed) -> str:
    """The point's identity: its configuration's fields (not the preset's name), the workload's
    parameters (an ONNX workload's files by content) and the seed."""
    text = json.dumps({"config": {f: getattr(cfg, f) for f in CONFIG_FIELDS},
                       "workload": workload.params, "seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_SWEEP_KEYS = ("preset", "seeds", "cost")
_WORKLOAD_KEYS = {
    "gemm": {"m": True, "k": True, "n": True, "dtype": False, "name": False},
    "onnx": {"model": True, "input": True, "calib": False, "dtype": False, "name": False},
    "noc": {"rate": True, "packets": False, "multicast": False, "max_cycles": False,
            "name": False},
    "train": {"model": True, "batch": False, "loss": False, "stages": False, "weights": False,
              "name": False},
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def load_spec(path) -> SweepSpec:
    """Read and check a sweep spec (TOML, docs/sweeps.md): every configuration is built, every
    file read and every ONNX model imported, so a spec that cannot run is refused here (one
    line, `SpecError`) before any point runs."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{where}: no such file") from None
    except OSError as exc:
        raise SpecError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{where}: not a valid TOML file ({exc})") from None

    def fail(message: str):
        raise SpecError(f"{where}: {message}")

    for key in data:
        if key not in ("sweep", "grid", "workload"):
            fail(f"unknown table or key {key!r} (known: [sweep], [grid], [[workload]])")
    sweep = data.get("sweep", {})
    grid = data.get("grid", {})
    if not isinstance(sweep, dict) or not isinstance(grid, dict):
        fail("[sweep] and [grid] must be tables")
    for key in sweep:
        if key not in _SWEEP_KEYS:
            fail(f"[sweep]: unknown key {key!r} (known: {', '.join(_SWEEP_KEYS)})")

    seeds = _as_list(sweep.get("seeds", [1]))
    if not seeds or not all(_is_int(s) for s in seeds):
        fail(f"[sweep] seeds = {sweep.get('seeds')!r}: give a list of integers")
    if len(set(seeds)) != len(seeds):
        fail(f"[sweep] seeds = {seeds}: a seed is repeated")
    cost = sweep.get("cost", False)
    if not isinstance(cost, bool):
        fail(f"[sweep] cost = {cost!r}: give true or false")

    configs, varying = _configs(sweep, grid, fail)
    items = data.get("workload")
    if items is None:
        fail("no [[workload]] tables: give at least one (kinds: " + ", ".join(KINDS) + ")")
    if not isinstance(items, list) or not all(isinstance(w, dict) for w in items):
        fail("workload must be an array of tables ([[workload]])")
    workloads = [_workload(i + 1, w, path.parent, fail) for i, w in enumerate(items)]
    labels = [w.label for w in workloads]
    for label in labels:
        if labels.count(label) > 1:
            fail(f"two workloads are both {label!r}: give them distinct names (name = \"...\")")
    return SweepSpec(path, configs, workloads, seeds, cost, varying)


def _configs(sweep: dict, grid: dict, fail) -> tuple[list, tuple]:
    """The configurations of the grid's cross product (in the order the spec lists its axes)."""
    known = ("preset", "grid", *CONFIG_FIELDS)
    if "preset" in sweep and "preset" in grid:
        fail("give the preset in [sweep] or as a [grid] axis, not both")
    axes = {}
    base = sweep.get("preset", "default")
    if not isinstance(base, str):
        fail(f"[sweep] preset = {base!r}: give a preset name ({', '.join(PRESETS)})")
    for key, value in grid.items():
        if key not in known:
            fail(f"[grid]: unknown field {key!r} (known: {', '.join(known)})")
        values = _as_list(value)
        if not values:
            fail(f"[grid] {key}: give at least one value")
        if len(set(map(str, values))) != len(values):
            fail(f"[grid] {key} = {values}: a value is repeated")
        for v in values:
            if key in ("preset", "grid") and not isinstance(v, str):
                fail(f"[grid] {key}: {v!r} is not a string"
                     + (' (write grids as "RxC", e.g. "2x2")' if key == "grid" else ""))
            if key not in ("preset", "grid") and not _is_int(v):
                fail(f"[grid] {key}: {v!r} is not an integer")
        axes[key] = values
    if "grid" in axes and ("rows" in axes or "cols" in axes):
        fail("[grid]: give grid = [\"RxC\", ...] or rows and cols, not both")
    for name in axes.get("preset", [base]):
        if name not in PRESETS:
            fail(f"preset {name!r} is not known (presets: {', '.join(PRESETS)})")
    configs, seen = [], set()
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        chosen = dict(zip(names, combo))
        preset = chosen.pop("preset", base)
        fields = {}
        try:
            if "grid" in chosen:
                fields["rows"], fields["cols"] = parse_grid(chosen.pop("grid"))
            fields.update(chosen)
            cfg = TileConfig.preset(preset, **fields)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in zip(names, combo))
            fail(f"[grid] {shown}: {exc}")
        ident = tuple(getattr(cfg, f) for f in CONFIG_FIELDS)
        if ident not in seen:
            seen.add(ident)
            configs.append(cfg)
    varying = tuple(f for f in CONFIG_FIELDS
                    if len({getattr(c, f) for c in configs}) > 1)
    return configs, varying


def _workload(number: int, w: dict, folder: Path, fail) -> Workload:
    kind = w.get("kind")
    what = f"workload {number}"
    if kind is None:
        fail(f"{what}: no kind (kinds: {', '.join(KINDS)})")
    if kind not in KINDS:
        fail(f"{what}: unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    what = f"workload {number} ({kind})"
    keys = _WORKLOAD_KEYS[kind]
    for key in w:
        if key != "kind" and key not in keys:
            fail(f"{what}: unknown key {key!r} (known: {', '.join(keys)})")
    for key, required in keys.items():
        if required and key not in w:
            fail(f"{what}: {key} is missing")
    name = w.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        fail(f"{what}: name must be a non-empty string")
    def positive(key: str, default=None) -> int:
        value = w.get(key, default)
        if not _is_int(value) or value < 1:
            fail(f"{what}: {key} = {value!r}: give a positive integer")
        return value

    dtype = w.get("dtype", "int8")
    if kind in ("gemm", "onnx") and dtype not in ("int8", "bf16"):
        fail(f"{what}: dtype {dtype!r}: give int8 or bf16")

    if kind == "gemm":
        for key in "mkn":
            positive(key)
        params = {"kind": kind, "m": w["m"], "k": w["k"], "n": w["n"], "dtype": dtype}
        label = name or f"gemm {w['m']}x{w['k']}x{w['n']} {dtype}"
        return Workload(kind, label, params, dict(params), True)

    if kind == "noc":
        rate = w["rate"]
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 < rate <= 1:
            fail(f"{what}: rate = {rate!r}: give the offered load in (0, 1] flits per node "
                 "per cycle")
        packets = positive("packets", 500)
        multicast = w.get("multicast", 0.0)
        if (not isinstance(multicast, (int, float)) or isinstance(multicast, bool)
                or not 0 <= multicast <= 1):
            fail(f"{what}: multicast = {multicast!r}: give a fraction in [0, 1]")
        max_cycles = positive("max_cycles", 1_000_000)
        params = {"kind": kind, "rate": float(rate), "packets": packets,
                  "multicast": float(multicast), "max_cycles": max_cycles}
        label = name or (f"noc {packets} packets at {rate:g}"
                         + (f", {multicast:g} multicast" if multicast else ""))
        return Workload(kind, label, params, dict(params), True)

    if kind == "train":
        batch = positive("batch", 32)
        loss = w.get("loss", "cross-entropy")
        if loss not in ("cross-entropy", "mse"):
            fail(f"{what}: loss {loss!r}: give cross-entropy or mse")
        stages = positive("stages", 1)
        weights = w.get("weights", "fp32")
        if weights not in ("fp32", "bf16-sr"):
            fail(f"{what}: weights {weights!r}: give fp32 or bf16-sr")
        if not isinstance(w["model"], str) or not w["model"]:
            fail(f"{what}: model must be a file name")
        file = folder / w["model"]
        try:
            blob = file.read_bytes()
        except OSError as exc:
            fail(f"{what}: model {w['model']}: cannot be read ({exc.strerror or exc})")
        try:
            _train_graph(blob, batch, loss)
        except ValueError as exc:
            fail(f"{what}: {exc}")
        params = {"kind": kind, "batch": batch, "loss": loss, "stages": stages,
                  "weights": weights, "model_sha256": hashlib.sha256(blob).hexdigest()}
        label = name or f"train {Path(w['model']).stem} b{batch} s{stages}"
        return Workload(kind, label, params, {**params, "model": w["model"]}, True,
                        {"model": blob})

    # onnx: the files are read here (shipped to the workers as bytes, so a Ray cluster's
    # nodes need not see them) and checked as `d1tile run` checks them
    data, digests, names = {}, {}, {}
    for key in ("model", "input", "calib"):
        if key not in w:
            continue
        if not isinstance(w[key], str) or not w[key]:
            fail(f"{what}: {key} must be a file name")
        file = folder / w[key]
        try:
            data[key] = file.read_bytes()
        except FileNotFoundError:
            fail(f"{what}: {key} {w[key]}: no such file ({file})")
        except OSError as exc:
            fail(f"{what}: {key} {w[key]}: cannot be read ({exc.strerror or exc})")
        digests[f"{key}_sha256"] = hashlib.sha256(data[key]).hexdigest()
        names[key] = w[key]
    try:
        _onnx_inputs(data)
    except ValueError as exc:
        fail(f"{what}: {exc}")
    params = {"kind": kind, "dtype": dtype, **digests}
    label = name or f"{Path(w['model']).stem} {dtype}"
    return Workload(kind, label, params, {**params, **names}, False, data)


def _load_npy(blob: bytes, what: str):
    import numpy as np
    from d1tile.sw.onnx_frontend import float32_input
    try:
        array = np.load(io.BytesIO(blob), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}: not a NumPy .npy array ({exc})") from None
    return float32_input(array, what)


def _onnx_inputs(data: dict):
    """(graph, x, calibration) of an ONNX workload's files; ValueError (a `CompileError` is
    one) when they do not make a runnable model and input."""
    from d1tile.sw.onnx_frontend import input_signature, load_onnx
    x = _load_npy(data["input"], "input")
    calib = _load_npy(data["calib"], "calib") if "calib" in data else x
    signature = input_signature(data["model"])
    if len(signature) != 1:
        raise ValueError(f"model: it has {len(signature)} inputs; a sweep feeds exactly one")
    (name, dims), = signature.items()
    if dims and (len(dims) != x.ndim
                 or any(isinstance(d, int) and d != n for d, n in zip(dims, x.shape))):
        shown = "[" + ", ".join(str(d if d is not None else "?") for d in dims) + "]"
        raise ValueError(f"input: shape {list(x.shape)}, the model's input '{name}' is {shown}")
    static = dims and all(isinstance(d, int) for d in dims)
    graph = load_onnx(data["model"], input_shapes=None if static else {name: x.shape})
    want = tuple(graph.shape(graph.inputs[0]))
    if tuple(calib.shape[1:]) != want[1:]:
        raise ValueError(f"calib: shape {list(calib.shape)}, the model's input samples are "
                         f"{list(want[1:])}")
    return graph, x, calib


# -- one point -----------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def code_version() -> tuple[str, str]:
    """(version, source digest) of the code this process runs: `git describe --always --dirty`
    of the checkout d1tile is imported from (the package version when it is not a git
    checkout), and a hash of every Python file of d1tile, d1tile.hw, d1tile.sim, d1tile.sw."""
    import d1tile
    import d1tile.hw
    import d1tile.sim
    import d1tile.sw
    h = hashlib.sha256()
    for package in (d1tile, d1tile.hw, d1tile.sim, d1tile.sw):
        for path in sorted(Path(package.__file__).parent.glob("*.py")):
            h.update(f"{package.__name__}/{path.name}".encode())
            h.update(path.read_bytes())
    version = d1tile.__version__
    root = Path(d1tile.__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty",
                                  "--tags"], capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                version = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return version, h.hexdigest()[:16]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    text = text[0] if text else ""
    name = type(exc).__name__
    line = f"{name}: {text}" if text else name
    return line if len(line) <= 500 else line[:497] + "..."


def _identity(point: Point) -> dict:
    """A row with the point's own columns filled (key, workload, seed, configuration)."""
    cfg, wl = point.config, point.workload
    row = {name: None for name, _ in COLUMNS}
    row.update({
        "key": point.key, "workload": wl.label, "kind": wl.kind, "seed": point.seed,
        "preset": cfg.name, **{f: getattr(cfg, f) for f in CONFIG_FIELDS},
        "nodes": cfg.nodes, "peak_macs_per_cycle": cfg.peak_macs_per_cycle,
        "dtype": wl.params.get("dtype"), "workload_params": json.dumps(wl.record, sort_keys=True),
    })
    return row


def error_row(point: Point, message: str) -> dict:
    """The row of a point that did not run to its end where it ran (its worker died, its
    task failed): the code that would have run it is unknown."""
    return {**_identity(point), "status": "error", "error": message}


def run_point(point: Point) -> dict:
    """Run one point on the cycle model: its row (`COLUMNS`). Never raises for the point's own
    failures: they are the row's `error` (status "error"), with what was measured before."""
    started = time.perf_counter()
    row = _identity(point)
    try:
        version, digest = code_version()
        row.update({"code_version": version, "source_digest": digest,
                    "host": socket.gethostname()})
        row.update(_RUNNERS[point.workload.kind](point.config, point.workload, point.seed))
    except Exception as exc:                       # noqa: BLE001 - becomes the row
        row["error"] = _one_line(exc)
    row["wall_seconds"] = time.perf_counter() - started
    row["status"] = "error" if row.get("error") else "ok"
    return row


def _words_covered(regions) -> int:
    """SRAM words at least one of the regions occupies (words reused after a barrier count
    once; the gaps the bank-aware placement leaves between regions not at all)."""
    covered, end = 0, 0
    for lo, hi in sorted((r.lo, r.hi) for r in regions):
        if hi > end:
            covered += hi - max(lo, end)
            end = hi
    return covered


def _memory_use(cfg: TileConfig, builder, tile_program) -> dict:
    """SRAM and instruction memory of the node that uses most of each: the SRAM words its
    program's regions ever occupy (`_words_covered`, in bytes and as a share of the node's
    SRAM) and its program's length (in instruction words and as a share of `imem_words`)."""
    words = max((_words_covered(s.regions) for s in builder.sram.values()), default=0)
    imem = max(len(tile_program.words_of(node)) for node in tile_program.nodes)
    return {"sram_bytes_used": words * cfg.word_bytes, "sram_use": words / cfg.sram_words,
            "imem_words_used": imem, "imem_use": imem / cfg.imem_words}


def _run_gemm(cfg: TileConfig, wl: Workload, seed: int) -> dict:
    from d1tile.dtypes import ElemType
    from d1tile.sim.tile import TileModel
    from d1tile.sw.kernels import gemm_matches_reference, random_gemm
    p = wl.params
    m, k, n = p["m"], p["k"], p["n"]
    dtype = ElemType[p["dtype"].upper()]
    tp, kb, out, x, w = random_gemm(cfg, m, k, n, seed, dtype)
    row = _memory_use(cfg, kb, tp)
    result = TileModel(cfg).run(tp)
    ideal = m * k * n / cfg.peak_macs_per_cycle
    row.update({"cycles": result.cycles, "total_cycles": result.total_cycles,
                "ideal_cycles": ideal, "utilisation": ideal / max(result.cycles, 1), "runs": 1})
    if result.faults or result.hang:
        row["error"] = f"the run failed: faults {dict(result.faults)}, hang {result.hang}"
        return row
    if not gemm_matches_reference(cfg, out, result, x, w, dtype):
        row["error"] = "mismatch: the tile's product differs from the reference"
    return row


def _run_onnx(cfg: TileConfig, wl: Workload, seed) -> dict:
    from d1tile.sw.compiler import compile_model
    from d1tile.sw.report import run_network
    graph, x, calib = _onnx_inputs(wl.data)
    dtype = wl.params["dtype"]
    compiled = compile_model(graph, cfg, calib if dtype == "int8" else None, dtype=dtype)
    row = _memory_use(cfg, compiled.builder, compiled.tile_program)
    report = run_network(compiled, x, ["model"]).report()
    row.update({"cycles": report["cycles"]["model"],
                "total_cycles": report["total_cycles_with_readback"]["model"],
                "ideal_cycles": report["ideal_cycles"],
                "utilisation": report["mac_utilisation"]["model"], "runs": report["runs"]})
    if not report["bit_exact"]:
        which = "integer" if dtype == "int8" else "bf16"
        row["error"] = (f"mismatch: the tile's outputs differ from the {which} reference (max "
                        f"|diff| {report['max_abs_diff_vs_reference']['model']})")
    return row


def _run_noc(cfg: TileConfig, wl: Workload, seed: int) -> dict:
    from d1tile.sim import noc
    p = wl.params
    stats = noc.run_model(cfg, packets=p["packets"], rate=p["rate"], seed=seed,
                          multicast=p["multicast"], max_cycles=p["max_cycles"])
    row = {"cycles": stats.cycles, "total_cycles": stats.cycles,
           "utilisation": stats.flits / max(stats.cycles * cfg.nodes, 1),
           "latency_mean": stats.latency_mean, "latency_p99": stats.latency_p99}
    if not stats.ok:
        problems = [f"{name} {getattr(stats, name)}" for name in
                    ("lost", "duplicated", "reordered", "broken", "misdelivered")
                    if getattr(stats, name)]
        if stats.deadlock:
            problems.append(f"deadlock: {stats.deadlock}")
        if stats.stopped:
            problems.append(f"stopped at max_cycles {p['max_cycles']:,} with "
                            f"{stats.planned - stats.injected} of {stats.planned} packets "
                            "never injected")
        row["error"] = "noc: " + "; ".join(problems)
    return row


def _train_graph(blob: bytes, batch: int, loss: str):
    """The training graph of a train workload's model at `batch` (ValueError if refused)."""
    from d1tile.sw.onnx_frontend import input_signature, load_onnx
    from d1tile.sw.train_run import _drop_softmax
    from d1tile.sw.training import training_graph
    signature = input_signature(blob)
    if len(signature) != 1:
        raise ValueError(f"model: it has {len(signature)} inputs; training takes exactly one")
    (name, dims), = signature.items()
    graph = load_onnx(blob, input_shapes={name: (batch, *[d for d in dims[1:]])})
    graph, _ = _drop_softmax(graph, loss)
    return training_graph(graph, loss)


def _run_train(cfg: TileConfig, wl: Workload, seed: int) -> dict:
    """Three training steps of the model from its own weights on random data (the timing does
    not depend on the values): the second step's cycles, checked bit for bit against the
    reference."""
    import numpy as np
    from d1tile.sim.tile import TileModel
    from d1tile.sw.train_kernels import TileTrainReference, TrainProgram, plan_training
    from d1tile.sw.train_run import _macs
    from d1tile.sw.training import Sgd
    p = wl.params
    tg = _train_graph(wl.data["model"], p["batch"], p["loss"])
    plan = plan_training(tg, cfg, p["batch"], stages=p["stages"])
    opt = Sgd(0.1, 0.9)
    program = TrainProgram(plan, tg.initial, opt, steps_per_epoch=3, weights=p["weights"],
                           seed=seed)
    rng = np.random.default_rng(seed)
    shape = tg.graph.shape(tg.graph.inputs[0])
    batches = [(rng.normal(size=shape), rng.integers(0, tg.classes, size=p["batch"])
                if p["loss"] == "cross-entropy" else rng.normal(size=(p["batch"], tg.classes)))
               for _ in range(3)]
    program.feed(batches)
    model = TileModel(cfg, trace=True)
    result = model.run(program.tp)
    row = {"sram_bytes_used": program.sram_words * cfg.word_bytes,
           "sram_use": program.sram_words / cfg.sram_words,
           "imem_words_used": program.program_words,
           "imem_use": program.program_words / cfg.imem_words, "runs": 1,
           "total_cycles": result.total_cycles}
    if result.faults or result.hang:
        row["error"] = f"the run failed: faults {dict(result.faults)}, hang {result.hang}"
        return row
    cycles = sum(v[1] for v in program.phase_cycles(model.issue_trace).values())
    ideal = _macs(plan) / cfg.peak_macs_per_cycle
    row.update({"cycles": cycles, "ideal_cycles": ideal, "utilisation": ideal / cycles})
    out = program.unpack(result)
    ref = TileTrainReference(plan, tg.initial, opt, weights=p["weights"], seed=seed)
    losses = [ref.step(x, y) for x, y in batches]
    if losses != out["losses"] or not all(np.array_equal(a, b) for a, b in
                                          zip(out["masters"], ref.master)):
        row["error"] = "mismatch: the tile's training differs from the reference"
    return row


_RUNNERS = {"gemm": _run_gemm, "onnx": _run_onnx, "noc": _run_noc, "train": _run_train}


# -- where the points run ------------------------------------------------------------------------

def _inline(points, workers, address, log):
    for point in points:
        yield point, run_point(point)


def _worker_init():
    """Pool workers leave Ctrl-C to the parent, which stops them (no tracebacks from them)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_pool(pool) -> None:
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.join(timeout=5)


def _pool(points, workers, address, log, *, isolate=True, fn=None):
    """A local process pool ("spawn": fresh interpreters, nothing inherited but the
    arguments). A worker that dies breaks the pool: its points are run again one at a time,
    each in a pool of its own, so only the point that kills its worker becomes an error.
    `fn`: what runs a point (default `run_point`; tests pass one that crashes)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    pool = ProcessPoolExecutor(max_workers=min(workers, len(points)),
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)
    broken = []
    finished = False
    try:
        futures = {pool.submit(fn or run_point, p): p for p in points}
        for future in as_completed(futures):
            point = futures[future]
            try:
                row = future.result()
            except BrokenProcessPool:
                broken.append(point)
                continue
            except Exception as exc:               # noqa: BLE001 - becomes the row
                row = error_row(point, f"the worker failed: {_one_line(exc)}")
            yield point, row
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            _stop_pool(pool)
    for point in sorted(broken, key=lambda p: p.index):
        if not isolate:
            yield point, error_row(point, "the worker process died while running this point "
                                          "(killed, out of memory, or a crash)")
            continue
        yield from _pool([point], 1, address, log, isolate=False, fn=fn)


def _ray(points, workers, address, log):
    """Ray tasks (one CPU each): on a Ray started for the run (`address` None: `ray.init` with
    `workers` CPUs, shut down at the end) or on an existing cluster (`address`: "auto",
    "HOST:PORT" from a node of the cluster, or "ray://HOST:10001" through Ray Client), where
    `workers`, when not None, bounds the tasks in flight (else the cluster's CPUs do)."""
    import logging
    import ray
    started = time.monotonic()
    options = {"include_dashboard": False, "log_to_driver": False,
               "logging_level": logging.ERROR}
    # A local Ray turns token authentication on for this process (and its workers) by setting
    # RAY_AUTH_MODE; it is put back as it was when the sweep ends.
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    try:
        if address is None:
            ray.init(address="local", num_cpus=workers, **options)
        else:
            options.pop("include_dashboard")
            ray.init(address=address, **options)
    except Exception as exc:                       # noqa: BLE001 - one line, exit 2
        _restore_env("RAY_AUTH_MODE", auth_mode)
        where = "a local Ray" if address is None else f"the Ray cluster at {address}"
        hint = ("" if address is None or auth_mode else
                " (a cluster with token authentication, Ray's default: set RAY_AUTH_MODE=token,"
                " with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise RuntimeError(f"--ray: cannot start or reach {where}: {_one_line(exc)}{hint}") \
            from None
    pending = {}
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        log(f"  Ray: {'started a local Ray' if address is None else 'connected to ' + address}"
            f" in {time.monotonic() - started:.1f} s, {cpus} CPUs")
        task = ray.remote(num_cpus=1, max_retries=0)(run_point)
        queue = list(points)
        limit = workers or len(points)
        while queue or pending:
            while queue and len(pending) < limit:
                point = queue.pop(0)
                pending[task.remote(point)] = point
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                point = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except Exception as exc:           # noqa: BLE001 - becomes the row
                    row = error_row(point, f"the Ray task failed: {_one_line(exc)}")
                yield point, row
    finally:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:                      # noqa: BLE001 - shutting down anyway
                pass
        ray.shutdown()
        _restore_env("RAY_AUTH_MODE", auth_mode)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


# -- results -------------------------------------------------------------------------------------

def _columns(rows) -> list[tuple[str, str]]:
    names = {name for row in rows for name in row}
    cols = list(COLUMNS)
    if names & {name for name, _ in COST_COLUMNS}:
        cols += COST_COLUMNS
    known = {name for name, _ in cols}
    cols += [(name, "extra") for name in sorted(names - known)]    # from another version
    return cols


def _arrow_schema(cols):
    import pyarrow as pa
    kinds = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(),
             "extra": pa.string()}
    return pa.schema([(name, kinds[kind]) for name, kind in cols])


def _csv_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)       # round-trips exactly
    return str(value)


def _from_csv(text: str, kind: str):
    if text == "":
        return None
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    return text


def write_results(folder, rows) -> None:
    """Write `rows` to folder/results.parquet and results.csv (the same rows and columns):
    both to temporary names first, then renamed, so a reader never sees half a file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder = Path(folder)
    cols = _columns(rows)
    def value(row, name, kind):
        v = row.get(name)
        return str(v) if kind == "extra" and v is not None else v   # kept, as text

    table = pa.Table.from_pylist([{name: value(row, name, kind) for name, kind in cols}
                                  for row in rows], schema=_arrow_schema(cols))
    tmps = [folder / f".{RESULTS}.tmp", folder / f".{CSV_FILE}.tmp"]
    try:
        pq.write_table(table, tmps[0])
        with open(tmps[1], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([name for name, _ in cols])
            for row in rows:
                writer.writerow([_csv_text(row.get(name)) for name, _ in cols])
        os.replace(tmps[0], folder / RESULTS)
        os.replace(tmps[1], folder / CSV_FILE)
    except OSError as exc:
        raise ValueError(f"cannot write the results in {folder}: {exc.strerror or exc}") from None
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()


def read_results(folder, *, source: str | None = None) -> list[dict]:
    """The rows in `folder`: results.parquet, or results.csv when there is no Parquet file
    (`source` "parquet" or "csv" to read that one); [] when neither is there."""
    folder = Path(folder)
    parquet, text = folder / RESULTS, folder / CSV_FILE
    if source == "csv" or (source is None and not parquet.exists() and text.exists()):
        try:
            with open(text, newline="") as f:
                reader = csv.reader(f)
                header = next(reader, [])
                return [{name: _from_csv(value, _TYPES.get(name, "string"))
                         for name, value in zip(header, line)} for line in reader]
        except (OSError, ValueError, csv.Error) as exc:
            raise ValueError(f"{text}: cannot read the earlier results ({exc})") from None
    if not parquet.exists():
        return []
    import pyarrow.parquet as pq
    try:
        return pq.read_table(parquet).to_pylist()
    except Exception as exc:                       # noqa: BLE001 - pyarrow's errors vary
        raise ValueError(f"{parquet}: cannot read the earlier results ({_one_line(exc)}); "
                         "move it away or give another --out") from None


def prepare_output(folder) -> Path:
    """Make `folder` if it is missing and check that the results and the plot can be written
    there; ValueError (one line) otherwise. Nothing else is written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder}: is a file, not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {folder}: cannot be made ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {folder}: the directory is not writable")
    for name in (RESULTS, CSV_FILE, PLOT):
        target = folder / name
        if target.is_dir():
            raise ValueError(f"--out {folder}: {name} is a directory")
        if target.exists() and not os.access(target, os.W_OK):
            raise ValueError(f"--out {folder}: {name} exists and is not writable")
        probe = folder / f".{name}.tmp"
        try:
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise ValueError(f"--out {folder}: cannot write {name} "
                             f"({exc.strerror or exc})") from None
    return folder


def _write_plot(folder: Path, rows, title: str) -> None:
    from d1tile.sw.plots import sweep_pareto
    tmp = folder / f".{PLOT}.tmp"
    try:
        sweep_pareto(tmp, rows, title)
        os.replace(tmp, folder / PLOT)
    except OSError as exc:
        raise ValueError(f"cannot write {folder / PLOT}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


# -- costs ---------------------------------------------------------------------------------------

def node_area(cfg: TileConfig, log=None) -> dict:
    """The area proxy of `cfg`'s node and tile, NAND2 equivalents (`d1tile.hw.cost.node_cost`:
    Yosys, minutes for a configuration it has not cached; `d1tile cost` caches it too)."""
    from d1tile.hw.cost import node_cost
    report = node_cost(cfg, log=log)
    return {"node_nand2": float(report.node.nand2),
            "tile_nand2": float(report.tile(cfg.nodes).nand2)}


def _config_of(row: dict) -> TileConfig:
    return TileConfig(name=row.get("preset") or "custom",
                      **{f: int(row[f]) for f in CONFIG_FIELDS})


def add_costs(rows, cost_fn, log) -> int:
    """Fill the cost columns of every row that has neither its figures nor a cost error, one
    `cost_fn(cfg, log)` per configuration; a configuration whose cost fails gets the message
    in `cost_error`. Returns the configurations costed."""
    todo = {}
    for row in rows:
        if row.get("node_nand2") is None and not row.get("cost_error"):
            try:
                cfg = _config_of(row)
            except (ConfigError, KeyError, TypeError, ValueError) as exc:
                row["cost_error"] = _one_line(exc)
                continue
            todo.setdefault(tuple(getattr(cfg, f) for f in CONFIG_FIELDS), (cfg, []))[1].append(row)
    for number, (cfg, group) in enumerate(todo.values(), 1):
        log(f"  cost {number}/{len(todo)}: {cfg.key}")
        try:
            figures = cost_fn(cfg, log)
            values = {"node_nand2": float(figures["node_nand2"]),
                      "tile_nand2": float(figures["tile_nand2"]), "cost_error": None}
        except Exception as exc:                   # noqa: BLE001 - becomes the rows' column
            values = {"node_nand2": None, "tile_nand2": None, "cost_error": _one_line(exc)}
        for row in group:
            row.update(values)
    return len(todo)


# -- the sweep -----------------------------------------------------------------------------------

@dataclass
class SweepSummary:
    points: int                  # in the spec
    skipped: int                 # already in the output
    ran: int
    failed: int                  # of those run
    seconds: float               # running the points (Ray's start-up included)
    rows: int                    # in the output now
    folder: Path
    costed: int = 0              # configurations whose cost was computed or read

    @property
    def points_per_second(self) -> float:
        return self.ran / self.seconds if self.seconds > 0 else math.nan


_SHORT = {"rows": "rows", "cols": "cols", "mac_dim": "N", "sram_kib": "KiB",
          "sram_banks": "banks", "router_fifo_depth": "fifo", "imem_words": "imem"}


def config_label(values: dict, varying=None) -> str:
    """A short name of a configuration (a row or {field: value}) by the fields that vary
    (`varying`; all when None; none: the preset's name): "2x2 N=4 KiB=8"."""
    fields = list(CONFIG_FIELDS if varying is None else varying)
    parts = []
    if "rows" in fields or "cols" in fields:
        parts.append(f"{values['rows']}x{values['cols']}")
    parts += [f"{_SHORT[f]}={values[f]}" for f in fields if f not in ("rows", "cols")]
    return " ".join(parts) or str(values.get("preset", ""))


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run_sweep(spec: SweepSpec, folder, *, workers: int | None = None, ray: str | None = None,
              retry_errors: bool = False, cost_fn=None, log=print) -> SweepSummary:
    """Run the points of `spec` not yet in `folder` (module docstring) and write the results
    and the plot there. `ray`: None (a process pool of `workers`, or this process when
    `workers` is 1), "local" (a Ray started for the run with `workers` CPUs) or a cluster's
    address (`workers`: the tasks in flight). `workers` None: the CPUs this process may use
    (on a cluster: no bound). `retry_errors`: run the points whose row is an error again
    (their rows are replaced). `cost_fn(cfg, log)` -> {"node_nand2", "tile_nand2"}: the cost
    columns' source when the spec asks for them (default `node_area`), called after the
    points have run and their rows are written."""
    if workers is not None and (not _is_int(workers) or workers < 1):
        raise ValueError(f"--workers {workers}: give at least 1")
    address = None if ray in (None, "local") else ray
    if workers is None and address is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    if ray is not None:
        try:
            import ray as _ray_module  # noqa: F401 - only whether it is there
        except ImportError:
            raise ValueError("--ray needs Ray: pip install 'd1tile[sweep]' (`make .venv` "
                             "installs it)") from None
    folder = prepare_output(folder)
    old = read_results(folder)
    points = spec.points()
    keys = {p.key for p in points}
    done = {row["key"] for row in old
            if row.get("key") and (row.get("status") == "ok" or not retry_errors)}
    todo = [p for p in points if p.key not in done]
    if retry_errors:
        again = {p.key for p in todo}
        old = [row for row in old if row.get("key") not in again]
    where = ("in this process" if ray is None and workers == 1 else
             f"on a process pool of {min(workers, max(len(todo), 1))} workers" if ray is None
             else f"on a local Ray of {workers} CPUs" if ray == "local"
             else f"on the Ray cluster at {ray}"
             + (f", at most {workers} at a time" if workers else ""))
    seeded = any(w.seeded for w in spec.workloads)
    log(f"d1tile sweep: {spec.path}: {_count(len(points), 'point')} ("
        f"{_count(len(spec.configs), 'configuration')} x {_count(len(spec.workloads), 'workload')}"
        + (f" x {_count(len(spec.seeds), 'seed')}" if seeded else "")
        + f"), {len(points) - len(todo)} already in {folder}"
        + (f"; running {len(todo)} {where}" if todo else ": nothing to run"))
    run = {"pool": _pool, "inline": _inline, "ray": _ray}[
        "inline" if ray is None and workers == 1 else "pool" if ray is None else "ray"]
    new, failed = {}, 0
    started = last_write = time.monotonic()
    title = f"d1tile sweep {spec.path.name}"

    def rows_now():
        return old + [new[i] for i in sorted(new)]

    generator = run(todo, workers, address, log) if todo else _inline([], 1, None, log)
    try:
        for point, row in generator:
            new[point.index] = row
            label = config_label(row, spec.varying)
            seed = f" seed {point.seed}" if point.seed is not None else ""
            if row["status"] == "ok":
                util = (f", utilisation {100 * row['utilisation']:.1f} %"
                        if row.get("utilisation") is not None else "")
                result = f"{row['cycles']:,} cycles{util}"
            else:
                failed += 1
                result = f"FAILED: {row['error']}"
            wall = f" ({row['wall_seconds']:.2f} s)" if row.get("wall_seconds") is not None else ""
            log(f"  [{len(new)}/{len(todo)}] {label} | {point.workload.label}{seed}: "
                f"{result}{wall}")
            if time.monotonic() - last_write >= WRITE_EVERY:
                write_results(folder, rows_now())
                last_write = time.monotonic()
    except BaseException:
        generator.close()
        if new:     # keep what finished: the next run resumes from it
            try:
                write_results(folder, rows_now())
            except ValueError as exc:
                log(f"d1tile sweep: {exc}")
        raise
    seconds = time.monotonic() - started
    rows = rows_now()
    costed = 0
    if spec.cost:
        write_results(folder, rows)      # the points' rows are safe while the costs run
        costed = add_costs([r for r in rows if r.get("key") in keys], cost_fn or node_area, log)
    write_results(folder, rows)
    _write_plot(folder, rows, title)
    return SweepSummary(len(points), len(points) - len(todo), len(todo), failed, seconds,
                        len(rows), folder, costed)
