"""Evaluation throughput (a benchmark, not a test):

1. pairs/s of the whole `evaluate` path (read pairs, embed each distinct image with its
   mirror, protocol, report) with a checkpoint (random weights: throughput does not depend
   on them; SphereFace, or dlib-resnet as a fine-tuned one would run) on the sample faces'
   pairs; embedding dominates;
2. the time beyond the embeddings for an LFW-size set: 6,000 pairs in 10 folds of 1024-d
   synthetic features (protocol per group, breakdowns, JSON/Markdown/PNG/Parquet written).

    python -m maskgen.bench evaluate [--model sphereface20] [--device cpu] [--skip-embedding]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from maskgen.bench._args import at_least, prog
from maskgen.evaluation.evaluate import Evaluation, evaluate_pairs, score_pairs
from maskgen.evaluation.report import write_report

MASK_TYPES = ("surgical", "n95", "kn95", "cloth", "respirator")
WEARS = ("proper", "nose", "chin")


def synthetic_pairs(pairs: int = 6000, folds: int = 10, dim: int = 1024, identities_per_fold: int = 300,
                    seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """LFW-shaped masked-unmasked pairs (half same, half different, identity-disjoint folds)
    with features = identity centre + noise; the masked side noisier."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((folds * identities_per_fold, dim)).astype(np.float32)
    fold = np.repeat(np.arange(folds), pairs // folds)
    same = np.tile(np.arange(pairs // folds) % 2 == 0, folds)
    first = fold * identities_per_fold + rng.integers(0, identities_per_fold, len(fold))
    offset = rng.integers(1, identities_per_fold, len(fold))  # another identity of the same fold
    second = np.where(same, first, fold * identities_per_fold + (first % identities_per_fold + offset) % identities_per_fold)
    features_a = centres[first] + 3.0 * rng.standard_normal(centres[first].shape, dtype=np.float32)
    features_b = centres[second] + 2.5 * rng.standard_normal(centres[second].shape, dtype=np.float32)
    table = pd.DataFrame({
        "fold": fold, "pair_type": "masked-unmasked", "same": same,
        "path_a": [f"{i}/a.jpg" for i in range(len(fold))], "path_b": [f"{i}/b.jpg" for i in range(len(fold))],
        "identity_a": first.astype(str), "identity_b": second.astype(str),
        "mask_type_a": rng.choice(MASK_TYPES, len(fold)), "mask_type_b": "",
        "wear_a": rng.choice(WEARS, len(fold)), "wear_b": "",
    })
    return table, features_a, features_b


def bench_protocol(pairs: int = 6000, folds: int = 10, dim: int = 1024) -> dict:
    """Seconds for the protocol + breakdowns, and for writing the report files."""
    table, features_a, features_b = synthetic_pairs(pairs, folds, dim)
    start = time.perf_counter()
    groups, rows, curves, scored = score_pairs(table, features_a, features_b)
    scored_s = time.perf_counter() - start
    report = {"model": {"model": "synthetic"}, "pairs": {"file": "(synthetic)", "total": pairs, "evaluated": pairs},
              "protocol": "LFW", "groups": groups, "breakdown": rows, "skipped": {"pairs": 0, "images": {}}}
    with tempfile.TemporaryDirectory(prefix="maskgen-bench-eval-") as tmp:
        start = time.perf_counter()
        write_report(Evaluation(report, curves, scored), Path(tmp))
        written_s = time.perf_counter() - start
    return {"pairs": pairs, "folds": folds, "dim": dim, "protocol_s": scored_s, "report_s": written_s,
            "accuracy": groups[0]["accuracy"]}


def bench_embedding(model: str = "sphereface20", device: str = "cpu", batch_size: int = 64) -> dict:
    """The whole evaluate path on the sample faces' pairs (1 masked variant per face)."""
    from maskgen.datasets.samples import build_sample_pairs
    from maskgen.evaluation.embedders import get_embedder
    from maskgen.recognition.embeddings import save_untrained_checkpoint

    with tempfile.TemporaryDirectory(prefix="maskgen-bench-eval-") as tmp:
        pairs = build_sample_pairs(Path(tmp))
        checkpoint = save_untrained_checkpoint(Path(tmp) / "checkpoint.pt", model)
        embedder = get_embedder(str(checkpoint), device, batch_size)
        embedder.embed([str(next(Path(tmp, "run").rglob("*.jpg")))])  # warm-up: first-call allocations
        start = time.perf_counter()
        evaluation = evaluate_pairs(pairs, embedder)
        total = time.perf_counter() - start
    timing = evaluation.timing
    return {"model": model, "device": embedder.info()["device"], "pairs": timing["pairs"], "images": timing["images"],
            "total_s": total, "embedding_s": timing["embedding_s"], "protocol_s": timing["protocol_s"],
            "pairs_per_s": timing["pairs"] / total, "images_per_s": timing["images"] / timing["embedding_s"]}


def main(argv: list[str] | None = None) -> None:
    """Evaluation throughput: pairs/s with a SphereFace checkpoint, and the protocol time on an LFW-size set."""
    parser = argparse.ArgumentParser(prog=prog("evaluate"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sphereface20",
                        help="checkpoint backbone for the embedding benchmark, random weights: sphereface4/10/20/36/64 "
                        "or dlib-resnet (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda (default: %(default)s)")
    parser.add_argument("--batch-size", type=at_least(1), default=64, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--pairs", type=at_least(20), default=6000,
                        help="synthetic pairs for the protocol timing (LFW: 6000; default: %(default)s)")
    parser.add_argument("--skip-embedding", action="store_true", help="only the protocol timing (no torch needed)")
    args = parser.parse_args(argv)
    console = Console()
    p = bench_protocol(args.pairs)
    console.print(f"protocol on {p['pairs']} synthetic pairs, {p['folds']} folds, {p['dim']}-d features: "
                  f"{p['protocol_s']:.2f} s, report files {p['report_s']:.2f} s (accuracy {100 * p['accuracy']:.2f}%)",
                  highlight=False)
    if args.skip_embedding:
        return
    e = bench_embedding(args.model, args.device, args.batch_size)
    console.print(f"evaluate with {e['model']} on {e['device']}: {e['pairs']} pairs over {e['images']} images in "
                  f"{e['total_s']:.1f} s = {e['pairs_per_s']:.1f} pairs/s; embedding {e['images_per_s']:.1f} images/s "
                  f"(each image + its mirror), protocol {e['protocol_s']:.2f} s. With no image shared between pairs "
                  f"(2 per pair) that is {e['images_per_s'] / 2:.1f} pairs/s.", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    main()
