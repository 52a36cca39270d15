"""The training manifest, a resumable epoch sampler, and the batch loader.

Manifest (written by `maskgen trainset`): Parquet file or folder of Parquet files with at
least `path` (absolute, or relative to the folder holding the manifest file or folder) and `label`
(contiguous ints 0..C-1); `identity` and `variant` are read when present. C comes from the
schema metadata `maskgen.num_classes` when present, else max(label) + 1.

The images may also sit in containers (recognition.containers): an insightface folder
(`train.rec` + `train.idx`, e.g. `generate --output-format rec`'s OUT/rec), WebDataset tar
shards (`--output-format webdataset`), or a Parquet manifest whose `image` column holds the
bytes (`--output-format parquet`); their rows then read through `Manifest.store`.

Images are decoded to RGB uint8 (BGR decodes converted once, here) and handed over as
uint8 N x 3 x H x W; mirroring and (x - 127.5) / 128 happen on the training device.
A file that cannot be decoded is skipped and reported with its batch (the trainer stops
when too many are). Online masks (maskgen.OnlineMasks) are put on at decode time, on the
image at its own size, from its landmarks; the sampler hands the epoch over inside each
index (epoch x size + index), so persistent loader workers know it.

Loading: DataLoader worker processes, each decoding a whole batch straight into one
shared-memory buffer (so no per-image pickling and no extra copy to reach the trainer);
OpenCV's own threads are turned off in the workers (one process per core). Decoding in
threads of the training process was measured slower on the GPU machine (the GIL).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
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
    is_masked: np.ndarray  # per row, variant == "masked" (all False when the column is absent)
    sources: np.ndarray  # per row, its source photo (identity/src_path) as bytes: what a validation split keeps together
    store: object = None  # reads a row's image bytes by its key (a container, recognition.containers); None: paths are files
    keys: np.ndarray | None = None  # per row, its key in `store`

    @property
    def masked(self) -> int:
        return int(self.is_masked.sum())

    def subset(self, rows: np.ndarray) -> Manifest:
        return replace(self, paths=self.paths[rows], labels=self.labels[rows], is_masked=self.is_masked[rows],
                       sources=self.sources[rows], keys=None if self.keys is None else self.keys[rows])

    def read(self, row: int) -> bytes:
        """Row `row`'s encoded image; ImageError when it cannot be read."""
        try:
            if self.store is not None:
                return self.store.read(int(self.keys[row]))
            return Path(self.paths[row].decode()).read_bytes()
        except OSError as exc:
            raise ImageError("unreadable", f"cannot read file: {exc.strerror or exc}") from None


def read_manifest(manifest: str | Path, image_root: str | Path = "") -> Manifest:
    """A training manifest, or a container of images (see the module's docstring)."""
    from maskgen.recognition import containers

    manifest = Path(manifest)
    found = containers.read_container(manifest)
    if found is not None:
        return found
    files = manifest_files(manifest)
    root = Path(image_root) if image_root else manifest.parent
    paths, labels, masked, declared, sources = [], [], [], [], []
    for file in files:
        schema = pq.read_schema(file)
        missing = {"path", "label"} - set(schema.names)
        if missing:
            raise ManifestError(f"{file}: missing column(s) {', '.join(sorted(missing))}")
        columns = ["path", "label"] + [c for c in ("variant", "identity", "src_path") if c in schema.names]
        table = pq.read_table(file, columns=columns)
        file_paths = [p if Path(p).is_absolute() else str(root / p) for p in table.column("path").to_pylist()]
        paths += file_paths
        if {"identity", "src_path"} <= set(columns):
            sources += [f"{i}/{s}" for i, s in zip(table.column("identity").to_pylist(), table.column("src_path").to_pylist())]
        else:
            sources += file_paths
        labels.append(table.column("label").to_numpy(zero_copy_only=False))
        variants = table.column("variant").to_pylist() if "variant" in columns else [None] * len(file_paths)
        masked += [v == "masked" for v in variants]
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
    return Manifest(np.array([p.encode() for p in paths]), labels, num_classes, np.array(masked, bool),
                    np.array([s.encode() for s in sources]))


def split_validation(manifest: Manifest, fraction: float, seed: int = 0) -> tuple[Manifest, Manifest | None]:
    """(training rows, validation rows): `fraction` of the source photos, drawn by a hash of
    (seed, source), held out with all their variants (a masked copy of a validation photo
    never trains). The validation rows are of the training identities (same labels)."""
    if not fraction:
        return manifest, None
    draw = np.array([int.from_bytes(hashlib.blake2b(b"%d\0%s" % (seed, s), digest_size=4).digest(), "little")
                     for s in manifest.sources]) / 2**32
    held = draw < fraction
    if not held.any() or held.all():
        raise ManifestError(f"val_fraction {fraction} leaves {'no' if not held.any() else 'every'} source photo for validation")
    return manifest.subset(np.flatnonzero(~held)), manifest.subset(np.flatnonzero(held))


def unreadable_share(manifest: Manifest) -> tuple[float, list[str]]:
    """(share of the manifest's image files that do not exist, a few of them); a container's rows
    were all found in it."""
    if manifest.store is not None:
        return 0.0, []
    missing = [p.decode() for p in manifest.paths if not os.path.isfile(p)]
    return len(missing) / max(1, len(manifest.paths)), missing[:3]


def landmarks_for(manifest: Manifest, run: str | Path) -> list[np.ndarray | None]:
    """Per row, the 68 points of its image from a `maskgen landmarks` run (None where the
    run has none, e.g. a masked variant, which is then never masked again)."""
    from maskgen.datasets.landmarks import read_landmarks

    points = read_landmarks(run)
    return [points.get(os.path.realpath(p.decode())) for p in manifest.paths]


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
    return decode_encoded(data)


def decode_encoded(data: bytes) -> np.ndarray:
    """decode_bgr's decoding, of bytes already read (a container's record)."""
    if data.startswith(JPEG_START) and data.endswith(JPEG_END):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is not None:
            return bgr
    return decode_image(data).bgr


class ManifestDataset(Dataset):
    """Item k (= epoch x len + index): (RGB uint8 H x W x 3, label, path, None), or (None,
    label, path, reason). The DataLoader fetches whole batches (`batch`, as `__getitems__`).
    With `online` (an OnlineMasks) and `points` (per row, 68 landmarks or None), rows with
    landmarks are masked as they load; `paired` adds each such face's masked twin."""

    def __init__(self, manifest: Manifest, height: int = 112, width: int = 96, online=None, points=None, paired: bool = False):
        self.manifest, self.height, self.width = manifest, height, width
        self.online, self.points, self.paired = online, points, paired

    def __len__(self) -> int:
        return len(self.manifest.labels)

    def load_bgr(self, key: int):
        """(image or None, label, path, reason), and the masked twin when paired (else None)."""
        epoch, index = divmod(key, len(self))
        path = self.manifest.paths[index].decode()
        label = int(self.manifest.labels[index])
        try:
            bgr = decode_encoded(self.manifest.read(index))
            points = self.points[index] if self.points is not None else None
            twin = None
            if self.paired and points is not None:
                bgr, twin = self.online.pair(bgr, points, index, epoch)
            elif self.online is not None and points is not None:
                bgr = self.online(bgr, points, index, epoch)[0]
            twin = None if twin is None else fit_to(twin, self.height, self.width)
            return fit_to(bgr, self.height, self.width), label, path, None, twin
        except (ImageError, cv2.error) as exc:  # cv2.error: too small to crop and resize
            return None, label, path, str(exc).strip().splitlines()[-1], None

    def __getitem__(self, key: int):
        bgr, label, path, reason, _ = self.load_bgr(key)
        return (None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), label, path, reason

    def batch(self, keys, pin_memory: bool = False):
        """(uint8 RGB N x 3 x H x W, int64 labels, [(path, reason) of skipped images]).

        Decodes straight into one buffer, in shared memory when called in a loader worker
        (the batch then reaches the trainer without another copy); the images tensor is a
        channels-last view of that N x H x W x 3 buffer (up to 2N with paired twins)."""
        size = len(keys) * (2 if self.paired else 1)
        buffer = torch.empty((size, self.height, self.width, 3), dtype=torch.uint8, pin_memory=pin_memory)
        if get_worker_info() is not None:
            buffer.share_memory_()
        pixels, labels, skipped = buffer.numpy(), [], []
        for key in keys:
            bgr, label, path, reason, twin = self.load_bgr(key)
            if bgr is None:
                skipped.append((path, reason))
                continue
            for image in (bgr, twin) if twin is not None else (bgr,):
                cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=pixels[len(labels)])  # 10x numpy's reversed-stride copy
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
        return iter((mine[self.start_batch * self.batch_size:] + self.epoch * self.size).tolist())  # the epoch rides along


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
