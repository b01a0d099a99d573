"""The CLI contract: every subcommand has --help; user mistakes exit 2 with a clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import SMOKE, write_params
from densepred.cli import build_parser, main

COMMANDS = ["synth", "prepare", "train", "evaluate", "tune", "tables", "schema", "dvc", "plan"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--set" in out and len(out.splitlines()) > 4


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "densepred.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in COMMANDS:
        assert command in result.stdout


def test_typo_in_params_exits_2_naming_key_and_file(tmp_path, smoke_tree, capsys):
    smoke_tree["synth"]["nyud"]["num_imgs"] = 3
    path = write_params(smoke_tree, tmp_path / "typo.yaml")
    code = main(["synth", "--params", str(path), "--out", str(tmp_path / "raw")])
    err = capsys.readouterr().err
    assert code == 2
    assert "synth.nyud.num_imgs: unknown key" in err and str(path) in err
    assert not (tmp_path / "raw").exists()


def test_unknown_job_exits_2(tmp_path, capsys):
    code = main(
        ["train", "--params", str(SMOKE), "--job", "nope", "--stage", "finetune", "--out", str(tmp_path)]
    )
    assert code == 2
    assert "no job named 'nope'" in capsys.readouterr().err


def test_synth_one_dataset_matches_the_combined_output(tmp_path, smoke_tree):
    # the pipeline generates each dataset in its own stage; the data must not depend on which way
    smoke_tree["synth"]["nyud"].update(num_images=6, num_test=2, height=32, width=40)
    smoke_tree["synth"]["taskonomy"].update(buildings=3, views_per_building=3, size=32)
    path = write_params(smoke_tree, tmp_path / "tiny.yaml")
    assert main(["synth", "--params", str(path), "--out", str(tmp_path / "both")]) == 0
    for name in ("nyud", "taskonomy"):
        alone = tmp_path / f"{name}_alone"
        assert main(["synth", "--params", str(path), "--dataset", name, "--out", str(alone)]) == 0
        files = sorted(p.relative_to(alone) for p in alone.rglob("*") if p.is_file())
        expected = sorted(
            p.relative_to(tmp_path / "both" / name)
            for p in (tmp_path / "both" / name).rglob("*")
            if p.is_file()
        )
        assert files == expected and files
        for rel in files:
            assert (alone / rel).read_bytes() == (tmp_path / "both" / name / rel).read_bytes(), rel
