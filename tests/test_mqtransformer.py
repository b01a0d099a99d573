"""MQTransformer: output contract, exact parameter counts of every ablation switch, fusion equivalence,
cross-task attention wiring, multi-scale keys, option errors, and the paper's Table II sizes."""

from __future__ import annotations

import math

import pytest
import torch

from densepred.models import create_model
from densepred.models.heads import AddFusion, ConcatFusion, count_parameters
from densepred.models.mqtransformer import sine_position_encoding

TASKS = ["semseg", "depth", "normals", "edge"]
BACKBONE = "test_convnext"  # timm test model, stage channels 24/32/48/64
SUM_CHANNELS = 24 + 32 + 48 + 64
C = 32  # smoke width used below
HIDDEN = 8


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread, restored afterwards: smoke-size tensors gain nothing from more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(tasks=TASKS, backbone=BACKBONE, embed_dim=C, head_channels=HIDDEN, num_queries=8)
    kwargs.update(overrides)
    return create_model("mqtransformer", **kwargs)


# Hand-derived parameter counts of the building blocks (width C), see the layer docstrings.
def attention_params(c: int) -> int:
    return 3 * 2 * c + 3 * c * c + c * c + c  # 3 LayerNorms, bias-free q/k/v, biased output projection


def mlp_params(c: int, hidden: int) -> int:
    return 2 * c + c * hidden + hidden + hidden * c + c


def encoder_params(c: int, query_learning: bool = True) -> int:
    ql = 2 * c + c * c + mlp_params(c, c)  # LN + bias-free linear (Eq. 3), LN-MLP (Eq. 4)
    return attention_params(c) + (ql if query_learning else 0)


def ctqa_params(c: int) -> int:
    return 4 * c * c + 4 * c + mlp_params(c, c)  # nn.MultiheadAttention + MLP


def decoder_params(c: int, mixing: str = "linear") -> int:
    mix = 2 * (c * c + c) if mixing == "linear" else 4 * c * c + 4 * c
    return attention_params(c) + 2 * mlp_params(c, 3 * c) + mix


def head_params(c: int, hidden: int, out: int) -> int:
    return 9 * c * hidden + 2 * hidden + hidden * out + out


def expected_head_total(
    k: int = 8,
    fusion: str = "add",
    factors: tuple[int, ...] = (4,),
    shared: bool = True,
    enc: int = 1,
    dec: int = 1,
    ql: bool = True,
    ctqa: bool = True,
    classes: int = 40,
) -> int:
    t = len(TASKS)
    fusion_p = C * SUM_CHANNELS + (4 * C if fusion == "add" else C)
    copies = 1 if shared else t
    total = t * fusion_p + sum(C * C * f * f + C + 2 * C for f in factors) + t * 3 * k * C
    total += copies * (enc * encoder_params(C, ql) + dec * decoder_params(C))
    total += ctqa_params(C) if ctqa else 0
    outs = {"semseg": classes, "depth": 1, "normals": 3, "edge": 1}
    return total + sum(head_params(C, HIDDEN, outs[task]) for task in TASKS)


def non_backbone_params(model: torch.nn.Module) -> int:
    return count_parameters(model) - count_parameters(model.backbone)


def test_output_contract_at_any_input_size():
    model = build().eval()
    image = torch.rand(2, 3, 40, 56)  # not a multiple of 32
    with torch.no_grad():
        out = model(image)
    assert sorted(out) == sorted(TASKS)
    assert out["semseg"].shape == (2, 40, 40, 56)
    assert out["depth"].shape == (2, 1, 40, 56) and bool((out["depth"] > 0).all())
    assert out["normals"].shape == (2, 3, 40, 56)
    torch.testing.assert_close(out["normals"].norm(dim=1), torch.ones(2, 40, 56))
    assert out["edge"].shape == (2, 1, 40, 56)
    model.train()
    assert sorted(model(image)) == sorted(TASKS)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, {}),
        ({"fusion": "concat"}, {"fusion": "concat"}),
        ({"num_queries": 16}, {"k": 16}),
        ({"query_learning": False}, {"ql": False}),
        ({"cross_task_attention": False}, {"ctqa": False}),
        ({"query_learning": False, "cross_task_attention": False}, {"ql": False, "ctqa": False}),
        ({"shared": False}, {"shared": False}),
        ({"encoder_depth": 2, "decoder_depth": 4}, {"enc": 2, "dec": 4}),
        ({"num_scales": 1}, {"factors": ()}),
        ({"num_scales": 4}, {"factors": (2, 4, 8)}),
        ({"num_scales": 2, "scale_factors": [2]}, {"factors": (2,)}),
        ({"num_classes": 17}, {"classes": 17}),
    ],
)
def test_parameter_count_matches_hand_count(overrides, expected):
    """Every ablation switch adds or removes exactly the parameters of the part it describes."""
    assert non_backbone_params(build(**overrides)) == expected_head_total(**expected)


def test_ablation_switches_remove_modules():
    full = build()
    assert full.ctqa is not None and hasattr(full.encoders["shared"][0], "mlp")
    assert build(cross_task_attention=False).ctqa is None
    assert not hasattr(build(query_learning=False).encoders["shared"][0], "mlp")
    assert sorted(build(shared=False).encoders) == sorted(TASKS)
    assert len(build(encoder_depth=3).encoders["shared"]) == 3


def test_cross_task_attention_connects_tasks():
    """With CTQA a task's prediction depends on another task's queries; without it, it does not."""
    image = torch.rand(1, 3, 32, 32)
    for ctqa, coupled in ((True, True), (False, False)):
        model = build(cross_task_attention=ctqa).eval()
        with torch.no_grad():
            before = model(image)["depth"]
            model.queries["semseg"].add_(1.0)
            after = model(image)["depth"]
        assert (not torch.allclose(before, after, atol=1e-6)) == coupled


def test_each_ablation_variant_runs_and_changes_outputs():
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        reference = build().eval()(image)["semseg"]
    variants = [
        {"query_learning": False},
        {"cross_task_attention": False},
        {"shared": False},
        {"num_scales": 1},
        {"num_scales": 4},
        {"encoder_depth": 2, "decoder_depth": 2},
        {"decoder_mixing": "attention"},
        {"pixel_pos": "none"},
    ]
    for overrides in variants:
        model = build(**overrides).eval()
        with torch.no_grad():
            out = model(image)["semseg"]
        assert out.shape == reference.shape and bool(torch.isfinite(out).all()), overrides
        if overrides != {"shared": False}:  # non-shared draws the same first weights in a new order
            assert not torch.allclose(out, reference), overrides


@pytest.mark.parametrize(("num_scales", "extra_tokens"), [(1, 0), (2, 2 * 2), (4, 4 * 4 + 2 * 2 + 1 * 1)])
def test_encoder_keys_cover_all_scales(num_scales, extra_tokens):
    """The shared encoder attends to the stride-4 task feature plus its down-sampled copies."""
    model = build(num_scales=num_scales).eval()
    seen = []
    hook = model.encoders["shared"][0].attn.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))  # stride-4 feature: 8 x 8 tokens
    hook.remove()
    assert [k.shape[1] for k in seen] == [64 + extra_tokens] * len(TASKS)


def test_add_fusion_equals_concat_fusion_with_split_weights():
    """Bilinear upsampling commutes with 1x1 convs, so 'add' and 'concat' span the same functions."""
    torch.manual_seed(0)
    channels = [3, 5, 7, 11]
    features = [torch.randn(2, c, 16 // 2**i, 12 // 2**i) for i, c in enumerate(channels)]
    concat, add = ConcatFusion(channels, 6), AddFusion(channels, 6)
    with torch.no_grad():
        weights = concat.proj.weight.split(channels, dim=1)
        for proj, weight in zip(add.proj, weights, strict=True):
            proj.weight.copy_(weight)
            proj.bias.copy_(concat.proj.bias / len(channels))
        torch.testing.assert_close(add(features), concat(features), atol=1e-5, rtol=1e-5)


def test_sine_position_encoding_values():
    enc = sine_position_encoding(2, 3, 8, torch.zeros(()))
    assert enc.shape == (6, 8)
    # token (row 1, col 2): y = 1.5/2 * 2pi, x = 2.5/3 * 2pi; channel 0 = sin(y), channel 4 = sin(x).
    y, x = 1.5 / 2 * 2 * math.pi, 2.5 / 3 * 2 * math.pi
    assert enc[5, 0].item() == pytest.approx(math.sin(y), abs=1e-6)
    assert enc[5, 2].item() == pytest.approx(math.cos(y), abs=1e-6)
    assert enc[5, 4].item() == pytest.approx(math.sin(x), abs=1e-6)
    assert enc[5, 1].item() == pytest.approx(math.sin(y / 100.0), abs=1e-6)  # freq 10000^(1/2)
    assert len({tuple(row.tolist()) for row in enc}) == 6  # every position is distinct


def test_freeze_queries_keeps_them_out_of_training():
    model = build(freeze_queries=True)
    assert not any(p.requires_grad for p in model.queries.values())
    assert all(p.requires_grad for p in model.query_pos.values())


def test_default_width_is_the_released_256_and_width_mult_scales_it():
    assert create_model("mqtransformer", tasks=["depth"], backbone=BACKBONE).embed_dim == 256
    assert create_model("mqtransformer", tasks=["depth"], backbone=BACKBONE, width_mult=0.25).embed_dim == 64


@pytest.mark.parametrize(
    "overrides",
    [
        {"fusion": "sum"},
        {"num_scales": 5},
        {"num_queries": 0},
        {"encoder_depth": 0},
        {"embed_dim": 30},
        {"decoder_mixing": "batch"},
        {"pixel_pos": "learned"},
        {"scale_factors": [2, 4]},
        {"tasks": []},
        {"tasks": ["semseg", "semseg"]},
        {"tasks": ["saliency"]},
        {"depth_activation": "relu"},
        {"width_mult": 0.0, "embed_dim": None},
    ],
)
def test_bad_options_raise_value_error(overrides):
    with pytest.raises(ValueError):
        build(**overrides)


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="expects images"):
        build()(torch.rand(1, 1, 32, 32))


PAPER_PARAMS_M = {  # MQTransformer Table II, 4 NYUD-v2 tasks
    "swin_tiny_patch4_window7_224": 35.35,
    "swin_small_patch4_window7_224": 56.67,
    "swin_large_patch4_window7_224": 204.3,
}


@pytest.mark.parametrize(
    "backbone",
    [
        "swin_tiny_patch4_window7_224",
        "swin_small_patch4_window7_224",
        "swin_large_patch4_window7_224",
    ],
)
def test_full_width_parameter_count_within_8_percent_of_table_ii(backbone):
    with torch.device("meta"):  # counts need no memory or init time
        model = create_model("mqtransformer", tasks=TASKS, backbone=backbone, img_size=(448, 576))
    params_m = count_parameters(model) / 1e6
    assert abs(params_m / PAPER_PARAMS_M[backbone] - 1) < 0.08, params_m


@pytest.mark.parametrize(
    "overrides", [{"decoder_mixing": "attention"}, {"shared": False, "num_scales": 4, "fusion": "concat"}]
)
def test_variants_keep_images_independent(overrides):
    """Unlike the released decoder (attention over the batch axis), no variant mixes images."""
    model = build(**overrides).eval()
    images = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        together = model(images)
        alone = [model(images[i : i + 1]) for i in range(2)]
    for task, pred in together.items():
        torch.testing.assert_close(pred, torch.cat([a[task] for a in alone]), atol=1e-5, rtol=1e-4)


def test_swin_backbone_takes_frames_of_another_size():
    """The paper profile builds Swin for its 448x576 training crops and evaluates whole 480x640 frames
    (the official release): the backbone accepts them, and at its built size computes what a strictly
    sized Swin computes (shown here at a small size)."""
    import timm

    from densepred.models.backbones import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("swin_tiny_patch4_window7_224", img_size=(64, 96)).eval()
    strict = timm.create_model("swin_tiny_patch4_window7_224", features_only=True, img_size=(64, 96))
    strict.load_state_dict(backbone.body.state_dict())
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ours, theirs = backbone(images), strict.eval()(images)
        larger = backbone(torch.rand(1, 3, 96, 128))
    for mine, ref in zip(ours, theirs):
        torch.testing.assert_close(mine, ref.permute(0, 3, 1, 2))
    assert [tuple(f.shape[-2:]) for f in larger] == [(24, 32), (12, 16), (6, 8), (3, 4)]
    with pytest.raises(AssertionError, match="doesn't match model"):
        strict(torch.rand(1, 3, 96, 128))
