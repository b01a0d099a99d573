"""The package builds without warnings from its build backend (`make venv` prints none the project can
fix): the PEP 517 hooks that `pip install -e .` calls run on a copy of the project's metadata, offline,
with every warning shown."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from conftest import ROOT

# The hooks pip calls for `pip install -e .`, each in its own process (as pip does).
HOOKS = (
    "print(backend.get_requires_for_build_editable())",
    "print(backend.prepare_metadata_for_build_editable(sys.argv[1]))",
)


def _build_system() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]


def test_build_backend_prints_no_warning(tmp_path: Path):
    import setuptools

    installed = setuptools.__version__
    for spec in map(Requirement, _build_system()["requires"]):
        if spec.name == "setuptools":  # the backend here is one that pip's isolated build may pick
            assert spec.specifier.contains(installed), f"setuptools {installed} does not satisfy {spec}"
    project = tmp_path / "project"
    (project / "src" / "densepred").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copy(ROOT / "src" / "densepred" / "__init__.py", project / "src" / "densepred" / "__init__.py")
    meta = tmp_path / "meta"
    meta.mkdir()
    output = ""
    for hook in HOOKS:
        code = f"import sys\nimport setuptools.build_meta as backend\n{hook}"
        done = subprocess.run(
            [sys.executable, "-W", "always", "-c", code, str(meta)],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
        )
        output += done.stdout + done.stderr
        assert done.returncode == 0, output
    warnings = [line for line in output.splitlines() if "Warning" in line or "deprecated" in line.lower()]
    assert warnings == [], "the build backend warns:\n" + output
    metadata = next(meta.glob("*.dist-info")) / "METADATA"
    assert "License-Expression: Apache-2.0" in metadata.read_text().splitlines()
