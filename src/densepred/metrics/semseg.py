"""Semantic segmentation: mIoU from a confusion matrix accumulated over the whole dataset.

Both papers accumulate intersection and union per class over the full test set (not per image):
PolyMaX reports mIoU (Sec. 4.1), MQTransformer follows the multi-task codebases (Sec. IV-A, after
ATRC), where a class absent from both prediction and ground truth (zero union) counts as IoU 0 in
the mean. We report both conventions (docs/protocols.md, "Semantic segmentation"):

    miou      mean IoU over the classes whose union is non-zero on the dataset (semantic-segmentation
              convention; absent classes are excluded)
    miou_all  mean IoU over all classes, zero-union classes counting 0 (MTI-Net/ATRC/MQTransformer)
    pixel_acc correctly labelled pixels / labelled pixels
    iou_per_class  one IoU per class, NaN for zero-union classes

All values are percentages (the papers' tables report mIoU x 100).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from densepred.metrics.base import Meter, compute_device
from densepred.tasks import IGNORE_INDEX


def first_argmax(logits: Tensor) -> Tensor:
    """Index of the first maximum over the class axis of (B,C,H,W) logits, as `logits.argmax(dim=1)`.

    On CPU, torch's arg-reductions over the strided class axis of an NCHW tensor track indices
    element by element, while the plain maximum over that axis is vectorised across pixels. So the
    labels come from three vectorised passes: the maximum m per pixel, the uint8 map
    (logit >= m) * (C - c) (>= m is == m, and cheaper to test), and its maximum, which is
    C - (first class reaching m); about 4x faster on one thread (bench/NOTES.md, `bench/bench_ops.py`).
    Ties, including -0.0 against 0.0, resolve to the first class, as in `argmax`. Other devices and
    layouts (channels-last logits reduce quickly), and more than 255 classes, use `Tensor.max`. The
    logits must be finite (the meter checks this first): NaN would compare differently in the two
    forms.
    """
    num_classes = logits.shape[1]
    if logits.device.type != "cpu" or not logits.is_contiguous() or num_classes > 255:
        return logits.max(dim=1).indices
    at_max = torch.ge(logits, logits.amax(dim=1, keepdim=True))  # == the maximum; ge is the cheaper test
    weights = torch.arange(num_classes, 0, -1, dtype=torch.uint8).view(1, num_classes, 1, 1)
    return num_classes - at_max.view(torch.uint8).mul_(weights).amax(dim=1).long()


class SemsegMeter(Meter):
    """Streaming confusion matrix for `num_classes` classes; pixels labelled `ignore_index` are skipped.

    `update(pred, target)`: `target` is an integer label map (H,W) or (B,H,W); `pred` is either
    floating-point logits (C,H,W)/(B,C,H,W), reduced by argmax over classes (first index on ties), or an
    integer label map of the target's shape. The confusion matrix (rows: ground truth, columns:
    prediction) is built with one `bincount` on the batch's device.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"SemsegMeter: num_classes must be a positive int, got {num_classes!r}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"SemsegMeter: ignore_index {ignore_index} collides with a class id (0..{num_classes - 1})"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__()

    def _initial_state(self) -> dict[str, Tensor]:
        return {"confusion": torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)}

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch (see the class docstring for the accepted shapes)."""
        pred = self._check_tensor(pred, "prediction")
        target = self._check_tensor(target, "target")
        if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
            raise self._error(f"target must be an integer label map, got dtype {target.dtype}")
        target = self._batched(target, 2, "target", "(H,W) or (B,H,W)")
        labels = self._pred_labels(pred, target)
        device = compute_device(target.device)
        self._begin_update(device)
        target = target.to(device).long()
        labels = labels.to(device).long()
        valid = target != self.ignore_index
        bad = valid & ((target < 0) | (target >= self.num_classes))
        if bool(bad.any()):
            values = torch.unique(target[bad])[:5].tolist()
            raise self._error(
                f"target has label(s) {values} outside 0..{self.num_classes - 1} "
                f"and != ignore {self.ignore_index}"
            )
        # ignored pixels go to one extra bin, dropped below (cheaper than masking them out)
        bins = self.num_classes**2
        index = torch.where(valid, target * self.num_classes + labels, bins)
        counts = torch.bincount(index.reshape(-1), minlength=bins + 1)[:bins]
        self._state["confusion"] += counts.reshape(self.num_classes, self.num_classes)

    def _pred_labels(self, pred: Tensor, target: Tensor) -> Tensor:
        """Class labels (B,H,W) from logits or labels, with shape checks against `target` (B,H,W)."""
        if pred.is_floating_point():
            self._check_finite(pred, "prediction")
            logits = pred.unsqueeze(0) if pred.ndim == 3 else pred
            if logits.ndim != 4 or logits.shape[1] != self.num_classes:
                raise self._error(
                    f"logits must have shape (C,H,W) or (B,C,H,W) with C={self.num_classes}, "
                    f"got {tuple(pred.shape)}"
                )
            labels = first_argmax(logits)
        elif pred.dtype == torch.bool or pred.is_complex():
            raise self._error(f"prediction must be logits or integer labels, got dtype {pred.dtype}")
        else:
            labels = self._batched(pred, 2, "label prediction", "(H,W) or (B,H,W)")
            out_of_range = (labels < 0) | (labels >= self.num_classes)
            if bool(out_of_range.any()):
                raise self._error(f"predicted labels must lie in 0..{self.num_classes - 1}")
        if labels.shape != target.shape:
            raise self._error(
                f"prediction covers {tuple(labels.shape)} pixels (B,H,W) but target is {tuple(target.shape)}"
            )
        return labels

    def compute(self) -> dict:
        """miou, miou_all, pixel_acc (percent) and iou_per_class (percent, NaN for zero-union classes)."""
        confusion = self._state["confusion"].double().cpu()
        total = float(confusion.sum())
        if total == 0:
            raise self._error("no labelled pixel was accumulated (every pixel ignored, or no update)")
        intersection = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - intersection
        present = union > 0
        iou = torch.where(present, intersection / union.clamp(min=1), torch.full_like(union, math.nan))
        return {
            "miou": 100.0 * float(iou[present].mean()),
            "miou_all": 100.0 * float(iou[present].sum()) / self.num_classes,
            "pixel_acc": 100.0 * float(intersection.sum()) / total,
            "iou_per_class": [100.0 * value for value in iou.tolist()],
        }
