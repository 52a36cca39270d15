"""`maskgen mask` and `maskgen preview` through typer's CliRunner, on real photos."""

from __future__ import annotations

import os
import shutil
import threading

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import ALIGNED, WILD
from typer.testing import CliRunner

from maskgen.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def small_tree(tmp_path):
    """Two identities, three real aligned chips each."""
    root = tmp_path / "faces"
    for identity in sorted(p.name for p in ALIGNED.iterdir())[:2]:
        (root / identity).mkdir(parents=True)
        for src in sorted((ALIGNED / identity).glob("*.jpg"))[:3]:
            shutil.copy(src, root / identity / src.name)
    return root


def test_mask_mirrors_the_tree_and_records_every_parameter(small_tree, tmp_path):
    out = tmp_path / "out"
    result = invoke("mask", small_tree, "-o", out, "--aligned", "--seed", 3)
    assert result.exit_code == 0, result.output
    manifest = pd.read_parquet(out / "manifest.parquet")
    inputs = sorted(p.relative_to(small_tree).as_posix() for p in small_tree.rglob("*.jpg"))
    assert sorted(manifest.src_path) == inputs and (manifest.status == "ok").all()
    for row in manifest.itertuples():
        masked, occlusion = cv2.imread(str(out / row.out_path)), cv2.imread(str(out / row.mask_path), 0)
        original = cv2.imread(str(small_tree / row.src_path))
        assert row.out_path == row.src_path and row.mask_path == row.src_path.replace(".jpg", "_mask.png")
        assert masked.shape == original.shape and occlusion.shape == original.shape[:2]
        assert set(np.unique(occlusion)) == {0, 255}
        assert abs((occlusion > 0).mean() - row.coverage) < 0.25
        assert len(row.landmarks) == 136 and row.mask_type and row.color.startswith("#")
    assert manifest.identity.nunique() == 2


def test_same_seed_same_bytes_other_seed_differs(small_tree, tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert invoke("mask", small_tree, "-o", tmp_path / name, "--aligned", "--seed", seed).exit_code == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


def test_either_landmark_engine_same_bytes(small_tree, tmp_path):
    """--landmarker dlib (the reference) and the default batched engine write the same files."""
    for name, engine in (("batched", "batched"), ("dlib", "dlib")):
        result = invoke("mask", small_tree, "-o", tmp_path / name, "--aligned", "--landmarker", engine, "--variants", 2)
        assert result.exit_code == 0, result.output
    files = sorted(p.relative_to(tmp_path / "dlib") for p in (tmp_path / "dlib").rglob("*.*") if p.suffix != ".parquet")
    assert len(files) == 6 * 2 * 2 and all((tmp_path / "dlib" / f).read_bytes() == (tmp_path / "batched" / f).read_bytes() for f in files)
    a, b = (pd.read_parquet(tmp_path / name / "manifest.parquet").drop(columns="elapsed_ms") for name in ("batched", "dlib"))
    assert a.equals(b)


def test_bad_files_become_rows_and_nothing_else_is_lost(small_tree, tmp_path):
    bad = small_tree / "broken"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image")
    good = next(small_tree.rglob("*.jpg")).read_bytes()
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (bad / "notes.txt").write_text("left alone, but counted")
    cv2.imwrite(str(bad / "blank.png"), np.full((150, 150, 3), 90, np.uint8))
    out = tmp_path / "out"
    result = invoke("mask", small_tree, "-o", out, "--aligned")
    assert result.exit_code == 0, result.output
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("src_path")
    assert len(manifest) == 6 + 4
    for name in ("empty", "text", "truncated"):
        row = manifest.loc[f"broken/{name}.jpg"]
        assert row.status == "decode_error" and row.error and row.out_path == ""
    assert manifest.loc["broken/blank.png"].status == "no_face"
    assert (manifest.status == "ok").sum() == 6
    assert "not images by their suffix" in result.output and "1 .txt" in result.output
    assert not list(out.rglob("*.tmp")) and not (out / "broken").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_among_the_inputs_is_a_row_not_a_hang(small_tree, tmp_path):
    """A pipe in a folder (or named on the command line) is refused at once: reading it would
    wait for a writer for good. Should it be read anyway, the thread below writes nothing and
    closes it after 10 s: the run then ends, with the wrong row, and this test fails."""
    pipe = small_tree / next(p.name for p in small_tree.iterdir()) / "pipe.jpg"
    os.mkfifo(pipe)
    unblock = threading.Timer(10, lambda: os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)))
    unblock.start()
    try:
        result = invoke("mask", small_tree, pipe, "/dev/null", "-o", tmp_path / "out", "--aligned")
    finally:
        unblock.cancel()
    assert result.exit_code == 0, result.output
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet").set_index("src_path")
    refused = manifest[manifest.status != "ok"]
    assert len(manifest) == 6 + 2 and (manifest.status == "ok").sum() == 6
    assert sorted(refused.index) == ["dev/null", pipe.relative_to(tmp_path.anchor).as_posix()]
    assert set(refused.error) == {"cannot read the file: not a regular file (a pipe, socket or device)"}


def test_a_folder_linked_into_the_tree_is_walked_and_a_link_loop_ends(small_tree, tmp_path):
    """Trees are often assembled from links: a linked identity folder is masked like a real
    one (it used to be left out without a word), and a link back up the tree is walked once."""
    elsewhere = tmp_path / "elsewhere" / "linked_identity"
    elsewhere.mkdir(parents=True)
    chips = sorted(ALIGNED.rglob("*.jpg"))[-2:]
    for chip in chips:
        shutil.copy(chip, elsewhere / chip.name)
    (small_tree / "linked_identity").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back_up").symlink_to(small_tree, target_is_directory=True)
    result = invoke("mask", small_tree, "-o", tmp_path / "out", "--aligned")
    assert result.exit_code == 0, result.output
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(manifest) == 6 + 2 and (manifest.status == "ok").all()
    assert sorted(manifest.src_path[manifest.identity == "linked_identity"]) == [f"linked_identity/{c.name}" for c in chips]


def test_an_image_whose_occlusion_name_is_too_long_is_a_row_and_leaves_no_file(small_tree, tmp_path):
    """NAME_mask.png is 5 bytes longer than NAME.jpg: at 252 bytes the image fits the file
    system's 255 and its mask does not. The row names the mask; the image is not left behind."""
    chip = next(small_tree.rglob("*.jpg"))
    long_name = chip.with_name("x" * 248 + ".jpg")
    shutil.copy(chip, long_name)
    out = tmp_path / "out"
    result = invoke("mask", small_tree, "-o", out, "--aligned")
    assert result.exit_code == 0, result.output
    row = pd.read_parquet(out / "manifest.parquet").set_index("src_path").loc[long_name.relative_to(small_tree).as_posix()]
    assert row.status == "write_error" and row.out_path == "" and row.mask_path == ""
    assert "File name too long" in row.error and row.error.endswith("x" * 40 + "_mask.png'")
    assert not (out / long_name.relative_to(small_tree)).exists()
    assert len([p for p in out.rglob("*") if p.is_file() and p.suffix != ".parquet"]) == 6 * 2


def test_an_interrupted_run_keeps_a_manifest_of_what_it_did(small_tree, tmp_path, monkeypatch):
    """Ctrl-C in the middle of a batch (here: batches of 2, the interrupt on the 4th image's
    write): the manifest has the rows of the 2 images done, and the other files the
    interrupted batch had written are gone, so each file left has its row."""
    from maskgen.jobs import local, sinks

    monkeypatch.setattr(local, "BATCH_SIZE", 2)
    put, calls = sinks.FilesSink.put, []

    def put_until_interrupted(self, rows, payload):
        calls.append(rows[0]["src_path"])
        if len(calls) == 4:
            raise KeyboardInterrupt  # as Ctrl-C would, between two writes
        put(self, rows, payload)

    monkeypatch.setattr(sinks.FilesSink, "put", put_until_interrupted)
    out = tmp_path / "out"
    result = invoke("mask", small_tree, "-o", out, "--aligned")
    assert result.exit_code == 130 and "interrupted after 2 of 6 images" in result.output
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert sorted(manifest.src_path) == sorted(calls[:2]) and (manifest.status == "ok").all()
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.parquet"}
    assert files == set(manifest.out_path) | set(manifest.mask_path)


def test_the_input_folder_as_the_output_is_refused_before_anything_is_written(small_tree, tmp_path):
    """OUT/REL is the input REL itself when OUT is the inputs' folder: the masked images would
    replace the photos. Inputs named one by one share that folder too."""
    before = {p: p.read_bytes() for p in small_tree.rglob("*") if p.is_file()}
    identity = next(p for p in sorted(small_tree.iterdir()))
    for args in ([small_tree, "-o", small_tree], [*sorted(identity.glob("*.jpg")), "-o", identity]):
        result = invoke("mask", *args, "--aligned")
        assert result.exit_code == 2 and "would replace the originals" in result.output
    assert {p: p.read_bytes() for p in small_tree.rglob("*") if p.is_file()} == before
    assert invoke("mask", small_tree, "-o", small_tree / "masked", "--aligned").exit_code == 0  # a folder inside: fine


def test_wild_photos_mask_every_face(tmp_path):
    out = tmp_path / "out"
    result = invoke("mask", WILD / "bald_guys.jpg", WILD / "dogs.jpg", "-o", out, "--type", "surgical")
    assert result.exit_code == 0, result.output
    manifest = pd.read_parquet(out / "manifest.parquet")
    faces = manifest[manifest.src_path == "bald_guys.jpg"]
    assert len(faces) == 24 and sorted(faces.face_index) == list(range(24)) and (faces.status == "ok").all()
    assert manifest[manifest.src_path == "dogs.jpg"].status.tolist() == ["no_face"]
    occlusion = cv2.imread(str(out / "bald_guys_mask.png"), 0)
    assert (occlusion > 0).mean() > 0.01


def test_user_mistakes_get_one_line_errors(tmp_path):
    for args, message in [
        (("mask", tmp_path / "nope", "-o", tmp_path / "o"), "no such file or folder"),
        (("mask", ALIGNED, "-o", tmp_path / "o", "--type", "n96"), "unknown value 'n96'"),
        (("mask", ALIGNED, "-o", tmp_path / "o", "--color", "blurple"), "not a colour"),
        (("mask", ALIGNED, "-o", tmp_path / "o", "--layout", "round"), "unknown crop layout"),
        (("mask", ALIGNED, "-o", tmp_path / "o", "--landmarker", "fast"), "--landmarker: unknown engine 'fast'"),
        (("preview", tmp_path), "holds no maskgen manifest"),
        # rich markup in a path is shown as typed, not parsed (it used to crash or vanish)
        (("mask", tmp_path / "in[/bold]", "-o", tmp_path / "o"), "in[/bold]"),
        (("mask", tmp_path / "in[red]x", "-o", tmp_path / "o"), "in[red]x"),
    ]:
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_a_missing_model_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKGEN_MMOD", str(tmp_path / "nope.dat"))
    result = invoke("mask", WILD / "obama.jpg", "-o", tmp_path / "o", "--detector", "cnn")
    assert result.exit_code == 2 and "MASKGEN_MMOD" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_a_file_name_that_is_not_utf8_is_refused_before_any_work(small_tree, tmp_path):
    src = next(small_tree.rglob("*.jpg"))
    odd = src.parent / "caf\udce9.jpg"  # the byte 0xE9 alone: not UTF-8, as os gives it
    shutil.copy(src, odd)
    result = invoke("mask", small_tree, "-o", tmp_path / "out", "--aligned")
    assert result.exit_code == 2 and "not valid UTF-8" in result.output and "caf\\xe9.jpg" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_preview_contact_sheet(small_tree, tmp_path):
    out = tmp_path / "out"
    assert invoke("mask", small_tree, "-o", out, "--aligned").exit_code == 0
    result = invoke("preview", out, "--rows", 4)
    assert result.exit_code == 0, result.output
    sheet = cv2.imread(str(out / "preview.png"))
    assert sheet.shape[0] >= 4 * 160 and sheet.shape[1] >= 3 * 160
    # the left column is the original photo, not a grey placeholder
    assert sheet[:160, :160].std() > 20
