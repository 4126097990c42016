"""The `torchvision` segmenter family: torchvision's DeepLabV3/FCN models seen as features + 1x1 classifier."""

import json

import pytest
import torch
from click.testing import CliRunner
from torchvision.models import segmentation

from gfss_bench.evaluation.spec import RunSpec
from gfss_bench.cli import cli
from gfss_bench.errors import GFSSError
from gfss_bench.models.families import SegmenterContext, SegmenterLoader
from gfss_bench.protocols import get_benchmark
from tests.models.test_pspnet_checkpoints import _randomise_batchnorm

CPU = torch.device("cpu")
CONTEXT = SegmenterContext(get_benchmark("synthetic5i"), 0, "practical", CPU)  # B+1 = 16


def _saved_model(tmp_path, architecture, num_classes=16, aux_loss=False, wrap=False):
    """A random-init torchvision model (non-trivial BN statistics) saved as a state dict, and the model."""
    torch.manual_seed(0)
    model = getattr(segmentation, architecture)(weights=None, weights_backbone=None, num_classes=num_classes,
                                                aux_loss=aux_loss)
    model = _randomise_batchnorm(model, mean=(-0.1, 0.1), var=(0.5, 1.5))
    state = model.state_dict()
    if wrap:  # DataParallel prefixes under 'state_dict', as training scripts save them
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    path = tmp_path / f"{architecture}.pth"
    torch.save(state, path)
    return path, model


@pytest.mark.parametrize("architecture,aux_loss,wrap,channels,side", [
    ("deeplabv3_mobilenet_v3_large", False, False, 256, 5),  # output stride 16: 65 -> 5
    ("fcn_resnet50", True, True, 512, 9),  # output stride 8: 65 -> 9; the auxiliary head is dropped
])
def test_features_classifier_and_logits_match_the_model(tmp_path, architecture, aux_loss, wrap, channels, side):
    path, model = _saved_model(tmp_path, architecture, aux_loss=aux_loss, wrap=wrap)
    loader = SegmenterLoader()
    segmenter_id = loader.add("torchvision", f"{architecture}={path}", CONTEXT)
    assert segmenter_id.startswith(f"torchvision:{architecture}:") and len(segmenter_id.rsplit(":", 1)[1]) == 16
    spec = RunSpec.create("base", "synthetic5i", 0, "practical", 1, segmenter=segmenter_id)
    loaded = loader(spec, CPU)
    segmenter = loaded.segmenter
    assert not segmenter.training and loaded.source["path"] == str(path.resolve())

    images = torch.randn(2, 3, 65, 65, generator=torch.Generator().manual_seed(1))
    own = {}

    def keep_logits(module, inputs, output):
        own["logits"] = output

    def keep_features(module, inputs, output):
        own["features"] = inputs[0]

    model.classifier.register_forward_hook(keep_logits)  # named functions: two lambdas here would collide
    model.classifier[4].register_forward_hook(keep_features)
    with torch.no_grad():
        model(images)  # the hooks keep the head's output (before the model upsamples it) and its last conv's input
        features = segmenter.extract_features(images)
    assert features.shape == (2, channels, side, side)
    assert torch.equal(features, own["features"])
    last = model.classifier[4]
    weight, bias = segmenter.classifier_weight_and_bias()
    assert torch.equal(weight, last.weight[:, :, 0, 0].t()) and torch.equal(bias, last.bias)
    logits = torch.einsum("nchw,ck->nkhw", features, weight) + bias.view(1, -1, 1, 1)
    assert own["logits"].shape == (2, 16, side, side)
    assert (logits - own["logits"]).abs().max() <= 1e-5 * max(1.0, float(own["logits"].abs().max()))  # float32


def test_bad_references_are_one_line_errors(tmp_path):
    loader = SegmenterLoader()
    with pytest.raises(GFSSError, match=r"unknown torchvision architecture 'deeplabv3_resnet5' \(did you mean "
                                        r"'deeplabv3_resnet50'\?\).*ARCH=PATH"):
        loader.add("torchvision", f"deeplabv3_resnet5={tmp_path}", CONTEXT)
    with pytest.raises(GFSSError, match="does not exist"):
        loader.add("torchvision", f"fcn_resnet50={tmp_path / 'missing.pth'}", CONTEXT)
    path, _ = _saved_model(tmp_path, "deeplabv3_mobilenet_v3_large", num_classes=5)
    spec = RunSpec.create("base", "synthetic5i", 0, "practical", 1,
                          segmenter=loader.add("torchvision", f"deeplabv3_mobilenet_v3_large={path}", CONTEXT))
    with pytest.raises(GFSSError, match=r"has 5 classifier outputs .* synthetic5i fold 0 .* needs 16"):
        loader(spec, CPU)
    mismatched = loader.add("torchvision", f"fcn_resnet50={path}", CONTEXT)  # another architecture's weights
    with pytest.raises(GFSSError, match=f"torchvision weights {path} do not fit fcn_resnet50: .*missing key"):
        loader(RunSpec.create("base", "synthetic5i", 0, "practical", 1, segmenter=mismatched), CPU)


def test_run_with_a_torchvision_segmenter(tmp_path):
    """`run --segmenter torchvision:ARCH=FOLDER` end to end: fold<F>.pth is found, the spec names the file's
    hash, and the result records the weights it came from."""
    folder = tmp_path / "weights"
    folder.mkdir()
    path, _ = _saved_model(tmp_path, "deeplabv3_mobilenet_v3_large")
    (folder / "fold0.pth").write_bytes(path.read_bytes())
    args = ["run", "-m", "imprint", "-b", "synthetic5i", "-f", "0", "--runs", "1", "--queries", "20", "--image-size",
            "49", "--device", "cpu", "--results-dir", str(tmp_path / "results")]
    result = CliRunner().invoke(cli, args + ["--segmenter", f"torchvision:deeplabv3_mobilenet_v3_large={folder}"])
    assert result.exit_code == 0, result.output
    (stored,) = (tmp_path / "results").glob("*.json")
    record = json.loads(stored.read_text())
    assert record["spec"]["segmenter"].startswith("torchvision:deeplabv3_mobilenet_v3_large:")
    source = record["provenance"]["segmenter_source"]
    assert source["path"] == str((folder / "fold0.pth").resolve()) and source["family"] == "torchvision"
    assert record["runs"][0]["num_queries"] == 20
    both = CliRunner().invoke(cli, args + ["--segmenter", "builtin", "--checkpoint", str(folder)])
    assert isinstance(both.exception, GFSSError) and "pass one of them" in str(both.exception)
