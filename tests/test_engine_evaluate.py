"""Evaluation: deterministic metrics JSON, both depth protocols, figures, cost figures, padding, and
the Taskonomy -> NYUD-v2 head re-initialisation of `--init`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from densepred.engine.evaluate import count_cost, eigen_crop_applies, valid_parts
from densepred.params_loading import load_params
from engine_fixtures import (  # noqa: F401 (fixtures)
    evaluate,
    figures,
    no_tracking,
    tiny_data,
    tiny_params_file,
    train,
)

pytestmark = pytest.mark.usefixtures("no_tracking")


def short(job: str, stage: str, steps: int = 2) -> list[str]:
    return [f"jobs.{job}.{stage}.iterations={steps}"]


def train_and_evaluate(params, job, stage, out):
    train(params, job, stage, out / "run")
    return evaluate(params, job, out / "run" / "final.pt", out / "metrics.json")


def test_same_command_twice_gives_the_same_metrics_json(tiny_data, tmp_path):  # noqa: F811
    params = load_params(tiny_params_file(tiny_data, tmp_path), short("mtl_baseline", "finetune"))
    out = tmp_path / "out"
    first = train_and_evaluate(params, "mtl_baseline", "finetune", out)
    json_bytes = (out / "metrics.json").read_bytes()
    pngs = {p.name: p.read_bytes() for p in figures(out / "metrics.json").iterdir()}
    shutil.rmtree(out)
    second = train_and_evaluate(params, "mtl_baseline", "finetune", out)
    assert (out / "metrics.json").read_bytes() == json_bytes
    assert {p.name: p.read_bytes() for p in figures(out / "metrics.json").iterdir()} == pngs
    assert first == second
    # Content: every task, both depth protocols, cost figures, every test image once.
    for key in ("semseg/miou", "depth_eigen/rms", "depth_eigen/delta1", "depth_mtl/rms", "normals/mean"):
        assert isinstance(first[key], float), key
    assert {"edge/odsf", "edge/oisf", "edge/ap"} <= set(first)
    meta = first["meta"]
    assert meta["num_images"] == 5 and meta["dataset"] == "nyud" and meta["split"] == "test"
    assert meta["tasks"] == ["semseg", "depth", "normals", "edge"] and meta["model"] == "mtl_baseline"
    assert meta["input_size"] == [64, 64]  # 48x64 padded to a multiple of 32
    assert meta["params_m"] > 0 and meta["gflops"] == pytest.approx(2 * meta["gmacs"], rel=1e-4)
    assert sorted(pngs) == ["prediction_000.png", "prediction_001.png"]
    on_disk = json.loads(json_bytes)
    assert list(on_disk) == sorted(on_disk)


def test_eigen_crop_applies_to_480x640_frames_only(tiny_data, tmp_path):  # noqa: F811
    """The paper profile asks for the Eigen crop; on frames of another size (the multi-task layout's
    425x560, here the tiny 48x64) the evaluation runs without it and says so, instead of failing."""
    overrides = [*short("mtl_baseline", "finetune", 1), "jobs.mtl_baseline.evaluate.eigen_crop=true"]
    params = load_params(tiny_params_file(tiny_data, tmp_path), overrides)
    result = train_and_evaluate(params, "mtl_baseline", "finetune", tmp_path / "out")
    assert result["meta"]["eigen_crop"] is False and result["meta"]["frame_size"] == [48, 64]
    assert result["meta"]["input_size"] == [64, 64] and isinstance(result["depth_eigen/rms"], float)
    assert eigen_crop_applies(True, "nyud", (480, 640)) and not eigen_crop_applies(False, "nyud", (480, 640))
    assert not eigen_crop_applies(True, "nyud", (425, 560))
    assert not eigen_crop_applies(True, "taskonomy", (480, 640))  # table 3 jobs share the eval preset


def test_count_cost_by_hand():
    """A 1x1 conv 3->4 on 8x8 is 4*3*64 = 768 MACs = 1536 FLOPs, plus 4*3+4 = 16 parameters."""
    cost = count_cost(nn.Conv2d(3, 4, 1), (8, 8))
    assert cost == {"params_m": 1.6e-05, "gflops": round(1536 / 1e9, 6), "gmacs": round(768 / 1e9, 6)}


def test_valid_parts_crops_padding():
    outputs = {"depth": torch.ones(2, 1, 64, 64)}
    batch = {
        "depth": torch.zeros(2, 1, 64, 64),
        "valid_size": torch.tensor([[48, 64], [48, 64]]),
        "id": ["a", "b"],
    }
    [(out, tgt)] = valid_parts(outputs, batch)
    assert (
        out["depth"].shape == (2, 1, 48, 64)
        and tgt["depth"].shape == (2, 1, 48, 64)
        and tgt["id"] == ["a", "b"]
    )
    batch["valid_size"] = torch.tensor([[48, 64], [40, 50]])
    parts = valid_parts(outputs, batch)
    assert [p[0]["depth"].shape for p in parts] == [(1, 1, 48, 64), (1, 1, 40, 50)]
    assert valid_parts(outputs, {"depth": batch["depth"]})[0][0]["depth"].shape == (2, 1, 64, 64)


# ------------------------------------------------------------- PolyMaX: Taskonomy pretrain -> NYUD-v2


@pytest.fixture(scope="module")
def semseg_runs(tiny_data, tmp_path_factory):  # noqa: F811
    """PolyMaX semseg pretrained on Taskonomy (17 classes), then finetuned on NYUD-v2 (40) with --init."""
    folder = tmp_path_factory.mktemp("polymax")
    job = "polymax_semseg"
    params = load_params(tiny_params_file(tiny_data, folder), short(job, "pretrain") + short(job, "finetune"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DENSEPRED_TRACKING", "off")
        pre = train(params, job, "pretrain", folder / "pretrain")
        fine = train(params, job, "finetune", folder / "finetune", init=pre)
    return {"params": params, "folder": folder, "pretrain": pre, "finetune": fine, "job": job}


def test_init_reinitialises_class_heads_and_reports_every_key(semseg_runs):
    report = json.loads((semseg_runs["folder"] / "finetune" / "init_report.json").read_text())
    assert report["source"] == str(semseg_runs["pretrain"])
    assert report["missing"] == [] and report["unexpected"] == []
    reset = {r["key"]: (r["checkpoint_shape"], r["model_shape"]) for r in report["reset"]}
    assert reset, "a 17-class head must not load into a 40-class model"
    for key, (old, new) in reset.items():  # only the class dimension differs: 17 (+1 void) vs 40 (+1)
        assert [d for d in old if d not in new] and {d for d in old if d not in new} <= {17, 18}, key
        assert {d for d in new if d not in old} <= {40, 41}, key
    assert "transformer_decoder.cluster_centers" in reset  # K = C clusters
    backbone = [k for k in report["loaded"] if k.startswith("backbone.")]
    assert backbone and len(report["loaded"]) + len(reset) == len(
        torch.load(semseg_runs["finetune"], weights_only=True)["model"]
    )


def test_taskonomy_checkpoint_evaluates_with_its_17_classes_and_cluster_maps(semseg_runs):
    out = semseg_runs["folder"] / "eval_taskonomy.json"
    result = evaluate(
        semseg_runs["params"], semseg_runs["job"], semseg_runs["pretrain"], out, dataset="taskonomy"
    )
    assert len([k for k in result if k.startswith("semseg/iou_per_class/")]) == 17
    assert result["meta"]["num_images"] == 6 and result["meta"]["trained_on"] == "taskonomy"
    names = sorted(p.name for p in figures(out).iterdir())
    assert names == ["clusters_000.png", "prediction_000.png", "prediction_001.png"]


def test_taskonomy_semseg_checkpoint_cannot_be_scored_on_nyud(semseg_runs, tmp_path):
    with pytest.raises(ValueError, match="trained on taskonomy with 17 classes; nyud semseg has 40"):
        evaluate(semseg_runs["params"], semseg_runs["job"], semseg_runs["pretrain"], tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_finetuned_checkpoint_evaluates_on_nyud(semseg_runs, tmp_path):
    result = evaluate(semseg_runs["params"], semseg_runs["job"], semseg_runs["finetune"], tmp_path / "m.json")
    assert len([k for k in result if k.startswith("semseg/iou_per_class/")]) == 40
    assert result["meta"]["num_images"] == 5 and 0.0 <= result["semseg/pixel_acc"] <= 100.0


def test_wrong_job_for_checkpoint_is_an_error(semseg_runs, tmp_path):
    with pytest.raises(ValueError, match=r"predicts tasks \['semseg'\] but job 'polymax_depth'"):
        evaluate(semseg_runs["params"], "polymax_depth", semseg_runs["finetune"], tmp_path / "x.json")
