"""Small tensor operations shared by models and losses."""

from __future__ import annotations

import torch


def l2_normalize(x: torch.Tensor, dim: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """`x / max(||x||_2, eps)` along `dim`: the same result as `torch.nn.functional.normalize`.

    Written from a sum of squares because `F.normalize` (via `linalg.vector_norm`) reduces a strided
    channel axis slowly on CPU: forward and backward take about 9x longer for (B, 3, H, W) normals
    maps and 5x for 16-channel embedding maps; at 128 channels both are equal (bench/bench_ops.py).
    Results agree to float rounding (about 1e-7).
    The clamp acts on the squared length, so a zero vector maps to zero with a zero gradient, as in
    `F.normalize` (a square root at 0 would give NaN gradients). Meant for fp32 inputs: eps**2
    underflows in half precision.
    """
    return x / (x * x).sum(dim=dim, keepdim=True).clamp_min(eps * eps).sqrt()
