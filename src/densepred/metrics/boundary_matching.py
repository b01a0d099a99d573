"""One-to-one matching of predicted and ground-truth boundary pixels (BSDS `correspondPixels`).

BSDS/SEISM match a predicted boundary pixel and a ground-truth boundary pixel only if their
Euclidean distance is at most `max_dist * sqrt(H^2 + W^2)`; each pixel is matched at most once.
correspondPixels solves this as a min-cost assignment: a matched pair costs its distance d <= D
(D = the tolerance in pixels) and each unmatched pixel costs the outlier cost 100 * D. The counts
the protocol uses (matched predicted pixels cntP, matched ground-truth pixels cntR) depend only on
how many pairs are matched, and that optimum has maximum cardinality: if a smaller matching M were
optimal, an augmenting path P for M (Berge) with k+1 new and k removed pairs gives M xor P, which
matches one more pair per side and changes the cost by at most (k+1) * D - 2 * 100 * D < 0 whenever
k + 1 < 200, contradicting optimality. So cntP = cntR = the size of a maximum matching of the
bipartite "within tolerance" graph, which `scipy.sparse.csgraph.maximum_bipartite_matching`
(Hopcroft-Karp) computes exactly. Departure: on a pathological graph whose every augmenting path
has 200+ new pairs, correspondPixels (and its sparse CSA approximation) may match fewer pixels.

The candidate graph is built by looking up the <= (2 ceil(D) + 1)^2 integer offsets within the
tolerance disc for all predicted pixels at once (numpy broadcasting; no per-pixel Python loop).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching


def tolerance_pixels(max_dist: float, height: int, width: int) -> float:
    """The matching tolerance in pixels: max_dist times the image diagonal (BSDS convention)."""
    return max_dist * math.sqrt(height * height + width * width)


def disc_offsets(radius: float) -> np.ndarray:
    """Integer (drow, dcol) offsets with drow^2 + dcol^2 <= radius^2, shape (K, 2)."""
    reach = math.ceil(radius)
    span = np.arange(-reach, reach + 1)
    drow, dcol = np.meshgrid(span, span, indexing="ij")
    inside = drow**2 + dcol**2 <= radius * radius
    return np.stack([drow[inside], dcol[inside]], axis=1)


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


def max_matching_size(graph: csr_matrix) -> int:
    """Size of a maximum matching of a bipartite graph given as a (rows, cols) sparse matrix."""
    if graph.shape[0] == 0 or graph.shape[1] == 0 or graph.nnz == 0:
        return 0
    matched = maximum_bipartite_matching(graph, perm_type="column")
    return int((matched >= 0).sum())


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
            self._last_matched = max_matching_size(self._graph[rows])
            self._last_rows = rows
        return self._last_matched, int(index.shape[0])


def match_counts(pred_maps: np.ndarray, gt_map: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Matched and predicted pixel counts (each (T,) int64) of `pred_maps` (T, H, W) against `gt_map`.

    Matched is both cntP and cntR of the protocol (one ground truth per image).
    """
    matcher = BoundaryMatcher(gt_map, pred_maps.any(axis=0), radius)
    counts = np.array([matcher.count(pred_map) for pred_map in pred_maps], dtype=np.int64).reshape(-1, 2)
    return counts[:, 0], counts[:, 1]
