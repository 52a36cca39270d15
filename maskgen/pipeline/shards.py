"""One shard, reader -> worker -> writer: read its slice of the plan, run ImageJob on each
input, write the shard's manifest (temp name + rename), sync its images and manifest to disk,
then write its stats file (the done marker, synced too): a machine that crashes after a
shard's marker has lost none of that shard.

Runs inside a Ray actor, but nothing here knows about Ray.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from maskgen.files import sync_files, write_atomic, write_parquet
from maskgen.jobs.protocol import BATCH_SIZE, process_safely
from maskgen.pipeline.inputs import input_source
from maskgen.pipeline.paths import OutputLayout
from maskgen.pipeline.plan import Plan, read_inputs_slice

EXAMPLES_PER_SHARD = 5  # failure examples kept in a shard's stats (the manifest has them all)
# Errors of OUT_DIR itself, not of one image: every later write would fail the same way.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^:]*)(?:: '(.*)')?")


def fatal_write_error(rows: list[dict]) -> OSError | None:
    """A write_error row caused by a full, read-only or forbidden OUT_DIR, as the OSError it was.

    Jobs turn a failed image write into a row (one bad path must not cost the shard); that row
    would mark the image as done for good, so the shard fails instead and a re-run redoes it."""
    for row in rows:
        if row.get("status") != "write_error":
            continue
        match = _ERRNO_TEXT.search(row.get("error") or "")
        if match and int(match[1]) in FATAL_ERRNOS:
            return OSError(int(match[1]), match[2], match[3])
    return None


def open_sink(layout: OutputLayout, config: dict, index: int, n_shards: int):
    """Where shard `index` writes its images: files under images/, or its own container."""
    from maskgen.jobs import sinks

    return sinks.open_sink(config.get("output_format", "files"), layout.root, layout.images,
                           layout.rec_shard_base(index, n_shards), layout.wds_shard(index))


def process_entries(job, entries: list[dict], input_root: Path, images_root, config: dict, pass_landmarks: bool) -> list[list[dict]]:
    """Each entry's rows, in entry order, as one batch that never raises (see process_safely).
    `images_root`: the folder outputs go under, or the shard's sink (jobs.sinks)."""
    source = input_source(input_root)  # a file under the root, or a record of a .rec
    inputs = [(source(e["rel"]), e["rel"], e.get("landmarks") if pass_landmarks else None) for e in entries]
    results = process_safely(job, inputs, images_root, config.get("variants", 1), config.get("keep_original", False))
    for entry, rows in zip(entries, results):
        for row in rows:
            row["identity"] = entry["identity"]  # an input list's identity column wins over the folder name
        rows.sort(key=lambda r: (r.get("variant_index", 0), r.get("face_index") or 0))
    return results


def process_shard(
    job,
    plan: Plan,
    layout: OutputLayout,
    input_root: Path,
    index: int,
    *,
    pass_landmarks: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    retry_failed: bool = False,
) -> dict:
    """Process shard `index` and return its stats (also written, last, to its stats file).

    `retry_failed`: the inputs whose rows in the shard's manifest are all ok keep those rows
    (their images are not touched); only the others (or all, without a manifest) are run."""
    started, cpu_started = time.perf_counter(), time.process_time()
    entries = read_inputs_slice(layout.inputs_file, *plan.shard_range(index))
    kept = ok_rows_by_input(layout.manifest_path(index, plan.n_shards)) if retry_failed else {}
    todo = [e for e in entries if e["rel"] not in kept]
    fresh: dict[str, list[dict]] = {}
    done, failed = len(entries) - len(todo), 0
    sink = open_sink(layout, plan.config, index, plan.n_shards)
    try:
        for start in range(0, len(todo), BATCH_SIZE):
            batch = todo[start : start + BATCH_SIZE]
            results = process_entries(job, batch, input_root, sink, plan.config, pass_landmarks)
            if fatal := fatal_write_error([row for entry_rows in results for row in entry_rows]):
                raise fatal
            for entry, entry_rows in zip(batch, results):
                fresh[entry["rel"]] = entry_rows
                failed += sum(row["status"] != "ok" for row in entry_rows)
                done += 1
                if on_progress:
                    on_progress(done, failed)
        sink.commit()  # the shard's container before its manifest: a manifest never names a missing one
    except BaseException:
        sink.abort()
        raise
    rows = [row for e in entries for row in (kept.get(e["rel"]) or fresh[e["rel"]])]
    manifest = layout.manifest_path(index, plan.n_shards)
    write_parquet(manifest, pa.Table.from_pylist(rows, schema=sink.schema(job.schema)))
    synced = time.perf_counter()
    sync_files([*sink.written(), manifest])
    stats = shard_stats(rows) | {
        "shard": index,
        "inputs": len(entries),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "cpu_s": round(time.process_time() - cpu_started, 3),  # this worker's CPU time for the shard
        "sync_s": round(time.perf_counter() - synced, 3),  # fsync of its files: what durability costs
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "config_hash": plan.config_hash,
        "fingerprint": plan.fingerprint,
    }
    if retry_failed:
        stats["retried"] = len(todo)
    write_atomic(layout.stats_path(index, plan.n_shards), json.dumps(stats, indent=1).encode(), durable=True)
    return stats


def shard_stats(rows: list[dict]) -> dict:
    statuses = Counter(row["status"] for row in rows)
    failures = [row for row in rows if row["status"] != "ok"]
    return {
        "rows": len(rows),
        "statuses": dict(sorted(statuses.items())),
        "failed_rows": len(failures),
        "examples": [{k: row.get(k) for k in ("src_path", "variant", "status", "error")} for row in failures[:EXAMPLES_PER_SHARD]],
    }


def ok_rows_by_input(manifest: Path) -> dict[str, list[dict]]:
    """A shard manifest's rows by input (src_path), for the inputs whose rows are all ok."""
    if not manifest.is_file():
        return {}
    by_input: dict[str, list[dict]] = {}
    for row in pq.read_table(manifest).to_pylist():
        by_input.setdefault(row["src_path"], []).append(row)
    return {rel: rows for rel, rows in by_input.items() if all(r["status"] == "ok" for r in rows)}


def not_ok_inputs(manifest: Path) -> int:
    """How many inputs of a shard manifest have a row that is not ok (what --retry-failed redoes)."""
    table = pq.read_table(manifest, columns=["src_path", "status"]).to_pylist()
    return len({r["src_path"] for r in table if r["status"] != "ok"})


def read_stats(layout: OutputLayout, plan: Plan, also_fingerprint: str | None = None) -> dict[int, dict]:
    """Stats of the shards that are done: stats file of this plan present, manifest present.
    `also_fingerprint`: a --retry-failed run also takes the shards done before its files changed."""
    if not layout.stats.is_dir():
        return {}
    manifests = {p.name for p in layout.manifest.glob("shard-*.parquet")} if layout.manifest.is_dir() else set()
    done = {}
    for path in layout.stats.glob("shard-*.json"):
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # unreadable marker: the shard is redone
        index = stats.get("shard")
        if (
            isinstance(index, int)
            and 0 <= index < plan.n_shards
            and path.name == layout.stats_path(index, plan.n_shards).name
            and stats.get("config_hash") == plan.config_hash
            and stats.get("fingerprint") in {plan.fingerprint, also_fingerprint or plan.fingerprint}
            and layout.manifest_path(index, plan.n_shards).name in manifests
        ):
            done[index] = stats
    return done
