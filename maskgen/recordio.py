"""MXNet RecordIO in pure Python: the `train.rec` / `train.idx` / `property` of insightface's
face datasets (CASIA-WebFace as `faces_webface_112x112`, MS1M, Glint360K, WebFace42M), read
and written without mxnet.

The format, as dmlc-core's recordio.cc and mxnet's python/mxnet/recordio.py define it:

- a record on disk: uint32 magic 0xced7230a, uint32 lrecord = cflag << 29 | length, the
  data, zero padding to 4 bytes. A record whose data holds the magic at a 4-byte aligned
  offset is cut there into parts (cflag 1 first, 2 middle, 3 last; 0 = whole) and the magic
  dropped; the reader puts it back between the parts.
- `.idx`: one "key\\toffset\\n" line per record (the offset of its magic in the `.rec`).
- a record's data: an IRHeader, struct 'IfQQ' (flag, label, id, id2), then the payload;
  flag > 0: the label is an array of `flag` float32s stored before the payload (label 0).
- insightface's layout: record 0 is a header whose label (a, b) says images are records
  1..a-1 and identity records a..b-1; identity record a+j has label (start, end), the image
  records of class j; an image record's label is its class; `property` = "classes,112,112".

Every problem with the files is a `RecordError` (an OSError: the jobs turn it into a
`decode_error` row like any unreadable input) with a one-line message.
"""

from __future__ import annotations

import array
import os
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrecord
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2 (mxnet's 'IfQQ', little-endian on every machine it runs on)
IR_SIZE = _IR.size  # 24
MAX_LENGTH = (1 << 29) - 1  # 29 bits of length in lrecord
REC_NAME, IDX_NAME, PROPERTY_NAME = "train.rec", "train.idx", "property"


class RecordError(OSError):
    """A `.rec` / `.idx` that cannot be read as RecordIO; the message says where and why."""

    def __str__(self) -> str:  # OSError's str would prefix an errno
        return self.args[0] if self.args else "bad record"


@dataclass(frozen=True)
class Header:
    flag: int
    label: float | tuple[float, ...]  # a number, or `flag` float32s
    id: int
    id2: int = 0


def pack(header: Header, payload: bytes) -> bytes:
    """mxnet.recordio.pack: IRHeader (+ the label array when the label is a sequence) + payload."""
    if isinstance(header.label, (int, float)):
        return _IR.pack(0, float(header.label), header.id, header.id2) + payload
    labels = array.array("f", header.label)
    return _IR.pack(len(labels), 0.0, header.id, header.id2) + labels.tobytes() + payload


def unpack(record: bytes, where: str = "record") -> tuple[Header, bytes]:
    """mxnet.recordio.unpack: (header, payload); the label is a tuple when flag > 0."""
    if len(record) < IR_SIZE:
        raise RecordError(f"{where}: {len(record)} bytes, too short for a record header ({IR_SIZE})")
    flag, label, key, key2 = _IR.unpack_from(record)
    if flag == 0:
        return Header(0, label, key, key2), record[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if end > len(record):
        raise RecordError(f"{where}: header declares {flag} labels, more than the record holds")
    labels = array.array("f", record[IR_SIZE:end])
    return Header(flag, tuple(labels), key, key2), record[end:]


def frame(data: bytes) -> bytes:
    """`data` as it goes into a `.rec` (dmlc RecordIOWriter::WriteRecord)."""
    if len(data) > MAX_LENGTH:
        raise RecordError(f"a record of {len(data)} bytes: RecordIO holds at most {MAX_LENGTH}")
    parts, start = [], 0
    view = memoryview(data)
    found = data.find(_MAGIC_BYTES)
    while found != -1:
        if found % 4 == 0 and found + 4 <= len(data) - len(data) % 4:  # aligned, inside the 4-byte words
            parts.append((start, found))
            start = found + 4
        found = data.find(_MAGIC_BYTES, found + 1)
    out = bytearray()
    for i, (lo, hi) in enumerate(parts):
        out += _FRAME.pack(MAGIC, (1 if i == 0 else 2) << 29 | (hi - lo)) + view[lo:hi]
    length = len(data) - start
    out += _FRAME.pack(MAGIC, (3 if parts else 0) << 29 | length) + view[start:]
    out += b"\0" * (-length % 4)
    return bytes(out)


def read_framed(fd: int, offset: int, file_size: int, where: str) -> tuple[bytes, int]:
    """(the record's data, the offset after it) of the record at `offset` in the open `.rec`."""
    pieces, pos = [], offset
    while True:
        if pos + 8 > file_size:
            raise RecordError(f"{where}: truncated at byte {pos} (the .rec ends at {file_size})")
        magic, lrec = _FRAME.unpack(os.pread(fd, 8, pos))
        if magic != MAGIC:
            raise RecordError(f"{where}: no record at byte {pos} (bad magic {magic:#010x}; a corrupt .rec or a wrong .idx)")
        cflag, length = lrec >> 29, lrec & MAX_LENGTH
        padded = length + (-length % 4)
        if pos + 8 + padded > file_size:
            raise RecordError(f"{where}: truncated: {length} bytes at byte {pos + 8}, the .rec ends at {file_size}")
        pieces.append(os.pread(fd, length, pos + 8))
        pos += 8 + padded
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(pieces), pos
        if cflag not in (1, 2):
            raise RecordError(f"{where}: bad continuation flag {cflag} at byte {pos}")


def read_index(idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of a `.idx`, in file order, as int64 arrays (parsed in C: 42M lines in seconds)."""
    try:
        text = Path(idx_path).read_bytes()
    except FileNotFoundError:
        raise RecordError(f"index not found: {idx_path}") from None
    lines = text.count(b"\n") + (not text.endswith(b"\n") and bool(text))
    values = _parse_ints(text) if text else np.zeros(0, np.int64)
    if values.size % 2 or values.size // 2 != lines:
        raise RecordError(f"{idx_path}: not 'key<TAB>offset' lines (a damaged or foreign .idx)")
    pairs = values.reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _parse_ints(text: bytes) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (and stops) on text that is not numbers
        try:
            return np.fromstring(text.decode("ascii"), dtype=np.int64, sep=" ")
        except (DeprecationWarning, ValueError, UnicodeDecodeError):
            return np.zeros(1, np.int64)  # odd size: reported by read_index


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


class RecordReader:
    """Random access to an indexed `.rec` (mxnet.recordio.MXIndexedRecordIO, mode 'r').

    Picklable: it holds the paths and the index (16 bytes a record), and opens the file in
    whichever process reads."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise RecordError(f"record file not found: {self.rec_path}")
        self.size = self.rec_path.stat().st_size
        self.keys, offsets = read_index(self.idx_path)
        self._dense = bool(len(self.keys)) and np.array_equal(self.keys, np.arange(len(self.keys)))
        order = None if self._dense else np.argsort(self.keys, kind="stable")
        self._sorted_keys = None if order is None else self.keys[order]
        self._offsets = offsets if order is None else offsets[order]
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_fd", "_pid")}

    def __setstate__(self, state):
        self.__dict__.update(state, _fd=None, _pid=-1)

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), os.getpid()
        return self._fd

    def _slot(self, key: int) -> int | None:
        if self._dense:
            return key if 0 <= key < len(self.keys) else None
        slot = int(np.searchsorted(self._sorted_keys, key))
        return slot if slot < len(self._sorted_keys) and self._sorted_keys[slot] == key else None

    def __contains__(self, key: int) -> bool:
        return self._slot(key) is not None

    def offset(self, key: int) -> int:
        slot = self._slot(key)
        if slot is None:
            raise RecordError(f"{self.rec_path.name}: no record {key} in {self.idx_path.name}")
        return int(self._offsets[slot])

    def _where(self, key: int) -> str:
        return f"{self.rec_path.name} record {key}"

    def read_raw(self, key: int) -> bytes:
        """The record's data (IRHeader + payload), as MXIndexedRecordIO.read_idx returns it."""
        return read_framed(self._file(), self.offset(key), self.size, self._where(key))[0]

    def read(self, key: int) -> tuple[Header, bytes]:
        return unpack(self.read_raw(key), self._where(key))

    def header(self, key: int) -> Header:
        """Only the record's IRHeader (and a short label array): a few bytes read, not the image."""
        head = os.pread(self._file(), 8 + IR_SIZE + 32, self.offset(key))
        if len(head) >= 8 + IR_SIZE:
            magic, lrec = _FRAME.unpack_from(head)
            flag = _IR.unpack_from(head, 8)[0]
            need = IR_SIZE + 4 * flag
            if magic == MAGIC and lrec >> 29 == 0 and need <= min(lrec & MAX_LENGTH, len(head) - 8):
                return unpack(head[8 : 8 + need], self._where(key))[0]
        return self.read(key)[0]  # short, split, long label or bad: the full read says what is wrong

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


class RecordWriter:
    """Writes an indexed `.rec` (MXIndexedRecordIO, mode 'w') under temporary names, renamed
    into place by `commit` (`abort`, or an error inside a `with` block, removes them)."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_rec, self._tmp_idx = _temp_name(self.rec_path), _temp_name(self.idx_path)
        self._rec = open(self._tmp_rec, "w+b", buffering=1 << 20)
        self._idx = open(self._tmp_idx, "w", buffering=1 << 16)
        self.position = 0
        self.count = 0

    def write(self, key: int, data: bytes) -> int:
        """Append a record (IRHeader + payload, see `pack`); returns its offset."""
        offset = self.position
        framed = frame(data)
        self._rec.write(framed)
        self._idx.write(f"{key}\t{offset}\n")
        self.position += len(framed)
        self.count += 1
        return offset

    def rewrite(self, offset: int, data: bytes) -> None:
        """Replace the record at `offset` by one of the same framed size (a header filled in last)."""
        framed = frame(data)
        self._rec.flush()
        if os.pread(self._rec.fileno(), 8, offset)[4:] != framed[4:8]:
            raise ValueError("rewrite: the new record's size differs from the old one's")
        os.pwrite(self._rec.fileno(), framed, offset)

    def commit(self) -> None:
        self._rec.close()
        self._idx.close()
        os.replace(self._tmp_rec, self.rec_path)
        os.replace(self._tmp_idx, self.idx_path)

    def abort(self) -> None:
        for fh, tmp in ((self._rec, self._tmp_rec), (self._idx, self._tmp_idx)):
            fh.close()
            Path(tmp).unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.abort() if kind else self.commit()


# -- insightface's layout -----------------------------------------------------------------


def is_face_rec(folder: str | Path) -> bool:
    """A folder holding insightface's `train.rec` and `train.idx`."""
    folder = Path(folder)
    return folder.is_dir() and (folder / REC_NAME).is_file() and (folder / IDX_NAME).is_file()


class FaceRec:
    """An insightface dataset folder (`train.rec`, `train.idx`, optional `property`)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not is_face_rec(self.folder):
            raise RecordError(f"{self.folder}: no {REC_NAME} + {IDX_NAME} there")
        self.reader = RecordReader(self.folder / REC_NAME, self.folder / IDX_NAME)

    def image_keys(self) -> range | np.ndarray:
        """The image records: 1..a-1 after a header record (record 0, flag 2), else every key."""
        if 0 in self.reader:
            head = self.reader.header(0)
            if head.flag >= 2:
                return range(1, int(head.label[0]))
        return self.reader.keys

    def label(self, key: int) -> int:
        """An image record's class (its label, or the first of its label array); RecordError if unreadable."""
        header = self.reader.header(key)
        return int(header.label if header.flag == 0 else header.label[0])

    def num_classes(self) -> int | None:
        """From `property` ("classes,height,width"), else None."""
        prop = self.folder / PROPERTY_NAME
        if not prop.is_file():
            return None
        try:
            return int(prop.read_text().split(",")[0])
        except ValueError:
            raise RecordError(f"{prop}: expected 'classes,height,width', got {prop.read_text()[:40]!r}") from None


class RecordRef:
    """One record's image as an input for the jobs: `read_bytes()` like a Path's."""

    __slots__ = ("reader", "key")

    def __init__(self, reader: RecordReader, key: int):
        self.reader, self.key = reader, key

    def read_bytes(self) -> bytes:
        return self.reader.read(self.key)[1]

    def __repr__(self) -> str:
        return f"RecordRef({str(self.reader.rec_path)!r}, {self.key})"


_OPEN: dict[tuple[str, int, int], RecordReader] = {}


def open_reader(rec_path: str | Path) -> RecordReader:
    """One reader per (file, size, mtime) per process: a worker parses the `.idx` once."""
    rec_path = Path(rec_path)
    st = rec_path.stat()
    key = (str(rec_path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _OPEN:
        for old in [k for k in _OPEN if k[0] == key[0]]:
            _OPEN.pop(old).close()
        _OPEN[key] = RecordReader(rec_path)
    return _OPEN[key]


class FaceRecWriter:
    """Writes an insightface folder: the header record, the images (grouped by label,
    ascending), the identity records, then `property` (written last: the folder is complete)."""

    def __init__(self, folder: str | Path, size: tuple[int, int] = (112, 112)):
        self.folder, self.size = Path(folder), size
        self.out = RecordWriter(self.folder / REC_NAME, self.folder / IDX_NAME)
        self.out.write(0, pack(Header(2, (0.0, 0.0), 0), b""))  # placeholder, filled in by commit
        self.ranges: dict[int, list[int]] = {}  # label -> [first key, end key)
        self.next_key, self.last_label = 1, -1

    def add(self, label: int, payload: bytes) -> int:
        """Append one image of class `label`; returns its record index."""
        if label < self.last_label:
            raise ValueError(f"images must come grouped by label, ascending: {label} after {self.last_label}")
        key, self.last_label = self.next_key, label
        self.ranges.setdefault(label, [key, key])[1] = key + 1
        self.out.write(key, pack(Header(0, float(label), key), payload))
        self.next_key += 1
        return key

    def commit(self, num_classes: int | None = None) -> int:
        """Identity records for classes 0..C-1 (an empty range for a class without images),
        the header, rename, `property`. Returns the image count."""
        classes = num_classes if num_classes is not None else max(self.ranges, default=-1) + 1
        first_id, cursor = self.next_key, 1
        for label in range(classes):
            start, end = self.ranges.get(label, (cursor, cursor))
            cursor = end
            self.out.write(first_id + label, pack(Header(2, (float(start), float(end)), first_id + label), b""))
        self.out.rewrite(0, pack(Header(2, (float(first_id), float(first_id + classes)), 0), b""))
        self.out.commit()
        tmp = _temp_name(self.folder / PROPERTY_NAME)
        tmp.write_text(f"{classes},{self.size[1]},{self.size[0]}")
        os.replace(tmp, self.folder / PROPERTY_NAME)
        return first_id - 1

    def abort(self) -> None:
        self.out.abort()


def write_face_rec(folder: str | Path, images: Iterable[tuple[int, bytes]], num_classes: int | None = None,
                   size: tuple[int, int] = (112, 112)) -> int:
    """An insightface folder from (label, encoded image) pairs grouped by label; returns the image count."""
    writer = FaceRecWriter(folder, size)
    try:
        for label, payload in images:
            writer.add(label, payload)
    except BaseException:
        writer.abort()
        raise
    return writer.commit(num_classes)
