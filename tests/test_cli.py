"""The command line: bad input gives one clear line and exit status 2, never a traceback."""

import subprocess
import sys

import pytest

from d1tile.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "d1tile.cli", *args], capture_output=True,
                          text=True)


@pytest.mark.parametrize("args, message", [
    (["config", "--preset", "huge"], "unknown preset 'huge'"),
    (["config", "--grid", "4by4"], "grid '4by4' is not of the form RxC"),
    (["config", "--grid", "0x4"], "rows=0 is outside the supported range"),
    (["demo", "--preset", "tiny", "--shape", "0", "4", "4"], "m"),
])
def test_bad_input_is_one_line_and_status_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_config_prints_derived_sizes(capsys):
    assert main(["config", "--preset", "tiny", "--grid", "3x2"]) == 0
    out = capsys.readouterr().out
    assert "rows=3, cols=2" in out
    assert "peak_macs_per_cycle (grid)" in out and " 96" in out   # 6 nodes x 16 MACs
