"""How jobs run over many inputs: the batch protocol every job (ImageJob, AlignJob) follows,
and `process_safely`, which no bug in a job can make raise. Light on imports: the driver
and every CLI command load it, the heavy job modules load only where images are processed."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from maskgen.errors import one_line
from maskgen.schemas import identity_of

INTERNAL_ERROR = "internal error:"  # how the error of a row for a bug (not a bad image) starts
BATCH_SIZE = 128  # inputs callers hand to process_batch at once (progress moves per batch)
Input = tuple[Path, str, "object | None"]  # (source, path relative to the input root, known landmarks 68x2)


def read_input(src) -> bytes:
    """An input's bytes: `src` is a path, or anything else with `read_bytes()` (a record of a
    .rec: maskgen.recordio.RecordRef). Its errors are OSErrors (RecordError is one)."""
    if isinstance(src, (str, os.PathLike)):
        return read_file(src)
    return src.read_bytes()


def read_file(path) -> bytes:
    """Path.read_bytes in plain os calls, the first read as large as fstat says the file is
    (half the cost of a file object's on a small image: this runs once per input). Only a
    regular file is read: a named pipe in a folder would block the run for good, and a
    device never ends (opened non-blocking, so that a pipe with no writer is refused at once)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a pipe, socket or device)", os.fspath(path))
        chunks, want = [], info.st_size + 1
        while chunk := os.read(fd, want):  # to the end, should the file have grown
            chunks.append(chunk)
            want = 1 << 20
        return b"".join(chunks)  # (one chunk: itself, not a copy)
    finally:
        os.close(fd)


def process_safely(job, inputs: list[Input], out_root: Path, n_masked: int, keep_original: bool) -> list[list[dict]]:
    """job.process_batch that never raises. Should the batch hit a bug (bad images are rows
    already), each input is retried alone, and only the culprit gets `internal error` rows:
    one bug never costs a run its other images or its manifest."""
    if not callable(getattr(job, "process_batch", None)):
        raise TypeError(f"{type(job).__name__} has no process_batch (subclass OneByOne for a per-image job)")
    try:
        return job.process_batch(inputs, out_root)
    except Exception:
        results = []
        for one in inputs:
            try:
                results += job.process_batch([one], out_root)
            except Exception as exc:
                results.append(bug_rows(one[1], n_masked, keep_original, exc))
        return results


def bug_rows(rel: str, n_masked: int, keep_original: bool, error: BaseException) -> list[dict]:
    """Rows for an input whose job raised: the input is still accounted for."""
    message = one_line(f"{INTERNAL_ERROR} {type(error).__name__}: {error}")
    variants = ([("original", -1)] if keep_original else []) + [("masked", i) for i in range(n_masked)]
    base = {"identity": identity_of(rel), "src_path": rel, "out_path": "", "mask_path": ""}
    return [
        {**base, "variant": variant, "variant_index": index, "face_index": 0, "status": "render_error", "error": message}
        for variant, index in variants
    ]


class OneByOne:
    """process_batch for jobs that gain nothing from batching: one input after another."""

    def process_batch(self, inputs: Iterable[Input], out_root: Path) -> list[list[dict]]:
        return [self.process(src, rel, out_root) for src, rel, _ in inputs]
