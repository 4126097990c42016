"""Base training of segmenters on the base classes of a fold, and their base-class evaluation.

Training follows the protocol (facts §3): `standard` drops every training image containing a novel
class; `practical` keeps them with the novel pixels labelled background. The loss is plain pixel
cross-entropy over background + base classes (255 ignored) at the padded input resolution, on
images prepared with `resize_and_pad_for_training` at `benchmark.image_size`, with random horizontal flips.

Command line (also what the shipped weights were produced with):

    python -m gfss_bench.models.training --benchmark synthetic5i --fold 0 --protocol practical \\
        --out DIR
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gfss_bench.benchmark.datasets import SegmentationList, open_split
from gfss_bench.evaluation.features import Extractor, chunked
from gfss_bench.evaluation.metrics import score_probabilities, scores
from gfss_bench.benchmark.transforms import IGNORE_LABEL, normalize, resized_shape
from gfss_bench.errors import GFSSError
from gfss_bench.models.small_pspnet import SmallPSPNet, SmallPSPNetConfig
from gfss_bench.progress import progress_bar
from gfss_bench.protocols import Benchmark, Protocol, get_benchmark, get_protocol


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of base training (all of them enter the zoo's config hash)."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    hflip: bool = True
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def default_arch_config(benchmark: Benchmark, fold: int) -> SmallPSPNetConfig:
    return SmallPSPNetConfig(num_outputs=len(benchmark.base_classes(fold)) + 1)


# ----------------------------------------------------------------------------------------- data


def resize_and_pad_for_training(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The small recipe's training input: uint8 [size, size, 3] image (PIL bilinear, 0 padding) and uint8
    [size, size] label (PIL nearest, 255 padding), at `resized_shape`.

    Part of the recipe that produced the shipped weights (pinned by their config hash), so it keeps PIL; evaluation
    resizes with `transforms.preprocess` (OpenCV, as the official code)."""
    new_h, new_w = resized_shape(*label.shape, size)
    out_image = np.zeros((size, size, 3), dtype=np.uint8)
    out_image[:new_h, :new_w] = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    out_label = np.full((size, size), IGNORE_LABEL, dtype=np.uint8)
    out_label[:new_h, :new_w] = np.asarray(Image.fromarray(label).resize((new_w, new_h), Image.NEAREST))
    return out_image, out_label


def load_resized(dataset: SegmentationList, size: int, indices: Optional[list[int]] = None,
                 progress: bool = False, description: str = "loading") -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, S, S, 3] resized+padded images, uint8 [N, S, S] resized+padded ORIGINAL labels)."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    images = np.zeros((len(indices), size, size, 3), dtype=np.uint8)
    labels = np.zeros((len(indices), size, size), dtype=np.uint8)
    iterator = enumerate(indices)
    if progress:
        from rich.progress import track

        iterator = track(iterator, total=len(indices), description=description, transient=True)
    for row, index in iterator:
        image, label = dataset.load(index)
        images[row], labels[row] = resize_and_pad_for_training(image, label, size)
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


def _seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    return torch.Generator().manual_seed(seed)


def _lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train_on_arrays(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, config: TrainConfig,
                    device: str = "cpu", progress: bool = True, description: str = "training",
                    log_every: int = 0) -> list[float]:
    """Train `model` in place on uint8 arrays (labels already in the training label space).

    Returns the loss of every step.
    """
    generator = _seed_everything(config.seed)
    previous_determinism = (torch.are_deterministic_algorithms_enabled(),
                            torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    n = len(images_t)
    order = torch.randperm(n, generator=generator)
    cursor = 0
    losses: list[float] = []

    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(), transient=False)
        bar.start()
        task = bar.add_task(description, total=config.steps, loss=float("nan"))
    try:
        for step in range(config.steps):
            if cursor + config.batch_size > n:
                order, cursor = torch.randperm(n, generator=generator), 0
            batch = order[cursor:cursor + config.batch_size]
            cursor += config.batch_size
            x = normalize(images_t[batch])
            y = labels_t[batch].long()
            if config.hflip:
                flip = torch.rand(len(batch), generator=generator) < 0.5
                x[flip] = x[flip].flip(-1)
                y[flip] = y[flip].flip(-1)
            x, y = x.to(device), y.to(device)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, config)
            logits = model(x)
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=True)
            loss = F.cross_entropy(logits, y, ignore_index=IGNORE_LABEL)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if bar is not None:
                bar.update(task, advance=1, loss=float(np.mean(losses[-20:])))
            if log_every and (step + 1) % log_every == 0:
                print(f"step {step + 1}/{config.steps} loss {np.mean(losses[-log_every:]):.4f}", flush=True)
    finally:
        if bar is not None:
            bar.stop()
        torch.use_deterministic_algorithms(previous_determinism[0], warn_only=previous_determinism[1])
    model.eval()
    return losses


def train_base_segmenter(benchmark_name: str, fold: int, protocol_name: str, *, seed: int = 0,
                         steps: Optional[int] = None, config: Optional[TrainConfig] = None,
                         device: str = "cpu", progress: bool = True, evaluate: bool = True,
                         data_root: Optional[Path] = None, log_every: int = 0
                         ) -> tuple[SmallPSPNet, dict]:
    """Train a SmallPSPNet on the base classes of `fold` under `protocol_name`.

    Returns (model in eval mode, info) where info holds the configs, the number of training images,
    the training time in seconds, the final loss and (with `evaluate`) the val base mIoU.
    """
    benchmark = get_benchmark(benchmark_name)
    benchmark.check_fold(fold)
    protocol = get_protocol(protocol_name)
    config = config or TrainConfig(seed=seed)
    if steps is not None:
        config = TrainConfig(**{**config.as_dict(), "steps": steps})
    arch = default_arch_config(benchmark, fold)

    train_set = open_split(benchmark, "train", data_root)
    indices = training_indices(train_set, benchmark, fold, protocol)
    images, labels = load_resized(train_set, benchmark.image_size, indices, progress=progress,
                                  description="loading training images")
    labels = protocol.training_label_lut(benchmark, fold)[labels]

    torch.manual_seed(config.seed)
    model = SmallPSPNet(arch)
    start = time.perf_counter()
    losses = train_on_arrays(model, images, labels, config, device=device, progress=progress,
                             description=f"training {benchmark_name} fold {fold} {protocol_name}",
                             log_every=log_every)
    seconds = time.perf_counter() - start
    info = {
        "benchmark": benchmark_name, "fold": fold, "protocol": protocol_name,
        "arch": arch.as_dict(), "train": config.as_dict(), "training_images": len(indices),
        "train_seconds": round(seconds, 1), "final_loss": float(np.mean(losses[-50:])),
        "torch_threads": torch.get_num_threads(), "device": str(device),
    }
    if evaluate:
        info["val_base_miou"] = evaluate_base_miou(model, benchmark, fold, protocol, device=device,
                                                   data_root=data_root)
    return model, info


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


if __name__ == "__main__":  # the command line is zoo.main (it stores what it trains, and zoo imports this module)
    from gfss_bench.models.zoo import main

    sys.exit(main())
