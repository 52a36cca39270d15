"""The trainer's online masks, epochs, validation split and unreadable-data stop, on the real
sample faces: a `maskgen landmarks` run over a plain tree, a trainset of its originals,
batches with the configured share of masked faces (and twins), and one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from pipeline_helpers import FACES, N_FACES, ensure_ray, invoke  # noqa: E402

from maskgen.recognition.config import load_config, online_masks  # noqa: E402
from maskgen.recognition.data import ManifestDataset, landmarks_for, read_manifest, split_validation  # noqa: E402

TINY = ["model=sphereface4", "num_workers=0", "tensorboard=false", "batch_size=16", "log_every=1", "lr=0.01"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(a trainset of the sample faces' originals, the landmarks run over the same tree)."""
    ensure_ray()
    root = tmp_path_factory.mktemp("online")
    tree = shutil.copytree(FACES, root / "faces")
    assert invoke("landmarks", tree, root / "lm", "--quiet").exit_code == 0
    result = invoke("trainset", tree, "-o", root / "sets" / "train.parquet")
    assert result.exit_code == 0, result.output
    return root / "sets" / "train.parquet", root / "lm"


def config(prepared, *extra):
    manifest, landmarks = prepared
    return load_config(None, [f"manifest={manifest}", f"landmarks={landmarks}", *TINY, *extra])


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).mean() > 1.0


def test_batches_hold_the_configured_share_of_masked_faces(prepared):
    cfg = config(prepared, "online_masks=0.5")
    manifest = read_manifest(cfg.manifest)
    points = landmarks_for(manifest, cfg.landmarks)
    assert len(manifest.labels) == N_FACES and all(p is not None for p in points)
    plain = ManifestDataset(manifest)
    online = ManifestDataset(manifest, online=online_masks(cfg), points=points)
    keys = range(4 * N_FACES)  # four epochs: the epoch rides in the key
    masked = [differs(online[k][0], plain[k % N_FACES][0]) for k in keys]
    assert 0.4 < np.mean(masked) < 0.6
    assert masked[:N_FACES] != masked[N_FACES : 2 * N_FACES]  # another epoch, other faces masked
    assert np.array_equal(online[7][0], online[7][0])  # deterministic
    images, labels, skipped = ManifestDataset(manifest, online=online_masks(cfg), points=points, paired=True).batch(list(range(8)))
    assert len(images) == 16 and labels[::2].tolist() == labels[1::2].tolist() and not skipped  # each face, then its twin
    assert all(differs(images[i].numpy(), images[i + 1].numpy()) for i in range(0, 16, 2))


def test_training_with_online_masks_epochs_and_validation(prepared, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--set", f"manifest={prepared[0]}", "--set", f"landmarks={prepared[1]}", "--set", "online_masks=0.5",
                    "--set", "epochs=2", "--set", "lr_steps=[1]", "--set", "val_fraction=0.2", "--set", f"out_dir={out}",
                    *[a for kv in TINY for a in ("--set", kv)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_steps"] == records[-1]["step"] == 2 * (saved["max_steps"] // 2) > 0  # 2 epochs, in steps
    assert records[-1]["val_acc"] is not None and 0 <= records[-1]["val_acc"] <= 1


def test_validation_keeps_a_photo_and_its_masked_copies_together(tmp_path):
    from maskgen.datasets.samples import build_sample_manifest

    manifest = read_manifest(build_sample_manifest(tmp_path / "m.parquet"))
    train, val = split_validation(manifest, 0.2, seed=0)
    assert len(train.labels) + len(val.labels) == len(manifest.labels) and 0 < len(val.labels) < len(manifest.labels) / 2
    assert not set(train.sources) & set(val.sources) and val.masked > 0


def test_unreadable_training_data_stops_with_one_line(prepared, tmp_path):
    table = pq.read_table(prepared[0])
    broken = tmp_path / "sets" / "broken.parquet"  # the paths now point nowhere: silent training on nothing
    broken.parent.mkdir()
    pq.write_table(table.replace_schema_metadata(table.schema.metadata), broken)
    result = invoke("train", "--set", f"manifest={broken}", "--set", f"out_dir={tmp_path / 'o'}", "--set", "max_steps=2",
                    *[a for kv in TINY for a in ("--set", kv)])
    assert result.exit_code == 2 and "100.0% of the 55 images" in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "o" / "checkpoint.pt").exists()
    needs = invoke("train", "--set", f"manifest={prepared[0]}", "--set", "online_masks=0.5", "--set", "max_steps=1")
    assert needs.exit_code == 2 and "need `landmarks`" in needs.output
    not_a_run = invoke("train", "--set", f"manifest={prepared[0]}", "--set", f"landmarks={tmp_path}", "--set", "online_masks=0.5",
                       "--set", "max_steps=1", "--set", f"out_dir={tmp_path / 'o'}")
    assert not_a_run.exit_code == 2 and "holds no maskgen manifest" in not_a_run.output and not_a_run.output.count("\n") == 1
    bad = invoke("train", "--set", f"manifest={prepared[0]}", "--set", f"landmarks={prepared[1]}", "--set", "online_masks=0.5",
                 "--set", "mask_type=n96", "--set", "max_steps=1")
    assert bad.exit_code == 2 and "online masks:" in bad.output and "n96" in bad.output
