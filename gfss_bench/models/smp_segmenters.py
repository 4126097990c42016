"""segmentation_models_pytorch models as base segmenters (the `smp` segmenter family; `pip install 'gfss-bench[smp]'`).

The folder is what smp's `save_pretrained` writes: config.json (the architecture under `_model_class` and its
arguments) and model.safetensors. The network is built from the config with `encoder_weights=None`, so nothing is
downloaded, and the weights are then loaded strictly. The classifier is the last convolution of
`segmentation_head` (1x1 for DeepLabV3/V3+ and FPN, 3x3 for U-Net, U-Net++, MAnet, PAN and PSPNet, unfolded then);
the head's upsampling comes after it and is left out, so the features are at the decoder's resolution.

Input: smp models need sides divisible by the encoder's output stride (usually 32); other sides are padded.
Normalisation: the folder's preprocessor_config.json when present; else timm's for `tu-` encoders; else ImageNet's,
which every ImageNet-pretrained smp encoder uses.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from gfss_bench.errors import GFSSError
from gfss_bench.models.generic import HeadSegmenter
from gfss_bench.models.model_folders import folder_weights, load_strictly, preprocessor_contract, read_json
from gfss_bench.models.segmenter import IMAGENET_CONTRACT, InputContract


def _smp():
    try:
        import segmentation_models_pytorch
    except ImportError:
        raise GFSSError("--segmenter smp: needs segmentation_models_pytorch; pip install 'gfss-bench[smp]'") from None
    return segmentation_models_pytorch


def build_smp_model(folder: Path) -> nn.Module:
    """The smp model config.json describes, with random weights and no download."""
    smp = _smp()
    config = read_json(folder / "config.json")
    class_name = config.pop("_model_class", None)
    known = {cls.__name__: cls for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()}
    if class_name not in known:
        raise GFSSError(f"{folder / 'config.json'}: '_model_class' must name an smp architecture "
                        f"({', '.join(sorted(known))}); save the model with smp's save_pretrained")
    arguments = {k: v for k, v in config.items() if not k.startswith("_")}
    arguments["encoder_weights"] = None
    try:
        return known[class_name](**arguments)
    except Exception as error:  # noqa: BLE001 - smp and timm raise many types for a config they cannot build
        raise GFSSError(f"{folder / 'config.json'}: smp cannot build {class_name} from it "
                        f"({type(error).__name__}: {str(error)[:200]})") from None


def head_name(model: nn.Module) -> str:
    """`segmentation_head.<i>` of the head's last convolution."""
    convs = [name for name, module in model.segmentation_head.named_children() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise GFSSError("the smp model's segmentation_head holds no convolution")
    return f"segmentation_head.{convs[-1]}"


def input_contract(model: nn.Module, folder: Path) -> InputContract:
    step = model.encoder.output_stride if getattr(model, "requires_divisible_input_shape", True) else 1
    sides = InputContract(size_step=step)
    from_folder = preprocessor_contract(folder, sides)
    if from_folder is not None:
        return from_folder
    encoder = model.config.get("encoder_name", "")
    if encoder.startswith("tu-"):
        import timm

        settings = timm.models.get_pretrained_cfg(encoder[3:])
        if settings is not None and settings.mean and settings.std:
            return InputContract(tuple(settings.mean), tuple(settings.std), size_step=step)
    return InputContract(IMAGENET_CONTRACT.mean, IMAGENET_CONTRACT.std, size_step=step)


def load_smp_segmenter(folder: Path, device="cpu") -> HeadSegmenter:
    """A HeadSegmenter (eval mode, float32, on `device`) over the smp model saved in `folder`."""
    folder = Path(folder)
    model = build_smp_model(folder)
    load_strictly(model, folder_weights(folder), f"smp folder {folder}")
    segmenter = HeadSegmenter(model, head_name(model), f"smp model {folder}", input_contract(model, folder))
    return segmenter.eval().to(device)
