"""Ray Tune sweeps without Ray: trial expansion, per-trial params, state, trials, ablation tables.

The Ray-driven behaviour (retries, interruption and resume, the real engine) is in test_tune_ray.py.
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import PAPER, write_params
from densepred import ray_cluster, tune
from densepred.ablations import ablation_table, write_ablation_tables
from densepred.cli import main
from densepred.config import ParamsError, SweepCfg
from densepred.params_loading import validate
from densepred.reported import ABLATIONS, reported_ablation
from densepred.tracking import Nesting


def _sweep(**kw) -> SweepCfg:
    return SweepCfg(job="polymax_depth", table="ablation_k", **kw)


@pytest.fixture
def smoke(smoke_tree):
    return validate(smoke_tree, "smoke")


# ------------------------------------------------------------------------------------------ expansion


def test_grid_expands_in_declared_order_with_readable_names():
    trials = tune.expand_trials(_sweep(grid={"model.num_clusters": [8, 16, 32, 64]}))
    assert [t.variant for t in trials] == [
        "num_clusters_8",
        "num_clusters_16",
        "num_clusters_32",
        "num_clusters_64",
    ]
    assert trials[2].overrides == {"model.num_clusters": 32}
    assert trials[2].setting() == "num_clusters=32"


def test_two_key_grid_is_the_cartesian_product():
    trials = tune.expand_trials(
        _sweep(grid={"model.decoder_layers": [[1], [2, 2]], "model.width_mult": [0.5, 1.0]})
    )
    assert [t.variant for t in trials] == [
        "decoder_layers_1__width_mult_0.5",
        "decoder_layers_1__width_mult_1.0",
        "decoder_layers_2-2__width_mult_0.5",
        "decoder_layers_2-2__width_mult_1.0",
    ]
    assert trials[3].overrides == {"model.decoder_layers": [2, 2], "model.width_mult": 1.0}
    assert trials[3].setting() == "decoder_layers=[2, 2], width_mult=1.0"


def test_variants_crossed_with_grid_and_empty_variant_is_default():
    sweep = _sweep(
        variants={"full": {}, "wo_ql": {"model.query_learning": False}}, grid={"model.num_scales": [1, 2]}
    )
    trials = tune.expand_trials(sweep)
    assert [t.variant for t in trials] == [
        "full__num_scales_1",
        "full__num_scales_2",
        "wo_ql__num_scales_1",
        "wo_ql__num_scales_2",
    ]
    assert trials[2].overrides == {"model.query_learning": False, "model.num_scales": 1}
    assert tune.expand_trials(_sweep(variants={"full": {}}))[0].setting() == "default"


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"variants": {"a/b": {}}}, "'a/b' must start"),
        ({"variants": {"x": {"model.k": 1}}, "grid": {"model.k": [1, 2]}}, "sets grid key(s) ['model.k']"),
        ({"grid": {"model.k": [1, "1"]}}, "both named 'k_1'"),
        ({"grid": {"model.k": [1], "model.j": []}}, "no values for ['model.j']"),
    ],
)
def test_bad_sweep_definitions_are_refused(kw, needle):
    with pytest.raises(ValueError, match=r"sweeps.s") as err:
        tune.expand_trials(_sweep(**kw), "s")
    assert needle in str(err.value)


# ------------------------------------------------------------------------------------- trial params


def test_trial_params_apply_overrides_under_the_job_only(smoke):
    trial = tune.Trial("k32", {"model.num_clusters": 32, "finetune.iterations": 7})
    params = tune.trial_params(smoke, "polymax_depth", trial)
    assert params.jobs["polymax_depth"].model.num_clusters == 32
    assert params.jobs["polymax_depth"].finetune.iterations == 7
    assert params.jobs["polymax_normals"].model.num_clusters == 16  # other jobs untouched
    assert smoke.jobs["polymax_depth"].model.num_clusters == 16  # input untouched


def test_trial_params_typo_names_variant_and_key(smoke):
    with pytest.raises(ParamsError, match=r"variant 'bad'") as err:
        tune.trial_params(smoke, "polymax_depth", tune.Trial("bad", {"model.num_clusterz": 8}))
    assert "jobs.polymax_depth.model.num_clusterz: unknown key" in str(err.value)


def test_absolute_paths_rewrites_relative_paths_only(smoke, tmp_path):
    model = smoke.jobs["polymax_depth"].model.model_copy(update={"pretrained_file": Path("/w/x.pt")})
    params = smoke.model_copy(
        update={
            "jobs": {
                **smoke.jobs,
                "polymax_depth": smoke.jobs["polymax_depth"].model_copy(update={"model": model}),
            }
        }
    )
    moved = tune.absolute_paths(params, tmp_path)
    assert moved.datasets["nyud"].prepared == tmp_path / "data/smoke/prepared/nyud"
    assert moved.paths.runs == tmp_path / "runs/smoke"
    assert moved.jobs["polymax_depth"].model.pretrained_file == Path("/w/x.pt")
    assert params.datasets["nyud"].prepared == Path("data/smoke/prepared/nyud")
    assert moved.jobs["polymax_depth"].model.decoder_layers == (1, 1, 1)  # tuples stay tuples


def test_fingerprint_tracks_results_not_resources(smoke):
    sweep = _sweep(grid={"model.num_clusters": [8, 16]})

    def digest(s: SweepCfg, seed: int = 0) -> str:
        params = smoke.model_copy(update={"seed": seed})
        trials = {t.variant: tune.trial_params(params, s.job, t) for t in tune.expand_trials(s)}
        return tune.fingerprint(params, s, trials)

    base = digest(sweep)
    assert digest(sweep.model_copy(update={"resources": {"cpu": 2.0, "gpu": 0.5}, "max_failures": 3})) == base
    assert digest(_sweep(grid={"model.num_clusters": [8, 32]})) != base
    assert digest(sweep, seed=1) != base


def test_outputs_of_a_changed_sweep_definition_are_set_aside(tmp_path, capsys):
    state = tune._load_state(tmp_path, "s", "abc123456789x", "params/smoke.yaml", ["seed=1"])
    assert json.loads((tmp_path / "sweep.json").read_text()) == state
    assert state["overrides"] == ["seed=1"] and state["parent_run_id"] is None
    assert state["experiment"] == "s-abc12345"
    assert tune._load_state(tmp_path, "s", "abc123456789x", None, ()) == state  # same definition: resumes
    (tmp_path / "trials" / "v").mkdir(parents=True)
    (tmp_path / "summary.csv").write_text("old")
    new = tune._load_state(tmp_path, "s", "def", None, ())
    assert new["fingerprint"] == "def" and new["experiment"] == "s-def"
    stale = tmp_path / "stale" / "abc123456789-0"
    assert sorted(p.name for p in stale.iterdir()) == ["summary.csv", "sweep.json", "trials"]
    assert (stale / "trials" / "v").is_dir() and not (tmp_path / "trials").exists()
    assert "moved to" in capsys.readouterr().out
    tune._load_state(tmp_path, "s", "abc123456789x", None, ())  # back to the first definition
    assert (tmp_path / "stale" / "def-0" / "sweep.json").is_file()
    (tmp_path / "sweep.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        tune._load_state(tmp_path, "s", "abc123456789x", None, ())


def test_ray_cpus_and_storage_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(ray_cluster.ENV_CPUS, raising=False)
    assert ray_cluster.ray_cpus(3) == 3
    monkeypatch.setenv(ray_cluster.ENV_CPUS, "5")
    assert ray_cluster.ray_cpus(None) == 5
    monkeypatch.setenv(ray_cluster.ENV_CPUS, "two")
    with pytest.raises(ValueError, match="DENSEPRED_RAY_CPUS='two'"):
        ray_cluster.ray_cpus(None)
    with pytest.raises(ValueError, match="positive"):
        ray_cluster.ray_cpus(0)
    monkeypatch.delenv(tune.ENV_STORAGE, raising=False)
    assert tune._storage_path(tmp_path, None) == str(tmp_path / "ray")
    assert tune._storage_path(tmp_path, "s3://bucket/ray") == "s3://bucket/ray"
    monkeypatch.chdir(tmp_path)
    assert tune._storage_path(tmp_path / "out", "rel") == str(tmp_path / "rel")
    monkeypatch.setenv(tune.ENV_STORAGE, "/shared/ray")
    assert tune._storage_path(tmp_path, None) == "/shared/ray"


def test_worker_env_carries_absolute_locations(smoke, monkeypatch, tmp_path):
    monkeypatch.setenv("DENSEPRED_TRACKING", "on")
    monkeypatch.setenv("DENSEPRED_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = tune._worker_env(smoke)
    assert env["RAY_CHDIR_TO_TRIAL_DIR"] == "0"
    assert env["DENSEPRED_ROOT"] == str(tmp_path)
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert env["DENSEPRED_TRACKING"] == "on"


def test_worker_env_bounds_tracking_server_calls_unless_the_user_set_them(smoke, monkeypatch):
    """Trials run in Ray workers, not under `densepred.cli.main`: the sweep hands them the bounds on
    MLflow's HTTP calls (tracking.HTTP_DEFAULTS), a value set in the driver's environment winning."""
    from densepred.tracking import HTTP_DEFAULTS

    for key in HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    assert {k: tune._worker_env(smoke)[k] for k in HTTP_DEFAULTS} == dict(HTTP_DEFAULTS)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    assert tune._worker_env(smoke)["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"


def test_check_resources_refuses_a_trial_bigger_than_the_cluster(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    tune._check_resources(_sweep(grid={"a": [1]}, resources={"cpu": 2, "gpu": 0}))
    with pytest.raises(ValueError, match=r"cpu=4 .* Ray cluster has 2"):
        tune._check_resources(_sweep(grid={"a": [1]}, resources={"cpu": 4}))
    with pytest.raises(ValueError, match=r"gpu=0.5 .* Ray cluster has 0"):
        tune._check_resources(_sweep(grid={"a": [1]}, resources={"gpu": 0.5}))


# ---------------------------------------------------------------------------------------- one trial


def _plan(tmp_path, smoke, trial_fn) -> tune._Plan:
    trials = {t.variant: t for t in tune.expand_trials(_sweep(grid={"model.num_clusters": [8, 16]}))}
    return tune._Plan(
        sweep="s",
        experiment="s-0",
        table="ablation_k",
        job="polymax_depth",
        trials_dir=tmp_path / "trials",
        trials=trials,
        params={v: tune.trial_params(smoke, "polymax_depth", t) for v, t in trials.items()},
        trial_fn=trial_fn,
        parent_run_id=None,
    )


def test_run_trial_records_result_and_never_reruns_a_finished_trial(tmp_path, smoke, monkeypatch):
    monkeypatch.setenv("DENSEPRED_TRACKING", "off")
    calls = []

    def trial_fn(params, job, out, nesting):
        calls.append((params.jobs[job].model.num_clusters, out))
        assert nesting == Nesting(None, {"sweep": "s", "variant": "num_clusters_16", "table": "ablation_k"})
        return {"depth_eigen/rms": 0.5, "meta": {"x": 1}, "flag": True, "missing": None, "n": 3}

    plan = _plan(tmp_path, smoke, trial_fn)
    assert tune.run_trial(plan, "num_clusters_16") == {"depth_eigen/rms": 0.5, "n": 3.0}
    assert calls == [(16, tmp_path / "trials" / "num_clusters_16")]
    record = json.loads((tmp_path / "trials/num_clusters_16/result.json").read_text())
    assert record["overrides"] == {"model.num_clusters": 16}
    assert tune.run_trial(plan, "num_clusters_16") == {"depth_eigen/rms": 0.5, "n": 3.0}
    assert len(calls) == 1  # reused, not rerun
    assert tune._attempts(tmp_path / "trials/num_clusters_16") == 1


def test_run_trial_failure_leaves_no_result(tmp_path, smoke, monkeypatch):
    monkeypatch.setenv("DENSEPRED_TRACKING", "off")

    def trial_fn(params, job, out, nesting):
        raise RuntimeError("diverged")

    plan = _plan(tmp_path, smoke, trial_fn)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="diverged"):
            tune.run_trial(plan, "num_clusters_8")
    assert not (tmp_path / "trials/num_clusters_8/result.json").exists()
    assert tune._attempts(tmp_path / "trials/num_clusters_8") == 2


def test_trial_function_must_return_a_mapping():
    with pytest.raises(TypeError, match=r"trial 'v'.*returned list"):
        tune.numeric_metrics([1.0], "v")


def test_error_message_unwraps_to_the_root_cause():
    class Wrapper(Exception):
        def __init__(self, cause):
            super().__init__("Traceback (most recent call last):\n  ...\nwrapped")
            self.cause = cause

    root = ValueError("first line\nK=32 is not supported")
    try:
        raise RuntimeError("outer") from Wrapper(root)
    except RuntimeError as exc:
        assert tune.error_message(exc) == "ValueError: K=32 is not supported"


def test_run_job_chain_trains_stages_in_order_and_evaluates_the_last(tmp_path, smoke, monkeypatch):
    calls, nestings = [], []
    placed = Nesting("trial-run", {"sweep": "k", "variant": "v"})

    def train_job(run, *, nesting):
        nestings.append(nesting)
        assert run.job_cfg == smoke.jobs[run.job] and run.train_settings == getattr(run.job_cfg, run.stage)
        calls.append(("train", run.stage, run.out, run.init))
        return run.out / "final.pt"

    def evaluate_job(run, *, nesting):
        nestings.append(nesting)
        assert run.stage == "evaluate" and run.dataset == "nyud"
        calls.append(("evaluate", run.init, run.out))
        run.out.write_text(json.dumps({"depth_eigen/rms": 0.4}))
        return {"depth_eigen/rms": 0.4, "meta": {}}

    monkeypatch.setitem(sys.modules, "densepred.engine.train", types.SimpleNamespace(train_job=train_job))
    monkeypatch.setitem(
        sys.modules, "densepred.engine.evaluate", types.SimpleNamespace(evaluate_job=evaluate_job)
    )
    metrics = tune.run_job_chain(smoke, "polymax_depth", tmp_path, placed)
    assert nestings == [placed] * 3  # every stage's run is placed under the trial's
    assert calls == [
        ("train", "pretrain", tmp_path / "pretrain", None),
        ("train", "finetune", tmp_path / "finetune", tmp_path / "pretrain/final.pt"),
        ("evaluate", tmp_path / "finetune/final.pt", tmp_path / "metrics.json"),
    ]
    assert metrics["depth_eigen/rms"] == 0.4
    calls.clear()
    assert tune.run_job_chain(smoke, "stl_depth", tmp_path) == {"depth_eigen/rms": 0.4}  # metrics reused
    assert calls == [("train", "finetune", tmp_path / "finetune", None)]


# ------------------------------------------------------------------------------------------ summary


def test_summary_round_trips_with_stable_columns(tmp_path):
    frame = pd.DataFrame(
        [
            {
                "variant": "b",
                "status": "ok",
                "attempts": 1,
                "error": "",
                "model.k": "8",
                "x/rms": 0.123456789,
            },
            {"variant": "a", "status": "error", "attempts": 3, "error": "ValueError: no", "model.k": "16"},
        ]
    ).reindex(columns=["variant", "status", "attempts", "error", "model.k", "x/rms"])
    path = tune.write_summary(frame, tmp_path / "summary.csv")
    assert path.read_text().splitlines() == [
        "variant,status,attempts,error,model.k,x/rms",
        "b,ok,1,,8,0.123457",
        "a,error,3,ValueError: no,16,",
    ]
    back = tune.read_summary(path)
    assert list(back["variant"]) == ["b", "a"] and back["error"][1] == "ValueError: no"
    assert math.isnan(back["x/rms"][1])
    with pytest.raises(FileNotFoundError, match="sweep summary not found"):
        tune.read_summary(tmp_path / "nope.csv")


def test_cli_tune_unknown_sweep_exits_2(tmp_path, smoke_tree, capsys):
    path = write_params(smoke_tree, tmp_path / "p.yaml")
    code = main(["tune", "--params", str(path), "--sweep", "nope", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no sweep named 'nope'" in err and "polymax_k" in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------- ablation tables


def _write_summaries(params, root: Path, metrics) -> None:
    """A summary per sweep with metrics(sweep, variant) -> dict; the last variant of each failed."""
    for name, sweep in params.sweeps.items():
        trials = tune.expand_trials(sweep, name)
        rows = []
        for i, trial in enumerate(trials):
            failed = i == len(trials) - 1
            row = {
                "variant": trial.variant,
                "status": "error" if failed else "ok",
                "attempts": 1,
                "error": "",
            }
            row.update({} if failed else metrics(name, trial.variant))
            rows.append(row)
        tune.write_summary(pd.DataFrame(rows), root / name / "summary.csv")


def _all_metrics(sweep, variant):
    return {
        "semseg/miou": 40.0,
        "semseg/miou_all": 30.0,
        "depth_eigen/rms": 0.5,
        "depth_mtl/rms": 0.6,
        "normals/mean": 21.0,
        "edge/odsf": 70.0,
    }


def test_smoke_ablation_tables_have_one_row_per_setting(tmp_path, smoke):
    _write_summaries(smoke, tmp_path / "sweeps", _all_metrics)
    paths = write_ablation_tables(smoke, tmp_path / "sweeps", tmp_path / "results")
    names = sorted(p.name for p in paths)
    assert names == ["ablation_components.csv", "ablation_depth.csv", "ablation_k.csv", "ablation_scales.csv"]
    k = pd.read_csv(tmp_path / "results/ablation_k.csv")
    assert list(k.columns) == [
        "sweep", "job", "model", "backbone", "variant", "setting", "status",
        "miou_pct", "miou_present_pct", "depth_rms", "depth_rms_mtl", "normals_mean", "edge_odsf_pct",
    ]  # fmt: skip
    assert k["miou_pct"][0] == 30.0 and k["miou_present_pct"][0] == 40.0  # all classes / present ones
    assert list(k["sweep"]) == ["mqt_queries"] * 6 + ["polymax_k"] * 4
    assert list(k["setting"][:2]) == ["num_queries=8", "num_queries=32"]
    assert list(k["variant"][6:]) == [
        "num_clusters_8",
        "num_clusters_16",
        "num_clusters_32",
        "num_clusters_64",
    ]
    assert k["status"].tolist().count("error") == 2 and math.isnan(k["miou_pct"][5])
    assert k["depth_rms_mtl"][0] == 0.6 and k["model"][6] == "polymax"
    components = pd.read_csv(tmp_path / "results/ablation_components.csv")
    assert components["setting"].tolist()[:2] == ["default", "query_learning=false"]
    assert not any(c.endswith("_paper") for c in components.columns)  # synthetic profile: ours only
    first = (tmp_path / "results/ablation_k.csv").read_bytes()
    write_ablation_tables(smoke, tmp_path / "sweeps", tmp_path / "results")
    assert (tmp_path / "results/ablation_k.csv").read_bytes() == first  # byte-stable


def test_paper_ablation_tables_show_reported_numbers_beside_ours(tmp_path):
    params = validate(yaml.safe_load(PAPER.read_text()), "paper")
    _write_summaries(params, tmp_path / "sweeps", _all_metrics)
    frame = ablation_table(params, "ablation_k", tmp_path / "sweeps")
    columns = list(frame.columns)
    assert columns.index("miou_pct_paper") == columns.index("miou_pct") + 1
    assert columns[-1] == "paper_source"
    row = frame.set_index("variant").loc["num_queries_8"]
    assert row["miou_pct_paper"] == 48.32 and row["miou_pct_diff"] == pytest.approx(30.0 - 48.32)
    assert "miou_present_pct_paper" not in columns  # the papers report the all-classes mean only
    assert row["depth_rms_mtl_paper"] == 0.5974 and row["edge_odsf_pct_paper"] == 76.9
    assert row["paper_source"] == "MQTransformer Tab. IV(c), Swin-S"
    polymax = frame.set_index("variant").loc["num_clusters_16"]
    assert math.isnan(polymax["miou_pct_paper"]) and polymax["paper_source"] == ""  # supplement not available
    assert "depth_rms_paper" not in columns  # nobody reports Eigen RMS for these sweeps


def test_reported_ablations_cover_every_paper_sweep_setting():
    params = validate(yaml.safe_load(PAPER.read_text()), "paper")
    for name in ("mqt_queries", "mqt_depth", "mqt_scales", "mqt_components"):
        for trial in tune.expand_trials(params.sweeps[name], name):
            assert set(reported_ablation(name, trial.variant)) == {
                "miou_pct", "depth_rms_mtl", "normals_mean", "edge_odsf_pct"
            }, (name, trial.variant)  # fmt: skip
    assert {s for s, _ in ABLATIONS} == {"mqt_queries", "mqt_depth", "mqt_scales", "mqt_components"}
    # The default model is one run: the same numbers wherever it appears (Tables IV(a)-(c), V, VI).
    default = reported_ablation("mqt_queries", "num_queries_64")
    for key in [("mqt_components", "full"), ("mqt_depth", "depth1"), ("mqt_scales", "num_scales_2")]:
        assert reported_ablation(*key) == default


def test_summary_that_does_not_match_the_params_is_refused(tmp_path, smoke):
    _write_summaries(smoke, tmp_path / "sweeps", _all_metrics)
    path = tmp_path / "sweeps/polymax_k/summary.csv"
    frame = tune.read_summary(path)
    tune.write_summary(frame[frame["variant"] != "num_clusters_64"], path)
    with pytest.raises(ValueError, match=r"do not match sweeps.polymax_k"):
        ablation_table(smoke, "ablation_k", tmp_path / "sweeps")
    (tmp_path / "sweeps/polymax_k/summary.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"polymax_k/summary.csv"):
        write_ablation_tables(smoke, tmp_path / "sweeps", tmp_path / "results")
