"""train_log.csv and the loss window between two of its rows (the trainer's logging state).

`TrainLog` appends one row per log step and, on resume, drops rows past the checkpoint's step;
`Window` holds the loss sums since the last row, reduced over ranks when a row is written, and is
saved in the resumable checkpoint so that a resumed run logs the same means as an uninterrupted one.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from densepred.engine import distributed as dist_utils
from densepred.engine.distributed import DistEnv
from densepred.io import naming_disk_full


@dataclass
class TrainLog:
    """train_log.csv: appended row by row; on resume, rows past the checkpoint's step are dropped."""

    path: Path
    fields: list[str] = field(default_factory=list)

    def truncate_after(self, step: int) -> None:
        """Keep the header and the rows with step <= `step` (rows of steps that will be redone go)."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        keep = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step and None not in r]
        if not keep:
            self.path.unlink()
            return
        self.fields = list(keep[0].keys())
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(keep)

    def append(self, row: Mapping[str, float | int]) -> None:
        new = not self.path.exists()
        if new:
            self.fields = list(row.keys())
        elif not self.fields:
            with open(self.path, newline="") as handle:
                self.fields = next(csv.reader(handle), [])
        missing = [k for k in row if k not in self.fields]
        if missing:
            raise ValueError(f"{self.path}: loss terms {missing} appeared mid-run (columns {self.fields})")
        with naming_disk_full(self.path), open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k, "")) for k in self.fields})
            handle.flush()


def _fmt(value: Any) -> Any:
    return f"{value:.8g}" if isinstance(value, float) else value


class Window:
    """Running sums of loss terms between two log steps, averaged over steps and ranks."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.grad_norm = 0.0
        self.t0 = time.perf_counter()

    def add(self, losses: Mapping[str, float], grad_norm: float) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.grad_norm += grad_norm
        self.steps += 1

    def _reduced(self, env: DistEnv) -> tuple[list[str], torch.Tensor]:
        """Sorted term names and their sums over ranks (grad norm last); a collective call."""
        keys = sorted(self.sums)
        t = torch.tensor([self.sums[k] for k in keys] + [self.grad_norm], dtype=torch.float64)
        return keys, dist_utils.all_reduce_sum(env, t)

    def means(self, env: DistEnv) -> dict[str, float]:
        keys, t = self._reduced(env)
        t /= max(1, self.steps) * env.world_size
        means = {k: float(v) for k, v in zip(keys, t[:-1].tolist())}
        means["grad_norm"] = float(t[-1])
        return means

    def state(self, env: DistEnv) -> dict[str, Any]:
        """The window so far, summed over ranks, for the checkpoint (a resumed run logs the same means)."""
        keys, t = self._reduced(env)
        return {"keys": keys, "sums": t, "steps": self.steps}

    @classmethod
    def restore(cls, state: Mapping[str, Any] | None, env: DistEnv) -> Window:
        """A window continuing `state`; rank 0 holds the (already rank-summed) sums, others zeros."""
        window = cls()
        if not state:
            return window
        sums = state["sums"].tolist() if env.is_main else [0.0] * (len(state["keys"]) + 1)
        window.sums = dict(zip(state["keys"], sums[:-1]))
        window.grad_norm = sums[-1]
        window.steps = int(state["steps"])
        return window
