"""Losses of the per-pixel models: balanced BCE, depth L1, semseg CE, and the registered criteria."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from densepred.losses import create_criterion
from densepred.losses.depth import charbonnier, depth_l1
from densepred.losses.edges import balanced_bce, edge_valid_mask
from densepred.losses.multitask_criterion import semseg_ce
from densepred.losses.normals import normals_l1, normals_l2, normals_valid_mask

# ------------------------------------------------------------------------------------------ balanced BCE


def test_balanced_bce_hand_computed():
    logits = torch.tensor([0.0, 2.0, -1.0]).view(1, 1, 1, 3)
    target = torch.tensor([1.0, 0.0, 255.0]).view(1, 1, 1, 3)
    loss = balanced_bce(logits, target, edge_valid_mask(target), pos_weight=0.95)
    # pixel 1: 0.95 * -log(sigmoid(0)); pixel 2: 0.05 * -log(1 - sigmoid(2)); pixel 3 ignored.
    expected = (0.95 * math.log(2.0) + 0.05 * math.log(1.0 + math.exp(2.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_balanced_bce_matches_formula_on_random_maps():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 5, 6) * 3
    target = (torch.rand(2, 1, 5, 6) > 0.7).float()
    valid = torch.rand(2, 1, 5, 6) > 0.2
    for w in (0.95, 0.8):
        p = torch.sigmoid(logits)
        per_pixel = -(w * target * torch.log(p) + (1 - w) * (1 - target) * torch.log(1 - p))
        expected = per_pixel[valid].mean()
        torch.testing.assert_close(balanced_bce(logits, target, valid, pos_weight=w), expected)


def test_balanced_bce_ignored_pixels_get_no_gradient_and_empty_mask_gives_zero():
    logits = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.tensor([[[[1.0, 255.0], [0.0, 255.0]]]])
    balanced_bce(logits, target, edge_valid_mask(target)).backward()
    assert logits.grad[0, 0, :, 1].abs().sum() == 0 and logits.grad[0, 0, :, 0].abs().sum() > 0
    none = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    zero = balanced_bce(logits, target, none)
    assert zero.item() == 0.0 and zero.requires_grad


@pytest.mark.parametrize("pos_weight", [0.0, 1.0, 1.5])
def test_balanced_bce_rejects_bad_pos_weight(pos_weight):
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="pos_weight"):
        balanced_bce(x, x, x == 0, pos_weight=pos_weight)


def test_balanced_bce_rejects_targets_outside_unit_interval():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        balanced_bce(x, x + 2.0, x == 0)


# --------------------------------------------------------------------------------------------- depth L1


def test_depth_l1_hand_computed_and_masked():
    pred = torch.tensor([1.0, 2.0, 5.0, 9.0]).view(1, 1, 2, 2).requires_grad_()
    target = torch.tensor([1.5, 2.0, 0.0, 7.0]).view(1, 1, 2, 2)
    loss = depth_l1(pred, target, target > 0)
    assert loss.item() == pytest.approx((0.5 + 0.0 + 2.0) / 3)
    loss.backward()
    assert pred.grad.view(-1)[2] == 0  # the invalid pixel


def test_depth_l1_with_no_valid_pixel_is_a_connected_zero():
    pred = torch.ones(1, 1, 2, 2, requires_grad=True)
    loss = depth_l1(pred, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad


# ----------------------------------------------------------------------------------------------- semseg


def test_semseg_ce_matches_torch_on_labelled_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 3)
    labels = torch.randint(0, 4, (2, 3, 3))
    labels[0, 0, 0] = 255
    per_pixel = F.cross_entropy(logits, labels.clamp(max=3), reduction="none")
    torch.testing.assert_close(semseg_ce(logits, labels, 4), per_pixel[labels != 255].mean())


def test_semseg_ce_errors_and_empty_batch():
    logits = torch.zeros(1, 4, 2, 2, requires_grad=True)
    assert semseg_ce(logits, torch.full((1, 2, 2), 255), 4).item() == 0.0
    with pytest.raises(ValueError, match="outside"):
        semseg_ce(logits, torch.full((1, 2, 2), 4), 4)
    with pytest.raises(ValueError, match="logits must be"):
        semseg_ce(logits, torch.zeros(1, 2, 2, dtype=torch.int64), 40)
    with pytest.raises(ValueError, match="int64"):
        semseg_ce(logits, torch.zeros(1, 2, 2), 4)


# --------------------------------------------------------------------------------------------- criteria

TASKS = ["semseg", "depth", "normals", "edge"]


def fake(num_classes: int = 40, seed: int = 0) -> tuple[dict, dict]:
    """Random model outputs and a batch with some invalid pixels of every kind."""
    g = torch.Generator().manual_seed(seed)
    b, h, w = 2, 6, 5
    outputs = {
        "semseg": torch.randn(b, num_classes, h, w, generator=g),
        "depth": torch.rand(b, 1, h, w, generator=g) * 5 + 0.1,
        "normals": F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1),
        "edge": torch.randn(b, 1, h, w, generator=g),
        "aux": [torch.zeros(1)],  # extra train-mode entries are ignored
    }
    semseg = torch.randint(0, num_classes, (b, h, w), generator=g)
    semseg[:, 0] = 255
    depth = torch.rand(b, 1, h, w, generator=g) * 5
    depth[:, :, 1] = 0
    normals = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    normals[:, :, 2] = 0
    edge = (torch.rand(b, 1, h, w, generator=g) > 0.8).float()
    batch = {
        "image": torch.rand(b, 3, h, w),
        "semseg": semseg,
        "depth": depth,
        "normals": normals,
        "edge": edge,
    }
    return outputs, batch


@pytest.mark.parametrize("name", ["mqtransformer", "mtl_baseline", "stl_baseline"])
def test_multitask_criterion_terms_weights_and_total(name):
    outputs, batch = fake()
    losses = create_criterion(name, tasks=TASKS, dataset="nyud")(outputs, batch)
    assert sorted(losses) == ["depth/l1", "edge/bce", "normals/l1", "semseg/ce", "total"]
    expected = {
        "semseg/ce": 1.0 * semseg_ce(outputs["semseg"], batch["semseg"], 40),
        "depth/l1": 1.0 * depth_l1(outputs["depth"], batch["depth"], batch["depth"] > 0),
        "normals/l1": 10.0
        * normals_l1(
            outputs["normals"], batch["normals"], normals_valid_mask(batch["normals"]), normalize=True
        ),
        "edge/bce": 50.0 * balanced_bce(outputs["edge"], batch["edge"], edge_valid_mask(batch["edge"]), 0.95),
    }
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value)
    torch.testing.assert_close(losses["total"], sum(expected.values()))


def test_normals_term_normalises_the_prediction():
    outputs, batch = fake()
    criterion = create_criterion("mqtransformer", tasks=["normals"], dataset="nyud")
    scaled = dict(outputs, normals=outputs["normals"] * 3.0)
    torch.testing.assert_close(criterion(outputs, batch)["total"], criterion(scaled, batch)["total"])


def test_deeplab_criterion_uses_charbonnier_and_l2():
    outputs, batch = fake()
    losses = create_criterion("deeplabv3plus", tasks=["depth", "normals"], dataset="nyud")(outputs, batch)
    assert sorted(losses) == ["depth/charbonnier", "normals/l2", "total"]
    valid = batch["depth"] > 0
    torch.testing.assert_close(
        losses["depth/charbonnier"], charbonnier(outputs["depth"], batch["depth"], valid)
    )
    nvalid = normals_valid_mask(batch["normals"])
    torch.testing.assert_close(
        losses["normals/l2"], normals_l2(outputs["normals"], batch["normals"], nvalid, normalize=True)
    )


def test_weights_override_and_edge_pos_weight_option():
    outputs, batch = fake()
    base = create_criterion("mqtransformer", tasks=TASKS, dataset="nyud")(outputs, batch)
    losses = create_criterion(
        "mqtransformer", tasks=TASKS, dataset="nyud", weights={"normals/l1": 1.0, "semseg/ce": 0.0}
    )(outputs, batch)
    torch.testing.assert_close(losses["normals/l1"], base["normals/l1"] / 10.0)
    assert losses["semseg/ce"].item() == 0.0
    code = create_criterion("mqtransformer", tasks=["edge"], dataset="nyud", edge_pos_weight=0.8)(
        outputs, batch
    )
    valid = edge_valid_mask(batch["edge"])
    expected = 50.0 * balanced_bce(outputs["edge"], batch["edge"], valid, pos_weight=0.8)
    torch.testing.assert_close(code["edge/bce"], expected)


def test_depth_and_normals_loss_options_switch_terms():
    outputs, batch = fake()
    criterion = create_criterion("mqtransformer", tasks=TASKS, dataset="nyud", depth_loss="charbonnier")
    assert "depth/charbonnier" in criterion(outputs, batch)
    criterion = create_criterion("deeplabv3plus", tasks=TASKS, dataset="nyud", normals_loss="l1")
    assert criterion.weights == {
        "semseg/ce": 1.0,
        "depth/charbonnier": 1.0,
        "normals/l1": 1.0,
        "edge/bce": 50.0,
    }


def test_taskonomy_uses_17_classes():
    outputs, batch = fake(num_classes=17)
    criterion = create_criterion("mqtransformer", tasks=["semseg"], dataset="taskonomy")
    assert criterion(outputs, batch)["semseg/ce"].item() > 0
    outputs40, _ = fake(num_classes=40)
    with pytest.raises(ValueError, match="17"):
        criterion(outputs40, batch)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weights": {"depth/silog": 1.0}},
        {"dataset": "cityscapes"},
        {"tasks": ["semseg", "parts"]},
        {"edge_pos_weight": 1.0},
        {"depth_loss": "l2"},
        {"normals_loss": "angular"},
    ],
)
def test_bad_criterion_options_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        create_criterion("mqtransformer", **({"tasks": TASKS, "dataset": "nyud"} | kwargs))


def test_missing_prediction_or_ground_truth_is_named():
    outputs, batch = fake()
    criterion = create_criterion("mqtransformer", tasks=TASKS, dataset="nyud")
    with pytest.raises(ValueError, match="'depth' prediction"):
        criterion({k: v for k, v in outputs.items() if k != "depth"}, batch)
    with pytest.raises(ValueError, match="'edge' ground truth"):
        criterion(outputs, {k: v for k, v in batch.items() if k != "edge"})


def test_gradients_reach_every_output():
    outputs, batch = fake()
    outputs = {k: v.requires_grad_() for k, v in outputs.items() if k != "aux"}
    create_criterion("mqtransformer", tasks=TASKS, dataset="nyud")(outputs, batch)["total"].backward()
    assert all(bool(v.grad.abs().sum() > 0) for v in outputs.values())
