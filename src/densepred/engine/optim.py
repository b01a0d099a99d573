"""Optimisers and learning-rate schedules of the two papers, selected per job stage in params.

* PolyMaX (the kMaX-DeepLab recipe of deeplab2's `trainer/` and `configs/*/kmax_deeplab/`): AdamW,
  betas (0.9, 0.999), decoupled weight decay 0.05 on *weights only* (no decay on normalisation
  parameters, biases, other 1-d parameters, relative-position tables and cluster centres), backbone
  learning rate x0.1, linear warmup then poly(0.9) decay to zero, stepped every iteration.
* MQTransformer (released code: `configure_optimizers` in `src/model/pl_model.py`, `PolynomialLR`):
  SGD, momentum 0.9, weight decay 5e-4 on *all* parameters, poly(0.9) per iteration, no warmup. Our
  `OptimizerCfg` defaults to `decay_norm_and_bias=False` for both; set it to true for the
  code-faithful variant.

Departure from deeplab2: deeplab2 trains the backbone with a second optimiser, so its decoupled weight
decay also shrinks with the 0.1 learning rate. We use one optimiser with a backbone parameter group
whose `lr` is scaled; torch's AdamW multiplies decay by the group lr, so the effect is the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from densepred.config import OptimizerCfg, ScheduleCfg

# Parameter-name fragments that never get weight decay (kMaX: relative-position tables and cluster
# centres; transformers: position embeddings and learned queries). Matched case-insensitively.
NO_DECAY_NAME_PATTERNS: tuple[str, ...] = (
    "relative_position",
    "rel_pos",
    "rpe",
    "pos_embed",
    "cluster_cent",
    "query_embed",
    "queries",
)
# A pattern counts at the start of a name component or after "_" ("task_queries", "cls_rpe"), so that
# e.g. "sharpen" does not match "rpe".
_NO_DECAY_RE = re.compile(r"(^|[._])(" + "|".join(NO_DECAY_NAME_PATTERNS) + ")")
# Module names whose parameters belong to the backbone (`Backbone` keeps the timm model in `.body`).
BACKBONE_NAMES: tuple[str, ...] = ("backbone", "body")

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class ParamInfo:
    """Where a parameter goes: backbone or not, weight decay or not."""

    name: str
    backbone: bool
    decay: bool


def is_backbone_param(name: str) -> bool:
    """True if the dotted parameter name passes through a module called `backbone` or `body`.

    Wrappers (`module.` from DDP, `_orig_mod.` from torch.compile) do not matter: any component counts.
    """
    return any(part in BACKBONE_NAMES for part in name.split(".")[:-1])


def _norm_param_names(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES) or "norm" in type(module).__name__.lower():
            for pname, _ in module.named_parameters(recurse=False):
                names.add(f"{module_name}.{pname}" if module_name else pname)
    return names


def _declared_no_decay(model: nn.Module) -> set[str]:
    """Names a model lists in `no_weight_decay()` (the timm convention), if it has that method."""
    declared = getattr(model, "no_weight_decay", None)
    return set(declared()) if callable(declared) else set()


def classify_parameters(model: nn.Module, decay_norm_and_bias: bool = False) -> list[ParamInfo]:
    """Sort every trainable parameter into backbone / rest and decay / no decay.

    With `decay_norm_and_bias=False` (PolyMaX, kMaX rule "weights only"), a parameter gets no decay
    when it is 1-d or 0-d (biases, norm scales, scalar temperatures), belongs to a normalisation
    layer, is named `*.bias`, is listed by the model's `no_weight_decay()` (timm convention), or its
    name contains one of `NO_DECAY_NAME_PATTERNS`.
    """
    norm_names = _norm_param_names(model)
    norm_names |= _declared_no_decay(model)
    infos = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lower = name.lower()
        no_decay = (
            param.ndim <= 1
            or name in norm_names
            or name.endswith(".bias")
            or _NO_DECAY_RE.search(lower) is not None
        )
        infos.append(ParamInfo(name, is_backbone_param(name), decay_norm_and_bias or not no_decay))
    return infos


def param_groups(model: nn.Module, cfg: OptimizerCfg) -> list[dict[str, Any]]:
    """Optimiser parameter groups: (backbone?, decay?) -> params, lr and weight decay.

    Group order is fixed (rest+decay, rest+no-decay, backbone+decay, backbone+no-decay) and empty
    groups are dropped, so the optimiser state layout depends only on the model. Each group carries a
    `name` for logging and `lr_mult` (1 or `cfg.backbone_lr_mult`).
    """
    params = dict(model.named_parameters())
    groups: list[dict[str, Any]] = []
    infos = classify_parameters(model, cfg.decay_norm_and_bias)
    for backbone in (False, True):
        for decay in (True, False):
            chosen = [params[i.name] for i in infos if i.backbone == backbone and i.decay == decay]
            if not chosen:
                continue
            mult = cfg.backbone_lr_mult if backbone else 1.0
            groups.append(
                {
                    "params": chosen,
                    "name": f"{'backbone' if backbone else 'head'}_{'decay' if decay else 'no_decay'}",
                    "lr": cfg.lr * mult,
                    "lr_mult": mult,
                    "weight_decay": cfg.weight_decay if decay else 0.0,
                }
            )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerCfg) -> torch.optim.Optimizer:
    """AdamW (decoupled decay) or SGD with momentum, over `param_groups(model, cfg)`.

    Both use torch's fused kernels (one pass over every parameter instead of a loop over tensors):
    the same update rule, 4x faster steps on CPU for PolyMaX's 482 parameter tensors.
    """
    groups = param_groups(model, cfg)
    if cfg.name == "adamw":
        betas = tuple(cfg.betas)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, fused=True)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True
        )
    raise ValueError(f"unknown optimizer {cfg.name!r}; expected 'adamw' or 'sgd'")


class WarmupPoly:
    """Learning-rate factor at iteration t (0-based, the t-th optimiser step).

    poly:     (1 - t/T) ** power, reaching zero at t = T (deeplab2 `PolynomialDecay`, MQTransformer
              `PolynomialLR`; t is not restarted after warmup).
    warmup:   for t < W the factor is further multiplied by warmup_factor + (1 - warmup_factor) * t/W,
              a linear ramp (deeplab2 ramps from 0; warmup_factor=0.001 avoids a zero first step).
    constant: 1 (times the warmup ramp).

    A callable object (not a lambda) so that `LambdaLR.state_dict()` stores its settings.
    """

    def __init__(self, cfg: ScheduleCfg, total_iters: int) -> None:
        if total_iters <= 0:
            raise ValueError(f"total_iters must be > 0, got {total_iters}")
        self.name = cfg.name
        self.power = cfg.power
        self.warmup_iters = cfg.warmup_iters
        self.warmup_factor = cfg.warmup_factor
        self.total_iters = total_iters

    def __call__(self, t: int) -> float:
        factor = 1.0
        if self.name == "poly":
            factor = max(0.0, 1.0 - t / self.total_iters) ** self.power
        if t < self.warmup_iters:
            alpha = t / self.warmup_iters
            factor *= self.warmup_factor + (1.0 - self.warmup_factor) * alpha
        return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleCfg, total_iters: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration scheduler: call `.step()` after every optimiser step."""
    fn = WarmupPoly(cfg, total_iters)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=[fn] * len(optimizer.param_groups))


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first group whose multiplier is 1 (the head lr), for logging."""
    for group in optimizer.param_groups:
        if group.get("lr_mult", 1.0) == 1.0:
            return float(group["lr"])
    return float(optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_mult", 1.0))


def describe_groups(optimizer: torch.optim.Optimizer) -> Iterable[str]:
    """One line per parameter group: name, tensor count, lr, weight decay."""
    for group in optimizer.param_groups:
        count = sum(p.numel() for p in group["params"])
        yield (
            f"{group.get('name', '?')}: {len(group['params'])} tensors ({count / 1e6:.3f}M), "
            f"lr {group['lr']:.3g}, wd {group['weight_decay']:.3g}"
        )
