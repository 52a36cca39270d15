"""Where a mask lies on a face: a grid of anchor points built from the 68 landmarks.

Template space is the unit square: u runs from the mask's left edge (on the face's left
cheek, image left for a frontal face) to its right edge, v from the top edge to the bottom
edge. Column u = 0.5 always sits on the face's midline (nose, mouth, chin), so under yaw
the centre seam moves with the nose and the far side narrows by itself."""

from __future__ import annotations

import numpy as np

from maskgen.masks.families import Fit

MIDLINE = (27, 28, 29, 30, 33, 51, 57, 8)  # nose bridge -> nose tip -> lips -> chin
U = np.linspace(0.0, 1.0, 9)  # anchor columns
V = np.linspace(0.0, 1.0, 4)  # anchor rows
_S = np.linspace(0.0, 1.0, 5)  # half a row: from the cheek (0) to the midline (1)
_SIN_S = np.sin(np.pi * _S)
_V_STEPS = np.concatenate([[0.0], V])  # the top edge's midline point, then one per row
_MIDLINE = list(MIDLINE)
_LIDS = [36, 39, 40, 41, 42, 45, 46, 47]

# wear_shift -> top edge on the midline / corner on the jaw: proper, nose exposed, on the chin
_SHIFTS = (0.0, 0.5, 1.0)
_NOSE_EXPOSED_TOP, _CHIN_TOP = 4.35, 6.3  # just below the nose base (33), below the lower lip (57)
_NOSE_EXPOSED_SIDE, _CHIN_SIDE = 3.0, 4.6


def along(points: np.ndarray, index) -> np.ndarray:
    """Points at fractional positions along a polyline (index may be an array)."""
    index = np.asarray(index, dtype=np.float64)
    i = np.minimum(np.maximum(np.floor(index).astype(int), 0), len(points) - 2)  # (np.clip is slow on tiny arrays)
    t = (index - i)[..., None]
    return points[i] * (1 - t) + points[i + 1] * t


def _outward(p: np.ndarray, centre: np.ndarray, distance) -> np.ndarray:
    d = p - centre
    return p + d / (np.sqrt((d * d).sum(-1, keepdims=True)) + 1e-6) * np.asarray(distance)[..., None]


def _wear(shift: float, proper: float, nose: float, chin: float) -> float:
    """Piecewise linear through _SHIFTS (proper, nose exposed, on the chin); worn high
    slides up from the proper position."""
    if shift < 0:
        return proper + 2.0 * shift
    if shift < _SHIFTS[1]:
        return proper + (nose - proper) * shift / _SHIFTS[1]
    return nose + (chin - nose) * min(1.0, (shift - _SHIFTS[1]) / (_SHIFTS[2] - _SHIFTS[1]))


def anchor_grid(points: np.ndarray, fit: Fit, wear_shift: float = 0.0) -> np.ndarray:
    """Image positions (len(V), len(U), 2) of the template's anchor nodes (U x V).
    (Small arrays: each step is one numpy call over every node it needs, for speed.)"""
    pts = points.astype(np.float64)
    jaw, midline = pts[:17], pts[_MIDLINE]
    eyes = pts[36:48].reshape(2, 6, 2).sum(1) / 6
    across = eyes[1] - eyes[0]
    eye_dist = float(np.hypot(*across)) + 1e-6
    down = np.array([-across[1], across[0]]) / eye_dist
    face_w, face_h = float(np.hypot(*(jaw[16] - jaw[0]))), float(np.hypot(*(pts[27] - pts[8])))
    centre = pts[27:36].sum(0) / 9

    top_index = max(0.5, _wear(wear_shift, fit.top, _NOSE_EXPOSED_TOP, _CHIN_TOP))
    side = max(0.5, _wear(wear_shift, fit.side, _NOSE_EXPOSED_SIDE, _CHIN_SIDE))
    bottom_start = min(side + 2.5, 7.0)
    # On the midline: the top edge's centre, then the interior rows (bent towards the midline).
    on_midline = along(midline, top_index + _V_STEPS * (len(MIDLINE) - 1 - top_index))
    nose_top = on_midline[0]

    # Both halves at once: the jaw as seen from the left and from the right cheek; each half
    # row runs from the cheek (s = 0) to the midline (s = 1). Jaw point 0: the top corner,
    # then the bottom edge's 5 nodes, pushed outwards from the face centre.
    cheeks = np.stack([jaw, jaw[::-1]])  # (2, 17, 2)
    index = np.concatenate([[side], bottom_start + _S * (8.0 - bottom_start)])
    push = np.concatenate([[fit.width * face_w], fit.width * face_w * (1 - _S) + fit.bottom * face_h * _S])
    rims = _outward(_along_both(cheeks, index), centre, push)  # (2, 6, 2)
    corners, bottoms = rims[:, :1], rims[:, 1:]
    sag = down * (fit.sag * face_h * _SIN_S)[:, None]
    tops = corners * (1 - _S[:, None]) + nose_top * _S[:, None] + sag  # (2, 5, 2)
    top = np.concatenate([tops[0], tops[1, -2::-1]])  # 9 columns, left to right
    bottom = np.concatenate([bottoms[0], bottoms[1, -2::-1]])

    # Keep the top edge clear of the eyes, whatever the wear shift and head roll.
    eye_mid = (eyes[0] + eyes[1]) / 2
    floor = ((pts[_LIDS] - eye_mid) @ down).max() + 0.12 * eye_dist
    top += np.maximum(floor - (top - eye_mid) @ down, 0)[:, None] * down

    # Interior: straight columns, bent towards the real midline near the centre (nose, lips).
    midline_pts = on_midline[1:]
    midline_pts[0], midline_pts[-1] = top[4], bottom[4]
    straight_mid = top[4] + V[:, None] * (bottom[4] - top[4])
    grid = top[None] + V[:, None, None] * (bottom - top)[None]
    return grid + _BEND * (midline_pts - straight_mid)[:, None, :]


_BEND = (1 - np.abs(2 * U - 1))[None, :, None]


def _along_both(cheeks: np.ndarray, index: np.ndarray) -> np.ndarray:
    """`along` for both jaw orientations at once: (2, len(index), 2)."""
    i = np.minimum(np.maximum(np.floor(index).astype(int), 0), cheeks.shape[1] - 2)
    t = (index - i)[None, :, None]
    return cheeks[:, i] * (1 - t) + cheeks[:, i + 1] * t
