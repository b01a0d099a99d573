"""BoundaryMeter: hand-computed ODS/OIS/AP, SEISM's degenerate-count rules, invariances, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boundary_reference import match_counts, table_thin
from densepred.metrics import BoundaryMeter
from densepred.metrics.boundary import (
    average_precision,
    dataset_precision_recall,
    f_measure,
    image_precision_recall,
)


def plain_meter(**kwargs) -> BoundaryMeter:
    """A meter without the image operations, so that counts can be worked out by hand."""
    options = dict(nms=False, thin_maps=False, quantize=False, gt_boundary="raw")
    options.update(kwargs)
    return BoundaryMeter(**options)


def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 10x10 images (see test_hand_computed_ods_ois_ap for the counts)."""
    pred = torch.zeros(2, 1, 10, 10)
    gt = torch.zeros(2, 1, 10, 10)
    gt[0, 0, :, 4] = 1  # image 0: vertical GT line, 10 px
    pred[0, 0, :, 5] = 0.8  # ... predicted one column to the right: all matched
    pred[0, 0, :5, 9] = 0.3  # ... plus 5 weak false positives 4-5 px away
    gt[1, 0, 2, :] = 1  # image 1: horizontal GT line, 10 px
    pred[1, 0, 2, :5] = 0.3  # ... half of it found, weakly
    return pred, gt


def test_hand_computed_ods_ois_ap():
    # tolerance 0.106 * sqrt(200) = 1.499 px: one-column shifts (and diagonals, 1.414) match
    meter = plain_meter(max_dist=0.106, thresholds=[0.2, 0.5])
    pred, gt = hand_case()
    meter.update(pred, gt)
    # t=0.2: cntR = 10+5, sumR = 20, cntP = 15, sumP = 15+5 -> P = R = 0.75, F = 0.75
    # t=0.5: cntR = 10, sumR = 20, cntP = 10, sumP = 10 -> P = 1, R = 0.5, F = 2/3
    curves = meter.curves()
    assert curves["precision"] == pytest.approx([0.75, 1.0])
    assert curves["recall"] == pytest.approx([0.75, 0.5])
    result = meter.compute()
    assert result["odsf"] == pytest.approx(75.0)
    # OIS: image 0 best at t=0.5 (F 1 vs 0.8): (10,10,10,10); image 1 best at t=0.2 (F 2/3 vs 0):
    # (5,10,5,5) -> R = 15/20, P = 15/15, F = 2*0.75/1.75
    assert result["oisf"] == pytest.approx(100 * 1.5 / 1.75)
    # AP: P(R) through (0.5, 1) and (0.75, 0.75), sampled at R = 0.50..0.75: sum 26 - 3.25, / 100
    assert result["ap"] == pytest.approx(22.75)


def test_counts_accumulate_over_batches_and_order():
    pred, gt = hand_case()
    whole = plain_meter(max_dist=0.106, thresholds=[0.2, 0.5])
    whole.update(pred, gt)
    split = plain_meter(max_dist=0.106, thresholds=[0.2, 0.5])
    split.update(pred[1:], gt[1:])
    split.update(pred[0], gt[0])  # a single (1,H,W) image
    for key, value in whole.state().items():
        assert torch.equal(split.state()[key], value), key
    assert split.compute() == whole.compute()


def test_seism_rules_for_degenerate_counts():
    # per image: no GT -> (P, R) = (0, 1); no prediction (with GT) -> (1, 0); both F = 0
    p, r = image_precision_recall([0, 0, 3], [0, 5, 6], [0, 0, 3], [4, 0, 4])
    assert p.tolist() == [0.0, 1.0, 0.75] and r.tolist() == [1.0, 0.0, 0.5]
    assert f_measure(p, r).tolist() == pytest.approx([0.0, 0.0, 2 * 0.75 * 0.5 / 1.25])
    # dataset level, in gather_measure's order: no GT and no prediction ends as (P, R) = (1, 0)
    p, r = dataset_precision_recall([0, 0, 0, 2], [0, 0, 5, 4], [0, 0, 0, 2], [0, 3, 0, 8])
    assert p.tolist() == [1.0, 0.0, 1.0, 0.25] and r.tolist() == [0.0, 1.0, 0.0, 0.5]


def test_average_precision_rules():
    assert average_precision([1.0], [0.3]) == 0.0  # a single recall value: no curve
    # flat precision 0.8 over recall 0..1: 101 samples * 0.8 / 100
    assert average_precision([0.8, 0.8], [0.0, 1.0]) == pytest.approx(0.808)
    # repeated recall: the first threshold's precision is used
    assert average_precision([0.5, 0.9, 1.0], [0.0, 0.0, 1.0]) == pytest.approx(
        sum(0.5 + 0.5 * k / 100 for k in range(101)) / 100
    )


def test_image_without_gt_edges_counts_false_positives():
    meter = plain_meter(max_dist=0.05, thresholds=[0.5])
    pred = torch.zeros(1, 1, 8, 8)
    pred[0, 0, 3, 2:6] = 0.9
    meter.update(pred, torch.zeros(1, 1, 8, 8))
    state = meter.state()
    assert state["sum_p"].tolist() == [4] and state["sum_r"].tolist() == [0]
    assert meter.compute() == {"odsf": 0.0, "oisf": 0.0, "ap": 0.0}


def test_perfect_and_shifted_predictions_with_full_pipeline():
    """Default pipeline (quantise, NMS, thinning, seg2bmap): a blurred copy of the GT scores ~100.

    seg2bmap + thinning moves a one-pixel GT line by one pixel (to its left/upper side), as in SEISM;
    at NYUD size the tolerance is 7.7 px, so here it is scaled up to 0.03 x diagonal = 2.4 px.
    """
    height, width = 48, 64
    gt = torch.zeros(1, 1, height, width)
    gt[0, 0, 10:38, 12] = 1
    gt[0, 0, 10:38, 50] = 1
    gt[0, 0, 10, 12:51] = 1
    gt[0, 0, 37, 12:51] = 1
    kernel = torch.tensor([0.25, 0.6, 1.0, 0.6, 0.25])
    blurred = torch.nn.functional.conv2d(gt, kernel.view(1, 1, 1, 5), padding=(0, 2))
    blurred = torch.nn.functional.conv2d(blurred, kernel.view(1, 1, 5, 1), padding=(2, 0))
    prob = (blurred / blurred.max()).clamp(0, 1)
    meter = BoundaryMeter(thresholds=11, max_dist=0.03)
    meter.update(prob, gt)
    assert meter.compute()["odsf"] > 95.0
    far = BoundaryMeter(thresholds=11, max_dist=0.03)
    far.update(torch.roll(prob, shifts=6, dims=-1), gt)  # 6 px > 2.4 px: only the horizontal sides match
    assert far.compute()["odsf"] < 70.0
    tight = BoundaryMeter(thresholds=11)  # 0.011 x 80 = 0.88 px: the one-pixel GT shift is not forgiven
    tight.update(prob, gt)
    assert tight.compute()["odsf"] < meter.compute()["odsf"]


def test_logits_flag_equals_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 20, 24) * 3
    gt = (torch.rand(2, 1, 20, 24) > 0.85).float()
    from_logits = BoundaryMeter(thresholds=5, from_logits=True)
    from_logits.update(logits, gt)
    from_probs = BoundaryMeter(thresholds=5)
    from_probs.update(torch.sigmoid(logits), gt)
    assert from_logits.compute() == from_probs.compute()


def test_dtype_and_contiguity_invariance():
    torch.manual_seed(1)
    prob = torch.rand(2, 1, 16, 20)
    gt = (torch.rand(2, 1, 16, 20) > 0.8).float()
    reference = BoundaryMeter(thresholds=5)
    reference.update(prob, gt)
    other = BoundaryMeter(thresholds=5)
    other.update(prob.double().transpose(-1, -2).contiguous().transpose(-1, -2), gt.bool())
    assert not prob.double().transpose(-1, -2).contiguous().transpose(-1, -2).is_contiguous()
    assert other.compute() == reference.compute()


def test_chunking_does_not_change_counts():
    torch.manual_seed(2)
    prob = torch.rand(3, 1, 16, 20)
    gt = (torch.rand(3, 1, 16, 20) > 0.8).float()
    big, small = BoundaryMeter(thresholds=11), BoundaryMeter(thresholds=11, chunk_elements=1)
    big.update(prob, gt)
    small.update(prob, gt)
    for key, value in big.state().items():
        assert torch.equal(small.state()[key], value), key


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (
            torch.full((1, 1, 8, 8), float("nan")),
            torch.zeros(1, 1, 8, 8),
            "BoundaryMeter: prediction contains",
        ),
        (torch.full((1, 1, 8, 8), float("inf")), torch.zeros(1, 1, 8, 8), "NaN/inf"),
        (torch.full((1, 1, 8, 8), 1.5), torch.zeros(1, 1, 8, 8), r"\[0, 1\]"),
        (torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.5), "only 0 and 1"),
        (torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), r"\(B,1,H,W\)"),
        (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9), r"\(B,1,H,W\)"),
        (torch.zeros(1, 1, 1, 8), torch.zeros(1, 1, 1, 8), "2x2"),
    ],
)
def test_bad_input_raises_naming_the_meter(pred, target, message):
    with pytest.raises(ValueError, match=message):
        BoundaryMeter(thresholds=3).update(pred, target)


def test_bad_settings_and_empty_compute():
    with pytest.raises(ValueError, match="max_dist"):
        BoundaryMeter(max_dist=0)
    with pytest.raises(ValueError, match="increasing"):
        BoundaryMeter(thresholds=[0.5, 0.2])
    with pytest.raises(ValueError, match="gt_boundary"):
        BoundaryMeter(gt_boundary="thick")
    with pytest.raises(ValueError, match="no edge map"):
        BoundaryMeter(thresholds=3).compute()


def test_merge_equals_single_pass():
    pred, gt = hand_case()
    first, second = (
        plain_meter(max_dist=0.106, thresholds=[0.2, 0.5]),
        plain_meter(max_dist=0.106, thresholds=[0.2, 0.5]),
    )
    first.update(pred[:1], gt[:1])
    second.update(pred[1:], gt[1:])
    first.merge(second.state())
    assert first.compute() == pytest.approx({"odsf": 75.0, "oisf": 100 * 1.5 / 1.75, "ap": 22.75})
    with pytest.raises(ValueError, match="shape"):
        first.merge(plain_meter(thresholds=[0.2, 0.5, 0.7]).state())


def test_matches_numpy_brute_force_pipeline():
    """With the image operations off, every count equals an exhaustive distance check."""
    rng = np.random.default_rng(3)
    prob = rng.random((2, 1, 9, 11)).astype(np.float32)
    gt = rng.random((2, 1, 9, 11)) < 0.15
    thresholds = [0.3, 0.6, 0.9]
    meter = plain_meter(max_dist=0.12, thresholds=thresholds)  # radius 0.12 * sqrt(202) = 1.71 px
    meter.update(torch.from_numpy(prob), torch.from_numpy(gt.astype(np.float32)))
    from scipy.optimize import linear_sum_assignment

    radius = 0.12 * np.sqrt(9**2 + 11**2)
    expected_matched = []
    for t in thresholds:
        total = 0
        for b in range(2):
            p_rc, g_rc = np.argwhere(prob[b, 0] > t), np.argwhere(gt[b, 0])
            close = np.sqrt(((p_rc[:, None] - g_rc[None]) ** 2).sum(-1)) <= radius
            if close.size:
                rows, cols = linear_sum_assignment(-close.astype(float))
                total += int(close[rows, cols].sum())
        expected_matched.append(total)
    state = meter.state()
    assert state["cnt_p"].tolist() == expected_matched
    assert state["sum_p"].tolist() == [int((prob > t).sum()) for t in thresholds]
    assert state["sum_r"].tolist() == [int(gt.sum())] * 3


def test_update_equals_plain_per_threshold_loop():
    """Distinct-map reuse, chunking and OIS bookkeeping against a straightforward loop."""
    from densepred.metrics.boundary_matching import tolerance_pixels
    from densepred.metrics.boundary_ops import edge_nms, edge_orientation, seg2bmap, thin

    torch.manual_seed(4)
    logits = torch.randn(3, 1, 18, 22)
    logits[1] = 0.0  # a flat map: every threshold below 0.5 gives the same binary map
    gt = (torch.rand(3, 1, 18, 22) > 0.85).float()
    thresholds = [0.001, 0.2, 0.45, 0.5, 0.7, 0.999]
    meter = BoundaryMeter(thresholds=thresholds, from_logits=True, max_dist=0.05, chunk_elements=700)
    meter.update(logits, gt)

    probs = torch.floor(torch.sigmoid(logits[:, 0]) * 255) / 255
    edges = edge_nms(probs, edge_orientation(probs))
    gt_maps = thin(seg2bmap(gt[:, 0].to(torch.uint8))).numpy()
    radius = tolerance_pixels(0.05, 18, 22)
    matched = np.zeros((3, len(thresholds)), dtype=np.int64)
    predicted = np.zeros_like(matched)
    for b in range(3):
        maps = thin(torch.stack([edges[b] > t for t in torch.tensor(thresholds)])).numpy()
        matched[b], predicted[b] = match_counts(maps, gt_maps[b], radius)
    state = meter.state()
    assert state["cnt_p"].tolist() == matched.sum(0).tolist()
    assert state["sum_p"].tolist() == predicted.sum(0).tolist()
    assert state["sum_r"].tolist() == [int(gt_maps.sum())] * len(thresholds)
    num_gt = gt_maps.reshape(3, -1).sum(1)
    precision, recall = image_precision_recall(matched, num_gt[:, None], matched, predicted)
    best = np.argmax(f_measure(precision, recall), axis=1)
    rows = np.arange(3)
    expected_ois = [
        matched[rows, best].sum(),
        num_gt.sum(),
        matched[rows, best].sum(),
        predicted[rows, best].sum(),
    ]
    assert state["ois"].tolist() == expected_ois


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"chunk_elements": 1000},
        {"gt_boundary": "raw", "quantize": False},
        {"nms": False, "thin_maps": False},
        {"thresholds": 101},
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_update_equals_one_map_at_a_time_on_random_inputs(options, seed):
    """The batched path (distinct maps only, bit-packed thinning, one matching pass) against the
    plain definition: every (image, threshold) binarised, thinned and matched on its own."""
    from scipy import ndimage

    from densepred.metrics.boundary_matching import tolerance_pixels
    from densepred.metrics.boundary_ops import edge_nms, edge_orientation, seg2bmap

    rng = np.random.default_rng(seed)
    batch, height, width = 4, int(rng.integers(8, 40)), int(rng.integers(8, 40))
    smooth = ndimage.gaussian_filter(rng.normal(0, 4, (batch, 1, height, width)), (0, 0, 1.5, 1.5))
    logits = torch.from_numpy(smooth.astype(np.float32))
    logits[1] = 0.3  # flat: plateaus that survive NMS
    logits[2] = -20.0  # (almost) nothing above any threshold
    gt = torch.from_numpy((rng.random((batch, 1, height, width)) < 0.08).astype(np.float32))
    gt[3] = 0  # no ground truth
    settings = {"thresholds": [0.001, 0.1, 0.3, 0.5, 0.57, 0.9, 0.999], "max_dist": 0.06, **options}
    meter = BoundaryMeter(from_logits=True, **settings)
    meter.update(logits, gt)

    probs = torch.sigmoid(logits[:, 0])
    if meter.quantize:
        probs = torch.floor(probs * 255) / 255
    edges = edge_nms(probs, edge_orientation(probs)) if meter.nms else probs
    boundary = seg2bmap(gt[:, 0].to(torch.uint8)) if meter.gt_boundary == "seg2bmap" else gt[:, 0] != 0
    gt_maps = table_thin(boundary.numpy()) if meter.thin_maps else boundary.numpy()
    radius = tolerance_pixels(meter.max_dist, height, width)
    levels = torch.tensor(meter.thresholds, dtype=torch.float32)
    matched = np.zeros((batch, len(levels)), dtype=np.int64)
    predicted = np.zeros_like(matched)
    for b in range(batch):
        maps = (edges[b][None] > levels.view(-1, 1, 1)).numpy()
        if meter.thin_maps:
            maps = table_thin(maps)
        matched[b], predicted[b] = match_counts(maps, gt_maps[b], radius)
    state = meter.state()
    assert state["cnt_p"].tolist() == matched.sum(0).tolist()
    assert state["sum_p"].tolist() == predicted.sum(0).tolist()
    num_gt = gt_maps.reshape(batch, -1).sum(1)
    assert state["sum_r"].tolist() == [int(num_gt.sum())] * len(levels)
    precision, recall = image_precision_recall(matched, num_gt[:, None], matched, predicted)
    best = np.argmax(f_measure(precision, recall), axis=1)
    rows = np.arange(batch)
    top = matched[rows, best].sum()
    assert state["ois"].tolist() == [top, num_gt.sum(), top, predicted[rows, best].sum()]
