"""Hugging Face `transformers` semantic-segmentation models as base segmenters (the `hf` segmenter family;
`pip install 'gfss-bench[hf]'`).

The folder is what `save_pretrained` writes (config.json, model.safetensors, optionally the image processor's
preprocessor_config.json). The model is loaded with `AutoModelForSemanticSegmentation`, strictly offline
(`local_files_only`, no remote code). The classifier is `decode_head.classifier` (SegFormer, UperNet, BEiT's
UperNet head) unless another module is named; its input is the feature map.

Input: SegFormer takes any side; the other architectures run at sides that are multiples of 32 (other sides are
padded). Normalisation: the preprocessor_config.json's image_mean and image_std when present, else ImageNet's.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from gfss_bench.errors import GFSSError
from gfss_bench.models.generic import HeadSegmenter
from gfss_bench.models.model_folders import preprocessor_contract, read_json
from gfss_bench.models.segmenter import InputContract

DEFAULT_HEAD = "decode_head.classifier"
ANY_SIDE = ("segformer",)  # model types whose decoder resamples every stage to the first one's size


def build_hf_model(folder: Path) -> nn.Module:
    """The model saved in `folder`, eval mode, float32, loaded without network access; every weight must be in
    the folder (transformers would otherwise initialise the missing ones at random)."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be fetched, whatever the folder's config names
    try:
        from transformers import AutoModelForSemanticSegmentation
    except ImportError:
        raise GFSSError("--segmenter hf: needs transformers; pip install 'gfss-bench[hf]'") from None
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # gfss-bench reports its own progress
    try:
        model, info = AutoModelForSemanticSegmentation.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, output_loading_info=True)
    except Exception as error:  # noqa: BLE001 - corrupt files raise many types (SafetensorError, OSError, ...)
        raise GFSSError(f"hf folder {folder}: transformers cannot load a semantic-segmentation model from it "
                        f"({type(error).__name__}: {str(error)[:200]})") from None
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    absent = sorted(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    if absent:
        raise GFSSError(f"hf folder {folder}: its weights lack or misshape {len(absent)} tensor(s) of the model its "
                        f"config describes ({', '.join(absent[:3])}); save the trained model again")
    return model.float().eval()


def input_contract(folder: Path) -> InputContract:
    model_type = read_json(folder / "config.json").get("model_type")
    sides = InputContract() if model_type in ANY_SIDE else InputContract(size_step=32)
    return preprocessor_contract(folder, sides) or sides


def load_hf_segmenter(folder: Path, head: str = DEFAULT_HEAD, device="cpu") -> HeadSegmenter:
    """A HeadSegmenter (eval mode, on `device`) over the transformers model saved in `folder`."""
    folder = Path(folder)
    model = build_hf_model(folder)
    segmenter = HeadSegmenter(model, head or DEFAULT_HEAD, f"hf model {folder}", input_contract(folder))
    return segmenter.eval().to(device)
