"""An evaluation written out: report.json (everything, machine-readable), report.md (tables
and the ROC plot), roc.png, scores.parquet (every evaluated pair with its score, threshold
and decision; image paths relative to its folder, as in every maskgen manifest); the CLI
prints the same tables with rich."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from maskgen.datasets.pairs import paths_for_manifest
from maskgen.evaluation.evaluate import ALL_PAIRS, Evaluation
from maskgen.evaluation.metrics import FARS, far_text
from maskgen.files import write_atomic, write_parquet
from maskgen.schemas import PATHS_BASE_KEY, PATHS_FROM_MANIFEST

JSON_NAME, MARKDOWN_NAME, ROC_NAME, SCORES_NAME = "report.json", "report.md", "roc.png", "scores.parquet"
BASELINE = "unmasked-unmasked"  # the breakdown's accuracy drop is measured against it
BY_TITLES = {"mask_type": "mask", "wear": "wear"}  # subset labels: "mask: cloth", "wear: nose"


def percent(value: float | None, digits: int = 1) -> str:
    """A rate in percent, without the sign: the column's header carries the unit."""
    return "–" if value is None else f"{100 * value:.{digits}f}"


def number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def accuracy_text(group: dict, digits: int = 2) -> str:
    return f"{100 * group['accuracy']:.{digits}f} ± {100 * group['accuracy_std']:.{digits}f}"


def tar_text(group: dict, far: float) -> str:
    entry = next(e for e in group["tar_at_far"] if e["far"] == far)
    return "n/a" if entry["tar"] is None else percent(entry["tar"])


def baseline_accuracy(report: dict) -> float | None:
    return next((g["accuracy"] for g in report["groups"] if g["group"] == BASELINE), None)


def drop_text(row: dict, baseline: float | None) -> str:
    return "–" if baseline is None else f"{100 * (row['accuracy'] - baseline):+.1f}"


def tar_header(far: float) -> str:
    return f"TAR % @ FAR {far_text(far)}"


# -- tables as rows of strings, shared by Markdown and rich ------------------------------------

GROUP_HEADER = ["pairs", "n", "accuracy %", "AUC", "EER %", *(tar_header(far) for far in FARS), "threshold"]


def group_rows(report: dict) -> list[list[str]]:
    return [[g["group"], str(g["pairs"]), accuracy_text(g), number(g["auc"], 4), percent(g["eer"]),
             *(tar_text(g, far) for far in FARS), number(g["threshold"])] for g in report["groups"]]


BREAKDOWN_HEADER = ["pairs", "subset", "n", "accuracy %", f"Δ vs {BASELINE} (pts)", "TAR %", "FAR %", "AUC"]
PAIR_TYPE_ORDER = (BASELINE, "masked-unmasked", "masked-masked")


def breakdown_rows(report: dict) -> list[list[str]]:
    """Per pair type: its protocol result ("all"), then each mask type and wear in it."""
    baseline = baseline_accuracy(report)
    groups = {g["group"]: g for g in report["groups"]}
    order = [t for t in PAIR_TYPE_ORDER if t in groups] + sorted(set(groups) - set(PAIR_TYPE_ORDER) - {ALL_PAIRS})
    rows = []
    for pair_type in order:
        g = groups[pair_type]
        rows.append([pair_type, "all", str(g["pairs"]), accuracy_text(g, 1),
                     "–" if pair_type == BASELINE else drop_text(g, baseline),
                     percent(g["tar"]), percent(g["far"]), number(g["auc"], 4)])
        rows += [[pair_type, f"{BY_TITLES[r['by']]}: {r['value']}", str(r["pairs"]), percent(r["accuracy"]),
                  drop_text(r, baseline), percent(r["tar"]), percent(r["far"]), number(r["auc"], 4)]
                 for r in report["breakdown"] if r["pair_type"] == pair_type]
    return rows


def notes(report: dict) -> list[str]:
    """One line per distinct remark, naming the groups it applies to."""
    remarks: dict[str, list[str]] = {}
    for g in report["groups"]:
        for entry in g["tar_at_far"]:
            if entry["tar"] is None:
                remarks.setdefault(f"TAR @ FAR {far_text(entry['far'])} not reported: {entry['note']}", []).append(g["group"])
        if not g["mean_subtraction"].startswith("on"):
            remarks.setdefault(f"mean subtraction {g['mean_subtraction']}", []).append(g["group"])
    found = [f"{', '.join(groups)}: {remark}" for remark, groups in remarks.items()]
    skipped = report["skipped"]
    if skipped["pairs"]:
        found.append(f"{skipped['pairs']} pair(s) left out for {len(skipped['images'])} missing or unreadable "
                     f"image(s) (listed in {JSON_NAME})")
    return found


def folds_text(report: dict) -> str:
    return "/".join(sorted({str(g["folds"]) for g in report["groups"]}))


# -- files ---------------------------------------------------------------------------------------


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def markdown(report: dict) -> str:
    model, pairs = report["model"], report["pairs"]
    parts = [
        f"# Verification report: {model['model']}",
        f"Pairs: `{pairs['file']}`: {pairs['evaluated']} of {pairs['total']} evaluated.  \n"
        f"Model: {model['model']} ({', '.join(f'{k}: {v}' for k, v in model.items() if k != 'model')}).  \n"
        f"Protocol: {report['protocol']}.",
        "## By pair type",
        f"Accuracy: mean ± std over {folds_text(report)} folds, each judged at the threshold chosen on the other "
        "folds; AUC, EER and TAR @ FAR on the pooled out-of-fold scores; threshold: the folds' mean (cosine).",
        markdown_table(GROUP_HEADER, group_rows(report)), f"![ROC]({ROC_NAME})",
    ]
    if report["breakdown"] or len(report["groups"]) > 1:
        parts += ["## By mask type and wear",
                  f"Each pair type's own scores and fold thresholds. `all`: the pair type's accuracy (mean ± std over "
                  "folds); a mask type or wear: the accuracy on the pairs where either image has it (pooled over "
                  f"folds; a masked–masked pair with two is counted under both). Δ: accuracy minus {BASELINE} "
                  "accuracy; TAR: same-identity pairs accepted; FAR: different-identity pairs accepted.",
                  markdown_table(BREAKDOWN_HEADER, breakdown_rows(report))]
    if notes(report):
        parts += ["## Notes", "\n".join(f"- {n}" for n in notes(report))]
    return "\n\n".join(parts) + "\n"


def roc_png(evaluation: Evaluation) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    smallest = 1.0
    for name, curve in evaluation.curves.items():
        shown = curve.fpr > 0  # a log axis cannot show FAR 0
        smallest = min(smallest, curve.fpr[shown].min(initial=1.0))
        auc = next(g["auc"] for g in evaluation.report["groups"] if g["group"] == name)
        ax.plot(curve.fpr[shown], curve.tpr[shown], lw=2 if name != ALL_PAIRS else 1,
                ls="--" if name == ALL_PAIRS else "-", label=f"{name} (AUC {auc:.4f})")
    ax.set_xscale("log")
    ax.set_xlim(max(smallest / 2, 1e-5), 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC: {evaluation.report['model']['model']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def json_ready(value):
    """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def scores_table(scores, target: Path) -> pa.Table:
    stored = {c: paths_for_manifest(scores[c], target) for c in ("path_a", "path_b") if c in scores}
    return pa.Table.from_pandas(scores.assign(**stored), preserve_index=False)


def write_report(evaluation: Evaluation, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {name: out_dir / name for name in (JSON_NAME, MARKDOWN_NAME, ROC_NAME, SCORES_NAME)}
    report = json_ready(evaluation.report)
    write_atomic(targets[JSON_NAME], (json.dumps(report, indent=2, allow_nan=False) + "\n").encode())
    write_atomic(targets[MARKDOWN_NAME], markdown(report).encode())
    write_atomic(targets[ROC_NAME], roc_png(evaluation))
    write_parquet(targets[SCORES_NAME], scores_table(evaluation.scores, targets[SCORES_NAME]),
                  {PATHS_BASE_KEY: PATHS_FROM_MANIFEST})
    return targets
