"""NormalsMeter: hand-computed angles, histogram median accuracy, validity, invariances, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densepred.metrics import NormalsMeter
from densepred.metrics.normals import angular_error_deg


def as_image(vectors: list[list[float]]) -> torch.Tensor:
    """(N,3) vectors -> a (1,3,1,N) image."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, -1)


def test_hand_computed_keys():
    s = math.sqrt(0.5)
    gt = as_image([[0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0]])  # last pixel invalid
    pred = as_image([[0, 0, 3], [0, s, s], [1, 0, 0], [0, 0, -1], [1, 1, 1]])  # 0, 45, 90, 180 deg
    meter = NormalsMeter()
    meter.update(pred, gt)
    result = meter.compute()
    assert result["mean"] == pytest.approx((0 + 45 + 90 + 180) / 4)
    assert result["rms"] == pytest.approx(math.sqrt((0 + 45**2 + 90**2 + 180**2) / 4))
    assert result["median"] == pytest.approx((45 + 90) / 2, abs=0.01)
    assert result["a11_25"] == pytest.approx(25.0)
    assert result["a22_5"] == pytest.approx(25.0)
    assert result["a30"] == pytest.approx(25.0)


def test_angle_is_stable_near_zero_and_handles_zero_prediction():
    tiny = 1e-4  # radians: acos(dot) in float32 would return 0 here
    pred = torch.tensor([[0.0, math.sin(tiny), math.cos(tiny)], [0.0, 0.0, 0.0]], dtype=torch.float64)
    gt = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    angles = angular_error_deg(pred, gt)
    assert angles[0].item() == pytest.approx(math.degrees(tiny), rel=1e-6)
    assert angles[1].item() == pytest.approx(90.0)


def test_median_within_bin_of_exact_and_thresholds_exact():
    torch.manual_seed(0)
    gt = torch.nn.functional.normalize(torch.randn(4, 3, 20, 25), dim=1)
    pred = gt + 0.6 * torch.randn(4, 3, 20, 25)
    gt[0, :, :5] = 0  # invalid pixels
    meter = NormalsMeter()
    meter.update(pred, gt)
    result = meter.compute()
    valid = (gt != 0).any(1)
    p = pred.permute(0, 2, 3, 1)[valid].double().numpy()
    g = gt.permute(0, 2, 3, 1)[valid].double().numpy()
    cos = (p * g).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(g, axis=1)
    angles = np.degrees(np.arccos(np.clip(cos, -1, 1)))  # the acos form, independently
    assert abs(result["median"] - np.median(angles)) <= 0.0025 / 2 + 1e-6
    # float32 per-pixel angles (as the published evaluations): ~1e-6 relative, CPU-dependent last bits
    assert result["mean"] == pytest.approx(angles.mean(), rel=1e-6)
    assert result["rms"] == pytest.approx(math.sqrt((angles**2).mean()), abs=1e-6)
    for key, limit in (("a11_25", 11.25), ("a22_5", 22.5), ("a30", 30.0)):
        assert result[key] == pytest.approx(100 * (angles < limit).mean())


def test_odd_count_median_and_coarse_bins():
    gt = as_image([[0, 0, 1]] * 3)
    pred = as_image([[0, math.sin(a), math.cos(a)] for a in (0.1, 0.5, 0.2)])
    meter = NormalsMeter(bin_width=0.01)
    meter.update(pred, gt)
    assert abs(meter.compute()["median"] - math.degrees(0.2)) <= 0.005 + 1e-9


def test_order_split_dtype_layout_invariance():
    torch.manual_seed(1)
    gt = torch.nn.functional.normalize(torch.randn(5, 3, 6, 7), dim=1)
    pred = torch.randn(5, 3, 6, 7)
    reference = NormalsMeter()
    reference.update(pred, gt)
    other = NormalsMeter()
    order = [4, 2, 0, 1, 3]
    channels_last = pred[order].contiguous(memory_format=torch.channels_last)
    other.update(channels_last[:3].double(), gt[order][:3])
    for i in range(3, 5):
        other.update(channels_last[i], gt[order][i])  # single (3,H,W) images
    for key in ("histogram", "below", "num_pixels"):
        assert torch.equal(other.state()[key], reference.state()[key])
    # float32 angles: torch's vectorised atan2 and its scalar tail can differ in the last bit, so a
    # pixel's angle may depend on where it sits in the batch (none crosses a bin edge here)
    assert other.compute() == pytest.approx(reference.compute(), rel=1e-6)


def test_no_valid_pixel():
    meter = NormalsMeter()
    meter.update(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="NormalsMeter: no valid normal"):
        meter.compute()


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (torch.full((1, 3, 2, 2), float("nan")), torch.ones(1, 3, 2, 2), "NormalsMeter: prediction contains"),
        (torch.ones(1, 3, 2, 2), torch.full((1, 3, 2, 2), float("-inf")), "NormalsMeter: target contains"),
        (torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2), r"\(B,3,H,W\)"),
        (torch.ones(1, 3, 2, 2), torch.ones(1, 3, 2, 3), r"\(B,3,H,W\)"),
    ],
)
def test_bad_input_raises_naming_the_meter(pred, target, message):
    with pytest.raises(ValueError, match=message):
        NormalsMeter().update(pred, target)
