"""kMaX-DeepLab pixel decoder: axial-attention blocks at strides 32/16, bottlenecks at 8/4.

Specification: deeplab2 `model/pixel_decoder/kmax.py` (Axial-DeepLab layers).
Coarse-to-fine: LayerNorm'd stride-32 backbone feature -> axial stage -> ResizedFuse with the
LayerNorm'd stride-16 feature -> axial stage -> fuse stride 8 -> bottleneck stage -> fuse stride 4
-> bottleneck stage. Stage outputs have 4 x filters channels (2048/1024/512/256 at width 1).

Departure: sizes are assumed to be multiples of 32 and every resize uses `align_corners=False`
(deeplab2 uses 32k+1 sizes with `align_corners=True`, which timm backbones do not need).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from densepred.models.polymax.layers import LN_EPS, ConvBN, batch_norm_1d, batch_norm_2d, trunc_normal_init

DEFAULT_FILTERS = (512, 256, 128, 64)
DEFAULT_DEPTHS = (1, 5, 1, 1)
BLOCK_TYPES = ("axial", "axial", "bottleneck", "bottleneck")


class AxialAttention(nn.Module):
    """Multi-head attention along one axis with relative position embeddings (Axial-DeepLab).

    For output position o and input position p, the logit is q_o.k_p + q_o.r^q_{p-o} + k_p.r^k_{p-o};
    each of the three terms gets its own BatchNorm per head (which replaces the 1/sqrt(d) scaling),
    then they are summed and soft-maxed over p. The output sum_p w (v_p + r^v_{p-o}) has its two terms
    BatchNorm'd separately and summed. The relative embeddings are shared across heads and cover
    offsets in (-max_span, max_span), so an axis may be at most `max_span` long (kMaX: 255).
    """

    def __init__(
        self, in_channels: int, key_channels: int, value_channels: int, num_heads: int, max_span: int
    ) -> None:
        super().__init__()
        if key_channels % num_heads or value_channels % num_heads:
            raise ValueError(
                f"axial attention: key/value channels {key_channels}/{value_channels} "
                f"must be divisible by num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.max_span = max_span
        self.qkv = nn.Conv1d(in_channels, 2 * key_channels + value_channels, 1, bias=False)
        trunc_normal_init(self.qkv.weight, in_channels**-0.5)
        self.qkv_bn = batch_norm_1d(2 * key_channels + value_channels)
        dk, dv = key_channels // num_heads, value_channels // num_heads
        self.rpe_query = nn.Parameter(torch.empty(2 * max_span - 1, dk))
        self.rpe_key = nn.Parameter(torch.empty(2 * max_span - 1, dk))
        self.rpe_value = nn.Parameter(torch.empty(2 * max_span - 1, dv))
        for table in (self.rpe_query, self.rpe_key, self.rpe_value):
            trunc_normal_init(table, 1.0)
        self.logit_bn = batch_norm_2d(3 * num_heads)
        self.output_bn = batch_norm_1d(2 * value_channels)

    def _relative_index(self, length: int, device: torch.device) -> torch.Tensor:
        """(L, L) table row for (o, p): the offset p - o shifted into [0, 2*max_span-1)."""
        if length > self.max_span:
            raise ValueError(
                f"axial attention axis length {length} exceeds max_span={self.max_span}; "
                "use a smaller input or a larger axial_max_span"
            )
        pos = torch.arange(length, device=device)
        return pos[None, :] - pos[:, None] + self.max_span - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, L) sequences along the axis -> (N, value_channels, L)."""
        n, _, length = x.shape
        h = self.num_heads
        qkv = self.qkv_bn(self.qkv(x))
        q, k, v = torch.split(qkv, [self.key_channels, self.key_channels, self.value_channels], dim=1)
        idx = self._relative_index(length, x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = q.float().reshape(n, h, -1, length)
            k = k.float().reshape(n, h, -1, length)
            v = v.float().reshape(n, h, -1, length)
            rq, rk, rv = self.rpe_query[idx], self.rpe_key[idx], self.rpe_value[idx]
            qk = torch.einsum("nhdo,nhdp->nhop", q, k)
            qr = torch.einsum("nhdo,opd->nhop", q, rq.float())
            kr = torch.einsum("nhdp,opd->nhop", k, rk.float())
            logits = self.logit_bn(torch.cat([qk, qr, kr], dim=1))
            logits = logits.reshape(n, 3, h, length, length).sum(dim=1)
            weights = torch.softmax(logits, dim=-1)
            sv = torch.einsum("nhop,nhdp->nhdo", weights, v).reshape(n, self.value_channels, length)
            sr = torch.einsum("nhop,opd->nhdo", weights, rv.float()).reshape(n, self.value_channels, length)
            out = self.output_bn(torch.cat([sv, sr], dim=1))
        return out.reshape(n, 2, self.value_channels, length).sum(dim=1)


class AxialAttention2D(nn.Module):
    """Height-axis attention followed by width-axis attention (no activation in between)."""

    def __init__(
        self, in_channels: int, key_channels: int, value_channels: int, num_heads: int, max_span: int
    ) -> None:
        super().__init__()
        self.height = AxialAttention(in_channels, key_channels, value_channels, num_heads, max_span)
        self.width = AxialAttention(value_channels, key_channels, value_channels, num_heads, max_span)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        y = self.height(x.permute(0, 3, 1, 2).reshape(b * ww, c, hh))
        y = y.reshape(b, ww, -1, hh).permute(0, 2, 3, 1)
        c2 = y.shape[1]
        y = self.width(y.permute(0, 2, 1, 3).reshape(b * hh, c2, ww))
        return y.reshape(b, hh, c2, ww).permute(0, 2, 1, 3)


class _ResidualBlock(nn.Module):
    """Pre-activated residual block: a = GELU(x); out = shortcut(a) + branch(a); no output activation."""

    def __init__(self, in_channels: int, out_channels: int, branch: nn.Module) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.shortcut = nn.Identity() if in_channels == out_channels else ConvBN(in_channels, out_channels, 1)
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(x)
        return self.shortcut(a) + self.branch(a)


def bottleneck_block(in_channels: int, filters: int) -> _ResidualBlock:
    """1x1 -> f (BN, GELU), 3x3 -> f (BN, GELU), 1x1 -> 4f (BN, gamma 0)."""
    branch = nn.Sequential(
        ConvBN(in_channels, filters, 1, act=True),
        ConvBN(filters, filters, 3, act=True),
        ConvBN(filters, 4 * filters, 1, zero_init=True),
    )
    return _ResidualBlock(in_channels, 4 * filters, branch)


def axial_block(in_channels: int, filters: int, num_heads: int, max_span: int) -> _ResidualBlock:
    """1x1 -> 2f (BN, GELU), axial attention (key f, value 2f), GELU, 1x1 -> 4f (BN, gamma 0)."""
    branch = nn.Sequential(
        ConvBN(in_channels, 2 * filters, 1, act=True),
        AxialAttention2D(2 * filters, filters, 2 * filters, num_heads, max_span),
        nn.GELU(),
        ConvBN(2 * filters, 4 * filters, 1, zero_init=True),
    )
    return _ResidualBlock(in_channels, 4 * filters, branch)


class ResizedFuse(nn.Module):
    """Fuse a coarse decoder feature with a finer backbone feature (deeplab2 `resized_fuse`).

    Each input whose channel count differs from `out_channels` goes through GELU -> 1x1 conv -> BN;
    the coarse one is bilinearly upsampled to the fine size; the two are summed (no activation).
    """

    def __init__(self, coarse_channels: int, fine_channels: int, out_channels: int) -> None:
        super().__init__()
        self.coarse_proj = self._projection(coarse_channels, out_channels)
        self.fine_proj = self._projection(fine_channels, out_channels)

    @staticmethod
    def _projection(in_channels: int, out_channels: int) -> nn.Module:
        if in_channels == out_channels:
            return nn.Identity()
        return nn.Sequential(nn.GELU(), ConvBN(in_channels, out_channels, 1))

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        coarse = self.coarse_proj(coarse)
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return coarse + self.fine_proj(fine)


class PixelDecoder(nn.Module):
    """The four-stage kMaX pixel decoder.

    Args:
        in_channels: backbone channels at strides 4, 8, 16, 32.
        filters: base filters of the stages at strides 32, 16, 8, 4 (kMaX: 512, 256, 128, 64).
        depths: blocks per stage at strides 32, 16, 8, 4 (kMaX: 1, 5, 1, 1).
    Returns (forward): the stage outputs at strides 32, 16, 8, 4 with `out_channels` channels.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        filters: Sequence[int] = DEFAULT_FILTERS,
        depths: Sequence[int] = DEFAULT_DEPTHS,
        num_heads: int = 8,
        max_span: int = 255,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4 or len(filters) != 4 or len(depths) != 4:
            raise ValueError(
                f"pixel decoder needs 4 backbone channels, filters and depths; got "
                f"{list(in_channels)}, {list(filters)}, {list(depths)}"
            )
        if any(int(d) < 1 for d in depths):
            raise ValueError(f"pixel_decoder_depths must be >= 1 per stage, got {list(depths)}")
        coarse_to_fine_in = list(in_channels)[::-1]  # strides 32, 16, 8, 4
        self.norms = nn.ModuleList(LayerNorm2d(c, eps=LN_EPS) for c in coarse_to_fine_in)
        self.fuses = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.out_channels: list[int] = []
        for i, (f, depth, kind) in enumerate(zip(filters, depths, BLOCK_TYPES)):
            if i == 0:
                stage_in = coarse_to_fine_in[0]
            else:
                self.fuses.append(ResizedFuse(self.out_channels[-1], coarse_to_fine_in[i], f))
                stage_in = f
            blocks = []
            for j in range(int(depth)):
                block_in = stage_in if j == 0 else 4 * f
                if kind == "axial":
                    blocks.append(axial_block(block_in, f, num_heads, max_span))
                else:
                    blocks.append(bottleneck_block(block_in, f))
            self.stages.append(nn.Sequential(*blocks))
            self.out_channels.append(4 * f)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """features: backbone maps at strides 4, 8, 16, 32 -> decoder maps at strides 32, 16, 8, 4."""
        feats = [norm(f) for norm, f in zip(self.norms, list(features)[::-1])]
        x = self.stages[0](feats[0])
        outputs = [x]
        for i in range(1, 4):
            x = self.stages[i](self.fuses[i - 1](x, feats[i]))
            outputs.append(x)
        return outputs
