"""Boundary detection: the SEISM/BSDS precision-recall protocol (odsF, oisF, AP).

Protocol (docs/protocols.md, "Boundary detection"; SEISM `read_one_cont_png`, `eval_cont`,
`gather_measure`, `general_ods`, `general_ois`, `general_ap`; Dollar's `edgesEvalImg`):
  * MQTransformer saves each edge map as a PNG, uint8(255 * sigmoid(logit)) (truncation); SEISM reads
    it back as value/255 (`quantize=True` reproduces this round trip);
  * non-maximum suppression along the edge normal (`boundary_ops.edge_nms`);
  * per threshold t: binarise with `> t`, thin (bwmorph 'thin', Inf);
  * ground truth: BSDS `seg2bmap` of the edge map, thinned;
  * match predicted and ground-truth boundary pixels one-to-one within max_dist x image diagonal
    (`boundary_matching`), giving per image and threshold cntP = cntR = matched pixels, sumP =
    predicted pixels, sumR = ground-truth pixels;
  * ODS: sum the counts over the dataset per threshold, P = sum cntP / sum sumP, R = sum cntR / sum sumR,
    F = 2PR/(P+R); odsF = max over thresholds (SEISM takes the plain maximum; Dollar's edgesEvalDir
    interpolates between thresholds, which we do not);
  * OIS: per image take the threshold with the best per-image F (first on ties), sum those counts
    over images, and compute F from the sums;
  * AP: the dataset-level (R, P) points, one per distinct recall (first threshold on ties), linearly
    interpolated at recall 0, 0.01, ..., 1 inside the observed recall range; AP = sum / 100.
  * degenerate counts follow SEISM: no ground-truth pixel gives (R, P) = (1, 0), no predicted pixel
    (R, P) = (0, 1), both F = 0.
odsf, oisf and ap are reported in percent (the tables print odsF x 100, e.g. 78.20).

Defaults are the NYUD-v2 settings: max_dist 0.011 and the 101 HED thresholds; the smoke profile
passes fewer thresholds. NMS and thinning run batched in torch on the predictions' device (the
binary maps bit-packed, 8 per byte); the matching runs on the CPU with scipy on each distinct
binary map, all graphs of a batch cut from one table of candidate edges: the small graphs of a
batch together in one Hopcroft-Karp call, each large one alone by Dinic max flow.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from densepred.metrics.base import Meter, compute_device
from densepred.metrics.boundary_matching import batch_match_counts, tolerance_pixels
from densepred.metrics.boundary_ops import (
    boundary_thresholds,
    edge_nms,
    edge_orientation,
    pack_maps,
    packed_pixels,
    seg2bmap,
    thin_packed,
)

GT_BOUNDARY_MODES = ("seg2bmap", "raw")
_COUNT_KEYS = ("cnt_r", "sum_r", "cnt_p", "sum_p")


def image_precision_recall(cnt_r: np.ndarray, sum_r: np.ndarray, cnt_p: np.ndarray, sum_p: np.ndarray):
    """(P, R) with SEISM's per-image (and OIS) rules: no GT -> (0, 1); else no prediction -> (1, 0)."""
    cnt_r, sum_r, cnt_p, sum_p = (np.asarray(v, dtype=np.float64) for v in (cnt_r, sum_r, cnt_p, sum_p))
    precision = np.where(sum_p > 0, cnt_p / np.maximum(sum_p, 1), 1.0)
    recall = np.where(sum_r > 0, cnt_r / np.maximum(sum_r, 1), 0.0)
    no_gt = sum_r == 0
    return np.where(no_gt, 0.0, precision), np.where(no_gt, 1.0, recall)


def dataset_precision_recall(cnt_r: np.ndarray, sum_r: np.ndarray, cnt_p: np.ndarray, sum_p: np.ndarray):
    """(P, R) per threshold with SEISM's `gather_measure` rules (applied in its order)."""
    cnt_r, sum_r, cnt_p, sum_p = (np.asarray(v, dtype=np.float64) for v in (cnt_r, sum_r, cnt_p, sum_p))
    precision = np.zeros_like(sum_p)
    recall = np.zeros_like(sum_p)
    no_gt = (sum_r == 0) & (cnt_p == 0)
    recall[no_gt], precision[no_gt] = 1.0, 0.0
    no_pred = (sum_p == 0) & (cnt_r == 0)
    recall[no_pred], precision[no_pred] = 0.0, 1.0
    regular = (sum_p != 0) & (cnt_r != 0)
    recall[regular] = cnt_r[regular] / sum_r[regular]
    precision[regular] = cnt_p[regular] / sum_p[regular]
    return precision, recall


def f_measure(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """2PR/(P+R), 0 where P+R = 0."""
    precision, recall = np.asarray(precision, dtype=np.float64), np.asarray(recall, dtype=np.float64)
    total = precision + recall
    return np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1.0), 0.0)


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """SEISM's AP: P interpolated linearly over recall at 0, 0.01, ..., 1 (inside the range), sum / 100."""
    unique_recall, first = np.unique(np.asarray(recall, dtype=np.float64), return_index=True)
    if unique_recall.size < 2:
        return 0.0
    unique_precision = np.asarray(precision, dtype=np.float64)[first]
    queries = np.arange(101) / 100
    inside = (queries >= unique_recall[0]) & (queries <= unique_recall[-1])
    return float(np.interp(queries[inside], unique_recall, unique_precision).sum() / 100)


def _first_equal(counts: np.ndarray) -> np.ndarray:
    """(B,T) index of the first threshold whose pixel count equals threshold t's, per image.

    The maps {e > t} are nested in t, so two of them are equal exactly when they hold the same
    number of pixels, and equal counts are contiguous along t (counts never increase). Flat
    predictions (e.g. an untrained model) then cost one thinning and one matching per distinct map.
    """
    steps = np.arange(counts.shape[1])
    new = np.ones(counts.shape, dtype=bool)
    new[:, 1:] = counts[:, 1:] != counts[:, :-1]
    return np.maximum.accumulate(np.where(new, steps, 0), axis=1)


class BoundaryMeter(Meter):
    """Streaming SEISM boundary evaluation (see the module docstring).

    Args:
        max_dist: matching tolerance as a fraction of the image diagonal (0.011 NYUD, 0.0075 PASCAL).
        thresholds: an int n (0.001, k/(n-1) for k = 1..n-2, 0.999; n = 101 is the HED set) or an
            increasing sequence in (0, 1).
        from_logits: the predictions are logits (sigmoid applied here) rather than probabilities.
        quantize: round-trip the probabilities through uint8 PNG values as the published pipeline does.
        nms: apply the edge non-maximum suppression of SEISM's reader.
        thin_maps: thin predicted and ground-truth boundaries (bwmorph 'thin', Inf).
        gt_boundary: "seg2bmap" (SEISM: BSDS boundary map of the edge image) or "raw" (the edge pixels).
        chunk_elements: bound on threshold x image x pixel elements processed at once (memory).

    `update(pred, target)`: pred (1,H,W)/(B,1,H,W), probabilities in [0,1] or logits per
    `from_logits`; target the same shape with values in {0,1}.
    """

    def __init__(
        self,
        max_dist: float = 0.011,
        thresholds: int | Sequence[float] = 101,
        from_logits: bool = False,
        quantize: bool = True,
        nms: bool = True,
        thin_maps: bool = True,
        gt_boundary: str = "seg2bmap",
        chunk_elements: int = 1 << 22,
    ) -> None:
        if not 0.0 < max_dist < 1.0:
            raise ValueError(f"BoundaryMeter: max_dist must lie in (0, 1), got {max_dist}")
        if gt_boundary not in GT_BOUNDARY_MODES:
            raise ValueError(
                f"BoundaryMeter: gt_boundary must be one of {GT_BOUNDARY_MODES}, got {gt_boundary!r}"
            )
        if chunk_elements < 1:
            raise ValueError(f"BoundaryMeter: chunk_elements must be positive, got {chunk_elements}")
        self.thresholds = self._parse_thresholds(thresholds)
        self.max_dist = float(max_dist)
        self.from_logits = from_logits
        self.quantize = quantize
        self.nms = nms
        self.thin_maps = thin_maps
        self.gt_boundary = gt_boundary
        self.chunk_elements = chunk_elements
        super().__init__()

    @staticmethod
    def _parse_thresholds(thresholds: int | Sequence[float]) -> tuple[float, ...]:
        if isinstance(thresholds, int) and not isinstance(thresholds, bool):
            return boundary_thresholds(thresholds)
        values = tuple(float(t) for t in thresholds)
        if not values or any(not 0.0 < t < 1.0 for t in values):
            raise ValueError(
                f"BoundaryMeter: thresholds must be a non-empty sequence in (0, 1), got {values}"
            )
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise ValueError(f"BoundaryMeter: thresholds must be strictly increasing, got {values}")
        return values

    def _initial_state(self) -> dict[str, Tensor]:
        per_threshold = {key: torch.zeros(len(self.thresholds), dtype=torch.int64) for key in _COUNT_KEYS}
        return {
            **per_threshold,
            "ois": torch.zeros(4, dtype=torch.int64),  # cnt_r, sum_r, cnt_p, sum_p at each image's best t
            "num_images": torch.zeros((), dtype=torch.int64),
        }

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch of edge predictions and binary ground-truth edge maps."""
        probs, gt = self._prepare(pred, target)
        self._begin_update(torch.device("cpu"))
        edges = edge_nms(probs, edge_orientation(probs)) if self.nms else probs
        matched, predicted, num_gt = self._count(edges, self._gt_boundary(gt))
        self._accumulate(matched, predicted, num_gt)

    def _count(self, edges: Tensor, gt_boundary: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Matched and predicted boundary pixels per (image, threshold), ground-truth pixels per image.

        Only the distinct non-empty binary maps of each image are thinned and matched (nested maps
        with equal pixel counts are equal; an empty map has no pixel to count or match); thresholds
        sharing a map share its counts. The ground-truth boundaries are thinned together with the
        predicted maps, and all maps of the batch are matched by one `batch_match_counts`.
        """
        batch, height, width = edges.shape
        levels = self._levels(edges)
        counts = self._pixel_counts(levels)
        representative = _first_equal(counts)
        distinct = np.argwhere((representative == np.arange(len(self.thresholds))) & (counts > 0))
        # jobs: the B ground-truth boundaries (threshold -1), then the distinct predicted maps
        jobs = np.concatenate([np.stack([np.arange(batch), np.full(batch, -1)], axis=1), distinct])
        job, row, col = self._thinned_pixels(levels, gt_boundary, jobs)
        is_gt = job < batch  # the first `batch` jobs
        gt_maps = np.zeros((batch, height, width), dtype=bool)
        gt_maps[job[is_gt], row[is_gt], col[is_gt]] = True
        pred_job = job[~is_gt] - batch
        radius = tolerance_pixels(self.max_dist, height, width)
        pair_matched = batch_match_counts(gt_maps, distinct[:, 0], pred_job, row[~is_gt], col[~is_gt], radius)
        matched = np.zeros((batch, len(self.thresholds)), dtype=np.int64)
        predicted = np.zeros_like(matched)
        matched[distinct[:, 0], distinct[:, 1]] = pair_matched
        predicted[distinct[:, 0], distinct[:, 1]] = np.bincount(pred_job, minlength=distinct.shape[0])
        rows = np.arange(batch)[:, None]
        num_gt = gt_maps.reshape(batch, -1).sum(1).astype(np.int64)
        return matched[rows, representative], predicted[rows, representative], num_gt

    def _levels(self, edges: Tensor) -> Tensor:
        """(B,H,W) number of thresholds strictly below each value: e > thresholds[t] iff t < level.

        Integers of the smallest sufficient type, compared exactly as `edges > thresholds[t]` in
        float32 (one bucketing pass instead of one comparison of the float maps per threshold).
        """
        thresholds = torch.tensor(self.thresholds, dtype=torch.float32, device=edges.device)
        levels = torch.searchsorted(thresholds, edges.contiguous(), out_int32=True)
        return levels.to(torch.int16) if len(self.thresholds) < 1 << 15 else levels

    def _pixel_counts(self, levels: Tensor) -> np.ndarray:
        """(B,T) number of pixels above each threshold, from `_levels` with one bincount."""
        batch = levels.shape[0]
        size = len(self.thresholds) + 1
        offset = torch.arange(batch, device=levels.device).view(-1, 1) * size
        histogram = torch.bincount((levels.reshape(batch, -1) + offset).reshape(-1), minlength=batch * size)
        above = histogram.view(batch, size).flip(1).cumsum(1).flip(1)[:, 1:]
        return above.cpu().numpy()

    def _thinned_pixels(self, levels: Tensor, gt_boundary: Tensor, jobs: np.ndarray):
        """(job, row, col) numpy arrays of the on-pixels of each job's map, thinned if asked.

        Job (b, t) is the map edges[b] > thresholds[t] (levels[b] > t), or the ground-truth boundary
        of image b for t = -1. Jobs go in chunks of about `chunk_elements` pixels, bit-packed 8 maps
        per byte (`boundary_ops.pack_maps`). Within one job the pixels come in raster order.
        """
        _, height, width = levels.shape
        per_chunk = max(1, self.chunk_elements // (height * width))
        found: list[tuple[Tensor, Tensor, Tensor]] = []
        for start in range(0, len(jobs), per_chunk):
            chunk = torch.from_numpy(jobs[start : start + per_chunk]).to(levels.device)
            image, threshold = chunk[:, 0], chunk[:, 1]
            maps = levels.index_select(0, image) > threshold.view(-1, 1, 1).to(levels.dtype)
            is_gt = threshold < 0
            if bool(is_gt.any()):
                maps[is_gt] = gt_boundary[image[is_gt]]
            packed = pack_maps(maps)
            if self.thin_maps:
                packed = thin_packed(packed, height, width)
            job, row, col = packed_pixels(packed, height, width)
            found.append((job + start, row, col))
        return tuple(torch.cat(parts).cpu().numpy() for parts in zip(*found))

    def _prepare(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Validated (B,H,W) float32 probabilities (quantised if asked) and (B,H,W) bool ground truth."""
        pred = self._batched(self._check_tensor(pred, "prediction"), 3, "prediction", "(1,H,W) or (B,1,H,W)")
        target = self._batched(self._check_tensor(target, "target"), 3, "target", "(1,H,W) or (B,1,H,W)")
        if pred.shape != target.shape or pred.shape[1] != 1:
            raise self._error(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B,1,H,W)"
            )
        if pred.shape[-2] < 2 or pred.shape[-1] < 2:
            raise self._error(f"edge maps must be at least 2x2 pixels, got {tuple(pred.shape[-2:])}")
        if not pred.is_floating_point():
            raise self._error(f"prediction must be floating point, got {pred.dtype}")
        self._check_finite(pred, "prediction")
        self._check_finite(target, "target")
        if not bool(((target == 0) | (target == 1)).all()):
            raise self._error("target edge maps must contain only 0 and 1")
        device = compute_device(pred.device)
        probs = pred.to(device, torch.float32)[:, 0]
        if self.from_logits:
            probs = torch.sigmoid(probs)
        elif bool(((probs < 0) | (probs > 1)).any()):
            raise self._error("probabilities must lie in [0, 1] (pass from_logits=True for logits)")
        if self.quantize:
            probs = torch.floor(probs * 255) / 255
        return probs, target.to(device)[:, 0] != 0

    def _gt_boundary(self, gt: Tensor) -> Tensor:
        """The ground-truth boundary maps before thinning (thinned with the predictions in `_count`)."""
        return seg2bmap(gt.to(torch.uint8)) if self.gt_boundary == "seg2bmap" else gt

    def _accumulate(self, matched: np.ndarray, predicted: np.ndarray, num_gt: np.ndarray) -> None:
        """Add per-image counts (B,T) to the dataset sums and each image's best-threshold counts to OIS."""
        gt_counts = np.broadcast_to(num_gt[:, None], matched.shape)
        precision, recall = image_precision_recall(matched, gt_counts, matched, predicted)
        best = np.argmax(f_measure(precision, recall), axis=1)  # first maximum, as MATLAB's max
        rows = np.arange(matched.shape[0])
        ois = np.stack([matched[rows, best], num_gt, matched[rows, best], predicted[rows, best]]).sum(1)
        sums = {"cnt_r": matched, "sum_r": gt_counts, "cnt_p": matched, "sum_p": predicted}
        for key, counts in sums.items():
            self._state[key] += torch.from_numpy(np.ascontiguousarray(counts.sum(0)))
        self._state["ois"] += torch.from_numpy(ois)
        self._state["num_images"] += matched.shape[0]

    def curves(self) -> dict[str, list[float]]:
        """Dataset-level precision, recall and F per threshold (fractions), for PR plots."""
        counts = [self._state[key].cpu().numpy() for key in _COUNT_KEYS]
        precision, recall = dataset_precision_recall(*counts)
        return {
            "thresholds": list(self.thresholds),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f": f_measure(precision, recall).tolist(),
        }

    def compute(self) -> dict[str, float]:
        """odsf, oisf and ap in percent."""
        if int(self._state["num_images"]) == 0:
            raise self._error("no edge map was accumulated")
        counts = [self._state[key].cpu().numpy() for key in _COUNT_KEYS]
        precision, recall = dataset_precision_recall(*counts)
        ois_precision, ois_recall = image_precision_recall(*self._state["ois"].cpu().numpy())
        return {
            "odsf": 100.0 * float(f_measure(precision, recall).max()),
            "oisf": 100.0 * float(f_measure(ois_precision, ois_recall)),
            "ap": 100.0 * average_precision(precision, recall),
        }
