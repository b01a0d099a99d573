"""Shared tensor operations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from densepred.ops import l2_normalize


def test_l2_normalize_matches_functional_normalize_with_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g)
    x[0, :, 0, 0] = 0.0  # a zero vector stays zero, as in F.normalize
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    weights = torch.randn(2, 3, 5, 7, generator=g)
    (l2_normalize(a, dim=1) * weights).sum().backward()
    (F.normalize(b, dim=1, eps=1e-12) * weights).sum().backward()
    assert torch.allclose(l2_normalize(x, dim=1), F.normalize(x, dim=1), atol=1e-6)
    assert torch.equal(l2_normalize(x, dim=1)[0, :, 0, 0], torch.zeros(3))
    assert torch.allclose(a.grad, b.grad, atol=1e-5)


def test_l2_normalize_last_dim_gives_unit_rows():
    x = torch.randn(4, 6, 16)
    norms = l2_normalize(x, dim=-1).pow(2).sum(dim=-1).sqrt()
    assert torch.allclose(norms, torch.ones(4, 6), atol=1e-6)
