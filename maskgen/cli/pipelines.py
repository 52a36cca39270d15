"""`maskgen run PIPELINE.toml`: one TOML file per end-to-end job, one section per stage.

    [generate]
    input = "{assets}/faces/aligned"   # {assets}: maskgen's own assets folder
    output = "out/demo"                # relative paths start from the current folder
    variants = 1
    type = "random"

Every section is a `maskgen` command and its keys are that command's options with `_` for
`-` (`masked_ratio = 1` is `--masked-ratio 1`; `keep_original = false` is
`--no-keep-original`); the keys in POSITIONAL are its arguments. Running a stage runs the
command itself, so a pipeline file and the command line can never disagree. A stage given as
an array of tables (`[[evaluate]]`) runs once per table. `maskgen run`'s own --address,
--overwrite, --dry-run, --force, --retry-failed, --quiet and --json go to every stage whose
command has them; under --dry-run a stage without one is skipped (it would write)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from maskgen.cli import options as opt

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# stage -> the keys that are the command's arguments, in order; stages run in this order
POSITIONAL = {
    "orl": ("output",),
    "align": ("input", "output"),
    "landmarks": ("input", "output"),
    "generate": ("input", "output"),
    "trainset": ("runs",),
    "pairs": ("sources",),
    "train": (),
    "evaluate": (),
    "report": ("experiment",),
}


class PipelineError(ValueError):
    """The pipeline file cannot be run as written."""


@dataclass
class Stage:
    name: str
    tables: list[dict]  # one per run of the command ([[stage]] gives several)
    command: object  # the stage's command (a click command of the maskgen app)
    source: Path
    variables: dict = field(default_factory=dict)  # [pipeline.vars], then `run --var`: {name} in any value

    def argv(self, table: dict, run_flags: dict) -> list[str]:
        """The command line for one table; `run_flags` (maskgen run's own) fill in what it has."""
        args = [self.text(value) for key in POSITIONAL[self.name] for value in _listed(table[key])]
        flags = {key: value for key, value in run_flags.items() if key in self.options()} | {
            key: value for key, value in table.items() if key not in POSITIONAL[self.name]}
        if table.get("resume"):
            flags.pop("overwrite", None)  # a stage that resumes (train) keeps its checkpoint under run --overwrite
        if run_flags.get("address") and "address" in self.options():
            flags["address"] = run_flags["address"]  # the command line overrides the file
        for key, value in flags.items():
            flag = "--" + key.replace("_", "-")
            if value is None:
                continue
            if isinstance(value, bool):
                args += [flag] if value else ([f"--no-{flag[2:]}"] if f"--no-{flag[2:]}" in self.options(negative=True) else [])
            else:
                args += [item for item in _listed(value) for item in (flag, self.text(item))]
        return args

    def text(self, value) -> str:
        """A value as the command line would give it, {assets} and the variables filled in."""
        text = _text(value)
        for name, replacement in self.variables.items():
            text = text.replace("{" + name + "}", str(replacement))
        return text

    def options(self, negative: bool = False) -> set[str]:
        """The command's option names as file keys (or, with negative, its --no- flags)."""
        if negative:
            return {name for p in self.command.params for name in p.secondary_opts}
        return {name.lstrip("-").replace("-", "_") for p in self.command.params for name in p.opts + p.secondary_opts}


def load_pipeline(path: Path, commands, overrides: dict | None = None) -> list[Stage]:
    """The file's stages in pipeline order, each checked against its command (`commands`:
    the maskgen app as a click group) before anything runs; `overrides` replace the file's
    [pipeline.vars]."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"pipeline file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{path}: not valid TOML: {exc}") from None
    unknown = [name for name in data if name not in POSITIONAL and name != "pipeline"]
    if unknown:
        raise PipelineError(f"{path}: unknown section [{unknown[0]}] (stages: {', '.join(POSITIONAL)})")
    variables = data.get("pipeline", {}).get("vars", {})
    unknown = sorted(set(overrides or {}) - set(variables))
    if unknown:
        raise PipelineError(f"--var {unknown[0]}: the file has no such variable (its [pipeline.vars]: {', '.join(variables) or 'none'})")
    variables = variables | (overrides or {})
    stages = [
        Stage(name, data[name] if isinstance(data[name], list) else [data[name]], commands.commands[name], path, variables)
        for name in POSITIONAL if name in data
    ]
    if not stages:
        raise PipelineError(f"{path}: no stage sections (stages: {', '.join(POSITIONAL)})")
    for stage in stages:
        for table in stage.tables:
            missing = [key for key in POSITIONAL[stage.name] if key not in table]
            unknown = sorted(set(table) - stage.options() - set(POSITIONAL[stage.name]))
            if missing or unknown:
                what = f"needs {missing[0]!r}" if missing else f"has unknown key {unknown[0]!r}"
                raise PipelineError(f"{path}: [{stage.name}] {what} (see `maskgen {stage.name} --help`)")
    return stages


def run_stage(stage: Stage, run_flags: dict) -> None:
    """Run every table of the stage through its command; stop at the first that fails."""
    for table in stage.tables:
        code = stage.command.main(stage.argv(table, run_flags), prog_name=f"maskgen {stage.name}", standalone_mode=False)
        if code:  # the command printed its own one-line error
            raise typer.Exit(code)
        if stage.name == "generate" and not (run_flags["quiet"] or run_flags["json"] or run_flags.get("dry_run")):
            from maskgen.cli.reports import print_inspection
            from maskgen.datasets.inspection import inspect_output

            console = opt.console()
            console.rule("inspect")
            print_inspection(inspect_output(Path(stage.text(table["output"]))), console, short=True)


def _variable(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise PipelineError(f"--var {text!r}: expected NAME=VALUE")
    return name.strip(), value


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _text(value) -> str:
    """Values as the command line would give them; {assets} is maskgen's assets folder."""
    from maskgen.assets import assets_dir

    return str(value).replace("{assets}", str(assets_dir()))


def run(
    ctx: typer.Context,
    pipeline: Annotated[Path, typer.Argument(help="Pipeline file, e.g. pipelines/demo.toml.", show_default=False)],
    address: Annotated[Optional[str], typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join; overrides the file.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace previous outputs made with other options.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only, in every stage that has --dry-run; skip the others (they would write).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Break an output folder's lock, in the stages that have --force.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Re-run only the inputs whose rows are not ok, in the stages that have it (generate).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries; errors only.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print each stage's summary as JSON (one object per line).")] = False,
    var: Annotated[Optional[list[str]], typer.Option("--var", help="NAME=VALUE: replaces {NAME} in the file's values (its [pipeline.vars] say which exist). Repeatable.")] = None,
) -> None:
    """Run every stage of a pipeline file: align, generate, trainset, pairs, train, evaluate."""
    commands = ctx.find_root().command  # the maskgen app: each stage is one of its commands
    try:
        overrides = dict(_variable(text) for text in var or [])
        stages = load_pipeline(pipeline, commands, overrides)
    except PipelineError as exc:
        raise opt.fail(str(exc), as_json=as_json) from None
    run_flags = {"address": address, "overwrite": overwrite or None, "dry_run": dry_run or None, "force": force or None,
                 "retry_failed": retry_failed or None, "quiet": quiet or None, "json": as_json or None}
    console = opt.console(stderr=True)
    for stage in stages:
        if dry_run and "dry_run" not in stage.options():
            if not (quiet or as_json):
                console.print(f"[yellow]{stage.name}[/yellow] ({stage.source}): skipped, it has no --dry-run")
            continue
        if not (quiet or as_json):
            console.rule(f"[bold]{stage.name}[/bold] ({stage.source})")
        run_stage(stage, run_flags)
