"""Alignment of raw photos onto recogniser templates, on real photos."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from conftest import WILD

from maskgen.faces.align import five_points, template_points
from maskgen.faces.landmarks import Landmarker
from maskgen.jobs.aligning import AlignConfig, AlignJob


@pytest.fixture(scope="module")
def job():
    return AlignJob(AlignConfig())


def align_one(job, path, tmp_path, name="x.jpg"):
    rows = job.process(path, f"person/{name}", tmp_path)
    return rows, [cv2.imread(str(tmp_path / r["out_path"])) for r in rows if r["out_path"]]


@pytest.mark.parametrize("photo", ["obama.jpg", "Tom_Cruise_avp_2014_4.jpg"])
def test_eyes_land_on_the_template(job, tmp_path, photo):
    rows, crops = align_one(job, WILD / photo, tmp_path)
    assert [r["status"] for r in rows] == ["ok"] and crops[0].shape == (112, 96, 3)
    points = Landmarker(layout="sphereface").aligned(crops[0]).points
    found, expected = five_points(points)[:2], template_points("sphereface")[0][:2]
    assert np.linalg.norm(found - expected, axis=1).max() < 3.0  # pixels


def test_mirror_image_gives_the_mirrored_crop(job, tmp_path):
    photo = cv2.imread(str(WILD / "obama.jpg"))
    cv2.imwrite(str(tmp_path / "mirror.png"), photo[:, ::-1])
    (row_a,), (crop,) = align_one(job, WILD / "obama.jpg", tmp_path / "a")
    (row_b,), (mirrored,) = align_one(job, tmp_path / "mirror.png", tmp_path / "b")
    # Geometry: photo -> mirror -> crop B -> flip must map the face where photo -> crop A does.
    h, w = photo.shape[:2]
    flip_photo = np.array([[-1, 0, w - 1], [0, 1, 0], [0, 0, 1]])
    flip_crop = np.array([[-1, 0, crop.shape[1] - 1], [0, 1, 0], [0, 0, 1]])
    to_b = np.vstack([np.array(row_b["transform"]).reshape(2, 3), [0, 0, 1]])
    composed = (flip_crop @ to_b @ flip_photo)[:2]
    points = np.array(row_a["points5"]).reshape(1, 5, 2)
    shift = cv2.transform(points, composed)[0] - cv2.transform(points, np.array(row_a["transform"]).reshape(2, 3))[0]
    assert np.linalg.norm(shift, axis=1).max() < 2.0  # pixels of the 96x112 crop
    blur = lambda im: cv2.GaussianBlur(im, (0, 0), 2).astype(int)  # noqa: E731
    assert np.abs(blur(crop) - blur(mirrored[:, ::-1])).mean() < 8  # two different people: ~45


def test_every_face_of_a_group_photo(tmp_path):
    rows, crops = align_one(AlignJob(AlignConfig(select="all", template="arcface")), WILD / "bald_guys.jpg", tmp_path)
    assert len(rows) == 24 and all(r["status"] == "ok" for r in rows)
    assert sorted(r["out_path"] for r in rows) == sorted(f"person/x_f{i}.jpg" for i in range(24))
    assert all(c.shape == (112, 112, 3) for c in crops)
    matrix = np.array(rows[0]["transform"]).reshape(2, 3)  # traceable: the 5 points map onto the template
    mapped = cv2.transform(np.array(rows[0]["points5"]).reshape(1, 5, 2), matrix)[0]
    assert np.abs(mapped - template_points("arcface")[0]).max() < 6


def test_largest_and_most_central(job, tmp_path):
    largest = job.process(WILD / "bald_guys.jpg", "p/x.jpg", tmp_path)[0]
    central = AlignJob(AlignConfig(select="central")).process(WILD / "bald_guys.jpg", "p/x.jpg", tmp_path)[0]
    assert largest["faces_found"] == central["faces_found"] == 1
    assert largest["box"] != central["box"]


def test_faceless_photo_and_fallback(job, tmp_path):
    rows = job.process(WILD / "dogs.jpg", "p/dogs.jpg", tmp_path)
    assert [(r["status"], r["out_path"]) for r in rows] == [("no_face", "")]
    rows = AlignJob(AlignConfig(fallback=True)).process(WILD / "dogs.jpg", "p/dogs.jpg", tmp_path)
    assert rows[0]["status"] == "ok" and rows[0]["method"] == "center_crop"
    assert cv2.imread(str(tmp_path / rows[0]["out_path"])).shape == (112, 96, 3)


def test_bad_files_are_rows(job, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    shutil.copy(WILD / "obama.jpg", tmp_path / "half.jpg")
    data = (tmp_path / "half.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 3])
    for name in ("empty.jpg", "half.jpg", "missing.jpg"):
        (row,) = job.process(tmp_path / name, f"p/{name}", tmp_path / "out")
        assert row["status"] == "decode_error" and row["error"]
    (row,) = job.process(WILD / "obama.jpg", "../escape.jpg", tmp_path / "out")
    assert row["status"] == "write_error" and not (tmp_path / "escape.jpg").exists()


def test_align_command_runs_on_ray_and_names_itself(tmp_path):
    """`maskgen align` end to end on a real local Ray: every photo gets a row, and the
    progress and summary say `align`, not `generate`."""
    from pipeline_helpers import ensure_ray
    from typer.testing import CliRunner

    from maskgen.cli import app

    ensure_ray()
    raw = tmp_path / "raw"
    for person, photo in (("obama", "obama.jpg"), ("cruise", "Tom_Cruise_avp_2014_4.jpg"), ("dogs", "dogs.jpg")):
        (raw / person).mkdir(parents=True)
        shutil.copy(WILD / photo, raw / person / photo)
    result = CliRunner().invoke(app, ["align", str(raw), str(tmp_path / "out"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "align: summary" in result.output and "generate" not in result.output
    import pandas as pd

    rows = pd.read_parquet(tmp_path / "out" / "manifest")
    assert sorted(zip(rows.identity, rows.status)) == [("cruise", "ok"), ("dogs", "no_face"), ("obama", "ok")]


def test_align_help_describes_align_own_options():
    from typer.testing import CliRunner

    from maskgen.cli import app

    text = " ".join(CliRunner().invoke(app, ["align", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "--detector" in text and "--upsample" in text
    assert "--wild" not in text  # align has no --wild: its detector options are its own
    assert "the input's own" not in text  # --format defaults to jpg, and says so


@pytest.mark.parametrize("points", [68, 5])
def test_either_landmark_engine_gives_the_same_crops(tmp_path, points):
    """The 68- and the 5-point model run by the batched engine (default) or by dlib: same crops."""
    crops = {}
    for engine in ("batched", "dlib"):
        job = AlignJob(AlignConfig(points=points, select="all", landmarker=engine))
        rows, crops[engine] = align_one(job, WILD / "bald_guys.jpg", tmp_path / engine)
        assert len(rows) >= 3 and {r["status"] for r in rows} == {"ok"}
    assert len(crops["dlib"]) == len(crops["batched"])
    assert all(np.array_equal(a, b) for a, b in zip(crops["dlib"], crops["batched"]))


def test_the_dlib_template_cuts_chips_like_dlib(tmp_path):
    """--template dlib: 150x150 chips within a few pixels of dlib.get_face_chip's (padding 0.25)."""
    import dlib

    from maskgen.faces.models import model_path

    five = dlib.shape_predictor(str(model_path("landmarks5")))
    job, landmarker = AlignJob(AlignConfig(template="dlib", select="all")), Landmarker()
    distances = []
    for photo in ("obama.jpg", "bald_guys.jpg"):
        rows, crops = align_one(job, WILD / photo, tmp_path / photo)
        rgb = np.ascontiguousarray(cv2.imread(str(WILD / photo))[:, :, ::-1])
        for row, crop in zip(rows, crops):
            assert crop.shape == (150, 150, 3)
            theirs = dlib.get_face_chip(rgb, five(rgb, dlib.rectangle(*row["box"])), size=150, padding=0.25)
            a, b = landmarker.aligned(crop).points, landmarker.aligned(np.ascontiguousarray(theirs[:, :, ::-1])).points
            distances.append(np.linalg.norm(a - b, axis=1).mean())
    assert len(distances) >= 4 and np.median(distances) < 4.5, distances
