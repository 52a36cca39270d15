"""`maskgen run <pipeline file>`: the shipped files load, and a file runs its stages."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from pipeline_helpers import FACES, N_FACES, ensure_ray, invoke

from maskgen.cli import app
from maskgen.cli.pipelines import PipelineError, load_pipeline

COMMANDS = typer.main.get_command(app)

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_pipelines_load_and_every_stage_parses_as_its_command(path):
    stages = load_pipeline(path, COMMANDS)
    assert "generate" in [s.name for s in stages]
    for stage in stages:
        for table in stage.tables:  # the command's own parser takes the stage's argv
            stage.command.make_context(stage.name, stage.argv(table, {}))


def test_demo_reads_the_bundled_faces():
    stages = {s.name: s for s in load_pipeline(PIPELINES / "demo.toml", COMMANDS)}
    argv = stages["generate"].argv(stages["generate"].tables[0], {})
    assert Path(argv[0]).is_dir() and len(list(Path(argv[0]).glob("*/*.jpg"))) == N_FACES


def test_a_pipeline_file_runs(tmp_path):
    ensure_ray()
    out = tmp_path / "out"
    job = tmp_path / "job.toml"
    job.write_text(f'[generate]\ninput = "{FACES}"\noutput = "{out}"\nvariants = 2\nshard_size = 20\nseed = 7\n')
    result = invoke("run", job)
    assert result.exit_code == 0, result.output
    assert "inspect" in result.stdout and "coverage: mean" in result.stdout
    df = pd.read_parquet(out / "manifest")
    assert len(df) == N_FACES * 2 and set(df["status"]) == {"ok"}

    as_json = invoke("run", job, "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["plan"] == "resumed"


@pytest.mark.parametrize(
    "text, message",
    [
        ('[generate]\ninput = "a"\noutput = "b"\nvariantz = 2\n', "unknown key 'variantz'"),
        ('[generate]\ninput = "a"\n', "needs 'output'"),
        ("[frobnicate]\n", "unknown section [frobnicate]"),
        ("[generate\n", "not valid TOML"),
        ('[pipeline]\nname = "x"\n', "no stage sections"),
    ],
)
def test_bad_pipeline_files_are_clear_errors(tmp_path, text, message):
    job = tmp_path / "job.toml"
    job.write_text(text)
    with pytest.raises(PipelineError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_pipeline(job, COMMANDS)
    result = invoke("run", job)
    assert result.exit_code == 2 and message in result.stderr


def test_bad_option_values_in_a_file(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(f'[generate]\ninput = "{FACES}"\noutput = "{tmp_path / "o"}"\ntype = "n96"\n')
    result = invoke("run", job)
    assert result.exit_code == 2 and "--type: unknown value 'n96'" in result.stderr


def test_run_flags_reach_the_stages_that_have_them_and_a_resuming_stage_keeps_its_checkpoint(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('[generate]\ninput = "a"\noutput = "b"\n\n[train]\nconfig = "c.toml"\nresume = true\n')
    generate, train = load_pipeline(job, COMMANDS)
    flags = {"address": "head:6379", "overwrite": True, "quiet": True, "json": None}
    assert generate.argv(generate.tables[0], flags) == ["a", "b", "--address", "head:6379", "--overwrite", "--quiet"]
    argv = train.argv(train.tables[0], flags)
    assert "--resume" in argv and "--overwrite" not in argv and "--address" not in argv  # train has no --address
