"""insightface's verification files (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`): a pickle of
(list of encoded images, issame list); pair k is images 2k and 2k+1, and the 10 folds are
consecutive runs of pairs (as insightface's verification code splits them).

A `.bin` is untrusted input: it is unpickled with an allow-list (bytes, lists, tuples, bools,
ints and numpy bool / uint8 arrays) and anything else is a one-line BinError, never code run.

    bins = read_bin("lfw.bin")                                  # images, issame
    pairs = bin_pairs(bins, "out/lfw")                          # images as files + a pairs table
    masked = mask_bin(bins, "first", MaskOptions.parse(), seed=1)   # MLFW-style masked copy
    write_bin("out/masked_lfw.bin", masked.images, bins.issame)
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from maskgen.files import open_atomic, write_atomic

FOLDS = 10  # insightface's verification folds
MASK_MODES = ("first", "both")
_ALLOWED = {  # the only globals a verification pickle may name: numpy's array reconstruction
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("builtins", "bytearray"), ("__builtin__", "bytearray"), ("_codecs", "encode"),
}


class BinError(ValueError):
    """A verification .bin that cannot be used (one line: the file and why)."""


@dataclass(frozen=True)
class VerificationBin:
    images: list[bytes]  # encoded images (JPEG or PNG), 2 per pair
    issame: np.ndarray  # bool, one per pair

    @property
    def pairs(self) -> int:
        return len(self.issame)


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise BinError(f"it names {module}.{name}, which a verification file never holds")
        return super().find_class(module, name)


def read_bin(path: str | Path) -> VerificationBin:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BinError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise BinError(f"{path} is empty")
    try:
        loaded = _AllowListUnpickler(io.BytesIO(data), encoding="bytes").load()
    except BinError as exc:
        raise BinError(f"{path}: not a verification file: {exc}") from None
    except Exception as exc:  # a damaged pickle raises any of a dozen types
        raise BinError(f"{path}: not a verification file (unpickling failed: {type(exc).__name__})") from None
    return _checked(path, loaded)


def _checked(path: Path, loaded) -> VerificationBin:
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
        raise BinError(f"{path}: expected (images, issame), got {type(loaded).__name__}")
    images, issame = loaded
    images = [_image_bytes(path, i, image) for i, image in enumerate(images)]
    issame = np.asarray(issame)
    if issame.size == 0:
        raise BinError(f"{path} holds no pairs")
    if issame.ndim != 1 or issame.dtype.kind not in "bi" or (issame.dtype.kind == "i" and not np.isin(issame, (0, 1)).all()):
        raise BinError(f"{path}: issame must be a list of booleans")
    if len(images) != 2 * len(issame):
        raise BinError(f"{path}: {len(images)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    return VerificationBin(images, issame.astype(bool))


def _image_bytes(path: Path, index: int, image) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 1:
        return image.tobytes()
    raise BinError(f"{path}: image {index} is a {type(image).__name__}, not encoded image bytes")


def write_bin(path: str | Path, images: list[bytes], issame) -> None:
    """A .bin insightface's readers load (pickle protocol 4, bytes and a list of bools)."""
    with open_atomic(path) as file:
        pickle.dump((list(images), [bool(s) for s in issame]), file, protocol=4)


def _extension(data: bytes) -> str:
    return ".png" if data.startswith(b"\x89PNG") else ".jpg"


def bin_pairs(bins: VerificationBin, folder: str | Path, pair_type: str = "unmasked-unmasked",
              masks: list | None = None) -> pd.DataFrame:
    """The pairs as `maskgen pairs` writes them (PAIRS_SCHEMA columns), the images written
    into `folder` as <index>.jpg/.png (absolute paths in the table); `masks`: per image its
    MaskSpec or None, for the mask_type/wear columns. Identities are unknown: a pair's two
    sides are named after the pair (same: one name; different: two)."""
    folder = Path(folder)
    paths = []
    for index, data in enumerate(bins.images):
        target = folder / f"{index:06d}{_extension(data)}"
        if not (target.is_file() and target.stat().st_size == len(data)):
            write_atomic(target, data)
        paths.append(str(target.absolute()))
    n = bins.pairs
    spec = masks or [None] * len(bins.images)
    return pd.DataFrame({
        "fold": (np.arange(n) * FOLDS // n).astype(np.int16),
        "pair_type": pair_type,
        "same": bins.issame,
        "path_a": paths[0::2], "path_b": paths[1::2],
        "identity_a": [f"pair{k}" for k in range(n)],
        "identity_b": [f"pair{k}" if same else f"pair{k}b" for k, same in enumerate(bins.issame)],
        "src_a": [f"{2 * k}" for k in range(n)], "src_b": [f"{2 * k + 1}" for k in range(n)],
        "mask_type_a": [s.mask_type if s else "" for s in spec[0::2]], "mask_type_b": [s.mask_type if s else "" for s in spec[1::2]],
        "wear_a": [s.wear if s else "" for s in spec[0::2]], "wear_b": [s.wear if s else "" for s in spec[1::2]],
    })


@dataclass(frozen=True)
class MaskedBin:
    images: list[bytes]  # the masked images re-encoded (JPEG 95), the others' original bytes
    specs: list  # per image: its MaskSpec, or None (left unmasked, or the mask could not be fitted)


def mask_bin(bins: VerificationBin, mode: str, options, seed: int = 0, landmarker=None, quality: int = 95) -> MaskedBin:
    """MLFW-style masked copy: `first` masks the first image of every pair (masked-unmasked
    pairs), `both` both of them; the two masks of a pair are the same mask (type, colour,
    pattern, wear), so a mask is never what tells two people apart. Images left unmasked keep
    their bytes. Aligned 112x112 (ArcFace) crops are expected; landmarks from their layout."""
    import cv2

    from maskgen.faces.landmarks import Landmarker
    from maskgen.images import ImageError, color_mode, decode_image, encode_image
    from maskgen.masks.online import mask_face
    from maskgen.masks.options import variant_seed

    if mode not in MASK_MODES:
        raise ValueError(f"--mask: choose from {', '.join(MASK_MODES)}, not {mode!r}")
    landmarker = landmarker or Landmarker()
    images, specs = list(bins.images), [None] * len(bins.images)
    chosen = [i for k in range(bins.pairs) for i in ((2 * k,) if mode == "first" else (2 * k, 2 * k + 1))]
    for index in chosen:
        try:
            decoded = decode_image(bins.images[index])
        except ImageError:
            continue  # an image that does not decode stays as it is (and unmasked)
        pixels = cv2.cvtColor(decoded.bgr, cv2.COLOR_BGR2GRAY) if color_mode(decoded) == "gray" else decoded.bgr
        spec = options.sample(variant_seed(seed, f"bin pair {index // 2}"))  # one mask per pair
        masked, ok = mask_face(pixels, landmarker.aligned(decoded.bgr).points, spec)
        if ok:
            images[index], specs[index] = encode_image(masked, "JPEG", quality), spec
    return MaskedBin(images, specs)


def bin_digest(path: str | Path) -> str:
    """A short content hash of the file (what a cached extraction is keyed by)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
