"""The paper-profile rehearsal (params/rehearse.yaml over params/paper.yaml, `make rehearse`).

Fast: the override set changes only data, schedule length, seeds, sweep size, weights and output places;
every model, input size, crop, loss, optimiser and evaluation setting stays as params/paper.yaml has it,
so the rehearsal cannot drift from the paper profile.

Slow (marker `rehearsal`, run in CI): the reduced rehearsal. Through the real `snakemake`, with the
paper profile and the same override set plus a narrowing one (2 test images, 3 Taskonomy views per
building), each model family runs once at paper architecture and resolution: PolyMaX ConvNeXt-L
(Taskonomy pretraining at 512x512, NYUD-v2 finetuning at 480x640 from the official .mat),
DeepLabv3+ R50 (the same chain), MQTransformer Swin-L and the Swin-L multi-task baseline on the
multi-task folder layout's 425x560 frames (padded to 448x576). Each stage trains 2 steps at batch 2;
evaluation covers 2 full frames with the 101-threshold boundary F.
"""

from __future__ import annotations

import fnmatch
import json
import math
import shutil
import time
from pathlib import Path

import pytest
import yaml

from conftest import PAPER, ROOT, write_params
from densepred.params_loading import load_params, read_profile, read_yaml
from densepred.snakemake_hooks import config_overrides
from project_fixtures import run

REHEARSE = ROOT / "params" / "rehearse.yaml"

# What the override set may change (dotted-key patterns); everything else is the paper profile's.
ALLOWED = (
    "profile",
    "rehearsal",
    "seeds",
    "paths.*",
    "tracking.*",
    "runtime.num_workers",
    "runtime.threads",
    "runtime.mem_mb",
    "runtime.gpus_per_job",
    "synth",
    "datasets.*.raw",
    "datasets.*.prepared",
    "datasets.*.split_csv",
    "datasets.*.max_bad_fraction",
    "presets.*.iterations",
    "presets.*.batch_size",
    "presets.*.checkpoint_every",
    "presets.*.log_every",
    "presets.*.schedule.warmup_iters",
    "jobs.*.model.pretrained_file",
    "sweeps.*.max_trials",
    "sweeps.*.resources.*",
    "sweeps.*.base.model.pretrained_file",
)


def rehearsal_overrides() -> list[str]:
    """The override set as the `--set` overrides every stage receives (as the Snakefile derives them)."""
    return config_overrides(read_profile([PAPER, REHEARSE]), read_yaml(PAPER))


def test_override_set_touches_only_data_schedule_and_places():
    keys = [o.partition("=")[0] for o in rehearsal_overrides()]
    outside = [k for k in keys if not any(fnmatch.fnmatchcase(k, pattern) for pattern in ALLOWED)]
    assert not outside, f"params/rehearse.yaml changes paper settings: {outside}"


def test_rehearsal_keeps_the_papers_models_sizes_losses_and_optimisers():
    paper, rehearsal = load_params(PAPER), load_params(PAPER, rehearsal_overrides())
    assert rehearsal.rehearsal and rehearsal.compares_to_papers and rehearsal.synth is not None
    assert list(rehearsal.jobs) == list(paper.jobs) and list(rehearsal.sweeps) == list(paper.sweeps)
    schedule = {"iterations", "batch_size", "checkpoint_every", "log_every"}
    for name, job in paper.jobs.items():
        ours = rehearsal.jobs[name]
        assert ours.model.model_copy(update={"pretrained_file": job.model.pretrained_file}) == job.model
        assert ours.evaluate == job.evaluate and ours.tasks == job.tasks
        for stage in ("pretrain", "finetune"):
            theirs, mine = getattr(job, stage), getattr(ours, stage)
            assert (theirs is None) == (mine is None), (name, stage)
            if theirs is not None:
                assert mine.model_dump(exclude=schedule | {"schedule"}) == theirs.model_dump(
                    exclude=schedule | {"schedule"}
                ), (name, stage)
                assert mine.iterations == 2 and mine.schedule.power == theirs.schedule.power
    for name, sweep in paper.sweeps.items():
        assert rehearsal.sweeps[name].grid == sweep.grid and rehearsal.sweeps[name].variants == sweep.variants
    assert rehearsal.figure7 == paper.figure7
    # synthetic data at the real sizes
    assert (rehearsal.synth.nyud.height, rehearsal.synth.nyud.width) == (480, 640)
    assert rehearsal.synth.taskonomy.size == 512


# ------------------------------------------------------------------------------- the reduced rehearsal

# Narrows the rehearsal further for CI: 2 test images, 3 Taskonomy views per building (2 planted defects).
CI_NARROWING = {
    "synth": {"nyud": {"num_images": 6, "num_test": 2}, "taskonomy": {"views_per_building": 3}},
    "datasets": {"taskonomy": {"max_bad_fraction": 0.5}},  # 2 planted defects among 9 views
    "presets": {"eval": {"num_qualitative": 1}},
}
# The multi-task folder layout (ATRC / MQTransformer) at its 425x560 frames, in its own folders.
MULTITASK_LAYOUT = {
    "profile": "paper-rehearsal-multitask",
    "synth": {"nyud": {"layout": "multitask", "height": 425, "width": 560}},
    "paths": {"runs": "runs/rehearsal_multitask"},
    "datasets": {
        "nyud": {
            "raw": "data/rehearsal_multitask/raw/nyud",
            "prepared": "data/rehearsal_multitask/prepared/nyud",
        }
    },
}
# (override files, {job: (backbone, frame size, padded input size, Eigen crop, boundary thresholds)})
RUNS = (
    (
        ["ci.yaml"],
        {
            "polymax_semseg": ("convnext_large", [480, 640], [480, 640], True, None),
            "deeplab_depth": ("resnet50", [480, 640], [480, 640], True, None),
        },
    ),
    (
        ["ci.yaml", "multitask.yaml"],
        {
            "mqtransformer": ("swin_large_patch4_window7_224", [425, 560], [448, 576], False, 101),
            "mtl_baseline": ("swin_large_patch4_window7_224", [425, 560], [448, 576], False, 101),
        },
    ),
)


def scratch_project(root: Path) -> Path:
    """The code, the workflow and the profiles, with the CI narrowing and layout override files."""
    root.mkdir(parents=True)
    for name in ("Snakefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, root / name)
    for name in ("src", "workflow", "params"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    write_params(CI_NARROWING, root / "params" / "ci.yaml")
    write_params(MULTITASK_LAYOUT, root / "params" / "multitask.yaml")
    return root


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.slow
@pytest.mark.rehearsal
def test_reduced_rehearsal_every_model_family_at_paper_size(tmp_path):
    root = scratch_project(tmp_path / "project")
    start = time.perf_counter()
    for extra, jobs in RUNS:
        files = ["params/paper.yaml", "params/rehearse.yaml", *(f"params/{f}" for f in extra)]
        targets = [f"evaluate_{job}_nyud" for job in jobs]
        run(root, "snakemake", "--cores", "2", *targets, "--configfile", *files)
        tree = read_profile([root / f for f in files])
        runs_dir = root / tree["paths"]["runs"]
        for job, (backbone, frame, size, eigen_crop, thresholds) in jobs.items():
            result = json.loads((runs_dir / job / "eval" / "nyud.json").read_text())
            meta = result["meta"]
            assert meta["backbone"] == backbone and meta["frame_size"] == frame, meta
            assert meta["input_size"] == size and meta["eigen_crop"] is eigen_crop, meta
            assert meta["num_images"] == 2 and meta["profile"] == tree["profile"], meta
            assert meta["boundary_thresholds"] == thresholds, meta
            metrics = {k: v for k, v in result.items() if k != "meta"}
            assert metrics and all(finite(v) or v is None for v in metrics.values()), metrics
            config = yaml.safe_load((runs_dir / job / "finetune" / "config.yaml").read_text())
            paper_job = load_params(PAPER).jobs[job]
            assert config["job_config"]["finetune"]["crop"] == list(paper_job.finetune.crop)
            assert config["job_config"]["finetune"]["optimizer"] == paper_job.finetune.optimizer.model_dump(
                mode="json"
            )
            log = (runs_dir / job / "finetune" / "train_log.csv").read_text().splitlines()
            assert [row.split(",")[0] for row in log[1:]] == ["1", "2"], log
            assert not (runs_dir / job / "finetune" / "checkpoints" / "last.pt").exists()
    benchmarks = sorted((root / "logs").glob("*/benchmarks/*.tsv"))
    peak = max(float(p.read_text().splitlines()[1].split("\t")[2]) for p in benchmarks)
    print(f"reduced rehearsal: {time.perf_counter() - start:.0f} s, largest job's peak RSS {peak:.0f} MB")
