"""`maskgen inspect OUT_DIR`: what a run produced, read shard by shard from its manifest.

Memory stays small: counters per column, plus the coverage column of ok rows (4 bytes a row).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from maskgen.pipeline.layout import OutputLayout
from maskgen.pipeline.plan import load_plan

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
        meta = pf.schema_arrow.metadata or {}
        schema_version = schema_version or meta.get(b"maskgen.schema_version", b"?").decode()
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


def _count_table(title: str, counts: dict, total: int) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    for name, n in counts.items():
        table.add_row(str(name), f"{n:,}", f"{n / total:.1%}" if total else "")
    return table


def print_report(report: dict, console: Console, top: int = 10, short: bool = False) -> None:
    """The report as rich tables; `short` leaves out identities and failure examples."""
    shards, inputs = report["shards"], report["inputs"]
    planned = f" of {shards['planned']:,} planned" if shards["planned"] else ""
    console.print(
        f"[bold]{escape(report['out_dir'])}[/bold]: {report['rows']:,} rows for {inputs['in_manifest']:,} inputs, "
        f"{shards['written']:,} shards{planned} (schema {report['schema_version']})", highlight=False, soft_wrap=True,
    )
    if shards["planned"] and shards["written"] < shards["planned"]:
        console.print("[yellow]incomplete: some shards are missing; re-run generate to finish[/yellow]")
    masked = sum(report["mask_type"].values())
    console.print(_count_table("status", report["status"], report["rows"]))
    console.print(_count_table("mask type (ok masked rows)", report["mask_type"], masked))
    console.print(_count_table("wear (ok masked rows)", report["wear"], masked))
    cov = report["coverage"]
    if cov["count"]:
        console.print(
            f"coverage: mean {cov['mean']:.3f} ± {cov['std']:.3f}, p05 {cov['p05']:.3f}, "
            f"median {cov['p50']:.3f}, p95 {cov['p95']:.3f} (min {cov['min']:.3f}, max {cov['max']:.3f})",
            soft_wrap=True,
        )
    if short:
        return
    ids = report["identities"]
    console.print(
        f"identities: {ids['count']:,} (rows per identity: min {ids['rows_min']}, median {ids['rows_median']:g}, "
        f"max {ids['rows_max']})",
        soft_wrap=True,
    )
    for item in ids["most_failures"][:top]:
        console.print(f"  {escape(item['identity'])}: {item['failed']} of {item['rows']} rows failed", highlight=False)
    if report["failure_examples"]:
        console.print("[bold]failure examples[/bold]")
        for ex in report["failure_examples"][:top]:
            console.print(f"  [red]{ex['status']}[/red] {escape(ex['src_path'])}: {escape(ex['error'])}", highlight=False, soft_wrap=True)
