"""Hopcroft-Karp vs Dinic max flow on boundary-matching graphs, and the wide-band case that hangs HK.

scipy's `maximum_bipartite_matching` (Hopcroft-Karp, scipy 1.17.1) can take exponential time on
layered graphs (scipy issue 26147); `boundary_matching.max_matching_size` therefore sends graphs with
`DINIC_MIN_EDGES` or more edges to Dinic max flow. This script times both algorithms on the graph of
a (ground truth, prediction) pair with wide boundary bands, the ground truth on rows
[0.31 H, 0.69 H), the prediction on the wider rows [0.21 H, 0.79 H), the smaller side as rows as
`batch_match_counts` does; "auto" times `batch_match_counts` itself (size-based choice). Families:
  * noise: random pixels, the ground truth at density 0.5, the prediction at 0.45;
  * cells: thinned `seg2bmap` boundaries of random Voronoi cells, seeds every ~3 px (ground truth)
    and ~4 px (prediction): a dense texture of thin boundaries, as the metric sees them.
Each Hopcroft-Karp call runs in a child process that is stopped after `--timeout` seconds.

    .venv/bin/python bench/bench_matching.py [--family noise cells] [--sizes 480x10 480x640]
        [--radius 8.8] [--seeds 0 1] [--timeout 20]

`--radius` defaults to the NYUD tolerance, 0.011 x the image diagonal. Both algorithms are exact:
where both finish, the sizes are checked equal.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import time

import numpy as np
import torch
from scipy import ndimage
from scipy.sparse import csr_matrix

from densepred.metrics.boundary_matching import (
    DINIC_MIN_EDGES,
    batch_match_counts,
    disc_offsets,
    max_matching_size,
    tolerance_pixels,
)
from densepred.metrics.boundary_ops import seg2bmap, thin


def cell_boundaries(
    rng: np.random.Generator, shape: tuple[int, int], rows: slice, spacing: float
) -> np.ndarray:
    """Thinned boundaries of random Voronoi cells (seeds about `spacing` px apart) within `rows`."""
    width = shape[1]
    count = int((rows.stop - rows.start) * width / spacing**2)
    seeds = np.zeros(shape, dtype=np.int32)
    seeds[rng.integers(rows.start, rows.stop, count), rng.integers(0, width, count)] = np.arange(1, count + 1)
    _, (near_row, near_col) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[near_row, near_col]
    labels[: rows.start] = labels[rows.stop :] = 0
    return thin(seg2bmap(torch.from_numpy(labels[None]))).numpy()[0]


def make_pair(family: str, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, prediction) (H, W) bool with wide boundary bands, the prediction the wider one."""
    rng = np.random.default_rng(seed)
    gt_rows = slice(height * 150 // 480, height * 330 // 480)
    pred_rows = slice(height * 100 // 480, height * 380 // 480)
    if family == "cells":
        gt = cell_boundaries(rng, (height, width), gt_rows, 3.0)
        return gt, cell_boundaries(rng, (height, width), pred_rows, 4.0)
    gt = np.zeros((height, width), dtype=bool)
    pred = np.zeros((height, width), dtype=bool)
    gt[gt_rows] = rng.random((gt_rows.stop - gt_rows.start, width)) < 0.5
    pred[pred_rows] = rng.random((pred_rows.stop - pred_rows.start, width)) < 0.45
    return gt, pred


def pair_graph(gt: np.ndarray, pred: np.ndarray, radius: float) -> csr_matrix:
    """The pair's bipartite graph (pixels within `radius`), rows = the smaller side, no empty rows."""
    gt_rc, pred_rc = np.argwhere(gt), np.argwhere(pred)
    gt_id = np.full(gt.shape, -1, dtype=np.int64)
    gt_id[gt] = np.arange(gt_rc.shape[0])
    reach = math.ceil(radius)
    padded = np.pad(gt_id, reach, constant_values=-1)
    offsets = disc_offsets(radius)
    lookup = padded[pred_rc[:, :1] + reach + offsets[:, 0], pred_rc[:, 1:] + reach + offsets[:, 1]]
    rows, slots = np.nonzero(lookup >= 0)
    graph = csr_matrix(
        (np.ones(rows.shape[0], dtype=np.int8), (rows, lookup[rows, slots])),
        shape=(pred_rc.shape[0], gt_rc.shape[0]),
    )
    graph = graph[np.flatnonzero(np.diff(graph.indptr))]
    graph = graph[:, np.flatnonzero(np.diff(graph.tocsc().indptr))]
    return graph.T.tocsr() if graph.shape[1] < graph.shape[0] else graph


def _timed_matching(graph: csr_matrix, method: str, queue) -> None:
    start = time.perf_counter()
    size = max_matching_size(graph, method)
    queue.put((size, time.perf_counter() - start))


def timed_with_limit(graph: csr_matrix, method: str, limit: float) -> tuple[int | None, float]:
    """(size, seconds) of one matching in a child process; (None, limit) if stopped at `limit`."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_timed_matching, args=(graph, method, queue))
    child.start()
    child.join(limit)
    if child.is_alive():
        child.terminate()
        child.join()
        return None, limit
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", choices=["noise", "cells"], default=["noise", "cells"])
    parser.add_argument("--sizes", nargs="+", default=["120x160", "480x10", "480x40", "480x640"])
    parser.add_argument("--radius", type=float, default=None, help="pixels (default 0.011 x diagonal)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per Hopcroft-Karp call")
    args = parser.parse_args()
    print(f"DINIC_MIN_EDGES = {DINIC_MIN_EDGES}; Hopcroft-Karp stopped after {args.timeout:g} s")
    print(
        f"{'family':>6} {'size':>9} {'seed':>4} {'radius':>6} {'edges':>9} {'matched':>8} "
        f"{'HK':>10} {'Dinic':>10} {'auto':>10}"
    )
    for family, size, seed in itertools.product(args.family, args.sizes, args.seeds):
        height, width = (int(v) for v in size.split("x"))
        radius = args.radius if args.radius is not None else tolerance_pixels(0.011, height, width)
        gt, pred = make_pair(family, height, width, seed)
        graph = pair_graph(gt, pred, radius)
        hk_size, hk_seconds = timed_with_limit(graph, "hopcroft_karp", args.timeout)
        start = time.perf_counter()
        dinic_size = max_matching_size(graph, "dinic")
        dinic_seconds = time.perf_counter() - start
        assert hk_size is None or hk_size == dinic_size, (hk_size, dinic_size)
        start = time.perf_counter()  # the metric's entry point, default (size-based) choice
        batch_match_counts(gt[None], np.zeros(1, dtype=np.int64), *np.nonzero(pred[None]), radius)
        auto_seconds = time.perf_counter() - start
        hk = f"{1000 * hk_seconds:8.1f}ms" if hk_size is not None else f">{args.timeout:7.0f} s"
        print(
            f"{family:>6} {size:>9} {seed:>4} {radius:6.2f} {graph.nnz:9d} {dinic_size:8d} {hk:>10} "
            f"{1000 * dinic_seconds:8.1f}ms {1000 * auto_seconds:8.1f}ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
