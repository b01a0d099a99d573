"""Faults in the params file and on the command line: each names the file and the key or value, exits
with status 2 and writes nothing."""

from __future__ import annotations

import pytest
import yaml

from conftest import SMOKE, write_params
from fault_helpers import assert_fault, run_main

pytestmark = pytest.mark.faults


def synth(params, out, *sets: str) -> list[str]:
    return [
        "synth",
        "--params",
        params,
        "--dataset",
        "nyud",
        "--out",
        out,
        *(a for s in sets for a in ("--set", s)),
    ]


def test_typo_in_a_key_is_named(tmp_path, smoke_tree, capsys):
    smoke_tree["synth"]["nyud"]["num_imgs"] = 3
    path = write_params(smoke_tree, tmp_path / "typo.yaml")
    outcome = run_main(synth(path, tmp_path / "raw"), capsys)
    assert_fault(outcome, str(path), "synth.nyud.num_imgs: unknown key")
    assert not (tmp_path / "raw").exists()


def test_value_of_the_wrong_type_is_named(tmp_path, capsys):
    outcome = run_main(synth(SMOKE, tmp_path / "raw", "jobs.polymax_depth.model.num_clusters=many"), capsys)
    assert_fault(outcome, str(SMOKE), "jobs.polymax_depth.model.num_clusters", "valid integer", "'many'")
    assert not (tmp_path / "raw").exists()


def test_value_out_of_range_is_named(tmp_path, capsys):
    outcome = run_main(synth(SMOKE, tmp_path / "raw", "datasets.nyud.max_bad_fraction=2"), capsys)
    assert_fault(outcome, "datasets.nyud.max_bad_fraction", "less than or equal to 1")
    assert not (tmp_path / "raw").exists()


def test_missing_required_key_is_named(tmp_path, smoke_tree, capsys):
    del smoke_tree["datasets"]["nyud"]["raw"]
    path = write_params(smoke_tree, tmp_path / "missing.yaml")
    outcome = run_main(synth(path, tmp_path / "raw"), capsys)
    assert_fault(outcome, str(path), "datasets.nyud.raw: Field required")
    assert not (tmp_path / "raw").exists()


def test_unknown_key_in_set_is_named(tmp_path, capsys):
    outcome = run_main(synth(SMOKE, tmp_path / "raw", "runtime.devcie=cpu"), capsys)
    assert_fault(outcome, "runtime.devcie: unknown key", "--set runtime.devcie=cpu")
    assert not (tmp_path / "raw").exists()


def test_set_without_equals_sign_is_explained(tmp_path, capsys):
    outcome = run_main(synth(SMOKE, tmp_path / "raw", "runtime.device"), capsys)
    assert_fault(outcome, "--set 'runtime.device'", "expected KEY=VALUE")
    assert not (tmp_path / "raw").exists()


def test_unknown_job_is_named(tmp_path, capsys):
    args = ["train", "--params", SMOKE, "--job", "nope", "--stage", "finetune", "--out", tmp_path / "run"]
    assert_fault(run_main(args, capsys), "no job named 'nope'")
    assert not (tmp_path / "run").exists()


def test_unknown_sweep_is_named(tmp_path, capsys):
    args = ["tune", "--params", SMOKE, "--sweep", "nope", "--out", tmp_path / "sweep"]
    assert_fault(run_main(args, capsys), "no sweep named 'nope'")
    assert not (tmp_path / "sweep").exists()


def test_params_file_not_utf8_is_named(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    text = SMOKE.read_text().replace("# Smoke profile", "# Profil d'essai: réglages", 1)
    path.write_bytes(text.encode("latin-1"))
    outcome = run_main(synth(path, tmp_path / "raw"), capsys)
    assert_fault(outcome, str(path), "not UTF-8", "0xe9")
    assert not (tmp_path / "raw").exists()


def test_missing_params_file_is_named(tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    assert_fault(run_main(synth(path, tmp_path / "raw"), capsys), f"params file not found: {path}")


def test_invalid_yaml_is_named(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("seed: [0\nprofile: smoke\n")
    assert_fault(run_main(synth(path, tmp_path / "raw"), capsys), str(path), "not valid YAML")


def test_params_that_are_not_a_mapping_are_named(tmp_path, capsys):
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    assert_fault(run_main(synth(path, tmp_path / "raw"), capsys), str(path), "expected a mapping")


def test_debug_flag_prints_the_traceback_too(tmp_path, capsys):
    outcome = run_main([*synth(SMOKE, tmp_path / "raw", "runtime.devcie=cpu"), "--debug"], capsys)
    assert outcome.code == 2 and "Traceback" in outcome.err and "runtime.devcie: unknown key" in outcome.err


def test_repeated_key_is_named_with_both_lines(tmp_path, capsys):
    path = tmp_path / "twice.yaml"
    path.write_text(SMOKE.read_text().replace("seed: 0\n", "seed: 0\nseed: 1\n", 1))
    line = 1 + SMOKE.read_text().splitlines().index("seed: 0")
    outcome = run_main(synth(path, tmp_path / "raw"), capsys)
    assert_fault(outcome, f"{path}: key 'seed' is given twice, at lines {line} and {line + 1}")
    assert len(outcome.err.strip().splitlines()) == 1
    assert not (tmp_path / "raw").exists()
