"""`generate` as a plain function: plan (or resume) the run, process the missing shards on
Ray, and sum up what happened. The typer command and `maskgen run` both call `generate`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from maskgen.pipeline.inputs import InputError, WalkReport, read_input_list, walk_tree
from maskgen.pipeline.paths import OutputLayout, remove_stale_temps, remove_stale_temps_tree
from maskgen.pipeline.plan import Plan, prepare_plan
from maskgen.pipeline.progress import Reporter, SilentReporter
from maskgen.pipeline.shards import read_stats

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
    fault: dict | None = None  # tests only: see runner.ShardWorker._maybe_fail
    job_class: str = "maskgen.jobs.masking:ImageJob"  # "module:Class" built once per worker (a string: no import here)


@dataclass
class GenerateSummary:
    out_dir: str
    images_dir: str
    manifest_dir: str
    plan: str  # new | resumed | replaced
    inputs: int
    rows: int = 0
    statuses: dict = field(default_factory=dict)
    failed_rows: int = 0
    examples: list = field(default_factory=list)
    shards_total: int = 0
    shards_already_done: int = 0
    shards_done_now: int = 0
    failed_shards: dict = field(default_factory=dict)  # shard -> error
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
    layout = OutputLayout(request.out_dir)
    walk_report = WalkReport()
    if request.input_list:
        entries = read_input_list(request.input_list, request.input_root)
    else:
        entries = walk_tree(request.input_root, walk_report)
    plan, outcome = prepare_plan(
        layout, _counting(entries, reporter), config=request.config, shard_size=request.shard_size,
        workers_hint=request.workers or os.cpu_count() or 1, max_shard_size=request.max_shard_size,
        input_root=request.input_root, input_list=request.input_list, overwrite=request.overwrite,
    )
    for folder in (layout.manifest, layout.stats):
        remove_stale_temps(folder)
    done = read_stats(layout, plan)
    summary = GenerateSummary(
        out_dir=str(layout.root), images_dir=str(layout.images), manifest_dir=str(layout.manifest),
        plan=outcome, inputs=plan.n_inputs, shards_total=plan.n_shards, shards_already_done=len(done),
        skipped_hidden=walk_report.hidden,
    )
    for index in sorted(done):
        _add_stats(summary, done[index])
    todo = [i for i in range(plan.n_shards) if i not in done]
    reporter.planned(plan, outcome, len(done), walk_report)
    if todo and outcome == "resumed":
        remove_stale_temps_tree(layout.images)  # before any worker starts: no temp is in use
    if todo:
        _process(request, plan, layout, todo, summary, reporter, already=sum(s["inputs"] for s in done.values()))
    summary.elapsed_s = round(time.perf_counter() - started, 2)
    if summary.processing_s:
        summary.images_per_s = round(summary.images_this_run / summary.processing_s, 1)
    return summary


def _process(request, plan: Plan, layout: OutputLayout, todo: list[int], summary, reporter, already: int) -> None:
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
        summary.images_this_run += stats["inputs"]
        _add_stats(summary, stats)
        reporter.update(done_images, done_failed)

    def on_retry(index: int, attempt: int, error: str) -> None:
        summary.retries += 1
        reporter.note(f"shard {index} failed (attempt {attempt}): {error}; retrying")

    try:
        board = runner.RemoteProgressBoard.remote()
        plan_json = plan.to_json()
        config, out_dir, root = request.config, str(layout.root), str(Path(request.input_root).resolve())

        def make_worker():
            return runner.RemoteShardWorker.remote(config, plan_json, out_dir, root, board, request.fault, request.job_class)

        processing = time.perf_counter()
        outcome = runner.run_shards(
            todo, workers=workers, make_worker=make_worker, max_attempts=request.max_attempts, board=board,
            on_done=on_done, on_retry=on_retry,
            on_tick=lambda images, failed: reporter.update(done_images + images, done_failed + failed),
        )
        summary.processing_s = round(time.perf_counter() - processing, 2)
        summary.workers_start_s = round(outcome.workers_ready_s, 2)
        summary.failed_shards = {i: outcome.failed[i] for i in sorted(outcome.failed)}
        ray.kill(board)
    finally:
        if started_here:
            ray.shutdown()
