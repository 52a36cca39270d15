"""A worker killed while it writes (local Ray, the sample faces): its shard is retried, and
the temp file it left half-written is gone, so OUT_DIR is byte for byte a clean run's."""

from __future__ import annotations

import pytest
from pipeline_helpers import FACES, assert_same_run, ensure_ray, invoke

from maskgen.jobs.masking import build_job_config
from maskgen.pipeline.driver import GenerateRequest, generate
from maskgen.pipeline.runner import RunnerError


def test_a_worker_killed_mid_write_leaves_no_temp_file(tmp_path):
    ensure_ray()
    clean = tmp_path / "clean"
    result = invoke("generate", FACES, clean, "--shard-size", 7, "--workers", 1, "--quiet")
    assert result.exit_code == 0, result.output

    out = tmp_path / "out"
    fault = {"shard": 2, "kind": "crash_writing", "times": 1, "marker_dir": str(tmp_path / "faults")}
    summary = generate(GenerateRequest(FACES, out, build_job_config(), shard_size=7, workers=2, fault=fault))
    assert summary.complete and summary.retries == 1
    assert not list(out.rglob("*.tmp"))
    assert_same_run(clean, out)


def test_a_job_that_cannot_be_built_is_a_clear_error_not_endless_restarts(tmp_path):
    ensure_ray()
    request = GenerateRequest(FACES, tmp_path / "out", build_job_config(), shard_size=7, workers=2,
                              job_class="maskgen.no_such_module:Job")
    with pytest.raises(RunnerError, match="workers could not start: ModuleNotFoundError"):
        generate(request)
