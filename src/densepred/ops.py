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
    return x / sqrt((x * x).sum(dim=dim, keepdim=True).clamp_min(eps * eps))


def sqrt(x: torch.Tensor) -> torch.Tensor:
    """Square root, correctly rounded, so that it gives the same bits on every CPU.

    On CPU, `torch.sqrt` of a float32 tensor goes through MKL's vector math library, which refines
    an approximate reciprocal square root: about one value in five is 1 ulp off, and which ones
    depends on the CPU, so two CPU models train different weights even with every kernel pinned
    (`runtime.cpu_kernels: portable`; bench/NOTES.md, "Bitwise portability across CPU models").
    The float64 square root is exact on every CPU tested, and rounding it to float32 gives the
    correctly rounded float32 root (a double carries more than 2 * 24 + 2 bits, so rounding twice
    is harmless). The backward runs through the same float64 path (a division, exact on every CPU).
    Other dtypes and devices use `torch.sqrt` as it is.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return torch.sqrt(x)
    return torch.sqrt(x.double()).to(torch.float32)
