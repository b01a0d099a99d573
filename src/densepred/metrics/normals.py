"""Surface normals: angular error pooled over every valid pixel of the dataset.

Protocol (docs/protocols.md, "Surface normals"; PolyMaX Sec. 4.1 and Table 2 columns Mean, Med, RMS,
delta1; MTI-Net's file-based evaluation for the full set):
  * both vectors are normalised to unit length (a zero prediction stays zero, giving 90 degrees);
  * a pixel is valid where the ground-truth vector is non-zero;
  * angle = 2 atan2(|n_hat - n|, |n_hat + n|), in degrees: the numerically stable form used by
    ATRC/MQTransformer/InvPT, equal to acos(n_hat . n) but accurate near 0 and 180 degrees;
  * mean, median and rms = sqrt(mean angle^2) over all valid pixels of the dataset (not per image),
    and the percentage of pixels under 11.25, 22.5 and 30 degrees.

The median needs every angle, which does not fit in memory on NYUD (150M+ pixels). We keep a
histogram of `bin_width` degrees (default 0.0025: 72,000 int64 bins) and return the centre of the bin
holding each middle rank, averaged over the two middle ranks for an even count, as numpy's median
does. The result is within bin_width/2 of the exact median (plus the float32 rounding of angle /
bin_width, far below it). The other keys are exact for the computed angles: sums and threshold
counts are accumulated directly, not read from the histogram.

Angles are computed in float32, as the ATRC/MQTransformer/InvPT torch meters compute them, and
summed per image in float32, then over images in float64 (torch's vectorised `atan2` and its scalar
tail may differ in the last bit, so other batch splits agree to float32 rounding). Invalid pixels get
angle 0 by a multiplication with the 0/1 mask (exact, and on CPU far cheaper than `torch.where`);
their count is then taken off histogram bin 0 and the threshold counts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from densepred.metrics.base import Meter, compute_device, count_true
from densepred.ops import sqrt

THRESHOLDS_DEG = (11.25, 22.5, 30.0)
THRESHOLD_KEYS = ("a11_25", "a22_5", "a30")


def _length(vectors: Tensor, dim: int, overwrite: bool = False) -> Tensor:
    """Euclidean length of 3-vectors along `dim` (keepdim), as the square root of a sum of squares
    (much faster than `Tensor.norm(dim=1)` on NCHW tensors). With `overwrite` the squares replace
    `vectors`, saving a temporary of their size."""
    squares = vectors.mul_(vectors) if overwrite else vectors * vectors
    return sqrt(squares.sum(dim, keepdim=True))


def angular_error_deg(pred: Tensor, target: Tensor, dim: int = 1) -> Tensor:
    """Angles in degrees between the 3-vectors along `dim`: 2 atan2(|a - b|, |a + b|), both normalised.

    Zero vectors stay zero after normalisation (so a zero prediction scores 90 degrees against any
    unit target). The inputs are left untouched; the sum a + b is formed in a's buffer.
    """
    a = pred / _length(pred, dim).clamp_min_(torch.finfo(pred.dtype).tiny)
    b = target / _length(target, dim).clamp_min_(torch.finfo(target.dtype).tiny)
    difference = _length(a - b, dim, overwrite=True).squeeze(dim)
    total = _length(a.add_(b), dim, overwrite=True).squeeze(dim)
    return torch.rad2deg(2.0 * torch.atan2(difference, total))


class NormalsMeter(Meter):
    """Angular-error statistics of surface normals, pooled over all valid pixels.

    `update(pred, target)`: (3,H,W) or (B,3,H,W) vectors (camera frame); a zero target vector marks
    an invalid pixel. Keys (degrees, percentages for the thresholds): mean, median, rms, a11_25,
    a22_5, a30.
    """

    def __init__(self, bin_width: float = 0.0025) -> None:
        if not 0.0 < bin_width <= 0.02:
            raise ValueError(f"NormalsMeter: bin_width must lie in (0, 0.02] degrees, got {bin_width}")
        self.bin_width = float(bin_width)
        self.num_bins = math.ceil(180.0 / self.bin_width)
        super().__init__()

    def _initial_state(self) -> dict[str, Tensor]:
        return {
            "histogram": torch.zeros(self.num_bins, dtype=torch.int64),
            "sums": torch.zeros(2, dtype=torch.float64),  # sum of angles, sum of squared angles
            "below": torch.zeros(len(THRESHOLDS_DEG), dtype=torch.int64),
            "num_pixels": torch.zeros((), dtype=torch.int64),
        }

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch of predicted and ground-truth normals."""
        pred = self._check_tensor(pred, "prediction")
        target = self._check_tensor(target, "target")
        pred = self._batched(pred, 3, "prediction", "(3,H,W) or (B,3,H,W)")
        target = self._batched(target, 3, "target", "(3,H,W) or (B,3,H,W)")
        if pred.shape != target.shape or pred.shape[1] != 3:
            raise self._error(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B,3,H,W)"
            )
        if not (pred.is_floating_point() and target.is_floating_point()):
            raise self._error(f"normals must be floating point, got {pred.dtype} and {target.dtype}")
        self._check_finite(pred, "prediction")
        self._check_finite(target, "target")
        device = compute_device(pred.device)
        self._begin_update(device)
        pred = pred.to(device, torch.float32).contiguous()
        target = target.to(device, torch.float32).contiguous()
        # (B,H*W): some non-zero component (max and min avoid a temporary |target|)
        valid = ((target.amax(dim=1) > 0) | (target.amin(dim=1) < 0)).flatten(1)
        num_valid = count_true(valid).sum()
        angles = angular_error_deg(pred, target, dim=1).flatten(1)
        invalid = valid.numel() - num_valid
        if int(invalid):
            angles = angles * valid.to(angles.dtype)  # invalid pixels: angle 0
        bins = (angles / self.bin_width).to(torch.int32).clamp_(max=self.num_bins - 1)
        histogram = torch.bincount(bins.reshape(-1), minlength=self.num_bins)
        histogram[0] -= invalid
        self._state["histogram"] += histogram
        per_image = torch.stack([angles.sum(1), (angles * angles).sum(1)]).double()
        self._state["sums"] += per_image.sum(1)
        below = [count_true(angles < limit).sum() - invalid for limit in THRESHOLDS_DEG]
        self._state["below"] += torch.stack(below)
        self._state["num_pixels"] += num_valid

    def _median(self) -> float:
        """Median from the histogram: mean of the bin centres holding ranks (n-1)//2 and n//2."""
        histogram = self._state["histogram"].cpu()
        count = int(self._state["num_pixels"])
        cumulative = torch.cumsum(histogram, 0)
        ranks = torch.tensor([(count - 1) // 2, count // 2], dtype=torch.int64)
        bins = torch.searchsorted(cumulative, ranks, right=True)
        return float(((bins.double() + 0.5) * self.bin_width).mean())

    def compute(self) -> dict[str, float]:
        """mean, median, rms (degrees) and a11_25, a22_5, a30 (percent of valid pixels)."""
        count = int(self._state["num_pixels"])
        if count == 0:
            raise self._error("no valid normal (non-zero ground-truth vector) was accumulated")
        angle_sum, square_sum = self._state["sums"].cpu().tolist()
        result = {"mean": angle_sum / count, "median": self._median(), "rms": math.sqrt(square_sum / count)}
        for key, below in zip(THRESHOLD_KEYS, self._state["below"].cpu().tolist()):
            result[key] = 100.0 * below / count
        return result
