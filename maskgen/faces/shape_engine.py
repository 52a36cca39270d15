"""dlib's shape predictor (the 68- and 5-point landmark models) on a batch of faces, in numba:
the very landmarks of dlib.shape_predictor(path)(gray, dlib.rectangle(l, t, r, b)).parts(),
several times faster once the batch has a few dozen faces.

    engine = ShapeEngine.load(model_path("landmarks68"))
    points = engine.predict(images, boxes)           # (N, 68, 2) float32, whole pixels
    points = engine.predict([photo], boxes, np.zeros(len(boxes), int))   # many faces, one photo

The .dat file is parsed as dlib's deserialize reads it (shape_predictor.h, serialize.h,
float_details.h) into arrays, cached as .npy files (memory-mapped: see _read_cache) keyed
by the file's sha256 in $MASKGEN_CACHE, else $XDG_CACHE_HOME/maskgen, else ~/.cache/maskgen
(no cache when none of these can be written). The cascade then runs level by level for all faces together: the
feature pixels of every face, then each regression tree over every face while its leaves
are in cache, adding the leaves in dlib's tree order in float32 so that the sum stays
bit-exact (see _shape_kernels.py for the arithmetic)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from maskgen.files import cache_dir, write_atomic

Box = tuple[int, int, int, int]  # left, top, right, bottom (pixels), as dlib.rectangle takes them
GRAY_MODES = ("cv2", "dlib")
FORMAT = 2  # of the cached arrays; bump when their layout changes (2: a folder of .npy, memory-mapped)

# dlib's pinv(P) for P = [[0, 1, 1], [0, 0, 1], [1, 1, 1]], the (0,0), (1,0), (1,1) points of
# impl::unnormalizing_tform as homogeneous columns. dlib computes it by SVD and it is off the
# exact inverse by an ulp or so; the face box's transform is Q * pinv(P), so these very doubles
# are needed for pixel coordinates that land on a half (rounding ties) to go dlib's way.
_PINV = np.array(
    [float.fromhex(v) for v in (
        "-0x1.0000000000001p+0", "-0x1p-52", "0x1.0000000000001p+0",
        "0x1.ffffffffffffdp-1", "-0x1.ffffffffffffbp-1", "0x1.8p-53",
        "0x0p+0", "0x1.0000000000001p+0", "0x1.8p-54",
    )],
    np.float64,
).reshape(3, 3)


class ModelFormatError(ValueError):
    """The file is not a dlib shape predictor this engine can read."""


@dataclass(frozen=True)
class _Model:
    initial: np.ndarray  # (D,) float32, the mean shape in the box's unit square, x then y per part
    split_idx: np.ndarray  # (levels, trees, splits, 2) int32, feature pixel indices of each split
    split_thresh: np.ndarray  # (levels, trees, splits) float32
    leaves: np.ndarray  # (levels, trees, splits + 1, D) float32
    anchors: np.ndarray  # (levels, features) int32, the part each feature pixel hangs on
    deltas: np.ndarray  # (levels, features, 2) float32, its offset from that part (mean shape space)

    FIELDS = ("initial", "split_idx", "split_thresh", "leaves", "anchors", "deltas")


def _kernels():
    """The numba kernels, imported on first use (numba takes ~0.3 s to import)."""
    from maskgen.faces import _shape_kernels

    return _shape_kernels


def _check(pos: int, what: str) -> int:
    if pos < 0:
        raise ModelFormatError(f"not a dlib shape predictor file: bad or truncated {what}")
    return int(pos)


def parse_shape_predictor(data: bytes | np.ndarray) -> _Model:
    """The arrays of a serialised dlib::shape_predictor (deserialize(shape_predictor&, istream&))."""
    K = _kernels()
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    version, pos = K.read_int(buf, 0)
    _check(pos, "version")
    if version != 1:
        raise ModelFormatError(f"unexpected dlib::shape_predictor version {version} (expected 1)")
    nr, p = K.read_int(buf, pos)
    nc, p = K.read_int(buf, p)
    _check(p, "initial shape")
    dim = abs(int(nr)) * abs(int(nc))
    if abs(nc) != 1 or dim == 0 or dim % 2:
        raise ModelFormatError(f"the initial shape is {nr}x{nc}, not a column of x, y pairs")
    initial = np.empty(dim, np.float32)
    pos = _check(K.read_column(buf, pos, initial), "initial shape")

    n_levels, pos = K.read_uint(buf, pos)
    pos = _check(pos, "cascade size")
    idx = thresh = leaves = None
    for level in range(n_levels):
        n_trees, pos = K.read_uint(buf, pos)
        pos = _check(pos, "forest size")
        if idx is None:  # sizes from the first tree; dlib's trainer makes every tree alike
            n_splits, p = K.read_uint(buf, pos)
            _check(p, "tree")
            if n_splits < 1 or (n_splits + 1) & n_splits:
                raise ModelFormatError(f"a tree with {n_splits} splits is not a full binary tree")
            idx = np.empty((n_levels, n_trees, n_splits, 2), np.int32)
            thresh = np.empty((n_levels, n_trees, n_splits), np.float32)
            leaves = np.empty((n_levels, n_trees, n_splits + 1, dim), np.float32)
        if n_trees != idx.shape[1]:
            raise ModelFormatError("cascade levels of different sizes are not supported")
        for tree in range(n_trees):
            pos = K.read_tree(buf, pos, idx[level, tree], thresh[level, tree], leaves[level, tree])
            _check(pos, f"tree {tree} of level {level} (or its size differs from the first tree's)")
    if idx is None:  # no cascade at all: the mean shape, placed in the box
        idx = np.zeros((0, 0, 1, 2), np.int32)
        thresh = np.zeros((0, 0, 1), np.float32)
        leaves = np.zeros((0, 0, 2, dim), np.float32)

    count, pos = K.read_uint(buf, pos)
    pos = _check(pos, "anchor list")
    if count != n_levels:
        raise ModelFormatError(f"{count} anchor lists for {n_levels} cascade levels")
    anchors = None
    for level in range(n_levels):
        n, pos = K.read_uint(buf, pos)
        pos = _check(pos, "anchor list")
        if anchors is None:
            anchors = np.empty((n_levels, n), np.int32)
        if n != anchors.shape[1]:
            raise ModelFormatError("cascade levels with different numbers of feature pixels are not supported")
        pos = _check(K.read_uints(buf, pos, anchors[level]), "anchors")
    count, pos = K.read_uint(buf, pos)
    pos = _check(pos, "delta list")
    if count != n_levels:
        raise ModelFormatError(f"{count} delta lists for {n_levels} cascade levels")
    n_features = 0 if anchors is None else anchors.shape[1]
    deltas = np.empty((n_levels, n_features, 2), np.float32)
    for level in range(n_levels):
        n, pos = K.read_uint(buf, pos)
        pos = _check(pos, "delta list")
        if n != n_features:
            raise ModelFormatError(f"{n} deltas for {n_features} anchors")
        pos = _check(K.read_floats(buf, pos, deltas[level].reshape(-1)), "deltas")
    if anchors is None:
        anchors = np.zeros((n_levels, 0), np.int32)

    model = _Model(initial, idx, thresh, leaves, anchors, deltas)
    _validate(model)
    return model


def _validate(m: _Model) -> None:
    """The index bounds the kernel relies on (it does not check them itself)."""
    dim = m.initial.shape[0]
    levels, trees, splits = m.split_thresh.shape
    n_features = m.anchors.shape[1]
    if (m.split_idx.shape != (levels, trees, splits, 2) or m.leaves.shape != (levels, trees, splits + 1, dim)
            or m.anchors.shape[0] != levels or m.deltas.shape != (levels, n_features, 2) or dim % 2
            or (splits + 1) & splits):  # complete trees: the kernel walks them a depth at a time
        raise ModelFormatError("inconsistent shape predictor arrays")
    if m.anchors.size and (m.anchors.min() < 0 or m.anchors.max() >= dim // 2):
        raise ModelFormatError("an anchor index is past the last part")
    if levels and trees and (m.split_idx.min() < 0 or m.split_idx.max() >= n_features or n_features > 65535):
        raise ModelFormatError("a split reads a feature pixel past the last one")


def _digest(path: Path, key: tuple) -> str:
    """The model file's sha256, remembered in the cache per (path, size, mtime) - the key this
    process remembers engines by: reading and hashing the 100 MB file cost every worker
    ~0.13 s at its start."""
    memo = cache_dir() / "digests" / hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    try:
        digest = memo.read_text()
        if len(digest) == 64:
            return digest
    except OSError:
        pass
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    with contextlib.suppress(OSError):  # a read-only cache: hashed again next time
        write_atomic(memo, digest.encode())
    return digest


def _cache_folder(digest: str) -> Path:
    return cache_dir() / f"shape_predictor-{digest}-v{FORMAT}"


def _read_cache(digest: str) -> _Model | None:
    """The cached arrays as read-only memory maps: the processes of a run share one copy of
    the ~65 MB of leaves in the page cache (and in the CPU's shared cache: two workers
    then predict as fast as one), and loading costs nothing. None: absent or damaged."""
    folder = _cache_folder(digest)
    try:
        return _Model(*(np.asarray(np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False))
                        for name in _Model.FIELDS))
    except (OSError, ValueError):  # absent, unreadable or damaged: parse again
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)  # damaged: the write below replaces it
        return None


def _write_cache(digest: str, model: _Model) -> None:
    """One .npy per array in a folder that appears whole (renamed from a temp folder): a
    concurrent reader sees no folder or all of it."""
    folder = _cache_folder(digest)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            for name in _Model.FIELDS:
                np.save(tmp / f"{name}.npy", getattr(model, name), allow_pickle=False)
            tmp.chmod(0o755)  # mkdtemp makes it private; a cache is as readable as the model
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; left when another process was first
    except OSError:  # a read-only or full cache folder: run without the cache
        pass


class ShapeEngine:
    """A dlib shape predictor model, ready to run on batches of faces. Load with ShapeEngine.load(path)."""

    _loaded: dict[tuple, ShapeEngine] = {}
    _lock = threading.Lock()

    def __init__(self, model: _Model, path: Path | None = None):
        _validate(model)
        self._m = model
        self.path = path
        self.n_points = model.initial.shape[0] // 2
        self.n_levels, self.n_trees = model.split_thresh.shape[:2]
        self.n_features = model.anchors.shape[1]
        # the kernel's forms of the splits and anchors (see _shape_kernels.predict)
        self._idx1 = np.ascontiguousarray(model.split_idx[..., 0], np.uint16)
        self._idx2 = np.ascontiguousarray(model.split_idx[..., 1], np.uint16)
        self._ithresh = _integer_thresholds(model.split_thresh)
        self._anchors2 = 2 * model.anchors.astype(np.uint64)

    def __repr__(self) -> str:
        return (f"ShapeEngine({self.n_points} points, {self.n_levels} levels x {self.n_trees} trees, "
                f"{self.n_features} feature pixels, {str(self.path)!r})")

    # ---------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: str | os.PathLike, cache: bool = True) -> ShapeEngine:
        """The model in dlib's .dat file `path` (e.g. model_path("landmarks68")). Parsed
        arrays are kept on disk (see cache_dir()) and, per file version, in this process."""
        path = Path(path).expanduser().resolve()
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with cls._lock:
            if key in cls._loaded:
                return cls._loaded[key]
        digest = _digest(path, key) if cache else None
        model = _read_cache(digest) if digest else None
        if model is None:
            model = parse_shape_predictor(path.read_bytes())
            if digest:
                _write_cache(digest, model)
        engine = cls(model, path)
        with cls._lock:
            cls._loaded[key] = engine
        return engine

    # ---------------------------------------------------------------- running

    def predict(
        self,
        images: list[np.ndarray],
        boxes: list[Box] | np.ndarray,
        image_index: np.ndarray | None = None,
        gray: str = "cv2",
    ) -> np.ndarray:
        """dlib's parts for each box, as (N, n_points, 2) float32 whole pixels (x, y).

        images: uint8 BGR (H, W, 3) or grey (H, W). boxes: (left, top, right, bottom), box i
        on images[image_index[i]] (default: box i on image i). gray: how a colour image
        becomes the grey one the predictor samples:
          "cv2"  - cv2.cvtColor(BGR2GRAY), what maskgen.faces.landmarks hands to dlib (to_gray);
          "dlib" - dlib's own conversion of a colour array given to it directly, the channel
                   mean (r + g + b) // 3 (the order of the channels does not matter).
        """
        if gray not in GRAY_MODES:
            raise ValueError(f"unknown gray mode {gray!r} (choose from {', '.join(GRAY_MODES)})")
        boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
        n = boxes.shape[0]
        if image_index is None:
            if len(images) != n:
                raise ValueError(f"{len(images)} images for {n} boxes: pass image_index to put several boxes on one image")
            image_index = np.arange(n, dtype=np.int64)
        else:
            image_index = np.asarray(image_index, np.int64).reshape(-1)
            if image_index.shape[0] != n:
                raise ValueError(f"image_index has {image_index.shape[0]} entries for {n} boxes")
            if n and (image_index.min() < 0 or image_index.max() >= len(images)):
                raise ValueError(f"image_index points past the {len(images)} images")
        out = np.empty((n, self.n_points, 2), np.float32)
        if n == 0:
            return out
        used = np.unique(image_index)
        greys = {int(k): _to_gray(images[k], gray) for k in used}
        order = list(greys)
        slot = {k: s for s, k in enumerate(order)}
        heights = np.array([greys[k].shape[0] for k in order], np.int64)
        widths = np.array([greys[k].shape[1] for k in order], np.int64)
        offsets = np.zeros(len(order), np.int64)
        np.cumsum((heights * widths)[:-1], out=offsets[1:])
        pixels = greys[order[0]].reshape(-1) if len(order) == 1 else np.concatenate([greys[k].reshape(-1) for k in order])
        image_of = np.array([slot[int(k)] for k in image_index], np.int64)
        # the box corners become vector<float,2> in dlib before anything else
        corners = boxes.astype(np.float32).astype(np.float64)
        m = self._m
        _kernels().predict(pixels, offsets, heights, widths, image_of, corners, _PINV, m.initial,
                           self._idx1, self._idx2, self._ithresh, m.leaves, self._anchors2, m.deltas, out)
        return out

    def predict_one(self, image: np.ndarray, box: Box, gray: str = "cv2") -> np.ndarray:
        """(n_points, 2) for one face: predict([image], [box])[0]."""
        return self.predict([image], [box], gray=gray)[0]


def _integer_thresholds(thresh: np.ndarray) -> np.ndarray:
    """For pixel differences d (integers in -255..255), d > t  <=>  d > floor(t); NaN is
    never exceeded, and thresholds past +-2**20 act as infinities."""
    big = float(1 << 20)
    out = np.floor(np.clip(np.nan_to_num(thresh, nan=big, posinf=big, neginf=-big), -big, big))
    return out.astype(np.int32)


def _to_gray(image: np.ndarray, mode: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (like dlib's), not {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"an image must be grey (H, W) or colour (H, W, 3), not of shape {image.shape}")
    if mode == "cv2":
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY)
    return (image.sum(axis=2, dtype=np.uint16) // 3).astype(np.uint8)
