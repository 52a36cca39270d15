"""The photo's own colour, given to the mask: a mask's colours go through one 3x3 matrix, made
from the photo, so that a grey photo gets a grey mask, a desaturated one a paler mask, and a
tinted or sepia one a mask with the same cast.

The model: the photo's colours are s x natural colours + a cast. With L a colour's luminance
and chi = colour / L - 1 its chromaticity (a 3-vector with L's weights . chi = 0):
- s, the photo's saturation: the spread of chi over the whole photo against that of natural
  photos, and the skin's chi against natural skin's (1 for a natural photo, 0 for a grey one);
- the cast: the skin's chi (cheeks and nose, measured before the mask covers them) minus
  s x the chi of natural skin. A blue-cast photo's skin is bluer than skin: the cast is blue;
  a sepia photo has little spread (s small) and warm skin: the cast is the sepia tone.
A mask colour c becomes s c + (1 - s) L(c) + L(c) cast: linear in c, so one matrix carries it
(the renderer mixes its colour layers through that matrix at no extra cost)."""

from __future__ import annotations

import math

import numpy as np

from maskgen.masks.geometry import jit

LUMA = np.array([0.114, 0.587, 0.299], np.float32)  # BGR luminance weights (Rec. 601, as cv2's grey)
NATURAL_SKIN = np.array([-0.245, -0.12, 0.331], np.float32)  # chi of skin (BGR): median of the sample chips
NATURAL_SPREAD = 0.14  # spread of chi that a natural photo reaches (a third of the aligned sample chips spread less)
LOW_SPREAD = 0.09  # below this spread a photo has less colour than any natural one (their 5th percentile)
PERSONAL_SKIN = 0.1  # how far one person's skin chi lies from NATURAL_SKIN (sample chips: p10-p90)
MAX_CAST = 0.4  # at most this much chromaticity added: a wrong skin estimate cannot paint a mask
_GREY = np.outer(np.ones(3, np.float32), LUMA)  # c -> (L, L, L)


def grey_grade() -> np.ndarray:
    """The matrix for a grey photo: every colour becomes its own luminance, B = G = R."""
    return _GREY.copy()


def photo_grade(bgr: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The 3x3 BGR matrix for a mask on the face with 68 landmarks `points` in `bgr`
    (statistics of ~600 pixels on a grid, and the model above, in one compiled call: a few
    microseconds)."""
    if _is_grey(bgr):
        return grey_grade()  # exactly: B = G = R stays true under the mask
    out = np.empty((3, 3), np.float32)
    bgr = np.ascontiguousarray(bgr)  # the kernel reads flat rows
    _grade_kernel(bgr, *_skin_box(np.ascontiguousarray(points).reshape(68, 2), bgr.shape[0], bgr.shape[1]), out)
    return out


@jit(nogil=True)
def _grade_kernel(bgr, x0, y0, x1, y1, out):
    """photo_grade's model: the photo's chi spread, the skin's chi (over the box x0..x1,
    y0..y1 of the cheeks and nose; none when x1 <= x0), saturation and cast -> the matrix
    in out (the float32 numpy version's arithmetic, in float64)."""
    h, w = bgr.shape[:2]
    count, _, _, _, sb, sg, sr = _chi_kernel(bgr, 0, 0, w, h, 24)
    if count < 16:  # a photo too dark or bright to tell: the mask as it is
        for i in range(3):
            for j in range(3):
                out[i, j] = 1.0 if i == j else 0.0
        return
    spread = math.sqrt(sb * sb + sg * sg + sr * sr)
    lb, lg, lr = _LUMA_T
    nb, ng, nr = _NATURAL_SKIN_T
    cb = cg = cr = 0.0
    saturation = min((spread / LOW_SPREAD) ** 2, 1.0)
    skin = 0
    if x1 > x0:
        skin, kb, kg, kr, _, _, _ = _chi_kernel(bgr, x0, y0, x1, y1, 8)
    if skin >= 8:
        # s from two cues. A spread near 0 (grey, sepia, any one-tone photo) means no colour of
        # its own. Otherwise paler skin than natural skin means a desaturated photo, unless the
        # photo's colours spread as a natural photo's do: then the skin is paler from a cast (a
        # blue cast cancels skin's warmth) and the photo keeps its saturation.
        along = max((kb * nb + kg * ng + kr * nr) / (nb * nb + ng * ng + nr * nr), 0.0)
        saturation = min(saturation, max(along, spread / NATURAL_SPREAD), 1.0)
        cb, cg, cr = kb - saturation * nb, kg - saturation * ng, kr - saturation * nr
        luma = lb * cb + lg * cg + lr * cr
        cb, cg, cr = cb - luma, cg - luma, cr - luma  # chromaticity only: the mask keeps its luminance
        size = math.sqrt(cb * cb + cg * cg + cr * cr)  # less the skin tones of people (ruddy, olive...): not a cast
        keep = max(0.0, 1 - PERSONAL_SKIN / size) if size > 0 else 0.0
        cb = min(max(cb * keep, -MAX_CAST), MAX_CAST)
        cg = min(max(cg * keep, -MAX_CAST), MAX_CAST)
        cr = min(max(cr * keep, -MAX_CAST), MAX_CAST)
    # s I + (1 - s) GREY + cast x LUMA
    for i in range(3):
        c = cb if i == 0 else (cg if i == 1 else cr)
        for j in range(3):
            lj = lb if j == 0 else (lg if j == 1 else lr)
            out[i, j] = (saturation if i == j else 0.0) + (1 - saturation) * lj + c * lj


@jit(nogil=True)
def _skin_box(points, h, w):
    """The cheeks and nose: between the jaw points 2 and 14, from the middle of the nose (29)
    down to its base (33), clipped to the h x w photo; (0, 0, 0, 0) when there is none or a
    landmark is not finite. (Compiled: as Python floats it cost half the grade.)"""
    for k in range(points.shape[0]):
        if not (math.isfinite(points[k, 0]) and math.isfinite(points[k, 1])):
            return 0, 0, 0, 0
    ax, bx = np.float64(points[2, 0]), np.float64(points[14, 0])
    top, bottom = np.float64(points[29, 1]), np.float64(points[33, 1])
    x0, x1 = max(int(min(ax, bx)), 0), min(int(math.ceil(max(ax, bx))), w)
    y0, y1 = max(int(min(top, bottom)), 0), min(int(math.ceil(max(top, bottom))), h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return 0, 0, 0, 0
    return x0, y0, x1, y1


_LUMA_T = tuple(LUMA.tolist())  # numba freezes these tuples as constants
_NATURAL_SKIN_T = tuple(NATURAL_SKIN.tolist())


def _is_grey(bgr: np.ndarray) -> bool:
    """B = G = R everywhere (grey stored as colour: a grey video, a grey JPEG saved as RGB);
    one compiled pass that stops at the first coloured pixel."""
    return bool(_all_grey(bgr))


@jit(nogil=True)
def _all_grey(bgr):
    h, w = bgr.shape[:2]
    for y in range(0, h, 7):  # a grid first: a colour photo is told at once
        for x in range(0, w, 7):
            if bgr[y, x, 0] != bgr[y, x, 1] or bgr[y, x, 1] != bgr[y, x, 2]:
                return False
    for y in range(h):
        for x in range(w):
            if bgr[y, x, 0] != bgr[y, x, 1] or bgr[y, x, 1] != bgr[y, x, 2]:
                return False
    return True


@jit(nogil=True)
def _chi_kernel(bgr, x0, y0, x1, y1, n):
    """chi = colour / (luminance + 1e-3) - 1 in float32 (as the cv2 version computed it),
    summed in float64 (as cv2.meanStdDev). (Flat rows: a 3-D pixel index cost twice as much.)"""
    step = max(1, min(y1 - y0, x1 - x0) // n)
    wb, wg, wr = np.float32(0.114), np.float32(0.587), np.float32(0.299)
    eps, one = np.float32(1e-3), np.float32(1)
    count = 0
    s0 = s1 = s2 = q0 = q1 = q2 = 0.0
    flat = bgr.reshape(bgr.shape[0], -1)
    for y in range(y0 + step // 2, y1, step):
        row = flat[y]
        for x in range(x0 + step // 2, x1, step):
            b, g, r = row[3 * x], row[3 * x + 1], row[3 * x + 2]
            if b > 249 or g > 249 or r > 249:
                continue
            fb, fg, fr = np.float32(b), np.float32(g), np.float32(r)
            luma = fb * wb + fg * wg + fr * wr
            if not (luma >= 30 and luma <= 240):
                continue
            den = luma + eps
            c0, c1, c2 = np.float64(fb / den - one), np.float64(fg / den - one), np.float64(fr / den - one)
            count += 1
            s0 += c0
            s1 += c1
            s2 += c2
            q0 += c0 * c0
            q1 += c1 * c1
            q2 += c2 * c2
    if count == 0:
        return 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    m0, m1, m2 = s0 / count, s1 / count, s2 / count
    return (count, m0, m1, m2, math.sqrt(max(q0 / count - m0 * m0, 0.0)),
            math.sqrt(max(q1 / count - m1 * m1, 0.0)), math.sqrt(max(q2 / count - m2 * m2, 0.0)))


