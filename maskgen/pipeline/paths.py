"""Where a run keeps its files under OUT_DIR.

    OUT_DIR/images/<identity>/...        masked images and occlusion masks (written by ImageJob; --output-format files)
    OUT_DIR/rec/shards/shard-00000.rec   --output-format rec: a shard's images (.mask.rec: occlusions), joined into
    OUT_DIR/rec/train.rec, train.idx, property, occlusion.rec/.idx, manifest.parquet  when the run completes
    OUT_DIR/wds/shard-000000.tar         --output-format webdataset: a shard's samples
    OUT_DIR/manifest/shard-00000.parquet one manifest file per shard; the folder reads as one table
    OUT_DIR/plan/plan.json               input fingerprint, config hash, shard size
    OUT_DIR/plan/inputs.parquet          the sorted inputs; row group i = shard i
    OUT_DIR/stats/shard-00000.json       written last for a shard: its done marker
    OUT_DIR/.maskgen-lock                the driver writing here (see lock.py)
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


class OutputLayout:
    def __init__(self, out_dir: Path):
        self.root = Path(out_dir)
        self.images = self.root / "images"
        self.manifest = self.root / "manifest"
        self.plan_dir = self.root / "plan"
        self.plan_file = self.plan_dir / "plan.json"
        self.inputs_file = self.plan_dir / "inputs.parquet"
        self.stats = self.root / "stats"
        self.rec = self.root / "rec"
        self.rec_shards = self.rec / "shards"
        self.wds = self.root / "wds"

    def owned_dirs(self) -> tuple[Path, ...]:
        """What `--overwrite` may delete: only the folders a run creates, never OUT_DIR itself."""
        return (self.images, self.manifest, self.plan_dir, self.stats, self.rec, self.wds)

    @staticmethod
    def shard_name(index: int, n_shards: int) -> str:
        # fixed width per plan so that file names sort in shard order
        return f"shard-{index:0{max(5, len(str(max(n_shards - 1, 0))))}d}"

    def manifest_path(self, index: int, n_shards: int) -> Path:
        return self.manifest / f"{self.shard_name(index, n_shards)}.parquet"

    def stats_path(self, index: int, n_shards: int) -> Path:
        return self.stats / f"{self.shard_name(index, n_shards)}.json"

    def rec_shard_base(self, index: int, n_shards: int) -> Path:
        """`.rec` (images) and `.mask.rec` (occlusions) of a shard: this path plus those suffixes."""
        return self.rec_shards / self.shard_name(index, n_shards)

    def wds_shard(self, index: int) -> Path:
        return self.wds / f"shard-{index:06d}.tar"  # WebDataset's own naming (brace-expandable)


def temp_sibling(path: Path) -> Path:
    """A unique hidden name next to `path` (readers of the folder skip names starting with '.')."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def remove_stale_temps(folder: Path) -> None:
    """Temp files left by a killed run (no run of this OUT_DIR is active while planning)."""
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


def remove_stale_temps_tree(folder: Path) -> int:
    """Temp files left anywhere under `folder` by a killed run's workers; returns how many."""
    removed = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if name.startswith(".") and name.endswith(".tmp"):
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed
