"""Pipeline files: one TOML file per end-to-end job (pipelines/*.toml), one section per stage.

    [generate]
    input = "{assets}/faces/aligned"   # {assets}: maskgen's own assets folder
    output = "out/demo"                # relative paths start from the current folder
    variants = 1
    type = "random"

Keys are the `maskgen generate` options with `_` for `-`. Stages run in pipeline order;
later stages (align, trainset, pairs, train, evaluate) add their runners to STAGES.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PIPELINE_ORDER = ("align", "generate", "trainset", "pairs", "train", "evaluate")

GENERATE_KEYS = {
    "input", "output", "input_list", "variants", "type", "color", "pattern", "wear", "wear_jitter",
    "texture_weight", "keep_original", "seed", "aligned", "layout", "detector", "upsample", "format", "quality",
    "shard_size", "workers",
    "address", "max_attempts",
}


class PipelineError(ValueError):
    """The pipeline file cannot be run as written."""


@dataclass
class Stage:
    name: str
    options: dict
    source: Path


def _expand_path(value: str) -> Path:
    from maskgen.assets import assets_dir

    return Path(str(value).replace("{assets}", str(assets_dir())))


def load_pipeline(path: Path) -> list[Stage]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"pipeline file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{path}: not valid TOML: {exc}") from None
    unknown = [name for name in data if name not in PIPELINE_ORDER and name != "pipeline"]
    if unknown:
        raise PipelineError(f"{path}: unknown section [{unknown[0]}] (stages: {', '.join(PIPELINE_ORDER)})")
    stages = [Stage(name, data[name], path) for name in PIPELINE_ORDER if name in data]
    for stage in stages:
        if stage.name not in STAGES:
            raise PipelineError(f"{path}: stage [{stage.name}] is not available in this version of maskgen")
        STAGES[stage.name].validate(stage)
    if not stages:
        raise PipelineError(f"{path}: no stage sections (stages: {', '.join(PIPELINE_ORDER)})")
    return stages


class GenerateStage:
    @staticmethod
    def validate(stage: Stage) -> None:
        opts = stage.options
        unknown = sorted(set(opts) - GENERATE_KEYS)
        if unknown:
            raise PipelineError(f"{stage.source}: [generate] has unknown key {unknown[0]!r} (keys: {', '.join(sorted(GENERATE_KEYS))})")
        for key in ("input", "output"):
            if key not in opts:
                raise PipelineError(f"{stage.source}: [generate] needs {key!r}")

    @staticmethod
    def request(stage: Stage, address: str | None, overwrite: bool):
        from maskgen.pipeline.generate import GenerateRequest, build_job_config

        o = stage.options
        try:
            config = build_job_config(
                variants=o.get("variants", 1), mask_type=o.get("type", "random"), color=o.get("color", "random"),
                pattern=o.get("pattern", "random"), wear=o.get("wear", "proper"), wear_jitter=o.get("wear_jitter", 0.0),
                texture_weight=o.get("texture_weight"), keep_original=o.get("keep_original", False),
                seed=o.get("seed", 0), aligned=o.get("aligned", True), layout=o.get("layout", "auto"),
                detector=o.get("detector", "hog"), upsample=o.get("upsample"), image_format=o.get("format"),
                quality=o.get("quality"),
            )
        except ValueError as exc:
            raise PipelineError(f"{stage.source}: [generate] {exc}") from None
        return GenerateRequest(
            input_root=_expand_path(o["input"]),
            out_dir=_expand_path(o["output"]),
            config=config,
            shard_size=o.get("shard_size", 1000),
            workers=o.get("workers"),
            address=address or o.get("address"),
            input_list=_expand_path(o["input_list"]) if o.get("input_list") else None,
            overwrite=overwrite,
            max_attempts=o.get("max_attempts", 3),
        )

    @staticmethod
    def run(stage: Stage, *, address, overwrite, quiet, as_json) -> None:
        from maskgen.pipeline.commands import run_generate_request
        from maskgen.pipeline.inspect import inspect_output, print_report

        request = GenerateStage.request(stage, address, overwrite)
        run_generate_request(request, quiet=quiet, as_json=as_json)
        if not (quiet or as_json):
            console = Console()
            console.rule("inspect")
            print_report(inspect_output(request.out_dir), console, short=True)


def _stages() -> dict:
    from maskgen.pipeline.stages import STAGES as COMMAND_STAGES

    return {"generate": GenerateStage, **COMMAND_STAGES}


STAGES = _stages()


def run_pipeline(stages: list[Stage], *, address=None, overwrite=False, quiet=False, as_json=False) -> None:
    console = Console(stderr=True)
    for stage in stages:
        if not (quiet or as_json):
            console.rule(f"[bold]{stage.name}[/bold] ({stage.source})")
        try:
            STAGES[stage.name].run(stage, address=address, overwrite=overwrite, quiet=quiet, as_json=as_json)
        except PipelineError as exc:
            if as_json:
                print(json.dumps({"error": str(exc)}))
            console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            import typer

            raise typer.Exit(2) from None
