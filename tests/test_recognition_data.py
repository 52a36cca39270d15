"""The training manifest loader: paths, labels, class count, colour order, bad rows, and the
resumable epoch sampler."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from conftest import aligned_files  # noqa: E402

from maskgen.faces.layouts import fit_to  # noqa: E402
from maskgen.recognition.data import (  # noqa: E402
    EpochSampler,
    ManifestDataset,
    ManifestError,
    make_loader,
    read_manifest,
)


def write_manifest(path: Path, rows: dict, num_classes: int | None = None) -> Path:
    metadata = {"maskgen.num_classes": str(num_classes)} if num_classes else None
    table = pa.table({"path": pa.array(rows["path"], pa.string()), "label": pa.array(rows["label"], pa.int32()),
                      "identity": pa.array(rows["identity"]), "variant": pa.array(rows["variant"])})
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


@pytest.fixture
def face_tree(tmp_path) -> tuple[Path, dict]:
    """The 55 real aligned faces as 96x112 JPEGs under tmp/images, manifest rows with relative paths."""
    rows = {"path": [], "label": [], "identity": [], "variant": []}
    identities = sorted({p.parent.name for p in aligned_files()})
    for src in aligned_files():
        rel = f"images/{src.parent.name}/{src.name}"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / rel), fit_to(cv2.imread(str(src)), 112, 96))
        for key, value in zip(rows, (rel, identities.index(src.parent.name), src.parent.name, "original")):
            rows[key].append(value)
    return tmp_path, rows


def test_reads_relative_and_absolute_paths_labels_and_class_count(face_tree):
    root, rows = face_tree
    rows["path"][0] = str(root / rows["path"][0])  # one absolute path
    rows["variant"][:3] = ["masked"] * 3
    manifest = read_manifest(write_manifest(root / "train.parquet", rows))
    assert len(manifest.labels) == 55 and manifest.num_classes == 5 and manifest.masked == 3
    assert all(Path(p.decode()).is_file() for p in manifest.paths)
    assert read_manifest(write_manifest(root / "declared.parquet", rows, num_classes=8)).num_classes == 8


def test_a_folder_of_parquet_shards_reads_as_one_manifest_relative_to_its_parent(face_tree):
    root, rows = face_tree
    (root / "manifest").mkdir()
    half = {k: v[:20] for k, v in rows.items()}
    rest = {k: v[20:] for k, v in rows.items()}
    write_manifest(root / "manifest" / "part-0.parquet", half)
    write_manifest(root / "manifest" / "part-1.parquet", rest)
    manifest = read_manifest(root / "manifest")
    assert len(manifest.labels) == 55 and all(Path(p.decode()).is_file() for p in manifest.paths)
    assert manifest.labels.tolist() == rows["label"]


def test_unusable_manifests_are_clear_errors(tmp_path, face_tree):
    root, rows = face_tree
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"path": ["a.jpg"]}), tmp_path / "nolabel.parquet")
    with pytest.raises(ManifestError, match="label"):
        read_manifest(tmp_path / "nolabel.parquet")
    with pytest.raises(ManifestError, match="num_classes"):
        read_manifest(write_manifest(root / "few.parquet", rows, num_classes=3))


def test_items_are_rgb_at_the_input_size(tmp_path):
    bgr = np.zeros((150, 150, 3), np.uint8)
    bgr[:, :, 2] = 255  # pure red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    manifest = read_manifest(write_manifest(tmp_path / "m.parquet", {
        "path": ["red.png"], "label": [0], "identity": ["a"], "variant": ["original"]}))
    image, label, _, reason = ManifestDataset(manifest, 112, 96)[0]
    assert reason is None and image.shape == (112, 96, 3) and label == 0
    assert image[..., 0].min() == 255 and image[..., 1:].max() == 0  # RGB: red is channel 0


def test_fit_to_centre_crops_to_the_aspect_before_resizing():
    square = np.zeros((112, 112), np.uint8)
    square[:, 8:104] = 255  # the 96 px wide centre of a 112x112 ArcFace-template crop
    np.testing.assert_array_equal(fit_to(square, 112, 96), np.full((112, 96), 255, np.uint8))
    assert fit_to(np.zeros((150, 150, 3), np.uint8), 112, 96).shape == (112, 96, 3)


def test_bad_rows_are_skipped_and_reported_not_a_crash(face_tree):
    root, rows = face_tree
    (root / "images" / "broken.jpg").write_bytes(cv2.imencode(".jpg", np.zeros((112, 96, 3), np.uint8))[1].tobytes()[:200])
    (root / "images" / "not_an_image.jpg").write_text("hello")
    for rel in ("images/broken.jpg", "images/not_an_image.jpg", "images/missing.jpg"):
        for key, value in zip(rows, (rel, 0, "x", "original")):
            rows[key].append(value)
    dataset = ManifestDataset(read_manifest(write_manifest(root / "m.parquet", rows)))
    sampler = EpochSampler(len(dataset), batch_size=29)  # 58 rows: two full batches
    seen, skipped = 0, []
    for images, labels, bad in make_loader(dataset, sampler, workers=1, pin_memory=False):
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 112, 96) and len(images) == len(labels)
        seen += len(labels)
        skipped += bad
    assert seen == 55
    assert sorted(Path(p).name for p, _ in skipped) == ["broken.jpg", "missing.jpg", "not_an_image.jpg"]
    assert all(reason for _, reason in skipped)


def test_batches_are_channels_last_views_of_the_same_rgb_pixels_as_items(face_tree):
    root, rows = face_tree
    dataset = ManifestDataset(read_manifest(write_manifest(root / "m.parquet", rows)))
    images, labels, bad = dataset.batch([0, 7, 30])
    assert images.shape == (3, 3, 112, 96) and bad == [] and labels.tolist() == [rows["label"][i] for i in (0, 7, 30)]
    assert images.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(images[1].permute(1, 2, 0).numpy(), dataset[7][0])


def test_sampler_resumes_mid_epoch_and_shards_ranks_disjointly():
    full = EpochSampler(50, batch_size=4, seed=3)
    full.set_position(epoch=2, batch=0)
    epoch2 = list(full)
    assert len(epoch2) == 48 and len(set(epoch2)) == 48
    full.set_position(epoch=2, batch=5)
    assert list(full) == epoch2[20:]
    full.set_position(epoch=3, batch=0)
    assert list(full) != epoch2  # a new shuffle each epoch
    ranks = [EpochSampler(50, 4, seed=3, rank=r, world_size=3) for r in range(3)]
    for r in ranks:
        r.set_position(1, 0)
    shards = [set(r) for r in ranks]
    assert all(len(s) == 16 for s in shards) and not (shards[0] & shards[1] or shards[1] & shards[2])
    with pytest.raises(ManifestError, match="batch"):
        EpochSampler(10, batch_size=4, world_size=3)
