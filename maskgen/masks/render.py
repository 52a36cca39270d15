"""Fit a mask template to a face and blend it in so it does not look pasted on.

1. geometry: anchor grid from the landmarks (geometry.py);
2. warp: a thin-plate spline from image to template space through the anchors, evaluated on
   a coarse lattice and upsampled (the spline is smooth), then one cv2.remap;
3. shade: the mask's colour (graded to the photo's saturation and cast: grading.py) x its
   relief x the face's own low-frequency illumination; a mask made from a picture
   (custom.py) keeps the picture's own colours, shifted to the spec's colour;
4. camera match: the image's noise level, a slight blur, feathered edges and a faint
   contact shadow on the skin around the mask; straps towards the ears.
All on the mask's bounding box only. At this size a cv2/numpy call costs more in overhead
than in pixels, so the small-array work (anchors, spline solve, colour grade) and the
per-pixel arithmetic between cv2's remap and blurs are compiled numba kernels (cached on
disk: see geometry.jit); the output is the cv2/numpy version's to float rounding (at most
1 grey level on a few pixels). About half the time of that version: 0.5-0.6 ms a
150x150 chip on one core of the development VM (it took 1.1 ms there in the same runs)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from PIL import ImageColor

from maskgen.masks.families import family
from maskgen.masks.geometry import U, V, anchor_grid, jit
from maskgen.masks.grading import photo_grade
from maskgen.masks.options import MaskSpec
from maskgen.masks.templates import RELIEF_SCALE, TEMPLATE_H, TEMPLATE_W, pattern, template, texture_bgr, texture_mean

_LATTICE = 12  # spline evaluated on a 12x12 lattice over the mask's box, then upsampled
_TEMPLATE_XY = np.stack(np.meshgrid(U * (TEMPLATE_W - 1), V * (TEMPLATE_H - 1)), -1).reshape(-1, 2)


class RenderError(ValueError):
    """The mask cannot be placed on this face (degenerate landmarks, face outside the image)."""


@dataclass(frozen=True)
class Rendered:
    image: np.ndarray  # BGR uint8, the masked photo
    occlusion: np.ndarray  # HxW uint8, 255 where the mask (or a strap) covers the face
    coverage: float  # fraction of the landmarks' bounding box that is covered


def _template_maps(grid: np.ndarray, x0: int, y0: int, w: int, h: int, zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of the box, where to sample the template (resized by `zoom`):
    cv2.remap's fixed-point maps."""
    coarse = _coarse_lattice(grid, x0, y0, w, h, zoom)
    fine = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.convertMaps(fine, None, cv2.CV_16SC2)


def _coarse_lattice(grid: np.ndarray, x0: int, y0: int, w: int, h: int, zoom: float) -> np.ndarray:
    """The thin-plate spline from the box (normalised by its size, for a well-conditioned
    solve) to template space through the anchors, on a _LATTICE x _LATTICE lattice placed
    where cv2.resize puts its source samples (the upsampling is exact there): float32."""
    coarse = np.empty((_LATTICE, _LATTICE, 2), np.float32)
    if not _tps_lattice(np.ascontiguousarray(grid, np.float64).reshape(-1, 2), float(x0), float(y0), w, h, float(zoom), _TEMPLATE_XY, coarse):
        raise RenderError("landmarks are degenerate: cannot fit the mask")
    return coarse


@jit(nogil=True)
def _tps_lattice(grid, x0, y0, w, h, zoom, template_xy, coarse):
    """Thin-plate spline (kernel r^2 log r^2, +1e-6 on the diagonal, affine part) through
    the anchors -> template_xy * zoom, solved by Gaussian elimination with partial pivoting
    (as cv2.solve's DECOMP_LU), evaluated on the lattice. False: singular or not finite.
    (36 anchors: a direct 39x39 solve; compiled, with a log that vectorises.)"""
    n = grid.shape[0]
    m = n + 3
    lattice = coarse.shape[0]
    scale = max(w, h)
    sx = np.empty(n)
    sy = np.empty(n)
    for i in range(n):
        sx[i] = (grid[i, 0] - x0) / scale
        sy[i] = (grid[i, 1] - y0) / scale
    d2 = np.empty(n * n)
    for i in range(n):
        for j in range(n):
            ddx, ddy = sx[i] - sx[j], sy[i] - sy[j]
            d = ddx * ddx + ddy * ddy
            d2[i * n + j] = d if d > 1e-12 else 1e-12
    kernel = _xlogx(d2)
    a = np.zeros((m, m + 2))  # [A | b]
    for i in range(n):
        for j in range(n):
            a[i, j] = kernel[i * n + j]
        a[i, i] += 1e-6
        a[i, n] = a[n, i] = 1.0
        a[i, n + 1] = a[n + 1, i] = sx[i]
        a[i, n + 2] = a[n + 2, i] = sy[i]
        a[i, m] = template_xy[i, 0] * zoom
        a[i, m + 1] = template_xy[i, 1] * zoom
    for c in range(m):  # elimination, partial pivoting
        p = c
        best = abs(a[c, c])
        for r in range(c + 1, m):
            if abs(a[r, c]) > best:
                best, p = abs(a[r, c]), r
        if not best > 1e-300:
            return False
        if p != c:
            for k in range(c, m + 2):
                a[c, k], a[p, k] = a[p, k], a[c, k]
        inv = 1.0 / a[c, c]
        for r in range(c + 1, m):
            f = a[r, c] * inv
            if f != 0.0:
                for k in range(c + 1, m + 2):
                    a[r, k] -= f * a[c, k]
    wx = np.empty(m)
    wy = np.empty(m)
    for r in range(m - 1, -1, -1):  # back substitution
        bx, by = a[r, m], a[r, m + 1]
        for k in range(r + 1, m):
            bx -= a[r, k] * wx[k]
            by -= a[r, k] * wy[k]
        wx[r] = bx / a[r, r]
        wy[r] = by / a[r, r]
        if not (math.isfinite(wx[r]) and math.isfinite(wy[r])):
            return False
    qx = np.empty(lattice)
    qy = np.empty(lattice)
    for i in range(lattice):
        qx[i] = ((i + 0.5) * w / lattice - 0.5) / scale
        qy[i] = ((i + 0.5) * h / lattice - 0.5) / scale
    d2 = np.empty(lattice * lattice * n)
    for i in range(lattice):
        for j in range(lattice):
            base = (i * lattice + j) * n
            for k in range(n):
                ddx, ddy = qx[j] - sx[k], qy[i] - sy[k]
                d = ddx * ddx + ddy * ddy
                d2[base + k] = d if d > 1e-12 else 1e-12
    kernel = _xlogx(d2)
    for i in range(lattice):
        for j in range(lattice):
            base = (i * lattice + j) * n
            vx = wx[n] + qx[j] * wx[n + 1] + qy[i] * wx[n + 2]
            vy = wy[n] + qx[j] * wy[n + 1] + qy[i] * wy[n + 2]
            for k in range(n):
                vx += kernel[base + k] * wx[k]
                vy += kernel[base + k] * wy[k]
            coarse[i, j, 0] = vx
            coarse[i, j, 1] = vy
    return True


@jit(nogil=True)
def _xlogx(x):
    """x log x for positive, finite, normal x (an array): the exponent from the bits, the
    mantissa's log by its atanh series (to ~1e-15 relative): simple loops that vectorise,
    where libm's log is a call per number."""
    n = x.shape[0]
    bits = x.view(np.int64)
    mantissa = np.empty(n)
    mbits = mantissa.view(np.int64)
    for i in range(n):
        mbits[i] = (bits[i] & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000  # in [1, 2)
    out = np.empty(n)
    for i in range(n):
        e = np.float64(((bits[i] >> 52) & 0x7FF) - 1023)
        v = mantissa[i]
        big = v > 1.4142135623730951
        v = v * 0.5 if big else v  # in [0.707, 1.414]
        e = e + 1.0 if big else e
        s = (v - 1.0) / (v + 1.0)
        z = s * s
        series = ((((((((z * (1 / 17) + 1 / 15) * z + 1 / 13) * z + 1 / 11) * z + 1 / 9) * z + 1 / 7) * z + 1 / 5) * z + 1 / 3) * z + 1.0)
        out[i] = x[i] * (e * 0.6931471805599453 + 2.0 * s * series)
    return out


def _inside_grid(grid: np.ndarray, x0: int, y0: int, w: int, h: int, margin: int) -> np.ndarray:
    """255 inside the anchor grid's outline (grown by `margin`), 0 outside."""
    polygon = np.empty((2 * (grid.shape[0] + grid.shape[1]) - 4, 2), np.int32)
    _outline16(grid, float(x0), float(y0), polygon)
    inside = np.zeros((h, w), np.uint8)
    cv2.fillPoly(inside, [polygon], 255, cv2.LINE_8, shift=4)
    cv2.polylines(inside, [polygon], True, 255, 2 * margin + 1, cv2.LINE_8, shift=4)  # grown: a thick rim
    return inside


@jit(nogil=True)
def _outline16(grid, x0, y0, polygon):
    """The grid's outline (top row left to right, right column down, bottom row right to
    left, left column up), relative to (x0, y0), with 4 fractional bits (rounded half to even)."""
    rows, cols = grid.shape[:2]
    k = 0
    for c in range(cols):
        polygon[k, 0], polygon[k, 1] = np.rint((grid[0, c, 0] - x0) * 16), np.rint((grid[0, c, 1] - y0) * 16)
        k += 1
    for r in range(1, rows):
        polygon[k, 0], polygon[k, 1] = np.rint((grid[r, cols - 1, 0] - x0) * 16), np.rint((grid[r, cols - 1, 1] - y0) * 16)
        k += 1
    for c in range(cols - 2, -1, -1):
        polygon[k, 0], polygon[k, 1] = np.rint((grid[rows - 1, c, 0] - x0) * 16), np.rint((grid[rows - 1, c, 1] - y0) * 16)
        k += 1
    for r in range(rows - 2, 0, -1):
        polygon[k, 0], polygon[k, 1] = np.rint((grid[r, 0, 0] - x0) * 16), np.rint((grid[r, 0, 1] - y0) * 16)
        k += 1


@cache
def _noise_tile() -> np.ndarray:
    return np.random.default_rng(12345).standard_normal((512, 512)).astype(np.float32)


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
    finite, gx0, gy0, gx1, gy1 = _bounds(grid.reshape(-1, 2))
    if not finite:
        raise RenderError("landmarks are not finite")
    x0, y0 = math.floor(gx0) - margin, math.floor(gy0) - margin
    x1, y1 = math.ceil(gx1) + margin, math.ceil(gy1) + margin
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
    if x1 - x0 < 4 or y1 - y0 < 4:
        raise RenderError("the face is outside the image")
    return x0, y0, x1, y1


@jit(nogil=True)
def _bounds(xy):
    """(all finite, min x, min y, max x, max y) of N x 2 points."""
    x0 = y0 = math.inf
    x1 = y1 = -math.inf
    for i in range(xy.shape[0]):
        x, y = xy[i, 0], xy[i, 1]
        if not (math.isfinite(x) and math.isfinite(y)):
            return False, 0.0, 0.0, 0.0, 0.0
        x0, x1 = (x if x < x0 else x0), (x if x > x1 else x1)
        y0, y1 = (y if y < y0 else y0), (y if y > y1 else y1)
    return True, x0, y0, x1, y1


def _noise_window(seed: int, h: int, w: int) -> tuple[np.ndarray, int, int]:
    """Unit Gaussian noise for an h x w box: a window (its array, top, left) of a fixed tile,
    placed by the seed (a box larger than the tile: its own draw)."""
    tile = _noise_tile()
    if h > tile.shape[0] or w > tile.shape[1]:
        return np.random.default_rng(seed).standard_normal((h, w), np.float32), 0, 0
    y, x = _seeded_offsets(seed, tile.shape[0] - h + 1, tile.shape[1] - w + 1, salt=1)
    return tile, y, x


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
    (lx, ly), (rx, ry) = points[0].tolist(), points[16].tolist()
    face_w = math.hypot(rx - lx, ry - ly)
    if not face_w < 4 * max(bgr.shape[:2]):  # also NaN
        raise RenderError("landmarks do not fit the image: the face is far wider than the photo")
    margin = 3 + int(0.04 * face_w)
    x0, y0, x1, y1 = _mask_box(grid, bgr.shape, margin)
    w, h = x1 - x0, y1 - y0
    grade = photo_grade(bgr, points) if grade is None else grade

    planes, picture = _warp_texture(spec, grid, (x0, y0, x1, y1))
    inside = _inside_grid(grid, x0, y0, w, h, margin)
    size = camera_scale(face_w)
    cell = max(4, round(face_w / SHADING_CELLS))
    rows, cols = -(-h // cell), -(-w // cell)
    small = np.empty((rows, cols), np.float32)
    gray = cv2.cvtColor(bgr[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY)
    mean_light, laplace = _box_stats(gray, planes, inside, cell, small)
    # the face's own low-frequency illumination relative to its mean under the mask, times an
    # exposure factor (a mask in a dark photo is dark too), on cells of a fixed fraction of
    # the face: light, not the mouth and nose under the mask, at any size
    exposure = min(max(mean_light / 150.0, 0.45), 1.1)
    light = cv2.GaussianBlur(small, (0, 0), 1.0)
    shade = np.power(np.clip(light * np.float32(1 / (mean_light + 1e-6)), 0.2, 3.0), 0.75) * np.float32(exposure)

    textured = spec.pattern != "plain" and spec.texture_weight > 0
    accent_color = _accent_color(spec.mask_type)
    colors = _layer_colors(spec, picture is not None, textured, accent_color)
    count = len(colors)
    layers = np.empty((h, w, count), np.float32)
    alpha = np.empty((h, w), np.float32)
    mean = texture_mean(spec.mask_type) if picture is not None else (1.0, 1.0, 1.0)
    _albedo_kernel(planes, shade, cell, picture if picture is not None else _NO_PICTURE,
                   1 / (255 * float(mean[0])), 1 / (255 * float(mean[1])), 1 / (255 * float(mean[2])),
                   spec.texture_weight / 255 if textured else 0.0, accent_color is not None, layers, alpha)

    # camera match: a slight blur, the photo's own noise level (Immerkaer's estimate, added
    # after the blur: the camera's, not the fabric's), a feathered edge and a faint contact shadow
    blur, feather = 0.6 * size, 0.96 * size
    layers = cv2.GaussianBlur(layers, (0, 0), blur).reshape(h, w, count)  # every layer in one call
    sigma = float(min(6.0, math.sqrt(math.pi / 2) * laplace / (6 * (w - 2) * (h - 2)))) if w >= 3 and h >= 3 else 0.0
    noise, ny, nx = _noise_window(spec.seed, h, w) if sigma > 0.3 else (_noise_tile(), 0, 0)
    alpha = cv2.GaussianBlur(alpha, (0, 0), feather)
    around = cv2.GaussianBlur(alpha, (0, 0), 3 * feather)
    mix = np.ascontiguousarray((grade @ colors.T).T, np.float32)  # each layer's BGR colour, graded

    out = bgr.copy()
    occlusion = np.zeros(bgr.shape[:2], np.uint8)
    _composite_kernel(out, occlusion, x0, y0, layers, mix, noise, ny, nx, np.float32(sigma if sigma > 0.3 else 0.0), alpha, around)
    _draw_straps(out, occlusion, fam.straps, grid, points, grade @ _rgb01(spec.color) * exposure)
    return Rendered(out, occlusion, _coverage(occlusion, points))


_NO_PICTURE = np.zeros((1, 1, 3), np.uint8)


def _layer_colors(spec: MaskSpec, picture: bool, textured: bool, accent_color) -> np.ndarray:
    """The BGR colour each grey layer carries, before grading (n x 3): the light (the mask's
    colour), the pattern (the second colour minus the first), accent parts (their own
    colour, replacing the fabric's). A family's picture splits the light into B, G and R
    layers, each carrying that channel of the spec's colour."""
    key = (spec.color, picture, textured, spec.mask_type if accent_color is not None else None)
    colors = _COLORS.get(key)
    if colors is None:
        color = _rgb01(spec.color)
        rows = [np.eye(3, dtype=np.float32)[i] * color[i] for i in range(3)] if picture else [color]
        if textured:
            rows.append(_pattern_shift(spec.color))
        if accent_color is not None:
            rows.append(accent_color)
        colors = _COLORS[key] = np.stack(rows).astype(np.float32)
    return colors


_COLORS: dict = {}


def _warp_texture(spec: MaskSpec, grid: np.ndarray, box) -> tuple[np.ndarray, np.ndarray | None]:
    """The template's alpha, relief and accent planes and the pattern (at a random phase),
    warped into the box: one 4-channel remap (h x w x 4 uint8); and the family's picture
    (BGR) warped the same way, if it has one. (cv2's fixed-point remap beats a compiled loop
    here: tried.)"""
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
    planes = cv2.remap(texture, maps, fractions, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    if picture is not None:
        picture = cv2.remap(picture, maps, fractions, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return planes, picture


@jit(nogil=True)
def _resize_taps(n_in, n_out):
    """cv2.resize's INTER_LINEAR source index and weight of every output position."""
    scale = n_in / n_out
    index = np.empty(n_out, np.int64)
    frac = np.empty(n_out, np.float32)
    for d in range(n_out):
        f = np.float32((d + 0.5) * scale - 0.5)
        i = int(math.floor(f))
        f = f - np.float32(i)
        if i < 0:
            i, f = 0, np.float32(0)
        if i >= n_in - 1:
            i, f = n_in - 1, np.float32(0)
        index[d], frac[d] = i, f
    return index, frac


@jit(nogil=True)
def _box_stats(gray, planes, inside, cell, small):
    """Over the box: the template's alpha clipped to the anchor outline (planes[..., 0], in
    place), the grey's mean under the mask, its L1 Laplacian (Immerkaer's noise estimate,
    interior pixels) and its means over cell x cell blocks (cv2.resize INTER_AREA of the box
    padded by its edge pixels) into small. -> (mean grey under the mask, L1 Laplacian).
    (Simple loops over rows: they vectorise.)"""
    h, w = gray.shape
    total = 0
    under = 0
    for y in range(h):
        g = gray[y]
        p = planes[y]
        ins = inside[y]
        row_total = np.int32(0)
        row_under = np.int32(0)
        for x in range(w):
            a = p[x, 0] if p[x, 0] < ins[x] else ins[x]
            p[x, 0] = a
            on = np.int32(1) if a > 0 else np.int32(0)
            row_total += np.int32(g[x]) * on
            row_under += on
        total += row_total
        under += row_under
    laplace = 0
    for y in range(1, h - 1):
        up, mid, down = gray[y - 1], gray[y], gray[y + 1]
        row = np.int32(0)
        for x in range(1, w - 1):
            v = (np.int32(up[x - 1]) - 2 * np.int32(up[x]) + np.int32(up[x + 1]) - 2 * np.int32(mid[x - 1]) + 4 * np.int32(mid[x])
                 - 2 * np.int32(mid[x + 1]) + np.int32(down[x - 1]) - 2 * np.int32(down[x]) + np.int32(down[x + 1]))
            row += v if v >= 0 else -v
        laplace += row
    rows, cols = small.shape
    inv = np.float32(1.0 / (cell * cell))
    sums = np.zeros(cols, np.int32)
    for r in range(rows):
        sums[:] = 0
        for y in range(r * cell, (r + 1) * cell):
            g = gray[y if y < h else h - 1]
            for c in range(cols):
                acc = np.int32(0)
                for x in range(c * cell, (c + 1) * cell):
                    acc += np.int32(g[x if x < w else w - 1])
                sums[c] += acc
        for c in range(cols):
            small[r, c] = np.rint(np.float32(sums[c]) * inv)
    return (total / under if under else 0.0), laplace


@jit(nogil=True)
def _albedo_kernel(planes, shade, cell, picture, pb, pg, pr, pattern_weight, accent, layers, alpha):
    """Per pixel: the shade upsampled from the cells (cv2.resize INTER_LINEAR), the light =
    relief x shade, and the grey layers (light; or light x picture / its mean, per channel;
    the pattern; accent parts replacing the fabric) into layers (h, w, n); alpha / 255.
    (One simple loop per layer and row: they vectorise.)"""
    h, w = alpha.shape
    rows, cols = shade.shape
    xi, xf = _resize_taps(cols, cols * cell)
    yi, yf = _resize_taps(rows, rows * cell)
    one = np.float32(1)
    relief_scale = np.float32(255 / RELIEF_SCALE)
    inv255 = np.float32(1 / 255)
    weight = np.float32(pattern_weight)
    pictured = picture.shape[0] == h and picture.shape[1] == w
    pscale = np.array([pb, pg, pr], np.float32)
    horizontal = np.empty((rows, w), np.float32)
    for r in range(rows):
        for x in range(w):
            i, f = xi[x], xf[x]
            j = i + 1 if i + 1 < cols else cols - 1
            horizontal[r, x] = shade[r, i] * (one - f) + shade[r, j] * f
    light = np.empty(w, np.float32)
    for y in range(h):
        i, f = yi[y], yf[y]
        j = i + 1 if i + 1 < rows else rows - 1
        g = one - f
        hi, hj = horizontal[i], horizontal[j]
        p = planes[y]
        out = layers[y]
        ar = alpha[y]
        for x in range(w):
            light[x] = np.float32(p[x, 1]) * (hi[x] * g + hj[x] * f) * relief_scale
            ar[x] = np.float32(p[x, 0]) * inv255
        k = 0
        if pictured:
            pic = picture[y]
            for c in range(3):
                sc = pscale[c]
                for x in range(w):
                    out[x, k] = light[x] * np.float32(pic[x, c]) * sc
                k += 1
        else:
            for x in range(w):
                out[x, 0] = light[x]
            k = 1
        if weight > 0:
            for x in range(w):
                out[x, k] = light[x] * np.float32(p[x, 3]) * weight
            k += 1
        if accent:
            for m in range(k):
                for x in range(w):
                    a = np.float32(p[x, 2]) * inv255
                    out[x, m] = out[x, m] - out[x, m] * a
            for x in range(w):
                out[x, k] = light[x] * (np.float32(p[x, 2]) * inv255)


@jit(nogil=True)
def _composite_kernel(out, occlusion, x0, y0, layers, mix, noise, ny, nx, sigma, alpha, around):
    """The mask over the skin, per pixel of the box: sum of (layer x alpha) x its colour, the
    noise x alpha (grey), over the skin x (1 - alpha) x (1 - 0.45 x contact shadow), rounded
    to uint8 (as cv2.add); occlusion: alpha > 0.5. (Row buffers and simple loops: they
    vectorise.)"""
    h, w, n = layers.shape
    noisy = sigma > 0
    zero, one, dark, top, half = np.float32(0), np.float32(1), np.float32(0.45), np.float32(255), np.float32(0.5)
    skin = np.empty(3 * w, np.float32)
    mask = np.empty(3 * w, np.float32)
    for y in range(h):
        ar, sr = alpha[y], around[y]
        lr = layers[y]
        for x in range(w):
            a = ar[x]
            shadow = sr[x] - a
            shadow = shadow if shadow > zero else zero
            s = (one - a) * (one - dark * shadow)
            skin[3 * x] = s
            skin[3 * x + 1] = s
            skin[3 * x + 2] = s
            mask[3 * x] = zero
            mask[3 * x + 1] = zero
            mask[3 * x + 2] = zero
        for k in range(n):
            c0, c1, c2 = mix[k, 0], mix[k, 1], mix[k, 2]
            for x in range(w):
                la = lr[x, k] * ar[x]
                mask[3 * x] += c0 * la
                mask[3 * x + 1] += c1 * la
                mask[3 * x + 2] += c2 * la
        if noisy:
            nr = noise[ny + y, nx : nx + w]
            for x in range(w):
                grain = nr[x] * sigma * ar[x]
                mask[3 * x] += grain
                mask[3 * x + 1] += grain
                mask[3 * x + 2] += grain
        o = out[y0 + y, x0 : x0 + w].reshape(-1)  # out is a fresh copy: C-contiguous
        for i in range(3 * w):
            v = np.rint(np.float32(o[i]) * skin[i] + mask[i])
            v = v if v > zero else zero
            v = v if v < top else top
            o[i] = np.uint8(v)
        occ = occlusion[y0 + y, x0 : x0 + w]
        for x in range(w):
            occ[x] = 255 if ar[x] > half else 0


def _draw_straps(out, occlusion, kind: str, grid, points, color) -> None:
    lines, strap_color, thickness = _straps(kind, grid, points, color)
    if not lines:
        return
    strap_bgr = [min(255.0, max(0.0, c * 255)) for c in strap_color.tolist()]
    # 4 fractional bits: sub-pixel lines; one call per image draws them in turn, as one call each would
    polylines = [np.array([(round(x * 16), round(y * 16)) for x, y in line], np.int32) for line in lines]
    cv2.polylines(out, polylines, False, strap_bgr, thickness, cv2.LINE_AA, shift=4)
    cv2.polylines(occlusion, polylines, False, 255, thickness, cv2.LINE_8, shift=4)


def _coverage(occlusion: np.ndarray, points: np.ndarray) -> float:
    """Covered fraction of the landmarks' bounding box."""
    return _coverage_kernel(occlusion, np.ascontiguousarray(points).reshape(-1, 2))


@jit(nogil=True)
def _coverage_kernel(occlusion, points):
    x0 = y0 = math.inf
    x1 = y1 = -math.inf
    for i in range(points.shape[0]):
        x, y = np.float64(points[i, 0]), np.float64(points[i, 1])
        x0, x1 = (x if x < x0 else x0), (x if x > x1 else x1)
        y0, y1 = (y if y < y0 else y0), (y if y > y1 else y1)
    h, w = occlusion.shape
    r0, r1 = max(0, int(math.floor(y0))), min(h, int(math.ceil(y1)))
    c0, c1 = max(0, int(math.floor(x0))), min(w, int(math.ceil(x1)))
    if r1 <= r0 or c1 <= c0:
        return 0.0
    covered = 0
    for y in range(r0, r1):
        row = occlusion[y]
        for x in range(c0, c1):
            covered += 1 if row[x] else 0
    return covered / ((r1 - r0) * (c1 - c0))
