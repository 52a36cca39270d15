"""`maskgen trainset`: original and masked faces from runs into one labelled training manifest.

Only `ok` rows go in; everything left out is counted by reason. Labels are contiguous
integers over the identities' sorted names, saved beside the manifest; given an earlier
label file, existing identities keep their numbers and new ones are appended. Image paths are
stored relative to the manifest's folder (datasets.pairs.paths_for_manifest)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from maskgen.datasets.pairs import paths_for_manifest
from maskgen.datasets.runs import collect_images
from maskgen.files import write_atomic, write_parquet
from maskgen.pipeline.containers import assign_labels  # one label mapping: trainset's and the rec output's
from maskgen.schemas import NUM_CLASSES_KEY, PATHS_BASE_KEY, PATHS_FROM_MANIFEST, TRAINING_SCHEMA

# CASIA-WebFace identities that are also in LFW: drop them before testing on LFW.
LFW_OVERLAP = ("0166921", "1056413", "1193098")



class TrainsetError(ValueError):
    pass


@dataclass
class TrainsetOptions:
    masked_per_original: float | None = None  # masked images per original, per identity; None = all
    min_images: int = 1  # identities with fewer source images are left out
    exclude: frozenset[str] = frozenset()  # identities to leave out
    holdout: float = 0.0  # fraction of identities set aside (by identity) into <name>.holdout.parquet
    seed: int = 0
    previous_labels: dict[str, int] | None = None  # keep these identities' numbers


@dataclass
class TrainsetSummary:
    rows: Counter = field(default_factory=Counter)  # variant -> rows written
    identities: int = 0
    holdout_identities: int = 0
    holdout_rows: int = 0
    left_out: Counter = field(default_factory=Counter)  # reason -> rows
    num_classes: int = 0


def _seeded_order(values, seed: int, salt: str) -> np.ndarray:
    """A stable pseudo-random key per value (independent of row order and of other values)."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{seed}\0{salt}\0{v}".encode(), digest_size=8).digest(), "little") for v in values],
        dtype=np.uint64,
    )


def _balance(rows: pd.DataFrame, ratio: float, seed: int) -> tuple[pd.DataFrame, int]:
    """Per identity: all originals, and at most ratio x originals masked images (a seeded pick)."""
    rows = rows.assign(_key=_seeded_order(rows.path, seed, "balance")).sort_values(["identity", "_key"])
    masked = rows.variant == "masked"
    originals = rows[~masked].groupby("identity").size()
    allowed = (originals * ratio).round().astype(int)
    rank = rows[masked].groupby("identity").cumcount()
    keep_masked = rank < rows.loc[masked, "identity"].map(allowed).fillna(0)
    kept = pd.concat([rows[~masked], rows[masked][keep_masked.to_numpy()]]).drop(columns="_key")
    return kept, int((~keep_masked).sum())


def build_trainset(runs: list[Path], options: TrainsetOptions) -> tuple[pd.DataFrame, pd.DataFrame, dict, TrainsetSummary]:
    """(training rows, held-out rows, labels, summary)."""
    rows, left_out = collect_images(runs)
    summary = TrainsetSummary(left_out=left_out)
    excluded = rows.identity.isin(options.exclude)
    summary.left_out["excluded identity"] += int(excluded.sum())
    rows = rows[~excluded]
    sources = rows.groupby("identity").src_path.nunique()
    small = rows.identity.map(sources) < options.min_images
    summary.left_out[f"identity with < {options.min_images} images"] += int(small.sum())
    rows = rows[~small]
    if options.masked_per_original is not None:
        rows, dropped = _balance(rows, options.masked_per_original, options.seed)
        summary.left_out["masked beyond the ratio"] += dropped
    identities = sorted(rows.identity.unique())
    held = set()
    if options.holdout > 0:
        keys = _seeded_order(identities, options.seed, "holdout")
        n_held = int(round(len(identities) * options.holdout))
        held = {identities[i] for i in np.argsort(keys, kind="stable")[:n_held]}
    holdout = rows[rows.identity.isin(held)]
    rows = rows[~rows.identity.isin(held)]
    if rows.empty:
        raise TrainsetError("nothing left to train on: " + _reasons(summary.left_out))
    labels = assign_labels(list(rows.identity.unique()), options.previous_labels)
    rows = rows.assign(label=rows.identity.map(labels).astype("int32")).sort_values(["label", "path"])
    summary.rows = Counter(rows.variant.value_counts().to_dict())
    summary.identities = rows.identity.nunique()
    summary.holdout_identities, summary.holdout_rows = len(held), len(holdout)
    summary.num_classes = max(labels.values()) + 1
    return rows, holdout.sort_values(["identity", "path"]), labels, summary


def _reasons(counter: Counter) -> str:
    return ", ".join(f"{n} {why}" for why, n in counter.most_common() if n) or "no rows"


def labels_path(manifest: Path) -> Path:
    return manifest.with_name(manifest.stem + ".labels.json")


def write_trainset(rows: pd.DataFrame, holdout: pd.DataFrame, labels: dict, target: Path, num_classes: int) -> None:
    for frame, path in ((rows, target), (holdout, target.with_name(target.stem + ".holdout.parquet"))):
        if path != target and frame.empty:
            continue
        frame = frame.assign(label=frame.get("label", -1), path=paths_for_manifest(frame.path, path))
        table = pa.Table.from_pandas(frame, schema=TRAINING_SCHEMA, preserve_index=False)
        write_parquet(path, table.replace_schema_metadata({}), {NUM_CLASSES_KEY: num_classes,
                                                                 PATHS_BASE_KEY: PATHS_FROM_MANIFEST})
    write_atomic(labels_path(target), json.dumps(labels, indent=1).encode())


def read_exclusions(values: list[str]) -> frozenset[str]:
    """Identity names, comma lists, or files with one name a line; `lfw` = the LFW overlap."""
    names: set[str] = set()
    for value in values:
        if value == "lfw":
            names.update(LFW_OVERLAP)
        elif Path(value).is_file():
            names.update(line.strip() for line in Path(value).read_text().splitlines() if line.strip())
        else:
            names.update(v.strip() for v in value.split(",") if v.strip())
    return frozenset(names)
