"""SphereFace-4/10/20/36/64 as released (sphereface_model.prototxt, Caffe), behind get_model(name),
and dlib's face-recognition ResNet (`dlib-resnet`, maskgen.recognition.dlib_resnet) beside them.

Each of the four stages (64/128/256/512 channels) is a stride-2 3x3 conv + PReLU, then
units of two (3x3 conv + PReLU) added back to their input; no BatchNorm; a fully connected
layer to the 512-d embedding. Initialisation as the prototxt: stride convs and fc5 "xavier"
(Caffe's: uniform +-sqrt(3 / fan_in), not PyTorch's xavier_uniform) with zero bias; residual
convs gaussian std 0.01 with their bias frozen at 0 in Caffe (so: no bias here); PReLU
slopes 0.25 per channel (Caffe's default).
"""

from __future__ import annotations

import math

import torch
from torch import nn

WIDTHS = (64, 128, 256, 512)
UNITS = {  # residual units per stage
    "sphereface4": (0, 0, 0, 0),
    "sphereface10": (0, 1, 2, 0),
    "sphereface20": (1, 2, 4, 1),
    "sphereface36": (2, 4, 8, 2),
    "sphereface64": (3, 8, 16, 3),
}
INPUT_SIZE = (112, 96)  # (height, width) of the SphereFace template
DLIB_RESNET = "dlib-resnet"
MODELS = (*UNITS, DLIB_RESNET)  # every name get_model builds
INITS = ("random", DLIB_RESNET)  # a backbone's first weights: its own initialisation, or dlib's released ones
FIXED = {DLIB_RESNET: {"width": 150, "height": 150, "embedding_size": 128}}  # settings a model allows no other value of
PIXEL_MEAN, PIXEL_SCALE = 127.5, 128.0  # every get_model backbone takes centre(pixels)


def centre(pixels: torch.Tensor) -> torch.Tensor:
    """RGB pixels 0..255 -> the input of every get_model backbone: (x - 127.5) / 128."""
    return (pixels.float() - PIXEL_MEAN) / PIXEL_SCALE


def caffe_xavier_(weight: torch.Tensor) -> None:
    fan_in = weight[0].numel()
    bound = math.sqrt(3.0 / fan_in)
    nn.init.uniform_(weight, -bound, bound)


class ResidualUnit(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu1 = nn.PReLU(channels, init=0.25)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu2 = nn.PReLU(channels, init=0.25)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.prelu2(self.conv2(self.prelu1(self.conv1(x))))


def stage(in_channels: int, out_channels: int, units: int) -> nn.Sequential:
    down = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
    caffe_xavier_(down.weight)
    nn.init.zeros_(down.bias)
    return nn.Sequential(down, nn.PReLU(out_channels, init=0.25), *(ResidualUnit(out_channels) for _ in range(units)))


class SphereFace(nn.Module):
    """Input: N x 3 x H x W RGB, (x - 127.5) / 128; output: N x embedding_size (not normalised)."""

    def __init__(self, units: tuple[int, ...], embedding_size: int = 512, input_size: tuple[int, int] = INPUT_SIZE):
        super().__init__()
        channels = (3,) + WIDTHS
        self.stages = nn.Sequential(*(stage(channels[i], channels[i + 1], n) for i, n in enumerate(units)))
        height, width = (math.ceil(side / 16) for side in input_size)  # four stride-2 convs, padding 1
        self.fc5 = nn.Linear(WIDTHS[-1] * height * width, embedding_size)
        caffe_xavier_(self.fc5.weight)
        nn.init.zeros_(self.fc5.bias)
        self.input_size = tuple(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc5(torch.flatten(self.stages(x), 1))


def get_model(name: str, embedding_size: int = 512, input_size: tuple[int, int] = INPUT_SIZE,
              init: str = "random") -> nn.Module:
    """A backbone; every one takes centre(pixels). `dlib-resnet` (150x150 dlib chips; it turns
    the centred input back into dlib's normalisation exactly) starts from dlib's released
    weights with init="dlib-resnet" (from model_path("resnet"): ModelNotFound or DlibModelError
    when that file is missing or not the net), else from PyTorch's default initialisation."""
    key = name.lower().replace("-", "").replace("_", "")
    if key == DLIB_RESNET.replace("-", ""):
        return dlib_backbone(embedding_size, input_size, pretrained=init == DLIB_RESNET)
    if key not in UNITS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    if init != "random":
        raise ValueError(f"init {init!r}: {name} starts from its own random initialisation only")
    return SphereFace(UNITS[key], embedding_size, input_size)


def dlib_backbone(embedding_size: int, input_size: tuple[int, int], pretrained: bool) -> nn.Module:
    from maskgen.recognition.dlib_resnet import CHIP, DlibResNet, load_state_dict

    if tuple(input_size) != (CHIP, CHIP):
        raise ValueError(f"model {DLIB_RESNET} takes {CHIP}x{CHIP} dlib face chips, not {input_size[1]}x{input_size[0]}")
    net = DlibResNet(embedding_size, inputs="centred")
    if pretrained:
        net.load_state_dict(load_state_dict())
        # The same function, rescaled so that an SGD step suits every layer: dlib's own
        # parametrisation makes SGD diverge at any useful learning rate (tests/test_dlib_resnet.py).
        net.balance_()
    return net
