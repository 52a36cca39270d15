"""`maskgen mask`: a plain single-process loop over images or folders, no Ray.

Outputs mirror the inputs under the output folder; `manifest.parquet` holds a row per
(input, variant[, face]), failures included, and records the input root in its metadata."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from maskgen.files import text_path, write_parquet
from maskgen.jobs.masking import ImageJob, JobConfig
from maskgen.jobs.protocol import BATCH_SIZE, process_safely
from maskgen.schemas import CONFIG_KEY, SOURCE_ROOT_KEY, to_table

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .dib .ppm .pgm .pbm .pnm .tif .tiff .webp .gif".split()
)
MANIFEST_NAME = "manifest.parquet"


@dataclass
class FoundImages:
    root: Path  # the folder every relative path starts from
    images: list[tuple[Path, str]]  # (absolute path, path relative to root, POSIX)
    skipped: Counter = field(default_factory=Counter)  # suffix -> files not taken as images


def find_images(paths: list[Path], exclude: Path | None = None) -> FoundImages:
    """Files and folders (walked recursively, sorted) -> images relative to their common root.
    A named file is always taken; in folders, files without an image suffix are counted.
    FileNotFoundError for a missing path, InputError for a file name that is not UTF-8."""
    paths = [Path(p).resolve() for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    root = Path(os.path.commonpath([p if p.is_dir() else p.parent for p in paths]))
    exclude = exclude.resolve() if exclude else None
    found = FoundImages(root, [])
    for path in paths:
        files = [path] if path.is_file() else _walk(path, exclude)
        for file in files:
            if file == path or file.suffix.lower() in IMAGE_EXTENSIONS:
                found.images.append((file, text_path(file.relative_to(root).as_posix())))
            else:
                found.skipped[file.suffix.lower() or "(none)"] += 1
    found.images = sorted(set(found.images), key=lambda item: item[1])
    return found


def _walk(folder: Path, exclude: Path | None) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and here / d != exclude)
        yield from (here / f for f in sorted(filenames) if not f.startswith("."))


def mask_images(
    found: FoundImages,
    out_dir: Path,
    config: JobConfig,
    on_image: Callable[[list[dict]], None] | None = None,
    job: ImageJob | None = None,
) -> list[dict]:
    """Mask every found image into out_dir with `job` (default: a new ImageJob(config));
    write the manifest last; return the rows."""
    job = job or ImageJob(config)
    rows: list[dict] = []
    for start in range(0, len(found.images), BATCH_SIZE):
        batch = [(path, rel, None) for path, rel in found.images[start : start + BATCH_SIZE]]
        for image_rows in process_safely(job, batch, out_dir, config.variants, config.keep_original):
            rows += image_rows
            if on_image:
                on_image(image_rows)
    write_manifest(rows, out_dir / MANIFEST_NAME, found.root, config)
    return rows


def write_manifest(rows: list[dict], path: Path, source_root: Path, config: JobConfig) -> None:
    metadata = {SOURCE_ROOT_KEY: source_root, CONFIG_KEY: json.dumps(config.__dict__, default=str)}
    write_parquet(path, to_table(rows), metadata)
