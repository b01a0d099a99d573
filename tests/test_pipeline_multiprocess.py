"""Multi-process training stages from the pipeline (launch.py), with the real snakemake, torchrun
(gloo on 127.0.0.1) and dvc, in a scratch project whose profile runs every training job as 2 CPU
processes (`runtime.procs_per_job: 2`) at the paper-style global batch (2 images: 1 per process).

- Snakemake (local) starts the stage with torchrun, asks for 2 x the threads and memory, and writes
  the checkpoint and the training log; the 1-process run at the same global batch gives the same
  losses and weights within float tolerance: stl_depth's head has BatchNorm (synchronised over the
  2 processes), and its depth loss averages over each process's valid pixels (a mean of per-process
  means; random scaling pads crops differently), measured: losses within a relative 2e-3, weights
  within 1e-4 (L2 over all parameters) after 2 steps; asserted: 2e-2 and 1e-3.
- The process count is not part of the stage's identity: with 1 process Snakemake plans nothing.
- `dvc repro` of the same stage (dvc.yaml generated from the 2-process profile) reruns it with
  torchrun and writes bitwise the weights Snakemake's run wrote.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from densepred.dvc_stages import dvc_names
from densepred.launch import kernel_env, with_kernel_env
from densepred.params_loading import load_params
from densepred.pipeline import build_stages
from engine_fixtures import load_weights, read_log
from project_fixtures import make_project, run

pytestmark = pytest.mark.slow

JOB = "stl_depth"
STAGE_DIR = Path("runs/smoke/stl_depth/finetune")
FINAL = str(STAGE_DIR / "final.pt")


def _two_process_profile(root: Path) -> None:
    path = root / "params" / "smoke.yaml"
    tree = yaml.safe_load(path.read_text())
    tree["runtime"]["procs_per_job"] = 2
    for preset in tree["presets"].values():
        if "iterations" in preset:
            preset["scale"] = [1.0, 1.0]  # every crop inside its image: the same pixels per process
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    run(root, "densepred", "dvc", "--params", "params/smoke.yaml")
    run(root, "git", "commit", "-qam", "two processes per training job")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("multiprocess") / "project")
    _two_process_profile(root)
    run(root, "snakemake", "--cores", "2", FINAL)
    return root


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    keys = [k for k in a if a[k].is_floating_point() and "running" not in k]
    va, vb = (torch.cat([w[k].flatten() for k in keys]) for w in (a, b))
    return float((va - vb).norm() / vb.norm())


def test_snakemake_runs_the_stage_as_two_processes(project):
    params = load_params(project / "params" / "smoke.yaml")
    train = next(s for s in build_stages(params, "params/smoke.yaml") if s.outs == (FINAL,))
    pins = with_kernel_env(params.runtime, [])  # the profile's kernel pins (`env ...`), then the launch
    launch = train.argv[len(pins) :]
    assert train.argv[: len(pins)] == pins
    assert launch[:5] == ("torchrun", "--standalone", "--nproc-per-node", "2", "-m")
    assert train.threads == 2 * params.runtime.threads
    assert train.resources["mem_mb"] == 2 * params.runtime.mem_mb
    log = (project / train.log).read_text()
    assert "micro-batch 1 x 1 accumulation step(s) x 2 process(es)" in log
    config = yaml.safe_load((project / STAGE_DIR / "config.yaml").read_text())
    assert config["world_size"] == 2
    assert [r["step"] for r in read_log(project / STAGE_DIR / "train_log.csv")] == ["1", "2"]

    # the same stage as one process, by hand, at the same global batch
    single = project / "runs" / "single"
    cmd = ["densepred", "train", "--params", "params/smoke.yaml", "--job", JOB, "--stage", "finetune"]
    pinned = kernel_env(params.runtime)
    run(project, *cmd, "--out", str(single), "--set", "runtime.procs_per_job=1", env=pinned)
    two, one = read_log(project / STAGE_DIR / "train_log.csv"), read_log(single / "train_log.csv")
    for a, b in zip(two, one, strict=True):
        for key in ("total", "depth/l1"):
            if key in b:
                assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4), (key, a, b)
    departure = _relative(load_weights(project / FINAL), load_weights(single / "final.pt"))
    assert departure < 1e-4

    # the process count is no part of the stage's identity
    plan = run(project, "snakemake", "-n", FINAL, "--config", "runtime={procs_per_job: 1}")
    assert "Nothing to be done" in plan.stdout + plan.stderr


def test_dvc_repro_runs_the_two_process_stage(project):
    params = load_params(project / "params" / "smoke.yaml")
    names = dvc_names(build_stages(params, "params/smoke.yaml"), "params/smoke.yaml")
    stage = next(names[s.name] for s in build_stages(params, "params/smoke.yaml") if s.outs == (FINAL,))
    reference = load_weights(project / FINAL)
    shutil.rmtree(project / STAGE_DIR)
    done = run(project, "dvc", "repro", "--single-item", stage)
    assert (project / FINAL).is_file(), done.stdout[-2000:]
    cmd = yaml.safe_load((project / "dvc.yaml").read_text())
    assert "torchrun --standalone --nproc-per-node 2" in yaml.safe_dump(cmd)
    written = load_weights(project / FINAL)
    assert all(torch.equal(written[k], reference[k]) for k in reference)
