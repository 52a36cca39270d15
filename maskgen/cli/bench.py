"""`maskgen bench` (mask engine, ms per image per stage) and `maskgen bench-train` (trainer
images/s); every benchmark also runs as `python -m maskgen.bench WHAT`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from maskgen.cli import options as opt
from maskgen.cli.recognition import require_torch


def bench(
    images: Annotated[int, typer.Option("--images", min=200, help="Images per measurement (distinct faces made from the sample chips, cycled).")] = 550,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Runs of each measurement; the fastest is shown.")] = 3,
) -> None:
    """Milliseconds per image per stage on one core, for the sample faces (150x150 and 112x96).

    Stages: decode, landmarks, fit + render, encode; then end to end through `maskgen mask`."""
    from maskgen.bench.masking import run_bench

    run_bench(images, opt.console(), rounds)


def bench_train(
    model: Annotated[str, typer.Option("--model", help="Network: sphereface4/10/20/36/64.")] = "sphereface20",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per step.")] = 32,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed steps per input mode per round.")] = 2,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Rounds of (in-memory, loader), interleaved against noise.")] = 3,
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", help="Training manifest to load from. Default: the built-in sample faces (+ generated masks) "
        "written as 96x112 JPEGs to a temporary folder.", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=0, help="Loader processes (0: decode in the training loop). Default: 1 on the CPU, "
        "min(14, CPUs - 2) with CUDA.", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model first (CUDA).")] = False,
) -> None:
    """Training images/s for SphereFace-20, in-memory batches vs the real manifest loader.

    Forward + backward + SGD step; the loader keeps up when it is within 10%. bf16 + channels-last on CUDA."""
    require_torch()
    from maskgen.bench.train import bench_train as run_bench
    from maskgen.recognition.checkpoints import CheckpointError
    from maskgen.recognition.config import ConfigError
    from maskgen.recognition.data import ManifestError
    from maskgen.recognition.train import TrainError

    try:
        run_bench(model, batch_size, steps, rounds, manifest, workers, device, compile, opt.console())
    except (ConfigError, ManifestError, TrainError, CheckpointError, ValueError) as exc:
        raise opt.fail(str(exc)) from None
