"""Pins and schema stay in one place: environment.yml mirrors pyproject, the schema mirrors the model."""

from __future__ import annotations

import json
import tomllib

import yaml

from conftest import ROOT
from densepred.params_schema import SCHEMA_PATH, json_schema


def _pyproject_pins() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["dev"]


def test_environment_yml_has_the_pyproject_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip_section) == sorted(_pyproject_pins())
    assert "python=3.11" in env["dependencies"]


def test_every_runtime_dependency_is_pinned_exactly():
    for spec in _pyproject_pins():
        assert "==" in spec, f"{spec} is not pinned to an exact version"


def test_exported_schema_matches_the_params_model():
    committed = json.loads((ROOT / SCHEMA_PATH).read_text())
    assert committed == json_schema(), "run `densepred schema` to refresh workflow/schemas/"
