"""Synthetic NYUD-v2 and Taskonomy datasets written in the real on-disk formats.

Scenes come from `scene.py` (procedural furnished rooms) and `render.py` (one ray per pixel), so
depth, normals, labels, edges and RGB agree physically. Writers follow docs/data-formats.md:

- NYUD-v2 "official": `nyu_depth_v2_labeled.mat` (MATLAB v7.3 = HDF5 with the 512-byte MATLAB
  header; arrays stored transposed: images (N,3,W,H) uint8, depths/rawDepths (N,W,H) float32 m,
  labels (N,W,H) uint16 raw 894-class ids, instances uint8, names/scenes/sceneTypes/raw file names as
  cells of char references (raw class names past the 40 that `labels.py` records are placeholders; no
  reader needs them; `namesToIds` is an opaque MATLAB object and is not written), accelData (4,N)
  float32, approximate angles from the camera pose), `splits.mat` (MATLAB v5, 1-based trainNdxs /
  testNdxs columns) and Eigen-style normals `normals_gt/{normals,masks}/NNNN.png` (0-based index).
- NYUD-v2 "multitask" (ATRC/InvPT/MQTransformer): images/<id>.png, segmentation/<id>.png (0..40),
  depth/<id>.npy (float32 m, 0 on glass/mirrors), normals/<id>.png, edge/<id>.png {0,255},
  gt_sets/{train,val}.txt. "mti" (MTI-Net): the same with images .jpg, normals .npy (H,W,3) float32
  with zero vectors on glass/mirrors, edge .npy float32 {0,1}.
- Taskonomy omnitools layout `<domain>/taskonomy/<building>/point_<p>_view_<v>_domain_<token>.png`
  for rgb, depth_zbuffer, depth_euclidean, normal, segment_semantic (token `segmentsemantic`),
  mask_valid (token `mask_valid` in even buildings, `depth_zbuffer` in odd ones: both spellings
  exist in the wild), point_info JSON, and `train_val_test_<subset>.csv` with `\\r` line endings.

Edges are label discontinuities of (raw label, instance), two pixels wide (`labels.label_boundaries`).
Every file is a deterministic function of the seed. A `synthetic.json` manifest in the root records
the parameters and the defects injected on purpose (Taskonomy: one view without its normal PNG and
one zero-byte RGB PNG, as the real download has corrupt PNGs; docs/data-formats.md §3.1).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densepred.data.codecs import (
    TASKONOMY_NORMAL_INVALID,
    encode_normals_uint8,
    encode_taskonomy_depth,
    write_jpeg,
    write_png,
)
from densepred.data.labels import MAP_894_TO_40, NYU_RAW_NAMES_KNOWN, NYU_RAW_NUM_CLASSES, label_boundaries
from densepred.data.matfile import mat73_writer, save_mat5, set_matlab_class, write_string_cell
from densepred.data.render import Camera, kinect_raw_depth, render, sample_pose, sample_target
from densepred.data.scene import sample_scene

NYUD_LAYOUTS = ("official", "multitask", "mti")
NYUD_MAT = "nyu_depth_v2_labeled.mat"
NYUD_SPLITS = "splits.mat"
_NYU_TEST_SHARE = 654 / 1449

# Taskonomy "tiny" split buildings (docs/data-formats.md §3.3), so real split CSVs stay meaningful.
TINY_BUILDINGS = {
    "train": (
        "hanson", "merom", "klickitat", "onaga", "leonardo", "marstons", "newfields", "pinesdale",
        "lakeville", "cosmos", "benevolence", "pomaria", "tolstoy", "shelbyville", "allensville",
        "wainscott", "beechwood", "coffeen", "stockman", "hiteman", "woodbine", "lindenwood", "forkland",
        "mifflinburg", "ranchester",
    ),
    "val": ("wiconisco", "corozal", "collierville", "markleeville", "darden"),
    "test": ("ihlen", "muleshoe", "uvalda", "noxapater", "mcdade"),
}  # fmt: skip
TASKONOMY_DOMAINS = ("rgb", "depth_zbuffer", "depth_euclidean", "normal", "segment_semantic", "mask_valid")
_DOMAIN_TOKEN = {"segment_semantic": "segmentsemantic"}


@dataclass
class NYUFrame:
    """One rendered NYUD frame with everything the three layouts need (image-major arrays)."""

    index: int  # 0-based position in the .mat
    split: str
    scene: str
    scene_type: str
    rgb: np.ndarray  # (H,W,3) uint8
    depth: np.ndarray  # (H,W) float32 m, dense
    raw_depth: np.ndarray  # (H,W) float32 m, 0 = hole
    raw_label: np.ndarray  # (H,W) uint16, 0..894
    instance: np.ndarray  # (H,W) uint8
    normals: np.ndarray  # (H,W,3) float32, camera frame
    no_depth: np.ndarray  # (H,W) bool: glass / mirror
    rotation: np.ndarray  # (3,3) camera-to-world

    @property
    def label40(self) -> np.ndarray:
        return MAP_894_TO_40[self.raw_label]

    @property
    def edge(self) -> np.ndarray:
        return label_boundaries(self.raw_label.astype(np.int64) * 256 + self.instance)


# ------------------------------------------------------------------------------------------- NYUD


def synthesize_nyud(
    out: Path,
    num_images: int,
    height: int,
    width: int,
    layout: str = "official",
    num_test: int | None = None,
    seed: int = 0,
    *,
    shadows: bool = True,
) -> Path:
    """Write a raw synthetic NYUD-v2 dataset of `num_images` frames in `layout` under `out`; return `out`.

    num_test: test frames (default about 654/1449 of them, as the official split). Frames come in
    scenes of 1..4 views of the same room; a scene is entirely train or entirely test, as in NYU.
    The official layout keeps MATLAB's axis order, so readers must transpose (and H != W catches a
    missing transpose).
    """
    if layout not in NYUD_LAYOUTS:
        raise ValueError(f"unknown NYUD layout {layout!r}; expected one of {NYUD_LAYOUTS}")
    num_test = _check_nyud_sizes(num_images, height, width, num_test)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frames = render_nyud_frames(num_images, num_test, height, width, seed, shadows)
    if layout == "official":
        _write_nyud_official(out, frames, num_images, height, width)
    else:
        _write_nyud_multitask(out, frames, variant=layout)
    manifest = {"dataset": "nyud", "layout": layout, "num_images": num_images, "num_test": num_test}
    manifest |= {"height": height, "width": width, "seed": seed, "defects": []}
    _write_manifest(out, manifest)
    return out


def _check_nyud_sizes(num_images: int, height: int, width: int, num_test: int | None) -> int:
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2 (a train and a test frame), got {num_images}")
    if height < 16 or width < 16:
        raise ValueError(f"image size {height}x{width} too small; expected at least 16x16")
    if num_test is None:
        num_test = min(max(1, round(num_images * _NYU_TEST_SHARE)), num_images - 1)
    if not 1 <= num_test <= num_images - 1:
        raise ValueError(f"num_test must be in 1..{num_images - 1} for {num_images} images, got {num_test}")
    return num_test


def _scene_plan(num_images: int, num_test: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Scenes as (split, frame count): each split cut into runs of 1..4 frames, scenes shuffled."""
    plan = []
    for split, count in (("train", num_images - num_test), ("test", num_test)):
        while count > 0:
            size = int(min(rng.integers(1, 5), count))
            plan.append((split, size))
            count -= size
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def render_nyud_frames(
    num_images: int, num_test: int, height: int, width: int, seed: int, shadows: bool = True
) -> Iterator[NYUFrame]:
    """The frames `synthesize_nyud` writes, in file order (each scene and frame has its own seeded
    generator, so the same arguments give the same frames)."""
    plan = _scene_plan(num_images, num_test, np.random.default_rng([seed, 0]))
    camera = Camera.nyu(height, width)
    counters: dict[str, int] = {}
    index = 0
    for scene_number, (split, size) in enumerate(plan):
        scene = sample_scene(np.random.default_rng([seed, 1, scene_number]))
        counters[scene.scene_type] = counters.get(scene.scene_type, 0) + 1
        name = f"{scene.scene_type}_{counters[scene.scene_type]:04d}"
        for _ in range(size):
            rng = np.random.default_rng([seed, 2, index])
            position, rot = sample_pose(scene, rng)
            view = render(scene, camera, position, rot, rng, shadows=shadows)
            raw_depth = kinect_raw_depth(view["depth"], view["no_depth"], rng)
            yield NYUFrame(
                index, split, name, scene.scene_type, view["rgb"], view["depth"], raw_depth,
                view["raw"], view["instance"], view["normals"], view["no_depth"], rot,
            )  # fmt: skip
            index += 1


def _write_nyud_official(out: Path, frames: Iterator[NYUFrame], n: int, height: int, width: int) -> None:
    """The labeled .mat (v7.3, transposed arrays), splits.mat (v5) and Eigen normals PNGs."""
    (out / "normals_gt" / "normals").mkdir(parents=True, exist_ok=True)
    (out / "normals_gt" / "masks").mkdir(parents=True, exist_ok=True)
    scenes, types, train, test, accel = [], [], [], [], np.zeros((4, n), dtype=np.float32)
    with mat73_writer(out / NYUD_MAT) as f:
        datasets = _create_nyud_datasets(f, n, height, width)
        for frame in frames:
            i = frame.index
            datasets["images"][i] = frame.rgb.transpose(2, 1, 0)
            datasets["depths"][i] = frame.depth.T
            datasets["rawDepths"][i] = frame.raw_depth.T
            datasets["labels"][i] = frame.raw_label.T
            datasets["instances"][i] = frame.instance.T
            accel[:, i] = _accelerometer(frame.rotation)
            scenes.append(frame.scene)
            types.append(frame.scene_type)
            (train if frame.split == "train" else test).append(i + 1)
            write_png(out / "normals_gt" / "normals" / f"{i:04d}.png", encode_normals_uint8(frame.normals))
            write_png(
                out / "normals_gt" / "masks" / f"{i:04d}.png",
                np.where(frame.raw_depth > 0, 255, 0).astype(np.uint8),
            )
        f.create_dataset("accelData", data=accel)
        set_matlab_class(f["accelData"], "single")
        names = [NYU_RAW_NAMES_KNOWN.get(k, f"raw class {k}") for k in range(1, NYU_RAW_NUM_CLASSES + 1)]
        write_string_cell(f, "names", names)
        write_string_cell(f, "scenes", scenes)
        write_string_cell(f, "sceneTypes", types)
        write_string_cell(
            f, "rawDepthFilenames", [f"{s}/d-{1300000000 + i}.pgm" for i, s in enumerate(scenes)]
        )
        write_string_cell(f, "rawRgbFilenames", [f"{s}/r-{1300000000 + i}.ppm" for i, s in enumerate(scenes)])
        f.create_group("#subsystem#")
    # The real splits.mat holds 1-based column vectors of class double.
    splits = {
        "trainNdxs": np.array(train, dtype=np.float64)[:, None],
        "testNdxs": np.array(test, dtype=np.float64)[:, None],
    }
    save_mat5(out / NYUD_SPLITS, splits)


def _create_nyud_datasets(f, n: int, height: int, width: int) -> dict:
    """Create the per-frame datasets with MATLAB's reversed axis order, chunked one frame per chunk."""
    specs = {
        "images": ((n, 3, width, height), np.uint8, "uint8"),
        "depths": ((n, width, height), np.float32, "single"),
        "rawDepths": ((n, width, height), np.float32, "single"),
        "labels": ((n, width, height), np.uint16, "uint16"),
        "instances": ((n, width, height), np.uint8, "uint8"),
    }
    datasets = {}
    for name, (shape, dtype, matlab_class) in specs.items():
        chunks = (1, *shape[1:])
        datasets[name] = f.create_dataset(
            name, shape=shape, dtype=dtype, chunks=chunks, compression="gzip", compression_opts=1
        )
        set_matlab_class(datasets[name], matlab_class)
    return datasets


def _accelerometer(rot: np.ndarray) -> np.ndarray:
    """Approximate (roll, yaw, pitch, tilt) in degrees from the camera orientation (accelData rows)."""
    forward, right = rot[:, 2], rot[:, 0]
    pitch = np.degrees(np.arcsin(np.clip(forward[1], -1, 1)))
    roll = np.degrees(np.arcsin(np.clip(right[1], -1, 1)))
    return np.array([roll, 0.0, pitch, 90.0 - pitch], dtype=np.float32)


def _write_nyud_multitask(out: Path, frames: Iterator[NYUFrame], variant: str) -> None:
    """The multi-task folder layout: variant "multitask" (ATRC/InvPT) or "mti" (MTI-Net)."""
    for folder in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {"train": [], "test": []}
    for frame in frames:
        sample_id = f"{frame.index + 1:04d}"  # 1-based official index, as the ATRC ids
        ids[frame.split].append(sample_id)
        depth = np.where(frame.no_depth, 0.0, frame.depth).astype(np.float32)
        write_png(out / "segmentation" / f"{sample_id}.png", frame.label40.astype(np.uint8))
        np.save(out / "depth" / f"{sample_id}.npy", depth)
        if variant == "multitask":
            write_png(out / "images" / f"{sample_id}.png", frame.rgb)
            write_png(out / "normals" / f"{sample_id}.png", encode_normals_uint8(frame.normals))
            write_png(out / "edge" / f"{sample_id}.png", frame.edge.astype(np.uint8) * 255)
        else:
            write_jpeg(out / "images" / f"{sample_id}.jpg", frame.rgb)
            normals = np.where(frame.no_depth[..., None], 0.0, frame.normals).astype(np.float32)
            np.save(out / "normals" / f"{sample_id}.npy", normals)
            np.save(out / "edge" / f"{sample_id}.npy", frame.edge.astype(np.float32))
    (out / "gt_sets" / "train.txt").write_text("".join(f"{i}\n" for i in ids["train"]))
    (out / "gt_sets" / "val.txt").write_text("".join(f"{i}\n" for i in ids["test"]))


# ------------------------------------------------------------------------------------- Taskonomy


def synthesize_taskonomy(
    out: Path,
    buildings: int,
    views_per_building: int,
    size: int,
    seed: int = 0,
    *,
    defects: bool = True,
    subset: str = "synthetic",
    shadows: bool = True,
) -> Path:
    """Write a raw synthetic Taskonomy dataset (omnitools layout + split CSV) under `out`; return `out`.

    Each building is one furnished room; its views are grouped into points (1..4 views looking at
    the same 3D point from different spots, as Taskonomy's point/view naming). Buildings take names
    of the real "tiny" split (train/val/test about 70/15/15 %, at least one each), listed in
    `train_val_test_<subset>.csv`. defects=True removes one view's normal PNG and empties one RGB
    PNG in the first train building (2 bad samples, recorded in synthetic.json), so the filtering
    and reporting paths run; keep views >= 200 to stay under prepare's default 1 % limit.
    """
    if buildings < 3:
        raise ValueError(f"buildings must be >= 3 so that train, val and test each get one, got {buildings}")
    if views_per_building < 1 or size < 16:
        raise ValueError(f"need views_per_building >= 1 and size >= 16, got {views_per_building}, {size}")
    if defects and views_per_building < 3:
        raise ValueError("defects=True needs views_per_building >= 3 (two defective views plus a clean one)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split_of = _assign_buildings(buildings)
    for number, building in enumerate(split_of):
        rng = np.random.default_rng([seed, 3, number])
        _write_building(out, building, number, views_per_building, size, rng, shadows)
    _write_split_csv(out / f"train_val_test_{subset}.csv", split_of)
    injected = _inject_defects(out, next(b for b, s in split_of.items() if s == "train")) if defects else []
    manifest = {"dataset": "taskonomy", "buildings": split_of, "views_per_building": views_per_building}
    manifest |= {"size": size, "seed": seed, "subset": subset, "defects": injected}
    _write_manifest(out, manifest)
    return out


def _assign_buildings(count: int) -> dict[str, str]:
    """Building name -> split, about 70/15/15 % with at least one building per split."""
    n_val = n_test = max(1, round(0.15 * count))
    n_train = count - n_val - n_test
    split_of: dict[str, str] = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        names = TINY_BUILDINGS[split]
        for k in range(n):
            split_of[names[k] if k < len(names) else f"{names[k % len(names)]}{k // len(names) + 1}"] = split
    return split_of


def _write_building(
    out: Path, building: str, number: int, views: int, size: int, rng: np.random.Generator, shadows: bool
) -> None:
    scene = sample_scene(rng, size_range=(4.0, 10.0), height_range=(2.5, 3.5))
    mask_token = "mask_valid" if number % 2 == 0 else "depth_zbuffer"
    points = rng.choice(max(3000, 4 * views), size=views, replace=False)
    written = 0
    for point in points:
        target = sample_target(scene, rng)
        count = int(min(rng.integers(1, 5), views - written))
        for view in sorted(rng.choice(20, size=count, replace=False)):
            fov = float(rng.uniform(np.radians(45), np.radians(75)))
            position, rot = sample_pose(scene, rng, height=(0.9, 1.8), target=target)
            rendered = render(scene, Camera.square(size, fov), position, rot, rng, shadows=shadows)
            write_taskonomy_view(out, building, int(point), int(view), rendered, mask_token)
            info = {"resolution": size, "field_of_view_rads": fov, "camera_location": position.tolist()}
            info |= {"camera_rotation_final": rot.tolist(), "point_uuid": f"{building}_{point}"}
            path = (
                out
                / "point_info"
                / "taskonomy"
                / building
                / f"point_{point}_view_{view}_domain_point_info.json"
            )
            path.write_text(json.dumps({**info, "view_id": int(view)}))
        written += count
        if written == views:
            break


def write_taskonomy_view(
    out: Path, building: str, point: int, view: int, rendered: dict, mask_token: str = "mask_valid"
) -> None:
    """Write one rendered view (`render.render` output) in the six pixel domains with the Taskonomy
    encodings (docs/data-formats.md §3.2): glass has no geometry (depth 65535, normal (128,128,128),
    mask_valid 0). `mask_token` spells the mask file's domain token."""
    valid = ~rendered["no_depth"]
    normals = encode_normals_uint8(rendered["normals"])
    normals[~valid] = TASKONOMY_NORMAL_INVALID
    files = {
        "rgb": rendered["rgb"],
        "depth_zbuffer": encode_taskonomy_depth(rendered["depth"], valid),
        "depth_euclidean": encode_taskonomy_depth(rendered["distance"], valid),
        "normal": normals,
        "segment_semantic": rendered["taskonomy"].astype(np.uint8),
        "mask_valid": valid.astype(np.uint8) * 255,
    }
    tokens = {**_DOMAIN_TOKEN, "mask_valid": mask_token}
    for domain, array in files.items():
        folder = out / domain / "taskonomy" / building
        folder.mkdir(parents=True, exist_ok=True)
        write_png(folder / f"point_{point}_view_{view}_domain_{tokens.get(domain, domain)}.png", array)
    (out / "point_info" / "taskonomy" / building).mkdir(parents=True, exist_ok=True)


def _write_split_csv(path: Path, split_of: dict[str, str]) -> None:
    """`id,train,val,test` with one-hot flags, CR separators, no final terminator (as the real files)."""
    rows = ["id,train,val,test"]
    for building, split in split_of.items():
        rows.append(",".join([building, *("1" if split == s else "0" for s in ("train", "val", "test"))]))
    path.write_bytes("\r".join(rows).encode("ascii"))


def _inject_defects(out: Path, building: str) -> list[dict[str, str]]:
    """Remove one view's normal PNG and truncate another view's RGB PNG to zero bytes."""
    rgb_files = sorted((out / "rgb" / "taskonomy" / building).glob("*.png"))
    missing = (
        out / "normal" / "taskonomy" / building / rgb_files[0].name.replace("_domain_rgb", "_domain_normal")
    )
    missing.unlink()
    rgb_files[1].write_bytes(b"")
    return [
        {"file": str(missing.relative_to(out)), "defect": "missing"},
        {"file": str(rgb_files[1].relative_to(out)), "defect": "zero-byte"},
    ]


def _write_manifest(out: Path, manifest: dict) -> None:
    manifest = {"generator": "densepred.data.synthetic", **manifest}
    (out / "synthetic.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
