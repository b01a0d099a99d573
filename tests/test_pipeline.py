"""The pipeline definition: Snakemake plans both profiles, dvc.yaml cannot drift from the Snakefile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import PAPER, ROOT, SMOKE
from densepred.dvc_stages import dvc_names, dvc_yaml
from densepred.launch import with_kernel_env
from densepred.params_loading import load_params
from densepred.pipeline import build_stages
from densepred.snakemake_hooks import config_overrides
from densepred.stage import TABLES

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
    out = _dry_run("--forceall", "results/all")
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
    """A training stage is keyed on its own job's resolved settings and the preset they start from;
    the pretraining reaches the finetuning through its checkpoint, not through keys."""
    stages = {s.name: s for s in build_stages(load_params(SMOKE), "params/smoke.yaml")}
    finetune = stages["finetune_polymax_depth"]
    assert {"jobs.polymax_depth.finetune", "presets.polymax_finetune"} <= set(finetune.param_keys)
    assert not any("polymax_semseg" in k or k.endswith(".pretrain") for k in finetune.param_keys)
    settings = json.loads(finetune.settings)
    assert settings["settings"]["iterations"] == 300 and settings["stage"] == "finetune"
    assert "params/smoke.yaml" not in finetune.settings


def _settings(params_path: str, overrides: tuple[str, ...] = ()) -> dict[str, str]:
    params = load_params(SMOKE, overrides)
    return {s.name: s.settings for s in build_stages(params, params_path, overrides)}


def test_set_on_one_job_changes_that_job_only():
    base = _settings("params/smoke.yaml")
    changed = _settings("params/smoke.yaml", ("jobs.stl_depth.finetune.iterations=20",))
    assert {n for n in base if base[n] != changed[n]} == {"finetune_stl_depth", "table2", "table3"}
    params = load_params(SMOKE, ["jobs.stl_depth.finetune.iterations=20"])
    reference = load_params(SMOKE)
    assert params.jobs["stl_depth"].finetune.iterations == 20
    for name, job in reference.jobs.items():
        if name != "stl_depth":
            assert params.jobs[name] == job, name


def test_preset_override_changes_every_job_that_uses_it():
    params = load_params(SMOKE, ["presets.mtl_finetune.iterations=7"])
    uses = {n for n, j in params.jobs.items() if j.finetune is not None and j.finetune.iterations == 7}
    assert uses == {"mqtransformer", "stl_semseg"}
    # a job's own key wins over its preset's (params/smoke.yaml: polymax_depth finetunes 300 steps)
    params = load_params(SMOKE, ["presets.polymax_finetune.iterations=7"])
    assert (
        params.jobs["polymax_depth"].finetune.iterations
        == load_params(SMOKE).jobs["polymax_depth"].finetune.iterations
    )
    assert params.jobs["polymax_normals"].finetune.iterations == 7


def test_settings_do_not_depend_on_the_params_path():
    """Naming the default profile by another path (absolute, as Snakemake passes --configfile, or from
    a moved checkout) plans nothing: the settings that key reruns are the same."""
    assert _settings("params/smoke.yaml") == _settings(str(SMOKE.resolve()))


def test_snakemake_config_becomes_dotted_overrides():
    tree = {"seed": 0, "jobs": {"a": {"finetune": {"preset": "p", "iterations": 5}}}}
    config = {"seed": 0, "jobs": {"a": {"finetune": {"preset": "p", "iterations": "20", "lr": 1}}}}
    assert config_overrides(config, tree) == ["jobs.a.finetune.iterations=20", "jobs.a.finetune.lr=1"]
    assert config_overrides({"seed": 3, "jobs": tree["jobs"]}, tree) == ["seed=3"]


def test_snakemake_config_is_applied_like_set():
    out = _dry_run(
        "-p", "--forceall", "results/table2.csv", "--config", "jobs={stl_depth: {finetune: {iterations: 20}}}"
    )
    commands = [line for line in out.splitlines() if line.startswith("Shell command:")]
    assert commands and all("--set jobs.stl_depth.finetune.iterations=20" in c for c in commands)


def test_snakemake_config_typo_is_rejected_in_one_message():
    result = subprocess.run(
        [SNAKEMAKE, "-n", "results/table2.csv", "--config", "jobs={stl_depth: {finetune: {iteratons: 20}}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "jobs.stl_depth.finetune.iteratons: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_dvc_yaml_is_readable():
    """Folder dependencies, one foreach stage per stage shape, evaluation JSONs as metrics, plots
    with their axes, and a small file."""
    text = (ROOT / "dvc.yaml").read_text()
    assert len(text.encode()) <= 40_000, len(text.encode())
    doc = yaml.safe_load(text)
    finetune = doc["stages"]["finetune"]
    assert "polymax_depth" in finetune["foreach"] and finetune["foreach"]["mqtransformer"] == {
        "preset": "mtl_finetune"
    }
    body = finetune["do"]
    assert "src/densepred/engine" in body["deps"] and "runs/smoke/${key}/pretrain/final.pt" in body["deps"]
    assert not any(d.endswith(".py") and "/engine/" in d for d in body["deps"])
    assert "presets.${item.preset}" in body["params"][0]["params/smoke.yaml"]
    evaluate = doc["stages"]["evaluate_nyud"]["do"]
    assert evaluate["metrics"] == [{"runs/smoke/${key}/eval/nyud.json": {"cache": False}}]
    plots = {name: spec for entry in doc["plots"] for name, spec in entry.items()}
    loss = plots["finetune_loss"]
    assert loss["x"] == "step" and loss["y"]["runs/smoke/polymax_depth/finetune/train_log.csv"] == "total"
    assert not any("/figure7/" in f for f in loss["y"])
    figure7 = plots["figure7"]
    assert figure7["x"] == "taskonomy_fraction"
    assert figure7["y"] == {"results/figure7_rms.csv": ["polymax_depth", "deeplab_depth"]}


def test_every_stage_has_one_dvc_name():
    """Grouped stages are `<group>@<job>` in DVC; the others keep their Snakemake rule names."""
    stages = build_stages(load_params(SMOKE), "params/smoke.yaml")
    names = dvc_names(stages, "params/smoke.yaml")
    assert set(names) == {s.name for s in stages} and len(set(names.values())) == len(names)
    assert names["finetune_polymax_depth"] == "finetune@polymax_depth"
    assert names["evaluate_polymax_depth_nyud"] == "evaluate_nyud@polymax_depth"
    assert names["pretrain_polymax_depth_frac25"] == "pretrain_frac25@polymax_depth"
    assert names["table2"] == "table2"
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), "stage", "list", "--name-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(listed) == sorted(names.values())


def test_snakemake_refuses_a_profile_with_a_repeated_key(tmp_path):
    """Snakemake's own YAML loading keeps the last value; the workflow's profile loading refuses."""
    path = tmp_path / "twice.yaml"
    path.write_text(SMOKE.read_text() + "seed: 1\n")
    result = subprocess.run(
        [SNAKEMAKE, "-n", f"--configfile={path}", "results/table2.csv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "key 'seed' is given twice, at lines" in result.stderr and "twice.yaml" in result.stderr


def test_stages_carry_their_job_seed_dataset_fraction_and_tables():
    """Consumers read a stage's fields; these agree with what its command runs and where it writes."""
    params = load_params(SMOKE, ["seeds=[0, 1]"])
    stages = build_stages(params, "params/smoke.yaml", ["seeds=[0, 1]"])
    chains = [s for s in stages if s.kind in ("train", "evaluate")]
    assert chains
    for st in chains:
        assert st.argv[st.argv.index("--job") + 1] == st.job
        assert f"seed={st.seed}" in st.overrides and f"seed{st.seed}" in st.outs[0]
        assert (st.figure7_fraction is not None) == ("/figure7/" in st.outs[0])
        if st.kind == "train":
            assert st.dataset == getattr(params.jobs[st.job], st.train_stage).dataset
        else:
            assert st.outs[0].endswith(f"/{st.dataset}.json")
    fractions = {s.figure7_fraction for s in chains if s.figure7_fraction is not None}
    assert fractions == {f for f in params.figure7.fractions if f < 1.0}
    # the tables read what they tabulate: table 2 every main NYUD-v2 evaluation then the reference,
    # table 3 the Taskonomy evaluations, Fig. 7 every fraction chain's evaluation
    tables = {s.table: s for s in stages if s.kind == "tables"}
    assert set(tables) == set(TABLES)
    evals = [s for s in chains if s.kind == "evaluate"]
    main_nyud = [s.outs[0] for s in evals if s.dataset == "nyud" and s.figure7_fraction is None]
    reference = [s.outs[0] for s in stages if s.kind == "reference"]
    assert list(tables["table2"].deps) == main_nyud + reference
    assert {s.outs[0] for s in evals if s.dataset == "taskonomy"} == set(tables["table3"].deps)
    assert {s.outs[0] for s in evals if s.figure7_fraction is not None} < set(tables["figure7"].deps)


def test_one_rule_loop_starts_each_kind_as_before():
    """workflow/rules/stages.smk runs every stage by its `shell`: torch threads for training and
    evaluation, the sweep's CPUs for Ray, nothing for data and tables (which run locally)."""
    stages = {s.kind: s for s in build_stages(load_params(SMOKE), "params/smoke.yaml")}
    assert stages["train"].shell == "OMP_NUM_THREADS={threads} {params.command} > {log} 2>&1"
    assert stages["evaluate"].shell == stages["reference"].shell == stages["train"].shell
    assert stages["tune"].shell.startswith("DENSEPRED_RAY_CPUS={threads} {params.command}")
    assert stages["prepare"].shell == stages["tables"].shell == "{params.command} > {log} 2>&1"
    assert stages["tables"].local and not stages["train"].local
    out = _dry_run("--forceall", "-p", "results/table2.csv")
    pinned = " ".join(with_kernel_env(load_params(SMOKE).runtime, ["densepred", "train"]))
    assert pinned.startswith("env ATEN_CPU_CAPABILITY=avx2 ")  # the smoke profile's portable kernels
    assert f"OMP_NUM_THREADS=1 {pinned} --params params/smoke.yaml" in out
