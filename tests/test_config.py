"""Typed params: profiles load, mistakes name the key and file, overrides apply."""

from __future__ import annotations

import pytest

from conftest import PAPER, SMOKE, write_params
from densepred.config import ParamsError
from densepred.params_loading import load_params, parse_override


def test_smoke_and_paper_profiles_load():
    smoke = load_params(SMOKE)
    paper = load_params(PAPER)
    assert smoke.profile == "smoke" and paper.profile == "paper"
    assert smoke.synth is not None and paper.synth is None
    assert {"polymax_depth", "mqtransformer"} <= set(smoke.jobs) & set(paper.jobs)


def test_typo_key_names_key_path_and_file(tmp_path, smoke_tree):
    smoke_tree["jobs"]["polymax_depth"]["model"]["num_cluster"] = 16
    path = write_params(smoke_tree, tmp_path / "typo.yaml")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert "jobs.polymax_depth.model.num_cluster" in message
    assert "unknown key" in message
    assert str(path) in message


def test_wrong_type_and_missing_value(tmp_path, smoke_tree):
    smoke_tree["jobs"]["polymax_depth"]["finetune"]["iterations"] = "many"
    del smoke_tree["jobs"]["polymax_depth"]["model"]["backbone"]
    path = write_params(smoke_tree, tmp_path / "bad.yaml")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert "jobs.polymax_depth.finetune.iterations" in message and "'many'" in message
    assert "jobs.polymax_depth.model.backbone: Field required" in message


def test_overrides_apply_and_are_validated():
    params = load_params(SMOKE, ["jobs.polymax_depth.model.num_clusters=32", "seed=7"])
    assert params.jobs["polymax_depth"].model.num_clusters == 32
    assert params.seed == 7
    with pytest.raises(ParamsError, match=r"jobs\.polymax_depth\.model\.k: unknown key"):
        load_params(SMOKE, ["jobs.polymax_depth.model.k=16"])
    with pytest.raises(ParamsError, match="expected KEY=VALUE"):
        load_params(SMOKE, ["seed"])


def test_parse_override_yaml_values():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=true") == (["a"], True)


def test_cross_references_are_checked(tmp_path, smoke_tree):
    smoke_tree["sweeps"]["polymax_k"]["job"] = "no_such_job"
    path = write_params(smoke_tree, tmp_path / "ref.yaml")
    with pytest.raises(ParamsError, match=r"sweeps\.polymax_k\.job: no job named 'no_such_job'"):
        load_params(path)


def test_polymax_is_single_task(tmp_path, smoke_tree):
    smoke_tree["jobs"]["polymax_depth"]["tasks"] = ["depth", "normals"]
    path = write_params(smoke_tree, tmp_path / "multi.yaml")
    with pytest.raises(ParamsError, match="one task per model"):
        load_params(path)


@pytest.mark.parametrize(
    ("job", "tasks", "message"),
    [
        ("polymax_depth", "[edge]", r"jobs\.polymax_depth: .*polymax has no 'edge' head"),
        ("stl_depth", "[depth, normals]", r"jobs\.stl_depth: .*stl_baseline trains exactly one task"),
    ],
)
def test_each_model_checks_its_own_task_rules(job, tasks, message):
    with pytest.raises(ParamsError, match=message):
        load_params(SMOKE, [f"jobs.{job}.tasks={tasks}"])
    load_params(SMOKE, [f"jobs.mtl_baseline.tasks={tasks}"])  # a multi-task model takes any tasks


def test_model_kwargs_resolve_each_models_defaults():
    """PolyMaX's K (default 16, C for semseg) is resolved by its params class, the same one the
    model applies when built directly."""
    from densepred.model_params import PolyMaXCfg
    from densepred.models import create_model

    jobs = load_params(SMOKE, ["jobs.polymax_depth.model.num_clusters=null"]).jobs
    depth = jobs["polymax_depth"].model.build_kwargs(["depth"], num_classes=40, max_depth=10.0)
    assert depth["task"] == "depth" and depth["num_clusters"] == PolyMaXCfg.DEFAULT_NUM_CLUSTERS == 16
    assert "tasks" not in depth
    semseg = jobs["polymax_semseg"].model.build_kwargs(["semseg"], num_classes=17, max_depth=128.0)
    assert semseg["num_clusters"] == 17
    direct = create_model("polymax", task="normals", backbone="test_convnext", width_mult=0.125)
    assert direct.num_clusters == PolyMaXCfg.DEFAULT_NUM_CLUSTERS  # the model applies the same default
    baseline = jobs["mtl_baseline"].model.build_kwargs(["depth", "edge"], num_classes=40, max_depth=10.0)
    assert baseline["tasks"] == ["depth", "edge"] and baseline["num_classes"] == 40


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_repeated_key_names_file_key_and_both_lines(tmp_path):
    text = SMOKE.read_text()
    path = tmp_path / "twice.yaml"
    path.write_text(text + "seed: 1\n")
    first = 1 + text.splitlines().index("seed: 0")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"{path}: key 'seed' is given twice") and "\n" not in message
    assert f"at lines {first} and {len(text.splitlines()) + 1}" in message


def test_repeated_nested_key_in_an_override_set_names_its_path(tmp_path):
    override = tmp_path / "more.yaml"
    override.write_text("jobs:\n  stl_depth:\n    finetune:\n      iterations: 2\n      iterations: 3\n")
    with pytest.raises(
        ParamsError,
        match=rf"^{override}: key 'jobs.stl_depth.finetune.iterations' is "
        r"given twice, at lines 4 and 5;",
    ):
        load_params([SMOKE, override])


def test_merge_keys_may_be_overridden(tmp_path):
    """A key merged in with `<<:` and set again is YAML's override, not a repeated key."""
    override = tmp_path / "merge.yaml"
    override.write_text(
        "base: &b {iterations: 2, batch_size: 2}\n"
        "jobs:\n  stl_depth:\n    finetune:\n      <<: *b\n      iterations: 3\n"
    )
    from densepred.params_loading import read_yaml

    assert read_yaml(override)["jobs"]["stl_depth"]["finetune"] == {"iterations": 3, "batch_size": 2}
