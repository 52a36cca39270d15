"""Fit a mask template to a face and blend it in so it does not look pasted on.

1. geometry: anchor grid from the landmarks (geometry.py);
2. warp: a thin-plate spline from image to template space through the anchors, evaluated on
   a coarse lattice and upsampled (the spline is smooth), then one cv2.remap;
3. shade: the mask's colour (graded to the photo's saturation and cast: grading.py) x its
   relief x the face's own low-frequency illumination; a mask made from a picture
   (custom.py) keeps the picture's own colours, shifted to the spec's colour;
4. camera match: the image's noise level, a slight blur, feathered edges and a faint
   contact shadow on the skin around the mask; straps towards the ears.
All on the mask's bounding box only, in a few dozen cv2/numpy calls (each costs more in call
overhead than in pixels at this size): about 0.8 ms a 150x150 chip on one core."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from PIL import ImageColor

from maskgen.masks.families import family
from maskgen.masks.geometry import U, V, anchor_grid
from maskgen.masks.grading import photo_grade
from maskgen.masks.options import MaskSpec
from maskgen.masks.templates import RELIEF_SCALE, TEMPLATE_H, TEMPLATE_W, pattern, template, texture_bgr, texture_mean

_GREY = np.ones(3, np.float32)  # colour of the sensor noise layer: the same in B, G and R
_LATTICE = 12  # spline evaluated on a 12x12 lattice over the mask's box, then upsampled
_TEMPLATE_XY = np.stack(np.meshgrid(U * (TEMPLATE_W - 1), V * (TEMPLATE_H - 1)), -1).reshape(-1, 2)


class RenderError(ValueError):
    """The mask cannot be placed on this face (degenerate landmarks, face outside the image)."""


@dataclass(frozen=True)
class Rendered:
    image: np.ndarray  # BGR uint8, the masked photo
    occlusion: np.ndarray  # HxW uint8, 255 where the mask (or a strap) covers the face
    coverage: float  # fraction of the landmarks' bounding box that is covered


def _tps_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """r^2 log r^2 between every point of a and of b (squared distances by one matmul)."""
    d2 = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 1e-12)
    return d2 * np.log(d2)


def _thin_plate(src: np.ndarray, dst: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Thin-plate spline through src -> dst, evaluated at query points. (36 anchors: a direct
    39x39 solve is ~10x faster here than scipy's RBFInterpolator or skimage's TPS.)"""
    n = len(src)
    a = np.zeros((n + 3, n + 3))
    a[:n, :n] = _tps_kernel(src, src)
    a[:n, :n].flat[:: n + 1] += 1e-6
    a[:n, n] = a[n, :n] = 1
    a[:n, n + 1 :] = src
    a[n + 1 :, :n] = src.T
    b = np.zeros((n + 3, 2))
    b[:n] = dst
    ok, w = cv2.solve(a, b, flags=cv2.DECOMP_LU)
    if not ok or not np.isfinite(w).all():
        raise RenderError("landmarks are degenerate: cannot fit the mask")
    return _tps_kernel(query, src) @ w[:n] + w[n] + query @ w[n + 1 :]


def _template_maps(grid: np.ndarray, x0: int, y0: int, w: int, h: int, zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of the box, where to sample the template (resized by `zoom`):
    cv2.remap's fixed-point maps."""
    scale = max(w, h)
    src = (grid.reshape(-1, 2) - (x0, y0)) / scale  # normalised for a well-conditioned solve
    # Lattice nodes where cv2.resize puts the source samples, so the upsampling is exact there.
    xs = ((np.arange(_LATTICE) + 0.5) * w / _LATTICE - 0.5) / scale
    ys = ((np.arange(_LATTICE) + 0.5) * h / _LATTICE - 0.5) / scale
    query = np.empty((_LATTICE, _LATTICE, 2))
    query[..., 0], query[..., 1] = xs[None, :], ys[:, None]
    coarse = _thin_plate(src, _TEMPLATE_XY * zoom, query.reshape(-1, 2)).reshape(_LATTICE, _LATTICE, 2).astype(np.float32)
    fine = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.convertMaps(fine, None, cv2.CV_16SC2)


def _inside_grid(grid: np.ndarray, x0: int, y0: int, w: int, h: int, margin: int) -> np.ndarray:
    """255 inside the anchor grid's outline (grown by `margin`), 0 outside."""
    outline = np.concatenate([grid[0], grid[1:, -1], grid[-1, -2::-1], grid[-2:0:-1, 0]]) - (x0, y0)
    polygon = [np.round(outline * 16).astype(np.int32)]  # 4 fractional bits
    inside = np.zeros((h, w), np.uint8)
    cv2.fillPoly(inside, polygon, 255, cv2.LINE_8, shift=4)
    cv2.polylines(inside, polygon, True, 255, 2 * margin + 1, cv2.LINE_8, shift=4)  # grown: a thick rim
    return inside


@cache
def _noise_tile() -> np.ndarray:
    return np.random.default_rng(12345).standard_normal((512, 512)).astype(np.float32)


_LAPLACE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def _noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer's fast noise estimate (1996): the image's own sensor/compression noise."""
    h, w = gray.shape
    if h < 3 or w < 3:
        return 0.0
    response = cv2.norm(cv2.filter2D(gray, cv2.CV_16S, _LAPLACE)[1:-1, 1:-1], cv2.NORM_L1)
    return float(min(6.0, np.sqrt(np.pi / 2) * response / (6 * (w - 2) * (h - 2))))


@cache
def _rgb01(hex_color: str) -> np.ndarray:
    return np.array(ImageColor.getrgb(hex_color)[:3][::-1], np.float32) / 255  # BGR


@cache
def _pattern_shift(hex_color: str) -> np.ndarray:
    """The pattern's other colour minus the fabric's: darker on light fabric, lighter on dark."""
    color = _rgb01(hex_color)
    return (color * 0.45 if color.mean() > 0.5 else color + (1 - color) * 0.65) - color


@cache
def _accent_color(mask_type: str) -> np.ndarray | None:
    return next((_rgb01(f["color"]) for f in family(mask_type).relief if "color" in f), None)


def _straps(fam_straps: str, grid: np.ndarray, points: np.ndarray, color: np.ndarray):
    """Polylines (and their colour) from the mask's sides towards the ears. (A few 2-D
    points: plain floats beat numpy here.)"""
    (lx, ly), (rx, ry), (nx, ny) = points[0].tolist(), points[16].tolist(), points[30].tolist()
    face_w = math.hypot(rx - lx, ry - ly)
    lines = []
    for col, (ex, ey) in ((0, (lx, ly)), (-1, (rx, ry))):
        if abs(nx - ex) < 0.25 * face_w:  # that side of the head faces away: its strap is hidden
            continue
        length = math.hypot(ex - nx, ey - ny) + 1e-6
        ax, ay = (ex - nx) / length, (ey - ny) / length  # away from the nose, towards the ear
        (tx, ty), (bx, by) = grid[0, col].tolist(), grid[-2, col].tolist()
        if fam_straps == "ear_loops":
            lines.append([(tx, ty), (ex + ax * 0.06 * face_w, ey + ay * 0.06 * face_w), (bx, by)])
        else:  # head straps: run back over the cheeks, above and below the ear
            reach = 0.45 * face_w
            lines.append([(tx, ty), (tx + ax * reach, ty + ay * reach)])
            lines.append([(bx, by), (bx + ax * reach, by + ay * reach)])
    strap_color = color * 0.85 if fam_straps == "head_straps" else np.minimum(color * 1.1 + 0.05, 1)
    thickness = max(1, round(face_w / 70))
    return lines, strap_color, thickness


SHADING_CELLS = 15  # the face's light is measured on cells of 1/15 of the face's width (8 px on a 150 px chip)


def camera_scale(face_w: float) -> float:
    """How the camera's softness (blur, edge feather) follows the face: 1 for a face 120 px
    wide (a 150 px dlib chip), slower than the face size (a large face is a closer or sharper
    shot, not only a blurrier one)."""
    return max(0.5, (face_w / 120) ** 0.5)


def _mask_box(grid: np.ndarray, shape, margin: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the anchors' bounding box grown by margin, clipped to the image."""
    if not np.isfinite(grid).all():
        raise RenderError("landmarks are not finite")
    (x0, y0), (x1, y1) = np.floor(grid.min((0, 1))).astype(int) - margin, np.ceil(grid.max((0, 1))).astype(int) + margin
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
    if x1 - x0 < 4 or y1 - y0 < 4:
        raise RenderError("the face is outside the image")
    return x0, y0, x1, y1


def _shading(gray: np.ndarray, under: np.ndarray, cell: int) -> tuple[np.ndarray, float]:
    """The face's own low-frequency illumination, relative to its mean where `under` is set
    (the mask), times an exposure factor (a mask in a dark photo is dark too). Worked out on
    whole cell x cell blocks (cv2's fast path; the box is padded by its edge pixels), the cell
    a fixed fraction of the face: light, not the mouth and nose under the mask, at any size."""
    h, w = gray.shape
    padded = cv2.copyMakeBorder(gray, 0, -h % cell, 0, -w % cell, cv2.BORDER_REPLICATE)
    small = cv2.resize(padded, (padded.shape[1] // cell, padded.shape[0] // cell), interpolation=cv2.INTER_AREA)
    light = cv2.GaussianBlur(small.astype(np.float32), (0, 0), 1.0)
    mean_light = cv2.mean(gray, under)[0]
    exposure = min(max(mean_light / 150.0, 0.45), 1.1)
    shade = np.power(np.clip(light * np.float32(1 / (mean_light + 1e-6)), 0.2, 3.0), 0.75) * np.float32(exposure)
    return cv2.resize(shade, padded.shape[1::-1], interpolation=cv2.INTER_LINEAR)[:h, :w], exposure


def _noise(seed: int, h: int, w: int) -> np.ndarray:
    """Unit Gaussian noise for an h x w box: a window of a fixed tile, placed by the seed."""
    tile = _noise_tile()
    if h > tile.shape[0] or w > tile.shape[1]:
        return np.random.default_rng(seed).standard_normal((h, w), np.float32)
    y, x = _seeded_offsets(seed, tile.shape[0] - h + 1, tile.shape[1] - w + 1, salt=1)
    return tile[y : y + h, x : x + w]


def _seeded_offsets(seed: int, ny: int, nx: int, salt: int) -> tuple[int, int]:
    """Two offsets drawn from the spec's 64-bit seed (already a hash: its bits are uniform);
    cheaper than building a numpy Generator per image."""
    bits = (seed >> (16 * salt)) & 0xFFFFFFFF
    return bits % ny, (bits // ny) % nx


def render_mask(bgr: np.ndarray, points: np.ndarray, spec: MaskSpec, grade: np.ndarray | None = None) -> Rendered:
    """`bgr` with the mask `spec` fitted to the face whose 68 landmarks are `points`; the
    mask's colours go through `grade` (3x3, BGR; default: grading.photo_grade of the photo:
    the photo's own saturation and colour cast; grading.grey_grade() for a grey photo)."""
    fam = family(spec.mask_type)
    grid = anchor_grid(points, fam.fit, spec.wear_shift)
    face_w = float(np.hypot(*(points[16] - points[0])))
    if not face_w < 4 * max(bgr.shape[:2]):  # also NaN
        raise RenderError("landmarks do not fit the image: the face is far wider than the photo")
    margin = 3 + int(0.04 * face_w)
    x0, y0, x1, y1 = _mask_box(grid, bgr.shape, margin)
    grade = photo_grade(bgr, points) if grade is None else grade
    roi = bgr[y0:y1, x0:x1]
    gray = cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY)

    (alpha, relief, accent, pat), picture = _warp_texture(spec, grid, (x0, y0, x1, y1))
    alpha = cv2.min(alpha, _inside_grid(grid, x0, y0, x1 - x0, y1 - y0, margin))
    size = camera_scale(face_w)
    shade, exposure = _shading(gray, alpha, max(4, round(face_w / SHADING_CELLS)))
    layers, colors = _albedo(spec, relief, shade, accent, pat, picture)
    colors = [grade @ color for color in colors]
    alpha = alpha.astype(np.float32) * np.float32(1 / 255)
    blended, alpha = _composite(roi, gray, layers, colors, alpha, 0.96 * size, spec.seed, 0.6 * size)

    out = bgr.copy()
    out[y0:y1, x0:x1] = blended
    occlusion = np.zeros(bgr.shape[:2], np.uint8)
    occlusion[y0:y1, x0:x1] = cv2.compare(alpha, 0.5, cv2.CMP_GT)
    _draw_straps(out, occlusion, fam.straps, grid, points, grade @ _rgb01(spec.color) * exposure)
    return Rendered(out, occlusion, _coverage(occlusion, points))


def _warp_texture(spec: MaskSpec, grid: np.ndarray, box) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The template's alpha, relief and accent planes and the pattern (at a random phase),
    warped into the box: one 4-channel remap, uint8 planes; and the family's picture (BGR)
    warped the same way, if it has one."""
    texture, picture = template(spec.mask_type), texture_bgr(spec.mask_type)
    if spec.pattern != "plain" and spec.texture_weight > 0:
        oy, ox = _seeded_offsets(spec.seed, TEMPLATE_H, TEMPLATE_W, salt=0)
        texture = texture.copy()
        texture[..., 3] = pattern(spec.pattern)[oy : oy + TEMPLATE_H, ox : ox + TEMPLATE_W]
    x0, y0, x1, y1 = box
    # A small face samples the template sparsely: shrink it to about the box's size first
    # (an area filter), so fine patterns do not alias.
    zoom = min(1.0, 2 * (x1 - x0) / TEMPLATE_W)  # bilinear sampling is fine down to half size
    if zoom < 1.0:
        size = (max(8, round(TEMPLATE_W * zoom)), max(6, round(TEMPLATE_H * zoom)))
        texture = cv2.resize(texture, size, interpolation=cv2.INTER_AREA)
        picture = None if picture is None else cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
        zoom = texture.shape[1] / TEMPLATE_W
    maps, fractions = _template_maps(grid, x0, y0, x1 - x0, y1 - y0, zoom)
    planes = cv2.split(cv2.remap(texture, maps, fractions, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT))
    if picture is not None:
        picture = cv2.remap(picture, maps, fractions, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return planes, picture


def _albedo(spec: MaskSpec, relief, shade, accent, pat, picture) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Albedo x relief x the face's own illumination, as a few grey layers, each with the
    BGR colour it carries: the light (the mask's colour), the pattern (the second colour
    minus the first), accent parts (their own colour, replacing the fabric's). A family's
    picture splits the light into B, G and R layers: the picture relative to its mean colour,
    each carrying that channel of the spec's colour (the family's own colour: the picture)."""
    light = cv2.multiply(relief, shade, dtype=cv2.CV_32F, scale=255 / RELIEF_SCALE)
    if picture is not None:
        color, mean = _rgb01(spec.color), texture_mean(spec.mask_type)
        channels = cv2.split(picture)
        layers = [cv2.multiply(light, c, dtype=cv2.CV_32F, scale=1 / (255 * float(m))) for c, m in zip(channels, mean)]
        colors = [np.eye(3, dtype=np.float32)[i] * color[i] for i in range(3)]
    else:
        layers, colors = [light], [_rgb01(spec.color)]
    if spec.pattern != "plain" and spec.texture_weight > 0:
        layers.append(cv2.multiply(light, pat, dtype=cv2.CV_32F, scale=spec.texture_weight / 255))
        colors.append(_pattern_shift(spec.color))
    accent_color = _accent_color(spec.mask_type)
    if accent_color is not None:
        accent = accent.astype(np.float32) * np.float32(1 / 255)
        layers = [layer - layer * accent for layer in layers] + [light * accent]
        colors.append(accent_color)
    return layers, colors


def _composite(roi, gray, layers, colors, alpha, feather: float, seed: int, blur: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera match (a slight blur, the photo's own noise level, a feathered edge), then the
    mask over the skin, which gets a faint contact shadow around it. cv2.transform mixes the
    grey layers into BGR in one pass. -> (the box's pixels, uint8; the feathered alpha)."""
    layers = [cv2.GaussianBlur(layer, (0, 0), blur) for layer in layers]
    sigma = _noise_sigma(gray)
    if sigma > 0.3:  # noise is added after the blur: it is the camera's, not the fabric's
        layers.append(_noise(seed, *gray.shape) * np.float32(sigma))
        colors = [*colors, _GREY]
    alpha = cv2.GaussianBlur(alpha, (0, 0), feather)
    mask = cv2.transform(cv2.merge([cv2.multiply(layer, alpha) for layer in layers]), np.stack(colors, 1))
    shadow = np.maximum(cv2.GaussianBlur(alpha, (0, 0), 3 * feather) - alpha, 0)
    skin = (1 - alpha) * (1 - 0.45 * shadow)
    return cv2.add(cv2.multiply(roi, cv2.merge([skin] * 3), dtype=cv2.CV_32F), mask, dtype=cv2.CV_8U), alpha


def _draw_straps(out, occlusion, kind: str, grid, points, color) -> None:
    lines, strap_color, thickness = _straps(kind, grid, points, color)
    strap_bgr = [min(255.0, max(0.0, c * 255)) for c in strap_color.tolist()]
    for line in lines:
        pts = np.round(np.array(line) * 16).astype(np.int32)  # 4 fractional bits: sub-pixel lines
        cv2.polylines(out, [pts], False, strap_bgr, thickness, cv2.LINE_AA, shift=4)
        cv2.polylines(occlusion, [pts], False, 255, thickness, cv2.LINE_8, shift=4)


def _coverage(occlusion: np.ndarray, points: np.ndarray) -> float:
    """Covered fraction of the landmarks' bounding box."""
    (x0, y0), (x1, y1) = points.min(0).tolist(), points.max(0).tolist()
    face = occlusion[max(0, math.floor(y0)) : math.ceil(y1), max(0, math.floor(x0)) : math.ceil(x1)]
    return cv2.countNonZero(face) / face.size if face.size else 0.0
