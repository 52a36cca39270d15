"""`maskgen bench`: where the time goes per image, on one core.

Per stage (decode, landmarks, fit + render, qa, encode, write: the masked image and its
occlusion PNG, as ImageJob writes them, into tmpfs where there is one), run a batch at a time as ImageJob does,
on distinct faces made from the sample chips (each chip, mirrored and slightly turned:
the landmark step costs about twice as much on a new face as on one it has just seen), at
the chips' native 150x150 and as 112x96 SphereFace crops. Then end to end through
`maskgen mask DIR -o OUT --aligned` in a subprocess pinned to one core, start-up removed by
timing two folder sizes.

    python -m maskgen.bench masking [--images 550] [--rounds 3]     (also: maskgen bench)"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
from rich.console import Console
from rich.table import Table

from maskgen.assets import sample_faces
from maskgen.bench._args import at_least, memory_folder, prog
from maskgen.faces.align import align_face, five_points
from maskgen.faces.landmarks import Landmarker, to_gray
from maskgen.files import write_atomic
from maskgen.images import decode_image, encode_image, encode_mask
from maskgen.jobs.protocol import BATCH_SIZE
from maskgen.masks.options import MaskOptions, variant_seed
from maskgen.masks.quality import measure
from maskgen.masks.render import render_mask

TURNS = (-6, -3, 0, 3, 6)  # degrees: each chip and its mirror image, turned in the image plane
STAGES = ("decode", "landmarks", "fit + render", "qa", "encode", "write")  # qa: masks.quality.measure, every signal


def distinct_faces(size: str, landmarker: Landmarker) -> list[bytes]:
    """JPEGs of 10 distinct faces per sample chip, as 150x150 chips or 112x96 crops."""
    faces = []
    for path in sorted(sample_faces().rglob("*.jpg")):
        chip = cv2.imread(str(path))
        for image in (chip, chip[:, ::-1]):
            for turn in TURNS:
                centre = (image.shape[1] / 2, image.shape[0] / 2)
                turned = cv2.warpAffine(image, cv2.getRotationMatrix2D(centre, turn, 1.0), image.shape[1::-1],
                                        borderMode=cv2.BORDER_REFLECT)
                if size != "native":
                    turned, _ = align_face(turned, five_points(landmarker.aligned(turned).points), "sphereface")
                faces.append(encode_image(turned, "JPEG", 90))
    return faces


def stage_times(data: list[bytes], n: int, landmarker: Landmarker) -> dict[str, float]:
    """Milliseconds per image for each stage over n images (the faces, cycled), a batch of
    BATCH_SIZE at a time through each stage as ImageJob runs them."""
    options = MaskOptions()
    items = [data[i % len(data)] for i in range(n)]
    totals = dict.fromkeys(STAGES, 0.0)
    with tempfile.TemporaryDirectory(dir=memory_folder()) as out:
        for start in range(0, n, BATCH_SIZE):
            t0 = time.perf_counter()
            images = [decode_image(raw) for raw in items[start : start + BATCH_SIZE]]
            t1 = time.perf_counter()
            greys = [to_gray(image.bgr) for image in images]
            faces = landmarker.aligned_batch(greys)  # one call, as ImageJob
            t2 = time.perf_counter()
            rendered = [
                render_mask(image.bgr, face.points, options.sample(variant_seed(0, str(start + i))))
                for i, (image, face) in enumerate(zip(images, faces))
            ]
            t3 = time.perf_counter()
            for image, grey, face, done in zip(images, greys, faces, rendered):
                measure(face.points, done.occlusion, image.bgr.shape, grey)  # as ImageJob: the photo before its mask, grey
            t4 = time.perf_counter()
            payloads = [(encode_image(done.image, "JPEG", image.jpeg_quality), encode_mask(done.occlusion))
                        for image, done in zip(images, rendered)]
            t5 = time.perf_counter()
            for i, (jpeg, png) in enumerate(payloads, start):
                stem = os.path.join(out, f"id{i // 50:04d}", f"{i:06d}")
                write_atomic(stem + ".jpg", jpeg)
                write_atomic(stem + "_mask.png", png)
            t6 = time.perf_counter()
            for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                totals[key] += dt
    return {k: v / n * 1e3 for k, v in totals.items()}


def repeated_face_ms(raw: bytes, n: int, landmarker: Landmarker) -> float:
    """The landmark step on one face over and over: dlib's model then stays in the CPU cache."""
    gray = to_gray(decode_image(raw).bgr)
    start = time.perf_counter()
    for _ in range(n):
        landmarker.aligned(gray)
    return (time.perf_counter() - start) / n * 1e3


def _folder(root: Path, data: list[bytes], n: int) -> Path:
    """n images in identity folders of 50."""
    for i in range(n):
        path = root / f"id{i // 50:04d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[i % len(data)])
    return root


def cli_ms_per_image(data: list[bytes], n: int, rounds: int) -> float:
    """End to end through the CLI; (time(5n) - time(n/5)) / (5n - n/5) removes start-up
    (the start varies by ~0.1 s from run to run: over n images that alone moved the figure by
    0.2 ms). Each count's fastest of `rounds` runs, each into a fresh folder."""
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    maskgen = str(Path(sys.executable).with_name("maskgen"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}
    times = {}
    with tempfile.TemporaryDirectory(dir=memory_folder()) as tmp:
        small, big = n // 5, 5 * n
        for count in (small, big):
            src = _folder(Path(tmp) / f"in{count}", data, count)
            for r in range(rounds):
                start = time.perf_counter()
                out = Path(tmp) / f"out{count}-{r}"
                subprocess.run([*pin, maskgen, "mask", str(src), "-o", str(out), "--aligned", "-q"], check=True, env=env)
                times[count] = min(times.get(count, float("inf")), time.perf_counter() - start)
                shutil.rmtree(out)
    return (times[big] - times[small]) / (big - small) * 1e3


def run_bench(n: int, console: Console, rounds: int = 3) -> None:
    """Each figure is the fastest of `rounds` runs: other work on a shared machine only ever
    adds time (the landmark step, memory-bound, suffers most)."""
    cv2.setNumThreads(1)
    landmarker = Landmarker()
    columns: dict[str, dict[str, str]] = {}
    for size, label in (("native", "150x150 chips"), ("112x96", "112x96 crops")):
        data = distinct_faces(size, landmarker)
        stage_times(data, min(n, BATCH_SIZE), landmarker)  # warm-up: templates, patterns, caches, numba kernels
        runs = [stage_times(data, n, landmarker) for _ in range(rounds)]
        stages = {stage: min(run[stage] for run in runs) for stage in STAGES}
        total = sum(stages.values())
        cli = cli_ms_per_image(data, n, rounds)
        repeated = min(repeated_face_ms(data[0], n, landmarker) for _ in range(rounds))
        columns[label] = {
            **{stage: f"{ms:.3f}" for stage, ms in stages.items()},
            "sum of the stages": f"{total:.3f}",
            "  (images/s)": f"{1e3 / total:.0f}",
            "  without landmarks": f"{total - stages['landmarks']:.3f}",
            "CLI end to end": f"{cli:.3f}",
            "landmarks, one face repeated": f"{repeated:.3f}",
        }
    table = Table(title=f"maskgen bench: ms per image, one core ({n} distinct faces, best of {rounds})")
    table.add_column("ms per image")
    for label in columns:
        table.add_column(label, justify="right")
    for key in next(iter(columns.values())):
        table.add_row(key, *(column[key] for column in columns.values()))
    console.print(table)
    where = "in memory (/dev/shm)" if memory_folder() else "in the temp folder"
    console.print(f"[dim]CLI end to end: `maskgen mask DIR -o OUT --aligned` pinned to one core, files {where}, "
                  f"start-up removed (runs of {n // 5} and {5 * n} images); includes reading, writing files and the manifest. Landmarks on one face "
                  "repeated: dlib's model then stays in the CPU cache (a best case no real run sees). fit + render "
                  "and qa run compiled numba kernels: the warm-up round loads them (compiled once, ~20 s, then "
                  "loaded from numba's cache in well under a second a process: start-up, not in these figures). "
                  "write: both files of a face (image, occlusion PNG) through files.write_atomic.[/dim]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog("masking"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=at_least(200), default=550,
                        help="images per measurement (distinct faces made from the sample chips, cycled; at least 200)")
    parser.add_argument("--rounds", type=at_least(1), default=3, help="runs of each measurement; the fastest is shown")
    args = parser.parse_args(argv)
    run_bench(args.images, Console(), args.rounds)


if __name__ == "__main__":
    main()
