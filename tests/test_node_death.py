"""A node of a real multi-node Ray cluster dies mid-run (`ray.cluster_utils.Cluster` on this
machine, 1 CPU per node; the node is killed, not drained): its shard is retried on the node
that is left and the output is byte for byte a clean run's. With no CPU left for a new
worker, the run stops (exit 1) instead of waiting forever, and re-running it finishes it."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
import ray
from pipeline_helpers import FACES, assert_same_run, invoke
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group, remove_placement_group

from maskgen.pipeline import runner

# The head notices a dead node after ~3 missed health checks of 0.5 s (Ray's default: ~15 s)
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 500, "health_check_period_ms": 500,
                   "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
COPIES = 10  # the sample faces 10x (550 images, 79 shards of 7): seconds of work on 2 nodes
RUN_S = 120  # a run that takes longer than this is stuck (the bug: waiting for a worker forever)


@pytest.fixture(scope="module")
def cluster():
    ray.shutdown()  # another module's local Ray: this module's driver joins the cluster instead
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": FAST_NODE_DEATH})
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces") / "faces"
    for k in range(COPIES):
        for person in FACES.iterdir():
            shutil.copytree(person, root / f"{person.name}_{k}")
    return root


@pytest.fixture(scope="module")
def clean_run(cluster, tree, tmp_path_factory) -> Path:
    """One worker on the head alone (the cluster has one node yet)."""
    out = tmp_path_factory.mktemp("clean") / "out"
    result = generate(tree, out, workers=1)
    assert result.exit_code == 0, result.output
    return out


def generate(tree: Path, out: Path, workers: int, during=None):
    """`maskgen generate --json` in a thread; `during(out, thread)` runs meanwhile in this one."""
    results = []
    args = ("generate", tree, out, "--shard-size", 7, "--workers", workers, "--json")
    thread = threading.Thread(target=lambda: results.append(invoke(*args)), daemon=True)
    thread.start()
    if during:
        during(out, thread)
    thread.join(RUN_S)
    assert not thread.is_alive(), f"the run did not end within {RUN_S} s"
    return results[0]


def remove_after(cluster: Cluster, node, shards_done: int):
    """A `during` that kills `node` (all its processes, at once) once `shards_done` shards are done."""
    seen = {}

    def during(out: Path, run: threading.Thread) -> None:
        deadline = time.monotonic() + RUN_S
        while len(list((out / "stats").glob("*.json"))) < shards_done:
            assert run.is_alive(), "the run ended before the node was removed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        seen["done"] = len(list((out / "stats").glob("*.json")))
        cluster.remove_node(node, allow_graceful=False)

    return during, seen


def test_a_node_dies_mid_run_and_its_shard_is_retried_on_the_other(cluster, tree, clean_run, tmp_path):
    node = cluster.add_node(num_cpus=1)
    during, seen = remove_after(cluster, node, shards_done=4)
    out = tmp_path / "out"
    result = generate(tree, out, workers=2, during=during)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["workers"] == 2 and summary["complete"]
    assert seen["done"] < summary["shards_total"]  # the node died mid-run
    assert summary["retries"] >= 1  # the shard in flight on it, done again on the head
    workers = {json.loads(p.read_text())["worker"] for p in (out / "stats").glob("*.json")}
    assert len(workers) >= 2  # both nodes did shards
    assert_same_run(clean_run, out)


def test_with_no_cpu_left_for_a_new_worker_the_run_stops_and_a_rerun_finishes_it(cluster, tree, clean_run, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "START_TIMEOUT_S", 10.0)  # placement only, not the model loading
    taken = placement_group([{"CPU": 1}])  # the head's CPU is reserved: the one worker goes to the new node
    ray.get(taken.ready())
    node = cluster.add_node(num_cpus=1)
    during, _ = remove_after(cluster, node, shards_done=2)
    out = tmp_path / "out"
    result = generate(tree, out, workers=1, during=during)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert not summary["complete"] and "no worker left" in summary["stopped"]

    remove_placement_group(taken)  # a CPU is free again: the same command finishes the run
    result = generate(tree, out, workers=1)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"] == "resumed"
    assert_same_run(clean_run, out)
