"""The trainer on real faces (with masks from the real mask engine): loss goes down, a bad
image is skipped with a warning, resume is exact, export matches the eager model, and the
typer commands work end to end; for SphereFace and for dlib's ResNet fine-tuned from its
released weights (which a fine-tuned checkpoint's evaluation then uses)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from conftest import ALIGNED  # noqa: E402
from rich.console import Console  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from maskgen.cli import app  # noqa: E402
from maskgen.cli.recognition import SMOKE_CONFIG  # noqa: E402
from maskgen.datasets.samples import build_sample_manifest  # noqa: E402
from maskgen.recognition.checkpoints import load_backbone, load_checkpoint  # noqa: E402
from maskgen.recognition.config import ConfigError, TrainConfig, load_config  # noqa: E402
from maskgen.recognition.data import ManifestDataset, read_manifest  # noqa: E402
from maskgen.recognition.export import load_exported  # noqa: E402
from maskgen.recognition.train import train  # noqa: E402

TINY = dict(model="sphereface4", num_workers=0, samples=False, tensorboard=False, seed=0)
DLIB = dict(TINY, model="dlib-resnet", init="dlib-resnet", width=150, height=150, embedding_size=128)
DLIB_CONFIG = SMOKE_CONFIG.with_name("dlib_resnet_finetune.toml")
BACKBONES = {  # name: (the manifest fixture it trains on, its settings, a learning rate it takes)
    "sphereface4": ("faces", TINY, 0.05),
    "dlib-resnet": ("chip_faces", DLIB, 0.003),
}


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """The 55 real aligned faces + one generated mask each, as a 110-row training manifest."""
    return build_sample_manifest(tmp_path_factory.mktemp("faces") / "manifest.parquet", source=ALIGNED)


@pytest.fixture(scope="module")
def chip_faces(tmp_path_factory) -> Path:
    """The same 110 faces as 150x150 dlib chips, dlib-resnet's input."""
    return build_sample_manifest(tmp_path_factory.mktemp("chips") / "manifest.parquet", source=ALIGNED, height=150, width=150)


def subset(manifest: Path, out: Path, rows: int) -> Path:
    table = pq.read_table(manifest)
    absolute = [str(manifest.parent / p) for p in table.column("path").to_pylist()]
    table = table.set_column(0, "path", __import__("pyarrow").array(absolute)).slice(0, rows)
    pq.write_table(table, out)
    return out


def log_records(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def test_sample_manifest_has_originals_and_generated_masks(faces):
    manifest = read_manifest(faces)
    assert len(manifest.labels) == 110 and manifest.masked == 55 and manifest.num_classes == 5
    image, _, path, reason = ManifestDataset(manifest)[1]
    assert reason is None and path.endswith("_mask0.jpg") and image.shape == (112, 96, 3)


def test_loss_decreases_on_real_faces_and_a_bad_image_is_skipped_with_a_warning(faces, tmp_path):
    manifest = subset(faces, tmp_path / "train.parquet", 110)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    table = pq.read_table(manifest)
    bad = table.slice(0, 1).set_column(0, "path", __import__("pyarrow").array([str(tmp_path / "corrupt.jpg")]))
    pq.write_table(__import__("pyarrow").concat_tables([table, bad]), manifest)
    out = io.StringIO()
    config = TrainConfig(**TINY, manifest=str(manifest), out_dir=str(tmp_path / "run"), batch_size=16, lr=0.01,
                         max_steps=20, log_every=1, lr_steps=[100])
    result = train(config, console=Console(file=out, width=200))
    losses = [r["loss"] for r in log_records(tmp_path / "run")]
    assert len(losses) == 20 and all(map(lambda v: v == v, losses))  # no NaN
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert result.skipped >= 1 and "skipped unreadable image" in out.getvalue() and "corrupt.jpg" in out.getvalue()
    assert log_records(tmp_path / "run")[-1]["skipped"] == result.skipped


@pytest.mark.parametrize("backbone", BACKBONES)
def test_resume_continues_exactly_like_a_straight_run(backbone, request, tmp_path):
    fixture, settings, lr = BACKBONES[backbone]
    manifest = subset(request.getfixturevalue(fixture), tmp_path / "ten.parquet", 10)  # 2 batches of 4 an epoch: resume lands mid-epoch
    base = dict(settings, manifest=str(manifest), batch_size=4, lr=lr, lr_steps=[4], log_every=1,
                deterministic=True, lambda_base=50.0)
    try:
        train(TrainConfig(**base, max_steps=6, out_dir=str(tmp_path / "straight")))
        train(TrainConfig(**base, max_steps=3, out_dir=str(tmp_path / "split")))
        torch.manual_seed(1234)  # disturb the global RNG: the checkpoint must restore it
        train(TrainConfig(**base, max_steps=6, out_dir=str(tmp_path / "split")), resume=True)
    finally:
        torch.use_deterministic_algorithms(False)
    straight, split = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("straight", "split"))
    assert split["step"] == straight["step"] == 6 and (split["epoch"], split["batch"]) == (3, 0)
    for part in ("model", "head"):
        for key, value in straight[part].items():
            assert torch.equal(value, split[part][key]), f"{part}.{key}"
    momentum = [s["momentum_buffer"] for s in straight["optimizer"]["state"].values()]
    assert all(torch.equal(a, s["momentum_buffer"]) for a, s in zip(momentum, split["optimizer"]["state"].values()))
    assert straight["scheduler"] == split["scheduler"] and split["lambda_"] == pytest.approx(50 / (1 + 0.12 * 6))
    assert [r["loss"] for r in log_records(tmp_path / "straight")] == [r["loss"] for r in log_records(tmp_path / "split")]
    assert torch.equal(straight["rng"]["torch"], split["rng"]["torch"])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_exported_embedder_matches_the_eager_model(backbone, request, tmp_path):
    from maskgen.recognition.export import export_embedder

    fixture, settings, lr = BACKBONES[backbone]
    manifest = subset(request.getfixturevalue(fixture), tmp_path / "m.parquet", 8)
    train(TrainConfig(**settings, manifest=str(manifest), batch_size=8, lr=lr, max_steps=1, out_dir=str(tmp_path / "run")))
    exported, meta = load_exported(export_embedder(tmp_path / "run" / "checkpoint.pt", tmp_path / "embedder.pt2"))
    net, config = load_backbone(tmp_path / "run" / "checkpoint.pt")
    images, _, _ = ManifestDataset(read_manifest(manifest), config["height"], config["width"]).batch(range(5))
    with torch.no_grad():
        eager = net((images.float() - 127.5) / 128)
        torch.testing.assert_close(exported(images.float()), eager, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(exported(images[:1].float()), eager[:1], rtol=1e-4, atol=1e-4)
    assert eager.shape == (5, settings.get("embedding_size", 512))
    assert meta["model"] == backbone and meta["input"]["channels"] == "RGB" and meta["step"] == 1


def test_config_files_load_and_overrides_are_checked():
    smoke = load_config(SMOKE_CONFIG)
    casia = load_config(SMOKE_CONFIG.with_name("casia_sphereface20.toml"))
    assert smoke.model == "sphereface4" and smoke.samples
    assert (casia.model, casia.head, casia.m, casia.lr, casia.lr_steps, casia.max_steps) == (
        "sphereface20", "asoftmax", 4, 0.1, [16000, 24000], 28000)
    assert (casia.momentum, casia.weight_decay, casia.lambda_base, casia.lambda_gamma, casia.lambda_min) == (
        0.9, 5e-4, 1000.0, 0.12, 5.0)
    assert load_config(None, ["lr_steps=[1, 2]", "manifest=out/x.parquet", "lr=1"]).lr_steps == [1, 2]
    for bad in (["bogus=1"], ["lr=fast"], ["model=resnet"], ["max_steps"], ["init=imagenet"], ["init=dlib-resnet"]):
        with pytest.raises(ConfigError):
            load_config(None, bad)
    dlib = load_config(DLIB_CONFIG)
    assert (dlib.model, dlib.init, dlib.width, dlib.height, dlib.embedding_size, dlib.head) == (
        "dlib-resnet", "dlib-resnet", 150, 150, 128, "cosface")
    assert dlib.lr <= 0.01 and dlib.max_steps <= 100 and dlib.samples


def test_fine_tuning_dlib_resnet_from_its_released_weights_lowers_the_loss(chip_faces, tmp_path):
    config = TrainConfig(**DLIB, manifest=str(chip_faces), out_dir=str(tmp_path / "run"), head="cosface", scale=16.0,
                         cosface_margin=0.2, batch_size=16, lr=0.003, max_steps=16, log_every=1, lr_steps=[100])
    train(config)
    losses = [r["loss"] for r in log_records(tmp_path / "run")]  # measured: 4.8 over the first 4 steps, 1.5 over the last 4
    assert len(losses) == 16 and all(v == v for v in losses)  # no NaN
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4, losses


def test_dlib_resnet_with_another_embedding_size_is_a_one_line_error():
    runner = CliRunner()
    for sets in (["embedding_size=512"], ["width=112"]):
        result = runner.invoke(app, ["train", "--config", str(DLIB_CONFIG), *(a for v in sets for a in ("--set", v))])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert result.output.strip().splitlines() == [
            f"error: model dlib-resnet is fixed at width = 150, height = 150, embedding_size = 128; the config has {sets[0].replace('=', ' = ')}"]
    smoke = runner.invoke(app, ["train", "--set", "model=dlib-resnet"])  # the smoke config's 96x112, 512-d
    assert smoke.exit_code == 2 and "embedding_size = 512" in smoke.output


def test_a_fine_tuned_dlib_resnet_checkpoint_is_evaluated_as_trained(chip_faces, tmp_path):
    from maskgen.datasets.samples import build_sample_pairs

    runner, out = CliRunner(), tmp_path / "run"
    sets = [f"manifest={subset(chip_faces, tmp_path / 'm.parquet', 16)}", "samples=false", "batch_size=8",
            "num_workers=0", "max_steps=2", f"out_dir={out}", "tensorboard=false"]
    trained = runner.invoke(app, ["train", "--quiet", "--config", str(DLIB_CONFIG), *(a for v in sets for a in ("--set", v))])
    assert trained.exit_code == 0, trained.output
    pairs = build_sample_pairs(tmp_path / "pairs", source=ALIGNED, per_fold=4)
    result = runner.invoke(app, ["evaluate", "--model", str(out), "--pairs", str(pairs), "-o", str(tmp_path / "report"),
                                 "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    model = json.loads((tmp_path / "report" / "report.json").read_text())["model"]
    assert (model["model"], model["init"], model["feature_dim"]) == ("dlib-resnet", "dlib-resnet", 256)
    assert model["input"].startswith("150x150 RGB")


def test_commands_train_refuse_to_clobber_resume_export_and_bench(faces, tmp_path):
    runner = CliRunner()  # the real maskgen app
    manifest = subset(faces, tmp_path / "m.parquet", 12)
    args = ["train", "--quiet", "--set", f"manifest={manifest}", "--set", f"out_dir={tmp_path / 'run'}",
            "--set", "batch_size=4", "--set", "num_workers=0", "--set", "samples=false", "--set", "max_steps=2"]
    assert runner.invoke(app, args).exit_code == 0
    clobber = runner.invoke(app, args)
    assert clobber.exit_code == 2 and "--resume" in clobber.output
    assert runner.invoke(app, [*args[:-1], "max_steps=3", "--resume"]).exit_code == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3
    loud = [arg for arg in args if arg != "--quiet"]
    again = runner.invoke(app, [*loud[:-1], "max_steps=3", "--resume"])
    assert again.exit_code == 0 and "nothing to do" in again.output
    bad = runner.invoke(app, ["train", "--set", "nonsense=1"])
    assert bad.exit_code == 2 and "nonsense" in bad.output

    exported = runner.invoke(app, ["export", str(tmp_path / "run" / "checkpoint.pt")])
    assert exported.exit_code == 0 and (tmp_path / "run" / "embedder.pt2").is_file()
    assert runner.invoke(app, ["export", str(tmp_path / "nope.pt")]).exit_code == 2

    bench = runner.invoke(app, ["bench-train", "--model", "sphereface4", "--batch-size", "4", "--steps", "1",
                                "--rounds", "1", "--workers", "0", "--manifest", str(manifest)])
    assert bench.exit_code == 0, bench.output
    assert "in-memory" in bench.output and "manifest loader" in bench.output and "loader/in-memory" in bench.output


def test_the_cli_and_command_module_do_not_import_torch():
    code = ("import sys, maskgen.cli.recognition, maskgen.recognition; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_two_processes_under_torchrun_train_one_model(faces, tmp_path):
    """DDP on the CPU (gloo): each rank takes half of every batch; rank 0 logs and saves."""
    out = tmp_path / "ddp"
    sets = [f"manifest={subset(faces, tmp_path / 'm.parquet', 16)}", "samples=false", "model=sphereface4",
            "batch_size=8", "num_workers=0", "max_steps=2", "log_every=1", f"out_dir={out}", "tensorboard=false"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "maskgen.cli",
               "train", "--quiet", *(arg for value in sets for arg in ("--set", value))]
    subprocess.run(command, check=True, timeout=120, capture_output=True)
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["step"] == 2 and checkpoint["world_size"] == 2
    assert [r["step"] for r in log_records(out)] == [1, 2]
