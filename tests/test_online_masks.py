"""Online mask augmentation (maskgen.OnlineMasks) on the real sample faces: deterministic
per (seed, epoch, index), the configured share masked, the lower face covered and the eyes
free, grey stays grey, picklable for DataLoader workers."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

import maskgen
from maskgen.masks.online import OnlineMasks

MOUTH_NOSE_CHIN = [33, 51, 57, 62, 66, 8]
EYES = list(range(36, 48))


def changed_at(before: np.ndarray, after: np.ndarray, points: np.ndarray, indices) -> np.ndarray:
    """Per landmark: the largest change in a 3x3 window around it."""
    diff = cv2.absdiff(before, after)
    diff = diff.max(2) if diff.ndim == 3 else diff
    diff = cv2.dilate(diff, np.ones((3, 3), np.uint8))
    h, w = diff.shape
    xy = np.clip(np.round(points[indices]).astype(int), 0, [w - 1, h - 1])
    return diff[xy[:, 1], xy[:, 0]]


def test_the_public_api_exports_it():
    assert maskgen.OnlineMasks is OnlineMasks and "OnlineMasks" in maskgen.__all__


def test_deterministic_per_seed_epoch_and_index(chips):
    masks = OnlineMasks.parse(p=1.0, seed=3)
    image, points = chips[0]
    first, masked = masks(image, points, index=5, epoch=2)
    assert masked and not np.array_equal(first, image)
    assert np.array_equal(first, masks(image, points, index=5, epoch=2)[0])
    assert np.array_equal(first, pickle.loads(pickle.dumps(masks))(image, points, index=5, epoch=2)[0])
    others = {masks.spec(5, epoch) for epoch in range(6)} | {masks.spec(index, 2) for index in range(6)}
    assert len(others) >= 10  # another epoch or another sample: another mask
    assert OnlineMasks.parse(p=1.0, seed=4).spec(5, 2) != masks.spec(5, 2)


def test_the_configured_share_is_masked():
    for p in (0.0, 0.3, 0.5, 1.0):
        masks = OnlineMasks.parse(p=p, seed=1)
        share = np.mean([masks.spec(i, epoch=1) is not None for i in range(4000)])
        assert abs(share - p) < 0.03, (p, share)
    with pytest.raises(ValueError, match="between 0 and 1"):
        OnlineMasks(p=1.5)


@pytest.mark.parametrize("mask_type", ["surgical", "n95", "kn95", "cloth", "respirator"])
def test_lower_face_covered_and_eyes_free(chips, mask_type):
    masks = OnlineMasks.parse(p=1.0, seed=2, type=mask_type)
    for index, (image, points) in enumerate(chips[::5]):
        out, masked = masks(image, points, index=index)
        assert masked and out.shape == image.shape and out.dtype == np.uint8
        assert changed_at(image, out, points, MOUTH_NOSE_CHIN[:-1]).min() > 8, index  # mouth and nose tip under the mask
        assert changed_at(image, out, points, EYES).max() <= 3, index


def test_grey_stays_grey_and_options_apply(chips):
    image, points = chips[1]
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    masks = OnlineMasks.parse(p=1.0, seed=1, type="cloth", color="red")
    out, masked = masks(grey, points, index=0)
    assert masked and out.shape == grey.shape and changed_at(grey, out, points, [62]).min() > 8
    as_rgb, _ = masks(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), points, index=0)
    assert np.array_equal(as_rgb[..., 0], as_rgb[..., 2])  # grey stored as colour: a grey mask
    coloured, _ = masks(image, points, index=0)
    b, g, r = cv2.split(coloured.astype(int))
    lip = np.round(points[62]).astype(int)
    assert r[lip[1], lip[0]] > b[lip[1], lip[0]] + 30  # a red mask on the colour photo


def test_a_twin_and_unusable_landmarks(chips):
    image, points = chips[2]
    masks = OnlineMasks.parse(p=0.0, seed=1)  # p does not apply to twins
    original, twin = masks.pair(image, points, index=4)
    assert original is image and twin is not None and not np.array_equal(twin, image)
    collapsed = np.full((68, 2), 70.0, np.float32)  # every landmark on one point
    out, masked = OnlineMasks.parse(p=1.0)(image, collapsed, index=0)
    assert not masked and out is image
    assert masks.pair(image, None, index=0)[1] is None
