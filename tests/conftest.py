"""Shared fixtures: the real smoke profile, and helpers to shrink it for fast tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from densepred.params_loading import merge_presets

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"
PAPER = ROOT / "params" / "paper.yaml"


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def smoke_tree() -> dict:
    """The smoke profile's tree with its presets merged into the jobs, for tests to edit (each job's
    stage settings are its own, so editing one job changes that job only)."""
    return merge_presets(yaml.safe_load(SMOKE.read_text()), str(SMOKE))


def write_params(tree: dict, path: Path) -> Path:
    """Write a params tree as YAML."""
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def built_project(tmp_path_factory) -> Path:
    """The shrunk scratch project of tests/project_fixtures.py after a local
    `snakemake --cores 2 results/all` (table 2 of two jobs, table 3, the tables' HTML pages). Shared
    by the report and SLURM tests: read it, never change it."""
    from project_fixtures import make_project, run

    root = make_project(tmp_path_factory.mktemp("built") / "project")
    run(root, "snakemake", "--cores", "2", "results/all")
    return root
