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
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from gfss_bench.data import synthetic
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
    if benchmark.generated:
        record["synthetic"] = {"version": synthetic.VERSION, "seed": synthetic.SEED,
                               "split_sizes": synthetic.SPLIT_SIZES}
    if benchmark.digest is not None:  # a YAML or plugin benchmark: its classes, folds and settings
        record["benchmark_digest"] = benchmark.digest
    return json.loads(json.dumps(record))  # tuples -> lists


def config_hash(benchmark_name: str, fold: int, protocol_name: str,
                train_config: Optional[TrainConfig] = None,
                arch_config: Optional[SmallPSPNetConfig] = None) -> str:
    record = config_record(benchmark_name, fold, protocol_name, train_config, arch_config)
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- files


def _arch_from_dict(arch: dict) -> SmallPSPNetConfig:
    return SmallPSPNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()})


def save_weights_file(model: SmallPSPNet, path: Path, config_hash_: str, fp16: bool = True) -> None:
    """torch.save of {'format', 'config_hash', 'arch', 'state_dict'} (floats as float16 if `fp16`)."""
    state = {k: (v.detach().cpu().half() if fp16 and v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "config_hash": config_hash_, "arch": json.loads(json.dumps(model.config.as_dict())),
               "state_dict": state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_weights_file(path: Path, device: str = "cpu", fix: str = "delete the file to retrain"
                      ) -> tuple[SmallPSPNet, str]:
    """(float32 model in eval mode on `device`, its config hash) from a file written by save_weights_file; `fix` is
    the advice of the error when it does not load (the default suits the zoo's own cache files)."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        model = SmallPSPNet(_arch_from_dict(payload["arch"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in payload["state_dict"].items()})
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as error:
        reason = " ".join(str(error).split())[:300]  # torch's messages span lines
        raise GFSSError(f"segmenter weights {path} cannot be loaded ({reason}); {fix}") from None
    return model.eval().to(device), str(payload.get("config_hash", ""))


def read_manifest(benchmark_name: str, fold: int, protocol_name: str) -> Optional[dict]:
    path = WEIGHTS_DIR / f"{weights_name(benchmark_name, fold, protocol_name)}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def training_state_file(digest: str) -> Path:
    """Where an unfinished training of config `digest` keeps its resume state."""
    return cache_dir() / "training" / f"{digest}.state.pt"


def train_and_save(benchmark_name: str, fold: int, protocol_name: str, *, seed: int = 0,
                   steps: Optional[int] = None, out: Optional[Path] = None, device: str = "cpu",
                   progress: bool = True, log: Optional[Callable[[str], None]] = None,
                   command: Optional[str] = None, data_root: Optional[Path] = None) -> Path:
    """Train on the benchmark's data (`data_root`: see `open_split`) until the plateau (or `steps`, the cap), then
    write the file `out` (a .pt path; default: the cache, as `segmenters/<hash>.pt`) and its `.json` manifest. An
    interrupted training of the same config resumes. The manifest's mIoU is measured on the val split with the
    weights as stored."""
    train_config = TrainConfig(seed=seed) if steps is None else TrainConfig(seed=seed, steps=steps)
    digest = config_hash(benchmark_name, fold, protocol_name, train_config)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    state_file = training_state_file(digest)
    model, info = train_base_segmenter(benchmark_name, fold, protocol_name, config=train_config, device=device,
                                       progress=progress, data_root=data_root, log=log, state_file=state_file)
    path = cache_dir() / "segmenters" / f"{digest}.pt" if out is None else Path(out)
    save_weights_file(model, path, digest, fp16=True)
    stored, _ = load_weights_file(path, device)
    miou = evaluate_base_miou(stored, benchmark_name, fold, protocol_name, device=device, data_root=data_root)
    manifest = {
        "file": path.name, "config_hash": digest, "config": config_record(benchmark_name, fold, protocol_name,
                                                                          train_config),
        "command": command or (f"gfss-bench train --arch small --benchmark {benchmark_name} --fold {fold} "
                               f"--protocol {protocol_name} --seed {seed}"),
        "started_at": started, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": info["steps"], "plateau": info["plateau"], "curve": info["curve"],
        "curve_definition": "[step, val base mIoU of the EMA weights (float32)] every eval_every steps",
        "train_seconds": info["train_seconds"], "device": info["device"], "torch_threads": info["torch_threads"],
        "torch_version": torch.__version__, "training_images": info["training_images"],
        "final_loss": round(info["final_loss"], 4), "dtype": "float16",
        "val_base_miou": round(miou, 4),
        "val_base_miou_definition": "mean IoU over base classes (background excluded) on the val split at "
                                    "image_size, novel pixels counted as background, with the weights as stored",
        "size_bytes": path.stat().st_size,
    }
    atomic_write_text(path.with_suffix(".json"), json.dumps(manifest, indent=2) + "\n")
    state_file.unlink(missing_ok=True)  # only now: a kill before this resumes from the finished state
    return path


def copy_shipped(benchmark_name: str, fold: int, protocol_name: str, out: Path) -> Optional[Path]:
    """Copy the shipped weights and manifest to the file `out` (.pt) and its .json when they were trained with
    the current default config (seed 0, default steps), so that `gfss-bench train` need not spend minutes
    redoing them; None (nothing copied) otherwise."""
    name = weights_name(benchmark_name, fold, protocol_name)
    shipped = WEIGHTS_DIR / f"{name}.pt"
    manifest = read_manifest(benchmark_name, fold, protocol_name)
    if manifest is None or not shipped.exists() or \
            manifest.get("config_hash") != config_hash(benchmark_name, fold, protocol_name):
        return None
    path = Path(out)
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
    if not benchmark.generated:
        raise GFSSError(
            f"there is no built-in segmenter for {benchmark_name!r}: it needs a base segmenter trained on its base "
            "classes (e.g. DIaM's PSPNet-ResNet50, or `gfss-bench train --arch small`): pass it with --checkpoint "
            "FILE_OR_FOLDER (see `gfss-bench run --help`), or use synthetic5i or synthetic10i")
    digest = config_hash(benchmark_name, fold, protocol_name)
    name = weights_name(benchmark_name, fold, protocol_name)
    shipped = WEIGHTS_DIR / f"{name}.pt"
    manifest = read_manifest(benchmark_name, fold, protocol_name)
    if manifest is not None and manifest.get("config_hash") == digest and shipped.exists():
        model, stored_hash = load_weights_file(shipped, device)
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
        model, stored_hash = load_weights_file(cached, device)
        if stored_hash == digest:
            return model
    print(f"{reason}: training the {name} segmenter (a few minutes on CPU); it is cached in {cached}",
          file=sys.stderr, flush=True)
    path = train_and_save(benchmark_name, fold, protocol_name, device=device, progress=progress)
    model, _ = load_weights_file(path, device)
    return model


def train_and_cache(benchmark_name: str, fold: int, protocol_name: str, *, seed: int = 0,
                    out: Optional[Path] = None, device: str = "cpu", progress: bool = True) -> dict:
    """Train a base segmenter, store it in the segmenter cache (where `builtin_segmenter` finds it when
    its config is the built-in one, i.e. seed 0) and optionally copy it to the file `out` (plus `out`
    with suffix .json: the manifest).

    Returns the manifest: config_hash, command, train_seconds, val_base_miou (also as base_miou),
    size_bytes, ..., and path (the cached file, or `out` when given).
    """
    cached = train_and_save(benchmark_name, fold, protocol_name, seed=seed, device=device, progress=progress,
                            command=f"gfss-bench train --benchmark {benchmark_name} --fold {fold} "
                                    f"--protocol {protocol_name} --seed {seed}")
    manifest = json.loads(cached.with_suffix(".json").read_text())
    path = cached
    if out is not None:
        out = Path(out).expanduser()
        if out.suffix != ".pt":
            out = out.with_name(out.name + ".pt")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached, out)
            shutil.copyfile(cached.with_suffix(".json"), out.with_suffix(".json"))
        except OSError as error:
            raise GFSSError(f"cannot write --out {out} ({error.strerror or error}); pick a writable path") from None
        path = out
    return {**manifest, "base_miou": manifest["val_base_miou"], "path": path}
