"""NYUD-v2 reader over the raw files, in either released layout (docs/data-formats.md §1 and §2).

Layouts, detected from the files under `root`:
- "official": `nyu_depth_v2_labeled.mat` (MATLAB v7.3, read lazily with h5py one frame at a time; the
  real file is 2.8 GB), `splits.mat` (v5, 1-based indices) and, for normals, the Eigen & Fergus
  `normals_gt/{normals,masks}/NNNN.png` (0-based frame index). Arrays are stored transposed
  (h5py shape (N,3,W,H) / (N,W,H)) and are transposed back here. Labels are raw 894-class ids mapped
  through the official 894->40 table. There are no edge maps in this release: edges are derived as
  (label, instance) discontinuities (two pixels wide), the rule our writer uses for the folder layout.
  Ids are the 1-based official index, 4 digits ("0001"), as the multi-task ids.
- "multitask" (ATRC/InvPT/MQTransformer, and the MTI-Net variant): `gt_sets/{train,val}.txt` and one
  file per modality and id; image .png/.jpg, segmentation .png (0..40), depth .npy (m), normals
  .png/.jpg (2v/255-1) or .npy ([-1,1]), edge .png ({0,255}) or .npy ({0,1}); the extension is probed
  per modality. split "test" reads `val.txt` (it is the official test split). Ids are taken verbatim.

Samples follow `samples.py`: semseg 0 (void) -> 255, 1..40 -> 0..39; depth 0 = invalid; normals
with the zero vector as invalid (Eigen mask 0, zero .npy vectors, grey 8-bit pixels).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from torch.utils.data import Dataset

from densepred.data.codecs import decode_normals_uint8, read_image, read_npy
from densepred.data.labels import label_boundaries, nyu_raw_to_40, to_train_ids
from densepred.data.matfile import read_string_cell
from densepred.data.samples import check_sample, make_sample, parse_tasks

NYUD_MAT = "nyu_depth_v2_labeled.mat"
NYUD_SPLITS = "splits.mat"
SPLITS = ("train", "test")
LAYOUTS = ("official", "multitask", "mti")
_FRAME_KEYS = ("images", "depths", "rawDepths", "labels", "instances")


def detect_layout(root: Path) -> str:
    """ "official" if the labeled .mat is present, "multitask" if `gt_sets/` is, else FileNotFoundError."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"NYUD-v2 root {root} is not a directory")
    if (root / NYUD_MAT).is_file():
        return "official"
    if (root / "gt_sets").is_dir():
        return "multitask"
    raise FileNotFoundError(
        f"{root}: no NYUD-v2 layout found; expected {NYUD_MAT} + {NYUD_SPLITS} (official release) or "
        "gt_sets/{train,val}.txt with images/, segmentation/, depth/, normals/, edge/ (multi-task layout)"
    )


class NYUDv2(Dataset):
    """NYUD-v2 samples (see module docstring) for `split` in {"train", "test"}.

    tasks: subset of ("semseg","depth","normals","edge"), None = all. layout: None = detect;
    "multitask" and "mti" both select the folder layout (its variant is probed per modality).
    depth_source (official layout): "depths" (in-painted, dense; default) or "rawDepths" (holes = 0).
    on_missing: "raise" (FileNotFoundError listing missing files) or "drop" (skip such ids, recorded
    in `self.dropped` as (id, reason)). edge_threshold (folder layout): None = edge files must be
    binary ({0,255} PNG, {0,1} .npy); a number t binarises v/255 >= t instead.
    Attributes: ids, groups (scene name, or the id where the layout has none), dropped, layout.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        tasks: list[str] | None = None,
        *,
        layout: str | None = None,
        depth_source: str = "depths",
        on_missing: str = "raise",
        edge_threshold: float | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown NYUD-v2 split {split!r}; expected one of {SPLITS}")
        if on_missing not in ("raise", "drop"):
            raise ValueError(f"on_missing must be 'raise' or 'drop', got {on_missing!r}")
        self.root, self.split, self.tasks = Path(root), split, parse_tasks(tasks)
        self.layout = detect_layout(self.root) if layout is None else layout
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown NYUD-v2 layout {self.layout!r}; expected one of {LAYOUTS}")
        if self.layout == "official":
            self._source: _OfficialSource | _FolderSource = _OfficialSource(
                self.root, split, self.tasks, depth_source
            )
        else:
            self._source = _FolderSource(self.root, split, self.tasks, edge_threshold)
        self.dropped: list[tuple[str, str]] = self._source.drop_missing()
        if self.dropped and on_missing == "raise":
            listed = "; ".join(reason for _, reason in self.dropped[:5])
            raise FileNotFoundError(
                f"NYUD-v2 {self.root} ({split}): {len(self.dropped)} sample(s) incomplete: {listed}"
            )
        self.ids: list[str] = self._source.ids
        self.groups: list[str] = self._source.groups

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        arrays = self._source.load(index)
        sample = make_sample(self.ids[index], arrays)
        check_sample(sample, "nyud", source=f"NYUD-v2 {self.root} id {self.ids[index]}")
        return sample


# --------------------------------------------------------------------------------- official .mat


def read_split_indices(path: Path, split: str, num_frames: int) -> np.ndarray:
    """0-based frame indices of `split` from splits.mat (1-based `trainNdxs` / `testNdxs` columns)."""
    key = {"train": "trainNdxs", "test": "testNdxs"}[split]
    if not Path(path).is_file():  # scipy reports a missing file as "Reader needs file name ..."
        raise FileNotFoundError(f"missing file: {path} (the NYUD-v2 train/test split indices)")
    try:
        contents = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing file: {path}") from None
    except Exception as exc:  # scipy raises many types for corrupt files (MatReadError, IndexError, ...)
        raise ValueError(f"{path}: cannot read MATLAB v5 file ({type(exc).__name__}: {exc})") from None
    if key not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise ValueError(f"{path}: no variable {key!r}; found {found}")
    values = np.asarray(contents[key], dtype=np.float64).ravel()
    if not np.all(values == np.round(values)) or values.min() < 1 or values.max() > num_frames:
        raise ValueError(f"{path}: {key} must hold 1-based integer indices in 1..{num_frames}")
    indices = values.astype(np.int64) - 1
    if len(np.unique(indices)) != len(indices):
        raise ValueError(f"{path}: {key} has repeated indices")
    return indices


class _OfficialSource:
    """Frames of the labeled .mat, opened lazily once per process (safe with DataLoader workers)."""

    def __init__(self, root: Path, split: str, tasks: tuple[str, ...], depth_source: str) -> None:
        if depth_source not in ("depths", "rawDepths"):
            raise ValueError(f"depth_source must be 'depths' or 'rawDepths', got {depth_source!r}")
        self.path, self.root, self.tasks, self.depth_key = root / NYUD_MAT, root, tasks, depth_source
        self._file: h5py.File | None = None
        self._pid: int | None = None
        with _open_mat(self.path) as f:
            num_frames = _check_mat_shapes(f, self.path)
            scenes = read_string_cell(f, "scenes") if "scenes" in f else None
        self.frames = read_split_indices(root / NYUD_SPLITS, split, num_frames)
        self.ids = [f"{i + 1:04d}" for i in self.frames]
        self.groups = [scenes[i] for i in self.frames] if scenes else list(self.ids)

    def drop_missing(self) -> list[tuple[str, str]]:
        """Drop frames without Eigen normal files (only when normals are requested)."""
        if "normals" not in self.tasks:
            return []
        dropped, keep = [], []
        for k, frame in enumerate(self.frames):
            missing = [p for p in self._normal_paths(frame) if not p.is_file()]
            if missing:
                dropped.append((self.ids[k], f"missing file: {missing[0]}"))
            else:
                keep.append(k)
        self.frames = self.frames[keep]
        self.ids = [self.ids[k] for k in keep]
        self.groups = [self.groups[k] for k in keep]
        return dropped

    def _normal_paths(self, frame: int) -> tuple[Path, Path]:
        base = self.root / "normals_gt"
        return base / "normals" / f"{frame:04d}.png", base / "masks" / f"{frame:04d}.png"

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = _open_mat(self.path), os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}

    def load(self, index: int) -> dict[str, np.ndarray]:
        frame = int(self.frames[index])
        f = self._handle()
        image = np.asarray(f["images"][frame]).transpose(0, 2, 1)  # (3,W,H) -> (3,H,W)
        arrays = {"image": image.astype(np.float32) / np.float32(255.0)}
        source = f"{self.path} frame {frame}"
        if "semseg" in self.tasks or "edge" in self.tasks:
            raw = np.asarray(f["labels"][frame]).T
            if "semseg" in self.tasks:
                arrays["semseg"] = to_train_ids(nyu_raw_to_40(raw, source), 40, source)
            if "edge" in self.tasks:
                instances = np.asarray(f["instances"][frame]).T.astype(np.int64)
                arrays["edge"] = label_boundaries(raw.astype(np.int64) * 256 + instances)[None]
        if "depth" in self.tasks:
            arrays["depth"] = np.asarray(f[self.depth_key][frame]).T[None]
        if "normals" in self.tasks:
            arrays["normals"] = self._normals(frame, image.shape[1:])
        return arrays

    def _normals(self, frame: int, size: tuple[int, int]) -> np.ndarray:
        normal_path, mask_path = self._normal_paths(frame)
        normals = decode_normals_uint8(read_image(normal_path, "rgb"))
        mask = read_image(mask_path, "gray8")
        if normals.shape[:2] != tuple(size) or mask.shape != tuple(size):
            raise ValueError(
                f"{normal_path}: normals/mask size {normals.shape[:2]}/{mask.shape}; image is {tuple(size)}"
            )
        normals[mask == 0] = 0.0
        return normals.transpose(2, 0, 1)


def _open_mat(path: Path) -> h5py.File:
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({exc})") from None


def _check_mat_shapes(f: h5py.File, path: Path) -> int:
    """Check the frame datasets exist with MATLAB-transposed shapes; return the frame count."""
    missing = [k for k in _FRAME_KEYS if k not in f]
    if missing:
        raise ValueError(f"{path}: missing variable(s) {missing}; expected {list(_FRAME_KEYS)}")
    images = f["images"].shape
    if len(images) != 4 or images[1] != 3:
        raise ValueError(f"{path}: images has shape {images}; expected (N, 3, W, H)")
    for key in _FRAME_KEYS[1:]:
        if f[key].shape != (images[0], images[2], images[3]):
            raise ValueError(f"{path}: {key} has shape {f[key].shape}; expected {(images[0], *images[2:])}")
    return images[0]


# ---------------------------------------------------------------------------------- folder layout

_MODALITIES = {  # sample key: (folder, accepted extensions in probing order)
    "image": ("images", (".png", ".jpg")),
    "semseg": ("segmentation", (".png",)),
    "depth": ("depth", (".npy",)),
    "normals": ("normals", (".png", ".npy", ".jpg")),
    "edge": ("edge", (".png", ".npy")),
}


def read_id_list(path: Path) -> list[str]:
    """Ids from a gt_sets list: one per line, surrounding whitespace and empty lines ignored."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path}: no ids")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: repeated ids")
    return ids


class _FolderSource:
    """The multi-task folder layout: ids from gt_sets, one file per (modality, id)."""

    def __init__(self, root: Path, split: str, tasks: tuple[str, ...], edge_threshold: float | None) -> None:
        self.root, self.tasks, self.edge_threshold = root, tasks, edge_threshold
        self.ids = read_id_list(root / "gt_sets" / ("train.txt" if split == "train" else "val.txt"))
        self.groups = list(self.ids)
        self.keys = ("image", *tasks)
        self.ext = {key: self._probe(key) for key in self.keys}

    def _probe(self, key: str) -> str:
        """The extension under which most ids of this split exist (ASTMT's .mat files are refused)."""
        folder, extensions = _MODALITIES[key]
        directory = self.root / folder
        if not directory.is_dir():
            raise FileNotFoundError(f"{self.root}: missing folder {folder}/ (needed for {key})")
        names = set(os.listdir(directory))
        counts = {ext: sum(f"{i}{ext}" in names for i in self.ids) for ext in extensions}
        best = max(extensions, key=lambda ext: counts[ext])
        if counts[best] == 0 and any(f"{i}.mat" in names for i in self.ids[:10]):
            raise ValueError(
                f"{directory}: .mat files (ASTMT variant) are not supported; expected {extensions}"
            )
        return best

    def path(self, key: str, sample_id: str) -> Path:
        return self.root / _MODALITIES[key][0] / f"{sample_id}{self.ext[key]}"

    def drop_missing(self) -> list[tuple[str, str]]:
        dropped, keep = [], []
        for sample_id in self.ids:
            missing = [self.path(k, sample_id) for k in self.keys if not self.path(k, sample_id).is_file()]
            if missing:
                dropped.append((sample_id, f"missing file: {missing[0]}"))
            else:
                keep.append(sample_id)
        self.ids, self.groups = keep, list(keep)
        return dropped

    def load(self, index: int) -> dict[str, np.ndarray]:
        sample_id = self.ids[index]
        arrays = {
            "image": read_image(self.path("image", sample_id), "rgb").transpose(2, 0, 1) / np.float32(255.0)
        }
        if "semseg" in self.tasks:
            path = self.path("semseg", sample_id)
            arrays["semseg"] = to_train_ids(read_image(path, "gray8"), 40, str(path))
        if "depth" in self.tasks:
            arrays["depth"] = _depth_npy(self.path("depth", sample_id))
        if "normals" in self.tasks:
            arrays["normals"] = _normals_file(self.path("normals", sample_id))
        if "edge" in self.tasks:
            arrays["edge"] = _edge_file(self.path("edge", sample_id), self.edge_threshold)
        return arrays


def _depth_npy(path: Path) -> np.ndarray:
    depth = read_npy(path)
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise ValueError(
            f"{path}: depth must be a 2-D float array in metres, got {depth.dtype} {depth.shape}"
        )
    return depth.astype(np.float32)[None]


def _normals_file(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        normals = read_npy(path)
        if normals.ndim != 3 or normals.shape[-1] != 3 or not np.issubdtype(normals.dtype, np.floating):
            raise ValueError(
                f"{path}: normals .npy must be (H, W, 3) float in [-1, 1], "
                f"got {normals.dtype} {normals.shape}"
            )
        return normals.astype(np.float32).transpose(2, 0, 1)
    return decode_normals_uint8(read_image(path, "rgb")).transpose(2, 0, 1)


def _edge_file(path: Path, threshold: float | None) -> np.ndarray:
    if path.suffix == ".npy":
        values = read_npy(path).astype(np.float32)
        if values.ndim != 2:
            raise ValueError(f"{path}: edge .npy must be (H, W), got {values.shape}")
    else:
        values = read_image(path, "gray8").astype(np.float32) / np.float32(255.0)
    if threshold is not None:
        return (values >= threshold).astype(np.float32)[None]
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(
            f"{path}: edge map is not binary ({{0,255}} PNG / {{0,1}} .npy); set edge_threshold to binarise"
        )
    return values[None]
