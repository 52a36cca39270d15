"""The trainer: SGD on a backbone (SphereFace, or dlib's ResNet from its released weights) +
margin head, resumable exactly.

One process per GPU under torchrun (DDP; RANK / WORLD_SIZE / LOCAL_RANK from the
environment), or one plain process on a GPU or the CPU:

    maskgen train --config maskgen/recognition/configs/casia_sphereface20.toml
    torchrun --standalone --nproc-per-node 8 -m maskgen.cli train --config ...

Exact resume: the checkpoint holds model, head (with A-Softmax's iteration counter, hence
lambda), optimiser, scheduler, step, data position (epoch, batch) and RNG states; the data
order is a fixed shuffle per (seed, epoch) and each step's mirror flips come from a
generator seeded by (seed, step, rank), so a resumed run replays the straight run exactly.
"""

from __future__ import annotations

import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskgen.faces.models import ModelNotFound
from maskgen.recognition.checkpoints import load_checkpoint, pick_device, save_checkpoint
from maskgen.recognition.config import TrainConfig, online_masks
from maskgen.recognition.data import (
    EpochSampler,
    ManifestDataset,
    landmarks_for,
    make_loader,
    read_manifest,
    split_validation,
    unreadable_share,
)
from maskgen.recognition.dlib_resnet import DlibModelError
from maskgen.recognition.heads import get_head
from maskgen.recognition.nets import PIXEL_MEAN, PIXEL_SCALE, get_model

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
MAX_SKIP_WARNINGS = 10


class TrainError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


class Recogniser(nn.Module):
    """Backbone + margin head as one module, so DDP syncs both."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        embeddings = self.backbone(images)
        with torch.autocast(images.device.type, enabled=False):  # margin maths in fp32
            return self.head(embeddings.float(), labels)


@dataclass
class Position:
    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches done in this epoch

    def advance(self, batches_per_epoch: int) -> None:
        self.step += 1
        self.batch += 1
        if self.batch == batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    dist = Dist(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)  # before NCCL starts, so each rank talks from its own GPU
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Per-step randomness from (seed, step, rank) alone: independent of where a run resumed."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


def prepare_batch(images: torch.Tensor, config: TrainConfig, step: int, rank: int, device: torch.device,
                  channels_last: bool) -> torch.Tensor:
    """uint8 RGB N x 3 x H x W -> on the device, mirrored at random, nets.centre'd: (x - 127.5) / 128."""
    images = images.to(device, non_blocking=True)
    if config.mirror and len(images):
        flip = torch.rand(len(images), generator=step_generator(config.seed, step, rank)) < 0.5
        images = torch.where(flip.to(device)[:, None, None, None], images.flip(3), images)
    x = images.float().sub_(PIXEL_MEAN).div_(PIXEL_SCALE)  # nets.centre, in place
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def build_optimizer(model: nn.Module, config: TrainConfig):
    """SGD; biases get twice the LR and no weight decay (Caffe's lr_mult 2 / decay_mult 0)."""
    biases = [p for name, p in model.named_parameters() if name.endswith(".bias")]
    weights = [p for name, p in model.named_parameters() if not name.endswith(".bias")]
    groups = [{"params": weights, "lr": config.lr, "weight_decay": config.weight_decay},
              {"params": biases, "lr": 2 * config.lr, "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=config.lr_steps, gamma=config.lr_decay)
    return optimizer, scheduler


def train_step(model: nn.Module, optimizer, scheduler, x: torch.Tensor, labels: torch.Tensor, autocast):
    """One forward + backward + SGD step; returns (loss, cosines), detached."""
    with autocast:
        logits, cos = model(x, labels)
    loss = F.cross_entropy(logits, labels) if len(labels) else logits.sum() * 0.0  # all images unreadable
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach(), cos.detach()


def autocast_for(device: torch.device, bf16: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and bf16 else nullcontext()


def rng_states() -> dict:
    np_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RunLog:
    """log.jsonl (always), TensorBoard (when installed and wanted), the console (unless quiet)."""

    def __init__(self, out_dir: Path, config: TrainConfig, console, fresh: bool):
        self.path = out_dir / LOG_NAME
        if fresh:
            self.path.write_text("")
        self.console, self.board = console, None
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self.board = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board:
            for key, value in record.items():
                if key not in ("step", "epoch"):
                    self.board.add_scalar(f"train/{key}", value, record["step"])
        if self.console:
            self.console.print(
                f"step {record['step']:>6}  loss {record['loss']:.4f}  acc {record['acc']:.3f}  "
                f"lambda {record['lambda']:.2f}  lr {record['lr']:.4g}  {record['img_per_s']:.1f} img/s"
                + (f"  val acc {record['val_acc']:.3f}" if record.get("val_acc") is not None else ""),
                highlight=False)

    def close(self) -> None:
        if self.board:
            self.board.close()


@dataclass
class TrainResult:
    step: int
    loss: float
    acc: float
    skipped: int
    checkpoint: Path
    trained: int = 0  # steps run by this call (0: the checkpoint was already at max_steps)


class Meter:
    """Loss and accuracy summed on the device (no host sync per step), read at log steps."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen, self.tick = 0, time.perf_counter()

    def add(self, loss: torch.Tensor, cos: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss += loss * len(labels)
        self.correct += (cos.argmax(1) == labels).sum()
        self.seen += len(labels)

    def take(self, world_size: int = 1) -> dict:
        """Mean loss, accuracy and images/s since the last take, over all processes; then starts over."""
        seen = torch.tensor(float(self.seen), device=self.loss.device)
        totals = torch.stack([self.loss, self.correct.to(self.loss.dtype), seen])
        if world_size > 1:
            torch.distributed.all_reduce(totals)
        loss, correct, seen = totals.tolist()
        now = time.perf_counter()
        out = {"loss": loss / max(seen, 1), "acc": correct / max(seen, 1), "img_per_s": seen / (now - self.tick)}
        self.loss.zero_(), self.correct.zero_()
        self.seen, self.tick = 0, now
        return out


def _lambda(head: nn.Module) -> float:
    return head.current_lambda() if hasattr(head, "current_lambda") else 0.0


def _check_resumable(checkpoint: dict, config: TrainConfig, num_classes: int) -> None:
    saved = checkpoint["config"]
    for key in ("model", "head", "embedding_size", "width", "height", "m"):
        if saved[key] != getattr(config, key):
            raise TrainError(f"cannot resume: the checkpoint has {key}={saved[key]!r}, the config {getattr(config, key)!r}")
    if checkpoint["num_classes"] != num_classes:
        raise TrainError(f"cannot resume: the checkpoint has {checkpoint['num_classes']} classes, the manifest {num_classes}")


def configure_torch(config: TrainConfig, on_cuda: bool) -> None:
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = on_cuda and not config.deterministic


def open_manifest(config: TrainConfig, dist: Dist, console):
    """The manifest (built from the sample faces first when the config asks for that)."""
    if not config.manifest:
        raise TrainError("no manifest: set `manifest` in the config or --set manifest=PATH")
    path = Path(config.manifest)
    if config.samples and not path.exists() and dist.main:
        from maskgen.datasets.samples import build_sample_manifest

        if console:
            console.print(f"building {path} from the built-in sample faces (with generated masks)")
        build_sample_manifest(path, height=config.height, width=config.width)
    if dist.world_size > 1:
        torch.distributed.barrier()
    return read_manifest(path, config.image_root)


class Trainer:
    """One training run: set up in __init__ (restoring a checkpoint on resume), then run()."""

    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False, console=None, make_progress=None):
        self.config, self.dist = config, init_distributed()
        self.console = console if self.dist.main else None
        self.make_progress = make_progress  # (console, total, start) -> (a started-able progress, its task)
        self.device = pick_device(config.device, self.dist.local_rank, self.dist.world_size)
        self.on_cuda = self.device.type == "cuda"
        self.channels_last = self.on_cuda and config.channels_last
        self.out_dir = Path(config.out_dir)
        self.ckpt_path = self.out_dir / CHECKPOINT_NAME
        if self.ckpt_path.exists() and not (resume or overwrite):
            raise TrainError(f"{self.ckpt_path} exists: pass --resume to continue it, or --overwrite to start over")
        if config.batch_size % self.dist.world_size:
            raise TrainError(f"batch_size {config.batch_size} does not split over {self.dist.world_size} processes")
        configure_torch(config, self.on_cuda)
        self._build_data()
        self.resumed = resume and self.ckpt_path.exists()
        self._build_model(init="random" if self.resumed else config.init)  # resuming: the weights are the checkpoint's
        if self.resumed:
            self._restore(load_checkpoint(self.ckpt_path))
        elif resume and self.console:
            self.console.print(f"no checkpoint at {self.ckpt_path}: starting from scratch")
        self.model = self._wrap(self.recogniser)

    def _build_data(self) -> None:
        config, dist = self.config, self.dist
        manifest = open_manifest(config, dist, self.console)
        share, missing = unreadable_share(manifest)
        if share > config.max_unreadable:
            raise TrainError(f"{share:.1%} of the {len(manifest.paths)} images of {config.manifest} do not exist "
                             f"(e.g. {missing[0]}); max_unreadable is {config.max_unreadable:.1%}")
        self.manifest, val = split_validation(manifest, config.val_fraction, config.seed)
        self.dataset = ManifestDataset(self.manifest, config.height, config.width, *self._online_masks())
        self.val = None if val is None else ManifestDataset(val, config.height, config.width)
        self.sampler = EpochSampler(len(self.dataset), config.batch_size // dist.world_size, config.seed,
                                    dist.rank, dist.world_size)
        self.loader = make_loader(self.dataset, self.sampler, config.num_workers, pin_memory=self.on_cuda)
        if config.epochs:  # in steps from here on (the checkpoint keeps the steps)
            per_epoch = self.sampler.batches_per_epoch
            self.config = replace(config, max_steps=config.epochs * per_epoch, lr_steps=[e * per_epoch for e in config.lr_steps])

    def _online_masks(self) -> tuple:
        """(OnlineMasks, per-row landmarks, paired) for the dataset, or nothing."""
        config = self.config
        if not (config.online_masks or config.paired_masks):
            return ()
        from maskgen.datasets.runs import RunError

        try:
            points = landmarks_for(self.manifest, config.landmarks)
        except (RunError, OSError) as exc:
            raise TrainError(f"landmarks = {config.landmarks!r}: {exc}") from None
        if not any(p is not None for p in points):
            raise TrainError(f"no image of {config.manifest} has landmarks in {config.landmarks}: "
                             "run `maskgen landmarks` over the folder of the training images")
        return online_masks(config), points, config.paired_masks

    def _build_model(self, init: str) -> None:
        config = self.config
        seed_everything(config.seed)
        try:
            self.backbone = get_model(config.model, config.embedding_size, config.input_size(), init)
        except (ModelNotFound, DlibModelError) as exc:
            raise TrainError(f"init {init}: {exc}") from None
        self.head = get_head(config.head, config.embedding_size, self.manifest.num_classes, config)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.recogniser = Recogniser(self.backbone, self.head).to(self.device, memory_format=fmt)
        self.optimizer, self.scheduler = build_optimizer(self.recogniser, config)
        self.position, self.skipped, self.loaded = Position(), 0, 0

    def _restore(self, checkpoint: dict) -> None:
        _check_resumable(checkpoint, self.config, self.manifest.num_classes)
        self.backbone.load_state_dict(checkpoint["model"])
        self.head.load_state_dict(checkpoint["head"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.position = Position(checkpoint["step"], checkpoint["epoch"], checkpoint["batch"])
        self.skipped = checkpoint["skipped"]
        restore_rng_states(checkpoint["rng"])

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.dist.world_size > 1:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.on_cuda else None)
        return torch.compile(model) if self.config.compile else model

    def save(self) -> None:
        if self.dist.main:
            save_checkpoint(
                self.ckpt_path, format=1, model=self.backbone.state_dict(), head=self.head.state_dict(),
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                step=self.position.step, epoch=self.position.epoch, batch=self.position.batch,
                skipped=self.skipped, lambda_=_lambda(self.head), config=self.config.to_dict(),
                num_classes=self.manifest.num_classes, world_size=self.dist.world_size, rng=rng_states())

    def _announce(self) -> None:
        config, manifest = self.config, self.manifest
        self.console.print(
            f"{config.model} (init {config.init}) + {config.head} on {self.device} x{self.dist.world_size}: {len(self.dataset)} images "
            f"({manifest.masked} masked), {manifest.num_classes} classes, {self.sampler.batches_per_epoch} "
            f"batches/epoch, {'resuming at' if self.resumed else 'starting at'} step {self.position.step} "
            f"of {config.max_steps}", highlight=False)

    def _note_skipped(self, bad: list, loaded: int) -> None:
        """Count and show unreadable images; stop on a batch of nothing, or on too many."""
        for path, reason in bad:
            if self.console and self.skipped < MAX_SKIP_WARNINGS:
                self.console.print(f"[yellow]warning:[/yellow] skipped unreadable image {path}: {reason}", highlight=False)
            self.skipped += 1
        self.loaded += loaded + len(bad)
        if bad and not loaded:
            raise TrainError(f"no image of a whole batch could be read (e.g. {bad[0][0]}: {bad[0][1]})")
        if self.loaded >= 10 * self.config.batch_size and self.skipped > self.config.max_unreadable * self.loaded:
            raise TrainError(f"{self.skipped} of {self.loaded} images could not be read (e.g. {bad[0][0] if bad else '?'}); "
                             f"max_unreadable is {self.config.max_unreadable:.1%}")

    @torch.no_grad()
    def validate(self) -> float | None:
        """Top-1 accuracy of the head's plain cosines on the held-out photos of the training identities."""
        if self.val is None:
            return None
        self.recogniser.eval()
        correct = seen = 0
        for start in range(0, len(self.val), self.config.batch_size):
            images, labels, _ = self.val.batch(list(range(start, min(start + self.config.batch_size, len(self.val)))))
            x = prepare_batch(images, replace(self.config, mirror=False), 0, 0, self.device, self.channels_last)
            labels = labels.to(self.device)
            _, cos = self.recogniser(x, labels)
            correct, seen = correct + int((cos.argmax(1) == labels).sum()), seen + len(labels)
        self.recogniser.train()
        return correct / max(seen, 1)

    def _record(self, meter: Meter) -> dict:
        return {"step": self.position.step, "epoch": self.position.epoch, **meter.take(self.dist.world_size),
                "lambda": _lambda(self.head), "lr": self.scheduler.get_last_lr()[0], "skipped": self.skipped}

    def batches(self):
        """(images, labels, skipped) from the saved position on, epoch after epoch."""
        while True:
            self.sampler.set_position(self.position.epoch, self.position.batch)
            yield from self.loader

    def run(self) -> TrainResult:
        config, position = self.config, self.position
        self.first_step = position.step
        if self.dist.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        log = RunLog(self.out_dir, config, self.console, fresh=not self.resumed) if self.dist.main else None
        if self.console:
            self._announce()
        progress, task = self.make_progress(self.console, config.max_steps, position.step) if self.console and self.make_progress else (None, None)
        autocast, meter, last = autocast_for(self.device, config.bf16), Meter(self.device), {}
        self.model.train()
        with progress or nullcontext():
            for images, labels, bad in self.batches() if position.step < config.max_steps else ():
                self._note_skipped(bad, len(labels))
                x = prepare_batch(images, config, position.step, self.dist.rank, self.device, self.channels_last)
                labels = labels.to(self.device, non_blocking=True)
                meter.add(*train_step(self.model, self.optimizer, self.scheduler, x, labels, autocast), labels)
                position.advance(self.sampler.batches_per_epoch)
                done = position.step >= config.max_steps
                if progress:
                    progress.update(task, completed=position.step)
                if position.step % config.log_every == 0 or done:
                    last = self._record(meter)
                    if self.val is not None and (position.step % config.save_every == 0 or done or position.step % (10 * config.log_every) == 0):
                        last["val_acc"] = self.validate()
                    if log:
                        log.write(last)
                    if progress:
                        progress.update(task, metrics=f"loss {last['loss']:.3f} acc {last['acc']:.2f} "
                                                      f"λ {last['lambda']:.1f} {last['img_per_s']:.0f} img/s")
                if position.step % config.save_every == 0 or done:
                    self.save()
                if done:
                    break
        if not self.ckpt_path.exists():  # max_steps was reached before this call
            self.save()
        return self._finish(log, last)

    def _finish(self, log, last: dict) -> TrainResult:
        if log:
            log.close()
        if self.skipped and self.console:
            self.console.print(f"[yellow]{self.skipped} unreadable image(s) skipped in total (this process)[/yellow]")
        if self.dist.world_size > 1:
            torch.distributed.destroy_process_group()
        return TrainResult(self.position.step, last.get("loss", float("nan")), last.get("acc", float("nan")),
                           self.skipped, self.ckpt_path, self.position.step - self.first_step)


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, console=None, make_progress=None) -> TrainResult:
    """Train until config.max_steps; `console` (anything with rich's `print`) gets log lines,
    None = quiet; `make_progress(console, total, start)` -> (progress, task) draws a bar."""
    return Trainer(config, resume, overwrite, console, make_progress).run()
