"""Finding a run's files: its manifest, where its images are, where its inputs came from.

A run is the output folder of `maskgen mask` (OUT/manifest.parquet, images beside it),
`maskgen generate` / `maskgen align` (OUT/manifest/*.parquet, images under OUT/images,
input root in OUT/plan/plan.json), or a manifest Parquet file itself."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from maskgen.schemas import SOURCE_ROOT_KEY, read_key


class RunError(ValueError):
    """Not a maskgen run; the message says what was expected."""


@dataclass(frozen=True)
class Run:
    manifest: Path  # a Parquet file, or a folder of them read as one table
    images: Path  # the root that `out_path` / `mask_path` start from
    source: Path | None  # the root that `src_path` starts from, where recorded

    def read(self, columns: list[str] | None = None) -> pa.Table:
        dataset = ds.dataset(self.manifest, format="parquet")
        names = set(dataset.schema.names)
        return dataset.to_table(columns=[c for c in columns if c in names] if columns else None)


def _metadata_source(file: Path) -> Path | None:
    source = read_key(pq.read_schema(file).metadata, SOURCE_ROOT_KEY)
    return Path(source) if source else None


def open_run(path: Path) -> Run:
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        return Run(path, path.parent, _metadata_source(path))
    if (path / "manifest.parquet").is_file():
        return Run(path / "manifest.parquet", path, _metadata_source(path / "manifest.parquet"))
    if (path / "manifest").is_dir() and any((path / "manifest").glob("*.parquet")):
        plan = path / "plan" / "plan.json"
        source = json.loads(plan.read_text()).get("input_root") if plan.is_file() else None
        return Run(path / "manifest", path / "images", Path(source) if source else None)
    raise RunError(f"{path} holds no maskgen manifest (manifest.parquet or manifest/*.parquet)")


def _is_run(path: Path) -> bool:
    return (path / "manifest.parquet").is_file() or (path / "manifest").is_dir()


def _plain_tree(root: Path) -> pd.DataFrame:
    """An aligned tree without a manifest: every file is an original."""
    from maskgen.pipeline.inputs import walk_tree

    rel = [entry.rel for entry in walk_tree(root)]
    return pd.DataFrame(
        {
            "path": [str(root / r) for r in rel],
            "identity": [r.split("/")[0] for r in rel],
            "variant": "original",
            "mask_type": "",
            "wear": "",
            "src_path": rel,
        }
    )


def _refuse_containers(run: Path) -> None:
    """A run written with --output-format rec/webdataset/parquet has no image files to list."""
    plan = run / "plan" / "plan.json"
    fmt = json.loads(plan.read_text()).get("config", {}).get("output_format", "files") if plan.is_file() else "files"
    if fmt != "files":
        where = {"rec": run / "rec", "webdataset": run / "wds"}.get(fmt, run / "manifest")
        raise RunError(f"{run} was written with --output-format {fmt}: its images are in {where}, not in files; "
                       f"train on it directly (maskgen train --set manifest={where})")


def collect_images(paths: list[Path]) -> tuple[pd.DataFrame, Counter]:
    """Every `ok` image of the runs (or plain <identity>/<image> trees) with an absolute
    path: columns path, identity, variant, mask_type, wear, src_path. Rows left out are
    counted by reason. Originals that a run did not copy are taken from its input tree."""
    frames, left_out = [], Counter()
    columns = ["identity", "src_path", "out_path", "variant", "mask_type", "wear", "status", "face_index"]
    for path in paths:
        if Path(path).is_dir() and not _is_run(Path(path)):
            frames.append(_plain_tree(Path(path)))
            continue
        run = open_run(path)
        _refuse_containers(Path(path))
        df = run.read(columns).to_pandas()
        if "variant" not in df:  # an align run: every crop is an original
            df = df.assign(variant="original", mask_type="", wear="")
        for status, n in df.loc[df.status != "ok", "status"].value_counts().items():
            left_out[f"status {status}"] += int(n)
        df = df[df.status == "ok"]
        if "face_index" in df:  # wild photos: the largest face's row stands for the image
            df = df[df.face_index == 0]
        df = df.assign(path=[str(run.images / p) for p in df.out_path])
        copied = set(df.loc[df.variant == "original", "src_path"])
        if run.source is not None:
            missing = df[(df.variant == "masked") & ~df.src_path.isin(copied)].drop_duplicates("src_path")
            originals = missing.assign(
                variant="original", mask_type="", wear="", path=[str(run.source / p) for p in missing.src_path]
            )
            df = pd.concat([df, originals])
        frames.append(df[["path", "identity", "variant", "mask_type", "wear", "src_path"]])
    if not frames:
        raise RunError("no runs given")
    rows = pd.concat(frames, ignore_index=True)
    duplicated = rows.duplicated("path")
    if duplicated.any():
        left_out["duplicate path"] += int(duplicated.sum())
    return rows[~duplicated], left_out


