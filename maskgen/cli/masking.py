"""`maskgen mask` (one process, no Ray) and `maskgen preview` (a contact sheet of a run)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

from maskgen.cli import options as opt


def mask(
    paths: Annotated[list[Path], typer.Argument(help="Images and/or folders (walked recursively).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: mirrors the inputs' tree, plus manifest.parquet.")],
    aligned: opt.Aligned = False,
    layout: opt.Layout = "auto",
    detector: opt.Detector = "hog",
    upsample: opt.Upsample = None,
    landmarker: opt.Landmarks = "batched",
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
    qa_reject: opt.QAReject = False,
    qa_thresholds: opt.QAThresholds = "default",
    output_format: opt.OutputFormat = "files",
    quiet: opt.Quiet = False,
) -> None:
    """Put masks on the faces in images or folders, in one process.

    Writes OUT/<dir>/<stem>.<ext> (masked) and OUT/<dir>/<stem>_mask.png (occlusion, 255 =
    covered) for each input, and OUT/manifest.parquet with a row per input, failures included."""
    from maskgen.faces.models import ModelNotFound
    from maskgen.jobs.local import MANIFEST_NAME, Interrupted, find_images, mask_images
    from maskgen.jobs.masking import ImageJob, build_job_config
    from maskgen.jobs.protocol import INTERNAL_ERROR

    try:
        config = build_job_config(
            aligned=aligned, layout=layout, detector=detector, upsample=upsample, mask_type=mask_type, color=color,
            pattern=pattern, wear=wear, wear_jitter=wear_jitter, texture_weight=texture_weight, variants=variants,
            keep_original=keep_original, seed=seed, image_format=image_format, quality=quality, qa_reject=qa_reject, qa_thresholds=qa_thresholds,
            landmarker=landmarker, output_format=output_format,
        )
    except ValueError as exc:
        raise opt.fail(str(exc)) from None
    from maskgen.files import InputError

    try:
        found = find_images(paths, exclude=out)
    except (FileNotFoundError, InputError) as exc:
        raise opt.fail(str(exc)) from None
    if not found.images:
        raise opt.fail(f"no images found in {', '.join(map(str, paths))}")
    if out.resolve() == found.root:  # out/REL would be the input REL itself
        raise opt.fail(f"the output folder {out} is the input folder {found.root}: the masked images would replace "
                       "the originals; choose another output folder")
    try:
        job = ImageJob(config)  # loads the models: a missing one is an error before any work
    except ModelNotFound as exc:
        raise opt.fail(str(exc)) from None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("masking"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(), console=opt.console(stderr=True), disable=quiet,
    ) as progress:
        task = progress.add_task("mask", total=len(found.images), failed=0)
        failed = 0

        def advance(rows: list[dict]) -> None:
            nonlocal failed
            failed += any(r["status"] != "ok" for r in rows)
            progress.update(task, advance=1, failed=failed)

        try:
            rows = mask_images(found, out, config, on_image=advance, job=job)
            if output_format == "rec":  # the one shard into insightface's layout under OUT/rec
                from maskgen.jobs.local import REC_SHARD
                from maskgen.pipeline.containers import join_shards

                join_shards([out / MANIFEST_NAME], [out / REC_SHARD], out / "rec")
        except OSError as exc:
            raise opt.fail(f"cannot write to {out}: {exc.strerror or exc}") from None
        except Interrupted as exc:
            raise opt.fail(f"interrupted after {exc.done:,} of {exc.total:,} images: {out / MANIFEST_NAME} has their "
                           "rows (run again to mask them all)", code=opt.EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:
            raise opt.fail(f"interrupted: {out} is incomplete and has no manifest (run again)", code=opt.EXIT_INTERRUPTED) from None
    if not quiet:
        _print_summary(rows, found, out)
    bugs = sum(r["error"].startswith(INTERNAL_ERROR) for r in rows)
    if bugs:  # a bug in maskgen, not a bad image: the run is complete, but say so loudly
        opt.console(stderr=True).print(f"[bold red]{bugs} rows hit an internal error[/bold red] (a bug, not a bad image); "
                  f"see their `error` in {out / 'manifest.parquet'}", highlight=False)
        raise typer.Exit(1)


def _print_summary(rows: list[dict], found, out: Path) -> None:
    from rich.table import Table

    statuses = Counter(r["status"] for r in rows)
    table = Table(title=f"{len(found.images)} images -> {out}")
    table.add_column("status")
    table.add_column("rows", justify="right")
    for status, count in statuses.most_common():
        table.add_row(status, str(count))
    opt.console().print(table)
    for row in [r for r in rows if r["status"] != "ok"][:5]:
        opt.console(stderr=True).print(f"[yellow]{row['status']}[/yellow] {row['src_path']}: {row['error']}", highlight=False)
    if found.skipped:
        skipped = ", ".join(f"{n} {suffix}" for suffix, n in found.skipped.most_common())
        opt.console(stderr=True).print(f"[dim]not images by their suffix, left alone: {skipped}[/dim]")


def preview(
    run_dir: Annotated[Path, typer.Argument(help="Output folder of `maskgen mask` or `maskgen generate`.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="PNG to write (default: RUN_DIR/preview.png).")] = None,
    rows: Annotated[int, typer.Option("--rows", min=1, max=200, help="How many masked images to show.")] = 8,
    source: Annotated[Optional[Path], typer.Option("--source", help="Folder of the original images (default: recorded by the run).")] = None,
) -> None:
    """A contact sheet of a run: original | masked | occlusion mask, one row per image."""
    from maskgen.datasets.preview import PreviewError, write_sheet
    from maskgen.datasets.runs import RunError

    try:
        target = write_sheet(run_dir, out or run_dir / "preview.png", rows, source)
    except (PreviewError, RunError, OSError) as exc:
        raise opt.fail(str(exc)) from None
    opt.console().print(f"contact sheet: {target}")


