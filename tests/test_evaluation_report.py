"""Scoring a pairs table and writing the report: every file is written and parses back, with
the numbers of the evaluation in it."""

from __future__ import annotations

import json
import os

import matplotlib.image
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from maskgen.bench.evaluate import synthetic_pairs
from maskgen.datasets.pairs import resolve_manifest_paths
from maskgen.evaluation.evaluate import Evaluation, mean_subtraction, score_pairs
from maskgen.evaluation.report import markdown, write_report
from maskgen.schemas import PATHS_BASE_KEY, read_key


@pytest.fixture(scope="module")
def evaluation() -> Evaluation:
    """Two pair types of synthetic features, 10 folds, with mask types and wear on one side."""
    masked, fa1, fb1 = synthetic_pairs(pairs=2000, dim=64, seed=0)
    plain, fa2, fb2 = synthetic_pairs(pairs=1000, dim=64, seed=1)
    plain = plain.assign(pair_type="unmasked-unmasked", mask_type_a="", wear_a="")
    table = pd.concat([masked, plain], ignore_index=True)
    groups, rows, curves, scored = score_pairs(table, np.vstack([fa1, fa2]), np.vstack([fb1, fb2]))
    report = {"model": {"model": "synthetic"}, "pairs": {"file": "x.parquet", "total": 3000, "evaluated": 3000},
              "protocol": "LFW", "groups": groups, "breakdown": rows, "skipped": {"pairs": 0, "images": {}}}
    return Evaluation(report, curves, scored)


def test_groups_are_all_pairs_then_each_pair_type(evaluation):
    groups = {g["group"]: g for g in evaluation.report["groups"]}
    assert list(groups) == ["all", "masked-unmasked", "unmasked-unmasked"]
    assert groups["all"]["pairs"] == 3000 and groups["masked-unmasked"]["pairs"] == 2000
    assert groups["unmasked-unmasked"]["folds"] == 10 and len(groups["unmasked-unmasked"]["fold_accuracy"]) == 10
    assert all(g["mean_subtraction"].startswith("on") for g in groups.values())  # 300 identities per fold


def test_breakdown_covers_each_mask_type_and_wear_of_the_masked_pairs_only(evaluation):
    rows = evaluation.report["breakdown"]
    assert {r["pair_type"] for r in rows} == {"masked-unmasked"}
    assert {r["value"] for r in rows if r["by"] == "mask_type"} == {"surgical", "n95", "kn95", "cloth", "respirator"}
    assert sum(r["pairs"] for r in rows if r["by"] == "wear") == 2000  # one masked side: no overlap


def test_report_files_are_written_and_parse(evaluation, tmp_path):
    targets = write_report(evaluation, tmp_path / "results")
    report = json.loads(targets["report.json"].read_text())
    assert report["groups"][1]["accuracy"] == pytest.approx(evaluation.report["groups"][1]["accuracy"])
    assert {e["far"] for e in report["groups"][0]["tar_at_far"]} == {0.01, 0.001}
    image = matplotlib.image.imread(targets["roc.png"])
    assert image.ndim == 3 and image.shape[0] > 200
    scores = pd.read_parquet(targets["scores.parquet"])
    assert len(scores) == 3000 and scores.score.notna().all()
    assert (scores.accepted == (scores.score >= scores.threshold)).all()
    text = targets["report.md"].read_text()
    assert "](roc.png)" in text and "## By mask type and wear" in text
    assert "| masked-unmasked | mask: cloth |" in text and "| masked-unmasked | wear: nose |" in text


def test_markdown_rows_carry_the_accuracy_and_note_unmeasurable_far(evaluation):
    text = markdown(json.loads(json.dumps(evaluation.report)))
    plain = next(g for g in evaluation.report["groups"] if g["group"] == "unmasked-unmasked")
    row = next(line for line in text.splitlines() if line.startswith("| unmasked-unmasked |"))
    assert f"{100 * plain['accuracy']:.2f} ± {100 * plain['accuracy_std']:.2f}" in row
    assert "n/a" in row  # 500 negatives: FAR 1e-3 is not measurable
    assert "FAR 0.1% needs >= 1000 different-identity pairs, have 500" in text
    assert "| TAR % @ FAR 1% | TAR % @ FAR 0.1% |" in text and "| TAR % | FAR % |" in text  # units in the headers


def test_scores_paths_are_relative_to_the_scores_file(evaluation, tmp_path):
    targets = write_report(evaluation, tmp_path / "deep" / "results")
    table = pq.read_table(targets["scores.parquet"])
    stored = table.column("path_a").to_pylist()
    assert read_key(table.schema.metadata, PATHS_BASE_KEY) == "manifest" and not os.path.isabs(stored[0])
    back = resolve_manifest_paths(stored, targets["scores.parquet"], table.schema.metadata)
    assert back == [os.path.realpath(p) for p in evaluation.scores.path_a]


def test_auto_mean_subtraction_is_off_when_training_folds_hold_few_identities():
    table, _, _ = synthetic_pairs(pairs=200, folds=2, identities_per_fold=3)
    subtract, why = mean_subtraction("auto", table)
    assert not subtract and "3 identities" in why
    assert mean_subtraction("on", table)[0] is True
    many, _, _ = synthetic_pairs(pairs=200, folds=2, identities_per_fold=40)
    assert mean_subtraction("auto", many)[0] is True
