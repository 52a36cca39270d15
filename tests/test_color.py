"""Colour fidelity on the real sample faces: grey photos stay grey (in every format, byte for
byte the same for a seed), grey stored as RGB stays R = G = B, and a mask takes the photo's
own saturation and colour cast."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import aligned_files
from PIL import Image
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.masks.grading import LUMA, grey_grade, photo_grade
from maskgen.masks.options import MaskOptions
from maskgen.masks.render import render_mask

FACES = aligned_files()[::11]  # one chip of each of the 5 identities
GREY_FORMATS = [".pgm", ".png", ".jpg", ".tif", ".bmp"]


def mask(paths, out, *extra):
    result = CliRunner().invoke(app, ["mask", *map(str, paths), "-o", str(out), "--aligned", "-q", "--seed", "3", *extra])
    assert result.exit_code == 0, result.output
    return pd.read_parquet(out / "manifest.parquet").set_index("src_path")


def equal_channels(path) -> bool:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


@pytest.fixture(scope="module")
def grey_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("grey")
    (root / "p").mkdir()
    for i, face in enumerate(FACES[:2]):
        grey = cv2.cvtColor(cv2.imread(str(face)), cv2.COLOR_BGR2GRAY)
        for ext in GREY_FORMATS:
            cv2.imwrite(str(root / "p" / f"g{i}{ext}"), grey)
        cv2.imwrite(str(root / "p" / f"rgb{i}.jpg"), cv2.merge([grey] * 3), [cv2.IMWRITE_JPEG_QUALITY, 92])
        cv2.imwrite(str(root / "p" / f"rgb{i}.png"), cv2.merge([grey] * 3))
        shutil.copy(face, root / "p" / f"c{i}.jpg")
    return root


def test_grey_photos_stay_grey_in_every_format_and_byte_for_byte(grey_tree, tmp_path):
    rows = mask([grey_tree], tmp_path / "a")
    again = mask([grey_tree], tmp_path / "b")
    assert (rows.status == "ok").all()
    for rel, row in rows.iterrows():
        out = tmp_path / "a" / row.out_path
        assert out.read_bytes() == (tmp_path / "b" / row.out_path).read_bytes(), rel  # deterministic
        name = rel.split("/")[-1]
        if name.startswith("g"):
            assert row.color_mode == "gray" and Image.open(out).mode == "L", rel  # one channel in, one out
            if name.endswith(".pgm"):
                assert out.read_bytes()[:2] == b"P5"
        elif name.startswith("rgb"):
            assert row.color_mode == "gray_rgb" and Image.open(out).mode == "RGB" and equal_channels(out), rel
        else:
            assert row.color_mode == "color" and not equal_channels(out), rel
    assert again.equals(again)


def test_the_masked_area_of_a_grey_photo_is_masked_not_left_alone(grey_tree, tmp_path):
    rows = mask([grey_tree / "p" / "g0.png"], tmp_path / "o")
    row = rows.iloc[0]
    before = cv2.imread(str(grey_tree / "p" / "g0.png"), cv2.IMREAD_UNCHANGED)
    after = cv2.imread(str(tmp_path / "o" / row.out_path), cv2.IMREAD_UNCHANGED)
    covered = cv2.imread(str(tmp_path / "o" / row.mask_path), cv2.IMREAD_UNCHANGED) == 255
    assert after.ndim == 2 and np.abs(after.astype(int) - before)[covered].mean() > 10


def tinted(bgr: np.ndarray, gains) -> np.ndarray:
    return np.clip(bgr.astype(np.float32) * np.float32(gains), 0, 255).astype(np.uint8)


def sepia(bgr: np.ndarray) -> np.ndarray:
    tone = np.array([0.55, 0.85, 1.1], np.float32)
    luma = bgr.astype(np.float32) @ LUMA
    return np.clip(luma[..., None] * tone / (tone @ LUMA), 0, 255).astype(np.uint8)


def chromaticity(pixels: np.ndarray) -> np.ndarray:
    """Mean BGR / luminance - 1 of a set of pixels."""
    mean = pixels.reshape(-1, 3).astype(np.float64).mean(0)
    return mean / (mean @ LUMA) - 1


def masked_chromaticity(bgr, points, spec, grade=None) -> np.ndarray:
    rendered = render_mask(bgr, points, spec, grade)
    inside = cv2.erode(rendered.occlusion, np.ones((5, 5), np.uint8)) == 255
    return chromaticity(rendered.image[inside])


@pytest.fixture(scope="module")
def faces(chips):
    return chips[::11]


SPECS = [MaskOptions.parse(type=t, color=c, pattern="plain").sample(1) for t, c in
         (("surgical", "#e8e8e8"), ("cloth", "#3a6fd8"), ("n95", "#f0f0f0"), ("kn95", "#202020"))]


def test_a_blue_cast_photo_gets_a_bluer_mask_and_a_warm_one_a_warmer_mask(faces):
    """The measured number: the mask's blue-minus-red chromaticity moves the same way as the
    photo's (never against it), on average by at least 40% of the photo's own shift. (From
    one photo, a pale face in warm light and a ruddy face in natural light look alike: a
    single face may move less.)"""
    ratios = []
    for bgr, points in faces:
        for spec in SPECS:
            plain = masked_chromaticity(bgr, points, spec)
            for gains in ((1.25, 1.0, 0.8), (0.8, 1.0, 1.2)):
                cast = tinted(bgr, gains)
                photo_shift = (chromaticity(cast) - chromaticity(bgr)) @ (1, 0, -1)
                mask_shift = (masked_chromaticity(cast, points, spec) - plain) @ (1, 0, -1)
                assert mask_shift * np.sign(photo_shift) > -0.02, (spec.mask_type, gains, photo_shift, mask_shift)
                ratios.append(mask_shift / photo_shift)
    assert np.mean(ratios) >= 0.4, np.round(ratios, 2)


def test_a_sepia_photo_gets_a_sepia_mask_and_a_grey_one_a_grey_mask(faces):
    for bgr, points in faces:
        tone = chromaticity(sepia(bgr))
        for spec in SPECS:
            mask_tone = masked_chromaticity(sepia(bgr), points, spec)
            cosine = mask_tone @ tone / (np.linalg.norm(mask_tone) * np.linalg.norm(tone) + 1e-9)
            assert cosine > 0.8, (spec.mask_type, mask_tone, tone)  # the mask's hue is the photo's sepia
            grey = cv2.merge([cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)] * 3)
            out = render_mask(grey, points, spec, grey_grade()).image
            assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
            measured = render_mask(grey, points, spec).image  # the photo's own grade finds it grey too
            assert np.abs(measured.astype(int)[..., 0] - measured[..., 2]).max() <= 1


def test_a_half_desaturated_photo_gets_a_paler_mask_and_a_natural_one_keeps_its_colours(faces):
    blue = MaskOptions.parse(type="cloth", color="#3a6fd8", pattern="plain").sample(2)
    ratios = []
    for bgr, points in faces:
        as_drawn = masked_chromaticity(bgr, points, blue, np.eye(3, dtype=np.float32))
        natural = masked_chromaticity(bgr, points, blue)
        assert np.abs(natural - as_drawn).max() < 0.25  # a natural photo: much the same colour
        luma = (bgr.astype(np.float32) @ LUMA)[..., None]
        pale = np.clip(luma + 0.5 * (bgr - luma), 0, 255).astype(np.uint8)
        ratios.append(np.linalg.norm(masked_chromaticity(pale, points, blue)) / np.linalg.norm(natural))
    assert max(ratios) < 0.9 and np.mean(ratios) < 0.75, np.round(ratios, 2)  # measured: 0.49..0.85, mean 0.65


def test_a_photo_too_dark_to_measure_keeps_the_masks_own_colours():
    dark = np.zeros((150, 150, 3), np.uint8)
    dark[..., 2] = 12  # a colour photo, but too dark to measure
    points = np.tile(np.array([[75.0, 75.0]], np.float32), (68, 1))
    assert np.allclose(photo_grade(dark, points), np.eye(3))  # too dark to tell: the mask as it is
