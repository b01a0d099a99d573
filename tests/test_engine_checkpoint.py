"""Checkpoints: atomic save, safe load with clear errors, RNG round trip, --init with head reset."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from densepred.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng,
    init_identity,
    load_checkpoint,
    load_init_weights,
    restore_rng,
    save_checkpoint,
    weights_digest,
)

META = {"job": "j", "stage": "pretrain", "model": {}, "tasks": ["semseg"], "dataset": "taskonomy"}
META = {**META, "num_classes": 17, "max_depth": 128.0}


class Net(nn.Module):
    def __init__(self, classes: int, extra: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, classes, 1)
        if extra:
            self.new_branch = nn.Linear(2, 2)


def payload(model: nn.Module) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": "final",
        "step": 3,
        "model": model.state_dict(),
        "meta": META,
    }


def test_round_trip_and_no_temp_files_left(tmp_path):
    model = Net(17)
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", payload(model))
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 3 and ckpt["meta"]["num_classes"] == 17
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ckpt["model"].items())
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "truncated.pt"
    save_checkpoint(bad, payload(Net(3)))
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"truncated\.pt could not be read"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save(Net(3).state_dict(), foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt is not a densepred checkpoint"):
        load_checkpoint(foreign)
    no_meta = tmp_path / "nometa.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "step": 0, "meta": {"job": "j"}}, no_meta)
    with pytest.raises(ValueError, match=r"lacks .*meta.stage"):
        load_checkpoint(no_meta)


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "obj": Net(2)}, path)  # a pickled module, not weights
    with pytest.raises(ValueError, match="could not be read"):
        load_checkpoint(path)


def test_rng_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.rand(5)
    np.random.rand()
    random.random()
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng()})
    expected = (torch.rand(4), np.random.rand(3), [random.random() for _ in range(3)])
    torch.rand(10), np.random.rand(10), random.random()  # move every generator on
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_init_loads_matching_and_resets_mismatched_heads(tmp_path):
    """Taskonomy (17 classes) -> NYUD-v2 (40 classes): the classifier keeps its fresh init."""
    torch.manual_seed(0)
    source = Net(17)
    save_checkpoint(tmp_path / "pre.pt", payload(source))
    torch.manual_seed(1)
    target = Net(40, extra=True)
    fresh_head = target.head.weight.detach().clone()
    report = load_init_weights(target, tmp_path / "pre.pt")
    bn = ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    assert sorted(report.loaded) == sorted(["backbone.weight", "backbone.bias", *bn])
    assert report.reset == [
        {"key": "head.weight", "checkpoint_shape": [17, 4, 1, 1], "model_shape": [40, 4, 1, 1]},
        {"key": "head.bias", "checkpoint_shape": [17], "model_shape": [40]},
    ]
    assert report.missing == ["new_branch.weight", "new_branch.bias"]
    assert report.unexpected == []
    assert torch.equal(target.backbone.weight, source.backbone.weight)
    assert torch.equal(target.head.weight, fresh_head)
    assert "7 tensors loaded, 2 reset" in report.summary()


def test_init_reports_unexpected_keys(tmp_path):
    save_checkpoint(tmp_path / "pre.pt", payload(Net(5, extra=True)))
    report = load_init_weights(Net(5), tmp_path / "pre.pt")
    assert report.unexpected == ["new_branch.bias", "new_branch.weight"] and not report.reset


def test_weights_digest_covers_values_dtype_shape_and_names_only():
    state = Net(17).state_dict()
    digest = weights_digest(state)
    assert weights_digest({k: v.clone() for k, v in reversed(state.items())}) == digest  # order, copies
    changed = {**state, "head.bias": state["head.bias"] + 1e-6}
    assert weights_digest(changed) != digest
    assert weights_digest({**state, "head.bias": state["head.bias"].double()}) != digest
    assert weights_digest({**state, "head.bias": state["head.bias"].reshape(1, -1)}) != digest
    renamed = {("x." + k if k == "head.bias" else k): v for k, v in state.items()}
    assert weights_digest(renamed) != digest
    transposed = state["head.weight"].transpose(0, 1)  # non-contiguous views hash their values
    assert weights_digest({"w": transposed}) == weights_digest({"w": transposed.contiguous()})


def test_init_identity_ignores_provenance_but_not_weights_or_settings(tmp_path):
    state = Net(17).state_dict()
    meta = {**META, "settings_hash": "abc", "git_commit": "1111", "weights_digest": weights_digest(state)}
    path = tmp_path / "final.pt"

    def identity_of(weights: dict, meta: dict) -> str:
        save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "step": 1, "model": weights, "meta": meta})
        return init_identity(path)

    identity = identity_of(state, meta)
    assert "abc" in identity and meta["weights_digest"] in identity
    assert identity_of(state, {**meta, "git_commit": "2222-dirty"}) == identity
    older = {k: v for k, v in meta.items() if k != "weights_digest"}  # written without it: computed
    assert identity_of(state, older) == identity
    assert identity_of({**state, "head.bias": state["head.bias"] + 1.0}, older) != identity
    assert identity_of(state, {**meta, "settings_hash": "xyz"}) != identity
