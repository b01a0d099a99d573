"""Cost of the metric updates relative to the model forward, at the smoke evaluation size.

Setting (params/smoke.yaml, evaluate): batch 8 at 120x160, NYUD 40 classes, 4 tasks. The model is
the smoke backbone (timm `test_convnext`, random init) with a light per-task head, all outputs at
input resolution, which is what an evaluation step runs before the meters. Each figure is the
median over `--repeats` timed runs after `--warmup` untimed ones, in milliseconds per batch.

    .venv/bin/python bench/bench_metrics.py [--thresholds 11 101] [--repeats 7] [--threads 2]

The edge meter is reported per threshold count: 11 in the smoke profile, 101 (SEISM's HED set) in
the paper profile. Predictions are random, which is the worst case for the boundary meter (many
ridges after non-maximum suppression); trained models give sparser edge maps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from densepred.metrics import MetricSuite
from densepred.models.backbones import create_backbone

BATCH, HEIGHT, WIDTH, CLASSES = 8, 120, 160, 40


class SmokeModel(nn.Module):
    """The smoke backbone plus a 1x1-conv head per task on the stride-4 features, upsampled."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = create_backbone("test_convnext")
        channels = self.backbone.channels[0]
        self.heads = nn.ModuleDict(
            {
                "semseg": nn.Conv2d(channels, CLASSES, 1),
                "depth": nn.Conv2d(channels, 1, 1),
                "normals": nn.Conv2d(channels, 3, 1),
                "edge": nn.Conv2d(channels, 1, 1),
            }
        )

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(image)[0]
        size = image.shape[-2:]
        out = {
            name: nn.functional.interpolate(head(features), size=size, mode="bilinear", align_corners=False)
            for name, head in self.heads.items()
        }
        out["depth"] = nn.functional.softplus(out["depth"]) + 1e-3
        out["normals"] = nn.functional.normalize(out["normals"], dim=1)
        return out


def synthetic_batch(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A batch in the repository's conventions, with some invalid pixels."""
    semseg = torch.randint(0, CLASSES, (BATCH, HEIGHT, WIDTH), generator=generator)
    semseg[:, :4] = 255
    depth = torch.rand(BATCH, 1, HEIGHT, WIDTH, generator=generator) * 10
    normals = nn.functional.normalize(torch.randn(BATCH, 3, HEIGHT, WIDTH, generator=generator), dim=1)
    edge = torch.zeros(BATCH, 1, HEIGHT, WIDTH)
    edge[:, :, ::12, :] = 1  # sparse one-pixel boundaries, like real edge maps
    edge[:, :, :, ::16] = 1
    image = torch.rand(BATCH, 3, HEIGHT, WIDTH, generator=generator)
    return {"image": image, "semseg": semseg, "depth": depth, "normals": normals, "edge": edge}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=int, nargs="+", default=[11, 101])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = SmokeModel().eval()
    batch = synthetic_batch(generator)
    with torch.no_grad():
        outputs = model(batch["image"])
        forward_ms = timed(lambda: model(batch["image"]), args.repeats, args.warmup)

    print(f"batch {BATCH} x {HEIGHT}x{WIDTH}, {CLASSES} classes, 4 tasks, {args.threads} threads, "
          f"median of {args.repeats} runs")
    print(f"{'model forward':<28}{forward_ms:10.1f} ms")
    for count in args.thresholds:
        suite = MetricSuite.build(["semseg", "depth", "normals", "edge"], "nyud", CLASSES, boundary_thresholds=count)
        total = 0.0
        for name, meter in suite.meters.items():
            task = "depth" if name.startswith("depth") else name
            cost = timed(lambda m=meter, t=task: m.update(outputs[t], batch[t]), args.repeats, args.warmup)
            total += cost
            print(f"{name + (f' ({count} thr)' if name == 'edge' else ''):<28}{cost:10.1f} ms")
        share = 100 * total / (total + forward_ms)
        print(f"{f'all meters ({count} thr)':<28}{total:10.1f} ms   = {share:.1f}% of forward + metrics")
        without_edge = total - timed(
            lambda s=suite: s.meters["edge"].update(outputs["edge"], batch["edge"]), args.repeats, args.warmup
        )
        print(f"{'  without edge':<28}{without_edge:10.1f} ms   = "
              f"{100 * without_edge / (without_edge + forward_ms):.1f}%")


if __name__ == "__main__":
    main()
