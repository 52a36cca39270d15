"""Masks of one's own: a front-view picture of a real mask -> a mask family with a texture.

The picture (RGBA with alpha, or a photo of the mask on a plain background, cut out here)
and six anchor points marked on it are warped into template space with a thin-plate spline,
so that the picture lands on a face where a built-in mask of the `like` family would:

    nose_top    -> (0.5, top of the like family's outline)       the top edge on the nose
    chin_bottom -> (0.5, bottom of its outline)                   the bottom edge under the chin
    left_ear    -> the outline's left side, half-way up that side where the ear loop pulls
    right_ear   -> the same on the right
    left_cheek  -> where the middle of the left cheek lies in template space under the
    right_cheek    like family's fit (on the mean face of the sample chips)

plus the corners of the picture's cut-out box -> the corners of the outline's box.
`template_anchors(family)` gives these (u, v) for any family."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from maskgen.files import write_atomic
from maskgen.masks.families import Family, family, is_builtin, looks_like_path, register
from maskgen.masks.geometry import U, V, anchor_grid
from maskgen.masks.templates import TEMPLATE_H, TEMPLATE_W, bleed, template

ANCHORS = ("nose_top", "chin_bottom", "left_ear", "right_ear", "left_cheek", "right_cheek")
TEXTURE_SCALE = 2  # the texture is stored at 2x the template raster, for detail
_WORK_SIDE = 1400  # pictures are cut out and warped at most this large (longest side)
_NAME_CHARS = "letters, digits, '_', '-' or '.'"

# The mean of the 55 sample chips' landmarks, mirrored to be symmetric: x from the midline,
# y from landmark 27 (the bridge), both in units of the 27 -> 8 (bridge to chin) distance.
CANONICAL_FACE = np.array([
    [-0.584, 0.046], [-0.575, 0.201], [-0.561, 0.355], [-0.539, 0.511], [-0.489, 0.659], [-0.401, 0.786],
    [-0.287, 0.893], [-0.157, 0.978], [0.0, 1.0], [0.157, 0.978], [0.287, 0.893], [0.401, 0.786],
    [0.489, 0.659], [0.539, 0.511], [0.561, 0.355], [0.575, 0.201], [0.584, 0.046], [-0.471, -0.045],
    [-0.403, -0.118], [-0.303, -0.146], [-0.195, -0.141], [-0.093, -0.108], [0.093, -0.108], [0.195, -0.141],
    [0.303, -0.146], [0.403, -0.118], [0.471, -0.045], [0.0, 0.0], [0.0, 0.099], [0.0, 0.2],
    [0.0, 0.303], [-0.119, 0.366], [-0.062, 0.386], [0.0, 0.405], [0.062, 0.386], [0.119, 0.366],
    [-0.351, 0.026], [-0.292, -0.009], [-0.221, -0.009], [-0.158, 0.032], [-0.225, 0.042], [-0.294, 0.043],
    [0.158, 0.032], [0.221, -0.009], [0.292, -0.009], [0.351, 0.026], [0.294, 0.043], [0.225, 0.042],
    [-0.242, 0.555], [-0.154, 0.527], [-0.066, 0.515], [0.0, 0.529], [0.066, 0.515], [0.154, 0.527],
    [0.242, 0.555], [0.158, 0.647], [0.071, 0.687], [0.0, 0.694], [-0.071, 0.687], [-0.158, 0.647],
    [-0.206, 0.563], [-0.067, 0.555], [0.0, 0.563], [0.067, 0.555], [0.206, 0.563], [0.068, 0.616],
    [0.0, 0.624], [-0.068, 0.616],
])  # fmt: skip
_CHEEKS = ((3, 31), (13, 35))  # the middle of each cheek: half-way from the jaw (3 / 13) to the nose wing (31 / 35)


class TemplateError(ValueError):
    """`maskgen template new` cannot make a family from these inputs (one line)."""


class PictureError(TemplateError):
    """The picture cannot be read."""


class CutoutError(TemplateError):
    """No clear mask region: no alpha, and no plain background to cut the mask out of."""


class AnchorError(TemplateError):
    """An anchor is missing, outside the picture, off the mask, or they are in an impossible arrangement."""


class OutputExists(TemplateError):
    """An output file exists (and overwriting was not asked for)."""


# -- the template's side: where the anchors go ----------------------------------------------


def _thin_plate(src: np.ndarray, dst: np.ndarray):
    """A thin-plate spline through src -> dst (n x 2 each): a function of (m x 2) points."""
    src = np.asarray(src, np.float64)

    def kernel(a, b):
        d2 = np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 1e-12)
        return d2 * np.log(d2)

    n = len(src)
    a = np.zeros((n + 3, n + 3))
    a[:n, :n] = kernel(src, src)
    a[:n, n] = a[n, :n] = 1
    a[:n, n + 1 :] = src
    a[n + 1 :, :n] = src.T
    b = np.zeros((n + 3, 2))
    b[:n] = dst
    try:
        w = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        raise AnchorError("the anchors are degenerate (some coincide or all lie on a line)") from None

    def apply(query: np.ndarray) -> np.ndarray:
        query = np.asarray(query, np.float64)
        return kernel(query, src) @ w[:n] + w[n] + query @ w[n + 1 :]

    return apply


def template_anchors(fam: Family) -> dict[str, tuple[float, float]]:
    """(u, v) in template space of each anchor, and "box": the outline's box (u0, v0, u1, v1).

    Top and bottom: the outline's top and bottom on the midline (u = 0.5). Ears: the
    outline's outermost column on each side, at the middle of that side's extent there. (The
    ear itself lies above every family's top corner -- jaw point 0 vs jaw 1.1..2.0 -- so its
    literal height is off the template; the side's middle is where the strap pulls.) Cheeks:
    the middle of the cheek (half-way from jaw point 3 to the nose wing, 31) on the mean
    face, taken into template space through the family's own anchor grid, as render.py does."""
    solid = template(fam.name)[..., 0] >= 128
    cols, rows = np.nonzero(solid.any(0))[0], np.nonzero(solid.any(1))[0]
    if not len(cols):
        raise TemplateError(f"mask type {fam.name!r} has an empty outline")
    w1, h1 = TEMPLATE_W - 1, TEMPLATE_H - 1
    mid = solid[:, w1 // 2] | solid[:, (w1 + 1) // 2]
    mid_rows = np.nonzero(mid)[0] if mid.any() else rows
    left, right = np.nonzero(solid[:, cols[0]])[0], np.nonzero(solid[:, cols[-1]])[0]

    face = CANONICAL_FACE * 100 + (200, 100)
    grid = anchor_grid(face, fam.fit)
    uv = np.stack(np.meshgrid(U, V), -1).reshape(-1, 2)
    to_template = _thin_plate(grid.reshape(-1, 2), uv)
    cheeks = to_template(np.array([(face[j] + face[n]) / 2 for j, n in _CHEEKS]))
    cheek_u, cheek_v = (cheeks[0, 0] + 1 - cheeks[1, 0]) / 2, cheeks[:, 1].mean()  # symmetric
    found = {
        "nose_top": (0.5, mid_rows[0] / h1),
        "chin_bottom": (0.5, mid_rows[-1] / h1),
        "left_ear": (cols[0] / w1, (left[0] + left[-1]) / 2 / h1),
        "right_ear": (cols[-1] / w1, (right[0] + right[-1]) / 2 / h1),
        "left_cheek": (cheek_u, cheek_v),
        "right_cheek": (1 - cheek_u, cheek_v),
        "box": (cols[0] / w1, rows[0] / h1, cols[-1] / w1, rows[-1] / h1),
    }
    return {k: tuple(round(float(c), 4) for c in v) for k, v in found.items()}


# -- the picture's side ----------------------------------------------------------------------


def read_picture(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(BGR uint8, alpha float32 0..1 or None when the picture has none or is fully opaque)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            rgba = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    except FileNotFoundError:
        raise PictureError(f"no such picture: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PictureError(f"cannot read the picture {path}: {exc}") from None
    if rgba.ndim != 3 or min(rgba.shape[:2]) < 16:
        raise PictureError(f"the picture {path} is too small ({rgba.shape[1]}x{rgba.shape[0]})")
    bgr = np.ascontiguousarray(rgba[..., 2::-1])
    if rgba.shape[2] == 4 and rgba[..., 3].min() < 250:
        return bgr, rgba[..., 3].astype(np.float32) / 255
    return bgr, None


def cut_out(bgr: np.ndarray) -> np.ndarray:
    """Alpha (float32 0..1) of the mask on a plain background: the background's colour from
    the picture's border, the pixels clearly away from it, their largest connected region
    with its holes filled, feathered by about a pixel."""
    h, w = bgr.shape[:2]
    lab = cv2.cvtColor(cv2.GaussianBlur(bgr, (0, 0), 1.0), cv2.COLOR_BGR2LAB).astype(np.float32)
    lab[..., 0] *= 100 / 255  # OpenCV's 8-bit Lab: L is 0..255; a and b are in about the same units as L*
    b = max(2, round(0.02 * min(h, w)))
    border = np.concatenate([lab[:b].reshape(-1, 3), lab[-b:].reshape(-1, 3), lab[:, :b].reshape(-1, 3), lab[:, -b:].reshape(-1, 3)])
    background = np.median(border, 0)
    border_d = np.linalg.norm(border - background, axis=1)
    if np.percentile(border_d, 90) > 12:
        raise CutoutError("no clear mask region: the picture has no alpha and its border is not a plain background")
    distance = np.linalg.norm(lab - background, axis=2)
    scaled = np.clip(distance * 4, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = float(np.clip(otsu / 4, max(8.0, 2 * np.percentile(border_d, 99)), 40.0))
    fg = (distance > threshold).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count < 2:
        raise CutoutError("no clear mask region: nothing in the picture stands out from its background")
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (labels == largest).astype(np.uint8)
    area = stats[largest, cv2.CC_STAT_AREA] / (h * w)
    if area < 0.02 or area > 0.95:
        raise CutoutError(f"no clear mask region: the largest region that stands out covers {area:.0%} of the picture")
    region = _fill_holes(region)
    return cv2.GaussianBlur(region.astype(np.float32), (0, 0), max(0.7, 0.0015 * max(h, w)))


def _fill_holes(region: np.ndarray) -> np.ndarray:
    """The region plus every background pixel the picture's border cannot reach."""
    padded = np.pad(region, 1)
    reach = padded.copy()
    cv2.floodFill(reach, np.zeros((reach.shape[0] + 2, reach.shape[1] + 2), np.uint8), (0, 0), 2)
    return (reach[1:-1, 1:-1] != 2).astype(np.uint8)


def read_anchors(anchors: str | Path | dict) -> dict[str, np.ndarray]:
    """The six anchors (a JSON file or a dict {"nose_top": [x, y], ...}), in picture pixels."""
    if not isinstance(anchors, dict):
        try:
            anchors = json.loads(Path(anchors).read_text())
        except OSError as exc:
            raise AnchorError(f"cannot read the anchors {anchors}: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AnchorError(f"the anchors file is not JSON: {exc}") from None
        if not isinstance(anchors, dict):
            raise AnchorError("the anchors file must hold an object {\"nose_top\": [x, y], ...}")
    missing = [k for k in ANCHORS if k not in anchors]
    if missing:
        raise AnchorError(f"missing anchor {missing[0]!r} (need {', '.join(ANCHORS)})")
    points = {}
    for key in ANCHORS:
        value = anchors[key]
        ok = isinstance(value, (list, tuple)) and len(value) == 2
        ok = ok and all(isinstance(c, (int, float)) and not isinstance(c, bool) and np.isfinite(c) for c in value)
        if not ok:
            raise AnchorError(f"anchor {key!r} must be [x, y] in pixels, got {value!r}")
        points[key] = np.array(value, np.float64)
    return points


def check_anchors(points: dict[str, np.ndarray], shape: tuple[int, ...]) -> None:
    """Inside the picture, and in a possible arrangement (x right, y down; left = the picture's left)."""
    h, w = shape[:2]
    for key, (x, y) in points.items():
        if not (0 <= x <= w and 0 <= y <= h):
            raise AnchorError(f"anchor {key!r} ({x:g}, {y:g}) is outside the {w}x{h} picture")
    nose, chin = points["nose_top"], points["chin_bottom"]
    height = chin[1] - nose[1]
    if height <= 0:
        raise AnchorError("chin_bottom must be below nose_top")
    mid_x = (nose[0] + chin[0]) / 2
    order = [("left_ear", points["left_ear"][0]), ("left_cheek", points["left_cheek"][0]), ("the midline (nose_top, chin_bottom)", mid_x),
             ("right_cheek", points["right_cheek"][0]), ("right_ear", points["right_ear"][0])]  # fmt: skip
    for (a, xa), (b, xb) in zip(order, order[1:]):
        if not xa < xb:
            raise AnchorError(f"{a} must be left of {b}")
    for key in ("left_cheek", "right_cheek"):
        if not nose[1] < points[key][1] < chin[1]:
            raise AnchorError(f"{key} must be below nose_top and above chin_bottom")
    for key in ("left_ear", "right_ear"):
        if not nose[1] - 0.25 * height <= points[key][1] <= chin[1]:
            raise AnchorError(f"{key} must lie between the heights of nose_top and chin_bottom")


def _check_on_mask(points: dict[str, np.ndarray], alpha: np.ndarray) -> None:
    solid = (alpha >= 0.5).astype(np.uint8)
    distance = cv2.distanceTransform(1 - solid, cv2.DIST_L2, 3)
    ys, xs = np.nonzero(solid)
    size = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    h, w = alpha.shape
    for key, (x, y) in points.items():
        off = distance[min(int(y), h - 1), min(int(x), w - 1)]
        if off > 0.08 * size:
            raise AnchorError(f"anchor {key!r} ({x:g}, {y:g}) is not on the mask: {off:.0f} px outside its outline")


# -- the warp --------------------------------------------------------------------------------


def warp_to_template(bgr: np.ndarray, alpha: np.ndarray, points: dict[str, np.ndarray], fam: Family,
                     scale: int = TEXTURE_SCALE) -> np.ndarray:  # fmt: skip
    """The picture in template space: (scale*TEMPLATE_H, scale*TEMPLATE_W, 4) BGRA uint8, by a
    thin-plate spline through the anchors and the cut-out's box corners (template -> picture,
    so each template pixel samples the picture once)."""
    target = template_anchors(fam)
    solid = alpha >= 0.5
    ys, xs = np.nonzero(solid)
    # Continuous picture coordinates: pixel (i, j) covers [i, i+1) x [j, j+1); its centre is i + 0.5.
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    u0, v0, u1, v1 = target["box"]
    src = [target[k] for k in ANCHORS] + [(u0, v0), (u1, v0), (u0, v1), (u1, v1)]
    dst = [points[k] + 0.5 for k in ANCHORS] + [(x0, y0), (x1, y0), (x0, y1), (x1, y1)]
    to_picture = _thin_plate(np.array(src), np.array(dst))
    _check_no_fold(to_picture, (u0, v0, u1, v1))

    out_w, out_h = scale * TEMPLATE_W, scale * TEMPLATE_H
    # Sample a picture about twice the output's resolution (linear sampling does not average).
    shrink = min(1.0, 2 * out_w / max(x1 - x0, 1), 2 * out_h / max(y1 - y0, 1))
    picture = np.dstack([bgr, np.round(alpha * 255).astype(np.uint8)])
    if shrink < 1:
        picture = cv2.resize(picture, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
    picture = bleed(picture)  # the background's colour never leaks in at the rim
    gv, gu = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
    uv = np.stack([gu.ravel() / (out_w - 1), gv.ravel() / (out_h - 1)], 1)
    xy = (to_picture(uv).reshape(out_h, out_w, 2) * shrink - 0.5).astype(np.float32)  # -> pixel indices
    texture = cv2.remap(picture, xy[..., 0], xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if (texture[..., 3] >= 128).sum() < 0.05 * texture[..., 3].size:
        raise AnchorError("the anchors put almost none of the mask inside the template")
    return bleed(texture)


def _check_no_fold(to_picture, box) -> None:
    """The warp must keep its orientation everywhere on the template (else the anchors are
    inconsistent with each other: the picture would be folded over itself)."""
    u0, v0, u1, v1 = box
    n = 24
    gu, gv = np.meshgrid(np.linspace(u0, u1, n + 1), np.linspace(v0, v1, n + 1))
    xy = to_picture(np.stack([gu.ravel(), gv.ravel()], 1)).reshape(n + 1, n + 1, 2)
    dxu, dxv = xy[:-1, 1:] - xy[:-1, :-1], xy[1:, :-1] - xy[:-1, :-1]
    det = dxu[..., 0] * dxv[..., 1] - dxu[..., 1] * dxv[..., 0]
    if (det <= 0.02 * np.abs(det).mean()).any():
        raise AnchorError("the anchors are in an impossible arrangement: the picture would fold over itself")


# -- the family file -------------------------------------------------------------------------


def like_family(ref: str) -> Family:
    """--like: a family name (built-in, case-insensitive, or from $MASKGEN_MASKS) or a family file."""
    try:
        if looks_like_path(ref):
            return register(ref)
        return family(ref.lower() if is_builtin(ref.lower()) else ref)
    except ValueError as exc:  # FamilyError included: a broken family file
        raise TemplateError(f"--like: {exc}") from None


def mean_color(bgr: np.ndarray, alpha: np.ndarray) -> str:
    b, g, r = (bgr[alpha >= 0.5].mean(0) if (alpha >= 0.5).any() else bgr.reshape(-1, 3).mean(0)).round().astype(int).tolist()
    return f"#{r:02x}{g:02x}{b:02x}"


def new_family(
    image: str | Path,
    out: str | Path,
    anchors: str | Path | dict,
    *,
    like: str = "surgical",
    name: str | None = None,
    straps: str = "ear_loops",
    overwrite: bool = False,
) -> dict:
    """Write OUT (a family file) and OUT's .png (the texture, BGRA in template space) from a
    front-view picture of a mask and its six anchors. Returns the family file's content."""
    from maskgen.masks.families import _NAME, STRAPS

    out = Path(out)
    if out.suffix.lower() != ".json":
        raise TemplateError(f"-o must name a .json family file, got {out}")
    texture_path = out.with_suffix(".png")
    name = name or out.stem
    if not _NAME.fullmatch(name) or name.lower().endswith(".json"):
        raise TemplateError(f"family name {name!r} must be {_NAME_CHARS}" + ("" if name != out.stem else " (or pass --name)"))
    if is_builtin(name.lower()):
        raise TemplateError(f"family name {name!r} is a built-in family's; choose another with --name")
    if straps not in STRAPS:
        raise TemplateError(f"--straps must be one of {', '.join(STRAPS)}, got {straps!r}")
    if Path(image).absolute() == texture_path.absolute():
        raise TemplateError(f"the texture {texture_path} would overwrite the picture; choose another -o")
    for path in (out, texture_path):
        if path.exists() and not overwrite:
            raise OutputExists(f"{path} exists (pass --overwrite to replace it)")
    fam = like_family(like)

    points = read_anchors(anchors)
    bgr, alpha = read_picture(image)
    check_anchors(points, bgr.shape)
    shrink = min(1.0, _WORK_SIDE / max(bgr.shape[:2]))
    if shrink < 1:  # a big photo: cut out and warp a smaller copy (the texture is small)
        h, w = bgr.shape[:2]
        size = (round(w * shrink), round(h * shrink))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        alpha = None if alpha is None else cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
        factor = np.array([size[0] / w, size[1] / h])
        points = {k: (p + 0.5) * factor - 0.5 for k, p in points.items()}
    if alpha is None:
        alpha = cut_out(bgr)
    elif (alpha >= 0.5).sum() < 0.01 * alpha.size:
        raise CutoutError("no clear mask region: the picture's alpha is almost all transparent")
    _check_on_mask(points, alpha)
    texture = warp_to_template(bgr, alpha, points, fam)

    data = {
        "name": name,
        "description": f"From the picture {Path(image).name}, fitted like {fam.name}",
        "like": fam.name,
        "fit": {k: getattr(fam.fit, k) for k in fam.fit.__dataclass_fields__},
        "outline": "texture",
        "relief": [],
        "straps": straps,
        "colors": {mean_color(bgr, alpha): 1},
        "patterns": {"plain": 1},
        "texture": texture_path.name,
    }
    ok, png = cv2.imencode(".png", texture)
    if not ok:
        raise TemplateError("cannot encode the texture as PNG")
    try:
        write_atomic(texture_path, png.tobytes())
        write_atomic(out, (json.dumps(data, indent=2) + "\n").encode())
    except OSError as exc:
        raise TemplateError(f"cannot write {out}: {exc.strerror or exc}") from None
    return data
