"""A small training manifest from aligned face chips (by default the built-in sample faces):
each chip as a 96x112 SphereFace-shaped crop, plus masked copies made with the mask engine.
For smoke runs, tests and the benchmark; real training data comes from `maskgen trainset`."""

from __future__ import annotations

from pathlib import Path

import cv2
import pyarrow as pa
import pyarrow.parquet as pq

from maskgen.assets import sample_faces
from maskgen.images import read_image, write_atomic


def _jpeg(bgr) -> bytes:
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def build_sample_manifest(manifest: str | Path, source: str | Path | None = None, masks_per_face: int = 1,
                          seed: int = 0, height: int = 112, width: int = 96) -> Path:
    """Write the manifest (relative paths, labels by sorted identity) and the images beside
    it as images/<identity>/<stem>[_maskN].jpg. Masks are drawn on the full chip (where the
    landmark predictor works) and then cropped like the original. Returns `manifest`."""
    from maskgen.faces.landmarks import Landmarker
    from maskgen.masks.options import MaskOptions, variant_seed
    from maskgen.masks.render import render_mask
    from maskgen.recognition.data import fit_to

    source, manifest = Path(source or sample_faces()), Path(manifest)
    out_dir = manifest.parent
    identities = sorted(p.name for p in source.iterdir() if p.is_dir())
    landmarker, options = Landmarker(), MaskOptions.parse()
    rows = {"path": [], "label": [], "identity": [], "variant": []}

    def add(rel: str, bgr, label: int, identity: str, variant: str) -> None:
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, _jpeg(fit_to(bgr, height, width)))
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

    schema = pa.schema([("path", pa.string()), ("label", pa.int32()), ("identity", pa.string()), ("variant", pa.string())],
                       metadata={"maskgen.num_classes": str(len(identities))})
    tmp = manifest.with_name(manifest.name + ".tmp")
    pq.write_table(pa.table(rows, schema=schema), tmp)
    tmp.replace(manifest)
    return manifest
