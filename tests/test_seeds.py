"""Seeds as a pipeline dimension: the `seeds` keys, the per-seed fan-out of the pipeline, and the
statistics the tables report over seeds (mean, sample std, count, Delta_m's t-interval, Welch's test),
on fake evaluation results. The real Snakemake run of two seeds is in test_seeds_snakemake.py."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy import stats

from conftest import SMOKE
from densepred import cli
from densepred.config import Params, ParamsError
from densepred.dvc_stages import dvc_names, dvc_yaml
from densepred.metrics import multitask_delta_m
from densepred.params_loading import load_params, validate
from densepred.paths import eval_path, figure7_eval_path, figures_dir, run_dir
from densepred.pipeline import build_stages
from densepred.seeds import spread, t_interval, welch
from densepred.snakemake_hooks import config_overrides
from densepred.tables import compare, plot_figure7, table2, write_tables
from test_tables import TASK_METRICS, write_reference

# A seed's shift of a job's number n (test_tables.TASK_METRICS turns it into metrics), not linear in
# the seed, so that every job, metric and seed has its own value and the spread is not trivial.


def _shift(n: int, seed: int) -> float:
    return n + 0.3 * seed**2 + 0.1 * n * seed


def _params(tree: dict, runs: Path, seeds: list[int]) -> Params:
    tree["seeds"] = seeds
    params = validate(tree, "smoke")
    return params.model_copy(update={"paths": params.paths.model_copy(update={"runs": str(runs)})})


def _write(path: str | Path, metrics: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(metrics))


def _write_results(params: Params) -> dict[tuple[str, int], dict]:
    """A fake NYUD-v2 evaluation for every finetuned job and seed; returns (job, seed) -> metrics."""
    written = {}
    for n, (name, job) in enumerate(params.jobs.items()):
        if job.finetune is None:
            continue
        for seed in params.job_seeds(name):
            metrics: dict = {"meta": {"params_m": 1.0 + n, "gflops": 2.0}}
            for task in job.tasks:
                metrics.update(TASK_METRICS[task](_shift(n, seed)))
            _write(eval_path(params, name, "nyud", seed), metrics)
            written[name, seed] = metrics
    write_reference(params)
    return written


def _row(frame: pd.DataFrame, job: str) -> pd.Series:
    rows = frame[frame["job"] == job]
    assert len(rows) == 1, job
    return rows.iloc[0]


# ------------------------------------------------------------------------------------------ statistics


def test_spread_is_the_mean_the_sample_std_and_the_count_of_finite_values():
    s = spread([1.0, 2.0, 4.0, math.nan])
    assert s.mean == pytest.approx(7 / 3) and s.n == 3
    assert s.std == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))  # ddof = 1
    assert s.std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    one = spread([0.25])
    assert one.mean == 0.25 and one.n == 1 and math.isnan(one.std)
    none = spread([math.nan, math.nan])
    assert none.n == 0 and math.isnan(none.mean)


def test_t_interval_is_the_student_t_interval_of_the_mean():
    low, high = t_interval([1.0, 2.0, 3.0])
    half = 4.3026527297 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * std / sqrt(n)
    assert (low, high) == pytest.approx((2.0 - half, 2.0 + half), rel=1e-10)
    assert all(math.isnan(v) for v in t_interval([1.0]))


def test_welch_is_the_unequal_variance_t_test():
    a, b = [1.0, 1.2, 0.9, 1.1], [1.5, 1.9, 1.4]
    result = welch(a, b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert result is not None
    assert result.t == pytest.approx(t, rel=1e-12) and result.df == pytest.approx(df, rel=1e-12)
    assert result.p == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert welch([1.0], b) is None and welch(a, [1.0, math.nan]) is None


# -------------------------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seeds=[0, 1, 0]", r"seeds: .*seeds repeat: \[0\]"),
        ("seeds=[]", r"seeds: .*at least one seed"),
        ("seeds=[-1]", r"seeds: .*non-negative"),
        ("jobs.stl_depth.seeds=[2, 2]", r"jobs.stl_depth.seeds: .*seeds repeat: \[2\]"),
    ],
)
def test_bad_seeds_are_rejected_naming_the_key(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(SMOKE, [override])


def test_a_job_may_run_its_own_seeds():
    params = load_params(SMOKE, ["seeds=[0, 1]", "jobs.stl_depth.seeds=[4]"])
    assert params.job_seeds("stl_edge") == [0, 1] and params.job_seeds("stl_depth") == [4]


# ------------------------------------------------------------------------------------------ pipeline


def _stages(overrides: tuple[str, ...] = ()) -> dict:
    params = load_params(SMOKE, overrides)
    return {s.name: s for s in build_stages(params, "params/smoke.yaml", overrides)}


def _plan(path: Path) -> dict[str, tuple]:
    params = load_params(path)
    return {
        s.name: (tuple(a for a in s.argv if a != str(path)), s.deps, s.outs, s.settings, s.param_keys)
        for s in build_stages(params, path)
    }


def test_one_seed_keeps_the_stage_names_folders_and_commands(tmp_path):
    """`seeds: [0]` plans exactly what the profile planned before it had the key: the same stage
    names, commands, outputs and settings (only the tables' settings name the seeds)."""
    tree = yaml.safe_load(SMOKE.read_text())
    assert tree["seeds"] == [0]
    del tree["seeds"]
    without = tmp_path / "smoke.yaml"
    without.write_text(yaml.safe_dump(tree, sort_keys=False))
    one = _plan(SMOKE)
    assert one == _plan(without)
    for name, (argv, _, outs, _, _) in one.items():
        assert "_seed" not in name and not any(a.startswith("seed") for a in argv)
        assert not any("/seed" in out for out in outs)
    assert "finetune_polymax_depth" in one and "evaluate_polymax_depth_nyud" in one


def test_two_seeds_fan_out_every_training_chain():
    one = _stages()
    two = _stages(("seeds=[0, 1]",))
    for name, stage in one.items():
        if stage.kind not in ("train", "evaluate"):
            assert name in two  # data, sweeps and tables are not per seed
            continue
        assert name not in two
        for seed in (0, 1):
            fanned = two[f"{name}_seed{seed}"]
            assert fanned.argv[-2:] == ("--set", f"seed={seed}")
            assert all(f"/seed{seed}/" in out for out in fanned.outs), fanned.outs
            assert json.loads(fanned.settings)["seed"] == seed
            other = json.loads(two[f"{name}_seed{1 - seed}"].settings)
            assert {k: v for k, v in json.loads(fanned.settings).items() if k != "seed"} == {
                k: v for k, v in other.items() if k != "seed"
            }
    assert "finetune_polymax_depth_frac25_seed1" in two and "evaluate_polymax_depth_frac0_nyud_seed0" in two
    finetune = two["finetune_polymax_depth_seed1"]
    assert "runs/smoke/polymax_depth/seed1/pretrain/final.pt" in finetune.deps  # its own seed's init
    table = two["table2"]
    assert {"runs/smoke/stl_depth/seed0/eval/nyud.json", "runs/smoke/stl_depth/seed1/eval/nyud.json"} <= set(
        table.deps
    )
    assert "results/table2_runs.csv" in table.outs
    stages = dvc_yaml(list(two.values()), "params/smoke.yaml")["stages"]
    names = dvc_names(list(two.values()), "params/smoke.yaml")
    group, job = names["evaluate_stl_depth_nyud_seed1"].split("@")
    assert job == "stl_depth" and job in stages[group]["foreach"]
    metrics = stages[group]["do"]["metrics"]
    assert metrics == [{"runs/smoke/${key}/seed1/eval/nyud.json": {"cache": False}}]


def test_one_seed_other_than_the_base_seed_runs_that_seed_in_the_same_folders():
    stages = _stages(("seeds=[3]",))
    finetune = stages["finetune_stl_depth"]
    assert finetune.argv[-4:] == ("--set", "seeds=[3]", "--set", "seed=3")
    assert finetune.outs == ("runs/smoke/stl_depth/finetune/final.pt",)
    assert json.loads(finetune.settings)["seed"] == 3


def test_a_job_with_its_own_seeds_fans_out_alone():
    stages = _stages(("jobs.stl_depth.seeds=[0, 1]",))
    assert {"finetune_stl_depth_seed0", "finetune_stl_depth_seed1", "finetune_stl_edge"} <= set(stages)
    assert "finetune_stl_depth" not in stages


def test_a_fanned_out_job_folder_needs_its_seed():
    params = load_params(SMOKE, ["seeds=[0, 1]"])
    assert run_dir(params, "stl_depth", 1) == Path("runs/smoke/stl_depth/seed1")
    with pytest.raises(ValueError, match=r"jobs.stl_depth runs seeds \[0, 1\]: name the seed"):
        run_dir(params, "stl_depth")
    with pytest.raises(ValueError, match="has no seed 7"):
        run_dir(params, "stl_depth", 7)
    assert run_dir(load_params(SMOKE), "stl_depth", 0) == Path("runs/smoke/stl_depth")


def test_snakemake_config_seeds_become_one_override():
    assert config_overrides({"seeds": [0, 1]}, {"seeds": [0]}) == ["seeds=[0, 1]"]
    assert config_overrides({"seeds": "[0, 1]"}, {"seeds": [0]}) == ["seeds=[0, 1]"]
    assert config_overrides({"seeds": ["0", "1"]}, {"seeds": [0]}) == ["seeds=[0, 1]"]  # as Snakemake does


# ------------------------------------------------------------------------------------------- tables


def test_table2_over_seeds_is_the_mean_std_and_count_of_the_per_seed_results(smoke_tree, tmp_path):
    params = _params(smoke_tree, tmp_path / "runs", [0, 1, 2])
    results = _write_results(params)
    table_csv, runs_csv = write_tables(params, tmp_path / "results", only="table2")
    frame = table2(params)
    for job, column, key in (
        ("polymax_depth", "depth_rms", "depth_eigen/rms"),
        ("mqtransformer", "miou_pct", "semseg/miou_all"),
        ("mqtransformer", "normals_mean", "normals/mean"),
    ):
        values = [results[job, seed][key] for seed in (0, 1, 2)]
        row = _row(frame, job)
        assert row[column] == pytest.approx(statistics.mean(values), rel=1e-12)
        assert row[f"{column}_std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
        assert row[f"{column}_n"] == 3 and row["seeds"] == "0+1+2"
    # Delta_m: per seed against the references of the same seed, then the mean and its t-interval
    refs = params.jobs["mqtransformer"].delta_m_refs
    per_seed = [
        multitask_delta_m(
            results["mqtransformer", seed], {t: results[j, seed] for t, j in refs.items()}, list(refs)
        )
        for seed in (0, 1, 2)
    ]
    row = _row(frame, "mqtransformer")
    assert row["delta_m_pct"] == pytest.approx(statistics.mean(per_seed), rel=1e-12)
    assert row["delta_m_pct_std"] == pytest.approx(statistics.stdev(per_seed), rel=1e-12)
    half = stats.t.ppf(0.975, 2) * statistics.stdev(per_seed) / math.sqrt(3)
    assert row["delta_m_pct_ci95_low"] == pytest.approx(statistics.mean(per_seed) - half, rel=1e-12)
    assert row["delta_m_pct_ci95_high"] == pytest.approx(statistics.mean(per_seed) + half, rel=1e-12)
    baseline = _row(frame, "stl_depth")
    assert (baseline["delta_m_pct"], baseline["delta_m_pct_std"]) == (0.0, 0.0)
    # the long form: one row per (job, seed), with that seed's values and Delta_m
    runs = pd.read_csv(runs_csv)
    jobs = frame[frame["model"] != "reference"]  # the reference rows have no seeds
    assert len(runs) == 3 * len(jobs) and list(runs.columns[7:9]) == ["seed", "miou_pct"]
    mqt = runs[runs["job"] == "mqtransformer"].set_index("seed")
    assert list(mqt["delta_m_pct"]) == pytest.approx(per_seed, abs=1e-4)  # 4 decimals in the CSV
    written = pd.read_csv(table_csv)
    assert written[written["model"] != "reference"]["depth_rms_n"].dropna().eq(3).all()


def test_one_seed_leaves_the_std_empty_and_counts_one(smoke_tree, tmp_path):
    params = _params(smoke_tree, tmp_path / "runs", [0])
    _write_results(params)
    table_csv, _ = write_tables(params, tmp_path / "results", only="table2")
    text = pd.read_csv(table_csv, dtype=str, keep_default_na=False)
    row = text[text["job"] == "polymax_depth"].iloc[0]
    assert (row["depth_rms_std"], row["depth_rms_n"], row["miou_pct_n"]) == ("", "1", "")
    mqt = text[text["job"] == "mqtransformer"].iloc[0]
    assert mqt["delta_m_pct"] != "" and (mqt["delta_m_pct_ci95_low"], mqt["delta_m_pct_std"]) == ("", "")
    assert Path(eval_path(params, "polymax_depth", "nyud", 0)).parent.parent.name == "polymax_depth"


def test_delta_m_needs_the_references_to_run_the_same_seeds(smoke_tree, tmp_path):
    smoke_tree["jobs"]["mqtransformer"]["seeds"] = [0, 1]
    params = _params(smoke_tree, tmp_path / "runs", [0])
    _write_results(params)
    with pytest.raises(
        ValueError, match=r"jobs.mqtransformer: Delta_m pairs seed 1 .* give jobs.stl_\w+.seeds"
    ):
        table2(params)


def test_figure7_over_seeds_has_the_spread_and_draws_error_bars(smoke_tree, tmp_path, monkeypatch):
    params = _params(smoke_tree, tmp_path / "runs", [0, 1])
    _write_results(params)
    fig = params.figure7
    for job in fig.jobs:
        for fraction in fig.fractions:
            for seed in (0, 1):
                path = figure7_eval_path(params, job, fraction, seed)
                _write(path, {"depth_eigen/rms": 1.0 - fraction / 4 + seed / 10, "depth_mtl/rms": 1.1})
    maps = Path(figures_dir(eval_path(params, "polymax_depth", "nyud", 0)))
    maps.mkdir(parents=True)
    (maps / "0000_clusters.png").write_bytes(b"png")
    import matplotlib.axes

    drawn = []
    errorbar = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "errorbar",
        lambda self, *a, **k: drawn.append(k["yerr"]) or errorbar(self, *a, **k),
    )
    write_tables(params, tmp_path / "results", only="figure7")
    frame = pd.read_csv(tmp_path / "results" / "figure7.csv")
    point = frame[(frame["job"] == "polymax_depth") & (frame["taskonomy_fraction"] == 0.5)].iloc[0]
    assert point["depth_rms"] == pytest.approx(statistics.mean([0.875, 0.975]), abs=1e-4)
    assert point["depth_rms_std"] == pytest.approx(statistics.stdev([0.875, 0.975]), abs=1e-4)
    assert point["depth_rms_n"] == 2
    assert drawn and all((yerr > 0).all() for yerr in drawn)
    plot_figure7(frame.drop(columns=[c for c in frame if c.endswith("_std")]), tmp_path / "one.png")
    assert (tmp_path / "one.png").is_file()


def test_compare_says_whether_two_jobs_differ_beyond_seed_noise(smoke_tree, tmp_path, capsys):
    params = _params(smoke_tree, tmp_path / "runs", [0, 1, 2, 3])
    results = _write_results(params)
    text = compare(params, "polymax_depth", "stl_depth", "depth_rms")
    assert "differ beyond seed noise" in text and "n 4 (seeds 0+1+2+3)" in text
    a = [results["polymax_depth", s]["depth_eigen/rms"] for s in range(4)]
    b = [results["stl_depth", s]["depth_eigen/rms"] for s in range(4)]
    assert f"p = {stats.ttest_ind(a, b, equal_var=False).pvalue:.4f}" in text
    same = compare(params, "polymax_depth", "polymax_depth", "depth_rms")
    assert "no difference beyond seed noise" in same
    one = _params(smoke_tree, tmp_path / "one", [0])
    _write_results(one)
    assert "cannot tell" in compare(one, "polymax_depth", "stl_depth", "depth_rms")
    with pytest.raises(ValueError, match="no table column 'depth'"):
        compare(one, "polymax_depth", "stl_depth", "depth")


def test_compare_command(smoke_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    smoke_tree["seeds"] = [0, 1]
    smoke_tree["paths"]["runs"] = "runs"
    (tmp_path / "p.yaml").write_text(json.dumps(smoke_tree))
    _write_results(validate(smoke_tree, "p"))
    argv = ["compare", "--params", "p.yaml", "--a", "mqtransformer", "--b", "mtl_baseline", "--metric"]
    assert cli.main([*argv, "delta_m_pct"]) == 0
    assert "Welch's t-test" in capsys.readouterr().out
    assert cli.main([*argv, "nope"]) == 2
    assert "no table column 'nope'" in capsys.readouterr().err
