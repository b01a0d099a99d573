"""Masked depth losses: scale-invariant log, relative squared, multi-scale gradient, Charbonnier.

Every loss here is generic (no model knowledge) and has the signature

    loss_fn(pred (B,1,H,W), target (B,1,H,W), valid (B,1,H,W) bool, **options) -> scalar tensor

`pred` is a positive depth in metres, `target` the ground truth in metres and `valid` marks pixels
with ground truth (docs/conventions.md: depth 0 = invalid; see `depth_valid_mask`). Invalid pixels never
contribute to the value or the gradient. When no pixel of the batch is valid, the loss is an exact
zero that still belongs to the autograd graph (so a step on an unlabelled batch is a no-op, not a
crash).

PolyMaX (Sec. 4.1) trains NYUD-v2 depth with SILog + relative squared error (as ViP-DeepLab) plus
the MegaDepth multi-scale gradient loss, and Taskonomy depth with the robust Charbonnier loss.
"""

from __future__ import annotations

import torch

from densepred.ops import sqrt

# Floor for depths entering a logarithm or a division, so an untrained model's tiny outputs cannot
# produce inf/NaN. Ground-truth depths are >= 1 mm in practice, so the floor never binds on them.
_MIN_DEPTH = 1e-3


def check_masked_inputs(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, channels: int, name: str
) -> None:
    """Raise ValueError unless pred/target are (B,channels,H,W) float and valid is a (B,1,H,W) bool mask."""
    if pred.dim() != 4 or pred.shape[1] != channels:
        raise ValueError(f"{name}: pred must be (B,{channels},H,W), got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"{name}: target shape {tuple(target.shape)} != pred shape {tuple(pred.shape)}")
    expected = (pred.shape[0], 1, pred.shape[2], pred.shape[3])
    if tuple(valid.shape) != expected:
        raise ValueError(f"{name}: valid mask must be {expected}, got {tuple(valid.shape)}")
    if valid.dtype != torch.bool:
        raise ValueError(f"{name}: valid mask must be torch.bool, got {valid.dtype}")
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise ValueError(f"{name}: pred and target must be floating point, got {pred.dtype}/{target.dtype}")


def depth_valid_mask(depth: torch.Tensor) -> torch.Tensor:
    """Valid-pixel mask (B,1,H,W) bool of a depth map: finite and > 0 (0 marks missing depth)."""
    return torch.isfinite(depth) & (depth > 0)


def _zero(pred: torch.Tensor) -> torch.Tensor:
    """A zero scalar connected to `pred`'s graph (used when no pixel is valid)."""
    return pred.sum() * 0.0


def _log_residual(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log(target) - log(pred) on valid pixels, 0 elsewhere (fp32)."""
    pred = pred.float().clamp_min(_MIN_DEPTH)
    target = torch.where(valid, target.float(), torch.ones_like(target, dtype=torch.float32))
    return torch.where(valid, torch.log(target.clamp_min(_MIN_DEPTH)) - torch.log(pred), 0.0)


def silog(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    variance_focus: float = 1.0,
    take_sqrt: bool = False,
) -> torch.Tensor:
    """Scale-invariant log error (Eigen et al. 2014, Eq. 4), per image, averaged over images.

    With e = log(target) - log(pred) over the n valid pixels of one image:
    `mean(e^2) - variance_focus * mean(e)^2`. The default (`variance_focus=1`, no square root, no
    x100) is the form of the ViP-DeepLab loss in deeplab2 that PolyMaX follows (Sec. 4.1).
    `take_sqrt=True` gives the sqrt variant used by BTS/AdaBins-style training (an option, not the
    paper default). Images without a valid pixel are skipped.
    """
    check_masked_inputs(pred, target, valid, 1, "silog")
    e = _log_residual(pred, target, valid).flatten(1)
    n = valid.flatten(1).sum(dim=1).float()
    has = n > 0
    if not bool(has.any()):
        return _zero(pred)
    n_safe = n.clamp_min(1.0)
    mean_sq = (e * e).sum(dim=1) / n_safe
    mean = e.sum(dim=1) / n_safe
    per_image = mean_sq - variance_focus * mean * mean
    if take_sqrt:
        per_image = sqrt(per_image.clamp_min(0.0) + 1e-12)
    return per_image[has].mean()


def relative_squared(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Relative squared error as in ViP-DeepLab: per image sqrt(mean(((target - pred)/target)^2)).

    Averaged over images with at least one valid pixel. A 1e-12 inside the square root keeps the
    gradient finite at a perfect prediction.
    """
    check_masked_inputs(pred, target, valid, 1, "relative_squared")
    safe_target = torch.where(valid, target.float(), torch.ones_like(target, dtype=torch.float32))
    rel = torch.where(valid, (safe_target - pred.float()) / safe_target.clamp_min(_MIN_DEPTH), 0.0)
    n = valid.flatten(1).sum(dim=1).float()
    has = n > 0
    if not bool(has.any()):
        return _zero(pred)
    per_image = sqrt((rel * rel).flatten(1).sum(dim=1) / n.clamp_min(1.0) + 1e-12)
    return per_image[has].mean()


def _gradient_terms(r: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of |dR/dx| + |dR/dy| over neighbour pairs where both pixels are valid, and the pair count."""
    vx = valid[..., :, 1:] & valid[..., :, :-1]
    vy = valid[..., 1:, :] & valid[..., :-1, :]
    gx = torch.where(vx, (r[..., :, 1:] - r[..., :, :-1]).abs(), 0.0)
    gy = torch.where(vy, (r[..., 1:, :] - r[..., :-1, :]).abs(), 0.0)
    return gx.sum() + gy.sum(), vx.sum() + vy.sum()


def multiscale_gradient(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, num_scales: int = 4
) -> torch.Tensor:
    """MegaDepth multi-scale scale-invariant gradient matching loss (Li & Snavely 2018, Eq. 3).

    R = log(pred) - log(target) on valid pixels. At scale s (s = 0..num_scales-1) the maps are
    sub-sampled with stride 2^s (nearest, as MegaDepth) and the loss adds sum(|d_x R| + |d_y R|) over
    horizontally/vertically adjacent pairs whose two pixels are valid, divided by the number of such
    pairs in the batch; the per-scale terms are summed. Because only differences of R enter, a global
    scale of `pred` leaves the loss unchanged.
    """
    check_masked_inputs(pred, target, valid, 1, "multiscale_gradient")
    if num_scales < 1:
        raise ValueError(f"multiscale_gradient: num_scales must be >= 1, got {num_scales}")
    r = -_log_residual(pred, target, valid)
    total = _zero(pred)
    for s in range(num_scales):
        step = 2**s
        rs, vs = r[..., ::step, ::step], valid[..., ::step, ::step]
        if min(rs.shape[-2:]) < 2:
            break
        grad_sum, count = _gradient_terms(rs, vs)
        if int(count) > 0:
            total = total + grad_sum / count
    return total


def charbonnier(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, eps: float = 1e-3
) -> torch.Tensor:
    """Charbonnier loss mean(sqrt((pred - target)^2 + eps^2)) over the valid pixels of the batch.

    This is Barron's general robust loss (CVPR 2019) at alpha = 1 with scale c = eps, up to the
    constant offset eps and factor 1/eps: a smooth L1 that is robust to outliers (PolyMaX Sec. 4.1
    uses it for Taskonomy depth, max 128 m). The offset is kept so that a perfect prediction gives
    exactly eps; `eps` is an option (default 1e-3 m, as no value is given in the paper).
    """
    check_masked_inputs(pred, target, valid, 1, "charbonnier")
    if eps <= 0:
        raise ValueError(f"charbonnier: eps must be > 0, got {eps}")
    n = valid.sum()
    if int(n) == 0:
        return _zero(pred)
    diff = torch.where(valid, pred.float() - target.float(), 0.0)
    per_pixel = sqrt(diff * diff + eps * eps)
    return torch.where(valid, per_pixel, 0.0).sum() / n


def depth_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean absolute error sum(|pred - target|) / #valid over the valid pixels of the batch (metres).

    The depth loss of MQTransformer (Sec. III-C, weight 1.0) and its ATRC code base, which divides the
    batch sum by the number of valid pixels (`src/model/criterion.py` of the released code).
    """
    check_masked_inputs(pred, target, valid, 1, "depth_l1")
    n = valid.sum()
    if int(n) == 0:
        return _zero(pred)
    diff = torch.where(valid, pred.float() - target.float(), 0.0)
    return diff.abs().sum() / n
