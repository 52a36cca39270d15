"""`maskgen inspect OUT_DIR`: counts, failure examples and coverage from a real run's manifest."""

from __future__ import annotations

import json

import numpy as np
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
    if "qa_face" in df:  # the job writes the qa_ signals: every rendered row counted, and the sample faces all pass
        qa = report["qa"]
        assert qa["rows"] == len(masked) and qa["signals"]["qa_face"]["count"] == len(masked)
        assert qa["failing"] == {"count": 0, "share": 0.0, "by_check": {}} and qa["failing_examples"] == []


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


def _qa_manifest(out, shards: list[list[dict]]) -> None:
    """A manifest with the qa_ columns, written the way the job writes one: a shard per list."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from maskgen.masks.quality import QA_SIGNALS

    schema = pa.schema(
        [(name, pa.string()) for name in ("identity", "src_path", "variant", "mask_type", "wear")]
        + [("variant_index", pa.int16()), ("coverage", pa.float32())]
        + [(name, pa.float32()) for name in QA_SIGNALS]
        + [("status", pa.string()), ("error", pa.string())]
    )
    (out / "manifest").mkdir(parents=True)
    for index, rows in enumerate(shards):
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "manifest" / f"shard-{index:05d}.parquet")


def _qa_row(rel: str, status: str = "ok", **signals) -> dict:
    good = {"qa_coverage": 0.45, "qa_eyes": 0.0, "qa_spill": 0.0, "qa_outside": 0.0, "qa_shape": 0.08,
            "qa_eye_scale": 0.36, "qa_face": 6.0}
    rendered = status in ("ok", "qa_reject")
    return {"identity": rel.split("/")[0], "src_path": rel, "variant": "masked", "mask_type": "surgical" if rendered else "",
            "wear": "proper" if rendered else "", "variant_index": 0, "coverage": 0.45 if rendered else None,
            **({**good, **signals} if rendered else {}), "status": status,
            "error": {"ok": "", "qa_reject": "qa: face runs off the image"}.get(status, "cannot read the file")}


def test_qa_section_lists_the_outliers(tmp_path):
    from maskgen.datasets.inspection import inspect_output

    out = tmp_path / "out"
    faces = [i * 0.5 + 2.0 for i in range(16)]  # good faceness, 2.0 .. 9.5
    first = [_qa_row(f"a/{i:02d}.jpg", qa_face=f) for i, f in enumerate(faces[:8])]
    first += [_qa_row("a/dog.jpg", qa_face=-2.5), _qa_row("a/broken.jpg", status="decode_error")]
    second = [_qa_row(f"b/{i:02d}.jpg", qa_face=f) for i, f in enumerate(faces[8:])]
    second += [_qa_row("b/shifted.jpg", "qa_reject", qa_outside=0.3, qa_face=-5.0), _qa_row("b/nan.jpg", qa_face=float("nan"))]
    _qa_manifest(out, [first, second])
    report = inspect_output(out, examples=5)
    assert report["status"] == {"ok": 18, "decode_error": 1, "qa_reject": 1}  # counted like any status
    assert [e["src_path"] for e in report["failure_examples"]] == ["a/broken.jpg", "b/shifted.jpg"]
    qa = report["qa"]
    assert qa["rows"] == 19 and qa["thresholds"]["min_face"] == 0.0
    assert qa["failing"]["count"] == 2 and qa["failing"]["by_check"] == {"qa_face < 0": 2, "qa_outside > 0.15": 1}
    dog, shifted = qa["failing_examples"]
    assert (dog["src_path"], dog["variant"], dog["status"]) == ("a/dog.jpg", "masked", "ok")
    assert dog["reasons"] == ["not a face at the landmarks (faceness -2.5)"] and dog["signals"]["qa_face"] == -2.5
    assert shifted["src_path"] == "b/shifted.jpg" and len(shifted["reasons"]) == 2
    assert shifted["signals"]["qa_outside"] == pytest.approx(0.3)
    # per signal: the rows nearest to or past its threshold, across shards; NaN is no value
    assert [e["src_path"] for e in qa["top"]["qa_face"]] == ["b/shifted.jpg", "a/dog.jpg", "a/00.jpg"]
    assert [e["margin"] for e in qa["top"]["qa_face"]] == pytest.approx([5.0, 2.5, -2.0])
    assert qa["top"]["qa_outside"][0]["src_path"] == "b/shifted.jpg"
    values = np.array([*faces, -2.5, -5.0])
    face = qa["signals"]["qa_face"]
    assert face["count"] == 18 and face["max"] == 9.5 and face["min"] == -5.0
    assert face["p50"] == pytest.approx(np.percentile(values, 50)) and face["p05"] == pytest.approx(np.percentile(values, 5))
    assert qa["signals"]["qa_eyes"] == {"count": 19, "min": 0.0, "p05": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    json.dumps(report, allow_nan=False)  # JSON-ready: no NaN anywhere

    result = invoke("inspect", out)
    assert result.exit_code == 0, result.output
    for words in ("qa: 2 of 19 rendered rows", "qa_face < 0: 2", "qa signals", "a/dog.jpg", "b/shifted.jpg (masked #0)",
                  "not a face at the landmarks"):
        assert words in result.stdout, words


def test_a_manifest_without_qa_columns_has_no_qa_section(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from maskgen.datasets.inspection import inspect_output

    out = tmp_path / "out"
    (out / "manifest").mkdir(parents=True)
    rows = [{k: v for k, v in _qa_row("a/1.jpg").items() if not k.startswith("qa_")}]
    pq.write_table(pa.Table.from_pylist(rows), out / "manifest" / "shard-00000.parquet")
    report = inspect_output(out)
    assert "qa" not in report and report["status"] == {"ok": 1}
    assert "qa:" not in invoke("inspect", out).stdout
