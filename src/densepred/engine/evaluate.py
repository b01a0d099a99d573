"""`densepred evaluate`: metrics of a checkpoint on a test split, figures, and an MLflow run.

`evaluate_job(run)` takes the evaluation's `StageRun` (StageRun.evaluate: the checkpoint `run.init`,
the metrics JSON `run.out`, the dataset evaluated on, the job's evaluation settings), resolved once
by the CLI, the pipeline or the sweep runner.

The model is rebuilt from the checkpoint's own meta (model config, tasks, training dataset), never
from the current params, so a Taskonomy checkpoint keeps its 17 classes and 128 m depth range.
Metrics come from `densepred.metrics.MetricSuite`: both depth protocols (Eigen per-image, capped at
the *evaluation* dataset's max depth; and the multi-task global protocol), normals, segmentation and
boundaries, for whichever of those tasks the model predicts.

Outputs:
    <out>.json              flat metrics ("semseg/miou", "depth_eigen/rms", ...) plus "meta"; sorted
                            keys, written atomically; no timestamps, so equal runs give equal files
    <out>_figures/          `num_qualitative` prediction PNGs and, for PolyMaX, cluster probability
                            maps of the first image (the folder is `paths.figures_dir(<out>.json)`)

MLflow: one run per evaluation (tag `stage=evaluate`), opened once the checkpoint, its model and the
prepared data's index and shard sizes have passed their checks (a command refused on them opens no
run) and before the work, so its duration is real; it records the checkpoint evaluated (path,
training stage, fingerprint, weights digest), the prepared dataset (`log_input`, digest of its
shards), the final metrics, the JSON and the figures.
When the store is unreachable the record waits in `<out>.tracking_pending.jsonl` beside the JSON
(`paths.eval_tracking_journal`): while that file exists, the evaluation is not yet in MLflow.

Under torchrun each rank evaluates a contiguous, non-overlapping slice of the split (no padding
duplicates), the meters' summable states are all-reduced, and rank 0 writes the outputs: every test
image is counted exactly once.

Cost figures in "meta": `params_m` (millions of parameters), `gflops` counted by
`torch.utils.flop_counter.FlopCounterMode` for one image at the evaluation input size, where one
multiply-accumulate is 2 FLOPs (so `gmacs = gflops / 2`; papers that quote "GFLOPs" computed with
fvcore, MQTransformer's Table II among them, report MACs).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from densepred import paths, tracking
from densepred.config import RuntimeCfg
from densepred.engine import distributed as dist_utils
from densepred.engine.build import (
    build_eval_dataset,
    build_model,
    collate_fn,
    parse_model_config,
    prepared_root,
)
from densepred.engine.checkpoint import load_checkpoint, loaded_identity
from densepred.engine.distributed import DistEnv
from densepred.engine.runtime import autocast_context, job_settings, to_device, uses_channels_last
from densepred.io import atomic_dir, atomic_write_json
from densepred.metrics import MetricSuite
from densepred.metrics.depth import EIGEN_FRAME
from densepred.stage_run import StageRun
from densepred.tasks import dataset_info

FLOPS_CONVENTION = "torch.utils.flop_counter: 1 multiply-accumulate = 2 FLOPs; gmacs = gflops / 2"


def model_from_checkpoint(ckpt: dict[str, Any], path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model described by a checkpoint's meta, with its weights loaded (strict)."""
    meta = ckpt["meta"]
    model_cfg = parse_model_config(meta["model"], source=str(path))
    model = build_model(model_cfg, list(meta["tasks"]), meta["dataset"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit the model its meta describes: {exc}") from None
    return model, meta


def check_compatible(meta: dict[str, Any], job_tasks: list[str], job: str, dataset: str, path: Path) -> None:
    """The checkpoint must predict the job's tasks; semseg needs the evaluation dataset's class count."""
    if sorted(meta["tasks"]) != sorted(job_tasks):
        raise ValueError(
            f"checkpoint {path} predicts tasks {meta['tasks']} but job {job!r} has tasks {job_tasks}"
        )
    classes = dataset_info(dataset).num_classes
    if "semseg" in meta["tasks"] and meta["num_classes"] != classes:
        raise ValueError(
            f"checkpoint {path} was trained on {meta['dataset']} with {meta['num_classes']} classes; "
            f"{dataset} semseg has {classes} classes, so it cannot be evaluated there"
        )


def count_cost(model: nn.Module, input_size: tuple[int, int]) -> dict[str, float]:
    """Parameters (millions) and FLOPs (billions) of one eval-mode forward at `input_size`, on CPU fp32."""
    from torch.utils.flop_counter import FlopCounterMode

    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    device = next(model.parameters()).device
    image = torch.zeros(1, 3, *input_size, device=device)
    counter = FlopCounterMode(display=False)
    # The counter's module tracker hooks tensors that require grad; frozen parameters avoid that.
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with torch.no_grad(), counter:
            model(image)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    gflops = counter.get_total_flops() / 1e9
    return {"params_m": round(params_m, 6), "gflops": round(gflops, 6), "gmacs": round(gflops / 2, 6)}


def _finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: metrics that are undefined (e.g. a class absent everywhere) become null."""
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


def eval_loader(dataset: Any, batch_size: int, env: DistEnv) -> DataLoader:
    """This rank's contiguous slice of the split, in order."""
    part = dist_utils.shard_range(len(dataset), env.rank, env.world_size)
    return DataLoader(
        Subset(dataset, list(part)),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_fn(),
        num_workers=0,
    )


def _crop(values: dict[str, Any], rows: slice, size: list[int]) -> dict[str, Any]:
    return {
        k: v[rows, ..., : size[0], : size[1]] if isinstance(v, torch.Tensor) and v.ndim >= 3 else v
        for k, v in values.items()
    }


def frame_size(sample: dict[str, Any]) -> tuple[int, int]:
    """An evaluation sample's frame size (H, W) before EvalTransform's padding."""
    if "valid_size" in sample:
        return tuple(int(v) for v in sample["valid_size"].tolist())
    return tuple(int(v) for v in sample["image"].shape[-2:])


def eigen_crop_applies(requested: bool, dataset: str, frame: tuple[int, int]) -> bool:
    """Whether the eigen protocol's crop applies: it was asked for (`evaluate.eigen_crop`) and the
    frames are NYUD-v2's official 480x640, on which the crop is defined (Eigen et al. 2014). A job
    evaluated on Taskonomy too (table 3) shares the NYUD-v2 `eval` preset; no crop applies there.

    The multi-task layout's 425x560 frames (ATRC, MTI-Net, MQTransformer) are the 480x640 frames
    already cut inside the registration border, and that protocol applies no further crop
    (MQTransformer Sec. IV-A evaluates them whole), so one params profile evaluates either layout;
    the metrics JSON records which (`meta.eigen_crop`, `meta.frame_size`).
    """
    return requested and dataset == "nyud" and tuple(frame) == EIGEN_FRAME


def valid_parts(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any]
) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """Predictions and targets cropped to each image's `valid_size` (EvalTransform pads to /32).

    Padding is filled with ignore values, but the boundary meter would still count padded pixels as
    true negatives, so every task is cropped. Images of one size stay one batch; otherwise each
    image is its own part.
    """
    sizes = batch.get("valid_size")
    if sizes is None:
        return [(outputs, batch)]
    sizes = sizes.tolist()
    if all(size == sizes[0] for size in sizes):
        return [(_crop(outputs, slice(None), sizes[0]), _crop(batch, slice(None), sizes[0]))]
    return [
        (_crop(outputs, slice(i, i + 1), s), _crop(batch, slice(i, i + 1), s)) for i, s in enumerate(sizes)
    ]


@torch.no_grad()
def run_metrics(
    model: nn.Module, loader: DataLoader, suite: MetricSuite, runtime: RuntimeCfg, env: DistEnv
) -> int:
    """Update `suite` over this rank's batches; returns the number of images this rank saw."""
    channels_last = uses_channels_last(runtime, env.device)
    seen = 0
    for batch in loader:
        batch = to_device(batch, env.device, channels_last)
        with autocast_context(runtime, env.device):
            outputs = model(batch["image"])
        outputs = {k: v.float() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
        for part_outputs, part_batch in valid_parts(outputs, batch):
            suite.update(part_outputs, part_batch)
        seen += batch["image"].shape[0]
    return seen


def _predict_one(model: nn.Module, sample: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Eval outputs and the sample itself, both cropped to the unpadded image, without batch axes."""
    device = next(model.parameters()).device
    outputs = model(sample["image"].to(device)[None])
    outputs = {k: v.float().cpu() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    batch = {k: v[None] if isinstance(v, torch.Tensor) else v for k, v in sample.items()}
    [(preds, targets)] = valid_parts(outputs, batch)
    return _unbatch(preds), _unbatch(targets)


def _unbatch(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v[0] if isinstance(v, torch.Tensor) else v for k, v in values.items()}


@torch.no_grad()
def write_figures(
    model: nn.Module, dataset: Any, count: int, folder: Path, meta: dict[str, Any], eval_dataset: str
) -> list[Path]:
    """`count` qualitative PNGs (the split's first images) and, for PolyMaX, cluster maps of image 0."""
    from densepred.figures import save_cluster_maps, save_prediction_figure

    max_depth = dataset_info(eval_dataset).max_depth
    names = []
    with atomic_dir(folder) as tmp:
        for index in range(min(count, len(dataset))):
            preds, sample = _predict_one(model, dataset[index])
            targets = {k: v for k, v in sample.items() if k in preds}
            names.append(f"prediction_{index:03d}.png")
            save_prediction_figure(
                tmp / names[-1], sample["image"], targets, preds, meta["num_classes"], max_depth
            )
        cluster_maps = getattr(model, "cluster_maps", None)
        if callable(cluster_maps) and len(dataset) > 0:
            sample = dataset[0]
            maps = cluster_maps(sample["image"].to(next(model.parameters()).device)[None])
            height, width = (
                sample["valid_size"].tolist() if "valid_size" in sample else sample["image"].shape[-2:]
            )
            probs = maps["probs"][0, :, :height, :width].cpu()
            names.append("clusters_000.png")
            image = sample["image"][:, :height, :width]
            save_cluster_maps(tmp / names[-1], image, probs, maps["values"][0].cpu(), meta["tasks"][0])
    return [folder / name for name in names]


def evaluate_job(run: StageRun, *, nesting: tracking.Nesting | None = None) -> dict[str, Any]:
    """Evaluate checkpoint `run.init` of job `run.job` on `run.dataset`; write the metrics JSON
    `run.out` and the figures beside it; return the metrics dict. `nesting` places the MLflow run
    under a sweep trial's run (tune.py's `run_trial`)."""
    if run.init is None:
        raise ValueError(f"{run.job}/evaluate: no checkpoint to evaluate")
    env = dist_utils.setup(run.runtime.device)
    try:
        with job_settings(run.runtime, env.device, run.seed):
            return _evaluate(run, run.init, env, nesting)
    finally:
        dist_utils.teardown(env)


def _evaluate(
    run: StageRun, ckpt_path: Path, env: DistEnv, nesting: tracking.Nesting | None
) -> dict[str, Any]:
    ds_name = run.dataset
    ckpt = load_checkpoint(ckpt_path)
    check_compatible(ckpt["meta"], list(run.job_cfg.tasks), run.job, ds_name, ckpt_path)
    # What can refuse the command before the work does so before its MLflow run opens: the checkpoint
    # and the model it describes, the prepared data's index and shard sizes.
    model, meta = model_from_checkpoint(ckpt, ckpt_path)
    data = build_eval_dataset(run, list(meta["tasks"]))
    if len(data) == 0:
        raise ValueError(f"{ds_name} split {run.eval_settings.split!r} has no images to evaluate")
    journal = paths.eval_tracking_journal(run.out)
    with tracking.start_run(
        tracking.RunSubject.of_stage(run), "evaluate", journal=journal, enabled=env.is_main, nesting=nesting
    ) as tracker:
        tracker.set_tags(checkpoint_tags(meta, ckpt_path, ds_name))
        tracker.log_input(tracking.prepared_dataset(ds_name, prepared_root(run.data, ds_name), "evaluation"))
        weights = loaded_identity(ckpt)  # what the evaluation's fingerprint starts from (records.py)
        return _evaluate_checkpoint(run, model, meta, data, ckpt_path, weights, env, tracker)


def checkpoint_tags(meta: dict[str, Any], path: Path, dataset: str) -> dict[str, str]:
    """What an evaluation run records about the checkpoint it evaluates: its path, the training stage
    and fingerprint that made it, the digest of its weights, and the dataset evaluated on."""
    return {
        "dataset": dataset,
        "checkpoint": str(Path(path).resolve()),
        "train_stage": str(meta.get("stage", "")),
        "checkpoint_settings_hash": str(meta.get("settings_hash", "")),
        "checkpoint_weights_digest": str(meta.get("weights_digest", "")),
    }


def _evaluate_checkpoint(
    run: StageRun,
    model: nn.Module,
    meta: dict[str, Any],
    data: Any,
    ckpt_path: Path,
    weights: str,
    env: DistEnv,
    tracker: tracking.Run,
) -> dict[str, Any]:
    settings, ds_name, out_json = run.eval_settings, run.dataset, run.out
    model = model.to(env.device).eval()
    if uses_channels_last(run.runtime, env.device):
        model = model.to(memory_format=torch.channels_last)
    first = data[0]  # one decode of a full-size sample gives both sizes
    frame, input_size = frame_size(first), tuple(int(s) for s in first["image"].shape[-2:])
    eigen_crop = eigen_crop_applies(settings.eigen_crop, ds_name, frame)
    if settings.eigen_crop and not eigen_crop:
        print(
            f"[{run.job}/evaluate] {ds_name} frames of {frame[0]}x{frame[1]}: the Eigen crop (NYUD-v2 "
            f"{EIGEN_FRAME[0]}x{EIGEN_FRAME[1]} frames only) is not applied",
            flush=True,
        )
    suite = MetricSuite.build(
        meta["tasks"], ds_name, meta["num_classes"], settings.boundary_thresholds, eigen_crop
    )
    seen = run_metrics(model, eval_loader(data, settings.batch_size, env), suite, run.runtime, env)
    suite.sync()
    total = int(dist_utils.all_reduce_sum(env, torch.tensor([seen], dtype=torch.int64)).item())
    if total != len(data):
        raise RuntimeError(f"evaluated {total} images but the split has {len(data)}")
    metrics = _finite_or_none(suite.compute())
    result: dict[str, Any] = dict(metrics)
    if env.is_main:
        result["meta"] = {
            "job": run.job,
            "model": meta["model"]["name"],
            "backbone": meta["model"]["backbone"],
            "tasks": list(meta["tasks"]),
            "dataset": ds_name,
            "split": settings.split,
            "trained_on": meta["dataset"],
            "train_stage": meta["stage"],
            "profile": run.profile,
            "checkpoint": str(ckpt_path),
            # the evaluation's own record (records.py): its fingerprint, with the checkpoint's
            # weights as its init, and the identity that fingerprint hashes
            "settings_hash": run.fingerprint(weights),
            "identity": run.identity(),
            "num_images": total,
            "input_size": list(input_size),
            "frame_size": list(frame),
            "eigen_crop": eigen_crop,
            "boundary_thresholds": len(suite.meters["edge"].thresholds) if "edge" in suite.meters else None,
            "flops_convention": FLOPS_CONVENTION,
            **count_cost(model, input_size),
        }
        figures = Path(paths.figures_dir(out_json))
        write_figures(model, data, settings.num_qualitative, figures, meta, ds_name)
        atomic_write_json(out_json, result)  # last: its existence means the evaluation is complete
        tracker.log_metrics(
            {k: v for k, v in metrics.items() if v is not None and "/iou_per_class/" not in k}
        )
        tracker.log_artifact(out_json)
        if figures.exists():
            tracker.log_artifact(figures)
        print(f"[{run.job}/evaluate] {ds_name}/{settings.split}: {total} images -> {out_json}", flush=True)
    dist_utils.barrier(env)
    return result
