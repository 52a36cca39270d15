"""Embeddings of image files with a trained SphereFace checkpoint, for verification.

Each image is prepared exactly as the trainer feeds it (recognition.data): decoded, fitted
to the checkpoint's input size with `fit_to` (identity for 96x112 SphereFace crops; the
150x150 sample chips are centre-cropped and resized), BGR -> RGB, (x - 127.5) / 128. The
feature of an image is concat(f(x), f(flip x)) (the LFW protocol of SphereFace), so a
512-d network gives 1024-d features. `maskgen.evaluation` imports this module lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from maskgen.faces.layouts import fit_to
from maskgen.images import ImageError, read_image
from maskgen.recognition.nets import UNITS, get_model
from maskgen.recognition.train import TrainError, load_checkpoint

CONFIG_KEYS = ("model", "embedding_size", "height", "width")


class CheckpointError(ValueError):
    """A file that is not a usable SphereFace checkpoint; the message says why, in one line."""


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _checked_config(checkpoint: object, path: Path) -> dict:
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("config"), dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not a maskgen training checkpoint (no saved config and model state)")
    config = checkpoint["config"]
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise CheckpointError(f"{path}: the saved config lacks {', '.join(missing)}")
    if config["model"] not in UNITS:
        raise CheckpointError(f"{path}: model {config['model']!r} is not a SphereFace net this version can build "
                              f"({', '.join(UNITS)})")
    return config


def _load_weights(net: nn.Module, state: object, config: dict, path: Path) -> None:
    expected = net.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the model state is not a state dict")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise CheckpointError(
            f"{path}: the weights do not fit {config['model']} at {config['width']}x{config['height']} as its config "
            f"says (another architecture?): {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(reshaped)} of another shape, e.g. {example}")
    net.load_state_dict(state)


def load_embedding_net(path: str | Path) -> tuple[nn.Module, dict]:
    """(the checkpoint's backbone in eval mode on the CPU, its training config)."""
    path = Path(path)
    try:
        checkpoint = load_checkpoint(path)
    except TrainError as exc:  # torch's unpickling messages run to many lines
        raise CheckpointError(one_line(str(exc))) from None
    config = _checked_config(checkpoint, path)
    net = get_model(config["model"], config["embedding_size"], (config["height"], config["width"]))
    _load_weights(net, checkpoint["model"], config, path)
    return net.eval(), config


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {name!r} asked for, but torch sees no CUDA device")
    return device


class SphereFaceEmbedder:
    """A checkpoint's backbone as a feature extractor: image files -> concat(f(x), f(flip x))."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", batch_size: int = 64):
        self.net, self.config = load_embedding_net(checkpoint)
        self.device = pick_device(device)
        self.net.to(self.device)
        self.batch_size = batch_size
        self.height, self.width = self.config["height"], self.config["width"]
        self.dim = 2 * self.config["embedding_size"]

    def info(self) -> dict:
        return {"model": self.config["model"], "embedding_size": self.config["embedding_size"],
                "input": f"{self.width}x{self.height} RGB, (x - 127.5) / 128", "feature_dim": self.dim,
                "device": str(self.device)}

    def _load(self, path: str) -> np.ndarray:
        """RGB uint8, height x width; ImageError/cv2.error for a bad file."""
        bgr = fit_to(read_image(path).bgr, self.height, self.width)
        return np.ascontiguousarray(bgr[:, :, ::-1])

    @torch.inference_mode()
    def features(self, rgb: np.ndarray) -> np.ndarray:
        """N x H x W x 3 uint8 RGB -> N x 2D float32: concat(f(x), f(flip x))."""
        x = torch.from_numpy(rgb).to(self.device).permute(0, 3, 1, 2).float().sub_(127.5).div_(128.0)
        both = self.net(torch.cat([x, x.flip(3)]))  # one pass over originals and mirrors
        original, mirrored = both[: len(x)], both[len(x):]
        return torch.cat([original, mirrored], dim=1).float().cpu().numpy()

    def embed_paths(self, paths: Sequence[str], on_batch: Callable[[int], None] | None = None,
                    ) -> tuple[np.ndarray, dict[str, str]]:
        """(len(paths) x 2D features, NaN rows for unreadable files; {path: reason} for those)."""
        out = np.full((len(paths), self.dim), np.nan, np.float32)
        failed: dict[str, str] = {}
        for start in range(0, len(paths), self.batch_size):
            rows, images = [], []
            for row in range(start, min(start + self.batch_size, len(paths))):
                try:
                    images.append(self._load(paths[row]))
                    rows.append(row)
                except (ImageError, cv2.error) as exc:  # cv2.error: too small to crop and resize
                    failed[paths[row]] = str(exc).strip().splitlines()[-1]
            if images:
                out[rows] = self.features(np.stack(images))
            if on_batch:
                on_batch(min(self.batch_size, len(paths) - start))
        return out, failed


def save_untrained_checkpoint(path: str | Path, model: str = "sphereface20", seed: int = 0) -> Path:
    """A randomly initialised net in the trainer's checkpoint format (model state + config):
    enough to measure embedding throughput, or to test loading, without training first."""
    from maskgen.recognition.config import TrainConfig
    from maskgen.recognition.train import save_checkpoint

    torch.manual_seed(seed)
    config = TrainConfig(model=model)
    net = get_model(config.model, config.embedding_size, config.input_size())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, format=1, model=net.state_dict(), config=config.to_dict(), step=0)
    return path
