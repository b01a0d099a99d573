"""Helpers for the data-layer tests: tiny synthetic datasets and independent reference computations.

Plain functions (not fixtures) so that each test module chooses its own fixture scope.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from densepred.data.render import Camera, render, sample_pose
from densepred.data.scene import sample_scene
from densepred.data.synthetic import synthesize_nyud, synthesize_taskonomy

SMALL = {"num_images": 8, "height": 48, "width": 64, "num_test": 3}


def small_nyud(root: Path, layout: str, seed: int = 0) -> Path:
    """An 8-frame 48x64 NYUD-v2 dataset in `layout` (5 train / 3 test)."""
    return synthesize_nyud(root / f"nyud_{layout}_{seed}", layout=layout, seed=seed, **SMALL)


def small_taskonomy(root: Path, defects: bool = False, seed: int = 0, views: int = 4) -> Path:
    """3 buildings (train/val/test) x `views` views at 48x48."""
    return synthesize_taskonomy(
        root / f"taskonomy_{defects}_{seed}", 3, views, 48, seed=seed, defects=defects
    )


def copy_tree(src: Path, dst: Path) -> Path:
    """A private copy of a dataset that a test may damage."""
    shutil.copytree(src, dst)
    return dst


def render_view(seed: int, height: int = 96, width: int = 128, shadows: bool = True) -> dict:
    """One NYU-camera view of a random furnished room."""
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng)
    position, rot = sample_pose(scene, rng)
    return render(scene, Camera.nyu(height, width), position, rot, rng, shadows=shadows)


def normals_from_depth(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Unit normals (H,W,3) from z-buffer depth by central differences of back-projected points,
    oriented towards the camera. Border pixels are NaN."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    points = np.stack([x, y, depth.astype(np.float64)], axis=-1)
    du = np.full_like(points, np.nan)
    dv = np.full_like(points, np.nan)
    du[:, 1:-1] = points[:, 2:] - points[:, :-2]
    dv[1:-1] = points[2:] - points[:-2]
    normal = np.cross(du, dv)
    with np.errstate(invalid="ignore", divide="ignore"):  # zero depth (holes) gives NaN, never compared
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    facing = (normal * points).sum(-1) > 0  # must point back at the camera
    normal[facing] *= -1
    return normal


def planar_interior(view: dict) -> np.ndarray:
    """Pixels whose whole 3x3 neighbourhood lies on the same object and the same face (normal)."""
    obj, normals = view["object"], view["normals"]
    h, w = obj.shape
    keep = np.zeros((h, w), dtype=bool)
    keep[1:-1, 1:-1] = True
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted_obj = np.roll(np.roll(obj, dy, 0), dx, 1)
            shifted_n = np.roll(np.roll(normals, dy, 0), dx, 1)
            keep &= (shifted_obj == obj) & (np.abs(shifted_n - normals).max(-1) < 1e-6)
    return keep


def angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles in degrees between unit vectors along the last axis."""
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


def brute_force_boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixel loops: True where any 4-neighbour has another label (reference for label_boundaries)."""
    h, w = labels.shape
    out = np.zeros((h, w), dtype=bool)
    for i in range(h):
        for j in range(w):
            for di, dj in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                a, b = i + di, j + dj
                if 0 <= a < h and 0 <= b < w and labels[a, b] != labels[i, j]:
                    out[i, j] = True
    return out


def brute_force_nearest_box(origin: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple:
    """Per-ray loops over boxes: nearest entry parameter (inf if none) and box index (-1)."""
    t_best = np.full(len(dirs), np.inf)
    best = np.full(len(dirs), -1)
    for r, d in enumerate(dirs):
        for p in range(len(lo)):
            t_near, t_far = -np.inf, np.inf
            for a in range(3):
                if d[a] == 0:
                    if not lo[p, a] <= origin[a] <= hi[p, a]:
                        t_near, t_far = np.inf, -np.inf
                    continue
                t1, t2 = (lo[p, a] - origin[a]) / d[a], (hi[p, a] - origin[a]) / d[a]
                t_near, t_far = max(t_near, min(t1, t2)), min(t_far, max(t1, t2))
            if t_near <= t_far and 1e-6 < t_near < t_best[r]:
                t_best[r], best[r] = t_near, p
    return t_best, best
