"""Model folders written by `save_pretrained` (Hugging Face `transformers`, segmentation_models_pytorch): finding a
fold's folder, naming it by its contents, reading its normalisation, and loading its weights safely."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from gfss_bench.errors import GFSSError
from gfss_bench.models.checkpoints import file_sha256, read_weights, state_dict_in, state_dict_mismatch
from gfss_bench.models.segmenter import InputContract

WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth")  # the files that decide the model's numbers
SAFETENSORS, PICKLED = "model.safetensors", "pytorch_model.bin"


def fold_folder(reference: str, fold: int, option: str) -> Path:
    """`reference/fold<F>` when it exists, else `reference` itself; it must hold a config.json."""
    if not reference:
        raise GFSSError(f"{option} needs a folder, e.g. {option}DIR (written by save_pretrained)")
    root = Path(reference).expanduser()
    folder = root / f"fold{fold}" if (root / f"fold{fold}").is_dir() else root
    if not (folder / "config.json").is_file():
        where = f"{root} (nor {root / f'fold{fold}'})" if folder == root else str(folder)
        raise GFSSError(f"{option}{reference}: {where} holds no config.json; pass the folder written by "
                        "save_pretrained, or a folder with one fold<F>/ subfolder per fold")
    return folder


def folder_sha256(folder: Path) -> str:
    """sha256 over the names and contents of the folder's config and weight files: changes with the weights."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def read_json(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise GFSSError(f"{path} cannot be read as JSON ({type(error).__name__}); write it again with "
                        "save_pretrained") from None
    if not isinstance(payload, dict):
        raise GFSSError(f"{path} is not a JSON object; write it again with save_pretrained")
    return payload


def preprocessor_contract(folder: Path, base: InputContract) -> Optional[InputContract]:
    """`base` with the mean and std of the folder's preprocessor_config.json (image_mean, image_std), or None
    when the folder has none."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    config = read_json(path)
    if config.get("do_normalize") is False:
        return InputContract((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), base.size_step, base.size_offset, base.pads)
    mean, std = config.get("image_mean"), config.get("image_std")
    if not (_three_numbers(mean) and _three_numbers(std) and all(s > 0 for s in std)):
        raise GFSSError(f"{path}: image_mean and image_std must be lists of 3 numbers (std > 0); fix or delete it")
    return InputContract(tuple(float(m) for m in mean), tuple(float(s) for s in std), base.size_step,
                         base.size_offset, base.pads)


def _three_numbers(values) -> bool:
    return isinstance(values, list) and len(values) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of model.safetensors (preferred) or pytorch_model.bin (read with weights_only=True)."""
    if (folder / SAFETENSORS).is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(folder / SAFETENSORS))
        except (SafetensorError, OSError, ValueError) as error:
            raise GFSSError(f"{folder / SAFETENSORS} cannot be read ({str(error)[:200]}); it is corrupt or "
                            "truncated") from None
    if (folder / PICKLED).is_file():
        return state_dict_in(read_weights(folder / PICKLED), folder / PICKLED)
    raise GFSSError(f"{folder} holds neither {SAFETENSORS} nor {PICKLED}; pass the folder written by save_pretrained")


def load_strictly(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `model`, every tensor present with its shape, else a GFSSError naming `what`."""
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise GFSSError(f"{what} does not fit the model its config describes: {problems}")
    model.load_state_dict(state, strict=True)
