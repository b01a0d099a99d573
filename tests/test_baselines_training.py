"""Training behaviour of every per-pixel model of issue 6 (MQTransformer, DeepLabv3+, multi-task and
single-task baselines) at smoke widths: gradient flow, batch independence, determinism, and a
one-batch overfit in which each task's loss falls by 90% within 300 steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from densepred.losses import create_criterion
from densepred.models import create_model

TASKS = ["semseg", "depth", "normals", "edge"]
SMOKE = {
    "mqtransformer": dict(width_mult=0.25, num_queries=8),
    "deeplabv3plus": dict(aspp_channels=32, decoder_channels=32),
    "mtl_baseline": dict(width_mult=0.25),
    "stl_baseline": dict(width_mult=0.25),
}
# Dropout and DropPath off, so that the overfit and the gradient checks are deterministic.
NO_DROPOUT = {"mqtransformer": dict(drop_path=0.0, attn_drop=0.0), "deeplabv3plus": dict(aspp_dropout=0.0)}


def model_tasks(name: str) -> list[str]:
    return ["edge"] if name == "stl_baseline" else TASKS  # edge: the hardest single task to fit


def build(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = dict(tasks=model_tasks(name), backbone="test_convnext") | SMOKE[name] | overrides
    return create_model(name, **kwargs)


def toy_batch(
    batch: int = 2, size: int = 32, num_classes: int = 40, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A fixed batch whose targets a stride-4 model can represent exactly.

    Depth and normals are bilinear upsamplings of a stride-4 grid (the models upsample the same way),
    semseg is constant on 8x8 blocks, edges are 8-pixel-wide grid lines also written into the red
    channel of the image (edges are local image evidence, as in real data).
    """
    g = torch.Generator().manual_seed(seed)
    coarse = size // 4

    def bilinear(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
        return x.repeat_interleave(factor, -2).repeat_interleave(factor, -1)

    semseg = nearest(torch.randint(0, num_classes, (batch, size // 8, size // 8), generator=g), 8)
    depth = bilinear(torch.rand(batch, 1, coarse, coarse, generator=g) * 4 + 1)
    normals = F.normalize(bilinear(torch.randn(batch, 3, coarse, coarse, generator=g)), dim=1)
    lines = torch.zeros(batch, 1, coarse, coarse)
    for i in range(batch):
        lines[i, :, 2 + i : 4 + i, :] = 1
        lines[i, :, :, 5 - i : 7 - i] = 1
    edge = nearest(lines, 4)
    image = nearest(torch.rand(batch, 3, coarse, coarse, generator=g), 4)
    image[:, :1] = edge
    return {"image": image, "semseg": semseg, "depth": depth, "normals": normals, "edge": edge}


MODELS = list(SMOKE)


@pytest.fixture(autouse=True)
def single_thread():
    """Run on one intra-op thread, restored afterwards: at 32x32 smoke sizes extra threads only add
    synchronisation, and on a loaded 2-core machine they make the overfit tests ~10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_receives_a_finite_gradient(name):
    model = build(name, **NO_DROPOUT.get(name, {})).train()
    tasks = model_tasks(name)
    batch = toy_batch()
    losses = create_criterion(name, tasks=tasks, dataset="nyud")(model(batch["image"]), batch)
    losses["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, missing
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_prediction_does_not_depend_on_other_images_in_the_batch(name):
    model = build(name).eval()
    images = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        together = model(images)
        alone = [model(images[i : i + 1]) for i in range(2)]
    for task, pred in together.items():
        torch.testing.assert_close(pred, torch.cat([a[task] for a in alone]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_gives_the_same_model_and_output(name):
    image = torch.rand(1, 3, 32, 32)
    outs = []
    for _ in range(2):
        model = build(name, seed=3).eval()
        with torch.no_grad():
            outs.append(model(image))
    for task in outs[0]:
        assert torch.equal(outs[0][task], outs[1][task])


@pytest.mark.parametrize("name", MODELS)
def test_one_batch_overfit(name):
    """Adam (lr 1e-2) on one fixed batch: every task's loss reaches 10% of its start within 300 steps.

    About 110-170 steps are needed (2-5 s of CPU time each model, single-threaded).
    """
    torch.manual_seed(0)
    model = build(name, **NO_DROPOUT.get(name, {})).train()
    criterion = create_criterion(name, tasks=model_tasks(name), dataset="nyud")
    batch = toy_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first, best = None, None
    for _ in range(300):
        losses = criterion(model(batch["image"]), batch)
        values = {k: v.item() for k, v in losses.items() if k != "total"}
        first = first or values
        best = {k: min(v, best[k]) if best else v for k, v in values.items()}
        if all(best[k] <= 0.1 * first[k] for k in first):
            break
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
    ratios = {k: round(best[k] / first[k], 3) for k in first}
    assert all(r <= 0.1 for r in ratios.values()), ratios
