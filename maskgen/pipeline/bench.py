"""Benchmarks of the generate pipeline (not tests). Trees are made of symlinks to the sample faces.

    python -m maskgen.pipeline.bench speed  [--images 5500]    images/s: plain loop vs Ray 1 and 2 workers
    python -m maskgen.pipeline.bench memory [--files 200000]   driver peak RSS: planning, then a full run

`speed` runs the real ImageJob. `memory` plans the tree, then runs every shard with
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


class NullJob:
    """ImageJob's interface without image work: one ok row per variant, nothing written."""

    def __init__(self, config):
        self.config = config

    def process(self, src, rel, out_root, landmarks=None):
        return [
            {"identity": rel.split("/")[0], "src_path": rel, "out_path": rel, "mask_path": "", "variant": "masked",
             "variant_index": k, "face_index": 0, "status": "ok", "error": ""}
            for k in range(self.config.variants)
        ]


# -- speed -------------------------------------------------------------------------------


def plain_loop(tree: Path, out: Path, config) -> tuple[float, int]:
    """The mask engine on its own: one process, one ImageJob, every image in order."""
    from maskgen.pipeline.inputs import walk_tree
    from maskgen.pipeline.job import ImageJob

    job = ImageJob(config)
    entries = list(walk_tree(tree))
    start, cpu = time.perf_counter(), time.process_time()
    for e in entries:
        job.process(tree / e.rel, e.rel, out / "images")
    return time.perf_counter() - start, time.process_time() - cpu, len(entries)


def _plain_part(args) -> tuple[float, float]:
    """One of N plain processes: its slice of the images, timed after its job is built."""
    tree, out, config, rels, ready = args
    import cv2

    from maskgen.pipeline.job import ImageJob

    cv2.setNumThreads(1)
    job = ImageJob(config)
    ready.wait()  # all processes built their job: time the image work only
    start, cpu = time.time(), time.process_time()
    for rel in rels:
        job.process(tree / rel, rel, out / "images")
    return start, time.time(), time.process_time() - cpu


def plain_processes(tree: Path, out: Path, config, processes: int = 2) -> tuple[float, float]:
    """N independent plain loops, no Ray: what this machine gives N processes of this work."""
    import multiprocessing as mp

    from maskgen.pipeline.inputs import walk_tree

    rels = [e.rel for e in walk_tree(tree)]
    size = -(-len(rels) // processes)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(processes) as pool:
        ready = manager.Barrier(processes)
        parts = [(tree, out, config, rels[i * size:(i + 1) * size], ready) for i in range(processes)]
        spans = pool.map(_plain_part, parts)
    return max(e for _, e, _ in spans) - min(s for s, _, _ in spans), sum(c for _, _, c in spans)


SHARD_SIZE = 200  # ~2 s of work per shard here: small enough that the last shards end together


def ray_run(tree: Path, out: Path, config, workers: int) -> dict:
    from maskgen.pipeline.generate import GenerateRequest, generate

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


def speed(n_images: int, rounds: int, keep: bool) -> dict:
    """Each round times the plain loop, then Ray with 1 and 2 workers, on the same images;
    the best time of each over the rounds counts (other load on the machine only slows)."""
    import logging

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as Ray sets it for each 1-CPU worker
    import cv2
    import ray

    from maskgen.pipeline.generate import build_job_config

    cv2.setNumThreads(1)  # as in each Ray worker: one CPU per process
    config = build_job_config()
    work = Path(tempfile.mkdtemp(prefix="maskgen-bench-"))
    best = {"plain": float("inf"), "plain2": float("inf"), 1: float("inf"), 2: float("inf")}
    calls = {1: float("inf"), 2: float("inf")}
    cpu = {"plain": float("inf"), "plain2": float("inf"), 1: float("inf"), 2: float("inf")}  # CPU s per image
    steady = {1: float("inf"), 2: float("inf")}  # processing without the workers' start (model loading)
    driver_cpu = {1: float("inf"), 2: float("inf")}
    try:
        tree = make_tree(work / "tree", n_images)
        print(f"{n_images} images, {rounds} rounds; before: {_busy_note()}", flush=True)
        t = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        ray_start_s = time.perf_counter() - t
        for r in range(rounds):
            note = _busy_note()
            plain_s, plain_cpu, n = plain_loop(tree, work / "plain", config)
            best["plain"] = min(best["plain"], plain_s)
            cpu["plain"] = min(cpu["plain"], plain_cpu / n)
            print(f"round {r + 1}: plain loop   {n / plain_s:6.1f} images/s ({plain_s:.1f} s; before it: {note})", flush=True)
            plain2_s, plain2_cpu = plain_processes(tree, work / "plain2", config, 2)
            best["plain2"] = min(best["plain2"], plain2_s)
            cpu["plain2"] = min(cpu["plain2"], plain2_cpu / n)
            print(f"round {r + 1}: plain x2     {n / plain2_s:6.1f} images/s ({plain2_s:.1f} s, 2 processes without Ray)",
                  flush=True)
            for workers in (1, 2):
                run = ray_run(tree, work / f"ray{workers}", config, workers)
                shutil.rmtree(work / f"ray{workers}")
                best[workers] = min(best[workers], run["processing_s"])
                calls[workers] = min(calls[workers], run["total_s"])
                steady[workers] = min(steady[workers], run["steady_s"])
                cpu[workers] = min(cpu[workers], run["worker_cpu_s"] / n)
                driver_cpu[workers] = min(driver_cpu[workers], run["driver_cpu_s"])
                print(f"round {r + 1}: ray {workers} worker{'s' if workers > 1 else ' '} {n / run['processing_s']:6.1f} "
                      f"images/s ({run['processing_s']:.1f} s, of which {run['processing_s'] - run['steady_s']:.1f} s "
                      f"workers' start; whole call {run['total_s']:.1f} s)", flush=True)
        ray.shutdown()
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    plain_rate, rate1, rate2 = n / best["plain"], n / best[1], n / best[2]
    plain2_rate = n / best["plain2"]
    result = {
        "images": n, "rounds": rounds, "cpus": os.cpu_count(), "ray_start_s": round(ray_start_s, 2),
        "plain_images_per_s": round(plain_rate, 1),
        "ray1_images_per_s": round(rate1, 1), "ray2_images_per_s": round(rate2, 1),
        "overhead_1_worker": round(1 - rate1 / plain_rate, 3),
        "overhead_1_worker_whole_call": round(1 - (n / calls[1]) / plain_rate, 3),
        "efficiency_2_workers": round(rate2 / (2 * rate1), 3),
        "efficiency_2_workers_vs_plain": round(rate2 / (2 * plain_rate), 3),
        "plain2_images_per_s": round(plain2_rate, 1),
        "machine_scaling_2_processes": round(plain2_rate / (2 * plain_rate), 3),
        "ray2_vs_2_plain_processes": round(rate2 / plain2_rate, 3),
        "steady_overhead_1_worker": round(1 - (n / steady[1]) / plain_rate, 3),
        "steady_efficiency_2_workers": round(steady[1] / (2 * steady[2]), 3),
        "cpu_ms_per_image": {str(k): round(v * 1e3, 2) for k, v in cpu.items()},
        "driver_cpu_s": {str(k): round(v, 2) for k, v in driver_cpu.items()},
    }
    print(f"best of {rounds}: plain {plain_rate:.1f}, plain x2 {plain2_rate:.1f}, ray 1 worker {rate1:.1f}, "
          f"ray 2 workers {rate2:.1f} images/s")
    print(f"Ray overhead at 1 worker:       {result['overhead_1_worker']:.1%} (target <= 15%; "
          f"{result['overhead_1_worker_whole_call']:.1%} counting planning and the worker's start)")
    print(f"parallel efficiency, 2 workers: {result['efficiency_2_workers']:.1%} of 2x one worker (target >= 85%); "
          f"{result['efficiency_2_workers_vs_plain']:.1%} of 2x the plain loop")
    print(f"  of which the machine: 2 plain processes without Ray reach {result['machine_scaling_2_processes']:.1%} "
          f"of 2x one; Ray 2 workers reach {result['ray2_vs_2_plain_processes']:.1%} of those 2 plain processes")
    print(f"without the workers' start (model loading, ~1 s once per worker): overhead at 1 worker "
          f"{result['steady_overhead_1_worker']:.1%}, efficiency at 2 workers {result['steady_efficiency_2_workers']:.1%}")
    print(f"CPU per image: plain {cpu['plain'] * 1e3:.2f} ms (x2 processes: {cpu['plain2'] * 1e3:.2f} ms), in Ray "
          f"workers {cpu[1] * 1e3:.2f} ms (1 worker), {cpu[2] * 1e3:.2f} ms (2 workers); the driver used "
          f"{driver_cpu[1]:.1f} / {driver_cpu[2]:.1f} s of CPU")
    print(f"(Ray itself started in {ray_start_s:.1f} s, once, not counted above)")
    return result


# -- memory ------------------------------------------------------------------------------


def _memory_child(tree: Path, out: Path, process: bool) -> dict:
    """Runs in a fresh process so that its peak RSS is this measurement's alone."""
    from maskgen.pipeline.generate import GenerateRequest, build_job_config, generate
    from maskgen.pipeline.inputs import walk_tree
    from maskgen.pipeline.layout import OutputLayout
    from maskgen.pipeline.plan import prepare_plan

    config = build_job_config()  # imports the mask engine too
    result = {"rss_after_imports_mib": round(rss_mib(), 1)}
    start = time.perf_counter()
    plan, _ = prepare_plan(OutputLayout(out), walk_tree(tree), config=config, shard_size=1000, input_root=tree)
    result |= {"inputs": plan.n_inputs, "shards": plan.n_shards, "plan_s": round(time.perf_counter() - start, 1),
               "peak_rss_planning_mib": round(peak_rss_mib(), 1)}
    if process:
        import logging

        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        sampler = RssSampler()
        sampler.start()
        start = time.perf_counter()
        summary = generate(GenerateRequest(tree, out, config, shard_size=1000, workers=2,
                                           job_class="maskgen.pipeline.bench:NullJob"))
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
        args = [sys.executable, "-m", "maskgen.pipeline.bench", "_memory-child", str(work / "tree"), str(work / "out")]
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskgen.pipeline.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("speed", help="images/s: plain loop vs Ray with 1 and 2 workers")
    sp.add_argument("--images", type=int, default=5500)
    sp.add_argument("--rounds", type=int, default=2)
    sm = sub.add_parser("memory", help="driver peak RSS planning (and running) a big symlink tree")
    sm.add_argument("--files", type=int, default=200_000)
    sm.add_argument("--no-process", action="store_true", help="plan only")
    for p in (sp, sm):
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
    result = speed(args.images, args.rounds, args.keep) if args.what == "speed" else memory(args.files, not args.no_process, args.keep)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
