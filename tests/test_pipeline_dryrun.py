"""`--dry-run`: the plan and what a run would do, printed; nothing processed, nothing written
(not even the plan: a dry run must not turn a folder into a run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pipeline_helpers import FACES, ensure_ray, invoke


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ensure_ray()


def snapshot(root: Path) -> dict:
    """Every path under `root` with its size and mtime: any write shows."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("command", ["generate", "align", "landmarks"])
def test_a_dry_run_of_a_new_run_writes_nothing(tmp_path, command):
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    result = invoke(command, FACES, out, "--shard-size", 7, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["dry_run"] and shown["plan"] == "new" and shown["inputs"] == 55
    assert (shown["shards_total"], shown["shards_done"], shown["shards_to_do"], shown["inputs_to_do"]) == (8, 0, 8, 55)
    assert len(shown["config_hash"]) == 16
    assert not out.exists() and snapshot(tmp_path) == before


def test_a_dry_run_of_a_resume_says_what_it_would_redo_and_writes_nothing(tmp_path):
    tree = tmp_path / "faces"
    shutil.copytree(FACES / "John_Simm", tree / "John_Simm")
    out = tmp_path / "out"
    assert invoke("generate", tree, out, "--shard-size", 4, "--quiet").exit_code == 0  # 11 inputs: 3 shards
    (out / "stats" / "shard-00002.json").unlink()  # the last shard (3 inputs) is not done
    (out / "images" / "John_Simm" / ".x.jpg.123-abc.tmp").write_bytes(b"")  # a resume would clear this
    before = snapshot(tmp_path)

    text = invoke("generate", tree, out, "--dry-run")
    assert text.exit_code == 0, text.output
    assert "a resume of" in text.stdout and "2 done, 1 to do (3 inputs)" in text.stdout
    assert "nothing was processed or written" in text.stdout
    shown = json.loads(invoke("generate", tree, out, "--dry-run", "--json").stdout)
    assert (shown["plan"], shown["shards_done"], shown["shards_to_do"], shown["inputs_to_do"]) == ("resumed", 2, 1, 3)

    refused = invoke("generate", tree, out, "--seed", 3, "--dry-run")  # refused as the real run would be
    assert refused.exit_code == 2 and "seed 0 -> 3" in refused.stderr
    replacing = json.loads(invoke("generate", tree, out, "--seed", 3, "--overwrite", "--dry-run", "--json").stdout)
    assert replacing["plan"] == "replaced" and replacing["shards_done"] == 0 and replacing["inputs_to_do"] == 11
    assert snapshot(tmp_path) == before
