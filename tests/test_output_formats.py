"""`generate --output-format files|rec|webdataset|parquet`: the same masked bytes in every
container, byte for byte; the `.rec` in insightface's layout with trainset's labels; the
trainer reads every container as it reads a training manifest; a `.rec` input with bad
records runs end to end on real local Ray and resumes to the same bytes."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from pipeline_helpers import FACES, ensure_ray, invoke

from maskgen.jobs.masking import ImageJob, JobConfig
from maskgen.pipeline import containers
from maskgen.pipeline.inputs import read_input_list, walk_tree
from maskgen.pipeline.paths import OutputLayout
from maskgen.pipeline.plan import prepare_plan
from maskgen.pipeline.shards import process_shard
from maskgen.recordio import FaceRec, FaceRecWriter, RecordReader

IDENTITIES = sorted(p.name for p in FACES.iterdir() if p.is_dir())[:2]  # 22 faces: 3 shards of 8


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree") / "faces"
    for name in IDENTITIES:
        shutil.copytree(FACES / name, root / name)
    return root


@pytest.fixture(scope="module")
def runs(tree, tmp_path_factory) -> dict[str, OutputLayout]:
    """One run per format, shard by shard through the real pipeline code (Ray only schedules
    these calls; the Ray test below runs the same through `maskgen generate`)."""
    job = ImageJob(JobConfig(seed=4, keep_original=True))  # the shard, not the job, reads output_format
    backwards = tmp_path_factory.mktemp("list") / "backwards.txt"  # identities in reverse order: the join must sort
    backwards.write_text("".join(f"{e.rel}\n" for e in sorted(walk_tree(tree), key=lambda e: e.identity, reverse=True)))
    done = {}
    for name, fmt, entries in (("files", "files", walk_tree(tree)), ("rec", "rec", walk_tree(tree)),
                               ("webdataset", "webdataset", walk_tree(tree)), ("parquet", "parquet", walk_tree(tree)),
                               ("rec_backwards", "rec", read_input_list(backwards, tree))):
        layout = OutputLayout(tmp_path_factory.mktemp(name) / "out")
        plan, _ = prepare_plan(layout, entries, config=replace(job.config, output_format=fmt), shard_size=8, input_root=tree)
        for index in range(plan.n_shards):
            process_shard(job, plan, layout, tree, index)
        containers.finish(layout, plan)
        done[name] = layout
    return done


def ok_rows(layout: OutputLayout) -> pd.DataFrame:
    rows = pd.read_parquet(layout.manifest)
    return rows[rows.status == "ok"].reset_index(drop=True)


def files_bytes(layout: OutputLayout, rel: str) -> bytes:
    return (layout.images / rel).read_bytes()


def test_the_config_hash_tells_the_formats_apart(runs):
    hashes = {json.loads(layout.plan_file.read_text())["config_hash"] for layout in runs.values()}
    assert len(hashes) == 4  # rec_backwards: rec's config


@pytest.mark.parametrize("name", ["rec", "rec_backwards"])
def test_rec_holds_the_files_runs_bytes_in_insightfaces_layout_with_trainsets_labels(runs, name):
    from maskgen.datasets.trainset import TrainsetOptions, build_trainset

    files, rec = runs["files"], runs[name]
    expected = ok_rows(files)
    joined = pd.read_parquet(rec.rec / "manifest.parquet")
    if name == "rec_backwards":  # the manifest follows the input list; the .rec is still grouped by label
        assert list(joined.identity.unique()) == IDENTITIES[::-1]
        joined = joined.sort_values(["src_path", "variant_index"]).reset_index(drop=True)
    assert len(joined) == len(expected) == 44 and (joined.record > 0).all()  # originals and masked variants
    images, masks = FaceRec(rec.rec), RecordReader(rec.rec / "occlusion.rec")
    trainset_labels = build_trainset([files.root], TrainsetOptions())[2]
    for want, got in zip(expected.itertuples(), joined.itertuples()):
        header, payload = images.reader.read(got.record)
        assert payload == files_bytes(files, want.out_path)
        assert header.label == got.label == trainset_labels[want.identity]
        if want.mask_path:
            assert masks.read(got.record)[1] == files_bytes(files, want.mask_path)
    n = len(joined)
    assert images.reader.read(0)[0].label == (n + 1, n + 1 + 2)
    assert [images.label(k) for k in images.image_keys()] == sorted(joined.label)  # grouped by label
    assert [images.reader.read(n + 1 + j)[0].label for j in range(2)] == [(1, 23), (23, 45)]
    assert (rec.rec / "property").read_text() == "2,150,150"
    assert not rec.images.exists()  # nothing loose


def test_webdataset_shards_read_with_the_webdataset_library(runs):
    import webdataset

    files, wds = runs["files"], runs["webdataset"]
    tars = sorted(str(p) for p in wds.wds.glob("shard-*.tar"))
    assert [Path(t).name for t in tars] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    samples = list(webdataset.WebDataset(tars, shardshuffle=False))
    expected = ok_rows(files)
    assert len(samples) == len(expected)
    for sample, want in zip(samples, expected.itertuples()):
        row = json.loads(sample["json"])
        assert (row["src_path"], row["variant"], row["seed"]) == (want.src_path, want.variant, want.seed)
        assert sample["jpg"] == files_bytes(files, want.out_path)
        assert sample.get("mask.png") == (files_bytes(files, want.mask_path) if want.mask_path else None)


def test_parquet_holds_the_bytes_in_the_manifest_rows(runs):
    files, got = runs["files"], ok_rows(runs["parquet"])
    expected = ok_rows(files)
    assert list(got.src_path) == list(expected.src_path)
    assert [bytes(b) for b in got.image] == [files_bytes(files, rel) for rel in expected.out_path]
    assert [bytes(b) if b is not None else None for b in got.occlusion] == [
        files_bytes(files, rel) if rel else None for rel in expected.mask_path]


def test_the_trainer_reads_every_container_as_the_files_runs_trainset(runs, tmp_path):
    from maskgen.datasets.trainset import TrainsetOptions, build_trainset, write_trainset
    from maskgen.recognition.data import ManifestDataset, read_manifest

    rows, holdout, labels, summary = build_trainset([runs["files"].root], TrainsetOptions())
    write_trainset(rows, holdout, labels, tmp_path / "train.parquet", summary.num_classes)
    plain = read_manifest(tmp_path / "train.parquet")

    def content(manifest) -> list[tuple[int, str, bool]]:
        return sorted((int(label), hashlib.sha256(manifest.read(i)).hexdigest(), bool(masked))
                      for i, (label, masked) in enumerate(zip(manifest.labels, manifest.is_masked)))

    for fmt, where in (("rec", runs["rec"].rec), ("webdataset", runs["webdataset"].wds), ("parquet", runs["parquet"].manifest)):
        manifest = read_manifest(where)
        assert manifest.num_classes == plain.num_classes == 2, fmt
        assert content(manifest) == content(plain), fmt
        images, _, skipped = ManifestDataset(manifest).batch([0, 5, 30])
        assert images.shape == (3, 3, 112, 96) and not skipped, fmt


def bad_rec(folder: Path) -> int:
    """The 22 faces as an insightface folder, plus a record that is not an image, and one image
    whose .idx line points past the end of the .rec; returns the image count."""
    writer = FaceRecWriter(folder, (150, 150))
    for label, name in enumerate(IDENTITIES):
        for path in sorted((FACES / name).glob("*.jpg")):
            writer.add(label, path.read_bytes())
        if label == 0:
            writer.add(0, b"this is not an image")
    count = writer.commit()
    lines = (folder / "train.idx").read_text().splitlines()
    lines[3] = "3\t999999999"
    (folder / "train.idx").write_text("\n".join(lines) + "\n")
    return count


def test_a_rec_input_runs_on_ray_to_a_rec_output_and_resumes_to_the_same_bytes(tmp_path):
    ensure_ray()
    source = tmp_path / "faces_webface_112x112"
    source.mkdir()
    assert bad_rec(source) == 23
    out = tmp_path / "out"
    args = ("generate", source, out, "--output-format", "rec", "--shard-size", 8, "--workers", 2, "--seed", 2, "--json")
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["inputs"] == 23 and summary["statuses"] == {"ok": 21, "decode_error": 2}
    assert summary["finished"].startswith("joined 21 images")
    rows = pd.read_parquet(out / "manifest")
    errors = rows[rows.status == "decode_error"].set_index("src_path").error.to_dict()
    assert errors["0000000/00000012.jpg"] == "not an image: unrecognised file format"
    assert "train.rec record 3: truncated" in errors["unreadable/00000003.jpg"]
    assert all("\n" not in e for e in errors.values())
    joined = {name: (out / "rec" / name).read_bytes() for name in ("train.rec", "train.idx", "property", "occlusion.rec")}
    assert joined["property"] == b"2,150,150"
    joined_at = (out / "rec" / "train.rec").stat().st_mtime_ns

    (out / "stats" / "shard-00001.json").unlink()  # shard 1 as if its worker had been killed
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["shards_done_now"] == 1
    assert (out / "rec" / "train.rec").stat().st_mtime_ns > joined_at  # joined again from the redone shard...
    assert {name: (out / "rec" / name).read_bytes() for name in joined} == joined  # ...to the same bytes


def test_the_trainer_on_a_rec_with_bad_records_skips_them_with_a_reason(tmp_path):
    from maskgen.recognition.data import ManifestDataset, read_manifest

    bad_rec(tmp_path)
    manifest = read_manifest(tmp_path)
    assert len(manifest.labels) == 22  # record 3's header cannot be read: it has no label, so it is left out
    assert sorted(set(manifest.labels.tolist())) == [0, 1] and manifest.num_classes == 2
    images, labels, skipped = ManifestDataset(manifest).batch(list(range(22)))
    assert len(labels) == 21 and [path for path, _ in skipped] == [f"{tmp_path}/train.rec#12"]
    assert "not an image" in skipped[0][1]


def test_mask_writes_the_same_bytes_into_a_rec(tmp_path):
    folder = FACES / IDENTITIES[0]
    for fmt in ("files", "rec"):
        result = invoke("mask", folder, "-o", tmp_path / fmt, "--aligned", "--keep-original", "--seed", 3, "--output-format", fmt, "--quiet")
        assert result.exit_code == 0, result.output
    expected = pd.read_parquet(tmp_path / "files" / "manifest.parquet")
    joined = pd.read_parquet(tmp_path / "rec" / "rec" / "manifest.parquet")
    rec = FaceRec(tmp_path / "rec" / "rec")
    assert len(joined) == len(expected) == 22 and (tmp_path / "rec" / "rec" / "property").read_text() == "1,150,150"
    for want, got in zip(expected.itertuples(), joined.itertuples()):
        assert rec.reader.read(got.record)[1] == (tmp_path / "files" / want.out_path).read_bytes()
