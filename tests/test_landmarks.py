"""Landmarks on real faces: against hand annotations, aligned vs detected, crop layouts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import WILD, aligned_files

from maskgen.faces.align import align_face, five_points
from maskgen.faces.landmarks import Landmarker, outer_eye_distance
from maskgen.faces.layouts import face_box, guess_layout
from maskgen.faces.models import ModelNotFound, model_path


def read_pts(path) -> np.ndarray:
    body = path.read_text().split("{")[1].split("}")[0]
    return np.array(body.split(), np.float32).reshape(-1, 2) - 1  # .pts files are 1-based


@pytest.mark.parametrize("name", ["takeo.ppm", "einstein.jpg", "breakingbad.jpg"])
def test_wild_landmarks_match_hand_annotations(landmarker, name):
    image = cv2.imread(str(WILD / "annotated" / name))
    truth = read_pts((WILD / "annotated" / name).with_suffix(".pts"))
    faces = landmarker.detect(image)
    errors = [np.linalg.norm(f.points - truth, axis=1).mean() / outer_eye_distance(truth) for f in faces]
    assert min(errors) < 0.10  # dlib is at 3-9 % of the outer-eye distance on these


def test_aligned_mode_matches_detector_on_chips(landmarker):
    """The crop-geometry box gives the same landmarks as running the detector."""
    errors = []
    for path in aligned_files():
        image = cv2.imread(str(path))
        detected = landmarker.detect(image)
        assert len(detected) >= 1, path
        aligned = landmarker.aligned(image).points
        errors.append(np.linalg.norm(aligned - detected[0].points, axis=1).mean() / outer_eye_distance(aligned))
    assert np.mean(errors) < 0.04 and np.max(errors) < 0.10


@pytest.mark.parametrize("template,size", [("sphereface", (96, 112)), ("arcface", (112, 112))])
def test_aligned_mode_on_recogniser_crops(chips, landmarker, template, size):
    """112x96 and 112x112 crops made from the chips: landmarks agree with the chip's, mapped."""
    errors = []
    for image, points in chips:
        crop, matrix = align_face(image, five_points(points), template)
        assert crop.shape[:2] == (size[1], size[0])
        assert guess_layout(*size) == template
        expected = cv2.transform(points[None].astype(np.float64), matrix)[0]
        found = landmarker.aligned(crop).points
        errors.append(np.linalg.norm(found - expected, axis=1).mean() / outer_eye_distance(expected))
    assert np.mean(errors) < 0.06


def test_wild_finds_every_face_largest_first(landmarker):
    faces = landmarker.detect(cv2.imread(str(WILD / "bald_guys.jpg")))
    assert len(faces) == 24
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
    assert areas == sorted(areas, reverse=True)
    assert landmarker.detect(cv2.imread(str(WILD / "dogs.jpg"))) == []


def test_small_faces_need_the_upsampled_pyramid(landmarker):
    image = cv2.imread(str(WILD / "2008_002470.jpg"))  # PASCAL VOC: 6 small faces
    assert len(Landmarker(upsample=0).detect(image)) < len(landmarker.detect(image)) == 6


def test_layout_boxes_and_bad_layout():
    for w, h in [(150, 150), (96, 112), (112, 112), (224, 224)]:
        left, top, right, bottom = face_box(w, h)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        assert abs((left + right) / 2 - w / 2) < 0.05 * w  # aligned faces are centred
    with pytest.raises(ValueError, match="unknown crop layout"):
        face_box(150, 150, "square")


def test_model_override(monkeypatch, tmp_path):
    monkeypatch.setenv("MASKGEN_LANDMARKS68", str(tmp_path / "missing.dat"))
    with pytest.raises(ModelNotFound, match="MASKGEN_LANDMARKS68"):
        model_path("landmarks68")
    monkeypatch.setenv("MASKGEN_LANDMARKS68", str(model_path("landmarks5")))
    assert model_path("landmarks68").name == "shape_predictor_5_face_landmarks.dat"


@pytest.fixture(scope="module")
def both_engines():
    return {engine: Landmarker(engine=engine) for engine in ("batched", "dlib")}


def test_both_engines_give_the_same_landmarks(both_engines, chips):
    """The batched engine is the default everywhere: it must be dlib's landmarks to the pixel,
    on aligned crops (one batch, and one by one) and on every face detected in wild photos."""
    batched, reference = both_engines["batched"], both_engines["dlib"]
    assert (batched.engine, reference.engine) == ("batched", "dlib")
    images = [image for image, _ in chips]
    in_one_batch = np.array([f.points for f in batched.aligned_batch(images)])
    assert np.array_equal(in_one_batch, np.array([reference.aligned(im).points for im in images]))
    assert np.array_equal(in_one_batch[3], batched.aligned(images[3]).points)
    photos = [cv2.imread(str(p)) for p in sorted(WILD.rglob("*")) if p.suffix in (".jpg", ".ppm", ".png")]
    for photo in photos:
        found, expected = batched.detect(photo), reference.detect(photo)
        assert [f.box for f in found] == [f.box for f in expected]
        assert all(np.array_equal(f.points, e.points) for f, e in zip(found, expected))
    assert sum(len(batched.detect(p)) for p in photos) >= 5


def test_unknown_engine():
    with pytest.raises(ValueError, match="unknown landmark engine 'fast'"):
        Landmarker(engine="fast")
