"""Built-in base segmenters for the synthetic benchmarks: shipped weights, or trained and cached.

Every (benchmark, fold, protocol) has a config hash covering everything that determines its
weights: the architecture, the training hyper-parameters and seed, the synthetic data version and
generator settings, the benchmark, fold, novel classes, image size and protocol. The package ships
`weights/<benchmark>-fold<F>-<protocol>.pt` (float16 state dict) with a `.json` manifest holding
the hash, the training command, the training time and the base mIoU on the synthetic val set.

`builtin_segmenter` uses the shipped file when its manifest hash equals the current hash;
otherwise it says why, trains the segmenter (a few minutes on CPU) and caches it in
`cache_dir()/segmenters/<hash>.pt`, which later calls reuse.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from gfss_bench.benchmark import synthetic
from gfss_bench.errors import GFSSError
from gfss_bench.models.small_pspnet import SmallPSPNet, SmallPSPNetConfig
from gfss_bench.models.training import TrainConfig, default_arch_config, evaluate_base_miou, train_base_segmenter
from gfss_bench.paths import atomic_write_bytes, atomic_write_text, cache_dir
from gfss_bench.protocols import get_benchmark, get_protocol

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT = 1


def weights_name(benchmark_name: str, fold: int, protocol_name: str) -> str:
    return f"{benchmark_name}-fold{fold}-{protocol_name}"


def config_record(benchmark_name: str, fold: int, protocol_name: str,
                  train_config: Optional[TrainConfig] = None,
                  arch_config: Optional[SmallPSPNetConfig] = None) -> dict:
    """Everything that determines the weights, as a JSON-able dict."""
    benchmark = get_benchmark(benchmark_name)
    benchmark.check_fold(fold)
    get_protocol(protocol_name)
    record = {
        "format": FORMAT,
        "architecture": "SmallPSPNet",
        "arch": (arch_config or default_arch_config(benchmark, fold)).as_dict(),
        "train": (train_config or TrainConfig()).as_dict(),
        "benchmark": benchmark_name,
        "dataset": benchmark.dataset,
        "fold": fold,
        "novel_classes": list(benchmark.novel_classes(fold)),
        "image_size": benchmark.image_size,
        "protocol": protocol_name,
        "stored_dtype": "float16",
    }
    if benchmark.dataset == "synthetic":
        record["synthetic"] = {"version": synthetic.VERSION, "seed": synthetic.SEED,
                               "split_sizes": synthetic.SPLIT_SIZES}
    return json.loads(json.dumps(record))  # tuples -> lists


def config_hash(benchmark_name: str, fold: int, protocol_name: str,
                train_config: Optional[TrainConfig] = None,
                arch_config: Optional[SmallPSPNetConfig] = None) -> str:
    record = config_record(benchmark_name, fold, protocol_name, train_config, arch_config)
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- files


def _arch_from_dict(arch: dict) -> SmallPSPNetConfig:
    return SmallPSPNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()})


def save_segmenter(model: SmallPSPNet, path: Path, config_hash_: str, fp16: bool = True) -> None:
    """torch.save of {'format', 'config_hash', 'arch', 'state_dict'} (floats as float16 if `fp16`)."""
    state = {k: (v.detach().cpu().half() if fp16 and v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "config_hash": config_hash_, "arch": json.loads(json.dumps(model.config.as_dict())),
               "state_dict": state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_segmenter(path: Path, device: str = "cpu") -> tuple[SmallPSPNet, str]:
    """(float32 model in eval mode on `device`, its config hash) from a file written by save_segmenter."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        model = SmallPSPNet(_arch_from_dict(payload["arch"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in payload["state_dict"].items()})
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as error:
        raise GFSSError(f"segmenter weights {path} cannot be loaded ({error}); delete the file to retrain") from None
    return model.eval().to(device), str(payload.get("config_hash", ""))


def read_manifest(benchmark_name: str, fold: int, protocol_name: str) -> Optional[dict]:
    path = WEIGHTS_DIR / f"{weights_name(benchmark_name, fold, protocol_name)}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def train_and_save(benchmark_name: str, fold: int, protocol_name: str, *, seed: int = 0,
                   steps: Optional[int] = None, out_dir: Optional[Path] = None,
                   device: str = "cpu", progress: bool = True, log_every: int = 0,
                   command: Optional[str] = None) -> Path:
    """Train, then write `<out_dir>/<benchmark>-fold<F>-<protocol>.pt` + `.json` (default out_dir: the
    cache, as `segmenters/<hash>.pt`). The manifest's mIoU is measured on the weights as stored."""
    train_config = TrainConfig(seed=seed) if steps is None else TrainConfig(seed=seed, steps=steps)
    digest = config_hash(benchmark_name, fold, protocol_name, train_config)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    model, info = train_base_segmenter(benchmark_name, fold, protocol_name, config=train_config, device=device,
                                       progress=progress, evaluate=False, log_every=log_every)
    if out_dir is None:
        path = cache_dir() / "segmenters" / f"{digest}.pt"
    else:
        path = Path(out_dir) / f"{weights_name(benchmark_name, fold, protocol_name)}.pt"
    save_segmenter(model, path, digest, fp16=True)
    stored, _ = load_segmenter(path, device)
    miou = evaluate_base_miou(stored, benchmark_name, fold, protocol_name, device=device)
    manifest = {
        "file": path.name, "config_hash": digest, "config": config_record(benchmark_name, fold, protocol_name,
                                                                          train_config),
        "command": command or (f"python -m gfss_bench.models.training --benchmark {benchmark_name} --fold {fold} "
                               f"--protocol {protocol_name} --seed {seed}"),
        "trained_at": started, "train_seconds": info["train_seconds"], "torch_threads": info["torch_threads"],
        "torch_version": torch.__version__, "training_images": info["training_images"],
        "final_loss": round(info["final_loss"], 4), "dtype": "float16",
        "val_base_miou": round(miou, 4),
        "val_base_miou_definition": "mean IoU over base classes (background excluded) on the synthetic val "
                                    "split at image_size, novel pixels counted as background",
        "size_bytes": path.stat().st_size,
    }
    atomic_write_text(path.with_suffix(".json"), json.dumps(manifest, indent=2) + "\n")
    return path


def copy_shipped(benchmark_name: str, fold: int, protocol_name: str, out_dir: Path) -> Optional[Path]:
    """Copy the shipped weights and manifest to `out_dir/<benchmark>-fold<F>-<protocol>.pt/.json` when they
    were trained with the current default config (seed 0, default steps), so that `gfss-bench train` need
    not spend minutes redoing them; None (nothing copied) otherwise."""
    name = weights_name(benchmark_name, fold, protocol_name)
    shipped = WEIGHTS_DIR / f"{name}.pt"
    manifest = read_manifest(benchmark_name, fold, protocol_name)
    if manifest is None or not shipped.exists() or \
            manifest.get("config_hash") != config_hash(benchmark_name, fold, protocol_name):
        return None
    path = Path(out_dir) / f"{name}.pt"
    try:
        atomic_write_bytes(path, shipped.read_bytes())
        atomic_write_bytes(path.with_suffix(".json"), shipped.with_suffix(".json").read_bytes())
    except OSError as error:
        raise GFSSError(f"cannot write {path} ({error.strerror or error}); pick a writable --out") from None
    return path


# ----------------------------------------------------------------------------------------- entry point


def builtin_segmenter(benchmark_name: str, fold: int, protocol_name: str, device: str = "cpu",
                      progress: bool = True) -> SmallPSPNet:
    """The built-in base segmenter (eval mode, on `device`) for a synthetic benchmark fold/protocol."""
    benchmark = get_benchmark(benchmark_name)
    if benchmark.dataset != "synthetic":
        raise GFSSError(
            f"there is no built-in segmenter for {benchmark_name!r}: real benchmarks need a base segmenter "
            "trained on their base classes (e.g. DIaM's PSPNet-ResNet50): pass it with --checkpoint FILE_OR_FOLDER "
            "(see `gfss-bench run --help`), or use synthetic5i or synthetic10i")
    digest = config_hash(benchmark_name, fold, protocol_name)
    name = weights_name(benchmark_name, fold, protocol_name)
    shipped = WEIGHTS_DIR / f"{name}.pt"
    manifest = read_manifest(benchmark_name, fold, protocol_name)
    if manifest is not None and manifest.get("config_hash") == digest and shipped.exists():
        model, stored_hash = load_segmenter(shipped, device)
        if stored_hash == digest:
            return model
        reason = f"the shipped {shipped.name} holds config hash {stored_hash}, not {digest}"
    elif manifest is None or not shipped.exists():
        reason = f"no shipped weights {shipped.name}"
    else:
        reason = (f"the shipped {shipped.name} was trained for config {manifest.get('config_hash')} but the "
                  f"current config is {digest} (code or data version changed)")
    cached = cache_dir() / "segmenters" / f"{digest}.pt"
    if cached.exists():
        model, stored_hash = load_segmenter(cached, device)
        if stored_hash == digest:
            return model
    print(f"{reason}: training the {name} segmenter (a few minutes on CPU); it is cached in {cached}",
          file=sys.stderr, flush=True)
    path = train_and_save(benchmark_name, fold, protocol_name, device=device, progress=progress)
    model, _ = load_segmenter(path, device)
    return model
