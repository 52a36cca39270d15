"""A cheap quality check (QA) of one face's mask render: a few measured signals, and the
checks that turn them into reasons to reject the render.

The signals (every one a float; `QA_SIGNALS` lists them in order):

    qa_coverage   covered fraction of the landmarks' bounding box (as Rendered.coverage)
    qa_eyes       fraction of the 12 eye landmarks (36-47) whose pixel the mask covers
    qa_spill      the mask's pixels outside the face outline (jaw + nose bridge, grown by
                  15%), as a fraction of the landmarks' bounding box (relative to the box,
                  not to the mask: the thin straps of a small mask worn on the chin would
                  weigh too much)
    qa_outside    fraction of the landmarks' bounding box outside the image
    qa_shape      RMS distance of the landmarks from dlib's mean face shape after the best
                  similarity fit (Procrustes), relative to the landmarks' RMS radius
                  (0 = the mean face exactly, 1 = no resemblance: a scrambled set is ~1)
    qa_eye_scale  distance between the eye centres / sqrt(area of the reference box): the
                  image for an aligned crop (the default), the detector's box for a photo
    qa_face       faceness of the pixels at the landmarks: a linear model's logit on the
                  image gradients' structure tensor (orientation, coherence, energy) in
                  8x8 cells of a 32x32 landmark-aligned view of the face (> 0: a face). NaN when no image is given. The shape prior of
                  dlib's predictor makes it return a plausible face shape on anything (a
                  wall, fur, noise): only the pixels tell such a crop from a face.

The mean shape and the faceness model are in assets/faces/mean_shape68.json (how they were
made is written in the file). Cost on one core, a 150x150 face: ~0.02 ms without the image,
~0.045-0.05 ms with qa_face (was 0.03 and 0.09-0.10: the counts, sums, the spill's AND and
the faceness features are compiled numba kernels now, the same values to float rounding;
the mask counts run over row slices with int32 counts, which vectorise; cv2 still draws the
outline and samples the face's view). numpy, cv2 and numba load on first use, so that the CLI
and the schemas can read QA_SIGNALS and parse thresholds without them; QA_FIELDS loads pyarrow."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from functools import cache

from maskgen.assets import assets_dir

QA_SIGNALS = ("qa_coverage", "qa_eyes", "qa_spill", "qa_outside", "qa_shape", "qa_eye_scale", "qa_face")
_EYE_POINTS = 12
_HULL_INDEX = (*range(17), 27)  # the face outline: jaw (ear to ear through the chin), then the nose bridge's top
np = None  # numpy, for the compiled kernels: set by _kernels()
_HULL_GROW = 0.15  # the outline, grown about the landmarks' centre: a good mask's rim stays inside


def __getattr__(name: str):
    """QA_FIELDS, built on first use: pyarrow loads only when a schema needs it."""
    if name == "QA_FIELDS":
        import pyarrow as pa

        return [(signal, pa.float32()) for signal in QA_SIGNALS]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class QAThresholds:
    """Where each check fails (min_x / max_x: qa_x below / above it fails). Calibrated on the 55
    sample chips with every mask family and wear at 150x150, 250x250 and as 112x96 crops, on 43
    faces in photos, and against renders from broken landmarks (shifted by 30% of the face
    width, shrunk x0.5, scrambled) and on crops that are not faces; tests/test_quality.py."""

    min_coverage: float = 0.04  # good renders: >= 0.064 (worn on the chin covers least); below: hardly a mask
    max_coverage: float = 0.80  # good renders: <= 0.63 (worn high); above: the mask hides the face
    max_eyes: float = 0.0  # fraction of the 12 eye points covered: 0 on every good render (the eye clamp)
    max_spill: float = 0.08  # good: <= 0.024 on the chips, <= 0.046 on turned faces; a mask slid 30% of the face off: >= 0.1
    max_outside: float = 0.15  # good: <= 0.113 (112x96 crops cut the jaw off); shifted down: >= 0.22, sideways: ~0.2
    max_shape: float = 0.45  # faces: <= 0.17 on the chips, <= 0.35 on turned faces in photos; scrambled: >= 0.98
    min_eye_scale: float = 0.22  # aligned crops: 0.325-0.413, faces in photos (detector box): 0.30-0.48; shrunk x0.5: <= 0.19
    max_eye_scale: float = 0.70  # eyes too far apart for the crop or box: landmarks blown up
    min_face: float = 0.0  # faceness: chips >= 2.3, held-out faces >= 1.4; non-faces, shifted or shrunk landmarks: < 0 but a few %

    @classmethod
    def parse(cls, spec: str) -> QAThresholds:
        """"default" or "" -> the defaults; "key=value,key=value" overrides those fields."""
        spec = (spec or "").strip()
        if spec.lower() in ("", "default"):
            return cls()
        names = [f.name for f in fields(cls)]
        values = {}
        for part in spec.split(","):
            key, sep, value = (s.strip() for s in part.partition("="))
            if key not in names:
                raise ValueError(f"qa thresholds: unknown key {key!r} (valid keys: {', '.join(names)})")
            try:
                number = float(value) if sep else math.nan
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise ValueError(f"qa thresholds: {key} needs a number, got {value!r} (as in {key}=0.1)")
            values[key] = number
        return replace(cls(), **values)


def reasons(signals: dict, thresholds: QAThresholds | None = None) -> list[str]:
    """The failed checks, in words; empty: the render passes. A signal that is missing or
    NaN (qa_face without an image) is not checked."""
    t = thresholds or QAThresholds()
    get = lambda key: _finite(signals.get(key))  # noqa: E731
    failed = []
    coverage = get("qa_coverage")
    if coverage is not None and coverage < t.min_coverage:
        failed.append(f"mask covers too little of the face ({coverage:.0%} of the landmark box)")
    if coverage is not None and coverage > t.max_coverage:
        failed.append(f"mask covers too much of the face ({coverage:.0%} of the landmark box)")
    eyes = get("qa_eyes")
    if eyes is not None and eyes > t.max_eyes:
        failed.append(f"eyes covered ({round(eyes * _EYE_POINTS)} of {_EYE_POINTS} eye points)")
    spill = get("qa_spill")
    if spill is not None and spill > t.max_spill:
        failed.append(f"mask leaves the face outline ({spill:.0%} of the landmark box beyond it)")
    outside = get("qa_outside")
    if outside is not None and outside > t.max_outside:
        failed.append(f"face runs off the image ({outside:.0%} of the landmark box)")
    shape = get("qa_shape")
    if shape is not None and shape > t.max_shape:
        failed.append(f"landmarks are not a face shape (deviation {shape:.2f})")
    scale = get("qa_eye_scale")
    if scale is not None and scale < t.min_eye_scale:
        failed.append(f"face too small for the crop (eye distance {scale:.2f} of its size)")
    if scale is not None and scale > t.max_eye_scale:
        failed.append(f"face too large for the crop (eye distance {scale:.2f} of its size)")
    face = get("qa_face")
    if face is not None and face < t.min_face:
        failed.append(f"not a face at the landmarks (faceness {face:.1f})")
    return failed


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@cache
def reference() -> dict:
    """The mean shape (68 complex points, centred, unit norm) and the faceness model."""
    import numpy as np

    data = json.loads((assets_dir() / "faces" / "mean_shape68.json").read_text())
    points = np.array(data["points"], np.float64)
    model = data.get("face_model")
    eye_axis = np.zeros(68, np.complex128)
    eye_axis[36:42], eye_axis[42:48] = -1 / 6, 1 / 6
    ref = {
        "mean": points[:, 0] + 1j * points[:, 1],
        "average": np.full(68, 1 / 68, np.complex128),  # z . average = the landmarks' centre
        "eye_axis": eye_axis,  # z . eye_axis = the right eye's centre - the left eye's
        "hull": np.array(_HULL_INDEX, np.intp),
        "model": None,
    }
    if model:
        ref["model"] = {
            "size": int(model["size"]),
            "cell": int(model["cell"]),
            "region": tuple(float(v) for v in model["region"]),
            "weights": np.array(model["weights"], np.float32),
            "bias": float(model["bias"]),
        }
        weights = ref["model"]["weights"].reshape(3, -1)  # orientation (2), log energy, per cell
        n = weights.shape[1]
        ref["model"]["tensor_weights"] = np.stack([weights[0], -weights[0], 2 * weights[1]], 1).ravel()
        ref["model"]["energy_weights"] = np.ascontiguousarray(weights[2])
        ref["model"]["energy_sum"] = float(weights[2].sum())
        ref["model"]["ones"] = np.full(n, 1 / n, np.float32)
        ref["model"]["split_weights"] = tuple(np.ascontiguousarray(row, np.float64) for row in weights)
    ref["mean_xy"] = np.ascontiguousarray(np.stack([ref["mean"].real, ref["mean"].imag], 1))
    return ref


def measure(points, occlusion, image_shape: tuple, image=None, box=None) -> dict[str, float]:
    """The QA signals (module docstring) of one face's render.

    points: its 68 landmarks (x, y); occlusion: the render's HxW uint8 mask (255 = covered);
    image_shape: the photo's shape; image: the photo (BGR or grey), best before it was masked
    (the faceness model also learned masked faces, but scores them lower), for qa_face, which
    is NaN without it; box: (left, top, right, bottom) that qa_eye_scale is relative to,
    default the whole image (an aligned crop); pass the detector's box for a face in a photo.
    (Every count and sum in one compiled pass, the outline fill in cv2: numpy's per-call
    overhead on these small arrays was the cost.)"""
    import cv2
    import numpy as np

    ref = reference()
    p = points if isinstance(points, np.ndarray) and points.shape == (68, 2) and points.flags.c_contiguous else np.ascontiguousarray(points, np.float64).reshape(68, 2)
    h, w = image_shape[:2]
    hull = np.empty((len(_HULL_INDEX), 2), np.int32)
    stats = np.empty(16)
    if not _kernels().signals(p, occlusion, w, h, ref["mean_xy"], _HULL_GROW, hull, stats):
        return dict.fromkeys(QA_SIGNALS, math.nan)
    coverage, covered, shape, eye_distance, total, ar, ai, tr, ti, bw, bh, inside, gx0, gy0, gx1, gy1 = stats.tolist()
    gx0, gy0, gx1, gy1 = int(gx0), int(gy0), int(gx1), int(gy1)

    # the mask outside the face outline grown about the landmarks' centre: counted on the
    # grown landmark box only (it holds the grown outline)
    spill = 0.0
    if total:
        within = 0
        if gx1 > gx0 and gy1 > gy0:
            region = np.zeros((gy1 - gy0, gx1 - gx0), np.uint8)
            # the outline is monotone in y (each row crosses it twice): the convex fill draws it right, 2x faster
            cv2.fillConvexPoly(region, hull, 255, cv2.LINE_8, shift=4)
            within = _kernels().count_both(region, occlusion[gy0:gy1, gx0:gx1])
        spill = (total - within) / (bw * bh)

    bx0, by0, bx1, by1 = box if box is not None else (0, 0, w, h)
    return {
        "qa_coverage": coverage,
        "qa_eyes": covered / _EYE_POINTS,
        "qa_spill": spill,
        "qa_outside": 1.0 - inside / (bw * bh),
        "qa_shape": shape,
        "qa_eye_scale": eye_distance / math.sqrt(max((bx1 - bx0) * (by1 - by0), 1)),
        "qa_face": faceness(image, complex(ar, ai), complex(tr, ti)) if image is not None else math.nan,
    }


def _signals(p, occlusion, w, h, mean, grow, hull, stats):
    """measure's arithmetic (compiled by _kernels): False when the landmarks' centre is not
    finite; else stats = coverage, eye points covered, shape, eye distance, mask pixels,
    a (re, im), t (re, im), box width and height, box area inside the image, grown box
    (x0, y0, x1, y1), and hull = the grown outline with 4 fractional bits."""
    points = p
    p = np.empty((68, 2))  # float64, whatever the landmarks' type
    for k in range(68):
        p[k, 0], p[k, 1] = points[k, 0], points[k, 1]
    tr = ti = 0.0
    for k in range(68):  # the landmarks' centre (terms as numpy's vdot with 1/68)
        tr += p[k, 0] * (1 / 68)
        ti += p[k, 1] * (1 / 68)
    if not (math.isfinite(tr) and math.isfinite(ti)):
        return False
    x0 = x1 = p[0, 0]
    y0 = y1 = p[0, 1]
    for k in range(1, 68):
        x, y = p[k, 0], p[k, 1]
        x0, x1 = (x if x < x0 else x0), (x if x > x1 else x1)
        y0, y1 = (y if y < y0 else y0), (y if y > y1 else y1)
    bw, bh = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    inside = max(min(x1, w) - max(x0, 0.0), 0.0) * max(min(y1, h) - max(y0, 0.0), 0.0)

    # coverage of the landmark box, exactly as the renderer reports it (numpy's slice rules)
    r0, r1 = _slice(math.floor(y0), math.ceil(y1), h)
    c0, c1 = _slice(math.floor(x0), math.ceil(x1), w)
    count = 0
    for y in range(r0, r1):
        count += _count_nonzero(occlusion[y, c0:c1])
    size = (r1 - r0) * (c1 - c0)
    coverage = count / size if size > 0 else 0.0

    covered = 0  # eye points under the mask (those inside the image)
    for k in range(36, 48):
        xi, yi = math.floor(p[k, 0] + 0.5), math.floor(p[k, 1] + 0.5)
        if 0 <= xi < w and 0 <= yi < h and occlusion[yi, xi]:
            covered += 1

    # similarity (Procrustes) fit of the mean shape, in complex numbers: z ~ a * mean + t
    norm2 = ar = ai = 0.0
    for k in range(68):
        zr, zi = p[k, 0] - tr, p[k, 1] - ti
        norm2 += zr * zr + zi * zi
        ar += mean[k, 0] * zr + mean[k, 1] * zi  # conj(mean) * zc
        ai += mean[k, 0] * zi - mean[k, 1] * zr
    shape = math.sqrt(max(0.0, 1.0 - (ar * ar + ai * ai) / norm2)) if norm2 > 1e-12 else 1.0
    er = ei = 0.0  # right eye's centre - left eye's
    for k in range(6):
        er += p[42 + k, 0] - p[36 + k, 0]
        ei += p[42 + k, 1] - p[36 + k, 1]
    eye_distance = math.hypot(er / 6, ei / 6)

    total = 0
    for y in range(occlusion.shape[0]):
        total += _count_nonzero(occlusion[y])
    g = 1 + grow
    gx0 = max(math.floor(tr + (x0 - tr) * g), 0)
    gy0 = max(math.floor(ti + (y0 - ti) * g), 0)
    gx1 = min(math.ceil(tr + (x1 - tr) * g) + 1, w)
    gy1 = min(math.ceil(ti + (y1 - ti) * g) + 1, h)
    ox, oy = 16 * (g - 1) * tr + 16 * gx0, 16 * (g - 1) * ti + 16 * gy0
    for k in range(hull.shape[0]):
        j = k if k < 17 else 27  # the jaw, then the nose bridge's top
        hull[k, 0] = int(p[j, 0] * (16 * g) - ox)  # (truncated, as numpy's astype)
        hull[k, 1] = int(p[j, 1] * (16 * g) - oy)
    stats[0], stats[1], stats[2], stats[3], stats[4] = coverage, covered, shape, eye_distance, total
    stats[5], stats[6], stats[7], stats[8], stats[9], stats[10], stats[11] = ar, ai, tr, ti, bw, bh, inside
    stats[12], stats[13], stats[14], stats[15] = gx0, gy0, gx1, gy1
    return True


def _count_nonzero(row):
    """Non-zero bytes of a row (compiled by _kernels): a row slice and an int32 count, so
    that the loop vectorises (3x faster than indexing the 2-D mask with an int64 count)."""
    count = np.int32(0)
    for x in range(row.shape[0]):
        count += np.int32(1) if row[x] else np.int32(0)
    return count


def _count_both(a, b):
    """Pixels whose bitwise AND of a and b is non-zero, as cv2.countNonZero(cv2.bitwise_and(a,
    b)) (compiled by _kernels: one pass, no new array)."""
    count = 0
    for y in range(a.shape[0]):
        ra, rb = a[y], b[y]
        row = np.int32(0)
        for x in range(ra.shape[0]):
            row += np.int32(1) if ra[x] & rb[x] else np.int32(0)
        count += row
    return count


def _slice(start, stop, n):
    """Python's slice [max(0, start):stop] of a length-n axis, as (first, end)."""
    start = max(start, 0)
    if stop < 0:
        stop += n
    stop = min(max(stop, 0), n)
    start = min(start, n)
    return start, max(stop, start)


def _cells_logit(gx, gy, cell, w0, w1, w2, bias):
    """faceness from the view's gradients (compiled by _kernels): the structure tensor
    (gx^2, gy^2, gx gy) averaged over cell x cell blocks (as cv2.resize INTER_AREA), then
    the model: orientation (2 per cell, weighted by coherence) and log energy relative to
    the mean, dotted with the weights."""
    n = gx.shape[0] // cell
    cells = n * n
    t0 = np.empty(cells, np.float32)
    t1 = np.empty(cells, np.float32)
    t2 = np.empty(cells, np.float32)
    inv = np.float32(1.0 / (cell * cell))
    for r in range(n):
        for c in range(n):
            s0 = s1 = s2 = np.float32(0)
            for y in range(r * cell, (r + 1) * cell):
                for x in range(c * cell, (c + 1) * cell):
                    a, b = np.float32(gx[y, x]), np.float32(gy[y, x])
                    s0 += a * a
                    s1 += b * b
                    s2 += a * b
            k = r * n + c
            t0[k], t1[k], t2[k] = s0 * inv, s1 * inv, s2 * inv
    mean = 0.0
    for k in range(cells):
        mean += np.float64(t0[k] + t1[k])
    mean = mean / cells + 1e-6
    eps, floor = np.float32(1e-3 * mean), np.float32(0.05 * mean)
    orientation = level = weights = 0.0
    for k in range(cells):
        energy = t0[k] + t1[k]
        inv_e = np.float32(1) / (energy + eps)
        orientation += np.float64((t0[k] - t1[k]) * inv_e) * w0[k] + np.float64(2 * t2[k] * inv_e) * w1[k]
        level += math.log(np.float64(energy + floor)) * w2[k]
        weights += w2[k]
    return orientation + level - math.log(mean) * weights + bias


@cache
def _kernels():
    """The compiled kernels (numba loads only when a render is measured)."""
    from types import SimpleNamespace

    from maskgen.masks.geometry import jit

    global _slice, _count_nonzero, np
    import numpy as np  # the kernels' np (this module loads numpy lazily)

    _slice = jit(nogil=True)(_slice)
    _count_nonzero = jit(nogil=True)(_count_nonzero)
    return SimpleNamespace(signals=jit(nogil=True)(_signals), cells_logit=jit(nogil=True)(_cells_logit),
                           count_both=jit(nogil=True)(_count_both))


def face_view(image, a: complex, t: complex, size: int, region: tuple):
    """The image over `region` of the mean shape's frame (x0, x1, y0, y1) mapped through
    z = a * mean + t, as a size x size uint8 grey view. Point-sampled (bilinear), even where
    the face is much larger than the view: the model was fitted so, and held-out faces score
    better so than with the view low-passed first (cv2.pyrDown), which also costs more."""
    import cv2
    import numpy as np

    x0, x1, y0, y1 = region
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    ar, ai = a.real, a.imag
    ox, oy = x0 + 0.5 * sx, y0 + 0.5 * sy
    warp = np.array([[ar * sx, -ai * sy, ar * ox - ai * oy + t.real], [ai * sx, ar * sy, ai * ox + ar * oy + t.imag]])
    view = cv2.warpAffine(image, warp, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    if view.ndim == 3:
        view = cv2.cvtColor(view, cv2.COLOR_BGRA2GRAY if view.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return view


def view_cells(view, cell: int):
    """The structure tensor (gx^2, gy^2, gx gy) averaged over each cell x cell block of the
    view: (cells, 3) float32."""
    import cv2

    gx, gy = cv2.spatialGradient(view)  # Sobel 3x3, int16
    tensor = cv2.multiply(cv2.merge([gx, gy, gx]), cv2.merge([gx, gy, gy]), dtype=cv2.CV_32F)
    n = view.shape[0] // cell
    return cv2.resize(tensor, (n, n), interpolation=cv2.INTER_AREA).reshape(n * n, 3)


def view_features(view, cell: int):
    """Per cell of the view: the gradients' dominant orientation, weighted by how coherent it
    is (doubled angle: 2 numbers), and the log of the cell's gradient energy relative to the
    view's mean. Contrast and brightness cancel out."""
    import numpy as np

    c = view_cells(view, cell)
    energy = c[:, 0] + c[:, 1]
    mean = float(energy.mean()) + 1e-6
    inv = 1 / (energy + np.float32(1e-3 * mean))
    return np.concatenate([(c[:, 0] - c[:, 1]) * inv, 2 * c[:, 2] * inv, np.log(energy * np.float32(1 / mean) + np.float32(0.05))])


def faceness(image, a: complex, t: complex) -> float:
    """The faceness logit (qa_face) of the face z = a * mean + t in `image`: the model's
    weights . view_features + bias, the features and the dot in one compiled pass over the
    view's gradients. (cv2 samples the view and its gradients faster than a compiled loop
    on this machine's shared cores: tried.)"""
    import cv2

    model = reference()["model"]
    if model is None or abs(a) < 1e-6:
        return math.nan
    gx, gy = cv2.spatialGradient(face_view(image, a, t, model["size"], model["region"]))  # Sobel 3x3, int16
    w0, w1, w2 = model["split_weights"]
    return _kernels().cells_logit(gx, gy, model["cell"], w0, w1, w2, model["bias"])
