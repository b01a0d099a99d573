"""Figures written by evaluation: qualitative predictions and PolyMaX cluster probability maps.

* `save_prediction_figure`: one PNG per test image, a grid with the input image and, per task, the
  ground truth (top row) and the prediction (bottom row).
* `save_cluster_maps`: PolyMaX's K per-pixel cluster probability maps with each cluster's value
  (depth bin centre in metres, normal vector, or matched class), as in the paper's Fig. 8.

Rendering is plain numpy + Pillow with matplotlib colour maps, so the PNG bytes depend only on the
data (deterministic). Colour conventions: semseg classes get fixed, well-separated colours (ignore =
black); depth uses `viridis` over [0, max_depth] (invalid = black); normals map (x,y,z) in [-1,1] to
RGB (zero vector = black); edges are grey levels of the probability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from densepred.io import atomic_path
from densepred.tasks import IGNORE_INDEX

LABEL_HEIGHT = 14
GAP = 2


def _to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def colormap(name: str, values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8 RGB with a matplotlib colour map."""
    from matplotlib import colormaps

    lut = (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    index = np.clip(np.nan_to_num(values, nan=0.0) * 255, 0, 255).round().astype(np.int64)
    return lut[index]


def class_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: evenly spread hues at alternating lightness (deterministic)."""
    from matplotlib.colors import hsv_to_rgb

    hues = (np.arange(num_classes) * 0.618033988749895) % 1.0
    sat = np.where(np.arange(num_classes) % 2 == 0, 0.85, 0.6)
    val = np.where(np.arange(num_classes) % 3 == 0, 0.95, 0.75)
    return (hsv_to_rgb(np.stack([hues, sat, val], axis=1)) * 255).round().astype(np.uint8)


def render_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3,H,W) float in [0,1] -> (H,W,3) uint8."""
    arr = _to_numpy(image)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"image must be (3,H,W), got shape {arr.shape}")
    return (np.clip(arr.transpose(1, 2, 0), 0.0, 1.0) * 255).round().astype(np.uint8)


def render_semseg(labels: torch.Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """(H,W) class ids (255 = ignore -> black) -> (H,W,3) uint8."""
    arr = _to_numpy(labels).astype(np.int64)
    out = np.zeros((*arr.shape, 3), dtype=np.uint8)
    valid = (arr >= 0) & (arr < num_classes) & (arr != IGNORE_INDEX)
    out[valid] = class_palette(num_classes)[arr[valid]]
    return out


def render_depth(depth: torch.Tensor | np.ndarray, max_depth: float) -> np.ndarray:
    """(1,H,W) or (H,W) metres -> viridis over [0, max_depth]; depth <= 0 (invalid) is black."""
    arr = _to_numpy(depth).reshape(_to_numpy(depth).shape[-2:])
    out = colormap("viridis", arr / max_depth)
    out[~(arr > 0)] = 0
    return out


def render_normals(normals: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3,H,W) unit vectors -> RGB = (n + 1) / 2; the zero vector (invalid) is black."""
    arr = _to_numpy(normals)
    rgb = np.clip((arr.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
    out = (rgb * 255).round().astype(np.uint8)
    out[np.abs(arr).sum(axis=0) == 0] = 0
    return out


def render_edge(edge: torch.Tensor | np.ndarray, logits: bool = False) -> np.ndarray:
    """(1,H,W) edge map (probabilities, or logits when `logits`) -> grey levels."""
    arr = _to_numpy(edge).reshape(_to_numpy(edge).shape[-2:])
    if logits:
        arr = 1.0 / (1.0 + np.exp(-arr))
    grey = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def render_task(
    task: str, value: torch.Tensor, num_classes: int, max_depth: float, prediction: bool
) -> np.ndarray:
    """Render a ground truth (`prediction=False`) or an eval-mode model output for `task`."""
    if task == "semseg":
        labels = value.argmax(0) if prediction else value
        return render_semseg(labels, num_classes)
    if task == "depth":
        return render_depth(value, max_depth)
    if task == "normals":
        return render_normals(value)
    if task == "edge":
        return render_edge(value, logits=prediction)
    raise ValueError(f"no renderer for task {task!r}")


def grid(tiles: Sequence[Sequence[tuple[str, np.ndarray | None]]]) -> Image.Image:
    """Tiles (rows of (caption, HxWx3 uint8 or None for blank)) of equal size, captioned, as one image."""
    sample = next(t for row in tiles for _, t in row if t is not None)
    h, w = sample.shape[:2]
    ncols = max(len(row) for row in tiles)
    canvas = Image.new("RGB", (ncols * (w + GAP) - GAP, len(tiles) * (h + LABEL_HEIGHT + GAP) - GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(tiles):
        for c, (caption, tile) in enumerate(row):
            x, y = c * (w + GAP), r * (h + LABEL_HEIGHT + GAP)
            if tile is None:
                continue
            if tile.shape[:2] != (h, w):
                raise ValueError(f"tile {caption!r} is {tile.shape[:2]}, expected {(h, w)}")
            draw.text((x + 2, y + 1), caption, fill="black")
            canvas.paste(Image.fromarray(tile), (x, y + LABEL_HEIGHT))
    return canvas


def save_png(image: Image.Image, path: Path) -> Path:
    """Write a PNG atomically."""
    with atomic_path(Path(path)) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def save_prediction_figure(
    path: Path,
    image: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    predictions: Mapping[str, torch.Tensor],
    num_classes: int,
    max_depth: float,
) -> Path:
    """Input image + per task ground truth (top) and prediction (bottom), for one sample (no batch axis)."""
    tasks = [t for t in predictions if t in ("semseg", "depth", "normals", "edge")]
    if not tasks:
        raise ValueError(f"no task predictions to draw (keys {sorted(predictions)})")
    top: list[tuple[str, np.ndarray | None]] = [("image", render_image(image))]
    bottom: list[tuple[str, np.ndarray | None]] = [("", None)]
    for task in tasks:
        gt = targets.get(task)
        top.append(
            (f"{task} gt", None if gt is None else render_task(task, gt, num_classes, max_depth, False))
        )
        bottom.append((f"{task} pred", render_task(task, predictions[task], num_classes, max_depth, True)))
    return save_png(grid([top, bottom]), path)


def cluster_caption(task: str, values: torch.Tensor, k: int) -> str:
    """Caption of cluster k: its depth bin centre, normal vector, or matched class and confidence."""
    v = values[k]
    if task == "depth":
        return f"k{k}: {float(v):.2f} m"
    if task == "normals":
        x, y, z = (float(a) for a in v[:3])
        return f"k{k}: ({x:+.1f},{y:+.1f},{z:+.1f})"
    return f"k{k}: p(c{k})={float(v[k]):.2f}" if v.numel() > k else f"k{k}"


def save_cluster_maps(
    path: Path, image: torch.Tensor, probs: torch.Tensor, values: torch.Tensor, task: str, columns: int = 8
) -> Path:
    """PolyMaX probability maps for one image: probs (K,H,W) in [0,1], values (K,...) per cluster.

    Clusters are ordered by their value for depth (near to far), as in the paper's Fig. 8.
    """
    if probs.ndim != 3:
        raise ValueError(f"probs must be (K,H,W), got {tuple(probs.shape)}")
    k_total = probs.shape[0]
    order = list(range(k_total))
    if task == "depth":
        order = sorted(order, key=lambda k: float(values[k]))
    tiles: list[tuple[str, np.ndarray | None]] = [("image", render_image(image))]
    for k in order:
        tiles.append((cluster_caption(task, values, k), colormap("viridis", _to_numpy(probs[k]))))
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    return save_png(grid(rows), path)
