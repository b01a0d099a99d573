"""build_meters / MetricSuite routing, state merge, DDP sync over gloo, and delta_m."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from densepred.metrics import (
    NYUD_DELTA_M_METRICS,
    UNITS,
    BoundaryMeter,
    DepthMeter,
    MetricSuite,
    build_meters,
    delta_m,
    multitask_delta_m,
)

TASKS = ["semseg", "depth", "normals", "edge"]


def fake_data(seed: int, batch: int = 4, height: int = 12, width: int = 16) -> tuple[dict, dict]:
    """Model-like eval outputs and a batch dict with the repository's tensor conventions."""
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "semseg": torch.randn(batch, 5, height, width, generator=g),
        "depth": torch.rand(batch, 1, height, width, generator=g) * 9 + 0.5,
        "normals": torch.nn.functional.normalize(torch.randn(batch, 3, height, width, generator=g), dim=1),
        "edge": torch.randn(batch, 1, height, width, generator=g) * 2,
        "aux": [torch.zeros(1)],  # extra train-style entries are ignored
    }
    semseg = torch.randint(0, 5, (batch, height, width), generator=g)
    semseg[:, 0] = 255
    depth = torch.rand(batch, 1, height, width, generator=g) * 9
    depth[depth < 1] = 0
    normals = torch.nn.functional.normalize(torch.randn(batch, 3, height, width, generator=g), dim=1)
    normals[:, :, :2] = 0
    edge = (torch.rand(batch, 1, height, width, generator=g) > 0.85).float()
    batch_dict = {
        "image": torch.rand(batch, 3, height, width, generator=g),
        "semseg": semseg,
        "depth": depth,
        "normals": normals,
        "edge": edge,
    }
    return outputs, batch_dict


def test_build_meters_names_and_settings():
    meters = build_meters(TASKS, "nyud", 40, boundary_thresholds=11)
    assert list(meters) == ["semseg", "depth_eigen", "depth_mtl", "normals", "edge"]
    assert set(meters) == set(UNITS)
    assert meters["depth_eigen"].protocol == "eigen" and meters["depth_eigen"].max_depth == 10.0
    assert meters["depth_mtl"].protocol == "mtl"
    assert isinstance(meters["edge"], BoundaryMeter) and meters["edge"].from_logits
    assert len(meters["edge"].thresholds) == 11
    taskonomy = build_meters(["depth"], "taskonomy", 17)
    assert isinstance(taskonomy["depth_eigen"], DepthMeter) and taskonomy["depth_eigen"].max_depth == 128.0
    assert list(build_meters(["normals"], "nyud", 40)) == ["normals"]
    with pytest.raises(ValueError, match="unknown or missing tasks"):
        build_meters(["semseg", "flow"], "nyud", 40)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_meters(["semseg"], "kitti", 40)
    with pytest.raises(ValueError, match="NYUD-v2 only"):
        build_meters(["depth"], "taskonomy", 17, eigen_crop=True)


def test_suite_flat_keys_and_values_match_meters():
    suite = MetricSuite.build(TASKS, "nyud", 5, boundary_thresholds=5)
    outputs, batch = fake_data(0)
    suite.update(outputs, batch)
    result = suite.compute()
    for name, keys in UNITS.items():
        for key in keys:
            if key == "iou_per_class":
                assert [f"semseg/iou_per_class/{c}" for c in range(5)] == [
                    k for k in result if k.startswith("semseg/iou_per_class/")
                ]
            else:
                assert f"{name}/{key}" in result
    assert all(isinstance(v, float) for v in result.values())
    solo = DepthMeter("mtl")
    solo.update(outputs["depth"], batch["depth"])
    assert result["depth_mtl/rms"] == solo.compute()["rms"]


def test_suite_missing_entries_raise():
    suite = MetricSuite.build(["semseg", "depth"], "nyud", 5)
    outputs, batch = fake_data(1)
    del outputs["depth"]
    with pytest.raises(ValueError, match="model outputs have no 'depth'"):
        suite.update(outputs, batch)
    outputs, batch = fake_data(1)
    del batch["semseg"]
    with pytest.raises(ValueError, match="batch has no 'semseg'"):
        suite.update(outputs, batch)
    with pytest.raises(ValueError, match="unknown meter"):
        MetricSuite({"depth": DepthMeter()})


def test_state_merge_equals_single_pass_and_reset():
    whole = MetricSuite.build(TASKS, "nyud", 5, boundary_thresholds=5)
    left = MetricSuite.build(TASKS, "nyud", 5, boundary_thresholds=5)
    right = MetricSuite.build(TASKS, "nyud", 5, boundary_thresholds=5)
    for seed in range(3):
        outputs, batch = fake_data(seed)
        whole.update(outputs, batch)
        (left if seed % 2 == 0 else right).update(outputs, batch)
    left.merge(right.state())
    merged, single = left.compute(), whole.compute()
    assert merged.keys() == single.keys()
    for key, value in single.items():
        assert merged[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
    left.reset()
    with pytest.raises(ValueError, match="SemsegMeter: no labelled pixel"):
        left.compute()


def test_sync_without_process_group_is_a_no_op():
    suite = MetricSuite.build(["depth"], "nyud", 5)
    outputs, batch = fake_data(2)
    suite.update(outputs, batch)
    before = suite.compute()
    suite.sync()
    assert suite.compute() == before


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        suite = MetricSuite.build(TASKS, "nyud", 5, boundary_thresholds=5)
        for seed in range(4):
            if seed % world == rank:
                suite.update(*fake_data(seed))
        suite.sync()
        torch.save(suite.compute(), Path(out_dir) / f"rank{rank}.pt")
        with pytest.raises(RuntimeError, match="update\\(\\) after sync"):
            suite.update(*fake_data(0))
        with pytest.raises(RuntimeError, match="already called"):
            suite.sync()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two processes (about 10 s on 2 busy cores)
def test_ddp_sync_over_gloo_equals_single_process(tmp_path):
    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    single = MetricSuite.build(TASKS, "nyud", 5, boundary_thresholds=5)
    for seed in range(4):
        single.update(*fake_data(seed))
    expected = single.compute()
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-12, nan_ok=True), (rank, key)


def test_delta_m_hand_computed():
    higher = {task: better for task, (_, better) in NYUD_DELTA_M_METRICS.items()}
    multi = {"semseg": 44.0, "depth": 0.55, "normals": 19.0, "edge": 77.0}
    single = {"semseg": 40.0, "depth": 0.50, "normals": 20.0, "edge": 77.0}
    # (+10% - 10% + 5% + 0%) / 4 = +1.25%
    assert delta_m(multi, single, higher) == pytest.approx(1.25)
    assert delta_m(single, single, higher) == 0.0
    assert NYUD_DELTA_M_METRICS["depth"] == ("depth_mtl/rms", False)
    assert NYUD_DELTA_M_METRICS["semseg"] == ("semseg/miou_all", True)  # the published mIoU convention


@pytest.mark.parametrize(
    ("multi", "single", "message"),
    [
        ({"a": 1.0}, {"a": 1.0, "b": 2.0}, "single has metrics"),
        ({"a": 1.0, "b": 2.0}, {"a": 0.0, "b": 2.0}, "'a' is 0"),
        ({"a": math.nan, "b": 2.0}, {"a": 1.0, "b": 2.0}, "not finite"),
    ],
)
def test_delta_m_errors(multi, single, message):
    with pytest.raises(ValueError, match=message):
        delta_m(multi, single, {"a": True, "b": False} if len(multi) == 2 else {"a": True})


def _result(miou_all: float, rms: float, normals: float, odsf: float) -> dict:
    """A flat evaluation result as `densepred evaluate` writes it (present-classes mIoU set apart)."""
    return {
        "semseg/miou": 2 * miou_all,
        "semseg/miou_all": miou_all,
        "depth_mtl/rms": rms,
        "depth_eigen/rms": 99.0,
        "normals/mean": normals,
        "edge/odsf": odsf,
    }


def test_multitask_delta_m_takes_each_task_metric_from_its_reference():
    multi = _result(44.0, 0.55, 19.0, 77.0)
    refs = {
        "semseg": _result(40.0, 9.0, 9.0, 9.0),
        "depth": _result(9.0, 0.50, 9.0, 9.0),
        "normals": _result(9.0, 9.0, 20.0, 9.0),
        "edge": _result(9.0, 9.0, 9.0, 77.0),
    }
    # (+10% - 10% + 5% + 0%) / 4 = +1.25%, as in test_delta_m_hand_computed
    assert multitask_delta_m(multi, refs, TASKS) == pytest.approx(1.25)
    # Over a subset of tasks: semseg +10% and depth -10% average to 0.
    assert multitask_delta_m(multi, refs, ["semseg", "depth"]) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("refs", "tasks", "message"),
    [
        ({"semseg": _result(40.0, 1.0, 1.0, 1.0)}, ["semseg", "depth"], r"no single-task reference.*'depth'"),
        ({"semseg": {"semseg/miou": 40.0}}, ["semseg"], r"semseg reference has no 'semseg/miou_all'"),
        ({"semseg": _result(40.0, 1.0, 1.0, 1.0)}, ["parts"], r"no Delta_m metric for task\(s\) \['parts'\]"),
        ({}, [], "no task given"),
        ({"edge": _result(1.0, 1.0, 1.0, 0.0)}, ["edge"], "'edge/odsf' is 0"),
    ],
)
def test_multitask_delta_m_errors(refs, tasks, message):
    with pytest.raises(ValueError, match=message):
        multitask_delta_m(_result(44.0, 0.55, 19.0, 77.0), refs, tasks)
