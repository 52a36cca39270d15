"""Benchmarks of the generate pipeline (not tests). Trees are made of symlinks to the sample faces.

    python -m maskgen.bench pipeline speed  [--images 5500]    images/s: plain loop vs Ray 1 and 2 workers
    python -m maskgen.bench pipeline memory [--files 200000]   driver peak RSS: planning, then a full run
    python -m maskgen.bench pipeline soak [--images 50000] [--kill-every 3]
                                                               2 workers, one SIGKILLed every few s: same bytes?

`speed` and `soak` run the real ImageJob. `memory` plans the tree, then runs every shard with
`NullJob` (rows without image work), so the driver handles 200k inputs in minutes; the
driver never sees rows or pixels, so its memory does not depend on the job.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from maskgen.bench._args import at_least, fail, memory_folder, prog
from maskgen.jobs.protocol import OneByOne
from maskgen.schemas import MANIFEST_SCHEMA


def make_tree(dest: Path, n_files: int, per_identity: int = 47) -> Path:
    """`n_files` symlinks to the sample faces under dest/<identity>/<image> (WebFace-like folders)."""
    from maskgen.assets import sample_faces

    faces = sorted(sample_faces().glob("*/*.jpg"))
    for i in range(n_files):
        folder = dest / f"{i // per_identity:07d}"
        if i % per_identity == 0:
            folder.mkdir(parents=True)
        (folder / f"{i % per_identity:03d}.jpg").symlink_to(faces[i % len(faces)])
    return dest


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class RssSampler(threading.Thread):
    def __init__(self, every_s: float = 0.2):
        super().__init__(daemon=True)
        self.every_s, self.samples, self.stopped = every_s, [], threading.Event()

    def run(self):
        while not self.stopped.wait(self.every_s):
            self.samples.append(rss_mib())


class NullJob(OneByOne):
    """ImageJob's interface without image work: one ok row per variant, nothing written."""

    schema = MANIFEST_SCHEMA

    def __init__(self, config):
        self.config = config

    def process(self, src, rel, out_root, landmarks=None):
        return [
            {"identity": rel.split("/")[0], "src_path": rel, "out_path": rel, "mask_path": "", "variant": "masked",
             "variant_index": k, "face_index": 0, "status": "ok", "error": ""}
            for k in range(self.config.variants)
        ]


# -- speed -------------------------------------------------------------------------------


def _plain_part(args) -> tuple[float, float, float]:
    """One of N plain processes: its slice of the images; (job built, images done, CPU s of the images)."""
    tree, out, config, rels, ready = args
    import cv2

    from maskgen.jobs.masking import ImageJob
    from maskgen.jobs.protocol import BATCH_SIZE

    cv2.setNumThreads(1)
    job = ImageJob(config)
    built = time.time()
    ready.wait()  # all processes built their job: their image work starts together
    cpu = time.process_time()
    for i in range(0, len(rels), BATCH_SIZE):  # batches, as `maskgen mask` and the shards run them
        job.process_batch([(tree / rel, rel, None) for rel in rels[i : i + BATCH_SIZE]], out / "images")
    return built, time.time(), time.process_time() - cpu


def plain_processes(tree: Path, out: Path, config, processes: int = 2) -> dict:
    """N independent plain loops over ImageJob, no Ray, each in a fresh process like a Ray
    worker (N=1: the plain single-process loop; N=2: what this machine gives 2 processes).

    Timed as a Ray run's processing is: from starting the processes (their imports and
    model loading included) to the last image; `steady_s` leaves their start out."""
    import multiprocessing as mp

    from maskgen.pipeline.inputs import walk_tree

    rels = [e.rel for e in walk_tree(tree)]
    size = -(-len(rels) // processes)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        ready = manager.Barrier(processes)
        parts = [(tree, out, config, rels[i * size:(i + 1) * size], ready) for i in range(processes)]
        start = time.time()
        with ctx.Pool(processes) as pool:
            spans = pool.map(_plain_part, parts)
    end = max(e for _, e, _ in spans)
    return {"total_s": end - start, "steady_s": end - max(b for b, _, _ in spans), "cpu_s": sum(c for _, _, c in spans)}


SHARD_SIZE = 256  # two of the plain loop's batches of 128 (the same batches); ~0.4 s of work per shard here


def ray_run(tree: Path, out: Path, config, workers: int) -> dict:
    from maskgen.pipeline.driver import GenerateRequest, generate

    start, cpu = time.perf_counter(), time.process_time()
    summary = generate(GenerateRequest(tree, out, config, shard_size=SHARD_SIZE, workers=workers))
    assert summary.complete and summary.statuses.get("ok", 0) == summary.inputs, summary.statuses
    worker_cpu = sum(json.loads(p.read_text())["cpu_s"] for p in (out / "stats").glob("*.json"))
    return {"total_s": time.perf_counter() - start, "processing_s": summary.processing_s, "images": summary.inputs,
            "steady_s": summary.processing_s - summary.workers_start_s,
            "worker_cpu_s": worker_cpu, "driver_cpu_s": time.process_time() - cpu}


def _busy_note() -> str:
    """The 1-minute load average (it counts this benchmark's own processes too)."""
    load = os.getloadavg()[0]
    return f"load {load:.1f} on {os.cpu_count()} CPUs" + (" (busy machine: figures are noisy)" if load > 0.5 else "")


def _ratios(plain: float, plain2: float, ray1: float, ray2: float) -> dict:
    """The headline ratios from four rates (images/s)."""
    return {
        "overhead_1_worker": 1 - ray1 / plain,  # target <= 10%
        "efficiency_2_workers": ray2 / (2 * ray1),  # target >= 90%
        "efficiency_2_workers_vs_plain": ray2 / (2 * plain),
        "machine_scaling_2_processes": plain2 / (2 * plain),  # the same, without Ray: the machine's own limit
    }


def speed(n_images: int, rounds: int, keep: bool) -> dict:
    """Each round times, on the same images: the plain loop (1 process, then 2 without Ray),
    then Ray with 1 and 2 workers. The ratios are taken per round (a round's runs share the
    machine's load of the moment) and their median is the result; the best rates are shown too."""
    import statistics

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as Ray sets it for each 1-CPU worker
    import ray

    from maskgen.jobs.masking import build_job_config
    from maskgen.pipeline.runner import start_local_ray

    config = build_job_config()
    work = Path(tempfile.mkdtemp(prefix="maskgen-bench-", dir=memory_folder()))
    n, runs = n_images, []
    try:
        tree = make_tree(work / "tree", n)
        print(f"{n} images, {rounds} rounds, in {work.parent} (tmpfs where there is one); {_busy_note()}", flush=True)
        t = time.perf_counter()
        start_local_ray(2)
        ray_start_s = time.perf_counter() - t
        for r in range(rounds):
            plain, plain2 = (plain_processes(tree, work / f"plain{p}-{r}", config, p) for p in (1, 2))
            ray1, ray2 = (ray_run(tree, work / f"ray{w}-{r}", config, w) for w in (1, 2))
            rates = {"plain": n / plain["total_s"], "plain2": n / plain2["total_s"],
                     "ray1": n / ray1["processing_s"], "ray2": n / ray2["processing_s"]}
            runs.append(rates | {"plain_steady": n / plain["steady_s"], "plain2_steady": n / plain2["steady_s"],
                                 "ray1_steady": n / ray1["steady_s"], "ray2_steady": n / ray2["steady_s"],
                                 "plain_cpu_ms": plain["cpu_s"] / n * 1e3, "ray1_cpu_ms": ray1["worker_cpu_s"] / n * 1e3,
                                 "driver_cpu_s": ray2["driver_cpu_s"], "plain_start_s": plain["total_s"] - plain["steady_s"]})
            ratio = _ratios(rates["plain"], rates["plain2"], rates["ray1"], rates["ray2"])
            print(f"round {r + 1}: images/s plain {rates['plain']:.1f}, plain x2 {rates['plain2']:.1f}, ray 1 worker "
                  f"{rates['ray1']:.1f}, ray 2 workers {rates['ray2']:.1f} -> overhead {ratio['overhead_1_worker']:.1%}, "
                  f"efficiency {ratio['efficiency_2_workers']:.1%} (machine alone {ratio['machine_scaling_2_processes']:.1%}; "
                  f"start: plain {plain['total_s'] - plain['steady_s']:.1f} s, Ray workers "
                  f"{ray1['processing_s'] - ray1['steady_s']:.1f} / {ray2['processing_s'] - ray2['steady_s']:.1f} s; "
                  f"{_busy_note()})", flush=True)
            for name in ("plain1", "plain2", "ray1", "ray2"):
                shutil.rmtree(work / f"{name}-{r}", ignore_errors=True)
        ray.shutdown()
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    per_round = [_ratios(x["plain"], x["plain2"], x["ray1"], x["ray2"]) for x in runs]
    steady = [_ratios(x["plain_steady"], x["plain2_steady"], x["ray1_steady"], x["ray2_steady"]) for x in runs]
    median = {k: round(statistics.median(r[k] for r in per_round), 3) for k in per_round[0]}
    best = {k: round(max(x[k] for x in runs), 1) for k in ("plain", "plain2", "ray1", "ray2")}
    result = {
        "images": n, "rounds": rounds, "cpus": os.cpu_count(), "ray_start_s": round(ray_start_s, 2),
        "median_of_rounds": median,
        "median_without_workers_start": {k: round(statistics.median(r[k] for r in steady), 3) for k in steady[0]},
        "best_images_per_s": best,
        "best_ratios": {k: round(v, 3) for k, v in _ratios(best["plain"], best["plain2"], best["ray1"], best["ray2"]).items()},
        "median_cpu_ms_per_image": {k: round(statistics.median(x[k] for x in runs), 2) for k in ("plain_cpu_ms", "ray1_cpu_ms")},
        "median_driver_cpu_s": round(statistics.median(x["driver_cpu_s"] for x in runs), 2),
        "median_plain_start_s": round(statistics.median(x["plain_start_s"] for x in runs), 2),
    }
    ms = result["median_without_workers_start"]
    print(f"Ray overhead at 1 worker (median of rounds):       {median['overhead_1_worker']:.1%}  (target <= 10%)")
    print(f"parallel efficiency at 2 workers (median of rounds): {median['efficiency_2_workers']:.1%}  (target >= 90%); "
          f"2 plain processes without Ray: {median['machine_scaling_2_processes']:.1%}")
    print(f"(both count their processes' start: imports and model loading, plain {result['median_plain_start_s']} s)")
    print(f"the same with the start left out of both: overhead "
          f"{ms['overhead_1_worker']:.1%}, efficiency {ms['efficiency_2_workers']:.1%}")
    print(f"best rates: {best}; ratios of the best: {result['best_ratios']}")
    print(f"CPU per image (median): plain {result['median_cpu_ms_per_image']['plain_cpu_ms']} ms, Ray worker "
          f"{result['median_cpu_ms_per_image']['ray1_cpu_ms']} ms; driver CPU for a 2-worker run "
          f"{result['median_driver_cpu_s']} s; Ray started in {ray_start_s:.1f} s (once, not counted)")
    return result


# -- soak --------------------------------------------------------------------------------

SOAK_SHARD_SIZE = 256  # ~0.6 s a shard on 2 workers: what a kill costs is a fraction of one
SOAK_ATTEMPTS = 10  # a shard killed 3 times in a row is likely here; the soak is about bytes, not give-ups


def shard_worker_pids() -> list[int]:
    """The ShardWorker actors' processes of this process's Ray (children of its raylet: other
    Ray instances on the machine are left alone)."""
    import ray

    node = ray._private.worker.global_worker.node
    raylet = node.all_processes["raylet"][0].process.pid
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            title = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, IndexError, ValueError):
            continue
        if ppid == raylet and title.startswith(b"ray::ShardWorker"):
            pids.append(int(entry.name))
    return pids


class Killer(threading.Thread):
    """SIGKILLs one ShardWorker at random every ~`every_s` seconds (0.5x to 1.5x) until stopped."""

    def __init__(self, every_s: float, seed: int = 0):
        import random

        super().__init__(daemon=True)
        self.every_s, self.random, self.kills, self.stopped = every_s, random.Random(seed), 0, threading.Event()

    def run(self):
        import signal

        while not self.stopped.wait(self.every_s * self.random.uniform(0.5, 1.5)):
            pids = shard_worker_pids()
            if pids:
                try:
                    os.kill(self.random.choice(pids), signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass


def _soak_run(tree: Path, out: Path, config, kill_every_s: float | None) -> dict:
    from maskgen.pipeline.driver import GenerateRequest, generate

    killer = Killer(kill_every_s) if kill_every_s else None
    start = time.perf_counter()
    if killer:
        killer.start()
    try:
        summary = generate(GenerateRequest(tree, out, config, shard_size=SOAK_SHARD_SIZE, workers=2,
                                           max_attempts=SOAK_ATTEMPTS))
    finally:
        if killer:
            killer.stopped.set()
            killer.join()
    return {"s": time.perf_counter() - start, "kills": killer.kills if killer else 0, "retries": summary.retries,
            "complete": summary.complete, "rows": summary.rows, "ok": summary.statuses.get("ok", 0),
            "failed_shards": len(summary.failed_shards), "inputs": summary.inputs}


def _same_outputs(a: Path, b: Path) -> tuple[bool, bool]:
    """(manifests equal but for the timing column, every file under images/ byte-identical)."""
    import hashlib

    import pandas as pd

    def rows(out):
        return pd.read_parquet(out / "manifest").drop(columns=["elapsed_ms"])

    def files(out):
        root = out / "images"
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    return rows(a).equals(rows(b)), files(a) == files(b)


def soak(n_images: int, kill_every_s: float, keep: bool) -> dict:
    """A clean 2-worker run, then the same with a worker SIGKILLed every few seconds: same
    rows, same bytes? The time lost per kill is the difference over the kills."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray

    from maskgen.jobs.masking import build_job_config
    from maskgen.pipeline.runner import start_local_ray

    config = build_job_config()
    work = Path(tempfile.mkdtemp(prefix="maskgen-bench-soak-"))
    try:
        tree = make_tree(work / "tree", n_images)
        print(f"{n_images:,} images, 2 workers, a worker killed every ~{kill_every_s:g} s; {_busy_note()}", flush=True)
        start_local_ray(2)
        clean = _soak_run(tree, work / "clean", config, None)
        print(f"clean run: {clean['s']:.1f} s; {_busy_note()}", flush=True)
        killed = _soak_run(tree, work / "killed", config, kill_every_s)
        ray.shutdown()
        same_rows, same_bytes = _same_outputs(work / "clean", work / "killed")
        stray = len(list((work / "killed").rglob("*.tmp")))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    lost = (killed["s"] - clean["s"]) / max(killed["kills"], 1)
    result = {"images": n_images, "kill_every_s": kill_every_s, "clean": clean, "killed": killed,
              "same_rows": same_rows, "same_bytes": same_bytes, "stray_temp_files": stray, "s_lost_per_kill": round(lost, 2)}
    print(f"killed run: {killed['s']:.1f} s, {killed['kills']} kills, {killed['retries']} shard retries, "
          f"{killed['failed_shards']} shards given up; complete: {killed['complete']}; "
          f"rows {killed['rows']:,} ({killed['ok']:,} ok) of {killed['inputs']:,} inputs")
    print(f"same manifest as the clean run: {same_rows}; same bytes: {same_bytes}; stray temp files: {stray}; "
          f"time lost per kill: {lost:.2f} s; {_busy_note()}")
    return result


# -- memory ------------------------------------------------------------------------------


def _memory_child(tree: Path, out: Path, process: bool) -> dict:
    """Runs in a fresh process so that its peak RSS is this measurement's alone."""
    from maskgen.jobs.masking import build_job_config
    from maskgen.pipeline.driver import GenerateRequest, generate
    from maskgen.pipeline.inputs import walk_tree
    from maskgen.pipeline.paths import OutputLayout
    from maskgen.pipeline.plan import prepare_plan

    config = build_job_config()  # imports the mask engine too
    result = {"rss_after_imports_mib": round(rss_mib(), 1)}
    start = time.perf_counter()
    plan, _ = prepare_plan(OutputLayout(out), walk_tree(tree), config=config, shard_size=1000, input_root=tree)
    result |= {"inputs": plan.n_inputs, "shards": plan.n_shards, "plan_s": round(time.perf_counter() - start, 1),
               "peak_rss_planning_mib": round(peak_rss_mib(), 1)}
    if process:
        import ray

        from maskgen.pipeline.runner import start_local_ray

        start_local_ray(2)
        sampler = RssSampler()
        sampler.start()
        start = time.perf_counter()
        summary = generate(GenerateRequest(tree, out, config, shard_size=1000, workers=2,
                                           job_class="maskgen.bench.pipeline:NullJob"))
        sampler.stopped.set()
        assert summary.complete and summary.rows == plan.n_inputs, summary
        s = sampler.samples
        result |= {"run_s": round(time.perf_counter() - start, 1), "rows": summary.rows,
                   "driver_rss_mib_first_10pct": round(max(s[: max(1, len(s) // 10)]), 1),
                   "driver_rss_mib_last_10pct": round(max(s[-max(1, len(s) // 10):]), 1),
                   "peak_rss_whole_run_mib": round(peak_rss_mib(), 1)}
        ray.shutdown()
    return result


def memory(n_files: int, process: bool, keep: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="maskgen-bench-mem-"))
    try:
        t = time.perf_counter()
        make_tree(work / "tree", n_files)
        print(f"made a tree of {n_files:,} symlinks in {time.perf_counter() - t:.1f} s", flush=True)
        args = [sys.executable, "-m", "maskgen.bench.pipeline", "_memory-child", str(work / "tree"), str(work / "out")]
        child = subprocess.run(args + (["--process"] if process else []), capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"planning {result['inputs']:,} inputs ({result['shards']} shards) took {result['plan_s']} s; "
          f"driver RSS after imports {result['rss_after_imports_mib']} MiB, peak while planning "
          f"{result['peak_rss_planning_mib']} MiB")
    if process:
        print(f"processing all {result['rows']:,} rows (NullJob, 2 workers) took {result['run_s']} s; driver RSS: "
              f"{result['driver_rss_mib_first_10pct']} MiB in the first 10%, {result['driver_rss_mib_last_10pct']} MiB "
              f"in the last 10%, peak {result['peak_rss_whole_run_mib']} MiB")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog("pipeline"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True, metavar="{speed,memory,soak}")  # _memory-child: internal
    sp = sub.add_parser("speed", help="images/s: plain loop vs Ray with 1 and 2 workers")
    sp.add_argument("--images", type=at_least(1), default=5500, help="images in the symlink tree (default: %(default)s)")
    sp.add_argument("--rounds", type=at_least(1), default=3, help="paired rounds; the median of their ratios counts")
    sm = sub.add_parser("memory", help="driver peak RSS planning (and running) a big symlink tree")
    sm.add_argument("--files", type=at_least(1), default=200_000, help="files in the symlink tree (default: %(default)s)")
    sm.add_argument("--no-process", action="store_true", help="plan only")
    sk = sub.add_parser("soak", help="2 workers, one killed at random every few seconds: same rows and bytes as a clean run?")
    sk.add_argument("--images", type=at_least(1), default=50_000, help="images in the symlink tree (default: %(default)s)")
    sk.add_argument("--kill-every", type=float, default=3.0, metavar="S",
                    help="seconds between kills, on average (default: %(default)s)")
    for p in (sp, sm, sk):
        p.add_argument("--keep", action="store_true", help="keep the temporary trees and outputs")
        p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    child = sub.add_parser("_memory-child")
    child.add_argument("tree", type=Path)
    child.add_argument("out", type=Path)
    child.add_argument("--process", action="store_true")
    args = parser.parse_args(argv)
    if args.what == "_memory-child":
        print(json.dumps(_memory_child(args.tree, args.out, args.process)))
        return
    if args.what == "speed":
        result = speed(args.images, args.rounds, args.keep)
    elif args.what == "soak":
        if args.kill_every <= 0:
            fail("--kill-every must be above 0 seconds")
        result = soak(args.images, args.kill_every, args.keep)
    else:
        result = memory(args.files, not args.no_process, args.keep)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
