"""The committed smoke results are what the suite claims of them: every model in table 2 and every
ablation trial beats the trivial reference of its task by the margins of densepred/table_check.py
(README "Current smoke results"). The end-to-end test rebuilds table 2; this reads the files."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import ROOT
from densepred.table_check import REFERENCE_MARGINS, margin_failures

RESULTS = ROOT / "results"


@pytest.fixture(scope="module")
def references() -> pd.DataFrame:
    table = pd.read_csv(RESULTS / "table2.csv")
    rows = table[table["model"] == "reference"]
    assert sorted(rows["tasks"]) == ["depth", "edge", "normals", "semseg"]
    return rows


def test_every_table2_model_beats_the_reference(references):
    table = pd.read_csv(RESULTS / "table2.csv")
    failures = margin_failures(table[table["model"] != "reference"], references)
    assert not failures, f"margins {REFERENCE_MARGINS}: " + "; ".join(failures)


@pytest.mark.parametrize("name", sorted(p.name for p in RESULTS.glob("ablation_*.csv")))
def test_every_ablation_trial_beats_the_reference(references, name):
    trials = pd.read_csv(RESULTS / name)
    trials["trial"] = trials["sweep"] + "/" + trials["variant"]
    assert (trials["status"] == "ok").all(), trials[trials["status"] != "ok"][["trial", "status"]]
    failures = margin_failures(trials, references, label="trial")
    assert not failures, f"{name}, margins {REFERENCE_MARGINS}: " + "; ".join(failures)
