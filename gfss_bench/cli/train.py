"""`train`: base segmenters on the base classes of a fold, as the protocol prescribes."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from gfss_bench.cli import common
from gfss_bench.cli.common import PLUGINS
from gfss_bench.errors import GFSSError, resolve_option


@click.command()
@PLUGINS
@click.option("--benchmark", "-b", default="synthetic5i", show_default=True,
              help="Benchmark name, or a benchmark YAML file.")
@click.option("--fold", "-f", "folds", multiple=True, type=int, help="Fold (repeatable); default: all.")
@click.option("--protocol", "-p", "protocols", multiple=True, default=("practical",), show_default=True)
@click.option("--arch", type=click.Choice(["small", "pspnet-resnet50"]), default=None,
              help="small: the CPU-sized network of the synthetic benchmarks (their default; it works for any "
                   "benchmark); pspnet-resnet50: PSPNet-ResNet50 in DIaM's checkpoint layout (the default elsewhere).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Dataset folder (holds train.txt and val.txt) [default: a benchmark YAML file's data_root].")
@click.option("--backbone-weights", metavar="FILE|none", default=None,
              help="pspnet-resnet50 (required): ImageNet ResNet-50 weights, torchvision's resnet50 .pth (7x7 stem) or "
                   "semseg/PFENet's resnet50_v2.pth (deep stem); `none`: random initialisation (smoke tests only).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--epochs", type=int, default=None,
              help="pspnet-resnet50: epochs [default: 50 PASCAL, 20 COCO and synthetic].")
@click.option("--steps", default=None, type=int,
              help="small: the cap on optimisation steps [default: train until the val base mIoU plateaus, at most 6000]; "
                   "pspnet-resnet50: steps instead of --epochs.")
@click.option("--batch-size", type=int, default=None, help="pspnet-resnet50 [default: 12].")
@click.option("--lr", type=float, default=None,
              help="pspnet-resnet50: backbone lr; the head gets 10x; poly decay, power 0.9 [default: 0.0025].")
@click.option("--crop-size", type=int, default=None,
              help="pspnet-resnet50: training crop, (size-1) % 8 == 0 [default: the benchmark's image size: 417, "
                   "97 synthetic].")
@click.option("--rotate", type=float, default=None,
              help="pspnet-resnet50: maximum random rotation in degrees, 0 for none [default: 10].")
@click.option("--workers", type=int, default=None,
              help="pspnet-resnet50: DataLoader workers for decoding and augmentation [default: 6 (at most the CPU "
                   "count) on CUDA, 0 on CPU].")
@click.option("--save-every", type=int, default=None,
              help="pspnet-resnet50: steps between resume states [default: 1000]; Ctrl-C also saves one.")
@click.option("--amp/--no-amp", default=None, help="pspnet-resnet50: float16 autocast [default: on with CUDA].")
@click.option("--no-eval", is_flag=True, help="pspnet-resnet50: skip the val base mIoU at the end.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write <benchmark>-<protocol>/fold<F>.pt/.json (small; default: the cache) or "
                   "<benchmark>-<protocol>/fold<F>.pth/.json (pspnet-resnet50; default: checkpoints) here.")
@click.option("--force", is_flag=True,
              help="small: train even when the shipped weights have this config (with --out they are copied). "
                   "pspnet-resnet50: start over, discarding the resume state and a finished checkpoint.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
def train(benchmark, folds, protocols, arch, data_root, backbone_weights, seed, epochs, steps, batch_size, lr,
          crop_size, rotate, workers, save_every, amp, no_eval, out_dir, force, device):
    """Train a base segmenter on the base classes of a fold (cross-entropy), as the protocol prescribes.

    Both architectures save resume states: rerunning an interrupted command continues where it stopped.
    """
    from gfss_bench.evaluation.spec import check_at_least_one, resolve_device, validate_settings
    from gfss_bench.protocols import resolve_benchmark

    bench = resolve_option("--benchmark", resolve_benchmark, benchmark)
    validate_settings(protocols=protocols)
    for fold in folds:
        bench.check_fold(fold)
    check_at_least_one("--steps", steps)
    arch = arch or ("small" if bench.generated else "pspnet-resnet50")
    device_name = resolve_device(device).type
    folds = folds or range(bench.num_folds)
    root = Path(data_root) if data_root else None
    if arch == "small":
        given = [name for name, value in (
            ("--backbone-weights", backbone_weights), ("--epochs", epochs),
            ("--batch-size", batch_size), ("--lr", lr), ("--crop-size", crop_size), ("--rotate", rotate),
            ("--workers", workers), ("--save-every", save_every), ("--amp/--no-amp", amp),
            ("--no-eval", no_eval or None)) if value is not None]
        if given:
            raise GFSSError(f"{', '.join(given)}: only for --arch pspnet-resnet50")
        folders = _train_small(bench.name, folds, protocols, root, seed, steps, out_dir, force, device_name)
    else:
        settings = {"epochs": epochs, "steps": steps, "batch_size": batch_size, "lr": lr, "crop_size": crop_size,
                    "rotate": rotate, "save_every": save_every}
        folders = _train_pspnet(bench.name, folds, protocols, root, seed, settings, backbone_weights, workers, amp,
                                not no_eval, out_dir, force, device_name)
    for protocol, folder in folders:
        common.console.print(f"evaluate with: gfss-bench run --benchmark {bench.source or bench.name} --protocol "
                             f"{protocol} --checkpoint {folder}" + (f" --data-root {data_root}" if data_root else ""),
                             highlight=False)


def _train_small(benchmark, folds, protocols, data_root, seed, steps, out_dir, force, device
                 ) -> list[tuple[str, Path]]:
    """The small recipe, fold by fold (the shipped weights are copied when they have this config); returns the
    (protocol, folder) pairs written under `out_dir`."""
    import json

    from gfss_bench.models import zoo

    written = []
    for protocol in protocols:
        folder = Path(out_dir) / f"{benchmark}-{protocol}" if out_dir else None
        for fold in folds:
            out = folder / f"fold{fold}.pt" if folder else None
            copied = out is not None and seed == 0 and steps is None and not force and \
                zoo.copy_shipped(benchmark, fold, protocol, out)
            path = copied or zoo.train_and_save(benchmark, fold, protocol, seed=seed, steps=steps, device=device,
                                                out=out, command=" ".join(sys.argv), data_root=data_root,
                                                log=common.log)
            manifest = json.loads(path.with_suffix(".json").read_text())
            how = "shipped weights of this config (--force retrains)" if copied else \
                f"in {manifest['train_seconds']:.0f} s"
            common.console.print(f"{benchmark} fold {fold} {protocol}: base mIoU "
                                 f"{100 * manifest['val_base_miou']:.1f}% {how} -> {path}")
        if folder:
            written.append((protocol, folder))
    return written


def _train_pspnet(benchmark, folds, protocols, data_root, seed, settings, backbone_weights, workers, amp, evaluate,
                  out_dir, force, device) -> list[tuple[str, Path]]:
    """PSPNet-ResNet50 in DIaM's layout, fold by fold; returns the (protocol, folder) pairs written."""
    import os

    from gfss_bench.models.pspnet_training import PSPNetTrainConfig, train_pspnet

    if backbone_weights is None:
        raise GFSSError("--arch pspnet-resnet50 starts from ImageNet weights: pass --backbone-weights FILE "
                        "(torchvision's resnet50 .pth or semseg/PFENet's resnet50_v2.pth), or --backbone-weights none "
                        "for a random initialisation (smoke tests only)")
    save_every = settings.pop("save_every")
    config = PSPNetTrainConfig(seed=seed, **{k: v for k, v in settings.items() if v is not None})
    if workers is None:
        workers = min(6, os.cpu_count() or 1) if device == "cuda" else 0
    out = Path(out_dir or "checkpoints")
    for protocol in protocols:
        for fold in folds:
            _, info = train_pspnet(
                benchmark, fold, protocol, config=config, out=out, device=device, workers=workers, amp=amp,
                backbone_weights=None if backbone_weights.lower() == "none" else Path(backbone_weights),
                data_root=data_root, evaluate=evaluate, force=force,
                command=" ".join(sys.argv), **({} if save_every is None else {"save_every": save_every}))
            miou = f"base mIoU {100 * info['val_base_miou']:.1f}%" if "val_base_miou" in info else "trained"
            common.console.print(f"{benchmark} fold {fold} {protocol}: {miou}"
                                 f"{' (already trained)' if info.get('already_trained') else ''} -> {info['path']}")
    return [(protocol, out / f"{benchmark}-{protocol}") for protocol in protocols]
