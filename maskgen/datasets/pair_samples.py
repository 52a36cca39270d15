"""Pairs from an aligned face tree (by default the built-in sample faces) with generated
masks: the same steps as `maskgen mask --aligned --keep-original` then `maskgen pairs`, as
one call, for tests and the benchmark."""

from __future__ import annotations

from pathlib import Path

from maskgen.assets import sample_faces
from maskgen.datasets.pairs import PAIR_TYPES, make_pairs, write_pairs
from maskgen.datasets.runs import collect_images
from maskgen.jobs.local import find_images, mask_images
from maskgen.jobs.masking import JobConfig
from maskgen.masks.options import MaskOptions

SAMPLE_FOLDS = 2  # the sample has 5 identities: identity-disjoint negatives allow 2 folds


def build_sample_pairs(out_dir: Path, source: Path | None = None, variants: int = 1, wear: str = "proper",
                       folds: int = SAMPLE_FOLDS, per_fold: int | None = None, seed: int = 0) -> Path:
    """Mask `source` into out_dir/run and write out_dir/pairs.parquet (all three pair types)."""
    run = Path(out_dir) / "run"
    mask = MaskOptions.parse(wear=wear).to_dict()
    config = JobConfig(aligned=True, variants=variants, keep_original=True, seed=seed, mask=mask)
    mask_images(find_images([Path(source or sample_faces())]), run, config)
    images, _ = collect_images([run])
    target = Path(out_dir) / "pairs.parquet"
    write_pairs(make_pairs(images, folds, per_fold, PAIR_TYPES, seed), target)
    return target
