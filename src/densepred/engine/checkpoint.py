"""Checkpoints: atomic writes, safe loading (`weights_only=True`), RNG capture, `--init` loading.

A checkpoint is a plain dict of tensors and builtin types (so `torch.load(weights_only=True)` reads it):

    format     CHECKPOINT_FORMAT
    kind       "last" (rolling, resumable) or "final" (a stage's output: model weights + meta only)
    step       optimiser steps done
    model      the unwrapped model's state_dict
    meta       what is needed to rebuild the model without guessing: job, stage, model config,
               tasks, dataset, num_classes, max_depth, profile, seed, git commit; the stage's
               fingerprint `settings_hash`, and ("final" only) `weights_digest` of `model`
    optimizer, scheduler, rng, tracking   ("last" only) the state a resumed run needs

Files are written to a temp file beside the target and renamed into place, so a crash mid-write never
leaves a truncated checkpoint under the real name. A full disk is reported as `DiskFullError` naming
the checkpoint (torch itself reports only "unexpected pos").

`init_identity(path)`: what a stage started with `--init path` records about its starting weights:
the init checkpoint's own fingerprint and the digest of its weights, never the file's bytes (its
meta holds the git commit, which changes without the weights changing).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from densepred.io import atomic_path
from densepred.records import weights_identity

CHECKPOINT_FORMAT = "densepred-checkpoint/1"
META_KEYS = ("job", "stage", "model", "tasks", "dataset", "num_classes", "max_depth")


class _RecordingWriter:
    """A file object for `torch.save` that remembers the OSError of a failed write.

    torch's zip writer turns a failed write into RuntimeError("... unexpected pos ..."), dropping
    the cause; the recorded OSError (ENOSPC, EIO, ...) is what the user needs to see.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (a checkpoint dict) to `path` atomically; a failed write raises its OSError."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        writer = _RecordingWriter(handle)
        try:
            torch.save(payload, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise
    return path


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` with `torch.load(weights_only=True)`.

    `mmap=True` maps the tensors instead of reading them: cheap when only the meta is wanted.

    Raises FileNotFoundError for a missing file and ValueError (naming the file) for anything that
    is not a densepred checkpoint: truncated or corrupt files, foreign formats, missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for corrupt files
        raise ValueError(f"checkpoint {path} could not be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path} is not a densepred checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    missing = [k for k in ("model", "meta", "step") if k not in ckpt]
    missing += [f"meta.{k}" for k in META_KEYS if k not in ckpt.get("meta", {})]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}")
    return ckpt


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state_dict: each tensor's name, dtype, shape and bytes, in sorted key order.

    Equal weights give equal digests whatever else the checkpoint holds; stored in a final
    checkpoint's meta (`weights_digest`) when it is written, so that reading it is cheap.
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def init_identity(path: Path) -> str:
    """The identity of `--init path` that a stage's fingerprint includes: the init checkpoint's own
    fingerprint (`meta.settings_hash`) and its weights digest (from its meta, or computed from the
    weights for a checkpoint written without it). Rewriting the file with equal weights and other
    provenance (git commit, profile name, paths) leaves it unchanged."""
    return loaded_identity(load_checkpoint(path, mmap=True))


def loaded_identity(ckpt: Mapping[str, Any]) -> str:
    """`init_identity` of a checkpoint already loaded (`load_checkpoint`)."""
    meta = ckpt["meta"]
    digest = meta.get("weights_digest") or weights_digest(ckpt["model"])
    return weights_identity(meta.get("settings_hash"), digest)


# ------------------------------------------------------------------------------------------------ RNG


def capture_rng() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy, random) as weights-only-loadable values."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "random": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the states captured by `capture_rng`."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["gauss"]))
    rnd = state["random"]
    random.setstate((rnd["version"], tuple(rnd["internal"]), rnd["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- --init


@dataclass
class InitReport:
    """What `load_init_weights` did with each model key (written to out/init_report.json)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reset: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"init from {self.source}: {len(self.loaded)} tensors loaded, {len(self.reset)} reset "
            f"(shape differs), {len(self.missing)} missing from the checkpoint (kept at init), "
            f"{len(self.unexpected)} unused"
        )


def load_init_weights(model: nn.Module, path: Path) -> InitReport:
    """Initialise `model` from checkpoint `path` (e.g. Taskonomy pretraining -> NYUD-v2 finetuning).

    Every model key whose shape matches the checkpoint's is loaded. Keys whose shape differs (a
    semseg classifier with 17 Taskonomy classes vs 40 NYUD-v2 classes, a depth head's max-depth
    buffers of another size, ...) keep the model's fresh initialisation and are reported as `reset`;
    model keys absent from the checkpoint are `missing`, checkpoint keys absent from the model are
    `unexpected`. Each parameter is judged on its own, so a head's shape-compatible layers still load.
    """
    ckpt = load_checkpoint(path)
    source = ckpt["model"]
    target = model.state_dict()
    report = InitReport(source=str(path))
    new_state = {}
    for key, value in target.items():
        if key not in source:
            report.missing.append(key)
        elif tuple(source[key].shape) != tuple(value.shape):
            report.reset.append(
                {"key": key, "checkpoint_shape": list(source[key].shape), "model_shape": list(value.shape)}
            )
        else:
            new_state[key] = source[key]
            report.loaded.append(key)
    report.unexpected = sorted(k for k in source if k not in target)
    model.load_state_dict(new_state, strict=False)
    return report
