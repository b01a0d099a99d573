"""PolyMaX model size: parameters and GFLOPs at full width (the PolyMaX part of bench/model_size.py).

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on one eval-mode forward pass of a
single image. FlopCounterMode counts 2 FLOPs per multiply-accumulate; like most dense-prediction
tables (and the MQTransformer paper's Params/GFLOPs column), we report **multiply-accumulates**:
`gflops = counted FLOPs / 2 / 1e9`. Only matrix products and convolutions are counted (softmax,
normalisation and element-wise ops are not), which is also the usual convention.

`params_M` counts the parameters used at inference: the training-only auxiliary semantic head of the
semseg model is excluded (its size is reported separately in `aux_params_M`). Backbones are randomly
initialised (no download); parameter counts and FLOPs do not depend on the weights.

Usage: `python bench/model_size_polymax.py [--quick] [--out results/model_size_polymax.csv]`
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from densepred.models import create_model

COLUMNS = ("model", "backbone", "task", "input", "num_clusters", "params_M", "aux_params_M", "gflops")
BACKBONES = ("convnext_large", "resnet50", "convnext_tiny")
TASKS = ("semseg", "depth", "normals")
NYUD_INPUT = (480, 640)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(inference parameters, training-only auxiliary parameters)."""
    aux = sum(p.numel() for n, p in model.named_parameters() if n.startswith("aux_semantic."))
    total = sum(p.numel() for p in model.parameters())
    return total - aux, aux


def count_macs(model: torch.nn.Module, size: tuple[int, int]) -> int:
    """Multiply-accumulates of one eval-mode forward pass on a (1,3,H,W) image."""
    model.eval()
    # Frozen parameters instead of torch.no_grad(): FlopCounterMode's module tracker asserts on
    # grad-mode tensors created under no_grad; with nothing requiring grad no graph is built either.
    model.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.rand(1, 3, *size))
    return counter.get_total_flops() // 2


def polymax_size_rows(
    backbones: tuple[str, ...] = BACKBONES,
    tasks: tuple[str, ...] = TASKS,
    size: tuple[int, int] = NYUD_INPUT,
    num_classes: int = 40,
    width_mult: float = 1.0,
) -> list[dict]:
    """One row per (backbone, task): full-size PolyMaX (kMaX widths, decoder (2,2,2)) at `size`."""
    rows = []
    for backbone in backbones:
        for task in tasks:
            torch.manual_seed(0)
            model = create_model(
                "polymax", task=task, backbone=backbone, num_classes=num_classes, width_mult=width_mult
            )
            params, aux = count_params(model)
            macs = count_macs(model, size)
            rows.append(
                {
                    "model": "polymax",
                    "backbone": backbone,
                    "task": task,
                    "input": f"{size[0]}x{size[1]}",
                    "num_clusters": model.num_clusters,
                    "params_M": round(params / 1e6, 2),
                    "aux_params_M": round(aux / 1e6, 2),
                    "gflops": round(macs / 1e9, 2),
                }
            )
            del model
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ConvNeXt-L depth only")
    parser.add_argument("--out", type=Path, default=None, help="CSV file to write (default: stdout only)")
    args = parser.parse_args(argv)
    if args.quick:
        rows = polymax_size_rows(backbones=("convnext_large",), tasks=("depth",))
    else:
        rows = polymax_size_rows()
    writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
