"""Training stages: resume after kill -9 and after SIGTERM (bitwise equal final weights), NaN
handling, completed stages, refusing foreign checkpoints, user errors."""

from __future__ import annotations

import shutil
import signal

import pytest
import torch
import yaml

from densepred.cli import main
from densepred.engine.checkpoint import load_checkpoint, save_checkpoint, weights_digest
from densepred.engine.train import NonFiniteLossError
from densepred.params_loading import load_params
from engine_fixtures import (  # noqa: F401 (fixtures)
    PoisonAt,
    assert_bitwise_equal,
    load_weights,
    no_tracking,
    read_log,
    start_cli,
    tiny_data,
    tiny_params_file,
    train,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("no_tracking")

# PolyMaX depth on Taskonomy with stochastic depth, so that resuming must restore the RNG exactly.
JOB, STAGE = "polymax_depth", "pretrain"
# the reference keeps its last.pt: later tests resume from it and compare against it
OVERRIDES = [f"jobs.{JOB}.model.drop_path_rate=0.3", "runtime.keep_last_checkpoint=true"]


@pytest.fixture(scope="module")
def setup(tiny_data, tmp_path_factory):  # noqa: F811
    """The params file and an uninterrupted reference run."""
    folder = tmp_path_factory.mktemp("train")
    path = tiny_params_file(tiny_data, folder)
    params = load_params(path, OVERRIDES)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DENSEPRED_TRACKING", "off")
        train(params, JOB, STAGE, folder / "reference")
    return {"path": path, "params": params, "reference": folder / "reference"}


def cli_args(setup, out) -> list[str]:
    args = ["train", "--params", str(setup["path"]), "--job", JOB, "--stage", STAGE, "--out", str(out)]
    return args + [a for o in OVERRIDES for a in ("--set", o)]


def test_reference_run_outputs(setup):
    ref = setup["reference"]
    assert sorted(p.name for p in ref.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "final.pt",
        "train_log.csv",
    ]
    assert [p.name for p in (ref / "checkpoints").iterdir()] == ["last.pt"]  # bounded: last + final
    final = load_checkpoint(ref / "final.pt")
    assert final["kind"] == "final" and final["step"] == 6 and "optimizer" not in final
    assert final["meta"]["num_classes"] == 17 and final["meta"]["max_depth"] == 128.0
    assert load_checkpoint(ref / "checkpoints" / "last.pt")["step"] == 4
    config = yaml.safe_load((ref / "config.yaml").read_text())
    assert config["seed"] == 0 and config["profile"] == "smoke" and config["git_commit"]
    assert config["job_config"]["model"]["drop_path_rate"] == 0.3
    rows = read_log(ref / "train_log.csv")
    assert [r["step"] for r in rows] == ["2", "4", "6"]
    assert set(rows[0]) == {"step", "lr", "grad_norm", "total", "depth/charbonnier"}
    assert float(rows[0]["total"]) == pytest.approx(float(rows[0]["depth/charbonnier"]))


def test_resume_after_kill_9_is_bitwise_equal(setup, tmp_path):
    out = tmp_path / "killed"
    proc = start_cli(cli_args(setup, out), cwd=tmp_path)
    wait_for(out / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final.pt").exists(), "the run finished before it could be killed"
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] in (2, 4)
    train(setup["params"], JOB, STAGE, out)  # the same command again resumes
    assert_bitwise_equal(load_weights(out / "final.pt"), load_weights(setup["reference"] / "final.pt"))
    assert read_log(out / "train_log.csv") == read_log(setup["reference"] / "train_log.csv")


def test_sigterm_checkpoints_exits_143_and_resumes(setup, tmp_path):
    out = tmp_path / "terminated"
    proc = start_cli(cli_args(setup, out), cwd=tmp_path)
    wait_for(out / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 143
    assert 2 <= load_checkpoint(out / "checkpoints" / "last.pt")["step"] < 6  # the step it stopped at
    assert not (out / "final.pt").exists()
    assert main(cli_args(setup, out)) == 0
    assert_bitwise_equal(load_weights(out / "final.pt"), load_weights(setup["reference"] / "final.pt"))


def test_resumable_checkpoint_is_removed_once_final_is_written(setup, tmp_path, monkeypatch):
    """By default last.pt (weights + optimiser state: 2.8 GB for PolyMaX ConvNeXt-L, one per stage of
    the paper profile) goes once final.pt is written; a finished stage never resumes from it."""
    monkeypatch.setenv("DENSEPRED_TRACKING", "off")
    params = load_params(setup["path"], [o for o in OVERRIDES if not o.startswith("runtime.keep_last")])
    assert params.runtime.keep_last_checkpoint is False
    out = tmp_path / "default"
    train(params, JOB, STAGE, out)
    assert (out / "final.pt").is_file() and not (out / "checkpoints" / "last.pt").exists()
    assert (setup["reference"] / "checkpoints" / "last.pt").is_file()  # kept on request


def test_completed_stage_is_not_rerun(setup):
    final = setup["reference"] / "final.pt"
    before = final.stat().st_mtime_ns
    assert train(setup["params"], JOB, STAGE, setup["reference"]) == final
    assert final.stat().st_mtime_ns == before


def test_checkpoint_of_another_job_is_refused(setup, tmp_path):
    out = tmp_path / "other"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(setup["reference"] / "checkpoints" / "last.pt", out / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match=r"belongs to another run \(job: checkpoint 'polymax_depth' vs now"):
        train(setup["params"], "polymax_normals", STAGE, out)


def test_edited_settings_retrain_instead_of_reusing(setup, tmp_path, capsys):
    """After a params edit the same run folder is retrained (DVC keeps persist outputs; Snakemake
    deletes only final.pt), never resumed from or returned as is."""
    out = tmp_path / "edited"
    shutil.copytree(setup["reference"], out)
    params = load_params(setup["path"], [*OVERRIDES, "seed=1"])
    train(params, JOB, STAGE, out)
    assert "was written with other settings: retraining" in capsys.readouterr().out
    final = load_checkpoint(out / "final.pt")
    assert final["meta"]["seed"] == 1
    reference = load_weights(setup["reference"] / "final.pt")
    assert any(not torch.equal(final["model"][k], reference[k]) for k in reference)


def test_init_rewritten_with_equal_weights_keeps_the_finetune_current(setup, tmp_path, capsys):
    """The --init identity is the init checkpoint's fingerprint and weights, not its file: a pretrain
    final.pt rewritten with the same weights and another git commit leaves the finetune current;
    other weights make it stale, and it is retrained."""
    params = setup["params"]
    pre = tmp_path / "pretrain" / "final.pt"
    pre.parent.mkdir()
    shutil.copy(setup["reference"] / "final.pt", pre)
    ckpt = load_checkpoint(pre)
    assert ckpt["meta"]["weights_digest"] == weights_digest(ckpt["model"])  # stored when written
    fine = train(params, JOB, "finetune", tmp_path / "finetune", init=pre)
    written, fingerprint = fine.stat().st_mtime_ns, load_checkpoint(fine)["meta"]["settings_hash"]

    save_checkpoint(pre, {**ckpt, "meta": {**ckpt["meta"], "git_commit": "0" * 40 + "-dirty"}})
    assert train(params, JOB, "finetune", tmp_path / "finetune", init=pre) == fine
    older = {k: v for k, v in ckpt["meta"].items() if k != "weights_digest"}  # digest computed instead
    save_checkpoint(pre, {**ckpt, "meta": older})
    assert train(params, JOB, "finetune", tmp_path / "finetune", init=pre) == fine
    assert fine.stat().st_mtime_ns == written
    assert "retraining" not in capsys.readouterr().out

    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint(pre, {**ckpt, "model": other, "meta": older})
    train(params, JOB, "finetune", tmp_path / "finetune", init=pre)
    assert "was written with other settings: retraining" in capsys.readouterr().out
    assert load_checkpoint(fine)["meta"]["settings_hash"] != fingerprint


def test_nan_loss_stops_with_step_and_term_and_keeps_last_good_checkpoint(
    setup, tmp_path, monkeypatch, capsys
):
    import densepred.engine.train as train_module

    real = train_module.build_criterion
    monkeypatch.setattr(
        train_module, "build_criterion", lambda *a: PoisonAt(real(*a), 5, "depth/charbonnier")
    )
    out = tmp_path / "nan"
    with pytest.raises(
        NonFiniteLossError, match=r"step 5: non-finite loss term\(s\) depth/charbonnier=nan, total=nan"
    ):
        train(setup["params"], JOB, STAGE, out)
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["step"] == 4 and not (out / "final.pt").exists()
    reference_last = load_checkpoint(setup["reference"] / "checkpoints" / "last.pt")
    assert_bitwise_equal(last["model"], reference_last["model"])  # the good state, untouched
    # Through the CLI: one clear line and exit status 2.
    shutil.rmtree(out)
    assert main(cli_args(setup, out)) == 2
    err = capsys.readouterr().err
    assert "densepred train: error: step 5: non-finite loss term(s) depth/charbonnier=nan" in err


def test_user_errors(setup, tmp_path):
    with pytest.raises(ValueError, match="job 'stl_depth' has no pretrain stage"):
        train(setup["params"], "stl_depth", "pretrain", tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="--init checkpoint not found"):
        train(setup["params"], JOB, "finetune", tmp_path / "y", init=tmp_path / "missing.pt")
    params = load_params(setup["path"], ["datasets.nyud.prepared=/nonexistent/nyud"])
    with pytest.raises(FileNotFoundError, match="run `densepred prepare --dataset nyud` first"):
        train(params, "stl_depth", "finetune", tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z" / "final.pt").exists()
