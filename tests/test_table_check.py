"""`densepred check-table`: a rebuilt table against a committed one, within tolerances or exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from densepred.table_check import check_report

HEADER = "model,job,tasks,miou_pct,depth_rms,params_m\n"


def _write(path: Path, miou: str, rms: str) -> Path:
    path.write_text(HEADER + f"polymax,polymax_depth,depth,,{rms},0.5\nstl,stl_semseg,semseg,{miou},,0.4\n")
    return path


def test_a_cell_within_tolerance_passes_unless_exact(tmp_path):
    committed = _write(tmp_path / "committed.csv", "10.00", "1.0000")
    built = _write(tmp_path / "built.csv", "10.20", "1.0050")  # 0.2 points, 0.5 %
    ok, report = check_report(built, committed)
    assert ok and "2 cells moved, all within tolerance" in report, report
    ok, report = check_report(built, committed, exact=True)
    assert not ok, report
    assert "stl_semseg: miou_pct 10.00 -> 10.20" in report and "polymax_depth: depth_rms" in report, report


def test_a_cell_beyond_tolerance_fails_and_is_named(tmp_path):
    committed = _write(tmp_path / "committed.csv", "10.00", "1.0000")
    built = _write(tmp_path / "built.csv", "10.40", "1.0000")
    ok, report = check_report(built, committed)
    assert not ok
    assert "1 cells beyond tolerance" in report and "stl_semseg: miou_pct 10.00 -> 10.40" in report, report


def test_equal_tables_are_bitwise_equal_and_the_cli_exits_by_the_verdict(tmp_path):
    committed = _write(tmp_path / "committed.csv", "10.00", "1.0000")
    same = _write(tmp_path / "same.csv", "10.00", "1.0000")
    moved = _write(tmp_path / "moved.csv", "10.10", "1.0000")
    verdict = (True, f"{same} reproduces {committed}: bitwise equal")
    assert check_report(same, committed, exact=True) == verdict
    cli = [sys.executable, "-m", "densepred.cli", "check-table"]
    assert subprocess.run([*cli, str(moved), str(committed)], capture_output=True).returncode == 0
    exact = subprocess.run([*cli, "--exact", str(moved), str(committed)], capture_output=True, text=True)
    assert exact.returncode == 1 and "miou_pct 10.00 -> 10.10" in exact.stdout, exact.stdout + exact.stderr
