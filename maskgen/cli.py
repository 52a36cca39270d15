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
from maskgen.evaluation import commands as evaluation_commands
from maskgen.pipeline import commands
from maskgen.recognition import commands as recognition_commands
from maskgen.video import commands as video_commands

app = typer.Typer(
    help="Realistic synthetic face masks at dataset scale, and the data to train masked-face recognisers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)


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
    from maskgen.pipeline.batches import INTERNAL_ERROR
    from maskgen.pipeline.generate import build_job_config
    from maskgen.pipeline.job import ImageJob
    from maskgen.pipeline.local import find_images, mask_images

    try:
        config = build_job_config(
            aligned=aligned, layout=layout, detector=detector, upsample=upsample, mask_type=mask_type, color=color,
            pattern=pattern, wear=wear, wear_jitter=wear_jitter, texture_weight=texture_weight, variants=variants,
            keep_original=keep_original, seed=seed, image_format=image_format, quality=quality,
        )
    except ValueError as exc:
        raise opt.fail(str(exc)) from None
    from maskgen.pipeline.inputs import InputError

    try:
        found = find_images(paths, exclude=out)
    except (FileNotFoundError, InputError) as exc:
        raise opt.fail(str(exc)) from None
    if not found.images:
        raise opt.fail(f"no images found in {', '.join(map(str, paths))}")
    try:
        job = ImageJob(config)  # loads the models: a missing one is an error before any work
    except ModelNotFound as exc:
        raise opt.fail(str(exc)) from None
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
            rows = mask_images(found, out, config, on_image=advance, job=job)
        except OSError as exc:
            raise opt.fail(f"cannot write to {out}: {exc.strerror or exc}") from None
    if not quiet:
        _print_summary(rows, found, out)
    bugs = sum(r["error"].startswith(INTERNAL_ERROR) for r in rows)
    if bugs:  # a bug in maskgen, not a bad image: the run is complete, but say so loudly
        err.print(f"[bold red]{bugs} rows hit an internal error[/bold red] (a bug, not a bad image); "
                  f"see their `error` in {out / 'manifest.parquet'}", highlight=False)
        raise typer.Exit(1)


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
    from maskgen.pipeline.runs import RunError

    try:
        target = write_sheet(run_dir, out or run_dir / "preview.png", rows, source)
    except (PreviewError, RunError, OSError) as exc:
        raise opt.fail(str(exc)) from None
    Console().print(f"contact sheet: {target}")


@app.command()
def bench(
    images: Annotated[int, typer.Option("--images", min=200, help="Images per measurement (distinct faces made from the sample chips, cycled).")] = 550,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Runs of each measurement; the fastest is shown.")] = 3,
) -> None:
    """Milliseconds per image per stage on one core, for the sample faces (150x150 and 112x96).

    Stages: decode, landmarks, fit + render, encode; then end to end through `maskgen mask`."""
    from maskgen.bench import run_bench

    run_bench(images, Console(), rounds)


@app.command()
def align(
    raw_tree: Annotated[Path, typer.Argument(help="Raw photos: <root>/<identity>/<image>.", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Output: images/<identity>/<image> crops, manifest/, plan/, stats/.", show_default=False)],
    template: Annotated[str, typer.Option("--template", help="sphereface (96x112, SphereFace/CosFace) or arcface (112x112, insightface).")] = "sphereface",
    size: Annotated[Optional[str], typer.Option("--size", help="Crop size WxH (e.g. 192x224); the template scales with it. Default: the template's own.")] = None,
    detector: opt.Detector = "hog",
    upsample: opt.Upsample = None,
    points: Annotated[int, typer.Option("--points", help="Alignment points from dlib's 68-point (default) or 5-point model (eyes from the 5-point fit).")] = 68,
    select: Annotated[str, typer.Option("--select", help="Photos with several faces: largest, central, or all (one crop each, <stem>_f<k>).")] = "largest",
    fallback: Annotated[bool, typer.Option("--fallback", help="Photos without a face: a centre crop, marked method=center_crop (default: a no_face row only).")] = False,
    image_format: opt.ImageFormat = "jpg",
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG/WEBP quality of the crops.")] = 95,
    seed: opt.Seed = 0,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Photos per shard: the unit of work, retry and resume.")] = 200,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="Worker processes (default: one per CPU of this machine or the cluster).")] = None,
    address: Annotated[Optional[str], typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join; default: start Ray on this machine.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous run in OUT_DIR made with other inputs or options.")] = False,
    quiet: opt.Quiet = False,
    as_json: Annotated[bool, typer.Option("--json", help="No progress bar; print the summary as one JSON object.")] = False,
) -> None:
    """Detect faces in raw photos and warp each onto a recogniser's template (resumable, Ray)."""
    from maskgen.pipeline.align_job import SELECTIONS, AlignConfig
    from maskgen.pipeline.generate import GenerateRequest

    try:
        crop = tuple(int(v) for v in size.lower().split("x")) if size else None
        if crop is not None and (len(crop) != 2 or min(crop) < 16):
            raise ValueError
    except ValueError:
        raise opt.fail(f"--size: expected WIDTHxHEIGHT like 96x112, got {size!r}") from None
    if select not in SELECTIONS:
        raise opt.fail(f"--select: choose from {', '.join(SELECTIONS)}")
    if points not in (5, 68):
        raise opt.fail("--points: 5 or 68")
    from maskgen.pipeline.generate import format_name

    try:
        config = AlignConfig(template, crop, detector, upsample, points, select, fallback,
                             format_name(image_format) or "JPEG", quality)
    except ValueError as exc:
        raise opt.fail(str(exc)) from None
    try:
        from maskgen.faces.align import template_points
        from maskgen.images import output_format

        template_points(template)
        output_format(config.image_format)
    except ValueError as exc:
        raise opt.fail(str(exc)) from None
    request = GenerateRequest(
        input_root=raw_tree, out_dir=out_dir, config=config, shard_size=shard_size, workers=workers,
        address=address, overwrite=overwrite, job_class="maskgen.pipeline.align_job:AlignJob",
    )
    commands.run_generate_request(request, quiet=quiet, as_json=as_json, label="align")


@app.command()
def trainset(
    runs: Annotated[list[Path], typer.Argument(help="Runs of `generate`/`mask`/`align` (folders or manifest files), or plain <identity>/<image> trees.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Training manifest (.parquet) to write; labels go to <name>.labels.json beside it.")],
    masked_per_original: Annotated[Optional[float], typer.Option("--masked-ratio", min=0, help="Masked images per original image, per identity (a seeded pick); default: all.")] = None,
    min_images: Annotated[int, typer.Option("--min-images", min=1, help="Leave out identities with fewer source photos.")] = 1,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Identities to leave out: names, comma lists, files with a name a line, or `lfw` (the 3 CASIA-WebFace identities in LFW). Repeatable.")] = None,
    holdout: Annotated[float, typer.Option("--holdout", min=0, max=0.9, help="Fraction of identities set aside into <name>.holdout.parquet (e.g. for pairs).")] = 0.0,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="An earlier labels.json: its identities keep their numbers (default: the one beside --out, if any).")] = None,
    renumber: Annotated[bool, typer.Option("--renumber", help="Number identities afresh, ignoring earlier labels.")] = False,
    seed: opt.Seed = 0,
) -> None:
    """Originals + masked faces from runs into one labelled training manifest (only `ok` rows)."""
    import json

    from maskgen.pipeline.runs import RunError
    from maskgen.pipeline.trainset import (
        TrainsetError,
        TrainsetOptions,
        build_trainset,
        labels_path,
        read_exclusions,
        write_trainset,
    )

    labels = labels or (labels_path(out) if labels_path(out).is_file() else None)
    try:
        previous = None if renumber or labels is None else json.loads(labels.read_text())
        options = TrainsetOptions(masked_per_original, min_images, read_exclusions(exclude or []), holdout, seed, previous)
        rows, held, mapping, summary = build_trainset(runs, options)
        write_trainset(rows, held, mapping, out, summary.num_classes)
    except (RunError, TrainsetError, OSError, ValueError) as exc:
        raise opt.fail(str(exc)) from None
    table = Table(title=f"training manifest: {out}")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("identities (classes)", f"{summary.identities} ({summary.num_classes})")
    for variant, n in sorted(summary.rows.items()):
        table.add_row(f"{variant} images", str(n))
    if summary.holdout_identities:
        table.add_row("held out identities / images", f"{summary.holdout_identities} / {summary.holdout_rows}")
    for reason, n in summary.left_out.most_common():
        if n:
            table.add_row(f"left out: {reason}", str(n))
    Console().print(table)


@app.command()
def pairs(
    sources: Annotated[list[Path], typer.Argument(help="Test runs (folders or manifests) or plain <identity>/<image> trees.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Pairs file (.parquet) to write.")],
    folds: Annotated[int, typer.Option("--folds", min=2, help="Identity-disjoint folds (LFW: 10).")] = 10,
    per_fold: Annotated[Optional[int], typer.Option("--per-fold", min=1, help="Positive (and as many negative) pairs per fold and type; default: the most every fold allows, at most 300.")] = None,
    types: Annotated[str, typer.Option("--types", help="Comma list of masked-unmasked, masked-masked, unmasked-unmasked.")] = "masked-unmasked,masked-masked,unmasked-unmasked",
    lfw_pairs: Annotated[Optional[Path], typer.Option("--lfw-pairs", help="Read LFW's pairs.txt instead of drawing pairs (image numbers refer to the first source tree).")] = None,
    write_lfw: Annotated[Optional[Path], typer.Option("--write-lfw", help="Also write the unmasked-unmasked pairs as an LFW pairs.txt.")] = None,
    seed: opt.Seed = 0,
) -> None:
    """Verification pairs in identity-disjoint folds with equal positives and negatives per fold."""
    from maskgen.pipeline.pairs import PairsError, make_pairs, read_lfw_pairs, write_lfw_pairs, write_pairs
    from maskgen.pipeline.runs import RunError, collect_images

    try:
        if lfw_pairs:
            table = read_lfw_pairs(lfw_pairs, sources[0])
        else:
            images, _ = collect_images(sources)
            table = make_pairs(images, folds, per_fold, tuple(t.strip() for t in types.split(",")), seed)
        write_pairs(table, out)
        if write_lfw:
            plain = table[table.pair_type == "unmasked-unmasked"]
            write_lfw_pairs(plain, write_lfw, _source_root(sources[0]))
    except (PairsError, RunError, OSError, ValueError) as exc:
        raise opt.fail(str(exc)) from None
    summary = Table(title=f"pairs: {out}")
    for col in ("pair type", "folds", "positive", "negative"):
        summary.add_column(col, justify="right")
    for pair_type, group in table.groupby("pair_type"):
        summary.add_row(pair_type, str(group.fold.nunique()), str(int(group.same.sum())), str(int((~group.same).sum())))
    Console().print(summary)


def _source_root(path: Path) -> Path:
    from maskgen.pipeline.runs import RunError, open_run

    try:
        return open_run(path).source or path
    except RunError:
        return path


app.command("generate")(commands.generate)
app.command("inspect")(commands.inspect)
app.command("run")(commands.run)
app.command("video")(video_commands.video)
app.command("train")(recognition_commands.train)
app.command("export")(recognition_commands.export)
app.command("bench-train")(recognition_commands.bench_train)
app.command("evaluate")(evaluation_commands.evaluate)

# --help lists the commands in the order of the workflow.
_ORDER = ["mask", "preview", "generate", "inspect", "run", "align", "trainset", "pairs", "train", "evaluate",
          "export", "video", "bench", "bench-train"]
app.registered_commands.sort(key=lambda c: _ORDER.index(c.name or c.callback.__name__.replace("_", "-")))

if __name__ == "__main__":  # pragma: no cover
    app()
