"""Shared fixtures: real face photos (copied from ../shared/faces into tests/fixtures and, for
the aligned sample chips, into maskgen's own assets)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from maskgen.assets import sample_faces

FIXTURES = Path(__file__).parent / "fixtures"
ALIGNED = sample_faces()  # 5 identities x 11 aligned 150x150 dlib face chips
WILD = FIXTURES / "wild"


def aligned_files() -> list[Path]:
    return sorted(ALIGNED.rglob("*.jpg"))


@pytest.fixture(scope="session")
def landmarker():
    from maskgen.faces.landmarks import Landmarker

    return Landmarker()


@pytest.fixture(scope="session")
def chips(landmarker) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, 68 landmarks) for every aligned sample chip."""
    return [(im, landmarker.aligned(im).points) for im in map(cv2.imread, map(str, aligned_files()))]
