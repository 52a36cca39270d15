"""Where a mask lies on a face: a grid of anchor points built from the 68 landmarks.

Template space is the unit square: u runs from the mask's left edge (on the face's left
cheek, image left for a frontal face) to its right edge, v from the top edge to the bottom
edge. Column u = 0.5 always sits on the face's midline (nose, mouth, chin), so under yaw
the centre seam moves with the nose and the far side narrows by itself."""

from __future__ import annotations

import math

import numpy as np

from maskgen.compiled import njit_cached
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
    (One compiled call: numpy's per-call overhead on these few points cost ~0.1 ms.)"""
    top_index = max(0.5, _wear(wear_shift, fit.top, _NOSE_EXPOSED_TOP, _CHIN_TOP))
    side = max(0.5, _wear(wear_shift, fit.side, _NOSE_EXPOSED_SIDE, _CHIN_SIDE))
    grid = np.empty((len(V), len(U), 2))
    _anchor_grid(np.ascontiguousarray(points, np.float64).reshape(68, 2), top_index, side,
                 float(fit.width), float(fit.bottom), float(fit.sag), grid)
    return grid


def jit(**options):
    """maskgen.compiled.njit_cached with numpy's error model (x / 0 is inf or nan, as in
    numpy, instead of a raised ZeroDivisionError): numba's Python model checks every
    division, which keeps loops from vectorising (4x slower here); every kernel guards its
    own divisions."""
    return njit_cached(**{"error_model": "numpy", **options})


@jit(nogil=True)
def _along_at(line, n, index):
    """(x, y) at a fractional position along a polyline of n points."""
    i = int(math.floor(index)) if math.isfinite(index) else 0
    i = min(max(i, 0), n - 2)
    t = index - i
    return line[i, 0] * (1 - t) + line[i + 1, 0] * t, line[i, 1] * (1 - t) + line[i + 1, 1] * t


@jit(nogil=True)
def _anchor_grid(pts, top_index, side, width, bottom_push, sag, grid):
    """anchor_grid's arithmetic (the numpy version's, node by node) into grid (4, 9, 2)."""
    e0x = e0y = e1x = e1y = 0.0
    for k in range(6):
        e0x += pts[36 + k, 0]
        e0y += pts[36 + k, 1]
        e1x += pts[42 + k, 0]
        e1y += pts[42 + k, 1]
    e0x, e0y, e1x, e1y = e0x / 6, e0y / 6, e1x / 6, e1y / 6
    ax, ay = e1x - e0x, e1y - e0y
    eye_dist = math.hypot(ax, ay) + 1e-6
    dx, dy = -ay / eye_dist, ax / eye_dist
    face_w = math.hypot(pts[16, 0] - pts[0, 0], pts[16, 1] - pts[0, 1])
    face_h = math.hypot(pts[27, 0] - pts[8, 0], pts[27, 1] - pts[8, 1])
    cx = cy = 0.0
    for k in range(27, 36):
        cx += pts[k, 0]
        cy += pts[k, 1]
    cx, cy = cx / 9, cy / 9

    midline = np.empty((8, 2))
    for k in range(8):
        midline[k, 0], midline[k, 1] = pts[_MIDLINE_T[k], 0], pts[_MIDLINE_T[k], 1]
    on_mid = np.empty((5, 2))
    for k in range(5):
        on_mid[k, 0], on_mid[k, 1] = _along_at(midline, 8, top_index + _V_STEPS_T[k] * (7 - top_index))
    bottom_start = min(side + 2.5, 7.0)

    top = np.empty((9, 2))
    bottom = np.empty((9, 2))
    jaw = np.empty((17, 2))
    for half in range(2):
        for k in range(17):
            j = k if half == 0 else 16 - k
            jaw[k, 0], jaw[k, 1] = pts[j, 0], pts[j, 1]
        for k in range(6):  # the top corner, then the bottom edge's 5 nodes, pushed outwards
            if k == 0:
                index, push = side, width * face_w
            else:
                s = _S_T[k - 1]
                index = bottom_start + s * (8.0 - bottom_start)
                push = width * face_w * (1 - s) + bottom_push * face_h * s
            px, py = _along_at(jaw, 17, index)
            ddx, ddy = px - cx, py - cy
            norm = math.sqrt(ddx * ddx + ddy * ddy) + 1e-6
            px, py = px + ddx / norm * push, py + ddy / norm * push
            if k == 0:
                kx, ky = px, py
            else:
                col = k - 1 if half == 0 else 9 - k
                bottom[col, 0], bottom[col, 1] = px, py
        for k in range(5):
            if half == 1 and k == 4:
                continue  # the midline node: once
            s = _S_T[k]
            bend = sag * face_h * _SIN_S_T[k]
            col = k if half == 0 else 8 - k
            top[col, 0] = kx * (1 - s) + on_mid[0, 0] * s + dx * bend
            top[col, 1] = ky * (1 - s) + on_mid[0, 1] * s + dy * bend

    # Keep the top edge clear of the eyes, whatever the wear shift and head roll.
    mx, my = (e0x + e1x) / 2, (e0y + e1y) / 2
    floor = -math.inf
    for k in range(8):
        floor = max(floor, (pts[_LIDS_T[k], 0] - mx) * dx + (pts[_LIDS_T[k], 1] - my) * dy)
    floor += 0.12 * eye_dist
    for c in range(9):
        lift = max(floor - ((top[c, 0] - mx) * dx + (top[c, 1] - my) * dy), 0.0)
        top[c, 0] += lift * dx
        top[c, 1] += lift * dy

    # Interior: straight columns, bent towards the real midline near the centre (nose, lips).
    for r in range(4):
        v = _V_T[r]
        if r == 0:
            mpx, mpy = top[4, 0], top[4, 1]
        elif r == 3:
            mpx, mpy = bottom[4, 0], bottom[4, 1]
        else:
            mpx, mpy = on_mid[r + 1, 0], on_mid[r + 1, 1]
        sx = top[4, 0] + v * (bottom[4, 0] - top[4, 0])
        sy = top[4, 1] + v * (bottom[4, 1] - top[4, 1])
        for c in range(9):
            bend = 1 - abs(2 * _U_T[c] - 1)
            grid[r, c, 0] = top[c, 0] + v * (bottom[c, 0] - top[c, 0]) + bend * (mpx - sx)
            grid[r, c, 1] = top[c, 1] + v * (bottom[c, 1] - top[c, 1]) + bend * (mpy - sy)


_MIDLINE_T, _LIDS_T = MIDLINE, tuple(_LIDS)  # tuples: numba freezes them as constants
_V_STEPS_T, _S_T, _SIN_S_T = tuple(_V_STEPS.tolist()), tuple(_S.tolist()), tuple(_SIN_S.tolist())
_U_T, _V_T = tuple(U.tolist()), tuple(V.tolist())
