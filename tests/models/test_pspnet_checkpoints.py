"""PSPNet-ResNet50 checkpoints in DIaM's and BAM's layouts (docs/protocol.md §6), and `run --checkpoint`."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from gfss_bench.cli import cli
from gfss_bench.errors import GFSSError
from gfss_bench.models import zoo
from gfss_bench.models.checkpoints import find_fold_checkpoint, load_checkpoint_segmenter
from gfss_bench.models.pspnet import PSPNetResNet50


def _randomise_batchnorm(model, mean, var, weight=None, bias=None):
    """Draw every BN layer's running statistics (and, when ranges are given, its affine parameters) uniformly,
    so that checkpoints carry non-trivial values; returns the model in eval mode."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor, bounds in ((module.running_mean, mean), (module.running_var, var),
                                       (module.weight, weight), (module.bias, bias)):
                    if bounds is not None:
                        tensor.uniform_(*bounds)
    return model.eval()


@pytest.fixture(scope="module")
def reference():
    """A randomly initialised PSPNet-ResNet50 (B+1 = 16) with non-trivial BN statistics, and its features."""
    torch.manual_seed(0)
    model = _randomise_batchnorm(PSPNetResNet50(16), mean=(-0.1, 0.1), var=(0.5, 1.5))
    images = torch.randn(2, 3, 33, 33, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = model.extract_features(images)
    return model, images, features


def _diam_layout(model):
    return {"epoch": 100, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}


def _bam_layout(model):
    renames = {"bottleneck.0.": "cls.0.", "bottleneck.1.": "cls.1.", "classifier.": "cls.4."}
    state = {}
    for key, value in model.state_dict().items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
        state[key] = value
        if key.startswith("layer") and key[5] in "01234":
            state[f"encoder.{key[5]}.{key[7:]}"] = value
    return {"state_dict": state}


@pytest.mark.parametrize("layout", [_diam_layout, _bam_layout, lambda m: m.state_dict()])
def test_checkpoint_layouts_give_the_same_features(layout, reference, tmp_path):
    model, images, features = reference
    path = tmp_path / "best.pth"
    torch.save(layout(model), path)
    loaded = load_checkpoint_segmenter(path, expected_outputs=16)
    assert loaded.num_outputs == 16 and not loaded.training
    with torch.no_grad():
        got = loaded.extract_features(images)
    assert got.shape == (2, 512, 5, 5)
    torch.testing.assert_close(got, features, atol=1e-5, rtol=0)
    weight, bias = loaded.classifier_weight_and_bias()
    assert weight.shape == (512, 16) and bias.shape == (16,)


def test_wrong_class_count_corrupt_file_and_input_size(reference, tmp_path):
    model, _, _ = reference
    path = tmp_path / "best.pth"
    torch.save(_diam_layout(model), path)
    with pytest.raises(GFSSError, match=r"16 classifier outputs .* needs 21") as error:
        load_checkpoint_segmenter(path, expected_outputs=21, expected_for="pascal5i fold 0")
    assert str(path) in str(error.value)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(GFSSError, match="cannot be read") as error:
        load_checkpoint_segmenter(corrupt)
    assert str(corrupt) in str(error.value)
    partial = {k: v for k, v in model.state_dict().items() if not k.startswith("ppm.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(GFSSError, match=r"missing key\(s\): ppm\.features"):
        load_checkpoint_segmenter(tmp_path / "partial.pth")
    with pytest.raises(GFSSError, match=r"\(H-1\) % 8 == 0"):
        model.extract_features(torch.zeros(1, 3, 32, 32))


def test_checkpoint_folder_layouts(tmp_path):
    diam = tmp_path / "model_ckpt" / "pascal" / "split1" / "pspnet_resnet50"
    diam.mkdir(parents=True)
    (diam / "best.pth").write_bytes(b"x")
    assert find_fold_checkpoint(tmp_path / "model_ckpt", 1, "pascal") == diam / "best.pth"
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "fold2.pth").write_bytes(b"x")
    assert find_fold_checkpoint(tmp_path / "flat", 2) == tmp_path / "flat" / "fold2.pth"
    with pytest.raises(GFSSError, match="no checkpoint for fold 0"):
        find_fold_checkpoint(tmp_path / "model_ckpt", 0, "pascal")
    ten = tmp_path / "model_ckpt" / "pascal" / "split11" / "pspnet_resnet50"
    ten.mkdir(parents=True)
    (ten / "best.pth").write_bytes(b"x")
    assert find_fold_checkpoint(tmp_path / "model_ckpt", 1, "pascal", split=11) == ten / "best.pth"
    assert find_fold_checkpoint(tmp_path / "model_ckpt", 1, "pascal") == diam / "best.pth"  # not split11
    from gfss_bench.protocols import get_benchmark
    assert [get_benchmark("pascal10i").official_split(f) for f in (0, 1)] == [10, 11]
    assert get_benchmark("pascal5i").official_split(3) == 3
    (diam / "last.pth").write_bytes(b"x")
    with pytest.raises(GFSSError, match="2 checkpoints for fold 1"):
        find_fold_checkpoint(tmp_path / "model_ckpt", 1, "pascal")


def test_run_with_checkpoint_folder(tmp_path):
    """CLI end to end with a segmenter file written by `gfss-bench train` (which copies the shipped weights when
    their config is the current one) in DIaM's folder layout: the run id follows the file's contents, the
    result records the file, and the confusion matrices equal those of the built-in segmenter."""
    trained = CliRunner().invoke(cli, ["train", "--benchmark", "synthetic5i", "--fold", "0", "--protocol", "practical",
                                       "--out", str(tmp_path / "trained")])
    assert trained.exit_code == 0, trained.output
    assert "shipped weights of this config" in trained.output
    written = tmp_path / "trained" / "synthetic5i-practical" / "fold0.pt"
    shipped = zoo.WEIGHTS_DIR / f"{zoo.weights_name('synthetic5i', 0, 'practical')}.pt"
    assert written.read_bytes() == shipped.read_bytes()
    ckpt = tmp_path / "model_ckpt" / "synthetic" / "split0" / "small" / "best.pth"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(written, ckpt)
    args = ["run", "--benchmark", "synthetic5i", "--fold", "0", "--runs", "1", "--method", "base", "--device", "cpu",
            "--results-dir", str(tmp_path / "results"), "--checkpoint", str(tmp_path / "model_ckpt")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (stored,) = list((tmp_path / "results").rglob("*.json"))
    record = json.loads(stored.read_text())
    assert record["spec"]["segmenter"].startswith("checkpoint:")
    assert record["provenance"]["segmenter_source"]["path"] == str(ckpt.resolve())
    builtin = CliRunner().invoke(cli, args[:-2])
    assert builtin.exit_code == 0, builtin.output
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")]
    assert len(records) == 2  # other segmenter, other run id
    (builtin_record,) = [r for r in records if r["spec"]["segmenter"] == "builtin"]
    assert [r["confusion"] for r in builtin_record["runs"]] == [r["confusion"] for r in record["runs"]]
    bad = CliRunner().invoke(cli, args[:-1] + [str(tmp_path / "nowhere")])
    assert isinstance(bad.exception, GFSSError) and "does not exist" in str(bad.exception)  # main(): exit 2


def test_run_with_pspnet_checkpoint_file(reference, tmp_path):
    """The full PSPNet-ResNet50 on synthetic5i, at 33x33 (the network's cost, not the image size, is the point)."""
    model, _, _ = reference
    path = tmp_path / "diam.pth"
    torch.save(_diam_layout(model), path)
    args = ["run", "--benchmark", "synthetic5i", "--fold", "0", "--runs", "1", "--method", "base", "--device", "cpu",
            "--image-size", "33", "--results-dir", str(tmp_path / "results"), "--checkpoint", str(path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (stored,) = list((tmp_path / "results").rglob("*.json"))
    assert json.loads(stored.read_text())["provenance"]["segmenter_source"]["layout"] == "diam"


def test_a_checkpoint_trained_for_another_fold_is_refused(reference, tmp_path):
    """`gfss-bench train` files carry the novel classes they were trained without; another fold's are refused."""
    from gfss_bench.evaluation.spec import RunSpec
    from gfss_bench.models.families import SegmenterContext, SegmenterLoader
    from gfss_bench.protocols import get_benchmark

    model, _, _ = reference
    loader = SegmenterLoader()
    context = SegmenterContext(get_benchmark("synthetic5i"), 0, "practical", torch.device("cpu"))
    for fold, novel in ((1, [6, 7, 8, 9, 10]), (0, [1, 2, 3, 4, 5])):
        path = tmp_path / f"trained-fold{fold}.pth"
        torch.save({"state_dict": model.state_dict(),
                    "gfss_bench": {"benchmark": "synthetic5i", "fold": fold, "protocol": "practical",
                                   "novel_classes": novel}}, path)
        segmenter_id = loader.add("pspnet", str(path), context)
        assert segmenter_id.startswith("checkpoint:")  # the ids of --checkpoint results stay as they were
        spec = RunSpec.create("base", "synthetic5i", 0, "practical", 1, segmenter=segmenter_id)
        if fold == 1:
            with pytest.raises(GFSSError, match=r"trained by `gfss-bench train` for synthetic5i fold 1 .* not for "
                                                r"synthetic5i fold 0"):
                loader(spec, torch.device("cpu"))
        else:
            source = loader(spec, torch.device("cpu")).source
            assert source["trained_for"] == {"benchmark": "synthetic5i", "fold": 0, "protocol": "practical"}


def test_features_match_an_independent_official_style_network(tmp_path):
    """A DIaM-layout checkpoint of a network built the official way (dilation patched in after construction,
    shared stem ReLU) gives the same features through `load_segmenter`, at 417x417 as in the evaluation."""
    from gfss_bench.models import load_segmenter
    from tests.models.official_pspnet_reference import OfficialPSPNet

    torch.manual_seed(3)
    official = _randomise_batchnorm(OfficialPSPNet(16), mean=(-0.2, 0.2), var=(0.5, 2.0), weight=(0.5, 1.5),
                                    bias=(-0.2, 0.2))
    path = tmp_path / "best.pth"
    torch.save(_diam_layout(official), path)
    loaded = load_segmenter(path, expected_outputs=16)
    images = torch.randn(1, 3, 417, 417, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = official.extract_features(images), loaded.extract_features(images)
    assert got.shape == expected.shape == (1, 512, 53, 53)
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, float(expected.abs().max()))
    weight, bias = loaded.classifier_weight_and_bias()
    assert torch.equal(weight, official.classifier.weight[:, :, 0, 0].t()) and torch.equal(bias, official.classifier.bias)
