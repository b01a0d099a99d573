"""Training progress: a tqdm bar (loss, images/s, ETA) on a terminal, plain periodic lines otherwise.

CI logs and Snakemake log files get one line every `every` steps, e.g.

    [polymax_depth/finetune] step 120/300 (40%) loss 1.2345 lr 4.1e-04 35.2 img/s eta 0:01:23

Only the main process (rank 0) prints.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO


def format_rate(images_per_s: float) -> str:
    """Images per second with one decimal, or two significant digits below 0.1 (paper-size models on
    a CPU train at about 0.02 img/s, which one decimal would show as 0.0)."""
    return f"{images_per_s:.1f}" if images_per_s >= 0.1 else f"{images_per_s:.2g}"


def format_eta(seconds: float) -> str:
    """Seconds as H:MM:SS ('?' when unknown)."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    return str(datetime.timedelta(seconds=round(seconds)))


class Progress:
    """Reports training steps; `update` is called after every optimiser step."""

    def __init__(
        self,
        total: int,
        start: int,
        desc: str,
        every: int = 10,
        enabled: bool = True,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self.total = total
        self.start = start
        self.desc = desc
        self.every = max(1, every)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self._t0 = time.perf_counter()
        self._bar = None
        if enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, desc=desc, file=self.stream, dynamic_ncols=True)

    def update(self, step: int, loss: float, lr: float, images_per_s: float) -> None:
        """Record that `step` steps are done (1-based count), with the latest loss, lr and throughput."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(
                loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}", refresh=False
            )
            return
        if step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self._t0
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        pct = 100.0 * step / self.total
        self.write(
            f"step {step}/{self.total} ({pct:.0f}%) loss {loss:.4f} lr {lr:.2e} "
            f"{format_rate(images_per_s)} img/s eta {format_eta(eta)}"
        )

    def write(self, message: str) -> None:
        """Print a message (through tqdm when a bar is shown, so the bar stays intact)."""
        if not self.enabled:
            return
        line = f"[{self.desc}] {message}"
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
