"""Export the embedding network of a checkpoint for inference, with torch.export (.pt2).

torch.jit (TorchScript) is deprecated in current PyTorch; torch.export is its successor and
needs no extra package. The exported program takes RGB float pixels in 0..255, N x 3 x H x W at
the checkpoint's input size (any batch size: 112x96 for SphereFace, 150x150 dlib chips for
dlib-resnet), and returns N x embedding_size embeddings (512, or dlib-resnet's 128; not
L2-normalised); the normalisation the backbone takes, nets.centre, is inside. `maskgen.json`
in the archive records model, input size and colour order.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from maskgen.files import open_atomic
from maskgen.recognition.checkpoints import backbone_from, load_checkpoint
from maskgen.recognition.nets import PIXEL_MEAN, PIXEL_SCALE, centre

META_NAME = "maskgen.json"


class PixelNet(nn.Module):
    """RGB pixels 0..255 -> embeddings: the normalisation the network was trained with, then the net."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(centre(images))


def metadata(config: dict, step: int | None = None) -> dict:
    return {"model": config["model"], "embedding_size": config["embedding_size"],
            "input": {"height": config["height"], "width": config["width"], "channels": "RGB",
                      "range": f"0..255 float, normalised inside as (x - {PIXEL_MEAN}) / {PIXEL_SCALE}", "layout": "NCHW"},
            "head": config["head"], "step": step}


def export_embedder(checkpoint_path: str | Path, out: str | Path) -> Path:
    checkpoint = load_checkpoint(checkpoint_path)
    config = checkpoint["config"]
    embedder = PixelNet(backbone_from(checkpoint, checkpoint_path)).eval()
    example = torch.full((2, 3, config["height"], config["width"]), 127.0)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(embedder, (example,), dynamic_shapes=({0: batch},))
    out = Path(out)
    with open_atomic(out) as file:
        torch.export.save(program, file, extra_files={META_NAME: json.dumps(metadata(config, checkpoint["step"]))})
    return out


def load_exported(path: str | Path) -> tuple[nn.Module, dict]:
    """(a callable module: RGB 0..255 N x 3 x H x W -> embeddings, the metadata)."""
    extra = {META_NAME: ""}
    program = torch.export.load(path, extra_files=extra)
    return program.module(), json.loads(extra[META_NAME])
