"""Bitwise-portable CPU training: with the kernels pinned, this CPU and an emulated CPU of the other
vendor (qemu-x86_64) train the small workload of bench/bench_numerics.py, and a real smoke model, to
the same weights.

Without pins the two runs differ (bench/NOTES.md, "Bitwise portability across CPU models"); that
control is left to the benchmark to keep this test near 40 s (importing torch under qemu takes about
20 s). Emulation checks the kernel choice (instruction set, vendor), not the rounding of a real CPU's
approximate instructions (rcpps/rsqrtps), which qemu computes its own way.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PINS = "portable"  # launch.PORTABLE_CPU_ENV, what `runtime.cpu_kernels: portable` sets

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 is not installed (qemu-user)"
    ),
]


def bench_numerics():
    spec = importlib.util.spec_from_file_location("bench_numerics", ROOT / "bench" / "bench_numerics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def emulated_cpu() -> str:
    """A qemu CPU model whose CPUID vendor differs from this machine's."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    return "Haswell" if "AuthenticAMD" in cpuinfo else "EPYC-Rome"


def test_pinned_training_is_bitwise_equal_on_an_emulated_cpu_of_the_other_vendor():
    bench = bench_numerics()
    config = {"workload": "small", "ops": False}
    cpu = emulated_cpu()
    pinned = [bench.run_one(runner, PINS, config, timeout_s=600) for runner in ("native", cpu)]
    for row in pinned:
        assert "error" not in row, row
    assert pinned[0]["digest"] == pinned[1]["digest"], (pinned[0]["loss"], pinned[1]["loss"])
    assert pinned[0]["loss"] == pinned[1]["loss"]


def test_pinned_smoke_model_is_bitwise_equal_on_an_emulated_cpu_of_the_other_vendor():
    """Two training steps of the smoke MQTransformer as `densepred train` builds it: four task heads
    and their losses, sine position codes, normalised normals (densepred.ops.sqrt), the fused AdamW.
    About 45 s under qemu."""
    bench = bench_numerics()
    config = {"workload": "smoke:mqtransformer", "ops": False, "steps": 2, "batch": 2, "size": [64, 64]}
    rows = [bench.run_one(runner, PINS, config, timeout_s=600) for runner in ("native", emulated_cpu())]
    for row in rows:
        assert "error" not in row, row
    assert rows[0]["digest"] == rows[1]["digest"], (rows[0]["loss"], rows[1]["loss"])
