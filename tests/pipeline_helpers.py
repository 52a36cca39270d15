"""Shared helpers for the pipeline tests: one local Ray per test session, the
real `maskgen` app, and ways to compare two runs' outputs."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

import pandas as pd

from maskgen.assets import sample_faces

FACES = sample_faces()
N_FACES = 55  # 5 identities x 11


def ensure_ray() -> None:
    """Start local Ray (2 CPUs) once per test process, as `generate` starts its own; the
    pipeline reuses it."""
    import ray

    from maskgen.pipeline.runner import start_local_ray

    if not ray.is_initialized():
        start_local_ray(2)
        atexit.register(ray.shutdown)


def invoke(*args: str):
    from typer.testing import CliRunner

    from maskgen.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def copy_faces(dest: Path) -> Path:
    shutil.copytree(FACES, dest)
    return dest


def manifest(out_dir: Path) -> pd.DataFrame:
    """The run's manifest without the timing column (the only field that differs between runs)."""
    return pd.read_parquet(Path(out_dir) / "manifest").drop(columns=["elapsed_ms"])


def output_files(out_dir: Path) -> dict[str, str]:
    """sha256 of every file under OUT_DIR/images, by relative path."""
    root = Path(out_dir) / "images"
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_run(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(manifest(a), manifest(b))
    files_a, files_b = output_files(a), output_files(b)
    assert files_a.keys() == files_b.keys()
    assert files_a == files_b


def session_pids(sid: int) -> list[int]:
    """Processes of session `sid` (a driver started with start_new_session=True, and its Ray)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":  # fields after ')': state, ppid, pgrp, session
                pids.append(int(entry))
    return pids


def kill_session(sid: int, timeout: float = 10.0) -> None:
    """SIGKILL every process of session `sid` and wait until none is left."""
    deadline = time.monotonic() + timeout
    while pids := session_pids(sid):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.monotonic() < deadline, f"processes of session {sid} survive: {pids}"
        time.sleep(0.05)
