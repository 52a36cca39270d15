"""The trainer: SGD on a SphereFace backbone + margin head, resumable exactly.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskgen.recognition.config import ConfigError, TrainConfig
from maskgen.recognition.data import EpochSampler, ManifestDataset, make_loader, read_manifest
from maskgen.recognition.heads import get_head
from maskgen.recognition.nets import get_model

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
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    return dist


def pick_device(config: TrainConfig, dist: Dist) -> torch.device:
    if config.device == "auto":
        return torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {config.device!r} asked for, but torch sees no CUDA device")
    if device.type == "cuda" and dist.world_size > 1:
        device = torch.device(f"cuda:{dist.local_rank}")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Per-step randomness from (seed, step, rank) alone: independent of where a run resumed."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


def prepare_batch(images: torch.Tensor, config: TrainConfig, step: int, rank: int, device: torch.device,
                  channels_last: bool) -> torch.Tensor:
    """uint8 RGB N x 3 x H x W -> on the device, mirrored at random, (x - 127.5) / 128."""
    images = images.to(device, non_blocking=True)
    if config.mirror and len(images):
        flip = torch.rand(len(images), generator=step_generator(config.seed, step, rank)) < 0.5
        images = torch.where(flip.to(device)[:, None, None, None], images.flip(3), images)
    x = images.float().sub_(127.5).div_(128.0)
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


def save_checkpoint(path: Path, **state) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents; it holds tensors and plain values only (weights_only loads it)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors: not a checkpoint
        raise TrainError(f"{path} is not a maskgen checkpoint ({type(exc).__name__}: {exc})") from None


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
                f"lambda {record['lambda']:.2f}  lr {record['lr']:.4g}  {record['img_per_s']:.1f} img/s",
                highlight=False)

    def close(self) -> None:
        if self.board:
            self.board.close()


def make_progress(console, total: int, start: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"),
                        TimeRemainingColumn(), console=console, transient=False)
    task = progress.add_task("train", total=total, completed=start, metrics="")
    return progress, task


@dataclass
class TrainResult:
    step: int
    loss: float
    acc: float
    skipped: int
    checkpoint: Path


def _lambda(head: nn.Module) -> float:
    return head.current_lambda() if hasattr(head, "current_lambda") else 0.0


def _check_resumable(checkpoint: dict, config: TrainConfig, num_classes: int) -> None:
    saved = checkpoint["config"]
    for key in ("model", "head", "embedding_size", "width", "height", "m"):
        if saved[key] != getattr(config, key):
            raise TrainError(f"cannot resume: the checkpoint has {key}={saved[key]!r}, the config {getattr(config, key)!r}")
    if checkpoint["num_classes"] != num_classes:
        raise TrainError(f"cannot resume: the checkpoint has {checkpoint['num_classes']} classes, the manifest {num_classes}")


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, console=None) -> TrainResult:
    """Train until config.max_steps; `console` (rich) gets progress and log lines, None = quiet."""
    dist = init_distributed()
    console = console if dist.main else None
    device = pick_device(config, dist)
    on_cuda = device.type == "cuda"
    out_dir = Path(config.out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    if ckpt_path.exists() and not (resume or overwrite):
        raise TrainError(f"{ckpt_path} exists: pass --resume to continue it, or --overwrite to start over")
    if config.batch_size % dist.world_size:
        raise TrainError(f"batch_size {config.batch_size} does not split over {dist.world_size} processes")
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = on_cuda and not config.deterministic

    if not config.manifest:
        raise TrainError("no manifest: set `manifest` in the config or --set manifest=PATH")
    manifest_path = Path(config.manifest)
    if config.samples and not manifest_path.exists() and dist.main:
        from maskgen.recognition.samples import build_sample_manifest

        if console:
            console.print(f"building {manifest_path} from the built-in sample faces (with generated masks)")
        build_sample_manifest(manifest_path)
    if dist.world_size > 1:
        torch.distributed.barrier()
    manifest = read_manifest(manifest_path, config.image_root)
    dataset = ManifestDataset(manifest, config.height, config.width)
    sampler = EpochSampler(len(dataset), config.batch_size // dist.world_size, config.seed, dist.rank, dist.world_size)
    loader = make_loader(dataset, sampler, config.num_workers, pin_memory=on_cuda)

    seed_everything(config.seed)
    backbone = get_model(config.model, config.embedding_size, config.input_size())
    head = get_head(config.head, config.embedding_size, manifest.num_classes, config)
    channels_last = on_cuda and config.channels_last
    recogniser = Recogniser(backbone, head).to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer, scheduler = build_optimizer(recogniser, config)
    position, skipped = Position(), 0

    resumed = resume and ckpt_path.exists()
    if resumed:
        checkpoint = load_checkpoint(ckpt_path)
        _check_resumable(checkpoint, config, manifest.num_classes)
        backbone.load_state_dict(checkpoint["model"])
        head.load_state_dict(checkpoint["head"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        position = Position(checkpoint["step"], checkpoint["epoch"], checkpoint["batch"])
        skipped = checkpoint["skipped"]
        restore_rng_states(checkpoint["rng"])
    elif resume and console:
        console.print(f"no checkpoint at {ckpt_path}: starting from scratch")

    model = recogniser
    if dist.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if on_cuda else None)
    if config.compile:
        model = torch.compile(model)

    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    log = RunLog(out_dir, config, console, fresh=not resumed) if dist.main else None
    if console:
        console.print(
            f"{config.model} + {config.head} on {device} x{dist.world_size}: {len(dataset)} images "
            f"({manifest.masked} masked), {manifest.num_classes} classes, {sampler.batches_per_epoch} batches/epoch, "
            f"{'resuming at' if resumed else 'starting at'} step {position.step} of {config.max_steps}",
            highlight=False)

    def checkpoint_now() -> None:
        if dist.main:
            save_checkpoint(
                ckpt_path, format=1, model=backbone.state_dict(), head=head.state_dict(),
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                step=position.step, epoch=position.epoch, batch=position.batch, skipped=skipped,
                lambda_=_lambda(head), config=config.to_dict(), num_classes=manifest.num_classes,
                world_size=dist.world_size, rng=rng_states())

    autocast = autocast_for(device, config.bf16)
    progress, task = make_progress(console, config.max_steps, position.step) if console else (None, None)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, last = 0, {"loss": float("nan"), "acc": float("nan")}
    tick = time.perf_counter()
    model.train()
    with progress or nullcontext():
        while position.step < config.max_steps:
            sampler.set_position(position.epoch, position.batch)
            for images, labels, bad in loader:
                skipped += len(bad)
                for path, reason in bad:
                    if console and skipped - len(bad) < MAX_SKIP_WARNINGS:
                        console.print(f"[yellow]warning:[/yellow] skipped unreadable image {path}: {reason}", highlight=False)
                x = prepare_batch(images, config, position.step, dist.rank, device, channels_last)
                labels = labels.to(device, non_blocking=True)
                loss, cos = train_step(model, optimizer, scheduler, x, labels, autocast)
                position.advance(sampler.batches_per_epoch)
                loss_sum += loss * len(labels)
                correct += (cos.argmax(1) == labels).sum()
                seen += len(labels)
                if progress:
                    progress.update(task, completed=position.step)
                if position.step % config.log_every == 0 or position.step == config.max_steps:
                    elapsed, tick = time.perf_counter() - tick, time.perf_counter()
                    last = {"loss": loss_sum.item() / max(seen, 1), "acc": correct.item() / max(seen, 1)}
                    record = {"step": position.step, "epoch": position.epoch, **last, "lambda": _lambda(head),
                              "lr": scheduler.get_last_lr()[0], "img_per_s": seen * dist.world_size / elapsed,
                              "skipped": skipped}
                    if log:
                        log.write(record)
                    if progress:
                        progress.update(task, metrics=f"loss {last['loss']:.3f} acc {last['acc']:.2f} "
                                                      f"λ {record['lambda']:.1f} {record['img_per_s']:.0f} img/s")
                    loss_sum.zero_(), correct.zero_()
                    seen = 0
                if position.step % config.save_every == 0 or position.step == config.max_steps:
                    checkpoint_now()
                if position.step >= config.max_steps:
                    break
    if not ckpt_path.exists():  # max_steps already reached before this call
        checkpoint_now()
    if log:
        log.close()
    if skipped and console:
        console.print(f"[yellow]{skipped} unreadable image(s) skipped in total (this process)[/yellow]")
    return TrainResult(position.step, last["loss"], last["acc"], skipped, ckpt_path)
