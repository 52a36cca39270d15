"""`maskgen evaluate` through typer's CliRunner: a report end to end with the dlib reference,
and bad input (missing images, empty pairs, not a checkpoint) as one red line, exit code 2."""

from __future__ import annotations

import json
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ALIGNED
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.datasets.pairs import write_pairs
from maskgen.datasets.samples import build_sample_pairs
from maskgen.evaluation.evaluate import read_pairs
from maskgen.schemas import PAIRS_SCHEMA, PATHS_BASE_KEY

runner = CliRunner()
def invoke(*args):
    return runner.invoke(app, ["evaluate", *map(str, args)])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Sample pairs, and small subsets with few distinct images (dlib takes ~0.15 s an image)."""
    folder = tmp_path_factory.mktemp("pairs")
    full = build_sample_pairs(folder, source=ALIGNED, per_fold=6)
    table = read_pairs(full)  # absolute image paths: subsets can be written anywhere
    small = table.groupby(["pair_type", "fold", "same"]).head(1).reset_index(drop=True)  # 12 pairs
    plain = table[table.pair_type == "unmasked-unmasked"].groupby(["fold", "same"]).head(2).reset_index(drop=True)
    write_pairs(small, folder / "small.parquet")
    return {"full": full, "small": folder / "small.parquet", "table": small, "plain": plain}


def rewrite(table: pd.DataFrame, target, metadata: dict | None = None):
    """A pairs file as written by hand or by an older maskgen: no metadata unless given."""
    arrow = pa.Table.from_pandas(table, schema=PAIRS_SCHEMA, preserve_index=False)
    pq.write_table(arrow.replace_schema_metadata(metadata), target)
    return target


def test_dlib_report_end_to_end(pairs, tmp_path):
    out = tmp_path / "results"
    result = invoke("--model", "dlib-resnet", "--pairs", pairs["small"], "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [g["group"] for g in report["groups"]] == ["all", "masked-masked", "masked-unmasked", "unmasked-unmasked"]
    assert report["pairs"]["evaluated"] == len(pairs["table"]) and report["model"]["model"] == "dlib-resnet"
    assert {"report.md", "roc.png", "scores.parquet"} <= {p.name for p in out.iterdir()}
    assert "embedded" in result.stdout


def test_tables_are_whole_when_stdout_is_not_a_terminal(pairs, tmp_path):
    """CliRunner's stdout is a pipe: rich would cut the tables at 80 columns ("masked-u…")."""
    result = invoke("--model", "dlib-resnet", "--pairs", pairs["small"], "-o", tmp_path / "results")
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    for text in ("masked-unmasked", "unmasked-unmasked", "masked-masked", "TAR % @ FAR 1%", "TAR % @ FAR 0.1%",
                 "mask: ", "Δ vs unmasked-unmasked (pts)"):
        assert text in result.stdout, text


def test_pairs_written_elsewhere_are_evaluated_from_any_folder(pairs, tmp_path, monkeypatch):
    """`pairs -o sub/p.parquet` from one folder, `evaluate` from another: the images are found."""
    monkeypatch.chdir(tmp_path)
    small = pd.read_parquet(pairs["small"])
    run = os.path.relpath(pairs["full"].parent / "run", tmp_path)
    assert runner.invoke(app, ["pairs", run, "-o", "sub/p.parquet", "--folds", 2]).exit_code == 0
    written = pd.read_parquet(tmp_path / "sub" / "p.parquet")
    assert not any(os.path.isabs(p) for p in written.path_a) and not small.empty
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    subset = written.groupby(["pair_type", "fold", "same"]).head(1)
    target = tmp_path / "sub" / "few.parquet"
    rewrite(subset, target, {PATHS_BASE_KEY.encode(): b"manifest"})
    result = invoke("--model", "dlib-resnet", "--pairs", target, "-o", "r", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads((elsewhere / "r" / "report.json").read_text())["skipped"]["pairs"] == 0
    scores = pq.read_table(elsewhere / "r" / "scores.parquet")
    stored = scores.column("path_a").to_pylist()
    assert all((elsewhere / "r" / p).is_file() for p in stored)  # relative to the scores file's folder


def test_pairs_from_before_the_convention_are_read_from_the_current_folder(pairs, tmp_path, monkeypatch):
    """No maskgen.paths_base: a path is looked up beside the file, else (older maskgen) from the current folder."""
    table = read_pairs(pairs["small"])
    monkeypatch.chdir(tmp_path)
    cwd_relative = table.assign(path_a=[os.path.relpath(p) for p in table.path_a])
    legacy = rewrite(cwd_relative, tmp_path.parent / f"{tmp_path.name}-legacy.parquet")
    assert all(map(os.path.samefile, read_pairs(legacy).path_a, table.path_a))


def test_an_unknown_path_base_is_one_line(pairs, tmp_path):
    target = rewrite(read_pairs(pairs["small"]), tmp_path / "p.parquet", {PATHS_BASE_KEY.encode(): b"moon"})
    result = invoke("--model", "dlib-resnet", "--pairs", target, "-o", tmp_path / "r")
    assert result.exit_code == 2 and "image paths relative to 'moon'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_images_are_refused_by_default_and_named(pairs, tmp_path):
    table = pairs["table"].copy()
    table.loc[0, "path_a"] = str(tmp_path / "gone" / "a.jpg")
    result = invoke("--model", "dlib-resnet", "--pairs", rewrite(table, tmp_path / "p.parquet"), "-o", tmp_path / "r")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: 1 image(s) missing or unreadable, used by 1 pair(s)")
    assert "a.jpg: no such file" in result.stderr and "--skip-missing" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_skip_missing_evaluates_the_rest_and_reports_what_was_left_out(pairs, tmp_path):
    table = pairs["plain"].copy()  # 2 folds x (2 same + 2 different)
    unreadable = tmp_path / "broken.jpg"
    unreadable.write_bytes(b"\xff\xd8\xff garbage")
    table.loc[0, "path_a"] = str(tmp_path / "gone.jpg")
    table.loc[table.index[-1], "path_b"] = str(unreadable)
    out = tmp_path / "r"
    result = invoke("--model", "dlib-resnet", "--pairs", rewrite(table, tmp_path / "p.parquet"), "-o", out,
                    "--skip-missing", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"]["pairs"] == 2 and report["pairs"]["evaluated"] == len(table) - 2
    assert set(report["skipped"]["images"]) == {str(tmp_path / "gone.jpg"), str(unreadable)}
    assert "2 pair(s) left out" in (out / "report.md").read_text()


def test_an_empty_pairs_file_is_refused(tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(PAIRS_SCHEMA.empty_table(), empty)
    result = invoke("--model", "dlib-resnet", "--pairs", empty, "-o", tmp_path / "r")
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {empty} holds no pairs"


@pytest.mark.parametrize("content, message", [
    (b"PAR1 not parquet", "is not a Parquet pairs file"),
    (None, "pairs file not found"),
])
def test_pairs_that_are_not_a_pairs_file(tmp_path, content, message):
    target = tmp_path / "pairs.parquet"
    if content is not None:
        target.write_bytes(content)
    result = invoke("--model", "dlib-resnet", "--pairs", target, "-o", tmp_path / "r")
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_table_without_pair_columns_is_refused(tmp_path):
    target = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"path": ["a.jpg"], "label": [0]}), target)
    result = invoke("--model", "dlib-resnet", "--pairs", target, "-o", tmp_path / "r")
    assert result.exit_code == 2 and "lacks column(s) fold, same, path_a, path_b" in result.stderr


def test_a_file_that_is_not_a_checkpoint_is_refused(pairs, tmp_path):
    pytest.importorskip("torch")
    junk = tmp_path / "model.pt"
    junk.write_text("not a checkpoint")
    result = invoke("--model", junk, "--pairs", pairs["small"], "-o", tmp_path / "r")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "is not a maskgen checkpoint" in result.stderr
    assert "Traceback" not in result.output


def test_a_checkpoint_report_end_to_end(pairs, tmp_path):
    pytest.importorskip("torch")
    from maskgen.recognition.embeddings import save_untrained_checkpoint

    checkpoint = save_untrained_checkpoint(tmp_path / "train" / "checkpoint.pt", "sphereface4")
    out = tmp_path / "results"
    result = invoke("--model", checkpoint.parent, "--pairs", pairs["full"], "-o", out, "--device", "cpu", "-q",
                    "--mean", "on")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["model"] == "sphereface4" and report["model"]["feature_dim"] == 1024
    assert all(g["mean_subtraction"] == "on (asked for)" for g in report["groups"])
    assert result.stdout == ""


def test_an_unknown_mean_mode_is_refused_before_embedding(pairs, tmp_path):
    result = invoke("--model", "dlib-resnet", "--pairs", pairs["full"], "-o", tmp_path / "r", "--mean", "sometimes")
    assert result.exit_code == 2 and "--mean 'sometimes'" in result.stderr
