"""Masked depth and normal losses: hand-computed values, invariances, masking and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from densepred.losses.depth import (
    charbonnier,
    depth_valid_mask,
    multiscale_gradient,
    relative_squared,
    silog,
)
from densepred.losses.normals import normals_l1, normals_l2, normals_valid_mask

DEPTH_LOSSES = [silog, relative_squared, multiscale_gradient, charbonnier]


def _map(values, shape=(1, 1, 1, -1)) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def _random_depth(seed: int = 0, shape=(2, 1, 9, 11)):
    g = torch.Generator().manual_seed(seed)
    target = 0.5 + 5 * torch.rand(shape, generator=g)
    pred = 0.5 + 5 * torch.rand(shape, generator=g)
    valid = torch.rand(shape, generator=g) > 0.3
    return pred, target, valid


# ------------------------------------------------------------------------------------------ SILog
def test_silog_hand_computed():
    # e = log(gt) - log(pred) = [0, 1]: mean(e^2) = 0.5, mean(e)^2 = 0.25.
    target, pred = _map([1.0, math.e]), _map([1.0, 1.0])
    valid = torch.ones_like(target, dtype=torch.bool)
    assert silog(pred, target, valid).item() == pytest.approx(0.25, abs=1e-6)
    assert silog(pred, target, valid, variance_focus=0.5).item() == pytest.approx(0.375, abs=1e-6)
    assert silog(pred, target, valid, take_sqrt=True).item() == pytest.approx(0.5, abs=1e-5)


def test_silog_is_scale_invariant_and_zero_at_truth():
    pred, target, valid = _random_depth()
    assert silog(target, target, valid).item() == pytest.approx(0.0, abs=1e-6)
    assert silog(3.0 * target, target, valid).item() == pytest.approx(0.0, abs=1e-5)
    reference = silog(pred, target, valid).item()
    assert silog(2.0 * pred, target, valid).item() == pytest.approx(reference, abs=1e-5)


def test_silog_averages_per_image_and_skips_empty_images():
    pred, target, valid = _random_depth()
    only_first = valid.clone()
    only_first[1] = False
    expected = silog(pred[:1], target[:1], valid[:1])
    assert silog(pred, target, only_first).item() == pytest.approx(expected.item(), abs=1e-6)


# ----------------------------------------------------------------------------- relative squared
def test_relative_squared_hand_computed():
    # rel = [(2-1)/2, 0] -> sqrt(mean([0.25, 0])) = sqrt(0.125).
    target, pred = _map([2.0, 4.0]), _map([1.0, 4.0])
    valid = torch.ones_like(target, dtype=torch.bool)
    assert relative_squared(pred, target, valid).item() == pytest.approx(math.sqrt(0.125), abs=1e-5)


def test_relative_squared_gradient_finite_at_perfect_prediction():
    _, target, valid = _random_depth()
    pred = target.clone().requires_grad_(True)
    relative_squared(pred, target, valid).backward()
    assert torch.isfinite(pred.grad).all()


# ---------------------------------------------------------------------------- multi-scale gradient
def _gradient_loss_reference(pred, target, valid, num_scales):
    """Explicit loops over pixel pairs, one scale at a time."""
    r = torch.log(pred) - torch.log(target)
    total = 0.0
    for s in range(num_scales):
        step = 2**s
        rs, vs = r[..., ::step, ::step], valid[..., ::step, ::step]
        h, w = rs.shape[-2:]
        if min(h, w) < 2:
            break
        acc, count = 0.0, 0
        for b in range(rs.shape[0]):
            for i in range(h):
                for j in range(w):
                    if j + 1 < w and vs[b, 0, i, j] and vs[b, 0, i, j + 1]:
                        acc += abs(rs[b, 0, i, j + 1] - rs[b, 0, i, j]).item()
                        count += 1
                    if i + 1 < h and vs[b, 0, i, j] and vs[b, 0, i + 1, j]:
                        acc += abs(rs[b, 0, i + 1, j] - rs[b, 0, i, j]).item()
                        count += 1
        if count:
            total += acc / count
    return total


def test_multiscale_gradient_matches_brute_force():
    pred, target, valid = _random_depth(seed=3)
    got = multiscale_gradient(pred, target, valid, num_scales=3).item()
    assert got == pytest.approx(_gradient_loss_reference(pred, target, valid, 3), rel=1e-5)


def test_multiscale_gradient_hand_computed_and_scale_invariant():
    # R = [[0, 1], [0, 1]]: two horizontal pairs with |dR| = 1, two vertical with 0 -> 2 / 4.
    target = torch.ones(1, 1, 2, 2)
    pred = _map([1.0, math.e, 1.0, math.e], (1, 1, 2, 2))
    valid = torch.ones_like(target, dtype=torch.bool)
    assert multiscale_gradient(pred, target, valid).item() == pytest.approx(0.5, abs=1e-6)
    p, t, v = _random_depth(seed=4)
    reference = multiscale_gradient(p, t, v).item()
    assert multiscale_gradient(5 * p, t, v).item() == pytest.approx(reference, rel=1e-5)


# ------------------------------------------------------------------------------------ Charbonnier
def test_charbonnier_hand_computed():
    target, pred = _map([1.0, 2.0, 7.0]), _map([1.0, 5.0, 0.0])
    valid = _map([1, 1, 0]).bool()
    expected = (1e-3 + math.sqrt(9.0 + 1e-6)) / 2
    assert charbonnier(pred, target, valid).item() == pytest.approx(expected, rel=1e-6)
    assert charbonnier(target, target, valid, eps=0.1).item() == pytest.approx(0.1, rel=1e-6)


# ----------------------------------------------------------------------------- masking, bad input
@pytest.mark.parametrize("loss_fn", DEPTH_LOSSES)
def test_depth_losses_ignore_invalid_pixels(loss_fn):
    pred, target, valid = _random_depth(seed=1)
    pred = pred.clone().requires_grad_(True)
    value = loss_fn(pred, target, valid)
    value.backward()
    assert torch.all(pred.grad[~valid] == 0)
    garbage_pred = torch.where(valid, pred.detach(), torch.full_like(pred, 1e4))
    garbage_target = torch.where(valid, target, torch.full_like(target, 1e-9))
    assert loss_fn(garbage_pred, garbage_target, valid).item() == pytest.approx(value.item(), rel=1e-6)


@pytest.mark.parametrize("loss_fn", DEPTH_LOSSES)
def test_depth_losses_no_valid_pixel_gives_zero_with_graph(loss_fn):
    pred, target, _ = _random_depth()
    pred = pred.clone().requires_grad_(True)
    value = loss_fn(pred, target, torch.zeros_like(target, dtype=torch.bool))
    assert value.item() == 0.0
    value.backward()
    assert torch.all(pred.grad == 0)


@pytest.mark.parametrize("loss_fn", DEPTH_LOSSES)
def test_depth_losses_reject_bad_input(loss_fn):
    pred, target, valid = _random_depth()
    with pytest.raises(ValueError, match=r"valid mask must be torch\.bool"):
        loss_fn(pred, target, valid.float())
    with pytest.raises(ValueError, match="target shape"):
        loss_fn(pred, target[..., :-1], valid)
    with pytest.raises(ValueError, match="pred must be"):
        loss_fn(pred.repeat(1, 3, 1, 1), target.repeat(1, 3, 1, 1), valid)


def test_depth_valid_mask():
    depth = _map([0.0, 1.5, float("nan"), 3.0])
    assert depth_valid_mask(depth).flatten().tolist() == [False, True, False, True]


# ---------------------------------------------------------------------------------------- normals
def _unit(vectors) -> torch.Tensor:
    """(N,3) list -> (1,3,1,N) map."""
    return torch.tensor(vectors, dtype=torch.float32).t().reshape(1, 3, 1, -1)


def test_normals_l2_and_l1_hand_computed():
    target = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    pred = _unit([[1, 0, 0], [1, 0, 0], [0, 0, -1]])
    valid = torch.ones(1, 1, 1, 3, dtype=torch.bool)
    # squared distances 0, 2, 4; L1 sums 0, 2, 2.
    assert normals_l2(pred, target, valid).item() == pytest.approx(2.0, abs=1e-6)
    assert normals_l1(pred, target, valid).item() == pytest.approx(4.0 / 3.0, abs=1e-6)


def test_normals_l2_equals_two_minus_two_cos_on_unit_vectors():
    g = torch.Generator().manual_seed(0)
    pred = torch.nn.functional.normalize(torch.randn(2, 3, 5, 6, generator=g), dim=1)
    target = torch.nn.functional.normalize(torch.randn(2, 3, 5, 6, generator=g), dim=1)
    valid = torch.ones(2, 1, 5, 6, dtype=torch.bool)
    expected = (2 - 2 * (pred * target).sum(1)).mean()
    assert normals_l2(pred, target, valid).item() == pytest.approx(expected.item(), rel=1e-5)


def test_normals_normalize_option_and_masking():
    target = _unit([[0, 1, 0], [0, 0, 0]])
    pred = _unit([[0, 3, 0], [5, 5, 5]])
    valid = normals_valid_mask(target)
    assert valid.flatten().tolist() == [True, False]
    assert normals_l1(pred, target, valid, normalize=True).item() == pytest.approx(0.0, abs=1e-6)
    assert normals_l2(pred, target, valid).item() == pytest.approx(4.0, abs=1e-6)  # (3-1)^2
    empty = torch.zeros_like(valid)
    assert normals_l2(pred, target, empty).item() == 0.0


def test_normals_losses_reject_bad_input():
    target = _unit([[0, 1, 0]])
    with pytest.raises(ValueError, match=r"pred must be \(B,3,H,W\)"):
        normals_l2(target[:, :1], target[:, :1], torch.ones(1, 1, 1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid mask must be"):
        normals_l1(target, target, torch.ones(1, 3, 1, 1, dtype=torch.bool))
