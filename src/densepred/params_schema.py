"""The JSON schema of a params file, generated from the schema models (config.py) and committed at
SCHEMA_PATH for Snakemake's `validate`; `densepred schema` rewrites it (and a test checks that the
committed file is current).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from densepred.config import Params

SCHEMA_PATH = Path("workflow/schemas/params.schema.json")


def json_schema() -> dict[str, Any]:
    """The JSON schema of a params file (draft 2020-12), for Snakemake's `validate`."""
    schema = Params.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "densepred params"
    return schema


def write_json_schema(path: Path = SCHEMA_PATH) -> Path:
    """Write the schema atomically to `path`."""
    from densepred.io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    return Path(path)
