"""The numba shape predictor engine gives dlib's landmarks to the pixel: on the sample chips,
on distinct faces made from them (mirrored, rotated, rescaled), on boxes partly outside the
image, on grey and non-square images, on many boxes on one image, on wild photos (detected
boxes), with the 5-point model, and where a point falls exactly on a pixel half."""

from __future__ import annotations

import math

import cv2
import dlib
import numpy as np
import pytest
from conftest import WILD, aligned_files

from maskgen.faces import shape_engine
from maskgen.faces.layouts import face_box
from maskgen.faces.models import model_path
from maskgen.faces.shape_engine import ModelFormatError, ShapeEngine, parse_shape_predictor


@pytest.fixture(scope="module")
def predictors():
    """(engine, dlib predictor) per model."""
    found = {}
    for name in ("landmarks68", "landmarks5"):
        path = str(model_path(name))
        found[name] = ShapeEngine.load(path), dlib.shape_predictor(path)
    return found


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in aligned_files()]


def dlib_points(predictor, image: np.ndarray, box) -> np.ndarray:
    shape = predictor(image, dlib.rectangle(*map(int, box)))
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def gray(image: np.ndarray) -> np.ndarray:
    """What maskgen.faces.landmarks hands to dlib (to_gray)."""
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def assert_same(predictors, name, images, boxes, image_index=None, mode="cv2"):
    engine, predictor = predictors[name]
    found = engine.predict(images, boxes, image_index, gray=mode)
    index = range(len(boxes)) if image_index is None else image_index
    expected = [dlib_points(predictor, gray(images[i]) if mode == "cv2" else images[i], b) for i, b in zip(index, boxes)]
    assert found.shape == (len(boxes), engine.n_points, 2) and found.dtype == np.float32
    assert np.array_equal(found, np.array(expected)), f"{int((found != np.array(expected)).any(axis=(1, 2)).sum())} faces differ"
    return found


def chip_box(image: np.ndarray):
    return face_box(image.shape[1], image.shape[0], "dlib")


def test_sample_chips(predictors, images):
    assert len(images) == 55
    assert_same(predictors, "landmarks68", images, [chip_box(im) for im in images])


def test_distinct_faces_from_the_chips(predictors, images):
    """Mirrored, rotated and rescaled chips (each a face dlib has not seen), in one batch."""
    rng = np.random.default_rng(13)
    made = []
    for im in images:
        made.append(im[:, ::-1])
        angle = rng.uniform(-25, 25)
        made.append(cv2.warpAffine(im, cv2.getRotationMatrix2D((75, 75), angle, 1.0), (150, 150), borderMode=cv2.BORDER_REFLECT))
        size = int(rng.integers(60, 400))
        made.append(cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA if size < 150 else cv2.INTER_LINEAR))
    assert_same(predictors, "landmarks68", made, [chip_box(im) for im in made])


def test_boxes_partly_outside_the_image(predictors, images):
    rng = np.random.default_rng(5)
    boxes = []
    for im in images[:30]:
        left, top, right, bottom = chip_box(im)
        dx, dy = rng.integers(-110, 110, 2)
        grow = int(rng.integers(0, 60))
        boxes.append((left + dx - grow, top + dy - grow, right + dx + grow, bottom + dy + grow))
    assert any(b[0] < 0 or b[1] < 0 for b in boxes) and any(b[2] >= 150 or b[3] >= 150 for b in boxes)
    assert_same(predictors, "landmarks68", images[:30], boxes)


def test_grey_and_non_square_images(predictors, images):
    rng = np.random.default_rng(7)
    made, boxes = [], []
    for k, im in enumerate(images[:24]):
        h, w = int(rng.integers(160, 300)), int(rng.integers(160, 300))
        canvas = np.full((h, w, 3), int(rng.integers(0, 255)), np.uint8)
        y, x = int(rng.integers(0, h - 150)), int(rng.integers(0, w - 150))
        canvas[y:y + 150, x:x + 150] = im
        left, top, right, bottom = chip_box(im)
        made.append(gray(canvas) if k % 2 else canvas)
        boxes.append((left + x, top + y, right + x, bottom + y))
    made.append(gray(images[30])[:, 10:130])  # cropped narrower than its box (a non-contiguous view)
    boxes.append(chip_box(images[30]))
    assert_same(predictors, "landmarks68", made, boxes)


def test_forty_boxes_on_one_image(predictors, images):
    sheet = np.vstack([np.hstack(images[r * 8:(r + 1) * 8]) for r in range(5)])  # 5 x 8 chips
    rng = np.random.default_rng(3)
    boxes = []
    for r in range(5):
        for c in range(8):
            left, top, right, bottom = chip_box(images[0])
            j = rng.integers(-8, 9, 4)
            boxes.append((left + 150 * c + j[0], top + 150 * r + j[1], right + 150 * c + j[2], bottom + 150 * r + j[3]))
    found = assert_same(predictors, "landmarks68", [sheet], boxes, np.zeros(40, np.int64))
    assert len(np.unique(found.reshape(40, -1), axis=0)) == 40


def test_wild_photos_with_detected_boxes(predictors):
    detector = dlib.get_frontal_face_detector()
    photos, boxes, index = [], [], []
    for path in [*sorted(WILD.glob("*.jpg")), *sorted((WILD / "annotated").glob("*.[jp][pp][gm]"))]:
        image = cv2.imread(str(path))
        for r in detector(gray(image), 1 if max(image.shape) <= 1000 else 0):
            boxes.append((r.left(), r.top(), r.right(), r.bottom()))
            index.append(len(photos))
        photos.append(image)
    assert len(boxes) >= 20
    assert_same(predictors, "landmarks68", photos, boxes, np.array(index))


def test_five_point_model(predictors, images):
    engine, _ = predictors["landmarks5"]
    assert engine.n_points == 5
    made = images + [im[:, ::-1] for im in images[::3]]
    boxes = [chip_box(im) for im in made]
    boxes[:10] = [(b[0] - 40, b[1] + 30, b[2] - 40, b[3] + 30) for b in boxes[:10]]
    assert_same(predictors, "landmarks5", made, boxes)


def test_rgb_as_dlib_converts_it(predictors, images):
    """gray="dlib": a colour array sampled as dlib samples one handed to it, (r + g + b) // 3."""
    rgb = [cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im in images[::4]]
    assert_same(predictors, "landmarks68", rgb, [chip_box(im) for im in rgb], mode="dlib")


# ------------------------------------------------------------------------------------------
# Synthetic models, written in dlib's format (serialize.h): the zero-cascade model puts its
# mean shape straight into the box, so its points probe dlib's box transform and rounding.


def _int(v: int) -> bytes:
    sign, v, out = 0x80 if v < 0 else 0, abs(v), []
    while True:
        out.append(v & 0xFF)
        v >>= 8
        if not v:
            return bytes([len(out) | sign, *out])


def _float(x: float) -> bytes:
    mantissa, exponent = math.frexp(float(np.float32(x)))
    return _int(int(mantissa * (1 << 24))) + _int(exponent - 24)


def _mean_shape_model(initial: np.ndarray) -> bytes:
    return _int(1) + _int(-len(initial)) + _int(-1) + b"".join(map(_float, initial)) + _int(0) * 3


def test_points_on_pixel_halves_round_as_dlib_does(tmp_path):
    """dlib's box transform comes from an SVD-based pinv, an ulp off the exact one: a point on
    a pixel half goes up or down by that ulp, not always up as floor(x + 0.5) of the exact x."""
    rng = np.random.default_rng(1)
    naive_misses = 0
    for trial in range(40):
        w, h = (int(v) for v in rng.choice([64, 128, 256, 512], 2))  # (k + 0.5) / w is then a float
        left, top = (int(v) for v in rng.integers(-300, 300, 2))
        kx, ky = rng.integers(0, w, 68), rng.integers(0, h, 68)
        initial = np.empty(136, np.float32)
        initial[0::2], initial[1::2] = (kx + 0.5) / w, (ky + 0.5) / h
        data = _mean_shape_model(initial)
        (tmp_path / "mean.dat").write_bytes(data)
        box = (left, top, left + w, top + h)
        image = np.zeros((8, 8), np.uint8)
        expected = dlib_points(dlib.shape_predictor(str(tmp_path / "mean.dat")), image, box)
        assert np.array_equal(ShapeEngine(parse_shape_predictor(data)).predict([image], [box])[0], expected)
        naive_misses += (expected != np.stack([left + kx + 1, top + ky + 1], axis=1)).sum()
    assert naive_misses > 0.2 * 40 * 136  # dlib rounds many of these halves down


# ------------------------------------------------------------------------------------------


def test_cache_of_parsed_arrays(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ShapeEngine, "_loaded", {})
    path = model_path("landmarks5")
    first = ShapeEngine.load(path)
    cached = list((tmp_path / "cache").glob("shape_predictor-*"))
    assert len(cached) == 1 and sorted(f.stem for f in cached[0].iterdir()) == sorted(first._m.FIELDS)
    monkeypatch.setattr(ShapeEngine, "_loaded", {})
    monkeypatch.setattr(shape_engine, "parse_shape_predictor", lambda data: pytest.fail("parsed again"))
    monkeypatch.setattr(shape_engine.hashlib, "file_digest", lambda *a: pytest.fail("hashed again"))
    second = ShapeEngine.load(path)
    for name in second._m.FIELDS:
        array = getattr(second._m, name)
        assert np.array_equal(getattr(first._m, name), array)
        assert not array.flags.writeable  # a read-only map of the cache, shared by every process
    assert ShapeEngine.load(path) is second  # and once per process


def test_a_damaged_cache_is_parsed_again_and_replaced(tmp_path, monkeypatch, images):
    monkeypatch.setenv("MASKGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ShapeEngine, "_loaded", {})
    path = model_path("landmarks5")
    box = chip_box(images[0])
    first = ShapeEngine.load(path, cache=False)
    expected, leaves = first.predict([images[0]], [box]), first._m.leaves
    monkeypatch.setattr(ShapeEngine, "_loaded", {})
    ShapeEngine.load(path)
    [folder] = (tmp_path / "cache").glob("shape_predictor-*")
    data = (folder / "leaves.npy").read_bytes()
    (folder / "leaves.npy").unlink()  # (a new file: the maps of the loaded engine stay valid)
    (folder / "leaves.npy").write_bytes(data[:1000])  # truncated
    monkeypatch.setattr(ShapeEngine, "_loaded", {})
    again = ShapeEngine.load(path)
    assert np.array_equal(again.predict([images[0]], [box]), expected)
    assert np.array_equal(np.load(folder / "leaves.npy"), leaves)  # rewritten whole


def test_unwritable_cache_folder_is_no_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MASKGEN_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(ShapeEngine, "_loaded", {})
    assert ShapeEngine.load(model_path("landmarks5")).n_points == 5


def test_bad_inputs(tmp_path, predictors, images):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x01\x02" + b"\x00" * 20)
    with pytest.raises(ModelFormatError):
        ShapeEngine.load(bad, cache=False)
    engine, _ = predictors["landmarks68"]
    with pytest.raises(ValueError, match="image_index"):
        engine.predict(images[:2], [chip_box(images[0])])
    with pytest.raises(TypeError):
        engine.predict([images[0].astype(np.float32)], [chip_box(images[0])])
    assert engine.predict([], []).shape == (0, 68, 2)
