"""The training manifest, a resumable epoch sampler, and the batch loader.

Manifest (written by `maskgen trainset`): Parquet file or folder of Parquet files with at
least `path` (absolute, or relative to the folder holding the manifest file or folder) and `label`
(contiguous ints 0..C-1); `identity` and `variant` are read when present. C comes from the
schema metadata `maskgen.num_classes` when present, else max(label) + 1.

Images are decoded to RGB uint8 (BGR decodes converted once, here) and handed over as
uint8 N x 3 x H x W; mirroring and (x - 127.5) / 128 happen on the training device.
A file that cannot be decoded is skipped and reported with its batch, never a crash.

Loading: DataLoader worker processes, each decoding a whole batch straight into one
shared-memory buffer (so no per-image pickling and no extra copy to reach the trainer);
OpenCV's own threads are turned off in the workers (one process per core). Decoding in
threads of the training process was measured slower on the GPU machine (the GIL).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from maskgen.faces.layouts import fit_to
from maskgen.images import ImageError, decode_image
from maskgen.schemas import NUM_CLASSES_KEY, read_key

JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
PREFETCH = 4  # batches each loader worker keeps ready


class ManifestError(ValueError):
    """A manifest that cannot be trained on; the message says why."""


def manifest_files(manifest: Path) -> list[Path]:
    if manifest.is_dir():
        files = sorted(p for p in manifest.rglob("*.parquet") if not p.name.startswith((".", "_")))
        if not files:
            raise ManifestError(f"no Parquet files in {manifest}")
        return files
    if not manifest.is_file():
        raise ManifestError(f"manifest not found: {manifest}")
    return [manifest]


@dataclass
class Manifest:
    paths: np.ndarray  # absolute paths as UTF-8 bytes (compact for millions of rows)
    labels: np.ndarray  # int64
    num_classes: int
    masked: int  # rows with variant == "masked" (0 when the column is absent)


def read_manifest(manifest: str | Path, image_root: str | Path = "") -> Manifest:
    manifest = Path(manifest)
    files = manifest_files(manifest)
    root = Path(image_root) if image_root else manifest.parent
    paths, labels, masked, declared = [], [], 0, []
    for file in files:
        schema = pq.read_schema(file)
        missing = {"path", "label"} - set(schema.names)
        if missing:
            raise ManifestError(f"{file}: missing column(s) {', '.join(sorted(missing))}")
        columns = ["path", "label"] + (["variant"] if "variant" in schema.names else [])
        table = pq.read_table(file, columns=columns)
        paths += [p if Path(p).is_absolute() else str(root / p) for p in table.column("path").to_pylist()]
        labels.append(table.column("label").to_numpy(zero_copy_only=False))
        if "variant" in columns:
            masked += sum(v == "masked" for v in table.column("variant").to_pylist())
        if read_key(schema.metadata, NUM_CLASSES_KEY) is not None:
            declared.append(int(read_key(schema.metadata, NUM_CLASSES_KEY)))
    labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
    if len(labels) == 0:
        raise ManifestError(f"{manifest}: no rows")
    if labels.min() < 0:
        raise ManifestError(f"{manifest}: negative labels")
    num_classes = max(declared) if declared else int(labels.max()) + 1
    if labels.max() >= num_classes:
        raise ManifestError(f"{manifest}: label {labels.max()} >= maskgen.num_classes {num_classes}")
    return Manifest(np.array([p.encode() for p in paths]), labels, num_classes, masked)


def decode_bgr(path: str) -> np.ndarray:
    """A complete JPEG goes straight to cv2.imdecode (25-40% faster than maskgen.images on a
    96x112 crop); anything else, or a JPEG cv2 refuses, goes through maskgen.images (every
    format, a precise error). A truncated JPEG is caught (no end marker); unlike
    maskgen.images with simplejpeg, corrupt entropy data inside a complete JPEG is not:
    the training manifest lists images that `maskgen generate` has already written."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError("unreadable", f"cannot read file: {exc.strerror or exc}") from None
    if data.startswith(JPEG_START) and data.endswith(JPEG_END):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is not None:
            return bgr
    return decode_image(data).bgr


class ManifestDataset(Dataset):
    """Item i: (RGB uint8 H x W x 3, label, path, None), or (None, label, path, reason).
    The DataLoader fetches whole batches (`batch`, as `__getitems__`)."""

    def __init__(self, manifest: Manifest, height: int = 112, width: int = 96):
        self.manifest, self.height, self.width = manifest, height, width

    def __len__(self) -> int:
        return len(self.manifest.labels)

    def load_bgr(self, index: int):
        path = self.manifest.paths[index].decode()
        label = int(self.manifest.labels[index])
        try:
            return fit_to(decode_bgr(path), self.height, self.width), label, path, None
        except (ImageError, cv2.error) as exc:  # cv2.error: too small to crop and resize
            return None, label, path, str(exc).strip().splitlines()[-1]

    def __getitem__(self, index: int):
        bgr, label, path, reason = self.load_bgr(index)
        return (None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), label, path, reason

    def batch(self, indices, pin_memory: bool = False):
        """(uint8 RGB N x 3 x H x W, int64 labels, [(path, reason) of skipped images]).

        Decodes straight into one buffer, in shared memory when called in a loader worker
        (the batch then reaches the trainer without another copy); the images tensor is a
        channels-last view of that N x H x W x 3 buffer."""
        buffer = torch.empty((len(indices), self.height, self.width, 3), dtype=torch.uint8, pin_memory=pin_memory)
        if get_worker_info() is not None:
            buffer.share_memory_()
        pixels, labels, skipped = buffer.numpy(), [], []
        for index in indices:
            bgr, label, path, reason = self.load_bgr(index)
            if bgr is None:
                skipped.append((path, reason))
                continue
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=pixels[len(labels)])  # 10x numpy's reversed-stride copy
            labels.append(label)
        return buffer[: len(labels)].permute(0, 3, 1, 2), torch.tensor(labels, dtype=torch.long), skipped

    __getitems__ = batch  # the DataLoader's batched fetch


def _as_is(batch):
    return batch


def _init_worker(_worker_id: int) -> None:
    cv2.setNumThreads(1)  # one decode process per core; OpenCV's own threads would oversubscribe


class EpochSampler(Sampler[int]):
    """A fixed shuffle per (seed, epoch), sharded across ranks like DistributedSampler, that
    can start mid-epoch: resuming at (epoch, batch) replays exactly the rest of that epoch.
    Every epoch yields `batches_per_epoch` full batches per rank (the tail is dropped)."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = size // world_size // batch_size
        if self.batches_per_epoch == 0:
            raise ManifestError(
                f"{size} images cannot fill one batch of {batch_size} on each of {world_size} process(es): "
                "lower batch_size")
        self.epoch = self.start_batch = 0

    def set_position(self, epoch: int, batch: int) -> None:
        self.epoch, self.start_batch = epoch, batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        mine = order[self.rank::self.world_size][: self.batches_per_epoch * self.batch_size]
        return iter(mine[self.start_batch * self.batch_size:].tolist())


def make_loader(dataset: ManifestDataset, sampler: EpochSampler, workers: int, pin_memory: bool) -> DataLoader:
    # Its own generator: a DataLoader otherwise draws worker seeds from the global RNG at every
    # epoch, which would make the global RNG state depend on where a run was resumed.
    return DataLoader(
        dataset, batch_size=sampler.batch_size, sampler=sampler, num_workers=workers,
        generator=torch.Generator().manual_seed(sampler.seed),
        collate_fn=_as_is, worker_init_fn=_init_worker, pin_memory=pin_memory, drop_last=True,
        persistent_workers=workers > 0, prefetch_factor=PREFETCH if workers > 0 else None,
        # Workers start from a clean forkserver, not a fork of this process: forking a process
        # whose OpenMP or Ray threads are running can deadlock the child.
        multiprocessing_context=_worker_context() if workers > 0 else None,
    )


def _worker_context() -> str | None:
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None
