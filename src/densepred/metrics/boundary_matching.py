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
bipartite "within tolerance" graph, which is computed exactly: by scipy's Hopcroft-Karp
(`maximum_bipartite_matching`) for small graphs (those of one batch in a single call), and by
Dinic's maximum flow on the unit-capacity network source -> rows -> columns -> sink for large ones
(see `DINIC_MIN_EDGES`). Departure: on a
pathological graph whose every augmenting path has 200+ new pairs, correspondPixels (and its sparse
CSA approximation) may match fewer pixels.

The candidate graph is built by looking up the <= (2 ceil(D) + 1)^2 integer offsets within the
tolerance disc for all predicted pixels at once (numpy broadcasting; no per-pixel Python loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.sparse import csc_matrix, csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching, maximum_flow

MatchingMethod = Literal["auto", "hopcroft_karp", "dinic"]

# Graphs with at least this many edges are matched by Dinic max flow, smaller ones by Hopcroft-Karp.
# scipy's HK can take exponential time on layered graphs (scipy issue 26147); Dinic prunes dead ends
# but costs more on small graphs. 8000 keeps the smoke-size graphs on HK and sends every graph on
# which HK was seen to blow up to Dinic (measurements: bench/NOTES.md, "Boundary matching").
DINIC_MIN_EDGES = 8_000


def tolerance_pixels(max_dist: float, height: int, width: int) -> float:
    """The matching tolerance in pixels: max_dist times the image diagonal (BSDS convention)."""
    return max_dist * math.sqrt(height * height + width * width)


def disc_offsets(radius: float) -> np.ndarray:
    """Integer (drow, dcol) offsets with drow^2 + dcol^2 <= radius^2, shape (K, 2), in raster order."""
    reach = math.ceil(radius)
    span = np.arange(-reach, reach + 1)
    drow, dcol = np.meshgrid(span, span, indexing="ij")
    inside = drow**2 + dcol**2 <= radius * radius
    return np.stack([drow[inside], dcol[inside]], axis=1)


def max_matching_size(graph: csr_matrix, method: MatchingMethod = "auto") -> int:
    """Size of a maximum matching of a bipartite graph given as a (rows, cols) CSR matrix.

    `method` "auto" uses Hopcroft-Karp below `DINIC_MIN_EDGES` edges and Dinic max flow from there;
    "hopcroft_karp" and "dinic" force one (both are exact, so the size is the same).
    """
    if method not in ("auto", "hopcroft_karp", "dinic"):
        raise ValueError(f"unknown matching method {method!r}")
    if graph.shape[0] == 0 or graph.shape[1] == 0 or graph.nnz == 0:
        return 0
    if method == "dinic" or (method == "auto" and graph.nnz >= DINIC_MIN_EDGES):
        network = _unit_flow_network(graph)
        return int(maximum_flow(network, 0, network.shape[0] - 1, method="dinic").flow_value)
    return int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())


def _unit_flow_network(graph: csr_matrix) -> csr_matrix:
    """The flow network whose maximum flow is the maximum matching size of `graph` (R, C).

    Vertices: 0 the source, 1..R the rows, R+1..R+C the columns, R+C+1 the sink; unit-capacity arcs
    source -> every row, row i -> column j for each edge (i, j), every column -> sink. Built directly
    in CSR (int32, the type scipy's max flow works in); rows keep `graph`'s column order, so sorted
    indices stay sorted.
    """
    num_rows, num_cols = graph.shape
    num_edges, sink = graph.nnz, num_rows + num_cols + 1
    indices = np.concatenate(
        [
            np.arange(1, num_rows + 1, dtype=np.int32),
            graph.indices[:num_edges].astype(np.int32) + (num_rows + 1),
            np.full(num_cols, sink, dtype=np.int32),
        ]
    )
    indptr = np.concatenate(
        [
            [0, num_rows],
            num_rows + graph.indptr[1:],
            num_rows + num_edges + np.arange(1, num_cols + 1),
            [num_rows + num_edges + num_cols],
        ]
    ).astype(np.int32)
    return csr_matrix(
        (np.ones(indices.shape[0], dtype=np.int32), indices, indptr), shape=(sink + 1, sink + 1)
    )


def _box_dilation(maps: np.ndarray, reach: int) -> np.ndarray:
    """(B,H,W) bool maps dilated by a (2 reach + 1)^2 square: a superset of every tolerance disc."""
    dilated = maps.astype(np.uint8)
    for axis in (1, 2):
        dilated = ndimage.maximum_filter1d(dilated, 2 * reach + 1, axis=axis, mode="constant")
    return dilated.astype(bool)


def _gt_id_grid(gt_maps: np.ndarray, num_gt: np.ndarray, reach: int) -> np.ndarray:
    """(B, H + 2 reach, W + 2 reach) int64: ground-truth ids per image, -1 where there is none.

    Each image numbers its ground-truth pixels 0..num_gt-1 in raster order (the columns of its
    graphs). The border of width `reach` lets every disc offset be looked up without bounds checks.
    """
    batch, height, width = gt_maps.shape
    gt_id = np.full((batch, height + 2 * reach, width + 2 * reach), -1, dtype=np.int64)
    first_id = np.cumsum(num_gt) - num_gt  # of each image, in the batch-wide raster numbering
    ids = np.arange(int(num_gt.sum())) - np.repeat(first_id, num_gt)
    gt_id[:, reach : reach + height, reach : reach + width][gt_maps] = ids
    return gt_id


def _flat_pixels(
    map_image: np.ndarray,
    pixel_map: np.ndarray,
    pixel_row: np.ndarray,
    pixel_col: np.ndarray,
    height: int,
    width: int,
) -> np.ndarray:
    """Flat (image, row, col) index of every predicted pixel into the (B, H, W) batch."""
    return (map_image[pixel_map] * height + pixel_row) * width + pixel_col


def _distinct_pixels(pixel: np.ndarray, size: int) -> np.ndarray:
    """The distinct flat pixels, ascending: maps of one image share pixels, whose edges are looked up once."""
    used = np.zeros(size, dtype=bool)
    used[pixel] = True
    return np.flatnonzero(used)


@dataclass
class _EdgeTable:
    """Candidate edges of the distinct (image, pixel) nodes: the ground-truth ids within the radius.

    Node i's neighbours are `gt[start[i] : start[i] + degree[i]]`, ascending (ids of its image).
    """

    gt: np.ndarray
    degree: np.ndarray
    start: np.ndarray


def _candidate_edges(
    gt_id: np.ndarray, support: np.ndarray, image_shape: tuple[int, int], radius: float
) -> _EdgeTable:
    """The edge table of the `support` pixels (flat indices), one vectorised disc lookup for all.

    `gt_id` is `_gt_id_grid` padded by ceil(radius). Offsets in raster order on a raster-numbered
    grid make each node's neighbours ascending.
    """
    height, width = image_shape
    _, padded_h, padded_w = gt_id.shape
    reach = math.ceil(radius)
    image, rest = np.divmod(support, height * width)
    row, col = np.divmod(rest, width)
    offsets = disc_offsets(radius)
    anchor = (image * padded_h + row + reach) * padded_w + col + reach
    lookup = gt_id.reshape(-1)[anchor[:, None] + (offsets[:, 0] * padded_w + offsets[:, 1])[None, :]]
    edge_node, edge_slot = np.nonzero(lookup >= 0)  # grouped by node
    degree = np.bincount(edge_node, minlength=support.shape[0])
    return _EdgeTable(gt=lookup[edge_node, edge_slot], degree=degree, start=np.cumsum(degree) - degree)


def _rows_by_map(
    pixel: np.ndarray, pixel_map: np.ndarray, support: np.ndarray, degree: np.ndarray, num_maps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Graph rows of all maps: (node, owner, row_bounds).

    The rows are the (map, pixel) pairs whose pixel has an edge (others can never match), as the
    pixel's node in the edge table, grouped by map with each map's pixels kept in raster order; map
    k owns rows row_bounds[k]:row_bounds[k+1].
    """
    node_of = np.full(int(support[-1]) + 1, -1, dtype=np.int64)
    node_of[support] = np.arange(support.shape[0])
    node = node_of[pixel]
    keep = degree[node] > 0
    node, owner = node[keep], pixel_map[keep]
    # stable sort by map (a radix sort for 16-bit keys) keeps each map's pixels in raster order
    order = np.argsort(owner.astype(np.uint16) if num_maps <= 1 << 16 else owner, kind="stable")
    node, owner = node[order], owner[order]
    return node, owner, np.searchsorted(owner, np.arange(num_maps + 1))


@dataclass
class _MapGraphs:
    """The graphs of all maps in one CSR table, one row per (map, pixel), and per-map slicing.

    Map k's graph has rows row_bounds[k]:row_bounds[k+1] of (`indptr`, `columns`; columns are its
    image's ground-truth ids) and `num_cols[k]` columns. Where the ground truth is the smaller side
    (`gt_left[k]`), the cut comes from `transposed`, the table in CSC with each map's columns offset
    by col_bounds[map]: read as CSR, the (ground truth, pixel) graphs of all maps, map k's
    ground-truth rows at col_bounds[k]:col_bounds[k+1].
    """

    node: np.ndarray
    row_bounds: np.ndarray
    indptr: np.ndarray
    columns: np.ndarray
    num_rows: np.ndarray
    num_cols: np.ndarray
    gt_left: np.ndarray
    col_bounds: np.ndarray | None
    transposed: csc_matrix | None

    def same_as_previous(self, k: int, map_image: np.ndarray) -> bool:
        """Whether map k has exactly the rows of map k-1 of the same image (its count is reused)."""
        first, last = self.row_bounds[k], self.row_bounds[k + 1]
        previous = self.row_bounds[k - 1] if k > 0 else first
        return bool(
            k > 0
            and map_image[k - 1] == map_image[k]
            and first - previous == last - first
            and np.array_equal(self.node[first:last], self.node[previous:first])
        )

    def graph(self, k: int) -> csr_matrix:
        """Map k's bipartite graph as CSR with the smaller side as rows.

        Hopcroft-Karp keeps re-exploring from unmatched row vertices, so the side with fewer
        vertices (the map's pixels that have an edge, or its image's ground-truth pixels) is the
        cheaper one to put first. The arrays are views into the shared tables.
        """
        first, last = self.row_bounds[k], self.row_bounds[k + 1]
        if self.gt_left[k]:
            lo, hi = self.col_bounds[k], self.col_bounds[k + 1]
            part = self.transposed.indptr[lo : hi + 1]
            return csr_matrix(
                (
                    self.transposed.data[part[0] : part[-1]],
                    self.transposed.indices[part[0] : part[-1]] - first,
                    part - part[0],
                ),
                shape=(int(self.num_cols[k]), int(self.num_rows[k])),
            )
        part = self.indptr[first : last + 1]
        return csr_matrix(
            (
                np.ones(part[-1] - part[0], dtype=np.int8),
                self.columns[part[0] : part[-1]],
                part - part[0],
            ),
            shape=(int(self.num_rows[k]), int(self.num_cols[k])),
        )


def _map_graphs(
    node: np.ndarray,
    owner: np.ndarray,
    row_bounds: np.ndarray,
    edges: _EdgeTable,
    num_cols: np.ndarray,
    one_by_one: np.ndarray,
) -> _MapGraphs:
    """Copy each row's edge list out of the edge table into one CSR table; transpose where needed.

    The transposed table is built only if some map matched on its own (`one_by_one`) has fewer
    ground-truth than predicted pixels: as the CSC of the block-diagonal (row, map-offset ground
    truth) matrix, which is the CSR of the (ground truth, pixel) graphs of all maps.
    """
    lengths = edges.degree[node]
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    position = np.repeat(edges.start[node] - indptr[:-1], lengths) + np.arange(indptr[-1])
    columns = edges.gt[position]  # ground-truth ids within the map's image
    num_rows = np.diff(row_bounds)
    gt_left = (num_cols < num_rows) & one_by_one
    col_bounds = transposed = None
    if gt_left.any():
        col_bounds = np.concatenate([[0], np.cumsum(num_cols)])
        transposed = csr_matrix(
            (
                np.ones(columns.shape[0], dtype=np.int8),
                columns + np.repeat(col_bounds[owner], lengths),
                indptr,
            ),
            shape=(node.shape[0], int(col_bounds[-1])),
        ).tocsc()
    return _MapGraphs(
        node=node,
        row_bounds=row_bounds,
        indptr=indptr.astype(np.int32),
        columns=columns.astype(np.int32),
        num_rows=num_rows,
        num_cols=num_cols,
        gt_left=gt_left,
        col_bounds=col_bounds,
        transposed=transposed,
    )


def _union_match_counts(graphs: _MapGraphs, owner: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Maximum-matching size of every `chosen` map (bool per map), by one Hopcroft-Karp call.

    The chosen maps' graphs are disjoint, so the maximum matchings of their union are exactly the
    unions of maximum matchings of each: one block-diagonal graph (each map's rows with its own
    copy of its image's ground-truth columns) is matched at once, and each map's count is the
    number of its matched rows. At the smoke size this replaces tens of scipy calls per batch, whose
    fixed cost (building and checking a sparse matrix) exceeds the matching itself.
    """
    counts = np.zeros(chosen.shape[0], dtype=np.int64)
    lengths = np.diff(graphs.indptr)
    rows = np.flatnonzero(chosen[owner])
    if rows.size == 0:
        return counts
    col_offset = np.concatenate([[0], np.cumsum(np.where(chosen, graphs.num_cols, 0))])
    edge_owner = np.repeat(owner, lengths)
    keep = chosen[edge_owner]
    columns = graphs.columns[keep] + col_offset[edge_owner[keep]]
    union = csr_matrix(
        (
            np.ones(columns.shape[0], dtype=np.int8),
            columns.astype(np.int32),
            np.concatenate([[0], np.cumsum(lengths[rows])]).astype(np.int32),
        ),
        shape=(rows.size, int(col_offset[-1])),
    )
    matched_rows = maximum_bipartite_matching(union, perm_type="column") >= 0
    return np.bincount(owner[rows][matched_rows], minlength=chosen.shape[0]).astype(np.int64)


def batch_match_counts(
    gt_maps: np.ndarray,
    map_image: np.ndarray,
    pixel_map: np.ndarray,
    pixel_row: np.ndarray,
    pixel_col: np.ndarray,
    radius: float,
    method: MatchingMethod = "auto",
) -> np.ndarray:
    """Maximum-matching size of each of K predicted maps against its image's ground truth.

    `gt_maps` (B,H,W) bool; map k belongs to image `map_image[k]`; the predicted maps are given by
    their on-pixels (`pixel_map`, `pixel_row`, `pixel_col`; no repeats; within a map in raster
    order, as `torch.nonzero` lists them). Returns (K,) int64: per map, the size of a maximum
    matching of its pixels and its image's ground-truth pixels within `radius`. `method` is passed
    to `max_matching_size` (tests force either algorithm with it).

    The candidate edges are looked up once per distinct (image, pixel) of the batch that lies within
    `ceil(radius)` (Chebyshev) of a ground-truth pixel, and every map's graph is cut from them with
    array operations. With `method="auto"`, all maps whose graphs have fewer than `DINIC_MIN_EDGES`
    edges are matched together, as one block-diagonal graph, by one Hopcroft-Karp call
    (`_union_match_counts`; the edge bound still applies per map, and Hopcroft-Karp's search from a
    vertex never leaves its map's block). Larger maps, and every map when a method is forced, are
    matched on their own, where a map with the same pixels as the previous map of its image reuses
    that count. The single call saves time at the smoke size; at 480x640 every map has more edges
    than the bound, so nothing changes there (bench/NOTES.md).
    """
    batch, height, width = gt_maps.shape
    num_maps = map_image.shape[0]
    matched = np.zeros(num_maps, dtype=np.int64)
    num_gt = gt_maps.reshape(batch, -1).sum(1)
    if pixel_map.size == 0 or not num_gt.any():
        return matched
    reach = math.ceil(radius)
    pixel = _flat_pixels(map_image, pixel_map, pixel_row, pixel_col, height, width)
    reachable = _box_dilation(gt_maps, reach).reshape(-1)[pixel]  # prefilter: no partner outside
    pixel_map, pixel = pixel_map[reachable], pixel[reachable]
    if pixel.size == 0:
        return matched
    support = _distinct_pixels(pixel, batch * height * width)
    edges = _candidate_edges(_gt_id_grid(gt_maps, num_gt, reach), support, (height, width), radius)
    node, owner, row_bounds = _rows_by_map(pixel, pixel_map, support, edges.degree, num_maps)
    if node.size == 0:
        return matched
    num_rows = np.diff(row_bounds)
    positions = np.concatenate([[0], np.cumsum(edges.degree[node])])
    small = (positions[row_bounds[1:]] - positions[row_bounds[:-1]]) < DINIC_MIN_EDGES
    together = small & (num_rows > 0) if method == "auto" else np.zeros(num_maps, dtype=bool)
    graphs = _map_graphs(node, owner, row_bounds, edges, num_gt[map_image], ~together)
    matched += _union_match_counts(graphs, owner, together)
    for k in np.flatnonzero((num_rows > 0) & ~together):
        if graphs.same_as_previous(k, map_image):
            matched[k] = matched[k - 1]
        else:
            matched[k] = max_matching_size(graphs.graph(k), method)
    return matched
