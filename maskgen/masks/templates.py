"""Mask templates drawn by code: for each family, in template space (u across, v down),
an alpha map (the outline), a relief map (pleats, seams, cup: multiplies the shading) and
an accent map (parts in a second colour, e.g. filter cartridges). Plus tileable patterns.
A family with a texture (a picture of a real mask, see custom.py) gets its planes from the
picture instead, and `texture_bgr` gives the picture's colours.

Drawn once per process (cached); a render only samples them."""

from __future__ import annotations

from functools import cache, lru_cache

import cv2
import numpy as np

from maskgen.masks.families import family

TEMPLATE_W, TEMPLATE_H = 160, 120  # template raster size (u, v)
_SS = 4  # supersampling for antialiased outlines


def _unit_grid(w: int = TEMPLATE_W, h: int = TEMPLATE_H) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    return u / (w - 1), v / (h - 1)


def _outline_alpha(outline) -> np.ndarray:
    big = np.zeros((TEMPLATE_H * _SS, TEMPLATE_W * _SS), np.uint8)
    scale = np.array([TEMPLATE_W * _SS - 1, TEMPLATE_H * _SS - 1], np.float32)
    if outline == "ellipse":
        centre = tuple(int(c) for c in scale / 2)
        cv2.ellipse(big, centre, centre, 0, 0, 360, 255, -1)
    else:
        cv2.fillPoly(big, [np.round(np.array(outline, np.float32) * scale).astype(np.int32)], 255)
    return cv2.resize(big, (TEMPLATE_W, TEMPLATE_H), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _disc(u, v, centre, radius) -> np.ndarray:
    aspect = TEMPLATE_W / TEMPLATE_H  # keep discs round in the (wider) template
    d = np.hypot((u - centre[0]) * aspect, v - centre[1]) / radius
    return np.clip((1 - d) * radius * TEMPLATE_H / 1.5, 0, 1)  # soft 1.5 px edge


def _relief(alpha: np.ndarray, features) -> tuple[np.ndarray, np.ndarray]:
    u, v = _unit_grid()
    relief = np.ones_like(u)
    accent = np.zeros_like(u)
    inside = (alpha > 0.5).astype(np.uint8)
    edge_dist = cv2.distanceTransform(inside, cv2.DIST_L2, 3) / TEMPLATE_H  # in units of v
    for f in features:
        kind, depth = f["kind"], f.get("depth", 0.2)
        if kind == "pleats":  # sawtooth folds across the middle, crisp dark crease at each fold
            n = f["count"]
            phase = np.clip((v - 0.18) / 0.64, 0, 1) * n
            saw = phase - np.floor(phase)
            in_band = (v > 0.18) & (v < 0.82)
            relief *= np.where(in_band, 1 + depth * (saw - 0.5) - depth * 0.6 * (saw > 0.92), 1)
        elif kind == "band":  # bound top and bottom edges
            w = f["width"]
            relief *= np.where((v < w) | (v > 1 - w), 1 - depth, 1)
            relief *= np.where((np.abs(v - w) < 0.008) | (np.abs(v - (1 - w)) < 0.008), 1 - 2 * depth, 1)
        elif kind == "nose_wire":
            relief *= np.where((np.abs(u - 0.5) < f["width"] / 2) & (v < 0.06), 1 + depth, 1)
        elif kind == "cup":  # a dome: lighter in the middle, falling off to the rim
            r2 = ((u - 0.5) / 0.5) ** 2 + ((v - 0.5) / 0.5) ** 2
            relief *= 1 + depth * (0.3 - 0.6 * np.clip(r2, 0, 1.5))
        elif kind == "rim":
            relief *= np.where(edge_dist < f["width"], 1 - depth, 1)
        elif kind == "fold":  # two panels: one faces the light a little more
            relief *= 1 + depth * np.tanh((0.5 - u) * 12) * 0.5
        elif kind == "seam":
            relief *= 1 - depth * np.exp(-(((u - 0.5) / f["width"]) ** 2))
        elif kind == "cartridges":
            for c in f["centers"]:
                disc = _disc(u, v, c, f["radius"])
                accent = np.maximum(accent, disc)
                relief *= 1 + depth * disc * (0.4 - np.hypot(u - c[0], v - c[1]) / f["radius"])
        elif kind == "valve":
            disc = _disc(u, v, f["center"], f["radius"])
            relief *= 1 - depth * disc * 0.6
        else:
            raise ValueError(f"unknown relief feature {kind!r}")
    return relief.astype(np.float32), accent.astype(np.float32)


RELIEF_SCALE = 127.5  # relief 0..2 is stored as uint8 0..255 (1 = flat: 127.5)


def template(name: str) -> np.ndarray:
    """(H, W, 4) uint8 (8-bit: remaps fastest): alpha x 255, relief x RELIEF_SCALE, accent
    x 255, in template space, and an empty 4th plane where a render puts its pattern (one
    4-channel remap is cheaper than a 3- and a 1-channel one). Alpha includes the accent
    parts (cartridges) where they stand out of the outline. A family with a texture (a
    picture of a real mask): its alpha, a flat relief (the picture's own folds and seams are
    in its colours, `texture_albedo`), no accent. Drawn once per family and content (cached)."""
    fam = family(name)
    return _template(fam.name, fam.digest)


@cache
def _template(name: str, digest: str | None) -> np.ndarray:
    fam = family(name)
    if fam.texture_png is not None:
        return _textured(_texture_bgra(name, digest))
    alpha = _outline_alpha(fam.outline)
    relief, accent = _relief(alpha, fam.relief)
    alpha = np.maximum(alpha, accent)
    planes = [alpha * 255, np.clip(relief, 0, 2) * RELIEF_SCALE, accent * 255, np.zeros_like(alpha)]
    return np.ascontiguousarray(np.dstack(planes).round().astype(np.uint8))


def template_at(name: str, size: tuple[int, int]) -> np.ndarray:
    """template(name) shrunk to size (w, h) with an area filter, as a render of a small face
    samples it: cached per family and size (read-only), since the resize cost more than the
    rest of such a render. (cv2's INTER_AREA treats every channel alike: the pattern's plane
    can be shrunk on its own.)"""
    fam = family(name)
    return _template_at(fam.name, fam.digest, size)


@lru_cache(maxsize=256)
def _template_at(name: str, digest: str | None, size: tuple[int, int]) -> np.ndarray:
    return _read_only(cv2.resize(_template(name, digest), size, interpolation=cv2.INTER_AREA))


def texture_bgr_at(name: str, size: tuple[int, int]) -> np.ndarray | None:
    """texture_bgr(name) shrunk to size as template_at shrinks the planes; None without a texture."""
    fam = family(name)
    return None if fam.texture_png is None else _texture_bgr_at(fam.name, fam.digest, size)


@lru_cache(maxsize=256)
def _texture_bgr_at(name: str, digest: str | None, size: tuple[int, int]) -> np.ndarray:
    return _read_only(cv2.resize(_texture_bgr(name, digest)[0], size, interpolation=cv2.INTER_AREA))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # shared by every render
    return array


def texture_bgr(name: str) -> np.ndarray | None:
    """The family's texture (the picture of the mask) as (TEMPLATE_H, TEMPLATE_W, 3) uint8
    BGR in template space, on the same raster as `template(name)`. None for a family drawn
    by code (every built-in one). Colour is bled outwards past the alpha edge, so that
    sampling at the rim does not pick up black."""
    fam = family(name)
    if fam.texture_png is None:
        return None
    return _texture_bgr(fam.name, fam.digest)[0]


def texture_mean(name: str) -> np.ndarray:
    """The texture's mean BGR (0..1) inside its alpha: the colour a render's `--color`
    replaces (the picture's shading and print are kept relative to it)."""
    fam = family(name)
    return _texture_bgr(fam.name, fam.digest)[1]


@cache
def _texture_bgr(name: str, digest: str | None) -> tuple[np.ndarray, np.ndarray]:
    bgra = _texture_bgra(name, digest)
    bgr = np.ascontiguousarray(bgra[..., :3])
    bgr.flags.writeable = False  # shared by every render: read-only
    inside = bgra[..., 3] > 128
    mean = bgr[inside].mean(0) / 255 if inside.any() else np.full(3, 0.5)
    return bgr, np.maximum(mean, 1 / 255).astype(np.float32)


@cache
def _texture_bgra(name: str, digest: str | None) -> np.ndarray:
    """The texture resized onto the template raster (INTER_AREA: a 2x texture averages down)."""
    fam = family(name)
    image = cv2.imdecode(np.frombuffer(fam.texture_png, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"texture {fam.texture} of mask type {name!r} is not a BGRA picture")
    if image.shape[:2] != (TEMPLATE_H, TEMPLATE_W):
        image = cv2.resize(image, (TEMPLATE_W, TEMPLATE_H), interpolation=cv2.INTER_AREA)
    return bleed(image)


def bleed(bgra: np.ndarray) -> np.ndarray:
    """BGRA with each pixel's colour where alpha < 128 replaced by the nearest opaque one
    (alpha kept): resampling near the edge mixes in the mask's colour, not the background's."""
    solid = bgra[..., 3] >= 128
    if solid.all() or not solid.any():
        return np.ascontiguousarray(bgra)
    _, labels = cv2.distanceTransformWithLabels((~solid).astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(solid)  # DIST_LABEL_PIXEL numbers the zero pixels in row-major order from 1
    out = bgra.copy()
    order = np.zeros(labels.max() + 1, np.int64)
    order[1 : len(ys) + 1] = np.arange(len(ys))
    nearest = order[labels]
    out[..., :3] = bgra[ys[nearest], xs[nearest], :3]
    out[..., 3] = bgra[..., 3]
    return out


def _textured(bgra: np.ndarray) -> np.ndarray:
    alpha = bgra[..., 3]
    flat = np.full_like(alpha, round(RELIEF_SCALE))
    return np.ascontiguousarray(np.dstack([alpha, flat, np.zeros_like(alpha), np.zeros_like(alpha)]))


@cache
def pattern(name: str) -> np.ndarray:
    """A (2H, 2W) uint8 map, 0..255, of where the second colour shows. Twice the template
    size so that a render can take a randomly offset window (the pattern's phase)."""
    u, v = _unit_grid(2 * TEMPLATE_W, 2 * TEMPLATE_H)
    u, v = u * 2 * TEMPLATE_W / TEMPLATE_H, v * 2  # square cells: units of template height
    if name == "plain":
        p = np.zeros_like(u)
    elif name == "stripes":  # diagonal stripes with soft edges
        p = np.clip(np.sin(2 * np.pi * (u + v) * 4) * 3, -1, 1) * 0.5 + 0.5
    elif name == "dots":
        cu, cv = (u * 7) % 1 - 0.5, (v * 7 + 0.5 * (np.floor(u * 7) % 2)) % 1 - 0.5
        p = np.clip((0.28 - np.hypot(cu, cv)) * 25, 0, 1)
    elif name == "checks":  # gingham: two crossing stripe sets
        a = (np.sin(2 * np.pi * u * 4) > 0).astype(np.float32)
        b = (np.sin(2 * np.pi * v * 4) > 0).astype(np.float32)
        p = (a + b) / 2
    elif name == "woven":  # over-under threads plus a little yarn noise
        warp = 0.5 + 0.5 * np.sin(2 * np.pi * u * 28)
        weft = 0.5 + 0.5 * np.sin(2 * np.pi * v * 28)
        over = (np.floor(u * 28) + np.floor(v * 28)) % 2
        noise = cv2.GaussianBlur(np.random.default_rng(0).random(u.shape, np.float32), (0, 0), 1.2)
        p = np.where(over > 0, warp, weft) * 0.7 + (noise - 0.5) * 0.6
    else:
        raise ValueError(f"unknown pattern {name!r}")
    return np.ascontiguousarray((np.clip(p, 0, 1) * 255).round().astype(np.uint8))
