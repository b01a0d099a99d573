"""DepthMeter: both protocols on hand-computed cases, crop/clamp/validity rules, invariances, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densepred.metrics import DepthMeter

# image A: four valid pixels; image B: one valid pixel (0 = invalid)
GT_A = [[1.0, 2.0], [4.0, 2.0]]
PRED_A = [[1.0, 1.0], [5.0, 2.5]]
GT_B = [[0.0, 0.0], [0.0, 8.0]]
PRED_B = [[3.0, 3.0], [3.0, 4.0]]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    pred = torch.tensor([[PRED_A], [PRED_B]])
    gt = torch.tensor([[GT_A], [GT_B]])
    return pred, gt


def eigen_by_hand(pred: list[float], gt: list[float]) -> dict[str, float]:
    p, g = np.array(pred, dtype=np.float64), np.array(gt, dtype=np.float64)
    ratio = np.maximum(g / p, p / g)
    e = np.log(p) - np.log(g)
    return {
        "rms": math.sqrt(np.mean((g - p) ** 2)),
        "abs_rel": np.mean(np.abs(g - p) / g),
        "sq_rel": np.mean((g - p) ** 2 / g),
        "log10": np.mean(np.abs(np.log10(g) - np.log10(p))),
        "log_rms": math.sqrt(np.mean(e**2)),
        "silog": 100 * math.sqrt(np.mean(e**2) - np.mean(e) ** 2),
        "delta1": np.mean(ratio < 1.25),
        "delta2": np.mean(ratio < 1.25**2),
        "delta3": np.mean(ratio < 1.25**3),
    }


def test_eigen_is_per_image_then_averaged():
    meter = DepthMeter("eigen")
    meter.update(*batch())
    a = eigen_by_hand([1, 1, 5, 2.5], [1, 2, 4, 2])
    b = eigen_by_hand([4], [8])
    expected = {key: (a[key] + b[key]) / 2 for key in a}
    assert meter.compute() == pytest.approx(expected)
    # spot-check the hand formulas themselves for image A
    assert a["rms"] == pytest.approx(math.sqrt((0 + 1 + 1 + 0.25) / 4))
    # ratios 1, 2, 1.25, 1.25: the threshold is strict, so 1.25 is not < 1.25
    assert a["delta1"] == pytest.approx(0.25) and a["delta2"] == pytest.approx(0.75)
    assert a["abs_rel"] == pytest.approx((0 + 0.5 + 0.25 + 0.25) / 4)


def test_eigen_single_pixel_by_hand():
    meter = DepthMeter("eigen")
    meter.update(torch.tensor([[[4.0]]]), torch.tensor([[[8.0]]]))  # one (1,H,W) image, one pixel
    assert meter.compute() == pytest.approx(
        {
            "rms": 4.0,
            "abs_rel": 0.5,
            "sq_rel": 2.0,  # 4^2 / 8
            "log10": math.log10(2),
            "log_rms": math.log(2),
            "silog": 0.0,  # a single pixel has no scale-invariant error
            "delta1": 0.0,  # ratio 2 is not below 1.25, 1.5625 or 1.953125
            "delta2": 0.0,
            "delta3": 0.0,
        },
        rel=1e-6,  # per-pixel terms in float32, as the published evaluations compute them
        abs=1e-12,
    )


def test_mtl_is_one_global_pixel_pool():
    meter = DepthMeter("mtl")
    meter.update(*batch())
    # five valid pixels: errors 0, -1, 1, 0.5 (image A), -4 (image B)
    result = meter.compute()
    assert result["rms"] == pytest.approx(math.sqrt((0 + 1 + 1 + 0.25 + 16) / 5))
    assert result["abs_rel"] == pytest.approx((0 + 0.5 + 0.25 + 0.25 + 0.5) / 5)
    logs = [0, math.log(2), math.log(5 / 4), math.log(2.5 / 2), math.log(2)]
    assert result["log_rms"] == pytest.approx(math.sqrt(sum(x * x for x in logs) / 5))
    assert set(result) == {"rms", "log_rms", "abs_rel"}


def test_eigen_range_clamp_and_skipped_images():
    meter = DepthMeter("eigen", min_depth=1e-3, max_depth=10.0)
    pred = torch.tensor([[[[20.0, 0.0], [1.0, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    gt = torch.tensor([[[[9.0, 0.5], [12.0, 0.0]]], [[[0.0, 0.0], [10.0, 0.0]]]])  # image 2: nothing valid
    meter.update(pred, gt)
    # valid: 9.0 (pred 20 -> 10) and 0.5 (pred 0 -> 1e-3); 12 > max and 0 are invalid
    assert meter.num_skipped == 1
    assert meter.compute()["rms"] == pytest.approx(math.sqrt((1.0 + (0.5 - 1e-3) ** 2) / 2))
    empty = DepthMeter("eigen")
    empty.update(pred[1:], gt[1:])
    with pytest.raises(ValueError, match="DepthMeter: no image with a valid depth pixel"):
        empty.compute()
    mtl = DepthMeter("mtl")
    mtl.update(pred[:1], torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="DepthMeter: no valid depth pixel"):
        mtl.compute()


def test_mtl_has_no_cap_and_clamps_nonpositive_predictions():
    meter = DepthMeter("mtl")
    meter.update(torch.tensor([[[[-1.0, 50.0]]]]), torch.tensor([[[[2.0, 40.0]]]]))
    result = meter.compute()
    assert result["rms"] == pytest.approx(math.sqrt(((2 - 1e-9) ** 2 + 100) / 2))
    assert math.isfinite(result["log_rms"])


def test_eigen_crop():
    gt = torch.zeros(1, 1, 480, 640)
    gt[..., 45:471, 41:601] = 2.0
    gt[..., 0, 0] = 2.0  # outside the crop
    pred = torch.full_like(gt, 2.0)
    pred[..., 0, 0] = 4.0
    cropped = DepthMeter("eigen", eigen_crop=True)
    cropped.update(pred, gt)
    assert cropped.compute()["rms"] == 0.0
    full = DepthMeter("eigen")
    full.update(pred, gt)
    assert full.compute()["rms"] > 0.0
    with pytest.raises(ValueError, match="480x640"):
        DepthMeter("eigen", eigen_crop=True).update(torch.ones(1, 1, 425, 560), torch.ones(1, 1, 425, 560))


def test_sq_rel_variant():
    meter = DepthMeter("eigen", sq_rel="relative_squared")
    meter.update(torch.tensor([[[[3.0]]]]), torch.tensor([[[[2.0]]]]))
    assert meter.compute()["sq_rel"] == pytest.approx(0.25)  # ((2-3)/2)^2; the eigen form gives 0.5


@pytest.mark.parametrize("protocol", ["eigen", "mtl"])
def test_order_split_dtype_layout_invariance(protocol):
    torch.manual_seed(0)
    gt = torch.rand(5, 1, 6, 8) * 9
    gt[gt < 1] = 0
    pred = torch.rand(5, 1, 6, 8) * 9 + 0.1
    reference = DepthMeter(protocol)
    reference.update(pred, gt)
    other = DepthMeter(protocol)
    order = [3, 0, 4, 2, 1]
    flipped = pred[order].transpose(-1, -2).contiguous().transpose(-1, -2)  # non-contiguous view
    other.update(flipped[:2].double(), gt[order][:2].double())
    other.update(flipped[2:], gt[order][2:])
    # float32 terms: torch's vectorised log and its scalar tail may differ in the last bit
    assert other.compute() == pytest.approx(reference.compute(), rel=1e-6)


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (
            torch.tensor([[[[float("nan")]]]]),
            torch.ones(1, 1, 1, 1),
            "DepthMeter: prediction contains 1 NaN/inf",
        ),
        (torch.tensor([[[[float("inf")]]]]), torch.ones(1, 1, 1, 1), "DepthMeter: prediction contains"),
        (torch.ones(1, 1, 1, 1), torch.tensor([[[[float("nan")]]]]), "DepthMeter: target contains"),
        (torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 3), r"must both be \(B,1,H,W\)"),
        (torch.ones(2, 2), torch.ones(2, 2), r"\(1,H,W\) or \(B,1,H,W\)"),
        (torch.ones(1, 1, 2, 2, dtype=torch.long), torch.ones(1, 1, 2, 2), "floating point"),
    ],
)
def test_bad_input_raises_naming_the_meter(pred, target, message):
    with pytest.raises(ValueError, match=message):
        DepthMeter("eigen").update(pred, target)


def test_bad_settings():
    with pytest.raises(ValueError, match="protocol"):
        DepthMeter("kitti")
    with pytest.raises(ValueError, match="min_depth"):
        DepthMeter("eigen", min_depth=5, max_depth=1)
    with pytest.raises(ValueError, match="Eigen crop"):
        DepthMeter("mtl", eigen_crop=True)
    with pytest.raises(ValueError, match="DepthMeter: cannot merge"):
        DepthMeter("eigen").merge(DepthMeter("mtl").state())


@pytest.mark.parametrize("invalid_fraction", [0.0, 0.3])
def test_mtl_sums_equal_the_masked_formula(invalid_fraction):
    # masked pixels enter as the neutral pair p = gt = 1: the sums must be those over the valid
    # pixels alone (float32 terms as the meter computes them, here summed in float64)
    generator = torch.Generator().manual_seed(3)
    pred = torch.rand(3, 1, 17, 23, generator=generator) * 9 - 0.5
    gt = torch.rand(3, 1, 17, 23, generator=generator) * 10 + 0.01
    gt[torch.rand(gt.shape, generator=generator) < invalid_fraction] = 0
    meter = DepthMeter("mtl")
    meter.update(pred, gt)
    valid = gt > 0
    g, p = gt[valid], pred[valid].clamp(min=1e-9)
    expected = torch.stack(
        [
            ((p - g) ** 2).double().sum(),
            ((torch.log(p) - torch.log(g)) ** 2).double().sum(),
            ((p - g).abs() / g).double().sum(),
        ]
    )
    torch.testing.assert_close(meter.state()["sums"], expected, rtol=1e-6, atol=0)
    assert int(meter.state()["num_pixels"]) == int(valid.sum())
