"""The contract every registered segmenter family keeps, as tests/methods/test_contract.py does for methods.

Tiny random models are built from configs (nothing downloaded) and saved the way their libraries save them; each is
then loaded through its family and compared with the model's own head module and logits.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from gfss_bench.errors import GFSSError
from gfss_bench.models import build_segmenter
from gfss_bench.models.families import SEGMENTER_FAMILIES, SegmenterContext
from gfss_bench.models.generic import HeadSegmenter
from gfss_bench.models.pspnet import PSPNetResNet50
from gfss_bench.protocols import get_benchmark

BENCHMARK, FOLD, OUTPUTS = "synthetic5i", 0, 16  # fold 0: background + 15 base classes
CONTEXT = SegmenterContext(get_benchmark(BENCHMARK), FOLD, "standard", torch.device("cpu"))
TINY_ENCODER = "tu-mobilenetv3_small_050"  # 0.3M parameters; timm builds it without weights


def _images(side: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _save_smp(folder, architecture, outputs=OUTPUTS, seed=0, **kwargs):
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(seed)
    model = smp.create_model(architecture, encoder_name=TINY_ENCODER, encoder_weights=None, classes=outputs,
                             **kwargs).eval()
    model.save_pretrained(str(folder))
    return model


def _save_hf(folder, kind, outputs=OUTPUTS, seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    if kind == "segformer":
        config = transformers.SegformerConfig(num_labels=outputs, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                              num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16)
        model = transformers.SegformerForSemanticSegmentation(config)
    else:
        backbone = transformers.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                               out_features=["stage1", "stage2", "stage3", "stage4"])
        config = transformers.UperNetConfig(backbone_config=backbone, num_labels=outputs, hidden_size=16,
                                            auxiliary_channels=8)
        model = transformers.UperNetForSemanticSegmentation(config)
    model.eval().save_pretrained(str(folder))
    return model


def _save_pspnet(path, outputs=OUTPUTS, seed=0):
    torch.manual_seed(seed)
    model = PSPNetResNet50(outputs).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return model


MODULE_SOURCE = '''
import torch
from torch import nn


class PatchLinear(nn.Module):
    """A strided conv 'backbone' and a Linear head over channels-last features."""

    gfss_size_multiple = 4

    def __init__(self, outputs):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 12, 4, stride=4), nn.ReLU())
        self.head = nn.Linear(12, outputs)

    def forward(self, x):
        return self.head(self.backbone(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def build(outputs):
    return PatchLinear(outputs)
'''


def _save_module(folder, outputs=OUTPUTS, seed=0):
    (folder / "net.py").write_text(MODULE_SOURCE)
    namespace = {}
    exec(MODULE_SOURCE, namespace)  # the same code the family runs, to get the reference model
    torch.manual_seed(seed)
    model = namespace["build"](outputs).eval()
    torch.save(model.state_dict(), folder / "net.pt")
    return model


def _save_torchvision(folder, outputs=OUTPUTS, seed=0):
    from torchvision.models import segmentation

    torch.manual_seed(seed)
    model = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=outputs)
    torch.save(model.eval().state_dict(), folder / "fold0.pth")
    return model


def _builtin(folder):
    from gfss_bench.models import builtin_segmenter

    return builtin_segmenter(BENCHMARK, FOLD, "standard", progress=False)  # the shipped weights the family loads


def _upsampled(side, align_corners):
    return lambda model, logits: F.interpolate(logits, size=(side, side), mode="bilinear",
                                               align_corners=align_corners)


@dataclasses.dataclass(frozen=True)
class Case:
    """How one kind of model is saved, referenced and run: `head` names the classifier module of the saved model,
    `logits` is the model's own forward, `after_head` what that forward does to the head's output."""

    save: Callable
    reference: Callable
    head: str
    side: int  # an input side the model takes as it is
    logits: Callable = lambda model, images: model(images)
    after_head: Callable = lambda model, head_logits: head_logits


def _smp_after_head(model, head_logits):
    return torch.nn.Sequential(*list(model.segmentation_head)[1:])(head_logits)  # the head's own upsampling


CASES = {
    "builtin": Case(_builtin, lambda d: "builtin", "classifier", 97),
    "pspnet": Case(lambda d: _save_pspnet(d / "fold0.pth"), lambda d: f"pspnet:{d}", "classifier", 65),
    "torchvision": Case(_save_torchvision, lambda d: f"torchvision:deeplabv3_mobilenet_v3_large={d}",
                        "classifier.4", 65, lambda m, x: m(x)["out"], _upsampled(65, False)),
    "hf-segformer": Case(lambda d: _save_hf(d, "segformer"), lambda d: f"hf:{d}", "decode_head.classifier", 33,
                         lambda m, x: m(pixel_values=x).logits),
    "hf-upernet": Case(lambda d: _save_hf(d, "upernet"), lambda d: f"hf:{d}", "decode_head.classifier", 64,
                       lambda m, x: m(pixel_values=x).logits, _upsampled(64, False)),
    "smp-deeplabv3plus": Case(lambda d: _save_smp(d, "DeepLabV3Plus", decoder_channels=16), lambda d: f"smp:{d}",
                              "segmentation_head.0", 64, after_head=_smp_after_head),
    "smp-fpn": Case(lambda d: _save_smp(d, "FPN", decoder_pyramid_channels=16, decoder_segmentation_channels=32),
                    lambda d: f"smp:{d}", "segmentation_head.0", 64, after_head=_smp_after_head),
    "smp-unet": Case(lambda d: _save_smp(d, "Unet", decoder_channels=(16, 8, 8, 8, 8)), lambda d: f"smp:{d}",
                     "segmentation_head.0", 33, after_head=_smp_after_head),
    "module-linear": Case(_save_module, lambda d: f"module:{d / 'net.py'}:build={d / 'net.pt'}#head", "head", 64,
                          lambda m, x: m(x)),
}


def test_every_registered_family_has_a_case():
    assert {name.split("-")[0] for name in CASES} == set(SEGMENTER_FAMILIES.names())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (reference, reference model), each saved once per test module."""
    made = {}

    def get(name):
        if name not in made:
            folder = tmp_path_factory.mktemp(name)
            made[name] = CASES[name].reference(folder), CASES[name].save(folder)
        return made[name]

    return get


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "pspnet" else name
                                  for name in sorted(CASES)])  # pspnet: a 94 MB ResNet-50 file, 1-10 s
def test_classifier_over_features_equals_the_models_head_and_logits(saved, name):
    case = CASES[name]
    reference, model = saved(name)
    segmenter = build_segmenter(reference, benchmark=BENCHMARK, fold=FOLD, device="cpu")
    assert segmenter.num_outputs == OUTPUTS
    assert not any(module.training for module in segmenter.modules())
    assert all(p.device.type == "cpu" for p in segmenter.parameters())
    images = _images(case.side)
    head_module = model.get_submodule(case.head)
    head_outputs = []
    handle = head_module.register_forward_hook(lambda module, inputs, output: head_outputs.append(output))
    with torch.no_grad():
        own_logits = case.logits(model, images)
        weight, bias = segmenter.classifier_weight_and_bias()
        features = segmenter.extract_features(images)
        linear = torch.einsum("nchw,ck->nkhw", features, weight) + bias.view(1, -1, 1, 1)
        again = segmenter.extract_features(images)
    handle.remove()
    head = head_outputs[0]
    if isinstance(head_module, torch.nn.Linear):  # channels last
        head = head.permute(0, 3, 1, 2)
    assert weight.shape == (segmenter.num_features, OUTPUTS) and features.shape[1] == segmenter.num_features
    assert (linear - head).abs().max().item() < 1e-4
    assert (case.after_head(model, linear) - own_logits).abs().max().item() < 1e-4
    assert torch.equal(features, again)


@pytest.mark.parametrize("name", ["smp-deeplabv3plus", "hf-upernet"])
def test_other_sides_are_padded_with_black_and_the_features_cropped(saved, name):
    reference, model = saved(name)
    segmenter = build_segmenter(reference, benchmark=BENCHMARK, fold=FOLD, device="cpu")
    contract = segmenter.input_contract
    images = _images(33)
    black = (-torch.tensor(contract.mean) / torch.tensor(contract.std)).view(1, 3, 1, 1)
    side = contract.padded_side(33)
    assert side > 33 and side % contract.size_step == 0
    padded = black.expand(2, 3, side, side).clone()
    padded[..., :33, :33] = images
    with torch.no_grad():
        features = segmenter.extract_features(images)
        full = segmenter.extract_features(padded)
    stride = side // full.shape[-1]
    keep = -(-33 // stride)  # ceil(33 / stride): the features whose pixel stride * i lies in the image
    assert features.shape[-2:] == (keep, keep)
    assert torch.equal(features, full[..., :keep, :keep])


def test_a_3x3_head_is_exactly_a_linear_classifier_over_unfolded_neighbourhoods(saved):
    reference, model = saved("smp-unet")
    segmenter = build_segmenter(reference, benchmark=BENCHMARK, fold=FOLD, device="cpu")
    head = model.segmentation_head[0]
    assert head.kernel_size == (3, 3) and segmenter.num_features == 9 * head.in_channels
    inputs = []
    handle = head.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    images = _images(32, seed=3)
    with torch.no_grad():
        model(images)
        features = segmenter.extract_features(images)
    handle.remove()
    expected = F.unfold(inputs[0], 3, padding=1).reshape(features.shape)
    assert torch.equal(features, expected)


@pytest.mark.parametrize("name", ["hf-segformer", "smp-fpn", "module-linear"])
def test_the_segmenter_id_follows_the_weights_not_the_folder_name(saved, tmp_path, name):
    reference, _ = saved(name)
    family = SEGMENTER_FAMILIES.get(reference.split(":", 1)[0])
    first, _ = family.resolve(reference.split(":", 1)[1], CONTEXT)
    copy = tmp_path / "copy"
    copy.mkdir()
    CASES[name].save(copy)  # the same weights (same seed) in another folder
    same, _ = family.resolve(CASES[name].reference(copy).split(":", 1)[1], CONTEXT)
    changed_folder = tmp_path / "changed"
    changed_folder.mkdir()
    saver = {"hf-segformer": lambda d: _save_hf(d, "segformer", seed=5),
             "smp-fpn": lambda d: _save_smp(d, "FPN", seed=5, decoder_pyramid_channels=16,
                                            decoder_segmentation_channels=32),
             "module-linear": lambda d: _save_module(d, seed=5)}[name]
    saver(changed_folder)
    changed, _ = family.resolve(CASES[name].reference(changed_folder).split(":", 1)[1], CONTEXT)
    assert first == same and changed != first


def test_wrong_output_counts_and_wrong_files_are_one_line_errors(tmp_path):
    smp_folder, hf_folder = tmp_path / "smp5", tmp_path / "hf"
    _save_smp(smp_folder, "DeepLabV3Plus", outputs=5, decoder_channels=16)
    with pytest.raises(GFSSError, match=r"smp model .*smp5 \(head segmentation_head\.0\) has 5 classifier outputs "
                                        r".* synthetic5i fold 0 .* needs 16"):
        build_segmenter(f"smp:{smp_folder}", benchmark=BENCHMARK, fold=FOLD)
    _save_hf(hf_folder, "segformer")
    (hf_folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(GFSSError, match="hf folder .*transformers cannot load"):
        build_segmenter(f"hf:{hf_folder}", benchmark=BENCHMARK, fold=FOLD)
    (smp_folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(GFSSError, match="model.safetensors cannot be read"):
        build_segmenter(f"smp:{smp_folder}", benchmark=BENCHMARK, fold=FOLD)
    with pytest.raises(GFSSError, match="holds no config.json"):
        build_segmenter(f"smp:{tmp_path}", benchmark=BENCHMARK, fold=FOLD)
    _save_hf(tmp_path / "x", "segformer")
    with pytest.raises(GFSSError, match="has no module 'decode_head.clasifier'"):
        build_segmenter(f"hf:{tmp_path / 'x'}#head=decode_head.clasifier", benchmark=BENCHMARK, fold=FOLD)
    (tmp_path / "net.py").write_text(MODULE_SOURCE)
    with pytest.raises(GFSSError, match="defines no function 'buld'"):
        build_segmenter(f"module:{tmp_path / 'net.py'}:buld#head", benchmark=BENCHMARK, fold=FOLD)
    with pytest.raises(GFSSError, match="must be written module:FILE.py:FUNCTION"):
        build_segmenter(f"module:{tmp_path / 'net.py'}", benchmark=BENCHMARK, fold=FOLD)


def test_bcm_refuses_negative_features_unless_beta_is_one():
    from gfss_bench.methods import build_method
    from gfss_bench.methods.bcm import check_non_negative
    from tests.methods.tasks import make_task

    task = make_task(seed=2)
    shifted = dataclasses.replace(task, support_features=task.support_features - 0.5, segmenter="hf:/models/x")
    with pytest.raises(GFSSError, match=r"segmenter hf:/models/x have negative values.*-o bcm\.beta=1"):
        build_method("bcm").fit(shifted)
    check_non_negative(shifted.support_features, 1.0, shifted.segmenter)  # beta = 1: the raw features are fine
    check_non_negative(task.support_features, 0.5, task.segmenter)  # post-ReLU features pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["hf-segformer", "smp-unet", "module-linear"])
def test_the_segmenter_is_built_on_the_runs_device(saved, name):
    reference, _ = saved(name)
    segmenter = build_segmenter(reference, benchmark=BENCHMARK, fold=FOLD, device="cuda")
    on_cpu = build_segmenter(reference, benchmark=BENCHMARK, fold=FOLD, device="cpu")
    assert all(p.device.type == "cuda" for p in segmenter.parameters()) and not segmenter.training
    images = _images(CASES[name].side)
    with torch.no_grad():
        gpu = segmenter.extract_features(images.cuda())
        cpu = on_cpu.extract_features(images)
    scale = max(1.0, cpu.abs().max().item())  # cuDNN may use TF32 convolutions
    assert gpu.device.type == "cuda" and (gpu.cpu() - cpu).abs().max().item() < 1e-2 * scale
