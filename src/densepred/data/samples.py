"""The sample dict every reader returns, and its validation.

A sample (docs/conventions.md) is a dict with `id` (str) and the requested tasks as torch tensors:
`image` float32 (3,H,W) in [0,1]; `semseg` int64 (H,W), 255 = ignore; `depth` float32 (1,H,W) metres,
0 = invalid; `normals` float32 (3,H,W), zero vector = invalid; `edge` float32 (1,H,W) in {0,1}.
Readers call `check_sample` before returning, so a decoded-but-wrong sample is an error, never a
silent training input; `prepare` turns that error into a skipped-and-reported sample.
"""

from __future__ import annotations

import numpy as np
import torch

from densepred.tasks import IGNORE_INDEX, TASKS, dataset_info

# Decoded 8-bit normals have |n| within 1 +- sqrt(3)/255; we allow 0.1 for resampled third-party maps.
NORMAL_NORM_TOLERANCE = 0.1
# Depth above DEPTH_LIMIT_FACTOR * dataset max depth is a unit mistake (e.g. millimetres), not data.
DEPTH_LIMIT_FACTOR = 2.0


def parse_tasks(tasks: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Validate a task list (None = all four), keeping the canonical order of `densepred.tasks.TASKS`."""
    if tasks is None:
        return TASKS
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected a subset of {list(TASKS)}")
    if not tasks:
        raise ValueError("tasks must not be empty")
    return tuple(t for t in TASKS if t in tasks)


def make_sample(sample_id: str, arrays: dict[str, np.ndarray]) -> dict:
    """Wrap numpy arrays in the tensor dtypes of the convention (no copies where dtypes match)."""
    dtypes = {"image": np.float32, "semseg": np.int64, "depth": np.float32, "normals": np.float32}
    dtypes["edge"] = np.float32
    sample: dict = {"id": sample_id}
    for key, array in arrays.items():
        sample[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=dtypes[key]))
    return sample


def check_sample(sample: dict, dataset: str, source: str) -> None:
    """Raise ValueError naming `source` unless the sample satisfies the tensor conventions.

    Checks shapes (all tasks share H,W), dtypes and value ranges: image finite in [0,1]; semseg in
    0..C-1 or 255; depth finite, >= 0 and below 2x the dataset's max depth; normals finite with valid
    vectors of unit length (+-0.1); edge in {0,1}.
    """
    info = dataset_info(dataset)
    image = sample.get("image")
    if image is None:
        raise ValueError(f"{source}: sample has no image")
    expected = {"image": 3, "depth": 1, "normals": 3, "edge": 1}
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"{source}: image has shape {tuple(image.shape)}; expected (3, H, W)")
    size = tuple(image.shape[1:])
    for key in ("image", *TASKS):
        if key not in sample:
            continue
        value = sample[key]
        shape = (*((expected[key],) if key in expected else ()), *size)
        if tuple(value.shape) != shape:
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}; expected {shape}")
        _check_values(key, value, info.num_classes, DEPTH_LIMIT_FACTOR * info.max_depth, source)


def _check_values(key: str, tensor: torch.Tensor, num_classes: int, depth_limit: float, source: str) -> None:
    # numpy on the shared buffer: single-threaded and far cheaper than torch ops on small maps.
    value = tensor.numpy()
    if key == "semseg":
        bad = (value < 0) | ((value >= num_classes) & (value != IGNORE_INDEX))
        if bad.any():
            raise ValueError(
                f"{source}: semseg values {np.unique(value[bad])[:5].tolist()} outside 0..{num_classes - 1} "
                f"and {IGNORE_INDEX}"
            )
        return
    low, high = float(value.min()), float(value.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{source}: {key} has non-finite values")
    if key == "image" and (low < 0 or high > 1):
        raise ValueError(f"{source}: image values outside [0, 1]")
    if key == "depth" and (low < 0 or high > depth_limit):
        raise ValueError(
            f"{source}: depth range [{low:.3f}, {high:.3f}] m outside [0, {depth_limit:g}] (wrong units?)"
        )
    if key == "normals":
        norm = np.sqrt((value.astype(np.float64) ** 2).sum(axis=0))
        if (np.abs(norm[norm > 0] - 1) > NORMAL_NORM_TOLERANCE).any():
            raise ValueError(f"{source}: normals contain vectors that are neither unit length nor zero")
    if key == "edge" and not ((value == 0) | (value == 1)).all():
        raise ValueError(f"{source}: edge values outside {{0, 1}}")
