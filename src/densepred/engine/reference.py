"""The trivial reference: what a predictor that learned nothing scores, by the same meters.

Table 2 shows beside the models, for each task, the constant predictor fitted to the training split
(`densepred reference`), so that a reader sees what each model learned rather than a bare number:

    semseg   the training split's majority class everywhere (its pixel share decides the IoU)
    depth    the training split's mean valid depth everywhere (the constant of least squared error)
    normals  the training split's mean valid normal, renormalised, everywhere
    edge     a map without edges (edge logits far below every threshold: odsF 0)

The predictor is an `nn.Module` that honours the models' output contract (models/registry.py), and
it is evaluated by `engine.evaluate.run_metrics` with the `MetricSuite` of the jobs' own evaluation
settings, so a reference cell and a model cell are computed by one code path. The output is a
metrics JSON like an evaluation's (`paths.reference_path`), its `meta` holding the fitted constants.
Which tasks and evaluation settings it takes from the jobs is decided in densepred/reference.py,
which the pipeline reads without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from densepred.config import Params
from densepred.reference import REFERENCE_JOB, reference_eval_settings, reference_tasks
from densepred.tasks import IGNORE_INDEX, dataset_info

# An edge logit that no boundary threshold (at most 0.999, i.e. logit 6.9) reaches.
NO_EDGE_LOGIT = -20.0


@dataclass(frozen=True)
class TrainingPrior:
    """Constants fitted to a training split: the most frequent class, mean depth and mean normal."""

    majority_class: int
    majority_share: float  # the class's share of the labelled pixels
    mean_depth: float  # metres, over valid pixels
    mean_normal: tuple[float, float, float]  # unit vector, camera frame

    def as_dict(self) -> dict[str, Any]:
        return {
            "majority_class": self.majority_class,
            "majority_share": round(self.majority_share, 6),
            "mean_depth": round(self.mean_depth, 6),
            "mean_normal": [round(v, 6) for v in self.mean_normal],
        }


def fit_prior(samples: Any, num_classes: int) -> TrainingPrior:
    """The constants of the trivial predictor, from every sample of a training split (unaugmented).

    `samples` yields dicts with `semseg` (H,W) int64 (255 = ignore), `depth` (1,H,W) metres (0 =
    invalid) and `normals` (3,H,W) (zero vector = invalid). Sums are float64/int64, so the result
    depends on the split only, not on its order beyond float rounding."""
    counts = np.zeros(num_classes, dtype=np.int64)
    depth_sum, depth_n = 0.0, 0
    normal_sum = np.zeros(3)
    for sample in samples:
        labels = sample["semseg"].numpy().ravel()
        labels = labels[labels != IGNORE_INDEX]
        counts += np.bincount(labels, minlength=num_classes)[:num_classes]
        depth = sample["depth"].numpy().ravel()
        depth_sum += float(depth[depth > 0].astype(np.float64).sum())
        depth_n += int((depth > 0).sum())
        normals = sample["normals"].numpy().reshape(3, -1)
        valid = np.abs(normals).sum(axis=0) > 0
        normal_sum += normals[:, valid].astype(np.float64).sum(axis=1)
    if counts.sum() == 0 or depth_n == 0 or not np.any(normal_sum):
        raise ValueError("the training split has no labelled semseg, depth or normal pixel to fit a prior to")
    mean_normal = normal_sum / np.linalg.norm(normal_sum)
    return TrainingPrior(
        majority_class=int(counts.argmax()),
        majority_share=float(counts.max() / counts.sum()),
        mean_depth=depth_sum / depth_n,
        mean_normal=(float(mean_normal[0]), float(mean_normal[1]), float(mean_normal[2])),
    )


class TrivialPredictor(nn.Module):
    """Constant maps at the input resolution in the models' output contract: semseg logits (the
    majority class wins), depth in metres, unit normals, edge logits (no edge)."""

    def __init__(self, prior: TrainingPrior, tasks: list[str], num_classes: int) -> None:
        super().__init__()
        self.tasks, self.num_classes = list(tasks), num_classes
        logits = torch.zeros(num_classes)
        logits[prior.majority_class] = 1.0
        self.register_buffer("semseg_logits", logits)
        self.register_buffer("depth", torch.tensor([prior.mean_depth]))
        self.register_buffer("normal", torch.tensor(prior.mean_normal))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, _, height, width = image.shape
        constant = {
            "semseg": self.semseg_logits,
            "depth": self.depth,
            "normals": self.normal,
            "edge": torch.full((1,), NO_EDGE_LOGIT, device=image.device),
        }
        return {
            t: constant[t].view(1, -1, 1, 1).expand(batch, -1, height, width).contiguous() for t in self.tasks
        }


def evaluate_reference(params: Params, dataset: str, out: Path) -> dict[str, Any]:
    """Fit the prior on `dataset`'s training split, evaluate the trivial predictor on the split the
    table's jobs are evaluated on, and write the metrics JSON `out` (atomically). Returns it."""
    from densepred.data.shards import ShardDataset
    from densepred.data.transforms import EvalTransform
    from densepred.engine import distributed as dist_utils
    from densepred.engine.build import prepared_root
    from densepred.engine.evaluate import eigen_crop_applies, eval_loader, frame_size, run_metrics
    from densepred.io import atomic_write_json
    from densepred.metrics import MetricSuite

    if dataset not in params.datasets:
        raise ValueError(f"profile {params.profile!r} has no `datasets.{dataset}` section")
    settings = reference_eval_settings(params, dataset)
    tasks = reference_tasks(params)
    root = prepared_root(params.datasets[dataset], dataset)
    num_classes = dataset_info(dataset).num_classes
    fit_tasks = ["semseg", "depth", "normals"]
    prior = fit_prior(ShardDataset(root, "train", tasks=fit_tasks, transform=EvalTransform()), num_classes)
    test = ShardDataset(root, settings.split, tasks=tasks, transform=EvalTransform())
    if len(test) == 0:
        raise ValueError(f"{dataset} split {settings.split!r} has no images to evaluate")
    model = TrivialPredictor(prior, tasks, num_classes).eval()
    env = dist_utils.DistEnv()  # one process on the CPU: the constants need no accelerator
    frame = frame_size(test[0])
    suite = MetricSuite.build(
        tasks,
        dataset,
        num_classes,
        settings.boundary_thresholds,
        eigen_crop_applies(settings.eigen_crop, dataset, frame),
    )
    runtime = params.runtime.model_copy(update={"device": "cpu", "channels_last": False})
    seen = run_metrics(model, eval_loader(test, settings.batch_size, env), suite, runtime, env)
    metrics = {k: (v if math.isfinite(v) else None) for k, v in suite.compute().items()}
    result: dict[str, Any] = {
        **metrics,
        "meta": {
            "job": REFERENCE_JOB,
            "model": "trivial",
            "tasks": tasks,
            "dataset": dataset,
            "split": settings.split,
            "fitted_on": "train",
            "profile": params.profile,
            "num_images": seen,
            "frame_size": list(frame),
            "prior": prior.as_dict(),
        },
    }
    atomic_write_json(out, result)
    print(f"[reference] {dataset}/{settings.split}: {seen} images -> {out}", flush=True)
    return result
