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
than in pixels, so the small-array work (anchors, spline solve and its fixed-point maps,
colour grade, straps' geometry) and the per-pixel arithmetic between cv2's remap and blurs
are compiled numba kernels (cached on disk: see geometry.jit); the output is the cv2/numpy
version's to float rounding (at most 1 grey level on a few pixels). cv2 keeps the remap,
the blurs and the drawing (compiled versions were slower: tried). The kernels index flat
rows and row slices with the loop's own index: numba checks an offset or 2-D pixel index
for wrap-around, which keeps LLVM from vectorising the loop (2-3x slower)."""

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
from maskgen.masks.templates import (
    RELIEF_SCALE,
    TEMPLATE_H,
    TEMPLATE_W,
    pattern,
    template,
    template_at,
    texture_bgr,
    texture_bgr_at,
    texture_mean,
)

_LATTICE = 12  # spline evaluated on a 12x12 lattice over the mask's box, then upsampled
_TEMPLATE_XY = np.stack(np.meshgrid(U * (TEMPLATE_W - 1), V * (TEMPLATE_H - 1)), -1).reshape(-1, 2)


class RenderError(ValueError):
    """The mask cannot be placed on this face (degenerate landmarks, face outside the image)."""


@dataclass(frozen=True)
class Rendered:
    image: np.ndarray  # BGR uint8, the masked photo
    occlusion: np.ndarray  # HxW uint8, 255 where the mask (or a strap) covers the face
    coverage: float  # fraction of the landmarks' bounding box that is covered


def _template_maps(grid: np.ndarray, x0: int, y0: int, w: int, h: int, zoom: float = 1.0) -> tuple[np.ndarray, bool]:
    """For every pixel of the box, where to sample the template (resized by `zoom`): a
    CV_32FC2 map for cv2.remap, made in one compiled call (the spline's lattice upsampled as
    cv2.resize INTER_LINEAR does: ~30 us of cv2 calls), and whether that map folds over.
    (cv2 5's remap is faster with float maps than with fixed-point ones, and interpolates
    them more finely.)"""
    xy = np.empty((h, w, 2), np.float32)
    coarse = np.empty((_LATTICE, _LATTICE, 2), np.float32)
    if not _spline_maps(np.ascontiguousarray(grid, np.float64).reshape(-1, 2), float(x0), float(y0), float(zoom), _TEMPLATE_XY,
                        coarse, xy.reshape(h, 2 * w)):
        raise RenderError("landmarks are degenerate: cannot fit the mask")
    return xy, _folds(coarse)


@jit(nogil=True)
def _folds(coarse):
    """Whether the map folds over: the lattice upsampled bilinearly is one-to-one where the
    Jacobian of each cell's bilinear map keeps one sign, and that Jacobian is affine over the
    cell, so its sign at the cells' corners tells (a near-zero one counts as a fold)."""
    n = coarse.shape[0]
    positive = negative = False
    for i in range(n - 1):
        for j in range(n - 1):
            for di in range(2):
                for dj in range(2):
                    r, c = i + di, j + dj  # a corner, and its neighbours along the cell's two sides
                    rv, cu = i + 1 - di, j + 1 - dj
                    ux, uy = coarse[r, cu, 0] - coarse[r, c, 0], coarse[r, cu, 1] - coarse[r, c, 1]
                    vx, vy = coarse[rv, c, 0] - coarse[r, c, 0], coarse[rv, c, 1] - coarse[r, c, 1]
                    det = (ux * vy - uy * vx) * (1 if di == dj else -1)  # a corner's sides in the cell's own order
                    if det > 1e-6:
                        positive = True
                    elif det < -1e-6:
                        negative = True
                    else:
                        return True
    return positive and negative


def _coarse_lattice(grid: np.ndarray, x0: int, y0: int, w: int, h: int, zoom: float) -> np.ndarray:
    """The thin-plate spline from the box (normalised by its size, for a well-conditioned
    solve) to template space through the anchors, on a _LATTICE x _LATTICE lattice placed
    where cv2.resize puts its source samples (the upsampling is exact there): float32."""
    coarse = np.empty((_LATTICE, _LATTICE, 2), np.float32)
    if not _tps_lattice(np.ascontiguousarray(grid, np.float64).reshape(-1, 2), float(x0), float(y0), w, h, float(zoom), _TEMPLATE_XY, coarse):
        raise RenderError("landmarks are degenerate: cannot fit the mask")
    return coarse


@jit(nogil=True)
def _spline_maps(grid, x0, y0, zoom, template_xy, coarse, xy):
    """_tps_lattice into coarse, upsampled to the box (xy: h x 2w, the x, y pairs of each
    row) as cv2.resize INTER_LINEAR (float32: a horizontal pass, then a vertical one).
    False: the spline is degenerate."""
    h, w = xy.shape[0], xy.shape[1] // 2
    n = coarse.shape[0]
    if not _tps_lattice(grid, x0, y0, w, h, zoom, template_xy, coarse):
        return False
    xi, xf = _resize_taps(n, w)
    yi, yf = _resize_taps(n, h)
    one = np.float32(1)
    horizontal = np.empty((n, 2, w), np.float32)  # planar rows: the vertical pass vectorises
    for r in range(n):
        for x in range(w):
            i, f = xi[x], xf[x]
            j = i + 1 if i + 1 < n else n - 1
            horizontal[r, 0, x] = coarse[r, i, 0] * (one - f) + coarse[r, j, 0] * f
            horizontal[r, 1, x] = coarse[r, i, 1] * (one - f) + coarse[r, j, 1] * f
    for y in range(h):
        i, f = yi[y], yf[y]
        j = i + 1 if i + 1 < n else n - 1
        g = one - f
        ui, vi, uj, vj = horizontal[i, 0], horizontal[i, 1], horizontal[j, 0], horizontal[j, 1]
        row = xy[y]
        for x in range(w):
            row[2 * x] = ui[x] * g + uj[x] * f
            row[2 * x + 1] = vi[x] * g + vj[x] * f
    return True


@jit(nogil=True)
def _tps_lattice(grid, x0, y0, w, h, zoom, template_xy, coarse):
    """Thin-plate spline (kernel r^2 log r^2, +1e-6 on the diagonal, affine part) through
    the anchors -> template_xy * zoom, solved by Gaussian elimination with partial pivoting
    (as cv2.solve's DECOMP_LU), evaluated on the lattice. False: singular or not finite.
    (36 anchors: a direct 39x39 solve; compiled, with a log that vectorises, and row slices
    in the inner loops: numba's wrap-around check on an offset index keeps a loop scalar.)"""
    n = grid.shape[0]
    scale = max(w, h)
    sx = np.empty(n)
    sy = np.empty(n)
    for i in range(n):
        sx[i] = (grid[i, 0] - x0) / scale
        sy[i] = (grid[i, 1] - y0) / scale
    a = _tps_system(sx, sy, template_xy, zoom)
    wx, wy = _solve(a)
    if wx.shape[0] == 0:
        return False
    _tps_evaluate(sx, sy, wx, wy, w, h, scale, coarse)
    return True


@jit(nogil=True)
def _tps_system(sx, sy, template_xy, zoom):
    """[A | b] of the spline through the anchors (sx, sy) -> template_xy * zoom: the kernel
    (symmetric: each pair's log once) with the affine part bordering it."""
    n = sx.shape[0]
    m = n + 3
    pairs = n * (n - 1) // 2
    d2 = np.empty(pairs)
    k = 0
    for i in range(n):
        for j in range(i + 1, n):
            ddx, ddy = sx[i] - sx[j], sy[i] - sy[j]
            d = ddx * ddx + ddy * ddy
            d2[k] = d if d > 1e-12 else 1e-12
            k += 1
    kernel = _xlogx(d2)
    diagonal = 1e-12 * math.log(1e-12) + 1e-6  # r = 0 (floored at 1e-12, as every distance)
    a = np.zeros((m, m + 2))
    k = 0
    for i in range(n):
        a[i, i] = diagonal
        for j in range(i + 1, n):
            a[i, j] = a[j, i] = kernel[k]
            k += 1
        a[i, n] = a[n, i] = 1.0
        a[i, n + 1] = a[n + 1, i] = sx[i]
        a[i, n + 2] = a[n + 2, i] = sy[i]
        a[i, m] = template_xy[i, 0] * zoom
        a[i, m + 1] = template_xy[i, 1] * zoom
    return a


@jit(nogil=True)
def _solve(a):
    """The two right-hand sides of [A | b] (m x m+2) by Gaussian elimination with partial
    pivoting, in place -> (x, y); empty arrays when A is singular or a weight is not finite."""
    m = a.shape[0]
    flat = a.ravel()  # a view: a is C-contiguous
    for c in range(m):
        p = c
        best = abs(a[c, c])
        for r in range(c + 1, m):
            if abs(a[r, c]) > best:
                best, p = abs(a[r, c]), r
        if not best > 1e-300:
            return np.empty(0), np.empty(0)
        if p != c:
            for k in range(c, m + 2):
                a[c, k], a[p, k] = a[p, k], a[c, k]
        inv = 1.0 / a[c, c]
        pivot_row = np.uint64(c * (m + 2))
        for r in range(c + 1, m):
            f = a[r, c] * inv
            if f != 0.0:
                row = np.uint64(r * (m + 2))
                for k in range(np.uint64(c + 1), np.uint64(m + 2)):  # unsigned: no wrap-around check, the loop vectorises
                    flat[row + k] -= f * flat[pivot_row + k]
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
            return np.empty(0), np.empty(0)
    return wx, wy


@jit(nogil=True)
def _tps_evaluate(sx, sy, wx, wy, w, h, scale, coarse):
    """The spline with weights (wx, wy) on the lattice over the w x h box: placed where
    cv2.resize puts its source samples, normalised by scale, into coarse (float32). (Anchor
    by anchor over every lattice point: elementwise loops that vectorise.)"""
    n = sx.shape[0]
    lattice = coarse.shape[0]
    points = lattice * lattice
    qx = np.empty(points)
    qy = np.empty(points)
    for i in range(lattice):
        for j in range(lattice):
            qx[i * lattice + j] = ((j + 0.5) * w / lattice - 0.5) / scale
            qy[i * lattice + j] = ((i + 0.5) * h / lattice - 0.5) / scale
    vx = np.empty(points)
    vy = np.empty(points)
    for q in range(points):
        vx[q] = wx[n] + qx[q] * wx[n + 1] + qy[q] * wx[n + 2]
        vy[q] = wy[n] + qx[q] * wy[n + 1] + qy[q] * wy[n + 2]
    d2 = np.empty(n * points)
    for k in range(n):
        ax, ay, dk = sx[k], sy[k], d2[k * points : (k + 1) * points]
        for q in range(points):
            ddx, ddy = qx[q] - ax, qy[q] - ay
            d = ddx * ddx + ddy * ddy
            dk[q] = d if d > 1e-12 else 1e-12
    kernel = _xlogx(d2)
    for k in range(n):
        kx, ky, kk = wx[k], wy[k], kernel[k * points : (k + 1) * points]
        for q in range(points):
            vx[q] += kk[q] * kx
            vy[q] += kk[q] * ky
    for i in range(lattice):
        for j in range(lattice):
            coarse[i, j, 0] = vx[i * lattice + j]
            coarse[i, j, 1] = vy[i * lattice + j]


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


_NO_CLIP = np.full((1, 1), 255, np.uint8)  # _clip_alpha's `inside` for a warp that does not fold: nothing to clip


def _inside_grid(grid: np.ndarray, x0: int, y0: int, w: int, h: int, margin: int) -> np.ndarray:
    """255 inside the anchor grid's outline (grown by `margin`), 0 outside: the template's
    alpha is clipped to it where the warp folds over (render_mask). A warp that does not fold
    maps only the outline's inside (to within the margin) into the template, so the clip
    changes nothing there (not a pixel of 2,640 renders of every family, wear and size), and
    it cost 20 us."""
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


@jit(nogil=True)
def _graded(grade, colors):
    """Each colour (a row of colors, n x 3, BGR) through the 3x3 grade, in float32 (as numpy's
    grade @ colors.T, in one call: two numpy calls cost more than the arithmetic)."""
    out = np.empty(colors.shape, np.float32)
    for k in range(colors.shape[0]):
        for i in range(3):
            out[k, i] = grade[i, 0] * colors[k, 0] + grade[i, 1] * colors[k, 1] + grade[i, 2] * colors[k, 2]
    return out


@jit(nogil=True)
def _strap_color(head_straps, grade, color, exposure):
    """The straps' BGR (0..255): the mask's colour (BGR, 0..1) graded and exposed, darker for
    head straps, lighter for ear loops (float32, then x 255 in double, as numpy's version)."""
    graded = _graded(grade, color.reshape(1, 3))[0]
    bgr = [0.0, 0.0, 0.0]
    for i in range(3):
        c = graded[i] * exposure
        c = c * np.float32(0.85) if head_straps else min(c * np.float32(1.1) + np.float32(0.05), np.float32(1))
        bgr[i] = min(255.0, max(0.0, np.float64(c) * 255))
    return bgr[0], bgr[1], bgr[2]


@jit(nogil=True)
def _strap_lines(head_straps, grid, points, lines16):
    """Polylines from the mask's sides towards the ears, with 4 fractional bits (rounded half
    to even) into lines16 (up to 8 x 2) -> how many points it holds: ear loops are lines of 3
    points (top corner, past the ear, bottom corner), head straps of 2 (back over the cheek,
    above and below the ear). A side of the head that faces away hides its strap."""
    lx, ly, rx, ry = np.float64(points[0, 0]), np.float64(points[0, 1]), np.float64(points[16, 0]), np.float64(points[16, 1])
    nx, ny = np.float64(points[30, 0]), np.float64(points[30, 1])
    face_w = math.hypot(rx - lx, ry - ly)
    k = 0
    for side in range(2):
        ex, ey = (lx, ly) if side == 0 else (rx, ry)
        col = 0 if side == 0 else grid.shape[1] - 1
        if abs(nx - ex) < 0.25 * face_w:  # that side of the head faces away
            continue
        length = math.hypot(ex - nx, ey - ny) + 1e-6
        ax, ay = (ex - nx) / length, (ey - ny) / length  # away from the nose, towards the ear
        tx, ty, bx, by = grid[0, col, 0], grid[0, col, 1], grid[grid.shape[0] - 2, col, 0], grid[grid.shape[0] - 2, col, 1]
        if head_straps:
            reach = 0.45 * face_w
            xy = (tx, ty, tx + ax * reach, ty + ay * reach, bx, by, bx + ax * reach, by + ay * reach)
        else:
            xy = (tx, ty, ex + ax * 0.06 * face_w, ey + ay * 0.06 * face_w, bx, by, 0.0, 0.0)
        for i in range(4 if head_straps else 3):
            lines16[k, 0], lines16[k, 1] = np.int32(np.rint(xy[2 * i] * 16)), np.int32(np.rint(xy[2 * i + 1] * 16))
            k += 1
    return k


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
    bgr = np.ascontiguousarray(bgr)  # the kernels read flat rows
    fam = family(spec.mask_type)
    grid, face_w, margin, box = _fit(bgr, points, fam, spec)
    grade = photo_grade(bgr, points) if grade is None else grade
    planes, picture, folds = _warp_texture(spec, grid, box)
    inside = _inside_grid(grid, box[0], box[1], box[2] - box[0], box[3] - box[1], margin) if folds else _NO_CLIP
    colors, layers, alpha, exposure, laplace = _shade(bgr, box, planes, picture, inside, face_w, spec)
    layers, alpha, around, noise = _camera_match(layers, alpha, laplace, face_w, spec.seed)
    grade = np.asarray(grade, np.float32)
    mix = _graded(grade, colors)  # each layer's BGR colour, graded
    out = bgr.copy()
    occlusion = np.zeros(bgr.shape[:2], np.uint8)
    _composite_kernel(out, occlusion, box[0], box[1], layers, mix, *noise, alpha, around)
    strap_color = _strap_color(fam.straps == "head_straps", grade, _rgb01(spec.color), np.float32(exposure))
    _draw_straps(out, occlusion, fam.straps, grid, points, face_w, strap_color)
    return Rendered(out, occlusion, _coverage(occlusion, points))


def _fit(bgr: np.ndarray, points: np.ndarray, fam, spec: MaskSpec):
    """The anchor grid, the face's width, the box's margin and the box (x0, y0, x1, y1)."""
    grid = anchor_grid(points, fam.fit, spec.wear_shift)
    (lx, ly), (rx, ry) = points[0].tolist(), points[16].tolist()
    face_w = math.hypot(rx - lx, ry - ly)
    if not face_w < 4 * max(bgr.shape[:2]):  # also NaN
        raise RenderError("landmarks do not fit the image: the face is far wider than the photo")
    margin = 3 + int(0.04 * face_w)
    return grid, face_w, margin, _mask_box(grid, bgr.shape, margin)


def _shade(bgr: np.ndarray, box, planes: np.ndarray, picture: np.ndarray | None, inside: np.ndarray, face_w: float, spec: MaskSpec):
    """The layers' colours (n x 3), the grey layers (h x w x n) and alpha (h x w) of the
    mask shaded by the face's light, the exposure and the photo's L1 Laplacian (_shade_kernel)."""
    x0, y0, x1, y1 = box
    textured = spec.pattern != "plain" and spec.texture_weight > 0
    accent_color = _accent_color(spec.mask_type)
    colors = _layer_colors(spec, picture is not None, textured, accent_color)
    layers = np.empty((y1 - y0, x1 - x0, len(colors)), np.float32)
    alpha = np.empty((y1 - y0, x1 - x0), np.float32)
    mean = texture_mean(spec.mask_type) if picture is not None else _NO_MEAN
    cell = max(4, round(face_w / SHADING_CELLS))
    exposure, laplace = _shade_kernel(bgr, x0, y0, planes, inside, cell, _LIGHT_BLUR, picture if picture is not None else _NO_PICTURE,
                                      1 / (255 * float(mean[0])), 1 / (255 * float(mean[1])), 1 / (255 * float(mean[2])),
                                      spec.texture_weight / 255 if textured else 0.0, accent_color is not None, layers, alpha)
    return colors, layers, alpha, exposure, laplace


def _camera_match(layers: np.ndarray, alpha: np.ndarray, laplace: int, face_w: float, seed: int):
    """A slight blur of the layers, a feathered alpha, the contact shadow's reach (alpha
    blurred again), and the photo's own noise level (Immerkaer's estimate, added after the
    blur: the camera's, not the fabric's) as (noise tile, top, left, sigma)."""
    h, w, count = layers.shape
    size = camera_scale(face_w)
    blur, feather = 0.6 * size, 0.96 * size
    layers = cv2.GaussianBlur(layers, _taps(blur), blur).reshape(h, w, count)  # every layer in one call
    sigma = float(min(6.0, math.sqrt(math.pi / 2) * laplace / (6 * (w - 2) * (h - 2)))) if w >= 3 and h >= 3 else 0.0
    noise, ny, nx = _noise_window(seed, h, w) if sigma > 0.3 else (_noise_tile(), 0, 0)
    alpha = cv2.GaussianBlur(alpha, _taps(feather), feather)
    around = cv2.GaussianBlur(alpha, _taps(3 * feather), 3 * feather)
    return layers, alpha, around, (noise, ny, nx, np.float32(sigma if sigma > 0.3 else 0.0))


def _taps(sigma: float) -> tuple[int, int]:
    """A Gaussian kernel to 3 sigma (cv2's default for float images reaches 4 sigma: a third
    more taps for 0.3 % of the weight)."""
    k = 2 * math.ceil(3 * sigma) + 1
    return k, k


_NO_PICTURE = np.zeros((1, 1, 3), np.uint8)
_NO_MEAN = (1.0, 1.0, 1.0)
_LIGHT_BLUR = cv2.getGaussianKernel(9, 1.0, cv2.CV_32F).ravel()  # cv2.GaussianBlur's kernel for sigma 1 (float32)


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


def _warp_texture(spec: MaskSpec, grid: np.ndarray, box) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """The template's alpha, relief and accent planes and the pattern (at a random phase),
    warped into the box: one 4-channel remap (h x w x 4 uint8); the family's picture (BGR)
    warped the same way, if it has one; and whether the warp folds over. (cv2's remap beats a
    compiled loop here: tried.)"""
    texture, picture = template(spec.mask_type), texture_bgr(spec.mask_type)
    window = None
    if spec.pattern != "plain" and spec.texture_weight > 0:
        oy, ox = _seeded_offsets(spec.seed, TEMPLATE_H, TEMPLATE_W, salt=0)
        window = pattern(spec.pattern)[oy : oy + TEMPLATE_H, ox : ox + TEMPLATE_W]
    x0, y0, x1, y1 = box
    # A small face samples the template sparsely: shrink it to about the box's size first
    # (an area filter), so fine patterns do not alias.
    zoom = min(1.0, 2 * (x1 - x0) / TEMPLATE_W)  # bilinear sampling is fine down to half size
    if zoom < 1.0:
        size = (max(8, round(TEMPLATE_W * zoom)), max(6, round(TEMPLATE_H * zoom)))
        texture, picture = template_at(spec.mask_type, size), texture_bgr_at(spec.mask_type, size)
        window = None if window is None else cv2.resize(window, size, interpolation=cv2.INTER_AREA)
        zoom = texture.shape[1] / TEMPLATE_W
    if window is not None:
        texture = _with_pattern(texture, window, 0, 0)
    xy, folds = _template_maps(grid, x0, y0, x1 - x0, y1 - y0, zoom)
    planes = cv2.remap(texture, xy, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    if picture is not None:
        picture = cv2.remap(picture, xy, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return planes, picture, folds


def _with_pattern(texture: np.ndarray, pattern: np.ndarray, oy: int, ox: int) -> np.ndarray:
    """A copy of the template (H, W, 4) with the pattern's window at (oy, ox) as its 4th
    plane; each pixel one 32-bit word (numpy's copy and strided assignment took twice as long)."""
    out = np.empty_like(texture)
    _with_pattern_kernel(texture.view(np.uint32)[..., 0], pattern, oy, ox, out.view(np.uint32)[..., 0])
    return out


@jit(nogil=True)
def _with_pattern_kernel(texture, pattern, oy, ox, out):
    """texture's pixels (little-endian words: the 4th plane is the top byte) with the
    pattern's window in their top byte."""
    h, w = out.shape
    for y in range(h):
        src, dst, pat = texture[y], out[y], pattern[oy + y, ox : ox + w]
        for x in range(w):
            dst[x] = (src[x] & np.uint32(0xFFFFFF)) | (np.uint32(pat[x]) << np.uint32(24))


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
def _shade_kernel(bgr, x0, y0, planes, inside, cell, light_blur, picture, pb, pg, pr, pattern_weight, accent, layers, alpha):
    """Over the box (layers' h x w at x0, y0 of bgr): the photo's grey (as cv2's BGR2GRAY),
    the template's alpha clipped to the anchor outline (planes[..., 0], in place), the
    face's light on cells (_cell_shade) and the grey layers and alpha (_albedo).
    -> (exposure, the grey's L1 Laplacian: Immerkaer's noise estimate)."""
    h, w = alpha.shape
    gray = _box_gray(bgr, x0, y0, h, w)
    mean_light = _clip_alpha(gray, planes, inside)
    # the face's own low-frequency illumination relative to its mean under the mask, times an
    # exposure factor (a mask in a dark photo is dark too), on cells of a fixed fraction of
    # the face: light, not the mouth and nose under the mask, at any size
    exposure = min(max(mean_light / 150.0, 0.45), 1.1)
    shade = _cell_shade(gray, cell, light_blur, np.float32(1 / (mean_light + 1e-6)), np.float32(exposure))
    _albedo(planes, shade, cell, picture, pb, pg, pr, pattern_weight, accent, layers, alpha)
    return exposure, _laplace(gray)


@jit(nogil=True)
def _box_gray(bgr, x0, y0, h, w):
    """cv2.cvtColor(COLOR_BGR2GRAY) of the box: its 15-bit fixed-point weights (checked
    against every colour in the tests), as int32. (Flat rows: a 2-D pixel index keeps
    numba's loops from vectorising: 3x slower.)"""
    flat = bgr.reshape(bgr.shape[0], -1)
    gray = np.empty((h, w), np.int32)
    for y in range(h):
        src, dst = flat[y0 + y, 3 * x0 : 3 * (x0 + w)], gray[y]
        for x in range(w):
            dst[x] = (np.int32(src[3 * x]) * 3735 + np.int32(src[3 * x + 1]) * 19235 + np.int32(src[3 * x + 2]) * 9798 + 16384) >> 15
    return gray


@jit(nogil=True)
def _clip_alpha(gray, planes, inside):
    """The template's alpha clipped to the anchor outline (planes[..., 0], in place; `inside`
    1 x 1: not clipped) -> the grey's mean under the mask (0 when nothing is)."""
    h, w = gray.shape
    flat = planes.reshape(h, -1)
    total = 0
    under = 0
    clip = inside.shape[0] == h and inside.shape[1] == w  # a 1 x 1 box clipped or not is the same
    for y in range(h):
        g, p, ins = gray[y], flat[y], inside[y if clip else 0]
        row_total = np.int32(0)
        row_under = np.int32(0)
        for x in range(w):
            a = p[4 * x] if not clip or p[4 * x] < ins[x] else ins[x]
            p[4 * x] = a
            on = np.int32(1) if a > 0 else np.int32(0)
            row_total += g[x] * on
            row_under += on
        total += row_total
        under += row_under
    return total / under if under else 0.0


@jit(nogil=True)
def _laplace(gray):
    """The grey's L1 Laplacian over the interior pixels (Immerkaer's noise estimate). (Row
    slices, not x - 1 and x + 1: numba checks an offset index for wrap-around, which keeps
    the loop from vectorising.)"""
    h, w = gray.shape
    n = w - 2
    laplace = 0
    for y in range(1, h - 1):
        ul, uc, ur = gray[y - 1, 0:n], gray[y - 1, 1 : n + 1], gray[y - 1, 2 : n + 2]
        ml, mc, mr = gray[y, 0:n], gray[y, 1 : n + 1], gray[y, 2 : n + 2]
        dl, dc, dr = gray[y + 1, 0:n], gray[y + 1, 1 : n + 1], gray[y + 1, 2 : n + 2]
        row = np.int32(0)
        for x in range(n):
            v = ul[x] - 2 * uc[x] + ur[x] - 2 * ml[x] + 4 * mc[x] - 2 * mr[x] + dl[x] - 2 * dc[x] + dr[x]
            row += v if v >= 0 else -v
        laplace += row
    return laplace


@jit(nogil=True)
def _cell_shade(gray, cell, light_blur, inv_mean, exposure):
    """The light on cell x cell blocks: their means (cv2.resize INTER_AREA of the box padded
    by its edge pixels, rounded), blurred (cv2.GaussianBlur sigma 1), relative to the mean
    under the mask, clipped to 0.2..3, ^0.75, x exposure (float32, as the numpy version)."""
    h, w = gray.shape
    rows, cols = -(-h // cell), -(-w // cell)
    small = np.empty((rows, cols), np.float32)
    inv = np.float32(1.0 / (cell * cell))
    sums = np.empty(w, np.int32)
    for r in range(rows):
        sums[:] = 0
        for y in range(r * cell, (r + 1) * cell):
            g = gray[y if y < h else h - 1]
            for x in range(w):
                sums[x] += g[x]
        for c in range(cols):
            acc = np.int32(0)
            end = min((c + 1) * cell, w)
            for x in range(c * cell, end):
                acc += sums[x]
            acc += ((c + 1) * cell - end) * sums[w - 1]  # the padding repeats the last column
            small[r, c] = np.rint(np.float32(acc) * inv)
    light = _blur_small(small, light_blur)
    lo, hi, power = np.float32(0.2), np.float32(3.0), np.float32(0.75)
    for r in range(rows):
        for c in range(cols):
            v = light[r, c] * inv_mean
            v = min(max(v, lo), hi)
            light[r, c] = v**power * exposure
    return light


@jit(nogil=True)
def _blur_small(src, kernel):
    """cv2.GaussianBlur of a small float32 array with a symmetric kernel (BORDER_REFLECT_101):
    the rows, then the columns."""
    rows, cols = src.shape
    k = kernel.shape[0]
    half = k // 2
    across = np.empty((rows, cols), np.float32)
    for r in range(rows):
        for c in range(cols):
            acc = np.float32(0)
            for t in range(k):
                acc += kernel[t] * src[r, _reflect101(c + t - half, cols)]
            across[r, c] = acc
    out = np.empty((rows, cols), np.float32)
    for r in range(rows):
        for c in range(cols):
            acc = kernel[half] * across[r, c]
            for t in range(1, half + 1):
                acc += kernel[half + t] * (across[_reflect101(r - t, rows), c] + across[_reflect101(r + t, rows), c])
            out[r, c] = acc
    return out


@jit(nogil=True)
def _reflect101(p, n):
    """cv2.borderInterpolate(p, n, BORDER_REFLECT_101)."""
    if n == 1:
        return 0
    while p < 0 or p >= n:
        p = -p if p < 0 else 2 * n - 2 - p
    return p


@jit(nogil=True)
def _albedo(planes, shade, cell, picture, pb, pg, pr, pattern_weight, accent, layers, alpha):
    """Per pixel: the shade upsampled from the cells (cv2.resize INTER_LINEAR), the light =
    relief x shade, and the grey layers (light; or light x picture / its mean, per channel;
    the pattern; accent parts replacing the fabric) into layers (h, w, n); alpha / 255."""
    h, w = alpha.shape
    n = layers.shape[2]
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
    flat_planes, flat_layers = planes.reshape(h, -1), layers.reshape(h, -1)
    flat_picture = picture.reshape(picture.shape[0], -1)
    light = np.empty(w, np.float32)
    for y in range(h):
        i, f = yi[y], yf[y]
        j = i + 1 if i + 1 < rows else rows - 1
        g = one - f
        hi, hj = horizontal[i], horizontal[j]
        p, out, ar = flat_planes[y], flat_layers[y], alpha[y]
        for x in range(w):
            light[x] = np.float32(p[4 * x + 1]) * (hi[x] * g + hj[x] * f) * relief_scale
            ar[x] = np.float32(p[4 * x]) * inv255
        # the common layouts get loops with a constant stride (they vectorise); the rest, pixel by pixel
        if n == 1:
            for x in range(w):
                out[x] = light[x]
        elif n == 2 and weight > 0 and not accent and not pictured:  # a patterned mask
            for x in range(w):
                out[2 * x] = light[x]
                out[2 * x + 1] = light[x] * np.float32(p[4 * x + 3]) * weight
        elif n == 2 and accent and not pictured:  # a plain one with accent parts (respirator)
            for x in range(w):
                a = np.float32(p[4 * x + 2]) * inv255
                out[2 * x] = light[x] - light[x] * a
                out[2 * x + 1] = light[x] * a
        else:
            pic = flat_picture[y if pictured else 0]
            for x in range(w):
                b = n * x
                k = 0
                if pictured:
                    for c in range(3):
                        out[b + c] = light[x] * np.float32(pic[3 * x + c]) * pscale[c]
                    k = 3
                else:
                    out[b] = light[x]
                    k = 1
                if weight > 0:
                    out[b + k] = light[x] * np.float32(p[4 * x + 3]) * weight
                    k += 1
                if accent:
                    a = np.float32(p[4 * x + 2]) * inv255
                    for m in range(k):
                        out[b + m] = out[b + m] - out[b + m] * a
                    out[b + k] = light[x] * a


@jit(nogil=True)
def _composite_kernel(out, occlusion, x0, y0, layers, mix, noise, ny, nx, sigma, alpha, around):
    """The mask over the skin, per pixel of the box: sum of (layer x alpha) x its colour, the
    noise x alpha (grey), over the skin x (1 - alpha) x (1 - 0.45 x contact shadow), rounded
    to uint8 (as cv2.add); occlusion: alpha > 0.5. (A row buffer per colour channel and
    simple loops: they vectorise; interleaved B, G, R buffers were a third slower.)"""
    h, w, n = layers.shape
    noisy = sigma > 0
    zero, one, dark, top, half = np.float32(0), np.float32(1), np.float32(0.45), np.float32(255), np.float32(0.5)
    skin = np.empty(w, np.float32)
    m0, m1, m2 = np.empty(w, np.float32), np.empty(w, np.float32), np.empty(w, np.float32)
    flat_layers, flat_out = layers.reshape(h, -1), out.reshape(out.shape[0], -1)
    for y in range(h):
        ar, sr, lr = alpha[y], around[y], flat_layers[y]
        for x in range(w):
            a = ar[x]
            shadow = sr[x] - a
            shadow = shadow if shadow > zero else zero
            skin[x] = (one - a) * (one - dark * shadow)
            m0[x] = m1[x] = m2[x] = zero
        if n == 2:  # a constant stride: the loop vectorises
            c0, c1, c2, d0, d1, d2 = mix[0, 0], mix[0, 1], mix[0, 2], mix[1, 0], mix[1, 1], mix[1, 2]
            for x in range(w):
                la, lb = lr[2 * x] * ar[x], lr[2 * x + 1] * ar[x]
                m0[x] += c0 * la
                m1[x] += c1 * la
                m2[x] += c2 * la
                m0[x] += d0 * lb
                m1[x] += d1 * lb
                m2[x] += d2 * lb
        else:
            for k in range(n):
                c0, c1, c2 = mix[k, 0], mix[k, 1], mix[k, 2]
                for x in range(w):
                    la = lr[n * x + k] * ar[x]
                    m0[x] += c0 * la
                    m1[x] += c1 * la
                    m2[x] += c2 * la
        if noisy:
            nr = noise[ny + y, nx : nx + w]
            for x in range(w):
                grain = nr[x] * sigma * ar[x]
                m0[x] += grain
                m1[x] += grain
                m2[x] += grain
        o = flat_out[y0 + y, 3 * x0 : 3 * (x0 + w)]
        for x in range(w):
            s = skin[x]
            b = np.rint(np.float32(o[3 * x]) * s + m0[x])
            g = np.rint(np.float32(o[3 * x + 1]) * s + m1[x])
            r = np.rint(np.float32(o[3 * x + 2]) * s + m2[x])
            o[3 * x] = np.uint8(min(max(b, zero), top))
            o[3 * x + 1] = np.uint8(min(max(g, zero), top))
            o[3 * x + 2] = np.uint8(min(max(r, zero), top))
        occ = occlusion[y0 + y, x0 : x0 + w]
        for x in range(w):
            occ[x] = 255 if ar[x] > half else 0


def _draw_straps(out, occlusion, kind: str, grid, points, face_w: float, color) -> None:
    lines16 = np.empty((8, 2), np.int32)
    count = _strap_lines(kind == "head_straps", grid, np.ascontiguousarray(points).reshape(-1, 2), lines16)
    if not count:
        return
    step = 2 if kind == "head_straps" else 3
    polylines = [lines16[i : i + step] for i in range(0, count, step)]
    thickness = max(1, round(face_w / 70))
    # 4 fractional bits: sub-pixel lines; one call per image draws them in turn, as one call each would
    cv2.polylines(out, polylines, False, color, thickness, cv2.LINE_AA, shift=4)
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
        row = occlusion[y, c0:c1]
        count = np.int32(0)  # a row slice and an int32 count: the loop vectorises (3x faster)
        for x in range(row.shape[0]):
            count += np.int32(1) if row[x] else np.int32(0)
        covered += count
    return covered / ((r1 - r0) * (c1 - c0))
