"""What a run with a container output format does once all its shards are done.

`rec`: the shards' `.rec` files joined into insightface's layout under OUT/rec/: `train.rec`
+ `train.idx` (header record, the images grouped by label, identity-range records),
`occlusion.rec` + `.idx` (each image's occlusion mask under the same record index),
`manifest.parquet` (every shard's rows with their `record` and `label`) and `property`
(written last: its presence says the join is complete). Labels are `maskgen trainset`'s:
contiguous over the sorted identity names. The join reads one shard at a time when the
images are already grouped by identity (sorted inputs, insightface inputs), else it reads them
in label order; its memory is a few small arrays per record, not the images.

`webdataset` and `parquet` need nothing more: the shards are the output.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maskgen.files import open_atomic
from maskgen.jobs.sinks import LOCATION_SEP
from maskgen.pipeline.paths import OutputLayout, remove_stale_temps_tree
from maskgen.pipeline.plan import Plan
from maskgen.recordio import PROPERTY_NAME, FaceRecWriter, Header, RecordReader, RecordWriter, pack

OPEN_READERS = 64  # shard files held open at once by a join in label order
REC_MANIFEST = "manifest.parquet"


def assign_labels(identities, previous: dict[str, int] | None = None) -> dict[str, int]:
    """Contiguous labels by sorted name; previous labels are kept and new names appended
    (`maskgen trainset`'s mapping, and the rec output's)."""
    labels = dict(previous or {})
    next_label = max(labels.values(), default=-1) + 1
    for name in sorted(set(identities) - set(labels)):
        labels[name] = next_label
        next_label += 1
    return {name: labels[name] for name in sorted(labels, key=labels.get)}


def output_format(plan: Plan) -> str:
    return plan.config.get("output_format", "files")


def images_dir(layout: OutputLayout, plan: Plan):
    """Where the run's images are: images/, rec/, wds/, or (parquet) the manifest itself."""
    return {"rec": layout.rec, "webdataset": layout.wds, "parquet": layout.manifest}.get(output_format(plan), layout.images)


def invalidate(layout: OutputLayout, plan: Plan) -> None:
    """Before shards are (re)done (no worker runs yet): a killed worker's container temps go,
    and the joined output, which will no longer match the shards, goes too (property first)."""
    for folder in (layout.rec, layout.wds):
        if folder.is_dir():
            remove_stale_temps_tree(folder)
    if output_format(plan) == "rec" and layout.rec.is_dir():
        for name in (PROPERTY_NAME, "train.rec", "train.idx", "occlusion.rec", "occlusion.idx", REC_MANIFEST):
            (layout.rec / name).unlink(missing_ok=True)


def finish(layout: OutputLayout, plan: Plan) -> str:
    """The complete run's final output; returns what was done, in words ("" for nothing)."""
    if output_format(plan) != "rec" or (layout.rec / PROPERTY_NAME).is_file():
        return ""
    count = join_rec(layout, plan)
    return f"joined {count} images into {layout.rec / 'train.rec'}"


class _Records:
    """One row per record of the shard files: shard, key in it, identity, has an occlusion."""

    def __init__(self):
        self.shard, self.key, self.mask, self.identity, self.bounds = [], [], [], [], [0]

    def add_shard(self, index: int, table: pa.Table) -> None:
        seen = set()
        for identity, out, mask, status in zip(*(table.column(c).to_pylist() for c in ("identity", "out_path", "mask_path", "status"))):
            if status == "ok" and out and out not in seen:
                seen.add(out)
                self.shard.append(index)
                self.key.append(int(out.rsplit(LOCATION_SEP, 1)[1]))
                self.mask.append(bool(mask))
                self.identity.append(identity)
        self.bounds.append(len(self.key))


def _collect(manifests: list[Path]) -> _Records:
    records = _Records()
    for index, path in enumerate(manifests):
        records.add_shard(index, pq.read_table(path, columns=["identity", "out_path", "mask_path", "status"]))
    return records


class _Shards:
    """The shard files' readers, a bounded number open at once."""

    def __init__(self, bases: list[Path], suffix: str):
        self.bases, self.suffix = bases, suffix
        self.open: OrderedDict[int, RecordReader] = OrderedDict()

    def read(self, shard: int, key: int) -> bytes:
        reader = self.open.pop(shard, None)
        if reader is None:
            reader = RecordReader(self.bases[shard].with_suffix(self.suffix))
            if len(self.open) >= OPEN_READERS:
                self.open.popitem(last=False)[1].close()
        self.open[shard] = reader
        return reader.read(key)[1]

    def close(self) -> None:
        for reader in self.open.values():
            reader.close()


def _image_size(payload: bytes) -> tuple[int, int]:
    from maskgen.images import decode_image

    height, width = decode_image(payload).bgr.shape[:2]
    return width, height


def join_rec(layout: OutputLayout, plan: Plan) -> int:
    """Write OUT/rec/ from the run's shards (see the module's docstring); returns the image count."""
    n = plan.n_shards
    return join_shards([layout.manifest_path(i, n) for i in range(n)], [layout.rec_shard_base(i, n) for i in range(n)], layout.rec)


def join_shards(manifests: list[Path], bases: list[Path], target: Path) -> int:
    """insightface's folder in `target` from shard `.rec`s (`bases[i]` + .rec / .mask.rec) and
    the manifests whose rows name their records; returns the image count."""
    records = _collect(manifests)
    labels_of = assign_labels(records.identity)
    labels = np.array([labels_of[name] for name in records.identity], np.int64)
    order = np.argsort(labels, kind="stable")  # grouped by label, in shard order within one
    final = np.empty(len(order), np.int64)
    final[order] = np.arange(1, len(order) + 1)
    shards = np.array(records.shard, np.int64)
    keys = np.array(records.key, np.int64)
    with_mask = np.array(records.mask, bool)
    del records.identity, records.shard, records.key, records.mask
    _write_occlusions(bases, target, order, final, labels, shards, keys, with_mask)
    _write_manifest(manifests, target, records.bounds, final, labels)
    return _write_images(bases, target, order, labels, shards, keys, len(labels_of))


def _write_images(bases, target: Path, order, labels, shards, keys, num_classes: int) -> int:
    images = _Shards(bases, ".rec")
    writer = None
    try:
        for position in order:
            payload = images.read(int(shards[position]), int(keys[position]))
            if writer is None:
                writer = FaceRecWriter(target, _image_size(payload))
            writer.add(int(labels[position]), payload)
        writer = writer or FaceRecWriter(target)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        images.close()
    return writer.commit(num_classes)


def _write_occlusions(bases, target: Path, order, final, labels, shards, keys, with_mask) -> None:
    masks = _Shards(bases, ".mask.rec")
    try:
        with RecordWriter(target / "occlusion.rec", target / "occlusion.idx") as out:
            for position in order:
                if with_mask[position]:
                    key = int(final[position])
                    out.write(key, pack(Header(0, float(labels[position]), key), masks.read(int(shards[position]), int(keys[position]))))
    finally:
        masks.close()


def _write_manifest(manifests: list[Path], target: Path, bounds, final, labels) -> None:
    """Every shard's rows, in shard order, with `record` (the image's index in train.rec and
    occlusion.rec; -1 for a row without an image) and `label` (-1 likewise)."""
    with open_atomic(target / REC_MANIFEST) as file:
        writer = None
        for index, path in enumerate(manifests):
            table = pq.read_table(path)
            lo, hi = bounds[index], bounds[index + 1]
            keys = {}
            local = 0
            for out, status in zip(table.column("out_path").to_pylist(), table.column("status").to_pylist()):
                if status == "ok" and out and out not in keys:
                    keys[out] = lo + local
                    local += 1
            if lo + local != hi:
                raise RuntimeError(f"shard {index}'s manifest changed during the join")
            at = [keys.get(out, -1) for out in table.column("out_path").to_pylist()]
            record = [int(final[i]) if i >= 0 else -1 for i in at]
            label = [int(labels[i]) if i >= 0 else -1 for i in at]
            table = table.append_column("record", pa.array(record, pa.int64())).append_column("label", pa.array(label, pa.int32()))
            if writer is None:
                writer = pq.ParquetWriter(file, table.schema)
            writer.write_table(table)
        if writer is not None:
            writer.close()
