"""Outputs record how they were made (records.py): checkpoints, evaluation JSONs and tables, each
checked against its stage's current settings, on the real smoke profile shrunk to a few steps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from densepred.engine.checkpoint import CHECKPOINT_FORMAT, META_KEYS, init_identity, save_checkpoint
from densepred.params_loading import load_params
from densepred.pipeline import build_stages
from densepred.records import (
    checkpoint_identity,
    checkpoint_meta,
    disagreement,
    identity_difference,
    stale_stages,
    write_stage_record,
)
from engine_fixtures import evaluate, tiny_data, tiny_params_file, train  # noqa: F401

JOB = "stl_depth"


def test_checkpoint_meta_is_read_without_its_tensors(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    meta = {key: "x" for key in META_KEYS}
    meta.update(settings_hash="abc", weights_digest="def", identity={"seed": 0, "tasks": ["depth"]})
    path = save_checkpoint(
        tmp_path / "final.pt",
        {"format": CHECKPOINT_FORMAT, "step": 1, "model": model.state_dict(), "meta": meta},
    )
    assert checkpoint_meta(path) == meta
    assert checkpoint_identity(path) == init_identity(path)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad\.pt could not be read"):
        checkpoint_meta(tmp_path / "bad.pt")


def test_checkpoint_meta_does_not_import_torch():
    """Nor does building the stages, which every Snakefile parse does."""
    code = (
        "import sys, densepred.records, densepred.pipeline\n"
        "from densepred.params_loading import load_params\n"
        "densepred.pipeline.build_stages(load_params('params/smoke.yaml'), 'params/smoke.yaml')\n"
        "print('torch' in sys.modules)"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_identity_difference_names_the_keys():
    old = {"settings": {"iterations": 20, "lr": 1e-3}, "seed": 0}
    new = {"settings": {"iterations": 300, "lr": 1e-3}, "seed": 0}
    assert identity_difference(old, new) == "settings.iterations: output 20, params 300"
    assert identity_difference(None, new).startswith("it records no identity")
    assert identity_difference(new, new) == ""


def _stages(params_file: Path, *sets: str) -> dict:
    params = load_params(params_file, list(sets))
    return {s.name: s for s in build_stages(params, params_file, list(sets))}


@pytest.fixture
def built(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    """stl_depth's pretrain -> finetune -> evaluate, and table2's record, in a scratch folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DENSEPRED_TRACKING", "off")
    params_file = tiny_params_file(tiny_data, tmp_path)
    params = load_params(params_file)
    stages = _stages(params_file)
    for stage in ("pretrain", "finetune"):
        st = stages.get(f"{stage}_{JOB}")
        if st is not None:
            train(params, JOB, stage, Path(st.outs[0]).parent, Path(st.init) if st.init else None)
    ev = stages[f"evaluate_{JOB}_nyud"]
    evaluate(params, JOB, Path(ev.init), Path(ev.outs[0]))
    return params_file, stages


def test_outputs_agree_with_the_settings_they_were_made_with(built):
    _, stages = built
    chain = [f"finetune_{JOB}", f"evaluate_{JOB}_nyud"]
    assert all(disagreement(stages[n]) is None for n in chain)
    assert disagreement(stages["table2"]) is None  # not built yet: Snakemake and DVC see it missing


def test_an_edited_stage_is_named_with_the_difference(built):
    params_file, _ = built
    edited = _stages(params_file, f"jobs.{JOB}.finetune.iterations=4")
    stale = stale_stages(edited.values())
    assert list(stale) == [f"finetune_{JOB}"], stale
    assert (
        "final.pt was made with other settings (settings.iterations: output 6, params 4)"
        in stale[f"finetune_{JOB}"]
    )


def test_an_evaluation_of_other_weights_is_stale(built):
    _, stages = built
    ev, fine = stages[f"evaluate_{JOB}_nyud"], Path(stages[f"finetune_{JOB}"].outs[0])
    record = json.loads(Path(ev.outs[0]).read_text())["meta"]
    assert record["identity"]["stage"] == "evaluate" and len(record["settings_hash"]) == 64
    ckpt = torch.load(fine, weights_only=True)
    ckpt["meta"]["weights_digest"] = "0" * 64  # other weights under the same settings
    save_checkpoint(fine, ckpt)
    assert disagreement(ev) == f"{ev.outs[0]} was made from other weights than the current {fine}"
    assert disagreement(stages[f"finetune_{JOB}"]) is None


def test_a_table_records_its_inputs_and_outputs(built):
    _, stages = built
    table = stages["table2"]
    for out in table.outs:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("job\nx\n")
    write_stage_record(table)
    assert disagreement(table) is None
    Path(table.outs[0]).write_text("job\ny\n")  # restored from git, say
    assert "is not what" in disagreement(table)
    write_stage_record(table)
    ev = Path(stages[f"evaluate_{JOB}_nyud"].outs[0])
    ev.write_text(ev.read_text().replace('"meta"', '"meta" ', 1))
    assert disagreement(table) == f"{table.outs[0]} was built from another {ev}"


def test_a_corrupt_output_is_stale(built):
    _, stages = built
    fine = stages[f"finetune_{JOB}"]
    Path(fine.outs[0]).write_bytes(b"\0" * 100)
    assert "its record cannot be read" in disagreement(fine)


def test_a_checkpoint_without_a_weights_digest_leaves_its_followers_undecided(built):
    _, stages = built
    fine, ev = stages[f"finetune_{JOB}"], stages[f"evaluate_{JOB}_nyud"]
    ckpt = torch.load(fine.outs[0], weights_only=True)
    del ckpt["meta"]["weights_digest"]  # as written before weights digests existed
    save_checkpoint(Path(fine.outs[0]), ckpt)
    assert checkpoint_identity(fine.outs[0]) is None
    assert disagreement(ev) is None  # never "stale forever": left to Snakemake's and DVC's triggers


def test_prepared_data_and_sweeps_record_their_settings(built):
    params_file, stages = built
    prepare, sweep = stages["prepare_nyud"], next(s for s in stages.values() if s.kind == "tune")
    assert prepare.record == str(Path(prepare.outs[0]) / "densepred-record.json")
    assert disagreement(sweep) is None  # no summary yet
    Path(sweep.outs[0]).parent.mkdir(parents=True, exist_ok=True)
    Path(sweep.outs[0]).write_text("trial,depth_rms\nk8,1.0\n")
    assert disagreement(sweep) is None  # a summary from before records: the tools' own triggers decide
    write_stage_record(sweep)
    assert disagreement(sweep) is None
    name = sweep.name.removeprefix("tune_")
    edited = _stages(params_file, f"sweeps.{name}.max_trials=1")[sweep.name]
    assert disagreement(edited) == f"{sweep.outs[0]} was made with other settings ({sweep.record})"
    Path(sweep.outs[0]).write_text("trial,depth_rms\nk8,2.0\n")
    assert "is not what" in disagreement(sweep)


def test_outdated_benchmarks_are_set_aside(tmp_path):
    from types import SimpleNamespace

    from densepred.snakemake_hooks import set_aside_outdated_benchmarks

    bench, out = tmp_path / "stage.tsv", tmp_path / "final.pt"
    bench.write_text("s\n1\n")
    out.write_text("x")
    stage = SimpleNamespace(benchmark=str(bench), outs=(str(out),))
    assert set_aside_outdated_benchmarks([stage]) == [str(bench)]  # the output is newer
    assert not bench.exists() and (tmp_path / "stage.tsv.outdated").is_file()
    bench.write_text("s\n1\n")  # newer than the output: Snakemake's own record of the run
    assert set_aside_outdated_benchmarks([stage]) == [] and bench.exists()
