"""Any face size: aligned crops from 48 to 1024 px (made from the large wild photos) keep the
mouth, nose tip and chin covered and the eyes free, and the mask's shading is the face's
light, not its features showing through."""

from __future__ import annotations

from functools import cache

import cv2
import dlib
import numpy as np
import pytest
from conftest import WILD

from maskgen.faces.models import model_path
from maskgen.masks.families import FAMILIES
from maskgen.masks.options import MaskOptions
from maskgen.masks.render import render_mask

SIZES = (48, 64, 250, 512, 1024)
PHOTOS = ("obama.jpg", "Tom_Cruise_avp_2014_4.jpg")


@cache
def chip(photo: str, size: int) -> np.ndarray:
    """dlib's own aligned face chip of the photo's face at `size` px (the sample chips' layout)."""
    rgb = np.ascontiguousarray(cv2.imread(str(WILD / photo))[..., ::-1])
    face = dlib.get_frontal_face_detector()(rgb, 1)[0]
    shape = dlib.shape_predictor(str(model_path("landmarks5")))(rgb, face)
    return np.ascontiguousarray(dlib.get_face_chip(rgb, shape, size=size)[..., ::-1])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("photo", PHOTOS)
def test_every_family_covers_mouth_nose_and_chin_and_leaves_the_eyes_free(landmarker, photo, size):
    image = chip(photo, size)
    points = landmarker.aligned(image).points
    for k, family in enumerate(FAMILIES):
        occlusion = render_mask(image, points, MaskOptions.parse(type=family).sample(k)).occlusion

        def covered(i: int) -> bool:
            x, y = np.clip(np.round(points[i]).astype(int), 0, size - 1)
            return occlusion[y, x] == 255

        assert all(covered(i) for i in (30, 33, 51, 57, 62, 66, 8)), (family, size)  # nose, mouth, chin
        assert not any(covered(i) for i in range(36, 48)), (family, size)  # eyes


@pytest.mark.parametrize("size", (150, 512, 1024))
def test_the_face_does_not_show_through_the_mask(landmarker, size):
    """On a plain mask, what varies is the face's light and the relief, not its mouth and
    nostrils: inside the mask's mouth region the grey detail (high-pass) is far below the
    face's own."""
    image = chip("obama.jpg", size)
    points = landmarker.aligned(image).points
    spec = MaskOptions.parse(type="n95", color="#f0f0f0", pattern="plain").sample(1)
    out = render_mask(image, points, spec).image

    def detail(bgr):  # high-pass at a tenth of the face's width
        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
        return grey - cv2.GaussianBlur(grey, (0, 0), size / 40)

    x0, y0 = points[48].astype(int) - size // 40
    x1, y1 = points[54].astype(int) + size // 40
    y0, y1 = int(points[50, 1] - size / 30), int(points[57, 1] + size / 30)
    face, masked = detail(image)[y0:y1, x0:x1].std(), detail(out)[y0:y1, x0:x1].std()
    assert masked < 0.35 * face, (size, face, masked)
