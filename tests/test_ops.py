"""Shared tensor operations."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from densepred.ops import l2_normalize, sqrt


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


def test_sqrt_is_the_correctly_rounded_float32_root_with_the_same_gradient():
    """densepred.ops.sqrt equals numpy's float32 square root (IEEE, correctly rounded) bit for bit,
    where torch.sqrt on CPU goes through MKL's vector math and may be 1 ulp off."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(100_000, generator=g) * scale for scale in (1e-6, 1.0, 1e3, 1e30)])
    root = sqrt(x)
    assert root.dtype == torch.float32
    assert np.array_equal(root.numpy(), np.sqrt(x.numpy()))
    a = x[:1000].clone().add_(0.1).requires_grad_(True)
    b = a.detach().clone().requires_grad_(True)
    sqrt(a).sum().backward()
    torch.sqrt(b).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-6)
    half = x[:10].to(torch.bfloat16)
    assert torch.equal(sqrt(half), torch.sqrt(half))  # other dtypes as torch computes them
