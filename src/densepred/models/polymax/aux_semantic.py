"""kMaX-DeepLab's auxiliary semantic decoder (training-only, semantic segmentation only).

As in deeplab2's `model/decoder/max_deeplab.py`: ASPP (rates 6/12/18 + image pooling) on the raw stride-32
backbone feature, then two DeepLabv3+-style fusions with the stride-8 (projected to 64 channels) and
stride-4 (projected to 32 channels) backbone features, each followed by a depthwise-separable 5x5 conv,
and a head (depthwise-separable 5x5, 1x1 to the class count). Its sampled cross-entropy is one of the kMaX
losses (weight 1.0, final output only); the branch is not used at inference.

Departure (batch-size-1 safety): the image-pooling branch broadcasts its 1x1 result to the feature
size *before* its BatchNorm; the per-channel statistics are unchanged by the broadcast, but this lets
BatchNorm run in train mode with one image per device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from densepred.models.polymax.layers import ConvBN, batch_norm_2d, he_normal_init, trunc_normal_init


class _PoolingBranch(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        he_normal_init(self.conv.weight)
        self.bn = batch_norm_2d(out_channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x.mean(dim=(2, 3), keepdim=True))
        return self.act(self.bn(pooled.expand(-1, -1, x.shape[2], x.shape[3])))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, image pooling; concat; 1x1; dropout."""

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBN(in_channels, channels, 1, act=True)]
        branches += [ConvBN(in_channels, channels, 3, dilation=r, act=True) for r in rates]
        branches.append(_PoolingBranch(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        self.project = ConvBN(channels * len(branches), channels, 1, act=True)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches], dim=1)))


def _separable(in_channels: int, out_channels: int) -> nn.Sequential:
    """Depthwise 5x5 (BN, GELU) -> pointwise 1x1 (BN, GELU)."""
    return nn.Sequential(
        ConvBN(in_channels, in_channels, 5, groups=in_channels, act=True),
        ConvBN(in_channels, out_channels, 1, act=True),
    )


class AuxSemanticHead(nn.Module):
    """Auxiliary per-pixel semantic logits at stride 4 from the raw backbone features."""

    def __init__(
        self,
        backbone_channels: Sequence[int],
        num_classes: int,
        channels: int,
        low_level_channels: tuple[int, int],
    ) -> None:
        super().__init__()
        c4, c8, _, c32 = backbone_channels
        ch8, ch4 = low_level_channels
        self.aspp = ASPP(c32, channels)
        self.project8 = ConvBN(c8, ch8, 1, act=True)
        self.fuse8 = _separable(channels + ch8, channels)
        self.project4 = ConvBN(c4, ch4, 1, act=True)
        self.fuse4 = _separable(channels + ch4, channels)
        self.head = _separable(channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        trunc_normal_init(self.classifier.weight, 0.01)
        nn.init.zeros_(self.classifier.bias)

    @staticmethod
    def _fuse(x: torch.Tensor, low: torch.Tensor, fuse: nn.Module) -> torch.Tensor:
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return fuse(torch.cat([x, low], dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """features: backbone maps at strides 4, 8, 16, 32 -> (B, C, h4, w4) logits (fp32)."""
        f4, f8, _, f32 = features
        x = self.aspp(f32)
        x = self._fuse(x, self.project8(f8), self.fuse8)
        x = self._fuse(x, self.project4(f4), self.fuse4)
        return self.classifier(self.head(x)).float()
