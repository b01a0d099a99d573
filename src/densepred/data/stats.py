"""Per-split dataset statistics accumulated sample by sample while preparing shards.

Recorded (all over valid pixels only): image channel mean/std; depth min/max/mean, approximate
1st/50th/99th percentiles from a 1024-bin histogram over [0, 2 x max depth] (bin width 2 cm for
NYUD, 25 cm for Taskonomy), valid fraction; semantic pixel counts and frequencies per class plus
ignored pixels; normal component histograms (32 bins over [-1, 1]) and valid fraction; edge
positive fraction (what a balanced edge loss needs). Sums are float64/int64, so the result does not
depend on sample order beyond float rounding.
"""

from __future__ import annotations

import numpy as np

from densepred.data.samples import DEPTH_LIMIT_FACTOR
from densepred.tasks import IGNORE_INDEX, dataset_info

DEPTH_BINS = 1024
NORMAL_BINS = 32


class StatsAccumulator:
    """Running statistics of one split; `add(sample)` per sample, `result()` at the end."""

    def __init__(self, dataset: str) -> None:
        info = dataset_info(dataset)
        self.num_classes = info.num_classes
        self.depth_edges = np.linspace(0.0, DEPTH_LIMIT_FACTOR * info.max_depth, DEPTH_BINS + 1)
        self.normal_edges = np.linspace(-1.0, 1.0, NORMAL_BINS + 1)
        self.samples = 0
        self.pixels = 0
        self.image_sum = np.zeros(3)
        self.image_sq = np.zeros(3)
        self.depth_hist = np.zeros(DEPTH_BINS, dtype=np.int64)
        self.depth_sum, self.depth_min, self.depth_max = 0.0, np.inf, 0.0
        self.class_counts = np.zeros(256, dtype=np.int64)
        self.normal_hist = np.zeros((3, NORMAL_BINS), dtype=np.int64)
        self.normal_valid = 0
        self.edge_positive = 0
        self.seen: set[str] = set()

    def add(self, sample: dict) -> None:
        image = sample["image"].numpy().reshape(3, -1).astype(np.float64)
        self.samples += 1
        self.pixels += image.shape[1]
        self.image_sum += image.sum(axis=1)
        self.image_sq += (image**2).sum(axis=1)
        for key in ("semseg", "depth", "normals", "edge"):
            if key in sample:
                self.seen.add(key)
                getattr(self, f"_add_{key}")(sample[key].numpy())

    def _add_semseg(self, semseg: np.ndarray) -> None:
        self.class_counts += np.bincount(semseg.ravel(), minlength=256)[:256]

    def _add_depth(self, depth: np.ndarray) -> None:
        valid = depth[depth > 0].astype(np.float64)
        if valid.size:
            self.depth_hist += np.histogram(valid, bins=self.depth_edges)[0]
            self.depth_sum += valid.sum()
            self.depth_min = min(self.depth_min, float(valid.min()))
            self.depth_max = max(self.depth_max, float(valid.max()))

    def _add_normals(self, normals: np.ndarray) -> None:
        flat = normals.reshape(3, -1)
        valid = flat[:, flat.any(axis=0)]
        self.normal_valid += valid.shape[1]
        for c in range(3):
            self.normal_hist[c] += np.histogram(valid[c], bins=self.normal_edges)[0]

    def _add_edge(self, edge: np.ndarray) -> None:
        self.edge_positive += int(edge.sum())

    def result(self) -> dict:
        """The statistics as a JSON-ready dict."""
        pixels = max(self.pixels, 1)
        mean = self.image_sum / pixels
        std = np.sqrt(np.maximum(self.image_sq / pixels - mean**2, 0.0))
        out: dict = {
            "samples": self.samples,
            "pixels": self.pixels,
            "image": {"mean": mean.tolist(), "std": std.tolist()},
        }
        if "depth" in self.seen:
            out["depth"] = self._depth_result(pixels)
        if "semseg" in self.seen:
            counts = self.class_counts[: self.num_classes]
            labelled = max(int(counts.sum()), 1)
            out["semseg"] = {
                "pixel_counts": counts.tolist(),
                "frequencies": (counts / labelled).tolist(),
                "ignore_pixels": int(self.class_counts[IGNORE_INDEX]),
            }
        if "normals" in self.seen:
            out["normals"] = {
                "valid_fraction": self.normal_valid / pixels,
                "bin_edges": self.normal_edges.tolist(),
                "histogram": {axis: self.normal_hist[c].tolist() for c, axis in enumerate("xyz")},
            }
        if "edge" in self.seen:
            out["edge"] = {"positive_fraction": self.edge_positive / pixels}
        return out

    def _depth_result(self, pixels: int) -> dict:
        valid = int(self.depth_hist.sum())
        cumulative = np.cumsum(self.depth_hist)

        def percentile(q: float) -> float:
            return float(self.depth_edges[1 + np.searchsorted(cumulative, q * valid)]) if valid else 0.0

        return {
            "min": self.depth_min if valid else 0.0,
            "max": self.depth_max,
            "mean": self.depth_sum / valid if valid else 0.0,
            "p01": percentile(0.01),
            "p50": percentile(0.50),
            "p99": percentile(0.99),
            "valid_fraction": valid / pixels,
            "bin_edges": [float(self.depth_edges[0]), float(self.depth_edges[-1]), DEPTH_BINS],
            "histogram": self.depth_hist.tolist(),
        }
