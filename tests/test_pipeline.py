"""The pipeline definition: Snakemake plans both profiles, dvc.yaml cannot drift from the Snakefile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import PAPER, ROOT, SMOKE
from densepred.config import load_params
from densepred.pipeline import build_stages, dvc_yaml

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _dry_run(*args: str) -> str:
    result = subprocess.run([SNAKEMAKE, "-n", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_committed_dvc_yaml_is_generated_from_the_pipeline():
    committed = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages = build_stages(load_params(SMOKE), "params/smoke.yaml")
    assert committed == dvc_yaml(stages, "params/smoke.yaml"), (
        "run `densepred dvc --params params/smoke.yaml`"
    )


def test_snakemake_rules_are_the_pipeline_stages():
    out = _dry_run("results/all")
    stages = build_stages(load_params(SMOKE), "params/smoke.yaml")
    for stage in stages:
        assert stage.name in out, f"stage {stage.name} missing from the Snakemake plan"


def test_paper_profile_plans_without_data():
    out = _dry_run("--configfile=params/paper.yaml", "results/table2.csv")
    for rule in ("pretrain_polymax_depth", "finetune_polymax_depth", "finetune_mqtransformer", "table2"):
        assert rule in out


def test_every_stage_has_log_threads_and_resources():
    for profile, path in (("smoke", SMOKE), ("paper", PAPER)):
        for stage in build_stages(load_params(path), f"params/{profile}.yaml"):
            assert stage.log.startswith(f"logs/{profile}/")
            if stage.kind in ("train", "evaluate"):
                assert set(stage.resources) == {"mem_mb", "gpu"}
                assert stage.threads >= 1


def test_pretraining_starts_before_finetuning_before_the_rest():
    stages = build_stages(load_params(SMOKE), "params/smoke.yaml")
    priority = {s.name: s.priority for s in stages}
    assert priority["pretrain_polymax_depth"] > priority["finetune_polymax_depth"] > 0
    assert priority["finetune_stl_depth"] == priority["finetune_polymax_depth"]
    assert all(s.priority == 0 for s in stages if s.kind not in ("train",))


def test_job_settings_are_rule_params():
    """Each training stage tracks exactly its job's keys, so an edit reruns only that job's chain."""
    stages = {s.name: s for s in build_stages(load_params(SMOKE), "params/smoke.yaml")}
    keys = stages["finetune_polymax_depth"].param_keys
    assert "jobs.polymax_depth.finetune" in keys and "jobs.polymax_depth.pretrain" in keys
    assert not any("polymax_semseg" in k for k in keys)
