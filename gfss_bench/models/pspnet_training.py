"""Base training of PSPNet-ResNet50 on the base classes of a fold (`gfss-bench train --arch pspnet-resnet50`).

Data: the benchmark's train split (`open_split`), filtered and relabelled by the protocol (docs/protocol.md §3):
`standard` drops the images that contain a novel class, `practical` keeps them with novel pixels as
background (`Protocol.keeps_training_image`, `Protocol.training_label_lut`); void stays 255 (ignored).

Recipe. DIaM's config has no training section; the defaults follow RePRI's public PSPNet-ResNet50
base-training configs: crop 417 (the benchmark's image size), batch 12, SGD with momentum 0.9 and weight
decay 1e-4, lr 0.0025, 50 epochs on PASCAL and 20 on COCO (20 on the synthetic data too), random scale
0.5-2.0, rotation within +-10 degrees, horizontal flips. As in PSPNet, the head (ppm, bottleneck,
classifier) learns at 10x the backbone lr and the lr follows a poly schedule (power 0.9) over all steps
(RePRI: cosine, Nesterov, no head factor, also vertical flips). The backbone starts from an ImageNet ResNet-50
(`pspnet_from_backbone_weights`). Samples are augmented in DataLoader workers: scale (bilinear image,
nearest label), rotation with probability 0.5, flip with probability 0.5, then a random crop that pads
the image with the mean pixel and the label with 255. The loss is pixel cross-entropy over background +
base classes on logits upsampled bilinearly (align_corners=True) to the crop, 255 ignored. On CUDA the
forward pass runs under float16 autocast with gradient scaling.

Determinism and resuming. Epoch e visits the kept images in a permutation drawn from (seed, e), and sample
number g of the run is augmented with a generator seeded by (seed, g): batches depend neither on the number
of workers nor on where a run was resumed. Every `save_every` steps, and at the end of the step during which
Ctrl-C was pressed, the model, optimizer, gradient scaler, step and torch RNG states are written atomically
to the resume file (temporary file + os.replace; readable with weights_only=True). Rerunning the same
command continues from it; on CPU the result equals an uninterrupted run bit for bit.

Files, under OUT/<benchmark>-<protocol>/ (a folder that `gfss-bench run --checkpoint` accepts):

    fold<F>.pth        final weights in DIaM's layout: {'state_dict': ..., 'gfss_bench': metadata}
    fold<F>.json       manifest: metadata, command, training time, final loss, val base mIoU
    fold<F>.resume.pt  resume state while training; removed once fold<F>.pth is written
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset

from gfss_bench.data.datasets import SegmentationList, open_split
from gfss_bench.data.transforms import IGNORE_LABEL, IMAGENET_MEAN, normalize
from gfss_bench.errors import GFSSError
from gfss_bench.models.checkpoints import (TRAINING_METADATA, load_checkpoint_segmenter,
                                           pspnet_from_backbone_weights)
from gfss_bench.models.pspnet import BACKBONE_MODULES, OUTPUT_STRIDE, PSPNetResNet50
from gfss_bench.models.training import evaluate_base_miou, training_indices
from gfss_bench.paths import atomic_write_text, make_temporary_file
from gfss_bench.progress import console
from gfss_bench.protocols import Benchmark, get_benchmark, get_protocol

FORMAT = 1
MEAN_PIXEL = tuple(round(255 * m) for m in IMAGENET_MEAN)  # image padding: zero after normalisation


@dataclass(frozen=True)
class PSPNetTrainConfig:
    """The training recipe. Every field enters the run's identity, so a resumed run must use the same."""

    epochs: Optional[int] = None  # None: the benchmark's train_epochs (unless steps is set)
    steps: Optional[int] = None  # total optimisation steps, instead of epochs
    batch_size: int = 12
    crop_size: Optional[int] = None  # None: the benchmark's image size (417 real, 97 synthetic)
    lr: float = 0.0025  # backbone; the head gets head_lr_factor times this
    head_lr_factor: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    scale_min: float = 0.5
    scale_max: float = 2.0
    rotate: float = 10.0  # maximum rotation in degrees (0: none)
    hflip: bool = True
    seed: int = 0

    def resolved(self, benchmark: Benchmark) -> "PSPNetTrainConfig":
        """Defaults filled in for `benchmark` (epochs, crop size), every value checked."""
        if self.epochs is not None and self.steps is not None:
            raise GFSSError("--epochs and --steps are exclusive: give one of them")
        for option, value in (("--epochs", self.epochs), ("--steps", self.steps), ("--batch-size", self.batch_size),
                              ("--crop-size", self.crop_size)):
            if value is not None and value < 1:
                raise GFSSError(f"{option} must be >= 1, got {value}")
        crop = self.crop_size or benchmark.image_size
        if (crop - 1) % OUTPUT_STRIDE:
            raise GFSSError(f"--crop-size {crop}: PSPNet-ResNet50 needs (size - 1) % 8 == 0, e.g. 417, 97 or 65")
        if not (self.lr > 0 and self.head_lr_factor > 0 and 0 < self.scale_min <= self.scale_max and self.rotate >= 0):
            raise GFSSError(f"invalid training settings: lr {self.lr} and head_lr_factor {self.head_lr_factor} must "
                            f"be > 0, 0 < scale_min {self.scale_min} <= scale_max {self.scale_max}, rotate "
                            f"{self.rotate} >= 0")
        epochs = None if self.steps is not None else self.epochs or benchmark.train_epochs
        return replace(self, epochs=epochs, crop_size=crop)


def poly_lr(base_lr: float, step: int, total_steps: int, power: float) -> float:
    """The poly schedule: base_lr * (1 - step / total_steps) ** power, for steps 0 .. total_steps - 1."""
    return base_lr * (1 - step / total_steps) ** power


# ----------------------------------------------------------------------------------------- data


def _window(length: int, size: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """(source offset, destination offset, extent) of a random crop of `size` along an axis of `length`:
    a random part of a longer axis, or a shorter axis at a random place in the padded crop."""
    offset = int(rng.integers(0, abs(length - size) + 1))
    return (offset, 0, size) if length >= size else (0, offset, length)


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, config: PSPNetTrainConfig
            ) -> tuple[np.ndarray, np.ndarray]:
    """One training sample from uint8 [H, W, 3] / [H, W] (training labels): random scale, rotation,
    horizontal flip and crop to config.crop_size (image padded with the mean pixel, label with 255)."""
    height, width = label.shape
    scale = rng.uniform(config.scale_min, config.scale_max)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    pil_image = Image.fromarray(image).resize(size, Image.BILINEAR)
    pil_label = Image.fromarray(label).resize(size, Image.NEAREST)
    if config.rotate and rng.random() < 0.5:
        angle = rng.uniform(-config.rotate, config.rotate)
        pil_image = pil_image.rotate(angle, Image.BILINEAR, fillcolor=MEAN_PIXEL)
        pil_label = pil_label.rotate(angle, Image.NEAREST, fillcolor=IGNORE_LABEL)
    image, label = np.asarray(pil_image), np.asarray(pil_label)
    if config.hflip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    crop = config.crop_size
    out_image = np.empty((crop, crop, 3), dtype=np.uint8)
    out_image[:] = MEAN_PIXEL
    out_label = np.full((crop, crop), IGNORE_LABEL, dtype=np.uint8)
    (sy, dy, ny), (sx, dx, nx) = _window(label.shape[0], crop, rng), _window(label.shape[1], crop, rng)
    out_image[dy:dy + ny, dx:dx + nx] = image[sy:sy + ny, sx:sx + nx]
    out_label[dy:dy + ny, dx:dx + nx] = label[sy:sy + ny, sx:sx + nx]
    return out_image, out_label


class TrainingSamples(Dataset):
    """Sample number g of a run -> (uint8 image [S, S, 3], uint8 training label [S, S]).

    An epoch is the largest multiple of the batch size that fits in the kept images; epoch e visits them in
    a permutation drawn from (seed, e), and sample g is augmented with a generator seeded by (seed, g).
    """

    def __init__(self, split: SegmentationList, indices: list[int], label_lut: np.ndarray,
                 config: PSPNetTrainConfig):
        self.split, self.indices, self.label_lut, self.config = split, list(indices), label_lut, config
        self.per_epoch = len(self.indices) // config.batch_size * config.batch_size
        self._epoch, self._order = -1, np.zeros(0, dtype=np.int64)

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.config.seed, 0, epoch]).permutation(len(self.indices))
        return self._order

    def __getitem__(self, sample: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, position = divmod(sample, self.per_epoch)
        image, label = self.split.load(self.indices[self._order_of(epoch)[position]])
        rng = np.random.default_rng([self.config.seed, 1, sample])
        image, label = augment(image, self.label_lut[label], rng, self.config)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(label))


# ----------------------------------------------------------------------------------------- files


def output_files(out: Path, benchmark_name: str, protocol_name: str, fold: int) -> tuple[Path, Path, Path]:
    """(final checkpoint, manifest, resume state) of a fold under `out`."""
    folder = Path(out).expanduser() / f"{benchmark_name}-{protocol_name}"
    return folder / f"fold{fold}.pth", folder / f"fold{fold}.json", folder / f"fold{fold}.resume.pt"


def _atomic_save(payload: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, rename: readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = make_temporary_file(path.parent, path.name)
    except OSError as error:
        raise GFSSError(f"cannot write {path} ({error.strerror or error}); check --out") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise GFSSError(f"cannot write {path} ({error.strerror or error}); check --out and the free disk "
                            "space") from None
        raise


def _differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """'key: stored -> current' for every identity field that differs (config fields as config.NAME)."""
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


class _StopRequest:
    """While active (main thread only), Ctrl-C sets `requested` instead of interrupting, so that training can
    save its state at the end of the current step; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested, self._previous = False, None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves the state and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _progress_bar(description: str, total: int, completed: int) -> tuple[Progress, int]:
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}"), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, disable=not console.is_terminal)
    return bar, bar.add_task(description, total=total, completed=completed, loss=float("nan"), lr=0.0)


def _log(message: str) -> None:
    console.print(message, markup=False, highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------- training


def train_pspnet(benchmark_name: str, fold: int, protocol_name: str, *, backbone_weights: Optional[Path],
                 out: Path = Path("checkpoints"), config: PSPNetTrainConfig = PSPNetTrainConfig(),
                 data_root: Optional[Path] = None, device: str = "cpu", workers: int = 0, amp: Optional[bool] = None,
                 save_every: int = 1000, evaluate: bool = True, force: bool = False,
                 log: Callable[[str], None] = _log, on_step: Optional[Callable[[int, float], None]] = None,
                 command: Optional[str] = None) -> tuple[PSPNetResNet50, dict]:
    """Train PSPNet-ResNet50 on the base classes of `fold` under `protocol_name` (see the module docstring).

    `backbone_weights`: an ImageNet ResNet-50 file, or None for a random initialisation (tests, smoke runs).
    `amp`: float16 autocast, CUDA only (None: on with CUDA). `force`: discard the resume state and any
    finished checkpoint first. `on_step(step, loss)` is called after every step (logging, tests).
    A fold whose checkpoint is already complete with the same settings is not retrained (only evaluated, when
    its manifest lacks the val mIoU).

    Returns (model in eval mode on `device`, manifest with 'path': the final checkpoint).
    """
    device = torch.device(device)
    if amp and device.type != "cuda":
        raise GFSSError("--amp (float16 autocast) needs --device cuda")
    if save_every < 1 or workers < 0:
        raise GFSSError(f"--save-every must be >= 1 and --workers >= 0, got {save_every} and {workers}")
    run = _PSPNetRun(benchmark_name, fold, protocol_name, config, out, data_root, device, workers,
                     device.type == "cuda" if amp is None else amp, evaluate, log)
    if force:
        for path in (run.final, run.manifest_path, run.state_path):
            path.unlink(missing_ok=True)
    run.build_model(backbone_weights)
    if run.final.exists():
        return run.already_trained()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    start, seconds, losses = run.train(save_every, on_step)
    metadata = {**run.identity, "steps_done": run.total, "backbone_weights": run.backbone}
    _atomic_save({"state_dict": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
                  TRAINING_METADATA: metadata}, run.final)
    run.state_path.unlink(missing_ok=True)
    info = {
        "file": run.final.name, "metadata": metadata, "command": command, "trained_at": started,
        "train_seconds": round(seconds, 1), "resumed_at_step": start, "device": str(device), "amp": run.amp,
        "workers": workers, "torch_version": torch.__version__,
        "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
    }
    return run.finish(run.model, info)


class _PSPNetRun:
    """One fold's training: its data, identity and files, and the steps `train_pspnet` takes in order (build the
    model, then either recognise a finished checkpoint or train with resume states, then finish the manifest)."""

    def __init__(self, benchmark_name: str, fold: int, protocol_name: str, config: PSPNetTrainConfig, out: Path,
                 data_root: Optional[Path], device: torch.device, workers: int, amp: bool, evaluate: bool,
                 log: Callable[[str], None]) -> None:
        self.benchmark = get_benchmark(benchmark_name)
        self.benchmark.check_fold(fold)
        self.protocol = get_protocol(protocol_name)
        self.fold, self.config = fold, config.resolved(self.benchmark)
        self.data_root, self.device, self.workers, self.amp = data_root, device, workers, amp
        self.evaluate, self.log = evaluate, log
        self.final, self.manifest_path, self.state_path = output_files(out, benchmark_name, protocol_name, fold)
        self.num_outputs = len(self.benchmark.base_classes(fold)) + 1
        train_set = open_split(self.benchmark, "train", data_root)
        train_set.class_pixel_counts(progress=console.is_terminal)  # cached; needed to apply the protocol
        self.indices = training_indices(train_set, self.benchmark, fold, self.protocol)
        self.samples = TrainingSamples(train_set, self.indices, self.protocol.training_label_lut(self.benchmark, fold),
                                       self.config)
        if self.samples.per_epoch == 0:
            raise GFSSError(f"{protocol_name} keeps {len(self.indices)} training image(s) of {benchmark_name} fold "
                            f"{fold}, fewer than --batch-size {self.config.batch_size}")
        self.total = self.config.steps or self.config.epochs * (self.samples.per_epoch // self.config.batch_size)
        self.model: Optional[PSPNetResNet50] = None
        self.backbone: Optional[dict] = None

    def build_model(self, backbone_weights: Optional[Path]) -> None:
        """The network to train (ImageNet backbone or random), and the identity a resume state must match."""
        torch.manual_seed(self.config.seed)
        if backbone_weights is not None:
            self.model, self.backbone = pspnet_from_backbone_weights(backbone_weights, self.num_outputs)
            self.log(f"loaded {self.backbone['tensors']} tensors from {self.backbone['path']} "
                     f"({self.backbone['layout']} layout, {self.backbone['stem']} stem)")
        else:
            self.model = PSPNetResNet50(self.num_outputs)
            self.log("no ImageNet weights: random initialisation (for tests and smoke runs only)")
        self.identity = {
            "format": FORMAT, "architecture": PSPNetResNet50.architecture, "stem": self.model.stem,
            "benchmark": self.benchmark.name, "fold": self.fold, "protocol": self.protocol.name,
            "novel_classes": list(self.benchmark.novel_classes(self.fold)), "num_outputs": self.num_outputs,
            "config": asdict(self.config), "total_steps": self.total, "training_images": len(self.indices),
            "backbone_sha256": self.backbone and self.backbone["sha256"],
        }

    def finish(self, trained: PSPNetResNet50, info: dict) -> tuple[PSPNetResNet50, dict]:
        """Write the manifest, then add the val base mIoU to it (with `evaluate`, unless it holds one)."""
        atomic_write_text(self.manifest_path, json.dumps(info, indent=2) + "\n")
        if self.evaluate and "val_base_miou" not in info:
            info["val_base_miou"] = round(evaluate_base_miou(
                trained, self.benchmark, self.fold, device=self.device, data_root=self.data_root,
                batch_size=self.config.batch_size, workers=self.workers, progress=console.is_terminal), 4)
            info["val_base_miou_definition"] = ("mean IoU over base classes (background excluded) on the val split "
                                                "at the benchmark's image size, novel pixels counted as background")
            atomic_write_text(self.manifest_path, json.dumps(info, indent=2) + "\n")
        return trained.eval(), {**info, "path": str(self.final)}

    def already_trained(self) -> tuple[PSPNetResNet50, dict]:
        """The finished checkpoint, when it was trained with this identity (else a GFSSError naming what differs)."""
        trained = load_checkpoint_segmenter(self.final, device=str(self.device))
        stored = {k: v for k, v in (trained.training_metadata or {}).items() if k in self.identity}
        changed = _differences(stored, self.identity)
        if changed:
            raise GFSSError(f"{self.final} holds a segmenter trained with other settings ({'; '.join(changed[:5])}); "
                            "pass --force to retrain it, or choose another --out")
        self.log(f"{self.final} is already trained with these settings (--force retrains it)")
        info = json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else \
            {"file": self.final.name, "metadata": trained.training_metadata}
        trained, info = self.finish(trained, info)
        return trained, {**info, "already_trained": True}

    def _optimizer(self) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler]:
        head = [p for name, p in self.model.named_parameters() if name.split(".", 1)[0] not in BACKBONE_MODULES]
        body = [p for name in BACKBONE_MODULES for p in getattr(self.model, name).parameters()]
        optimizer = torch.optim.SGD([{"params": body, "lr_factor": 1.0},
                                     {"params": head, "lr_factor": self.config.head_lr_factor}],
                                    lr=self.config.lr, momentum=self.config.momentum,
                                    weight_decay=self.config.weight_decay)
        return optimizer, torch.amp.GradScaler("cuda", enabled=self.amp)

    def _resume(self, optimizer, scaler) -> tuple[int, float]:
        """(step, seconds) of the resume state, loaded into the model, optimizer, scaler and RNGs; (0, 0) without."""
        if not self.state_path.exists():
            return 0, 0.0
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
            changed = _differences(state["identity"], self.identity)
        except Exception as error:  # noqa: BLE001 - unpickling raises many types for damaged files
            raise GFSSError(f"the resume state {self.state_path} cannot be read ({type(error).__name__}: {error}); "
                            "delete it or pass --force to start over") from None
        if changed:
            raise GFSSError(f"the resume state {self.state_path} belongs to a run with other settings "
                            f"({'; '.join(changed[:5])}); rerun with the original options, pass --force to start "
                            "over, or choose another --out")
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if self.amp and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if self.device.type == "cuda" and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.log(f"resuming from {self.state_path} at step {int(state['step'])}/{self.total}")
        return int(state["step"]), float(state["seconds"])

    def _save_state(self, step: int, seconds: float, optimizer, scaler) -> None:
        cuda = self.device.type == "cuda"
        _atomic_save({"format": FORMAT, "identity": self.identity, "step": step, "seconds": seconds,
                      "model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scaler": scaler.state_dict(),
                      "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if cuda
                              else None}}, self.state_path)

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = normalize(images.to(self.device, non_blocking=True))  # uint8 through pinned memory, float on the device
        y = labels.to(self.device, non_blocking=True).long()
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            logits = self.model(x)
        logits = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear", align_corners=True)
        valid = (y != IGNORE_LABEL).sum().clamp(min=1)  # a crop of padding only gives loss 0, not NaN
        return F.cross_entropy(logits, y, ignore_index=IGNORE_LABEL, reduction="sum") / valid

    def train(self, save_every: int, on_step: Optional[Callable[[int, float], None]]
              ) -> tuple[int, float, list[float]]:
        """The training loop from the resume state (if any) to `total`; returns (start step, seconds, losses)."""
        config = self.config
        self.model.to(self.device).train()
        optimizer, scaler = self._optimizer()
        start, seconds = self._resume(optimizer, scaler)
        loader = DataLoader(self.samples, batch_size=config.batch_size,
                            sampler=range(start * config.batch_size, self.total * config.batch_size),
                            num_workers=self.workers, pin_memory=self.device.type == "cuda",
                            prefetch_factor=4 if self.workers else None, worker_init_fn=_ignore_sigint,
                            generator=torch.Generator().manual_seed(config.seed))  # keeps the global RNG for dropout
        losses: list[float] = []
        step, clock = start, time.perf_counter()
        cudnn_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.device.type == "cuda"
        bar, task = _progress_bar(f"{self.benchmark.name} fold {self.fold} {self.protocol.name}", self.total, start)
        try:
            with _StopRequest() as stop, bar:
                for images, labels in loader:
                    for group in optimizer.param_groups:
                        group["lr"] = poly_lr(config.lr * group["lr_factor"], step, self.total, config.poly_power)
                    loss = self._loss(images, labels)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    step += 1
                    value = loss.item()
                    if not self.amp and not math.isfinite(value):  # with amp the scaler skips such steps
                        raise GFSSError(f"the loss became {value} at step {step} of {self.benchmark.name} fold "
                                        f"{self.fold}; lower --lr (the last resume state is kept; --force starts over)")
                    losses.append(value)
                    bar.update(task, completed=step, loss=float(np.mean(losses[-20:])),
                               lr=optimizer.param_groups[0]["lr"])
                    if on_step is not None:
                        on_step(step, value)
                    if step < self.total and (stop.requested or step % save_every == 0):
                        seconds += time.perf_counter() - clock
                        clock = time.perf_counter()
                        self._save_state(step, seconds, optimizer, scaler)
                        self.log(f"step {step}/{self.total}: loss {np.mean(losses[-50:]):.4f}, saved {self.state_path}")
                        if stop.requested:
                            raise KeyboardInterrupt
        finally:
            torch.backends.cudnn.benchmark = cudnn_benchmark
        return start, seconds + time.perf_counter() - clock, losses
