"""`--address`: generate joins a Ray cluster started with `ray start --head` instead of starting Ray."""

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
from pipeline_helpers import FACES, N_FACES, kill_session

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_joins_a_running_cluster(tmp_path):
    # Ray >= 2.59 turns token authentication on for `ray start`: head and driver share a token
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    ray_tmp = tempfile.mkdtemp(prefix="mgray-")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         f"--dashboard-agent-listen-port={free_port()}",  # (no Ray Client port: that needs ray[client])
         "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
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
        driver = subprocess.run(
            [sys.executable, "-m", "maskgen.cli.sharded", "generate", str(FACES), str(out),
             "--address", f"127.0.0.1:{port}", "--shard-size", "10", "--json"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )
    finally:
        kill_session(head.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert driver.returncode == 0, driver.stderr
    summary = json.loads(driver.stdout)
    assert summary["complete"] and summary["workers"] == 2
    df = pd.read_parquet(out / "manifest")
    assert len(df) == N_FACES and set(df["status"]) == {"ok"}
