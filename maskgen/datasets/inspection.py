"""What a run produced (`maskgen inspect OUT_DIR`), read shard by shard from its manifest.

Memory stays small: counters per column, plus the coverage column of ok rows (4 bytes a row).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from maskgen.pipeline.paths import OutputLayout
from maskgen.pipeline.plan import load_plan
from maskgen.schemas import SCHEMA_VERSION_KEY, read_key

COLUMNS = ("identity", "src_path", "variant", "mask_type", "wear", "coverage", "status", "error")


def _coverage_stats(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"count": 0}
    q = np.percentile(values, [5, 50, 95])
    return {
        "count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
        "min": float(values.min()), "p05": float(q[0]), "p50": float(q[1]), "p95": float(q[2]), "max": float(values.max()),
    }


def _counts(counter: Counter) -> dict:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def inspect_output(out_dir: Path, examples: int = 10) -> dict:
    """A report (plain dict, JSON-ready) of the manifest under `out_dir`."""
    layout = OutputLayout(out_dir)
    files = sorted(layout.manifest.glob("shard-*.parquet")) if layout.manifest.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no manifest shards in {layout.manifest} (run `maskgen generate` first)")
    plan = load_plan(layout)
    statuses, types, wears, variants = Counter(), Counter(), Counter(), Counter()
    rows_by_identity, failed_by_identity = Counter(), Counter()
    coverage, coverage_by_type, coverage_by_wear = [], {}, {}
    failures: list[dict] = []
    rows = inputs = 0
    schema_version = None
    for path in files:
        pf = pq.ParquetFile(path)
        schema_version = schema_version or read_key(pf.schema_arrow.metadata, SCHEMA_VERSION_KEY, "?")
        cols = [c for c in COLUMNS if c in pf.schema_arrow.names]
        df = pf.read(columns=cols).to_pandas()
        rows += len(df)
        inputs += df["src_path"].nunique()  # shards hold disjoint inputs
        statuses.update(df["status"].value_counts().to_dict())
        variants.update(df["variant"].value_counts().to_dict())
        rows_by_identity.update(df["identity"].value_counts().to_dict())
        bad = df[df["status"] != "ok"]
        failed_by_identity.update(bad["identity"].value_counts().to_dict())
        for rec in bad.head(max(examples - len(failures), 0)).itertuples():
            failures.append({"src_path": rec.src_path, "variant": rec.variant, "status": rec.status, "error": rec.error})
        masked = df[(df["status"] == "ok") & (df["variant"] == "masked")]
        types.update(masked["mask_type"].value_counts().to_dict())
        wears.update(masked["wear"].value_counts().to_dict())
        cov = masked["coverage"].astype("float32")
        coverage.append(cov.to_numpy())
        for key, by in (("mask_type", coverage_by_type), ("wear", coverage_by_wear)):
            for name, values in cov.groupby(masked[key]):
                by.setdefault(name, []).append(values.to_numpy())
    all_coverage = np.concatenate(coverage) if coverage else np.empty(0, np.float32)
    per_identity = np.array(list(rows_by_identity.values()))
    return {
        "out_dir": str(layout.root),
        "schema_version": schema_version,
        "shards": {"written": len(files), "planned": plan.n_shards if plan else None},
        "inputs": {"in_manifest": int(inputs), "planned": plan.n_inputs if plan else None},
        "rows": rows,
        "status": _counts(statuses),
        "variant": _counts(variants),
        "mask_type": _counts(types),
        "wear": _counts(wears),
        "identities": {
            "count": len(rows_by_identity),
            "rows_min": int(per_identity.min()), "rows_median": float(np.median(per_identity)),
            "rows_max": int(per_identity.max()),
            "most_failures": [{"identity": k, "failed": v, "rows": rows_by_identity[k]}
                              for k, v in failed_by_identity.most_common(examples)],
        },
        "by_identity": {k: {"rows": v, "failed": failed_by_identity.get(k, 0)} for k, v in sorted(rows_by_identity.items())},
        "coverage": _coverage_stats(all_coverage)
        | {
            "mean_by_mask_type": {k: float(np.concatenate(v).mean()) for k, v in sorted(coverage_by_type.items())},
            "mean_by_wear": {k: float(np.concatenate(v).mean()) for k, v in sorted(coverage_by_wear.items())},
        },
        "failure_examples": failures,
    }
