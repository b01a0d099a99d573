"""bench/gpu.py: the CPU mode end to end (slow), and the pieces that need no run: the dense bf16 peak
table and MFU, the run plan (sizes, img_size overrides, order), merging child results, and the
README table rendered from a report."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/gpu.py as a module (bench/ on sys.path, as when it runs as a script)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu as module

    return module


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989.4e12),
        ("NVIDIA H100 80GB HBM3", 989.4e12),
        ("NVIDIA H100 SXM5 80GB", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA H100 PCIe", None),
        ("NVIDIA H200 NVL", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_table(gpu: ModuleType, name: str, peak: float | None) -> None:
    value, source = gpu.peak_flops(name, "gpu")
    assert value == peak
    assert ("--peak-tflops" in source) == (peak is None)


def test_peak_override_and_cpu(gpu: ModuleType) -> None:
    assert gpu.peak_flops("NVIDIA H200", "gpu", peak_tflops=500.0) == (500e12, "--peak-tflops")
    assert gpu.peak_flops("Intel(R) Xeon(R)", "cpu", peak_tflops=2.0) == (2e12, "--peak-tflops")
    value, source = gpu.peak_flops("Intel(R) Xeon(R)", "cpu")
    assert value is None and "--peak-tflops" in source


def test_mfu(gpu: ModuleType) -> None:
    assert gpu.mfu(3e12, 100.0, 989.4e12) == pytest.approx(0.30321, rel=1e-4)
    assert gpu.mfu(3e12, 100.0, None) is None
    assert gpu.mfu(None, 100.0, 989.4e12) is None
    assert gpu.mfu(3e12, None, 989.4e12) is None


def _args(gpu: ModuleType, *argv: str) -> argparse.Namespace:
    return gpu.parse_args(list(argv))


def test_plan_gpu(gpu: ModuleType) -> None:
    rows, runs = gpu.plan(_args(gpu), "gpu", gpus=2)
    assert [row["job"] for row in rows] == [spec.job for spec in gpu.JOBS]
    sizes = {row["job"]: row["input"] for row in rows}
    assert sizes == {
        "deeplab_semseg": "480x640",
        "polymax_semseg": "480x640",
        "polymax_depth": "480x640",
        "mqtransformer": "448x576",
    }
    assert all(run["overrides"] == [] for run in runs)  # Swin is built for 448x576 already
    assert [run["phase"] for run in runs] == ["eager"] * 4 + ["compiled"] * 4 + ["ddp"] * 4
    eager = {run["job"]: run for run in runs if run["phase"] == "eager"}
    assert {job: run["batch"] for job, run in eager.items()} == {
        "deeplab_semseg": 16,
        "polymax_semseg": 8,
        "polymax_depth": 8,
        "mqtransformer": 8,
    }
    assert all(run["eval"] and run["eval_batch"] == 4 and run["device"] == "cuda" for run in eager.values())
    assert (eager["mqtransformer"]["warmup"], eager["mqtransformer"]["steps"]) == (3, 10)


def test_plan_cpu(gpu: ModuleType) -> None:
    rows, runs = gpu.plan(_args(gpu, "--cpu"), "cpu", gpus=0)
    assert {row["input"] for row in rows} == {"64x64"}
    assert [run["phase"] for run in runs] == ["eager"] * 4
    overrides = {run["job"]: run["overrides"] for run in runs}
    assert overrides["mqtransformer"] == ["jobs.mqtransformer.model.img_size=[64,64]"]
    assert all(not value for job, value in overrides.items() if job != "mqtransformer")
    assert all((run["batch"], run["warmup"], run["steps"]) == (2, 1, 2) for run in runs)
    _, runs = gpu.plan(_args(gpu, "--cpu", "--cpu-compile", "--steps", "3"), "cpu", gpus=0)
    assert [(run["job"], run["phase"]) for run in runs if run["phase"] == "compiled"] == [
        ("deeplab_semseg", "compiled")
    ]
    assert {run["steps"] for run in runs} == {3}


def test_output_paths(gpu: ModuleType) -> None:
    """CPU runs (CI) never overwrite the committed GPU results: their default lies in the ignored
    bench/out/."""
    assert gpu.GPU_OUT == ROOT / "results" / "bench_gpu.json"
    assert gpu.CPU_OUT.parent == ROOT / "bench" / "out"
    assert "/bench/out/" in (ROOT / ".gitignore").read_text().splitlines()


def test_merge_and_finish(gpu: ModuleType) -> None:
    row = {"job": "deeplab_semseg", **dict.fromkeys(gpu.ROW_RESULTS)}
    run = {"job": "deeplab_semseg", "phase": "eager", "eval": True}
    records = [
        {"phase": "info", "params_m": 40.0, "forward_flops_per_image": 1e11},
        {"phase": "eager", "images_per_s": 1000.0, "peak_mem_mb": 2048.0},
    ]
    gpu.merge(row, run, records, "exit 1: torch.OutOfMemoryError: CUDA out of memory")
    gpu.finish(row, 989.4e12)
    assert row["train_flops_per_image"] == 3e11
    assert row["eager"]["mfu"] == pytest.approx(3e14 / 989.4e12)
    assert row["eval"] == {"error": "exit 1: torch.OutOfMemoryError: CUDA out of memory"}
    row["ddp"] = {"images_per_s": 1900.0}
    gpu.finish(row, 989.4e12)
    assert row["ddp"]["ratio"] == pytest.approx(1.9)


def _report() -> dict:
    full = {
        "job": "polymax_depth",
        "model": "polymax",
        "backbone": "convnext_large",
        "input": "480x640",
        "batch": 8,
        "train_flops_per_image": 1.5e12,
        "eager": {"images_per_s": 120.0, "peak_mem_mb": 40960.0, "mfu": 0.182},
        "compiled": {"images_per_s": 150.0, "peak_mem_mb": 30720.0, "mfu": 0.227},
        "eval": {"meter_share": 0.0412},
        "ddp": {"ratio": 1.93},
        "ddp_reason": None,
    }
    failed = {
        "job": "mqtransformer",
        "model": "mqtransformer",
        "backbone": "swin_large_patch4_window7_224",
        "input": "448x576",
        "batch": 8,
        "train_flops_per_image": None,
        "eager": {"error": "exit 1: torch.OutOfMemoryError: CUDA out of memory"},
        "compiled": {"skipped": "not run: the time budget (--budget-s 450) was spent"},
        "eval": {"error": "exit 1: torch.OutOfMemoryError: CUDA out of memory"},
        "ddp": None,
        "ddp_reason": "1 CUDA device(s) visible; the DDP ratio needs 2",
    }
    return {
        "mode": "gpu",
        "device": "NVIDIA H200",
        "torch": "2.14.1",
        "date": "2026-01-01T00:00:00+00:00",
        "peak": {"flops": 989.4e12, "source": "dense bf16 peak of the H200 SXM"},
        "rows": [full, failed],
    }


def test_render_markdown(gpu: ModuleType) -> None:
    text = gpu.render_markdown(_report())
    lines = text.splitlines()
    assert lines[0].startswith("GPU mode on NVIDIA H200, torch 2.14.1")
    assert (
        "| polymax_depth | polymax (convnext_large) | 480x640 | 8 | 120.0 | 150.0 | 40.0 / 30.0 | 1500 | "
        in text
    )
    assert "| 18.2% | 22.7% | 0.04 | 1.93 |" in text
    assert (
        "| mqtransformer | mqtransformer (swin_large_patch4_window7_224) | 448x576 | 8 | error | skipped "
        "| error / skipped | - | error | skipped | error | - |"
    ) in text
    assert (
        "- mqtransformer eager, mqtransformer eval: exit 1: torch.OutOfMemoryError: CUDA out of memory"
        in lines
    )
    assert "- mqtransformer compiled: not run: the time budget (--budget-s 450) was spent" in lines
    assert "- mqtransformer ddp: 1 CUDA device(s) visible; the DDP ratio needs 2" in lines


def test_markdown_option(gpu: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench_gpu.json"
    path.write_text(json.dumps(_report()))
    assert gpu.main(["--markdown", str(path)]) == 0
    assert capsys.readouterr().out == gpu.render_markdown(_report())


@pytest.mark.slow
def test_cpu_mode_end_to_end(tmp_path: Path) -> None:
    """The whole bench in CPU mode: every model at 64x64, a row each, nothing fatal (~1 min here)."""
    out = tmp_path / "bench_gpu_cpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # One thread per run: with another job on a 2-core machine, two OpenMP threads per run were 3-4x
    # slower (oversubscription), and the figures are not the point of this test.
    command = [sys.executable, str(BENCH / "gpu.py"), "--cpu", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu"
    assert [row["job"] for row in report["rows"]] == [
        "deeplab_semseg",
        "polymax_semseg",
        "polymax_depth",
        "mqtransformer",
    ]
    for row in report["rows"]:
        eager, evaluation = row["eager"], row["eval"]
        assert "error" not in eager and "error" not in evaluation, row
        assert math.isfinite(eager["images_per_s"]) and eager["images_per_s"] > 0
        assert row["forward_flops_per_image"] > 0 and row["train_flops_per_image"] > 0
        assert eager["peak_mem_mb"] > 0
        assert eager["mfu"] is None  # no CPU peak without --peak-tflops
        assert 0 < evaluation["meter_share"] < 1
        assert row["ddp"] is None and "CPU mode" in row["ddp_reason"]
        assert "skipped" in row["compiled"]
    assert set(report["rows"][-1]["eval"]["meter_s_per_batch_by_meter"]) == {
        "semseg",
        "depth_eigen",
        "depth_mtl",
        "normals",
        "edge",
    }
    assert "| deeplab_semseg | deeplabv3plus (resnet50) | 64x64 | 2 |" in proc.stdout
