"""Inputs as a stream of sorted entries: an `<root>/<identity>/<image>` tree, an input list,
or an insightface record folder (`train.rec` + `train.idx`, see maskgen.recordio).

Nothing here holds the whole input in memory: the tree is walked one identity folder at a
time, and lists are read in batches. The order is fixed (see `walk_tree`) so that shards,
which are slices of this stream, are the same on every run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from maskgen.files import InputError, text_path  # noqa: F401 - InputError: raised here, defined with the file rules
from maskgen.recordio import REC_NAME, FaceRec, RecordError, RecordRef, is_face_rec, open_reader

LIST_SUFFIXES = (".parquet", ".csv", ".txt")
LANDMARK_VALUES = 136  # 68 (x, y) pairs, flattened


@dataclass(frozen=True)
class Entry:
    identity: str
    rel: str  # POSIX path relative to the input root; also where outputs go under images/
    size: int = -1  # bytes, -1 when unknown; only feeds the input fingerprint
    mtime_ns: int = -1
    landmarks: list[float] | None = None  # 136 floats, precomputed (input lists only)

    def fingerprint_line(self) -> bytes:
        return f"{self.identity}\0{self.rel}\0{self.size}\0{self.mtime_ns}\n".encode("utf-8", "surrogateescape")


@dataclass
class WalkReport:
    """What the walk skipped, so that nothing is dropped without a word."""

    hidden: int = 0
    empty_identities: int = 0


def _visible_sorted(path: Path, report: WalkReport) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        entries = [e for e in it]
    visible = [e for e in entries if not e.name.startswith(".")]
    report.hidden += len(entries) - len(visible)
    return visible


def _stat(entry: os.DirEntry) -> tuple[int, int]:
    try:
        st = entry.stat()  # follows symlinks: a tree of links fingerprints its targets
        return st.st_size, st.st_mtime_ns
    except OSError:  # a broken link: still an input, ImageJob turns it into a status row
        return -1, -1


def walk_tree(root: Path, report: WalkReport | None = None) -> Iterator[Entry]:
    """Every file of `<root>/<identity>/<image>`, sorted by its relative path.

    Identity folders are ordered by `name + "/"` and files by name, which makes the stream
    sorted by the full relative path string (so the manifest is sorted by `src_path`).
    Hidden names (".DS_Store", "._x") are skipped and counted. A file at the root or a
    folder inside an identity is an `InputError`: the layout is not guessed.
    """
    report = report if report is not None else WalkReport()
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"input folder not found: {root}")
    top = _visible_sorted(root, report)
    loose = [e.name for e in top if not e.is_dir()]
    if loose:
        raise InputError(
            f"loose file at the input root: {loose[0]!r} ({len(loose)} in all); expected "
            f"<root>/<identity>/<image>, or pass --input-list with an identity column"
        )
    for identity_dir in sorted(top, key=lambda e: e.name + "/"):
        files = _visible_sorted(Path(identity_dir.path), report)
        if not files:
            report.empty_identities += 1
        for f in sorted(files, key=lambda e: e.name):
            if f.is_dir():
                raise InputError(
                    f"input tree too deep: {identity_dir.name}/{f.name}/ is a folder inside identity "
                    f"{identity_dir.name!r}; expected <root>/<identity>/<image> (flatten it, or pass --input-list)"
                )
            size, mtime_ns = _stat(f)
            yield Entry(identity_dir.name, text_path(f"{identity_dir.name}/{f.name}"), size, mtime_ns)


def safe_relative(path: str, root: Path) -> str:
    """`path` (absolute or relative to `root`) as a clean POSIX path inside `root`, else InputError."""
    if not path or not path.strip():
        raise InputError("empty path in the input list")
    if os.path.isabs(path):
        absolute = os.path.normpath(path)
        root_abs = os.path.normpath(os.path.abspath(root))
        if os.path.commonpath([absolute, root_abs]) != root_abs:
            raise InputError(f"input path outside the input root {root_abs}: {path!r}")
        path = os.path.relpath(absolute, root_abs)
    parts = [p for p in PurePosixPath(path.replace(os.sep, "/")).parts if p != "."]
    if not parts or ".." in parts:
        raise InputError(f"input path escapes the input root: {path!r} ('..' is not allowed)")
    return "/".join(parts)


def _list_batches(list_path: Path, batch_rows: int = 4096) -> Iterator[list[dict]]:
    suffix = list_path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(list_path).iter_batches(batch_size=batch_rows):
            yield batch.to_pylist()
    elif suffix == ".csv":
        import pyarrow.csv as pacsv

        opts = pacsv.ConvertOptions(column_types={"path": "string", "identity": "string"})
        reader = pacsv.open_csv(list_path, convert_options=opts)
        for batch in reader:
            yield batch.to_pylist()
    elif suffix == ".txt":
        batch: list[dict] = []
        with open(list_path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line and not line.startswith("#"):
                    batch.append({"path": line})
                if len(batch) >= batch_rows:
                    yield batch
                    batch = []
        if batch:
            yield batch
    else:
        raise InputError(f"input list must end in one of {', '.join(LIST_SUFFIXES)}: {list_path}")


def _landmarks(value, where: str) -> list[float] | None:
    if value is None:
        return None
    flat = [float(v) for pair in value for v in (pair if isinstance(pair, (list, tuple)) else [pair])]
    if len(flat) != LANDMARK_VALUES:
        raise InputError(f"{where}: landmarks need 68 (x, y) pairs, got {len(flat)} values")
    return flat


def read_input_list(list_path: Path, root: Path) -> Iterator[Entry]:
    """Entries of an input list, in the list's own order (that order defines the shards).

    Columns: `path` (or `src_path`), relative to `root` or absolute inside it; optional
    `identity` (default: the path's first folder); optional `landmarks` (68x2 or 136 floats).
    A `.txt` list holds one path a line.
    """
    list_path = Path(list_path)
    if not list_path.is_file():
        raise InputError(f"input list not found: {list_path}")
    line = 0
    for batch in _list_batches(list_path):
        for record in batch:
            line += 1
            where = f"{list_path.name} row {line}"
            raw = record.get("path", record.get("src_path"))
            if raw is None:
                raise InputError(f"{where}: no 'path' column (columns: path, identity, landmarks)")
            rel = safe_relative(str(raw), root)
            identity = record.get("identity")
            if identity is None or str(identity) == "":
                if "/" not in rel:
                    raise InputError(f"{where}: no identity for {rel!r}; add an identity column or use <identity>/<image> paths")
                identity = rel.split("/", 1)[0]
            src = Path(root) / rel
            try:
                st = src.stat()
                size, mtime_ns = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime_ns = -1, -1
            yield Entry(str(identity), rel, size, mtime_ns, _landmarks(record.get("landmarks"), where))


# -- insightface record folders --------------------------------------------------------

IDENTITY_DIGITS = 7  # labels as zero-padded names: name order = label order (so trainset keeps the numbers)
KEY_DIGITS = 8
UNREADABLE_IDENTITY = "unreadable"  # a record whose header cannot be read: the job gives it a decode_error row


def record_rel(label: int, key: int) -> str:
    """The stable path a record stands for: `<label>/<record index>.jpg`, as in a tree."""
    identity = f"{label:0{IDENTITY_DIGITS}d}" if label >= 0 else UNREADABLE_IDENTITY
    return f"{identity}/{key:0{KEY_DIGITS}d}.jpg"


def record_key(rel: str) -> int:
    return int(PurePosixPath(rel).stem)


def read_face_rec(folder: Path) -> Iterator[Entry]:
    """Every image record of an insightface folder, in record order (one header read each).
    Its size and mtime in the fingerprint: the record's offset and the .rec's mtime."""
    try:
        rec = FaceRec(folder)
        mtime_ns = (Path(folder) / REC_NAME).stat().st_mtime_ns
        keys = rec.image_keys()
    except RecordError as exc:
        raise InputError(str(exc)) from None
    for key in keys:
        key = int(key)
        try:
            label, offset = rec.label(key), rec.reader.offset(key)
        except RecordError:
            label, offset = -1, -1
        rel = record_rel(label, key)
        yield Entry(rel.split("/", 1)[0], rel, offset, mtime_ns)


def input_entries(root: Path, input_list: Path | None, report: WalkReport) -> Iterator[Entry]:
    """The entries of a run: its input list, its record folder, or its tree."""
    if input_list:
        return read_input_list(input_list, root)
    if is_face_rec(root):
        return read_face_rec(root)
    if (Path(root) / REC_NAME).is_file():
        raise InputError(f"{Path(root) / REC_NAME} has no train.idx beside it: a record folder needs both")
    return walk_tree(root, report)


def input_source(root: Path):
    """rel -> what a job reads (`read_bytes()`): the file under `root`, or the record it names
    (the record folder's reader is opened once per process)."""
    root = Path(root)
    if is_face_rec(root):
        reader = open_reader(root / REC_NAME)
        return lambda rel: RecordRef(reader, record_key(rel))
    return lambda rel: root / rel
