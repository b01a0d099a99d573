"""PolyMaX model: output contract, k-means update, gradient flow, cluster maps, options, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from densepred.losses import create_criterion
from densepred.models import create_model
from densepred.models.backbones import create_backbone
from densepred.models.polymax import cluster_maps
from densepred.models.polymax import model as polymax_model
from densepred.models.polymax.pixel_decoder import AxialAttention, PixelDecoder
from densepred.models.polymax.transformer_decoder import kmeans_update

TINY = {"backbone": "test_convnext", "num_classes": 5, "width_mult": 1 / 16}
TASKS = ("semseg", "depth", "normals")


def _tiny(task: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return create_model("polymax", task=task, **{**TINY, **kwargs})


def _batch(b: int = 2, h: int = 64, w: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    semseg = torch.randint(0, 5, (b, h, w), generator=g)
    semseg[:, :3] = 255
    depth = 0.5 + 4 * torch.rand(b, 1, h, w, generator=g)
    depth[..., :2, :] = 0
    normals = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    return {
        "image": torch.rand(b, 3, h, w, generator=g),
        "semseg": semseg,
        "depth": depth,
        "normals": normals,
    }


def _check_prediction(
    task: str, pred: torch.Tensor, b: int, h: int, w: int, num_classes: int, max_depth: float
):
    assert torch.isfinite(pred).all()
    if task == "semseg":
        assert pred.shape == (b, num_classes, h, w)
    elif task == "depth":
        assert pred.shape == (b, 1, h, w)
        assert pred.min() > 0 and pred.max() <= max_depth
    else:
        assert pred.shape == (b, 3, h, w)
        assert torch.allclose(pred.norm(dim=1), torch.ones(b, h, w), atol=1e-4)


# ----------------------------------------------------------------------------- output contract
@pytest.mark.parametrize(
    ("backbone", "img_size"),
    [("resnet50", None), ("convnext_tiny", None), ("swin_tiny_patch4_window7_224", (64, 64))],
)
def test_shapes_and_ranges_on_paper_backbones(backbone, img_size, monkeypatch):
    """Each task on each paper backbone; the backbone is built once and copied into the 3 models."""
    built = create_backbone(backbone, img_size=img_size)
    monkeypatch.setattr(polymax_model, "create_backbone", lambda *args, **kwargs: copy.deepcopy(built))
    image = torch.rand(2, 3, 64, 64)
    for task in TASKS:
        torch.manual_seed(0)
        model = create_model(
            "polymax", task=task, backbone=backbone, num_classes=40, width_mult=0.125, img_size=img_size
        )
        assert model.backbone.channels == built.channels
        model.eval()
        with torch.no_grad():
            out = model(image)
        assert set(out) == {task}
        _check_prediction(task, out[task], 2, 64, 64, 40, 10.0)


@pytest.mark.parametrize("task", TASKS)
def test_train_mode_outputs(task):
    model = _tiny(task, max_depth=4.0)
    model.train()
    out = model(torch.rand(2, 3, 64, 64))
    k = 5 if task == "semseg" else 16
    _check_prediction(task, out[task], 2, 64, 64, 5, 4.0)
    assert out["mask_logits"].shape == (2, k, 16, 16)
    assert out["pixel_embedding"].shape[-2:] == (16, 16)
    assert len(out["aux"]) == 6  # (2, 2, 2) kMaX layers
    value_shape = {"semseg": (2, k, 6), "depth": (2, k), "normals": (2, k, 3)}[task]
    assert out["cluster_values"].shape == value_shape
    assert ("aux_semantic" in out) == (task == "semseg")
    for aux in out["aux"]:
        if task == "semseg":
            assert aux["mask_logits"].shape == (2, k, 16, 16)
        else:
            _check_prediction(task, aux[task], 2, 64, 64, 5, 4.0)


@pytest.mark.parametrize("task", TASKS)
def test_eval_prediction_does_not_depend_on_other_images(task):
    model = _tiny(task).eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        together = model(images)[task]
        alone = model(images[1:2])[task]
    assert torch.allclose(together[1:2], alone, atol=1e-5)


def test_same_seed_same_outputs():
    image = torch.rand(1, 3, 64, 64)
    a = _tiny("depth", seed=3).eval()(image)["depth"]
    b = _tiny("depth", seed=3).eval()(image)["depth"]
    assert torch.equal(a, b)


@pytest.mark.parametrize("layers", [(1,), (1, 1), (3, 0, 1)])
def test_decoder_scales_and_depth(layers):
    model = _tiny("normals", decoder_layers=layers, num_clusters=4).train()
    out = model(torch.rand(2, 3, 64, 64))
    assert len(out["aux"]) == sum(layers)
    assert out["cluster_values"].shape == (2, 4, 3)


# ------------------------------------------------------------------------------- k-means update
def test_kmeans_update_equals_explicit_per_cluster_sum():
    g = torch.Generator().manual_seed(0)
    b, k, n, c = 2, 4, 30, 5
    logits = torch.randn(b, k, n, generator=g)
    values = torch.randn(b, n, c, generator=g)
    got = kmeans_update(logits, values)
    expected = torch.zeros(b, k, c)
    for bi in range(b):
        for pixel in range(n):
            cluster = int(torch.argmax(logits[bi, :, pixel]))
            expected[bi, cluster] += values[bi, pixel]
    assert torch.allclose(got, expected, atol=1e-5)
    # An empty cluster receives exactly zero (a sum, not a mean).
    logits[:, 0] = -1e9
    assert torch.all(kmeans_update(logits, values)[:, 0] == 0)


def test_no_gradient_through_hard_assignment():
    logits = torch.randn(1, 3, 10, requires_grad=True)
    values = torch.randn(1, 10, 4, requires_grad=True)
    kmeans_update(logits, values).sum().backward()
    assert logits.grad is None
    assert values.grad is not None and values.grad.abs().sum() > 0


def _enable_residual_branches(model: torch.nn.Module) -> None:
    """Set zero-initialised BN gammas to 1 so that gradients reach the layers before them."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            with torch.no_grad():
                m.weight.add_(torch.where(m.weight == 0, 1.0, 0.0))


def test_kmax_layer_query_update_has_no_gradient_into_its_predictor():
    model = _tiny("depth")
    _enable_residual_branches(model)
    model.train()
    layer = model.transformer_decoder.layers[0]
    pixels = torch.randn(2, model.pixel_decoder.out_channels[0], 4, 4)
    queries = torch.randn(2, 16, layer.query_proj.linear.in_features, requires_grad=True)
    new_queries, _ = layer(pixels, queries)
    new_queries.square().sum().backward()
    # The predictor only feeds the argmax assignment, so the query path gives it no gradient ...
    assert all(p.grad is None for p in layer.predictor.parameters())
    # ... while the k-means values (pixel features) are reached.
    assert layer.pixel_value.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("task", TASKS)
def test_gradients_reach_every_parameter(task):
    model = _tiny(task)
    _enable_residual_branches(model)
    model.train()
    batch = _batch()
    criterion = create_criterion("polymax", tasks=[task], dataset="nyud", num_classes=5)
    criterion(model(batch["image"]), batch)["total"].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    # The temperature's bias adds one constant to every mask logit, and the mask logits enter the
    # losses only through a softmax over the clusters, which a constant shift leaves unchanged: its
    # gradient is zero in exact arithmetic, and what float32 leaves of it depends on the CPU.
    inert = {n for n, _ in model.named_parameters() if n.endswith("predictor.temperature.bn.bias")}
    missing = [n for n, p in model.named_parameters() if n not in inert and p.grad.abs().sum() == 0]
    assert missing == []


def test_autocast_keeps_islands_and_losses_in_fp32():
    model = _tiny("depth").train()
    batch = _batch()
    criterion = create_criterion("polymax", tasks=["depth"], dataset="nyud")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch["image"])
        losses = criterion(out, batch)
    assert out["depth"].dtype == torch.float32
    assert out["mask_logits"].dtype == torch.float32
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    losses["total"].backward()


# --------------------------------------------------------------------------------- cluster maps
@pytest.mark.parametrize("task", TASKS)
def test_cluster_maps_recombine_to_the_prediction(task):
    model = _tiny(task).train()
    image = torch.rand(2, 3, 64, 64)
    maps = cluster_maps(model, image)
    assert model.training  # mode restored
    probs, values = maps["probs"], maps["values"]
    k = 5 if task == "semseg" else 16
    assert probs.shape == (2, k, 64, 64)
    assert torch.allclose(probs.sum(1), torch.ones(2, 64, 64), atol=1e-5)
    model.eval()
    with torch.no_grad():
        pred = model(image)[task]
    if task == "depth":
        assert values.shape == (2, k)
        assert torch.allclose(torch.einsum("bkhw,bk->bhw", probs, values)[:, None], pred, atol=1e-4)
    elif task == "normals":
        assert values.shape == (2, k, 3)
        combined = F.normalize(torch.einsum("bkhw,bkc->bchw", probs, values), dim=1)
        assert torch.allclose(combined, pred, atol=1e-4)
    else:
        assert values.shape == (2, k, 6)
        assert torch.allclose(values.sum(-1), torch.ones(2, k), atol=1e-5)
        captured = {}
        model.predictor.register_forward_hook(lambda mod, args, out: captured.update(out))
        with torch.no_grad():
            pred = model(image)[task]
        logits = captured["mask_logits"]
        resize = dict(size=(64, 64), mode="bilinear", align_corners=False)
        assert torch.allclose(pred, F.interpolate(logits, **resize), atol=1e-5)
        assert torch.allclose(probs, F.interpolate(torch.softmax(logits, 1), **resize), atol=1e-5)


# ----------------------------------------------------------------------------------- building
def test_pixel_decoder_channels_at_width_one():
    decoder = PixelDecoder([256, 512, 1024, 2048], depths=(1, 1, 1, 1)).eval()
    feats = [torch.randn(1, c, 64 // s, 64 // s) for c, s in zip([256, 512, 1024, 2048], [4, 8, 16, 32])]
    with torch.no_grad():
        out = decoder(feats)
    assert [o.shape[1] for o in out] == [2048, 1024, 512, 256]
    assert [o.shape[-1] for o in out] == [2, 4, 8, 16]


def test_axial_attention_matches_explicit_loops():
    """Eval-mode axial attention (fresh BN = scaling by 1/sqrt(1+eps)) against a loop reference."""
    torch.manual_seed(0)
    attn = AxialAttention(4, key_channels=4, value_channels=8, num_heads=2, max_span=6).eval()
    x = torch.randn(1, 4, 5)
    with torch.no_grad():
        got = attn(x)
        s = (1 + 1e-3) ** -0.5
        qkv = attn.qkv(x)[0] * s
        q, k, v = qkv[:4].reshape(2, 2, 5), qkv[4:8].reshape(2, 2, 5), qkv[8:].reshape(2, 4, 5)
        expected = torch.zeros(8, 5)
        for h in range(2):
            for o in range(5):
                logits = torch.zeros(5)
                for p in range(5):
                    r = p - o + 5
                    logits[p] = s * (
                        q[h, :, o] @ k[h, :, p]
                        + q[h, :, o] @ attn.rpe_query[r]
                        + k[h, :, p] @ attn.rpe_key[r]
                    )
                w = torch.softmax(logits, 0)
                for p in range(5):
                    expected[4 * h : 4 * h + 4, o] += s * w[p] * (v[h, :, p] + attn.rpe_value[p - o + 5])
    assert torch.allclose(got[0], expected, atol=1e-4)


def test_axial_attention_rejects_long_axis():
    attn = AxialAttention(8, 8, 16, num_heads=8, max_span=4)
    with pytest.raises(ValueError, match="max_span"):
        attn(torch.randn(1, 8, 5))


def test_width_mult_scales_parameters():
    small = sum(p.numel() for p in _tiny("depth", width_mult=1 / 16).parameters())
    larger = sum(p.numel() for p in _tiny("depth", width_mult=1 / 4).parameters())
    assert larger > 4 * small


def test_no_weight_decay_names():
    names = _tiny("depth").no_weight_decay()
    assert "transformer_decoder.cluster_centers" in names
    assert any(".rpe_query" in n for n in names)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "edge"}, "task must be one of"),
        ({"task": "semseg", "num_clusters": 7}, "K = num_classes"),
        ({"task": "depth", "num_clusters": 0}, "num_clusters must be >= 1"),
        ({"task": "depth", "decoder_layers": (1, 1, 1, 1)}, "decoder_layers"),
        ({"task": "depth", "pixel_decoder_depths": (1, 1, 1)}, "4 backbone channels"),
        ({"task": "depth", "width_mult": 0.0}, "width_mult"),
        ({"task": "depth", "input_norm": "none"}, "input_norm"),
        ({"task": "depth", "depth_activation": "relu"}, "depth_activation"),
        ({"task": "depth", "aux_semantic_head": True}, "only available for task 'semseg'"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("polymax", **{**TINY, **kwargs})


def test_bad_image_raises():
    model = _tiny("depth")
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        model(torch.rand(2, 1, 64, 64))


def test_options_semseg_inference_and_input_norm():
    image = torch.rand(1, 3, 64, 64)
    model = _tiny("semseg", semseg_inference="mask_x_class", input_norm="imagenet").eval()
    with torch.no_grad():
        logits = model(image)["semseg"]
    # log of a mixture of class probabilities: exp sums to at most 1 over classes.
    assert logits.shape == (1, 5, 64, 64)
    assert torch.all(logits.exp().sum(1) <= 1 + 1e-4)


@pytest.mark.parametrize("activation", ["softplus", "sigmoid"])
def test_depth_init_places_the_bins_of_a_zeroed_value_head(activation):
    model = _tiny("depth", depth_activation=activation, depth_init=2.5)
    head = model.predictor.value_head
    with torch.no_grad():
        head.mlp[-1].weight.zero_()
        head.mlp[-1].bias.zero_()
        bins = head(torch.randn(2, 4, head.mlp[0].in_features))
    torch.testing.assert_close(bins, torch.full_like(bins, 2.5))
