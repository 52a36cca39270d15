"""The built-in sample datasets, made from an aligned face tree (by default the bundled
sample faces) with the mask engine: a small training manifest (`maskgen train`'s smoke
config builds it when it is missing) and verification pairs. For smoke runs, tests and the
benchmarks; real data comes from `maskgen generate`, `trainset` and `pairs`."""

from __future__ import annotations

from pathlib import Path

from maskgen.assets import sample_faces
from maskgen.files import write_atomic, write_parquet
from maskgen.schemas import NUM_CLASSES_KEY, PATHS_BASE_KEY, PATHS_FROM_MANIFEST, TRAINING_SCHEMA

SAMPLE_FOLDS = 2  # the sample has 5 identities: identity-disjoint negatives allow 2 folds


def _jpeg(bgr) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def build_sample_manifest(manifest: str | Path, source: str | Path | None = None, masks_per_face: int = 1,
                          seed: int = 0, height: int = 112, width: int = 96) -> Path:
    """Write the manifest (relative paths, labels by sorted identity) and the images beside
    it as images/<identity>/<stem>[_maskN].jpg. Masks are drawn on the full chip (where the
    landmark predictor works) and then cropped like the original. Returns `manifest`."""
    import pyarrow as pa

    from maskgen.faces.landmarks import Landmarker
    from maskgen.faces.layouts import fit_to
    from maskgen.images import read_image
    from maskgen.masks.options import MaskOptions, variant_seed
    from maskgen.masks.render import render_mask

    source, manifest = Path(source or sample_faces()), Path(manifest)
    out_dir = manifest.parent
    identities = sorted(p.name for p in source.iterdir() if p.is_dir())
    landmarker, options = Landmarker(), MaskOptions.parse()
    rows = {"path": [], "label": [], "identity": [], "variant": []}

    def add(rel: str, bgr, label: int, identity: str, variant: str) -> None:
        write_atomic(out_dir / rel, _jpeg(fit_to(bgr, height, width)))
        for key, value in zip(rows, (rel, label, identity, variant)):
            rows[key].append(value)

    for label, identity in enumerate(identities):
        for image in sorted((source / identity).glob("*.jpg")):
            bgr = read_image(image).bgr
            add(f"images/{identity}/{image.stem}.jpg", bgr, label, identity, "original")
            points = landmarker.aligned(bgr).points
            for n in range(masks_per_face):
                spec = options.sample(variant_seed(seed, f"{identity}/{image.name}", n))
                masked = render_mask(bgr, points, spec).image
                add(f"images/{identity}/{image.stem}_mask{n}.jpg", masked, label, identity, "masked")

    schema = pa.schema([TRAINING_SCHEMA.field(name) for name in rows])
    write_parquet(manifest, pa.table(rows, schema=schema), {NUM_CLASSES_KEY: len(identities), PATHS_BASE_KEY: PATHS_FROM_MANIFEST})
    return manifest


def build_sample_pairs(out_dir: Path, source: Path | None = None, variants: int = 1, wear: str = "proper",
                       folds: int = SAMPLE_FOLDS, per_fold: int | None = None, seed: int = 0) -> Path:
    """Mask `source` into out_dir/run (as `maskgen mask --aligned --keep-original` would) and
    write out_dir/pairs.parquet (all three pair types, as `maskgen pairs` would)."""
    from maskgen.datasets.pairs import PAIR_TYPES, make_pairs, write_pairs
    from maskgen.datasets.runs import collect_images
    from maskgen.jobs.local import find_images, mask_images
    from maskgen.jobs.masking import JobConfig
    from maskgen.masks.options import MaskOptions

    run = Path(out_dir) / "run"
    mask = MaskOptions.parse(wear=wear).to_dict()
    config = JobConfig(aligned=True, variants=variants, keep_original=True, seed=seed, mask=mask)
    mask_images(find_images([Path(source or sample_faces())]), run, config)
    images, _ = collect_images([run])
    target = Path(out_dir) / "pairs.parquet"
    write_pairs(make_pairs(images, folds, per_fold, PAIR_TYPES, seed), target)
    return target
