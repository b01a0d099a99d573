"""Cluster prediction head (Eq. 2) and the per-task cluster-value heads of PolyMaX.

`ClusterPredictor` turns pixel features and cluster centres into the probability-map logits of PolyMaX Eq.
(2), softmax_K(F Q^T), following kMaX-DeepLab's prediction head (deeplab2 `model/decoder/max_deeplab.py`):
F is an L2-normalised per-pixel embedding, Q the (unnormalised) mask kernels, and a one-channel BatchNorm
over all logits acts as the learnable temperature.

The value heads map each cluster centre to what the cluster stands for (paper Sec. 3.1-3.2):
- semseg: class logits over C classes + void (kMaX class head, with the void-biased init);
- depth: a bin centre in metres (MLP, bounded to (min_depth, max_depth));
- normals: a 3-D unit vector (MLP, L2-normalised).
The MLP shape (Linear-GELU-Linear, hidden = query width) and the bounded sigmoid parametrisation of
the bins are our choice (the paper only says "MLPs"); see `DepthBinHead` for the options.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from densepred.models.heads import depth_offset, positive_depth
from densepred.models.polymax.layers import (
    ConvBN,
    LinearBN,
    ScalarBatchNorm,
    batch_norm_2d,
    trunc_normal_init,
)
from densepred.ops import l2_normalize


class PixelEmbeddingHead(nn.Module):
    """Depthwise 5x5 (BN, GELU) -> 1x1 (BN, GELU) -> 1x1 with bias -> BN -> L2 normalise over channels."""

    def __init__(self, in_channels: int, head_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.depthwise = ConvBN(in_channels, in_channels, 5, groups=in_channels, act=True)
        nn.init.xavier_uniform_(self.depthwise.conv.weight)
        self.pointwise = ConvBN(in_channels, head_channels, 1, act=True)
        self.embed = nn.Conv2d(head_channels, embed_dim, 1, bias=True)
        trunc_normal_init(self.embed.weight, 0.01)
        nn.init.zeros_(self.embed.bias)
        self.embed_bn = batch_norm_2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.embed_bn(self.embed(self.pointwise(self.depthwise(x))))
        with torch.autocast(device_type=y.device.type, enabled=False):
            return l2_normalize(y.float(), dim=1)


class ClassHead(nn.Module):
    """kMaX class head: linear map to C + 1 logits (last = void), biased so that p(void) = 0.9 at init."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.linear = nn.Linear(dim, num_classes + 1)
        trunc_normal_init(self.linear.weight, 0.01)
        nn.init.zeros_(self.linear.bias)
        with torch.no_grad():
            self.linear.bias[-1] = math.log(num_classes * 0.9 / 0.1)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, K, D) -> (B, K, C + 1) class logits (fp32)."""
        return self.linear(queries).float()


def _mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))


class DepthBinHead(nn.Module):
    """MLP from each cluster centre to its depth bin centre b_k (paper Sec. 3.1, AdaBins-style).

    activation="sigmoid" (default): b = min_depth + sigmoid(x) * (max_depth - min_depth), positive and
    bounded by the dataset's max depth (the parametrisation of deeplab2's ViP-DeepLab depth head).
    activation="softplus": b = min_depth + softplus(x), positive but unbounded. Both are our choices;
    the paper does not state the parametrisation. `depth_init` (metres, None = off) shifts x so that
    an untrained head puts its bins at that depth (`models.heads.depth_offset`).
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        max_depth: float,
        min_depth: float = 1e-3,
        activation: str = "sigmoid",
        depth_init: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth} and {max_depth}")
        self.offset = depth_offset(activation, depth_init, min_depth, max_depth)
        self.mlp = _mlp(dim, hidden, 1)
        self.max_depth = float(max_depth)
        self.min_depth = float(min_depth)
        self.activation = activation

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, K, D) -> (B, K) bin centres in metres (fp32)."""
        x = self.mlp(queries).float().squeeze(-1)
        return positive_depth(x, self.activation, self.min_depth, self.max_depth, self.offset)


class NormalHead(nn.Module):
    """MLP from each cluster centre to a 3-D unit vector (the sphere-segment centre, paper Sec. 3.2)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = _mlp(dim, hidden, 3)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, K, D) -> (B, K, 3) unit vectors (fp32)."""
        return l2_normalize(self.mlp(queries).float(), dim=-1)


class ClusterPredictor(nn.Module):
    """Probability-map logits of Eq. (2) plus the cluster values, for one set of cluster centres.

    forward(pixels (B,C,h,w), class_emb (B,K,D), mask_emb (B,K,D)) returns a dict with
    "mask_logits" (B,K,h,w) fp32 (softmax over K gives the probability map), "pixel_embedding"
    (B,E,h,w) unit vectors, and "cluster_values" from `value_head(class_emb)`.
    """

    def __init__(
        self, pixel_channels: int, query_dim: int, head_channels: int, embed_dim: int, value_head: nn.Module
    ) -> None:
        super().__init__()
        self.pixel_head = PixelEmbeddingHead(pixel_channels, head_channels, embed_dim)
        self.mask_kernel = LinearBN(query_dim, embed_dim)
        self.temperature = ScalarBatchNorm(gamma_init=0.1)
        self.value_head = value_head

    def forward(
        self, pixels: torch.Tensor, class_emb: torch.Tensor, mask_emb: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        embedding = self.pixel_head(pixels)
        kernels = self.mask_kernel(mask_emb)
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            logits = torch.einsum("bchw,bkc->bkhw", embedding.float(), kernels.float())
        return {
            "mask_logits": self.temperature(logits),
            "pixel_embedding": embedding,
            "cluster_values": self.value_head(class_emb),
        }


def cluster_probabilities(mask_logits: torch.Tensor) -> torch.Tensor:
    """softmax over the K clusters of (B,K,h,w) logits, in fp32."""
    with torch.autocast(device_type=mask_logits.device.type, enabled=False):
        return torch.softmax(mask_logits.float(), dim=1)


def combine_depth(probs: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Depth = sum_k p_k(x) b_k: (B,K,h,w) x (B,K) -> (B,1,h,w)."""
    return torch.einsum("bkhw,bk->bhw", probs.float(), bins.float()).unsqueeze(1)


def combine_normals(probs: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Unnormalised normal field sum_k p_k(x) v_k: (B,K,h,w) x (B,K,3) -> (B,3,h,w)."""
    return torch.einsum("bkhw,bkc->bchw", probs.float(), vectors.float())
