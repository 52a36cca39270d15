"""Contact sheets: original | masked | occlusion mask, a row per sampled manifest row, so
people can see a run's results at a glance."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from maskgen.images import ImageError, encode_image, read_image, write_atomic

CELL = 160  # height of each picture in the sheet


class PreviewError(ValueError):
    pass


def find_run(out_dir: Path) -> tuple[Path, Path, Path | None]:
    """(manifest file or folder, root of out_path, root of src_path) of a `mask` or `generate` run."""
    if (out_dir / "manifest.parquet").is_file():
        manifest = out_dir / "manifest.parquet"
        source = (pq.read_schema(manifest).metadata or {}).get(b"maskgen.source_root")
        return manifest, out_dir, Path(source.decode()) if source else None
    if (out_dir / "manifest").is_dir():
        plan = out_dir / "plan" / "plan.json"
        source = json.loads(plan.read_text()).get("input_root") if plan.is_file() else None
        return out_dir / "manifest", out_dir / "images", Path(source) if source else None
    raise PreviewError(f"{out_dir} holds no maskgen manifest (manifest.parquet or manifest/)")


def sample_rows(manifest: Path, n: int) -> list[dict]:
    """Up to n `ok` masked rows, evenly spread over the run (deterministic)."""
    table = ds.dataset(manifest, format="parquet").to_table(
        columns=["src_path", "out_path", "mask_path", "mask_type", "wear", "color", "pattern", "status", "variant"]
    )
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
    manifest, out_root, found_source = find_run(out_dir)
    source = source or found_source
    picked = sample_rows(manifest, rows)
    if not picked:
        raise PreviewError(f"no successfully masked image in {manifest}")
    lines = []
    for row in picked:
        masked = _read(out_root / row["out_path"])
        original = _read(source / row["src_path"]) if source else np.full_like(masked, 200)
        occlusion = cv2.cvtColor(_read(out_root / row["mask_path"]), cv2.COLOR_BGR2GRAY)
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
