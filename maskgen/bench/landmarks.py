"""ms per face of the 68-point landmarks: dlib's shape predictor against maskgen's batched
engine (the same model file, the same landmarks), on one CPU core.

    python -m maskgen.bench landmarks [--rounds 5] [--batches 1,32,128,512]

Faces: the 55 sample chips, mirrored and shifted a pixel to make distinct faces for larger
batches. Both engines run interleaved in each round (so load on the machine hits both);
the figure is the best round. Also reported: what a first run pays (parsing the .dat,
loading the parsed arrays from the cache, importing and loading the compiled kernel)."""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from maskgen.assets import sample_faces
from maskgen.bench._args import at_least, prog
from maskgen.bench.video import pin_to_one_core
from maskgen.faces.landmarks import ShapePredictor
from maskgen.faces.layouts import face_box
from maskgen.faces.models import model_path


def distinct_faces(n: int) -> list[np.ndarray]:
    """n grey chips: the sample chips, then mirrored, then shifted copies of those."""
    chips = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2GRAY) for p in sorted(sample_faces().rglob("*.jpg"))]
    faces, k = [], 0
    while len(faces) < n:
        shift, mirror = divmod(k // len(chips), 2)
        chip = chips[k % len(chips)]
        chip = chip[:, ::-1] if mirror else chip
        faces.append(np.ascontiguousarray(np.roll(chip, shift, axis=1)))
        k += 1
    return faces


def first_run() -> list[tuple[str, float]]:
    """Seconds of a fresh process's one-off costs (the .dat parse is what an empty cache costs)."""
    from maskgen.faces.shape_engine import ShapeEngine

    path = model_path("landmarks68")
    start = time.perf_counter()
    ShapeEngine.load(path, cache=False)
    parsed = time.perf_counter() - start
    ShapeEngine._loaded.clear()
    start = time.perf_counter()
    engine = ShapeEngine.load(path)
    cached = time.perf_counter() - start
    chip = distinct_faces(1)[0]
    start = time.perf_counter()
    engine.predict([chip], [face_box(chip.shape[1], chip.shape[0], "dlib")])
    kernel = time.perf_counter() - start
    return [("parse the .dat (no cache)", parsed), ("load the parsed arrays (cache)", cached),
            ("first predict (kernel from numba's cache, or compiled)", kernel)]


def per_face_ms(predictor: ShapePredictor, faces: list[np.ndarray], batch: int) -> float:
    box = face_box(faces[0].shape[1], faces[0].shape[0], "dlib")
    start = time.perf_counter()
    for i in range(0, len(faces), batch):
        chunk = faces[i : i + batch]
        predictor.predict(chunk, [box] * len(chunk))
    return (time.perf_counter() - start) * 1e3 / len(faces)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog("landmarks"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=at_least(1), default=5, help="interleaved rounds; the best is shown")
    parser.add_argument("--batches", default="1,32,128,512", help="batch sizes of the batched engine")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    pin_to_one_core()
    costs = first_run()
    path = model_path("landmarks68")
    dlib_engine, batched = ShapePredictor(path, "dlib"), ShapePredictor(path, "batched")
    faces = distinct_faces(max(512, *batches))
    box = face_box(faces[0].shape[1], faces[0].shape[0], "dlib")
    same = np.array_equal(dlib_engine.predict(faces, [box] * len(faces)), batched.predict(faces, [box] * len(faces)))
    best = {name: float("inf") for name in ["dlib", *(f"batched, batch {b}" for b in batches)]}
    for _ in range(args.rounds):
        best["dlib"] = min(best["dlib"], per_face_ms(dlib_engine, faces, 1))
        for b in batches:
            best[f"batched, batch {b}"] = min(best[f"batched, batch {b}"], per_face_ms(batched, faces, b))
    print(f"68-point landmarks on {len(faces)} distinct 150x150 faces, one core, best of {args.rounds} rounds")
    print(f"identical landmarks (dlib vs batched): {same}")
    for name, ms in best.items():
        print(f"  {name:<20} {ms:7.3f} ms/face   {best['dlib'] / ms:5.1f}x dlib")
    print("first run:")
    for what, seconds in costs:
        print(f"  {what:<55} {seconds:6.2f} s")
