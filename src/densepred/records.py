"""What each pipeline output records about how it was made, and whether that still agrees with its stage.

Snakemake and DVC drive the same stages over the same files, and each keeps its own ledger of what it
ran (Snakemake's `.snakemake/metadata`, DVC's `dvc.lock`). Neither sees what the other did: a
checkpoint retrained by `dvc exp run` and then left in place by `git checkout -- params/ dvc.lock`
looks up to date to Snakemake, whose own record still says it ran the stage with the current params.
So the outputs carry their own record, and the decision is taken from it:

* a training stage's `final.pt`: `meta.settings_hash`, the stage's fingerprint (its identity and the
  identity of its `--init` weights, `StageRun.fingerprint`), and `meta.identity`, the identity itself;
* an evaluation's metrics JSON: the same two under `meta` (the checkpoint evaluated plays the part
  of the init weights);
* a tables stage's outputs: a record file (`paths.table_record`, one of the stage's outputs, so
  that DVC's run cache restores it with the tables) with the fingerprint of the stage's settings,
  the digest of every input it read (evaluation JSONs, sweep summaries, figure folders) and the
  digest of every table it wrote, so that a table restored by git beside a record of another build
  is seen for what it is;
* a sweep's summary and a prepared dataset: the same kind of record file without the inputs
  (`paths.sweep_record` beside the summary, `paths.data_record` inside the prepared folder).

`disagreement(stage)` compares an existing output's record with what the stage would record now
(from the current params and the inputs on disk) and says how they differ, in one line; the Snakefile
reruns such stages (workflow/rules/common.smk) and refuses to record them in dvc.lock. Synthetic raw
data keeps Snakemake's and DVC's own triggers.

Reading a checkpoint's meta here does not import torch (a Snakefile parse must stay cheap): the meta
is read from the checkpoint's pickle with every tensor left unread.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

RECORD_FORMAT = "densepred-record/1"


class StageLike(Protocol):
    """What the checks need of a pipeline stage (stage.Stage)."""

    name: str
    kind: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    settings: str
    init: str | None
    record: str | None


# ---------------------------------------------------------------------------------------- fingerprints


def fingerprint(identity_json: str, init_identity: str | None) -> str:
    """sha256 of a stage's identity (canonical JSON) and of the identity of the weights it starts
    from (a training stage's --init, an evaluation's checkpoint), as every output records it."""
    text = identity_json + "\n" + (init_identity or "")
    return hashlib.sha256(text.encode()).hexdigest()


def weights_identity(settings_hash: Any, weights_digest: Any) -> str:
    """The identity of a checkpoint's weights as stages started from it record it: the fingerprint of
    the stage that made it and the digest of the weights (never the file's bytes, whose meta holds
    provenance such as the git commit)."""
    return json.dumps({"settings_hash": settings_hash, "weights_digest": weights_digest}, sort_keys=True)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():  # Snakemake's marker in directory() outputs is no content
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".snakemake_timestamp")
    else:
        files = [path]
    for file in files:
        if path.is_dir():
            digest.update(f"{file.relative_to(path).as_posix()}\n".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------- checkpoint meta


class _Unread:
    """Stands in for a tensor, a storage or a dtype while reading a checkpoint's pickle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


class _MetaUnpickler(pickle.Unpickler):
    """Unpickles a torch checkpoint's `data.pkl` without torch: tensors become `_Unread`, their
    storages are never loaded, and nothing but containers and torch's own names is accepted."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" or module.startswith(("torch.", "numpy")):
            return _Unread
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        return None


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The `meta` of a densepred checkpoint, read without loading its tensors (or importing torch).

    Raises ValueError naming the file when it is not a readable torch zip checkpoint with a meta. A
    checkpoint is read once per version of the file (a stage's own check and its followers' share it)."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise ValueError(f"checkpoint {path} could not be read ({exc})") from None
    return _read_meta(path, info.st_ino, info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=256)
def _read_meta(path: Path, inode: int, mtime_ns: int, size: int) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if name is None:
                raise ValueError("no data.pkl")
            payload = _MetaUnpickler(archive.open(name)).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} could not be read ({exc})") from None
    meta = payload.get("meta") if isinstance(payload, dict) else None
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint {path} has no meta")
    return meta


def checkpoint_identity(path: str | Path) -> str | None:
    """`weights_identity` of a final checkpoint, from its meta; None for a checkpoint written without
    the digest of its weights (which `checkpoint.init_identity` would have to compute from them)."""
    meta = checkpoint_meta(path)
    if not meta.get("weights_digest"):
        return None
    return weights_identity(meta.get("settings_hash"), meta.get("weights_digest"))


# ------------------------------------------------------------------------------------ the comparison


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def identity_difference(recorded: Any, current: Mapping[str, Any], limit: int = 3) -> str:
    """The keys where a recorded identity differs from the current one, as `key: output X, params Y`."""
    if not isinstance(recorded, dict):
        return "it records no identity (written by an older densepred)"
    old, new = _flat(recorded), _flat(dict(current))
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if not keys:
        return ""
    shown = [f"{k}: output {json.dumps(old.get(k))}, params {json.dumps(new.get(k))}" for k in keys[:limit]]
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(shown) + more


def _made_by(stage: StageLike, recorded_hash: Any, recorded_identity: Any) -> str | None:
    """None when an output recording (`recorded_hash`, `recorded_identity`) is what `stage` makes now
    from its init weights on disk; otherwise how they differ. Undecidable (init not built yet) is
    None: Snakemake and DVC rerun the stage through its missing input anyway."""
    init_text = None
    if stage.init is not None:
        if not Path(stage.init).is_file():
            return None
        try:
            init_text = checkpoint_identity(stage.init)
        except ValueError:
            return None  # the init stage is stale itself and reruns first
        if init_text is None:
            return None  # a checkpoint from before weights digests: undecidable here
    if recorded_hash == fingerprint(stage.settings, init_text):
        return None
    detail = identity_difference(recorded_identity, json.loads(stage.settings))
    if detail:
        return f"made with other settings ({detail})"
    if stage.init is None:
        return "made with other settings"
    return f"made from other weights than the current {stage.init}"


def disagreement(stage: StageLike) -> str | None:
    """How the existing output of `stage` disagrees with what the stage makes now, in one line
    naming the output; None when it agrees, when it does not exist yet, or for stages whose outputs
    record nothing (data, sweeps)."""
    out = Path(stage.outs[0]) if stage.outs else None
    if out is None or not out.exists():
        return None
    try:
        if stage.kind in RECORD_FILE_KINDS:
            return _record_disagreement(stage)
        if stage.kind == "train":
            meta = checkpoint_meta(out)
        elif stage.kind == "evaluate":
            meta = json.loads(out.read_text()).get("meta")
        else:
            return None
        if not isinstance(meta, dict):
            raise ValueError("no meta")
    except (ValueError, OSError, AttributeError) as exc:
        return f"{out}: its record cannot be read ({exc})"
    why = _made_by(stage, meta.get("settings_hash"), meta.get("identity"))
    return None if why is None else f"{out} was {why}"


def stale_stages(stages: Iterable[StageLike]) -> dict[str, str]:
    """Stage name -> `disagreement` for every stage whose existing output disagrees with it now."""
    found = {}
    for stage in stages:
        why = disagreement(stage)
        if why is not None:
            found[stage.name] = why
    return found


# ------------------------------------------------------------------------------------- record files

# Kinds whose record is a file of its own (`Stage.record`) rather than inside the output.
RECORD_FILE_KINDS = ("tables", "tune", "prepare")


def _present(paths: Iterable[str]) -> dict[str, str]:
    return {p: file_digest(p) for p in paths if Path(p).is_file()}


def stage_record(stage: StageLike) -> dict[str, Any]:
    """What a stage with a record file records once its outputs are written (`Stage.record`): the
    fingerprint of its settings, the digests of its output files, and for tables the digests of the
    evaluations and summaries they were built from (a sweep's or a dataset's inputs are folders of
    data, whose changes Snakemake and DVC see themselves)."""
    record = {
        "format": RECORD_FORMAT,
        "stage": stage.name,
        "settings_hash": fingerprint(stage.settings, None),
        "outputs": _present(o for o in stage.outs if o != stage.record),
    }
    if stage.kind == "tables":
        record["inputs"] = _present(stage.deps)
    return record


def _changed(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in recorded.keys() | now.keys() if recorded.get(k) != now.get(k))


def _record_disagreement(stage: StageLike) -> str | None:
    """`disagreement` for the kinds with a record file. A missing record makes a table stale (cheap
    to rebuild) and leaves a sweep or prepared data to the tools' own triggers (written before
    records existed; expensive to redo)."""
    if stage.record is None:
        return None
    record_path = Path(stage.record)
    if not record_path.is_file():
        if stage.kind != "tables":
            return None
        return f"{stage.outs[0]} has no record of what it was built from ({record_path} is missing)"
    recorded = json.loads(record_path.read_text())
    now = stage_record(stage)
    if not isinstance(recorded, dict) or recorded.get("outputs") != now["outputs"]:
        return f"{stage.outs[0]} is not what {record_path} records (rewritten or restored since)"
    if recorded.get("settings_hash") != now["settings_hash"]:
        return f"{stage.outs[0]} was made with other settings ({record_path})"
    changed = _changed(recorded.get("inputs", {}), now.get("inputs", {}))
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        return f"{stage.outs[0]} was built from another {changed[0]}{more}"
    return None


def write_stage_record(stage: StageLike) -> Path:
    """Write a stage's record file (after its outputs), atomically; returns its path."""
    from densepred.io import atomic_write_json

    if stage.record is None:
        raise ValueError(f"stage {stage.name} keeps no record")
    path = Path(stage.record)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, stage_record(stage))
    return path
