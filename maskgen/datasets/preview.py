"""Contact sheets: original | masked | occlusion mask, a row per sampled manifest row, so
people can see a run's results at a glance."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from maskgen.datasets.runs import Run, open_run
from maskgen.files import write_atomic
from maskgen.images import ImageError, encode_image, read_image

CELL = 160  # height of each picture in the sheet


class PreviewError(ValueError):
    pass


def sample_rows(run: Run, n: int) -> list[dict]:
    """Up to n `ok` masked rows, evenly spread over the run (deterministic)."""
    table = run.read(["src_path", "out_path", "mask_path", "mask_type", "wear", "color", "pattern", "status", "variant"])
    rows = [r for r in table.to_pylist() if r["status"] == "ok" and r["variant"] == "masked"]
    rows.sort(key=lambda r: r["out_path"])
    if len(rows) > n:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, n).round().astype(int)]
    return rows


def _cell(bgr: np.ndarray) -> np.ndarray:
    h, w = bgr.shape[:2]
    return cv2.resize(bgr, (max(1, round(w * CELL / h)), CELL), interpolation=cv2.INTER_AREA)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((18, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (40, 40, 40), 1, cv2.LINE_AA)
    return np.vstack([tile, bar])


def _read(path: Path) -> np.ndarray:
    try:
        return read_image(path).bgr
    except ImageError:
        return np.full((CELL, CELL, 3), 200, np.uint8)  # a missing picture shows as grey, not a crash


def make_sheet(out_dir: Path, rows: int = 8, source: Path | None = None) -> np.ndarray:
    run = open_run(out_dir)
    source = source or run.source
    picked = sample_rows(run, rows)
    if not picked:
        raise PreviewError(f"no successfully masked image in {run.manifest}")
    lines = []
    for row in picked:
        masked = _read(run.images / row["out_path"])
        original = _read(source / row["src_path"]) if source else np.full_like(masked, 200)
        occlusion = cv2.cvtColor(_read(run.images / row["mask_path"]), cv2.COLOR_BGR2GRAY)
        tiles = [_cell(original), _cell(masked), _cell(cv2.cvtColor(occlusion, cv2.COLOR_GRAY2BGR))]
        line = np.hstack(tiles)
        lines.append(_label(line, f"{row['mask_type']} {row['wear']} {row['color']} {row['pattern']}"))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 2), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines]
    return np.vstack(lines)


def write_sheet(out_dir: Path, target: Path, rows: int = 8, source: Path | None = None) -> Path:
    sheet = make_sheet(out_dir, rows, source)
    write_atomic(target, encode_image(sheet, "PNG"))
    return target
