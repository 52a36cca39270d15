"""Where a job's output files go: loose files under images/ (as always), or one container per
shard: a `.rec` (joined into insightface's train.rec when the run completes), a WebDataset
`.tar`, or the bytes inside the shard's Parquet manifest.

A job hands a sink each written image with its rows (`put`); a container sink writes under
temporary names and `commit` renames them into place before the shard's manifest is written,
so a shard's container exists exactly when its manifest does (resume redoes both or neither).
`written()`: the files a sink wrote, which the shard syncs to disk before its done marker.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import uuid
from pathlib import Path, PurePosixPath

import pyarrow as pa

from maskgen.files import write_atomic
from maskgen.recordio import Header, RecordWriter, pack

OUTPUT_FORMATS = ("files", "rec", "webdataset", "parquet")
IMAGE_COLUMN, OCCLUSION_COLUMN = "image", "occlusion"  # the parquet format's byte columns
LOCATION_SEP = "#"  # out_path of a stored image: "<container, relative to OUT>#<key>"


class Sink:
    """What every sink does unless it says otherwise: the manifest's schema as it is, nothing
    to commit or abort, no files of its own."""

    def schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def written(self) -> list:
        return []

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass


def open_sink(output_format: str, root: Path, images: Path, rec_base: Path, wds_tar: Path) -> Sink:
    """The sink of a run (or of one of its shards) under `root`, by format: files under
    `images`, a .rec pair at `rec_base`, a WebDataset tar at `wds_tar`, or the manifest's
    byte columns."""
    if output_format == "rec":
        return RecShardSink(rec_base, root)
    if output_format == "webdataset":
        return TarShardSink(wds_tar, root)
    if output_format == "parquet":
        return ParquetSink()
    return FilesSink(images)


class FilesSink(Sink):
    """Each file written atomically under `root`, at its relative path."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.paths: list[str] = []

    def put(self, rows: list[dict], payload: dict[str, bytes]) -> None:
        """All of a put's files or none: an image whose occlusion cannot be written (a name
        too long, say) is removed again, so that no file is left that no ok row names."""
        done = []
        try:
            for rel, data in payload.items():
                path = os.path.join(self.root, rel)
                write_atomic(path, data)
                done.append(path)
        except OSError:
            for path in done:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        self.paths += done

    def written(self) -> list[str]:
        return self.paths


def as_sink(out_root):
    """A job's `out_root`: a sink already, or a folder (files, as `maskgen mask` writes them)."""
    return out_root if hasattr(out_root, "put") else FilesSink(out_root)


def _split(rows: list[dict], payload: dict[str, bytes]) -> tuple[str, bytes, bytes | None]:
    """(image's rel, image bytes, occlusion bytes or None) of one put."""
    mask_rel = rows[0].get("mask_path") or ""
    image_rel = next(rel for rel in payload if rel != mask_rel)
    return image_rel, payload[image_rel], payload.get(mask_rel) if mask_rel else None


class RecShardSink(Sink):
    """A shard's images in `<base>.rec` and occlusion masks in `<base>.mask.rec`, record k of
    each the shard's k-th image (IRHeader label 0: the join gives the labels)."""

    def __init__(self, base: Path, out_root: Path):
        self.base, self.out_root = Path(base), Path(out_root)
        self.images = RecordWriter(self.base.with_suffix(".rec"))
        self.masks = RecordWriter(self.base.with_suffix(".mask.rec"))
        self.count = 0

    def put(self, rows: list[dict], payload: dict[str, bytes]) -> None:
        _, image, mask = _split(rows, payload)
        key = self.count
        self.images.write(key, pack(Header(0, 0.0, key), image))
        if mask is not None:
            self.masks.write(key, pack(Header(0, 0.0, key), mask))
        self.count += 1
        where = self.base.relative_to(self.out_root).as_posix()
        for row in rows:
            row["out_path"] = f"{where}.rec{LOCATION_SEP}{key}"
            row["mask_path"] = f"{where}.mask.rec{LOCATION_SEP}{key}" if mask is not None else ""

    def commit(self) -> None:
        self.masks.commit()
        self.images.commit()

    def written(self) -> list[Path]:
        return [p for p in (self.base.with_suffix(".rec"), self.base.with_suffix(".mask.rec")) if p.exists()]

    def abort(self) -> None:
        self.images.abort()
        self.masks.abort()


def sample_key(image_rel: str) -> str:
    """A WebDataset key: the path without its suffix, dots made underscores (webdataset
    splits a member's name at the first dot of its base name)."""
    path = PurePosixPath(image_rel)
    return str(path.with_name(path.stem.replace(".", "_")))


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} in a manifest row")


class TarShardSink(Sink):
    """A shard's samples in one WebDataset tar: KEY.<ext> (the image), KEY.mask.png (the
    occlusion), KEY.json (the manifest row; a list of rows for a photo with several faces).
    Members carry no time stamp or owner: the same run gives the same bytes."""

    def __init__(self, path: Path, out_root: Path):
        self.path, self.out_root = Path(path), Path(out_root)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # as files.py names temps
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.PAX_FORMAT)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def put(self, rows: list[dict], payload: dict[str, bytes]) -> None:
        image_rel, image, mask = _split(rows, payload)
        key = sample_key(image_rel)
        where = self.path.relative_to(self.out_root).as_posix()
        for row in rows:
            row["out_path"] = f"{where}{LOCATION_SEP}{key}"
            row["mask_path"] = f"{where}{LOCATION_SEP}{key}" if mask is not None else ""
        self._add(key + PurePosixPath(image_rel).suffix.lower(), image)
        if mask is not None:
            self._add(key + ".mask.png", mask)
        record = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
        self._add(key + ".json", json.dumps(record[0] if len(record) == 1 else record, default=_jsonable).encode())

    def commit(self) -> None:
        self.tar.close()
        os.replace(self.tmp, self.path)

    def written(self) -> list[Path]:
        return [self.path]

    def abort(self) -> None:
        self.tar.close()
        self.tmp.unlink(missing_ok=True)


class ParquetSink(Sink):
    """The image and occlusion bytes in the manifest rows themselves (columns `image`,
    `occlusion`; a photo with several faces: on its first face's row)."""

    def put(self, rows: list[dict], payload: dict[str, bytes]) -> None:
        _, image, mask = _split(rows, payload)
        rows[0][IMAGE_COLUMN], rows[0][OCCLUSION_COLUMN] = image, mask

    def schema(self, schema: pa.Schema) -> pa.Schema:
        return schema.append(pa.field(IMAGE_COLUMN, pa.binary())).append(pa.field(OCCLUSION_COLUMN, pa.binary()))


def check_format(name: str) -> str:
    if name not in OUTPUT_FORMATS:
        raise ValueError(f"--output-format: choose from {', '.join(OUTPUT_FORMATS)}, not {name!r}")
    return name
