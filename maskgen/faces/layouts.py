"""Aligned crop layouts: where the face sits in an aligned crop, so that aligned images
need no face detector (the detector is the slow step, and it often misses tight crops).

Each box is the dlib HOG detector's box for such a crop, as fractions of the crop's width
and height, measured on the sample chips (and on crops warped from them onto the SphereFace
and ArcFace templates)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy and cv2 load only when a crop is fitted: the CLI's --help reads LAYOUTS
    import numpy as np

# The 5-point alignment templates (eye centres, nose tip, mouth corners), in pixels.
SPHEREFACE_96x112 = (
    (30.2946, 51.6963),
    (65.5318, 51.5014),
    (48.0252, 71.7366),
    (33.5493, 92.3655),
    (62.7299, 92.2041),
)
ARCFACE_112x112 = tuple((x + 8.0, y) for x, y in SPHEREFACE_96x112)
# dlib's 150x150 face chips (dlib.get_face_chip, padding 0.25, what its ResNet takes): where the
# 5 points fall on average (1-based) on the 55 sample chips, which dlib cut
DLIB_150x150 = ((47.55, 47.18), (100.99, 47.93), (74.75, 76.91), (49.44, 103.16), (99.78, 103.2))

LAYOUT_BOXES = {
    "dlib": (0.093, 0.093, 0.895, 0.897),  # dlib.get_face_chip (padding 0.25), any square size
    "sphereface": (0.070, 0.267, 0.918, 0.994),  # 96 wide x 112 high, SphereFace template
    "arcface": (0.1315, 0.267, 0.858, 0.994),  # 112x112, ArcFace/insightface template
}
LAYOUTS = ("auto", *LAYOUT_BOXES)


def guess_layout(width: int, height: int) -> str:
    """The layout of a crop of this size: 96x112-shaped -> sphereface, 112x112 -> arcface,
    other squares -> dlib chips, anything else -> dlib (the box scales with the crop)."""
    if abs(width / height - 96 / 112) < 0.02:
        return "sphereface"
    if width == height == 112:
        return "arcface"
    return "dlib"


def face_box(width: int, height: int, layout: str = "auto") -> tuple[int, int, int, int]:
    """The face box (left, top, right, bottom) in pixels for an aligned crop."""
    if layout == "auto":
        layout = guess_layout(width, height)
    try:
        x0, y0, x1, y1 = LAYOUT_BOXES[layout]
    except KeyError:
        raise ValueError(f"unknown crop layout {layout!r} (choose from {', '.join(LAYOUTS)})") from None
    return round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)


def fit_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop to the target aspect ratio, then resize. Aligned crops of another size
    keep their geometry: a 112x112 ArcFace-template crop becomes exactly the 96x112
    SphereFace crop (the templates differ by an 8 px shift in x)."""
    import cv2

    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if w * height > h * width:  # too wide
        crop = round(h * width / height)
        image = image[:, (w - crop) // 2:(w - crop) // 2 + crop]
    elif w * height < h * width:  # too tall
        crop = round(w * height / width)
        image = image[(h - crop) // 2:(h - crop) // 2 + crop]
    shrinking = image.shape[0] > height
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
