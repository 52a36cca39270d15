"""dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) as an exact
PyTorch module, read straight from dlib's file (no dlib at run time).

The network is dlib's examples/dnn_face_recognition_ex.cpp `anet_type`, input to output:
  input_rgb_image_sized<150>: RGB, (pixel - mean) / 256, mean RGB from the file (122.782, 117.001, 104.298)
  con 32 7x7/2 (no padding), affine, relu, max_pool 3x3/2 (no padding)           -> 32 x 35 x 35
  residual stages: 32 x3; 64 down + x3; 128 down + x2; 256 down + x2; 256 down    -> 256 x 2 x 2
  avg_pool_everything, fc_no_bias 256 -> 128 (stored transposed)                   -> 128
A block is con 3x3, affine, relu, con 3x3/1 (padding 1), affine, added to its input, relu. In a
down block the first con is 3x3/2 without padding and the shortcut a 2x2/2 average pool; where
the two branches differ in size (channels in every down block, rows and columns in the last
two) dlib's add_prev zero-pads the smaller one at the end (bottom, right, last channels) to the
larger: it never crops. "affine" is batch-norm with its statistics folded in, a per-channel
scale and shift, kept so here: learnable, with no batch statistics to re-estimate from small
fine-tuning batches (dlib itself swaps bn_con for affine after training; see Affine for why
and a measurement). 5,614,592 parameters.
For fine-tuning call `balance_()` first: the same function bit for bit, with filters and
scales rescaled by powers of two to sizes a plain SGD step suits.

The file is dlib's serialisation of the whole net (dlib/dnn/core.h): the loss layer first
(loss_metric: margin, distance threshold), then one version number per layer from the output
inwards, then each layer's details from the input outwards (the first convolution's record
holds the input layer, and ends with one extra field, the sample expansion factor); tags and
skips hold nothing but their version. Integers are dlib's compact signed/unsigned encoding,
floats (portable, float_details.h) a mantissa then a base-2 exponent, tensors raw
little-endian float32. The parser follows the architecture above layer by layer and stops with
DlibModelError (one line: the file, the byte offset and what was expected) at the first field
that does not fit.

`dlib_resnet()` builds the module from the file model_path("resnet") names. It parses the .dat
every time: ~30 ms warm, ~50 ms in a fresh process (22 MB, mostly raw float32 arrays). A
state_dict cache keyed by the file's sha256 measured slower (~60 ms warm and cold: hashing the
file alone takes 13 ms, then torch.load of 22 MB), so there is none.
"""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskgen.recognition.nets import PIXEL_MEAN, PIXEL_SCALE

CHIP = 150  # input_rgb_image_sized<150>
EMBEDDING_SIZE = 128
MEAN_RGB = (122.782, 117.001, 104.298)  # the released file's; the loaded module uses the file's own
STEM = 32
# (channels, down) per residual block, input to output: alevel4 .. alevel0
BLOCKS = ((32, False),) * 3 + ((64, True),) + ((64, False),) * 3 + ((128, True),) + ((128, False),) * 2 \
    + ((256, True),) + ((256, False),) * 2 + ((256, True),)
PARAMETERS = 5_614_592
INPUTS = ("pixels", "centred")


class DlibModelError(ValueError):
    """A file that is not dlib's face-recognition ResNet as this port knows it; one line."""


# ---------------------------------------------------------------------------------------- module


class Affine(nn.Module):
    """dlib's affine_ in CONV_MODE: y = weight[c] * x + bias[c] (batch-norm, statistics folded in).

    Fine-tuned as it is, a learnable scale and shift, not turned back into batch-norm: the file
    holds no running statistics, and batch-norm in training mode would normalise by each
    batch's own, so the pretrained function changes before the first step and then follows
    the batch (32 faces of a few people, half masked: noisy, biased statistics; measured on the
    sample chips, batch-norm set to equal the affine on one batch of 32 moves the descriptors of
    other batches by 0.11 on average, 0.20 in batches of 8, against dlib's same-person
    threshold of 0.6, before any step). As scale and shift, training and eval mode compute
    the same function, resume needs no running buffers, DDP no SyncBatchNorm, and any batch
    size works. The price: nothing renormalises the activations as the filters move, which a
    low learning rate over a short run does not need."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias[:, None, None], x, self.weight[:, None, None])


def padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger of the two shapes, each zero-padded at the end."""
    if a.shape == b.shape:
        return a + b
    channels, height, width = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[3], 0, height - t.shape[2], 0, channels - t.shape[1]))

    return pad(a) + pad(b)


class Block(nn.Module):
    """relu(shortcut(x) + affine(con(relu(affine(con(x)))))); dlib's ares / ares_down."""

    def __init__(self, in_channels: int, channels: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.affine2 = Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(padded_add(shortcut, branch))


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet. forward: N x 3 x 150 x 150 RGB -> N x 128 (dlib's
    descriptor: not normalised; dlib calls two faces the same person below distance 0.6).

    `inputs="pixels"` (the default): float pixels 0..255, normalised here as dlib does,
    (x - mean) / 256. `inputs="centred"`: the input of every get_model backbone,
    nets.centre(pixels) = (x - 127.5) / 128, turned back into pixels first (exactly: both steps
    are exact in float32 on integer pixels), so the module drops into maskgen's trainer,
    evaluator and exporter beside the SphereFace nets.
    `features(x)`: the 256-d pooled trunk output, before the fc layer."""

    def __init__(self, embedding_size: int = EMBEDDING_SIZE, inputs: str = "pixels"):
        super().__init__()
        if inputs not in INPUTS:
            raise ValueError(f"inputs={inputs!r}: choose from {', '.join(INPUTS)}")
        self.inputs = inputs
        self.input_size = (CHIP, CHIP)
        self.embedding_size = embedding_size
        self.register_buffer("mean", torch.tensor(MEAN_RGB, dtype=torch.float32))
        self.conv1 = nn.Conv2d(3, STEM, 7, stride=2)
        self.affine1 = Affine(STEM)
        channels = (STEM,) + tuple(c for c, _ in BLOCKS)
        self.blocks = nn.Sequential(*(Block(channels[i], c, down) for i, (c, down) in enumerate(BLOCKS)))
        self.fc = nn.Linear(channels[-1], embedding_size, bias=False)
        self.register_buffer("output_scale", torch.ones(()))  # 1, or a power of two set by balance_()

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.inputs == "centred":
            x = x * PIXEL_SCALE + PIXEL_MEAN
        return (x - self.mean[:, None, None]) / 256.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.affine1(self.conv1(self.normalise(x)))), 3, 2)
        return self.blocks(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)) * self.output_scale

    def conv_affine_pairs(self) -> list[tuple[nn.Conv2d, Affine]]:
        pairs = [(self.conv1, self.affine1)]
        for block in self.blocks:
            pairs += [(block.conv1, block.affine1), (block.conv2, block.affine2)]
        return pairs

    @torch.no_grad()
    def balance_(self) -> DlibResNet:
        """Rescale each conv's filters (and bias) by a power of two per output channel to He
        scale, sqrt(2 / fan_in), and the affine scale after it by the inverse; the fc weights to
        sqrt(1 / fan_in) and output_scale by the inverse: the same function to the last bit, but
        a parametrisation that SGD can fine-tune. dlib's folded batch-norm leaves filters of
        ~1e-3 before scales of ~10 (and an fc of ~1e-2): there a gradient step moves a filter or
        the fc by ~100x its share of the learning rate and a scale by ~1/100 (and SGD diverges)."""
        for conv, affine in self.conv_affine_pairs():
            weight = conv.weight
            rms = weight.pow(2).mean(dim=(1, 2, 3)).sqrt().clamp_min(1e-30)
            target = math.sqrt(2.0 / weight[0].numel())
            scale = torch.exp2(torch.round(torch.log2(target / rms)))
            weight.mul_(scale[:, None, None, None])
            conv.bias.mul_(scale)
            affine.weight.div_(scale)
        rms = self.fc.weight.pow(2).mean().sqrt().clamp_min(1e-30)
        scale = torch.exp2(torch.round(torch.log2(math.sqrt(1.0 / self.fc.weight.shape[1]) / rms)))
        self.fc.weight.mul_(scale)
        self.output_scale.div_(scale)
        return self

    def extra_repr(self) -> str:
        return f"inputs={self.inputs!r}, input_size={self.input_size}, embedding_size={self.embedding_size}"


# ---------------------------------------------------------------------------------------- the file's layers

@dataclass(frozen=True)
class Layer:
    """One layer of dlib's net as its file holds it. kind: con, affine, relu, max_pool,
    avg_pool, add_prev, tag, skip, fc; target: the module that takes its weights."""

    kind: str
    target: str = ""
    filters: int = 0  # con, fc: outputs
    size: int = 0  # con, pools: window (0 for avg_pool_everything)
    stride: int = 1
    padding: int = 0
    tag: int = 0  # tag, skip, add_prev: the tag number


WRAPPERS = ("tag", "skip")  # layers that are no add_layer: a version and nothing more


def dlib_layers() -> list[Layer]:
    """anet_type of dnn_face_recognition_ex.cpp, input to output (the input layer sits in the first con)."""
    layers = [Layer("con", "conv1", STEM, 7, 2, 0), Layer("affine", "affine1"), Layer("relu"),
              Layer("max_pool", size=3, stride=2)]
    for i, (channels, down) in enumerate(BLOCKS):
        at = f"blocks.{i}."
        stride = 2 if down else 1
        layers += [Layer("tag", tag=1), Layer("con", at + "conv1", channels, 3, stride, 0 if down else 1),
                   Layer("affine", at + "affine1"), Layer("relu"),
                   Layer("con", at + "conv2", channels, 3, 1, 1), Layer("affine", at + "affine2")]
        if down:
            layers += [Layer("tag", tag=2), Layer("skip", tag=1), Layer("avg_pool", size=2, stride=2)]
        layers += [Layer("add_prev", tag=2 if down else 1), Layer("relu")]
    return layers + [Layer("avg_pool", size=0, stride=1), Layer("fc", "fc", EMBEDDING_SIZE)]


class _Reader:
    """dlib's serialisation primitives over the bytes of one file."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0
        self.where = "the file's start"

    def fail(self, expected: str, found: str = "") -> DlibModelError:
        if self.pos >= len(self.data):
            found = "the end of the file (truncated?)"
        return DlibModelError(f"{self.path} is not a dlib face-recognition ResNet (dlib_face_recognition_resnet_model_v1) "
                              f"this port can read: at byte {self.pos} ({self.where}) expected {expected}, "
                              f"found {found or 'something else'}")

    def take(self, count: int, expected: str) -> bytes:
        if self.pos + count > len(self.data):
            self.pos = len(self.data)
            raise self.fail(expected)
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def int(self, expected: str = "an integer", signed: bool = True) -> int:
        start = self.pos
        control = self.take(1, expected)[0]
        size = control & (0x0F if signed else 0x8F)
        if not 1 <= size <= 8:
            self.pos = start
            raise self.fail(expected, f"control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size, expected), "little")
        return -value if signed and control & 0x80 else value

    def uint(self, expected: str = "an unsigned integer") -> int:
        return self.int(expected, signed=False)

    def expect_int(self, allowed: tuple[int, ...], expected: str) -> int:
        start = self.pos
        value = self.int(expected)
        if value not in allowed:
            self.pos = start
            raise self.fail(expected, str(value))
        return value

    def float(self, expected: str = "a float") -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail(expected + " (binary)", "an ASCII float (dlib's old format, not supported)")
        mantissa, exponent = self.int(expected), self.int(expected)
        if exponent >= 32000:  # float_details: is_inf, is_ninf, is_nan
            return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)
        return math.ldexp(mantissa, exponent)

    def bool(self, expected: str = "a bool") -> bool:
        start = self.pos
        byte = self.take(1, expected)
        if byte not in (b"0", b"1"):
            self.pos = start
            raise self.fail(expected, repr(byte))
        return byte == b"1"

    def string(self, expected: str = "a string") -> str:
        start = self.pos
        size = self.uint(expected)
        if size > 256:
            self.pos = start
            raise self.fail(expected, f"a length of {size}")
        return self.take(size, expected).decode("latin-1")

    def version(self, allowed: tuple[str, ...]) -> str:
        start = self.pos
        expected = " or ".join(repr(v) for v in allowed)
        value = self.string(expected)
        if value not in allowed:
            self.pos = start
            raise self.fail(expected, repr(value))
        return value

    def shape(self, version: int, expected: str) -> tuple[int, ...]:
        self.expect_int((version,), f"{expected} (version {version})")
        dims = tuple(self.int(expected) for _ in range(4))
        if min(dims) < 0:
            raise self.fail(expected, f"dimensions {dims}")
        return dims

    def tensor(self, expected: str = "a tensor") -> np.ndarray:
        dims = self.shape(2, expected)
        count = math.prod(dims)
        return np.frombuffer(self.take(4 * count, f"{expected}: {count} floats"), "<f4").reshape(dims)


def _check(reader: _Reader, what: str, found, expected) -> None:
    if found != expected:
        raise reader.fail(f"{what} {expected}", str(found))


def _split(reader: _Reader, params: np.ndarray, shapes: list[tuple[int, ...]], what: str) -> list[np.ndarray]:
    sizes = [math.prod(s) for s in shapes]
    if params.size != sum(sizes):
        raise reader.fail(f"{what}: {sum(sizes)} parameters for {shapes}", f"{params.size}")
    flat, out, at = params.reshape(-1), [], 0
    for shape, size in zip(shapes, sizes):
        out.append(flat[at:at + size].reshape(shape))
        at += size
    return out


def _con(r: _Reader, layer: Layer, state: dict, in_channels: int) -> int:
    version = r.version(("con_4", "con_5", "con_6"))
    params = r.tensor("the con parameters")
    _check(r, "num_filters", r.int(), layer.filters)
    _check(r, "rows", r.int(), layer.size)
    _check(r, "columns", r.int(), layer.size)
    _check(r, "stride_y", r.int(), layer.stride)
    _check(r, "stride_x", r.int(), layer.stride)
    _check(r, "padding_y", r.int(), layer.padding)
    _check(r, "padding_x", r.int(), layer.padding)
    filters, biases = r.shape(1, "the filter shape"), r.shape(1, "the bias shape")
    _check(r, "filters", filters, (layer.filters, in_channels, layer.size, layer.size))
    _check(r, "biases", biases, (1, layer.filters, 1, 1))
    for _ in range(4):
        r.float("a learning-rate or weight-decay multiplier")
    use_bias = r.bool("use_bias") if version in ("con_5", "con_6") else True
    if version == "con_6" and r.bool("use_relu"):
        raise r.fail("a con without a fused relu", "use_relu=true")
    shapes = [filters, biases] if use_bias else [filters]
    parts = _split(r, params, shapes, "the con parameters")
    state[layer.target + ".weight"] = parts[0]
    state[layer.target + ".bias"] = parts[1].reshape(-1) if use_bias else np.zeros(layer.filters, np.float32)
    return layer.filters


def _affine(r: _Reader, layer: Layer, state: dict, channels: int) -> None:
    version = r.version(("affine_", "affine_2"))
    params = r.tensor("the affine parameters")
    gamma, beta = r.shape(1, "the gamma shape"), r.shape(1, "the beta shape")
    _check(r, "gamma", gamma, (1, channels, 1, 1))
    _check(r, "beta", beta, (1, channels, 1, 1))
    _check(r, "mode (CONV_MODE)", r.int(), 0)
    if version == "affine_2" and r.bool("disabled"):
        raise r.fail("an affine layer that is enabled", "disabled=true")
    weight, bias = _split(r, params, [gamma, beta], "the affine parameters")
    state[layer.target + ".weight"], state[layer.target + ".bias"] = weight.reshape(-1), bias.reshape(-1)


def _pool(r: _Reader, layer: Layer) -> None:
    r.version((f"{layer.kind}_2",))
    for what, value in (("rows", layer.size), ("columns", layer.size), ("stride_y", layer.stride),
                        ("stride_x", layer.stride), ("padding_y", layer.padding), ("padding_x", layer.padding)):
        _check(r, what, r.int(), value)


def _fc(r: _Reader, layer: Layer, state: dict, channels: int) -> None:
    version = r.version(("fc_2", "fc_3"))
    _check(r, "num_outputs", r.uint(), layer.filters)
    _check(r, "num_inputs", r.uint(), channels)
    params = r.tensor("the fc parameters")
    weights, biases = r.shape(1, "the weight shape"), r.shape(1, "the bias shape")
    _check(r, "weights", weights, (channels, layer.filters, 1, 1))
    _check(r, "bias mode (FC_NO_BIAS)", r.int(), 1)
    for _ in range(4):
        r.float("a learning-rate or weight-decay multiplier")
    if version == "fc_3":
        r.bool("use_bias")
    del biases  # fc_no_bias: its params hold the weights only
    (w,) = _split(r, params, [weights], "the fc weights")
    state[layer.target + ".weight"] = w.reshape(channels, layer.filters).T  # stored num_inputs x num_outputs


def _details(r: _Reader, layer: Layer, state: dict, channels: int) -> int:
    """One layer's own record; returns the channels after it."""
    if layer.kind == "con":
        return _con(r, layer, state, channels)
    if layer.kind == "affine":
        _affine(r, layer, state, channels)
    elif layer.kind == "relu":
        if r.version(("relu_", "relu_2")) == "relu_2" and r.bool("disabled"):
            raise r.fail("a relu that is enabled", "disabled=true")
    elif layer.kind in ("max_pool", "avg_pool"):
        _pool(r, layer)
    elif layer.kind == "add_prev":
        r.version(("add_prev_",))
    elif layer.kind == "fc":
        _fc(r, layer, state, channels)
        return layer.filters
    return channels


def _trailer(r: _Reader, version: int, input_layer: bool) -> None:
    """add_layer's bookkeeping after the details: 3 bools, then its cached tensors."""
    for what in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        r.bool(what)
    r.tensor("x_grad")
    r.tensor("cached_output")
    if input_layer:
        r.tensor("grad_final")
        if version >= 3:
            r.uint("the sample expansion factor")
    elif version >= 2:
        r.tensor("params_grad")


def parse_dat(data: bytes, path: str | Path = "<bytes>") -> dict[str, torch.Tensor]:
    """The bytes of dlib_face_recognition_resnet_model_v1.dat -> a DlibResNet state_dict."""
    r = _Reader(data, Path(path))
    layers = dlib_layers()
    r.where = "the loss layer"
    r.expect_int((1,), "the loss layer's version 1")
    if r.version(("loss_metric_2", "loss_metric_")) == "loss_metric_2":
        r.float("the margin")
        r.float("the distance threshold")
    versions = []
    for depth, layer in enumerate(reversed(layers)):  # output to input: one version each
        r.where = f"layer {len(layers) - depth} ({layer.kind}) of {len(layers)}, its version"
        if layer.kind in WRAPPERS:
            versions.append(r.expect_int((1,), f"the {layer.kind} layer's version 1"))
        elif depth == len(layers) - 1:
            versions.append(r.expect_int((2, 3), "the input add_layer's version 2 or 3"))
        else:
            versions.append(r.expect_int((1, 2), "an add_layer's version 1 or 2"))
    versions.reverse()
    r.where = "the input layer"
    r.version(("input_rgb_image_sized",))
    mean = [r.float("a mean colour") for _ in range(3)]
    _check(r, "rows", r.uint(), CHIP)
    _check(r, "columns", r.uint(), CHIP)
    state: dict[str, np.ndarray] = {"mean": np.array(mean, np.float32), "output_scale": np.array(1.0, np.float32)}
    channels = 3
    for index, (layer, version) in enumerate(zip(layers, versions)):
        if layer.kind in WRAPPERS:
            continue
        r.where = f"layer {index + 1} ({layer.kind}{' ' + layer.target if layer.target else ''}) of {len(layers)}"
        channels = _details(r, layer, state, channels)
        _trailer(r, version, input_layer=index == 0)
    if r.pos != len(r.data):
        r.where = "the end"
        raise r.fail("the end of the file", f"{len(r.data) - r.pos} more bytes")
    return {key: torch.from_numpy(np.array(value, np.float32, order="C")) for key, value in state.items()}


# ---------------------------------------------------------------------------------------- loading


def load_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The state_dict of the .dat at `path` (default: model_path("resnet")).
    ModelNotFound when the file is missing, DlibModelError when it is not the expected net."""
    from maskgen.faces.models import model_path

    path = model_path("resnet", path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DlibModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_dat(data, path)


def dlib_resnet(pretrained: bool = True, *, path: str | Path | None = None, inputs: str = "pixels") -> DlibResNet:
    """dlib's face-recognition ResNet (N x 3 x 150 x 150 RGB 0..255 -> N x 128), in eval mode.
    pretrained: with the weights of dlib_face_recognition_resnet_model_v1.dat (or `path`);
    else PyTorch's default initialisation (affine layers: scale 1, shift 0)."""
    if not pretrained:
        return DlibResNet(inputs=inputs).eval()
    state = load_state_dict(path)
    with torch.device("meta"):  # no random initialisation to throw away
        net = DlibResNet(inputs=inputs)
    net.load_state_dict(state, assign=True)
    return net.eval()


class _CallableModule(types.ModuleType):
    """Importing this module sets `maskgen.recognition.dlib_resnet` to it, over the package's
    function of that name: calling the module calls `dlib_resnet`, so the name works either way."""

    def __call__(self, *args, **kwargs) -> DlibResNet:
        return dlib_resnet(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
