"""Small building blocks shared by the PolyMaX pixel decoder, kMaX transformer decoder and heads.

Conventions follow kMaX-DeepLab as released in deeplab2 (`model/kmax_deeplab.py`, `model/layers/`): exact
(erf) GELU, BatchNorm with eps 1e-3 and PyTorch momentum 0.01 (TF momentum 0.99), LayerNorm eps 1e-6,
bias-free convolutions followed by BN, truncated-normal He initialisation, and BN gamma = 0 on the
last BN of every residual branch so that each residual block starts as the identity.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
LN_EPS = 1e-6
# Channel counts are rounded to multiples of this so that widths scaled by `width_mult` still split
# evenly into the 8 attention heads used throughout kMaX.
CHANNEL_DIVISOR = 8


def scale_channels(channels: int, width_mult: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """`channels * width_mult` rounded to the nearest multiple of `divisor` (at least `divisor`)."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    return max(divisor, round(channels * width_mult / divisor) * divisor)


def trunc_normal_init(weight: torch.Tensor, std: float) -> None:
    """Truncated normal N(0, std^2) cut at +-2 std (TF's truncated_normal)."""
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def he_normal_init(weight: torch.Tensor) -> None:
    """Truncated He-normal init, std = sqrt(2 / fan_in), as deeplab2's Conv2D/Conv1D helpers."""
    fan_in = weight[0].numel()
    trunc_normal_init(weight, math.sqrt(2.0 / fan_in))


def batch_norm_1d(channels: int, zero_init: bool = False) -> nn.BatchNorm1d:
    """BatchNorm1d with kMaX's eps/momentum; gamma = 0 when it ends a residual branch."""
    bn = nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    if zero_init:
        nn.init.zeros_(bn.weight)
    return bn


def batch_norm_2d(channels: int, zero_init: bool = False) -> nn.BatchNorm2d:
    """BatchNorm2d with kMaX's eps/momentum; gamma = 0 when it ends a residual branch."""
    bn = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    if zero_init:
        nn.init.zeros_(bn.weight)
    return bn


class ConvBN(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> optional exact GELU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: bool = False,
        zero_init: bool = False,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        if init_std is None:
            he_normal_init(self.conv.weight)
        else:
            trunc_normal_init(self.conv.weight, init_std)
        self.bn = batch_norm_2d(out_channels, zero_init=zero_init)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class LinearBN(nn.Module):
    """Per-query linear map (deeplab2's 1x1 Conv1D, no bias) -> BatchNorm over channels -> optional GELU.

    Operates on query tensors (B, K, C); the BatchNorm statistics are taken over batch and queries.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        act: bool = False,
        zero_init: bool = False,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        if init_std is None:
            he_normal_init(self.linear.weight)
        else:
            trunc_normal_init(self.linear.weight, init_std)
        self.bn = batch_norm_1d(out_features, zero_init=zero_init)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.linear(x).transpose(1, 2)).transpose(1, 2)
        return self.act(y)


def query_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """Apply a BatchNorm1d over the channel axis of a query tensor (B, K, C)."""
    return bn(x.transpose(1, 2)).transpose(1, 2)


class ScalarBatchNorm(nn.Module):
    """One-channel BatchNorm over a whole tensor: the learnable temperature of the mask logits.

    kMaX (deeplab2 `model/decoder/max_deeplab.py`) normalises all mask logits of a batch as a single
    channel and initialises gamma to 0.1; gamma then acts as the learned softmax temperature of Eq. (2).
    Computed in fp32 (autocast disabled) because its output feeds the softmax over clusters.
    """

    def __init__(self, gamma_init: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(1, eps=BN_EPS, momentum=BN_MOMENTUM)
        nn.init.constant_(self.bn.weight, gamma_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = self.bn(x.float().reshape(x.shape[0], 1, -1))
        return y.reshape(x.shape)


def set_bn_momentum(module: nn.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every BatchNorm inside `module`."""
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"bn_momentum must be in (0, 1], got {momentum}")
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
