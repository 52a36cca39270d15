"""`maskgen inspect OUT_DIR`: counts, failure examples and coverage from a real run's manifest."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from pipeline_helpers import N_FACES, copy_faces, ensure_ray, invoke


@pytest.fixture(scope="module")
def run_with_failures(tmp_path_factory):
    ensure_ray()
    root = tmp_path_factory.mktemp("inspect")
    tree = copy_faces(root / "faces")
    (tree / "John_Simm" / "empty.jpg").write_bytes(b"")
    out = root / "out"
    result = invoke("generate", tree, out, "--variants", 2, "--keep-original", "--wear", "proper:0.5,chin:0.5", "--shard-size", 10, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_json_report_counts_everything(run_with_failures):
    result = invoke("inspect", run_with_failures, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    df = pd.read_parquet(run_with_failures / "manifest")
    n_inputs = N_FACES + 1
    assert report["rows"] == len(df) == n_inputs * 3
    assert report["inputs"] == {"in_manifest": n_inputs, "planned": n_inputs}
    assert report["shards"]["written"] == report["shards"]["planned"]
    assert report["status"] == {"ok": N_FACES * 3, "decode_error": 3}
    assert report["variant"] == {"masked": n_inputs * 2, "original": n_inputs}
    assert sum(report["mask_type"].values()) == sum(report["wear"].values()) == N_FACES * 2
    assert set(report["wear"]) == {"proper", "chin"}
    assert report["identities"]["count"] == 5
    assert report["identities"]["most_failures"] == [{"identity": "John_Simm", "failed": 3, "rows": 36}]
    assert report["by_identity"]["John_Simm"] == {"rows": 36, "failed": 3}
    assert [e["src_path"] for e in report["failure_examples"]] == ["John_Simm/empty.jpg"] * 3
    cov = report["coverage"]
    masked = df[(df["status"] == "ok") & (df["variant"] == "masked")]
    assert cov["count"] == len(masked) and cov["mean"] == pytest.approx(masked["coverage"].mean(), rel=1e-5)
    assert 0 < cov["min"] <= cov["p05"] <= cov["p50"] <= cov["p95"] <= cov["max"] <= 1
    assert cov["mean_by_wear"]["chin"] < cov["mean_by_wear"]["proper"]  # on the chin covers less


def test_text_report(run_with_failures):
    result = invoke("inspect", run_with_failures)
    assert result.exit_code == 0, result.output
    for words in ("status", "decode_error", "mask type", "wear", "coverage: mean", "identities: 5", "John_Simm/empty.jpg"):
        assert words in result.stdout


def test_an_incomplete_run_says_so(run_with_failures, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(run_with_failures, out)
    next((out / "manifest").glob("*.parquet")).unlink()
    result = invoke("inspect", out)
    assert result.exit_code == 0 and "incomplete" in result.stdout


def test_no_manifest_is_a_clear_error(tmp_path):
    result = invoke("inspect", tmp_path)
    assert result.exit_code == 2 and "no manifest shards" in result.stderr
