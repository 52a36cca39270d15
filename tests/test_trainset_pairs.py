"""`maskgen trainset` and `maskgen pairs` on a real masked run of the sample faces."""

from __future__ import annotations

import json
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import ALIGNED
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.datasets.pairs import make_pairs, read_lfw_pairs, write_lfw_pairs
from maskgen.datasets.runs import collect_images
from maskgen.evaluation.evaluate import read_pairs
from maskgen.schemas import PATHS_BASE_KEY, read_key

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = invoke("mask", ALIGNED, "-o", out, "--aligned", "--variants", 2, "--keep-original", "-q")
    assert result.exit_code == 0, result.output
    return out


def test_trainset_labels_ratio_exclusions_holdout(masked_run, tmp_path):
    out = tmp_path / "train.parquet"
    result = invoke("trainset", masked_run, "-o", out, "--masked-ratio", 1, "--exclude", "John_Simm", "--holdout", 0.25)
    assert result.exit_code == 0, result.output
    train = pd.read_parquet(out)
    labels = json.loads((tmp_path / "train.labels.json").read_text())
    assert sorted(labels.values()) == list(range(len(labels))) == sorted(train.label.unique())
    assert "John_Simm" not in labels and "John_Simm" not in set(train.identity)
    held = pd.read_parquet(tmp_path / "train.holdout.parquet")
    assert held.identity.nunique() == 1 and not set(held.identity) & set(train.identity)
    counts = train.groupby(["identity", "variant"]).size().unstack()
    assert (counts.masked == counts.original).all()  # ratio 1: as many masked as originals
    assert all(p.endswith(".jpg") and (tmp_path / p).is_file() for p in train.path)  # relative to its folder
    assert "left out: excluded identity" in result.output


def test_adding_an_identity_keeps_existing_labels(masked_run, tmp_path):
    out = tmp_path / "train.parquet"
    assert invoke("trainset", masked_run, "-o", out, "--exclude", "John_Salley").exit_code == 0
    before = json.loads((tmp_path / "train.labels.json").read_text())
    assert invoke("trainset", masked_run, "-o", out).exit_code == 0  # John_Salley comes back
    after = json.loads((tmp_path / "train.labels.json").read_text())
    assert all(after[name] == label for name, label in before.items())
    assert after["John_Salley"] == len(before)  # appended, not inserted (it sorts first)
    assert invoke("trainset", masked_run, "-o", out, "--renumber").exit_code == 0
    assert json.loads((tmp_path / "train.labels.json").read_text())["John_Salley"] == 0


def test_pairs_balanced_and_identity_disjoint(masked_run, tmp_path):
    out = tmp_path / "pairs.parquet"
    result = invoke("pairs", masked_run, "-o", out, "--folds", 2, "--seed", 4)
    assert result.exit_code == 0, result.output
    pairs = pd.read_parquet(out)
    assert set(pairs.pair_type) == {"masked-unmasked", "masked-masked", "unmasked-unmasked"}
    counts = pairs.groupby(["pair_type", "fold", "same"]).size()
    for pair_type in set(pairs.pair_type):
        assert counts[pair_type].nunique() == 1  # equal positives and negatives in every fold
    folds_of = pairs.melt(id_vars="fold", value_vars=["identity_a", "identity_b"]).groupby("value").fold.nunique()
    assert (folds_of == 1).all()  # no identity in two folds
    same = pairs[pairs.same]
    assert (same.identity_a == same.identity_b).all() and (same.src_a != same.src_b).all()
    mu = pairs[pairs.pair_type == "masked-unmasked"]
    assert (mu.mask_type_a != "").all() and (mu.mask_type_b == "").all()
    again = tmp_path / "again.parquet"
    assert invoke("pairs", masked_run, "-o", again, "--folds", 2, "--seed", 4).exit_code == 0
    pd.testing.assert_frame_equal(pairs, pd.read_parquet(again))


def test_pairs_that_cannot_be_balanced_say_why(masked_run, tmp_path):
    result = invoke("pairs", masked_run, "-o", tmp_path / "p.parquet")  # 5 identities, 10 folds
    assert result.exit_code == 2 and "cannot fill 10 identity-disjoint folds" in result.output
    assert "the most that works is --folds 2" in " ".join(result.output.split())  # 5 identities: 2 folds
    result = invoke("pairs", masked_run, "-o", tmp_path / "p.parquet", "--folds", 2, "--per-fold", 100000)
    assert result.exit_code == 2 and "cannot balance" in result.output


def test_lfw_pairs_txt_round_trip(tmp_path):
    images, _ = collect_images([ALIGNED])
    pairs = make_pairs(images, folds=2, types=("unmasked-unmasked",), seed=1)
    write_lfw_pairs(pairs, tmp_path / "pairs.txt", ALIGNED)
    header = (tmp_path / "pairs.txt").read_text().splitlines()[0].split()
    assert header == ["2", str(len(pairs) // 4)]
    back = read_lfw_pairs(tmp_path / "pairs.txt", ALIGNED)
    ordered = pairs.sort_values(["fold", "same"], ascending=[True, False], kind="stable").reset_index(drop=True)
    assert back[["fold", "same", "path_a", "path_b"]].equals(ordered[["fold", "same", "path_a", "path_b"]])


def test_plain_tree_gives_unmasked_pairs_only(tmp_path):
    result = invoke("pairs", ALIGNED, "-o", tmp_path / "p.parquet", "--folds", 2, "--types", "unmasked-unmasked")
    assert result.exit_code == 0, result.output
    result = invoke("pairs", ALIGNED, "-o", tmp_path / "p.parquet", "--folds", 2, "--types", "masked-unmasked")
    assert result.exit_code == 2 and "cannot balance masked-unmasked" in result.output


def test_manifests_written_from_another_folder_find_their_images(masked_run, tmp_path, monkeypatch):
    """trainset and pairs written into a subfolder from a third folder, the run named relative
    to it: the trainer's reader and evaluate's, run from yet another folder, find every image."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    run = os.path.relpath(masked_run, work)
    assert invoke("trainset", run, "-o", "sub/t.parquet", "--holdout", 0.2).exit_code == 0
    assert invoke("pairs", run, "-o", "sub/p.parquet", "--folds", 2).exit_code == 0
    for name in ("t.parquet", "t.holdout.parquet", "p.parquet"):
        assert read_key(pq.read_schema(work / "sub" / name).metadata, PATHS_BASE_KEY) == "manifest"
    monkeypatch.chdir(tmp_path)
    pairs = read_pairs(work / "sub" / "p.parquet")
    assert all(os.path.isfile(p) for p in pd.concat([pairs.path_a, pairs.path_b]))
    pytest.importorskip("torch")
    from maskgen.recognition.data import read_manifest

    manifest = read_manifest(work / "sub" / "t.parquet")
    assert len(manifest.paths) and all(os.path.isfile(p) for p in manifest.paths)


def test_trainset_from_an_align_run(tmp_path):
    """An align run's crops are originals (its manifest has no variant column)."""
    import shutil

    from conftest import WILD
    from pipeline_helpers import ensure_ray

    ensure_ray()
    raw = tmp_path / "raw"
    for identity, photo in (("a", "obama.jpg"), ("b", "Tom_Cruise_avp_2014_4.jpg")):
        (raw / identity).mkdir(parents=True)
        shutil.copy(WILD / photo, raw / identity / photo)
    assert invoke("align", raw, tmp_path / "aligned", "--quiet").exit_code == 0
    result = invoke("trainset", tmp_path / "aligned", "-o", tmp_path / "t.parquet")
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "t.parquet")
    assert len(rows) == 2 and set(rows.variant) == {"original"} and sorted(rows.identity) == ["a", "b"]
    assert all((tmp_path / p).is_file() for p in rows.path)
