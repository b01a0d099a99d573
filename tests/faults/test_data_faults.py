"""Faults in raw datasets given to `densepred prepare`: missing and misplaced files, corrupt and
truncated files, wrong units, out-of-range labels, wrong shapes. Each names the file (or the
sample and its cause), exits with status 2 and leaves no prepared folder; once the samples were read,
the report of every skipped sample is written beside the output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import SMOKE
from fault_helpers import (  # noqa: F401 (fixtures)
    assert_fault,
    copy_tree,
    leftovers,
    prepare_args,
    raw_data,
    run_main,
)

pytestmark = [pytest.mark.faults, pytest.mark.filterwarnings("ignore::UserWarning")]

MAT = "nyu_depth_v2_labeled.mat"


def prepare(capsys, dataset: str, src: Path, out: Path, *sets: str):
    return run_main(prepare_args(SMOKE, dataset, src, out, *sets), capsys)


def assert_nothing_prepared(out: Path, report: bool = False) -> None:
    """No output folder, no temps; the failure report beside it exactly when the samples were read."""
    assert not out.exists()
    assert leftovers(out.parent) == []
    assert out.with_name(f"{out.name}.report.json").is_file() == report


def damaged(raw_data, tmp_path: Path, dataset: str) -> Path:  # noqa: F811
    return copy_tree(raw_data[dataset], tmp_path / f"raw_{dataset}")


def edit_mat(root: Path, key: str, edit) -> None:
    with h5py.File(root / MAT, "r+") as f:
        f[key][...] = edit(f[key][...])


def taskonomy_files(root: Path, domain: str) -> list[Path]:
    return sorted((root / domain).rglob("*.png"))


# ------------------------------------------------------------------------------------ layouts


def test_missing_raw_folder_is_named(tmp_path, capsys):
    src = tmp_path / "nowhere"
    assert_fault(prepare(capsys, "nyud", src, tmp_path / "out"), str(src), "does not exist")
    assert_nothing_prepared(tmp_path / "out")


def test_missing_labeled_mat_names_the_expected_files(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "nyud")
    (src / MAT).unlink()
    outcome = prepare(capsys, "nyud", src, tmp_path / "out")
    assert_fault(outcome, str(src), "no NYUD-v2 layout found", MAT)
    assert_nothing_prepared(tmp_path / "out")


def test_missing_splits_mat_is_named(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "nyud")
    (src / "splits.mat").unlink()
    outcome = prepare(capsys, "nyud", src, tmp_path / "out")
    assert_fault(outcome, f"missing file: {src / 'splits.mat'}")
    assert_nothing_prepared(tmp_path / "out")


def test_wrong_layout_is_explained(raw_data, tmp_path, capsys):  # noqa: F811
    outcome = prepare(capsys, "nyud", raw_data["taskonomy"], tmp_path / "out")  # a Taskonomy tree
    assert_fault(outcome, str(raw_data["taskonomy"]), "no NYUD-v2 layout found")
    assert_nothing_prepared(tmp_path / "out")


def test_missing_taskonomy_split_file_is_named(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "taskonomy")
    for csv in src.glob("train_val_test_*.csv"):
        csv.unlink()
    outcome = prepare(capsys, "taskonomy", src, tmp_path / "out")
    assert_fault(outcome, str(src), "no train_val_test_*.csv")
    assert_nothing_prepared(tmp_path / "out")


def test_missing_taskonomy_domain_folder_is_named(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "taskonomy")
    shutil.rmtree(src / "normal")
    outcome = prepare(capsys, "taskonomy", src, tmp_path / "out")
    assert_fault(outcome, str(src), "no complete view", "'normal'")
    assert_nothing_prepared(tmp_path / "out")


# ------------------------------------------------------------------------- corrupt, truncated


def test_truncated_labeled_mat_is_named(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "nyud")
    data = (src / MAT).read_bytes()
    (src / MAT).write_bytes(data[: len(data) // 3])
    outcome = prepare(capsys, "nyud", src, tmp_path / "out")
    assert_fault(outcome, str(src / MAT), "not a readable MATLAB v7.3", "truncated")
    assert_nothing_prepared(tmp_path / "out")


def test_garbage_splits_mat_is_named(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "nyud")
    (src / "splits.mat").write_bytes(b"not a MATLAB file")
    outcome = prepare(capsys, "nyud", src, tmp_path / "out")
    assert_fault(outcome, str(src / "splits.mat"), "cannot read MATLAB v5 file")
    assert_nothing_prepared(tmp_path / "out")


def test_truncated_png_fails_with_reason_and_report(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "taskonomy")
    png = taskonomy_files(src, "rgb")[0]
    png.write_bytes(png.read_bytes()[:100])
    out = tmp_path / "out"
    outcome = prepare(capsys, "taskonomy", src, out)
    assert_fault(outcome, "1 of 12 samples are bad", png.name, "cannot decode", f"{out}.report.json")
    assert_nothing_prepared(out, report=True)
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["skipped_count"] == 1 and png.name in report["skipped"][0]["reason"]


def test_tolerated_corrupt_png_is_skipped_and_reported(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "taskonomy")
    png = taskonomy_files(src, "normal")[0]
    png.write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out"
    outcome = prepare(capsys, "taskonomy", src, out, "datasets.taskonomy.max_bad_fraction=0.5")
    assert outcome.code == 0, outcome.err
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == 11 and [png.name in s["reason"] for s in report["skipped"]] == [True]
    assert not Path(f"{out}.report.json").exists() and leftovers(tmp_path) == []


def test_report_of_an_earlier_failure_goes_when_prepare_succeeds(raw_data, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    stale = Path(f"{out}.report.json")
    stale.write_text("{}")
    assert prepare(capsys, "nyud", raw_data["nyud"], out).code == 0
    assert not stale.exists() and (out / "report.json").is_file()


# ------------------------------------------------------------------------ units, labels, shapes


def test_depth_in_millimetres_gives_the_reason_with_count(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "nyud")
    edit_mat(src, "depths", lambda depth: depth * 1000.0)
    out = tmp_path / "out"
    outcome = prepare(capsys, "nyud", src, out)
    assert_fault(outcome, "no valid sample at all (8 skipped)", "8x ", "wrong units?", f"{out}.report.json")
    assert_nothing_prepared(out, report=True)
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["kept"] == 0 and all("wrong units?" in s["reason"] for s in report["skipped"])


def test_labels_out_of_range_are_named(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "taskonomy")
    for png in taskonomy_files(src, "segment_semantic")[:2]:
        labels = np.asarray(Image.open(png))
        Image.fromarray(np.full_like(labels, 200)).save(png)
    out = tmp_path / "out"
    outcome = prepare(capsys, "taskonomy", src, out)
    assert_fault(outcome, "2 of 12 samples are bad", "2x ", "semantic label out of range [200, 200]")
    assert_nothing_prepared(out, report=True)


def test_non_finite_depth_is_named(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "nyud")

    def poison(depth: np.ndarray) -> np.ndarray:
        depth[1, 0, 0] = np.nan
        return depth

    edit_mat(src, "depths", poison)
    outcome = prepare(capsys, "nyud", src, tmp_path / "out")
    assert_fault(outcome, "1 of 8 samples are bad", "depth has non-finite values")
    assert_nothing_prepared(tmp_path / "out", report=True)


def test_wrong_array_shape_is_named(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "nyud")
    with h5py.File(src / MAT, "r+") as f:
        del f["depths"]
        f["depths"] = np.zeros((8, 10, 10), np.float32)
    outcome = prepare(capsys, "nyud", src, tmp_path / "out")
    assert_fault(outcome, str(src / MAT), "depths has shape (8, 10, 10)")
    assert_nothing_prepared(tmp_path / "out")


def test_normals_image_of_wrong_size_is_named(raw_data, tmp_path, capsys):  # noqa: F811
    src = damaged(raw_data, tmp_path, "nyud")
    png = sorted((src / "normals_gt" / "normals").glob("*.png"))[0]
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(png)
    outcome = prepare(capsys, "nyud", src, tmp_path / "out")
    assert_fault(outcome, "1 of 8 samples are bad", png.name, "normals/mask size")
    assert_nothing_prepared(tmp_path / "out", report=True)
