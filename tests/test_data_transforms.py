"""Joint transforms: geometry stays consistent across tasks; padding uses the ignore values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_fixtures import angles_deg, normals_from_depth, planar_interior, render_view
from densepred.data.labels import label_boundaries
from densepred.data.transforms import (
    IMAGENET_MEAN,
    EvalTransform,
    TrainTransform,
    collate,
    hflip,
    photometric_jitter,
    unpad,
    window,
)


@pytest.fixture(scope="module")
def view() -> dict:
    return render_view(7, height=48, width=64)


@pytest.fixture
def sample(view) -> dict:
    valid = ~view["no_depth"]
    return {
        "id": "x",
        "image": torch.from_numpy(view["rgb"].transpose(2, 0, 1) / np.float32(255)),
        "semseg": torch.from_numpy(view["nyu40"].astype(np.int64) - 1).where(
            torch.from_numpy(view["nyu40"] > 0), torch.tensor(255)
        ),
        "depth": torch.from_numpy(np.where(valid, view["depth"], 0)[None].astype(np.float32)),
        "normals": torch.from_numpy(view["normals"].transpose(2, 0, 1).copy()),
        "edge": torch.from_numpy(label_boundaries(view["nyu40"])[None].astype(np.float32)),
    }


def test_hflip_negates_normal_x_consistently_with_geometry(view, sample):
    flipped = hflip(sample)
    torch.testing.assert_close(hflip(flipped)["normals"], sample["normals"])
    # Mirrored camera: principal point mirrors too; FD normals of the flipped depth must match.
    K = view["K"].copy()
    K[0, 2] = view["depth"].shape[1] - 1 - K[0, 2]
    derived = normals_from_depth(flipped["depth"][0].numpy().astype(np.float64), K)
    interior = planar_interior({"object": view["object"][:, ::-1], "normals": view["normals"][:, ::-1]})
    interior &= flipped["depth"][0].numpy() > 0
    errors = angles_deg(derived[interior], flipped["normals"].numpy().transpose(1, 2, 0)[interior])
    assert np.median(errors) < 1.0
    assert torch.equal(flipped["semseg"], sample["semseg"].flip(-1))


def test_window_pads_with_ignore_values(sample):
    out = window(sample, -4, -6, (56, 80))
    assert out["image"].shape == (3, 56, 80) and out["semseg"].shape == (56, 80)
    assert (out["semseg"][:4] == 255).all() and (out["semseg"][:, :6] == 255).all()
    assert (out["depth"][:, :4] == 0).all() and (out["normals"][:, :, :6] == 0).all()
    assert (out["edge"][:, -4:] == 0).all()
    torch.testing.assert_close(out["image"][:, 0, 0], torch.tensor(IMAGENET_MEAN))
    torch.testing.assert_close(out["depth"][:, 4:52, 6:70], sample["depth"])


def test_train_transform_is_a_function_of_the_rng(sample):
    transform = TrainTransform((40, 40))
    a = transform(sample, np.random.default_rng(3))
    b = transform(sample, np.random.default_rng(3))
    c = transform(sample, np.random.default_rng(4))
    for key in ("image", "semseg", "depth", "normals", "edge"):
        assert torch.equal(a[key], b[key])
        assert a[key].shape[-2:] == (40, 40)
    assert not torch.equal(a["image"], c["image"])
    assert a["semseg"].dtype == torch.int64 and a["id"] == "x"


def test_scale_keeps_or_divides_metric_depth(sample):
    source = set(np.unique(sample["depth"].numpy()).tolist())
    kept = TrainTransform((32, 32), scale=(1.7, 1.7), flip=False, jitter=False)(
        sample, np.random.default_rng(0)
    )
    assert set(np.unique(kept["depth"].numpy()).tolist()) <= source  # nearest, metres unchanged
    divided = TrainTransform((32, 32), scale=(1.7, 1.7), flip=False, jitter=False, depth_mode="divide")
    out = divided(sample, np.random.default_rng(0))
    torch.testing.assert_close(out["depth"], kept["depth"] / 1.7)
    norms = out["normals"].norm(dim=0)
    assert ((norms - 1).abs() < 1e-5).all()  # normals stay unit under isotropic scaling


def test_identity_settings_give_a_plain_crop(sample):
    transform = TrainTransform((30, 50), scale=(1.0, 1.0), flip=False, jitter=False)
    rng = np.random.default_rng(5)
    out = transform(sample, rng)
    rng = np.random.default_rng(5)
    rng.uniform(1.0, 1.0)
    top, left = int(rng.integers(0, 48 - 30 + 1)), int(rng.integers(0, 64 - 50 + 1))
    expected = window(sample, top, left, (30, 50))
    for key in ("image", "semseg", "depth", "normals", "edge"):
        assert torch.equal(out[key], expected[key])


def test_jitter_changes_only_the_image(sample):
    transform = TrainTransform((48, 64), scale=(1.0, 1.0), flip=False, jitter=True)
    plain = TrainTransform((48, 64), scale=(1.0, 1.0), flip=False, jitter=False)
    out = transform(sample, np.random.default_rng(0))
    ref = plain(sample, np.random.default_rng(0))  # same window: the jitter draws come after it
    for key in ("semseg", "depth", "normals", "edge"):
        assert torch.equal(out[key], ref[key])
    image = photometric_jitter(sample["image"], np.random.default_rng(1))
    assert image.min() >= 0 and image.max() <= 1 and not torch.equal(image, sample["image"])


def test_cat_max_ratio_avoids_single_class_crops():
    semseg = torch.zeros(64, 64, dtype=torch.int64)
    semseg[:, 48:] = 1  # class 1 only in the right quarter
    sample = {"id": "s", "image": torch.rand(3, 64, 64), "semseg": semseg}
    transform = TrainTransform((32, 32), scale=(1.0, 1.0), flip=False, jitter=False, cat_max_ratio=0.75)
    balanced = sum(
        bool((transform(sample, np.random.default_rng(s))["semseg"] == 1).float().mean() > 0.25)
        for s in range(20)
    )
    plain = TrainTransform((32, 32), scale=(1.0, 1.0), flip=False, jitter=False)
    unbalanced = sum(
        bool((plain(sample, np.random.default_rng(s))["semseg"] == 1).float().mean() > 0.25)
        for s in range(20)
    )
    assert balanced > unbalanced


def test_eval_transform_pads_to_a_multiple_and_unpads(sample):
    out = EvalTransform(pad_multiple=32)(sample)
    assert out["image"].shape == (3, 64, 64) and out["valid_size"].tolist() == [48, 64]
    assert (out["semseg"][48:] == 255).all()
    assert torch.equal(unpad(out["semseg"], out["valid_size"]), sample["semseg"])
    assert EvalTransform(pad_multiple=None)(sample)["image"].shape == (3, 48, 64)


def test_collate_stacks_tensors_and_lists_ids(sample):
    batch = collate([sample, {**sample, "id": "y"}])
    assert batch["id"] == ["x", "y"] and batch["depth"].shape == (2, 1, 48, 64)
    small = window(sample, 0, 0, (32, 32))
    with pytest.raises(ValueError, match="'image' has different shapes"):
        collate([sample, small])
    with pytest.raises(ValueError, match="different keys"):
        collate([sample, {"id": "z", "image": sample["image"]}])


def test_bad_transform_arguments():
    with pytest.raises(ValueError, match="crop"):
        TrainTransform((0, 10))
    with pytest.raises(ValueError, match="depth_mode"):
        TrainTransform((8, 8), depth_mode="scale")
    with pytest.raises(ValueError, match="scale"):
        TrainTransform((8, 8), scale=(2.0, 1.0))
