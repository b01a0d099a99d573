"""Process settings of a job (engine/runtime.py): the deterministic switch and what it costs."""

from __future__ import annotations

import subprocess
import sys

import torch

from densepred.config import RuntimeCfg
from densepred.engine.runtime import job_settings


def test_job_settings_switch_deterministic_algorithms_on_and_restore_them():
    before = torch.are_deterministic_algorithms_enabled()
    runtime = RuntimeCfg(deterministic=True, compile=False, threads=1)
    with job_settings(runtime, torch.device("cpu"), seed=0):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_an_eager_job_does_not_load_inductor():
    """The switch of eager runs leaves Dynamo and Inductor unimported (1.8 s of CPU per process)."""
    code = (
        "import sys, torch\n"
        "from densepred.config import RuntimeCfg\n"
        "from densepred.engine.runtime import job_settings\n"
        "with job_settings(RuntimeCfg(deterministic=True, compile=False), torch.device('cpu'), 0):\n"
        "    assert torch.are_deterministic_algorithms_enabled()\n"
        "print('torch._inductor' in sys.modules, 'torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
