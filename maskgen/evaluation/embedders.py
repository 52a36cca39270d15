"""Recognisers behind one interface: image files -> features concat(f(x), f(flip x)).

- `dlib-resnet`: dlib's pretrained 128-d ResNet (face_recognition_models), on its exact PyTorch
  port (maskgen.recognition.dlib_resnet: batched, CPU or GPU) where torch is installed, else
  run by dlib itself (DlibResNetReference; the same numbers, ~15x slower, CPU only).
- a checkpoint from `maskgen train` (SphereFace, or dlib-resnet fine-tuned): its saved config
  names the backbone and input size, maskgen.recognition.embeddings (torch) runs it, imported
  only when one is asked for.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from maskgen.images import ImageError, read_image

DLIB_RESNET = "dlib-resnet"
NEEDS_TORCH = "evaluating a checkpoint needs PyTorch: pip install 'maskgen[recognition]' (or use --model dlib-resnet)"
NEEDS_TORCH_HERE = "dlib-resnet on a GPU runs on its PyTorch port, which needs PyTorch: pip install 'maskgen[recognition]'"

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


class DlibResNetReference(Embedder):
    """dlib_face_recognition_resnet_model_v1 run by dlib itself (compute_face_descriptor), on
    dlib's 150x150 face chips: the reference for the PyTorch port, and the path without torch.
    150x150 images are taken as chips already (the sample faces are); other aligned crops
    (SphereFace 96x112, ArcFace 112x112, other chip sizes) are re-chipped from dlib's 5 points,
    found in the face box their layout implies (maskgen.faces.layouts), as dlib.get_face_chip does."""

    name = DLIB_RESNET
    CHIP = 150
    implementation = "dlib"

    def __init__(self, batch_size: int = 32):
        import dlib

        self.net = dlib.face_recognition_model_v1(str(self._model_file("resnet")))
        self._points5 = dlib.shape_predictor(str(self._model_file("landmarks5")))
        self.batch_size = batch_size

    @staticmethod
    def _model_file(name: str) -> Path:
        from maskgen.faces.models import ModelNotFound, model_path

        try:
            return model_path(name)
        except ModelNotFound as exc:
            raise EmbedderError(str(exc)) from None

    def info(self) -> dict:
        return {"model": self.name, "embedding_size": 128, "feature_dim": 256,
                "input": "150x150 dlib face chip, RGB", "source": "face_recognition_models",
                "implementation": self.implementation}

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


class DlibResNet(DlibResNetReference):
    """The same recogniser on maskgen.recognition.dlib_resnet, the exact PyTorch port of dlib's
    net (its descriptors equal dlib's to ~1e-6), batched, on the CPU or a GPU; chips are still
    cut by dlib. Convolutions run in full float32 (no TF32) so a GPU gives dlib's numbers too."""

    implementation = "pytorch"

    def __init__(self, device: str = "auto", batch_size: int = 64):
        import dlib

        try:
            from maskgen.recognition.checkpoints import DeviceError, pick_device
            from maskgen.recognition.dlib_resnet import DlibModelError, dlib_resnet
        except ImportError:
            raise EmbedderError(NEEDS_TORCH_HERE) from None
        self._points5 = dlib.shape_predictor(str(self._model_file("landmarks5")))
        try:
            self.device = pick_device(device)
            self.net = dlib_resnet(path=self._model_file("resnet")).to(self.device)
        except (DeviceError, DlibModelError) as exc:
            raise EmbedderError(str(exc)) from None
        self.batch_size = batch_size

    def info(self) -> dict:
        return {**super().info(), "device": str(self.device)}

    def features(self, chips: list[np.ndarray]) -> np.ndarray:
        """150x150 RGB chips -> N x 256: concat(f(x), f(flip x)), one pass over both."""
        import torch

        with torch.inference_mode(), _full_float32(self.device):
            x = torch.from_numpy(np.stack(chips)).to(self.device).permute(0, 3, 1, 2).float()
            both = self.net(torch.cat([x, x.flip(3)]))
            return torch.cat([both[: len(x)], both[len(x):]], dim=1).cpu().numpy()


@contextlib.contextmanager
def _full_float32(device) -> Iterator[None]:
    """On CUDA: float32 convolutions and matmuls in IEEE float32 (no TF32) for the block."""
    if device.type != "cuda":
        yield
        return
    import torch

    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        switches = [(torch.backends.cudnn.conv, "fp32_precision", "ieee"), (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    else:  # torch before 2.9: the legacy switches
        switches = [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in switches]
    try:
        for owner, name, value in switches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def _torch_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except ValueError:  # a half-imported or stubbed torch
        return False


def dlib_resnet_embedder(device: str = "auto", batch_size: int = 64) -> DlibResNetReference:
    """The PyTorch port where torch is installed, else dlib's own path (CPU only)."""
    if _torch_available():
        return DlibResNet(device, batch_size)
    if device not in ("auto", "cpu"):
        raise EmbedderError(f"--device {device}: {NEEDS_TORCH_HERE}")
    return DlibResNetReference(batch_size)


class TrainedCheckpoint(Embedder):
    """A checkpoint.pt from `maskgen train`: the model name and input size come from the
    config saved in it; images are prepared as the trainer prepares them (a fine-tuned
    dlib-resnet takes the 150x150 chips as they are, not re-chipped by dlib)."""

    def __init__(self, checkpoint: Path, device: str = "auto", batch_size: int = 64):
        try:
            from maskgen.recognition.checkpoints import CheckpointError, DeviceError
            from maskgen.recognition.embeddings import CheckpointFeatures
        except ImportError:
            raise EmbedderError(NEEDS_TORCH) from None
        try:
            self.inner = CheckpointFeatures(checkpoint, device, batch_size)
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
        return dlib_resnet_embedder(device, batch_size)
    path = Path(model)
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise EmbedderError(f"--model {model}: no such checkpoint file (give a checkpoint.pt from `maskgen train`, or {DLIB_RESNET})")
    return TrainedCheckpoint(path, device, batch_size)
