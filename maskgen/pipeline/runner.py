"""Shards over Ray actors: one `ShardWorker` per CPU builds `ImageJob` once and takes shards
one at a time; a dead worker is replaced and its shard retried; a shard that keeps failing
is given up on (reported) while the others complete.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from inspect import signature
from pathlib import Path

import ray

from maskgen.errors import one_line
from maskgen.pipeline.paths import OutputLayout
from maskgen.pipeline.plan import Plan
from maskgen.pipeline.shards import FATAL_ERRNOS, process_shard

PROGRESS_EVERY_S = 1.0  # how often a worker reports images done within a shard
TICK_S = 0.5  # the driver's progress refresh (a board read) and ray.wait timeout


class RunnerError(RuntimeError):
    """The run cannot go on (e.g. no worker can start)."""


def connect(address: str | None, workers: int | None) -> tuple[int, bool]:
    """Join the cluster at `address`, or start Ray on this machine (unless Ray is already up
    in this process); return (workers, started_here).

    Workers are capped at the cluster's CPUs: an actor that cannot be placed would wait forever.
    """
    started_here = not ray.is_initialized()
    if started_here:
        _init_ray(address, workers)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return min(workers or cpus, cpus), started_here


def _init_ray(address: str | None, workers: int | None) -> None:
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, **quiet)
        else:  # "local" ignores any cluster left running on this machine: no address means local
            ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, **quiet)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError...: all mean "no Ray"
        where = f"join the Ray cluster at {address}" if address else "start Ray on this machine"
        hint = ""
        if "auth" in str(exc).lower() or "token" in str(exc).lower():
            hint = (" (the cluster uses token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN, "
                    "or copy ~/.ray/auth_token from the head node)")
        raise RunnerError(f"cannot {where}: {_short_error(exc)}{hint}") from exc


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a wrong host:port (Ray itself retries for minutes, printing C++ warnings)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "ray://...": Ray resolves these itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RunnerError(
            f"cannot join the Ray cluster at {address}: {exc.strerror or exc} "
            f"(is `ray start --head` running there, and is the port open?)"
        ) from None


class ProgressBoard:
    """Images done per in-flight (shard, attempt), pushed by workers, read by the driver."""

    def __init__(self):
        self.counts: dict[tuple[int, int], tuple[int, int]] = {}

    def update(self, key: tuple[int, int], done: int, failed: int) -> None:
        self.counts[key] = (done, failed)

    def read(self, keys: list[tuple[int, int]]) -> tuple[int, int]:
        pairs = [self.counts.get(k, (0, 0)) for k in keys]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


class ShardWorker:
    """Holds one ImageJob (the dlib models load here, once) and processes whole shards."""

    def __init__(
        self, config, plan_json: str, out_dir: str, input_root: str, board=None, fault: dict | None = None,
        job_class: str = "maskgen.jobs.masking:ImageJob", retry_failed: bool = False,
    ):
        try:
            import cv2

            cv2.setNumThreads(1)  # one CPU per actor: OpenCV's own threads would oversubscribe
        except ImportError:
            pass
        self.job = load_job_class(job_class)(config)
        self.plan = Plan.from_json(plan_json)
        self.layout = OutputLayout(Path(out_dir))
        self.input_root = Path(input_root)
        self.board = board
        self.fault = fault
        self.retry_failed = retry_failed  # redo only the inputs whose rows are not all ok
        self.pass_landmarks = self.plan.has_landmarks and "landmarks" in signature(self.job.process).parameters

    def ready(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def run_shard(self, index: int, attempt: int) -> dict:
        self._maybe_fail(index)
        last = [0.0]

        def on_progress(done: int, failed: int) -> None:
            now = time.monotonic()
            if self.board is not None and now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                self.board.update.remote((index, attempt), done, failed)

        return process_shard(
            self.job, self.plan, self.layout, self.input_root, index,
            pass_landmarks=self.pass_landmarks, on_progress=on_progress, retry_failed=self.retry_failed,
        )

    def _maybe_fail(self, index: int) -> None:
        """Fault injection for tests: {"shard", "kind": crash|raise|oserror, "times", "marker_dir"}
        (oserror: an OSError with "errno", a name such as "ENOSPC")."""
        fault = self.fault
        if not fault or fault["shard"] != index:
            return
        markers = Path(fault["marker_dir"])
        markers.mkdir(parents=True, exist_ok=True)
        if len(list(markers.glob(f"{index}-*"))) >= fault.get("times", 1):
            return
        (markers / f"{index}-{os.getpid()}-{time.monotonic_ns()}").touch()
        if fault["kind"] == "crash":
            os._exit(1)
        if fault["kind"] == "oserror":
            code = getattr(errno, fault["errno"])
            raise OSError(code, os.strerror(code), str(self.layout.manifest_path(index, self.plan.n_shards)))
        raise RuntimeError(f"injected fault in shard {index}")


def load_job_class(spec: str):
    """"module:Class" -> the class (the default is the real ImageJob; tests/bench may swap it)."""
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def fatal_error(exc: BaseException) -> bool:
    """A shard's error that every other shard would hit too: OUT_DIR full, read-only or forbidden."""
    cause = getattr(exc, "cause", None) or exc
    return isinstance(cause, OSError) and cause.errno in FATAL_ERRNOS


def _short_error(exc: BaseException) -> str:
    """A Ray error as its cause's class and message (a remote traceback ends with the message)."""
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {one_line(cause, last=True)}"


@dataclass
class _Slot:
    actor: object
    task: object = None  # ObjectRef of ready() or run_shard()
    shard: int | None = None  # None while starting
    attempt: int = 0


@dataclass
class RunOutcome:
    failed: dict[int, str] = field(default_factory=dict)  # shard -> last error, after all attempts
    stopped: str = ""  # a fatal error (see fatal_error): no shard was started after it
    workers_ready_s: float = 0.0  # until every first worker had its ImageJob built (model loading)


def run_shards(
    shards: list[int],
    *,
    workers: int,
    make_worker: Callable[[], object],
    max_attempts: int = 3,
    board=None,
    on_done: Callable[[int, dict], None] = lambda i, s: None,
    on_retry: Callable[[int, int, str], None] = lambda i, a, e: None,
    on_tick: Callable[[int, int], None] = lambda images, failed: None,
) -> RunOutcome:
    """Run `shards` on `workers` actors made by `make_worker`; return the shards given up on.

    A worker only gets a shard once it is ready, so a worker that cannot be placed (or
    starts slowly) never holds one up. `on_tick(images, failed)` reports in-flight counts.
    A fatal error (a full or read-only OUT_DIR...) stops it: the shards in flight finish, no
    other starts, none is retried.
    """
    queue = deque(shards)
    attempts: Counter = Counter()
    outcome = RunOutcome()
    start_failures, started, waiting = 0, time.perf_counter(), min(workers, len(shards))
    slots = [_Slot(make_worker()) for _ in range(waiting)]
    for slot in slots:
        slot.task = slot.actor.ready.remote()
    last_tick = 0.0

    def assign(slot: _Slot) -> None:
        slot.shard, slot.task = None, None
        if queue:
            slot.shard = queue.popleft()
            attempts[slot.shard] += 1
            slot.attempt = attempts[slot.shard]
            slot.task = slot.actor.run_shard.remote(slot.shard, slot.attempt)

    def replace(slot: _Slot) -> None:
        ray.kill(slot.actor, no_restart=True)
        slot.actor, slot.shard = make_worker(), None
        slot.task = slot.actor.ready.remote()

    try:
        while queue or any(s.shard is not None for s in slots):
            by_ref = {s.task: s for s in slots if s.task is not None}
            ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=TICK_S) if by_ref else ([], [])
            for ref in ready:
                slot = by_ref[ref]
                try:
                    result = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                    error = _short_error(exc)
                    if slot.shard is None:  # the worker failed to start (e.g. models missing)
                        start_failures += 1
                        if start_failures >= max_attempts * len(slots):
                            raise RunnerError(f"workers could not start: {error}") from exc
                        replace(slot)
                        continue
                    if fatal_error(exc) and not outcome.stopped:
                        outcome.stopped = error
                        queue.clear()
                    _give_back(slot.shard, attempts, max_attempts, queue, outcome, on_retry, error)
                    if isinstance(exc, ray.exceptions.RayActorError):  # the process died: a new one
                        replace(slot)
                        continue
                else:
                    if slot.shard is not None:
                        on_done(slot.shard, result)
                    elif waiting:
                        waiting -= 1
                        outcome.workers_ready_s = time.perf_counter() - started
                assign(slot)
            now = time.monotonic()
            if now - last_tick >= TICK_S:
                last_tick = now
                keys = [(s.shard, s.attempt) for s in slots if s.shard is not None]
                on_tick(*(ray.get(board.read.remote(keys)) if board is not None and keys else (0, 0)))
            for slot in slots:  # idle slots pick up shards that came back for a retry
                if slot.task is None and queue:
                    assign(slot)
    finally:
        for slot in slots:
            ray.kill(slot.actor, no_restart=True)
    return outcome


def _give_back(shard, attempts, max_attempts, queue, outcome, on_retry, error: str) -> None:
    if outcome.stopped:
        outcome.failed[shard] = error
    elif attempts[shard] < max_attempts:
        on_retry(shard, attempts[shard], error)
        queue.append(shard)
    else:
        outcome.failed[shard] = f"{error} (after {attempts[shard]} attempts)"


RemoteShardWorker = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(ShardWorker)
RemoteProgressBoard = ray.remote(num_cpus=0)(ProgressBoard)
