"""The render QA (masks.quality) on real faces: every sample chip passes with every mask family
and way of wearing, at 150x150, 250x250 and as 112x96 crops; renders from broken landmarks
(shifted, shrunk, scrambled) and masks on crops that are not faces fail, each for its reason."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import WILD

from maskgen.assets import assets_dir
from maskgen.faces.layouts import fit_to
from maskgen.masks import quality
from maskgen.masks.families import FAMILIES
from maskgen.masks.options import MaskOptions, variant_seed
from maskgen.masks.quality import QA_SIGNALS, QAThresholds, measure, reasons
from maskgen.masks.render import RenderError, render_mask

WEARS = ("proper", "nose", "chin", "high")
MIRROR = [*range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, 35, 34, 33, 32, 31, 45, 44, 43, 42, 47, 46,
          39, 38, 37, 36, 41, 40, 54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]


def resized(image: np.ndarray, points: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """fit_to's crop and its landmarks, carried through the same centre crop and scale."""
    h, w = image.shape[:2]
    ox = oy = 0
    cw, ch = w, h
    if w * height > h * width:
        cw = round(h * width / height)
        ox = (w - cw) // 2
    elif w * height < h * width:
        ch = round(w * height / width)
        oy = (h - ch) // 2
    return fit_to(image, height, width), ((points - (ox, oy)) * (width / cw, height / ch)).astype(np.float32)


def check(image: np.ndarray, points: np.ndarray, spec, box=None) -> tuple[dict, list[str]]:
    rendered = render_mask(image, points, spec)
    signals = measure(points, rendered.occlusion, image.shape, image, box)
    assert signals["qa_coverage"] == pytest.approx(rendered.coverage, abs=1e-9)
    return signals, reasons(signals)


def spec(mask_type: str = "random", wear: str = "proper", key: str = ""):
    return MaskOptions.parse(type=mask_type, wear=wear).sample(variant_seed(0, key))


def test_the_mean_shape_is_the_procrustes_mean_of_the_sample_chips(chips):
    """The stored mean shape is what its file says: the chips' (and their mirrors') mean after
    similarity fits, centred, unit norm, eyes level."""
    shapes = []
    for _, p in chips:
        mirrored = p.astype(np.float64) * (-1, 1)
        for q in (p.astype(np.float64), mirrored[MIRROR]):
            z = q[:, 0] + 1j * q[:, 1]
            z -= z.mean()
            shapes.append(z / np.linalg.norm(z))
    mean = quality.reference()["mean"]
    assert abs(mean.sum()) < 1e-5 and np.linalg.norm(mean) == pytest.approx(1, abs=1e-5)
    eyes = mean[42:48].mean() - mean[36:42].mean()
    assert abs(eyes.imag) < 1e-5 < eyes.real  # level, left eye on the left
    rotated = [z * np.vdot(z, mean) / abs(np.vdot(z, mean)) for z in shapes]  # each fitted to the stored mean
    again = np.mean(rotated, 0)
    assert np.abs(again / np.linalg.norm(again) - mean).max() < 1e-4


@pytest.mark.parametrize("size", ["150x150", "250x250", "112x96"])
def test_every_chip_passes_with_every_family_and_wear(chips, size):
    failures = []
    for i, (image, points) in enumerate(chips):
        if size == "250x250":
            image, points = resized(image, points, 250, 250)
        elif size == "112x96":
            image, points = resized(image, points, 112, 96)
        for mask_type in FAMILIES:
            for wear in WEARS:
                signals, why = check(image, points, spec(mask_type, wear, f"{i}/{mask_type}/{wear}"))
                if why:
                    failures.append((i, mask_type, wear, why))
    assert not failures, failures[:10]


def test_faces_in_photos_pass_against_their_detector_box(landmarker):
    faces = 0
    for name in ("Tom_Cruise_avp_2014_4.jpg", "2008_002470.jpg"):
        photo = cv2.imread(str(WILD / name))
        for k, face in enumerate(landmarker.detect(photo)):
            _, why = check(photo, face.points, spec(key=f"{name}{k}"), box=face.box)
            assert why == [], (name, k, why)
            faces += 1
    assert faces == 7


@pytest.mark.parametrize("direction", [(1, 0), (-1, 0), (0, 1), (0, -1)], ids=["right", "left", "down", "up"])
def test_landmarks_shifted_by_30_percent_of_the_face_width_fail(chips, direction):
    for i, (image, points) in enumerate(chips):
        width = float(np.hypot(*(points[16] - points[0])))
        shifted = (points + np.float32(direction) * np.float32(0.3 * width)).astype(np.float32)
        signals, why = check(image, shifted, spec(key=str(i)))
        assert why, (i, signals)
        assert any(r.startswith("not a face at the landmarks") for r in why), (i, why)
        if direction == (0, 1):  # the chin runs off the crop
            assert any(r.startswith("face runs off the image") for r in why), (i, why)


def test_landmarks_shrunk_to_half_fail(chips):
    for i, (image, points) in enumerate(chips):
        centre = points.mean(0)
        signals, why = check(image, ((points - centre) * 0.5 + centre).astype(np.float32), spec(key=str(i)))
        assert any(r.startswith("face too small for the crop") for r in why), (i, signals)
        assert signals["qa_shape"] < QAThresholds().max_shape  # still a face shape: only its size is wrong


def test_scrambled_landmarks_fail(chips):
    rng = np.random.default_rng(0)
    rendered = 0
    for i, (image, points) in enumerate(chips):
        try:
            signals, why = check(image, points[rng.permutation(68)], spec(key=str(i)))
        except RenderError:
            continue  # the renderer refused them: a render_error row, not QA's to catch
        rendered += 1
        assert any(r.startswith("landmarks are not a face shape") for r in why), (i, signals)
        assert signals["qa_shape"] > 0.9
    assert rendered > 40  # most render, so QA is what catches them


# non-face crops: (x, y, size) in dogs.jpg, away from the dogs' faces
DOG_PATCHES = {"fence": (700, 0, 110), "towel": (470, 700, 140), "frisbee": (520, 330, 150), "fur": (120, 300, 140),
               "blanket": (0, 700, 200), "box": (200, 470, 120)}


def _non_faces():
    dogs = cv2.imread(str(WILD / "dogs.jpg"))
    for name, (x, y, s) in DOG_PATCHES.items():
        yield name, cv2.resize(dogs[y : y + s, x : x + s], (150, 150), interpolation=cv2.INTER_AREA if s > 150 else cv2.INTER_LINEAR)
    rng = np.random.default_rng(7)
    yield "noise", cv2.GaussianBlur(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8), (0, 0), 2)
    yy, xx = np.mgrid[:150, :150]
    yield "stripes", np.repeat((127 + 100 * np.sin(0.3 * xx + 0.1 * yy)).astype(np.uint8)[..., None], 3, 2)


@pytest.fixture(scope="module")
def chip_landmarker():
    from maskgen.faces.landmarks import Landmarker

    return Landmarker(layout="dlib")  # what aligned mode runs on a 150x150 crop


@pytest.mark.parametrize("name, patch", list(_non_faces()), ids=lambda v: v if isinstance(v, str) else "")
def test_a_mask_on_a_crop_that_is_not_a_face_fails(chip_landmarker, name, patch):
    """The predictor returns a plausible face shape on anything (its shape prior): only the
    pixels tell, so the shape check passes and the faceness check fails."""
    points = chip_landmarker.aligned(patch).points
    signals, why = check(patch, points, spec(key=name))
    assert signals["qa_shape"] < QAThresholds().max_shape
    assert why and why[0].startswith("not a face at the landmarks"), (name, signals)


def test_a_mask_moved_over_the_eyes_fails(chips):
    for i, (image, points) in enumerate(chips[:: 5]):
        rendered = render_mask(image, points, spec(key=str(i)))
        lift = int(points[33, 1] - points[38:42, 1].mean()) + 4  # nose base -> below the eyes' lower lids
        moved = np.roll(rendered.occlusion, -lift, axis=0)
        signals = measure(points, moved, image.shape, image)
        assert signals["qa_eyes"] > 0
        why = reasons(signals)
        assert any(r.startswith("eyes covered (") and r.endswith(" of 12 eye points)") for r in why), why


def test_a_mask_slid_off_the_face_fails(chips):
    """On a chip set in a larger photo (an aligned chip's own edges would clip the mask)."""
    for i, (chip, points) in enumerate(chips[::5]):
        image, points = cv2.copyMakeBorder(chip, 150, 150, 150, 150, cv2.BORDER_REFLECT), points + 150
        box = (150, 150, 300, 300)  # where the chip is: the face box qa_eye_scale is relative to
        rendered = render_mask(image, points, spec("surgical", key=str(i)))
        assert reasons(measure(points, rendered.occlusion, image.shape, image, box)) == []
        width = float(np.hypot(*(points[16] - points[0])))
        moved = cv2.warpAffine(rendered.occlusion, np.float32([[1, 0, 0.3 * width], [0, 1, 0]]), image.shape[1::-1])
        signals = measure(points, moved, image.shape, image, box)
        assert any(r.startswith("mask leaves the face outline") for r in reasons(signals)), (i, signals)


def test_the_faceness_shortcut_is_the_model_on_the_features(chips):
    ref = quality.reference()
    model = ref["model"]
    for image, points in chips[::11]:
        p = points.astype(np.float64)
        z = p[:, 0] + 1j * p[:, 1]
        t = z.mean()
        a = complex(np.vdot(ref["mean"], z - t))
        features = quality.view_features(quality.face_view(image, a, t, model["size"], model["region"]), model["cell"])
        assert quality.faceness(image, a, t) == pytest.approx(float(features @ model["weights"]) + model["bias"], abs=1e-3)
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        assert quality.faceness(grey, a, t) == pytest.approx(quality.faceness(image, a, t), abs=0.05)


def test_without_the_image_qa_face_is_nan_and_not_checked(chips):
    image, points = chips[0]
    rendered = render_mask(image, points, spec(key="x"))
    signals = measure(points, rendered.occlusion, image.shape)
    assert math.isnan(signals["qa_face"]) and all(math.isfinite(signals[k]) for k in QA_SIGNALS if k != "qa_face")
    assert reasons(signals) == []
    assert all(math.isnan(v) for v in measure(np.full((68, 2), np.nan), rendered.occlusion, image.shape).values())


def test_reasons_name_each_failed_check():
    t = QAThresholds()
    good = {"qa_coverage": 0.4, "qa_eyes": 0.0, "qa_spill": 0.0, "qa_outside": 0.0, "qa_shape": 0.1,
            "qa_eye_scale": 0.36, "qa_face": 5.0}
    assert reasons(good, t) == []
    bad = {
        "qa_coverage": (0.01, "mask covers too little"), "qa_eyes": (2 / 12, "eyes covered (2 of 12 eye points)"),
        "qa_spill": (0.5, "mask leaves the face outline"), "qa_outside": (0.3, "face runs off the image"),
        "qa_shape": (0.9, "landmarks are not a face shape"), "qa_eye_scale": (0.1, "face too small for the crop"),
        "qa_face": (-3.0, "not a face at the landmarks"),
    }
    for key, (value, words) in bad.items():
        (why,) = reasons({**good, key: value}, t)
        assert why.startswith(words), (key, why)
    assert reasons({**good, "qa_coverage": 0.95}, t)[0].startswith("mask covers too much")
    assert reasons({**good, "qa_eye_scale": 0.9}, t)[0].startswith("face too large for the crop")
    assert len(reasons({k: v for k, (v, _) in bad.items()}, t)) == len(bad)


def test_threshold_specs_parse_and_bad_ones_say_why():
    assert QAThresholds.parse("") == QAThresholds.parse("default") == QAThresholds()
    parsed = QAThresholds.parse(" max_spill=0.5, min_face=-1 ")
    assert parsed.max_spill == 0.5 and parsed.min_face == -1 and parsed.max_shape == QAThresholds().max_shape
    with pytest.raises(ValueError, match=r"unknown key 'nonsense'.*valid keys: min_coverage, .*min_face"):
        QAThresholds.parse("nonsense=1")
    for spec_, words in (("max_spill=lots", "max_spill needs a number, got 'lots'"), ("max_spill", "max_spill needs a number"),
                         ("max_spill=nan", "max_spill needs a number")):
        with pytest.raises(ValueError, match=words) as err:
            QAThresholds.parse(spec_)
        assert "\n" not in str(err.value)
    assert reasons({"qa_spill": 0.4}, parsed) == [] and reasons({"qa_spill": 0.4})  # overrides are used


def test_manifest_fields_are_a_float32_per_signal_and_the_module_imports_light():
    import pyarrow as pa

    assert [name for name, _ in quality.QA_FIELDS] == list(QA_SIGNALS)
    assert all(kind == pa.float32() for _, kind in quality.QA_FIELDS)
    assert all(name.startswith("qa_") for name in QA_SIGNALS)
    code = ("import sys\nfrom maskgen.masks.quality import QAThresholds, QA_SIGNALS\nQAThresholds.parse('max_spill=1')\n"
            "print(','.join(m for m in ('numpy', 'cv2', 'pyarrow') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing quality loaded {result.stdout.strip()}"


def test_the_asset_says_how_it_was_made():
    data = json.loads((assets_dir() / "faces" / "mean_shape68.json").read_text())
    assert len(data["points"]) == 68 and "Procrustes" in data["about"]
    model = data["face_model"]
    assert len(model["weights"]) == 3 * (model["size"] // model["cell"]) ** 2 and "dogs.jpg held out" in model["about"]
