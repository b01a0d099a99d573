"""Faults met by `train` and `evaluate`: damaged prepared shards and index, missing or corrupt
checkpoints, a checkpoint of another job, a NaN loss, an output path that cannot be a folder. Each
names the file and the cause, exits with status 2 and leaves no output that looks complete
(`final.pt`, the metrics JSON, its figures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest
import torch

from densepred.data import shards
from densepred.data.prepare import prepare_dataset
from densepred.data.shards import ShardDataset
from engine_fixtures import PoisonAt, no_tracking, tiny_data  # noqa: F401 (fixtures)
from fault_helpers import (  # noqa: F401 (fixtures)
    JOB,
    STAGE,
    assert_fault,
    copy_tree,
    leftovers,
    raw_data,
    run_main,
    train_args,
    trained,
)

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("no_tracking")]


@pytest.fixture
def setup(trained):  # noqa: F811
    return trained


def private_nyud(setup, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the prepared NYUD-v2 to damage, and the --set that points the params at it."""
    copy = copy_tree(setup["data"]["nyud"], tmp_path / "prepared_nyud")
    return copy, f"datasets.nyud.prepared={copy}"


def first_shard(root: Path) -> Path:
    return root / json.loads((root / "index.json").read_text())["splits"]["train"]["shards"][0]["file"]


def train(setup, capsys, out: Path, *sets: str):
    return run_main(train_args(setup["params"], out, *sets), capsys)


def evaluate(setup, capsys, ckpt: Path, out: Path, *sets: str, job: str = JOB):
    args = ["evaluate", "--params", setup["params"], "--job", job, "--ckpt", ckpt, "--out", out]
    return run_main(args + [a for s in sets for a in ("--set", s)], capsys)


def assert_not_trained(out: Path) -> None:
    assert not (out / "final.pt").exists() and leftovers(out.parent) == []


def assert_not_evaluated(out: Path) -> None:
    assert not out.exists() and not out.with_name(f"{out.stem}_figures").exists()
    assert leftovers(out.parent) == []


# ---------------------------------------------------------------------------- prepared data


def test_truncated_shard_is_named(setup, tmp_path, capsys):
    root, where = private_nyud(setup, tmp_path)
    shard = first_shard(root)
    shard.write_bytes(shard.read_bytes()[:-100])
    outcome = train(setup, capsys, tmp_path / "run", where)
    assert_fault(outcome, f"corrupt shard {shard}", "truncated", "densepred prepare")
    assert_not_trained(tmp_path / "run")


def test_shard_with_changed_bytes_is_named(setup, tmp_path, capsys):
    root, where = private_nyud(setup, tmp_path)
    shard = first_shard(root)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    outcome = train(setup, capsys, tmp_path / "run", where)
    assert_fault(outcome, f"corrupt shard {shard}", "differ from the digest")
    assert_not_trained(tmp_path / "run")


def test_missing_shard_is_named(setup, tmp_path, capsys):
    root, where = private_nyud(setup, tmp_path)
    shard = first_shard(root)
    shard.unlink()
    assert_fault(train(setup, capsys, tmp_path / "run", where), f"missing shard {shard}")
    assert_not_trained(tmp_path / "run")


def test_corrupt_index_is_named(setup, tmp_path, capsys):
    root, where = private_nyud(setup, tmp_path)
    (root / "index.json").write_text('{"format": ')
    outcome = train(setup, capsys, tmp_path / "run", where)
    assert_fault(outcome, str(root / "index.json"), "invalid JSON")
    assert_not_trained(tmp_path / "run")


def test_index_of_another_version_asks_to_prepare_again(setup, tmp_path, capsys):
    root, where = private_nyud(setup, tmp_path)
    index = json.loads((root / "index.json").read_text())
    (root / "index.json").write_text(json.dumps({**index, "version": 1}))
    outcome = train(setup, capsys, tmp_path / "run", where)
    assert_fault(outcome, str(root / "index.json"), "v1", "run `densepred prepare` again")
    assert_not_trained(tmp_path / "run")


def test_missing_prepared_dataset_is_named(setup, tmp_path, capsys):
    where = f"datasets.nyud.prepared={tmp_path / 'nowhere'}"
    outcome = train(setup, capsys, tmp_path / "run", where)
    assert_fault(outcome, str(tmp_path / "nowhere"), "run `densepred prepare --dataset nyud` first")
    assert_not_trained(tmp_path / "run")


def test_damaged_chunk_beyond_the_digest_is_named(raw_data, tmp_path, monkeypatch):  # noqa: F811
    # Shards larger than 2 x DIGEST_SPAN are digested at both ends only; the chunk checksums catch
    # damage in between. A tiny span makes a tiny shard such a shard.
    monkeypatch.setattr(shards, "DIGEST_SPAN", 64)
    out = tmp_path / "prepared"
    prepare_dataset("nyud", raw_data["nyud"], out, shard_size=8)
    shard = first_shard(out)
    with h5py.File(shard, "r") as f:
        offset = f["depth"].id.get_chunk_info(0).byte_offset
    data = bytearray(shard.read_bytes())
    data[offset + 8] ^= 0xFF
    shard.write_bytes(bytes(data))
    dataset = ShardDataset(out, "train")
    with pytest.raises(
        ValueError, match=rf"corrupt shard {shard}: cannot read sample 0001 .*filter returned failure"
    ):
        dataset[0]


# ------------------------------------------------------------------------------ checkpoints


def test_truncated_checkpoint_is_named(setup, tmp_path, capsys):
    ckpt = tmp_path / "final.pt"
    ckpt.write_bytes(setup["final"].read_bytes()[:2000])
    out = tmp_path / "eval" / "metrics.json"
    assert_fault(evaluate(setup, capsys, ckpt, out), f"checkpoint {ckpt} could not be read")
    assert_not_evaluated(out)


def test_foreign_checkpoint_is_named(setup, tmp_path, capsys):
    ckpt = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
    out = tmp_path / "eval" / "metrics.json"
    assert_fault(evaluate(setup, capsys, ckpt, out), f"{ckpt} is not a densepred checkpoint")
    assert_not_evaluated(out)


def test_missing_checkpoint_is_named(setup, tmp_path, capsys):
    ckpt = tmp_path / "nope.pt"
    out = tmp_path / "eval" / "metrics.json"
    assert_fault(evaluate(setup, capsys, ckpt, out), f"checkpoint not found: {ckpt}")
    assert_not_evaluated(out)


def test_checkpoint_of_another_job_is_refused(setup, tmp_path, capsys):
    out = tmp_path / "eval" / "metrics.json"
    outcome = evaluate(setup, capsys, setup["final"], out, job="stl_semseg")
    assert_fault(outcome, f"checkpoint {setup['final']} predicts tasks ['depth']", "'stl_semseg'")
    assert_not_evaluated(out)


def test_missing_init_checkpoint_is_named(setup, tmp_path, capsys):
    init = tmp_path / "pretrain" / "final.pt"
    outcome = run_main([*train_args(setup["params"], tmp_path / "run"), "--init", init], capsys)
    assert_fault(outcome, f"--init checkpoint not found: {init}")
    assert not (tmp_path / "run").exists()


def test_corrupt_resumable_checkpoint_is_named(setup, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(b"PK\x03\x04 not really a zip")
    assert_fault(train(setup, capsys, out), f"checkpoint {last} could not be read")
    assert_not_trained(out)


# ------------------------------------------------------------------------------ training runs


def test_nan_loss_stops_naming_step_and_term(setup, tmp_path, capsys, monkeypatch):
    import densepred.engine.train as train_module

    real = train_module.build_criterion
    monkeypatch.setattr(train_module, "build_criterion", lambda *a: PoisonAt(real(*a), 3, "total"))
    out = tmp_path / "run"
    outcome = train(setup, capsys, out)
    assert_fault(outcome, "step 3: non-finite loss term(s)", "total=nan", "no checkpoint was written")
    assert_not_trained(out)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 2  # the good state


def test_output_below_a_file_is_named(setup, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    outcome = evaluate(setup, capsys, setup["final"], blocker / "metrics.json")
    assert_fault(outcome, str(blocker))
    assert blocker.read_text() == "not a folder"


def test_rerun_after_removing_the_damage_works(setup, tmp_path, capsys):
    root, where = private_nyud(setup, tmp_path)
    shard = first_shard(root)
    good = shard.read_bytes()
    shard.write_bytes(good[:-1])
    assert train(setup, capsys, tmp_path / "run", where).code == 2
    shutil.copyfile(setup["data"]["nyud"] / shard.name, shard)
    assert train(setup, capsys, tmp_path / "run", where).code == 0
    assert (tmp_path / "run" / "final.pt").is_file()
