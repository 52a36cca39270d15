"""ImageJob.process_batch (stage by stage over many inputs) against one input at a time,
and the shard runner's per-input fallback when a batch raises."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import ALIGNED

from maskgen.jobs import masking as job_module
from maskgen.jobs.masking import ImageJob, JobConfig
from maskgen.pipeline.shards import process_entries


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[tuple[Path, str, None]]:
    """Real chips of two identities, with a corrupt file and a blank crop among them."""
    import cv2
    import numpy as np

    root = tmp_path_factory.mktemp("faces")
    files = [f for name in ("John_Salley", "John_Savage") for f in sorted((ALIGNED / name).glob("*.jpg"))[:4]]
    for f in files:
        (root / f.parent.name).mkdir(exist_ok=True)
        shutil.copy(f, root / f.parent.name / f.name)
    (root / "John_Salley" / "broken.jpg").write_bytes(files[0].read_bytes()[:300])
    cv2.imwrite(str(root / "John_Savage" / "blank.png"), np.full((150, 150, 3), 128, np.uint8))
    rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
    return [(root / rel, rel, None) for rel in rels]


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items() if k != "elapsed_ms"} for r in rows]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_batch_equals_one_at_a_time(inputs, tmp_path, monkeypatch):
    config = JobConfig(seed=5, variants=2, keep_original=True)
    single = [ImageJob(config).process(src, rel, tmp_path / "single") for src, rel, _ in inputs]
    # A tiny byte budget splits the batch into several sub-batches on the way.
    monkeypatch.setattr(job_module, "BATCH_BYTES", 3 * 150 * 150 * 3)
    job = ImageJob(config)
    finishes = []
    real_finish = job._finish
    job._finish = lambda batch, out_root: finishes.append(len(batch)) or real_finish(batch, out_root)
    batched = job.process_batch(inputs, tmp_path / "batched")
    assert len(finishes) >= 3 and sum(finishes) == len(inputs)

    assert [_comparable(r) for r in batched] == [_comparable(r) for r in single]
    statuses = {rows[0]["src_path"].split("/")[-1]: rows[0]["status"] for rows in batched}
    assert statuses.pop("broken.jpg") == "decode_error" and statuses.pop("blank.png") == "no_face"
    assert set(statuses.values()) == {"ok"}
    assert all(r["elapsed_ms"] > 0 for rows in batched for r in rows)
    assert _files(tmp_path / "batched") == _files(tmp_path / "single")


class FailsOn(ImageJob):
    """A real ImageJob that hits a bug (raises) while rendering one chosen input."""

    def __init__(self, config, bad_rel):
        super().__init__(config)
        self.bad_rel = bad_rel

    def _render(self, item):
        if item.rel == self.bad_rel:
            raise RuntimeError("injected bug")
        super()._render(item)


def test_a_bug_in_a_batch_costs_only_its_own_input(inputs, tmp_path):
    good = [(src, rel, None) for src, rel, _ in inputs if "broken" not in rel and "blank" not in rel]
    entries = [{"rel": rel, "identity": f"id-{rel.split('/')[0]}"} for _, rel, _ in good]
    root = good[0][0].parents[1]
    bad = entries[2]["rel"]

    results = process_entries(FailsOn(JobConfig(), bad), entries, root, tmp_path, {"variants": 1}, False)

    assert [rows[0]["src_path"] for rows in results] == [e["rel"] for e in entries]  # order kept
    for entry, rows in zip(entries, results):
        assert [r["identity"] for r in rows] == [entry["identity"]]  # the input list's identity wins
        if entry["rel"] == bad:
            assert rows[0]["status"] == "render_error" and "injected bug" in rows[0]["error"]
        else:
            assert rows[0]["status"] == "ok" and (tmp_path / rows[0]["out_path"]).is_file()


def test_a_bug_in_mask_costs_only_its_own_image(inputs, tmp_path, monkeypatch):
    """`maskgen mask`'s loop: the run completes and its manifest accounts for the culprit."""
    import pandas as pd

    from maskgen.jobs import local

    root = inputs[0][0].parents[1]
    found = local.find_images([root])
    bad = found.images[1][1]
    monkeypatch.setattr(local, "ImageJob", lambda config: FailsOn(config, bad))

    local.mask_images(found, tmp_path / "out", JobConfig())

    manifest = pd.read_parquet(tmp_path / "out" / local.MANIFEST_NAME).set_index("src_path")
    assert sorted(manifest.index) == sorted(rel for _, rel in found.images)
    assert manifest.loc[bad, "status"] == "render_error" and "injected bug" in manifest.loc[bad, "error"]
    assert (manifest.drop(index=bad).status != "render_error").all()
    assert (manifest.status == "ok").sum() == len(found.images) - 3  # the culprit, broken.jpg, blank.png


def test_mask_keeps_order_and_progress_across_batches(inputs, tmp_path, monkeypatch):
    from maskgen.jobs import local

    monkeypatch.setattr(local, "BATCH_SIZE", 4)
    found = local.find_images([inputs[0][0].parents[1]])
    seen = []
    rows = local.mask_images(found, tmp_path / "out", JobConfig(), on_image=lambda r: seen.append(r[0]["src_path"]))
    assert seen == [rel for _, rel in found.images] == [r["src_path"] for r in rows]


def test_mask_command_exits_1_when_a_bug_hit_an_image(inputs, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from maskgen.cli import app
    from maskgen.jobs import local

    root = inputs[0][0].parents[1]
    bad = local.find_images([root]).images[2][1]
    monkeypatch.setattr(job_module, "ImageJob", lambda config: FailsOn(config, bad))
    result = CliRunner().invoke(app, ["mask", str(root), "-o", str(tmp_path / "out"), "--aligned"])
    assert result.exit_code == 1, result.output
    assert "1 rows hit an internal error" in result.output and "Traceback" not in result.output
    assert (tmp_path / "out" / "manifest.parquet").is_file()


def test_an_input_that_cannot_be_read_is_a_row_naming_why(inputs, tmp_path):
    """A file gone since it was listed, or a folder where a file was expected: a decode_error
    row with the system's reason, beside the real faces of the same batch."""
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    batch = [*inputs[:2], (tmp_path / "gone.jpg", "gone.jpg", None), (folder, "folder.jpg", None)]
    results = ImageJob(JobConfig()).process_batch(batch, tmp_path / "out")
    assert [rows[0]["status"] for rows in results] == ["ok", "ok", "decode_error", "decode_error"]
    assert results[2][0]["error"] == "cannot read the file: No such file or directory"
    assert results[3][0]["error"] == "cannot read the file: Is a directory"


def test_read_input_reads_every_byte_of_a_file_and_a_record(inputs, tmp_path):
    from maskgen.jobs.protocol import read_input

    path = inputs[0][0]
    assert read_input(path) == read_input(str(path)) == path.read_bytes()
    large = tmp_path / "large.bin"
    large.write_bytes(bytes(range(256)) * 20_000)  # 5 MB
    assert read_input(large) == large.read_bytes()

    class Record:  # what a .rec input is to the jobs: something with read_bytes()
        def read_bytes(self):
            return b"record"

    assert read_input(Record()) == b"record"
