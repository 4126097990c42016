"""Loading base-segmenter checkpoints users already have (docs/protocol.md §6), and `run --checkpoint`.

Accepted files (all read with `torch.load(..., weights_only=True)`):

- DIaM's PSPNet-ResNet50: `{'state_dict': {'module.layer0.0.weight': ...}}` (the `module.` prefix is optional);
- BAM's base learner: the same network with `cls.0`/`cls.1` for `bottleneck.0`/`bottleneck.1`, `cls.4` for
  `classifier`, and `encoder.N.*` duplicating `layerN.*`;
- a bare state dict of either layout;
- a segmenter file written by `gfss-bench train`: the small synthetic segmenter (it carries its architecture),
  or PSPNet-ResNet50 in DIaM's layout with its training metadata under 'gfss_bench'.

The number of classifier outputs (B+1) is read from the classifier weight, the stem (`deep`, or `7x7` for
networks initialised from torchvision's ResNet-50) from the shape of `layer0.0.weight`.

`pspnet_from_backbone_weights` starts base training from an ImageNet ResNet-50 file in torchvision's layout
(`conv1` 7x7, `bn1`, `layer1..4`, `fc`) or in the deep-stem layout of the semseg/PFENet `resnet50_v2` weights
(`conv1/bn1`, `conv2/bn2`, `conv3/bn3`, `layer1..4`, `fc`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Optional, Union

import torch

from gfss_bench.errors import GFSSError
from gfss_bench.models.segmenter import LoadedSegmenter
from gfss_bench.models.pspnet import BACKBONE_MODULES, PSPNetResNet50

CHECKPOINT_PREFIX = "checkpoint:"
TRAINING_METADATA = "gfss_bench"  # key of the metadata that `gfss-bench train` adds to DIaM's layout
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
    stripped = strip_module_prefix(state)
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


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without DataParallel's `module.` prefix."""
    stripped = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        stripped[key] = value
    return stripped


def infer_stem(state: dict[str, torch.Tensor]) -> str:
    """'7x7' when `layer0.0.weight` is a 7x7 conv (torchvision-initialised), else 'deep'."""
    weight = state.get("layer0.0.weight")
    return "7x7" if weight is not None and weight.dim() == 4 and weight.shape[-1] == 7 else "deep"


def state_dict_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """'' when `state` has exactly the keys and shapes of `own` (BN counters may be absent and are filled in),
    else a description of the first missing, unexpected and wrongly shaped keys."""
    for key, value in own.items():  # old checkpoints lack BN counters, which do not affect inference
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(f"{k} {tuple(state[k].shape)} instead of {tuple(own[k].shape)}" for k in set(own) & set(state)
                   if own[k].shape != state[k].shape)
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            parts.append(f"{len(keys)} {label} key(s): " + ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else ""))
    return "; ".join(parts)


def state_dict_in(payload, path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a loaded file: the payload itself or its 'state_dict'/'model'/'model_state_dict'."""
    if isinstance(payload, dict) and not _is_state_dict(payload):
        for name in ("state_dict", "model", "model_state_dict"):
            if _is_state_dict(payload.get(name)):
                return payload[name]
    if not _is_state_dict(payload):
        raise GFSSError(f"checkpoint {path} holds no state dict (expected a dict of tensors, or a dict with "
                        "'state_dict')")
    return payload


def read_weights(path: Path):
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
    payload = read_weights(path)
    if isinstance(payload, dict) and "arch" in payload and "state_dict" in payload:  # gfss-bench train file
        from gfss_bench.models.zoo import load_weights_file

        model, _ = load_weights_file(path, device, fix="a `gfss-bench train` file must be passed as it was written; "
                                                        "train it again if it was changed")
        layout = "gfss-bench"
    else:
        state, layout = convert_state_dict(state_dict_in(payload, path))
        weight = state.get("classifier.weight")
        if weight is None or weight.dim() != 4 or weight.shape[1:] != (512, 1, 1):
            raise GFSSError(f"checkpoint {path} is not a PSPNet-ResNet50 ({layout} layout): no 'classifier.weight' "
                            "of shape [B+1, 512, 1, 1] (or 'cls.4.weight')")
        stem = infer_stem(state)
        model = PSPNetResNet50(int(weight.shape[0]), stem=stem)
        problems = state_dict_mismatch(model.state_dict(), state)
        if problems:
            raise GFSSError(f"checkpoint {path} does not fit PSPNet-ResNet50 ({layout} layout, {stem} stem): "
                            + problems)
        model.load_state_dict(state, strict=True)
        model = model.eval().to(device)
        model.training_metadata = payload.get(TRAINING_METADATA) if isinstance(payload, dict) else None
    if expected_outputs is not None and model.num_outputs != expected_outputs:
        raise GFSSError(f"checkpoint {path} has {model.num_outputs} classifier outputs (background + "
                        f"{model.num_outputs - 1} base classes) but {expected_for or 'the benchmark/fold'} needs "
                        f"{expected_outputs}; use the checkpoint trained for that benchmark and fold")
    model.checkpoint_layout = layout
    return model


# ----------------------------------------------------------------------------------------- ImageNet backbones

_DEEP_STEM = {"conv1.": "layer0.0.", "bn1.": "layer0.1.", "conv2.": "layer0.3.", "bn2.": "layer0.4.",
              "conv3.": "layer0.6.", "bn3.": "layer0.7."}
_TORCHVISION_STEM = {"conv1.": "layer0.0.", "bn1.": "layer0.1."}
BACKBONE_LAYOUTS = ("torchvision's resnet50 (conv1 7x7, bn1, layer1..4, fc) or the deep-stem resnet50_v2 of "
                    "semseg/PFENet (conv1/bn1, conv2/bn2, conv3/bn3, layer1..4, fc)")


def pspnet_from_backbone_weights(path: Union[str, Path], num_outputs: int) -> tuple[PSPNetResNet50, dict]:
    """A PSPNet-ResNet50 (train mode) whose layer0..layer4 come from an ImageNet ResNet-50 file, with the
    stem that file can fill, and {'path', 'sha256', 'layout', 'stem', 'tensors'} (tensors: how many were
    loaded). `fc` is dropped; the head keeps its random initialisation (seed torch before calling).

    Every backbone tensor must be filled with the right shape: anything else is a GFSSError naming the file.
    """
    path = Path(path)
    state = strip_module_prefix(state_dict_in(read_weights(path), path))
    if "conv1.weight" not in state:
        raise GFSSError(f"backbone weights {path} hold no 'conv1.weight': not an ImageNet ResNet-50 state dict in "
                        f"{BACKBONE_LAYOUTS}")
    deep = "conv2.weight" in state and "conv3.weight" in state
    layout, stem, renames = ("deep-stem", "deep", _DEEP_STEM) if deep else ("torchvision", "7x7", _TORCHVISION_STEM)
    mapped = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        prefix = next((p for p in renames if key.startswith(p)), None)
        if prefix:
            key = renames[prefix] + key[len(prefix):]
        mapped[key] = value.float() if value.is_floating_point() else value
    model = PSPNetResNet50(num_outputs, stem=stem)
    own = {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in BACKBONE_MODULES}
    problems = state_dict_mismatch(own, mapped)
    if problems:
        raise GFSSError(f"backbone weights {path} ({layout} layout) do not fit ResNet-50: {problems}; expected "
                        f"{BACKBONE_LAYOUTS}")
    model.load_state_dict(mapped, strict=False)
    return model.train(), {"path": str(path.resolve()), "sha256": file_sha256(path), "layout": layout, "stem": stem,
                           "tensors": len(state) - sum(k.startswith("fc.") for k in state)}


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


def find_fold_checkpoint(checkpoint: Union[str, Path], fold: int, dataset: Optional[str] = None,
                         split: Optional[int] = None, option: str = "--checkpoint") -> Path:
    """The checkpoint for `fold`: `checkpoint` itself when it is a file, else in the folder
    `<folder>/fold<F>.pth` or `<folder>/**/split<S>/**/*.pth` (DIaM's `model_ckpt/<dataset>/split<S>/...`), where
    S is the official split number (`split`, default `fold`; DIaM's PASCAL-10i folds are splits 10 and 11).
    Errors start with `option`, the command-line option that gave the path."""
    split = fold if split is None else split
    root = Path(checkpoint)
    if root.is_file():
        return root
    if not root.is_dir():
        raise GFSSError(f"{option} {root} does not exist")
    candidates = {p for suffix in _SUFFIXES for p in root.glob(f"fold{fold}{suffix}") if p.is_file()}
    if not candidates:
        candidates = {p for p in root.glob("**/*") if _is_checkpoint_file(p)
                      and f"split{split}" in p.relative_to(root).parts[:-1]}
    if len(candidates) > 1 and dataset:  # model_ckpt/<dataset>/split<F>/...: keep the benchmark's dataset
        same = {p for p in candidates if dataset in p.relative_to(root).parts[:-1]}
        candidates = same or candidates
    if not candidates:
        raise GFSSError(f"{option} folder {root} holds no checkpoint for fold {fold}: expected "
                        f"{root / f'fold{fold}.pth'} or a .pth file under a split{split}/ folder "
                        f"(e.g. {root / (dataset or '<dataset>') / f'split{split}' / 'pspnet_resnet50' / 'best.pth'})")
    if len(candidates) > 1:
        listed = ", ".join(str(p) for p in sorted(candidates)[:5])
        raise GFSSError(f"{option} folder {root} holds {len(candidates)} checkpoints for fold {fold} ({listed}); "
                        "keep one per fold or pass the file itself")
    return candidates.pop()


def checkpoint_segmenter_id(path: Union[str, Path]) -> str:
    """The RunSpec.segmenter of a checkpoint: it depends on the file's contents, not on its path."""
    return CHECKPOINT_PREFIX + file_sha256(Path(path))[:16]


def load_fold_checkpoint(path: Path, benchmark, fold: int, device: Union[str, torch.device] = "cpu"):
    """The segmenter of a checkpoint file for one benchmark fold (the `pspnet` segmenter family; `run --checkpoint`):
    its classifier must have the fold's B+1 outputs, and a `gfss-bench train` file must have been trained without
    the fold's novel classes. The record's `source` (path, sha256, layout) goes into result provenance."""
    expected = len(benchmark.base_classes(fold)) + 1
    model = load_checkpoint_segmenter(path, expected, device=str(device),
                                      expected_for=f"{benchmark.name} fold {fold} (background + "
                                                   f"{expected - 1} base classes)")
    trained_for = getattr(model, "training_metadata", None)
    if trained_for and trained_for.get("novel_classes") != list(benchmark.novel_classes(fold)):
        raise GFSSError(f"checkpoint {path} was trained by `gfss-bench train` for {trained_for.get('benchmark')} "
                        f"fold {trained_for.get('fold')} (novel classes {trained_for.get('novel_classes')}), "
                        f"not for {benchmark.name} fold {fold} (novel classes "
                        f"{list(benchmark.novel_classes(fold))}): its base classes include novel ones")
    source = {"path": str(Path(path).resolve()), "sha256": file_sha256(path), "layout": model.checkpoint_layout}
    if trained_for:
        source["trained_for"] = {k: trained_for.get(k) for k in ("benchmark", "fold", "protocol")}
    return LoadedSegmenter(model, source)
