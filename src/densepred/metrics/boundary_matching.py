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


def _box_dilation(maps: np.ndarray, reach: int) -> np.ndarray:
    """(B,H,W) bool maps dilated by a (2 reach + 1)^2 square: a superset of every tolerance disc."""
    dilated = maps.astype(np.uint8)
    for axis in (1, 2):
        dilated = ndimage.maximum_filter1d(dilated, 2 * reach + 1, axis=axis, mode="constant")
    return dilated.astype(bool)


def batch_match_counts(
    gt_maps: np.ndarray,
    map_image: np.ndarray,
    pixel_map: np.ndarray,
    pixel_row: np.ndarray,
    pixel_col: np.ndarray,
    radius: float,
) -> np.ndarray:
    """Maximum-matching size of each of K predicted maps against its image's ground truth.

    `gt_maps` (B,H,W) bool; map k belongs to image `map_image[k]`; the predicted maps are given by
    their on-pixels (`pixel_map`, `pixel_row`, `pixel_col`; no repeats; within a map in raster
    order, as `torch.nonzero` lists them). Returns (K,) int64: per map, the size of a maximum
    matching of its pixels and its image's ground-truth pixels within `radius`, i.e. what
    `BoundaryMatcher.count` computes one map at a time.

    The candidate edges are looked up once per distinct (image, pixel) of the batch that lies within
    `ceil(radius)` (Chebyshev) of a ground-truth pixel, and every map's graph is cut from them with
    array operations. Each map is then matched by its own Hopcroft-Karp call (on a union of maps,
    every phase would sweep all of them, which measured several times slower), with the smaller
    side as rows: the map's pixels that have an edge, or all ground-truth pixels of its image (HK
    keeps re-exploring from unmatched row vertices). A map with the same pixels as the previous map
    of its image reuses that count. Like the per-image matcher before it, this relies on scipy's HK,
    which can take exponential time on some layered graphs (scipy issue 26147): not seen at the
    smoke size, but seen on wide boundary bands at 480x640.
    """
    batch, height, width = gt_maps.shape
    num_maps = map_image.shape[0]
    matched = np.zeros(num_maps, dtype=np.int64)
    num_gt = gt_maps.reshape(batch, -1).sum(1)
    if pixel_map.size == 0 or not num_gt.any():
        return matched
    reach = math.ceil(radius)
    padded_h, padded_w = height + 2 * reach, width + 2 * reach
    # per image, ground-truth ids 0..num_gt-1 in raster order, on a copy padded by the reach
    gt_id = np.full((batch, padded_h, padded_w), -1, dtype=np.int64)
    gt_id[:, reach : reach + height, reach : reach + width][gt_maps] = np.arange(
        int(num_gt.sum())
    ) - np.repeat(np.cumsum(num_gt) - num_gt, num_gt)
    # distinct predicted pixels that may have a partner (box prefilter), and their edges
    pixel = (map_image[pixel_map] * height + pixel_row) * width + pixel_col
    reachable = _box_dilation(gt_maps, reach).reshape(-1)[pixel]
    pixel_map, pixel = pixel_map[reachable], pixel[reachable]
    used = np.zeros(batch * height * width, dtype=bool)
    used[pixel] = True
    support = np.flatnonzero(used)
    image, rest = np.divmod(support, height * width)
    row, col = np.divmod(rest, width)
    offsets = disc_offsets(radius)
    anchor = (image * padded_h + row + reach) * padded_w + col + reach
    lookup = gt_id.reshape(-1)[anchor[:, None] + (offsets[:, 0] * padded_w + offsets[:, 1])[None, :]]
    edge_node, edge_slot = np.nonzero(lookup >= 0)  # grouped by support pixel
    edge_gt = lookup[edge_node, edge_slot]
    degree = np.bincount(edge_node, minlength=support.shape[0])
    edge_start = np.cumsum(degree) - degree
    node_of = np.full(batch * height * width, -1, dtype=np.int64)
    node_of[support] = np.arange(support.shape[0])
    # graph rows: (map, pixel) with at least one edge, grouped by map (raster order kept inside)
    node = node_of[pixel]
    keep = degree[node] > 0
    node, owner = node[keep], pixel_map[keep]
    if node.size == 0:
        return matched
    # stable sort by map (a radix sort for 16-bit keys) keeps each map's pixels in raster order
    order = np.argsort(owner.astype(np.uint16) if num_maps <= 1 << 16 else owner, kind="stable")
    node, owner = node[order], owner[order]
    row_bounds = np.searchsorted(owner, np.arange(num_maps + 1))
    lengths = degree[node]
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    position = np.repeat(edge_start[node] - indptr[:-1], lengths) + np.arange(indptr[-1])
    columns = edge_gt[position]  # ground-truth ids within the map's image
    num_rows, num_cols = np.diff(row_bounds), num_gt[map_image]
    gt_left = num_cols < num_rows
    transposed = None
    if gt_left.any():  # CSC of the block-diagonal graph = CSR of the (ground truth, pixel) graph
        col_bounds = np.concatenate([[0], np.cumsum(num_cols)])
        transposed = csr_matrix(
            (
                np.ones(columns.shape[0], dtype=np.int8),
                columns + np.repeat(col_bounds[owner], lengths),
                indptr,
            ),
            shape=(node.shape[0], int(col_bounds[-1])),
        ).tocsc()
    indptr, columns = indptr.astype(np.int32), columns.astype(np.int32)
    for k in np.flatnonzero(num_rows):
        first, last = row_bounds[k], row_bounds[k + 1]
        previous = row_bounds[k - 1] if k > 0 else first
        if (
            k > 0
            and map_image[k - 1] == map_image[k]
            and first - previous == last - first
            and np.array_equal(node[first:last], node[previous:first])
        ):
            matched[k] = matched[k - 1]
            continue
        if gt_left[k]:
            lo, hi = col_bounds[k], col_bounds[k + 1]
            part = transposed.indptr[lo : hi + 1]
            graph = csr_matrix(
                (
                    transposed.data[part[0] : part[-1]],
                    transposed.indices[part[0] : part[-1]] - first,
                    part - part[0],
                ),
                shape=(int(num_cols[k]), int(num_rows[k])),
            )
        else:
            part = indptr[first : last + 1]
            graph = csr_matrix(
                (
                    np.ones(part[-1] - part[0], dtype=np.int8),
                    columns[part[0] : part[-1]],
                    part - part[0],
                ),
                shape=(int(num_rows[k]), int(num_cols[k])),
            )
        matched[k] = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
    return matched
