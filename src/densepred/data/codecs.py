"""Reading and writing the per-file encodings of the raw datasets, with clear errors.

Encodings (docs/data-formats.md §1.4, §2 and §3.2):
- 8-bit normals: n = 2 v / 255 - 1 per channel; a writer stores round((n + 1) / 2 * 255).
- Taskonomy depth: 16-bit grey PNG, metres = v / 512, 65535 = no geometry.
- PNG/JPEG/NPY decoding errors (zero-byte, truncated, corrupt) become `ValueError` naming the file,
  a missing file `FileNotFoundError`; callers (readers, prepare) rely on exactly these two types.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TASKONOMY_DEPTH_SCALE = 512.0  # uint16 units per metre
TASKONOMY_DEPTH_INVALID = 65535
TASKONOMY_NORMAL_INVALID = (128, 128, 128)

_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")


def read_image(path: Path, kind: str) -> np.ndarray:
    """Decode an image file to a numpy array of the kind a format expects.

    kind: "rgb" -> (H,W,3) uint8 (an alpha channel is dropped); "gray8" -> (H,W) uint8 ('L' or
    palette 'P' indices); "gray16" -> (H,W) uint16 (PNG bit depth 16, PIL mode 'I;16' or 'I').
    """
    path = Path(path)
    _require_file(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except _IMAGE_ERRORS as exc:
        raise ValueError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
    if kind == "rgb":
        if mode not in ("RGB", "RGBA"):
            raise ValueError(f"{path}: expected an RGB image, got PIL mode {mode!r}")
        return np.ascontiguousarray(array[..., :3])
    if kind == "gray8":
        if mode not in ("L", "P"):
            raise ValueError(f"{path}: expected an 8-bit single-channel image, got PIL mode {mode!r}")
        return array.astype(np.uint8, copy=False)
    if kind == "gray16":
        if mode not in ("I;16", "I"):
            raise ValueError(f"{path}: expected a 16-bit grey PNG, got PIL mode {mode!r}")
        if array.min() < 0 or array.max() > 65535:
            raise ValueError(f"{path}: 16-bit values out of range [{array.min()}, {array.max()}]")
        return array.astype(np.uint16)
    raise ValueError(f"unknown image kind {kind!r}; expected 'rgb', 'gray8' or 'gray16'")


def read_npy(path: Path) -> np.ndarray:
    """Load a .npy array (no pickles), turning truncated or corrupt files into a ValueError."""
    path = Path(path)
    _require_file(path)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read .npy ({type(exc).__name__}: {exc})") from None


def write_png(path: Path, array: np.ndarray) -> None:
    """Write uint8 (H,W) / (H,W,3) or uint16 (H,W) as PNG; uint16 gives bit depth 16 (mode I;16)."""
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: PNG writer expects uint8 or uint16, got {array.dtype}")
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def write_jpeg(path: Path, array: np.ndarray, quality: int = 95) -> None:
    """Write an (H,W,3) uint8 RGB array as JPEG (the MTI-Net NYUD variant stores images this way)."""
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, format="JPEG", quality=quality)


def encode_normals_uint8(normals: np.ndarray) -> np.ndarray:
    """Unit normals (...,3) in [-1,1] -> uint8 round((n + 1) / 2 * 255)."""
    return np.clip(np.rint((np.asarray(normals) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def decode_normals_uint8(values: np.ndarray, min_norm: float = 0.5) -> np.ndarray:
    """uint8 (...,3) -> float32 normals 2 v / 255 - 1 (not renormalised, as the formats specify).

    Grey pixels such as (128,128,128) (Taskonomy's invalid marker) or (127,127,127) (a common fill of
    masked NYUD normals) decode to a vector of length < 0.01, not a direction: every vector shorter
    than `min_norm` becomes the zero vector, our invalid marker.
    """
    normals = np.asarray(values, dtype=np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    normals[np.linalg.norm(normals, axis=-1) < min_norm] = 0.0
    return normals


def encode_taskonomy_depth(metres: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Metres -> uint16 round(m * 512); invalid pixels (and anything >= 128 m) -> 65535."""
    scaled = np.rint(np.asarray(metres, dtype=np.float64) * TASKONOMY_DEPTH_SCALE)
    out = np.clip(scaled, 0, TASKONOMY_DEPTH_INVALID - 1).astype(np.uint16)
    out[~valid | (scaled >= TASKONOMY_DEPTH_INVALID)] = TASKONOMY_DEPTH_INVALID
    return out


def decode_taskonomy_depth(values: np.ndarray) -> np.ndarray:
    """uint16 -> float32 metres (v / 512); 65535 (no geometry) -> 0, our invalid marker."""
    values = np.asarray(values)
    depth = values.astype(np.float32) / np.float32(TASKONOMY_DEPTH_SCALE)
    depth[values == TASKONOMY_DEPTH_INVALID] = 0.0
    return depth
