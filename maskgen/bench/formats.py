"""Output formats: `python -m maskgen.bench formats [--mxnet-python PY] [--join-records N]`.

1. mxnet's own reader on our `.rec` (optional: a Python with mxnet 1.9.1, e.g. a separate venv
   `python3 -m venv /tmp/mxvenv && /tmp/mxvenv/bin/pip install mxnet==1.9.1 'numpy<1.24'`):
   the sample faces written by maskgen.recordio, read back with MXIndexedRecordIO + unpack_img,
   and the same records written by mxnet, byte-compared with ours both ways.
2. `generate` images/s per output format (files, rec, webdataset, parquet) on the same faces,
   real local Ray.
3. the training loader's images/s from each format (batches of 32 decoded in one process),
   and SphereFace-20 training images/s on the CPU (batch 32) with that loader.
4. the peak memory of the `.rec` join at N records (synthetic tiny records; default 1M).
"""

from __future__ import annotations

import argparse
import json
import os
import resource  # the bench's own peak memory
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from maskgen.bench._args import at_least, fail, prog

FORMATS = ("files", "rec", "webdataset", "parquet")

MXNET_CHECK = r"""
import hashlib, json, sys
import mxnet as mx
folder, pairs_file, mine = sys.argv[1], sys.argv[2], sys.argv[3]
r = mx.recordio.MXIndexedRecordIO(folder + "/train.idx", folder + "/train.rec", "r")
head, _ = mx.recordio.unpack(r.read_idx(0))
seen = []
for k in range(1, int(head.label[0])):
    h, img = mx.recordio.unpack_img(r.read_idx(k))
    seen.append([k, int(h.label), list(img.shape), hashlib.sha256(mx.recordio.unpack(r.read_idx(k))[1]).hexdigest()])
ranges = [list(map(int, mx.recordio.unpack(r.read_idx(i))[0].label)) for i in range(int(head.label[0]), int(head.label[1]))]
w = mx.recordio.MXIndexedRecordIO(mine + "/train.idx", mine + "/train.rec", "w")
w.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(2, [float(head.label[0]), float(head.label[1])], 0, 0), b""))
for k, (label, path) in enumerate(json.load(open(pairs_file)), 1):
    w.write_idx(k, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), k, 0), open(path, "rb").read()))
for j, (a, b) in enumerate(ranges):
    w.write_idx(int(head.label[0]) + j, mx.recordio.pack(mx.recordio.IRHeader(2, [float(a), float(b)], int(head.label[0]) + j, 0), b""))
w.close()
print(json.dumps({"images": seen, "ranges": ranges, "mxnet": mx.__version__}))
"""


def sample_pairs() -> list[tuple[int, Path]]:
    from maskgen.assets import sample_faces

    root = sample_faces()
    identities = sorted(p.name for p in root.iterdir() if p.is_dir())
    return [(identities.index(f.parent.name), f) for f in sorted(root.rglob("*.jpg"))]


def mxnet_check(python: str, tmp: Path) -> dict:
    """mxnet reads our .rec as we wrote it, and writes the same bytes we write."""
    import hashlib

    from maskgen.recordio import FaceRec, write_face_rec

    pairs = sample_pairs()
    ours, theirs = tmp / "ours", tmp / "mxnet"
    theirs.mkdir()
    write_face_rec(ours, [(label, path.read_bytes()) for label, path in pairs], size=(150, 150))
    listing = tmp / "pairs.json"
    listing.write_text(json.dumps([[label, str(path)] for label, path in pairs]))
    done = subprocess.run([python, "-c", MXNET_CHECK, str(ours), str(listing), str(theirs)], capture_output=True, text=True)
    if done.returncode:
        fail(f"{python} could not run the mxnet check: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    expected = [[k, label, [150, 150, 3], hashlib.sha256(path.read_bytes()).hexdigest()] for k, (label, path) in enumerate(pairs, 1)]
    mine = FaceRec(theirs)
    ours_read_theirs = all(mine.reader.read(k)[1] == path.read_bytes() and mine.label(k) == label
                           for k, (label, path) in enumerate(pairs, 1))
    return {
        "mxnet": seen["mxnet"],
        "records": len(pairs),
        "mxnet_reads_ours_byte_exact": seen["images"] == expected,
        "identity_ranges": seen["ranges"],
        "mxnet_writes_our_bytes": all((ours / n).read_bytes() == (theirs / n).read_bytes() for n in ("train.rec", "train.idx")),
        "our_reader_reads_mxnets": ours_read_theirs,
    }


def tiled_tree(dest: Path, copies: int) -> Path:
    """The sample faces, `copies` times (each copy its own identities)."""
    from maskgen.assets import sample_faces

    for c in range(copies):
        for identity in sorted(p for p in sample_faces().iterdir() if p.is_dir()):
            shutil.copytree(identity, dest / f"{identity.name}_{c}")
    return dest


def generate_speed(tree: Path, tmp: Path, workers: int, rounds: int) -> dict:
    """Each format `rounds` times, interleaved (a shared machine's load spreads over all of them),
    after one untimed warm-up run; best and median images/s of processing per format."""
    import statistics

    import ray

    from maskgen.jobs.masking import build_job_config
    from maskgen.pipeline.driver import GenerateRequest, generate
    from maskgen.pipeline.runner import start_local_ray

    start_local_ray(workers)
    rates: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
    try:
        for run, fmt in enumerate(["files", *[f for _ in range(rounds) for f in FORMATS]]):
            config = build_job_config(seed=1, keep_original=True, output_format=fmt)
            summary = generate(GenerateRequest(input_root=tree, out_dir=tmp / f"{fmt}-{run}", config=config, workers=workers))
            assert summary.complete and summary.failed_rows == 0, summary
            if run:
                rates[fmt].append(summary.images_per_s)
                last = tmp / f"{fmt}-{run}"
                (tmp / fmt).unlink(missing_ok=True)
                (tmp / fmt).symlink_to(last)  # the newest run of each format feeds the loader benchmark
    finally:
        ray.shutdown()
    return {fmt: {"best_images_per_s": max(r), "median_images_per_s": statistics.median(r), "runs": r} for fmt, r in rates.items()}


def loader_speed(tmp: Path, batches: int, train_steps: int) -> dict:
    import numpy as np
    import torch

    from maskgen.datasets.trainset import TrainsetOptions, build_trainset, write_trainset
    from maskgen.recognition.data import ManifestDataset, read_manifest

    rows, holdout, labels, summary = build_trainset([tmp / "files"], TrainsetOptions())
    write_trainset(rows, holdout, labels, tmp / "trainset.parquet", summary.num_classes)
    sources = {"files": tmp / "trainset.parquet", "rec": tmp / "rec" / "rec", "webdataset": tmp / "webdataset" / "wds",
               "parquet": tmp / "parquet" / "manifest"}
    torch.set_num_threads(1)
    results = {}
    for fmt, where in sources.items():
        manifest = read_manifest(where)
        dataset = ManifestDataset(manifest, 112, 96)
        order = np.random.default_rng(0).integers(0, len(dataset), size=(batches + 1, 32))
        dataset.batch(order[0].tolist())  # warm: the page cache, a parquet store's columns
        start = time.perf_counter()
        for keys in order[1:]:
            dataset.batch(keys.tolist())
        load = batches * 32 / (time.perf_counter() - start)
        results[fmt] = {"rows": len(dataset), "loader_images_per_s": round(load, 1)}
        if train_steps:
            results[fmt]["sphereface20_cpu_images_per_s"] = round(train_speed(dataset, manifest.num_classes, train_steps), 1)
    return results


def train_speed(dataset, num_classes: int, steps: int) -> float:
    """SphereFace-20 + A-Softmax training steps on the CPU, batch 32, batches from `dataset`."""
    import numpy as np
    import torch

    from maskgen.recognition.config import TrainConfig
    from maskgen.recognition.heads import get_head
    from maskgen.recognition.nets import get_model
    from maskgen.recognition.train import Recogniser, build_optimizer, prepare_batch, train_step

    config = TrainConfig(device="cpu", batch_size=32)
    model = Recogniser(get_model("sphereface20", 512, config.input_size()), get_head("asoftmax", 512, num_classes, config))
    optimizer, scheduler = build_optimizer(model, config)
    rng = np.random.default_rng(1)

    def step(n):
        images, labels, _ = dataset.batch(rng.integers(0, len(dataset), 32).tolist())
        train_step(model, optimizer, scheduler, prepare_batch(images, config, n, 0, torch.device("cpu"), False), labels, nullcontext())

    step(0)
    start = time.perf_counter()
    for n in range(1, steps + 1):
        step(n)
    return steps * 32 / (time.perf_counter() - start)


JOIN_CHILD = r"""
import json, sys, time
from pathlib import Path
from maskgen.pipeline import containers
from maskgen.pipeline.paths import OutputLayout
from maskgen.pipeline.plan import Plan

def high_water_mb():  # VmHWM: this process's peak resident memory (ru_maxrss would include the parent's fork)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return round(int(line.split()[1]) / 1024, 1)

plan = Plan.from_json(Path(sys.argv[1], "plan", "plan.json").read_text())
before = high_water_mb()
start = time.perf_counter()
count = containers.join_rec(OutputLayout(Path(sys.argv[1])), plan)
print(json.dumps({"records": count, "join_s": round(time.perf_counter() - start, 1),
                  "rss_after_imports_mb": before, "peak_rss_mb": high_water_mb()}))
"""


def join_memory(tmp: Path, records: int, shard_size: int = 1000, per_identity: int = 50) -> dict:
    """Synthetic shards of tiny PNG records (and manifests of their rows), then the join in a
    child process whose peak resident memory is read (its imports alone: `rss_after_imports_mb`)."""
    import cv2
    import numpy as np
    import pyarrow as pa

    from maskgen.files import write_parquet
    from maskgen.pipeline.paths import OutputLayout
    from maskgen.pipeline.plan import Plan
    from maskgen.recordio import Header, RecordWriter, pack

    layout = OutputLayout(tmp / "join")
    n_shards = -(-records // shard_size)
    plan = Plan(n_inputs=records, shard_size=shard_size, fingerprint="synthetic", config_hash="synthetic",
                config={"output_format": "rec"}, input_root=str(tmp), input_list=None, has_landmarks=False)
    layout.plan_dir.mkdir(parents=True)
    layout.plan_file.write_text(plan.to_json())
    payload = cv2.imencode(".png", np.full((4, 4, 3), 128, np.uint8))[1].tobytes()
    for index in range(n_shards):
        base = layout.rec_shard_base(index, n_shards)
        keys = range(min(shard_size, records - index * shard_size))
        with RecordWriter(base.with_suffix(".rec")) as out:
            for k in keys:
                out.write(k, pack(Header(0, 0.0, k), payload))
        RecordWriter(base.with_suffix(".mask.rec")).commit()
        where = base.relative_to(layout.root).as_posix()
        first = index * shard_size
        write_parquet(layout.manifest_path(index, n_shards), pa.table({
            "identity": [f"{(first + k) // per_identity:07d}" for k in keys],
            "src_path": [f"{(first + k) // per_identity:07d}/{first + k:08d}.jpg" for k in keys],
            "out_path": [f"{where}.rec#{k}" for k in keys], "mask_path": [""] * len(keys), "status": ["ok"] * len(keys),
        }))
    done = subprocess.run([sys.executable, "-c", JOIN_CHILD, str(layout.root)], capture_output=True, text=True)
    if done.returncode:
        fail(f"the join failed: {done.stderr.strip().splitlines()[-1]}")
    result = json.loads(done.stdout)
    result["train_rec_mb"] = round((layout.rec / "train.rec").stat().st_size / 2**20, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog("formats"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--mxnet-python", help="a Python with mxnet installed (a separate venv): run the mxnet check")
    parser.add_argument("--copies", type=at_least(1), default=2, help="copies of the 55 sample faces to generate from (default 2)")
    parser.add_argument("--workers", type=at_least(1), default=2, help="Ray workers for generate (default 2)")
    parser.add_argument("--rounds", type=at_least(1), default=2, help="generate runs per format, interleaved (default 2)")
    parser.add_argument("--batches", type=at_least(1), default=20, help="loader batches of 32 timed per format")
    parser.add_argument("--train-steps", type=at_least(0), default=3, help="SphereFace-20 CPU steps timed per format (0: skip)")
    parser.add_argument("--join-records", type=at_least(0), default=1_000_000, help="records of the synthetic .rec join (0: skip)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.mxnet_python and not shutil.which(args.mxnet_python) and not os.path.isfile(args.mxnet_python):
        fail(f"--mxnet-python: {args.mxnet_python} not found")
    report = {"machine": f"{os.cpu_count()} CPUs, {sys.platform}", "load_avg": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="maskgen-bench-formats-") as folder:
        tmp = Path(folder)
        if args.mxnet_python:
            (tmp / "mx").mkdir()
            report["mxnet_check"] = mxnet_check(args.mxnet_python, tmp / "mx")
            _show("mxnet check", report["mxnet_check"], args.json)
        tree = tiled_tree(tmp / "faces", args.copies)
        report["generate"] = generate_speed(tree, tmp / "runs", args.workers, args.rounds)
        _show("generate (images/s of processing, real local Ray)", report["generate"], args.json)
        report["loader"] = loader_speed(tmp / "runs", args.batches, args.train_steps)
        _show("training loader (one process, batch 32)", report["loader"], args.json)
        if args.join_records:
            report["rec_join"] = join_memory(tmp, args.join_records)
            _show(f"rec join of {args.join_records:,} synthetic records", report["rec_join"], args.json)
    report["peak_rss_bench_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if args.json:
        print(json.dumps(report))


def _show(title: str, value: dict, as_json: bool) -> None:
    if not as_json:
        print(f"== {title}")
        for key, item in value.items():
            print(f"  {key}: {item}")
        sys.stdout.flush()
