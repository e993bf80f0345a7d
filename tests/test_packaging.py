"""`pip install .` (not only an editable install) gives one import package, d1tile, with its
sub-packages hw, sim and sw, and the `d1tile` console script."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_one_package_with_its_subpackages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "--disable-pip-version-check", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel, = tmp_path.glob("d1tile-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.startswith("d1tile-")}
    assert top_level == {"d1tile"}, f"unexpected top-level entries: {top_level}"
    for module in ("d1tile/params.py", "d1tile/hw/verilator.py", "d1tile/sim/__init__.py",
                   "d1tile/sw/__init__.py"):
        assert module in names, f"{module} missing from the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "d1tile = d1tile.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                    "--disable-pip-version-check", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import d1tile.hw.verilator, "
             "d1tile.formats; print(d1tile.__file__)")
    out = subprocess.run([sys.executable, "-c", probe, str(target)], check=True,
                         capture_output=True, text=True).stdout
    assert out.strip().startswith(str(target)), out


def test_a_verilator_build_on_a_terminal_shows_its_progress(tmp_path, capsys, monkeypatch):
    """While a build runs, a terminal gets a line every PROGRESS_SECONDS with the elapsed time
    and the C++ files compiled out of those written; not a log or CI (no terminal)."""
    import time
    from d1tile.hw import verilator
    for name in ("a.cpp", "b.cpp", "c.cpp", "d.cpp"):
        (tmp_path / name).write_text("")
    (tmp_path / "a.o").write_text("")
    monkeypatch.setattr(verilator, "PROGRESS_SECONDS", 0.05)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    with verilator._progress(tmp_path, "tile", time.monotonic(), print):
        time.sleep(0.3)
    out = capsys.readouterr().out
    assert "[d1tile] building tile: 0 s [#####...............] 1/4 C++ files" in out
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    with verilator._progress(tmp_path, "tile", time.monotonic(), print):
        time.sleep(0.2)
    assert capsys.readouterr().out == ""


def test_a_verilator_build_can_be_compiled_at_another_optimisation(monkeypatch):
    """D1TILE_VERILATOR_OPT (for designs too large to build at -Os here): the hot code's flag
    in the make flags; anything but a g++ -O level refused in one line."""
    import pytest
    from d1tile.hw import verilator
    monkeypatch.delenv(verilator.OPT_ENV, raising=False)
    assert "OPT_FAST" not in verilator.verilator_env()["MAKEFLAGS"]
    monkeypatch.setenv(verilator.OPT_ENV, "-O0")
    assert verilator.verilator_env()["MAKEFLAGS"].endswith(" OPT_FAST=-O0")
    monkeypatch.setenv(verilator.OPT_ENV, "-march=native")
    with pytest.raises(ValueError, match="D1TILE_VERILATOR_OPT='-march=native': give one of"):
        verilator.verilator_env()
