"""One shard, reader -> worker -> writer: read its slice of the plan, run ImageJob on each
input, write the shard's manifest (temp name + rename), then its stats file (the done marker).

Runs inside a Ray actor, but nothing here knows about Ray.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from maskgen.files import write_atomic, write_parquet
from maskgen.jobs.protocol import BATCH_SIZE, process_safely
from maskgen.pipeline.paths import OutputLayout
from maskgen.pipeline.plan import Plan, read_inputs_slice

EXAMPLES_PER_SHARD = 5  # failure examples kept in a shard's stats (the manifest has them all)


def process_entries(job, entries: list[dict], input_root: Path, images_root: Path, config: dict, pass_landmarks: bool) -> list[list[dict]]:
    """Each entry's rows, in entry order, as one batch that never raises (see process_safely)."""
    inputs = [
        (Path(input_root) / e["rel"], e["rel"], e.get("landmarks") if pass_landmarks else None) for e in entries
    ]
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
) -> dict:
    """Process shard `index` and return its stats (also written, last, to its stats file)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    entries = read_inputs_slice(layout.inputs_file, *plan.shard_range(index))
    rows: list[dict] = []
    statuses: Counter = Counter()
    examples: list[dict] = []
    failed_rows = 0
    done = 0
    for start in range(0, len(entries), BATCH_SIZE):
        batch = entries[start : start + BATCH_SIZE]
        for entry_rows in process_entries(job, batch, input_root, layout.images, plan.config, pass_landmarks):
            rows.extend(entry_rows)
            for row in entry_rows:
                statuses[row["status"]] += 1
                if row["status"] != "ok":
                    failed_rows += 1
                    if len(examples) < EXAMPLES_PER_SHARD:
                        examples.append({k: row.get(k) for k in ("src_path", "variant", "status", "error")})
            done += 1
            if on_progress:
                on_progress(done, failed_rows)
    write_parquet(layout.manifest_path(index, plan.n_shards), pa.Table.from_pylist(rows, schema=job.schema))
    stats = {
        "shard": index,
        "inputs": len(entries),
        "rows": len(rows),
        "statuses": dict(sorted(statuses.items())),
        "failed_rows": failed_rows,
        "examples": examples,
        "elapsed_s": round(time.perf_counter() - started, 3),
        "cpu_s": round(time.process_time() - cpu_started, 3),  # this worker's CPU time for the shard
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "config_hash": plan.config_hash,
        "fingerprint": plan.fingerprint,
    }
    write_atomic(layout.stats_path(index, plan.n_shards), json.dumps(stats, indent=1).encode())
    return stats


def read_stats(layout: OutputLayout, plan: Plan) -> dict[int, dict]:
    """Stats of the shards that are done: stats file of this plan present, manifest present."""
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
            and stats.get("fingerprint") == plan.fingerprint
            and layout.manifest_path(index, plan.n_shards).name in manifests
        ):
            done[index] = stats
    return done
