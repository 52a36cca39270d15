"""`generate` as a plain function: plan (or resume) the run, process the missing shards on
Ray, and sum up what happened. The typer command and `maskgen run` both call `generate`.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from maskgen.files import write_atomic
from maskgen.pipeline import containers
from maskgen.pipeline.inputs import InputError, WalkReport, input_entries
from maskgen.pipeline.lock import LockHeld, RunLock, acquire, read_lock
from maskgen.pipeline.paths import OutputLayout, remove_stale_temps
from maskgen.pipeline.plan import Plan, load_plan, prepare_plan, retry_plan, shard_folders
from maskgen.pipeline.progress import Reporter, SilentReporter
from maskgen.pipeline.shards import not_ok_inputs, read_stats

SUMMARY_EXAMPLES = 10


@dataclass
class GenerateRequest:
    input_root: Path
    out_dir: Path
    config: object  # maskgen.jobs.masking.JobConfig
    shard_size: int | None = None  # None: up to max_shard_size, so that every worker gets shards (see plan)
    max_shard_size: int = 1000
    workers: int | None = None  # None: one per CPU of this machine or the cluster
    address: str | None = None  # Ray cluster to join; None starts Ray locally
    input_list: Path | None = None
    overwrite: bool = False
    max_attempts: int = 3  # tries per shard before it is reported as failed
    force: bool = False  # break OUT_DIR's lock even if its driver looks alive
    dry_run: bool = False  # the CLI calls preview() instead of generate()
    retry_failed: bool = False  # redo only the inputs whose rows are not ok (see _retry_plan)
    retry_may_change: tuple[str, ...] = ()  # config fields a --retry-failed may change (e.g. detector)
    fault: dict | None = None  # tests only: see runner.ShardWorker._maybe_fail
    job_class: str = "maskgen.jobs.masking:ImageJob"  # "module:Class" built once per worker (a string: no import here)


@dataclass
class GenerateSummary:
    out_dir: str
    images_dir: str
    manifest_dir: str
    plan: str  # new | resumed | replaced | retried
    inputs: int
    rows: int = 0
    statuses: dict = field(default_factory=dict)
    failed_rows: int = 0
    examples: list = field(default_factory=list)
    shards_total: int = 0
    shards_already_done: int = 0
    shards_done_now: int = 0
    failed_shards: dict = field(default_factory=dict)  # shard -> error
    stopped: str = ""  # a fatal error (disk full, read-only, no permission) stopped the run early
    finished: str = ""  # what the complete run's container output got at the end (e.g. the .rec join)
    retries: int = 0
    images_this_run: int = 0
    elapsed_s: float = 0.0  # the whole call: planning, Ray start, processing
    ray_start_s: float = 0.0  # starting or joining Ray
    processing_s: float = 0.0  # from creating the workers (their model loading included) to the last shard done
    workers_start_s: float = 0.0  # part of processing_s until the workers had their models loaded
    images_per_s: float = 0.0  # images_this_run / processing_s
    workers: int = 0
    skipped_hidden: int = 0

    @property
    def complete(self) -> bool:
        return self.shards_already_done + self.shards_done_now == self.shards_total

    @property
    def exit_code(self) -> int:
        return 0 if self.complete else 1

    def to_dict(self) -> dict:
        return asdict(self) | {"complete": self.complete}


def check_folders(input_root: Path, out_dir: Path) -> None:
    root, out = Path(input_root).resolve(), Path(out_dir).resolve()
    if out == root or root in out.parents:
        raise InputError(f"the output folder {out} is inside the input tree {root}; choose one outside it")
    if out in root.parents:
        raise InputError(f"the input tree {root} is inside the output folder {out}; choose another output folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"the output folder {out} is a file; choose a folder")


def _counting(entries, reporter: Reporter, every: int = 5000):
    for n, entry in enumerate(entries, 1):
        if n % every == 0:
            reporter.planning(n)
        yield entry


def _add_stats(summary: GenerateSummary, stats: dict) -> None:
    summary.rows += stats["rows"]
    summary.failed_rows += stats["failed_rows"]
    summary.statuses = dict(Counter(summary.statuses) + Counter(stats["statuses"]))
    room = SUMMARY_EXAMPLES - len(summary.examples)
    summary.examples.extend(stats["examples"][: max(room, 0)])


def generate(request: GenerateRequest, reporter: Reporter | None = None) -> GenerateSummary:
    """Run (or finish) the generation described by `request` and return its summary.

    Raises InputError / PlanMismatch before anything is processed when the inputs or the
    existing OUT_DIR do not allow the run.
    """
    reporter = reporter or SilentReporter()
    try:
        return _generate(request, reporter)
    finally:
        reporter.close()


def _generate(request: GenerateRequest, reporter: Reporter) -> GenerateSummary:
    started = time.perf_counter()
    check_folders(request.input_root, request.out_dir)
    lock = acquire(request.out_dir, force=request.force, on_note=reporter.note)
    try:
        return _generate_locked(request, reporter, lock, started)
    finally:
        lock.release()


def _generate_locked(request: GenerateRequest, reporter: Reporter, lock: RunLock, started: float) -> GenerateSummary:
    layout = OutputLayout(request.out_dir)
    plan, outcome, walk_report = (_retry_plan if request.retry_failed else _plan)(request, layout, reporter)
    for folder in (layout.manifest, layout.stats):
        remove_stale_temps(folder)
    done = _done_shards(layout, plan, request.retry_failed)
    summary = GenerateSummary(
        out_dir=str(layout.root), images_dir=str(containers.images_dir(layout, plan)), manifest_dir=str(layout.manifest),
        plan=outcome, inputs=plan.n_inputs, shards_total=plan.n_shards, shards_already_done=len(done),
        skipped_hidden=walk_report.hidden,
    )
    for index in sorted(done):
        _add_stats(summary, done[index])
    todo = [i for i in range(plan.n_shards) if i not in done]
    reporter.planned(plan, outcome, len(done), walk_report)
    if todo and outcome in ("resumed", "retried"):
        for folder in shard_folders(layout, plan, todo):  # before any worker starts: no temp is in use
            remove_stale_temps(layout.images / folder)
    if todo:
        containers.invalidate(layout, plan)
        _process(request, plan, layout, todo, summary, reporter, lock, already=sum(s["inputs"] for s in done.values()))
    if summary.complete:
        summary.finished = containers.finish(layout, plan)
    if outcome == "retried" and summary.complete:
        _adopt_fingerprint(layout, plan, done)
    summary.elapsed_s = round(time.perf_counter() - started, 2)
    if summary.processing_s:
        summary.images_per_s = round(summary.images_this_run / summary.processing_s, 1)
    return summary


def _done_shards(layout: OutputLayout, plan: Plan, retry_failed: bool) -> dict[int, dict]:
    """The shards a run keeps: all done ones; for --retry-failed, those without failed rows
    (done before or after the inputs' files changed)."""
    if not retry_failed:
        return read_stats(layout, plan)
    done = read_stats(layout, plan, also_fingerprint=load_plan(layout).fingerprint)
    return {i: stats for i, stats in done.items() if not stats["failed_rows"]}


def _retry_plan(request: GenerateRequest, layout: OutputLayout, reporter: Reporter):
    """--retry-failed: the run's own plan (shards, config hash) with the inputs' fingerprint of
    now, "retried", the walk report. It writes nothing (dry run or not)."""
    if request.overwrite:
        raise InputError("--retry-failed keeps the run in OUT_DIR; --overwrite replaces it: choose one")
    if getattr(request.config, "output_format", "files") != "files":
        raise InputError("--retry-failed works with --output-format files only (a shard's container is rewritten whole): re-run with --overwrite")
    walk_report = WalkReport()
    entries = input_entries(request.input_root, request.input_list, walk_report)
    plan = retry_plan(layout, _counting(entries, reporter), config=request.config,
                      may_change=request.retry_may_change, shard_size=request.shard_size)
    return plan, "retried", walk_report


def _adopt_fingerprint(layout: OutputLayout, plan: Plan, kept: dict[int, dict]) -> None:
    """After a complete retry: the run is the inputs as they are now. The kept shards' done
    markers first, the plan last (a crash between leaves a run that --retry-failed still takes)."""
    for index, stats in kept.items():
        if stats["fingerprint"] != plan.fingerprint:
            stats = stats | {"fingerprint": plan.fingerprint}
            write_atomic(layout.stats_path(index, plan.n_shards), json.dumps(stats, indent=1).encode())
    if load_plan(layout).fingerprint != plan.fingerprint:
        write_atomic(layout.plan_file, plan.to_json().encode())


def _plan(request: GenerateRequest, layout: OutputLayout, reporter: Reporter, dry_run: bool = False):
    """(plan, "new" | "resumed" | "replaced", walk report) of the request's inputs in `layout`."""
    walk_report = WalkReport()
    entries = input_entries(request.input_root, request.input_list, walk_report)
    plan, outcome = prepare_plan(
        layout, _counting(entries, reporter), config=request.config, shard_size=request.shard_size,
        workers_hint=request.workers or os.cpu_count() or 1, max_shard_size=request.max_shard_size,
        input_root=request.input_root, input_list=request.input_list, overwrite=request.overwrite, dry_run=dry_run,
    )
    return plan, outcome, walk_report


@dataclass
class PlanPreview:
    """What `--dry-run` prints: the plan, and what the run would do now."""

    out_dir: str
    plan: str  # new | resumed | replaced (the run in OUT_DIR, with --overwrite)
    inputs: int
    shard_size: int
    shards_total: int
    shards_done: int  # from before: a resume keeps them
    shards_to_do: int
    inputs_to_do: int
    config_hash: str
    fingerprint: str
    skipped_hidden: int = 0
    locked_by: str = ""  # the run that holds OUT_DIR's lock now, if any

    def to_dict(self) -> dict:
        return asdict(self) | {"dry_run": True}


def preview(request: GenerateRequest, reporter: Reporter | None = None) -> PlanPreview:
    """Plan `request` as `generate` would, and write nothing at all: not the plan (a dry run must
    not turn a folder into a run, nor change one another driver writes to), not the lock.

    Raises what `generate` would raise before processing (InputError, PlanMismatch)."""
    reporter = reporter or SilentReporter()
    try:
        check_folders(request.input_root, request.out_dir)
        layout = OutputLayout(request.out_dir)
        retry = {}  # shard -> its inputs with rows that are not ok: --retry-failed redoes those only
        if request.retry_failed:
            plan, outcome, walk_report = _retry_plan(request, layout, reporter)
            done = read_stats(layout, plan, also_fingerprint=load_plan(layout).fingerprint)
            retry = {i: not_ok_inputs(layout.manifest_path(i, plan.n_shards)) for i, st in done.items() if st["failed_rows"]}
            done = {i: st for i, st in done.items() if i not in retry}
        else:
            plan, outcome, walk_report = _plan(request, layout, reporter, dry_run=True)
            done = read_stats(layout, plan) if outcome == "resumed" else {}
        todo = [i for i in range(plan.n_shards) if i not in done and i not in retry]
        inputs_to_do = sum(len(range(*plan.shard_range(i))) for i in todo) + sum(retry.values())
        holder = read_lock(layout.root)
        return PlanPreview(
            out_dir=str(layout.root), plan=outcome, inputs=plan.n_inputs, shard_size=plan.shard_size,
            shards_total=plan.n_shards, shards_done=len(done), shards_to_do=len(todo) + len(retry),
            inputs_to_do=inputs_to_do, config_hash=plan.config_hash,
            fingerprint=plan.fingerprint, skipped_hidden=walk_report.hidden,
            locked_by=holder.describe() if holder else "",
        )
    finally:
        reporter.close()


def _process(request, plan: Plan, layout: OutputLayout, todo: list[int], summary, reporter, lock: RunLock, already: int) -> None:
    import ray

    from maskgen.pipeline import runner

    connecting = time.perf_counter()
    workers, started_here = runner.connect(request.address, request.workers)
    summary.ray_start_s = round(time.perf_counter() - connecting, 2)
    summary.workers = min(workers, len(todo))
    done_images, done_failed = already, summary.failed_rows
    reporter.start(plan.n_inputs, done_images, done_failed)

    def on_done(index: int, stats: dict) -> None:
        nonlocal done_images, done_failed
        done_images += stats["inputs"]
        done_failed += stats["failed_rows"]
        summary.shards_done_now += 1
        summary.images_this_run += stats.get("retried", stats["inputs"])  # a retry keeps its ok inputs
        _add_stats(summary, stats)
        reporter.update(done_images, done_failed)

    def on_retry(index: int, attempt: int, error: str) -> None:
        summary.retries += 1
        reporter.note(f"shard {index} failed (attempt {attempt}): {error}; retrying")

    def on_tick(images: int, failed: int) -> None:
        if lock.lost:  # another driver broke our lock (--force): two writers must not go on
            raise LockHeld(lock.lost)
        reporter.update(done_images + images, done_failed + failed)

    try:
        plan_json = plan.to_json()
        config, out_dir, root = request.config, str(layout.root), str(Path(request.input_root).resolve())

        def make_worker():
            return runner.RemoteShardWorker.remote(
                config, plan_json, out_dir, root, request.fault, request.job_class, request.retry_failed,
            )

        processing = time.perf_counter()
        outcome = runner.run_shards(
            todo, workers=workers, make_worker=make_worker, max_attempts=request.max_attempts,
            on_done=on_done, on_retry=on_retry, on_tick=on_tick, on_note=reporter.note,
        )
        summary.processing_s = round(time.perf_counter() - processing, 2)
        summary.workers_start_s = round(outcome.workers_ready_s, 2)
        summary.failed_shards = {i: outcome.failed[i] for i in sorted(outcome.failed)}
        summary.stopped = outcome.stopped
    finally:
        if started_here:
            ray.shutdown()
