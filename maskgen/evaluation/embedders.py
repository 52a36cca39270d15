"""Recognisers behind one interface: image files -> features concat(f(x), f(flip x)).

- `dlib-resnet`: dlib's pretrained 128-d ResNet (face_recognition_models); no torch.
- a SphereFace checkpoint from `maskgen train`: maskgen.recognition.embeddings (torch),
  imported only when one is asked for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from maskgen.images import ImageError, read_image

DLIB_RESNET = "dlib-resnet"
NEEDS_TORCH = "evaluating a checkpoint needs PyTorch: pip install 'maskgen[recognition]' (or use --model dlib-resnet)"

OnBatch = Callable[[int], None]  # called with the number of images just embedded


class EmbedderError(ValueError):
    """A recogniser that cannot be loaded; the message says why, in one line."""


class Embedder(ABC):
    name: str

    @abstractmethod
    def info(self) -> dict:
        """What the report records about the recogniser."""

    @abstractmethod
    def embed(self, paths: Sequence[str], on_batch: OnBatch | None = None) -> tuple[np.ndarray, dict[str, str]]:
        """(len(paths) x D features, NaN rows where a file could not be used; {path: reason})."""


class DlibResNet(Embedder):
    """dlib_face_recognition_resnet_model_v1 on dlib's 150x150 face chips. 150x150 images are
    taken as chips already (the sample faces are); other aligned crops (SphereFace 96x112,
    ArcFace 112x112, other chip sizes) are re-chipped from dlib's 5 points, found in the
    face box their layout implies (maskgen.faces.layouts), as dlib.get_face_chip does."""

    name = DLIB_RESNET
    CHIP = 150

    def __init__(self, batch_size: int = 32):
        import dlib

        from maskgen.faces.models import ModelNotFound, model_path

        try:
            self.net = dlib.face_recognition_model_v1(str(model_path("resnet")))
            self._points5 = dlib.shape_predictor(str(model_path("landmarks5")))
        except ModelNotFound as exc:
            raise EmbedderError(str(exc)) from None
        self.batch_size = batch_size

    def info(self) -> dict:
        return {"model": self.name, "embedding_size": 128, "feature_dim": 256,
                "input": "150x150 dlib face chip, RGB", "source": "face_recognition_models"}

    def chip(self, bgr: np.ndarray) -> np.ndarray:
        import dlib

        from maskgen.faces.layouts import face_box

        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        if rgb.shape[:2] == (self.CHIP, self.CHIP):
            return rgb
        height, width = rgb.shape[:2]
        shape = self._points5(rgb, dlib.rectangle(*face_box(width, height)))
        return dlib.get_face_chip(rgb, shape, size=self.CHIP, padding=0.25)

    def features(self, chips: list[np.ndarray]) -> np.ndarray:
        """150x150 RGB chips -> N x 256: concat(f(x), f(flip x))."""
        mirrored = [np.ascontiguousarray(c[:, ::-1]) for c in chips]
        both = np.array(self.net.compute_face_descriptor(chips + mirrored), np.float32)
        return np.hstack([both[: len(chips)], both[len(chips):]])

    def embed(self, paths: Sequence[str], on_batch: OnBatch | None = None) -> tuple[np.ndarray, dict[str, str]]:
        out = np.full((len(paths), 256), np.nan, np.float32)
        failed: dict[str, str] = {}
        for start in range(0, len(paths), self.batch_size):
            rows, chips = [], []
            for row in range(start, min(start + self.batch_size, len(paths))):
                try:
                    chips.append(self.chip(read_image(paths[row]).bgr))
                    rows.append(row)
                except ImageError as exc:
                    failed[paths[row]] = str(exc)
            if chips:
                out[rows] = self.features(chips)
            if on_batch:
                on_batch(min(self.batch_size, len(paths) - start))
        return out, failed


class SphereFaceCheckpoint(Embedder):
    """A checkpoint.pt from `maskgen train`: the model name and input size come from the
    config saved in it; images are prepared as the trainer prepares them."""

    def __init__(self, checkpoint: Path, device: str = "auto", batch_size: int = 64):
        try:
            from maskgen.recognition.checkpoints import CheckpointError, DeviceError
            from maskgen.recognition.embeddings import SphereFaceFeatures
        except ImportError:
            raise EmbedderError(NEEDS_TORCH) from None
        try:
            self.inner = SphereFaceFeatures(checkpoint, device, batch_size)
        except (CheckpointError, DeviceError) as exc:
            raise EmbedderError(str(exc)) from None
        self.name = self.inner.config["model"]
        self.checkpoint = checkpoint

    def info(self) -> dict:
        return {**self.inner.info(), "checkpoint": str(self.checkpoint)}

    def embed(self, paths: Sequence[str], on_batch: OnBatch | None = None) -> tuple[np.ndarray, dict[str, str]]:
        return self.inner.embed_paths(paths, on_batch)


def get_embedder(model: str, device: str = "auto", batch_size: int = 64) -> Embedder:
    """`dlib-resnet`, a checkpoint file, or a training folder holding checkpoint.pt."""
    if model == DLIB_RESNET:
        return DlibResNet()
    path = Path(model)
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise EmbedderError(f"--model {model}: no such checkpoint file (give a checkpoint.pt from `maskgen train`, or {DLIB_RESNET})")
    return SphereFaceCheckpoint(path, device, batch_size)
