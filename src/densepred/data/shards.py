"""Prepared datasets: HDF5 shards + index.json + stats.json, and the training Dataset over them.

Layout of a prepared directory (written by `prepare.prepare_dataset`):
- `index.json`: format tag and version, dataset, tasks, and per split the shard files with their
  sample counts, sizes in bytes and digests, plus the sample ids and groups (scene / building) in
  storage order.
- `<split>-NNNNN.h5`: up to `shard_size` consecutive samples. One dataset per key with a leading
  sample axis, chunked one sample per chunk and compressed (deflate, `SHARD_COMPRESSION`), so any
  single sample is read without decoding the rest of its shard (training reads random samples):
  image (n,3,H,W) uint8, semseg (n,H,W) uint8 (255 = ignore), depth (n,1,H,W) float32 m, normals
  (n,3,H,W) uint8 with
  (0,0,0) = invalid when that 8-bit code is exact for every sample of the shard (all 8-bit sources),
  else float32 (attribute `normals_codec`), edge (n,1,H,W) uint8. All encodings are lossless for
  what the readers produce. A shard never mixes image sizes. Every chunk carries an HDF5 Fletcher-32
  checksum, so a damaged chunk fails when it is read instead of decoding to wrong values.
- `stats.json` (dataset statistics) and `report.json` (skipped samples), see `prepare.py`.

Compression is deflate at level 1 (HDF5's gzip filter), not LZF, so that preparing the same raw
data twice writes the same bytes (the shard digests in index.json, and DVC's hashes of the prepared
folder, then stay put, and nothing downstream reruns for nothing): h5py's LZF filter leaves the
compressor's hash table uninitialised, which the LZF library documents as making its output depend
on leftover memory. Two fresh builds of the smoke data differed in one chunk of one of 14 shards
(same decoded values, one byte shorter). Deflate also made the smoke shards 23 % smaller and reading
them 1.2x slower (bench/NOTES.md, "Shard compression"); shards written with LZF still read.

`ShardDataset` keeps at most `max_open_files` shard files open per process (least recently used are
closed), each with a small HDF5 chunk cache; memory is therefore bounded no matter how many shards
exist, and a forked DataLoader worker reopens files instead of sharing handles. Decoded shards are
not cached as a whole: with per-sample chunks random access costs one chunk read per key.

Integrity: opening a `ShardDataset` checks that every shard it reads exists with the size index.json
lists (one `stat` each), so a truncated or missing shard stops a command before its work (and its
MLflow run) starts. The first time a process opens a shard it compares the file's size and digest (BLAKE2b
of its first and last `DIGEST_SPAN` bytes: the whole file for shards up to twice that, otherwise
the HDF5 superblock, the start of the data and the metadata at the end) with index.json; a
truncated, replaced or damaged shard is named in a ValueError before any sample of it is used, and
damage in between is caught by the chunk checksums. Checking costs two small reads per shard and
process.

Writing: each shard is built in memory and then written with plain file I/O. HDF5 writing to disk
itself cannot fail cleanly: on ENOSPC its close fails half-way, and the half-closed file is flushed
again when the interpreter exits, which crashed the process (SIGSEGV). A failed plain write raises
an ordinary OSError instead (`densepred.io.DiskFullError` for a full disk).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from densepred.data.samples import parse_tasks
from densepred.io import naming_disk_full

FORMAT = "densepred-shards"
VERSION = 2  # 2: shard sizes and digests in index.json, Fletcher-32 chunk checksums
INDEX_FILE = "index.json"
STATS_FILE = "stats.json"
REPORT_FILE = "report.json"
FRACTION_UNITS = ("samples", "groups")
_CHUNK_CACHE_BYTES = 1 << 20
# deterministic (see the module docstring); level 1 writes fastest, and reading costs the same at
# levels 1 and 3 (bench/NOTES.md)
SHARD_COMPRESSION = "gzip"
SHARD_COMPRESSION_LEVEL = 1
DIGEST_SPAN = 1 << 20
_VERIFIED: set[tuple[str, int, str]] = set()  # (path, size, digest) checked by this process
_PREPARE_AGAIN = "run `densepred prepare` again"


# ------------------------------------------------------------------------------------------ writing


def encode_normals_for_shard(normals: np.ndarray) -> np.ndarray | None:
    """uint8 codes of (3,H,W) normals if exactly representable (decode(code) == value), else None.

    Valid vectors use round((n + 1) * 127.5); the zero vector (invalid) is stored as (0,0,0), which
    no unit vector can produce (it would decode to (-1,-1,-1)).
    """
    codes = np.clip(np.rint((normals + 1.0) * 127.5), 0, 255).astype(np.uint8)
    invalid = ~normals.any(axis=0)
    codes[:, invalid] = 0
    return codes if np.array_equal(decode_normals_from_shard(codes), normals) else None


def decode_normals_from_shard(codes: np.ndarray) -> np.ndarray:
    """Inverse of `encode_normals_for_shard`: 2v/255 - 1 in float32, (0,0,0) -> zero vector."""
    normals = codes.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    normals[:, ~codes.any(axis=0)] = 0.0
    return normals


class ShardWriter:
    """Buffers samples of one split and writes `<split>-NNNNN.h5` shards of `shard_size` samples."""

    def __init__(
        self,
        root: Path,
        split: str,
        tasks: tuple[str, ...],
        shard_size: int,
        compression: str | None = SHARD_COMPRESSION,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root, self.split, self.tasks, self.shard_size = Path(root), split, tasks, shard_size
        self.compression = compression
        self.shards: list[dict] = []
        self.ids: list[str] = []
        self.groups: list[str] = []
        self._buffer: list[dict[str, np.ndarray]] = []

    def add(self, sample: dict, group: str) -> None:
        """Append one validated sample (tensors as returned by a reader)."""
        arrays = {"image": np.rint(sample["image"].numpy() * 255.0).astype(np.uint8)}
        for key in self.tasks:
            value = sample[key].numpy()
            arrays[key] = value.astype(np.uint8) if key in ("semseg", "edge") else value
        if self._buffer and self._buffer[0]["image"].shape != arrays["image"].shape:
            self.flush()  # a shard holds one image size
        self._buffer.append(arrays)
        self.ids.append(sample["id"])
        self.groups.append(group)
        if len(self._buffer) == self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered samples as one shard (built in memory, then written with plain I/O)."""
        if not self._buffer:
            return
        name = f"{self.split}-{len(self.shards):05d}.h5"
        data = self._encode(first=len(self.ids) - len(self._buffer))
        with naming_disk_full(self.root / name), open(self.root / name, "wb") as handle:
            handle.write(data)
        entry = {"file": name, "count": len(self._buffer), "bytes": len(data), "digest": bytes_digest(data)}
        self.shards.append(entry)
        self._buffer = []

    def _encode(self, first: int) -> bytes:
        """The buffered samples (ids from position `first`) as the bytes of an HDF5 file."""
        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as f:
            f.attrs["format"], f.attrs["version"] = FORMAT, VERSION
            f.create_dataset("ids", data=np.array(self.ids[first:], dtype=h5py.string_dtype()))
            for key in self._buffer[0]:
                stacked, codec = self._stack(key)
                dataset = f.create_dataset(
                    key,
                    data=stacked,
                    chunks=(1, *stacked.shape[1:]),
                    compression=self.compression,
                    compression_opts=SHARD_COMPRESSION_LEVEL if self.compression == "gzip" else None,
                    fletcher32=True,
                )
                if codec:
                    dataset.attrs["normals_codec"] = codec
        return buffer.getvalue()

    def payload_bytes(self) -> int:
        """Compressed bytes of the buffered samples' arrays in a shard (without the file's metadata)."""
        with h5py.File(io.BytesIO(self._encode(first=len(self.ids) - len(self._buffer))), "r") as f:
            return sum(f[key].id.get_storage_size() for key in self._buffer[0])

    def _stack(self, key: str) -> tuple[np.ndarray, str | None]:
        values = [arrays[key] for arrays in self._buffer]
        if key != "normals":
            return np.stack(values), None
        codes = [encode_normals_for_shard(v) for v in values]
        if all(c is not None for c in codes):
            return np.stack(codes), "uint8"
        return np.stack(values).astype(np.float32), "float32"

    def close(self) -> dict:
        """Flush and return this split's index entry."""
        self.flush()
        return {"shards": self.shards, "ids": self.ids, "groups": self.groups}


def _head_tail_digest(head: bytes, tail: bytes) -> str:
    digest = hashlib.blake2b(head, digest_size=16)
    digest.update(tail)
    return digest.hexdigest()


def bytes_digest(data: bytes) -> str:
    """Digest of a shard's bytes: BLAKE2b of the first and last DIGEST_SPAN bytes (see module doc)."""
    tail = data[max(DIGEST_SPAN, len(data) - DIGEST_SPAN) :]
    return _head_tail_digest(data[:DIGEST_SPAN], tail)


def file_digest(path: Path, size: int) -> str:
    """`bytes_digest` of the file at `path` of `size` bytes, reading at most 2 x DIGEST_SPAN bytes."""
    with open(path, "rb") as handle:
        head = handle.read(DIGEST_SPAN)
        handle.seek(max(DIGEST_SPAN, size - DIGEST_SPAN))
        return _head_tail_digest(head, handle.read(DIGEST_SPAN))


def verify_shard(path: Path, entry: dict, index_path: Path) -> None:
    """Raise ValueError naming `path` unless its size and digest match its index entry `entry`.

    Each (path, size, digest) is checked once per process; forked workers inherit the result.
    """
    key = (str(path), entry["bytes"], entry["digest"])
    if key in _VERIFIED:
        return
    size = check_shard_size(path, entry, index_path)
    if file_digest(path, size) != entry["digest"]:
        raise ValueError(
            f"corrupt shard {path}: contents differ from the digest in {index_path}; {_PREPARE_AGAIN}"
        )
    _VERIFIED.add(key)


def check_shard_size(path: Path, entry: dict, index_path: Path) -> int:
    """The size of the shard file `path`; raises naming it when it is missing, not a file, or of
    another size than its index entry lists (truncated, appended to). One `stat`, no read."""
    if not path.exists():
        raise FileNotFoundError(f"missing shard {path} (listed in {index_path})")
    if not path.is_file():
        raise ValueError(f"corrupt shard {path}: not a file (listed in {index_path}); {_PREPARE_AGAIN}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        cause = "truncated" if size < entry["bytes"] else "longer than written"
        raise ValueError(
            f"corrupt shard {path}: {size} bytes, {index_path} lists {entry['bytes']} ({cause}); "
            f"{_PREPARE_AGAIN}"
        )
    return size


def write_index(root: Path, dataset: str, tasks: tuple[str, ...], splits: dict[str, dict]) -> None:
    """Write index.json for the shards under `root`."""
    index = {"format": FORMAT, "version": VERSION, "dataset": dataset, "tasks": list(tasks), "splits": splits}
    (Path(root) / INDEX_FILE).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")


def read_index(root: Path) -> dict:
    """Load and check index.json of a prepared dataset."""
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a prepared dataset (run `densepred prepare`)"
        )
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from None
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise ValueError(
            f"{path}: format {index.get('format')!r} v{index.get('version')}; expected {FORMAT!r} v{VERSION} "
            "(prepared by another version: run `densepred prepare` again)"
        )
    return index


# ------------------------------------------------------------------------------------------ reading


def subset_indices(
    ids: list[str], groups: list[str], fraction: float, unit: str = "samples", seed: int = 0
) -> np.ndarray:
    """Sorted positions of a deterministic `fraction` of the samples (unit "samples") or of the groups
    (unit "groups": buildings / scenes, all samples of a chosen group kept).

    The choice is a prefix of a permutation drawn from `seed`, so smaller fractions are nested in
    larger ones (25 % subset of the 50 % subset), as a data-scaling study needs. At least one sample
    or group is kept; the count is round(fraction * total).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if unit not in FRACTION_UNITS:
        raise ValueError(f"fraction unit must be one of {FRACTION_UNITS}, got {unit!r}")
    n = len(ids)
    if fraction == 1:
        return np.arange(n)
    rng = np.random.default_rng([seed, 7])
    if unit == "samples":
        keep = rng.permutation(n)[: max(1, round(fraction * n))]
        return np.sort(keep)
    names = sorted(set(groups))
    chosen = {names[i] for i in rng.permutation(len(names))[: max(1, round(fraction * len(names)))]}
    return np.array([i for i, g in enumerate(groups) if g in chosen], dtype=np.int64)


class ShardDataset(Dataset):
    """Samples of one split of a prepared dataset, optionally transformed.

    tasks: subset of the prepared tasks (None = all). fraction / fraction_unit / subset_seed: a
    deterministic, nested subset (`subset_indices`); the default unit is samples (the share of
    pretraining images, as PolyMaX Fig. 7 reports percentages of the pretraining data); "groups"
    takes whole buildings instead. transform: called as transform(sample, rng) with
    rng = numpy Generator seeded from (seed, epoch, index) only, so results do not depend on
    DataLoader workers or on the order of access, and a resumed run sees the same augmentations.
    Call `set_epoch` before each epoch (DataLoader workers copy the dataset when an iterator is
    created, so this works unless persistent_workers=True).
    Attributes: ids, groups, stats (stats.json), tasks, dataset (name), split.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        tasks: list[str] | None = None,
        fraction: float = 1.0,
        transform: Callable[[dict, np.random.Generator], dict] | None = None,
        seed: int = 0,
        *,
        fraction_unit: str = "samples",
        subset_seed: int = 0,
        max_open_files: int = 8,
    ) -> None:
        self.root = Path(root)
        index = read_index(self.root)
        if split not in index["splits"]:
            raise ValueError(
                f"{self.root}: no split {split!r}; prepared splits are {sorted(index['splits'])}"
            )
        available = tuple(index["tasks"])
        self.tasks = parse_tasks(tasks) if tasks is not None else available
        missing = [t for t in self.tasks if t not in available]
        if missing:
            raise ValueError(f"{self.root}: tasks {missing} were not prepared; available {list(available)}")
        entry = index["splits"][split]
        self.dataset, self.split, self.transform, self.seed = index["dataset"], split, transform, seed
        self._files = [self.root / s["file"] for s in entry["shards"]]
        self._entries = entry["shards"]
        self._starts = np.cumsum([0] + [s["count"] for s in entry["shards"]])
        self._rows = subset_indices(entry["ids"], entry["groups"], fraction, fraction_unit, subset_seed)
        for shard in np.unique(np.searchsorted(self._starts, self._rows, side="right") - 1):
            check_shard_size(self._files[shard], self._entries[shard], self.root / INDEX_FILE)
        self.ids = [entry["ids"][i] for i in self._rows]
        self.groups = [entry["groups"][i] for i in self._rows]
        stats_path = self.root / STATS_FILE
        self.stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
        self.epoch = 0
        self.max_open_files = max_open_files
        self._open: OrderedDict[int, h5py.File] = OrderedDict()
        self._pid = os.getpid()

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of `epoch` (part of every sample's rng seed)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._rows)

    def rng(self, index: int) -> np.random.Generator:
        """The generator used for sample `index` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        row = int(self._rows[index])
        shard = int(np.searchsorted(self._starts, row, side="right") - 1)
        f = self._file(shard)
        local = row - int(self._starts[shard])
        try:
            image = f["image"][local].astype(np.float32) / np.float32(255.0)
            sample = {"id": self.ids[index], "image": torch.from_numpy(image)}
            for key in self.tasks:
                sample[key] = torch.from_numpy(_decode(key, f[key], local))
        except (OSError, KeyError) as exc:  # damaged chunk (checksum), missing dataset
            raise ValueError(
                f"corrupt shard {self._files[shard]}: cannot read sample {self.ids[index]} ({exc}); "
                "run `densepred prepare` again"
            ) from None
        if self.transform is not None:
            sample = self.transform(sample, self.rng(index))
        return sample

    def _file(self, shard: int) -> h5py.File:
        if self._pid != os.getpid():  # forked worker: never reuse the parent's handles
            self._open, self._pid = OrderedDict(), os.getpid()
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        path = self._files[shard]
        verify_shard(path, self._entries[shard], self.root / INDEX_FILE)
        try:
            self._open[shard] = h5py.File(path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
        except OSError as exc:
            raise ValueError(f"corrupt shard {path}: not a readable HDF5 file ({exc})") from None
        while len(self._open) > self.max_open_files:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        return self._open[shard]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": OrderedDict()}

    def __del__(self) -> None:
        for f in getattr(self, "_open", {}).values():
            with contextlib.suppress(Exception):  # interpreter shutdown may have torn h5py down
                f.close()


def _decode(key: str, dataset: h5py.Dataset, row: int) -> np.ndarray:
    value = dataset[row]
    if key == "semseg":
        return value.astype(np.int64)
    if key == "edge":
        return value.astype(np.float32)
    if key == "normals" and dataset.attrs.get("normals_codec", "float32") == "uint8":
        return decode_normals_from_shard(value)
    return np.asarray(value, dtype=np.float32)
