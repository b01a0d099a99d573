"""Masked surface-normal losses: L2 (PolyMaX) and L1 (MTL baselines) on unit vectors.

Signature style (as `densepred.losses.depth`):

    loss_fn(pred (B,3,H,W), target (B,3,H,W), valid (B,1,H,W) bool, **options) -> scalar tensor

`target` holds unit vectors in the camera frame, the zero vector marking a pixel without ground
truth (docs/conventions.md; see `normals_valid_mask`). Both losses are averaged over valid *pixels* (the
per-pixel value is summed over the 3 channels). With no valid pixel, the loss is a zero connected
to the graph.
"""

from __future__ import annotations

import torch

from densepred.losses.depth import check_masked_inputs
from densepred.ops import l2_normalize


def normals_valid_mask(normals: torch.Tensor) -> torch.Tensor:
    """Valid-pixel mask (B,1,H,W) bool: finite vectors that are not the zero vector."""
    finite = torch.isfinite(normals).all(dim=1, keepdim=True)
    nonzero = normals.abs().sum(dim=1, keepdim=True) > 0
    return finite & nonzero


def _masked_pixel_mean(per_pixel: torch.Tensor, valid: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean of a (B,1,H,W) per-pixel loss over valid pixels (zero with graph when none is valid)."""
    n = valid.sum()
    if int(n) == 0:
        return pred.sum() * 0.0
    return torch.where(valid, per_pixel, 0.0).sum() / n


def _prepare(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, normalize: bool):
    pred = pred.float()
    if normalize:
        pred = l2_normalize(pred, dim=1, eps=1e-12)
    target = torch.where(valid, target.float(), 0.0)
    return pred, target


def normals_l2(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, normalize: bool = False
) -> torch.Tensor:
    """Squared Euclidean distance ||pred - target||^2 per pixel, averaged over valid pixels.

    For unit vectors this equals 2 - 2 cos(angle), so it is a smooth, bounded ([0, 4]) surrogate
    of the angular error; PolyMaX (Sec. 4.1) uses "simply L2 loss" for its stability compared with
    the truncated angular loss. `normalize=True` L2-normalises `pred` first (PolyMaX's head already
    outputs unit vectors, so the default is False).
    """
    check_masked_inputs(pred, target, valid, 3, "normals_l2")
    pred, target = _prepare(pred, target, valid, normalize)
    per_pixel = ((pred - target) ** 2).sum(dim=1, keepdim=True)
    return _masked_pixel_mean(per_pixel, valid, pred)


def normals_l1(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, normalize: bool = False
) -> torch.Tensor:
    """Sum over the 3 channels of |pred - target|, averaged over valid pixels (not elements).

    This is the normals loss of the MTI-Net/ATRC/MQTransformer code base, where the prediction is
    L2-normalised first: pass `normalize=True` for that behaviour.
    """
    check_masked_inputs(pred, target, valid, 3, "normals_l1")
    pred, target = _prepare(pred, target, valid, normalize)
    per_pixel = (pred - target).abs().sum(dim=1, keepdim=True)
    return _masked_pixel_mean(per_pixel, valid, pred)
