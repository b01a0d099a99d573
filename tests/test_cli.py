"""The CLI contract: every subcommand has --help; user mistakes exit 2 with a clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import SMOKE, write_params
from densepred.cli import build_parser, main

COMMANDS = ["synth", "prepare", "train", "evaluate", "tune", "tables", "schema", "dvc"]


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
