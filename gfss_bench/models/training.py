"""Base training of the small recipe's segmenters on the base classes of a fold, and base-class evaluation.

Training follows the protocol (docs/protocol.md §3): `standard` drops every training image containing a
novel class; `practical` keeps them with the novel pixels labelled background. The loss is plain pixel
cross-entropy over background + base classes (255 ignored) at the padded input resolution, on images prepared
exactly as evaluation prepares them (`transforms.preprocess`, OpenCV) at `benchmark.image_size`, with random
horizontal flips. How long to train is measured, not guessed: see `TrainConfig`.

The shipped weights are made with `python scripts/train_shipped.py` (one process per fold and protocol).
"""

from __future__ import annotations

import copy
import io
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from gfss_bench.data.datasets import SegmentationList, open_split
from gfss_bench.models.features import Extractor, chunked
from gfss_bench.metrics import scores
from gfss_bench.scoring import score_probabilities
from gfss_bench.data.transforms import IGNORE_LABEL, preprocess
from gfss_bench.errors import GFSSError
from gfss_bench.models.small_pspnet import SmallPSPNet, SmallPSPNetConfig
from gfss_bench.paths import atomic_write_bytes
from gfss_bench.progress import progress_bar
from gfss_bench.protocols import Benchmark, Protocol, get_benchmark, get_protocol


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of base training (all of them enter the zoo's config hash).

    The learning rate warms up for `warmup_steps`, then stays constant; an exponential moving average (EMA) of the
    weights and BatchNorm statistics is what gets evaluated and stored. Since nothing depends on the total number of
    steps, the EMA model at step t is the model a shorter run would have produced, and the plateau can be measured
    on one run: base mIoU on val every `eval_every` steps, and training stops at the first step t (a multiple of
    2 * `eval_every`, at least `min_steps`) where doubling from t/2 to t gained less than `plateau_gain`, or at
    `steps` (the cap)."""

    steps: int = 6000
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    ema_decay: float = 0.998
    eval_every: int = 250
    min_steps: int = 1000
    plateau_gain: float = 0.005
    hflip: bool = True
    seed: int = 0
    preprocessing: str = "opencv"  # training inputs are `transforms.preprocess`, as evaluation's

    def as_dict(self) -> dict:
        return asdict(self)


def default_arch_config(benchmark: Benchmark, fold: int) -> SmallPSPNetConfig:
    return SmallPSPNetConfig(num_outputs=len(benchmark.base_classes(fold)) + 1)


# ----------------------------------------------------------------------------------------- data


def load_preprocessed(dataset: SegmentationList, size: int, indices: Optional[list[int]] = None,
                      progress: bool = False, description: str = "loading") -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 [N, 3, S, S] normalised images, uint8 [N, S, S] ORIGINAL labels, 255 padding), each item exactly
    as evaluation prepares it (`transforms.preprocess`: OpenCV resizing, top-left padding)."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    images = torch.zeros((len(indices), 3, size, size), dtype=torch.float32)
    labels = torch.zeros((len(indices), size, size), dtype=torch.uint8)
    iterator = enumerate(indices)
    if progress:
        from rich.progress import track

        iterator = track(iterator, total=len(indices), description=description, transient=True)
    for row, index in iterator:
        images[row], label = preprocess(*dataset.load(index), size)
        labels[row] = label.to(torch.uint8)
    return images, labels


def training_indices(dataset: SegmentationList, benchmark: Benchmark, fold: int, protocol: Protocol) -> list[int]:
    """Items of the training split that the protocol keeps for base training."""
    counts = dataset.class_pixel_counts()
    novel = benchmark.novel_classes(fold)
    keep = [i for i in range(len(dataset)) if protocol.keeps_training_image(dataset.present_classes(i, counts), novel)]
    if not keep:
        raise GFSSError(f"protocol {protocol.name!r} leaves no training image for fold {fold} of {benchmark.name}")
    return keep


# ----------------------------------------------------------------------------------------- training


@dataclass
class TrainingState:
    """Everything a resumed training needs to continue exactly where it stopped."""

    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    order: torch.Tensor
    cursor: int = 0
    step: int = 0
    seconds: float = 0.0
    curve: list = field(default_factory=list)  # [[step, base mIoU of the EMA model], ...]
    losses: list = field(default_factory=list)

    def save(self, path: Path) -> None:
        payload = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                   "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                   "torch_rng": torch.get_rng_state(), "order": self.order, "cursor": self.cursor, "step": self.step,
                   "seconds": self.seconds, "curve": self.curve, "losses": self.losses}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def load(self, path: Path) -> None:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(payload["model"])
        self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        self.order, self.cursor, self.step = payload["order"], payload["cursor"], payload["step"]
        self.seconds, self.curve, self.losses = payload["seconds"], payload["curve"], payload["losses"]


def _lr_at(step: int, config: TrainConfig) -> float:
    return config.lr * min(1.0, (step + 1) / config.warmup_steps)


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """EMA of parameters and float buffers, with the usual warm-up of the decay (early steps weigh more)."""
    decay = min(decay, (1 + step) / (10 + step))
    for average, current in zip(ema.state_dict().values(), model.state_dict().values()):
        if average.is_floating_point():
            average.mul_(decay).add_(current.detach(), alpha=1 - decay)
        else:
            average.copy_(current)


def plateau_reached(curve: list, config: TrainConfig) -> bool:
    """True when the last curve point t >= min_steps gained less than `plateau_gain` over the point at t / 2."""
    if not curve:
        return False
    step, miou = curve[-1]
    earlier = {s: m for s, m in curve}.get(step / 2)
    return step >= config.min_steps and earlier is not None and miou - earlier < config.plateau_gain


def _train_step(state: TrainingState, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
                device: str) -> float:
    n = len(images)
    if state.cursor + config.batch_size > n:
        state.order, state.cursor = torch.randperm(n, generator=state.generator), 0
    batch = state.order[state.cursor:state.cursor + config.batch_size]
    state.cursor += config.batch_size
    x, y = images[batch], labels[batch].long()
    if config.hflip:
        flip = torch.rand(len(batch), generator=state.generator) < 0.5
        x[flip] = x[flip].flip(-1)
        y[flip] = y[flip].flip(-1)
    x, y = x.to(device), y.to(device)
    for group in state.optimizer.param_groups:
        group["lr"] = _lr_at(state.step, config)
    logits = F.interpolate(state.model(x), size=y.shape[-2:], mode="bilinear", align_corners=True)
    loss = F.cross_entropy(logits, y, ignore_index=IGNORE_LABEL)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    _update_ema(state.ema, state.model, state.step, config.ema_decay)
    state.step += 1
    return loss.item()


def new_training_state(model: torch.nn.Module, num_images: int, config: TrainConfig) -> TrainingState:
    """The start of a training: data order and flips from their own generator, dropout from torch's global one
    (the recipe draws nothing from numpy)."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    ema = copy.deepcopy(model).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return TrainingState(model, ema, optimizer, generator, torch.randperm(num_images, generator=generator))


def train_on_arrays(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
                    device: str = "cpu", *, evaluate: Optional[Callable[[torch.nn.Module], float]] = None,
                    state_file: Optional[Path] = None, log: Optional[Callable[[str], None]] = None
                    ) -> TrainingState:
    """Train `model` on normalised float32 images and labels in the training label space; returns the final state,
    whose `ema` is the model to keep (eval mode).

    `evaluate(ema)` gives the curve point every `eval_every` steps and decides the plateau stop (without it, the
    run goes to `steps`). With `state_file`, the state is saved there at every curve point and a saved state is
    resumed from, so an interrupted run continues bit for bit. The finished state is saved too and kept: the caller
    removes it once the result is safely written (`zoo.train_and_save`), so a kill in between loses nothing."""
    model.to(device).train()
    state = new_training_state(model, len(images), config)
    state.ema.to(device)
    if state_file is not None and Path(state_file).exists():
        state.load(Path(state_file))
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        while state.step < config.steps and not (evaluate and plateau_reached(state.curve, config)):
            started = time.perf_counter()
            state.losses.append(_train_step(state, images, labels, config, device))
            state.seconds += time.perf_counter() - started
            if evaluate is not None and state.step % config.eval_every == 0:
                state.curve.append([state.step, round(evaluate(state.ema), 4)])
                state.ema.eval()
                if log:
                    log(f"step {state.step}: loss {np.mean(state.losses[-config.eval_every:]):.4f}, "
                        f"EMA base mIoU {100 * state.curve[-1][1]:.2f}")
                if state_file is not None:
                    state.save(Path(state_file))
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    model.eval()
    state.ema.eval()
    if state_file is not None:
        state.save(Path(state_file))
    return state


def train_base_segmenter(benchmark_name: str, fold: int, protocol_name: str, *,
                         config: Optional[TrainConfig] = None, device: str = "cpu", progress: bool = True,
                         data_root: Optional[Path] = None, state_file: Optional[Path] = None,
                         log: Optional[Callable[[str], None]] = None) -> tuple[SmallPSPNet, dict]:
    """Train a SmallPSPNet on the base classes of `fold` under `protocol_name` until its val base mIoU plateaus
    (see `TrainConfig`); resumable through `state_file`.

    Returns (the EMA model in eval mode, info): the configs, the number of training images, the steps run, the
    curve, the training time in seconds (evaluations excluded), the final loss and the thread count.
    """
    benchmark = get_benchmark(benchmark_name)
    benchmark.check_fold(fold)
    protocol = get_protocol(protocol_name)
    config = config or TrainConfig()
    arch = default_arch_config(benchmark, fold)

    train_set = open_split(benchmark, "train", data_root)
    indices = training_indices(train_set, benchmark, fold, protocol)
    images, labels = load_preprocessed(train_set, benchmark.image_size, indices, progress=progress,
                                       description="loading training images")
    labels = torch.from_numpy(protocol.training_label_lut(benchmark, fold))[labels.long()]

    def evaluate(model: torch.nn.Module) -> float:
        return evaluate_base_miou(model, benchmark, fold, device=device, data_root=data_root)

    torch.manual_seed(config.seed)
    model = SmallPSPNet(arch)
    state = train_on_arrays(model, images, labels, config, device=device, evaluate=evaluate,
                            state_file=state_file, log=log)
    info = {
        "benchmark": benchmark_name, "fold": fold, "protocol": protocol_name,
        "arch": arch.as_dict(), "train": config.as_dict(), "training_images": len(indices),
        "steps": state.step, "curve": state.curve, "plateau": plateau_reached(state.curve, config),
        "train_seconds": round(state.seconds, 1), "final_loss": float(np.mean(state.losses[-50:])),
        "torch_threads": torch.get_num_threads(), "device": str(device),
    }
    return state.ema, info


# ----------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_base_miou(model: torch.nn.Module, benchmark: Benchmark | str, fold: int,
                       protocol: Protocol | str | None = None, *, device: str = "cpu",
                       data_root: Optional[Path] = None, batch_size: int = 50,
                       novel_pixels: str = "background", workers: int = 0, progress: bool = False) -> float:
    """Base mIoU (DIaM convention: mean IoU over the B base classes, background excluded) on val.

    Every val image is scored at `benchmark.image_size` (`transforms.preprocess`): logits are upsampled
    bilinearly (align_corners=True) from feature resolution and their argmax over background + base
    is compared with the nearest-resized label. The confusion matrix is over background + base
    classes; NOVEL val pixels count as background (the base segmenter cannot know them), void and
    padding (255) are ignored. The protocol does not change this evaluation (it is accepted for
    symmetry with training). Classes with union 0 are skipped. Images are streamed in batches
    (decoded in `workers` DataLoader processes), so memory does not grow with the val set (COCO).

    `novel_pixels="ignore"` excludes novel pixels instead (a diagnostic: it separates how well base
    classes are recognised from how often novel objects are mistaken for base classes, which is
    what lowers the standard-protocol segmenters' figure).
    """
    if novel_pixels not in ("background", "ignore"):
        raise ValueError(f"novel_pixels must be 'background' or 'ignore', not {novel_pixels!r}")
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    val = open_split(benchmark, "val", data_root)
    lut = get_protocol("practical").training_label_lut(benchmark, fold)  # novel -> 0, base 1..B
    if novel_pixels == "ignore":
        lut = lut.copy()
        lut[list(benchmark.novel_classes(fold))] = IGNORE_LABEL
    lut = torch.from_numpy(lut.astype(np.int64))
    num_outputs = len(benchmark.base_classes(fold)) + 1
    was_training = model.training
    model.eval().to(device)
    confusion = torch.zeros(num_outputs, num_outputs, dtype=torch.int64)
    extractor = Extractor(model, val, benchmark.image_size, torch.device(device), workers=workers)
    with progress_bar() if progress else nullcontext() as bar:
        task = None if bar is None else bar.add_task(f"{benchmark.name} fold {fold}: val base mIoU", total=len(val))
        for features, labels in extractor.run(chunked(range(len(val)), batch_size)):
            confusion += score_probabilities(model.classifier(features), lut[labels.long()], num_outputs)
            if bar is not None:
                bar.advance(task, len(labels))
    model.train(was_training)
    return scores(confusion, num_outputs - 1).base
