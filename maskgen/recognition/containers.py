"""Training images from containers instead of loose files: an insightface folder (`train.rec`
+ `train.idx`), WebDataset tar shards, or a Parquet manifest with the image bytes inside.

Each becomes a `data.Manifest` whose `store` reads a row's bytes by key. Stores are picklable
and open their files lazily in whichever process reads (each DataLoader worker its own).
Labels: a `.rec`'s own (its image records' labels); WebDataset and Parquet rows carry an
identity, numbered as `maskgen trainset` numbers them (contiguous over the sorted names),
or a Parquet `label` column when there is one. Only `ok` rows with an image are taken.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from maskgen.pipeline.containers import REC_MANIFEST, assign_labels
from maskgen.recordio import FaceRec, RecordError, is_face_rec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm")


class RecStore:
    def __init__(self, folder: Path):
        self.rec = FaceRec(folder)

    def read(self, key: int) -> bytes:
        return self.rec.reader.read(key)[1]


class TarStore:
    """Members of tar files by (file, data offset, size): one pread each."""

    def __init__(self, files: list[str], file_of: np.ndarray, offsets: np.ndarray, sizes: np.ndarray):
        self.files, self.file_of, self.offsets, self.sizes = files, file_of, offsets, sizes
        self._fds: dict[int, int] = {}
        self._pid = -1

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_fds", "_pid")}

    def __setstate__(self, state):
        self.__dict__.update(state, _fds={}, _pid=-1)

    def read(self, key: int) -> bytes:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        index = int(self.file_of[key])
        if index not in self._fds:
            self._fds[index] = os.open(self.files[index], os.O_RDONLY)
        return os.pread(self._fds[index], int(self.sizes[key]), int(self.offsets[key]))


class ParquetStore:
    """The `image` column of Parquet files, loaded whole per file on first use in each
    process (so each loader worker holds the images it has read: fine up to a few GB; use
    rec or webdataset beyond)."""

    def __init__(self, files: list[str], file_of: np.ndarray, rows: np.ndarray):
        self.files, self.file_of, self.rows = files, file_of, rows
        self._columns: dict[int, object] = {}

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_columns"}

    def __setstate__(self, state):
        self.__dict__.update(state, _columns={})

    def read(self, key: int) -> bytes:
        index = int(self.file_of[key])
        if index not in self._columns:
            self._columns[index] = pq.read_table(self.files[index], columns=["image"]).column("image").combine_chunks()
        return self._columns[index][int(self.rows[key])].as_py()


def read_container(path: Path):
    """A Manifest of the container at `path`, or None when it is a plain training manifest."""
    if is_face_rec(path):
        return read_rec(path)
    tars = tar_files(path)
    if tars:
        return read_webdataset(tars)
    files = _parquet_files(path)
    if files and "image" in pq.read_schema(files[0]).names:
        return read_parquet_bytes(files)
    return None


def _manifest(paths, labels, num_classes, masked, sources, store, keys):
    from maskgen.recognition.data import Manifest, ManifestError

    if not len(labels):
        raise ManifestError("no ok images in the container")
    return Manifest(np.array(paths), np.asarray(labels, np.int64), int(num_classes), np.asarray(masked, bool),
                    np.array(sources), store, np.asarray(keys, np.int64))


def read_rec(folder: Path):
    """Every image record whose header reads (an unreadable one cannot be labelled: it is left
    out); variant and source photo from the rec manifest beside it, if any. A record whose
    image does not decode is skipped by the loader and reported with its batch, as a file is."""
    from maskgen.recognition.data import ManifestError

    try:
        store = RecStore(folder)
        labelled = [(int(k), _label_or_none(store.rec, int(k))) for k in store.rec.image_keys()]
        declared = store.rec.num_classes()
    except RecordError as exc:
        raise ManifestError(str(exc)) from None
    keys = [k for k, label in labelled if label is not None]  # a record without a readable header has no label
    labels = [label for _, label in labelled if label is not None]
    masked, sources = _rec_rows(Path(folder), keys)
    num_classes = max(declared or 0, max(labels, default=-1) + 1)
    paths = [f"{folder}/train.rec#{k}".encode() for k in keys]
    return _manifest(paths, labels, num_classes, masked, sources or paths, store, keys)


def _label_or_none(rec: FaceRec, key: int) -> int | None:
    try:
        return rec.label(key)
    except RecordError:
        return None


def _rec_rows(folder: Path, keys: list[int]) -> tuple[list[bool], list[bytes] | None]:
    beside = folder / REC_MANIFEST
    if not beside.is_file():
        return [False] * len(keys), None
    table = pq.read_table(beside, columns=["record", "variant", "identity", "src_path"]).to_pylist()
    by_record = {row["record"]: row for row in table if row["record"] >= 0}
    rows = [by_record.get(k, {}) for k in keys]
    return ([row.get("variant") == "masked" for row in rows],
            [f"{row.get('identity')}/{row.get('src_path')}".encode() for row in rows])


def tar_files(path: Path) -> list[Path]:
    if path.is_file() and path.suffix == ".tar":
        return [path]
    if path.is_dir():
        return sorted(p for p in path.glob("*.tar") if not p.name.startswith("."))
    return []


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file() and path.suffix == ".parquet":
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
    return []


def read_webdataset(tars: list[Path]):
    """Samples with an image member and a KEY.json whose status is ok (a photo with several
    faces: its first face's row)."""
    files, file_of, offsets, sizes, identities, masked, sources, paths = [], [], [], [], [], [], [], []
    for index, tar_path in enumerate(tars):
        files.append(str(tar_path))
        with tarfile.open(tar_path) as tar:
            samples: dict[str, dict] = {}
            for member in tar:
                key, _, ext = member.name.partition(".")
                sample = samples.setdefault(key, {})
                if "." + ext in IMAGE_SUFFIXES:
                    sample["image"] = member
                elif ext == "json":
                    sample["row"] = json.loads(tar.extractfile(member).read())
            for key, sample in samples.items():
                row = sample.get("row")
                row = row[0] if isinstance(row, list) else row
                if "image" not in sample or not row or row.get("status", "ok") != "ok":
                    continue
                file_of.append(index)
                offsets.append(sample["image"].offset_data)
                sizes.append(sample["image"].size)
                identities.append(str(row.get("identity", key.split("/", 1)[0])))
                masked.append(row.get("variant") == "masked")
                sources.append(f"{identities[-1]}/{row.get('src_path', key)}".encode())
                paths.append(f"{tar_path}#{key}".encode())
    labels_of = assign_labels(identities)
    store = TarStore(files, np.array(file_of, np.int32), np.array(offsets, np.int64), np.array(sizes, np.int64))
    return _manifest(paths, [labels_of[i] for i in identities], len(labels_of), masked, sources, store, range(len(paths)))


def read_parquet_bytes(files: list[Path]):
    """Rows whose `image` is not null (and whose status, if any, is ok)."""
    names, file_of, rows, identities, labels, masked, sources, paths = [], [], [], [], [], [], [], []
    for index, file in enumerate(files):
        names.append(str(file))
        schema = pq.read_schema(file)
        wanted = [c for c in ("identity", "label", "variant", "src_path", "status", "out_path") if c in schema.names]
        table = pq.read_table(file, columns=wanted)
        present = pq.read_table(file, columns=["image"]).column("image").is_valid().to_pylist()
        for row_index, (row, has_image) in enumerate(zip(table.to_pylist(), present)):
            if not has_image or row.get("status", "ok") != "ok":
                continue
            file_of.append(index)
            rows.append(row_index)
            identities.append(str(row.get("identity", "")))
            labels.append(row.get("label"))
            masked.append(row.get("variant") == "masked")
            sources.append(f"{identities[-1]}/{row.get('src_path')}".encode())
            paths.append(f"{file}#{row.get('out_path') or row_index}".encode())
    if labels and all(label is not None for label in labels):
        num_classes = max(labels) + 1
    else:
        labels_of = assign_labels(identities)
        labels, num_classes = [labels_of[i] for i in identities], len(labels_of)
    store = ParquetStore(names, np.array(file_of, np.int32), np.array(rows, np.int64))
    return _manifest(paths, labels, num_classes, masked, sources, store, range(len(paths)))
