"""Time of three hot spots, the library form against the textbook form.

  * `ops.l2_normalize` against `F.normalize` along the channel axis of NCHW maps (normals outputs,
    PolyMaX pixel embeddings);
  * `losses.segmentation.instance_discrimination_loss` (closed form: only the logit matrix is N x N)
    against the dense form (target, log-softmax and product matrices), N sampled pixels per image;
  * `metrics.semseg.first_argmax` against `Tensor.max(dim=1)` on NCHW logits (SemsegMeter's labels;
    evaluation, so forward only).

    .venv/bin/python bench/bench_ops.py [--repeats 15] [--threads 1]

Shapes follow the smoke profile (batch 8; training ops at 120x160 with embeddings at 1/4
resolution, logits at the 96x128 NYUD frames with 40 classes) and one paper-profile size. Prints the
median milliseconds and the ratio.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from densepred.losses.segmentation import instance_discrimination_loss
from densepred.metrics.semseg import first_argmax
from densepred.ops import l2_normalize


def median_ms(
    step: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int, backward: bool = True
) -> float:
    """Median wall time of `step(x).sum().backward()` (or of `step(x)` alone with `backward=False`)
    over `repeats` runs, after one warm-up."""
    times = []
    for _ in range(repeats + 1):
        leaf = x.detach().requires_grad_(backward)
        start = time.perf_counter()
        out = step(leaf)
        if backward:
            out.sum().backward()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[repeats // 2] * 1e3


def dense_instance_discrimination(emb: torch.Tensor, labels: torch.Tensor, temperature: float = 0.3):
    """The textbook form over every pixel of each image (N x N target and log-softmax matrices)."""
    losses = []
    for feats, lab in zip(emb.flatten(2).transpose(1, 2), labels.flatten(1), strict=True):
        same = (lab[:, None] == lab[None, :]).float()
        target = same / same.sum(dim=1, keepdim=True)
        log_p = torch.log_softmax(feats @ feats.t() / temperature, dim=1)
        rows = -(target * log_p).sum(dim=1) + (target * torch.log(target.clamp_min(1e-12))).sum(dim=1)
        losses.append(rows.mean())
    return torch.stack(losses).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{'case':44s} {'textbook ms':>12s} {'ours ms':>9s} {'ratio':>6s}")
    for shape in [(8, 3, 120, 160), (8, 16, 30, 40), (8, 128, 60, 80)]:
        x = torch.randn(*shape)
        slow = median_ms(lambda t: F.normalize(t, dim=1), x, args.repeats)
        fast = median_ms(lambda t: l2_normalize(t, dim=1), x, args.repeats)
        print(f"{'normalize ' + str(shape):44s} {slow:12.2f} {fast:9.2f} {slow / fast:6.1f}")
    for b, e, h, w in [(8, 16, 32, 40), (2, 128, 64, 64)]:
        emb = F.normalize(torch.randn(b, e, h, w), dim=1)
        labels = torch.randint(0, 12, (b, h, w))
        slow = median_ms(functools.partial(dense_instance_discrimination, labels=labels), emb, args.repeats)
        fast = median_ms(
            functools.partial(instance_discrimination_loss, labels=labels, num_classes=12, sample_k=0),
            emb,
            args.repeats,
        )
        case = f"instance discrimination B={b} E={e} N={h * w}"
        print(f"{case:44s} {slow:12.2f} {fast:9.2f} {slow / fast:6.1f}")
    for shape in [(8, 40, 96, 128), (1, 40, 480, 640)]:
        logits = torch.randn(*shape)
        slow = median_ms(lambda t: t.max(dim=1).indices, logits, args.repeats, backward=False)
        fast = median_ms(first_argmax, logits, args.repeats, backward=False)
        print(f"{'first_argmax ' + str(shape):44s} {slow:12.2f} {fast:9.2f} {slow / fast:6.1f}")


if __name__ == "__main__":
    main()
