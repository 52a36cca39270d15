"""Fit a mask template to a face and blend it in so it does not look pasted on.

1. geometry: anchor grid from the landmarks (geometry.py);
2. warp: a thin-plate spline from image to template space through the anchors, evaluated on
   a coarse lattice and upsampled (the spline is smooth), then one cv2.remap;
3. shade: the mask's colour x its relief x the face's own low-frequency illumination;
4. camera match: the image's noise level, a slight blur, feathered edges and a faint
   contact shadow on the skin around the mask; straps towards the ears.
All on the mask's bounding box only: a 150x150 chip costs well under half a millisecond."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from PIL import ImageColor

from maskgen.masks.families import family
from maskgen.masks.geometry import U, V, anchor_grid
from maskgen.masks.options import MaskSpec
from maskgen.masks.templates import RELIEF_SCALE, TEMPLATE_H, TEMPLATE_W, pattern, template

_LATTICE = 12  # spline evaluated on a 12x12 lattice over the mask's box, then upsampled
_TEMPLATE_XY = np.stack(np.meshgrid(U * (TEMPLATE_W - 1), V * (TEMPLATE_H - 1)), -1).reshape(-1, 2)


class RenderError(ValueError):
    """The mask cannot be placed on this face (degenerate landmarks, face outside the image)."""


@dataclass(frozen=True)
class Rendered:
    image: np.ndarray  # BGR uint8, the masked photo
    occlusion: np.ndarray  # HxW uint8, 255 where the mask (or a strap) covers the face
    coverage: float  # fraction of the landmarks' bounding box that is covered


def _tps_kernel(d2: np.ndarray) -> np.ndarray:
    return d2 * np.log(np.maximum(d2, 1e-12))


def _thin_plate(src: np.ndarray, dst: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Thin-plate spline through src -> dst, evaluated at query points. (36 anchors: a direct
    39x39 solve is ~10x faster here than scipy's RBFInterpolator or skimage's TPS.)"""
    n = len(src)
    a = np.zeros((n + 3, n + 3))
    a[:n, :n] = _tps_kernel(((src[:, None] - src[None]) ** 2).sum(-1)) + 1e-6 * np.eye(n)
    a[:n, n] = a[n, :n] = 1
    a[:n, n + 1 :] = src
    a[n + 1 :, :n] = src.T
    b = np.zeros((n + 3, 2))
    b[:n] = dst
    try:
        w = np.linalg.solve(a, b)
    except np.linalg.LinAlgError as err:
        raise RenderError("landmarks are degenerate: cannot fit the mask") from err
    d2 = (query[:, None, 0] - src[None, :, 0]) ** 2 + (query[:, None, 1] - src[None, :, 1]) ** 2
    return _tps_kernel(d2) @ w[:n] + w[n] + query @ w[n + 1 :]


def _template_maps(grid: np.ndarray, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of the box, where to sample the template: cv2.remap's fixed-point maps."""
    scale = max(w, h)
    src = (grid.reshape(-1, 2) - (x0, y0)) / scale  # normalised for a well-conditioned solve
    # Lattice nodes where cv2.resize puts the source samples, so the upsampling is exact there.
    xs = ((np.arange(_LATTICE) + 0.5) * w / _LATTICE - 0.5) / scale
    ys = ((np.arange(_LATTICE) + 0.5) * h / _LATTICE - 0.5) / scale
    query = np.empty((_LATTICE, _LATTICE, 2))
    query[..., 0], query[..., 1] = xs[None, :], ys[:, None]
    coarse = _thin_plate(src, _TEMPLATE_XY, query.reshape(-1, 2)).reshape(_LATTICE, _LATTICE, 2).astype(np.float32)
    fine = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.convertMaps(fine, None, cv2.CV_16SC2)


def _inside_grid(grid: np.ndarray, x0: int, y0: int, w: int, h: int, margin: int) -> np.ndarray:
    """1 inside the anchor grid's outline (grown by `margin`), 0 outside."""
    outline = np.concatenate([grid[0], grid[1:, -1], grid[-1, -2::-1], grid[-2:0:-1, 0]]) - (x0, y0)
    inside = np.zeros((h, w), np.uint8)
    cv2.fillPoly(inside, [np.round(outline * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return cv2.dilate(inside, np.ones((2 * margin + 1,) * 2, np.uint8))


@cache
def _noise_tile() -> np.ndarray:
    return np.random.default_rng(12345).standard_normal((512, 512)).astype(np.float32)


def _noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer's fast noise estimate (1996): the image's own sensor/compression noise."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    h, w = gray.shape
    if h < 3 or w < 3:
        return 0.0
    response = np.abs(cv2.filter2D(gray, cv2.CV_32F, kernel)[1:-1, 1:-1]).sum()
    return float(min(6.0, np.sqrt(np.pi / 2) * response / (6 * (w - 2) * (h - 2))))


def _rgb01(hex_color: str) -> np.ndarray:
    return np.array(ImageColor.getrgb(hex_color)[:3][::-1], np.float32) / 255  # BGR


def _second_color(color: np.ndarray) -> np.ndarray:
    """The pattern's other colour: darker on light fabric, lighter on dark."""
    return color * 0.45 if color.mean() > 0.5 else color + (1 - color) * 0.65


def _straps(fam_straps: str, grid: np.ndarray, points: np.ndarray, color: np.ndarray):
    """Polylines (and their colour) from the mask's sides towards the ears."""
    jaw = points[:17].astype(np.float64)
    face_w = np.linalg.norm(jaw[16] - jaw[0])
    nose = points[30]
    lines = []
    for col, ear in ((0, jaw[0]), (-1, jaw[16])):
        side_width = abs(nose[0] - ear[0]) / (face_w + 1e-6)
        if side_width < 0.25:  # that side of the head faces away: its strap is hidden
            continue
        away = (ear - nose) / (np.linalg.norm(ear - nose) + 1e-6)
        if fam_straps == "ear_loops":
            target = ear + away * 0.06 * face_w
            lines.append(np.array([grid[0, col], target, grid[-2, col]]))
        else:  # head straps: run back over the cheeks, above and below the ear
            lines.append(np.array([grid[0, col], grid[0, col] + away * 0.45 * face_w]))
            lines.append(np.array([grid[-2, col], grid[-2, col] + away * 0.45 * face_w]))
    strap_color = color * 0.85 if fam_straps == "head_straps" else np.clip(color * 1.1 + 0.05, 0, 1)
    thickness = max(1, round(face_w / 70))
    return lines, strap_color, thickness


def _mask_box(grid: np.ndarray, shape, margin: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the anchors' bounding box grown by margin, clipped to the image."""
    if not np.isfinite(grid).all():
        raise RenderError("landmarks are not finite")
    (x0, y0), (x1, y1) = np.floor(grid.min((0, 1))).astype(int) - margin, np.ceil(grid.max((0, 1))).astype(int) + margin
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
    if x1 - x0 < 4 or y1 - y0 < 4:
        raise RenderError("the face is outside the image")
    return x0, y0, x1, y1


def _shading(gray: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, float]:
    """The face's own low-frequency illumination under the mask, relative to its mean there,
    times an exposure factor (a mask in a dark photo is dark too). Worked out at 1/8 size."""
    h, w = alpha.shape
    size = (max(2, w // 8), max(2, h // 8))
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    light = cv2.GaussianBlur(small.astype(np.float32), (0, 0), 1.0)
    weight = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    mean_light = float((light * weight).sum() / (weight.sum() + 1e-6))
    exposure = float(np.clip(mean_light / 150.0, 0.45, 1.1))
    shade = np.power(np.clip(light / (mean_light + 1e-6), 0.2, 3.0), 0.75) * exposure
    return cv2.resize(shade, (w, h), interpolation=cv2.INTER_LINEAR), exposure


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


def render_mask(bgr: np.ndarray, points: np.ndarray, spec: MaskSpec) -> Rendered:
    """`bgr` with the mask `spec` fitted to the face whose 68 landmarks are `points`."""
    fam = family(spec.mask_type)
    grid = anchor_grid(points, fam.fit, spec.wear_shift)
    face_w = float(np.linalg.norm(points[16] - points[0]))
    margin = 3 + int(0.04 * face_w)
    x0, y0, x1, y1 = _mask_box(grid, bgr.shape, margin)
    w, h = x1 - x0, y1 - y0

    # Warp: template and pattern into the box (pattern shifted by a random phase).
    maps, fractions = _template_maps(grid, x0, y0, w, h)
    tpl = cv2.remap(template(spec.mask_type), maps, fractions, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    oy, ox = _seeded_offsets(spec.seed, TEMPLATE_H, TEMPLATE_W, salt=0)
    pat = np.ascontiguousarray(pattern(spec.pattern)[oy : oy + TEMPLATE_H, ox : ox + TEMPLATE_W])
    pat = cv2.remap(pat, maps, fractions, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    inside = _inside_grid(grid, x0, y0, w, h, margin)  # the spline may fold back far outside it
    alpha = np.multiply(tpl[..., 0], inside, dtype=np.float32) * np.float32(1 / 255)
    relief = tpl[..., 1].astype(np.float32) * np.float32(1 / RELIEF_SCALE)

    # Colour: albedo (colour, pattern, accent parts) x relief x the face's illumination.
    # (Per channel, then cv2.merge: numpy broadcasting over a last axis of 3 is ~10x slower.)
    roi = bgr[y0:y1, x0:x1]
    gray = cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY)
    shade, exposure = _shading(gray, alpha)
    light = relief * shade * np.float32(255)
    mix = light * (pat.astype(np.float32) * np.float32(spec.texture_weight / 255))
    color = _rgb01(spec.color)
    channels = [light * c + mix * d for c, d in zip(color, _second_color(color) - color)]
    accent_color = next((_rgb01(f["color"]) for f in fam.relief if "color" in f), None)
    if accent_color is not None:
        accent = tpl[..., 2].astype(np.float32) * np.float32(1 / 255)
        channels = [ch + accent * (light * a - ch) for ch, a in zip(channels, accent_color)]

    # Camera match: slight blur, the image's own noise level, feathered edge, contact shadow.
    layer = cv2.GaussianBlur(cv2.merge(channels), (0, 0), 0.6)
    sigma = _noise_sigma(gray)
    if sigma > 0.3:
        layer += cv2.merge([_noise(spec.seed, h, w) * np.float32(sigma)] * 3)
    feather = max(0.6, 0.008 * face_w)
    alpha = cv2.GaussianBlur(alpha, (0, 0), feather)
    shadow = cv2.GaussianBlur(alpha, (0, 0), 3 * feather) - alpha
    skin_weight = (1 - alpha) * (1 - 0.45 * np.clip(shadow, 0, 1))
    blended = roi.astype(np.float32) * cv2.merge([skin_weight] * 3) + layer * cv2.merge([alpha] * 3)

    out = bgr.copy()
    out[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    occlusion = np.zeros(bgr.shape[:2], np.uint8)
    occlusion[y0:y1, x0:x1] = (alpha > 0.5) * np.uint8(255)
    _draw_straps(out, occlusion, fam.straps, grid, points, color * exposure)
    return Rendered(out, occlusion, _coverage(occlusion, points))


def _draw_straps(out, occlusion, kind: str, grid, points, color) -> None:
    lines, strap_color, thickness = _straps(kind, grid, points, color)
    strap_bgr = tuple(float(c) for c in np.clip(strap_color * 255, 0, 255))
    for line in lines:
        pts = np.round(line * 16).astype(np.int32)  # 4 fractional bits: sub-pixel lines
        cv2.polylines(out, [pts], False, strap_bgr, thickness, cv2.LINE_AA, shift=4)
        cv2.polylines(occlusion, [pts], False, 255, thickness, cv2.LINE_8, shift=4)


def _coverage(occlusion: np.ndarray, points: np.ndarray) -> float:
    """Covered fraction of the landmarks' bounding box."""
    (x0, y0), (x1, y1) = np.clip(np.floor(points.min(0)).astype(int), 0, None), np.ceil(points.max(0)).astype(int)
    face = occlusion[y0:y1, x0:x1]
    return float(np.count_nonzero(face)) / face.size if face.size else 0.0
