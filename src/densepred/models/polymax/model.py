"""PolyMaX: kMaX-DeepLab with cluster heads for semantic segmentation, depth and surface normals.

Paper: Yang et al., "PolyMaX: General Dense Prediction with Mask Transformer" (WACV 2024), Sec. 3-4.
Pipeline (Fig. 2): timm pixel encoder -> kMaX pixel decoder (strides 32..4) -> kMaX transformer
decoder on strides 32/16/8 -> prediction head giving the probability map softmax_K(F Q^T) (Eq. 2)
-> task combination:
- semseg: K = C clusters with a fixed cluster-to-class matching (Sec. 3.1); the logits of class c
  are the mask logits of cluster c;
- depth: K bin centres from an MLP on the cluster centres; depth = sum_k p_k b_k (Sec. 3.1);
- normals: K unit vectors from an MLP; normal = normalise(sum_k p_k v_k) (Sec. 3.2).
One model per task, as in the paper (Sec. 4.1: "we have to train each task independently").

Output contract: eval mode returns {task: prediction at input resolution}. Train mode adds
"mask_logits" (B,K,h/4,w/4), "pixel_embedding", "cluster_values" of the final head, "aux" (one dict
per kMaX layer, for deep supervision) and, for semseg, "aux_semantic" logits (B,C,h/4,w/4).

Choices where the paper is silent (each an option of `PolyMaX`):
- `input_norm="kmax"`: images are mapped to [-1, 1] as deeplab2 does for every backbone
  (alternative "imagenet": timm mean/std).
- `decoder_drop_path_rate=0.0`: no drop-path in the transformer decoder (deeplab2's multi-task
  kMaX default after commit fe8ec061; kMaX on COCO uses 0.2).
- `depth_activation="sigmoid"`, `min_depth=1e-3`: bins bounded to (min_depth, max_depth).
- `aux_semantic_head=None` -> on for semseg (kMaX's default for datasets other than Cityscapes).
- `semseg_inference="mask"`: argmax of the probability map, as the paper describes; "mask_x_class"
  uses kMaX's sum_k p(class | k) m_k instead.
- Depth/normal value heads: Linear-GELU-Linear MLPs on the class embedding (hidden = query width);
  every kMaX layer has its own predictor and value head, so depth and normals get the same deep
  supervision as kMaX's masks (their aux maps are rendered at input resolution for the loss).
- `depth_init=None`: metres an untrained depth head predicts (`models.heads.depth_offset`); off as in
  the paper, for short schedules that would otherwise spend their steps moving the bins' scale.
- `width_mult` scales every decoder/head width (256/128/2048 queries/keys/FFN, 512..64 pixel-decoder
  filters), rounded to multiples of 8 so that 8 heads still divide them.
Departures from deeplab2: input sizes multiple of 32 with align_corners=False (not 32k+1 with True),
plain BatchNorm (convert with nn.SyncBatchNorm.convert_sync_batchnorm for DDP).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from densepred.model_params import PolyMaXCfg
from densepred.models.backbones import create_backbone
from densepred.models.polymax.aux_semantic import AuxSemanticHead
from densepred.models.polymax.heads import (
    ClassHead,
    ClusterPredictor,
    DepthBinHead,
    NormalHead,
    cluster_probabilities,
    combine_depth,
    combine_normals,
)
from densepred.models.polymax.layers import scale_channels, set_bn_momentum
from densepred.models.polymax.pixel_decoder import DEFAULT_DEPTHS, DEFAULT_FILTERS, PixelDecoder
from densepred.models.polymax.transformer_decoder import KMaXTransformerDecoder
from densepred.models.registry import register_model
from densepred.ops import l2_normalize

INPUT_NORMS = ("kmax", "imagenet")
SEMSEG_INFERENCE = ("mask", "mask_x_class")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) in fp32, outside autocast."""
    x = x.float()
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    with torch.autocast(device_type=x.device.type, enabled=False):
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PolyMaX(nn.Module):
    """PolyMaX for one task; see the module docstring and `create_polymax` for the arguments."""

    def __init__(
        self,
        task: str,
        backbone: str,
        num_classes: int = 40,
        num_clusters: int | None = None,
        max_depth: float = 10.0,
        width_mult: float = 1.0,
        decoder_layers: Sequence[int] = (2, 2, 2),
        pixel_decoder_depths: Sequence[int] = DEFAULT_DEPTHS,
        pretrained_file: str | None = None,
        img_size: tuple[int, int] | None = None,
        drop_path_rate: float = 0.0,
        *,
        min_depth: float = 1e-3,
        depth_activation: str = "sigmoid",
        decoder_drop_path_rate: float = 0.0,
        num_heads: int = 8,
        axial_max_span: int = 255,
        input_norm: str = "kmax",
        aux_semantic_head: bool | None = None,
        semseg_inference: str = "mask",
        bn_momentum: float = 0.01,
        depth_init: float | None = None,
    ) -> None:
        super().__init__()
        self.task = task
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        # K's rule and default live in the params class (model_params.PolyMaXCfg), the model applies them.
        self.num_clusters = PolyMaXCfg.resolve_num_clusters(task, self.num_classes, num_clusters)
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        if semseg_inference not in SEMSEG_INFERENCE:
            raise ValueError(f"semseg_inference must be one of {SEMSEG_INFERENCE}, got {semseg_inference!r}")
        self.input_norm = input_norm
        self.semseg_inference = semseg_inference
        self.max_depth = float(max_depth)

        def w(c: int) -> int:
            return scale_channels(c, width_mult)

        # drop_path_rate is only passed when used, so backbones without stochastic depth still build.
        backbone_kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate > 0 else {}
        self.backbone = create_backbone(
            backbone, pretrained_file=pretrained_file, img_size=img_size, **backbone_kwargs
        )
        self.pixel_decoder = PixelDecoder(
            self.backbone.channels,
            filters=[w(f) for f in DEFAULT_FILTERS],
            depths=tuple(pixel_decoder_depths),
            num_heads=num_heads,
            max_span=axial_max_span,
        )
        dim, embed_dim, head_channels = w(256), w(128), w(256)

        def make_predictor(pixel_channels: int) -> ClusterPredictor:
            value_head = self._make_value_head(dim, min_depth, depth_activation, depth_init)
            return ClusterPredictor(pixel_channels, dim, head_channels, embed_dim, value_head)

        self.transformer_decoder = KMaXTransformerDecoder(
            self.pixel_decoder.out_channels[:3],
            num_layers=tuple(decoder_layers),
            num_clusters=self.num_clusters,
            dim=dim,
            key_dim=w(128),
            value_dim=w(256),
            ffn_dim=w(2048),
            num_heads=num_heads,
            drop_path=decoder_drop_path_rate,
            make_predictor=make_predictor,
        )
        self.predictor = make_predictor(self.pixel_decoder.out_channels[3])
        use_aux = (task == "semseg") if aux_semantic_head is None else bool(aux_semantic_head)
        if use_aux and task != "semseg":
            raise ValueError(f"aux_semantic_head is only available for task 'semseg', not {task!r}")
        self.aux_semantic = None
        if use_aux:
            low_level = (w(64), w(32))
            self.aux_semantic = AuxSemanticHead(self.backbone.channels, self.num_classes, w(256), low_level)
        for module in (self.pixel_decoder, self.transformer_decoder, self.predictor, self.aux_semantic):
            if module is not None:
                set_bn_momentum(module, bn_momentum)

    def _make_value_head(
        self, dim: int, min_depth: float, depth_activation: str, depth_init: float | None
    ) -> nn.Module:
        if self.task == "semseg":
            return ClassHead(dim, self.num_classes)
        if self.task == "depth":
            return DepthBinHead(
                dim, dim, self.max_depth, min_depth, activation=depth_activation, depth_init=depth_init
            )
        return NormalHead(dim, dim)

    # ----------------------------------------------------------------------------------- forward
    def _normalize_input(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3 or not image.is_floating_point():
            raise ValueError(
                "PolyMaX expects a float image batch (B,3,H,W) in [0,1], "
                f"got shape {tuple(image.shape)} dtype {image.dtype}"
            )
        if self.input_norm == "kmax":
            return image * 2.0 - 1.0
        mean = image.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = image.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        return (image - mean) / std

    def _run(
        self, image: torch.Tensor
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        """Backbone features, final prediction (stride 4) and per-layer predictions."""
        features = self.backbone(self._normalize_input(image))
        decoded = self.pixel_decoder(features)
        class_emb, mask_emb, layer_predictions = self.transformer_decoder(decoded[:3])
        final = self.predictor(decoded[3], class_emb, mask_emb)
        return features, final, layer_predictions

    def render(self, prediction: dict[str, torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """The task output at resolution `size` from one head's mask logits and cluster values (fp32)."""
        logits, values = prediction["mask_logits"].float(), prediction["cluster_values"].float()
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._render_fp32(logits, values, size)

    def _render_fp32(self, logits: torch.Tensor, values: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if self.task == "semseg":
            if self.semseg_inference == "mask":
                return _resize(logits, size)
            class_probs = torch.softmax(values, dim=-1)[..., : self.num_classes]
            scores = torch.einsum("bkhw,bkc->bchw", cluster_probabilities(logits), class_probs)
            return _resize(torch.log(scores.clamp_min(1e-8)), size)
        probs = cluster_probabilities(logits)
        if self.task == "depth":
            # Upsampling is linear, so resizing the combined map equals combining resized maps.
            return _resize(combine_depth(probs, values), size)
        return l2_normalize(_resize(combine_normals(probs, values), size), dim=1)

    def _aux_output(
        self, prediction: dict[str, torch.Tensor], size: Sequence[int], head_size: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        """Deep-supervision output of one kMaX layer (kMaX resizes its maps to the stride-4 size)."""
        if self.task == "semseg":
            return {
                "mask_logits": _resize(prediction["mask_logits"], head_size),
                "pixel_embedding": l2_normalize(_resize(prediction["pixel_embedding"], head_size), dim=1),
                "cluster_values": prediction["cluster_values"],
            }
        return {
            self.task: self.render(prediction, size),
            "mask_logits": prediction["mask_logits"],
            "cluster_values": prediction["cluster_values"],
        }

    def forward(self, image: torch.Tensor) -> dict:
        size = image.shape[-2:]
        features, final, layer_predictions = self._run(image)
        out: dict = {self.task: self.render(final, size)}
        if not self.training:
            return out
        out.update(final)
        head_size = final["mask_logits"].shape[-2:]
        out["aux"] = [self._aux_output(p, size, head_size) for p in layer_predictions]
        if self.aux_semantic is not None:
            out["aux_semantic"] = self.aux_semantic(features)
        return out

    def cluster_maps(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-cluster probability maps and cluster values of the final head (paper Fig. 8).

        Returns "probs" (B,K,H,W) at input resolution (each pixel sums to 1 over K) and "values":
        depth bin centres (B,K) in metres, normals unit vectors (B,K,3), or, for semseg, the class
        probabilities (B,K,C+1) of each cluster (cluster k is matched to class k).
        """
        _, final, _ = self._run(image)
        probs = _resize(cluster_probabilities(final["mask_logits"]), image.shape[-2:])
        values = final["cluster_values"]
        if self.task == "semseg":
            values = torch.softmax(values.float(), dim=-1)
        return {"probs": probs, "values": values}

    def no_weight_decay(self) -> set[str]:
        """Parameter names kMaX trains without weight decay: cluster centres and axial RPE tables."""
        return {n for n, _ in self.named_parameters() if n.endswith("cluster_centers") or ".rpe_" in n}


@torch.no_grad()
def cluster_maps(model: PolyMaX, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eval-mode `PolyMaX.cluster_maps` without gradients; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        return model.cluster_maps(image)
    finally:
        model.train(was_training)


@register_model("polymax")
def create_polymax(
    task: str,
    backbone: str,
    num_classes: int = 40,
    num_clusters: int | None = None,
    max_depth: float = 10.0,
    width_mult: float = 1.0,
    decoder_layers: tuple[int, ...] = (2, 2, 2),
    pixel_decoder_depths: tuple[int, ...] = DEFAULT_DEPTHS,
    pretrained_file: str | None = None,
    img_size: tuple[int, int] | None = None,
    drop_path_rate: float = 0.0,
    **options,
) -> PolyMaX:
    """Build PolyMaX for `task` ("semseg" | "depth" | "normals") on a timm `backbone`.

    Args:
        num_classes: semantic classes C (semseg forces K = C).
        num_clusters: K; default C for semseg, `PolyMaXCfg.DEFAULT_NUM_CLUSTERS` (16) for depth and
            normals (model_params.PolyMaXCfg holds the rule and the default).
        max_depth: upper bound of the depth bins in metres (NYUD 10, Taskonomy 128).
        width_mult: scales pixel-decoder, transformer-decoder and head channels (1.0 = kMaX).
        decoder_layers: kMaX layers at strides 32/16/8; its length (1..3) is the number of scales.
        pixel_decoder_depths: blocks per pixel-decoder stage at strides 32/16/8/4 (kMaX: 1/5/1/1).
        pretrained_file: local backbone weights (never downloaded); img_size: for Swin/ViT.
        drop_path_rate: backbone stochastic depth (linear rule; kMaX ConvNeXt-L uses 0.6).
        options: keyword options of `PolyMaX` (min_depth, depth_activation, decoder_drop_path_rate,
            num_heads, axial_max_span, input_norm, aux_semantic_head, semseg_inference, bn_momentum,
            depth_init).
    """
    return PolyMaX(
        task,
        backbone,
        num_classes=num_classes,
        num_clusters=num_clusters,
        max_depth=max_depth,
        width_mult=width_mult,
        decoder_layers=decoder_layers,
        pixel_decoder_depths=pixel_decoder_depths,
        pretrained_file=pretrained_file,
        img_size=img_size,
        drop_path_rate=drop_path_rate,
        **options,
    )
