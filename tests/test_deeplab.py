"""DeepLabv3+ (PolyMaX baseline): output contract, exact ASPP/decoder sizes, widths and errors."""

from __future__ import annotations

import pytest
import torch

from densepred.models import create_model
from densepred.models.deeplab import ASPP
from densepred.models.heads import count_parameters

BACKBONE = "test_convnext"  # stage channels 24/32/48/64


def build(tasks=("semseg",), **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(tasks=list(tasks), backbone=BACKBONE, aspp_channels=16, decoder_channels=12)
    kwargs.update(overrides)
    return create_model("deeplabv3plus", **kwargs)


@pytest.mark.parametrize(("task", "channels"), [("semseg", 40), ("depth", 1), ("normals", 3), ("edge", 1)])
def test_single_task_output_contract(task, channels):
    model = build(tasks=[task]).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 36, 52))
    assert list(out) == [task]
    assert out[task].shape == (2, channels, 36, 52)
    if task == "depth":
        assert bool((out[task] > 0).all())
    if task == "normals":
        torch.testing.assert_close(out[task].norm(dim=1), torch.ones(2, 36, 52))


def test_sigmoid_depth_is_bounded_by_max_depth():
    model = build(tasks=["depth"], depth_activation="sigmoid", max_depth=3.0).eval()
    with torch.no_grad():
        model.heads["depth"].bias.fill_(50.0)
        depth = model(torch.rand(1, 3, 32, 32))["depth"]
    assert bool((depth <= 3.0).all()) and float(depth.max()) == pytest.approx(3.0)


def test_aspp_has_the_deeplab_branches_and_exact_size():
    aspp = ASPP(in_channels=10, out_channels=4, rates=[3, 6, 9], dropout=0.1)
    dilations = [b[0].dilation[0] for b in aspp.branches[1:4]]
    assert dilations == [3, 6, 9] and len(aspp.branches) == 5
    conv_bn = lambda cin, cout, k: cin * cout * k * k + 2 * cout  # noqa: E731
    expected = conv_bn(10, 4, 1) + 3 * conv_bn(10, 4, 3) + (10 * 4 + 4) + conv_bn(5 * 4, 4, 1)
    assert count_parameters(aspp) == expected
    out = aspp(torch.rand(2, 10, 5, 7))
    assert out.shape == (2, 4, 5, 7)


def test_decoder_size_matches_hand_count():
    model = build(tasks=["semseg", "depth"])
    conv_bn = lambda cin, cout, k: cin * cout * k * k + 2 * cout  # noqa: E731
    low = conv_bn(24, 48, 1)
    decoder = conv_bn(16 + 48, 12, 3) + conv_bn(12, 12, 3)
    heads = (12 * 40 + 40) + (12 * 1 + 1)
    assert count_parameters(model.low_level) == low
    assert count_parameters(model.decoder) == decoder
    assert count_parameters(model.heads) == heads


def test_width_mult_scales_every_width():
    model = build(aspp_channels=64, decoder_channels=64, width_mult=0.25)
    assert model.aspp.project[0].out_channels == 16
    assert model.decoder[-1][0].out_channels == 16
    assert model.low_level[0].out_channels == 12


def test_trains_with_one_image_per_batch():
    """Image pooling has no BatchNorm, so a batch of one can be trained (per-device batch 1) as long as
    the stride-32 map has more than one pixel (here 2 x 3)."""
    model = build().train()
    model(torch.rand(1, 3, 64, 96))["semseg"].sum().backward()
    assert model.aspp.branches[-1].conv.weight.grad is not None


@pytest.mark.parametrize("overrides", [{"aspp_rates": []}, {"aspp_channels": 0}, {"tasks": ["parts"]}])
def test_bad_options_raise_value_error(overrides):
    with pytest.raises(ValueError):
        build(**overrides)


@pytest.mark.parametrize("activation", ["softplus", "sigmoid"])
def test_depth_init_is_the_prediction_of_a_zeroed_head(activation):
    model = build(tasks=["depth"], depth_activation=activation, depth_init=3.0, max_depth=10.0).eval()
    with torch.no_grad():
        model.heads["depth"].weight.zero_()
        model.heads["depth"].bias.zero_()
        depth = model(torch.rand(1, 3, 32, 32))["depth"]
    torch.testing.assert_close(depth, torch.full_like(depth, 3.0))


def test_depth_init_outside_the_depth_range_is_rejected():
    with pytest.raises(ValueError, match="depth_init"):
        build(tasks=["depth"], depth_activation="sigmoid", depth_init=12.0, max_depth=10.0)
