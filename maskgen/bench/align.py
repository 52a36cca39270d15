"""Benchmark of `maskgen align` (not a test): aligned faces per second on one core, for the
wild sample photos and for 250x250 LFW-style photos, per detector setting, with the share of
the time spent detecting. The default photos are the package's own (assets/faces/wild).

    python -m maskgen.bench align [--photos FOLDER] [--limit N] [--setting hog0 --setting cnn0 ...]"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from maskgen.assets import assets_dir
from maskgen.bench._args import at_least, fail, prog
from maskgen.faces.landmarks import Landmarker
from maskgen.jobs.aligning import AlignConfig, AlignJob

# key: (label, detector, upsample)
SETTINGS = {"hog0": ("hog, upsample 0", "hog", 0), "hog1": ("hog, upsample 1", "hog", 1),
            "cnn0": ("cnn (mmod), upsample 0", "cnn", 0)}


def default_photos() -> Path:
    """The wild sample photos the package ships (assets/faces/wild)."""
    return assets_dir() / "faces" / "wild"


def lfw_style(photos: list[Path], folder: Path) -> list[Path]:
    """250x250 crops centred on each detected face, the face ~45% of the width, as in LFW."""
    landmarker, out = Landmarker(upsample=1), []
    for photo in photos:
        image = cv2.imread(str(photo))
        for k, face in enumerate(landmarker.detect(image)):
            cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
            half = (face.box[2] - face.box[0]) * 1.1
            corners = np.float32([[cx - half, cy - half], [cx + half, cy - half], [cx - half, cy + half]])
            m = cv2.getAffineTransform(corners, np.float32([[0, 0], [250, 0], [0, 250]]))
            path = folder / f"{photo.stem}_{k}.jpg"
            cv2.imwrite(str(path), cv2.warpAffine(image, m, (250, 250), borderMode=cv2.BORDER_REPLICATE))
            out.append(path)
    return out


def measure(job: AlignJob, photos: list[Path], out: Path) -> tuple[float, float, float, int]:
    """(faces/s, ms per photo detecting, ms per photo in all, faces) over the photos, one core."""
    faces, detect_s = 0, 0.0
    if photos:
        job.landmarker.detect(cv2.imread(str(photos[0])))  # the detector loads on first use: keep that out
    for photo in photos:
        t0 = time.process_time()
        job.landmarker.detect(cv2.imread(str(photo)))
        detect_s += time.process_time() - t0
    start = time.process_time()
    for photo in photos:
        faces += sum(r["status"] == "ok" for r in job.process(photo, f"p/{photo.name}", out))
    total = time.process_time() - start
    n = len(photos)
    return (faces / total if total else 0.0), detect_s / n * 1e3, total / n * 1e3, faces


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog("align"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None,
                        help="folder of wild photos, *.jpg (default: the package's sample photos, assets/faces/wild)")
    parser.add_argument("--limit", type=at_least(1), default=None, help="only the first N photos (by name)")
    parser.add_argument("--setting", dest="settings", action="append", choices=list(SETTINGS), default=None,
                        help="detector setting to time, repeatable (default: all three; cnn0 takes seconds per large photo)")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    folder = args.photos or default_photos()
    wild = sorted(folder.glob("*.jpg"))[: args.limit]
    if not wild:
        fail(f"no *.jpg photos in {folder}")
    settings = [SETTINGS[key] for key in dict.fromkeys(args.settings or SETTINGS)]
    table = Table(title="maskgen align: faces per CPU-second (one core)")
    for col in ("photos", "detector", "faces", "faces/s", "ms/photo detecting", "ms/photo in all"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        lfw = lfw_style(wild, Path(tmp))
        for label, photos in ((f"{len(wild)} wild photos", wild), (f"{len(lfw)} LFW-style 250x250", lfw)):
            for name, detector, upsample in settings:
                job = AlignJob(AlignConfig(detector=detector, upsample=upsample, select="all"))
                rate, detecting, total, faces = measure(job, photos, Path(tmp) / "out")
                table.add_row(label, name, str(faces), f"{rate:.1f}", f"{detecting:.0f}", f"{total:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
