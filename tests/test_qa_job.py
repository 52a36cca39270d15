"""The quality check inside the mask job: every ok row carries its signals, and with
--qa-reject a render from broken landmarks becomes a qa_reject row whose image is not written."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import aligned_files

from maskgen.jobs.masking import ImageJob, build_job_config
from maskgen.masks.quality import QA_SIGNALS

FACE = aligned_files()[7]


@pytest.fixture(scope="module")
def points(landmarker):
    import cv2

    return landmarker.aligned(cv2.imread(str(FACE))).points


def run(tmp_path, landmarks, **options):
    job = ImageJob(build_job_config(seed=4, mask_type="surgical", **options))
    return job.process(FACE, f"{FACE.parent.name}/{FACE.name}", tmp_path, landmarks)


def test_good_renders_pass_and_carry_their_signals(tmp_path, points):
    (row,) = run(tmp_path, points, qa_reject=True)
    assert row["status"] == "ok" and (tmp_path / row["out_path"]).is_file()
    assert all(np.isfinite(row[name]) for name in QA_SIGNALS if name != "qa_face")


@pytest.mark.parametrize("broken", ["shifted", "shrunk", "scrambled"])
def test_broken_landmarks_become_qa_reject_rows_and_write_nothing(tmp_path, points, broken):
    width = np.ptp(points[:, 0])
    bad = {
        "shifted": points + np.float32([0.3 * width, 0]),
        "shrunk": (points - points.mean(0)) * 0.5 + points.mean(0),
        "scrambled": points[np.random.default_rng(0).permutation(68)],
    }[broken]
    (rejected,) = run(tmp_path / "reject", bad, qa_reject=True)
    if rejected["status"] == "render_error":
        pytest.skip("the renderer itself refused these landmarks")  # also a caught failure, just earlier
    assert rejected["status"] == "qa_reject" and rejected["error"].startswith("qa: ") and rejected["out_path"] == ""
    assert not any(p.is_file() for p in (tmp_path / "reject").rglob("*"))  # no image, no occlusion mask
    (kept,) = run(tmp_path / "keep", bad)  # without --qa-reject: written, and the signals say why it is bad
    assert kept["status"] == "ok" and all(kept[name] == rejected[name] for name in QA_SIGNALS if np.isfinite(rejected[name]))


def test_thresholds_are_options(tmp_path, points):
    shifted = points + np.float32([0.3 * np.ptp(points[:, 0]), 0])
    lenient = "max_outside=1,max_spill=1,max_shape=1,min_face=-1000,max_eyes=1,min_coverage=0,max_coverage=1,min_eye_scale=0,max_eye_scale=10"
    (row,) = run(tmp_path, shifted, qa_reject=True, qa_thresholds=lenient)
    assert row["status"] == "ok"
    with pytest.raises(ValueError, match="--qa-thresholds"):
        build_job_config(qa_thresholds="nonsense=1")
