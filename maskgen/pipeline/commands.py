"""Thin typer commands over the pipeline: parse options, call one function, print.

Registered in maskgen/cli.py: `app.command("generate")(commands.generate)` and so on.
Exit codes: 0 done, 1 finished with failed shards, 2 unusable input/options/output folder,
130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from maskgen import cli_options as opt
from maskgen.pipeline.generate import GenerateRequest, build_job_config
from maskgen.pipeline.generate import generate as run_generate
from maskgen.pipeline.inputs import InputError
from maskgen.pipeline.plan import PlanMismatch
from maskgen.pipeline.progress import RichReporter, SilentReporter, print_summary
from maskgen.pipeline.runner import RunnerError

EXIT_FAILED_SHARDS, EXIT_INTERRUPTED = 1, 130  # 2: a user mistake (cli_options.fail)


def generate(
    in_tree: Annotated[Path, typer.Argument(help="Aligned face tree <root>/<identity>/<image> (with --input-list: the root its relative paths start from).", show_default=False)],
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
    image_format: opt.ImageFormat = None,
    quality: opt.Quality = None,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Images per shard: the unit of work, retry and resume.")] = 1000,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="Worker processes (default: one per CPU of this machine, or of the cluster).")] = None,
    address: Annotated[Optional[str], typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join (e.g. head:6379 or auto); default: start Ray on this machine.")] = None,
    input_list: Annotated[Optional[Path], typer.Option("--input-list", help="Parquet/CSV/TXT list of paths (columns: path, identity, landmarks) to use instead of walking IN_TREE.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous run in OUT_DIR made from other inputs or with other options.")] = False,
    max_attempts: Annotated[int, typer.Option("--max-attempts", min=1, help="Tries per shard before it is reported as failed.")] = 3,
    quiet: opt.Quiet = False,
    as_json: Annotated[bool, typer.Option("--json", help="No progress bar; print the summary as one JSON object on stdout.")] = False,
) -> None:
    """Mask every face of IN_TREE into OUT_DIR with Ray; resumable, one manifest row per image x variant."""
    try:
        config = build_job_config(
            variants=variants, mask_type=mask_type, color=color, pattern=pattern, wear=wear,
            wear_jitter=wear_jitter, texture_weight=texture_weight, keep_original=keep_original,
            seed=seed, aligned=aligned, layout=layout, detector=detector, upsample=upsample,
            image_format=image_format, quality=quality,
        )
    except ValueError as exc:
        raise opt.fail(str(exc), as_json=as_json) from None
    request = GenerateRequest(
        input_root=in_tree, out_dir=out_dir, config=config, shard_size=shard_size, workers=workers,
        address=address, input_list=input_list, overwrite=overwrite, max_attempts=max_attempts,
    )
    run_generate_request(request, quiet=quiet, as_json=as_json)


def run_generate_request(request: GenerateRequest, *, quiet: bool = False, as_json: bool = False, label: str = "generate"):
    """Run a request with the CLI's output and exit codes (shared by `generate`, `align` and
    `run`); `label` names the command on the progress bar and the summary."""
    live = not (quiet or as_json)
    try:
        summary = run_generate(request, RichReporter(label=label) if live else SilentReporter())
    except (InputError, PlanMismatch, RunnerError) as exc:
        raise opt.fail(str(exc), as_json=as_json) from None
    except OSError as exc:  # OUT_DIR not writable, disk full while planning...
        raise opt.fail(f"{exc.filename or request.out_dir}: {exc.strerror or exc}", as_json=as_json) from None
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/yellow]: re-run the same command to finish what is missing")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        print(json.dumps(summary.to_dict()))  # one line: `maskgen run --json` prints one per stage
    elif not quiet:
        print_summary(summary, Console(), label)
    if summary.exit_code:
        raise typer.Exit(EXIT_FAILED_SHARDS)
    return summary


def inspect(
    out_dir: Annotated[Path, typer.Argument(help="Output folder of a generate run.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    top: Annotated[int, typer.Option("--top", help="Rows to show for identities and failure examples.")] = 10,
) -> None:
    """Counts by status, mask type, wear and identity; failure examples; coverage statistics."""
    from maskgen.pipeline.inspect import inspect_output, print_report

    try:
        report = inspect_output(out_dir, examples=top)
    except FileNotFoundError as exc:
        raise opt.fail(str(exc), as_json=as_json) from None
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report, Console(), top=top)


def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline file, e.g. pipelines/demo.toml.", show_default=False)],
    address: Annotated[Optional[str], typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join; overrides the file.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace previous outputs made with other options.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries; errors only.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print each stage's summary as JSON (one object per line).")] = False,
) -> None:
    """Run every stage of a pipeline file: align, generate, trainset, pairs, train, evaluate."""
    from maskgen.pipeline.jobs import PipelineError, load_pipeline, run_pipeline

    try:
        stages = load_pipeline(pipeline)
    except PipelineError as exc:
        raise opt.fail(str(exc), as_json=as_json) from None
    run_pipeline(stages, address=address, overwrite=overwrite, quiet=quiet, as_json=as_json)


if __name__ == "__main__":  # python -m maskgen.pipeline.commands generate ... (without cli.py)
    _app = typer.Typer(add_completion=False, no_args_is_help=True)
    for _name, _fn in (("generate", generate), ("inspect", inspect), ("run", run)):
        _app.command(_name)(_fn)
    _app(prog_name="maskgen", args=sys.argv[1:])
