"""The public Python API: `maskgen.mask_image`, `maskgen.Landmarker`, `maskgen.generate_tree`."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import aligned_files
from pipeline_helpers import ensure_ray

import maskgen


def test_import_maskgen_is_light_and_names_load_on_use():
    code = "import sys, maskgen\nprint(','.join(m for m in ('cv2', 'dlib', 'numpy', 'ray', 'torch') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == ""
    assert set(maskgen.__all__) <= set(dir(maskgen))
    with pytest.raises(AttributeError):
        maskgen.no_such_name  # noqa: B018


def test_mask_image_masks_a_real_face_and_records_how(landmarker):
    face = cv2.imread(str(aligned_files()[0]))
    masked = maskgen.mask_image(face, seed=7, type="surgical", wear="proper", landmarker=landmarker)
    assert masked.image.shape == face.shape and masked.image.dtype == np.uint8
    assert masked.occlusion.shape == face.shape[:2] and masked.occlusion.max() == 255
    changed = np.abs(masked.image.astype(int) - face).sum(axis=2) > 30
    assert changed[masked.occlusion == 255].mean() > 0.5 and not changed[masked.occlusion == 0].mean() > 0.1
    record = masked.record
    assert record["mask_type"] == "surgical" and record["seed"] == 7 and 0.2 < record["coverage"] < 0.9
    points = np.array(record["landmarks"], np.float32)
    assert points.shape == (68, 2)
    again = maskgen.mask_image(face, points, seed=7, type="surgical")  # given landmarks: the same pixels
    assert np.array_equal(again.image, masked.image)
    other = maskgen.mask_image(face, points, seed=8, type="surgical")
    assert not np.array_equal(other.image, masked.image)


def test_mask_image_errors(landmarker):
    face = cv2.imread(str(aligned_files()[0]))
    with pytest.raises(ValueError, match="--type"):
        maskgen.mask_image(face, type="n96", landmarker=landmarker)
    with pytest.raises(LookupError):
        maskgen.mask_image(np.zeros((300, 300, 3), np.uint8), aligned=False, landmarker=landmarker)


def test_generate_tree_runs_the_sharded_job(tmp_path):
    ensure_ray()
    summary = maskgen.generate_tree(aligned_files()[0].parents[1], tmp_path / "out", variants=1, seed=3, workers=2)
    assert summary.complete and summary.statuses == {"ok": 55} and summary.shards_total >= 2
    assert len(pd.read_parquet(tmp_path / "out" / "manifest")) == 55
