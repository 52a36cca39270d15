"""`maskgen evaluate`: a thin typer command over maskgen.evaluation (registered in cli.py).

Exit codes: 0 done, 2 unusable input (pairs, images, model, output folder). The heavy
imports (scikit-learn, matplotlib, dlib, torch) happen inside the function."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maskgen.cli import options as opt


class EmbeddingProgress:
    """A progress bar on stderr that appears only once embedding starts (so an early error
    prints nothing else) and is gone when it ends."""

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 console=opt.console(stderr=True), disable=quiet, transient=True)
        self.task = None

    def start(self, total: int) -> None:
        self.task = self.progress.add_task("embed", total=total)
        self.progress.start()

    def advance(self, count: int) -> None:
        self.progress.advance(self.task, count)

    def __enter__(self) -> EmbeddingProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.stop()


def evaluate(
    model: Annotated[str, typer.Option(
        "--model", "-m", help="A checkpoint.pt from `maskgen train` (or its folder), or dlib-resnet: dlib's "
        "pretrained 128-d ResNet from face_recognition_models (no torch needed).", show_default=False)],
    pairs: Annotated[Path, typer.Option(
        "--pairs", "-p", help="Pairs file (.parquet) from `maskgen pairs`; relative image paths start from its folder.",
        show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Results folder: report.json, report.md, roc.png, scores.parquet.", show_default=False)],
    skip_missing: Annotated[bool, typer.Option(
        "--skip-missing", help="Leave out the pairs whose images are missing or unreadable (counted and listed in "
        "the report) instead of stopping.")] = False,
    mean: Annotated[str, typer.Option(
        "--mean", help="Per-fold mean subtraction (LFW protocol): on | off | auto (on unless some training folds "
        "hold fewer than 20 identities, as in the 5-identity sample, where their mean stands for those people).")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass (each also mirrored).")] = 64,
    device: Annotated[str, typer.Option("--device", help="Checkpoints only: auto (CUDA when torch sees one) | cpu | cuda | cuda:N.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no tables; errors only.")] = False,
) -> None:
    """Verification accuracy of a recogniser on masked/unmasked pairs (LFW protocol).

    Mean ± std over folds, ROC/AUC, EER, TAR at fixed FARs, per pair type, mask type and wear."""
    from maskgen.evaluation.embedders import EmbedderError, get_embedder
    from maskgen.evaluation.evaluate import EvaluationError, evaluate_pairs
    from maskgen.evaluation.report import write_report

    if out.exists() and not out.is_dir():
        raise opt.fail(f"--out {out} is a file, not a folder")
    try:
        embedder = get_embedder(model, device, batch_size)
        with EmbeddingProgress(quiet) as progress:
            evaluation = evaluate_pairs(pairs, embedder, skip_missing, mean, on_batch=progress.advance,
                                        on_start=progress.start)
        targets = write_report(evaluation, out)
    except (EmbedderError, EvaluationError) as exc:
        raise opt.fail(str(exc)) from None
    except OSError as exc:
        raise opt.fail(f"cannot write to {out}: {exc.strerror or exc}") from None
    if not quiet:
        console = opt.console()
        print_report(evaluation.report, console)
        timing = evaluation.timing
        console.print(f"{timing['images']} images embedded in {timing['embedding_s']:.1f} s, protocol {timing['protocol_s']:.2f} s; "
                      f"report: {targets['report.md']}", highlight=False)


def rich_table(title: str, header: list[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i < 2 else "right", overflow="fold")  # wrap, never "…"
    for row in rows:
        table.add_row(*row)
    return table


def print_whole(console, table) -> None:
    """A table at the width it needs when stdout is a pipe or a file (where rich would squeeze
    it into 80 columns); a terminal narrower than the table gets its cells wrapped."""
    from rich.measure import Measurement

    if not console.is_terminal:
        needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
        console.width = max(console.width, needed)
    console.print(table)


def print_report(report: dict, console) -> None:
    from maskgen.evaluation.report import BREAKDOWN_HEADER, GROUP_HEADER, breakdown_rows, group_rows, json_ready, notes

    report = json_ready(report)
    print_whole(console, rich_table(f"{report['model']['model']} on {report['pairs']['file']}", GROUP_HEADER,
                                    group_rows(report)))
    if report["breakdown"] or len(report["groups"]) > 1:
        print_whole(console, rich_table("by mask type and wear", BREAKDOWN_HEADER, breakdown_rows(report)))
    for note in notes(report):
        console.print(f"[dim]{note}[/dim]", highlight=False)
