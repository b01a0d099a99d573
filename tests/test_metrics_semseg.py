"""SemsegMeter: hand-computed IoUs, both mIoU conventions, invariances and errors."""

from __future__ import annotations

import math

import pytest
import torch

from densepred.metrics import SemsegMeter
from densepred.metrics.semseg import first_argmax

# 3 classes; class 2 is absent from ground truth and prediction. 255 = ignore.
TARGET = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 255]])
PRED = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 2]])  # the last pixel is ignored, its "2" must not count


def test_hand_computed_keys():
    meter = SemsegMeter(3)
    meter.update(PRED, TARGET)
    # confusion (gt rows, pred cols): gt0 -> pred0 x2, pred1 x1; gt1 -> pred0 x1, pred1 x3
    assert meter.state()["confusion"].tolist() == [[2, 1, 0], [1, 3, 0], [0, 0, 0]]
    result = meter.compute()
    iou0, iou1 = 2 / (3 + 3 - 2), 3 / (4 + 4 - 3)  # 0.5, 0.6
    assert result["iou_per_class"][:2] == pytest.approx([100 * iou0, 100 * iou1])
    assert math.isnan(result["iou_per_class"][2])
    assert result["miou"] == pytest.approx(100 * (iou0 + iou1) / 2)  # absent class excluded
    assert result["miou_all"] == pytest.approx(100 * (iou0 + iou1) / 3)  # absent class counts 0
    assert result["pixel_acc"] == pytest.approx(100 * 5 / 7)


def test_class_predicted_but_absent_from_gt_has_zero_iou():
    meter = SemsegMeter(3)
    meter.update(torch.tensor([[2, 1]]), torch.tensor([[0, 1]]))
    result = meter.compute()
    assert result["iou_per_class"] == pytest.approx([0.0, 100.0, 0.0])
    assert result["miou"] == pytest.approx(100 / 3) and result["miou_all"] == pytest.approx(100 / 3)


def test_logits_equal_labels_and_first_index_on_ties():
    logits = torch.nn.functional.one_hot(PRED.clamp(max=2), 3).permute(2, 0, 1).float() * 5.0
    by_logits, by_labels = SemsegMeter(3), SemsegMeter(3)
    by_logits.update(logits, TARGET)  # (C,H,W)
    by_labels.update(PRED, TARGET)
    assert torch.equal(by_logits.state()["confusion"], by_labels.state()["confusion"])
    tie = SemsegMeter(3)
    tie.update(torch.zeros(1, 3, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long))  # all equal -> class 0
    assert tie.compute()["pixel_acc"] == 100.0


@pytest.mark.parametrize("values", ["distinct", "ties", "signed_zeros", "many_classes"])
def test_first_argmax_equals_torch_argmax(values):
    generator = torch.Generator().manual_seed(1)
    if values == "distinct":
        logits = torch.randn(3, 7, 5, 6, generator=generator, dtype=torch.float64)
    elif values == "ties":  # few levels: most pixels tie between several classes, the first must win
        logits = torch.randint(0, 3, (3, 7, 5, 6), generator=generator).float()
    elif values == "signed_zeros":  # -0.0 and 0.0 are equal maxima: the first class must win
        logits = -torch.randint(0, 2, (3, 7, 5, 6), generator=generator).float()
        logits[torch.rand(logits.shape, generator=generator) < 0.5] = -0.0
    else:  # more classes than the uint8 weights hold: the Tensor.max fallback
        logits = torch.randint(0, 5, (2, 300, 3, 4), generator=generator).float()
    expected = logits.argmax(dim=1)
    assert torch.equal(first_argmax(logits), expected)
    assert torch.equal(first_argmax(logits.contiguous(memory_format=torch.channels_last)), expected)
    one_class = logits[:, :1].contiguous()
    assert torch.equal(first_argmax(one_class), torch.zeros_like(expected))


def test_batch_split_order_dtype_and_layout_invariance():
    torch.manual_seed(0)
    logits = torch.randn(6, 5, 7, 9)
    target = torch.randint(0, 5, (6, 7, 9))
    target[0, :2] = 255
    reference = SemsegMeter(5)
    reference.update(logits, target)
    other = SemsegMeter(5)
    order = torch.tensor([4, 1, 5, 0, 3, 2])
    channels_last = logits[order].contiguous(memory_format=torch.channels_last)
    other.update(channels_last[:2].double(), target[order][:2].int())
    other.update(channels_last[2:5], target[order][2:5].to(torch.uint8))
    other.update(channels_last[5], target[order][5])
    assert torch.equal(other.state()["confusion"], reference.state()["confusion"])
    assert other.compute() == reference.compute()


def test_merge_and_reset():
    first, second, whole = SemsegMeter(3), SemsegMeter(3), SemsegMeter(3)
    first.update(PRED[:1], TARGET[:1])
    second.update(PRED[1:], TARGET[1:])
    whole.update(PRED, TARGET)
    first.merge(second.state())
    assert torch.equal(first.state()["confusion"], whole.state()["confusion"])
    assert first.compute()["miou"] == whole.compute()["miou"]
    first.reset()
    with pytest.raises(ValueError, match="SemsegMeter: no labelled pixel"):
        first.compute()


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (
            torch.full((1, 3, 2, 2), float("nan")),
            torch.zeros(1, 2, 2, dtype=torch.long),
            "prediction contains",
        ),
        (torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), "C=3"),
        (torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long), "target is"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7), r"label\(s\) \[7\]"),
        (torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long), "predicted labels"),
        (torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2), "integer label map"),
    ],
)
def test_bad_input_raises_naming_the_meter(pred, target, message):
    with pytest.raises(ValueError, match=f"SemsegMeter: .*{message}"):
        SemsegMeter(3).update(pred, target)


def test_all_ignored_image_is_harmless_and_bad_settings_raise():
    meter = SemsegMeter(3)
    meter.update(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 255))
    with pytest.raises(ValueError, match="no labelled pixel"):
        meter.compute()
    meter.update(PRED, TARGET)
    assert meter.compute()["pixel_acc"] == pytest.approx(100 * 5 / 7)
    with pytest.raises(ValueError, match="collides"):
        SemsegMeter(300)
    with pytest.raises(ValueError, match="positive int"):
        SemsegMeter(0)


def test_finite_check_is_exact_when_the_sum_overflows():
    # huge but finite logits overflow a float32 sum: not an error; one -inf among them is
    logits = torch.full((1, 3, 4, 4), 3e38)
    logits[0, 1, 0, 0] = 3.4e38
    meter = SemsegMeter(3)
    meter.update(logits, torch.zeros(1, 4, 4, dtype=torch.long))
    assert meter.state()["confusion"][0, 1] == 1
    logits[0, 2, 1, 1] = float("-inf")
    with pytest.raises(ValueError, match="SemsegMeter: prediction contains 1 NaN/inf"):
        meter.update(logits, torch.zeros(1, 4, 4, dtype=torch.long))
