"""prepare_dataset (validation, sharding, stats, report, atomic output) and ShardDataset."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_fixtures import copy_tree, small_nyud, small_taskonomy
from densepred.data.nyud import NYUDv2
from densepred.data.prepare import prepare_dataset
from densepred.data.shards import ShardDataset, subset_indices
from densepred.data.taskonomy import Taskonomy
from densepred.data.transforms import TrainTransform, collate

KEYS = ("image", "semseg", "depth", "normals", "edge")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("raw")
    return {
        "official": small_nyud(tmp, "official"),
        "mti": small_nyud(tmp, "mti"),
        "taskonomy": small_taskonomy(tmp, defects=True, views=5),
    }


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("prepared")
    out = {"nyud": tmp / "nyud", "mti": tmp / "mti", "taskonomy": tmp / "taskonomy"}
    prepare_dataset("nyud", raw["official"], out["nyud"], shard_size=2)
    prepare_dataset("nyud", raw["mti"], out["mti"])
    with pytest.warns(UserWarning, match="skipped 2 sample"):
        prepare_dataset("taskonomy", raw["taskonomy"], out["taskonomy"], max_bad_fraction=0.2, shard_size=3)
    return out


def test_shards_reproduce_the_raw_samples(raw, prepared):
    for split, count in (("train", 5), ("test", 3)):
        shards, reader = ShardDataset(prepared["nyud"], split), NYUDv2(raw["official"], split)
        assert shards.ids == reader.ids and len(shards) == count
        assert shards.groups == reader.groups  # scene names from the .mat
        for i in range(count):
            a, b = shards[i], reader[i]
            for key in KEYS:
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_float_normals_are_stored_losslessly(raw, prepared):
    shards, reader = ShardDataset(prepared["mti"], "test"), NYUDv2(raw["mti"], "test")
    with h5py.File(prepared["mti"] / "test-00000.h5") as f:
        assert f["normals"].attrs["normals_codec"] == "float32"
    with h5py.File(prepared["nyud"] / "test-00000.h5") as f:
        assert f["normals"].attrs["normals_codec"] == "uint8" and f["normals"].dtype == np.uint8
    for i in range(len(shards)):
        assert torch.equal(shards[i]["normals"], reader[i]["normals"])


def test_layout_index_and_shard_count(prepared):
    names = sorted(p.name for p in prepared["nyud"].iterdir())
    assert names == [
        "index.json", "report.json", "stats.json",
        "test-00000.h5", "test-00001.h5", "train-00000.h5", "train-00001.h5", "train-00002.h5",
    ]  # fmt: skip
    index = json.loads((prepared["nyud"] / "index.json").read_text())
    assert [s["count"] for s in index["splits"]["train"]["shards"]] == [2, 2, 1]
    assert not list(prepared["nyud"].parent.glob(".*tmp"))  # no temporary directory left


def test_skipped_samples_are_reported(raw, prepared):
    report = json.loads((prepared["taskonomy"] / "report.json").read_text())
    reasons = {s["id"]: s["reason"] for s in report["skipped"]}
    defects = json.loads((raw["taskonomy"] / "synthetic.json").read_text())["defects"]
    assert len(reasons) == 2 and report["bad_fraction"] == pytest.approx(2 / 15)
    assert any("missing domain(s) ['normal']" in r for r in reasons.values())
    assert any("cannot decode image" in r and defects[1]["file"] in r for r in reasons.values())
    assert report["splits"]["train"] == {"kept": 3, "skipped": 2}
    train = ShardDataset(prepared["taskonomy"], "train")
    assert len(train) == 3 and not set(train.ids) & set(reasons)


def test_too_many_bad_samples_fail_without_output(raw, tmp_path):
    out = tmp_path / "taskonomy"
    with pytest.raises(ValueError, match=r"2 of 15 samples are bad .* > max_bad_fraction 1.00%"):
        prepare_dataset("taskonomy", raw["taskonomy"], out)
    report = tmp_path / "taskonomy.report.json"  # the only output: the report, beside `out`
    assert not out.exists() and list(tmp_path.iterdir()) == [report]
    assert json.loads(report.read_text())["skipped_count"] == 2


def test_existing_output_is_replaced_whole(raw, tmp_path):
    out = tmp_path / "nyud"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    summary = prepare_dataset("nyud", raw["official"], out)
    assert not (out / "stale.txt").exists() and (out / "index.json").is_file()
    assert summary["kept"] == 8 and summary["splits"]["test"] == {"kept": 3, "skipped": 0}


def test_stats_match_a_direct_count(raw, prepared):
    stats = json.loads((prepared["nyud"] / "stats.json").read_text())
    assert stats["class_names"][0] == "wall" and len(stats["class_names"]) == 40
    train = stats["splits"]["train"]
    samples = [NYUDv2(raw["official"], "train")[i] for i in range(5)]
    semseg = torch.stack([s["semseg"] for s in samples])
    counts = torch.bincount(semseg[semseg != 255], minlength=40)
    assert train["semseg"]["pixel_counts"] == counts.tolist()
    assert train["semseg"]["ignore_pixels"] == int((semseg == 255).sum())
    depth = torch.stack([s["depth"] for s in samples])
    assert train["depth"]["min"] == pytest.approx(float(depth[depth > 0].min()))
    assert train["depth"]["max"] == pytest.approx(float(depth.max()))
    assert (
        train["depth"]["p01"]
        <= train["depth"]["p50"]
        <= train["depth"]["p99"]
        <= train["depth"]["max"] + 0.02
    )
    valid_normals = int((torch.stack([s["normals"] for s in samples]).norm(dim=1) > 0).sum())
    assert sum(train["normals"]["histogram"]["z"]) == valid_normals
    edges = torch.stack([s["edge"] for s in samples])
    assert train["edge"]["positive_fraction"] == pytest.approx(float(edges.mean()))
    assert ShardDataset(prepared["nyud"], "train").stats == stats


def test_taskonomy_splits_and_groups(raw, prepared):
    for split, building in (("train", "hanson"), ("val", "wiconisco"), ("test", "ihlen")):
        shards = ShardDataset(prepared["taskonomy"], split, tasks=["depth"])
        assert set(shards.groups) == {building} and set(shards[0]) == {"id", "image", "depth"}
        reader = Taskonomy(raw["taskonomy"], split, tasks=["depth"])
        good = [i for i, sample_id in enumerate(reader.ids) if sample_id in shards.ids]
        assert torch.equal(shards[0]["depth"], reader[good[0]]["depth"])


def test_buildings_restriction_prepares_only_splits_that_have_them(raw, tmp_path):
    out = tmp_path / "t"
    summary = prepare_dataset("taskonomy", raw["taskonomy"], out, max_bad_fraction=1.0, buildings=["ihlen"])
    assert summary["splits"] == {"test": {"kept": 5, "skipped": 0}}


def test_subset_fractions_are_nested_and_deterministic():
    ids = [f"s{i}" for i in range(40)]
    groups = [f"b{i // 10}" for i in range(40)]
    quarter, half = subset_indices(ids, groups, 0.25), subset_indices(ids, groups, 0.5)
    assert len(quarter) == 10 and len(half) == 20 and set(quarter) <= set(half)
    np.testing.assert_array_equal(quarter, subset_indices(ids, groups, 0.25))
    by_group = subset_indices(ids, groups, 0.5, unit="groups")
    assert len(by_group) == 20 and len({groups[i] for i in by_group}) == 2
    with pytest.raises(ValueError, match="fraction"):
        subset_indices(ids, groups, 0.0)


def test_transform_rng_depends_on_seed_epoch_and_index_only(prepared):
    transform = TrainTransform((24, 32))
    dataset = ShardDataset(prepared["nyud"], "train", transform=transform, seed=3)
    first = [dataset[i]["image"] for i in range(len(dataset))]
    assert all(torch.equal(dataset[i]["image"], first[i]) for i in reversed(range(len(dataset))))
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["image"], first[0])
    dataset.set_epoch(0)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert torch.equal(torch.cat([b["image"] for b in batches]), torch.stack(first))
    assert [i for b in batches for i in b["id"]] == dataset.ids


def test_shard_dataset_errors(prepared, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        ShardDataset(tmp_path, "train")
    with pytest.raises(ValueError, match="no split 'val'"):
        ShardDataset(prepared["nyud"], "val")
    with pytest.raises(ValueError, match="unknown task"):
        ShardDataset(prepared["nyud"], "train", tasks=["albedo"])
    broken = copy_tree(prepared["nyud"], tmp_path / "broken")
    (broken / "train-00001.h5").unlink()
    with pytest.raises(FileNotFoundError, match="missing shard"):
        ShardDataset(broken, "train")[2]


def test_prepare_argument_errors(raw, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        prepare_dataset("kitti", raw["official"], tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_dataset("nyud", tmp_path / "absent", tmp_path / "o")
    with pytest.raises(ValueError, match="shard_size"):
        prepare_dataset("nyud", raw["official"], tmp_path / "o", shard_size=0)
    assert not (tmp_path / "o").exists()


def test_parallel_decoding_gives_the_same_dataset(raw, prepared, tmp_path):
    prepare_dataset("nyud", raw["official"], tmp_path / "parallel", shard_size=2, num_workers=2)
    serial, parallel = ShardDataset(prepared["nyud"], "train"), ShardDataset(tmp_path / "parallel", "train")
    assert parallel.ids == serial.ids
    for i in range(len(serial)):
        assert all(torch.equal(parallel[i][key], serial[i][key]) for key in KEYS)
    assert json.loads((tmp_path / "parallel" / "stats.json").read_text()) == serial.stats


def test_preparing_twice_writes_the_same_bytes(raw, prepared, tmp_path):
    """Shards are compressed with a deterministic filter (deflate, not LZF), so a rebuild of the same
    raw data leaves every shard's bytes, and the digests index.json lists, unchanged."""
    again = tmp_path / "again"
    prepare_dataset("nyud", raw["official"], again, shard_size=2)
    first = sorted(prepared["nyud"].glob("*.h5"))
    assert [p.name for p in first] == sorted(p.name for p in again.glob("*.h5"))
    for path in first:
        assert path.read_bytes() == (again / path.name).read_bytes(), path.name
        with h5py.File(path) as f:
            assert {f[k].compression for k in f if k != "ids"} == {"gzip"}
    index = json.loads((prepared["nyud"] / "index.json").read_text())
    assert index == json.loads((again / "index.json").read_text())


def test_shards_written_with_lzf_still_read(raw, prepared, tmp_path):
    prepare_dataset("nyud", raw["official"], tmp_path / "lzf", shard_size=2, compression="lzf")
    current, older = ShardDataset(prepared["nyud"], "train"), ShardDataset(tmp_path / "lzf", "train")
    assert older.ids == current.ids
    for i in range(len(current)):
        assert all(torch.equal(older[i][key], current[i][key]) for key in KEYS)
