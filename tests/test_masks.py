"""Masks on real faces: what they cover, how they are worn, determinism, pose."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import ALIGNED, aligned_files
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.masks.families import FAMILIES, all_families
from maskgen.masks.geometry import anchor_grid
from maskgen.masks.options import WEAR_SHIFTS, MaskOptions, variant_seed
from maskgen.masks.render import render_mask

EYES = list(range(36, 48))
MOUTH = [51, 57, 62, 66, 48, 54]


def covered(occlusion: np.ndarray, points: np.ndarray, indices) -> np.ndarray:
    """Whether each landmark's pixel is covered (points past the border: the border pixel)."""
    h, w = occlusion.shape
    xy = np.clip(np.round(points[indices]).astype(int), 0, [w - 1, h - 1])
    return occlusion[xy[:, 1], xy[:, 0]] > 0


def chin_point(points: np.ndarray) -> np.ndarray:
    """A point on the chin just inside the jaw line (landmark 8 lies on the very edge)."""
    return points[8] * 0.85 + points[57] * 0.15


def spec(family: str, seed: int = 1, **kw):
    return MaskOptions.parse(type=family, **kw).sample(seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_covers_nose_mouth_chin_never_eyes(chips, family):
    for i, (image, points) in enumerate(chips):
        out = render_mask(image, points, spec(family, seed=i))
        occ = out.occlusion
        assert covered(occ, points, [30]).all(), f"nose tip uncovered on chip {i}"
        assert covered(occ, points, MOUTH).all(), f"mouth uncovered on chip {i}"
        assert covered(occ, chin_point(points)[None], [0]).all(), f"chin uncovered on chip {i}"
        assert not covered(occ, points, EYES).any(), f"eyes covered on chip {i}"
        assert 0.25 < out.coverage < 0.75
        changed = np.abs(out.image.astype(int) - image).sum(-1) > 0
        assert changed[occ > 0].mean() > 0.95  # the pixels said to be covered were painted


def test_nose_exposed_and_on_chin(chips):
    for image, points in chips[::5]:
        nose = render_mask(image, points, spec("surgical", wear="nose")).occlusion
        assert not covered(nose, points, [30]).any() and covered(nose, points, [57, 66]).all()
        chin = render_mask(image, points, spec("surgical", wear="chin")).occlusion
        assert not covered(chin, points, [30, 51, 62]).any()
        assert covered(chin, chin_point(points)[None], [0]).all()


def test_wear_is_continuous(chips):
    image, points = chips[0]
    areas = [
        (render_mask(image, points, replace(spec("cloth"), wear_shift=s)).occlusion > 0).sum()
        for s in np.linspace(0, 1, 6)
    ]
    assert all(a > b for a, b in zip(areas, areas[1:]))  # lower and lower, smaller and smaller


def test_same_seed_same_pixels_other_seed_differs(chips):
    image, points = chips[3]
    opts = MaskOptions.parse()
    a = render_mask(image, points, opts.sample(variant_seed(0, "a/b.jpg")))
    b = render_mask(image, points, opts.sample(variant_seed(0, "a/b.jpg")))
    c = render_mask(image, points, opts.sample(variant_seed(1, "a/b.jpg")))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.occlusion, b.occlusion)
    assert not np.array_equal(a.image, c.image)


def test_the_variants_of_a_face_are_different_masks(tmp_path):
    """`maskgen mask --variants 2` on the real sample chips: each face gets two different draws
    (the variant index is part of the seed), written as two different images."""
    result = CliRunner().invoke(app, ["mask", str(ALIGNED), "-o", str(tmp_path), "--aligned", "--variants", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(tmp_path / "manifest.parquet").sort_values(["src_path", "variant_index"])
    assert len(df) == 2 * len(aligned_files()) and set(df["status"]) == {"ok"}
    spec_columns = ["mask_type", "color", "pattern", "wear_shift", "seed"]
    varied = []
    for src, rows in df.groupby("src_path"):
        assert list(rows["variant_index"]) == [0, 1], src
        first, second = rows[spec_columns].to_dict("records")
        assert first != second, f"{src}: both variants drew {first}"
        image_a, image_b = (hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest() for rel in rows["out_path"])
        assert image_a != image_b, f"{src}: both variants wrote the same image"
        varied.append(first["mask_type"] != second["mask_type"] or first["color"] != second["color"])
    assert np.mean(varied) > 0.5  # a different mask, not only a different seed

def test_colour_and_pattern_show(chips):
    image, points = chips[7]
    red = render_mask(image, points, spec("cloth", color="red", pattern="plain"))
    pixels = red.image[red.occlusion > 0].astype(float).mean(0)  # BGR
    assert pixels[2] > 1.5 * pixels[1] and pixels[2] > 1.5 * pixels[0]
    plain = render_mask(image, points, spec("cloth", color="navy", pattern="plain", texture_weight=1.0))
    striped = render_mask(image, points, spec("cloth", color="navy", pattern="stripes", texture_weight=1.0))
    inner = cv2.erode(plain.occlusion, np.ones((7, 7), np.uint8)) > 0
    gray = lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2GRAY)[inner]  # noqa: E731
    assert gray(striped.image).std() > 2 * gray(plain.image).std()


def yaw_warp(image: np.ndarray, amount: float) -> np.ndarray:
    """Turn the head: squeeze one side of the picture (a perspective warp of a real face)."""
    h, w = image.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    d = amount * h
    dst = np.float32([[0, 0], [w * (1 - amount), d], [w * (1 - amount), h - d], [0, h]])
    return cv2.warpPerspective(image, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.parametrize("amount", [0.15, 0.3])
@pytest.mark.parametrize("family", FAMILIES)
def test_turned_faces_keep_the_mask_on_the_face(landmarker, chips, family, amount):
    for image, _ in chips[::6]:
        for turned in (yaw_warp(image, amount), yaw_warp(image[:, ::-1].copy(), amount)[:, ::-1].copy()):
            points = landmarker.aligned(turned).points
            occ = render_mask(turned, points, spec(family)).occlusion
            assert covered(occ, points, [30] + MOUTH).all()
            assert not covered(occ, points, EYES).any()
            # the mask stays on the face: inside the landmarks' hull, grown by the mask's own margins
            face_w = np.linalg.norm(points[16] - points[0])
            hull = np.zeros_like(occ)
            cv2.fillConvexPoly(hull, cv2.convexHull(np.round(points).astype(np.int32)), 255)
            hull = cv2.dilate(hull, np.ones((int(0.25 * face_w),) * 2, np.uint8))
            assert (hull[occ > 0] > 0).mean() > 0.95
            # and moves with it: centred between the jaw's two sides, not on the picture's centre
            xs = np.nonzero(occ)[1]
            assert abs(np.median(xs) - (points[2, 0] + points[14, 0]) / 2) < 0.12 * face_w


def test_bad_specs_are_clear():
    with pytest.raises(ValueError, match="--type: unknown value 'n96'"):
        MaskOptions.parse(type="n96")
    with pytest.raises(ValueError, match="not a colour"):
        MaskOptions.parse(color="blurple")
    with pytest.raises(ValueError, match="weight of 'nose' is not a number"):
        MaskOptions.parse(wear="proper:1,nose:x")
    with pytest.raises(ValueError, match="--texture-weight"):
        MaskOptions.parse(texture_weight=2)


def test_landmarks_that_do_not_fit_the_image_are_a_render_error(chips):
    """Input-list landmarks can be anything: far-off, NaN or collapsed points give a
    RenderError (a status row), never an OpenCV crash."""
    from maskgen.masks.render import RenderError

    image, points = chips[0]
    spec = MaskOptions().sample(1)
    for bad in (points * 5000, np.full_like(points, np.nan), np.zeros_like(points), points + 10_000):
        with pytest.raises(RenderError):
            render_mask(image, bad, spec)


def test_a_mask_cut_by_the_image_border(chips):
    """A face whose chin leaves the picture: the mask is drawn up to the edge, shaded there."""
    image, points = chips[3]
    cut = image[: int(points[57, 1]) + 4]  # just below the lower lip
    out = render_mask(np.ascontiguousarray(cut), points, MaskOptions.parse(type="surgical").sample(2))
    occ = out.occlusion
    assert occ[-1].mean() > 100  # the mask reaches the bottom edge
    changed = np.abs(out.image.astype(int) - cut).max(2) > 0
    assert changed[-8:].mean() > 0.3 and not changed[: int(points[37:42, 1].min()) - 2].any()


LOWER_LIDS = [40, 41, 46, 47]
HIGHEST = WEAR_SHIFTS["high"] - 0.5  # worn high with the largest --wear-jitter MaskOptions accepts


def below_lower_lids(nodes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """How far (px) each node lies below the lowest lower-eyelid landmark, measured along the
    face's own "down" (perpendicular to the line through the eye centres: head roll included)."""
    eyes = points[36:48].reshape(2, 6, 2).mean(1)
    across = eyes[1] - eyes[0]
    down = np.array([-across[1], across[0]]) / np.linalg.norm(across)
    centre = eyes.mean(0)
    return (nodes - centre) @ down - ((points[LOWER_LIDS] - centre) @ down).max()


def rolled(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, turn, (w, h), borderMode=cv2.BORDER_REPLICATE)


def eye_area(shape, points: np.ndarray) -> np.ndarray:
    """The two eyes as filled polygons of their 6 landmarks each."""
    area = np.zeros(shape, np.uint8)
    for eye in (points[36:42], points[42:48]):
        cv2.fillConvexPoly(area, cv2.convexHull(np.round(eye).astype(np.int32)), 255)
    return area > 0


def test_the_top_edge_stays_below_the_lower_eyelids_however_high_the_mask_is_worn(landmarker, chips):
    """Worn high (a negative wear shift, down to the most --wear-jitter allows) the top edge
    slides up the nose; on real faces (upright, rolled, turned) it still stays below the lower
    eyelids, and the rendered mask paints no pixel of the eyes."""
    with pytest.raises(ValueError, match="--wear-jitter"):
        MaskOptions.parse(wear="high", wear_jitter=0.51)  # so HIGHEST is the highest a mask is ever worn
    turned = [
        (t, landmarker.aligned(t).points)
        for image, _ in chips
        for t in (yaw_warp(image, 0.3), yaw_warp(image[:, ::-1].copy(), 0.3)[:, ::-1].copy())
    ]
    tilted = [(t, landmarker.aligned(t).points) for image, _ in chips[::3] for t in (rolled(image, 20), rolled(image, -20))]
    for name, fam in all_families().items():
        for shift in (0.0, WEAR_SHIFTS["high"], HIGHEST):
            for i, (image, points) in enumerate(chips + tilted + turned):
                margin = below_lower_lids(anchor_grid(points, fam.fit, shift)[0], points)
                assert (margin > 0).all(), f"{name}, wear shift {shift}: top edge above the lower eyelids on face {i}: {margin}"
        for i, (image, points) in enumerate(turned):
            occlusion = render_mask(image, points, replace(spec(name), wear_shift=HIGHEST)).occlusion
            painted = (occlusion > 0) & eye_area(occlusion.shape, points)
            assert not painted.any(), f"{name} worn high paints {painted.sum()} eye pixels on turned face {i}"


def _thin_plate_reference(src: np.ndarray, dst: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The spline as numpy computes it directly (the renderer's compiled solve must agree)."""
    def kernel(a, b):
        d2 = np.maximum(((a[:, None] - b[None]) ** 2).sum(-1), 1e-12)
        return d2 * np.log(d2)

    n = len(src)
    a = np.zeros((n + 3, n + 3))
    a[:n, :n] = kernel(src, src) + 1e-6 * np.eye(n)
    a[:n, n] = a[n, :n] = 1
    a[:n, n + 1 :] = src
    a[n + 1 :, :n] = src.T
    w = np.linalg.solve(a, np.concatenate([dst, np.zeros((3, 2))]))
    return kernel(query, src) @ w[:n] + w[n] + query @ w[n + 1 :]


def test_the_compiled_spline_is_the_thin_plate_spline(chips):
    """The renderer's compiled thin-plate solve and lattice (numba, its own log) against numpy's,
    on the real chips' anchor grids for every family and a few ways of wearing: the same map to
    well under 1/32 px (cv2.remap's sub-pixel step)."""
    from maskgen.masks.render import _LATTICE, _TEMPLATE_XY, _coarse_lattice, _xlogx

    x = np.geomspace(1e-12, 1e4, 5001)
    assert np.allclose(_xlogx(x), x * np.log(x), rtol=1e-13, atol=1e-15)
    worst = 0.0
    for image, points in chips[::4]:
        for fam in all_families().values():
            for shift in (0.0, 0.5, 1.0):
                grid = anchor_grid(points, fam.fit, shift)
                x0, y0, w, h = 10, 20, 120, 100
                lattice = _coarse_lattice(grid, x0, y0, w, h, 0.8)
                scale = max(w, h)
                xs = ((np.arange(_LATTICE) + 0.5) * w / _LATTICE - 0.5) / scale
                ys = ((np.arange(_LATTICE) + 0.5) * h / _LATTICE - 0.5) / scale
                query = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
                expected = _thin_plate_reference((grid.reshape(-1, 2) - (x0, y0)) / scale, _TEMPLATE_XY * 0.8, query)
                worst = max(worst, float(np.abs(lattice.reshape(-1, 2) - expected).max()))
    assert worst < 1e-3, worst


def test_the_compiled_steps_are_the_cv2_calls_they_replace(chips):
    """The render's compiled replacements of cv2 calls, against those calls: the grey (every
    colour exactly), the light cells' blur (to float rounding), the template maps (the
    spline's lattice through cv2.resize, to float rounding) and the pattern's plane."""
    from maskgen.masks import render
    from maskgen.masks.templates import TEMPLATE_H, TEMPLATE_W, pattern, template, template_at

    colours = np.arange(1 << 24, dtype=np.uint32).view(np.uint8).reshape(4096, 4096, 4)[..., :3].copy()
    assert np.array_equal(render._box_gray(colours, 0, 0, 4096, 4096), cv2.cvtColor(colours, cv2.COLOR_BGR2GRAY))

    rng = np.random.default_rng(0)
    for shape in ((1, 1), (2, 7), (5, 3), (13, 19), (30, 40)):
        small = rng.random(shape, np.float32) * 200
        expected = cv2.GaussianBlur(small, (0, 0), 1.0)
        assert np.allclose(render._blur_small(small, render._LIGHT_BLUR), expected, rtol=1e-6, atol=1e-4), shape

    differ = total = 0
    for image, points in chips[::3]:
        for fam in all_families().values():
            grid = anchor_grid(points, fam.fit, 0.3)
            x0, y0, x1, y1 = render._mask_box(grid, image.shape, 7)
            w, h = x1 - x0, y1 - y0
            for zoom in (1.0, 0.6):
                xy, _ = render._template_maps(grid, x0, y0, w, h, zoom)
                fine = cv2.resize(render._coarse_lattice(grid, x0, y0, w, h, zoom), (w, h), interpolation=cv2.INTER_LINEAR)
                differ += int((np.abs(xy - fine) > 1e-4).any(2).sum())
                total += w * h
    assert differ <= total * 1e-5, (differ, total)

    texture = template("surgical")
    expected = texture.copy()
    expected[..., 3] = pattern("dots")[17 : 17 + TEMPLATE_H, 29 : 29 + TEMPLATE_W]
    assert np.array_equal(render._with_pattern(texture, pattern("dots"), 17, 29), expected)

    # a small face's template: the cached shrunk planes with the pattern's window shrunk on its own
    # are the whole patterned template shrunk (cv2's area filter treats each channel alike)
    small = render._with_pattern(template_at("surgical", (97, 73)), cv2.resize(expected[..., 3], (97, 73), interpolation=cv2.INTER_AREA), 0, 0)
    assert np.array_equal(small, cv2.resize(expected, (97, 73), interpolation=cv2.INTER_AREA))


def test_the_mask_is_clipped_to_the_anchor_outline_only_where_the_warp_folds_over(chips, monkeypatch):
    """The template's alpha is clipped to the anchor grid's outline only where the warp folds
    over: on the real chips, for every family, clipping always gives the very same pixels
    (a warp that does not fold maps nothing outside the outline into the template); landmarks
    out of order (the jaw's sides crossed) fold it, and there the clip is applied and matters."""
    from maskgen.masks import render

    def rendered(image, points, mask_spec, clip):
        monkeypatch.setattr(render, "_folds", lambda coarse: clip)
        return render_mask(image, points, mask_spec).image

    for image, points in chips[::3]:
        for name in all_families():
            mask_spec = spec(name, seed=7)
            assert np.array_equal(render_mask(image, points, mask_spec).image, rendered(image, points, mask_spec, clip=True)), name
            monkeypatch.undo()

    image, points = chips[0]
    crossed = points.copy()
    crossed[[5, 6, 10, 11]] = crossed[[11, 10, 6, 5]]
    mask_spec = spec("cloth")
    grid, _, _, (x0, y0, x1, y1) = render._fit(image, crossed, all_families()["cloth"], mask_spec)
    assert render._template_maps(grid, x0, y0, x1 - x0, y1 - y0)[1]  # it folds
    default = render_mask(image, crossed, mask_spec).image
    assert np.array_equal(default, rendered(image, crossed, mask_spec, clip=True))
    assert not np.array_equal(default, rendered(image, crossed, mask_spec, clip=False))
