"""The sharded, resumable commands: `maskgen generate`, `maskgen align` (both on Ray through
maskgen.pipeline) and `maskgen inspect` (what a run produced).
Exit codes: 0 done, 1 finished with failed shards, 2 unusable input/options/output folder,
130 interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from maskgen.cli import options as opt

EXIT_FAILED_SHARDS = 1  # 2: a user mistake, 130: interrupted (cli.options)

DryRun = Annotated[bool, typer.Option("--dry-run", help="Plan only: print the inputs, shards, config hash and what a run would do now (shards done / to do); process and write nothing.")]
RETRY_MAY_CHANGE = ("detector", "upsample")  # what may find the faces a first run missed; all else is the run's identity
Force = Annotated[bool, typer.Option("--force", help="Break OUT_DIR's lock even if the run holding it looks alive (only when you know it is gone).")]


def generate(
    in_tree: Annotated[Path, typer.Argument(help="Aligned face tree <root>/<identity>/<image>, or an insightface folder (train.rec + train.idx, e.g. faces_webface_112x112) (with --input-list: the root its relative paths start from).", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Output folder: images/, manifest/, plan/, stats/ go here (on a cluster, a path every node shares).", show_default=False)],
    variants: opt.Variants = 1,
    mask_type: opt.MaskType = "random",
    color: opt.Color = "random",
    pattern: opt.Pattern = "random",
    wear: opt.Wear = "proper",
    wear_jitter: opt.WearJitter = 0.0,
    texture_weight: opt.TextureWeight = None,
    keep_original: opt.KeepOriginal = False,
    seed: opt.Seed = 0,
    aligned: opt.Aligned = True,
    layout: opt.Layout = "auto",
    detector: opt.Detector = "hog",
    upsample: opt.Upsample = None,
    landmarker: opt.Landmarks = "batched",
    image_format: opt.ImageFormat = None,
    quality: opt.Quality = None,
    qa_reject: opt.QAReject = False,
    qa_thresholds: opt.QAThresholds = "default",
    output_format: opt.OutputFormat = "files",
    shard_size: Annotated[Optional[int], typer.Option("--shard-size", min=1, help="Images per shard: the unit of work, retry and resume. Default: up to 1000, fewer on a small tree so that every worker (--workers, else this machine's CPUs) gets two shards or more; a resumed run keeps its own.", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="Worker processes (default: one per CPU of this machine, or of the cluster).")] = None,
    address: Annotated[Optional[str], typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join (e.g. head:6379 or auto); default: start Ray on this machine.")] = None,
    input_list: Annotated[Optional[Path], typer.Option("--input-list", help="Parquet/CSV/TXT list of paths (columns: path, identity, landmarks) to use instead of walking IN_TREE.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous run in OUT_DIR made from other inputs or with other options.")] = False,
    max_attempts: Annotated[int, typer.Option("--max-attempts", min=1, help="Tries per shard before it is reported as failed.")] = 3,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Re-run only the inputs whose rows are not ok (after replacing bad files, or with another --detector / --upsample: the only options it may change); ok rows and images are kept as they are.")] = False,
    force: Force = False,
    dry_run: DryRun = False,
    quiet: opt.Quiet = False,
    as_json: Annotated[bool, typer.Option("--json", help="No progress bar; print the summary as one JSON object on stdout.")] = False,
) -> None:
    """Mask every face of IN_TREE into OUT_DIR with Ray; resumable, one manifest row per image x variant."""
    from maskgen.jobs.masking import build_job_config
    from maskgen.pipeline.driver import GenerateRequest

    try:
        config = build_job_config(
            variants=variants, mask_type=mask_type, color=color, pattern=pattern, wear=wear,
            wear_jitter=wear_jitter, texture_weight=texture_weight, keep_original=keep_original,
            seed=seed, aligned=aligned, layout=layout, detector=detector, upsample=upsample,
            image_format=image_format, quality=quality, qa_reject=qa_reject, qa_thresholds=qa_thresholds,
            landmarker=landmarker, output_format=output_format,
        )
    except ValueError as exc:
        raise opt.fail(str(exc), as_json=as_json) from None
    request = GenerateRequest(
        input_root=in_tree, out_dir=out_dir, config=config, shard_size=shard_size, workers=workers,
        address=address, input_list=input_list, overwrite=overwrite, max_attempts=max_attempts, force=force,
        dry_run=dry_run, retry_failed=retry_failed, retry_may_change=RETRY_MAY_CHANGE,
    )
    run_generate_request(request, quiet=quiet, as_json=as_json)


def run_generate_request(request, *, quiet: bool = False, as_json: bool = False, label: str = "generate"):
    """Run a request with the CLI's output and exit codes (shared by `generate`, `align` and
    `run`); `label` names the command on the progress bar and the summary."""
    from maskgen.cli.reports import RichReporter, print_preview, print_summary
    from maskgen.pipeline.driver import generate as run_generate
    from maskgen.pipeline.driver import preview
    from maskgen.pipeline.inputs import InputError
    from maskgen.pipeline.lock import LockHeld
    from maskgen.pipeline.plan import PlanMismatch
    from maskgen.pipeline.progress import SilentReporter
    from maskgen.pipeline.runner import RunnerError

    live = not (quiet or as_json)
    try:
        if request.dry_run:
            shown = preview(request, RichReporter(label=label) if live else SilentReporter())
            if as_json:
                print(json.dumps(shown.to_dict()))
            else:
                print_preview(shown, opt.console(), label)
            return shown
        summary = run_generate(request, RichReporter(label=label) if live else SilentReporter())
    except (InputError, PlanMismatch, RunnerError, LockHeld) as exc:
        raise opt.fail(str(exc), as_json=as_json) from None
    except OSError as exc:  # OUT_DIR not writable, disk full while planning...
        raise opt.fail(f"{exc.filename or request.out_dir}: {exc.strerror or exc}", as_json=as_json) from None
    except KeyboardInterrupt:
        opt.console(stderr=True).print("[yellow]interrupted[/yellow]: re-run the same command to finish what is missing")
        raise typer.Exit(opt.EXIT_INTERRUPTED) from None
    if as_json:
        print(json.dumps(summary.to_dict()))  # one line: `maskgen run --json` prints one per stage
    elif not quiet:
        print_summary(summary, opt.console(), label)
    if summary.exit_code:
        raise typer.Exit(EXIT_FAILED_SHARDS)
    return summary


def align(
    raw_tree: Annotated[Path, typer.Argument(help="Raw photos: <root>/<identity>/<image>.", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Output: images/<identity>/<image> crops, manifest/, plan/, stats/.", show_default=False)],
    template: Annotated[str, typer.Option("--template", help="sphereface (96x112, SphereFace/CosFace), arcface (112x112, insightface) or dlib (150x150 chips, dlib-resnet).")] = "sphereface",
    size: Annotated[Optional[str], typer.Option("--size", help="Crop size WxH (e.g. 192x224); the template scales with it. Default: the template's own.")] = None,
    detector: Annotated[str, typer.Option("--detector", help="Face detector: hog (fast) or cnn (dlib's mmod: finds more turned/small faces, ~10x slower on a CPU).")] = "hog",
    upsample: Annotated[Optional[int], typer.Option("--upsample", min=0, max=3, help="HOG upsampling (finds smaller faces, ~4x time each); default 1 up to 2000 px, else 0.")] = None,
    landmarker: opt.Landmarks = "batched",
    points: Annotated[int, typer.Option("--points", help="Alignment points from dlib's 68-point (default) or 5-point model (eyes from the 5-point fit).")] = 68,
    select: Annotated[str, typer.Option("--select", help="Photos with several faces: largest, central, or all (one crop each, <stem>_f<k>).")] = "largest",
    fallback: Annotated[bool, typer.Option("--fallback", help="Photos without a face: a centre crop, marked method=center_crop (default: a no_face row only).")] = False,
    image_format: Annotated[str, typer.Option("--format", help="Format of the crops: jpg, png or webp.")] = "jpg",
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG/WEBP quality of the crops.")] = 95,
    seed: opt.Seed = 0,
    shard_size: Annotated[Optional[int], typer.Option("--shard-size", min=1, help="Photos per shard: the unit of work, retry and resume. Default: up to 200, fewer on a small tree so that every worker gets two shards or more; a resumed run keeps its own.", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="Worker processes (default: one per CPU of this machine or the cluster).")] = None,
    address: Annotated[Optional[str], typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join; default: start Ray on this machine.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous run in OUT_DIR made with other inputs or options.")] = False,
    force: Force = False,
    dry_run: DryRun = False,
    quiet: opt.Quiet = False,
    as_json: Annotated[bool, typer.Option("--json", help="No progress bar; print the summary as one JSON object.")] = False,
) -> None:
    """Detect faces in raw photos and warp each onto a recogniser's template (resumable, Ray)."""
    from maskgen.jobs.aligning import SELECTIONS, AlignConfig
    from maskgen.pipeline.driver import GenerateRequest

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
    from maskgen.faces.landmarks import ENGINES

    if landmarker not in ENGINES:
        raise opt.fail(f"--landmarker: unknown engine {landmarker!r} (choose from {', '.join(ENGINES)})")
    from maskgen.images import format_name

    try:
        config = AlignConfig(template, crop, detector, upsample, points, select, fallback,
                             format_name(image_format) or "JPEG", quality, landmarker)
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
        input_root=raw_tree, out_dir=out_dir, config=config, shard_size=shard_size, max_shard_size=200, workers=workers,
        address=address, overwrite=overwrite, force=force, dry_run=dry_run,
        job_class="maskgen.jobs.aligning:AlignJob",
    )
    run_generate_request(request, quiet=quiet, as_json=as_json, label="align")


def landmarks(
    in_tree: Annotated[Path, typer.Argument(help="Face tree <root>/<identity>/<image> (aligned crops, or photos with --wild), or an insightface folder (train.rec + train.idx).", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Output folder: manifest/ (one row per image: its 68 points; pandas.read_parquet on it), plan/, stats/.", show_default=False)],
    aligned: opt.Aligned = True,
    layout: opt.Layout = "auto",
    detector: opt.Detector = "hog",
    upsample: opt.Upsample = None,
    landmarker: opt.Landmarks = "batched",
    shard_size: Annotated[Optional[int], typer.Option("--shard-size", min=1, help="Images per shard: the unit of work, retry and resume. Default: up to 5000, fewer on a small tree so that every worker gets two shards or more.", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="Worker processes (default: one per CPU of this machine or the cluster).")] = None,
    address: Annotated[Optional[str], typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join; default: start Ray on this machine.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous run in OUT_DIR made with other inputs or options.")] = False,
    force: Force = False,
    dry_run: DryRun = False,
    quiet: opt.Quiet = False,
    as_json: Annotated[bool, typer.Option("--json", help="No progress bar; print the summary as one JSON object.")] = False,
) -> None:
    """The 68 landmarks of every image of IN_TREE (resumable, Ray): what online mask
    augmentation (`online_masks` in a training config) masks faces from, without dlib."""
    from maskgen.faces.landmarks import DETECTORS, ENGINES
    from maskgen.faces.layouts import face_box
    from maskgen.jobs.landmarking import LandmarkConfig
    from maskgen.pipeline.driver import GenerateRequest

    try:
        face_box(112, 112, layout)
    except ValueError as exc:
        raise opt.fail(f"--layout: {exc}", as_json=as_json) from None
    if detector not in DETECTORS:
        raise opt.fail(f"--detector: unknown detector {detector!r} (choose from {', '.join(DETECTORS)})", as_json=as_json)
    if landmarker not in ENGINES:
        raise opt.fail(f"--landmarker: unknown engine {landmarker!r} (choose from {', '.join(ENGINES)})", as_json=as_json)
    request = GenerateRequest(
        input_root=in_tree, out_dir=out_dir, config=LandmarkConfig(aligned, layout, detector, upsample, landmarker),
        shard_size=shard_size, max_shard_size=5000, workers=workers, address=address, overwrite=overwrite, force=force,
        dry_run=dry_run, job_class="maskgen.jobs.landmarking:LandmarkJob",
    )
    run_generate_request(request, quiet=quiet, as_json=as_json, label="landmarks")


def inspect(
    out_dir: Annotated[Path, typer.Argument(help="Output folder of a generate run.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    top: Annotated[int, typer.Option("--top", help="Rows to show for identities and failure examples.")] = 10,
) -> None:
    """Counts by status, mask type, wear and identity; failure examples; coverage statistics."""
    from maskgen.cli.reports import print_inspection
    from maskgen.datasets.inspection import inspect_output

    try:
        report = inspect_output(out_dir, examples=top)
    except FileNotFoundError as exc:
        raise opt.fail(str(exc), as_json=as_json) from None
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        print_inspection(report, opt.console(), top=top)
