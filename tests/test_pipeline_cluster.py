"""`--address`: the real `maskgen` (the installed console script) joins a Ray cluster started
with `ray start --head` instead of starting Ray: `maskgen generate --address` and
`maskgen run PIPELINE --address` (which hands it to the stage)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from pipeline_helpers import FACES, N_FACES, assert_same_run, kill_session

REPO = Path(__file__).resolve().parents[1]
MASKGEN = Path(sys.executable).with_name("maskgen")  # what `pip install maskgen` puts on the PATH
# Not this machine's CPU count: a driver that started Ray here instead of joining would show it.
HEAD_CPUS = 3 if os.cpu_count() != 3 else 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def maskgen(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(MASKGEN), *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_generate_and_run_join_a_running_cluster(tmp_path):
    assert MASKGEN.is_file(), f"no maskgen console script beside {sys.executable}: pip install -e ."
    # Ray >= 2.59 turns token authentication on for `ray start`: head and driver share a token
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    address = f"127.0.0.1:{port}"
    ray_cli = Path(sys.executable).with_name("ray")
    ray_tmp = tempfile.mkdtemp(prefix="mgray-")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", f"--port={port}", f"--num-cpus={HEAD_CPUS}", "--include-dashboard=false",
         f"--dashboard-agent-listen-port={free_port()}",  # (no Ray Client port: that needs ray[client])
         "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    job = tmp_path / "job.toml"  # no address in the file: `maskgen run --address` gives it
    job.write_text(f'[generate]\ninput = "{FACES}"\noutput = "{tmp_path / "via_run"}"\nshard_size = 10\n')
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
                time.sleep(0.2)
        out = tmp_path / "out"
        driver = maskgen("generate", FACES, out, "--address", address, "--shard-size", 10, "--json", env=env)
        via_run = maskgen("run", job, "--address", address, "--json", env=env)
    finally:
        kill_session(head.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert driver.returncode == 0, driver.stderr
    summary = json.loads(driver.stdout)
    assert summary["complete"] and summary["workers"] == HEAD_CPUS  # the cluster's CPUs, not this machine's
    df = pd.read_parquet(out / "manifest")
    assert len(df) == N_FACES and set(df["status"]) == {"ok"}

    assert via_run.returncode == 0, via_run.stderr
    staged = json.loads(via_run.stdout)  # `run --json`: one summary line per stage
    assert staged["complete"] and staged["workers"] == HEAD_CPUS
    assert_same_run(out, tmp_path / "via_run")
