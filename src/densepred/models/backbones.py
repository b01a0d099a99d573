"""timm backbones as multi-scale pixel encoders (strides 4, 8, 16, 32).

Channels and strides are read from timm's `feature_info`, never hard-coded. Transformer backbones
whose features come out channels-last (Swin: (B,H,W,C)) are permuted to (B,C,H,W). Pretrained weights
load only from a local file (`pretrained_file`), through timm's `pretrained_cfg_overlay`, so nothing
is fetched from a hub at run time.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

STRIDES = (4, 8, 16, 32)


class Backbone(nn.Module):
    """A timm `features_only` model returning the feature maps at strides 4/8/16/32, NCHW.

    Attributes:
        channels: channels of each returned map, in stride order.
        strides: the strides of the returned maps (always 4, 8, 16, 32).
    """

    def __init__(
        self,
        name: str,
        pretrained_file: str | None = None,
        img_size: tuple[int, int] | None = None,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        kwargs = dict(timm_kwargs)
        if pretrained_file is not None:
            path = Path(pretrained_file)
            if not path.is_file():
                raise FileNotFoundError(f"backbone weights file not found: {path}")
            kwargs["pretrained"] = True
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        else:
            kwargs["pretrained"] = False
        if img_size is not None and _takes_img_size(name):
            kwargs["img_size"] = tuple(img_size)
            if name.startswith("swin"):
                # Built for `img_size` (its attention tables and masks), but frames of another size
                # are accepted: the paper profile trains MQTransformer on 448x576 crops and evaluates
                # whole frames, 480x640 for the official release (multi-task layout: 425x560, padded
                # to 448x576). timm pads the feature maps to whole windows; at `img_size` the function
                # is unchanged (tests/test_mqtransformer.py). MQTransformer's released code only ever
                # sees its 425x560 data at one size.
                kwargs.setdefault("strict_img_size", False)
        # One build with every feature level; the levels at strides 4..32 are picked in forward.
        # (The module set is the same as with out_indices restricted to them: the stride-32 level
        # is the last one either way.)
        self.body = timm.create_model(name, features_only=True, **kwargs)
        reductions = list(self.body.feature_info.reduction())
        if not set(STRIDES) <= set(reductions):
            raise ValueError(
                f"backbone {name!r} gives strides {reductions}; PolyMaX/MQTransformer need {STRIDES}"
            )
        self.levels = [reductions.index(s) for s in STRIDES]
        all_channels = list(self.body.feature_info.channels())
        self.channels: list[int] = [all_channels[i] for i in self.levels]
        self.strides: list[int] = list(STRIDES)
        fmt = getattr(self.body, "output_fmt", "NCHW")
        self.channels_last_output = str(fmt) in ("NHWC", "Format.NHWC")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        all_feats = self.body(x)
        feats = [all_feats[i] for i in self.levels]
        if self.channels_last_output:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return feats


def _takes_img_size(name: str) -> bool:
    """Swin and other windowed transformers are built for a fixed input size."""
    return name.startswith(("swin", "vit", "deit", "beit", "eva"))


def create_backbone(name: str, pretrained_file: str | None = None, **kwargs) -> Backbone:
    """Build a multi-scale backbone by timm name (resnet50, convnext_tiny, swin_tiny_patch4_window7_224)."""
    return Backbone(name, pretrained_file=pretrained_file, **kwargs)
