"""`maskgen landmarks`: every image's 68 points through the real app on local Ray, bad
inputs as rows, resume, and photos in the wild."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pandas as pd
from conftest import WILD
from pipeline_helpers import N_FACES, copy_faces, ensure_ray, invoke

from maskgen.faces.landmarks import Landmarker


def test_every_aligned_face_gets_dlibs_landmarks_and_bad_files_are_rows(tmp_path):
    ensure_ray()
    tree = copy_faces(tmp_path / "faces")
    identity = sorted(p.name for p in tree.iterdir())[0]
    (tree / identity / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    cv2.imwrite(str(tree / identity / "blank.png"), np.full((150, 150, 3), 128, np.uint8))
    out = tmp_path / "lm"
    result = invoke("landmarks", tree, out, "--workers", 2, "--quiet")
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(out / "manifest")
    assert len(rows) == N_FACES + 2 and rows.src_path.is_unique
    by_path = rows.set_index("src_path")
    assert by_path.loc[f"{identity}/broken.jpg", "status"] == "decode_error"
    assert by_path.loc[f"{identity}/blank.png", "status"] == "no_face"
    ok = rows[rows.status == "ok"]
    assert len(ok) == N_FACES and set(ok.layout) == {"dlib"} and (ok.width == 150).all()
    reference = Landmarker(engine="dlib")
    for row in ok.itertuples():
        expected = reference.aligned(cv2.imread(str(tree / row.src_path))).points
        assert np.array_equal(np.asarray(row.landmarks, np.float32).reshape(68, 2), expected), row.src_path
    assert not (out / "images").exists() or not any((out / "images").iterdir())  # no image written

    again = invoke("landmarks", tree, out, "--workers", 2, "--json")
    assert again.exit_code == 0 and '"shards_done_now": 0' in again.stdout  # resumed: nothing left to do
    other = invoke("landmarks", tree, out, "--layout", "sphereface", "--quiet")
    assert other.exit_code == 2 and "--overwrite" in other.output  # other options: refuses to mix runs


def test_photos_in_the_wild_get_their_largest_face(tmp_path):
    ensure_ray()
    tree = tmp_path / "wild" / "people"
    tree.mkdir(parents=True)
    for name in ("obama.jpg", "bald_guys.jpg", "dogs.jpg"):
        shutil.copy(WILD / name, tree / name)
    out = tmp_path / "lm"
    result = invoke("landmarks", tree.parent, out, "--wild", "--quiet")
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(out / "manifest").set_index("src_path")
    assert rows.loc["people/dogs.jpg", "status"] == "no_face"
    assert rows.loc["people/bald_guys.jpg", "faces_found"] >= 3
    faces = Landmarker().detect(cv2.imread(str(tree / "bald_guys.jpg")))
    assert list(rows.loc["people/bald_guys.jpg", "box"]) == list(faces[0].box)  # the largest


def test_user_mistakes_are_one_line(tmp_path):
    for args, message in [
        (("landmarks", tmp_path / "nope", tmp_path / "o"), "not found"),
        (("landmarks", tmp_path, tmp_path / "o", "--layout", "round"), "--layout"),
        (("landmarks", tmp_path, tmp_path / "o", "--landmarker", "fast"), "--landmarker: unknown engine 'fast'"),
    ]:
        result = invoke(*args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
