"""`densepred prepare`: raw dataset -> validated, sharded, indexed dataset with statistics.

Every sample of every split is decoded by the raw reader (`nyud.NYUDv2`: train/test;
`taskonomy.Taskonomy`: train/val/test from the split CSV), which validates it (`samples.check_sample`:
decodes, shapes agree, values in range). Incomplete samples (a modality missing) are dropped by the
reader, corrupt or out-of-range ones raise; both are skipped and listed in `report.json` with the
reason. When skipped / (kept + skipped) exceeds `max_bad_fraction`, or no sample is valid, the step
fails with a message giving the count and the most common reasons with their counts, writes no
prepared folder, and writes the report beside it as `<out>.report.json` (`failure_report_path`), so
that a failed `out` never exists and looks complete; a later successful run removes that file.
Taskonomy buildings of the split file
that are absent on disk are listed in the report too, but do not count as bad samples (their views
were never downloaded, so they cannot be counted); a split left without buildings by a `buildings`
restriction is not prepared.

The output directory is built in a temporary directory next to `out` and renamed into place only
when complete (`densepred.io.atomic_dir`), so `out` is never half-written. Contents: shards and
`index.json` (see `shards.py`), `stats.json` (per split, see `stats.py`), `report.json`. Before
writing, the output size is estimated from the first valid sample of each split (its compressed
size times the split's sample count) and compared with the free space of the target file system.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from densepred.data.labels import NYU40_CLASSES, TASKONOMY_CLASSES
from densepred.data.nyud import NYUDv2
from densepred.data.shards import REPORT_FILE, SHARD_COMPRESSION, STATS_FILE, ShardWriter, write_index
from densepred.data.stats import StatsAccumulator
from densepred.data.taskonomy import EmptySplitError, Taskonomy
from densepred.io import atomic_dir, atomic_write_json, check_free_space
from densepred.tasks import TASKS

DATASET_SPLITS = {"nyud": ("train", "test"), "taskonomy": ("train", "val", "test")}
_CLASS_NAMES = {"nyud": list(NYU40_CLASSES), "taskonomy": list(TASKONOMY_CLASSES[1:])}
_LOAD_ERRORS = (ValueError, FileNotFoundError, OSError)
_ESTIMATE_TRIES = 4  # samples tried per split to find a valid one for the size estimate
_TOP_REASONS = 3


class _Guarded(Dataset):
    """Wraps a reader so that a bad sample becomes a (None, reason) result instead of an exception."""

    def __init__(self, reader: Dataset) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> tuple[dict | None, str]:
        try:
            return self.reader[index], ""
        except _LOAD_ERRORS as exc:
            return None, str(exc)


def _identity(item: tuple) -> tuple:
    return item


def open_reader(dataset: str, src: Path, split: str, **reader_kwargs) -> NYUDv2 | Taskonomy:
    """The raw reader of `dataset` for `split`, with all tasks, dropping (and listing) incomplete samples."""
    if dataset == "nyud":
        return NYUDv2(src, split, on_missing="drop", **reader_kwargs)
    if dataset == "taskonomy":
        return Taskonomy(src, split, **reader_kwargs)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASET_SPLITS)}")


def prepare_dataset(
    dataset: str,
    src: Path,
    out: Path,
    max_bad_fraction: float = 0.01,
    shard_size: int = 64,
    *,
    num_workers: int = 0,
    compression: str | None = SHARD_COMPRESSION,
    **reader_kwargs,
) -> dict:
    """Validate and shard the raw dataset at `src` into `out` (atomically); return a summary dict.

    reader_kwargs go to the reader (Taskonomy: split_csv, buildings, depth_domain, use_mask_valid;
    NYUD: layout, depth_source, edge_threshold); None values mean "reader default". num_workers > 0
    decodes in DataLoader worker processes (order and results unchanged).
    """
    if dataset not in DATASET_SPLITS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASET_SPLITS)}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"raw {dataset} directory {src} does not exist")
    reader_kwargs = {k: v for k, v in reader_kwargs.items() if v is not None}
    readers = {}
    for split in DATASET_SPLITS[dataset]:
        try:
            readers[split] = open_reader(dataset, src, split, **reader_kwargs)
        except EmptySplitError:  # e.g. `buildings` restricted to training buildings only
            continue
    check_free_space(out, estimate_bytes(readers, compression))
    with atomic_dir(out) as tmp:
        splits, stats, skipped = {}, {}, []
        for split, reader in readers.items():
            splits[split], stats[split], bad = _prepare_split(
                dataset, reader, split, tmp, shard_size, num_workers, compression
            )
            skipped += bad
        report = _report(dataset, src, readers, splits, skipped, max_bad_fraction)
        _check_bad_fraction(report, src, out)
        write_index(tmp, dataset, TASKS, splits)
        stats_doc = {"dataset": dataset, "class_names": _CLASS_NAMES[dataset], "splits": stats}
        (tmp / STATS_FILE).write_text(json.dumps(stats_doc, indent=1, sort_keys=True) + "\n")
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    failure_report_path(out).unlink(missing_ok=True)  # from an earlier failed run
    if skipped:
        warnings.warn(
            f"prepare {dataset}: skipped {len(skipped)} sample(s); see {out / REPORT_FILE}", stacklevel=2
        )
    summary = {k: report[k] for k in ("dataset", "kept", "skipped_count", "bad_fraction", "splits")}
    return {**summary, "out": str(out), "shards": sum(len(s["shards"]) for s in splits.values())}


def failure_report_path(out: Path) -> Path:
    """Where a failed prepare writes its report: `<out>.report.json` beside the (absent) `out`."""
    return out.with_name(f"{out.name}.{REPORT_FILE}")


def estimate_bytes(readers: dict[str, NYUDv2 | Taskonomy], compression: str | None) -> int:
    """Estimated size of the prepared shards: per split, the first valid sample's size x its count."""
    total = 0
    for split, reader in readers.items():
        guarded = _Guarded(reader)
        for index in range(min(len(reader), _ESTIMATE_TRIES)):
            sample, _ = guarded[index]
            if sample is not None:
                writer = ShardWriter(Path(), split, TASKS, shard_size=2, compression=compression)
                writer.add(sample, reader.groups[index])
                total += writer.payload_bytes() * len(reader)
                break
    return total


def _prepare_split(
    dataset: str,
    reader: NYUDv2 | Taskonomy,
    split: str,
    root: Path,
    shard_size: int,
    num_workers: int,
    compression: str | None,
) -> tuple[dict, dict, list[dict]]:
    """Shard one split; return its index entry, its statistics and its skipped samples."""
    writer = ShardWriter(root, split, TASKS, shard_size, compression)
    accumulator = StatsAccumulator(dataset)
    skipped = [{"split": split, "id": sample_id, "reason": reason} for sample_id, reason in reader.dropped]
    loader = DataLoader(_Guarded(reader), batch_size=None, num_workers=num_workers, collate_fn=_identity)
    for index, (sample, reason) in enumerate(loader):
        if sample is None:
            skipped.append({"split": split, "id": reader.ids[index], "reason": reason})
            continue
        writer.add(sample, reader.groups[index])
        accumulator.add(sample)
    return writer.close(), accumulator.result(), skipped


def _report(dataset: str, src: Path, readers: dict, splits: dict, skipped: list[dict], limit: float) -> dict:
    kept = sum(len(entry["ids"]) for entry in splits.values())
    per_split = {
        s: {"kept": len(e["ids"]), "skipped": sum(x["split"] == s for x in skipped)}
        for s, e in splits.items()
    }
    missing = sorted({b for r in readers.values() for b in getattr(r, "missing_buildings", [])})
    return {
        "dataset": dataset,
        "source": str(src),
        "kept": kept,
        "skipped_count": len(skipped),
        "bad_fraction": len(skipped) / max(kept + len(skipped), 1),
        "max_bad_fraction": limit,
        "splits": per_split,
        "skipped": skipped,
        "missing_buildings": missing,
    }


def _check_bad_fraction(report: dict, src: Path, out: Path) -> None:
    """Raise ValueError (after writing the report beside `out`) when too many samples are bad."""
    total = report["kept"] + report["skipped_count"]
    if report["kept"] == 0:
        problem = f"no valid sample at all ({report['skipped_count']} skipped)"
    elif report["bad_fraction"] > report["max_bad_fraction"]:
        problem = (
            f"{report['skipped_count']} of {total} samples are bad ({report['bad_fraction']:.2%} > "
            f"max_bad_fraction {report['max_bad_fraction']:.2%})"
        )
    else:
        return
    path = failure_report_path(out)
    atomic_write_json(path, report)
    raise ValueError(f"{src}: {problem}: {common_reasons(report['skipped'])}; every sample listed in {path}")


def common_reasons(skipped: list[dict], top: int = _TOP_REASONS) -> str:
    """The `top` most common skip reasons with counts, e.g. "300x train/0001: depth range ... (wrong units?)".

    Reasons differing only in the sample they name (its source prefix, ids, numbers) are counted
    together; each group is shown by its first sample's reason.
    """
    groups: Counter[str] = Counter()
    first: dict[str, str] = {}
    for item in skipped:
        kind = _reason_kind(item["reason"], item["id"])
        groups[kind] += 1
        first.setdefault(kind, f"{item['split']}/{item['id']}: {_without_source(item['reason'], item['id'])}")
    shown = [f"{count}x {first[kind]}" for kind, count in groups.most_common(top)]
    rest = len(groups) - len(shown)
    return "; ".join(shown) + (f"; and {rest} other reason(s)" if rest > 0 else "")


def _without_source(reason: str, sample_id: str) -> str:
    """`reason` without a reader's "<dataset> <root> id <id>: " prefix."""
    marker = f"id {sample_id}: "
    return reason.split(marker, 1)[1] if marker in reason else reason


def _reason_kind(reason: str, sample_id: str) -> str:
    text = _without_source(reason, sample_id).replace(sample_id, "<id>")
    return re.sub(r"\d+(?:\.\d+)?", "#", text)
