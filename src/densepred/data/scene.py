"""Procedural indoor scenes: layout sampling (room, furniture, wall-mounted planar objects).

A scene is a closed box room (floor, ceiling, four walls) in a world frame with y up, its minimum
corner at the origin. Furniture is made of axis-aligned boxes ("parts"); a piece of furniture
(bed = base + headboard, table = top + four legs, ...) is one object with one class and instance.
Wall-, floor- and ceiling-mounted planar objects ("decals": picture, window, door, whiteboard,
blinds, mirror, clock, floor mat, ceiling lamp) lie on a room surface, so they share its depth and
normal but differ in label and appearance. `render.py` casts rays into these scenes.

Each object kind carries its NYUD-v2 40-class id and its Taskonomy class id; NYUD raw 894-class ids
are drawn per object among the raw ids that the official table maps to that class, so the 894->40
mapping is exercised by every reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from densepred.data.labels import raw_ids_of_class40


@dataclass(frozen=True)
class Kind:
    """An object kind: labels in both datasets, appearance, and sensor behaviour.

    nyu40: NYUD 40-class id (0 = void/unlabelled); taskonomy: Taskonomy id (0 = uncertain,
    1 = background); raw_ids: fixed raw 894-class ids (empty = any id mapping to nyu40);
    no_depth: depth sensors return nothing there (glass, mirrors: Kinect holes, Taskonomy 65535).
    """

    name: str
    nyu40: int
    taskonomy: int
    color: tuple[float, float, float]
    texture: str
    no_depth: bool = False
    raw_ids: tuple[int, ...] = ()
    emissive: bool = False


KINDS: tuple[Kind, ...] = (
    Kind("wall", 1, 1, (0.80, 0.78, 0.72), "plain"),
    Kind("floor", 2, 1, (0.55, 0.42, 0.30), "wood"),
    Kind("ceiling", 22, 1, (0.92, 0.92, 0.90), "plain"),
    Kind("cabinet", 3, 1, (0.60, 0.45, 0.30), "wood"),
    Kind("bed", 4, 6, (0.75, 0.70, 0.85), "fabric"),
    Kind("chair", 5, 3, (0.35, 0.25, 0.18), "wood"),
    Kind("sofa", 6, 4, (0.30, 0.40, 0.60), "fabric"),
    Kind("table", 7, 7, (0.65, 0.50, 0.32), "wood"),
    Kind("door", 8, 1, (0.50, 0.35, 0.22), "wood"),
    Kind("window", 9, 1, (0.75, 0.85, 1.00), "glass", no_depth=True, emissive=True),
    Kind("bookshelf", 10, 1, (0.45, 0.32, 0.20), "wood"),
    Kind("picture", 11, 1, (0.70, 0.30, 0.25), "picture"),
    Kind("blinds", 13, 1, (0.90, 0.88, 0.80), "stripes"),
    Kind("desk", 14, 7, (0.55, 0.55, 0.58), "plain"),
    Kind("dresser", 17, 1, (0.70, 0.55, 0.40), "wood"),
    Kind("pillow", 18, 1, (0.95, 0.95, 0.92), "fabric"),
    Kind("mirror", 19, 1, (0.80, 0.85, 0.88), "glass", no_depth=True),
    Kind("floor mat", 20, 1, (0.60, 0.20, 0.20), "fabric"),
    Kind("books", 23, 15, (0.20, 0.35, 0.60), "stripes"),
    Kind("refrigerator", 24, 14, (0.90, 0.90, 0.92), "plain"),
    Kind("television", 25, 9, (0.05, 0.05, 0.06), "plain"),
    Kind("box", 29, 1, (0.70, 0.60, 0.45), "plain"),
    Kind("whiteboard", 30, 1, (0.97, 0.97, 0.97), "plain"),
    Kind("night stand", 32, 1, (0.55, 0.40, 0.28), "wood"),
    Kind("toilet", 33, 8, (0.96, 0.96, 0.96), "plain"),
    Kind("sink", 34, 13, (0.85, 0.85, 0.88), "plain"),
    Kind("lamp", 35, 1, (1.00, 0.95, 0.80), "plain", emissive=True),
    Kind("otherfurniture", 39, 1, (0.50, 0.50, 0.45), "wood"),
    Kind("bottle", 40, 2, (0.20, 0.55, 0.30), "plain", raw_ids=(2,)),
    Kind("microwave", 40, 10, (0.30, 0.30, 0.32), "plain", raw_ids=(13,)),
    Kind("vase", 40, 17, (0.80, 0.40, 0.50), "plain"),
    Kind("plant", 40, 5, (0.20, 0.50, 0.15), "fabric"),
    Kind("clock", 40, 16, (0.95, 0.95, 0.85), "plain"),
    Kind("clutter", 0, 0, (0.50, 0.45, 0.50), "fabric", raw_ids=(0,)),
)
KIND = {kind.name: index for index, kind in enumerate(KINDS)}

# Room surfaces: index 2*axis + side (side 0 = minimum coordinate, 1 = maximum).
WALLS = (0, 1, 4, 5)
FLOOR, CEILING = 2, 3

SCENE_TYPES = ("bedroom", "living_room", "office", "kitchen", "bathroom")

# Furniture per scene type: (kind, min count, max count).
_FURNITURE: dict[str, tuple[tuple[str, int, int], ...]] = {
    "bedroom": (("bed", 1, 1), ("night stand", 1, 2), ("dresser", 0, 1), ("chair", 0, 1), ("cabinet", 0, 1)),
    "living_room": (("sofa", 1, 2), ("table", 1, 1), ("chair", 0, 2), ("bookshelf", 0, 1), ("dresser", 0, 1)),
    "office": (
        ("desk", 1, 2),
        ("chair", 1, 2),
        ("bookshelf", 0, 2),
        ("cabinet", 0, 1),
        ("otherfurniture", 0, 1),
    ),
    "kitchen": (("table", 1, 1), ("chair", 1, 3), ("cabinet", 1, 3), ("refrigerator", 1, 1)),
    "bathroom": (("toilet", 1, 1), ("sink", 1, 1), ("cabinet", 0, 1)),
}
_DECALS: dict[str, tuple[str, ...]] = {
    "bedroom": ("window", "picture", "door", "blinds", "mirror", "picture"),
    "living_room": ("window", "picture", "door", "picture", "blinds", "clock"),
    "office": ("whiteboard", "window", "door", "picture", "clock", "blinds"),
    "kitchen": ("window", "door", "clock", "picture"),
    "bathroom": ("mirror", "door", "window", "picture"),
}
_SMALL: dict[str, tuple[str, ...]] = {
    "bedroom": ("lamp", "books", "box", "vase", "clutter"),
    "living_room": ("television", "vase", "plant", "books", "bottle", "clutter"),
    "office": ("books", "box", "bottle", "lamp", "clutter"),
    "kitchen": ("microwave", "bottle", "vase", "box", "clutter"),
    "bathroom": ("bottle", "box", "clutter"),
}


@dataclass
class SceneObject:
    """One labelled object: kind, per-class instance index, raw NYUD label, appearance parameters."""

    kind: int
    instance: int
    raw: int
    color: np.ndarray
    texture: np.ndarray  # (frequency, phase_u, phase_v, contrast)


@dataclass
class Scene:
    """A room with its objects, box parts, decals and light (world frame, y up, metres).

    room: (3,) extents (x, height, z); parts_lo/parts_hi: (P,3) box corners; part_object: (P,) object
    index per part; decals: (D,6) rows (surface, u0, u1, v0, v1, object) where (u, v) are the two world
    coordinates other than the surface's axis, in increasing axis order; surface_object: (6,) object
    of each room surface; light: (3,) point-light position; scene_type: one of SCENE_TYPES.
    """

    room: np.ndarray
    objects: list[SceneObject]
    parts_lo: np.ndarray
    parts_hi: np.ndarray
    part_object: np.ndarray
    decals: np.ndarray
    surface_object: np.ndarray
    light: np.ndarray
    scene_type: str
    footprints: list[tuple[float, float, float, float]] = field(default_factory=list)


class _Builder:
    """Accumulates objects, parts and decals while a scene is sampled."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.objects: list[SceneObject] = []
        self.instances: dict[int, int] = {}
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.owner: list[int] = []
        self.decals: list[tuple[float, ...]] = []
        self.footprints: list[tuple[float, float, float, float]] = []

    def add_object(self, kind_name: str) -> int:
        """Create an object of `kind_name` with the next instance index and a sampled raw label."""
        kind_index = KIND[kind_name]
        kind = KINDS[kind_index]
        self.instances[kind_index] = self.instances.get(kind_index, 0) + 1
        choices = kind.raw_ids or tuple(int(v) for v in raw_ids_of_class40(kind.nyu40))
        raw = int(choices[self.rng.integers(len(choices))])
        jitter = self.rng.uniform(0.8, 1.15, size=3) * self.rng.uniform(0.85, 1.1)
        color = np.clip(np.asarray(kind.color) * jitter, 0.02, 1.0)
        texture = np.array(
            [self.rng.uniform(0.6, 1.6), *self.rng.uniform(0, 2 * np.pi, size=2), self.rng.uniform(0.5, 1.0)]
        )
        self.objects.append(SceneObject(kind_index, self.instances[kind_index], raw, color, texture))
        return len(self.objects) - 1

    def add_part(self, obj: int, lo: np.ndarray, hi: np.ndarray) -> None:
        self.lo.append(np.asarray(lo, dtype=np.float64))
        self.hi.append(np.asarray(hi, dtype=np.float64))
        self.owner.append(obj)

    def add_decal(self, surface: int, u: tuple[float, float], v: tuple[float, float], obj: int) -> None:
        self.decals.append((surface, u[0], u[1], v[0], v[1], obj))


def sample_scene(
    rng: np.random.Generator,
    scene_type: str | None = None,
    size_range: tuple[float, float] = (3.2, 6.5),
    height_range: tuple[float, float] = (2.4, 3.0),
) -> Scene:
    """Sample a furnished room. Sizes in metres; `scene_type` None draws one of SCENE_TYPES."""
    if scene_type is None:
        scene_type = SCENE_TYPES[rng.integers(len(SCENE_TYPES))]
    if scene_type not in SCENE_TYPES:
        raise ValueError(f"unknown scene type {scene_type!r}; expected one of {SCENE_TYPES}")
    room = np.array([rng.uniform(*size_range), rng.uniform(*height_range), rng.uniform(*size_range)])
    build = _Builder(rng)
    surface_object = np.array(
        [build.add_object({FLOOR: "floor", CEILING: "ceiling"}.get(s, "wall")) for s in range(6)]
    )
    for surface in WALLS[1:]:  # one paint for the four walls of a room
        build.objects[surface_object[surface]].color = build.objects[surface_object[WALLS[0]]].color
    for surface in WALLS:
        _add_wall_decals(build, room, surface, _DECALS[scene_type])
    _add_floor_and_ceiling_decals(build, room)
    light = np.array([room[0] / 2, room[1] - 0.05, room[2] / 2])
    for kind_name, low, high in _FURNITURE[scene_type]:
        for _ in range(rng.integers(low, high + 1)):
            _place_furniture(build, room, kind_name, _SMALL[scene_type])
    return Scene(
        room=room,
        objects=build.objects,
        parts_lo=np.array(build.lo).reshape(-1, 3),
        parts_hi=np.array(build.hi).reshape(-1, 3),
        part_object=np.array(build.owner, dtype=np.int64),
        decals=np.array(build.decals, dtype=np.float64).reshape(-1, 6),
        surface_object=surface_object,
        light=light,
        scene_type=scene_type,
        footprints=build.footprints,
    )


# ---------------------------------------------------------------------------------------- decals

_DECAL_SIZE = {  # kind: (width range, height range, bottom range) in metres
    "window": ((0.8, 1.6), (1.0, 1.3), (0.8, 1.0)),
    "blinds": ((0.8, 1.4), (1.0, 1.3), (0.8, 1.0)),
    "door": ((0.8, 1.0), (2.0, 2.1), (0.0, 0.0)),
    "picture": ((0.3, 1.0), (0.3, 0.8), (1.2, 1.5)),
    "whiteboard": ((1.2, 2.0), (0.9, 1.2), (0.9, 1.0)),
    "mirror": ((0.5, 0.9), (0.6, 1.0), (1.0, 1.2)),
    "clock": ((0.25, 0.35), (0.25, 0.35), (1.8, 1.9)),
}


def _add_wall_decals(build: _Builder, room: np.ndarray, surface: int, kinds: tuple[str, ...]) -> None:
    """Place 0..3 non-overlapping planar objects on one wall."""
    rng = build.rng
    axis = surface // 2
    length = room[2] if axis == 0 else room[0]
    taken: list[tuple[float, float]] = []
    for _ in range(rng.integers(0, 4)):
        name = kinds[rng.integers(len(kinds))]
        widths, heights, bottoms = _DECAL_SIZE[name]
        width = min(rng.uniform(*widths), length - 0.4)
        start = rng.uniform(0.2, length - 0.2 - width)
        if any(start < b + 0.1 and a < start + width + 0.1 for a, b in taken):
            continue
        bottom = rng.uniform(*bottoms)
        top = min(bottom + rng.uniform(*heights), room[1] - 0.05)
        taken.append((start, start + width))
        horizontal, vertical = (start, start + width), (bottom, top)
        # (u, v) are the two other world axes in increasing order: x-walls (y, z), z-walls (x, y).
        u, v = (vertical, horizontal) if axis == 0 else (horizontal, vertical)
        build.add_decal(surface, u, v, build.add_object(name))


def _add_floor_and_ceiling_decals(build: _Builder, room: np.ndarray) -> None:
    """A ceiling lamp panel above the room centre (the light source) and, often, a floor mat."""
    rng = build.rng
    cx, cz = room[0] / 2, room[2] / 2
    build.add_decal(CEILING, (cx - 0.25, cx + 0.25), (cz - 0.25, cz + 0.25), build.add_object("lamp"))
    if rng.random() < 0.6:
        w, d = rng.uniform(0.8, 1.8), rng.uniform(0.6, 1.4)
        x0, z0 = rng.uniform(0.3, room[0] - 0.3 - w), rng.uniform(0.3, room[2] - 0.3 - d)
        build.add_decal(FLOOR, (x0, x0 + w), (z0, z0 + d), build.add_object("floor mat"))


# ------------------------------------------------------------------------------------- furniture


def _template(name: str, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[list, list, str]]]:
    """Local-frame parts of a furniture kind: size (w, h, d) and [(lo, hi, kind)], back at z = d."""
    u = rng.uniform
    if name == "bed":
        w, d = u(1.3, 1.9), u(1.9, 2.1)
        parts = [([0, 0, 0], [w, 0.5, d], "bed"), ([0, 0, d - 0.08], [w, 1.1, d], "bed")]
        parts += [([0.1, 0.5, d - 0.55], [w / 2 - 0.05, 0.62, d - 0.12], "pillow")]
        parts += [([w / 2 + 0.05, 0.5, d - 0.55], [w - 0.1, 0.62, d - 0.12], "pillow")]
        return np.array([w, 1.1, d]), parts
    if name in ("table", "desk"):
        w, d, h = u(0.8, 1.6), u(0.6, 0.95), u(0.72, 0.78)
        parts = [([0, h - 0.04, 0], [w, h, d], name), *_legs(w, d, h - 0.04, 0.05, name)]
        if name == "desk":
            parts.append(([w - 0.45, 0, 0.02], [w - 0.02, h - 0.04, d - 0.02], name))
        return np.array([w, h, d]), parts
    if name == "chair":
        w = u(0.42, 0.5)
        parts = [([0, 0.42, 0], [w, 0.47, w], "chair"), ([0, 0.47, w - 0.05], [w, 0.95, w], "chair")]
        return np.array([w, 0.95, w]), parts + _legs(w, w, 0.42, 0.04, "chair")
    if name == "sofa":
        w, d = u(1.5, 2.2), u(0.85, 0.95)
        parts = [([0, 0, 0], [w, 0.45, d], "sofa"), ([0, 0.45, d - 0.2], [w, 0.85, d], "sofa")]
        parts += [
            ([0, 0.45, 0], [0.2, 0.65, d - 0.2], "sofa"),
            ([w - 0.2, 0.45, 0], [w, 0.65, d - 0.2], "sofa"),
        ]
        return np.array([w, 0.85, d]), parts
    if name == "bookshelf":
        w, d, h = u(0.8, 1.2), 0.35, u(1.6, 2.0)
        parts = [([0, 0, d - 0.02], [w, h, d], name), ([0, 0, 0], [0.03, h, d], name)]
        parts += [([w - 0.03, 0, 0], [w, h, d], name)]
        for level in np.linspace(0, h - 0.03, 5):
            parts.append(([0.03, level, 0], [w - 0.03, level + 0.03, d - 0.02], name))
        for level in np.linspace(0, h - 0.03, 5)[1:3]:
            x1 = u(0.3, w - 0.1)
            parts.append(([0.06, level + 0.03, 0.05], [x1, level + 0.03 + u(0.18, 0.28), d - 0.04], "books"))
        return np.array([w, h, d]), parts
    if name == "toilet":
        return np.array([0.4, 0.8, 0.7]), [
            ([0, 0, 0], [0.4, 0.42, 0.55], "toilet"),
            ([0, 0, 0.5], [0.4, 0.8, 0.7], "toilet"),
        ]
    sizes = {  # single boxes: (w range, h range, d range)
        "cabinet": ((0.5, 1.2), (0.8, 2.0), (0.45, 0.6)),
        "dresser": ((0.9, 1.5), (0.8, 1.1), (0.45, 0.55)),
        "night stand": ((0.4, 0.55), (0.5, 0.6), (0.35, 0.45)),
        "refrigerator": ((0.6, 0.8), (1.6, 1.9), (0.6, 0.75)),
        "sink": ((0.5, 0.8), (0.8, 0.9), (0.45, 0.55)),
        "otherfurniture": ((0.4, 1.2), (0.4, 1.4), (0.4, 0.8)),
    }
    if name not in sizes:
        raise ValueError(f"no furniture template for kind {name!r}")
    w, h, d = (u(*r) for r in sizes[name])
    return np.array([w, h, d]), [([0, 0, 0], [w, h, d], name)]


def _legs(w: float, d: float, h: float, s: float, kind: str) -> list[tuple[list, list, str]]:
    return [([x, 0, z], [x + s, h, z + s], kind) for x in (0, w - s) for z in (0, d - s)]


def _rotate(lo: np.ndarray, hi: np.ndarray, size: np.ndarray, quarter: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a local box by quarter*90 degrees about y inside the piece's footprint."""
    w, d = size[0], size[2]
    corners = np.array([[lo[0], lo[2]], [hi[0], hi[2]]])
    for _ in range(quarter % 4):  # (x, z) -> (z, w - x): a quarter turn, footprint (w, d) -> (d, w)
        corners = np.stack([corners[:, 1], w - corners[:, 0]], axis=1)
        w, d = d, w
    (x0, z0), (x1, z1) = corners.min(axis=0), corners.max(axis=0)
    return np.array([x0, lo[1], z0]), np.array([x1, hi[1], z1])


def _place_furniture(build: _Builder, room: np.ndarray, name: str, small_kinds: tuple[str, ...]) -> None:
    """Place one piece against a wall (back to the wall) or free-standing, without overlaps."""
    rng = build.rng
    size, parts = _template(name, rng)
    for _ in range(30):
        quarter = int(rng.integers(4))
        w, d = (size[2], size[0]) if quarter % 2 else (size[0], size[2])
        if w > room[0] - 0.2 or d > room[2] - 0.2:
            continue
        x0, z0 = rng.uniform(0.05, room[0] - w - 0.05), rng.uniform(0.05, room[2] - d - 0.05)
        if rng.random() < 0.7:  # against the wall the back faces
            x0, z0 = _snap_to_wall(quarter, x0, z0, w, d, room)
        box = (x0, z0, x0 + w, z0 + d)
        if any(_overlap(box, other, 0.05) for other in build.footprints):
            continue
        build.footprints.append(box)
        obj = build.add_object(name)
        offset = np.array([x0, 0.0, z0])
        tops: list[tuple[np.ndarray, np.ndarray]] = []
        for lo, hi, kind in parts:
            # Parts of the piece's own kind form one object; pillows, books rows are objects of their own.
            part_obj = obj if kind == name else build.add_object(kind)
            lo_w, hi_w = _rotate(np.asarray(lo, float), np.asarray(hi, float), size, quarter)
            build.add_part(part_obj, lo_w + offset, hi_w + offset)
            tops.append((lo_w + offset, hi_w + offset))
        if name in ("table", "desk", "dresser", "night stand", "cabinet", "sink") and size[1] < 1.3:
            _add_small_objects(build, tops[0], small_kinds)
        return


def _snap_to_wall(
    quarter: int, x0: float, z0: float, w: float, d: float, room: np.ndarray
) -> tuple[float, float]:
    # The local back (z = d) ends up at +z, +x, -z, -x in world for quarter = 0, 1, 2, 3.
    gap = 0.02
    if quarter == 0:
        return x0, room[2] - d - gap
    if quarter == 1:
        return room[0] - w - gap, z0
    if quarter == 2:
        return x0, gap
    return gap, z0


def _overlap(a: tuple, b: tuple, margin: float) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def _add_small_objects(build: _Builder, top: tuple[np.ndarray, np.ndarray], kinds: tuple[str, ...]) -> None:
    """Put 0..3 small objects (box, books, bottle, vase, lamp, tv, clutter, ...) on a top surface."""
    rng = build.rng
    lo, hi = top
    for _ in range(rng.integers(0, 4)):
        name = kinds[rng.integers(len(kinds))]
        if name == "television":
            w, h, d = rng.uniform(0.6, 1.0), rng.uniform(0.4, 0.6), 0.06
        else:
            w, h, d = rng.uniform(0.1, 0.35), rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.3)
        if w > hi[0] - lo[0] - 0.04 or d > hi[2] - lo[2] - 0.04:
            continue
        x0 = rng.uniform(lo[0] + 0.02, hi[0] - w - 0.02)
        z0 = rng.uniform(lo[2] + 0.02, hi[2] - d - 0.02)
        build.add_part(
            build.add_object(name), np.array([x0, hi[1], z0]), np.array([x0 + w, hi[1] + h, z0 + d])
        )


def free_position(scene: Scene, rng: np.random.Generator, height: tuple[float, float]) -> np.ndarray:
    """A camera position inside the room, 0.5 m from walls and 0.4 m clear of every footprint."""
    room = scene.room
    for _ in range(200):
        x, z = rng.uniform(0.5, room[0] - 0.5), rng.uniform(0.5, room[2] - 0.5)
        if not any(_overlap((x, z, x, z), box, 0.4) for box in scene.footprints):
            return np.array([x, rng.uniform(*height), z])
    # Crowded room: stand above the furniture instead of inside it.
    return np.array([room[0] / 2, min(room[1] - 0.3, 2.2), room[2] / 2])
