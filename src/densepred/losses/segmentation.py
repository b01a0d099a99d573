"""kMaX-DeepLab segmentation losses, adapted to PolyMaX's fixed cluster-to-class matching.

PolyMaX (Sec. 3.1) trains semantic segmentation with K = C clusters and a *fixed* matching: cluster
k always stands for class k, so the Hungarian matcher of kMaX is not needed. Each present class of
an image is one ground-truth mask (deeplab2 treats every semantic class as "stuff"), matched to its
own cluster; clusters of absent classes are "unmatched" and get the void class as target.

Losses (deeplab2 `model/loss/max_deeplab_loss.py`; weights are applied by the criterion):
- `pq_class_loss`: PQ-style focal class cross-entropy (alpha = 0.75), weighted per slot by the
  matched mask's dice (stop-gradient) or, for an unmatched slot, by the fraction of its mask on void
  pixels.
- `pq_dice_loss`: PQ-style mask dice (smooth 1), weighted by the matched class probability
  (stop-gradient), summed over masks and scaled by 0.75 / K (deeplab2's dice term modifier).
- `mask_id_cross_entropy`: softmax-CE over the K clusters per pixel (with K = C and the fixed
  matching this is the usual semantic CE).
- `instance_discrimination_loss`: CMT-DeepLab pixel-contrastive loss on the L2-normalised pixel
  embeddings, with pixels drawn by Gumbel-top-k favouring small masks.
- `sampled_semantic_cross_entropy`: the auxiliary semantic head's CE on Gumbel-sampled pixels.

All inputs are at the head's output stride; `downsample_labels` takes the ground truth there.
Everything is computed in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from densepred.tasks import IGNORE_INDEX


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sub-sample (B,H,W) int labels to `size` by taking the pixel nearest each output centre.

    deeplab2 takes `gt[::s, ::s]` on its 32k+1 sizes (no interpolation, labels never mixed); with
    our 32k sizes and align_corners=False the centred equivalent is "nearest-exact".
    """
    if labels.dim() != 3:
        raise ValueError(f"semseg labels must be (B,H,W), got {tuple(labels.shape)}")
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest-exact")
    return resized[:, 0].long()


def semantic_targets(
    labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed-matching targets from (B,h,w) labels (255 = void).

    Returns gt_masks (B,C,h,w) float one-hot (zero on void pixels), present (B,C) bool (class has
    at least one pixel) and void (B,h,w) bool.
    """
    void = labels == IGNORE_INDEX
    bad = (~void) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        values = sorted({int(v) for v in labels[bad].unique()[:5]})
        raise ValueError(
            f"semseg labels must be in [0, {num_classes}) or {IGNORE_INDEX}; found values like {values}"
        )
    safe = torch.where(void, torch.zeros_like(labels), labels)
    gt_masks = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()
    gt_masks = gt_masks * (~void)[:, None].float()
    present = gt_masks.flatten(2).sum(dim=2) > 0
    return gt_masks, present, void


def _zero(x: torch.Tensor) -> torch.Tensor:
    return x.sum() * 0.0


def pq_class_loss(
    class_logits: torch.Tensor,
    mask_probs: torch.Tensor,
    gt_masks: torch.Tensor,
    present: torch.Tensor,
    void: torch.Tensor,
    alpha: float = 0.75,
    min_weight: float = 1e-5,
) -> torch.Tensor:
    """PQ-style class term with the fixed matching (slot k <-> class k; void = index C).

    Per slot: CE over C+1 classes against (k if class k is present else void), times alpha for
    present / (1 - alpha) for void targets, times a stop-gradient weight: the dice similarity
    2|p.g| / (|p| + |g|) of the slot's mask for present classes, the fraction of the slot's mask on
    void pixels for absent ones (both clamped >= min_weight). Averaged over slots and images.
    """
    b, k, _ = class_logits.shape
    num_classes = class_logits.shape[-1] - 1
    if k != num_classes or mask_probs.shape[1] != k or gt_masks.shape[1] != k:
        raise ValueError(
            f"fixed matching needs K = C: class logits {tuple(class_logits.shape)}, "
            f"masks {tuple(mask_probs.shape)}, gt {tuple(gt_masks.shape)}"
        )
    slot = torch.arange(k, device=class_logits.device).expand(b, k)
    target = torch.where(present, slot, torch.full_like(slot, num_classes))
    ce = F.cross_entropy(class_logits.float().reshape(b * k, -1), target.reshape(-1), reduction="none")
    ce = ce.view(b, k)
    focal = torch.where(present, torch.full_like(ce, alpha), torch.full_like(ce, 1.0 - alpha))
    with torch.no_grad():
        probs = mask_probs.float().flatten(2)
        void_f = void.flatten(1)[:, None].float()
        p_valid = probs * (1.0 - void_f)
        g = gt_masks.flatten(2)
        dice = 2 * (p_valid * g).sum(2) / (p_valid.sum(2) + g.sum(2) + 1e-5)
        void_fraction = (probs * void_f).sum(2) / (probs.sum(2) + 1e-5)
        weight = torch.where(present, dice, void_fraction).clamp_min(min_weight)
    return (ce * focal * weight).mean()


def pq_dice_loss(
    mask_probs: torch.Tensor,
    class_logits: torch.Tensor,
    gt_masks: torch.Tensor,
    present: torch.Tensor,
    void: torch.Tensor,
    smooth: float = 1.0,
    modifier: float = 0.75,
    min_weight: float = 1e-5,
) -> torch.Tensor:
    """PQ-style dice term: sum over present classes of w_k (1 - (2 p.g + s) / (|p| + |g| + s)), x modifier/K.

    p is slot k's probability map with void pixels zeroed, g the class-k mask, s = `smooth` and
    w_k = p(class k | slot k) (softmax over C+1, stop-gradient, >= min_weight). Averaged over images.
    """
    k = mask_probs.shape[1]
    void_f = void.flatten(1)[:, None].float()
    p = mask_probs.float().flatten(2) * (1.0 - void_f)
    g = gt_masks.flatten(2)
    dice = 1.0 - (2.0 * (p * g).sum(2) + smooth) / (p.sum(2) + g.sum(2) + smooth)
    with torch.no_grad():
        class_prob = torch.softmax(class_logits.float(), dim=-1)[..., :k]
        weight = torch.diagonal(class_prob, dim1=1, dim2=2).clamp_min(min_weight)
    per_image = (dice * weight * present.float()).sum(dim=1) * (modifier / k)
    return per_image.mean()


def mask_id_cross_entropy(mask_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax-CE over the K clusters at every non-void pixel, averaged over those pixels."""
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()):
        return _zero(mask_logits)
    return F.cross_entropy(mask_logits.float(), labels, ignore_index=IGNORE_INDEX)


def gumbel_topk_pixels(
    labels: torch.Tensor,
    num_classes: int,
    k: int,
    sample_temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices of up to k non-void pixels of one flattened label map, favouring small masks.

    Sampling without replacement by Gumbel-top-k on logits T * log(N / area(mask of the pixel))
    (deeplab2's importance sampling). k <= 0 returns every non-void pixel.
    """
    valid_idx = torch.nonzero(labels != IGNORE_INDEX, as_tuple=False).squeeze(1)
    if k <= 0 or valid_idx.numel() <= k:
        return valid_idx
    valid_labels = labels[valid_idx]
    area = torch.bincount(valid_labels, minlength=num_classes).float()
    logits = sample_temperature * torch.log(labels.numel() / area[valid_labels])
    uniform = torch.rand(valid_idx.numel(), generator=generator, device=labels.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
    return valid_idx[torch.topk(logits + gumbel, k).indices]


def instance_discrimination_loss(
    pixel_embedding: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    sample_k: int = 4096,
    sample_temperature: float = 1.5,
    temperature: float = 0.3,
    as_kl: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pixel-contrastive instance discrimination (CMT-DeepLab / kMaX), per image then averaged.

    For the sampled pixels i, j: logits s_ij = F_i.F_j / temperature, target t_ij = [same mask] / n_i
    with n_i the sampled pixels of i's mask; the loss is the soft-target cross-entropy
    -sum_j t_ij log softmax_j(s_i) averaged over rows. With `as_kl=True` (default) the constant target
    entropy log n_i is subtracted, i.e. the value is KL(t || softmax), which is 0 at the optimum. The
    gradient is identical to kMaX's cross-entropy; only the reported value differs (our choice, so
    that the loss is comparable across images).

    Computed in the equivalent form logsumexp_j(s_ij) - F_i.(sum of F_j over i's mask) / (temperature
    n_i): only the logit matrix is N x N, instead of the dense target, log-softmax and product
    matrices (bench/bench_ops.py: 2.7x faster forward and backward at 1,280 pixels per image).
    """
    b, e = pixel_embedding.shape[:2]
    emb = pixel_embedding.float().reshape(b, e, -1)
    flat = labels.reshape(b, -1)
    losses = []
    for i in range(b):
        idx = gumbel_topk_pixels(flat[i], num_classes, sample_k, sample_temperature, generator)
        if idx.numel() == 0:
            continue
        losses.append(_contrastive_rows(emb[i][:, idx].t(), flat[i][idx], temperature, as_kl).mean())
    if not losses:
        return _zero(pixel_embedding)
    return torch.stack(losses).mean()


def _contrastive_rows(
    feats: torch.Tensor, labels: torch.Tensor, temperature: float, as_kl: bool
) -> torch.Tensor:
    """Per-row soft-target cross-entropy (or KL) of `instance_discrimination_loss` for (N, E) feats.

    With g = F / sqrt(temperature) the logits are g g^T; logsumexp_j(s_ij) is read off the fused
    log-softmax diagonal as s_ii - log p_ii, so the only N x N work is one product and one
    log-softmax (and their backward).
    """
    _, mask_of, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    scaled = feats / math.sqrt(temperature)
    members = F.one_hot(mask_of, len(counts)).to(scaled.dtype)
    mask_sum = members.t() @ scaled  # (masks, E): sum of the members' scaled embeddings
    n = counts[mask_of].to(scaled.dtype)
    log_p_self = torch.log_softmax(scaled @ scaled.t(), dim=1).diagonal()
    log_partition = (scaled * scaled).sum(dim=1) - log_p_self
    loss = log_partition - (scaled * mask_sum[mask_of]).sum(dim=1) / n
    return loss - torch.log(n) if as_kl else loss


def sampled_semantic_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    sample_k: int = 4096,
    sample_temperature: float = 2.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-pixel CE of (B,C,h,w) logits on up to `sample_k` Gumbel-sampled non-void pixels per image.

    kMaX's auxiliary semantic loss; `sample_k <= 0` uses every non-void pixel. Averaged over the
    sampled pixels of each image, then over images with at least one non-void pixel.
    """
    b, c = logits.shape[:2]
    flat_logits = logits.float().reshape(b, c, -1)
    flat = labels.reshape(b, -1)
    losses = []
    for i in range(b):
        idx = gumbel_topk_pixels(flat[i], c, sample_k, sample_temperature, generator)
        if idx.numel() == 0:
            continue
        losses.append(F.cross_entropy(flat_logits[i][:, idx].t(), flat[i][idx]))
    if not losses:
        return _zero(logits)
    return torch.stack(losses).mean()
