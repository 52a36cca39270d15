"""`maskgen mask`: a plain single-process loop over images or folders, no Ray.

Outputs mirror the inputs under the output folder; `manifest.parquet` holds a row per
(input, variant[, face]), failures included, and records the input root in its metadata."""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from maskgen.files import text_path, write_parquet
from maskgen.jobs import sinks
from maskgen.jobs.masking import ImageJob, JobConfig
from maskgen.jobs.protocol import BATCH_SIZE, process_safely
from maskgen.schemas import CONFIG_KEY, MANIFEST_SCHEMA, SOURCE_ROOT_KEY

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
    exclude = str(exclude.resolve()) if exclude else None
    found = FoundImages(root, [])
    skip = len(os.path.join(str(root), ""))  # a file's path relative to root starts here
    for path in paths:
        files = _walk(str(path), exclude) if path.is_dir() else [str(path)]  # a named pipe or device too: its row says why
        for file in files:
            suffix = _suffix(file)
            if file == str(path) or suffix in IMAGE_EXTENSIONS:
                found.images.append((Path(file), text_path(file[skip:].replace(os.sep, "/"))))
            else:
                found.skipped[suffix or "(none)"] += 1
    unique = {rel: (file, rel) for file, rel in found.images}  # a file named twice is taken once
    found.images = [unique[rel] for rel in sorted(unique)]
    return found


def _walk(folder: str, exclude: str | None) -> Iterator[str]:
    """Every file under folder, sorted, hidden files and folders left out. Links to folders
    are followed (a tree assembled from links is common), each real folder walked once: a
    link back up the tree ends there. (Strings, not Paths: a Path's parsing cost more than
    the walk, on a tree of half a million images.)"""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        info = os.stat(dirpath)
        if (info.st_dev, info.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and os.path.join(dirpath, d) != exclude)
        yield from (os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))


def _suffix(file: str) -> str:
    """Path(file).suffix, lower case."""
    suffix = os.path.splitext(file)[1]
    return "" if suffix == "." else suffix.lower()


def mask_images(
    found: FoundImages,
    out_dir: Path,
    config: JobConfig,
    on_image: Callable[[list[dict]], None] | None = None,
    job: ImageJob | None = None,
) -> list[dict]:
    """Mask every found image into out_dir with `job` (default: a new ImageJob(config));
    write the manifest last; return the rows. `config.output_format` other than files: the
    images go into one container (REC_SHARD + .rec / .mask.rec, to be joined by
    pipeline.containers.join_shards; WDS_SHARD; or the manifest's byte columns).
    Interrupted (Ctrl-C) with files as the output: the manifest holds the rows of the images
    done so far, and the files of the batch under way are removed, so that each file left has
    its row (then Interrupted is raised)."""
    job = job or ImageJob(config)
    gc.freeze()  # what exists now (imports, models) lives to the end: the collector stops rescanning it (~30 us an image)
    rows: list[dict] = []
    out_dir = Path(out_dir)
    sink = sinks.open_sink(config.output_format, out_dir, out_dir, out_dir / REC_SHARD, out_dir / WDS_SHARD)
    try:
        for start in range(0, len(found.images), BATCH_SIZE):
            batch = [(path, rel, None) for path, rel in found.images[start : start + BATCH_SIZE]]
            for image_rows in process_safely(job, batch, sink, config.variants, config.keep_original):
                rows += image_rows
                if on_image:
                    on_image(image_rows)
        sink.commit()
    except BaseException as exc:
        sink.abort()
        if isinstance(exc, KeyboardInterrupt) and config.output_format == "files":  # a container is gone with its abort
            _keep_what_is_done(rows, sink, out_dir, found.root, config)
            raise Interrupted(done=len({row["src_path"] for row in rows}), total=len(found.images)) from None
        raise
    write_manifest(rows, out_dir / MANIFEST_NAME, found.root, config, sink.schema(MANIFEST_SCHEMA))
    return rows


def _keep_what_is_done(rows: list[dict], sink, out_dir: Path, source_root: Path, config: JobConfig) -> None:
    """The manifest of the rows so far; the files that none of them names are removed."""
    named = {os.path.join(out_dir, row[key]) for row in rows for key in ("out_path", "mask_path") if row.get(key)}
    for path in set(sink.written()) - named:
        with contextlib.suppress(OSError):
            os.unlink(path)
    write_manifest(rows, out_dir / MANIFEST_NAME, source_root, config)


class Interrupted(KeyboardInterrupt):
    """mask_images was interrupted after `done` of `total` inputs, their rows in the manifest."""

    def __init__(self, done: int, total: int):
        super().__init__(f"interrupted after {done:,} of {total:,} images")
        self.done, self.total = done, total


REC_SHARD = "rec/shards/shard-00000"  # under OUT: `mask --output-format rec`'s one shard, before the join
WDS_SHARD = "wds/shard-000000.tar"


def write_manifest(rows: list[dict], path: Path, source_root: Path, config: JobConfig, schema=MANIFEST_SCHEMA) -> None:
    metadata = {SOURCE_ROOT_KEY: source_root, CONFIG_KEY: json.dumps(config.__dict__, default=str)}
    write_parquet(path, pa.Table.from_pylist(rows, schema=schema), metadata)
