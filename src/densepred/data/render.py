"""Vectorised ray casting of `scene.Scene` rooms into mutually consistent dense labels and RGB.

One ray per pixel from a pinhole camera (NYU intrinsics scaled to the output size for NYUD). For each
ray: the exit through the room box (slab method over the three axes, always hit since the camera is
inside), then every furniture box by the slab method, vectorised over the rays that can hit it (those
inside the box's projected bounding rectangle), keeping the nearest hit: the argmin over surfaces.
From the hit we read, for the same pixel and from the same geometry:
- z-buffer depth (the ray parameter, since camera-frame directions have z = 1) and ray distance;
- the surface normal (box face / room surface) rotated into the camera frame (x right, y down,
  z forward), facing the camera;
- the object (class, instance, raw NYUD label), with wall/floor/ceiling decals looked up on the hit
  point;
- RGB: per-object albedo and procedural texture, Lambertian shading from the ceiling light with
  1/d^2 falloff and hard shadows (a second cast towards the light), ambient term, emissive windows
  and lamp, a mild distance attenuation, auto exposure, sensor noise and gamma.
No Python loop runs over pixels; loops run over at most a few dozen boxes or decals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from densepred.data.scene import KINDS, Scene, free_position

# NYU Depth v2 RGB intrinsics at 640x480 (NYU toolbox; docs/data-formats.md §1.1).
NYU_FX, NYU_FY, NYU_CX, NYU_CY = 518.8579, 519.4696, 325.5824, 253.7362
NYU_WIDTH, NYU_HEIGHT = 640, 480

_EPS = 1e-6
_CORNER_BITS = np.array([[(k >> a) & 1 for a in range(3)] for k in range(8)], dtype=bool)  # 8 box corners


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics (pixels) and image size.

    Pixel (row v, column u) looks along ((u - cx) / fx, (v - cy) / fy, 1) in the camera frame.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    height: int
    width: int

    @classmethod
    def nyu(cls, height: int, width: int) -> Camera:
        """NYU Kinect RGB intrinsics scaled from 640x480 to (height, width)."""
        sx, sy = width / NYU_WIDTH, height / NYU_HEIGHT
        return cls(NYU_FX * sx, NYU_FY * sy, NYU_CX * sx, NYU_CY * sy, height, width)

    @classmethod
    def square(cls, size: int, fov: float) -> Camera:
        """A square image with horizontal and vertical field of view `fov` (radians), as Taskonomy."""
        focal = size / (2.0 * np.tan(fov / 2.0))
        return cls(focal, focal, (size - 1) / 2.0, (size - 1) / 2.0, size, size)

    @property
    def matrix(self) -> np.ndarray:
        """The 3x3 intrinsic matrix K."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def directions(self) -> np.ndarray:
        """(H*W, 3) camera-frame ray directions with z = 1, row-major over pixels."""
        v, u = np.mgrid[0 : self.height, 0 : self.width].astype(np.float64)
        x = (u.ravel() - self.cx) / self.fx
        y = (v.ravel() - self.cy) / self.fy
        return np.stack([x, y, np.ones_like(x)], axis=1)


def rotation(yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world rotation (columns: camera x right, y down, z forward in the y-up world).

    yaw turns about the world up axis, pitch > 0 looks up, roll turns about the optical axis.
    """
    forward = np.array([np.cos(pitch) * np.sin(yaw), np.sin(pitch), np.cos(pitch) * np.cos(yaw)])
    return _frame(forward, roll)


def look_at(position: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world rotation looking from `position` at `target` (see `rotation`)."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    norm = np.linalg.norm(forward)
    if norm < 1e-9:
        raise ValueError("look_at: position and target coincide")
    return _frame(forward / norm, roll)


def _frame(forward: np.ndarray, roll: float) -> np.ndarray:
    up = np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6:  # looking straight up or down
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)  # det = +1: right x down = forward


def sample_target(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A point worth looking at: a furniture piece, a spot on a wall at picture height, or mid-room."""
    room = scene.room
    choice = rng.random()
    if scene.footprints and choice < 0.6:
        x0, z0, x1, z1 = scene.footprints[rng.integers(len(scene.footprints))]
        return np.array([(x0 + x1) / 2, rng.uniform(0.3, 0.9), (z0 + z1) / 2])
    if choice < 0.85:
        axis = rng.integers(2) * 2  # a wall of constant x (axis 0) or constant z (axis 2)
        point = np.array(
            [rng.uniform(0.3, room[0] - 0.3), rng.uniform(0.9, 1.6), rng.uniform(0.3, room[2] - 0.3)]
        )
        point[axis] = room[axis] * rng.integers(2)
        return point
    return np.array([room[0] / 2, 1.0, room[2] / 2])


def sample_pose(
    scene: Scene,
    rng: np.random.Generator,
    height: tuple[float, float] = (1.0, 1.7),
    target: np.ndarray | None = None,
    max_roll: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """A camera (position, camera-to-world rotation) looking at `target` (sampled if None), like a
    hand-held indoor photograph: the farthest of four free spots, a small random roll."""
    aim = sample_target(scene, rng) if target is None else np.asarray(target, dtype=np.float64)
    spots = [free_position(scene, rng, height) for _ in range(4)]
    position = max(spots, key=lambda p: float(np.linalg.norm(p - aim)))
    if np.linalg.norm(aim - position) < 0.5:  # crowded room: look across it instead
        aim = np.array([scene.room[0], 1.0, scene.room[2]]) - position * np.array([1.0, 0.0, 1.0])
    return position, look_at(position, aim, rng.uniform(-max_roll, max_roll))


def _room_exit(origin: np.ndarray, dirs: np.ndarray, room: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parameter and surface index (2*axis + side) where rays from inside leave the room box."""
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(dirs > 0, room[None, :], 0.0)
        t_axes = (bound - origin) / dirs
    t_axes[~np.isfinite(t_axes) | (dirs == 0)] = np.inf
    axis = t_axes.argmin(axis=1)
    rows = np.arange(len(dirs))
    side = (dirs[rows, axis] > 0).astype(np.int64)
    return t_axes[rows, axis], 2 * axis + side


def _basis(forward: np.ndarray) -> np.ndarray:
    """Orthonormal (3,3) rows: unit forward, then two unit vectors perpendicular to it."""
    f = forward / np.linalg.norm(forward)
    helper = np.array([1.0, 0.0, 0.0]) if abs(f[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(f, helper)
    e1 /= np.linalg.norm(e1)
    return np.stack([f, e1, np.cross(f, e1)])


def cast_boxes(
    origin: np.ndarray,
    dirs: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    t_limit: np.ndarray,
    forward: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest box hit per ray from one `origin`, with _EPS < t < t_limit (slab method).

    dirs: (N,3) directions (any length; t is in their units); lo/hi: (P,3) box corners; forward: the
    bundle's main direction. Each box is first culled by the bounding rectangle of its corners
    projected on the plane perpendicular to `forward` (exact when all corners lie in front), so the
    slab test runs only on the rays that can hit it. Returns t (N,) (t_limit where no hit), box index
    (N,) (-1 = none) and the hit face axis (N,).
    """
    n = len(dirs)
    t = np.array(t_limit, dtype=np.float64, copy=True)
    part = np.full(n, -1, dtype=np.int64)
    axis = np.zeros(n, dtype=np.int64)
    frame = _basis(np.asarray(forward, dtype=np.float64))
    local = dirs @ frame.T
    ahead = local[:, 0] > _EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        plane = local[:, 1:] / local[:, :1]
    for p in range(len(lo)):
        candidates = _candidates(origin, lo[p], hi[p], frame, ahead, plane)
        if candidates is None or len(candidates) == 0:
            continue
        near, face, hit = _slab(origin, dirs[candidates], lo[p], hi[p])
        hit &= near < t[candidates]
        rays = candidates[hit]
        t[rays] = near[hit]
        part[rays] = p
        axis[rays] = face[hit]
    return t, part, axis


def _candidates(
    origin: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    frame: np.ndarray,
    ahead: np.ndarray,
    plane: np.ndarray,
) -> np.ndarray | None:
    """Indices of rays whose projection falls in the box's projected bounding rectangle (None: none)."""
    corners = np.where(_CORNER_BITS, hi, lo)
    rel = (corners - origin) @ frame.T
    if (rel[:, 0] <= _EPS).all():
        return None  # behind the bundle
    if (rel[:, 0] <= _EPS).any():
        return np.arange(len(ahead))  # straddles the projection plane: test every ray
    proj = rel[:, 1:] / rel[:, :1]
    low, high = proj.min(axis=0) - 1e-9, proj.max(axis=0) + 1e-9
    inside = ahead & (plane[:, 0] >= low[0]) & (plane[:, 0] <= high[0])
    inside &= (plane[:, 1] >= low[1]) & (plane[:, 1] <= high[1])
    return np.flatnonzero(inside)


def _slab(
    origin: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entry parameter, entry face axis and hit flag of rays against one box."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - origin) / dirs
        t2 = (hi - origin) / dirs
    # A ray parallel to a slab: inside it -> (-inf, inf), outside -> empty interval.
    parallel = dirs == 0
    inside = (origin >= lo) & (origin <= hi)
    t1 = np.where(parallel, np.where(inside, -np.inf, np.inf), t1)
    t2 = np.where(parallel, np.where(inside, np.inf, -np.inf), t2)
    entry, leave = np.minimum(t1, t2), np.maximum(t1, t2)
    face = entry.argmax(axis=1)
    near = entry[np.arange(len(entry)), face]
    far = leave.min(axis=1)
    return near, face, (near <= far) & (near > _EPS)


def render(
    scene: Scene,
    camera: Camera,
    position: np.ndarray,
    rot: np.ndarray,
    rng: np.random.Generator,
    shadows: bool = True,
) -> dict[str, np.ndarray]:
    """Render one view. Returns (H,W[,3]) arrays:

    depth (z-buffer, m, float32), distance (ray length, m), normals (camera frame, float32), object
    (index into scene.objects), kind, instance (uint8), raw (NYUD 894-class id, uint16), nyu40 (uint8),
    taskonomy (uint8), no_depth (bool: glass/mirror), rgb (uint8), plus K (3x3 intrinsics).
    """
    h, w = camera.height, camera.width
    dirs_cam = camera.directions()
    dirs = dirs_cam @ rot.T
    position = np.asarray(position, dtype=np.float64)
    t_room, surface = _room_exit(position, dirs, scene.room)
    t, part, box_axis = cast_boxes(position, dirs, scene.parts_lo, scene.parts_hi, t_room, rot[:, 2])
    on_box = part >= 0
    axis = np.where(on_box, box_axis, surface // 2)
    rows = np.arange(len(dirs))
    normal_world = np.zeros_like(dirs)
    normal_world[rows, axis] = -np.sign(dirs[rows, axis])
    points = position + t[:, None] * dirs
    obj = scene.surface_object[surface]
    obj[on_box] = scene.part_object[part[on_box]]
    obj = _apply_decals(scene, points, surface, on_box, obj)

    kinds = np.array([o.kind for o in scene.objects])[obj]
    table = _kind_tables()
    out = {
        "depth": t.astype(np.float32),
        "distance": (t * np.linalg.norm(dirs_cam, axis=1)).astype(np.float32),
        "normals": (normal_world @ rot).astype(np.float32),
        "object": obj,
        "kind": kinds,
        "instance": np.array([o.instance for o in scene.objects], dtype=np.uint8)[obj],
        "raw": np.array([o.raw for o in scene.objects], dtype=np.uint16)[obj],
        "nyu40": table["nyu40"][kinds],
        "taskonomy": table["taskonomy"][kinds],
        "no_depth": table["no_depth"][kinds],
    }
    out = {key: value.reshape(h, w, *value.shape[1:]) for key, value in out.items()}
    out["rgb"] = _shade(
        scene, points, normal_world, obj, kinds, out["distance"].ravel(), rng, shadows
    ).reshape(h, w, 3)
    out["K"] = camera.matrix
    return out


def _kind_tables() -> dict[str, np.ndarray]:
    return {
        "nyu40": np.array([k.nyu40 for k in KINDS], dtype=np.uint8),
        "taskonomy": np.array([k.taskonomy for k in KINDS], dtype=np.uint8),
        "no_depth": np.array([k.no_depth for k in KINDS], dtype=bool),
        "emissive": np.array([k.emissive for k in KINDS], dtype=bool),
    }


def _apply_decals(
    scene: Scene, points: np.ndarray, surface: np.ndarray, on_box: np.ndarray, obj: np.ndarray
) -> np.ndarray:
    """Replace the room-surface object by the decal object where the hit point lies in a decal."""
    obj = obj.copy()
    for s, u0, u1, v0, v1, decal_obj in scene.decals:
        s = int(s)
        ua, va = [a for a in range(3) if a != s // 2]
        inside = (~on_box) & (surface == s)
        inside &= (
            (points[:, ua] >= u0) & (points[:, ua] <= u1) & (points[:, va] >= v0) & (points[:, va] <= v1)
        )
        obj[inside] = int(decal_obj)
    return obj


def _texture(
    scene: Scene, points: np.ndarray, normal_world: np.ndarray, obj: np.ndarray, kinds: np.ndarray
) -> np.ndarray:
    """Per-pixel albedo (N,3): object colour modulated by a procedural texture in surface coordinates."""
    rows = np.arange(len(points))
    axis = np.abs(normal_world).argmax(axis=1)
    params = np.array([o.texture for o in scene.objects])[obj]
    freq = params[:, 0]
    a = points[rows, (axis + 1) % 3] * freq
    b = points[rows, (axis + 2) % 3] * freq
    ph_u, ph_v, contrast = params[:, 1], params[:, 2], params[:, 3]
    colors = np.array([o.color for o in scene.objects])
    albedo = colors[obj]
    names = sorted({k.texture for k in KINDS})
    textures = np.array([names.index(k.texture) for k in KINDS])[kinds]
    factor = np.ones(len(points))
    for code in np.flatnonzero(np.bincount(textures, minlength=len(names))):
        name, m = names[code], np.flatnonzero(textures == code)
        am, bm, pu, pv, c = a[m], b[m], ph_u[m], ph_v[m], contrast[m]
        if name == "wood":
            factor[m] = 0.85 + 0.15 * c * np.sin(
                2 * np.pi * (5 * am + 0.6 * np.sin(2 * np.pi * 0.4 * bm + pv)) + pu
            )
        elif name == "fabric":
            factor[m] = 0.9 + 0.1 * c * np.sign(
                np.sin(2 * np.pi * 12 * am + pu) * np.sin(2 * np.pi * 12 * bm + pv)
            )
        elif name == "stripes":
            factor[m] = 0.78 + 0.22 * (np.sin(2 * np.pi * 9 * bm + pu) > 0)
        elif name == "picture":
            phases = np.stack([pu, pv, pu + pv], axis=1)
            pattern = 0.5 + 0.45 * np.sin(2 * np.pi * (2.5 * am[:, None] + 1.5 * bm[:, None]) + phases)
            albedo[m] = pattern * albedo[m] + 0.1
        else:
            factor[m] = 1.0 - 0.05 * c * np.sin(2 * np.pi * 0.7 * am + pu) * np.sin(2 * np.pi * 0.5 * bm + pv)
    return np.clip(albedo * factor[:, None], 0.0, 1.0)


def _shade(
    scene: Scene,
    points: np.ndarray,
    normal_world: np.ndarray,
    obj: np.ndarray,
    kinds: np.ndarray,
    distance: np.ndarray,
    rng: np.random.Generator,
    shadows: bool,
) -> np.ndarray:
    """Lambertian shading + ambient, emissive glass/lamp, exposure, noise, gamma -> uint8 (N,3)."""
    albedo = _texture(scene, points, normal_world, obj, kinds)
    to_light = scene.light - points
    dist2 = np.maximum((to_light**2).sum(axis=1), 0.25)
    lambert = np.maximum((normal_world * to_light).sum(axis=1), 0.0) / np.sqrt(dist2)
    if shadows:  # cast from the light towards each point; a box hit before the point casts a shadow
        limit = np.full(len(points), 1.0 - 1e-4)
        down = np.array([0.0, -1.0, 0.0])
        _, blocker, _ = cast_boxes(scene.light, -to_light, scene.parts_lo, scene.parts_hi, limit, down)
        lambert = lambert * (blocker < 0)
    irradiance = 0.25 + 2.5 * lambert / dist2
    radiance = albedo * irradiance[:, None]
    emissive = _kind_tables()["emissive"][kinds]
    radiance[emissive] = np.array([o.color for o in scene.objects])[obj[emissive]] * 1.6
    radiance /= (1.0 + 0.04 * distance)[:, None]
    radiance *= 0.45 / max(float(np.median(radiance)), 1e-3)
    radiance += rng.normal(0.0, 1.0, radiance.shape) * (0.006 + 0.015 * np.sqrt(np.clip(radiance, 0, None)))
    return np.rint(np.clip(radiance, 0.0, 1.0) ** (1 / 2.2) * 255).astype(np.uint8)


def kinect_raw_depth(
    depth: np.ndarray, no_depth: np.ndarray, rng: np.random.Generator, max_range: float = 8.0
) -> np.ndarray:
    """Kinect-like raw depth: 0 on glass/mirrors, beyond `max_range`, in a projector shadow band right
    of depth discontinuities, and at sparse dropouts; elsewhere depth plus noise growing with z^2."""
    w = depth.shape[1]
    hole = no_depth | (depth > max_range) | (rng.random(depth.shape) < 0.002)
    jump = np.zeros_like(hole)
    jump[:, 1:] = (depth[:, 1:] - depth[:, :-1]) > 0.1
    band = jump.copy()
    for shift in range(1, max(1, round(w / 160))):
        band[:, shift:] |= jump[:, :-shift]
    hole |= band
    raw = depth + rng.normal(0.0, 1.0, depth.shape) * 0.0015 * depth**2
    raw = np.clip(raw, 0.3, None).astype(np.float32)
    raw[hole] = 0.0
    return raw
