"""Cost of the metric updates relative to the model forward, at the smoke evaluation size.

Setting (params/smoke.yaml): the evaluation batch size at the synthetic NYUD frame size (8 at 96x128),
NYUD 40 classes, 4 tasks. The model is the smoke MQTransformer (test_convnext backbone, width_mult
0.25, 16 queries, random init); with
`--model toy` (or if that model cannot be built) a 1x1-conv head per task on the smoke backbone.
Each figure is the median over `--repeats` timed runs after `--warmup` untimed ones, in ms per batch.

    .venv/bin/python bench/bench_metrics.py [--thresholds 11 101] [--repeats 7] [--threads 1]

The edge meter is timed on two inputs: the untrained model's logits (smooth, mid-range
probabilities that quantise into plateaus which survive non-maximum suppression: the worst case),
and "trained-like" logits peaked on the ground-truth boundaries (what an evaluation of a trained
model sees). Thresholds: 11 in the smoke profile, 101 (SEISM's HED set) in the paper profile.
On a machine shared with other jobs use `--threads 1`: intra-op threads that wait on each other
inflate every figure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from densepred.metrics import MetricSuite
from densepred.models import create_model
from densepred.models.backbones import create_backbone
from densepred.params_loading import load_params
from densepred.tasks import dataset_info

_SMOKE = load_params(Path(__file__).resolve().parents[1] / "params" / "smoke.yaml")
BATCH = _SMOKE.job("mqtransformer").evaluate.batch_size
HEIGHT, WIDTH = _SMOKE.synth.nyud.height, _SMOKE.synth.nyud.width
CLASSES = dataset_info("nyud").num_classes
TASKS = ["semseg", "depth", "normals", "edge"]


class ToyModel(nn.Module):
    """The smoke backbone plus a 1x1-conv head per task on the stride-4 features, upsampled."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = create_backbone("test_convnext")
        channels = self.backbone.channels[0]
        sizes = {"semseg": CLASSES, "depth": 1, "normals": 3, "edge": 1}
        self.heads = nn.ModuleDict({name: nn.Conv2d(channels, size, 1) for name, size in sizes.items()})

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(image)[0]
        out = {
            name: nn.functional.interpolate(head(features), size=image.shape[-2:], mode="bilinear")
            for name, head in self.heads.items()
        }
        out["depth"] = nn.functional.softplus(out["depth"]) + 1e-3
        out["normals"] = nn.functional.normalize(out["normals"], dim=1)
        return out


def build_model(name: str) -> tuple[nn.Module, str]:
    """The smoke MQTransformer, or the toy model (also when the former cannot be built)."""
    if name == "mqtransformer":
        try:
            model = create_model(
                "mqtransformer", tasks=TASKS, backbone="test_convnext", width_mult=0.25, num_queries=16
            )
            return model.eval(), "mqtransformer (smoke config)"
        except Exception as error:  # the model module is developed separately; fall back
            print(f"mqtransformer unavailable ({type(error).__name__}: {error}); using the toy model")
    return ToyModel().eval(), "toy (test_convnext + 1x1 heads)"


def synthetic_batch(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A batch in the repository's conventions, with some invalid pixels and sparse boundaries."""
    semseg = torch.randint(0, CLASSES, (BATCH, HEIGHT, WIDTH), generator=generator)
    semseg[:, :4] = 255
    depth = torch.rand(BATCH, 1, HEIGHT, WIDTH, generator=generator) * 10
    normals = nn.functional.normalize(torch.randn(BATCH, 3, HEIGHT, WIDTH, generator=generator), dim=1)
    edge = torch.zeros(BATCH, 1, HEIGHT, WIDTH)
    edge[:, :, 6::24, :] = 1
    edge[:, :, :, 8::32] = 1
    image = torch.rand(BATCH, 3, HEIGHT, WIDTH, generator=generator)
    return {"image": image, "semseg": semseg, "depth": depth, "normals": normals, "edge": edge}


def trained_like_edge_logits(edge: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Logits peaked on the boundaries (blurred ground truth) plus noise: near-zero probability elsewhere."""
    kernel = torch.tensor([0.3, 0.7, 1.0, 0.7, 0.3])
    blurred = nn.functional.conv2d(edge, kernel.view(1, 1, 1, 5), padding=(0, 2))
    blurred = nn.functional.conv2d(blurred, kernel.view(1, 1, 5, 1), padding=(2, 0)).clamp(max=1)
    return 10 * blurred - 6 + 0.5 * torch.randn(edge.shape, generator=generator)


def timed(fn, repeats: int, warmup: int) -> float:
    """Median wall time of `fn()` in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(1000 * (time.perf_counter() - start))
    return statistics.median(samples)


def row(label: str, ms: float, forward_ms: float | None = None) -> None:
    share = f"   {100 * ms / forward_ms:6.1f}% of forward" if forward_ms else ""
    print(f"{label:<40}{ms:9.1f} ms{share}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mqtransformer", "toy"], default="mqtransformer")
    parser.add_argument("--thresholds", type=int, nargs="+", default=[11, 101])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model, model_name = build_model(args.model)
    batch = synthetic_batch(generator)
    with torch.no_grad():
        outputs = model(batch["image"])
        forward_ms = timed(lambda: model(batch["image"]), args.repeats, args.warmup)
    trained_like = trained_like_edge_logits(batch["edge"], generator)
    edge_inputs = {"untrained": outputs["edge"], "trained-like": trained_like}

    print(
        f"batch {BATCH} x {HEIGHT}x{WIDTH}, {CLASSES} classes, {len(TASKS)} tasks, "
        f"{args.threads} thread(s), median of {args.repeats} runs"
    )
    row(f"forward: {model_name}", forward_ms)
    suite = MetricSuite.build(TASKS, "nyud", CLASSES, boundary_thresholds=args.thresholds[0])
    dense_total = 0.0
    for name in ("semseg", "depth_eigen", "depth_mtl", "normals"):
        task = name.split("_")[0]
        meter = suite.meters[name]
        cost = timed(lambda m=meter, t=task: m.update(outputs[t], batch[t]), args.repeats, args.warmup)
        dense_total += cost
        row(f"  {name}", cost, forward_ms)
    row("  semseg + depth x2 + normals", dense_total, forward_ms)
    for count in args.thresholds:
        for label, logits in edge_inputs.items():
            meter = MetricSuite.build(["edge"], "nyud", CLASSES, boundary_thresholds=count).meters["edge"]
            cost = timed(lambda m=meter, x=logits: m.update(x, batch["edge"]), args.repeats, args.warmup)
            row(f"  edge, {count} thresholds, {label}", cost, forward_ms)
            row(f"  all meters, {count} thresholds, {label}", dense_total + cost, forward_ms)


if __name__ == "__main__":
    main()
