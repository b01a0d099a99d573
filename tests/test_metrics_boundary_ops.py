"""Boundary-protocol building blocks against slow per-pixel references and hand-computed cases."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix

from boundary_reference import BoundaryMatcher, candidate_graph, match_counts, table_thin
from densepred.metrics import boundary_matching
from densepred.metrics.boundary_matching import (
    batch_match_counts,
    disc_offsets,
    max_matching_size,
    tolerance_pixels,
)
from densepred.metrics.boundary_ops import (
    _NEIGHBOURS,
    HED_THRESHOLDS,
    _changed_region,
    _deletions,
    _next_region,
    _thinning_tables,
    boundary_thresholds,
    conv_tri,
    edge_nms,
    edge_orientation,
    gradient2,
    pack_maps,
    packed_pixels,
    seg2bmap,
    thin,
    unpack_maps,
)

MATCHING_METHODS = ("hopcroft_karp", "dinic")

# ---------------------------------------------------------------------------------------------------
# slow references, written from the published definitions, one pixel at a time


def reference_thin(image: np.ndarray) -> np.ndarray:
    """Lam, Lee & Suen (1992) two-subiteration thinning, conditions evaluated pixel by pixel."""
    img = image.astype(np.uint8).copy()
    height, width = img.shape
    offsets = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]  # x1..x8

    def neighbours(r: int, c: int) -> list[int]:
        out = []
        for dr, dc in offsets:
            rr, cc = r + dr, c + dc
            out.append(int(img[rr, cc]) if 0 <= rr < height and 0 <= cc < width else 0)
        return out

    def deletable(nb: list[int], second: bool) -> bool:
        x = {k + 1: nb[k] for k in range(8)}
        x[9] = x[1]
        xh = sum(1 for i in range(1, 5) if x[2 * i - 1] == 0 and (x[2 * i] == 1 or x[2 * i + 1] == 1))
        n1 = sum(x[2 * k - 1] | x[2 * k] for k in range(1, 5))
        n2 = sum(x[2 * k] | x[2 * k + 1] for k in range(1, 5))
        if xh != 1 or not 2 <= min(n1, n2) <= 3:
            return False
        if second:
            return ((x[6] | x[7] | (1 - x[4])) & x[5]) == 0
        return ((x[2] | x[3] | (1 - x[8])) & x[1]) == 0

    while True:
        changed = False
        for second in (False, True):
            doomed = [
                (r, c)
                for r in range(height)
                for c in range(width)
                if img[r, c] and deletable(neighbours(r, c), second)
            ]
            for r, c in doomed:
                img[r, c] = 0
            changed |= bool(doomed)
        if not changed:
            return img.astype(bool)


def random_blobs(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """(count,H,W) bool maps: smoothed noise cut at random quantiles (blobs, holes, lines, specks)."""
    sigma = rng.uniform(0.3, 2.5)
    noise = ndimage.gaussian_filter(rng.random((count, height, width)), (0, sigma, sigma))
    cuts = np.quantile(noise.reshape(count, -1), rng.uniform(0.05, 0.95, count), axis=1).diagonal()
    return noise > cuts[:, None, None]


def reference_nms(
    edges: np.ndarray, orient: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01
) -> np.ndarray:
    """Dollar's edge NMS, pixel by pixel in float32."""
    e0 = edges.astype(np.float32)
    height, width = e0.shape
    out = e0.copy()

    def interp(x: float, y: float) -> np.float32:
        x = 0.0 if x < 0 else (width - 1.001 if x > width - 1.001 else x)
        y = 0.0 if y < 0 else (height - 1.001 if y > height - 1.001 else y)
        x0, y0 = int(x), int(y)
        dx0, dy0 = np.float32(x - x0), np.float32(y - y0)
        dx1, dy1 = np.float32(1) - dx0, np.float32(1) - dy0
        return (
            e0[y0, x0] * dx1 * dy1
            + e0[y0, x0 + 1] * dx0 * dy1
            + e0[y0 + 1, x0] * dx1 * dy0
            + e0[y0 + 1, x0 + 1] * dx0 * dy0
        )

    for y in range(height):
        for x in range(width):
            e = e0[y, x]
            if not e:
                continue
            e = e * np.float32(m)
            c, sn = np.cos(np.float32(orient[y, x])), np.sin(np.float32(orient[y, x]))
            for d in range(-r, r + 1):
                if d and e < interp(np.float32(x + d * c), np.float32(y + d * sn)):
                    out[y, x] = 0
                    break
    s = min(s, width // 2, height // 2)
    for x in range(s):
        out[:, x] *= np.float32(x / s)
        out[:, width - 1 - x] *= np.float32(x / s)
    for y in range(s):
        out[y, :] *= np.float32(y / s)
        out[height - 1 - y, :] *= np.float32(y / s)
    return out


def brute_force_matching(pred: list[tuple[int, int]], gt: list[tuple[int, int]], radius: float) -> int:
    """Largest one-to-one matching by exhaustive search (tiny inputs only)."""
    ok = [[(p[0] - g[0]) ** 2 + (p[1] - g[1]) ** 2 <= radius**2 for g in gt] for p in pred]

    def best(i: int, used: frozenset) -> int:
        if i == len(pred):
            return 0
        result = best(i + 1, used)  # leave pred i unmatched
        for j in range(len(gt)):
            if ok[i][j] and j not in used:
                result = max(result, 1 + best(i + 1, used | {j}))
        return result

    return best(0, frozenset())


# ---------------------------------------------------------------------------------------------------
# thresholds


def test_hed_thresholds_are_seism_set():
    assert len(HED_THRESHOLDS) == 101
    assert HED_THRESHOLDS[:3] == (0.001, 0.01, 0.02) and HED_THRESHOLDS[-2:] == (0.99, 0.999)
    assert boundary_thresholds(101) == HED_THRESHOLDS
    assert boundary_thresholds(11) == (0.001, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.999)
    with pytest.raises(ValueError, match="thresholds"):
        boundary_thresholds(2)


# ---------------------------------------------------------------------------------------------------
# smoothing, gradients, orientation


def test_conv_tri_matches_symmetric_padded_convolution():
    rng = np.random.default_rng(0)
    image = rng.random((2, 7, 11)).astype(np.float32)
    r = 4
    f = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]) / (r + 1) ** 2
    kernel = np.outer(f, f)
    expected = np.zeros_like(image)
    for n in range(2):
        padded = np.pad(image[n], r, mode="symmetric")  # MATLAB 'symmetric' (pad 4 < 7)
        for y in range(7):
            for x in range(11):
                expected[n, y, x] = (padded[y : y + 2 * r + 1, x : x + 2 * r + 1] * kernel).sum()
    got = conv_tri(torch.from_numpy(image), r).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # a constant image stays constant, whatever the (even larger-than-image) padding
    const = torch.full((1, 3, 5), 0.7)
    np.testing.assert_allclose(conv_tri(const, 4).numpy(), 0.7, rtol=1e-6)


def test_gradient2_is_matlab_gradient():
    image = torch.tensor([[[1.0, 2.0, 4.0, 7.0], [0.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]]])
    gx, gy = gradient2(image)
    assert torch.equal(gx[0, 0], torch.tensor([1.0, 1.5, 2.5, 3.0]))
    assert torch.equal(gy[0, :, 0], torch.tensor([-1.0, 1.0, 3.0]))
    np.testing.assert_allclose(gx[0].numpy(), np.gradient(image[0].numpy(), axis=1))
    np.testing.assert_allclose(gy[0].numpy(), np.gradient(image[0].numpy(), axis=0))


def test_edge_orientation_on_straight_ridges():
    yy, xx = np.mgrid[0:25, 0:25].astype(np.float32) - 12
    ridges = np.stack(
        [
            np.exp(-(xx**2) / 8),  # vertical ridge: normal along x
            np.exp(-((xx + yy) ** 2) / 16),  # normal (1, 1)/sqrt 2
            np.exp(-((yy - xx) ** 2) / 16),  # normal (-1, 1)/sqrt 2
            np.exp(-(yy**2) / 8),  # horizontal ridge
        ]
    )
    o = edge_orientation(torch.from_numpy(ridges))
    centre = (slice(10, 15), slice(10, 15))
    on_ridge = torch.from_numpy(ridges > 0.9)[:, 10:15, 10:15]

    def circular_gap(values, angle):
        gap = torch.remainder(values - angle, math.pi)
        return torch.minimum(gap, math.pi - gap)

    assert torch.all(circular_gap(o[0][centre], 0.0) < 1e-2)
    assert torch.all(circular_gap(o[1][centre][on_ridge[1]], math.pi / 4) < 1e-2)
    assert torch.all(circular_gap(o[2][centre][on_ridge[2]], 3 * math.pi / 4) < 1e-2)
    # the published formula has sign(-Oxy) = 0 on a perfectly horizontal ridge, hence O = 0 there
    assert torch.all(circular_gap(o[3][centre], 0.0) < 1e-6)


# ---------------------------------------------------------------------------------------------------
# non-maximum suppression


def test_edge_nms_keeps_ridge_and_suppresses_flanks():
    profile = np.array([0.1, 0.3, 0.9, 0.3, 0.1, 0.0, 0.2, 0.5, 0.2, 0.0, 0.0, 0.0], dtype=np.float32)
    edges = np.tile(profile, (12, 1))  # vertical ridges at columns 2 and 7
    out = edge_nms(torch.from_numpy(edges)[None], torch.zeros(1, 12, 12))[0].numpy()
    row = out[6]  # middle row: no border fade (fade covers 5 rows/cols)
    assert row[7] == pytest.approx(0.5 * 4 / 5)  # column 7 = width-1-4 lies in the 5-px fade: factor 4/5
    assert row[2] == pytest.approx(0.9 * 2 / 5)
    assert row[6] == 0 and row[8] == 0 and row[1] == 0 and row[3] == 0
    assert np.all(out[:, 0] == 0) and np.all(out[0, :] == 0)  # outermost pixels fade to zero
    # on a wider image the ridge keeps its full value away from the border
    wide = np.zeros((12, 30), dtype=np.float32)
    wide[:, 14], wide[:, 13], wide[:, 15] = 1.0, 0.5, 0.5
    out = edge_nms(torch.from_numpy(wide)[None], torch.zeros(1, 12, 30))[0].numpy()
    assert out[6, 14] == 1.0 and out[6, 13] == 0 and out[6, 15] == 0


def test_edge_nms_multiplier_keeps_near_ties():
    edges = np.zeros((11, 11), dtype=np.float32)
    edges[:, 5], edges[:, 6] = 1.0, 1.005  # neighbour only 0.5 % stronger: both survive (m = 1.01)
    out = edge_nms(torch.from_numpy(edges)[None], torch.zeros(1, 11, 11))[0].numpy()
    assert out[5, 5] > 0 and out[5, 6] > 0


def test_edge_nms_matches_pixel_loop_reference():
    rng = np.random.default_rng(1)
    edges = ndimage.gaussian_filter(rng.random((2, 17, 23)), (0, 1.5, 1.5)).astype(np.float32)
    edges[0, 3:6, 4:9] = 0.0  # exact zeros stay zero
    tensor = torch.from_numpy(edges)
    orient = edge_orientation(tensor)
    got = edge_nms(tensor, orient).numpy()
    for n in range(2):
        expected = reference_nms(edges[n], orient[n].numpy())
        np.testing.assert_allclose(got[n], expected, rtol=0, atol=1e-6)
    assert np.all(got[0, 3:6, 4:9] == 0)


def test_edge_nms_rejects_tiny_maps():
    with pytest.raises(ValueError, match="2x2"):
        edge_nms(torch.ones(1, 1, 5), torch.zeros(1, 1, 5))


# ---------------------------------------------------------------------------------------------------
# thinning and seg2bmap


def test_thin_matches_reference_on_random_blobs():
    rng = np.random.default_rng(2)
    maps = []
    for _ in range(6):
        noise = ndimage.gaussian_filter(rng.random((19, 23)), 1.2)
        maps.append(noise > np.quantile(noise, 0.55))
    maps.append(np.zeros((19, 23), dtype=bool))
    maps.append(np.ones((19, 23), dtype=bool))
    got = thin(torch.from_numpy(np.stack(maps))).numpy()
    for image, result in zip(maps, got):
        expected = reference_thin(image)
        assert np.array_equal(result, expected)


def test_thin_invariants():
    rng = np.random.default_rng(3)
    noise = ndimage.gaussian_filter(rng.random((4, 30, 30)), (0, 1.5, 1.5))
    maps = torch.from_numpy(noise > 0.5)
    thinned = thin(maps)
    assert torch.all(thinned <= maps)  # only deletes
    assert torch.equal(thin(thinned), thinned)  # idempotent
    eight = np.ones((3, 3))
    for before, after in zip(maps.numpy(), thinned.numpy()):
        assert ndimage.label(before, eight)[1] == ndimage.label(after, eight)[1]  # topology kept
        # one pixel wide: no 2x2 block of on-pixels remains
        blocks = after[:-1, :-1] & after[1:, :-1] & after[:-1, 1:] & after[1:, 1:]
        assert not blocks.any()


def test_thin_keeps_one_pixel_lines_and_thins_bars():
    image = np.zeros((9, 12), dtype=bool)
    image[2, 1:11] = True  # a one-pixel horizontal line
    image[3:8, 6] = True  # a vertical branch
    assert np.array_equal(thin(torch.from_numpy(image)[None])[0].numpy(), image)
    bar = np.zeros((7, 14), dtype=bool)
    bar[2:5, 2:12] = True  # a 3-pixel-thick bar thins to a single row
    thinned = thin(torch.from_numpy(bar)[None])[0].numpy()
    assert thinned.sum(axis=0).max() == 1
    assert np.array_equal(thinned.any(axis=1), np.array([0, 0, 0, 1, 0, 0, 0], dtype=bool))


def test_thin_reexamines_pixels_whose_neighbour_goes_in_the_next_first_subiteration():
    # an earlier incremental implementation re-examined only pixels next to deletions of the previous
    # iteration and so missed a deletion in the second subiteration here (row 3 kept 3 pixels)
    image = np.array(
        [
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 0, 0, 1],
            [1, 1, 1, 1, 1, 1],
            [0, 1, 0, 1, 1, 1],
        ],
        dtype=bool,
    )
    expected = reference_thin(image)
    assert expected[3].tolist() == [False, False, True, False, True, False]
    assert np.array_equal(thin(torch.from_numpy(image)[None])[0].numpy(), expected)


def test_bitwise_deletion_rule_equals_lookup_tables():
    # all 256 neighbourhoods of an on-pixel, one 3x3 map each; the centre's deletion bit per table
    codes = np.arange(256)
    maps = np.zeros((256, 3, 3), dtype=bool)
    maps[:, 1, 1] = True
    for bit, (dr, dc) in enumerate(_NEIGHBOURS):
        maps[:, 1 + dr, 1 + dc] = (codes >> bit) & 1
    packed = pack_maps(torch.from_numpy(maps))
    row = 3 + 2
    offsets = [dr * row + dc for dr, dc in _NEIGHBOURS]
    for second, table in enumerate(_thinning_tables()):
        delete = _deletions(packed, 1 + row, 3 * row, offsets, bool(second))
        centre = unpack_maps(torch.nn.functional.pad(delete, (1 + row, 1 + row)), 256, 3, 3)[:, 1, 1]
        assert np.array_equal(centre.numpy(), table)


def test_thin_band_follows_deletions_of_both_rules():
    # thick bars of different widths at different heights, some with holes: maps converge at
    # different subiterations, so the examined band of rows shrinks and moves while others go on
    rng = np.random.default_rng(11)
    maps = np.zeros((21, 64, 40), dtype=bool)
    for image in maps:
        top, thickness = int(rng.integers(0, 40)), int(rng.integers(1, 24))
        image[top : top + thickness, int(rng.integers(0, 12)) : int(rng.integers(20, 40))] = True
        image[rng.random(image.shape) < 0.02] = False
    got = thin(torch.from_numpy(maps)).numpy()
    assert np.array_equal(got, table_thin(maps))


def test_changed_region_same_for_numpy_and_torch():
    # the torch branch is what GPU thinning runs
    delete = np.zeros((3, 5 * 7), dtype=np.uint8)
    assert _changed_region(delete, 7) is None
    assert _changed_region(torch.from_numpy(delete), 7) is None
    delete[1, 1 * 7 + 3] = 4  # plane 1, row 1
    delete[2, 3 * 7 + 6] = 1  # plane 2, row 3, last byte of the row
    expected = ((1, 2), (1, 3))
    assert _changed_region(delete, 7) == _changed_region(torch.from_numpy(delete), 7) == expected


def test_next_region_covers_both_subiterations_deletions_plus_one_row():
    assert _next_region(((0, 1), (5, 7)), ((3, 3), (10, 12)), 20) == ((0, 3), (4, 13))
    assert _next_region(None, ((2, 2), (1, 3)), 20) == ((2, 2), (1, 4))  # rows clipped to 1..H
    assert _next_region(((0, 0), (20, 20)), None, 20) == ((0, 0), (19, 20))
    assert _next_region(None, None, 20) is None  # both rules at a fixed point


@pytest.mark.parametrize("seed", range(6))
def test_thin_matches_table_reference_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 48, 2))
    maps = random_blobs(rng, int(rng.integers(1, 30)), height, width)  # counts not a multiple of 8 too
    maps[0] = rng.random((height, width)) < 0.5  # salt and pepper
    got = thin(torch.from_numpy(maps)).numpy()
    assert np.array_equal(got, table_thin(maps))
    for image, result in zip(maps[:2], got[:2]):
        assert np.array_equal(result, reference_thin(image))  # the table reference itself


def test_packed_maps_round_trip_and_list_pixels_in_raster_order():
    rng = np.random.default_rng(7)
    maps = rng.random((13, 5, 7)) < 0.3
    packed = pack_maps(torch.from_numpy(maps))
    assert packed.shape[0] == 2
    assert np.array_equal(unpack_maps(packed, 13, 5, 7).numpy(), maps)
    index, row, col = (v.numpy() for v in packed_pixels(packed, 5, 7))
    assert sorted(zip(index, row, col)) == [tuple(v) for v in np.argwhere(maps)]
    for k in range(13):
        raster = row[index == k] * 7 + col[index == k]
        assert np.all(np.diff(raster) > 0)
    assert len(thin(torch.zeros(0, 4, 4, dtype=torch.bool))) == 0


def test_seg2bmap_hand_case():
    labels = torch.zeros(1, 3, 3, dtype=torch.uint8)
    labels[0, 1, 1] = 1
    expected = torch.tensor([[True, True, False], [True, True, False], [False, False, False]])
    assert torch.equal(seg2bmap(labels)[0], expected)
    assert not seg2bmap(torch.full((1, 4, 5), 3)).any()  # a constant map has no boundary


# ---------------------------------------------------------------------------------------------------
# matching


def test_tolerance_and_offsets():
    assert tolerance_pixels(0.011, 425, 560) == pytest.approx(0.011 * math.hypot(425, 560))
    offsets = disc_offsets(1.5)
    assert len(offsets) == 9  # 3x3 block: corners at sqrt(2) <= 1.5, (0, 2) at 2 > 1.5
    assert len(disc_offsets(2.0)) == 13  # ... plus the four (0, +-2)-type offsets at exactly 2


def test_candidate_graph_edges_are_exactly_the_pairs_within_radius():
    rng = np.random.default_rng(4)
    gt = rng.random((9, 13)) < 0.15
    pred_rc = np.argwhere(rng.random((9, 13)) < 0.2)
    radius = 2.3
    graph = candidate_graph(pred_rc, gt, radius).toarray().astype(bool)
    gt_rc = np.argwhere(gt)
    distances = np.sqrt(((pred_rc[:, None, :] - gt_rc[None, :, :]) ** 2).sum(-1))
    assert np.array_equal(graph, distances <= radius)


@pytest.mark.parametrize("seed", range(12))
def test_max_matching_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    height, width = 6, 7
    pred = rng.random((height, width)) < 0.15
    gt = rng.random((height, width)) < 0.15
    pred_rc, gt_rc = np.argwhere(pred)[:7], np.argwhere(gt)[:7]
    pred = np.zeros_like(pred)
    pred[tuple(pred_rc.T)] = True
    gt = np.zeros_like(gt)
    gt[tuple(gt_rc.T)] = True
    radius = 1.0 + seed % 3 * 0.5
    expected = brute_force_matching(
        [tuple(p) for p in np.argwhere(pred)], [tuple(g) for g in np.argwhere(gt)], radius
    )
    graph = candidate_graph(np.argwhere(pred), gt, radius)
    for method in MATCHING_METHODS:
        assert max_matching_size(graph, method) == expected
        assert max_matching_size(graph.T.tocsr(), method) == expected


def test_max_matching_equals_assignment_on_larger_graphs():
    rng = np.random.default_rng(5)
    for density, radius in ((0.1, 1.8), (0.3, 2.5), (0.5, 3.2)):
        gt = rng.random((25, 30)) < density
        pred = rng.random((25, 30)) < 0.8 * density
        graph = candidate_graph(np.argwhere(pred), gt, radius)
        rows, cols = linear_sum_assignment(-graph.toarray())  # maximise the number of real edges
        expected = int(graph.toarray()[rows, cols].sum())
        for method in MATCHING_METHODS:
            assert max_matching_size(graph, method) == expected


@pytest.mark.parametrize("seed", range(6))
def test_matching_methods_agree_on_random_bipartite_graphs(seed):
    """Hopcroft-Karp and Dinic max flow give the same (assignment-checked) size on arbitrary graphs."""
    rng = np.random.default_rng(100 + seed)
    num_rows, num_cols = int(rng.integers(1, 60)), int(rng.integers(1, 60))
    dense = rng.random((num_rows, num_cols)) < rng.uniform(0.01, 0.3)
    dense[rng.random(num_rows) < 0.2] = False  # rows without edges
    graph = csr_matrix(dense.astype(np.int8))
    rows, cols = linear_sum_assignment(-dense.astype(np.int64))
    expected = int(dense[rows, cols].sum())
    sizes = {method: max_matching_size(graph, method) for method in (*MATCHING_METHODS, "auto")}
    assert sizes == dict.fromkeys(sizes, expected)


def test_max_matching_edge_cases():
    empty = csr_matrix((3, 4), dtype=np.int8)
    for method in (*MATCHING_METHODS, "auto"):
        assert max_matching_size(empty, method) == 0
        assert max_matching_size(csr_matrix((0, 4), dtype=np.int8), method) == 0
    with pytest.raises(ValueError, match="method"):
        max_matching_size(csr_matrix(np.ones((2, 2), dtype=np.int8)), "simplex")


def test_auto_method_switches_to_max_flow_at_the_edge_threshold(monkeypatch):
    gt = np.zeros((2, 12, 12), dtype=bool)
    gt[0, 2:10:2, 1:11] = True  # stripes: some graphs above, some below the patched threshold
    gt[1, 5, 5] = True
    maps = np.zeros((3, 12, 12), dtype=bool)
    maps[0, 3:9, 2:10] = True
    maps[1, 4:7, 4:7] = True
    maps[2, 0, 0] = True
    map_image = np.array([0, 1, 0])
    pixels = np.nonzero(maps)
    forced = {method: batch_match_counts(gt, map_image, *pixels, 2.0, method) for method in MATCHING_METHODS}
    assert forced["dinic"].tolist() == forced["hopcroft_karp"].tolist()
    sizes = []
    real_flow = boundary_matching.maximum_flow
    monkeypatch.setattr(
        boundary_matching,
        "maximum_flow",
        lambda graph, *args, **kwargs: sizes.append(graph.nnz) or real_flow(graph, *args, **kwargs),
    )
    assert batch_match_counts(gt, map_image, *pixels, 2.0).tolist() == forced["dinic"].tolist()
    assert sizes == []  # far below the real threshold: Hopcroft-Karp only
    monkeypatch.setattr(boundary_matching, "DINIC_MIN_EDGES", 20)
    assert batch_match_counts(gt, map_image, *pixels, 2.0).tolist() == forced["dinic"].tolist()
    assert len(sizes) == 1  # map 0 (many edges) by max flow; map 1 (9 edges) by Hopcroft-Karp


def random_bands(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, prediction): random bands at density 0.5 and 0.45, the prediction the wider."""
    gt = np.zeros((height, width), dtype=bool)
    pred = np.zeros((height, width), dtype=bool)
    gt_rows = slice(height * 150 // 480, height * 330 // 480)
    pred_rows = slice(height * 100 // 480, height * 380 // 480)
    gt[gt_rows] = rng.random((gt_rows.stop - gt_rows.start, width)) < 0.5
    pred[pred_rows] = rng.random((pred_rows.stop - pred_rows.start, width)) < 0.45
    return gt, pred


def test_small_layered_band_is_matched_by_max_flow():
    """A 13.6k-edge graph on which scipy's Hopcroft-Karp took 26 s (scipy issue 26147).

    A narrow strip (360x6, radius 6.6) of the wide-band case below: above `DINIC_MIN_EDGES`, so
    Dinic max flow matches it in about a millisecond.
    """
    gt, pred = random_bands(np.random.default_rng(10), 360, 6)
    graph = candidate_graph(np.argwhere(pred), gt, 6.6)
    assert graph.nnz >= boundary_matching.DINIC_MIN_EDGES
    start = time.perf_counter()
    count = batch_match_counts(gt[None], np.zeros(1, dtype=np.int64), *np.nonzero(pred[None]), 6.6)
    elapsed = time.perf_counter() - start
    assert count.tolist() == [max_matching_size(graph, "dinic")]
    assert elapsed < 5, f"{elapsed:.1f} s"


@pytest.mark.slow
def test_wide_band_at_full_size_does_not_hang():
    """A graph on which scipy's Hopcroft-Karp takes exponential time (scipy issue 26147).

    Two 480x640 maps: a band of ground truth at density 0.5 and a wider predicted band at 0.45, the
    NYUD tolerance (0.011 x diagonal = 8.8 px). Hopcroft-Karp did not finish within 95 s on this
    graph (6.2M edges); the size-based choice sends it to Dinic max flow (about 1-2 s).
    """
    height, width = 480, 640
    gt, pred = random_bands(np.random.default_rng(0), height, width)
    radius = tolerance_pixels(0.011, height, width)
    start = time.perf_counter()
    count = batch_match_counts(gt[None], np.zeros(1, dtype=np.int64), *np.nonzero(pred[None]), radius)
    elapsed = time.perf_counter() - start
    graph = candidate_graph(np.argwhere(pred), gt, radius)
    assert graph.nnz >= boundary_matching.DINIC_MIN_EDGES
    # the other orientation of the flow network: a different graph for the max-flow solver
    assert count.tolist() == [max_matching_size(graph, "dinic")]
    assert 0 < count[0] < min(graph.shape)  # neither side can be matched completely
    assert elapsed < 60, f"{elapsed:.1f} s"


def test_matching_is_one_to_one():
    gt = np.zeros((5, 5), dtype=bool)
    gt[2, 2] = True
    pred = np.zeros((1, 5, 5), dtype=bool)
    pred[0, 1:4, 1:4] = True  # nine predictions around a single ground-truth pixel
    matched, predicted = match_counts(pred, gt, 1.5)
    assert matched.tolist() == [1] and predicted.tolist() == [9]


def test_matcher_reuses_and_rejects():
    gt = np.eye(6, dtype=bool)
    support = np.zeros((6, 6), dtype=bool)
    support[:, :3] = True
    matcher = BoundaryMatcher(gt, support, 1.0)
    first = np.zeros((6, 6), dtype=bool)
    first[:3, 0] = True
    # (0,0)-(0,0) and (1,0)-(1,1) match; (2,0) has no ground-truth pixel within 1 px
    assert matcher.count(first) == (2, 3)
    assert matcher.count(first.copy()) == (2, 3)
    outside = np.zeros((6, 6), dtype=bool)
    outside[5, 5] = True
    with pytest.raises(ValueError, match="support"):
        matcher.count(outside)


def test_brute_force_reference_sanity():
    assert brute_force_matching([(0, 0), (0, 1)], [(0, 0)], 1.0) == 1
    assert brute_force_matching([(0, 0), (0, 1)], [(0, 0), (1, 1)], 1.0) == 2
    assert brute_force_matching([(0, 0), (0, 1)], [(0, 1)], 0.5) == 1


@pytest.mark.parametrize("seed", range(5))
def test_batch_match_counts_equals_one_matcher_per_map(seed):
    rng = np.random.default_rng(10 + seed)
    batch, height, width = 3, int(rng.integers(6, 30)), int(rng.integers(6, 30))
    gt = np.stack(
        [random_blobs(rng, 1, height, width)[0] & (rng.random((height, width)) < 0.6) for _ in range(3)]
    )
    gt[2] = False  # an image without ground truth
    maps, owners = [], []
    for image in range(batch):
        for density in (0.02, 0.15, 0.5):  # few and many pixels
            maps.append(rng.random((height, width)) < density)
            owners.append(image)
        maps.append(maps[-1])  # a repeated map: its count is reused
        owners.append(image)
    maps.append(np.zeros((height, width), dtype=bool))  # an empty map
    owners.append(1)
    radius = float(rng.uniform(0.8, 3.5))
    for order in (np.arange(len(maps)), rng.permutation(len(maps))):  # a map's image may recur anywhere
        maps, map_image = np.stack(maps)[order], np.array(owners)[order]
        expected = [
            max_matching_size(candidate_graph(np.argwhere(pred), gt[image], radius), "hopcroft_karp")
            for pred, image in zip(maps, map_image)
        ]
        for method in (*MATCHING_METHODS, "auto"):
            got = batch_match_counts(gt, map_image, *np.nonzero(maps), radius, method)
            assert got.tolist() == expected
        maps, owners = list(maps), list(map_image)
    for pred, image, count in zip(maps, map_image, got):
        assert BoundaryMatcher(gt[image], pred, radius).count(pred) == (count, int(pred.sum()))


def test_batch_match_counts_equals_brute_force_on_tiny_maps():
    rng = np.random.default_rng(11)
    gt = rng.random((4, 5, 6)) < 0.2
    maps = rng.random((8, 5, 6)) < 0.2
    map_image = np.repeat(np.arange(4), 2)
    expected = [
        brute_force_matching(
            [tuple(p) for p in np.argwhere(pred)], [tuple(g) for g in np.argwhere(gt[image])], 1.5
        )
        for pred, image in zip(maps, map_image)
    ]
    for method in (*MATCHING_METHODS, "auto"):
        assert batch_match_counts(gt, map_image, *np.nonzero(maps), 1.5, method).tolist() == expected
    assert batch_match_counts(gt, map_image, *np.nonzero(np.zeros_like(maps)), 1.5).tolist() == [0] * 8


def test_batch_match_counts_reuses_only_identical_maps():
    gt = np.zeros((1, 3, 6), dtype=bool)
    gt[0, 0, 0] = gt[0, 0, 4] = True
    maps = np.zeros((3, 3, 6), dtype=bool)
    maps[0, 1, [0, 4]] = True  # one pixel under each ground-truth pixel: 2 matches
    maps[1, 1, [0, 1]] = True  # as many matchable pixels, both next to the first one: 1 match
    maps[2] = maps[1]  # identical to the previous map: its count is reused
    assert batch_match_counts(gt, np.zeros(3, dtype=np.int64), *np.nonzero(maps), 1.5).tolist() == [2, 1, 1]
