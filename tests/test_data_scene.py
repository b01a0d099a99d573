"""The procedural renderer: physical consistency of depth, normals, labels, edges and RGB."""

from __future__ import annotations

import numpy as np
import pytest

from data_fixtures import (
    angles_deg,
    brute_force_boundaries,
    brute_force_nearest_box,
    normals_from_depth,
    planar_interior,
    render_view,
)
from densepred.data.labels import MAP_894_TO_40, label_boundaries
from densepred.data.render import Camera, cast_boxes, kinect_raw_depth, render, rotation
from densepred.data.scene import KIND, KINDS, Scene, SceneObject, sample_scene


@pytest.fixture(scope="module")
def views() -> list[dict]:
    return [render_view(seed) for seed in range(6)]


def test_normals_agree_with_depth_finite_differences(views):
    for view in views:
        interior = planar_interior(view)
        assert interior.mean() > 0.5  # most pixels lie inside planar faces
        derived = normals_from_depth(view["depth"], view["K"])
        errors = angles_deg(derived[interior], view["normals"][interior])
        assert np.median(errors) < 5.0
        assert np.percentile(errors, 95) < 5.0


def test_normals_are_unit_and_face_the_camera(views):
    for view in views:
        normals = view["normals"].astype(np.float64)
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-6)
        h, w = view["depth"].shape
        v, u = np.mgrid[0:h, 0:w]
        K = view["K"]
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((h, w))], -1)
        assert ((normals * rays).sum(-1) < 0).all()


def test_empty_room_depth_and_normals_by_hand():
    """Room 4 x 3 x 5 m, camera at (2, 1.5, 1) looking along +z with a 90 degree field of view."""
    room = np.array([4.0, 3.0, 5.0])
    objects = [
        SceneObject(KIND["wall"], k, 21, np.full(3, 0.5), np.array([1.0, 0, 0, 0.5])) for k in range(6)
    ]
    empty = np.zeros((0, 3))
    scene = Scene(
        room, objects, empty, empty, np.zeros(0, int), np.zeros((0, 6)), np.arange(6), room / 2, "office"
    )
    camera = Camera.square(33, np.pi / 2)  # focal 16.5 px, principal point (16, 16)
    view = render(scene, camera, np.array([2.0, 1.5, 1.0]), rotation(0.0, 0.0), np.random.default_rng(0))
    assert view["depth"][16, 16] == pytest.approx(4.0)  # far wall z = 5
    np.testing.assert_allclose(view["normals"][16, 16], [0, 0, -1], atol=1e-6)
    # Bottom-centre pixel: ray (0, 16/16.5, 1) meets the floor 1.5 m below at z = 1.5 * 16.5 / 16.
    assert view["depth"][32, 16] == pytest.approx(1.5 * 16.5 / 16)
    np.testing.assert_allclose(view["normals"][32, 16], [0, -1, 0], atol=1e-6)  # floor faces up = -y camera
    np.testing.assert_allclose(view["normals"][16, 0], [1, 0, 0], atol=1e-6)  # left wall faces right
    assert view["distance"][32, 16] == pytest.approx(view["depth"][32, 16] * np.hypot(1, 16 / 16.5))


def test_cast_boxes_matches_brute_force():
    rng = np.random.default_rng(3)
    lo = rng.uniform(-2, 2, size=(12, 3)) + np.array([0, 0, 4])
    hi = lo + rng.uniform(0.1, 1.5, size=(12, 3))
    origin = np.zeros(3)
    dirs = rng.normal(size=(300, 3)) * np.array([0.5, 0.5, 0.0]) + np.array([0, 0, 1.0])
    dirs[:5, 0] = 0.0  # rays parallel to a slab
    t, part, _ = cast_boxes(origin, dirs, lo, hi, np.full(len(dirs), np.inf), np.array([0, 0, 1.0]))
    t_ref, part_ref = brute_force_nearest_box(origin, dirs, lo, hi)
    np.testing.assert_array_equal(part, part_ref)
    hit = part_ref >= 0
    assert hit.sum() > 30
    np.testing.assert_allclose(t[hit], t_ref[hit])


def test_labels_use_raw_ids_that_map_to_the_intended_class(views):
    for view in views:
        np.testing.assert_array_equal(MAP_894_TO_40[view["raw"]], view["nyu40"])
        expected = np.array([k.nyu40 for k in KINDS])[view["kind"]]
        np.testing.assert_array_equal(view["nyu40"], expected)
        assert (view["nyu40"] == 1).any() and (view["nyu40"] == 2).any()  # wall and floor seen
    rng = np.random.default_rng(1)
    objects = [o for _ in range(20) for o in sample_scene(rng).objects]
    raw_ids = {o.raw for o in objects if KINDS[o.kind].name in ("vase", "plant", "clock")}
    assert len(raw_ids) > 3  # many raw ids per 40-class: the 894->40 table is exercised
    assert all(MAP_894_TO_40[o.raw] == KINDS[o.kind].nyu40 for o in objects)


def test_edges_are_exactly_the_label_discontinuities():
    view = render_view(11, height=24, width=32)
    labels = view["raw"].astype(np.int64) * 256 + view["instance"]
    edges = label_boundaries(labels)
    np.testing.assert_array_equal(edges, brute_force_boundaries(labels))
    assert edges.any() and not edges.all()
    np.testing.assert_array_equal(label_boundaries(labels[:, ::-1]), edges[:, ::-1])


def test_rgb_carries_signal(views):
    for view in views:
        gray = view["rgb"].astype(np.float64).mean(-1)
        gradient = np.hypot(*np.gradient(gray))
        edges = label_boundaries(view["raw"].astype(np.int64) * 256 + view["instance"])
        assert gradient[edges].mean() > 1.5 * gradient[~edges].mean()
    floor = np.concatenate([v["rgb"][v["nyu40"] == 2] for v in views]).mean(0)
    wall = np.concatenate([v["rgb"][v["nyu40"] == 1] for v in views]).mean(0)
    assert np.abs(floor - wall).max() > 10  # classes differ in appearance


def test_raw_depth_has_holes_on_glass_and_is_close_elsewhere():
    rng = np.random.default_rng(0)
    view = render_view(2)
    view["no_depth"][:5] = True  # make sure some glass is present
    raw = kinect_raw_depth(view["depth"], view["no_depth"], rng)
    assert (raw[view["no_depth"]] == 0).all()
    valid = raw > 0
    assert valid.mean() > 0.8
    assert np.abs(raw[valid] - view["depth"][valid]).max() < 0.2


def test_rendering_is_deterministic_for_a_seed():
    a, b, c = render_view(5, 32, 40), render_view(5, 32, 40), render_view(6, 32, 40)
    for key in ("depth", "normals", "rgb", "raw", "instance"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["rgb"], c["rgb"])


def test_scenes_have_furniture_and_wall_mounted_objects():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(10)]
    kinds = {KINDS[o.kind].name for s in scenes for o in s.objects}
    assert {"bed", "chair", "table", "picture", "window", "door"} <= kinds
    for scene in scenes:
        assert (scene.parts_lo >= 0).all() and (scene.parts_hi <= scene.room + 1e-9).all()
        assert (scene.parts_lo < scene.parts_hi).all()
