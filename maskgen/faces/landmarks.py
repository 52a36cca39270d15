"""dlib 68-point landmarks, for aligned crops (face box from the crop geometry) or for
photos in the wild (every face found by the HOG or CNN detector, largest first).

Two engines give the very same landmarks from dlib's model file: "batched" (maskgen's numba
evaluator, shape_engine.py: several times faster, most on batches of faces) and "dlib"
(dlib.shape_predictor, the reference).

Point indices: jaw 0-16 (chin 8), brows 17-26, nose bridge 27-30, nose base 31-35,
eyes 36-47, mouth 48-67."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import dlib
import numpy as np

from maskgen.faces.layouts import face_box
from maskgen.faces.models import model_path

Box = tuple[int, int, int, int]  # left, top, right, bottom (pixels)
DETECTORS = ("hog", "cnn")
ENGINES = ("batched", "dlib")  # the same landmarks; batched is the fast one


@dataclass(frozen=True)
class Face:
    box: Box
    score: float  # detector confidence (inf for an aligned crop's known box)
    points: np.ndarray  # (68, 2) float32, x then y, pixels


def _points(shape: dlib.full_object_detection) -> np.ndarray:
    n = shape.num_parts
    return np.fromiter((c for p in shape.parts() for c in (p.x, p.y)), np.float32, 2 * n).reshape(n, 2)


class ShapePredictor:
    """A dlib shape-predictor file (68- or 5-point) run by either engine."""

    def __init__(self, path, engine: str = "batched"):
        if engine not in ENGINES:
            raise ValueError(f"unknown landmark engine {engine!r} (choose from {', '.join(ENGINES)})")
        self.engine = engine
        if engine == "batched":
            from maskgen.faces.shape_engine import ShapeEngine

            self._batched = ShapeEngine.load(path)
        else:
            self._dlib = dlib.shape_predictor(str(path))

    def predict(self, images: list[np.ndarray], boxes: list[Box], image_index=None) -> np.ndarray:
        """(N, points, 2) float32 for box i on images[image_index[i]] (default: image i);
        the images grey, or BGR (made grey as to_gray does)."""
        if self.engine == "batched":
            return self._batched.predict(images, boxes, image_index)
        index = range(len(boxes)) if image_index is None else image_index
        greys = {}
        shapes = [self._dlib(greys.setdefault(k, to_gray(images[k])), dlib.rectangle(*map(int, box))) for k, box in zip(index, boxes)]
        return np.stack([_points(shape) for shape in shapes]) if shapes else np.empty((0, 68, 2), np.float32)


def to_gray(bgr: np.ndarray) -> np.ndarray:
    # The predictor reads intensities only; grey input is ~10% faster than colour.
    return bgr if bgr.ndim == 2 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


def box_iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter) if inter else 0.0


def merge_detections(found: list[tuple[Box, float]], iou: float = 0.4) -> list[tuple[Box, float]]:
    """Non-maximum suppression over detections from several pyramid settings."""
    kept: list[tuple[Box, float]] = []
    for box, score in sorted(found, key=lambda d: -d[1]):
        if all(box_iou(box, k) < iou for k, _ in kept):
            kept.append((box, score))
    return kept


class Landmarker:
    """Loads the models once; cheap to call per image.

    upsample: how many times the HOG detector doubles the photo; detections at every level
    up to it are merged. None = 1 for photos up to 2000 px on the long side, else 0 (faces
    in big photos are rarely small, and each level costs ~4x the one before).
    """

    def __init__(
        self,
        predictor: str | None = None,
        detector: str = "hog",
        upsample: int | None = None,
        layout: str = "auto",
        engine: str = "batched",
    ):
        if detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r} (choose from {', '.join(DETECTORS)})")
        face_box(112, 112, layout)  # validates the layout name early
        self.predictor = ShapePredictor(model_path("landmarks68", predictor), engine)
        self.detector_name, self.upsample, self.layout = detector, upsample, layout
        self._hog = self._cnn = None
        if detector == "cnn":  # load now: a missing model is then an error before any image
            self._cnn = dlib.cnn_face_detection_model_v1(str(model_path("mmod")))

    @property
    def engine(self) -> str:
        return self.predictor.engine

    def aligned(self, bgr: np.ndarray) -> Face:
        """Landmarks of an aligned crop (BGR or grey): the face box is known from the crop's layout."""
        return self.aligned_batch([bgr])[0]

    def aligned_batch(self, images: list[np.ndarray]) -> list[Face]:
        """`aligned` for many crops in one call (the batched engine's fast path)."""
        boxes = [face_box(im.shape[1], im.shape[0], self.layout) for im in images]
        points = self.predictor.predict(images, boxes)
        return [Face(box, float("inf"), p) for box, p in zip(boxes, points)]

    def detect(self, bgr: np.ndarray) -> list[Face]:
        """Every face in a photo, largest first."""
        gray = to_gray(bgr)
        found = self._detect_cnn(bgr) if self.detector_name == "cnn" else self._detect_hog(gray)
        found.sort(key=lambda d: -(d[0][2] - d[0][0]) * (d[0][3] - d[0][1]))
        points = self.predictor.predict([gray], [box for box, _ in found], np.zeros(len(found), np.int64))
        return [Face(box, score, p) for (box, score), p in zip(found, points)]

    def fit(self, gray: np.ndarray, box: Box) -> np.ndarray:
        """The landmarks (68, 2) in one box of a grey image."""
        return self.predictor.predict([gray], [box])[0]

    def _upsample_for(self, gray: np.ndarray) -> int:
        if self.upsample is not None:
            return self.upsample
        return 1 if max(gray.shape) <= 2000 else 0

    def _detect_hog(self, gray: np.ndarray) -> list[tuple[Box, float]]:
        if self._hog is None:
            self._hog = dlib.get_frontal_face_detector()
        found = []
        for level in range(self._upsample_for(gray) + 1):
            rects, scores, _ = self._hog.run(gray, level, 0.0)
            found += [((r.left(), r.top(), r.right(), r.bottom()), s) for r, s in zip(rects, scores)]
        return merge_detections(found)

    def _detect_cnn(self, bgr: np.ndarray) -> list[tuple[Box, float]]:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        dets = self._cnn(rgb, self._upsample_for(bgr))
        found = [((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), d.confidence) for d in dets]
        return merge_detections(found)


def outer_eye_distance(points: np.ndarray) -> float:
    """The usual normaliser for landmark errors (300-W): outer eye corners 36 and 45."""
    return float(np.linalg.norm(points[36] - points[45]))
