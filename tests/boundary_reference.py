"""Per-image reference for the batched boundary matching (`boundary_matching.batch_match_counts`).

Also `table_thin`, the thinning rule applied to every pixel as defined (the reference for the packed
bitwise thinning).

The matcher the metric used before the batched version: one candidate graph per image, built over a
support map and restricted to each predicted map, each map matched by Hopcroft-Karp. The tests check
the batched matcher and the meter against it (and it against brute force on tiny inputs).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix

from densepred.metrics.boundary_matching import disc_offsets, max_matching_size
from densepred.metrics.boundary_ops import _NEIGHBOURS, _thinning_tables


def candidate_graph(
    pred_rc: np.ndarray, gt_map: np.ndarray, radius: float, block_elements: int = 1 << 21
) -> csr_matrix:
    """Bipartite graph (len(pred_rc), #gt pixels): an entry where the two pixels lie within `radius`.

    `pred_rc` are (row, col) integer coordinates (P, 2); ground-truth pixels are numbered in raster
    order of `gt_map` (H, W) bool. Offsets are scanned in blocks of about `block_elements` lookups.
    """
    height, width = gt_map.shape
    num_gt = int(gt_map.sum())
    # ground-truth index per pixel of a copy padded by the reach, so that no bounds check is needed
    reach = math.ceil(radius)
    gt_index = np.full((height + 2 * reach, width + 2 * reach), -1, dtype=np.int64)
    gt_index[reach : reach + height, reach : reach + width][gt_map] = np.arange(num_gt)
    offsets = disc_offsets(radius)
    rows = pred_rc[:, 0:1] + reach
    cols = pred_rc[:, 1:2] + reach
    block = max(1, block_elements // max(1, pred_rc.shape[0]))
    rows_out: list[np.ndarray] = []
    cols_out: list[np.ndarray] = []
    for start in range(0, offsets.shape[0], block):
        part = offsets[start : start + block]
        target = gt_index[rows + part[:, 0], cols + part[:, 1]]  # (P, block)
        pred_i, _ = np.nonzero(target >= 0)
        rows_out.append(pred_i)
        cols_out.append(target[target >= 0])
    pred_idx = np.concatenate(rows_out) if rows_out else np.zeros(0, dtype=np.int64)
    gt_idx = np.concatenate(cols_out) if cols_out else np.zeros(0, dtype=np.int64)
    data = np.ones(pred_idx.shape[0], dtype=np.int8)
    return csr_matrix((data, (pred_idx, gt_idx)), shape=(pred_rc.shape[0], num_gt))


class BoundaryMatcher:
    """Counts matches of one image's predicted boundary maps against its ground-truth boundary.

    The candidate graph is built once over `support` (H, W) bool, a superset of every predicted map
    that will be counted (e.g. the binarised map at the lowest threshold, since thinning only
    deletes pixels), and restricted to each map's pixels; a map whose matchable pixels equal the
    previous map's reuses its count. Support pixels farther than `radius` (plus a margin) from every
    ground-truth pixel can never match: they get no graph row and only count as predicted.
    """

    _OUTSIDE, _UNMATCHABLE = -2, -1

    def __init__(self, gt_map: np.ndarray, support: np.ndarray, radius: float) -> None:
        if gt_map.shape != support.shape:
            raise ValueError(f"ground truth {gt_map.shape} and support {support.shape} differ in shape")
        self.num_gt = int(gt_map.sum())
        if self.num_gt:
            near = ndimage.distance_transform_edt(~gt_map) <= radius + 1e-6
            candidates = support & near
        else:
            candidates = np.zeros_like(support)
        candidate_rc = np.argwhere(candidates)
        self._index = np.full(support.shape, self._OUTSIDE, dtype=np.int64)
        self._index[support] = self._UNMATCHABLE
        self._index[candidates] = np.arange(candidate_rc.shape[0])
        self._graph = candidate_graph(candidate_rc, gt_map, radius)
        self._last_rows: np.ndarray | None = None
        self._last_matched = 0

    def count(self, pred_map: np.ndarray) -> tuple[int, int]:
        """(matched pixels, predicted pixels) of `pred_map` (H, W) bool."""
        index = self._index[pred_map]
        if index.size and index.min() == self._OUTSIDE:
            raise ValueError("a predicted boundary pixel lies outside the matcher's support")
        rows = index[index >= 0]
        if self._last_rows is None or not np.array_equal(rows, self._last_rows):
            self._last_matched = max_matching_size(self._graph[rows], "hopcroft_karp")
            self._last_rows = rows
        return self._last_matched, int(index.shape[0])


def match_counts(pred_maps: np.ndarray, gt_map: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Matched and predicted pixel counts (each (T,) int64) of `pred_maps` (T, H, W) against `gt_map`.

    Matched is both cntP and cntR of the protocol (one ground truth per image).
    """
    matcher = BoundaryMatcher(gt_map, pred_maps.any(axis=0), radius)
    counts = np.array([matcher.count(pred_map) for pred_map in pred_maps], dtype=np.int64).reshape(-1, 2)
    return counts[:, 0], counts[:, 1]


def table_thin(maps: np.ndarray) -> np.ndarray:
    """Thinning of (N,H,W) maps by the deletion tables, re-examining every pixel in every subiteration."""
    count, height, width = maps.shape
    padded = np.zeros((count, height + 2, width + 2), dtype=np.int64)
    padded[:, 1:-1, 1:-1] = maps
    while True:
        changed = False
        for table in _thinning_tables():
            code = sum(
                padded[:, 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width] << bit
                for bit, (dr, dc) in enumerate(_NEIGHBOURS)
            )
            doomed = table[code] & (padded[:, 1:-1, 1:-1] != 0)
            padded[:, 1:-1, 1:-1][doomed] = 0
            changed |= bool(doomed.any())
        if not changed:
            return padded[:, 1:-1, 1:-1].astype(bool)
