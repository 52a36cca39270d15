"""insightface's verification .bin on real faces: read and written byte-exactly, untrusted
pickles refused without running anything, a masked copy (MLFW-style) through `maskgen pairs
--from-bin`, and `maskgen evaluate --pairs X.bin`."""

from __future__ import annotations

import os
import pickle

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import aligned_files
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.datasets.verification_bin import BinError, read_bin, write_bin
from maskgen.faces.align import align_face, five_points
from maskgen.faces.landmarks import Landmarker

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def lfw_like(tmp_path_factory):
    """A small lfw.bin: ArcFace 112x112 JPEG crops of the sample faces; 10 same-person pairs
    (two photos of one identity) and 10 different-person pairs, alternating."""
    landmarker = Landmarker()
    by_identity: dict[str, list[bytes]] = {}
    for path in aligned_files():
        image = cv2.imread(str(path))
        crop, _ = align_face(image, five_points(landmarker.aligned(image).points), "arcface")
        by_identity.setdefault(path.parent.name, []).append(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes())
    people = sorted(by_identity)
    images, issame = [], []
    for k in range(10):
        a, b = people[k % 5], people[(k + 1) % 5]
        images += [by_identity[a][k % 11], by_identity[a][(k + 3) % 11]]  # same
        images += [by_identity[a][(k + 5) % 11], by_identity[b][k % 11]]  # different
        issame += [True, False]
    path = tmp_path_factory.mktemp("bins") / "lfw.bin"
    with open(path, "wb") as f:
        pickle.dump((images, issame), f, protocol=2)  # as the published files: an old protocol
    return path, images, issame


def test_read_and_write_are_byte_exact(lfw_like, tmp_path):
    path, images, issame = lfw_like
    bins = read_bin(path)
    assert bins.images == images and bins.issame.tolist() == issame and bins.pairs == 20
    write_bin(tmp_path / "copy.bin", bins.images, bins.issame)
    with open(tmp_path / "copy.bin", "rb") as f:
        loaded_images, loaded_issame = pickle.load(f, encoding="bytes")  # as insightface's load_bin reads it
    assert loaded_images == images and loaded_issame == issame
    as_arrays = tmp_path / "arrays.bin"  # some converters store numpy arrays
    with open(as_arrays, "wb") as f:
        pickle.dump(([np.frombuffer(i, np.uint8) for i in images], np.array(issame)), f)
    assert read_bin(as_arrays).images == images


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (pickle.dumps(([b"x"] * 4, [True, False]))[:-5], "unpickling failed"),
    (pickle.dumps({"images": []}), "expected (images, issame)"),
    (pickle.dumps(([b"x"] * 3, [True, False])), "3 images for 2 pairs"),
    (pickle.dumps(([], [])), "holds no pairs"),
    (pickle.dumps(([1, 2], [True])), "not encoded image bytes"),
    (pickle.dumps(_Exploit()), "never holds"),
])
def test_untrusted_or_broken_bins_are_one_line_errors(tmp_path, monkeypatch, content, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(BinError, match="bad.bin"):
        read_bin(path)
    result = invoke("evaluate", "--model", "dlib-resnet", "--pairs", path, "-o", tmp_path / "report")
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "pwned").exists()  # nothing in the pickle ran


@pytest.mark.parametrize("mode", ["first", "both"])
def test_a_masked_copy_of_the_bin(lfw_like, tmp_path, mode):
    path, images, issame = lfw_like
    out = tmp_path / f"masked_{mode}.bin"
    result = invoke("pairs", "--from-bin", path, "-o", out, "--mask", mode, "--seed", 3)
    assert result.exit_code == 0, result.output
    masked = read_bin(out)
    assert masked.issame.tolist() == issame and len(masked.images) == len(images)
    firsts = [a != b for a, b in zip(masked.images[0::2], images[0::2])]
    seconds = [a != b for a, b in zip(masked.images[1::2], images[1::2])]
    assert all(firsts) and (all(seconds) if mode == "both" else not any(seconds))  # unmasked images keep their bytes
    pairs = pd.read_parquet(out.with_suffix(".parquet"))
    assert set(pairs.pair_type) == {"masked-unmasked" if mode == "first" else "masked-masked"} and len(pairs) == 20
    assert sorted(set(pairs.fold)) == list(range(10))  # insightface's 10 consecutive folds
    if mode == "both":
        assert (pairs.mask_type_a == pairs.mask_type_b).all()  # one mask per pair: never the cue
    decoded = cv2.imdecode(np.frombuffer(masked.images[0], np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (112, 112, 3)
    again = invoke("pairs", "--from-bin", path, "-o", tmp_path / "again.bin", "--mask", mode, "--seed", 3)
    assert again.exit_code == 0 and read_bin(tmp_path / "again.bin").images == masked.images  # deterministic


def test_the_masked_copy_never_overwrites_its_source(lfw_like, tmp_path):
    source = tmp_path / "lfw.bin"
    source.write_bytes(lfw_like[0].read_bytes())
    result = invoke("pairs", "--from-bin", source, "-o", source)
    assert result.exit_code == 2 and "is the --from-bin file itself" in result.output and result.output.count("\n") == 1
    assert source.read_bytes() == lfw_like[0].read_bytes()


def test_evaluate_reads_a_bin(lfw_like, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKGEN_CACHE", str(tmp_path / "cache"))
    result = invoke("evaluate", "--model", "dlib-resnet", "--pairs", lfw_like[0], "-o", tmp_path / "report", "--quiet")
    assert result.exit_code == 0, result.output
    report = pd.read_json(tmp_path / "report" / "report.json", typ="series")
    (group,) = [g for g in report["groups"] if g["group"] == "unmasked-unmasked"]
    assert group["pairs"] == 20 and group["auc"] > 0.9
