"""Optimisers and schedules: parameter groups (decay on weights only, backbone lr), warmup + poly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from densepred.config import OptimizerCfg, ScheduleCfg
from densepred.engine.optim import (
    WarmupPoly,
    build_optimizer,
    build_scheduler,
    classify_parameters,
    current_lr,
    is_backbone_param,
)


class Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm(4)
        self.relative_position_bias_table = nn.Parameter(torch.ones(5, 2))


class Toy(nn.Module):
    """A backbone (`backbone.body`) and a head with every kind of parameter the rules care about."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.body = Body()
        self.head = nn.Conv2d(4, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.cluster_centers = nn.Parameter(torch.ones(3, 4))
        self.rpe_key = nn.Parameter(torch.ones(7, 2))
        self.sharpen = nn.Parameter(torch.ones(2, 2))  # contains "rpe" but is a weight
        self.task_queries = nn.Parameter(torch.ones(4, 2))
        self.temperature = nn.Parameter(torch.ones(()))
        self.frozen = nn.Parameter(torch.ones(2, 2), requires_grad=False)


def adamw(**kw) -> OptimizerCfg:
    return OptimizerCfg(name="adamw", lr=5e-4, weight_decay=0.05, backbone_lr_mult=0.1, **kw)


def test_weight_decay_on_weights_only_and_backbone_flag():
    infos = {i.name: i for i in classify_parameters(Toy())}
    decayed = {n for n, i in infos.items() if i.decay}
    assert decayed == {"backbone.body.stem.weight", "head.weight", "sharpen"}
    assert "frozen" not in infos
    assert {n for n, i in infos.items() if i.backbone} == {
        "backbone.body.stem.weight",
        "backbone.body.stem.bias",
        "backbone.body.norm.weight",
        "backbone.body.norm.bias",
        "backbone.body.relative_position_bias_table",
    }


def test_decay_norm_and_bias_decays_everything():
    infos = classify_parameters(Toy(), decay_norm_and_bias=True)
    assert all(i.decay for i in infos) and len(infos) == 14


def test_backbone_detection_sees_through_wrappers():
    assert is_backbone_param("module._orig_mod.backbone.body.stages.0.weight")
    assert not is_backbone_param("backbone")  # a parameter named "backbone" is not inside one
    assert not is_backbone_param("decoder.backbone_proj.weight")


def test_groups_lr_and_weight_decay():
    opt = build_optimizer(Toy(), adamw())
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"head_decay", "head_no_decay", "backbone_decay", "backbone_no_decay"}
    assert groups["head_decay"]["lr"] == pytest.approx(5e-4)
    assert groups["backbone_decay"]["lr"] == pytest.approx(5e-5)
    assert groups["head_no_decay"]["weight_decay"] == 0.0 and groups["backbone_decay"]["weight_decay"] == 0.05
    assert current_lr(opt) == pytest.approx(5e-4)


def test_adamw_step_with_zero_grad_only_shrinks_decayed_weights():
    """Decoupled decay: w <- w * (1 - lr*wd) for decayed tensors (backbone at 0.1 lr); others stay put."""
    model = Toy()
    before = model.backbone.body.stem.weight.detach().clone()
    opt = build_optimizer(model, adamw())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(model.sharpen, torch.full((2, 2), 1 - 5e-4 * 0.05))
    assert torch.allclose(model.backbone.body.stem.weight, before * (1 - 5e-5 * 0.05))
    assert torch.all(model.cluster_centers == 1) and torch.all(model.rpe_key == 1)
    assert torch.all(model.task_queries == 1) and torch.all(model.temperature == 1)
    assert torch.all(model.backbone.body.relative_position_bias_table == 1)


def test_sgd_uses_momentum_and_decay():
    opt = build_optimizer(Toy(), OptimizerCfg(name="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4))
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)


def test_warmup_poly_values_by_hand():
    fn = WarmupPoly(ScheduleCfg(name="poly", power=0.9, warmup_iters=10, warmup_factor=0.001), 100)
    assert fn(0) == pytest.approx(0.001)
    assert fn(5) == pytest.approx(0.95**0.9 * (0.001 + 0.999 * 0.5))
    assert fn(10) == pytest.approx(0.9**0.9)
    assert fn(99) == pytest.approx(0.01**0.9)
    assert fn(100) == 0.0
    const = WarmupPoly(ScheduleCfg(name="constant", warmup_iters=0), 100)
    assert const(0) == const(99) == 1.0


def test_scheduler_steps_per_iteration_and_round_trips():
    model = Toy()
    opt = build_optimizer(model, adamw())
    sched = build_scheduler(opt, ScheduleCfg(name="poly", power=0.9, warmup_iters=0), 10)
    lrs = []
    for _ in range(4):
        lrs.append(current_lr(opt))
        opt.step()
        sched.step()
    assert lrs == pytest.approx([5e-4 * (1 - t / 10) ** 0.9 for t in range(4)])
    backbone = next(g for g in opt.param_groups if g["name"] == "backbone_decay")
    assert backbone["lr"] == pytest.approx(5e-5 * 0.6**0.9)
    state = sched.state_dict()
    opt2 = build_optimizer(Toy(), adamw())
    sched2 = build_scheduler(opt2, ScheduleCfg(name="poly", power=0.9, warmup_iters=0), 10)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    assert current_lr(opt2) == pytest.approx(5e-4 * 0.5**0.9)
    assert math.isclose(sched2.last_epoch, 5)


def test_no_trainable_parameters_is_an_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, adamw())
