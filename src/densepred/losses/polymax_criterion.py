"""Criterion for PolyMaX (paper Sec. 4.1), registered for the model name "polymax".

One task per model (the paper trains each task independently). Terms and default weights:

| task    | dataset   | terms (default weight)                                                  |
|---------|-----------|-------------------------------------------------------------------------|
| semseg  | any       | pq_class 3.0, pq_dice 3.0, mask_id 0.3, instance_disc 1.0, aux_semantic 1.0 (kMaX) |
| depth   | nyud      | silog 1.0, relative_squared 1.0 (ViP-DeepLab), gradient 0.5 (MegaDepth alpha) |
| depth   | taskonomy | charbonnier 1.0                                                         |
| normals | any       | l2 1.0                                                                  |

The paper gives no depth/normal weights: SILog + RelSq are summed with equal weight as in
ViP-DeepLab, the gradient term uses MegaDepth's alpha = 0.5. Override with `weights` (keys
"<task>/<term>" or just "<term>"; unknown keys are an error) and pick another depth term set with
`depth_losses`.

Deep supervision (kMaX): every term is applied to the final output and to each kMaX layer's
output ("aux"), the latter multiplied by `aux_weight` (kMaX: 1.0, equal weights); the auxiliary
semantic CE applies to the final output only. `deep_supervision=False` keeps the final output only.
Each logged entry "<task>/<term>" is the weighted sum over outputs; "total" is their sum.
All losses run in fp32 with autocast disabled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from densepred.losses.depth import (
    charbonnier,
    depth_valid_mask,
    multiscale_gradient,
    relative_squared,
    silog,
)
from densepred.losses.normals import normals_l2, normals_valid_mask
from densepred.losses.registry import register_criterion
from densepred.losses.segmentation import (
    downsample_labels,
    instance_discrimination_loss,
    mask_id_cross_entropy,
    pq_class_loss,
    pq_dice_loss,
    sampled_semantic_cross_entropy,
    semantic_targets,
)
from densepred.model_params import PolyMaXCfg
from densepred.tasks import dataset_info

SEMSEG_WEIGHTS = {"pq_class": 3.0, "pq_dice": 3.0, "mask_id": 0.3, "instance_disc": 1.0, "aux_semantic": 1.0}
DEPTH_WEIGHTS = {"silog": 1.0, "relative_squared": 1.0, "gradient": 0.5, "charbonnier": 1.0}
DEPTH_TERMS_BY_DATASET = {"nyud": ("silog", "relative_squared", "gradient"), "taskonomy": ("charbonnier",)}
NORMALS_WEIGHTS = {"l2": 1.0}


def resolve_weights(
    task: str, terms: Sequence[str], defaults: Mapping[str, float], overrides: Mapping[str, float] | None
) -> dict[str, float]:
    """Default weights of `terms`, updated by `overrides` keyed "<task>/<term>" or "<term>"."""
    weights = {t: float(defaults[t]) for t in terms}
    for key, value in (overrides or {}).items():
        term = key.split("/", 1)[1] if key.startswith(f"{task}/") else key
        if term not in weights:
            known = sorted(f"{task}/{t}" for t in weights)
            raise ValueError(f"unknown PolyMaX loss weight {key!r}; expected one of {known}")
        weights[term] = float(value)
    return weights


class PolyMaXCriterion(nn.Module):
    """Weighted PolyMaX losses with deep supervision; see the module docstring."""

    def __init__(
        self,
        task: str,
        dataset: str,
        weights: Mapping[str, float] | None = None,
        num_classes: int | None = None,
        deep_supervision: bool = True,
        aux_weight: float = 1.0,
        depth_losses: Sequence[str] | None = None,
        silog_variance_focus: float = 1.0,
        gradient_scales: int = 4,
        charbonnier_eps: float = 1e-3,
        pq_alpha: float = 0.75,
        dice_modifier: float = 0.75,
        instance_sample_k: int = 4096,
        instance_sample_temperature: float = 1.5,
        instance_temperature: float = 0.3,
        semantic_sample_k: int = 4096,
        semantic_sample_temperature: float = 2.0,
    ) -> None:
        super().__init__()
        if task not in PolyMaXCfg.TASKS:
            raise ValueError(f"PolyMaX criterion task must be one of {PolyMaXCfg.TASKS}, got {task!r}")
        info = dataset_info(dataset)
        self.task = task
        self.num_classes = info.num_classes if num_classes is None else int(num_classes)
        self.deep_supervision = deep_supervision
        self.aux_weight = float(aux_weight)
        self.options = {
            "silog_variance_focus": silog_variance_focus,
            "gradient_scales": gradient_scales,
            "charbonnier_eps": charbonnier_eps,
            "pq_alpha": pq_alpha,
            "dice_modifier": dice_modifier,
            "instance_sample_k": instance_sample_k,
            "instance_sample_temperature": instance_sample_temperature,
            "instance_temperature": instance_temperature,
            "semantic_sample_k": semantic_sample_k,
            "semantic_sample_temperature": semantic_sample_temperature,
        }
        if task == "semseg":
            self.weights = resolve_weights(task, list(SEMSEG_WEIGHTS), SEMSEG_WEIGHTS, weights)
        elif task == "depth":
            terms = DEPTH_TERMS_BY_DATASET[info.name] if depth_losses is None else tuple(depth_losses)
            unknown = [t for t in terms if t not in DEPTH_WEIGHTS]
            if unknown or not terms:
                raise ValueError(
                    f"depth_losses must be a non-empty subset of {list(DEPTH_WEIGHTS)}, got {terms}"
                )
            self.weights = resolve_weights(task, terms, DEPTH_WEIGHTS, weights)
        else:
            self.weights = resolve_weights(task, list(NORMALS_WEIGHTS), NORMALS_WEIGHTS, weights)

    # ------------------------------------------------------------------------------ per output
    def _depth_terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        valid = depth_valid_mask(target)
        fns = {
            "silog": lambda: silog(pred, target, valid, variance_focus=self.options["silog_variance_focus"]),
            "relative_squared": lambda: relative_squared(pred, target, valid),
            "gradient": lambda: multiscale_gradient(
                pred, target, valid, num_scales=self.options["gradient_scales"]
            ),
            "charbonnier": lambda: charbonnier(pred, target, valid, eps=self.options["charbonnier_eps"]),
        }
        return {t: fns[t]() for t in self.weights}

    def _normals_terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"l2": normals_l2(pred, target, normals_valid_mask(target))}

    def _semseg_terms(self, output: Mapping, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        mask_logits = output["mask_logits"].float()
        labels = downsample_labels(labels, mask_logits.shape[-2:])
        gt_masks, present, void = semantic_targets(labels, self.num_classes)
        probs = torch.softmax(mask_logits, dim=1)
        class_logits = output["cluster_values"].float()
        o = self.options
        terms = {
            "pq_class": pq_class_loss(class_logits, probs, gt_masks, present, void, alpha=o["pq_alpha"]),
            "pq_dice": pq_dice_loss(
                probs, class_logits, gt_masks, present, void, modifier=o["dice_modifier"]
            ),
            "mask_id": mask_id_cross_entropy(mask_logits, labels),
            "instance_disc": instance_discrimination_loss(
                output["pixel_embedding"],
                labels,
                self.num_classes,
                sample_k=o["instance_sample_k"],
                sample_temperature=o["instance_sample_temperature"],
                temperature=o["instance_temperature"],
            ),
        }
        return terms

    def _aux_semantic_term(self, outputs: Mapping, labels: torch.Tensor) -> torch.Tensor:
        logits = outputs["aux_semantic"].float()
        labels = downsample_labels(labels, logits.shape[-2:])
        return sampled_semantic_cross_entropy(
            logits,
            labels,
            sample_k=self.options["semantic_sample_k"],
            sample_temperature=self.options["semantic_sample_temperature"],
        )

    def _output_terms(self, output: Mapping, batch: Mapping) -> dict[str, torch.Tensor]:
        target = batch[self.task]
        if self.task == "semseg":
            return self._semseg_terms(output, target)
        pred = output[self.task]
        if pred.shape != target.shape:
            raise ValueError(
                f"{self.task} prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
            )
        if self.task == "depth":
            return self._depth_terms(pred, target)
        return self._normals_terms(pred, target)

    # --------------------------------------------------------------------------------- forward
    def _check(self, outputs: Mapping, batch: Mapping) -> None:
        if self.task not in batch:
            raise ValueError(f"batch has no {self.task!r} entry (keys: {sorted(batch)})")
        required = ["mask_logits", "cluster_values"] if self.task == "semseg" else [self.task]
        if self.task == "semseg" and self.weights["instance_disc"] != 0:
            required.append("pixel_embedding")
        missing = [k for k in required if k not in outputs]
        if missing:
            raise ValueError(
                f"PolyMaX outputs lack {missing} (keys: {sorted(outputs)}); pass train-mode outputs"
            )
        if self.deep_supervision and "aux" not in outputs:
            raise ValueError("deep_supervision=True needs the train-mode 'aux' outputs of PolyMaX")

    def forward(self, outputs: Mapping, batch: Mapping) -> dict[str, torch.Tensor]:
        self._check(outputs, batch)
        device_type = outputs["mask_logits" if self.task == "semseg" else self.task].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            weighted_outputs = [(1.0, outputs)]
            if self.deep_supervision:
                weighted_outputs += [(self.aux_weight, aux) for aux in outputs["aux"]]
            sums: dict[str, torch.Tensor] = {}
            for out_weight, output in weighted_outputs:
                for term, value in self._output_terms(output, batch).items():
                    if term in self.weights:
                        scaled = self.weights[term] * out_weight * value
                        sums[term] = sums[term] + scaled if term in sums else scaled
            if self.task == "semseg" and "aux_semantic" in outputs:
                sums["aux_semantic"] = self.weights["aux_semantic"] * self._aux_semantic_term(
                    outputs, batch["semseg"]
                )
        result = {f"{self.task}/{term}": value for term, value in sums.items()}
        result["total"] = torch.stack(list(result.values())).sum()
        return result


@register_criterion("polymax")
def create_polymax_criterion(
    tasks: Sequence[str],
    dataset: str,
    weights: Mapping[str, float] | None = None,
    num_classes: int | None = None,
    **options,
) -> PolyMaXCriterion:
    """Build the PolyMaX criterion for a single task (PolyMaX trains one model per task).

    Args:
        tasks: exactly one of "semseg", "depth", "normals".
        dataset: "nyud" or "taskonomy" (selects the depth losses and the class count).
        weights: per-term weight overrides, keys "<task>/<term>" or "<term>".
        num_classes: semantic classes (default: the dataset's).
        options: keyword options of `PolyMaXCriterion` (deep_supervision, aux_weight, depth_losses, ...).
    """
    tasks = list(tasks)
    PolyMaXCfg.check_tasks(tasks)  # the model's rules live in its params class
    return PolyMaXCriterion(tasks[0], dataset, weights=weights, num_classes=num_classes, **options)
