"""An experiment's evaluations summed up: results.json, report.md and the training curves.

An experiment folder holds `eval/<condition>-seed<k>/report.json` (one `maskgen evaluate` per
trained model), `eval/<reference>/report.json` (a pretrained model on the same pairs) and
`train/<condition>-seed<k>/log.jsonl` (the trainer's log). results.json is

    {"conditions": {NAME: {PAIR_TYPE: {"mean": pct, "std": pct, "seeds": [pct, ...],
                                       "auc_mean": a, "auc_seeds": [a, ...]}}},
     "reference": {NAME: {PAIR_TYPE: {"mean": pct, "auc": a}}}}

accuracies in percent (each seed's is the mean over the test folds), std over seeds."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np

from maskgen.datasets.pairs import PAIR_TYPES
from maskgen.files import write_atomic

RESULTS, REPORT, CURVES = "results.json", "report.md", "curves.png"
_RUN = re.compile(r"(?P<condition>.+)-seed(?P<seed>\d+)")


class ExperimentError(ValueError):
    """The experiment folder holds nothing to report (one line, says what is missing)."""


def collect(folder: Path) -> dict:
    """results.json's content from the evaluations under folder/eval."""
    runs = sorted(p.parent for p in (Path(folder) / "eval").glob("*/report.json"))
    if not runs:
        raise ExperimentError(f"{folder}/eval holds no evaluate reports (eval/<condition>-seed<k>/report.json)")
    conditions: dict[str, dict[int, dict]] = {}
    reference: dict[str, dict] = {}
    for run in runs:
        groups = {g["group"]: g for g in json.loads((run / "report.json").read_text())["groups"]}
        scores = {t: groups[t] for t in PAIR_TYPES if t in groups}
        match = _RUN.fullmatch(run.name)
        if match:
            conditions.setdefault(match["condition"], {})[int(match["seed"])] = scores
        else:
            reference[run.name] = {t: {"mean": 100 * g["accuracy"], "auc": g["auc"]} for t, g in scores.items()}
    return {"conditions": {name: _over_seeds(seeds) for name, seeds in conditions.items()}, "reference": reference}


def _over_seeds(seeds: dict[int, dict]) -> dict:
    out = {}
    for pair_type in PAIR_TYPES:
        found = [seeds[s][pair_type] for s in sorted(seeds) if pair_type in seeds[s]]
        if not found:
            continue
        accuracy = [100 * g["accuracy"] for g in found]
        auc = [g["auc"] for g in found]
        out[pair_type] = {"mean": float(np.mean(accuracy)), "std": float(np.std(accuracy)), "seeds": accuracy,
                          "auc_mean": float(np.mean(auc)), "auc_seeds": auc}
    return out


def markdown(results: dict, baseline: str = "no_masks") -> str:
    """The results table (accuracy mean ± std over seeds, AUC), and each condition's gain
    over `baseline` on every pair type."""
    lines = ["| model | " + " | ".join(PAIR_TYPES) + " |", "| --- |" + " --- |" * len(PAIR_TYPES)]
    for name, scores in results["conditions"].items():
        cells = [f"{s['mean']:.1f} ± {s['std']:.1f} (AUC {s['auc_mean']:.3f})" if (s := scores.get(t)) else "—" for t in PAIR_TYPES]
        lines.append(f"| {name} ({len(next(iter(scores.values()))['seeds'])} seeds) | " + " | ".join(cells) + " |")
    for name, scores in results["reference"].items():
        cells = [f"{s['mean']:.1f} (AUC {s['auc']:.3f})" if (s := scores.get(t)) else "—" for t in PAIR_TYPES]
        lines.append(f"| {name} (pretrained, reference) | " + " | ".join(cells) + " |")
    base = results["conditions"].get(baseline)
    if base:
        lines += ["", f"Change against `{baseline}` (accuracy points, mean over seeds):", ""]
        for name, scores in results["conditions"].items():
            if name != baseline:
                gains = [f"{t} {scores[t]['mean'] - base[t]['mean']:+.1f}" for t in PAIR_TYPES if t in scores and t in base]
                lines.append(f"- {name}: " + ", ".join(gains))
    return "\n".join(lines) + "\n"


def curves_png(folder: Path) -> bytes | None:
    """Training loss and accuracy (and validation accuracy, when logged) per step, one line
    per run of train/*/log.jsonl; None when there is no log."""
    logs = sorted((Path(folder) / "train").glob("*/log.jsonl"))
    if not logs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    conditions = sorted({_condition(log.parent.name) for log in logs})
    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(conditions)}  # one colour per condition
    labelled = set()
    for log in logs:
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        condition = _condition(log.parent.name)
        style = {"lw": 1, "color": colors[condition], "label": None if condition in labelled else condition}
        labelled.add(condition)
        steps = [r["step"] for r in records if "loss" in r]
        loss_ax.plot(steps, [r["loss"] for r in records if "loss" in r], **style)
        acc_ax.plot(steps, [r["acc"] for r in records if "loss" in r], **style)
        val = [(r["step"], r["val_acc"]) for r in records if r.get("val_acc") is not None]
        if val:
            acc_ax.plot(*zip(*val), lw=1, ls="--", color=colors[condition])
    loss_ax.set(xlabel="step", ylabel="loss", title="training loss", yscale="log")
    acc_ax.set(xlabel="step", ylabel="accuracy", title="accuracy (train; validation dashed)", ylim=(0, 1.02))
    acc_ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _condition(run: str) -> str:
    match = _RUN.fullmatch(run)
    return match["condition"] if match else run


def write_experiment_report(folder: Path, title: str = "Masked-face verification") -> dict[str, Path]:
    """results.json, report.md and curves.png in `folder`; -> their paths."""
    folder = Path(folder)
    results = collect(folder)
    written = {RESULTS: folder / RESULTS, REPORT: folder / REPORT}
    write_atomic(written[RESULTS], (json.dumps(results, indent=2) + "\n").encode())
    curves = curves_png(folder)
    body = f"# {title}\n\nAccuracy in % on the held-out identities' pairs (LFW protocol), mean ± std over seeds.\n\n"
    body += markdown(results)
    if curves is not None:
        written[CURVES] = folder / CURVES
        write_atomic(written[CURVES], curves)
        body += f"\n![training curves]({CURVES})\n"
    write_atomic(written[REPORT], body.encode())
    return written
