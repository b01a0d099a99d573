"""Raw readers on damaged or unusual inputs: a clear error or a listed skip, never a wrong sample."""

from __future__ import annotations

import re
import shutil

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from data_fixtures import copy_tree, small_nyud, small_taskonomy
from densepred.data.codecs import decode_normals_uint8, decode_taskonomy_depth, read_image, read_npy
from densepred.data.nyud import NYUDv2, detect_layout
from densepred.data.taskonomy import EmptySplitError, Taskonomy, read_split_csv


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("pristine")
    return {
        "official": small_nyud(tmp, "official"),
        "multitask": small_nyud(tmp, "multitask"),
        "mti": small_nyud(tmp, "mti"),
        "taskonomy": small_taskonomy(tmp),
    }


@pytest.fixture
def multitask(pristine, tmp_path):
    return copy_tree(pristine["multitask"], tmp_path / "mt")


def _first_train_id(root) -> str:
    return (root / "gt_sets" / "train.txt").read_text().split()[0]


def test_zero_byte_png_is_a_clear_error(multitask):
    sample_id = _first_train_id(multitask)
    path = multitask / "images" / f"{sample_id}.png"
    path.write_bytes(b"")
    dataset = NYUDv2(multitask, "train")
    with pytest.raises(ValueError, match=re.escape(f"{path}: cannot decode image")):
        dataset[0]


def test_truncated_png_is_a_clear_error(multitask):
    path = multitask / "normals" / f"{_first_train_id(multitask)}.png"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot decode image"):
        NYUDv2(multitask, "train")[0]


def test_truncated_npy_is_a_clear_error(multitask):
    path = multitask / "depth" / f"{_first_train_id(multitask)}.npy"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=re.escape(f"{path}: cannot read .npy")):
        NYUDv2(multitask, "train")[0]
    with pytest.raises(ValueError, match=r"cannot read \.npy"):
        read_npy(path)


def test_missing_modality_raises_or_is_dropped(multitask):
    sample_id = _first_train_id(multitask)
    (multitask / "edge" / f"{sample_id}.png").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"edge/{sample_id}.png")):
        NYUDv2(multitask, "train")
    dataset = NYUDv2(multitask, "train", on_missing="drop")
    assert sample_id not in dataset.ids and len(dataset) == 4
    assert dataset.dropped[0][0] == sample_id and "missing file" in dataset.dropped[0][1]
    assert len(NYUDv2(multitask, "train", tasks=["semseg"])) == 5  # edge not needed


def test_label_out_of_range_in_png(multitask):
    path = multitask / "segmentation" / f"{_first_train_id(multitask)}.png"
    labels = np.array(Image.open(path))
    labels[0, 0] = 41
    Image.fromarray(labels).save(path)
    with pytest.raises(ValueError, match=r"semantic label out of range \[0, 41\]; expected 0..40"):
        NYUDv2(multitask, "train", tasks=["semseg"])[0]


def test_label_out_of_range_in_official_mat(pristine, tmp_path):
    root = copy_tree(pristine["official"], tmp_path / "official")
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "r+") as f:
        frame = int(scipy.io.loadmat(root / "splits.mat")["trainNdxs"][0, 0]) - 1
        labels = f["labels"][frame]
        labels[3, 3] = 900
        f["labels"][frame] = labels
    with pytest.raises(ValueError, match="raw NYUD label out of range"):
        NYUDv2(root, "train", tasks=["semseg"])[0]


def test_official_splits_variants(pristine, tmp_path):
    root = copy_tree(pristine["official"], tmp_path / "official")
    splits = scipy.io.loadmat(root / "splits.mat")
    # The real file loads as uint16 columns.
    scipy.io.savemat(root / "splits.mat", {k: splits[k].astype(np.uint16) for k in ("trainNdxs", "testNdxs")})
    assert len(NYUDv2(root, "test")) == 3
    scipy.io.savemat(
        root / "splits.mat", {"trainNdxs": splits["trainNdxs"] - 1, "testNdxs": splits["testNdxs"]}
    )
    with pytest.raises(ValueError, match="1-based integer indices"):
        NYUDv2(root, "train")
    scipy.io.savemat(root / "splits.mat", {"testNdxs": splits["testNdxs"]})
    with pytest.raises(ValueError, match="no variable 'trainNdxs'"):
        NYUDv2(root, "train")


def test_official_missing_eigen_normals(pristine, tmp_path):
    root = copy_tree(pristine["official"], tmp_path / "official")
    shutil.rmtree(root / "normals_gt")
    with pytest.raises(FileNotFoundError, match="normals_gt"):
        NYUDv2(root, "train")
    assert len(NYUDv2(root, "train", tasks=["semseg", "depth", "edge"])) == 5


def test_official_raw_depth_source_has_holes(pristine):
    dense = NYUDv2(pristine["official"], "train", tasks=["depth"])
    raw = NYUDv2(pristine["official"], "train", tasks=["depth"], depth_source="rawDepths")
    assert (dense[0]["depth"] > 0).all()
    assert (raw[0]["depth"] == 0).any()


def test_edge_png_must_be_binary_unless_thresholded(multitask):
    path = multitask / "edge" / f"{_first_train_id(multitask)}.png"
    edge = np.array(Image.open(path))
    edge[edge == 255] = 200
    Image.fromarray(edge).save(path)
    with pytest.raises(ValueError, match="not binary"):
        NYUDv2(multitask, "train", tasks=["edge"])[0]
    sample = NYUDv2(multitask, "train", tasks=["edge"], edge_threshold=0.5)[0]
    assert set(np.unique(sample["edge"].numpy())) == {0.0, 1.0}


def test_wrong_depth_units_are_rejected(multitask):
    path = multitask / "depth" / f"{_first_train_id(multitask)}.npy"
    np.save(path, np.load(path) * 1000.0)  # millimetres
    with pytest.raises(ValueError, match="wrong units"):
        NYUDv2(multitask, "train", tasks=["depth"])[0]


def test_layout_detection_and_bad_arguments(pristine, tmp_path):
    assert detect_layout(pristine["official"]) == "official"
    assert detect_layout(pristine["mti"]) == "multitask"
    with pytest.raises(FileNotFoundError, match="no NYUD-v2 layout"):
        detect_layout(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        NYUDv2(tmp_path / "absent", "train")
    with pytest.raises(ValueError, match="unknown NYUD-v2 split 'val'"):
        NYUDv2(pristine["official"], "val")
    with pytest.raises(ValueError, match="unknown task"):
        NYUDv2(pristine["official"], "train", tasks=["depth", "albedo"])


def test_decoders_mark_invalid_values():
    normals = decode_normals_uint8(np.array([[[128, 128, 128], [127, 127, 127], [255, 128, 128]]], np.uint8))
    np.testing.assert_array_equal(normals[0, :2], 0.0)
    np.testing.assert_allclose(normals[0, 2], [1.0, 1 / 255, 1 / 255], atol=1e-6)
    depth = decode_taskonomy_depth(np.array([0, 512, 1024, 65535], dtype=np.uint16))
    np.testing.assert_array_equal(depth, [0.0, 1.0, 2.0, 0.0])


def test_image_kind_is_checked(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    with pytest.raises(ValueError, match="expected an RGB image, got PIL mode 'L'"):
        read_image(path, "rgb")
    with pytest.raises(FileNotFoundError, match="missing file"):
        read_image(tmp_path / "absent.png", "rgb")


# ------------------------------------------------------------------------------------- Taskonomy


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"building,train,val,test\rhanson,1,0,0", "header"),
        (b"id,train,val,test\rhanson,1,0", "line 2"),
        (b"id,train,val,test\rhanson,2,0,0", "line 2"),
        (b"id,train,val,test\rhanson,1,0,0\rhanson,0,1,0", "listed twice"),
        (b"\xff\xfe\x00", "not text"),
    ],
)
def test_wrong_split_csv_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "train_val_test_bad.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        read_split_csv(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("separator", [b"\r", b"\n", b"\r\n"])
def test_split_csv_accepts_any_line_ending(tmp_path, separator):
    path = tmp_path / "train_val_test_tiny.csv"
    path.write_bytes(
        separator.join([b"id,train,val,test", b"hanson,1,0,0", b"allensville,1,1,1"]) + separator
    )
    assert read_split_csv(path) == {"hanson": ("train",), "allensville": ("train", "val", "test")}


def test_taskonomy_without_the_taskonomy_level(pristine, tmp_path):
    root = copy_tree(pristine["taskonomy"], tmp_path / "flat")
    for domain_dir in [p for p in root.iterdir() if (p / "taskonomy").is_dir()]:
        for building in (domain_dir / "taskonomy").iterdir():
            building.rename(domain_dir / building.name)
        (domain_dir / "taskonomy").rmdir()
    flat, nested = Taskonomy(root, "val"), Taskonomy(pristine["taskonomy"], "val")
    assert flat.ids == nested.ids
    np.testing.assert_array_equal(flat[0]["depth"].numpy(), nested[0]["depth"].numpy())


def test_taskonomy_missing_domain_and_building(pristine, tmp_path):
    root = copy_tree(pristine["taskonomy"], tmp_path / "t")
    victim = sorted((root / "depth_zbuffer" / "taskonomy" / "wiconisco").iterdir())[0]
    victim.unlink()
    val = Taskonomy(root, "val")
    assert len(val) == 3 and "missing domain(s) ['depth_zbuffer']" in val.dropped[0][1]
    assert len(Taskonomy(root, "val", tasks=["semseg"])) == 4  # depth not requested
    shutil.rmtree(root / "rgb" / "taskonomy" / "ihlen")
    with pytest.raises(ValueError, match="no complete view") as error:
        Taskonomy(root, "test")
    assert "ihlen" in str(error.value)


def test_taskonomy_label_out_of_range(pristine, tmp_path):
    root = copy_tree(pristine["taskonomy"], tmp_path / "t")
    path = sorted((root / "segment_semantic" / "taskonomy" / "ihlen").iterdir())[0]
    labels = np.array(Image.open(path))
    labels[0, 0] = 18
    Image.fromarray(labels).save(path)
    with pytest.raises(ValueError, match=r"expected 0..17"):
        Taskonomy(root, "test")[0]


def test_taskonomy_split_selection(pristine, tmp_path):
    root = pristine["taskonomy"]
    assert Taskonomy(root, "train", buildings=["hanson"]).buildings == ["hanson"]
    with pytest.raises(EmptySplitError):
        Taskonomy(root, "val", buildings=["hanson"])
    with pytest.raises(ValueError, match=r"\['nowhere'\] are not listed"):
        Taskonomy(root, "train", buildings=["nowhere"])
    with pytest.raises(ValueError, match="unknown Taskonomy split"):
        Taskonomy(root, "validation")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no train_val_test"):
        Taskonomy(empty, "train")
    (tmp_path / "other.csv").write_bytes(b"id,train,val,test\rihlen,1,0,0")
    assert Taskonomy(root, "train", split_csv=tmp_path / "other.csv").buildings == ["ihlen"]
