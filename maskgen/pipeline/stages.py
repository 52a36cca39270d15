"""Pipeline-file stages that are plain CLI commands: align, trainset, pairs, train, evaluate.

A section's keys are the command's options with `_` for `-` (`masked_ratio = 1` is
`--masked-ratio 1`); the keys named in `positional` are its arguments. Running a stage runs
the command itself, so a pipeline file and the command line can never disagree. A stage
given as an array of tables (`[[evaluate]]`) runs once per table."""

from __future__ import annotations

from pathlib import Path

import click
import typer

from maskgen.assets import assets_dir


class CommandStage:
    def __init__(self, command: str, positional: tuple[str, ...] = ()):
        self.command, self.positional = command, positional

    def _click_command(self) -> click.Command:
        from maskgen.cli import app

        return typer.main.get_command(app).commands[self.command]

    def _tables(self, stage) -> list[dict]:
        return stage.options if isinstance(stage.options, list) else [stage.options]

    def validate(self, stage) -> None:
        from maskgen.pipeline.jobs import PipelineError

        params = self._click_command().params
        options = {name.lstrip("-").replace("-", "_") for p in params for name in p.opts + p.secondary_opts}
        for table in self._tables(stage):
            missing = [key for key in self.positional if key not in table]
            unknown = sorted(set(table) - options - set(self.positional))
            if missing or unknown:
                what = f"needs {missing[0]!r}" if missing else f"has unknown key {unknown[0]!r}"
                raise PipelineError(f"{stage.source}: [{stage.name}] {what} (see `maskgen {self.command} --help`)")

    def argv(self, table: dict) -> list[str]:
        args = [_text(value) for key in self.positional for value in _listed(table[key])]
        for key, value in table.items():
            if key in self.positional or value is None:
                continue
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                args += [flag] if value else ([f"--no-{key.replace('_', '-')}"] if self._has_negative(flag) else [])
            else:
                for item in _listed(value):
                    args += [flag, _text(item)]
        return args

    def _has_negative(self, flag: str) -> bool:
        return any(f"--no-{flag[2:]}" in p.secondary_opts for p in self._click_command().params)

    def run(self, stage, *, address=None, overwrite=False, quiet=False, as_json=False) -> None:
        for table in self._tables(stage):
            code = self._click_command().main(self.argv(table), prog_name=f"maskgen {self.command}", standalone_mode=False)
            if code:  # the command printed its own one-line error
                raise typer.Exit(code)


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _text(value) -> str:
    """Values as the command line would give them; {assets} is maskgen's assets folder."""
    return str(value).replace("{assets}", str(assets_dir())) if not isinstance(value, Path) else str(value)


STAGES = {
    "align": CommandStage("align", ("input", "output")),
    "trainset": CommandStage("trainset", ("runs",)),
    "pairs": CommandStage("pairs", ("sources",)),
    "train": CommandStage("train"),
    "evaluate": CommandStage("evaluate"),
}
