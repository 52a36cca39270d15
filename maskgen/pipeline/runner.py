"""Shards over Ray actors: one `ShardWorker` per CPU builds `ImageJob` once and takes shards
one at a time; a dead worker is replaced and its shard retried; a shard that keeps failing
is given up on (reported) while the others complete.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import re
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
from maskgen.pipeline.plan import Plan, read_inputs_slice, shard_folders
from maskgen.pipeline.shards import FATAL_ERRNOS, process_shard

TICK_S = 0.5  # the driver's progress refresh (asking the busy workers) and ray.wait timeout
PROGRESS_WAIT_S = 0.2  # a worker that does not answer within this is left out of one refresh
START_TIMEOUT_S = 60.0  # a worker not placed on a node by then is given up on (see run_shards)


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
    _ray_notices_to_stderr()
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return min(workers or cpus, cpus), started_here


def _ray_notices_to_stderr() -> None:
    """Ray prints cluster events on the driver's stdout ("Raylet is terminated..." when a node
    dies), where `--json` prints its one line: send them to stderr."""
    worker = getattr(ray._private, "worker", None)
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "to_stderr", False):
        return

    def to_stderr(data, ignore_prefix):
        return original({**data, "is_err": True}, ignore_prefix)

    to_stderr.to_stderr = True
    worker.print_to_stdstream = to_stderr


_QUIET = dict(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)


def start_local_ray(cpus: int) -> None:
    """The Ray maskgen embeds: a new local one ("local" ignores any cluster left running on
    this machine), quiet, its workers at the driver's own priority. (Ray runs workers at
    nice 15, below its control plane; where there are as many workers as cores, each wake-up
    of the driver, the raylet or any other program then preempts a worker: a 2-worker run
    took 13 % longer here, and 19 % more CPU per image.)"""
    ray.init(address="local", num_cpus=cpus, _system_config={"worker_niceness": 0}, **_QUIET)


def _init_ray(address: str | None, workers: int | None) -> None:
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, **_QUIET)  # a cluster's own settings stand
        else:
            start_local_ray(workers or os.cpu_count() or 1)
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


class ShardWorker:
    """Holds one ImageJob and processes whole shards. Made in two steps, so that the driver
    can tell a worker that has no node to run on (its `ready` never returns) from one that
    is loading its models (`load`, once: the dlib models, the compiled kernels). `progress`
    answers from a thread of its own while a shard runs (RemoteShardWorker's "progress"
    concurrency group; every other method runs one at a time)."""

    def __init__(
        self, config, plan_json: str, out_dir: str, input_root: str, fault: dict | None = None,
        job_class: str = "maskgen.jobs.masking:ImageJob", retry_failed: bool = False,
    ):
        try:
            import cv2

            cv2.setNumThreads(1)  # one CPU per actor: OpenCV's own threads would oversubscribe
        except ImportError:
            pass
        self.config, self.job_class, self.job = config, job_class, None
        self.plan = Plan.from_json(plan_json)
        self.layout = OutputLayout(Path(out_dir))
        self.input_root = Path(input_root)
        self.fault = fault
        self.retry_failed = retry_failed  # redo only the inputs whose rows are not all ok
        self.pass_landmarks = False
        self.counts: tuple[tuple[int, int] | None, int, int] = (None, 0, 0)  # (shard, attempt), images done, failed

    def ready(self) -> str:
        """The worker is placed and its process runs: host:pid."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def load(self) -> None:
        self.job = load_job_class(self.job_class)(self.config)
        gc.freeze()  # the imports and models live as long as the worker: the collector stops rescanning them
        self.pass_landmarks = self.plan.has_landmarks and "landmarks" in signature(self.job.process).parameters

    def run_shard(self, index: int, attempt: int, dead_writers: tuple[int, ...] = ()) -> dict:
        """Shard `index`; `dead_writers`: pids of killed workers that had it (their temp files go first)."""
        self._maybe_fail(index)
        if dead_writers:
            self._remove_temps_of(index, dead_writers)
        self.counts = ((index, attempt), 0, 0)

        def on_progress(done: int, failed: int) -> None:
            self.counts = ((index, attempt), done, failed)

        return process_shard(
            self.job, self.plan, self.layout, self.input_root, index,
            pass_landmarks=self.pass_landmarks, on_progress=on_progress, retry_failed=self.retry_failed,
        )

    @ray.method(concurrency_group="progress")
    def progress(self) -> tuple[tuple[int, int] | None, int, int]:
        """The (shard, attempt) in hand, and its images done and failed so far."""
        return self.counts

    def _remove_temps_of(self, index: int, pids: tuple[int, ...]) -> None:
        """The temp files that killed workers left mid-write in this shard's folders: the
        retry writes every final file again, but nothing would remove theirs (maskgen.files
        names a temp .NAME.PID-...tmp; a pid is only matched with its dot and dash)."""
        layout = self.layout
        folders = {layout.images / f for f in shard_folders(layout, self.plan, [index])}
        folders |= {layout.manifest, layout.stats, layout.rec_shards, layout.wds}  # and the containers' temps
        stale = re.compile(r"\..+\.(" + "|".join(map(str, pids)) + r")-[0-9a-f-]+\.tmp")
        for folder in folders:
            if folder.is_dir():
                for path in folder.glob(".*.tmp"):
                    if stale.fullmatch(path.name):
                        path.unlink(missing_ok=True)

    def _maybe_fail(self, index: int) -> None:
        """Fault injection for tests: {"shard", "kind": crash|crash_writing|raise|oserror, "times",
        "marker_dir"} (crash_writing: killed while writing its first image, whose temp file stays;
        oserror: an OSError with "errno", a name such as "ENOSPC")."""
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
        if fault["kind"] == "crash_writing":
            from maskgen.files import _open_temp  # the temp a real write makes, named as it names it

            first = read_inputs_slice(self.layout.inputs_file, *self.plan.shard_range(index))[0]
            _open_temp(str(self.layout.images / first["rel"]))
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
    shard: int | None = None  # None while starting or idle
    attempt: int = 0
    pid: int | None = None  # its worker process, once placed (ready)
    loaded: bool = False  # its job is built: it takes shards
    since: float = field(default_factory=time.monotonic)  # when its actor was made

    @property
    def unplaced(self) -> bool:
        return self.pid is None


@dataclass
class RunOutcome:
    failed: dict[int, str] = field(default_factory=dict)  # shard -> last error, after all attempts
    stopped: str = ""  # a fatal error (see fatal_error), or no worker left: no shard was started after it
    workers_ready_s: float = 0.0  # until every first worker had its ImageJob built (model loading)
    workers_lost: int = 0  # worker slots given up on: their actor could not be placed in time


def run_shards(
    shards: list[int],
    *,
    workers: int,
    make_worker: Callable[[], object],
    max_attempts: int = 3,
    on_done: Callable[[int, dict], None] = lambda i, s: None,
    on_retry: Callable[[int, int, str], None] = lambda i, a, e: None,
    on_tick: Callable[[int, int], None] = lambda images, failed: None,
    on_note: Callable[[str], None] = lambda message: None,
    start_timeout_s: float | None = None,
) -> RunOutcome:
    """Run `shards` on `workers` actors made by `make_worker`; return the shards given up on.

    A worker only gets a shard once its job is built, so a worker that cannot be placed (or
    starts slowly) never holds one up; one not placed within `start_timeout_s` (default
    START_TIMEOUT_S: its node left the cluster, or no CPU is free) is given up on and the
    run goes on with the others; with none left it stops, the rest left for a re-run.
    `on_tick(images, failed)` reports in-flight counts. A fatal error (a full or read-only
    OUT_DIR...) stops it: the shards in flight finish, no other starts, none is retried.
    """
    timeout = START_TIMEOUT_S if start_timeout_s is None else start_timeout_s
    run = _ShardRun(shards, workers, make_worker, max_attempts, on_done, on_retry, on_tick, on_note, timeout)
    return run.run()


class _ShardRun:
    """The scheduling state of one run_shards call (see there)."""

    def __init__(self, shards, workers, make_worker, max_attempts, on_done, on_retry, on_tick, on_note, timeout):
        self.queue, self.attempts, self.outcome = deque(shards), Counter(), RunOutcome()
        self.dead_writers: dict[int, set[int]] = {}  # shard -> pids of the workers that died with it
        self.counts: dict[tuple[int, int], tuple[int, int]] = {}  # (shard, attempt) in flight -> images done, failed
        self.make_worker, self.max_attempts, self.start_timeout_s = make_worker, max_attempts, timeout
        self.on_done, self.on_retry, self.on_tick, self.on_note = on_done, on_retry, on_tick, on_note
        self.started, self.last_tick = time.perf_counter(), 0.0
        self.waiting = min(workers, len(shards))  # first workers not ready yet
        self.start_failures = 0  # in a row: reset whenever a worker gets ready
        self.slots = [self._new_slot() for _ in range(self.waiting)]

    def run(self) -> RunOutcome:
        try:
            while self.queue or any(s.shard is not None for s in self.slots):
                if not self.slots:
                    self.outcome.stopped = (f"no worker left: none could be placed within {self.start_timeout_s:.0f} s "
                                            "(a node left the cluster, or no CPU is free)")
                    break
                self._step()
        finally:
            for slot in self.slots:
                ray.kill(slot.actor, no_restart=True)
        return self.outcome

    def _new_slot(self) -> _Slot:
        slot = _Slot(self.make_worker())
        slot.task = slot.actor.ready.remote()
        return slot

    def _step(self) -> None:
        by_ref = {s.task: s for s in self.slots if s.task is not None}
        ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=TICK_S) if by_ref else ([], [])
        for ref in ready:
            self._finished(by_ref[ref], ref)
        self._give_up_unplaced()
        now = time.monotonic()
        if now - self.last_tick >= TICK_S:
            self.last_tick = now
            self.on_tick(*self._in_flight())
        for slot in self.slots:  # idle slots pick up shards that came back for a retry
            if slot.task is None and slot.loaded and self.queue:
                self._assign(slot)

    def _finished(self, slot: _Slot, ref) -> None:
        try:
            result = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            return self._failed(slot, exc)
        if slot.pid is None:  # placed: now its models
            slot.pid, slot.task = int(result.rpartition(":")[2]), slot.actor.load.remote()
            return
        if slot.shard is not None:
            self.on_done(slot.shard, result)
        elif not slot.loaded:
            slot.loaded, self.start_failures = True, 0
            if self.waiting:
                self.waiting -= 1
                self.outcome.workers_ready_s = time.perf_counter() - self.started
        self._assign(slot)

    def _failed(self, slot: _Slot, exc: Exception) -> None:
        error = _short_error(exc)
        if slot.shard is None:  # the worker failed to start: its job raised (models missing), or it was killed
            if _raised(exc):  # a killed process (or node) is no reason to give up: a new one is made
                self.start_failures += 1
                if self.start_failures >= self.max_attempts * len(self.slots):
                    raise RunnerError(f"workers could not start: {error}") from exc
            return self._replace(slot)
        if fatal_error(exc) and not self.outcome.stopped:
            self.outcome.stopped = error
            self.queue.clear()
        _give_back(slot.shard, self.attempts, self.max_attempts, self.queue, self.outcome, self.on_retry, error)
        if isinstance(exc, ray.exceptions.RayActorError):  # the process died: a new one
            self.dead_writers.setdefault(slot.shard, set()).add(slot.pid)
            return self._replace(slot)
        self._assign(slot)

    def _assign(self, slot: _Slot) -> None:
        slot.shard, slot.task = None, None
        if self.queue:
            slot.shard = self.queue.popleft()
            self.attempts[slot.shard] += 1
            slot.attempt = self.attempts[slot.shard]
            dead = tuple(sorted(self.dead_writers.get(slot.shard, ())))
            slot.task = slot.actor.run_shard.remote(slot.shard, slot.attempt, dead)

    def _replace(self, slot: _Slot) -> None:
        ray.kill(slot.actor, no_restart=True)
        self.slots[self.slots.index(slot)] = self._new_slot()

    def _give_up_unplaced(self) -> None:
        """Drop the slots whose actor is not placed after start_timeout_s: on a cluster that
        lost a node, a replacement may never find a CPU, and waiting for it would wait forever."""
        now = time.monotonic()
        for slot in [s for s in self.slots if s.unplaced and now - s.since > self.start_timeout_s]:
            ray.kill(slot.actor, no_restart=True)
            self.slots.remove(slot)
            self.outcome.workers_lost += 1
            self.waiting = max(0, self.waiting - 1)
            self.on_note(f"a worker found no node to run on within {self.start_timeout_s:.0f} s (no free CPU: "
                         f"a node left the cluster?); going on with {len(self.slots)}")

    def _in_flight(self) -> tuple[int, int]:
        """Images done and failed in the shards running now, as their workers last answered
        (one slow to answer, or whose node is gone, keeps its last count: progress is not
        worth waiting for, and never goes back)."""
        asked = {s.actor.progress.remote(): (s.shard, s.attempt) for s in self.slots if s.shard is not None}
        answered, _ = ray.wait(list(asked), num_returns=len(asked), timeout=PROGRESS_WAIT_S) if asked else ([], [])
        for ref in answered:
            try:
                key, images, bad = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            if key == asked[ref]:
                self.counts[key] = (images, bad)
        self.counts = {key: self.counts[key] for key in asked.values() if key in self.counts}  # the finished ones go
        return sum(c[0] for c in self.counts.values()), sum(c[1] for c in self.counts.values())


def _raised(exc: Exception) -> bool:
    """The worker's own code raised (in __init__ or load), as opposed to its process dying."""
    if isinstance(exc, ray.exceptions.RayActorError):
        return exc.actor_init_failed
    return isinstance(exc, ray.exceptions.RayTaskError)


def _give_back(shard, attempts, max_attempts, queue, outcome, on_retry, error: str) -> None:
    if outcome.stopped:
        outcome.failed[shard] = error
    elif attempts[shard] < max_attempts:
        on_retry(shard, attempts[shard], error)
        queue.append(shard)
    else:
        outcome.failed[shard] = f"{error} (after {attempts[shard]} attempts)"


RemoteShardWorker = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0, concurrency_groups={"progress": 1})(ShardWorker)
