"""Joint transforms of a sample dict (image + task maps), driven by an explicit numpy Generator.

Every random choice is drawn from the `rng` passed to `__call__`, in a fixed order, so a transform is
a pure function of (sample, rng state); `shards.ShardDataset` derives that rng from (seed, epoch,
index), which makes augmentation independent of DataLoader workers and resumable.

Training (`TrainTransform`), in order:
1. Random scale s ~ U(scale): image bilinear (antialiased when shrinking), label maps nearest.
   Metric depth: depth_mode="keep" (default) keeps the metres unchanged, the common choice in
   depth codebases: the scene is the same, only the apparent focal length changes (so the
   image-to-depth mapping is perturbed, which is the point of the augmentation). depth_mode="divide"
   divides depth by s ("zooming in brings the scene closer", which keeps that mapping consistent),
   as MQTransformer's released data code (inherited from ATRC) does. PolyMaX's own depth pipeline is
   not public (deeplab2's public preprocessing has no depth path), so neither choice is attested
   for it. Normals are unchanged by an isotropic rescale either way.
2. Random crop of size `crop`; where the scaled image is smaller the window extends past it and is
   filled with ignore values: semseg 255, depth 0, normals zero vector, edge 0, image the ImageNet
   mean (0 after the usual normalisation, as deeplab2's mean-pixel padding). Optional
   `cat_max_ratio` (MQTransformer/ATRC: 0.75): up to 10 windows are drawn until the largest class
   covers less than that share of the labelled pixels.
3. Photometric jitter on the image only (mmseg-style, as MQTransformer/ATRC): brightness +-32/255,
   contrast and saturation x U(0.5, 1.5), hue rotation up to +-36 degrees (mmseg's +-18 on OpenCV's
   0..180 hue scale; done as a rotation of the YIQ chroma plane), each with probability 1/2,
   contrast first or last with equal odds.
4. Horizontal flip with probability 1/2; the x component of normals is negated.

Evaluation (`EvalTransform`): the full image, padded at the bottom/right to a multiple of
`pad_multiple` (32: the backbone strides) with the same ignore values; `valid_size` = (H, W) is
added so predictions are cropped back with `unpad` before metrics. This is the kMaX-DeepLab
policy (pad, never resize the labels); MQTransformer evaluates its 425x560 images at full size too.
Padding is not neutral: the padded pixels enter the convolutions at the border and every global layer
(PolyMaX's k-means updates assign every pixel, padded ones included, to a cluster), and it can cost a
smoke PolyMaX model much depth accuracy (bench/NOTES.md). The official NYUD-v2 frames (480x640) and the
smoke profile's 96x128 frames are multiples of 32 and are not padded; the multi-task layout's 425x560
frames are (to 448x576).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from densepred.tasks import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
PAD_VALUES = {"semseg": IGNORE_INDEX, "depth": 0.0, "normals": 0.0, "edge": 0.0}
DEPTH_MODES = ("keep", "divide")
_SPATIAL = ("image", "semseg", "depth", "normals", "edge")


def _size(sample: dict) -> tuple[int, int]:
    return tuple(sample["image"].shape[-2:])


def resize(sample: dict, size: tuple[int, int], depth_factor: float = 1.0) -> dict:
    """Resize every map to `size` (image bilinear, antialiased; labels nearest-exact); depth is then
    multiplied by `depth_factor`."""
    out = dict(sample)
    height, width = size
    if (height, width) == _size(sample):
        return out
    # The antialiased kernel is used for enlarging too (where it equals bilinear to 1e-6): unlike the
    # plain bilinear kernel, its result does not depend on torch's thread count (DataLoader workers
    # run single-threaded), which the worker-independence of augmentation requires.
    image = sample["image"][None]
    out["image"] = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    out["image"] = out["image"].clamp_(0.0, 1.0)
    for key in ("semseg", "depth", "normals", "edge"):
        if key in sample:
            value = sample[key]
            batched = value[None, None].float() if key == "semseg" else value[None]
            resized = F.interpolate(batched, size=size, mode="nearest-exact")[0]
            out[key] = resized[0].to(value.dtype) if key == "semseg" else resized
    if "depth" in out and depth_factor != 1.0:
        out["depth"] = out["depth"] * depth_factor
    return out


def _fill(key: str, value: torch.Tensor, image_fill: tuple[float, float, float]) -> torch.Tensor:
    """A tensor like `value` (channels kept) filled with the pad value of `key`."""
    if key == "image":
        return torch.tensor(image_fill, dtype=value.dtype).view(3, 1, 1).expand_as(value).clone()
    return torch.full_like(value, PAD_VALUES[key])


def window(
    sample: dict,
    top: int,
    left: int,
    size: tuple[int, int],
    image_fill: tuple[float, float, float] = IMAGENET_MEAN,
) -> dict:
    """Cut the window [top, top+h) x [left, left+w) out of every map; parts outside are pad values."""
    height, width = size
    src_h, src_w = _size(sample)
    y0, y1 = max(top, 0), min(top + height, src_h)
    x0, x1 = max(left, 0), min(left + width, src_w)
    out = dict(sample)
    for key in _SPATIAL:
        if key not in sample:
            continue
        value = sample[key]
        shape = (*value.shape[:-2], height, width)
        canvas = _fill(key, torch.empty(shape, dtype=value.dtype), image_fill)
        if y1 > y0 and x1 > x0:
            canvas[..., y0 - top : y1 - top, x0 - left : x1 - left] = value[..., y0:y1, x0:x1]
        out[key] = canvas
    return out


def hflip(sample: dict) -> dict:
    """Mirror every map left-right; negate the normals' x component (camera x points right)."""
    out = dict(sample)
    for key in _SPATIAL:
        if key in sample:
            out[key] = sample[key].flip(-1)
    if "normals" in out:
        out["normals"] = out["normals"].clone()
        out["normals"][0] = -out["normals"][0]
    return out


class TrainTransform:
    """Random scale, crop with ignore padding, photometric jitter, horizontal flip (module docstring).

    crop: (height, width) of the output; scale: range of the random scale factor; flip / jitter:
    enable those steps; depth_mode: "keep" or "divide" (what scaling does to metric depth);
    cat_max_ratio: None (off) or the largest share one class may take in the crop (10 tries).
    """

    def __init__(
        self,
        crop: tuple[int, int],
        scale: tuple[float, float] = (0.5, 2.0),
        flip: bool = True,
        jitter: bool = True,
        *,
        depth_mode: str = "keep",
        cat_max_ratio: float | None = None,
        image_fill: tuple[float, float, float] = IMAGENET_MEAN,
    ) -> None:
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(f"crop must be (height, width) with positive sizes, got {crop}")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
        if depth_mode not in DEPTH_MODES:
            raise ValueError(f"depth_mode must be one of {DEPTH_MODES}, got {depth_mode!r}")
        if cat_max_ratio is not None and not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        self.crop, self.scale, self.flip, self.jitter = (
            (int(crop[0]), int(crop[1])),
            tuple(scale),
            flip,
            jitter,
        )
        self.depth_mode, self.cat_max_ratio, self.image_fill = depth_mode, cat_max_ratio, tuple(image_fill)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        s = float(rng.uniform(*self.scale))
        height, width = _size(sample)
        size = (max(1, round(height * s)), max(1, round(width * s)))
        sample = resize(sample, size, depth_factor=1.0 / s if self.depth_mode == "divide" else 1.0)
        top, left = self._window(sample, rng)
        if self.jitter:  # only the part of the image inside the window, before padding
            (height, width), (ch, cw) = _size(sample), self.crop
            y0, y1, x0, x1 = max(top, 0), min(top + ch, height), max(left, 0), min(left + cw, width)
            image = sample["image"].clone()
            image[:, y0:y1, x0:x1] = photometric_jitter(image[:, y0:y1, x0:x1], rng)
            sample = {**sample, "image": image}
        sample = window(sample, top, left, self.crop, self.image_fill)
        if self.flip and rng.random() < 0.5:
            sample = hflip(sample)
        return sample

    def _window(self, sample: dict, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of the crop window (may be negative when the image is smaller)."""
        (height, width), (ch, cw) = _size(sample), self.crop
        tries = 10 if self.cat_max_ratio is not None and "semseg" in sample else 1
        for _ in range(tries):
            top = int(rng.integers(min(0, height - ch), max(0, height - ch) + 1))
            left = int(rng.integers(min(0, width - cw), max(0, width - cw) + 1))
            if tries == 1 or self._balanced(sample["semseg"], top, left):
                break
        return top, left

    def _balanced(self, semseg: torch.Tensor, top: int, left: int) -> bool:
        ch, cw = self.crop
        labels = semseg[max(top, 0) : top + ch, max(left, 0) : left + cw]
        counts = torch.bincount(labels[labels != IGNORE_INDEX].flatten())
        counts = counts[counts > 0]
        return len(counts) > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio


def photometric_jitter(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """mmseg-style photometric distortion of a (3,H,W) image in [0,1]; returns a new tensor."""
    draws = rng.random(5)
    brightness = rng.uniform(-32 / 255, 32 / 255)
    contrast = rng.uniform(0.5, 1.5)
    saturation = rng.uniform(0.5, 1.5)
    hue = math.radians(rng.uniform(-36.0, 36.0))
    contrast_first = rng.random() < 0.5
    out = image.clone()
    if draws[0] < 0.5:
        out += brightness
    if draws[1] < 0.5 and contrast_first:
        out = (out - 0.5) * contrast + 0.5
    if draws[2] < 0.5:
        gray = (out * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        out = gray + (out - gray) * saturation
    if draws[3] < 0.5:
        out = _rotate_hue(out, hue)
    if draws[1] < 0.5 and not contrast_first:
        out = (out - 0.5) * contrast + 0.5
    return out.clamp_(0.0, 1.0)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _rotate_hue(image: torch.Tensor, angle: float) -> torch.Tensor:
    """Hue rotation by `angle` radians as a rotation of the chroma plane in YIQ space."""
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    matrix = _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ
    return torch.einsum("ij,jhw->ihw", matrix, image)


class EvalTransform:
    """Full image padded bottom/right to a multiple of `pad_multiple` (None: no padding).

    Adds `valid_size` (int64 tensor [H, W]) so that `unpad` crops predictions back to the image.
    The rng argument is accepted for interface symmetry and ignored.
    """

    def __init__(
        self, pad_multiple: int | None = 32, image_fill: tuple[float, float, float] = IMAGENET_MEAN
    ) -> None:
        if pad_multiple is not None and pad_multiple < 1:
            raise ValueError(f"pad_multiple must be a positive integer or None, got {pad_multiple}")
        self.pad_multiple, self.image_fill = pad_multiple, tuple(image_fill)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        height, width = _size(sample)
        out = dict(sample)
        if self.pad_multiple is not None:
            m = self.pad_multiple
            out = window(sample, 0, 0, (math.ceil(height / m) * m, math.ceil(width / m) * m), self.image_fill)
        out["valid_size"] = torch.tensor([height, width], dtype=torch.int64)
        return out


def unpad(prediction: torch.Tensor, valid_size: torch.Tensor) -> torch.Tensor:
    """Crop a (..., H', W') prediction of a padded input back to its `valid_size` (H, W)."""
    height, width = (int(v) for v in valid_size)
    return prediction[..., :height, :width]


def collate(batch: list[dict]) -> dict:
    """Stack a list of samples: tensors along a new batch axis, ids (and other values) as lists.

    Raises ValueError naming the key when samples disagree on keys or tensor shapes (e.g. full-size
    evaluation images of different sizes without padding to a common size).
    """
    if not batch:
        raise ValueError("collate: empty batch")
    keys = set(batch[0])
    for sample in batch[1:]:
        if set(sample) != keys:
            raise ValueError(f"collate: samples have different keys: {sorted(keys)} vs {sorted(sample)}")
    out: dict = {}
    for key in batch[0]:
        values = [sample[key] for sample in batch]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"collate: {key!r} has different shapes in one batch: {sorted(shapes)}")
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
