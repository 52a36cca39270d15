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

import cv2
import numpy as np

LUMA = np.array([0.114, 0.587, 0.299], np.float32)  # BGR luminance weights (Rec. 601, as cv2's grey)
NATURAL_SKIN = np.array([-0.245, -0.12, 0.331], np.float32)  # chi of skin (BGR): median of the sample chips
NATURAL_SPREAD = 0.14  # spread of chi that a natural photo reaches (a third of the aligned sample chips spread less)
LOW_SPREAD = 0.09  # below this spread a photo has less colour than any natural one (their 5th percentile)
PERSONAL_SKIN = 0.1  # how far one person's skin chi lies from NATURAL_SKIN (sample chips: p10-p90)
MAX_CAST = 0.4  # at most this much chromaticity added: a wrong skin estimate cannot paint a mask
_GREY = np.outer(np.ones(3, np.float32), LUMA)  # c -> (L, L, L)
_LUMA_ROW = LUMA[None]  # cv2.transform's 1x3 matrix: BGR -> luminance


def grey_grade() -> np.ndarray:
    """The matrix for a grey photo: every colour becomes its own luminance, B = G = R."""
    return _GREY.copy()


def _sample(bgr: np.ndarray, n: int) -> np.ndarray:
    """About n x n pixels of `bgr` on a regular grid (N x 3 float32): statistics need no more,
    and a strided view costs nothing (an area resize of a face costs ~0.1 ms)."""
    h, w = bgr.shape[:2]
    step = max(1, min(h, w) // n)
    return bgr[step // 2 :: step, step // 2 :: step].reshape(-1, 3).astype(np.float32)


def photo_grade(bgr: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The 3x3 BGR matrix for a mask on the face with 68 landmarks `points` in `bgr`
    (~0.05 ms: statistics of ~600 pixels on a grid, in a few cv2 calls)."""
    if _is_grey(bgr):
        return grey_grade()  # exactly: B = G = R stays true under the mask
    count, _, std = _chi_stats(bgr, 24)
    if count < 16:
        return np.eye(3, dtype=np.float32)  # a photo too dark or bright to tell: the mask as it is
    spread = float(np.sqrt(std @ std))
    skin = _skin_chromaticity(bgr, points)
    if skin is None:
        return _matrix(min((spread / LOW_SPREAD) ** 2, 1.0), np.zeros(3, np.float32))
    saturation = _saturation(spread, skin)
    cast = skin - saturation * NATURAL_SKIN
    cast -= (LUMA @ cast) * np.ones(3, np.float32)  # chromaticity only: the mask keeps its luminance
    size = float(np.sqrt(cast @ cast))  # less the skin tones of people (ruddy, olive...): not a cast
    cast *= max(0.0, 1 - PERSONAL_SKIN / size) if size > 0 else 0.0
    return _matrix(saturation, np.clip(cast, -MAX_CAST, MAX_CAST))


def _is_grey(bgr: np.ndarray) -> bool:
    """B = G = R everywhere (grey stored as colour: a grey video, a grey JPEG saved as RGB);
    a grid of pixels first, so a colour photo is told in microseconds."""
    sample = bgr[::7, ::7]
    if (sample[..., 0] != sample[..., 1]).any() or (sample[..., 1] != sample[..., 2]).any():
        return False
    b, g, r = cv2.split(bgr)
    return cv2.countNonZero(cv2.absdiff(b, g)) == 0 and cv2.countNonZero(cv2.absdiff(g, r)) == 0


def _saturation(spread: float, skin: np.ndarray) -> float:
    """s from two cues. A spread near 0 (grey, sepia, any one-tone photo) means no colour of
    its own. Otherwise paler skin than natural skin means a desaturated photo, unless the
    photo's colours spread as a natural photo's do: then the skin is paler from a cast (a
    blue cast cancels skin's warmth) and the photo keeps its saturation."""
    along = max(float(skin @ NATURAL_SKIN) / float(NATURAL_SKIN @ NATURAL_SKIN), 0.0)
    return min((spread / LOW_SPREAD) ** 2, max(along, spread / NATURAL_SPREAD), 1.0)


def _chi_stats(bgr: np.ndarray, n: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(how many, mean, std) of chi over about n x n pixels of `bgr` on a regular grid that
    are neither very dark nor clipped. Statistics need no more pixels, and a strided view
    costs nothing (an area resize of a face costs ~0.1 ms)."""
    h, w = bgr.shape[:2]
    step = max(1, min(h, w) // n)
    pixels = np.ascontiguousarray(bgr[step // 2 :: step, step // 2 :: step])
    grid = pixels.astype(np.float32)
    luma = cv2.transform(grid, _LUMA_ROW)
    usable = cv2.inRange(luma, 30, 240) & cv2.inRange(pixels, (0, 0, 0), (249, 249, 249))  # not clipped
    chi = cv2.divide(grid, cv2.merge([luma, luma, luma]) + np.float32(1e-3)) - np.float32(1)
    mean, std = cv2.meanStdDev(chi, mask=usable)
    return cv2.countNonZero(usable), mean.ravel().astype(np.float32), std.ravel().astype(np.float32)


def _skin_chromaticity(bgr: np.ndarray, points: np.ndarray) -> np.ndarray | None:
    """Mean chi of the cheeks and nose: between the jaw points 2 and 14, from the middle of
    the nose (29) down to its base (33)."""
    if not np.isfinite(points).all():
        return None
    ax, bx = points[2, 0].item(), points[14, 0].item()
    top, bottom = points[29, 1].item(), points[33, 1].item()
    h, w = bgr.shape[:2]
    x0, x1 = max(int(min(ax, bx)), 0), min(int(np.ceil(max(ax, bx))), w)
    y0, y1 = max(int(min(top, bottom)), 0), min(int(np.ceil(max(top, bottom))), h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    count, mean, _ = _chi_stats(bgr[y0:y1, x0:x1], 8)
    return mean if count >= 8 else None


def _matrix(saturation: float, cast: np.ndarray) -> np.ndarray:
    return (saturation * np.eye(3, dtype=np.float32) + (1 - saturation) * _GREY + np.outer(cast, LUMA)).astype(np.float32)
