"""Thin typer commands for the recogniser: `maskgen train` and `maskgen export`.

torch is imported inside the function bodies only, so `maskgen --help` stays light and works
without the `recognition` extra.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from maskgen.cli import options as opt

SMOKE_CONFIG = Path(__file__).parents[1] / "recognition" / "configs" / "smoke.toml"
NEEDS_TORCH = "the recogniser needs PyTorch: pip install 'maskgen[recognition]'"


def require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise opt.fail(NEEDS_TORCH) from None


def train(
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="Training config (TOML; every key commented in maskgen/recognition/configs/). "
        "Default: the CPU smoke config on the built-in sample faces.", show_default=False)] = None,
    overrides: Annotated[Optional[list[str]], typer.Option(
        "--set", metavar="KEY=VALUE", help="Override one config key, TOML syntax: --set max_steps=50 --set lr_steps='[30,40]'. "
        "Repeatable.",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the checkpoint in the config's out_dir exactly where it stopped "
        "(starts from scratch if there is none).")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Start from scratch even though out_dir holds a checkpoint (it is replaced).")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bar or log lines (log.jsonl is still written).")] = False,
) -> None:
    """Train a recogniser on a training manifest (`maskgen trainset`): SphereFace from scratch, or
    dlib's ResNet fine-tuned from its released weights (configs/dlib_resnet_finetune.toml).

    Writes OUT_DIR/checkpoint.pt (every state, for --resume), log.jsonl and config.json.
    Several GPUs: torchrun --standalone --nproc-per-node N -m maskgen.cli train --config ..."""
    require_torch()
    from maskgen.recognition.checkpoints import CheckpointError, DeviceError
    from maskgen.recognition.config import ConfigError, load_config
    from maskgen.recognition.data import ManifestError
    from maskgen.recognition.train import TrainError
    from maskgen.recognition.train import train as run_training

    if resume and overwrite:
        raise opt.fail("--resume and --overwrite exclude each other")
    try:
        settings = load_config(config or SMOKE_CONFIG, overrides or [])
        result = run_training(settings, resume=resume, overwrite=overwrite, console=None if quiet else opt.console(),
                              make_progress=make_progress)
    except (ConfigError, ManifestError, TrainError, CheckpointError, DeviceError) as exc:
        raise opt.fail(str(exc)) from None
    if quiet or os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks
        return
    if result.trained == 0:
        opt.console().print(f"nothing to do: {result.checkpoint} is at step {result.step} = max_steps "
                        "(raise it with --set max_steps=N to train on)", highlight=False)
    else:
        opt.console().print(f"step {result.step}: loss {result.loss:.4f}, accuracy {result.acc:.3f}, "
                        f"{result.skipped} image(s) skipped; checkpoint: {result.checkpoint}", highlight=False)


def export(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint.pt written by `maskgen train`.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Where to write the exported embedder (.pt2). Default: embedder.pt2 beside the checkpoint.",
        show_default=False)] = None,
) -> None:
    """Export the embedding network for inference (torch.export .pt2).

    Load with torch.export.load(path).module(). Input: RGB float 0..255, N x 3 x H x W at the checkpoint's
    size (SphereFace 112x96, dlib-resnet 150x150); output: N x embedding_size (512; dlib-resnet 128)."""
    require_torch()
    from maskgen.recognition.checkpoints import CheckpointError
    from maskgen.recognition.export import export_embedder
    from maskgen.recognition.train import TrainError

    try:
        target = export_embedder(checkpoint, out or checkpoint.with_name("embedder.pt2"))
    except (TrainError, CheckpointError) as exc:
        raise opt.fail(str(exc)) from None
    opt.console().print(f"embedder: {target}", highlight=False)


def make_progress(console, total: int, start: int):
    """The trainer's progress bar: steps done, the last logged metrics, time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"),
                        TimeRemainingColumn(), console=console, transient=False)
    task = progress.add_task("train", total=total, completed=start, metrics="")
    return progress, task
