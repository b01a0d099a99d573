"""Loading a params profile: reading the YAML, merging presets and override sets, applying `--set`
overrides, and validating the result against the schema (config.py) with errors that name the file
and the dotted key path.

Shared stage settings are declared once, under `presets:` (named stage settings), and a job's stage
names the one it starts from: `finetune: {preset: polymax_finetune, iterations: 20}`. The loader
merges the preset under the job's own keys (nested mappings key by key), so every job key is a real
key of the file: `--set jobs.stl_depth.finetune.iterations=20`, DVC's
`dvc exp run -S 'params/smoke.yaml:++jobs.stl_depth.finetune.iterations=20'` and Snakemake's
`--config jobs.stl_depth.finetune.iterations=20` all change that one job, while
`--set presets.mtl_finetune.iterations=20` changes every job that starts from the preset. The file
holds no YAML anchors, so a tool that rewrites it (DVC does, with ruamel) keeps its meaning.

Overrides: `--set jobs.polymax_depth.model.num_clusters=32` (repeatable) replaces one value; the value
is parsed as YAML (`32` -> int, `[1, 2]` -> list, `null` -> None). Overrides apply to the file's tree
before presets are merged, and the result is validated as a whole, so a typo'd override is reported
like a typo in the file.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from densepred.config import Params, ParamsError

PRESET_KEY = "preset"
STAGE_KEYS = ("pretrain", "finetune", "evaluate")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (['a','b','c'], parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"--set {text!r}: expected KEY=VALUE with a dotted KEY, e.g. model.k=16")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ParamsError(f"--set {text!r}: empty component in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"--set {text!r}: value is not valid YAML: {exc}") from None
    return parts, value


def apply_override(tree: dict[str, Any], parts: list[str], value: Any, source: str = "--set") -> None:
    """Set `tree[parts[0]][parts[1]]... = value`, creating intermediate mappings."""
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ParamsError(f"{source}: {where} is a {type(child).__name__}, not a mapping")
        node = child
    node[parts[-1]] = value


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid params in {source}:"]
    for err in exc.errors():
        loc = _clean_loc(err["loc"])
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        shown = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {err.get('input')!r})"
        lines.append(f"  {loc or '<top level>'}: {what}{shown}")
    return "\n".join(lines)


def _clean_loc(loc: tuple[Any, ...]) -> str:
    """Dotted key path; drops the discriminator tag pydantic inserts after `model`."""
    parts: list[str] = []
    for i, item in enumerate(loc):
        if i > 0 and loc[i - 1] == "model" and isinstance(item, str) and item in _MODEL_TAGS:
            continue
        parts.append(str(item))
    return ".".join(parts)


_MODEL_TAGS = {"polymax", "mqtransformer", "deeplabv3plus", "stl_baseline", "mtl_baseline"}


class RepeatedKeyError(yaml.YAMLError):
    """A mapping of a YAML document holds one key twice; the message names the key and both lines."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error.

    Plain YAML loading keeps the last value silently, so a block pasted twice into a params file
    would run with values nobody chose. Keys merged in with `<<:` may still be overridden (that is
    what a merge is for); only a mapping's own keys must be unique.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique_keys(node, (), set())
        return super().construct_document(node)

    def _check_unique_keys(self, node: yaml.Node, where: tuple[str, ...], seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already checked
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique_keys(item, (*where, str(i)), seen)
            return
        if not isinstance(node, yaml.MappingNode):
            return
        first_lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._check_unique_keys(value_node, where, seen)
                continue
            if not isinstance(key_node, yaml.ScalarNode):  # a complex key: never a params key
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            dotted = ".".join((*where, str(key)))
            if key in first_lines:
                raise RepeatedKeyError(
                    f"key {dotted!r} is given twice, at lines {first_lines[key]} and {line}; keep one "
                    "(YAML would silently use the last)"
                )
            first_lines[key] = line
            self._check_unique_keys(value_node, (*where, str(key)), seen)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with errors that name the file; a key repeated in one mapping is an error
    naming the key and both lines (`UniqueKeyLoader`)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # a SafeLoader
    except RepeatedKeyError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save the params file as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `update` merged in: nested mappings key by key, anything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def flatten_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {a: {b: 1}, c.d: 2} -> {"a.b": 1, "c.d": 2} (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_keys(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def merge_presets(tree: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of the params tree in which every `jobs.<job>.<stage>: {preset: name, ...}` holds the
    preset's settings with the job's own keys merged over them (the job wins)."""
    tree = copy.deepcopy(tree)
    presets = tree.get("presets") or {}
    jobs = tree.get("jobs")
    if not isinstance(jobs, dict):
        return tree
    for job_name, job in jobs.items():
        if not isinstance(job, dict):
            continue
        for stage in STAGE_KEYS:
            settings = job.get(stage)
            if not isinstance(settings, dict) or PRESET_KEY not in settings:
                continue
            own = dict(settings)
            name = own.pop(PRESET_KEY)
            if not isinstance(presets, dict) or name not in presets:
                known = sorted(presets) if isinstance(presets, dict) else []
                raise ParamsError(
                    f"invalid params in {source}:\n  jobs.{job_name}.{stage}.preset: no preset named "
                    f"{name!r} under presets (known: {known})"
                )
            job[stage] = deep_merge(presets[name], own)
    return tree


def validate(tree: dict[str, Any], source: str) -> Params:
    """Merge presets into a raw params tree and validate it; errors name `source` and the key path."""
    tree = merge_presets(tree, source)
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ParamsError(_format_errors(exc, source)) from None


def with_overrides(
    tree: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str = ""
) -> dict[str, Any]:
    """A copy of a raw params tree with the dotted `overrides` (KEY=VALUE, as `--set`) applied."""
    tree = copy.deepcopy(tree)
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(tree, parts, value, source=f"{source}--set {text}")
    return tree


ParamsFiles = str | Path | Sequence[str | Path]


def profile_files(path: ParamsFiles) -> list[Path]:
    """A profile and its override sets as a list of paths: one path, or [profile, override set, ...]."""
    files = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not files:
        raise ParamsError("no params file given")
    return files


def read_profile(path: ParamsFiles) -> dict[str, Any]:
    """A profile's raw tree with its override sets merged over it in order (params/rehearse.yaml over
    params/paper.yaml), key by key as Snakemake merges several `--configfile`s."""
    profile, *override_sets = profile_files(path)
    tree = read_yaml(profile)
    for extra in override_sets:
        tree = deep_merge(tree, read_yaml(extra))
    return tree


def load_params(path: ParamsFiles, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Load a profile (and any override sets after it), apply dotted `overrides` (KEY=VALUE), validate."""
    files = profile_files(path)
    tree = with_overrides(read_profile(files), overrides)
    source = " + ".join(str(f) for f in files)
    source += f" (with --set {', '.join(overrides)})" if overrides else ""
    return validate(tree, source)


__all__ = ["load_params", "read_profile", "validate"]
