"""kMaX segmentation losses with the fixed matching, and the PolyMaX criterion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from densepred.losses import create_criterion
from densepred.losses.segmentation import (
    downsample_labels,
    gumbel_topk_pixels,
    instance_discrimination_loss,
    mask_id_cross_entropy,
    pq_class_loss,
    pq_dice_loss,
    sampled_semantic_cross_entropy,
    semantic_targets,
)

# Two classes on a 2x3 map, one void pixel: class 0 at (0,0),(0,1); class 1 at (1,*); void at (0,2).
LABELS = torch.tensor([[[0, 0, 255], [1, 1, 1]]])


def test_semantic_targets_hand_example():
    gt, present, void = semantic_targets(LABELS, num_classes=3)
    assert gt.shape == (1, 3, 2, 3)
    assert gt[0, 0].tolist() == [[1, 1, 0], [0, 0, 0]]
    assert gt[0, 1].tolist() == [[0, 0, 0], [1, 1, 1]]
    assert present.tolist() == [[True, True, False]]
    assert void[0].tolist() == [[False, False, True], [False, False, False]]
    with pytest.raises(ValueError, match=r"\[0, 3\) or 255"):
        semantic_targets(torch.tensor([[[0, 7]]]), num_classes=3)


def test_downsample_labels_takes_centred_pixels_without_mixing():
    labels = torch.arange(64).reshape(1, 8, 8)
    small = downsample_labels(labels, (2, 2))
    # nearest-exact picks source index floor((i + 0.5) * 4) = 2 and 6.
    assert small[0].tolist() == [[18, 22], [50, 54]]


def _pq_class_reference(class_logits, probs, labels, num_classes, alpha=0.75):
    """Explicit per-slot loops of the PQ-style class term with the fixed matching."""
    b, k, _ = class_logits.shape
    total = 0.0
    for bi in range(b):
        lab = labels[bi].flatten()
        void = lab == 255
        for slot in range(k):
            p = probs[bi, slot].flatten()
            g = (lab == slot).float()
            if g.sum() > 0:
                target, a = slot, alpha
                pv = p * (~void).float()
                weight = max(2 * (pv * g).sum() / (pv.sum() + g.sum() + 1e-5), 1e-5)
            else:
                target, a = num_classes, 1 - alpha
                weight = max((p * void.float()).sum() / (p.sum() + 1e-5), 1e-5)
            ce = -torch.log_softmax(class_logits[bi, slot], 0)[target]
            total += float(ce * a * weight)
    return total / (b * k)


def test_pq_class_loss_matches_explicit_loops():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([[[0, 0, 255], [1, 1, 1]], [[2, 255, 255], [2, 0, 0]]])
    class_logits = torch.randn(2, 3, 4, generator=g)
    probs = torch.softmax(torch.randn(2, 3, 2, 3, generator=g), dim=1)
    gt, present, void = semantic_targets(labels, 3)
    got = pq_class_loss(class_logits, probs, gt, present, void).item()
    assert got == pytest.approx(_pq_class_reference(class_logits, probs, labels, 3), rel=1e-5)


def test_pq_dice_loss_hand_computed_and_zero_for_perfect_masks():
    gt, present, void = semantic_targets(LABELS, num_classes=3)
    class_logits = torch.full((1, 3, 4), -30.0)
    for k in range(3):
        class_logits[0, k, k] = 30.0  # p(class k | slot k) = 1
    assert pq_dice_loss(gt, class_logits, gt, present, void).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((1, 3, 2, 3), 1 / 3)
    # class 0: p.g = 2/3, |p| = 5/3 (void zeroed), |g| = 2 -> 1 - (4/3 + 1) / (11/3 + 1) = 1/2
    # class 1: p.g = 1,   |p| = 5/3, |g| = 3          -> 1 - 3 / (17/3) = 8/17
    expected = (0.5 + 8 / 17) * 0.75 / 3
    assert pq_dice_loss(uniform, class_logits, gt, present, void).item() == pytest.approx(expected, rel=1e-5)


def test_mask_id_cross_entropy_is_pixel_ce_over_non_void():
    logits = torch.randn(1, 3, 2, 3)
    expected = F.cross_entropy(
        logits.permute(0, 2, 3, 1).reshape(-1, 3)[LABELS.flatten() != 255], torch.tensor([0, 0, 1, 1, 1])
    )
    assert mask_id_cross_entropy(logits, LABELS).item() == pytest.approx(expected.item(), rel=1e-6)
    empty = torch.full_like(LABELS, 255)
    assert mask_id_cross_entropy(logits, empty).item() == 0.0


def test_gumbel_topk_samples_non_void_and_favours_small_masks():
    labels = torch.zeros(100, dtype=torch.long)
    labels[:10] = 255
    labels[10:12] = 1  # a 2-pixel mask
    g = torch.Generator().manual_seed(0)
    idx = gumbel_topk_pixels(labels, 2, k=20, sample_temperature=1.5, generator=g)
    assert idx.numel() == 20 and idx.unique().numel() == 20
    assert torch.all(labels[idx] != 255)
    hits = sum(
        int((labels[gumbel_topk_pixels(labels, 2, 5, 3.0, generator=g)] == 1).sum()) for _ in range(50)
    )
    assert hits > 50  # uniform sampling would give ~ 50 * 5 * 2/90 = 5.6
    assert gumbel_topk_pixels(labels, 2, k=0, sample_temperature=1.5).numel() == 90


def test_instance_discrimination_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(1, 4, 2, 3, generator=g), dim=1)
    loss = instance_discrimination_loss(emb, LABELS, 3, sample_k=100, as_kl=False).item()
    feats = emb[0].reshape(4, -1).t()
    lab = LABELS.flatten()
    keep = [i for i in range(6) if lab[i] != 255]
    rows = []
    for i in keep:
        logits = torch.tensor([float(feats[i] @ feats[j]) / 0.3 for j in keep])
        same = torch.tensor([float(lab[i] == lab[j]) for j in keep])
        rows.append(float(-(same / same.sum() * torch.log_softmax(logits, 0)).sum()))
    assert loss == pytest.approx(sum(rows) / len(rows), rel=1e-5)
    # The KL form differs by the target entropy: rows of class 0 have 2 members, of class 1 three.
    kl = instance_discrimination_loss(emb, LABELS, 3, sample_k=100).item()
    assert kl == pytest.approx(loss - (2 * math.log(2) + 3 * math.log(3)) / 5, rel=1e-5)


def _dense_instance_discrimination(feats, labels, temperature, as_kl):
    """The dense-matrix form of the loss (target, log-softmax and their product all N x N)."""
    same = (labels[:, None] == labels[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    log_p = torch.log_softmax(feats @ feats.t() / temperature, dim=1)
    loss = -(target * log_p).sum(dim=1)
    if as_kl:
        loss = loss + (target * torch.log(target.clamp_min(1e-12))).sum(dim=1)
    return loss.mean()


@pytest.mark.parametrize("as_kl", [True, False])
def test_instance_discrimination_equals_dense_form_with_gradients(as_kl):
    g = torch.Generator().manual_seed(3)
    emb = F.normalize(torch.randn(2, 8, 12, 10, generator=g), dim=1).requires_grad_(True)
    labels = torch.randint(0, 5, (2, 12, 10), generator=g)
    labels[0, :3] = 255
    loss = instance_discrimination_loss(emb, labels, 5, sample_k=0, temperature=0.3, as_kl=as_kl)
    (grad,) = torch.autograd.grad(loss, emb)
    emb_ref = emb.detach().clone().requires_grad_(True)
    per_image = []
    for i in range(2):
        keep = labels[i].flatten() != 255
        feats = emb_ref[i].reshape(8, -1).t()[keep]
        per_image.append(_dense_instance_discrimination(feats, labels[i].flatten()[keep], 0.3, as_kl))
    ref = torch.stack(per_image).mean()
    (grad_ref,) = torch.autograd.grad(ref, emb_ref)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(grad, grad_ref, rtol=1e-4, atol=1e-7)


def test_instance_discrimination_near_zero_for_separated_embeddings():
    emb = torch.zeros(1, 4, 2, 3)
    emb[0, 0, 0, :2] = 1.0  # class 0 along e0
    emb[0, 1, 1, :] = 1.0  # class 1 along e1
    emb[0, 2, 0, 2] = 1.0  # void pixel, ignored
    loss = instance_discrimination_loss(emb, LABELS, 3, temperature=0.05).item()
    assert abs(loss) < 1e-5  # KL >= 0; float32 rounding of logits near 1/0.05 = 20 is about 2e-6


def test_sampled_semantic_ce_with_all_pixels_equals_ce():
    logits = torch.randn(1, 3, 2, 3)
    got = sampled_semantic_cross_entropy(logits, LABELS, sample_k=0).item()
    assert got == pytest.approx(mask_id_cross_entropy(logits, LABELS).item(), rel=1e-6)


# ------------------------------------------------------------------------------------ criterion
def _fake_outputs(task: str, b=2, h=8, w=8, k=3, n_aux=2, seed=0, requires_grad=False) -> dict:
    g = torch.Generator().manual_seed(seed)

    def head():
        out = {"mask_logits": torch.randn(b, k, h // 4, w // 4, generator=g, requires_grad=requires_grad)}
        if task == "semseg":
            out["cluster_values"] = torch.randn(b, k, k + 1, generator=g)
            out["pixel_embedding"] = F.normalize(torch.randn(b, 4, h // 4, w // 4, generator=g), dim=1)
        elif task == "depth":
            out["depth"] = 0.5 + torch.rand(b, 1, h, w, generator=g)
        else:
            out["normals"] = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
        return out

    outputs = head()
    outputs["aux"] = [head() for _ in range(n_aux)]
    if task == "semseg":
        outputs["aux_semantic"] = torch.randn(b, k, h // 4, w // 4, generator=g)
    return outputs


def _fake_batch(b=2, h=8, w=8, seed=1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(b, 3, h, w, generator=g),
        "semseg": torch.randint(0, 3, (b, h, w), generator=g),
        "depth": 0.5 + torch.rand(b, 1, h, w, generator=g),
        "normals": F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1),
    }


@pytest.mark.parametrize(
    ("task", "dataset", "terms"),
    [
        ("semseg", "nyud", {"pq_class", "pq_dice", "mask_id", "instance_disc", "aux_semantic"}),
        ("depth", "nyud", {"silog", "relative_squared", "gradient"}),
        ("depth", "taskonomy", {"charbonnier"}),
        ("normals", "taskonomy", {"l2"}),
    ],
)
def test_criterion_terms_and_total(task, dataset, terms):
    criterion = create_criterion("polymax", tasks=[task], dataset=dataset, num_classes=3)
    losses = criterion(_fake_outputs(task), _fake_batch())
    assert set(losses) == {f"{task}/{t}" for t in terms} | {"total"}
    parts = torch.stack([v for key, v in losses.items() if key != "total"]).sum()
    assert losses["total"].item() == pytest.approx(parts.item(), rel=1e-6)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_criterion_weights_and_deep_supervision():
    outputs, batch = _fake_outputs("depth"), _fake_batch()
    base = create_criterion("polymax", tasks=["depth"], dataset="nyud")(outputs, batch)
    doubled = create_criterion("polymax", tasks=["depth"], dataset="nyud", weights={"depth/silog": 2.0})(
        outputs, batch
    )
    assert doubled["depth/silog"].item() == pytest.approx(2 * base["depth/silog"].item(), rel=1e-6)
    final_only = create_criterion("polymax", tasks=["depth"], dataset="nyud", deep_supervision=False)
    zero_aux = create_criterion("polymax", tasks=["depth"], dataset="nyud", aux_weight=0.0)
    assert final_only(outputs, batch)["total"].item() == pytest.approx(
        zero_aux(outputs, batch)["total"].item()
    )
    # With deep supervision each aux output adds its own terms: identical aux copies double the sum.
    outputs["aux"] = [{"depth": outputs["depth"]}]
    twice = create_criterion("polymax", tasks=["depth"], dataset="nyud")(outputs, batch)["total"]
    assert twice.item() == pytest.approx(2 * final_only(outputs, batch)["total"].item(), rel=1e-6)


def test_criterion_depth_losses_option():
    criterion = create_criterion("polymax", tasks=["depth"], dataset="nyud", depth_losses=["charbonnier"])
    assert set(criterion(_fake_outputs("depth"), _fake_batch())) == {"depth/charbonnier", "total"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": ["depth", "normals"], "dataset": "nyud"}, "one task per model"),
        ({"tasks": ["edge"], "dataset": "nyud"}, "has no 'edge' head"),
        ({"tasks": ["depth"], "dataset": "kitti"}, "unknown dataset"),
        (
            {"tasks": ["depth"], "dataset": "nyud", "weights": {"depth/l2": 1.0}},
            "unknown PolyMaX loss weight",
        ),
        ({"tasks": ["depth"], "dataset": "nyud", "depth_losses": ["l1"]}, "depth_losses"),
    ],
)
def test_criterion_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_criterion("polymax", **kwargs)


def test_criterion_bad_inputs():
    criterion = create_criterion("polymax", tasks=["depth"], dataset="nyud")
    batch = _fake_batch()
    with pytest.raises(ValueError, match="batch has no 'depth'"):
        criterion(_fake_outputs("depth"), {"image": batch["image"]})
    with pytest.raises(ValueError, match="train-mode 'aux'"):
        criterion({"depth": _fake_outputs("depth")["depth"]}, batch)
    outputs = _fake_outputs("depth")
    outputs["depth"] = outputs["depth"][..., :4]
    with pytest.raises(ValueError, match="differ in shape"):
        criterion(outputs, batch)


def test_criterion_gradients_flow_to_mask_logits():
    outputs = _fake_outputs("semseg", requires_grad=True)
    criterion = create_criterion("polymax", tasks=["semseg"], dataset="nyud", num_classes=3)
    criterion(outputs, _fake_batch())["total"].backward()
    assert outputs["mask_logits"].grad.abs().sum() > 0
    assert all(a["mask_logits"].grad.abs().sum() > 0 for a in outputs["aux"])
