"""Embeddings of image files with a checkpoint of `maskgen train` (any backbone: SphereFace, or
a fine-tuned dlib-resnet), for verification.

Each image is prepared exactly as the trainer feeds it (recognition.data): decoded, fitted
to the checkpoint's input size with `fit_to` (identity for 96x112 SphereFace crops and for
150x150 dlib chips into dlib-resnet; the sample chips are centre-cropped and resized for
SphereFace), BGR -> RGB, nets.centre. The feature of an image is concat(f(x), f(flip x)) (the
LFW protocol of SphereFace), so a 512-d network gives 1024-d features, dlib-resnet 256-d.
`maskgen.evaluation` imports this module lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from maskgen.faces.layouts import fit_to
from maskgen.images import ImageError, read_image
from maskgen.recognition.checkpoints import load_backbone, pick_device
from maskgen.recognition.nets import FIXED, PIXEL_MEAN, PIXEL_SCALE, centre, get_model


class CheckpointFeatures:
    """A checkpoint's backbone as a feature extractor: image files -> concat(f(x), f(flip x))."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", batch_size: int = 64):
        self.net, self.config = load_backbone(checkpoint)
        self.device = pick_device(device)
        self.net.to(self.device)
        self.batch_size = batch_size
        self.height, self.width = self.config["height"], self.config["width"]
        self.dim = 2 * self.config["embedding_size"]

    def info(self) -> dict:
        return {"model": self.config["model"], "init": self.config.get("init", "random"),
                "embedding_size": self.config["embedding_size"],
                "input": f"{self.width}x{self.height} RGB, (x - {PIXEL_MEAN}) / {PIXEL_SCALE}", "feature_dim": self.dim,
                "device": str(self.device)}

    def _load(self, path: str) -> np.ndarray:
        """RGB uint8, height x width; ImageError/cv2.error for a bad file."""
        bgr = fit_to(read_image(path).bgr, self.height, self.width)
        return np.ascontiguousarray(bgr[:, :, ::-1])

    @torch.inference_mode()
    def features(self, rgb: np.ndarray) -> np.ndarray:
        """N x H x W x 3 uint8 RGB -> N x 2D float32: concat(f(x), f(flip x))."""
        x = centre(torch.from_numpy(rgb).to(self.device).permute(0, 3, 1, 2))
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
    from maskgen.recognition.checkpoints import save_checkpoint
    from maskgen.recognition.config import TrainConfig

    torch.manual_seed(seed)
    config = TrainConfig(model=model, **FIXED.get(model, {}))
    net = get_model(config.model, config.embedding_size, config.input_size())
    path = Path(path)
    save_checkpoint(path, format=1, model=net.state_dict(), config=config.to_dict(), step=0)
    return path
