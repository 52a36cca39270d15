"""Face alignment: 5 points (eye centres, nose tip, mouth corners) mapped by a similarity
transform onto a recogniser's crop template (SphereFace 96x112, ArcFace 112x112, dlib's
150x150 chips)."""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

from maskgen.faces.layouts import ARCFACE_112x112, DLIB_150x150, SPHEREFACE_96x112

# template name -> (5 points, 1-based as published, crop size (w, h) they were made for)
TEMPLATES = {
    "sphereface": (SPHEREFACE_96x112, (96, 112)),
    "arcface": (ARCFACE_112x112, (112, 112)),
    "dlib": (DLIB_150x150, (150, 150)),  # dlib's face chips, as its ResNet (dlib-resnet) takes them
}


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """The 5 alignment points from dlib's 68: eye centres, nose tip (30), mouth corners (48, 54)."""
    return np.array(
        [landmarks[36:42].mean(0), landmarks[42:48].mean(0), landmarks[30], landmarks[48], landmarks[54]],
        np.float64,
    )


def template_points(template: str, size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """The template's 5 points in 0-based pixels of a crop of `size` (w, h; default native)."""
    try:
        points, native = TEMPLATES[template]
    except KeyError:
        raise ValueError(f"unknown template {template!r} (choose from {', '.join(TEMPLATES)})") from None
    size = size or native
    scale = np.array(size, np.float64) / native
    return (np.array(points, np.float64) - 1.0) * scale, size


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama) taking src points to dst points, as a 2x3 matrix."""
    return SimilarityTransform.from_estimate(src, dst).params[:2].astype(np.float64)


def align_face(
    bgr: np.ndarray, points5: np.ndarray, template: str = "sphereface", size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(aligned crop, 2x3 matrix from photo to crop) for the face with these 5 points."""
    dst, size = template_points(template, size)
    matrix = similarity_matrix(points5, dst)
    crop = cv2.warpAffine(bgr, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return crop, matrix
