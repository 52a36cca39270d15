"""dlib 68-point landmarks, for aligned crops (face box from the crop geometry) or for
photos in the wild (every face found by the HOG or CNN detector, largest first).

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


@dataclass(frozen=True)
class Face:
    box: Box
    score: float  # detector confidence (inf for an aligned crop's known box)
    points: np.ndarray  # (68, 2) float32, x then y, pixels


def _points(shape: dlib.full_object_detection) -> np.ndarray:
    xy = np.fromiter((c for p in shape.parts() for c in (p.x, p.y)), np.float32, 136)
    return xy.reshape(68, 2)


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
    ):
        if detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r} (choose from {', '.join(DETECTORS)})")
        face_box(112, 112, layout)  # validates the layout name early
        self.predictor = dlib.shape_predictor(str(model_path("landmarks68", predictor)))
        self.detector_name, self.upsample, self.layout = detector, upsample, layout
        self._hog = self._cnn = None
        if detector == "cnn":  # load now: a missing model is then an error before any image
            self._cnn = dlib.cnn_face_detection_model_v1(str(model_path("mmod")))

    def aligned(self, bgr: np.ndarray) -> Face:
        """Landmarks of an aligned crop (BGR or grey): the face box is known from the crop's layout."""
        h, w = bgr.shape[:2]
        box = face_box(w, h, self.layout)
        shape = self.predictor(to_gray(bgr), dlib.rectangle(*box))
        return Face(box, float("inf"), _points(shape))

    def detect(self, bgr: np.ndarray) -> list[Face]:
        """Every face in a photo, largest first."""
        gray = to_gray(bgr)
        found = self._detect_cnn(bgr) if self.detector_name == "cnn" else self._detect_hog(gray)
        found.sort(key=lambda d: -(d[0][2] - d[0][0]) * (d[0][3] - d[0][1]))
        return [Face(box, score, _points(self.predictor(gray, dlib.rectangle(*box)))) for box, score in found]

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
