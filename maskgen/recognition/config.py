"""Training configuration: one flat dataclass, loaded from a commented TOML file (nanoGPT
style) plus `KEY=VALUE` overrides; the resolved config is saved into every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from maskgen.recognition.heads import HEADS
from maskgen.recognition.nets import FIXED, INITS, MODELS

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which key and why."""


@dataclass
class TrainConfig:
    # data
    manifest: str = ""  # training manifest (Parquet file or folder) from `maskgen trainset`
    image_root: str = ""  # base of relative image paths ("" = the folder holding the manifest)
    samples: bool = False  # build `manifest` from the built-in sample faces when it is missing
    width: int = 96  # network input width; other image sizes are centre-cropped to the aspect and resized
    height: int = 112  # network input height
    mirror: bool = True  # random horizontal flip
    num_workers: int = 8  # decoding processes per training process (0 = decode in the training loop)
    val_fraction: float = 0.0  # source photos held out of training (with their masked variants) to log validation accuracy
    max_unreadable: float = 0.02  # stop when more than this share of the images cannot be read (a whole batch always stops)
    # online mask augmentation: originals masked as they are loaded (maskgen.OnlineMasks)
    online_masks: float = 0.0  # share of the images with landmarks that get a mask each time they are loaded (0 = off)
    landmarks: str = ""  # a `maskgen landmarks` run over the training images (their 68 points; needed for online masks)
    mask_type: str = "random"  # the online masks' options, as `maskgen generate`'s --type/--color/--pattern/--wear
    mask_color: str = "random"
    mask_pattern: str = "random"
    mask_wear: str = "proper"
    mask_seed: int = 1  # the online masks' seed: keep it apart from the test pairs' masks
    paired_masks: bool = False  # each face of a batch also comes with its masked twin (batches of up to 2x batch_size)
    # model and head
    model: str = "sphereface20"  # sphereface4/10/20/36/64 | dlib-resnet (150x150, 128-d)
    init: str = "random"  # random | dlib-resnet (dlib's released weights; model dlib-resnet only)
    embedding_size: int = 512
    head: str = "asoftmax"  # asoftmax | cosface | arcface
    m: int = 4  # A-Softmax angular margin (integer)
    lambda_base: float = 1000.0  # A-Softmax: lambda = max(lambda_min, base (1 + gamma it)^-power)
    lambda_gamma: float = 0.12
    lambda_power: float = 1.0
    lambda_min: float = 5.0
    scale: float = 64.0  # CosFace/ArcFace feature scale s
    cosface_margin: float = 0.35
    arcface_margin: float = 0.5
    # optimisation
    batch_size: int = 512  # global batch, split across processes
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on weights; biases get none (and 2x LR), as Caffe's decay_mult 0 / lr_mult 2
    lr_steps: list[int] = field(default_factory=lambda: [16000, 24000])  # LR x lr_decay at these steps (epochs when `epochs` is set)
    lr_decay: float = 0.1
    max_steps: int = 28000
    epochs: int = 0  # > 0: train this many epochs (max_steps = epochs x batches per epoch; lr_steps count epochs)
    # system
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast on CUDA (CPU always trains in fp32)
    channels_last: bool = True  # channels-last memory format on CUDA
    compile: bool = False  # torch.compile the model (worth it on CUDA; minutes of compiling first)
    deterministic: bool = False  # torch.use_deterministic_algorithms; slower, bit-exact reruns
    seed: int = 0
    # output
    out_dir: str = "out/train"  # checkpoint.pt, log.jsonl, config.json (and tensorboard/) go here
    log_every: int = 10  # steps between log lines
    save_every: int = 1000  # steps between checkpoints (one is always written at the end)
    tensorboard: bool = True  # also log to out_dir/tensorboard when tensorboard is installed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def input_size(self) -> tuple[int, int]:
        return self.height, self.width


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(key: str, value):
    kind = type(getattr(TrainConfig(), key))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list and isinstance(value, list) and all(isinstance(v, int) for v in value):
        return value
    if type(value) is not kind:
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE")
    try:
        return key, tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw.strip()  # a bare string: manifest=out/x.parquet


def build_config(values: dict) -> TrainConfig:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    config = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    validate(config)
    return config


def _fixed_settings(config: TrainConfig) -> tuple[bool, str]:
    fixed = FIXED.get(config.model, {})
    wrong = {key: getattr(config, key) for key, value in fixed.items() if getattr(config, key) != value}
    need = ", ".join(f"{key} = {value}" for key, value in fixed.items())
    got = ", ".join(f"{key} = {value}" for key, value in wrong.items())
    return not wrong, f"model {config.model} is fixed at {need}; the config has {got}"


def validate(config: TrainConfig) -> None:
    checks = [
        (config.model in MODELS, f"model: choose from {', '.join(MODELS)}"),
        (config.init in INITS, f"init: choose from {', '.join(INITS)}"),
        (config.init == "random" or config.init == config.model,
         f"init {config.init}: those weights fit model {config.init} only, not {config.model}"),
        _fixed_settings(config),
        (config.head in HEADS, f"head: choose from {', '.join(HEADS)}"),
        (config.batch_size >= 1 and config.max_steps >= 0, "batch_size must be >= 1 and max_steps >= 0"),
        (config.width >= 16 and config.height >= 16, "width and height must be >= 16"),
        (config.m >= 1, "m must be >= 1"),
        (config.log_every >= 1 and config.save_every >= 1, "log_every and save_every must be >= 1"),
        (config.num_workers >= 0, "num_workers must be >= 0"),
        (0 <= config.val_fraction < 1 and 0 <= config.max_unreadable < 1, "val_fraction and max_unreadable must be in [0, 1)"),
        (0 <= config.online_masks <= 1, "online_masks must be between 0 and 1"),
        (not (config.online_masks or config.paired_masks) or config.landmarks,
         "online_masks and paired_masks need `landmarks`: a `maskgen landmarks` run over the training images"),
        (config.epochs >= 0, "epochs must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if config.online_masks or config.paired_masks:
        online_masks(config)  # a bad mask option is an error now, not in a loader worker


def online_masks(config: TrainConfig):
    """The config's online mask augmentation (maskgen.masks.online.OnlineMasks)."""
    from maskgen.masks.online import OnlineMasks

    try:
        return OnlineMasks.parse(config.online_masks, config.mask_seed, type=config.mask_type, color=config.mask_color,
                                 pattern=config.mask_pattern, wear=config.mask_wear)
    except ValueError as exc:
        raise ConfigError(f"online masks: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults <- the TOML file <- KEY=VALUE overrides (TOML syntax; bare strings allowed)."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    values.update(_parse_override(text) for text in overrides)
    return build_config(values)
