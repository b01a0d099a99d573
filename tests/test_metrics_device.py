"""Device invariance: every meter gives the same numbers for a batch on CUDA as on the CPU."""

from __future__ import annotations

import pytest
import torch

from densepred.metrics import MetricSuite

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def batch(seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "semseg": torch.randn(3, 6, 24, 32, generator=g),
        "depth": torch.rand(3, 1, 24, 32, generator=g) * 9 + 0.2,
        "normals": torch.randn(3, 3, 24, 32, generator=g),
        "edge": torch.randn(3, 1, 24, 32, generator=g) * 3,
    }
    target = {
        "semseg": torch.randint(0, 6, (3, 24, 32), generator=g),
        "depth": torch.rand(3, 1, 24, 32, generator=g) * 9,
        "normals": torch.randn(3, 3, 24, 32, generator=g),
        "edge": (torch.rand(3, 1, 24, 32, generator=g) > 0.85).float(),
    }
    return outputs, target


def test_cuda_equals_cpu():
    tasks = ["semseg", "depth", "normals", "edge"]
    cpu = MetricSuite.build(tasks, "nyud", 6, boundary_thresholds=11)
    gpu = MetricSuite.build(tasks, "nyud", 6, boundary_thresholds=11)
    for seed in range(2):
        outputs, target = batch(seed)
        cpu.update(outputs, target)
        gpu.update({k: v.cuda() for k, v in outputs.items()}, {k: v.cuda() for k, v in target.items()})
    expected, got = cpu.compute(), gpu.compute()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        # integer statistics are identical; the float32 per-pixel terms may differ in their last
        # bit between devices (and a normal angle may then cross into the next 0.0025-degree bin)
        assert got[key] == pytest.approx(value, rel=1e-5, abs=3e-3, nan_ok=True), key
