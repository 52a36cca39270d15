"""What a run produced (`maskgen inspect OUT_DIR`), read shard by shard from its manifest.

Memory stays small: counters per column, plus the coverage column of ok rows (4 bytes a row)
and, when the manifest has them, the qa_ signals of rendered rows (4 bytes each a row).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from maskgen.masks.quality import QA_SIGNALS, QAThresholds, reasons
from maskgen.pipeline.paths import OutputLayout
from maskgen.pipeline.plan import load_plan
from maskgen.schemas import SCHEMA_VERSION_KEY, read_key

COLUMNS = ("identity", "src_path", "variant", "mask_type", "wear", "coverage", "status", "error")
QA_EXTRA = ("variant_index", "face_index")  # read with the qa_ columns: they say which render an example is
QA_TOP = 3  # rows shown per signal: those nearest to (or furthest past) its threshold


def _coverage_stats(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"count": 0}
    q = np.percentile(values, [5, 50, 95])
    return {
        "count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
        "min": float(values.min()), "p05": float(q[0]), "p50": float(q[1]), "p95": float(q[2]), "max": float(values.max()),
    }


def _distribution(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"count": 0}
    q = np.percentile(values, [5, 50, 95])
    return {"count": int(values.size), "min": float(values.min()), "p05": float(q[0]), "p50": float(q[1]),
            "p95": float(q[2]), "max": float(values.max())}


def _checks(thresholds: QAThresholds) -> list[tuple[str, str, float]]:
    """(signal, "<" or ">", limit) for each threshold: min_face -> qa_face < limit fails."""
    checks = []
    for name, limit in vars(thresholds).items():
        kind, _, signal = name.partition("_")
        checks.append(("qa_" + signal, "<" if kind == "min" else ">", float(limit)))
    return checks


class _QAStats:
    """The qa_ signals of the rendered rows: distributions, the rows failing the thresholds,
    and per signal the few rows with the worst margin to its threshold."""

    def __init__(self, thresholds: QAThresholds, examples: int):
        self.thresholds, self.examples = thresholds, examples
        self.checks = _checks(thresholds)
        self.values: dict[str, list[np.ndarray]] = {}
        self.present = False  # the manifest has qa_ columns
        self.rows = self.failing = 0
        self.by_check: Counter = Counter()
        self.failing_examples: list[dict] = []
        self.top: dict[str, list[tuple[float, dict]]] = {}

    def add(self, df, signals: list[str]) -> None:
        import pandas as pd

        self.present = True
        qa = df[signals].astype("float64")
        rendered = qa.notna().any(axis=1).to_numpy()
        if not rendered.any():
            return
        df, qa = df[rendered], qa[rendered]
        self.rows += len(df)
        for signal in signals:
            column = qa[signal].to_numpy()
            self.values.setdefault(signal, []).append(column[np.isfinite(column)].astype(np.float32))
        fails = pd.Series(False, index=qa.index)
        margins: dict[str, pd.Series] = {}
        for signal, op, limit in self.checks:
            if signal not in qa:
                continue
            margin = qa[signal] - limit if op == ">" else limit - qa[signal]  # > 0: fails (NaN: not checked)
            bad = margin > 0
            self.by_check[f"{signal} {op} {limit:g}"] += int(bad.sum())
            fails |= bad
            margins[signal] = margin if signal not in margins else np.fmax(margins[signal], margin)
        self.failing += int(fails.sum())
        for index in fails[fails].index[: max(self.examples - len(self.failing_examples), 0)]:
            self.failing_examples.append(self._example(df.loc[index], qa.loc[index]))
        for signal, margin in margins.items():
            best = margin.dropna().nlargest(QA_TOP)
            kept = self.top.setdefault(signal, [])
            kept += [(float(m), self._example(df.loc[i], qa.loc[i])) for i, m in best.items()]
            kept.sort(key=lambda item: -item[0])
            del kept[QA_TOP:]

    def _example(self, row, signals) -> dict:
        values = {k: (float(v) if np.isfinite(v) else None) for k, v in signals.items()}
        example = {"src_path": row["src_path"], "variant": row["variant"]}
        example.update({k: int(row[k]) for k in QA_EXTRA if k in row and row[k] == row[k]})
        example.update(status=row["status"], reasons=reasons(values, self.thresholds), signals=values)
        return example

    def report(self) -> dict:
        return {
            "rows": self.rows,
            "thresholds": dict(vars(self.thresholds)),
            "signals": {k: _distribution(np.concatenate(v)) for k, v in self.values.items()},
            "failing": {"count": self.failing, "share": self.failing / self.rows if self.rows else 0.0,
                        "by_check": {k: v for k, v in _counts(self.by_check).items() if v}},
            "failing_examples": self.failing_examples,
            "top": {signal: [example | {"margin": margin} for margin, example in kept] for signal, kept in self.top.items()},
        }


def _counts(counter: Counter) -> dict:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def inspect_output(out_dir: Path, examples: int = 10, thresholds: QAThresholds | None = None) -> dict:
    """A report (plain dict, JSON-ready) of the manifest under `out_dir`. A manifest with the
    qa_ columns also gets a "qa" section: each signal's distribution over the rendered rows,
    the rows failing `thresholds` (default: QAThresholds()) with examples, and per signal the
    QA_TOP rows nearest to or furthest past its threshold ("margin" > 0: past it)."""
    layout = OutputLayout(out_dir)
    files = sorted(layout.manifest.glob("shard-*.parquet")) if layout.manifest.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no manifest shards in {layout.manifest} (run `maskgen generate` first)")
    plan = load_plan(layout)
    statuses, types, wears, variants = Counter(), Counter(), Counter(), Counter()
    rows_by_identity, failed_by_identity = Counter(), Counter()
    coverage, coverage_by_type, coverage_by_wear = [], {}, {}
    failures: list[dict] = []
    qa = _QAStats(thresholds or QAThresholds(), examples)
    rows = inputs = 0
    schema_version = None
    for path in files:
        pf = pq.ParquetFile(path)
        schema_version = schema_version or read_key(pf.schema_arrow.metadata, SCHEMA_VERSION_KEY, "?")
        names = pf.schema_arrow.names
        signals = [c for c in QA_SIGNALS if c in names]
        extra = [c for c in QA_EXTRA if c in names] if signals else []
        cols = [c for c in COLUMNS if c in names] + extra + signals
        df = pf.read(columns=cols).to_pandas()
        if signals:
            qa.add(df, signals)
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
    } | ({"qa": qa.report()} if qa.present else {})
