"""`maskgen bench`: where the time goes per image, on one core.

Per stage (decode, landmarks, fit + render, encode) on the sample faces at their native
150x150 and as 112x96 SphereFace crops, then end to end through `maskgen mask DIR -o OUT`
in a subprocess pinned to one core, with start-up removed by timing two folder sizes."""

from __future__ import annotations

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
from maskgen.faces.align import align_face, five_points
from maskgen.faces.landmarks import Landmarker
from maskgen.images import decode_image, encode_image, encode_mask
from maskgen.masks.options import MaskOptions, variant_seed
from maskgen.masks.render import render_mask


def _sample_bytes(size: str, landmarker: Landmarker) -> list[bytes]:
    files = sorted(sample_faces().rglob("*.jpg"))
    if size == "native":
        return [f.read_bytes() for f in files]
    crops = []
    for f in files:
        bgr = cv2.imread(str(f))
        crop, _ = align_face(bgr, five_points(landmarker.aligned(bgr).points), "sphereface")
        crops.append(encode_image(crop, "JPEG", 90))
    return crops


def stage_times(data: list[bytes], n: int, landmarker: Landmarker) -> dict[str, float]:
    """Milliseconds per image for each stage, over n images (the samples, repeated)."""
    options = MaskOptions()
    items = [data[i % len(data)] for i in range(n)]
    totals = dict.fromkeys(("decode", "landmarks", "fit + render", "encode"), 0.0)
    for i, raw in enumerate(items):
        t0 = time.perf_counter()
        image = decode_image(raw)
        t1 = time.perf_counter()
        face = landmarker.aligned(image.bgr)
        t2 = time.perf_counter()
        out = render_mask(image.bgr, face.points, options.sample(variant_seed(0, str(i))))
        t3 = time.perf_counter()
        encode_image(out.image, "JPEG", image.jpeg_quality)
        encode_mask(out.occlusion)
        t4 = time.perf_counter()
        for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[key] += dt
    return {k: v / n * 1e3 for k, v in totals.items()}


def _folder(root: Path, data: list[bytes], n: int) -> Path:
    """n images in identity folders of 50."""
    for i in range(n):
        path = root / f"id{i // 50:04d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[i % len(data)])
    return root


def cli_ms_per_image(data: list[bytes], n: int) -> float:
    """End to end through the CLI; (time(n) - time(n/5)) / (n - n/5) removes start-up."""
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    maskgen = str(Path(sys.executable).with_name("maskgen"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in (n // 5, n):
            src = _folder(Path(tmp) / f"in{count}", data, count)
            start = time.perf_counter()
            subprocess.run([*pin, maskgen, "mask", str(src), "-o", str(Path(tmp) / f"out{count}"), "--aligned", "-q"],
                           check=True, env=env)
            times[count] = time.perf_counter() - start
    return (times[n] - times[n // 5]) / (n - n // 5) * 1e3


def run_bench(n: int, console: Console) -> None:
    cv2.setNumThreads(1)
    landmarker = Landmarker()
    table = Table(title=f"maskgen bench: ms per image, one core ({n} images)")
    for col in ("input", "decode", "landmarks", "fit + render", "encode", "sum", "images/s", "CLI end to end"):
        table.add_column(col, justify="right")
    for size, label in (("native", "150x150 chips"), ("112x96", "112x96 crops")):
        data = _sample_bytes(size, landmarker)
        stage_times(data, min(n, 55), landmarker)  # warm-up: templates, patterns, caches
        stages = stage_times(data, n, landmarker)
        total = sum(stages.values())
        cli = cli_ms_per_image(data, n)
        table.add_row(label, *(f"{v:.3f}" for v in stages.values()), f"{total:.3f}", f"{1e3 / total:.0f}", f"{cli:.3f}")
    console.print(table)
    console.print("[dim]CLI end to end: `maskgen mask DIR -o OUT --aligned` pinned to one core, start-up removed; "
                  "includes reading, writing files and the manifest.[/dim]")
