"""Depth metrics under the two NYUD-v2 protocols the papers use.

`"eigen"`: the monocular-depth convention (Eigen et al. 2014; BTS evaluation script), which PolyMaX's
Table 2 columns follow (RMS, A.Rel, Log10, delta1; PolyMaX Sec. 4.1; docs/protocols.md, "Depth").
Every metric is computed per image and then averaged over images:
  valid pixels     min_depth < gt < max_depth (defaults 1e-3 m and 10 m), optionally inside the
                   Eigen crop (rows 45:471, cols 41:601 of a 480x640 frame)
  predictions      clamped to [min_depth, max_depth]
  rms              sqrt(mean (gt - p)^2)                     [m]
  abs_rel          mean |gt - p| / gt
  sq_rel           mean (gt - p)^2 / gt  (Eigen/BTS; `sq_rel="relative_squared"` gives
                   mean ((gt - p)/gt)^2, deeplab2's "SqRel")
  log10            mean |log10 gt - log10 p|
  log_rms          sqrt(mean (ln gt - ln p)^2)
  silog            100 * sqrt(mean e^2 - (mean e)^2), e = ln p - ln gt
  delta1..3        fraction of pixels with max(gt/p, p/gt) < 1.25^i   (fractions, as PolyMaX reports)
An image without any valid pixel is skipped (counted in `num_skipped`); BTS would average a NaN.
Unlike BTS we do not map NaN/inf predictions into the range: they raise, naming the meter.

`"mtl"`: the multi-task convention of MTI-Net, ATRC, InvPT and MQTransformer
(MQTransformer Sec. IV-A and Table II; docs/protocols.md): one global pixel-level error over all valid
pixels (gt > 0) of the dataset, no depth cap and no crop:
  rms = sqrt(sum (p - gt)^2 / N), log_rms = sqrt(sum (ln p - ln gt)^2 / N), abs_rel = sum |p - gt|/gt / N.
Predictions are clamped below at 1e-9 (InvPT's rule; MQTransformer clamps at 0 for its RMSE only,
which differs by at most 1e-9 m per pixel).

Per-pixel terms are computed in float32, as the published evaluations compute them (BTS's numpy
script and the ATRC/MQTransformer torch meters work on float32 maps), summed per image in float32
(torch's cascaded sums) and over images in float64 on the batch's device. Splitting the data into
other batches changes a result only at float32 rounding level: torch's vectorised `log` and its
scalar tail may differ in the last bit, so a pixel's terms can depend on its position in the batch.
The delta thresholds 1.25, 1.25^2 and 1.25^3 are exact in float32. Masked pixels take the neutral
pair p = gt = 1 (`_neutral_outside`), whose error terms are exactly zero and whose ratio
is 1, instead of a multiplication of every term by the mask.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from densepred.metrics.base import Meter, compute_device, count_true

PROTOCOLS = ("eigen", "mtl")
EIGEN_KEYS = ("rms", "abs_rel", "sq_rel", "log10", "log_rms", "silog", "delta1", "delta2", "delta3")
MTL_KEYS = ("rms", "log_rms", "abs_rel")
EIGEN_CROP = (45, 471, 41, 601)  # rows 45..470, cols 41..600 of a 480x640 frame (Eigen et al. 2014)
EIGEN_FRAME = (480, 640)
SQ_REL_VARIANTS = ("eigen", "relative_squared")
MTL_MIN_PRED = 1e-9
DELTA_LIMITS = (1.25, 1.25**2, 1.25**3)  # exact in float32


class DepthMeter(Meter):
    """Depth errors under `protocol` "eigen" (per image, averaged) or "mtl" (global pixel pool).

    `update(pred, target)`: depth maps in metres, (1,H,W) or (B,1,H,W); target 0 = invalid.
    `min_depth`/`max_depth`/`eigen_crop`/`sq_rel` apply to the eigen protocol only.
    """

    def __init__(
        self,
        protocol: str = "eigen",
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        eigen_crop: bool = False,
        sq_rel: str = "eigen",
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"DepthMeter: unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        if not 0.0 < min_depth < max_depth or not math.isfinite(max_depth):
            raise ValueError(
                f"DepthMeter: need 0 < min_depth < max_depth < inf, got {min_depth}, {max_depth}"
            )
        if sq_rel not in SQ_REL_VARIANTS:
            raise ValueError(
                f"DepthMeter: unknown sq_rel variant {sq_rel!r}; expected one of {SQ_REL_VARIANTS}"
            )
        if protocol == "mtl" and eigen_crop:
            raise ValueError("DepthMeter: the mtl protocol uses no Eigen crop (eigen_crop must be False)")
        self.protocol = protocol
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.eigen_crop = eigen_crop
        self.sq_rel = sq_rel
        super().__init__()

    def _initial_state(self) -> dict[str, Tensor]:
        if self.protocol == "eigen":
            # sums over images of the per-image metrics, images used, images without a valid pixel
            return {
                "sums": torch.zeros(len(EIGEN_KEYS), dtype=torch.float64),
                "num_images": torch.zeros((), dtype=torch.int64),
                "num_skipped": torch.zeros((), dtype=torch.int64),
            }
        # sums over pixels of (p-gt)^2, (ln p - ln gt)^2, |p-gt|/gt; number of valid pixels
        return {
            "sums": torch.zeros(len(MTL_KEYS), dtype=torch.float64),
            "num_pixels": torch.zeros((), dtype=torch.int64),
        }

    @property
    def num_skipped(self) -> int:
        """Images without any valid pixel (eigen protocol); they do not enter the averages."""
        return int(self._state["num_skipped"]) if self.protocol == "eigen" else 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch of depth predictions and ground truth (metres, (B,1,H,W) or (1,H,W))."""
        pred = self._check_tensor(pred, "prediction")
        target = self._check_tensor(target, "target")
        pred = self._batched(pred, 3, "prediction", "(1,H,W) or (B,1,H,W)")
        target = self._batched(target, 3, "target", "(1,H,W) or (B,1,H,W)")
        if pred.shape != target.shape or pred.shape[1] != 1:
            raise self._error(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B,1,H,W)"
            )
        if not (pred.is_floating_point() and target.is_floating_point()):
            raise self._error(f"depth maps must be floating point, got {pred.dtype} and {target.dtype}")
        self._check_finite(pred, "prediction")
        self._check_finite(target, "target")
        device = compute_device(pred.device)
        self._begin_update(device)
        height, width = pred.shape[-2:]
        pred = pred.to(device, torch.float32).flatten(1)
        target = target.to(device, torch.float32).flatten(1)
        if self.protocol == "eigen":
            self._update_eigen(pred, target, self._valid_eigen(target, (height, width)))
        else:
            self._update_mtl(pred, target)

    def _valid_eigen(self, target: Tensor, shape: tuple[int, int]) -> Tensor:
        """Valid pixels (B,H*W) of the eigen protocol: depth range, and the Eigen crop if enabled."""
        valid = (target > self.min_depth) & (target < self.max_depth)
        if self.eigen_crop:
            if tuple(shape) != EIGEN_FRAME:
                raise self._error(
                    f"the Eigen crop is defined for {EIGEN_FRAME[0]}x{EIGEN_FRAME[1]} frames, got "
                    f"{shape[0]}x{shape[1]}; evaluate at the original resolution or set eigen_crop=False"
                )
            top, bottom, left, right = EIGEN_CROP
            crop = torch.zeros(EIGEN_FRAME, dtype=torch.bool, device=target.device)
            crop[top:bottom, left:right] = True
            valid = valid & crop.flatten()
        return valid

    def _update_eigen(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        """Per-image metrics (rows of `pred`/`target`, (B,N) float32), summed over usable images."""
        n = count_true(valid)
        gt, p = _neutral_outside(valid, target, pred.clamp(self.min_depth, self.max_depth))
        diff = gt - p
        squared = diff * diff
        log_err = torch.log(p) - torch.log(gt)
        sq_rel = squared / gt if self.sq_rel == "eigen" else torch.square(diff / gt)
        terms = (squared, diff.abs() / gt, sq_rel, log_err.abs(), log_err * log_err, log_err)
        ratio = torch.maximum(gt / p, p / gt)  # exact division: the delta thresholds are strict
        neutral = valid.shape[1] - n  # masked pixels, below every limit
        below = [count_true(ratio < limit) - neutral for limit in DELTA_LIMITS]
        means = torch.stack([term.sum(1) for term in terms] + below).double() / n.clamp(min=1)  # (9,B)
        mean_sq, abs_rel, sq_rel_mean, log_abs, mean_log_sq, mean_log, *deltas = means
        per_image = torch.stack(
            [
                torch.sqrt(mean_sq),
                abs_rel,
                sq_rel_mean,
                log_abs / math.log(10),  # |log10 gt - log10 p|
                torch.sqrt(mean_log_sq),
                100.0 * torch.sqrt((mean_log_sq - mean_log**2).clamp(min=0.0)),
                *deltas,
            ],
            dim=1,
        )
        used = n > 0
        self._state["sums"] += per_image[used].sum(0)
        self._state["num_images"] += used.sum()
        self._state["num_skipped"] += (~used).sum()

    def _update_mtl(self, pred: Tensor, target: Tensor) -> None:
        """Global sums over every valid pixel (gt > 0): per image in float32, then in float64."""
        valid = target > 0
        gt, p = _neutral_outside(valid, target, pred.clamp(min=MTL_MIN_PRED))
        diff = p - gt
        log_err = torch.log(p) - torch.log(gt)
        terms = (diff * diff, log_err * log_err, diff.abs() / gt)
        self._state["sums"] += torch.stack([term.sum(1) for term in terms]).double().sum(1)
        self._state["num_pixels"] += valid.sum()

    def compute(self) -> dict[str, float]:
        """The protocol's metrics (keys EIGEN_KEYS or MTL_KEYS); ValueError if nothing valid was seen."""
        sums = self._state["sums"].cpu()
        if self.protocol == "eigen":
            count = int(self._state["num_images"])
            if count == 0:
                raise self._error(
                    f"no image with a valid depth pixel (min_depth < gt < max_depth) was accumulated "
                    f"({self.num_skipped} skipped)"
                )
            return {key: float(value) / count for key, value in zip(EIGEN_KEYS, sums.tolist())}
        count = int(self._state["num_pixels"])
        if count == 0:
            raise self._error("no valid depth pixel (gt > 0) was accumulated")
        sq, log_sq, abs_rel = (float(value) / count for value in sums.tolist())
        return {"rms": math.sqrt(sq), "log_rms": math.sqrt(log_sq), "abs_rel": abs_rel}


def _neutral_outside(valid: Tensor, *maps: Tensor) -> tuple[Tensor, ...]:
    """Each map where `valid`, 1.0 elsewhere, as map * v + (1 - v) with v the 0/1 mask in the maps' dtype.

    Exact (a product with 1 or 0 plus 0 or 1; the maps are finite) and on CPU several times faster
    than `torch.where` with a boolean mask. When every pixel is valid (NYUD's in-painted depth) the
    maps are returned as they are.
    """
    if bool(valid.all()):
        return maps
    weight = valid.to(maps[0].dtype)
    fill = 1.0 - weight
    return tuple(torch.addcmul(fill, values, weight) for values in maps)
