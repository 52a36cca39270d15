"""Every file maskgen writes goes through here (and file names it cannot store are refused here): written under a temporary name in the same
folder, then renamed, so a final name holds either the old content or all of the new one,
never a partial file. Atomic against crashes of this process; `sync_files` and
`write_atomic(durable=True)` also make it survive a crash of the machine (fsync)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# O_EXCL: never clobber another writer's temp; mode 0o666 & umask, unlike mkstemp's 0o600
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
_tmp_counter = itertools.count()


_TEMP_STEM_BYTES = 200  # of the final name in a temp's: with its ~35-byte tail it stays within NAME_MAX (255)


def _open_temp(path: str) -> tuple[int, str]:
    folder, name = os.path.split(path)
    stem = os.fsdecode(os.fsencode(name)[:_TEMP_STEM_BYTES])  # a name that fits must not fail for its temp's sake
    tmp = os.path.join(folder, f".{stem}.{os.getpid()}-{threading.get_ident()}-{next(_tmp_counter)}.tmp")
    try:
        return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
    except FileNotFoundError:
        os.makedirs(folder or ".", exist_ok=True)
        return os.open(tmp, _TEMP_FLAGS, 0o666), tmp


def write_atomic(path: str | Path, data: bytes, durable: bool = False) -> None:
    """Write `data` to `path` atomically; missing folders are made, the temp file is removed
    on any error. (Plain os calls: this runs twice per image, and file objects cost more.)
    `durable`: on disk when this returns (the data before the rename, then the folder's entry)."""
    path = os.fspath(path)
    try:
        fd, tmp = _open_temp(path)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            _fsync(os.path.dirname(path) or ".")
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from None
        raise


def _naming(exc: OSError, path: str) -> OSError:
    """The error of writing `path` as the caller's file, not as its temp (.NAME.PID-...tmp)."""
    if exc.errno and exc.filename and exc.filename != path and os.fspath(exc.filename).endswith(".tmp"):
        return OSError(exc.errno, exc.strerror, path)  # (the errno's own subclass: FileNotFoundError...)
    return exc


def sync_files(paths) -> None:
    """Put these files (data and names) on disk: one syncfs(2) per file system where Linux
    has it (one journal commit: ~8 ms for 140 small files here, against ~50 ms for an fsync
    each), else an fsync of each file and of each folder that holds one."""
    paths = [os.fspath(p) for p in paths]
    syncfs = _syncfs()
    if syncfs is not None:
        one_per_device = {os.stat(path).st_dev: path for path in paths}
        for path in one_per_device.values():
            fd = os.open(path, os.O_RDONLY)
            try:
                if syncfs(fd) != 0:
                    raise OSError(ctypes.get_errno(), f"syncfs failed: {os.strerror(ctypes.get_errno())}", path)
            finally:
                os.close(fd)
        return
    for path in [*paths, *sorted({os.path.dirname(path) or "." for path in paths})]:
        _fsync(path)


@functools.cache
def _syncfs():
    """libc's syncfs (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)


def _fsync(path: str) -> None:
    """fsync a file (its data) or a folder (its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_atomic(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write `path` through (torch.save, pyarrow), renamed into place when
    the block ends without an error and removed when it raises."""
    fd, tmp = _open_temp(os.fspath(path))
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_parquet(path: str | Path, table, metadata: dict[str, str] | None = None) -> None:
    """A pyarrow table as one Parquet file, atomically; `metadata` adds `maskgen.*` keys
    (maskgen.schemas) to what the table's schema carries."""
    import pyarrow.parquet as pq

    if metadata:
        merged = dict(table.schema.metadata or {}) | {k.encode(): str(v).encode() for k, v in metadata.items()}
        table = table.replace_schema_metadata(merged)
    with open_atomic(path) as file:
        pq.write_table(table, file)


class InputError(ValueError):
    """The input cannot be planned as given (layout, unsafe path, unreadable list)."""


def text_path(rel: str) -> str:
    """`rel` if it is valid text; else InputError. A file name that is not UTF-8 (os gives it
    as surrogates) cannot be written into a Parquet manifest, so it is refused up front,
    before any work is done, rather than crashing a batch half-way."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise InputError(f"file name is not valid UTF-8: '{shown}'; rename it (e.g. with convmv)") from None
    return rel


def cache_dir() -> Path:
    """Where parsed models are cached (a folder the user can write): $MASKGEN_CACHE, else $XDG_CACHE_HOME/maskgen, else ~/.cache/maskgen."""
    if os.environ.get("MASKGEN_CACHE"):
        return Path(os.environ["MASKGEN_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "maskgen"
    return Path.home() / ".cache" / "maskgen"
