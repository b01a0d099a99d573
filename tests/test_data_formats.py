"""Writers and readers: every format round-trips the rendered scene up to its quantisation."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from data_fixtures import SMALL, small_nyud, small_taskonomy
from densepred.data.codecs import read_image
from densepred.data.labels import to_train_ids
from densepred.data.nyud import NYUDv2
from densepred.data.render import Camera, render, sample_pose
from densepred.data.scene import sample_scene
from densepred.data.synthetic import render_nyud_frames, write_taskonomy_view
from densepred.data.taskonomy import Taskonomy, read_split_csv


@pytest.fixture(scope="module")
def frames() -> dict:
    """The frames every small NYUD layout was written from, by 1-based id."""
    n, h, w, test = SMALL["num_images"], SMALL["height"], SMALL["width"], SMALL["num_test"]
    return {f"{f.index + 1:04d}": f for f in render_nyud_frames(n, test, h, w, seed=0)}


@pytest.fixture(scope="module")
def nyud_roots(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("formats")
    return {layout: small_nyud(tmp, layout) for layout in ("official", "multitask", "mti")}


def _frame_split(frames: dict) -> dict[str, set[str]]:
    return {s: {i for i, f in frames.items() if f.split == s} for s in ("train", "test")}


def test_official_mat_container_is_matlab_v73(nyud_roots):
    path = nyud_roots["official"] / "nyu_depth_v2_labeled.mat"
    head = path.read_bytes()[:128]
    assert head.startswith(b"MATLAB 7.3 MAT-file, Platform: GLNXA64")
    assert b"HDF5 schema 1.00 ." in head[:116] and head[124:128] == b"\x00\x02IM"
    with pytest.raises(NotImplementedError):
        scipy.io.loadmat(path)
    with h5py.File(path, "r") as f:
        n, h, w = SMALL["num_images"], SMALL["height"], SMALL["width"]
        assert f["images"].shape == (n, 3, w, h) and f["images"].dtype == np.uint8
        assert f["depths"].shape == (n, w, h) and f["rawDepths"].dtype == np.float32
        assert f["labels"].dtype == np.uint16 and f["instances"].dtype == np.uint8
        assert f["names"].shape == (1, 894) and f["accelData"].shape == (4, n)
        assert "".join(map(chr, f[f["names"][0, 20]][:, 0])) == "wall"  # raw label 21


def test_official_splits_are_one_based_columns(nyud_roots, frames):
    splits = scipy.io.loadmat(nyud_roots["official"] / "splits.mat")
    train, test = splits["trainNdxs"], splits["testNdxs"]
    assert train.shape == (5, 1) and test.shape == (3, 1)
    assert sorted(np.concatenate([train, test]).ravel().astype(int)) == list(range(1, 9))
    assert {f"{int(i):04d}" for i in test.ravel()} == _frame_split(frames)["test"]


@pytest.mark.parametrize("layout", ["official", "multitask", "mti"])
def test_nyud_round_trip(nyud_roots, frames, layout):
    for split, expected_ids in _frame_split(frames).items():
        dataset = NYUDv2(nyud_roots[layout], split)
        assert set(dataset.ids) == expected_ids
        for i, sample_id in enumerate(dataset.ids):
            _compare_nyud(dataset[i], frames[sample_id], layout)


def _compare_nyud(sample: dict, frame, layout: str) -> None:
    image = torch.from_numpy(frame.rgb.transpose(2, 0, 1) / np.float32(255))
    if layout == "mti":  # JPEG
        assert (sample["image"] - image).abs().mean() < 0.03
    else:
        torch.testing.assert_close(sample["image"], image, rtol=0, atol=0)
    np.testing.assert_array_equal(sample["semseg"].numpy(), to_train_ids(frame.label40, 40))
    np.testing.assert_array_equal(sample["edge"][0].numpy(), frame.edge.astype(np.float32))
    normals = sample["normals"].numpy().transpose(1, 2, 0)
    depth = sample["depth"][0].numpy()
    if layout == "official":
        np.testing.assert_array_equal(depth, frame.depth)  # in-painted: dense
        valid = frame.raw_depth > 0  # Eigen masks come from the raw depth
    else:
        np.testing.assert_array_equal(depth, np.where(frame.no_depth, 0, frame.depth))
        valid = ~frame.no_depth if layout == "mti" else np.ones_like(frame.no_depth)
    assert (normals[~valid] == 0).all()
    tolerance = 0 if layout == "mti" else 1 / 255 + 1e-6  # .npy float vs 8-bit PNG
    assert np.abs(normals[valid] - frame.normals[valid]).max() <= tolerance


@pytest.fixture(scope="module")
def taskonomy_view(tmp_path_factory) -> tuple:
    """One rendered view written in the omnitools layout (a building listed in a split CSV)."""
    root = tmp_path_factory.mktemp("taskonomy_rt")
    rng = np.random.default_rng(4)
    scene = sample_scene(rng)
    position, rot = sample_pose(scene, rng)
    view = render(scene, Camera.square(40, 1.1), position, rot, rng)
    view["no_depth"][:3, :3] = True  # a patch without geometry
    write_taskonomy_view(root, "hanson", 1006, 12, view, mask_token="depth_zbuffer")
    (root / "train_val_test_x.csv").write_bytes(b"id,train,val,test\rhanson,1,0,0")
    return root, view


def test_taskonomy_file_encodings(taskonomy_view):
    root, view = taskonomy_view
    name = "point_1006_view_12_domain_"
    depth = read_image(root / "depth_zbuffer" / "taskonomy" / "hanson" / f"{name}depth_zbuffer.png", "gray16")
    valid = ~view["no_depth"]
    assert depth.dtype == np.uint16 and (depth[~valid] == 65535).all()
    np.testing.assert_array_equal(depth[valid], np.rint(view["depth"][valid] * 512))
    euclid = read_image(
        root / "depth_euclidean" / "taskonomy" / "hanson" / f"{name}depth_euclidean.png", "gray16"
    )
    assert (euclid >= depth).all() and (euclid[~valid] == 65535).all()
    normal = read_image(root / "normal" / "taskonomy" / "hanson" / f"{name}normal.png", "rgb")
    assert (normal[~valid] == 128).all() and (normal[valid] != 128).any()
    mask = read_image(root / "mask_valid" / "taskonomy" / "hanson" / f"{name}depth_zbuffer.png", "gray8")
    np.testing.assert_array_equal(mask, valid * 255)
    labels = read_image(
        root / "segment_semantic" / "taskonomy" / "hanson" / f"{name}segmentsemantic.png", "gray8"
    )
    np.testing.assert_array_equal(labels, view["taskonomy"])


def test_taskonomy_round_trip(taskonomy_view):
    root, view = taskonomy_view
    dataset = Taskonomy(root, "train")
    assert dataset.ids == ["hanson_point_1006_view_12"] and dataset.groups == ["hanson"]
    assert "mask" in dataset.domains  # mask_valid matched despite its depth_zbuffer token
    sample = dataset[0]
    valid = ~view["no_depth"]
    torch.testing.assert_close(
        sample["image"], torch.from_numpy(view["rgb"].transpose(2, 0, 1) / np.float32(255))
    )
    depth = sample["depth"][0].numpy()
    assert (depth[~valid] == 0).all()
    assert np.abs(depth[valid] - view["depth"][valid]).max() <= 1 / 1024 + 1e-6
    normals = sample["normals"].numpy().transpose(1, 2, 0)
    assert (normals[~valid] == 0).all()
    assert np.abs(normals[valid] - view["normals"][valid]).max() <= 1 / 255 + 1e-6
    np.testing.assert_array_equal(sample["semseg"].numpy(), to_train_ids(view["taskonomy"], 17))
    boundary = sample["edge"][0].numpy() > 0
    labels = view["taskonomy"].astype(int)
    assert ((labels[:, 1:] != labels[:, :-1]) <= (boundary[:, 1:] & boundary[:, :-1])).all()


def test_taskonomy_euclidean_depth_domain(taskonomy_view):
    root, view = taskonomy_view
    sample = Taskonomy(root, "train", depth_domain="depth_euclidean")[0]
    valid = ~view["no_depth"]
    assert np.abs(sample["depth"][0].numpy()[valid] - view["distance"][valid]).max() <= 1 / 1024 + 1e-6


def test_synthesized_taskonomy_layout_and_csv(tmp_path):
    root = small_taskonomy(tmp_path, defects=True, views=5)
    csv_path = root / "train_val_test_synthetic.csv"
    raw = csv_path.read_bytes()
    assert b"\r" in raw and b"\n" not in raw and not raw.endswith(b"\r")
    assert read_split_csv(csv_path) == {"hanson": ("train",), "wiconisco": ("val",), "ihlen": ("test",)}
    for domain in ("rgb", "depth_zbuffer", "depth_euclidean", "normal", "segment_semantic", "mask_valid"):
        assert (root / domain / "taskonomy" / "ihlen").is_dir()
    tokens = {p.name.rsplit("_domain_", 1)[1] for p in (root / "mask_valid").rglob("*.png")}
    assert tokens == {"mask_valid.png", "depth_zbuffer.png"}  # both spellings in use
    train = Taskonomy(root, "train")
    assert len(train) == 4 and [reason for _, reason in train.dropped] == ["missing domain(s) ['normal']"]
    corrupt = [i for i in range(len(train)) if _fails(train, i)]
    assert len(corrupt) == 1  # the zero-byte RGB
    assert len(Taskonomy(root, "val")) == 5 and len(Taskonomy(root, "test")) == 5


def _fails(dataset, index: int) -> bool:
    try:
        dataset[index]
    except ValueError as exc:
        assert "cannot decode image" in str(exc)
        return True
    return False


def _digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_generation_is_deterministic_for_a_seed(tmp_path):
    a = _digest(small_nyud(tmp_path / "a", "official", seed=1))
    b = _digest(small_nyud(tmp_path / "b", "official", seed=1))
    c = _digest(small_nyud(tmp_path / "c", "official", seed=2))
    assert a == b
    assert a["nyu_depth_v2_labeled.mat"] != c["nyu_depth_v2_labeled.mat"]
    t1 = _digest(small_taskonomy(tmp_path / "a", seed=1, views=2))
    t2 = _digest(small_taskonomy(tmp_path / "b", seed=1, views=2))
    assert t1 == t2
