"""Training checkpoints: saved atomically, loaded with every check a user's file needs, and
the one place that picks the torch device.

A checkpoint is a `torch.save` dict of tensors and plain values (weights_only loads it):
`model` (the backbone's state), `config` (the TrainConfig as a dict), `step`, and for
resuming the head, optimiser, scheduler, sampler and RNG states."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from maskgen.errors import one_line
from maskgen.files import open_atomic
from maskgen.recognition.nets import MODELS, get_model


class DeviceError(ValueError):
    """The device asked for is not there."""


CONFIG_KEYS = ("model", "embedding_size", "height", "width")


class CheckpointError(ValueError):
    """A file that is not a usable training checkpoint; the message says why, in one line."""


def _checked_config(checkpoint: object, path: Path) -> dict:
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("config"), dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not a maskgen training checkpoint (no saved config and model state)")
    config = checkpoint["config"]
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise CheckpointError(f"{path}: the saved config lacks {', '.join(missing)}")
    if config["model"] not in MODELS:
        raise CheckpointError(f"{path}: model {config['model']!r} is not a SphereFace net or dlib-resnet, the nets this "
                              f"version can build ({', '.join(MODELS)})")
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


def load_backbone(path: str | Path) -> tuple[nn.Module, dict]:
    """(the checkpoint's backbone in eval mode on the CPU, its training config), checked:
    CheckpointError says in one line why a file is not a usable checkpoint."""
    checkpoint = load_checkpoint(path)
    return backbone_from(checkpoint, path), checkpoint["config"]


def backbone_from(checkpoint: dict, path: str | Path) -> nn.Module:
    """The backbone a loaded checkpoint describes, its weights checked and loaded, in eval mode
    (a fine-tuned dlib-resnet too: its weights come from the checkpoint, not dlib's file)."""
    path = Path(path)
    config = _checked_config(checkpoint, path)
    net = get_model(config["model"], config["embedding_size"], (config["height"], config["width"]))
    _load_weights(net, checkpoint["model"], config, path)
    return net.eval()


def pick_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a device; under torchrun (world_size > 1) each
    process takes the GPU of its local rank. DeviceError when CUDA is asked for and absent."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r} (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asked for, but torch sees no CUDA device")
    return torch.device(f"cuda:{local_rank}") if device.type == "cuda" and world_size > 1 else device


def save_checkpoint(path: str | Path, **state) -> None:
    with open_atomic(path) as file:
        torch.save(state, file)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, unchecked; CheckpointError (one line) when it is missing or
    not a torch file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors: not a checkpoint (torch's messages run to many lines)
        raise CheckpointError(one_line(f"{path} is not a maskgen checkpoint ({type(exc).__name__}: {exc})",
                                       limit=200, joined=True)) from None
