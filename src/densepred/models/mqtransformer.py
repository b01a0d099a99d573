"""MQTransformer: multi-task dense prediction with task-relevant queries (Xu et al., arXiv 2205.14354).

Paper Sec. III-B, Fig. 3-4; layer-level details from the released code (github.com/yangyangxu0/
MQTransformer, `src/model/heads/mqformer_head.py`, a fork of ATRC). Data flow for an image:

1. Feature extractor: a timm backbone gives 4 maps at strides 4/8/16/32.
2. Task-specific features: per task, the 4 maps are fused into one stride-4 map X_t (B, C, H/4, W/4),
   C = 256 (`fusion="add"`: paper, 1x1 projection of each scale to C, bilinear upsampling, addition;
   `fusion="concat"`: released code, upsampling, concatenation, one 1x1 projection to C).
3. Task-relevant queries: K = 64 learned queries per task with learned positional encodings.
4. Shared encoder (Eq. 1-4): queries attend to X_t (plus its down-sampled copies when
   `num_scales > 1`, Tab. VI); then "query learning" (QL): LN -> linear with identity (Eq. 3) and
   LN -> MLP(GELU) with identity (Eq. 4).
5. Cross-task query attention (CTQA, Eq. 5-6): self-attention over the concatenated queries of all
   tasks, then an MLP; split back per task.
6. Shared decoder (Eq. 7-8): the pixels of X_t attend to their task's refined queries; MLP; per-pixel
   mixing; MLP; GELU.
7. One conv head per task (Conv3x3-BN-ReLU-Conv1x1), bilinearly upsampled to the input size.

Ablation switches (Tab. IV-VI): `num_queries`, `encoder_depth`, `decoder_depth`, `num_scales`,
`shared`, `query_learning`, `cross_task_attention`.

Departures from the released code, each a named option where the code's variant is cheap:

* `fusion="add"` (paper text) is the default; `"concat"` is the released code's concatenation.
  Both compute the same family of functions, because bilinear upsampling commutes with a 1x1 conv
  (interpolation weights sum to one, so biases pass through): sum_i up(W_i f_i + b_i) equals
  W [up(f_1); ...; up(f_4)] + sum_i b_i. They differ in cost: "add" projects each scale at its own
  resolution, "concat" projects 4x more channels at stride 4 (about 21 GMACs more for Swin-T at
  448x576), and "add" carries 3 redundant bias vectors per task.
* `decoder_mixing="linear"`: the released decoder calls `nn.MultiheadAttention` with batch-first
  tensors on a sequence-first module, so it attends across the *batch* at every pixel (`Decoder`);
  with the released 1 image per GPU this is exactly out_proj(v_proj(x)). We implement that per-pixel
  map (two linear layers), so a prediction never depends on other images in the batch.
  `"attention"` is the evidently intended spatial self-attention over the pixels (costly at 1/4
  resolution).
* `num_scales`: the released code builds a stride-4 PatchEmbed on X_t but never uses its output
  (`MQFormerHead.forward`). Here each extra scale is a down-sampled copy of X_t (PatchEmbed: conv with
  kernel = stride = f, then LayerNorm, shared across tasks) whose tokens are added to the encoder's
  keys/values. Factors (relative to X_t): 2 scales -> (4,) (the released PatchEmbed, 1/16 of the
  input); 3 -> (2, 4); 4 -> (2, 4, 8) (1/8, 1/16, 1/32 of the input); override with `scale_factors`.
* `pixel_pos="sine"`: the paper adds a positional encoding to the task-specific feature used as
  key (Sec. III-B, Fig. 4 black circle) without saying which; we use a parameter-free 2-D sine
  encoding on normalised coordinates (DETR), so any input size works. The released code has none:
  `pixel_pos="none"`.
* Query positional encodings are full-width (K, C) tensors; the released code stores (K, C/heads)
  and broadcasts it over the heads (fewer parameters: 3/4 * K * C less per tensor).
* CTQA: one LayerNorm before its MLP (the released code stacks two: LN -> LN -> MLP) and no
  LayerNorm before the attention, as released. DropPath is per sample with rate `drop_path`; the
  released CTQA applies DropPath(0.5) along the token axis (whole queries dropped).
* `freeze_queries=False`: queries are learned, as in the released code; the paper's sentence that the
  query "is uniformly initialized and is not further optimized" is available as `freeze_queries=True`.
* Encoder/decoder depth: `encoder_depth` / `decoder_depth` stack encoder and decoder layers around a
  single CTQA; the released code's only depth knob repeats the whole encoder-CTQA-decoder block.
* Unused parameters of the released code (decoder `attn2`, relative-position tables) are not built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from densepred.models.heads import (
    AddFusion,
    ConcatFusion,
    ConvHead,
    build_backbone,
    check_tasks,
    scaled,
    task_channels,
    task_outputs,
)
from densepred.models.registry import register_model

PAPER_EMBED_DIM = 256  # C, hard-coded in the released head (`MQFormerHead`)
PAPER_HEAD_CHANNELS = 64  # hidden width of the released conv prediction heads
DEFAULT_SCALE_FACTORS = {1: (), 2: (4,), 3: (2, 4), 4: (2, 4, 8)}
FUSIONS = ("add", "concat")
DECODER_MIXINGS = ("linear", "attention")
PIXEL_POS = ("sine", "none")


def sine_position_encoding(height: int, width: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """2-D sine/cosine position encoding (H*W, dim) on coordinates normalised to (0, 2*pi).

    Half of the channels encode y, half x, each as [sin, cos] at dim/4 geometric frequencies
    (temperature 10000), as in DETR. Normalised coordinates make it resolution independent.
    """
    if dim % 4:
        raise ValueError(f"sine position encoding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = 10000.0 ** (torch.arange(quarter, device=like.device, dtype=torch.float32) / quarter)
    ys = (torch.arange(height, device=like.device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=like.device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    y_enc = ys[:, None] / freqs
    x_enc = xs[:, None] / freqs
    y_enc = torch.cat([y_enc.sin(), y_enc.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    x_enc = torch.cat([x_enc.sin(), x_enc.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([y_enc, x_enc], dim=2).reshape(height * width, dim).to(like.dtype)


def flatten_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


class Mlp(nn.Sequential):
    """LayerNorm -> Linear -> GELU -> Linear: the pre-normed MLP of encoder, CTQA and decoder."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class QueryAttention(nn.Module):
    """Multi-head attention with separate LayerNorms on query, key and value (Eq. 1; released `AnyAttention`).

    Positional encodings are added to queries/keys before their LayerNorm; q/k/v projections have no
    bias, the output projection has one; scale 1/sqrt(dim/heads).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm_q, self.norm_k, self.norm_v = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        query_pos: torch.Tensor | None = None,
        key_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos
        q = self._heads(self.to_q(self.norm_q(query)))
        k = self._heads(self.to_k(self.norm_k(key)))
        v = self._heads(self.to_v(self.norm_v(value)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).flatten(2))


class EncoderLayer(nn.Module):
    """Shared encoder layer: the task queries read the task feature (Eq. 2), then query learning.

    q <- q + DropPath(Attn(q + qpos, X + pos, X)); with `query_learning`: q <- q + W LN(q) (Eq. 3,
    bias-free linear with identity), q <- q + DropPath(MLP(LN(q))) (Eq. 4, hidden width C, GELU).
    Without query learning (Tab. IV(a) "w/o QL") those two steps and their weights are absent.
    """

    def __init__(self, dim: int, num_heads: int, query_learning: bool, drop_path: float) -> None:
        super().__init__()
        self.attn = QueryAttention(dim, num_heads)
        self.query_learning = query_learning
        if query_learning:
            self.reason_norm = nn.LayerNorm(dim)
            self.reason = nn.Linear(dim, dim, bias=False)
            self.mlp = Mlp(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        tokens: torch.Tensor,
        token_pos: torch.Tensor | None,
    ) -> torch.Tensor:
        queries = queries + self.drop_path(self.attn(queries, tokens, tokens, query_pos, token_pos))
        if self.query_learning:
            queries = queries + self.reason(self.reason_norm(queries))
            queries = queries + self.drop_path(self.mlp(queries))
        return queries


class CrossTaskQueryAttention(nn.Module):
    """CTQA (Eq. 5-6): self-attention over the concatenated queries of all tasks, then an MLP.

    P <- P + DropPath(MHSA(P)); P <- P + DropPath(MLP(LN(P))). The attention has no pre-norm and
    attention dropout `attn_drop` (0.1), as released. Batch-first, so images never mix.
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float, drop_path: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=attn_drop, batch_first=True)
        self.mlp = Mlp(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attn(queries, queries, queries, need_weights=False)
        queries = queries + self.drop_path(attended)
        return queries + self.drop_path(self.mlp(queries))


class PixelMixing(nn.Module):
    """The decoder's second token mixer (third step of the released `Decoder`).

    `"linear"`: out_proj(v_proj(x)) per pixel, which is what the released cross-batch attention
    computes with one image per GPU; `"attention"`: spatial multi-head self-attention over the pixels.
    """

    def __init__(self, dim: int, num_heads: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode == "linear":
            self.v_proj = nn.Linear(dim, dim)
            self.out_proj = nn.Linear(dim, dim)
        else:
            self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "linear":
            return self.out_proj(self.v_proj(x))
        return self.attn(x, x, x, need_weights=False)[0]


class DecoderLayer(nn.Module):
    """Shared decoder layer (Eq. 7-8; released `Decoder`): task-feature pixels query their task's queries.

    o = x + DropPath(Attn(x, q + kpos, q)); o = o + DropPath(FFN1(o));
    y = x + DropPath(Mix(o)) (residual from the layer input, as released); y = y + DropPath(FFN2(y));
    return GELU(y). FFNs are LN -> Linear(C, 3C) -> GELU -> Linear(3C, C).
    """

    def __init__(self, dim: int, num_heads: int, mixing: str, drop_path: float, ffn_ratio: int = 3) -> None:
        super().__init__()
        self.cross_attn = QueryAttention(dim, num_heads)
        self.ffn1 = Mlp(dim, dim * ffn_ratio)
        self.mixing = PixelMixing(dim, num_heads, mixing)
        self.ffn2 = Mlp(dim, dim * ffn_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, pixels: torch.Tensor, queries: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        out = pixels + self.drop_path(self.cross_attn(pixels, queries, queries, None, key_pos))
        out = out + self.drop_path(self.ffn1(out))
        out = pixels + self.drop_path(self.mixing(out))
        out = out + self.drop_path(self.ffn2(out))
        return F.gelu(out)


class PatchEmbed(nn.Module):
    """Down-sample a (B,C,H,W) map by `factor`: zero-pad to a multiple, conv k=s=factor, LayerNorm."""

    def __init__(self, dim: int, factor: int) -> None:
        super().__init__()
        if factor < 2:
            raise ValueError(f"scale factors must be integers >= 2, got {factor}")
        self.factor = factor
        self.proj = nn.Conv2d(dim, dim, kernel_size=factor, stride=factor)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = (-x.shape[-2]) % self.factor, (-x.shape[-1]) % self.factor
        x = self.proj(F.pad(x, (0, pad_w, 0, pad_h)))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MQTransformer(nn.Module):
    """MQTransformer for the tasks in `tasks` (see the module docstring for the design and options).

    forward(image (B,3,H,W)) -> {task: prediction at (H, W)} per the registry's output contract, in
    train and eval mode alike (there are no auxiliary outputs).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        backbone: str,
        num_classes: int = 40,
        max_depth: float = 10.0,
        num_queries: int = 64,
        embed_dim: int | None = None,
        width_mult: float = 1.0,
        encoder_depth: int = 1,
        decoder_depth: int = 1,
        num_scales: int = 2,
        shared: bool = True,
        query_learning: bool = True,
        cross_task_attention: bool = True,
        fusion: str = "add",
        pretrained_file: str | None = None,
        img_size: tuple[int, int] | None = None,
        num_heads: int = 4,
        head_channels: int | None = None,
        decoder_mixing: str = "linear",
        pixel_pos: str = "sine",
        scale_factors: Sequence[int] | None = None,
        drop_path: float = 0.1,
        attn_drop: float = 0.1,
        depth_activation: str = "softplus",
        depth_init: float | None = None,
        freeze_queries: bool = False,
        backbone_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.tasks = check_tasks(tasks)
        _check_options(
            num_queries, encoder_depth, decoder_depth, num_scales, fusion, decoder_mixing, pixel_pos
        )
        dim = (
            embed_dim if embed_dim is not None else scaled(PAPER_EMBED_DIM, width_mult, divisor=4 * num_heads)
        )
        if dim < 1 or dim % num_heads or (pixel_pos == "sine" and dim % 4):
            raise ValueError(f"embed_dim={dim} must be positive and divisible by num_heads={num_heads} and 4")
        hidden = head_channels if head_channels is not None else scaled(PAPER_HEAD_CHANNELS, width_mult)
        factors = tuple(scale_factors) if scale_factors is not None else DEFAULT_SCALE_FACTORS[num_scales]
        if len(factors) != num_scales - 1:
            raise ValueError(f"scale_factors={factors} must list num_scales - 1 = {num_scales - 1} factors")
        self.embed_dim, self.num_queries, self.pixel_pos = dim, num_queries, pixel_pos
        self.shared, self.cross_task_attention = shared, cross_task_attention

        self.backbone = build_backbone(backbone, pretrained_file, img_size, backbone_kwargs)
        channels = self.backbone.channels
        fusion_cls = AddFusion if fusion == "add" else ConcatFusion
        self.fusion = nn.ModuleDict({t: fusion_cls(channels, dim) for t in self.tasks})
        self.scale_embeds = nn.ModuleList(PatchEmbed(dim, f) for f in factors)

        self.queries = nn.ParameterDict({t: nn.Parameter(torch.zeros(num_queries, dim)) for t in self.tasks})
        self.query_pos = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(num_queries, dim)) for t in self.tasks}
        )
        self.key_pos = nn.ParameterDict({t: nn.Parameter(torch.zeros(num_queries, dim)) for t in self.tasks})
        for group in (self.queries, self.query_pos, self.key_pos):
            for p in group.values():
                trunc_normal_(p, std=0.02)
        if freeze_queries:
            for p in self.queries.values():
                p.requires_grad_(False)

        def encoder() -> nn.ModuleList:
            return nn.ModuleList(
                EncoderLayer(dim, num_heads, query_learning, drop_path) for _ in range(encoder_depth)
            )

        def decoder() -> nn.ModuleList:
            return nn.ModuleList(
                DecoderLayer(dim, num_heads, decoder_mixing, drop_path) for _ in range(decoder_depth)
            )

        keys = ["shared"] if shared else self.tasks
        self.encoders = nn.ModuleDict({k: encoder() for k in keys})
        self.decoders = nn.ModuleDict({k: decoder() for k in keys})
        self.ctqa = (
            CrossTaskQueryAttention(dim, num_heads, attn_drop, drop_path) if cross_task_attention else None
        )
        self.heads = nn.ModuleDict(
            {t: ConvHead(dim, hidden, task_channels(t, num_classes)) for t in self.tasks}
        )
        self.outputs = task_outputs(self.tasks, max_depth, depth_activation, depth_init)

    def _key(self, task: str) -> str:
        return "shared" if self.shared else task

    def _pos(self, x: torch.Tensor) -> torch.Tensor | None:
        """Sine encoding (1, H*W, C) for a (B,C,H,W) map, or None when `pixel_pos="none"`."""
        if self.pixel_pos == "none":
            return None
        return sine_position_encoding(x.shape[-2], x.shape[-1], x.shape[1], x)[None]

    def _encoder_tokens(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Keys/values of the shared encoder: the task feature and its down-sampled copies."""
        maps = [feature] + [embed(feature) for embed in self.scale_embeds]
        tokens = torch.cat([flatten_tokens(m) for m in maps], dim=1)
        if self.pixel_pos == "none":
            return tokens, None
        return tokens, torch.cat([self._pos(m) for m in maps], dim=1)

    def _encode(self, task: str, feature: torch.Tensor) -> torch.Tensor:
        tokens, token_pos = self._encoder_tokens(feature)
        queries = self.queries[task][None].expand(feature.shape[0], -1, -1)
        for layer in self.encoders[self._key(task)]:
            queries = layer(queries, self.query_pos[task][None], tokens, token_pos)
        return queries

    def _decode(self, task: str, feature: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feature.shape
        pixels = flatten_tokens(feature)
        for layer in self.decoders[self._key(task)]:
            pixels = layer(pixels, queries, self.key_pos[task][None])
        return pixels.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"MQTransformer expects images (B,3,H,W), got {tuple(image.shape)}")
        pyramid = self.backbone(image)
        features = {t: self.fusion[t](pyramid) for t in self.tasks}
        queries = {t: self._encode(t, features[t]) for t in self.tasks}
        if self.ctqa is not None:
            mixed = self.ctqa(torch.cat([queries[t] for t in self.tasks], dim=1))
            queries = dict(zip(self.tasks, mixed.split(self.num_queries, dim=1), strict=True))
        size = image.shape[-2:]
        return {
            t: self.outputs[t](self.heads[t](self._decode(t, features[t], queries[t])), size)
            for t in self.tasks
        }


def _check_options(
    num_queries: int,
    encoder_depth: int,
    decoder_depth: int,
    num_scales: int,
    fusion: str,
    decoder_mixing: str,
    pixel_pos: str,
) -> None:
    """Raise ValueError for an out-of-range MQTransformer option, naming it and the accepted values."""
    for name, value in (
        ("num_queries", num_queries),
        ("encoder_depth", encoder_depth),
        ("decoder_depth", decoder_depth),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if num_scales not in DEFAULT_SCALE_FACTORS:
        raise ValueError(f"num_scales must be one of {sorted(DEFAULT_SCALE_FACTORS)}, got {num_scales!r}")
    for name, value, allowed in (
        ("fusion", fusion, FUSIONS),
        ("decoder_mixing", decoder_mixing, DECODER_MIXINGS),
        ("pixel_pos", pixel_pos, PIXEL_POS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


@register_model("mqtransformer")
def mqtransformer(tasks: Sequence[str], backbone: str, **kwargs) -> MQTransformer:
    """Build an MQTransformer; see `MQTransformer` and the module docstring for the options."""
    return MQTransformer(tasks=tasks, backbone=backbone, **kwargs)
