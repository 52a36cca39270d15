"""A recogniser on a pairs file: read and check the pairs, embed every distinct image once,
run the LFW protocol per pair type (and over all pairs when there are several types), and
break each masked pair type down by mask type and by wear.

Relative image paths start from the pairs file's folder (datasets.pairs.resolve_manifest_paths).
Images that are missing or cannot be decoded stop the evaluation with a list of them, unless
`skip_missing`: then the pairs that use them are left out and the report says how many and which.
Dropping pairs silently would change the benchmark, so it is never the default."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maskgen.datasets.pairs import PairsError, resolve_manifest_paths
from maskgen.evaluation import metrics
from maskgen.evaluation.embedders import Embedder
from maskgen.evaluation.protocol import ProtocolError, ProtocolResult, lfw_protocol

REQUIRED_COLUMNS = ("fold", "same", "path_a", "path_b")
ALL_PAIRS = "all"
BREAKDOWNS = ("mask_type", "wear")  # per side: <name>_a, <name>_b; empty = unmasked
SHOWN_PROBLEMS = 3  # bad images named in an error message
MEAN_MODES = ("auto", "on", "off")
MIN_MEAN_IDENTITIES = 20  # auto: fewer identities in some training split -> no mean subtraction


class EvaluationError(ValueError):
    """Input the evaluation cannot use; the message says what and how to fix it."""


@dataclass
class Evaluation:
    report: dict  # JSON-ready: model, pairs, groups, breakdown, skipped, timing
    curves: dict[str, metrics.Roc]  # group -> ROC, for the plot
    scores: pd.DataFrame  # the evaluated pairs + score, threshold, accepted (per its pair type)
    timing: dict = field(default_factory=dict)


def read_pairs(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise EvaluationError(f"pairs file not found: {path}")
    if path.suffix == ".bin":
        return _bin_pairs(path)
    try:
        arrow = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise EvaluationError(f"{path} is not a Parquet pairs file ({' '.join(str(exc).split())[:160]})") from None
    table = arrow.to_pandas()
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise EvaluationError(f"{path} lacks column(s) {', '.join(missing)}: write pairs with `maskgen pairs`")
    if table.empty:
        raise EvaluationError(f"{path} holds no pairs")
    try:
        for column in ("path_a", "path_b"):
            table[column] = resolve_manifest_paths(table[column], path, arrow.schema.metadata)
    except PairsError as exc:
        raise EvaluationError(str(exc)) from None
    if "pair_type" not in table.columns:
        table["pair_type"] = "pairs"
    table["same"] = table["same"].astype(bool)
    return table.reset_index(drop=True)


def _bin_pairs(path: Path) -> pd.DataFrame:
    """An insightface verification .bin: its images extracted once (keyed by the file's
    content) into maskgen's cache folder, its pairs in insightface's 10 consecutive folds."""
    from maskgen.datasets.verification_bin import BinError, bin_digest, bin_pairs, read_bin
    from maskgen.files import cache_dir

    try:
        table = bin_pairs(read_bin(path), cache_dir() / "bins" / f"{path.stem}-{bin_digest(path)}")
    except (BinError, OSError) as exc:
        raise EvaluationError(str(exc) if isinstance(exc, BinError) else f"{path}: {exc.strerror or exc}") from None
    return table.reset_index(drop=True)


def missing_files(paths: list[str]) -> dict[str, str]:
    return {p: "no such file" for p in paths if not Path(p).is_file()}


def describe_problems(problems: dict[str, str], pairs_dropped: int | None = None) -> str:
    shown = "; ".join(f"{path}: {reason}" for path, reason in list(problems.items())[:SHOWN_PROBLEMS])
    more = f" and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    dropped = f", used by {pairs_dropped} pair(s)" if pairs_dropped is not None else ""
    return f"{len(problems)} image(s) missing or unreadable{dropped}: {shown}{more}"


def drop_bad_pairs(pairs: pd.DataFrame, problems: dict[str, str], skip_missing: bool) -> pd.DataFrame:
    if not problems:
        return pairs
    bad = pairs.path_a.isin(problems.keys()) | pairs.path_b.isin(problems.keys())
    if not skip_missing:
        raise EvaluationError(describe_problems(problems, int(bad.sum())) + " (--skip-missing evaluates the other pairs)")
    if bad.all():
        raise EvaluationError(describe_problems(problems) + ": no pair is left to evaluate")
    return pairs[~bad].reset_index(drop=True)


def embed_pairs(pairs: pd.DataFrame, embedder: Embedder, skip_missing: bool, on_start=None, on_batch=None):
    """(pairs kept, features of path_a, features of path_b, {bad image: reason}, images embedded)."""
    problems = missing_files(sorted(set(pairs.path_a) | set(pairs.path_b)))
    pairs = drop_bad_pairs(pairs, problems, skip_missing)  # refuse before minutes of embedding
    paths = sorted(set(pairs.path_a) | set(pairs.path_b))
    if on_start:
        on_start(len(paths))
    features, failed = embedder.embed(paths, on_batch)
    problems.update(failed)
    pairs = drop_bad_pairs(pairs, failed, skip_missing)
    row = {path: i for i, path in enumerate(paths)}
    return pairs, features[pairs.path_a.map(row)], features[pairs.path_b.map(row)], problems, len(paths)


def fewest_training_identities(pairs: pd.DataFrame) -> int | None:
    """The fewest distinct identities that the training folds of any test fold hold."""
    if "identity_a" not in pairs.columns or "identity_b" not in pairs.columns:
        return None
    return min(len(set(train.identity_a) | set(train.identity_b))
               for train in (pairs[pairs.fold != k] for k in pairs.fold.unique()))


def mean_subtraction(mode: str, pairs: pd.DataFrame) -> tuple[bool, str]:
    """(subtract the training folds' mean?, why) for one group of pairs."""
    if mode not in MEAN_MODES:
        raise EvaluationError(f"mean subtraction {mode!r}: choose from {', '.join(MEAN_MODES)}")
    if mode != "auto":
        return mode == "on", f"{mode} (asked for)"
    fewest = fewest_training_identities(pairs)
    if fewest is None or fewest >= MIN_MEAN_IDENTITIES:
        return True, "on (LFW protocol)"
    return False, (f"off: some training folds hold only {fewest} identities (auto needs >= {MIN_MEAN_IDENTITIES}); "
                   "their mean would stand for those people, not for faces in general")


def group_summary(name: str, same: np.ndarray, result: ProtocolResult) -> tuple[dict, metrics.Roc]:
    curve = metrics.roc(result.scores, same)
    eer, eer_threshold = metrics.equal_error_rate(curve)
    summary = {
        "group": name, "pairs": len(same), "same": int(same.sum()), "different": int((~same).sum()),
        "folds": len(result.fold_ids), "accuracy": result.accuracy, "accuracy_std": result.accuracy_std,
        "fold_accuracy": result.fold_accuracies.tolist(),
        "threshold": float(result.fold_thresholds.mean()), "threshold_std": float(result.fold_thresholds.std()),
        "fold_threshold": result.fold_thresholds.tolist(),
        "auc": metrics.area_under(curve), "eer": eer, "eer_threshold": eer_threshold,
        "tar_at_far": [vars(metrics.tar_at_far(curve, far)) for far in metrics.FARS],
        **{k: v for k, v in metrics.rates_at(result.scores, same, result.thresholds).items() if k != "accuracy"},
    }
    return summary, curve


def subgroup_values(pairs: pd.DataFrame, column: str) -> pd.Series:
    """Per pair, the set of non-empty values of <column>_a / <column>_b."""
    a, b = pairs[f"{column}_a"].fillna(""), pairs[f"{column}_b"].fillna("")
    return pd.Series([{x, y} - {""} for x, y in zip(a, b)], index=pairs.index)


def breakdown(pair_type: str, pairs: pd.DataFrame, scores: np.ndarray, thresholds: np.ndarray) -> list[dict]:
    """Per mask type and per wear: the pair type's own scores and fold thresholds on the
    pairs where either image has that value (a masked-masked pair with two types is in both)."""
    rows = []
    for column in BREAKDOWNS:
        if f"{column}_a" not in pairs.columns or f"{column}_b" not in pairs.columns:
            continue
        values = subgroup_values(pairs, column)
        for value in sorted(set().union(*values)):
            member = values.map(lambda found, v=value: v in found).to_numpy()
            same = pairs.same.to_numpy()[member]
            row = {"pair_type": pair_type, "by": column, "value": value, "pairs": int(member.sum()),
                   "same": int(same.sum()), "different": int((~same).sum()),
                   **metrics.rates_at(scores[member], same, thresholds[member]), "auc": None, "eer": None}
            if metrics.has_both_classes(same):
                curve = metrics.roc(scores[member], same)
                row["auc"], row["eer"] = metrics.area_under(curve), metrics.equal_error_rate(curve)[0]
            rows.append(row)
    return rows


def score_pairs(pairs: pd.DataFrame, features_a: np.ndarray, features_b: np.ndarray, mean_mode: str = "auto"):
    """(group summaries, breakdown rows, ROC per group, per-pair scores) for embedded pairs."""
    groups, rows, curves = [], [], {}
    scored = pairs.assign(score=np.nan, threshold=np.nan)
    pair_types = sorted(pairs.pair_type.unique())
    named = ([(ALL_PAIRS, np.ones(len(pairs), bool))] if len(pair_types) > 1 else []) + [
        (t, (pairs.pair_type == t).to_numpy()) for t in pair_types]
    for name, member in named:
        subset = pairs[member]
        same = subset.same.to_numpy()
        subtract, why = mean_subtraction(mean_mode, subset)
        try:
            result = lfw_protocol(features_a[member], features_b[member], same, subset.fold.to_numpy(), subtract)
        except ProtocolError as exc:
            raise EvaluationError(f"{name} pairs: {exc}") from None
        summary, curves[name] = group_summary(name, same, result)
        summary["mean_subtraction"] = why
        groups.append(summary)
        if name != ALL_PAIRS:
            scored.loc[member, "score"], scored.loc[member, "threshold"] = result.scores, result.thresholds
            rows += breakdown(name, subset, result.scores, result.thresholds)
    scored["accepted"] = scored.score >= scored.threshold
    return groups, rows, curves, scored


def evaluate_pairs(pairs_path: Path, embedder: Embedder, skip_missing: bool = False, mean_mode: str = "auto",
                   on_batch: Callable[[int], None] | None = None, on_start: Callable[[int], None] | None = None,
                   ) -> Evaluation:
    if mean_mode not in MEAN_MODES:  # before minutes of embedding
        raise EvaluationError(f"--mean {mean_mode!r}: choose from {', '.join(MEAN_MODES)}")
    pairs = read_pairs(pairs_path)
    total = len(pairs)
    start = time.perf_counter()
    pairs, features_a, features_b, problems, images = embed_pairs(pairs, embedder, skip_missing, on_start, on_batch)
    embedded = time.perf_counter()
    groups, rows, curves, scored = score_pairs(pairs, features_a, features_b, mean_mode)
    timing = {"images": images, "pairs": len(pairs), "embedding_s": embedded - start,
              "protocol_s": time.perf_counter() - embedded}
    timing["pairs_per_s"] = len(pairs) / max(time.perf_counter() - start, 1e-9)
    report = {
        "model": embedder.info(),
        "pairs": {"file": str(pairs_path), "total": total, "evaluated": len(pairs),
                  "types": {t: int(n) for t, n in pairs.pair_type.value_counts().sort_index().items()}},
        "protocol": "LFW: features concat(f(x), f(flip x)); per fold, the other folds' mean feature subtracted "
                    "(unless noted), L2-normalised, cosine; threshold = best accuracy on the other folds",
        "groups": groups,
        "breakdown": rows,
        "skipped": {"pairs": total - len(pairs), "images": problems},
        "timing": timing,
    }
    return Evaluation(report, curves, scored, timing)
