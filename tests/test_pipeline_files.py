"""Pipeline files through the real `maskgen run`: every stage section ([align], [generate],
[trainset], [pairs], [train], [[evaluate]]) runs end to end on real faces, --quiet reaches
the stages, and a bad key anywhere stops the file before its first stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pandas as pd
import pytest
from pipeline_helpers import FACES, ensure_ray, invoke

IDENTITIES = sorted(p.name for p in FACES.iterdir())[:4]  # folds=2 needs 2 identities per fold
PER_IDENTITY = 3
N_INPUTS = len(IDENTITIES) * PER_IDENTITY


def quoted(value) -> str:
    """A TOML value: strings (paths) in basic quotes, lists item by item."""
    if isinstance(value, list):
        return "[" + ", ".join(map(quoted, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(str(value)) if isinstance(value, (str, Path)) else str(value)


def toml(sections: list[tuple[str, dict]]) -> str:
    """`[name]` tables in order; a name given as `[[evaluate]]` makes an array-of-tables entry."""
    lines = []
    for name, table in sections:
        lines.append(name if name.startswith("[[") else f"[{name}]")
        lines += [f"{key} = {quoted(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


def raw_photos(root: Path) -> Path:
    """4 identities x 3 real photos (the sample chips, taken as raw photos to align)."""
    for identity in IDENTITIES:
        (root / identity).mkdir(parents=True)
        for photo in sorted((FACES / identity).glob("*.jpg"))[:PER_IDENTITY]:
            shutil.copy(photo, root / identity / photo.name)
    return root


class Pipeline:
    """Where each stage of the test pipeline reads and writes."""

    def __init__(self, root: Path):
        self.root = root
        self.raw = root / "raw"
        self.aligned = root / "aligned"
        self.masked = root / "masked"
        self.trainset = root / "trainset.parquet"
        self.pairs = root / "pairs.parquet"
        self.train_config = root / "tiny.toml"
        self.train_out = root / "train"
        self.dlib_report = root / "eval-dlib"
        self.model_report = root / "eval-model"
        self.file = root / "pipeline.toml"

    def sections(self) -> list[tuple[str, dict]]:
        return [
            ("pipeline", {"name": "every-stage"}),
            ("align", {"input": self.raw, "output": self.aligned, "template": "sphereface", "shard_size": 5}),
            ("generate", {"input": self.aligned / "images", "output": self.masked, "variants": 1, "keep_original": True,
                          "wear": "proper:0.5,nose:0.5", "seed": 3, "shard_size": 5}),
            ("trainset", {"runs": [self.masked], "out": self.trainset, "min_images": 2}),
            ("pairs", {"sources": [self.masked], "out": self.pairs, "folds": 2, "types": "masked-unmasked,unmasked-unmasked"}),
            ("train", {"config": self.train_config, "set": ["batch_size=4", "max_steps=2"], "resume": True}),
            ("[[evaluate]]", {"model": "dlib-resnet", "pairs": self.pairs, "out": self.dlib_report}),
            ("[[evaluate]]", {"model": self.train_out / "checkpoint.pt", "pairs": self.pairs, "out": self.model_report,
                              "device": "cpu", "batch_size": 8}),
        ]

    def write(self, sections: list[tuple[str, dict]] | None = None) -> Path:
        self.train_config.write_text("\n".join([  # tiny settings; [train] `set` overrides two
            f"manifest = {quoted(self.trainset)}", f"out_dir = {quoted(self.train_out)}", 'model = "sphereface4"',
            "num_workers = 0", "samples = false", "tensorboard = false", "max_steps = 50", "batch_size = 16",
            "lr = 0.01", "log_every = 1", "save_every = 50", "lr_steps = [100]", "seed = 0", "",
        ]))
        self.file.write_text(toml(sections or self.sections()))
        return self.file


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The whole pipeline file, run once through `maskgen run` (not quiet)."""
    pytest.importorskip("torch")
    ensure_ray()
    pipeline = Pipeline(tmp_path_factory.mktemp("pipeline"))
    raw_photos(pipeline.raw)
    result = invoke("run", pipeline.write())
    assert result.exit_code == 0, result.output
    return pipeline, result


def test_every_stage_runs_and_writes_real_outputs(ran):
    pipeline, result = ran
    announced = [result.stderr.find(f" {stage} (") for stage in ("align", "generate", "trainset", "pairs", "train", "evaluate")]
    assert -1 not in announced and announced == sorted(announced), result.stderr  # every stage, in pipeline order

    aligned = pd.read_parquet(pipeline.aligned / "manifest")
    assert len(aligned) == N_INPUTS and set(aligned["status"]) == {"ok"}
    crops = [cv2.imread(str(pipeline.aligned / "images" / rel)) for rel in aligned["out_path"]]
    assert all(crop is not None and crop.shape == (112, 96, 3) for crop in crops)  # the sphereface template

    masked = pd.read_parquet(pipeline.masked / "manifest")  # generate read the align run's crops
    assert len(masked) == 2 * N_INPUTS and set(masked["status"]) == {"ok"}
    assert sorted(masked["src_path"].unique()) == sorted(aligned["out_path"])
    assert masked["variant"].value_counts().to_dict() == {"masked": N_INPUTS, "original": N_INPUTS}
    worn = masked[masked["variant"] == "masked"]
    assert set(worn["wear"]) <= {"proper", "nose"} and worn["mask_type"].str.len().min() > 0
    assert all((pipeline.masked / "images" / rel).is_file() for rel in masked["out_path"])
    assert "inspect" in result.stdout  # `run` shows the generate run's inspection

    train_rows = pd.read_parquet(pipeline.trainset)
    labels = json.loads(pipeline.trainset.with_name("trainset.labels.json").read_text())
    assert sorted(labels) == IDENTITIES and len(train_rows) == 2 * N_INPUTS
    assert all((pipeline.trainset.parent / p).is_file() for p in train_rows["path"])  # relative to the manifest

    pairs = pd.read_parquet(pipeline.pairs)
    assert set(pairs["fold"]) == {0, 1} and set(pairs["pair_type"]) == {"masked-unmasked", "unmasked-unmasked"}
    assert pairs["same"].sum() == (~pairs["same"]).sum() > 0
    fold_ids = [set(g["identity_a"]) | set(g["identity_b"]) for _, g in pairs.groupby("fold")]
    assert not fold_ids[0] & fold_ids[1]  # identity-disjoint folds

    log = [json.loads(line) for line in (pipeline.train_out / "log.jsonl").read_text().splitlines()]
    assert (pipeline.train_out / "checkpoint.pt").stat().st_size > 0
    assert [r["step"] for r in log if "loss" in r][-1] == 2  # `set = [...]` reached --set: 2 steps, not 50

    for out, model in ((pipeline.dlib_report, "dlib-resnet"), (pipeline.model_report, "checkpoint.pt")):
        report = json.loads((out / "report.json").read_text())
        assert model in json.dumps(report)
        assert (out / "roc.png").stat().st_size > 0 and (out / "report.md").is_file()
        scores = pd.read_parquet(out / "scores.parquet")
        assert len(scores) == len(pairs) and scores["score"].notna().all()


def test_run_quiet_passes_quiet_to_every_stage_that_has_it(ran):
    """The same file again with --quiet (align and generate resume, train is at max_steps, the
    rest run again): the stages that have a --quiet print nothing, and `run` announces none."""
    pipeline, loud = ran
    reports = [pipeline.dlib_report / "report.json", pipeline.model_report / "report.json"]
    before = [p.stat().st_mtime_ns for p in reports]
    quiet = invoke("run", pipeline.file, "--quiet")
    assert quiet.exit_code == 0, quiet.output
    assert [p.stat().st_mtime_ns for p in reports] != before  # the stages did run
    assert quiet.stderr == ""  # no stage rules, no progress bars
    for shown in ("align: summary", "generate: summary", "images/s", "inspect", "dlib-resnet on", "images embedded in"):
        assert shown in loud.stdout and shown not in quiet.stdout, shown  # align, generate, evaluate
    assert "checkpoint" not in quiet.stdout  # train (else: "nothing to do: .../checkpoint.pt is at step 2")


def test_an_unknown_key_in_a_later_section_stops_the_file_before_its_first_stage(tmp_path):
    pipeline = Pipeline(tmp_path)
    raw_photos(pipeline.raw)
    sections = pipeline.sections()
    sections[-1][1]["modle"] = "dlib-resnet"  # a typo in the second [[evaluate]] table
    result = invoke("run", pipeline.write(sections))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.toml", "raw", "tiny.toml"]  # nothing written
    assert result.exit_code == 2 and "[evaluate] has unknown key 'modle'" in result.stderr


def test_run_passes_dry_run_force_and_retry_failed_only_to_the_stages_that_have_them(tmp_path):
    import typer

    from maskgen.cli import app
    from maskgen.cli.pipelines import load_pipeline

    job = tmp_path / "job.toml"
    job.write_text('[align]\ninput = "r"\noutput = "a"\n\n[generate]\ninput = "a"\noutput = "b"\n\n'
                   '[train]\nconfig = "c.toml"\n')
    align, generate, train = load_pipeline(job, typer.main.get_command(app))
    flags = {"dry_run": True, "force": True, "retry_failed": True, "quiet": None, "json": None}
    assert generate.argv(generate.tables[0], flags) == ["a", "b", "--dry-run", "--force", "--retry-failed"]
    assert align.argv(align.tables[0], flags) == ["r", "a", "--dry-run", "--force"]  # align has no --retry-failed
    assert train.argv(train.tables[0], flags) == ["--config", "c.toml"]


def test_run_dry_run_plans_writes_nothing_and_skips_the_stages_without_one(tmp_path):
    pipeline = Pipeline(tmp_path)
    raw_photos(pipeline.raw)
    sections = [s for s in pipeline.sections() if s[0] in ("align", "trainset")]
    result = invoke("run", pipeline.write(sections), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "align --dry-run: a new run" in result.stdout  # the stage's own dry run printed its plan
    assert "trainset" in result.stderr and "skipped, it has no --dry-run" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.toml", "raw", "tiny.toml"]  # nothing written
