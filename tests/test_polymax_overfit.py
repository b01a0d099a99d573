"""One-batch overfit at smoke widths: each task's PolyMaX loss falls by 90% within 300 steps on CPU.

The synthetic batch is built so that every decoder stride can represent it (the 64x64 images give a
2x2 map at stride 32, which the deep-supervision outputs must fit too): semantic labels are 32x32
blocks, depth is a smooth ramp, normals are constant per block. The full default criterion is used
(NYUD losses, deep supervision on every kMaX layer); Adam at lr 1e-2.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from densepred.losses import create_criterion
from densepred.models import create_model

MAX_STEPS = 300


@pytest.fixture
def one_thread():
    """Tiny tensors train faster on one thread (and do not fight other processes for cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _batch() -> dict:
    g = torch.Generator().manual_seed(0)
    h = w = 64
    blocks = torch.tensor([[[0, 1], [2, 3]], [[4, 2], [1, 0]]])
    semseg = blocks.repeat_interleave(32, 1).repeat_interleave(32, 2).clone()
    semseg[:, :4, :4] = 255
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ramp = 1.0 + 3.0 * yy / h + xx / w
    depth = torch.stack([ramp, ramp.flip(-1) + 0.5])[:, None].float()
    depth[..., :5, :5] = 0  # missing depth
    directions = F.normalize(torch.randn(5, 3, generator=g), dim=1)
    normals = directions[semseg.clamp(max=4)].permute(0, 3, 1, 2).contiguous()
    normals[..., :4, :4] = 0  # missing normals
    image = torch.rand(2, 3, h, w, generator=g)
    return {"image": image, "semseg": semseg, "depth": depth, "normals": normals}


@pytest.mark.parametrize("task", ["depth", "normals", pytest.param("semseg", marks=pytest.mark.slow)])
def test_one_batch_overfit(task, one_thread):
    torch.manual_seed(0)
    model = create_model("polymax", task=task, backbone="test_convnext", num_classes=5, width_mult=1 / 16)
    criterion = create_criterion("polymax", tasks=[task], dataset="nyud", num_classes=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = _batch()
    model.train()
    first = None
    history = []
    for _ in range(MAX_STEPS):
        loss = criterion(model(batch["image"]), batch)["total"]
        assert torch.isfinite(loss)
        first = loss.item() if first is None else first
        history.append(loss.item())
        if loss.item() <= 0.1 * first:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert history[-1] <= 0.1 * first, (
        f"{task}: loss {first:.3f} -> {history[-1]:.3f} in {len(history)} steps"
    )
