"""DeepLabv3+ with per-pixel heads: the PolyMaX paper's baseline (Tab. 2-3, Fig. 7).

PolyMaX (Sec. 4.2-4.3) compares against DeepLabv3+ (Chen et al., ECCV 2018) "using pixel-classification
prediction head for semantic segmentation, and pixel-regression prediction head for depth estimation
and surface normal prediction". The paper gives no layer details; we follow the DeepLabv3+ paper:

* ASPP on the stride-32 backbone map: a 1x1 branch, three 3x3 atrous branches, image pooling;
  concatenation -> 1x1 projection -> dropout. Our backbones end at stride 32 (no dilated last stage),
  so the default rates are (3, 6, 9), the stride-16 rates (6, 12, 18) halved as in deeplab2's
  output-stride-32 configs (`aspp_rates`).
* Decoder: the stride-4 map projected to 48 channels, concatenated with the upsampled ASPP output,
  then two 3x3 conv-BN-ReLU layers (`decoder_channels`).
* One 1x1 conv per task (shared ASPP and decoder when several tasks are given; the PolyMaX paper
  trains one task per model). Outputs follow the registry contract through `TaskOutput`: depth is
  positive (softplus by default; `depth_activation="sigmoid"` gives the bounded ViP-DeepLab head),
  normals are L2-normalised (the same normalisation PolyMaX applies at the end of its normal head).

Departure: the image-pooling branch has a biased 1x1 conv and ReLU but no BatchNorm, because BN over
a 1x1 map cannot train with one image per device; its output is per image, so batch independence holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from densepred.models.heads import build_backbone, check_tasks, resize, scaled, task_channels, task_outputs
from densepred.models.registry import register_model

LOW_LEVEL_CHANNELS = 48  # DeepLabv3+ paper, Sec. 3.1


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1
) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """ASPP image-level branch: global average pool -> 1x1 conv (bias) -> ReLU -> broadcast to H x W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(self.conv(x.mean(dim=(2, 3), keepdim=True)))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3, Sec. 3.3): 1x1, 3x3 at each rate, image pooling."""

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        branches = [conv_bn_relu(in_channels, out_channels, 1)]
        branches += [conv_bn_relu(in_channels, out_channels, 3, dilation=r) for r in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = conv_bn_relu(out_channels * len(branches), out_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches], dim=1)))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ for one or more tasks; forward(image) -> {task: prediction at the input size}."""

    def __init__(
        self,
        tasks: Sequence[str],
        backbone: str,
        num_classes: int = 40,
        max_depth: float = 10.0,
        aspp_channels: int = 256,
        decoder_channels: int = 256,
        width_mult: float = 1.0,
        pretrained_file: str | None = None,
        img_size: tuple[int, int] | None = None,
        aspp_rates: Sequence[int] = (3, 6, 9),
        aspp_dropout: float = 0.1,
        depth_activation: str = "softplus",
        depth_init: float | None = None,
        backbone_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.tasks = check_tasks(tasks)
        if not aspp_rates or any(int(r) < 1 for r in aspp_rates):
            raise ValueError(f"aspp_rates must be a non-empty list of dilation rates >= 1, got {aspp_rates}")
        if aspp_channels < 1 or decoder_channels < 1:
            raise ValueError(
                f"aspp_channels/decoder_channels must be >= 1, got {aspp_channels}/{decoder_channels}"
            )
        aspp_ch = scaled(aspp_channels, width_mult)
        dec_ch = scaled(decoder_channels, width_mult)
        low_ch = scaled(LOW_LEVEL_CHANNELS, width_mult)
        self.backbone = build_backbone(backbone, pretrained_file, img_size, backbone_kwargs)
        channels = self.backbone.channels
        self.aspp = ASPP(channels[-1], aspp_ch, [int(r) for r in aspp_rates], aspp_dropout)
        self.low_level = conv_bn_relu(channels[0], low_ch, 1)
        self.decoder = nn.Sequential(
            conv_bn_relu(aspp_ch + low_ch, dec_ch, 3),
            conv_bn_relu(dec_ch, dec_ch, 3),
        )
        self.heads = nn.ModuleDict(
            {t: nn.Conv2d(dec_ch, task_channels(t, num_classes), 1) for t in self.tasks}
        )
        for head in self.heads.values():
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        self.outputs = task_outputs(self.tasks, max_depth, depth_activation, depth_init)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"DeepLabV3Plus expects images (B,3,H,W), got {tuple(image.shape)}")
        features = self.backbone(image)
        low = self.low_level(features[0])
        context = resize(self.aspp(features[-1]), low.shape[-2:])
        decoded = self.decoder(torch.cat([context, low], dim=1))
        size = image.shape[-2:]
        return {t: self.outputs[t](self.heads[t](decoded), size) for t in self.tasks}


@register_model("deeplabv3plus")
def deeplabv3plus(tasks: Sequence[str], backbone: str, **kwargs) -> DeepLabV3Plus:
    """Build DeepLabv3+ with per-pixel heads; see `DeepLabV3Plus` for the options."""
    return DeepLabV3Plus(tasks=tasks, backbone=backbone, **kwargs)
