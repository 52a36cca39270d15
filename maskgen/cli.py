"""The `maskgen` command: thin commands that parse options, call one function, print."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from maskgen import cli_options as opt
from maskgen.pipeline import commands

app = typer.Typer(
    help="Realistic synthetic face masks at dataset scale, and the data to train masked-face recognisers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)
EXIT_USAGE = 2


def fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def job_config(**kw):
    """A JobConfig from command-line values; ValueError (bad spec) -> one-line error."""
    from maskgen.masks.options import MaskOptions
    from maskgen.pipeline.job import JobConfig

    mask_keys = ("type", "color", "pattern", "wear", "wear_jitter", "texture_weight")
    try:
        mask = MaskOptions.parse(**{k: kw.pop(k) for k in mask_keys})
        config = JobConfig(mask=mask.to_dict(), **kw)
        from maskgen.faces.landmarks import DETECTORS
        from maskgen.faces.layouts import face_box
        from maskgen.images import output_format

        face_box(112, 112, config.layout)
        if config.detector not in DETECTORS:
            raise ValueError(f"--detector: unknown detector {config.detector!r} (choose from {', '.join(DETECTORS)})")
        if config.image_format:
            output_format(config.image_format.upper().replace("JPG", "JPEG"))
    except ValueError as exc:
        raise fail(str(exc)) from None
    return config


@app.command()
def mask(
    paths: Annotated[list[Path], typer.Argument(help="Images and/or folders (walked recursively).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: mirrors the inputs' tree, plus manifest.parquet.")],
    aligned: opt.Aligned = False,
    layout: opt.Layout = "auto",
    detector: opt.Detector = "hog",
    upsample: opt.Upsample = None,
    mask_type: opt.MaskType = "random",
    color: opt.Color = "random",
    pattern: opt.Pattern = "random",
    wear: opt.Wear = "proper",
    wear_jitter: opt.WearJitter = 0.0,
    texture_weight: opt.TextureWeight = None,
    variants: opt.Variants = 1,
    keep_original: opt.KeepOriginal = False,
    seed: opt.Seed = 0,
    image_format: opt.ImageFormat = None,
    quality: opt.Quality = None,
    quiet: opt.Quiet = False,
) -> None:
    """Put masks on the faces in images or folders, in one process.

    Writes OUT/<dir>/<stem>.<ext> (masked) and OUT/<dir>/<stem>_mask.png (occlusion, 255 =
    covered) for each input, and OUT/manifest.parquet with a row per input, failures included."""
    from maskgen.faces.models import ModelNotFound
    from maskgen.pipeline.local import find_images, mask_images

    config = job_config(
        aligned=aligned, layout=layout, detector=detector, upsample=upsample, type=mask_type, color=color,
        pattern=pattern, wear=wear, wear_jitter=wear_jitter, texture_weight=texture_weight, variants=variants,
        keep_original=keep_original, seed=seed, image_format=_format_name(image_format), quality=quality,
    )
    try:
        found = find_images(paths, exclude=out)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
    if not found.images:
        raise fail(f"no images found in {', '.join(map(str, paths))}")
    with Progress(
        TextColumn("masking"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(), console=err, disable=quiet,
    ) as progress:
        task = progress.add_task("mask", total=len(found.images), failed=0)
        failed = 0

        def advance(rows: list[dict]) -> None:
            nonlocal failed
            failed += any(r["status"] != "ok" for r in rows)
            progress.update(task, advance=1, failed=failed)

        try:
            rows = mask_images(found, out, config, on_image=advance)
        except ModelNotFound as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            raise fail(f"cannot write to {out}: {exc.strerror or exc}") from None
    if not quiet:
        _print_summary(rows, found, out)


def _format_name(value: str | None) -> str | None:
    return None if value in (None, "same") else value.upper().replace("JPG", "JPEG")


def _print_summary(rows: list[dict], found, out: Path) -> None:
    statuses = Counter(r["status"] for r in rows)
    table = Table(title=f"{len(found.images)} images -> {out}")
    table.add_column("status")
    table.add_column("rows", justify="right")
    for status, count in statuses.most_common():
        table.add_row(status, str(count))
    Console().print(table)
    for row in [r for r in rows if r["status"] != "ok"][:5]:
        err.print(f"[yellow]{row['status']}[/yellow] {row['src_path']}: {row['error']}", highlight=False)
    if found.skipped:
        skipped = ", ".join(f"{n} {suffix}" for suffix, n in found.skipped.most_common())
        err.print(f"[dim]not images by their suffix, left alone: {skipped}[/dim]")


@app.command()
def preview(
    run_dir: Annotated[Path, typer.Argument(help="Output folder of `maskgen mask` or `maskgen generate`.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="PNG to write (default: RUN_DIR/preview.png).")] = None,
    rows: Annotated[int, typer.Option("--rows", min=1, max=200, help="How many masked images to show.")] = 8,
    source: Annotated[Optional[Path], typer.Option("--source", help="Folder of the original images (default: recorded by the run).")] = None,
) -> None:
    """A contact sheet of a run: original | masked | occlusion mask, one row per image."""
    from maskgen.pipeline.preview import PreviewError, write_sheet

    try:
        target = write_sheet(run_dir, out or run_dir / "preview.png", rows, source)
    except (PreviewError, OSError) as exc:
        raise fail(str(exc)) from None
    Console().print(f"contact sheet: {target}")


@app.command()
def bench(
    images: Annotated[int, typer.Option("--images", help="Images per measurement (the sample faces, repeated).")] = 550,
) -> None:
    """Milliseconds per image per stage, and images/s on one core, for the sample faces at
    their native 150x150 and as 112x96 SphereFace crops."""
    from maskgen.bench import run_bench

    run_bench(images, Console())


app.command("generate")(commands.generate)
app.command("inspect")(commands.inspect)
app.command("run")(commands.run)

if __name__ == "__main__":  # pragma: no cover
    app()
