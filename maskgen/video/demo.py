"""`maskgen video`: read a video with OpenCV, mask every face, write the result.

The output is written under a temporary name in the target folder and renamed when complete,
so the final name never holds a half-written video. Audio is not carried over (OpenCV reads
and writes video streams only)."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from maskgen.faces.landmarks import Landmarker
from maskgen.masks.options import MaskOptions
from maskgen.video.masker import MaskedFrame, VideoMasker
from maskgen.video.tracking import TrackerConfig

# Output extension -> FourCC of a codec OpenCV's own builds can always write.
WRITERS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
DEFAULT_FPS = 25.0  # when the container does not say


class VideoError(Exception):
    """A video that cannot be read or written; str(e) is a one-line message for users."""


@dataclass
class VideoSource:
    path: Path
    capture: cv2.VideoCapture
    first: np.ndarray  # the first frame, read to prove the file decodes
    fps: float
    frame_count: int | None  # from the container: an estimate, None when unknown

    @property
    def size(self) -> tuple[int, int]:
        return self.first.shape[1], self.first.shape[0]

    def frames(self) -> Iterator[tuple[np.ndarray, bool]]:
        """(frame, is_last) in order, from the first frame; reads one frame ahead."""
        frame = self.first
        while frame is not None:
            ok, following = self.capture.read()
            following = following if ok else None
            yield frame, following is None
            frame = following

    def close(self) -> None:
        self.capture.release()


@dataclass(frozen=True)
class VideoSummary:
    frames: int
    announced: int | None  # the frame count the container gave (may be an estimate)
    size: tuple[int, int]  # width, height of the output
    fps: float
    tracks: int  # faces followed: one per person, unless one was lost for over 2 s
    frames_with_faces: int
    most_faces: int  # in one frame
    render_failures: int
    seconds: float


def open_video(path: str | Path) -> VideoSource:
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if not path.is_file():
        raise VideoError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise VideoError(f"{path}: permission denied")
    # FFmpeg's own log lines ("moov atom not found") would come before our one-line error.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when OpenCV first opens a file
    capture = cv2.VideoCapture(str(path))
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok or first is None:
        capture.release()
        raise VideoError(f"{path}: not a video OpenCV can decode (unreadable, empty or unsupported format)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS
    return VideoSource(path, capture, first, fps, count if count > 0 else None)


def check_output(path: str | Path, source: Path | None = None) -> Path:
    """The output path, if it can be written: a known extension, not the input itself."""
    path = Path(path)
    if path.suffix.lower() not in WRITERS:
        kind = f"{path.suffix} files" if path.suffix else "a name without an extension"
        raise VideoError(f"{path}: no video writer for {kind} (use one of {', '.join(WRITERS)})")
    if source is not None and path.resolve() == source.resolve():
        raise VideoError(f"{path}: the output would replace the input; choose another name")
    if path.is_dir():
        raise VideoError(f"{path}: is a folder")
    return path


def mask_video(
    source: VideoSource | str | Path,
    output: str | Path,
    options: MaskOptions = MaskOptions(),
    seed: int = 0,
    config: TrackerConfig = TrackerConfig(),
    side_by_side: bool = False,
    on_frame: Callable[[MaskedFrame], None] | None = None,
    landmarker: Landmarker | None = None,
) -> VideoSummary:
    """Mask every face of `source` into `output` (.mp4/.mov/.m4v: MPEG-4; .avi/.mkv: MJPG).
    Pass a `landmarker` (made with `config`'s detector and upsample) to reuse its models."""
    source = source if isinstance(source, VideoSource) else open_video(source)
    try:
        output = check_output(output, source.path)
        masker = VideoMasker(source.fps, options, seed, config, landmarker)
        width, height = source.size
        size = (2 * width if side_by_side else width, height)
        started, stats = time.perf_counter(), _Stats()
        with _atomic_writer(output, source.fps, size) as write:
            for index, (frame, last) in enumerate(source.frames()):
                if frame.shape[:2] != (height, width):
                    raise VideoError(f"{source.path}: frame {index} is {frame.shape[1]}x{frame.shape[0]}, "
                                     f"not {width}x{height} like the first")
                for done in masker.push(frame, last):
                    write(np.hstack([done.original, done.image]) if side_by_side else done.image)
                    stats.add(done)
                    if on_frame:
                        on_frame(done)
    finally:
        source.close()
    return VideoSummary(stats.frames, source.frame_count, size, source.fps, masker.tracker.tracks_started,
                        stats.with_faces, stats.most_faces, masker.render_failures, time.perf_counter() - started)


@dataclass
class _Stats:
    frames: int = 0
    with_faces: int = 0
    most_faces: int = 0

    def add(self, frame: MaskedFrame) -> None:
        self.frames += 1
        self.with_faces += bool(frame.faces)
        self.most_faces = max(self.most_faces, len(frame.faces))


@contextlib.contextmanager
def _atomic_writer(path: Path, fps: float, size: tuple[int, int]):
    """A frame-writing function; the video appears under `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder (os.replace stays atomic), same extension (it picks OpenCV's container).
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*WRITERS[path.suffix.lower()]), fps, size)
    try:
        if not writer.isOpened():
            raise VideoError(f"{path}: OpenCV cannot write this video here (no {path.suffix} writer, "
                             "or the folder is not writable)")
        yield writer.write
        writer.release()
        os.replace(partial, path)
    finally:
        writer.release()
        with contextlib.suppress(OSError):
            os.unlink(partial)
