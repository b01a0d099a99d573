"""kMaX transformer decoder: cluster centres refined by k-means cross-attention (deeplab2
`model/transformer_decoder/kmax.py`).

Each layer, at one decoder stride (32, 16 or 8):
1. pixel bottleneck P = GELU(BN(conv1x1(GELU(X)))); query projection Q' = GELU(BN(linear(Q)));
2. assignment: the layer's own `ClusterPredictor` on (P, Q') gives mask logits; each pixel is
   assigned to its argmax cluster, a hard one-hot A computed without gradient (the k-means
   cross-attention of kMaX-DeepLab replaces the softmax over pixels by an argmax over clusters);
   these predictions are also the layer's deep-supervision output;
3. update: Q <- Q + BN_0(linear(BN(A^T V))) with V = BN(conv1x1(P)), a *sum* over assigned pixels;
4. query self-attention computed from Q' (the queries before the k-means update, as in deeplab2,
   where the two branches run in parallel): Q <- GELU(Q + BN_0(linear(GELU(BN(attn)))));
5. FFN: Q <- GELU(Q + BN_0(linear(GELU(BN(linear(Q)))))).
Softmaxes and the k-means update run in fp32 with autocast disabled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from densepred.models.polymax.heads import ClusterPredictor
from densepred.models.polymax.layers import (
    ConvBN,
    LinearBN,
    batch_norm_1d,
    batch_norm_2d,
    query_batch_norm,
    trunc_normal_init,
)


def hard_assignment(mask_logits: torch.Tensor) -> torch.Tensor:
    """One-hot argmax over clusters of (B, K, N) logits -> (B, K, N) fp32, with no gradient."""
    with torch.no_grad():
        index = mask_logits.argmax(dim=1)
        return F.one_hot(index, mask_logits.shape[1]).transpose(1, 2).float()


def kmeans_update(mask_logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """k-means cluster update of kMaX-DeepLab: for each cluster, the sum of the values of its pixels.

    Args:
        mask_logits: (B, K, N) cluster logits per pixel; only their argmax over K is used.
        values: (B, N, C) per-pixel values.
    Returns: (B, K, C) fp32, row k = sum of values[n] over pixels n whose argmax cluster is k.
    No gradient flows into `mask_logits` (hard assignment); gradients reach `values`.
    """
    if mask_logits.dim() != 3 or values.dim() != 3 or mask_logits.shape[0] != values.shape[0]:
        raise ValueError(
            f"kmeans_update expects (B,K,N) logits and (B,N,C) values, got "
            f"{tuple(mask_logits.shape)} and {tuple(values.shape)}"
        )
    if mask_logits.shape[2] != values.shape[1]:
        raise ValueError(f"pixel counts differ: {mask_logits.shape[2]} logits vs {values.shape[1]} values")
    assign = hard_assignment(mask_logits)
    with torch.autocast(device_type=values.device.type, enabled=False):
        return torch.bmm(assign, values.float())


class KMaXLayer(nn.Module):
    """One kMaX transformer-decoder layer (k-means cross-attention, self-attention, FFN)."""

    def __init__(
        self,
        pixel_channels: int,
        dim: int,
        key_dim: int,
        value_dim: int,
        ffn_dim: int,
        num_heads: int,
        drop_path: float,
        predictor: ClusterPredictor,
    ) -> None:
        super().__init__()
        if key_dim % num_heads or value_dim % num_heads:
            raise ValueError(
                f"key/value dims {key_dim}/{value_dim} must be divisible by num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.pixel_bottleneck = nn.Sequential(nn.GELU(), ConvBN(pixel_channels, dim, 1, act=True))
        self.query_proj = LinearBN(dim, dim, act=True)
        self.predictor = predictor
        self.pixel_value = ConvBN(dim, value_dim, 1)
        self.update_bn = batch_norm_1d(value_dim)
        self.update_proj = LinearBN(value_dim, dim, zero_init=True)
        self.qkv = LinearBN(dim, 2 * key_dim + value_dim, init_std=dim**-0.5)
        self.attn_logit_bn = batch_norm_2d(num_heads)
        self.attn_out_bn = batch_norm_1d(value_dim)
        self.attn_proj = LinearBN(value_dim, dim, zero_init=True)
        self.ffn_in = LinearBN(dim, ffn_dim, act=True)
        self.ffn_out = LinearBN(ffn_dim, dim, zero_init=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.GELU()

    def _self_attention(self, queries: torch.Tensor) -> torch.Tensor:
        b, k, _ = queries.shape
        h = self.num_heads
        qkv = self.qkv(queries)
        q, kk, v = torch.split(qkv, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        with torch.autocast(device_type=queries.device.type, enabled=False):
            q = q.float().reshape(b, k, h, -1).transpose(1, 2)
            kk = kk.float().reshape(b, k, h, -1).transpose(1, 2)
            v = v.float().reshape(b, k, h, -1).transpose(1, 2)
            logits = self.attn_logit_bn(q @ kk.transpose(-1, -2))  # no 1/sqrt(d): the BN scales
            out = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(b, k, self.value_dim)
            out = self.act(query_batch_norm(self.attn_out_bn, out))
        return self.attn_proj(out)

    def forward(
        self, pixels: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """pixels (B,C,h,w), queries (B,K,D) -> updated queries (B,K,D) and this layer's predictions."""
        p = self.pixel_bottleneck(pixels)
        q_proj = self.query_proj(queries)
        prediction = self.predictor(p, q_proj, q_proj)
        values = self.pixel_value(p).flatten(2).transpose(1, 2)  # (B, hw, C)
        update = kmeans_update(prediction["mask_logits"].flatten(2), values)
        update = self.update_proj(query_batch_norm(self.update_bn, update))
        queries = queries + self.drop_path(update)
        queries = self.act(queries + self.drop_path(self._self_attention(q_proj)))
        queries = self.act(queries + self.drop_path(self.ffn_out(self.ffn_in(queries))))
        return queries, prediction


class KMaXTransformerDecoder(nn.Module):
    """Cluster centres refined by `num_layers[i]` kMaX layers at decoder stride 32, 16, 8 (in order).

    Args:
        pixel_channels: decoder channels at strides 32, 16, 8 (first len(num_layers) are used).
        num_layers: layers per stride; the tuple length (1..3) is the number of decoder scales.
        make_predictor: builds the per-layer `ClusterPredictor` for pixel features of `dim` channels.
    forward(pixel features at strides 32, 16, 8) returns (class_emb, mask_emb, per-layer predictions).
    """

    def __init__(
        self,
        pixel_channels: Sequence[int],
        num_layers: Sequence[int],
        num_clusters: int,
        dim: int,
        key_dim: int,
        value_dim: int,
        ffn_dim: int,
        num_heads: int,
        drop_path: float,
        make_predictor: Callable[[int], ClusterPredictor],
    ) -> None:
        super().__init__()
        if not 1 <= len(num_layers) <= 3 or any(int(n) < 0 for n in num_layers):
            raise ValueError(
                "decoder_layers must have 1..3 non-negative entries (strides 32/16/8), "
                f"got {list(num_layers)}"
            )
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        self.cluster_centers = nn.Parameter(torch.empty(num_clusters, dim))
        trunc_normal_init(self.cluster_centers, 1.0)
        self.layers = nn.ModuleList()
        self.layer_scale_index: list[int] = []
        for scale, count in enumerate(num_layers):
            for _ in range(int(count)):
                self.layers.append(
                    KMaXLayer(
                        pixel_channels[scale],
                        dim,
                        key_dim,
                        value_dim,
                        ffn_dim,
                        num_heads,
                        drop_path,
                        make_predictor(dim),
                    )
                )
                self.layer_scale_index.append(scale)
        self.class_embedding = LinearBN(dim, dim, act=True)
        self.mask_embedding = LinearBN(dim, dim, act=True)

    def forward(
        self, pixel_features: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
        batch = pixel_features[0].shape[0]
        queries = self.cluster_centers.unsqueeze(0).expand(batch, -1, -1)
        predictions = []
        for layer, scale in zip(self.layers, self.layer_scale_index):
            queries, prediction = layer(pixel_features[scale], queries)
            predictions.append(prediction)
        return self.class_embedding(queries), self.mask_embedding(queries), predictions
