"""Frames/s of `maskgen video` at 640x480 with one face, on one CPU core.

    python -m maskgen.bench video [--frames 100] [--save masked.mp4]

The clip is synthetic and self-contained: a sample face chip from assets/ moving and
scaling over a textured background. Reports the tracking + masking loop alone (frames in
memory) for several --detect-every settings, and the whole command (decode, mask, encode).
Rates are frames per CPU-second of this process, pinned to one core: other load on the
machine does not distort them (wall-clock rates are shown alongside).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from maskgen.assets import sample_faces
from maskgen.bench._args import at_least, prog
from maskgen.faces.landmarks import Landmarker
from maskgen.masks.options import MaskOptions
from maskgen.video.demo import mask_video
from maskgen.video.masker import VideoMasker
from maskgen.video.tracking import TrackerConfig

WIDTH, HEIGHT, FPS = 640, 480, 25.0


def pin_to_one_core() -> int:
    """Run this process on a single CPU: its threads so far (BLAS, OpenCV pools started at
    import) and every thread started later."""
    cv2.setNumThreads(1)  # dlib's HOG detector and shape predictor are single-threaded already
    core = min(os.sched_getaffinity(0))
    for thread in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(thread), {core})
    return core


def synthetic_clip(frames: int, seed: int = 0) -> list[np.ndarray]:
    """One face chip gliding and zooming over a noisy gradient, like a webcam subject."""
    chip = cv2.imread(str(sorted(sample_faces().rglob("*.jpg"))[0]))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    background = np.dstack([60 + 0.2 * xx, 90 + 0.15 * yy, 120 + 0.05 * (xx + yy)])
    clip = []
    for i in range(frames):
        t = i / FPS
        size = int(170 + 30 * np.sin(2 * np.pi * t / 5))
        x = int(WIDTH / 2 - size / 2 + 150 * np.sin(2 * np.pi * t / 4))
        y = int(HEIGHT / 2 - size / 2 + 50 * np.sin(2 * np.pi * t / 3))
        frame = background + rng.normal(0, 3, background.shape)
        frame[y : y + size, x : x + size] = cv2.resize(chip, (size, size), interpolation=cv2.INTER_LINEAR)
        clip.append(np.clip(frame, 0, 255).astype(np.uint8))
    return clip


def loaded_landmarker(config: TrackerConfig, frame: np.ndarray) -> Landmarker:
    landmarker = Landmarker(detector=config.detector, upsample=config.upsample, engine=config.landmarker)
    landmarker.detect(frame)  # the detector loads on first use: keep that out of the timings
    return landmarker


def loop_fps(clip: list[np.ndarray], detect_every: int, repeats: int = 2) -> tuple[float, float, float]:
    """Best-of-`repeats` frames per CPU-second and per wall-second of tracking + masking,
    and the fraction of frames masked."""
    config = TrackerConfig(detect_every=detect_every)
    landmarker = loaded_landmarker(config, clip[0])
    cpu, wall, masked = 0.0, 0.0, 0
    for _ in range(repeats):
        masker = VideoMasker(FPS, MaskOptions(), 0, config, landmarker)
        cpu_start, wall_start, masked = time.process_time(), time.perf_counter(), 0
        for i, frame in enumerate(clip):
            masked += sum(bool(done.faces) for done in masker.push(frame, last=i == len(clip) - 1))
        cpu = max(cpu, len(clip) / (time.process_time() - cpu_start))
        wall = max(wall, len(clip) / (time.perf_counter() - wall_start))
    return cpu, wall, masked / len(clip)


def end_to_end_fps(clip: list[np.ndarray], save: Path | None) -> tuple[float, float]:
    """Frames per CPU-second and per wall-second of `mask_video` on the clip, as an MJPG file."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "clip.avi"
        writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
        for frame in clip:
            writer.write(frame)
        writer.release()
        landmarker = loaded_landmarker(TrackerConfig(), clip[0])
        cpu_start = time.process_time()
        summary = mask_video(source, save or Path(tmp) / "masked.mp4", side_by_side=save is not None,
                             landmarker=landmarker)
        cpu = time.process_time() - cpu_start
    return summary.frames / cpu, summary.frames / summary.seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog("video"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=at_least(1), default=100, help="frames in the synthetic clip, 25 fps (default: %(default)s)")
    parser.add_argument("--save", type=Path, help="also write the masked clip, side by side, here (.mp4/.avi)")
    args = parser.parse_args(argv)
    core = pin_to_one_core()
    clip = synthetic_clip(args.frames)
    print(f"{WIDTH}x{HEIGHT}, one face, {args.frames} frames, CPU core {core} only")
    for every in (1, 5, 10):
        cpu, wall, masked = loop_fps(clip, every)
        print(f"  track + mask, detect every {every:2d}:  {cpu:6.1f} frames/s  (wall {wall:6.1f}; {masked:.0%} of frames masked)")
    cpu, wall = end_to_end_fps(clip, args.save)
    print(f"  whole command, detect every  5:  {cpu:6.1f} frames/s  (wall {wall:6.1f}; decode MJPG, mask, encode mp4)")


if __name__ == "__main__":
    main()
