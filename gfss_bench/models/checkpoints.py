"""Loading base-segmenter checkpoints users already have (facts §6), and `run --checkpoint`.

Accepted files (all read with `torch.load(..., weights_only=True)`):

- DIaM's PSPNet-ResNet50: `{'state_dict': {'module.layer0.0.weight': ...}}` (the `module.` prefix is optional);
- BAM's base learner: the same network with `cls.0`/`cls.1` for `bottleneck.0`/`bottleneck.1`, `cls.4` for
  `classifier`, and `encoder.N.*` duplicating `layerN.*`;
- a bare state dict of either layout;
- a segmenter file written by `gfss-bench train` (it carries its architecture).

The number of classifier outputs (B+1) is read from the classifier weight.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Optional, Union

import torch

from gfss_bench.errors import GFSSError
from gfss_bench.models.pspnet import PSPNetResNet50

CHECKPOINT_PREFIX = "checkpoint:"
_SUFFIXES = (".pth", ".pt", ".pth.tar", ".tar")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def _rename(key: str) -> Optional[str]:
    """BAM -> DIaM names; None for BAM's `encoder.*` duplicates (handled separately)."""
    for old, new in (("cls.0.", "bottleneck.0."), ("cls.1.", "bottleneck.1."), ("cls.4.", "classifier.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def convert_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in this package's PSPNetResNet50 names, float32; the layout found: 'diam' or 'bam')."""
    stripped = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        stripped[key] = value
    layout = "bam" if any(k.startswith(("cls.", "encoder.")) for k in stripped) else "diam"
    out: dict[str, torch.Tensor] = {}
    encoder: dict[str, torch.Tensor] = {}
    for key, value in stripped.items():
        match = re.match(r"encoder\.([0-4])\.(.*)$", key)
        if match:
            encoder[f"layer{match.group(1)}.{match.group(2)}"] = value
            continue
        out[_rename(key)] = value
    for key, value in encoder.items():  # duplicates of layer0..4: used only where the layer itself is absent
        out.setdefault(key, value)
    out = {k: (v.float() if v.is_floating_point() else v) for k, v in out.items()}
    return out, layout


def _read(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GFSSError(f"checkpoint {path} does not exist") from None
    except Exception as error:  # noqa: BLE001 - unpickling raises many types for corrupt files
        raise GFSSError(f"checkpoint {path} cannot be read ({type(error).__name__}: {str(error)[:200]}); it is "
                        "corrupt, truncated or not a PyTorch checkpoint") from None


def load_checkpoint_segmenter(path: Union[str, Path], expected_outputs: Optional[int] = None,
                              device: str = "cpu", expected_for: str = ""):
    """A segmenter (eval mode, float32, on `device`) from a checkpoint file; see the module docstring.

    With `expected_outputs` (B+1 of the chosen benchmark/fold, described by `expected_for`), a checkpoint
    whose classifier has another number of outputs is a GFSSError.
    """
    path = Path(path)
    payload = _read(path)
    if isinstance(payload, dict) and "arch" in payload and "state_dict" in payload:  # gfss-bench train file
        from gfss_bench.models.zoo import load_segmenter

        model, _ = load_segmenter(path, device)
        layout = "gfss-bench"
    else:
        state = payload
        if isinstance(payload, dict) and not _is_state_dict(payload):
            for name in ("state_dict", "model", "model_state_dict"):
                if _is_state_dict(payload.get(name)):
                    state = payload[name]
                    break
        if not _is_state_dict(state):
            raise GFSSError(f"checkpoint {path} holds no state dict (expected a dict of tensors, or a dict with "
                            "'state_dict')")
        state, layout = convert_state_dict(state)
        weight = state.get("classifier.weight")
        if weight is None or weight.dim() != 4 or weight.shape[1:] != (512, 1, 1):
            raise GFSSError(f"checkpoint {path} is not a PSPNet-ResNet50 ({layout} layout): no 'classifier.weight' "
                            "of shape [B+1, 512, 1, 1] (or 'cls.4.weight')")
        model = PSPNetResNet50(int(weight.shape[0]))
        own = model.state_dict()
        for key, value in own.items():  # old checkpoints lack BN counters, which do not affect inference
            if key.endswith("num_batches_tracked") and key not in state:
                state[key] = value
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            parts = []
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
                if keys:
                    parts.append(f"{len(keys)} {label} key(s): " + ", ".join(keys[:5]) + (" ..." if len(keys) > 5
                                                                                            else ""))
            raise GFSSError(f"checkpoint {path} does not fit PSPNet-ResNet50 ({layout} layout): " + "; ".join(parts))
        model.load_state_dict(state, strict=True)
        model = model.eval().to(device)
    if expected_outputs is not None and model.num_outputs != expected_outputs:
        raise GFSSError(f"checkpoint {path} has {model.num_outputs} classifier outputs (background + "
                        f"{model.num_outputs - 1} base classes) but {expected_for or 'the benchmark/fold'} needs "
                        f"{expected_outputs}; use the checkpoint trained for that benchmark and fold")
    model.checkpoint_layout = layout
    return model


# ----------------------------------------------------------------------------------------- run --checkpoint


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _is_checkpoint_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_SUFFIXES)


def find_fold_checkpoint(checkpoint: Union[str, Path], fold: int, dataset: Optional[str] = None) -> Path:
    """The checkpoint for `fold`: `checkpoint` itself when it is a file, else in the folder
    `<folder>/fold<F>.pth` or `<folder>/**/split<F>/**/*.pth` (DIaM's `model_ckpt/<dataset>/split<F>/...`)."""
    root = Path(checkpoint)
    if root.is_file():
        return root
    if not root.is_dir():
        raise GFSSError(f"--checkpoint {root} does not exist")
    candidates = {p for suffix in _SUFFIXES for p in root.glob(f"fold{fold}{suffix}") if p.is_file()}
    if not candidates:
        candidates = {p for p in root.glob("**/*") if _is_checkpoint_file(p)
                      and f"split{fold}" in p.relative_to(root).parts[:-1]}
    if len(candidates) > 1 and dataset:  # model_ckpt/<dataset>/split<F>/...: keep the benchmark's dataset
        same = {p for p in candidates if dataset in p.relative_to(root).parts[:-1]}
        candidates = same or candidates
    if not candidates:
        raise GFSSError(f"--checkpoint folder {root} holds no checkpoint for fold {fold}: expected "
                        f"{root / f'fold{fold}.pth'} or a .pth file under a split{fold}/ folder "
                        f"(e.g. {root / (dataset or '<dataset>') / f'split{fold}' / 'pspnet_resnet50' / 'best.pth'})")
    if len(candidates) > 1:
        listed = ", ".join(str(p) for p in sorted(candidates)[:5])
        raise GFSSError(f"--checkpoint folder {root} holds {len(candidates)} checkpoints for fold {fold} ({listed}); "
                        "keep one per fold or pass the file itself")
    return candidates.pop()


def checkpoint_segmenter_id(path: Union[str, Path]) -> str:
    """The RunSpec.segmenter of a checkpoint: it depends on the file's contents, not on its path."""
    return CHECKPOINT_PREFIX + file_sha256(Path(path))[:16]


class CheckpointSegmenterLoader:
    """`segmenter_loader` for runner.execute: specs whose segmenter is 'checkpoint:<sha>' load that file."""

    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}

    def register(self, path: Union[str, Path]) -> str:
        segmenter_id = checkpoint_segmenter_id(path)
        self.paths.setdefault(segmenter_id, Path(path))
        return segmenter_id

    def __call__(self, spec, device: torch.device):
        from gfss_bench.benchmark.runner import builtin_segmenter_loader
        from gfss_bench.protocols import get_benchmark

        if not spec.segmenter.startswith(CHECKPOINT_PREFIX):
            return builtin_segmenter_loader(spec, device)
        if spec.segmenter not in self.paths:
            raise GFSSError(f"segmenter {spec.segmenter!r} has no registered checkpoint file")
        path = self.paths[spec.segmenter]
        benchmark = get_benchmark(spec.benchmark)
        expected = len(benchmark.base_classes(spec.fold)) + 1
        model = load_checkpoint_segmenter(path, expected, device=str(device),
                                          expected_for=f"{benchmark.name} fold {spec.fold} (background + "
                                                       f"{expected - 1} base classes)")
        model.checkpoint_source = {"path": str(Path(path).resolve()), "sha256": file_sha256(path),
                                   "layout": model.checkpoint_layout}
        return model
