"""Taskonomy reader over the raw omnitools layout (docs/data-formats.md §3).

Files live at `<root>/<domain>/taskonomy/<building>/point_<p>_view_<v>_domain_<token>.png`; the
`taskonomy/` level is optional (older layouts), and files are matched by (building, point, view)
whatever the token (`segment_semantic/` holds `..._domain_segmentsemantic.png`; `mask_valid/` is
spelled `..._domain_mask_valid.png` or `..._domain_depth_zbuffer.png` depending on the source).
A view is kept only when every domain the requested tasks need has it; the others are listed in
`dropped` with the reason (the real download has holes and corrupt PNGs; loaders in the ecosystem
drop such views). Buildings of a split come from `train_val_test_<subset>.csv` (CR line endings).

Decoding: rgb /255; depth_zbuffer (or depth_euclidean) uint16 / 512 m with 65535 -> 0 (invalid);
normal 2v/255-1 with (128,128,128) -> zero vector; segment_semantic 0 (uncertain) -> 255, 1..17 ->
0..16; edge = discontinuities of segment_semantic (two pixels wide; Taskonomy ships no semantic
boundary maps). When `mask_valid` is used, its 0 pixels invalidate depth and normals as well.
Ids are "<building>_point_<p>_view_<v>"; groups are buildings.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from densepred.data.codecs import decode_normals_uint8, decode_taskonomy_depth, read_image
from densepred.data.labels import TASKONOMY_CLASSES, label_boundaries, to_train_ids
from densepred.data.samples import check_sample, make_sample, parse_tasks

SPLITS = ("train", "val", "test")
DEPTH_DOMAINS = ("depth_zbuffer", "depth_euclidean")
_FILE = re.compile(r"^point_(\d+)_view_(\d+)_domain_(\w+)\.png$")
_NUM_CLASSES = len(TASKONOMY_CLASSES) - 1  # 17: uncertain is not a class


class EmptySplitError(ValueError):
    """A split has no building (after restricting to `buildings`)."""


def read_split_csv(path: Path) -> dict[str, tuple[str, ...]]:
    """Building -> splits it belongs to, from a `train_val_test_<subset>.csv`.

    Accepts CR (the real files), LF or CRLF line ends and a missing final terminator. Raises
    ValueError naming the file for a wrong header, a wrong field count, flags other than 0/1 or a
    repeated building.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing split file: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: split CSV is not text") from None
    lines = [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
    expected = ["id", "train", "val", "test"]
    if not lines or [h.strip() for h in lines[0].split(",")] != expected:
        raise ValueError(f"{path}: header {lines[0] if lines else ''!r}; expected {','.join(expected)}")
    splits: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4 or not fields[0] or any(f not in ("0", "1") for f in fields[1:]):
            raise ValueError(f"{path}: line {number} {line!r}; expected '<building>,<0|1>,<0|1>,<0|1>'")
        if fields[0] in splits:
            raise ValueError(f"{path}: building {fields[0]!r} listed twice")
        splits[fields[0]] = tuple(s for s, flag in zip(SPLITS, fields[1:], strict=True) if flag == "1")
    return splits


def find_split_csv(root: Path) -> Path | None:
    """The single `train_val_test_*.csv` directly under root (None if there is none)."""
    found = sorted(Path(root).glob("train_val_test_*.csv"))
    if len(found) > 1:
        raise ValueError(f"{root}: several split files {[p.name for p in found]}; pass split_csv explicitly")
    return found[0] if found else None


class Taskonomy(Dataset):
    """Taskonomy views of `split` in {"train","val","test"} (see module docstring).

    split_csv: the split file (None = the one `train_val_test_*.csv` under root). buildings: restrict
    to these buildings (each must be listed in the split file; a split left without buildings raises
    EmptySplitError; without any split file, `buildings` form every split). tasks: subset of
    ("semseg","depth","normals","edge"), None = all. depth_domain: "depth_zbuffer" (default, the
    z-buffer depth the papers use) or "depth_euclidean". use_mask_valid: None = use the `mask_valid`
    domain when it exists and depth or normals are requested.
    Attributes: ids, groups (buildings), dropped [(id, reason)], buildings, missing_buildings.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        split_csv: Path | None = None,
        buildings: list[str] | None = None,
        tasks: list[str] | None = None,
        *,
        depth_domain: str = "depth_zbuffer",
        use_mask_valid: bool | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown Taskonomy split {split!r}; expected one of {SPLITS}")
        if depth_domain not in DEPTH_DOMAINS:
            raise ValueError(f"depth_domain must be one of {DEPTH_DOMAINS}, got {depth_domain!r}")
        self.root, self.split, self.tasks = Path(root), split, parse_tasks(tasks)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Taskonomy root {self.root} is not a directory")
        self.buildings = self._split_buildings(split_csv, buildings)
        self.domains = self._domains(depth_domain, use_mask_valid)
        self.files: list[dict[str, Path]] = []
        self.ids: list[str] = []
        self.groups: list[str] = []
        self.dropped: list[tuple[str, str]] = []
        self.missing_buildings: list[str] = []
        self._index()

    def _split_buildings(self, split_csv: Path | None, buildings: list[str] | None) -> list[str]:
        csv_path = Path(split_csv) if split_csv is not None else find_split_csv(self.root)
        if csv_path is None:
            if buildings:
                return list(buildings)
            raise FileNotFoundError(f"{self.root}: no train_val_test_*.csv; pass split_csv or buildings")
        table = read_split_csv(csv_path)
        members = [b for b, splits in table.items() if self.split in splits]
        if buildings is not None:
            unknown = sorted(set(buildings) - set(table))
            if unknown:
                raise ValueError(f"buildings {unknown} are not listed in {csv_path}")
            members = [b for b in members if b in set(buildings)]
        if not members:
            raise EmptySplitError(
                f"{csv_path}: no building in the {self.split!r} split (buildings={buildings})"
            )
        return members

    def _domains(self, depth_domain: str, use_mask_valid: bool | None) -> dict[str, str]:
        """Sample key -> domain folder needed for the requested tasks."""
        domains = {"image": "rgb"}
        if "semseg" in self.tasks or "edge" in self.tasks:
            domains["labels"] = "segment_semantic"
        if "depth" in self.tasks:
            domains["depth"] = depth_domain
        if "normals" in self.tasks:
            domains["normals"] = "normal"
        geometric = "depth" in self.tasks or "normals" in self.tasks
        if use_mask_valid is None:
            use_mask_valid = geometric and (self.root / "mask_valid").is_dir()
        if use_mask_valid:
            domains["mask"] = "mask_valid"
        return domains

    def _index(self) -> None:
        for building in self.buildings:
            found = {key: self._scan(domain, building) for key, domain in self.domains.items()}
            absent = [self.domains[k] for k, files in found.items() if files is None]
            if absent:  # not downloaded (or not in every domain): listed, not counted per view
                self.missing_buildings.append(building)
                continue
            views = sorted(set().union(*(files.keys() for files in found.values())))
            for point, view in views:
                sample_id = f"{building}_point_{point}_view_{view}"
                lacking = [self.domains[k] for k, files in found.items() if (point, view) not in files]
                if lacking:
                    self.dropped.append((sample_id, f"missing domain(s) {lacking}"))
                    continue
                self.ids.append(sample_id)
                self.groups.append(building)
                self.files.append({key: files[(point, view)] for key, files in found.items()})
        if not self.ids:
            raise ValueError(
                f"Taskonomy {self.root}: no complete view in split {self.split!r} (domains {self.domains}, "
                f"buildings missing on disk: {self.missing_buildings})"
            )

    def _scan(self, domain: str, building: str) -> dict[tuple[int, int], Path] | None:
        """(point, view) -> file of one building in one domain; None if the folder is absent."""
        for folder in (self.root / domain / "taskonomy" / building, self.root / domain / building):
            if folder.is_dir():
                break
        else:
            return None
        files: dict[tuple[int, int], Path] = {}
        for name in sorted(os.listdir(folder)):
            match = _FILE.match(name)
            if match is None:
                continue
            key = (int(match.group(1)), int(match.group(2)))
            if key in files:
                raise ValueError(
                    f"{folder}: two files for point {key[0]} view {key[1]}: {files[key].name}, {name}"
                )
            files[key] = folder / name
        return files

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        files = self.files[index]
        arrays = {"image": read_image(files["image"], "rgb").transpose(2, 0, 1) / np.float32(255.0)}
        if "labels" in files:
            labels = read_image(files["labels"], "gray8")
            if "semseg" in self.tasks:
                arrays["semseg"] = to_train_ids(labels, _NUM_CLASSES, str(files["labels"]))
            if "edge" in self.tasks:
                arrays["edge"] = label_boundaries(labels)[None]
        if "depth" in files:
            arrays["depth"] = decode_taskonomy_depth(read_image(files["depth"], "gray16"))[None]
        if "normals" in files:
            arrays["normals"] = decode_normals_uint8(read_image(files["normals"], "rgb")).transpose(2, 0, 1)
        if "mask" in files:
            self._apply_mask(arrays, files["mask"])
        sample = make_sample(self.ids[index], arrays)
        check_sample(sample, "taskonomy", source=f"Taskonomy {self.root} id {self.ids[index]}")
        return sample

    @staticmethod
    def _apply_mask(arrays: dict[str, np.ndarray], path: Path) -> None:
        mask = read_image(path, "gray8")
        if not np.isin(mask, (0, 255)).all():
            raise ValueError(f"{path}: mask_valid must hold only 0 and 255")
        invalid = mask == 0
        for key in ("depth", "normals"):
            if key in arrays:
                if arrays[key].shape[1:] != mask.shape:
                    raise ValueError(
                        f"{path}: mask size {mask.shape} differs from {key} {arrays[key].shape[1:]}"
                    )
                arrays[key] = np.where(invalid[None], 0.0, arrays[key]).astype(np.float32)
