"""The Snakemake report shows the results: each table as an HTML page its viewer renders (the CSV
stays the versioned output), figures with captions, and `make report` runs the DAG before reporting.
"""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import pytest

from conftest import PAPER, ROOT, SMOKE
from densepred.params_loading import load_params
from densepred.pipeline import build_stages
from densepred.tables import write_html_table
from project_fixtures import run


def embedded_results(report: str) -> dict[str, dict]:
    """The report's results (path -> entry with mime_type, caption and data_uri)."""
    start = report.index("var results = {") + len("var results = ")
    results, _ = json.JSONDecoder().raw_decode(report, start)
    return results


def data(entry: dict) -> str:
    head, _, payload = entry["data_uri"].partition(",")
    assert head.endswith(";base64"), head
    return base64.b64decode(payload).decode()


def test_html_page_holds_every_cell_of_the_csv(tmp_path):
    page = tmp_path / "table2.html"
    write_html_table(ROOT / "results" / "table2.csv", page)
    html = page.read_text()
    rows = list(csv.reader((ROOT / "results" / "table2.csv").open()))
    assert html.count("<tr") == len(rows)
    for row in rows:
        assert all(f"<td>{cell}</td>" in html or f"<th>{cell}</th>" in html for cell in row if cell)


@pytest.mark.parametrize("params", [SMOKE, PAPER], ids=["smoke", "paper"])
def test_every_table_and_figure_has_a_caption(params):
    stages = [s for s in build_stages(load_params(params), params) if s.kind == "tables"]
    outs = [o for s in stages for o in s.outs if o != s.record]  # a record is no table or figure
    assert any(o.endswith(".png") for o in outs)
    for out in outs:
        assert (ROOT / "workflow" / "report" / f"{Path(out).stem}.rst").is_file(), out


def test_make_report_runs_the_dag_first():
    recipe = re.search(r"^report:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    commands = [line.strip() for line in recipe.splitlines()]
    assert "--report" not in commands[0] and commands[0].endswith("results/all"), commands
    assert "--report report.html results/all" in commands[1], commands


@pytest.mark.slow
def test_report_shows_table2_as_a_table(built_project, tmp_path):
    report = tmp_path / "report.html"
    run(built_project, "snakemake", "--cores", "2", "--report", str(report), "results/all")
    results = embedded_results(report.read_text())
    assert set(results) == {f"results/html/{t}.html" for t in ("table2", "table2_runs", "table3")}
    entry = results["results/html/table2.html"]
    assert entry["mime_type"] == "text/html"  # the viewer shows it in a frame, not as a download
    assert "NYUD-v2 test results" in entry["caption"]
    page = data(entry)
    for row in csv.DictReader((built_project / "results" / "table2.csv").open()):
        cells = re.search(rf"<tr>\s*(?:<td>[^<]*</td>\s*)*<td>{row['job']}</td>.*?</tr>", page, re.S)
        assert cells, f"no row for {row['job']}"
        assert f"<td>{row['depth_rms']}</td>" in cells.group(0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "pages"),
    [("results/table2.csv", ("table2", "table2_runs")), ("results/table3.csv", ("table3",))],
)
def test_report_of_a_table_target_shows_that_table(built_project, tmp_path, target, pages):
    """The report of one table's path (not results/all) holds that table's page(s): the tables stage
    writes them itself."""
    report = tmp_path / "report.html"
    run(built_project, "snakemake", "--cores", "1", "--report", str(report), target)
    results = embedded_results(report.read_text())
    assert set(results) == {f"results/html/{page}.html" for page in pages}
    for page in pages:
        entry = results[f"results/html/{page}.html"]
        assert entry["mime_type"] == "text/html"
        rows = list(csv.reader((built_project / "results" / f"{page}.csv").open()))
        html = data(entry)
        assert html.count("<tr") == len(rows) and all(f"<th>{name}</th>" in html for name in rows[0])
        assert all(f"<td>{cell}</td>" in html for row in rows[1:] for cell in row if cell)
    if "table2" in pages:
        rows = list(csv.DictReader((built_project / "results" / "table2.csv").open()))
        # both jobs, then the trivial reference of their one task
        assert [r["model"] == "reference" for r in rows] == [False, False, True]
