"""One writer per OUT_DIR: a second driver is refused, a stale lock is taken over, --force
breaks a live one, and a run leaves no lock behind (also when it fails)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_helpers import FACES, ensure_ray, invoke

from maskgen.pipeline.lock import STALE_S, LockHeld, acquire, lock_path, read_lock


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ensure_ray()


@pytest.fixture
def small_tree(tmp_path) -> Path:
    """One identity (11 faces): a run of a few seconds."""
    tree = tmp_path / "faces"
    shutil.copytree(FACES / "John_Simm", tree / "John_Simm")
    return tree


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has it now (a reuse within the test is unlikely)


def write_lock(out: Path, **fields) -> None:
    now = time.time()
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now, "token": "t"} | fields
    out.mkdir(parents=True, exist_ok=True)
    lock_path(out).write_text(json.dumps(info))


def test_a_second_driver_is_refused_and_the_first_unharmed(tmp_path, small_tree):
    out = tmp_path / "out"
    first = acquire(out)  # this test process is "the first driver"
    try:
        refused = invoke("generate", small_tree, out, "--quiet")
        assert refused.exit_code == 2
        message = refused.stderr.strip()
        assert len(message.splitlines()) == 1 and message.startswith("error: another maskgen run writes to")
        assert f"host {socket.gethostname()}" in message and f"pid {os.getpid()}" in message and "started 20" in message
        assert read_lock(out).token == first.info.token and first.refresh()  # still ours
        assert not (out / "plan").exists()  # the second driver wrote nothing
    finally:
        first.release()
    assert not lock_path(out).exists()
    done = invoke("generate", small_tree, out, "--quiet")
    assert done.exit_code == 0, done.output
    assert not lock_path(out).exists()  # released at the end


def test_a_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, small_tree):
    out = tmp_path / "out"
    write_lock(out, pid=dead_pid())
    result = invoke("generate", small_tree, out)
    assert result.exit_code == 0, result.output
    assert "took over the lock" in result.stderr and "is not running" in result.stderr
    assert not lock_path(out).exists()


def test_another_hosts_lock_holds_until_its_heartbeat_is_old(tmp_path):
    out = tmp_path / "out"
    write_lock(out, host="elsewhere", pid=1)
    with pytest.raises(LockHeld, match="host elsewhere, pid 1"):
        acquire(out)
    write_lock(out, host="elsewhere", pid=1, heartbeat=time.time() - STALE_S - 1)
    notes = []
    lock = acquire(out, on_note=notes.append)
    assert len(notes) == 1 and "no heartbeat for" in notes[0]
    assert read_lock(out).token == lock.info.token
    lock.release()
    assert not lock_path(out).exists()


def test_force_breaks_a_live_lock_and_its_holder_notices(tmp_path):
    out = tmp_path / "out"
    first = acquire(out)
    notes = []
    second = acquire(out, force=True, on_note=notes.append)
    assert notes and "--force" in notes[0]
    assert not first.refresh() and "taken over by" in first.lost
    first.release()  # not its lock any more: left alone
    assert read_lock(out).token == second.info.token
    second.release()
    assert not lock_path(out).exists()


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    out = tmp_path / "out"
    result = invoke("generate", tmp_path / "nowhere", out, "--quiet")
    assert result.exit_code == 2 and "input folder not found" in result.stderr
    assert not lock_path(out).exists()
