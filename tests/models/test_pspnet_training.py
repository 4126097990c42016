"""Base training of PSPNet-ResNet50 (gfss_bench.models.pspnet_training) and its ImageNet backbone files."""

import dataclasses
import json
import os
import signal

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from gfss_bench.data import synthetic
from gfss_bench.data.datasets import open_split
from gfss_bench.cli import cli
from gfss_bench.errors import GFSSError
from gfss_bench.models import load_segmenter
from gfss_bench.models.checkpoints import pspnet_from_backbone_weights
from gfss_bench.models.pspnet import PSPNetResNet50
from gfss_bench.models.pspnet_training import (PSPNetTrainConfig, TrainingSamples, augment, output_files, poly_lr,
                                               train_pspnet)
from gfss_bench.protocols import get_benchmark, get_protocol

# Small enough for CI: 65x65 crops (9x9 features), batches of 4, 6 steps (about 1 s per step on 2 CPU cores).
CONFIG = PSPNetTrainConfig(steps=6, batch_size=4, crop_size=65, lr=0.001, seed=0)
IMAGES = torch.randn(2, 3, 65, 65, generator=torch.Generator().manual_seed(5))


def _train(out, on_step=None, **kwargs):
    return train_pspnet("synthetic5i", 0, "practical", backbone_weights=None, out=out, config=CONFIG, save_every=4,
                        evaluate=False, log=lambda message: None, on_step=on_step, **kwargs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and the same run stopped by Ctrl-C after step 1, then crashed after step 5 (the
    periodic state of step 4 survives), then finished; with the losses of every step and the resume steps."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("pspnet-training")
    losses = {}
    model, info = _train(root / "straight", on_step=lambda step, loss: losses.setdefault(step, loss))

    resumed_losses, resume_steps = {}, []
    out = root / "interrupted"
    state_path = output_files(out, "synthetic5i", "practical", 0)[2]

    def ctrl_c(step, loss):
        resumed_losses[step] = loss
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    def crash(step, loss):
        resumed_losses[step] = loss
        if step == 5:
            raise RuntimeError("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        _train(out, on_step=ctrl_c)
    resume_steps.append(torch.load(state_path, weights_only=True)["step"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(out, on_step=crash)
    resume_steps.append(torch.load(state_path, weights_only=True)["step"])
    resumed, resumed_info = _train(out, on_step=lambda step, loss: resumed_losses.__setitem__(step, loss))
    return {"model": model, "info": info, "losses": losses, "resumed": resumed, "resumed_info": resumed_info,
            "resumed_losses": resumed_losses, "resume_steps": resume_steps, "state_path": state_path}


@pytest.mark.slow  # the shared `runs` fixture trains PSPNet-ResNet50 three times (~35 s)
def test_loss_falls(runs):
    losses = [runs["losses"][step] for step in range(1, 7)]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses


@pytest.mark.slow  # the shared `runs` fixture trains PSPNet-ResNet50 three times (~35 s)
def test_checkpoint_loads_back_with_the_same_features(runs):
    path = runs["info"]["path"]
    assert path.endswith("synthetic5i-practical/fold0.pth")
    loaded = load_segmenter(path, expected_outputs=16)
    assert loaded.checkpoint_layout == "diam" and loaded.stem == "deep"
    meta = loaded.training_metadata
    assert (meta["benchmark"], meta["fold"], meta["protocol"], meta["steps_done"]) == ("synthetic5i", 0, "practical", 6)
    assert meta["config"]["crop_size"] == 65 and meta["backbone_weights"] is None
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"state_dict", "gfss_bench"} and "classifier.weight" in payload["state_dict"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.extract_features(IMAGES), runs["model"].extract_features(IMAGES),
                                   atol=0, rtol=0)
    manifest = json.loads(open(path[:-len(".pth")] + ".json").read())
    assert manifest["metadata"]["total_steps"] == 6 and "val_base_miou" not in manifest


@pytest.mark.slow  # the shared `runs` fixture trains PSPNet-ResNet50 three times (~35 s)
def test_resuming_continues_from_the_saved_step_and_ends_with_the_same_weights(runs):
    assert runs["resume_steps"] == [1, 4]  # Ctrl-C saves at the end of its step; a crash keeps the periodic state
    assert runs["resumed_info"]["resumed_at_step"] == 4 and not runs["state_path"].exists()
    assert runs["resumed_losses"] == runs["losses"]  # steps 1..6, bit for bit (steps 5 ran twice: same loss)
    straight, resumed = runs["model"].state_dict(), runs["resumed"].state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow  # the shared `runs` fixture trains PSPNet-ResNet50 three times (~35 s)
def test_a_finished_run_is_not_retrained_and_other_settings_are_refused(runs):
    out = runs["info"]["path"].rsplit("/", 2)[0]
    model, info = _train(out, on_step=lambda step, loss: pytest.fail("retrained"))
    assert info["already_trained"] and info["path"] == runs["info"]["path"]
    with pytest.raises(GFSSError, match=r"other settings \(config.lr: 0.001 -> 0.002\).*--force"):
        train_pspnet("synthetic5i", 0, "practical", backbone_weights=None, out=out, evaluate=False,
                     config=dataclasses.replace(CONFIG, lr=0.002), log=lambda message: None)


def test_samples_are_deterministic_and_independent_of_workers():
    benchmark, protocol = get_benchmark("synthetic5i"), get_protocol("standard")
    split = open_split(benchmark, "train")
    lut = protocol.training_label_lut(benchmark, 0)
    samples = TrainingSamples(split, list(range(10)), lut, PSPNetTrainConfig(batch_size=4, crop_size=65).resolved(
        benchmark))
    assert samples.per_epoch == 8
    loader = torch.utils.data.DataLoader(samples, batch_size=4, sampler=range(4, 12), num_workers=2)
    batches = list(loader)
    for g in range(4, 12):
        image, label = samples[g]
        assert image.shape == (65, 65, 3) and label.shape == (65, 65) and image.dtype == label.dtype == torch.uint8
        assert torch.equal(image, batches[(g - 4) // 4][0][(g - 4) % 4])
        assert torch.equal(label, batches[(g - 4) // 4][1][(g - 4) % 4])
    epoch0 = {int(samples.indices[samples._order_of(0)[p]]) for p in range(8)}
    assert len(epoch0) == 8  # an epoch visits distinct images


def test_augment_pads_with_ignore_and_keeps_label_values():
    image, label = synthetic.generate_sample("train", 3)
    config = PSPNetTrainConfig(crop_size=97, scale_min=0.5, scale_max=0.6).resolved(get_benchmark("synthetic5i"))
    out_image, out_label = augment(image, label, np.random.default_rng(0), config)
    assert out_image.shape == (97, 97, 3) and out_label.shape == (97, 97)
    assert set(np.unique(out_label)) <= set(np.unique(label)) | {255}
    padded = out_label == 255
    assert padded.sum() > 97 * 97 // 2  # a half-size image in a 97x97 crop
    assert poly_lr(0.01, 0, 10, 0.9) == 0.01 and 0 < poly_lr(0.01, 9, 10, 0.9) < 0.002


def test_config_is_checked():
    benchmark = get_benchmark("pascal5i")
    resolved = PSPNetTrainConfig().resolved(benchmark)
    assert (resolved.epochs, resolved.crop_size, resolved.batch_size, resolved.lr) == (50, 417, 12, 0.0025)
    assert PSPNetTrainConfig().resolved(get_benchmark("coco20i")).epochs == 20
    assert PSPNetTrainConfig(steps=5).resolved(benchmark).epochs is None
    with pytest.raises(GFSSError, match=r"--crop-size 64: .*\(size - 1\) % 8 == 0"):
        PSPNetTrainConfig(crop_size=64).resolved(benchmark)
    with pytest.raises(GFSSError, match="exclusive"):
        PSPNetTrainConfig(epochs=2, steps=3).resolved(benchmark)
    with pytest.raises(GFSSError, match="--batch-size must be >= 1"):
        PSPNetTrainConfig(batch_size=0).resolved(benchmark)


# ----------------------------------------------------------------------------------------- ImageNet backbones


def _deep_stem_weights():
    """A hand-made semseg/PFENet-style resnet50_v2 state dict (deep stem conv1..conv3, bn1..bn3, fc)."""
    torch.manual_seed(3)
    source = PSPNetResNet50(2, stem="deep").state_dict()
    renames = {"layer0.0.": "conv1.", "layer0.1.": "bn1.", "layer0.3.": "conv2.", "layer0.4.": "bn2.",
               "layer0.6.": "conv3.", "layer0.7.": "bn3."}
    state = {}
    for key, value in source.items():
        if key.startswith("layer0."):
            prefix = next(p for p in renames if key.startswith(p))
            state[renames[prefix] + key[len(prefix):]] = value.clone()
        elif key.startswith(("layer1.", "layer2.", "layer3.", "layer4.")):
            state[key] = value.clone().uniform_() if value.is_floating_point() else value.clone()
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    return state


def test_torchvision_and_deep_stem_backbones_fill_the_right_tensors(tmp_path):
    torchvision_state = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(torchvision_state, tmp_path / "resnet50-torchvision.pth")
    model, info = pspnet_from_backbone_weights(tmp_path / "resnet50-torchvision.pth", 16)
    assert (info["layout"], info["stem"], info["tensors"]) == ("torchvision", "7x7", len(torchvision_state) - 2)
    own = model.state_dict()
    for theirs, ours in (("conv1.weight", "layer0.0.weight"), ("bn1.running_var", "layer0.1.running_var"),
                         ("layer1.0.conv1.weight", "layer1.0.conv1.weight"),
                         ("layer1.0.downsample.0.weight", "layer1.0.downsample.0.weight"),
                         ("layer4.2.bn3.weight", "layer4.2.bn3.weight")):
        assert torch.equal(own[ours], torchvision_state[theirs]), ours
    assert own["layer1.0.conv1.weight"].shape == (64, 64, 1, 1) and own["layer0.0.weight"].shape == (64, 3, 7, 7)

    # a network trained from torchvision weights saves and loads back with its 7x7 stem
    model.eval()
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "trained.pth")
    loaded = load_segmenter(tmp_path / "trained.pth", expected_outputs=16)
    assert loaded.stem == "7x7"
    with torch.no_grad():
        torch.testing.assert_close(loaded.extract_features(IMAGES[:1, :, :33, :33]),
                                   model.extract_features(IMAGES[:1, :, :33, :33]), atol=0, rtol=0)

    deep = _deep_stem_weights()
    torch.save({"state_dict": {"module." + k: v for k, v in deep.items()}}, tmp_path / "resnet50_v2.pth")
    model, info = pspnet_from_backbone_weights(tmp_path / "resnet50_v2.pth", 16)
    assert (info["layout"], info["stem"], info["tensors"]) == ("deep-stem", "deep", len(deep) - 2)
    own = model.state_dict()
    for theirs, ours in (("conv1.weight", "layer0.0.weight"), ("bn1.bias", "layer0.1.bias"),
                         ("conv2.weight", "layer0.3.weight"), ("bn2.running_mean", "layer0.4.running_mean"),
                         ("conv3.weight", "layer0.6.weight"), ("bn3.weight", "layer0.7.weight"),
                         ("layer1.0.conv1.weight", "layer1.0.conv1.weight"), ("layer3.5.conv2.weight",
                                                                             "layer3.5.conv2.weight")):
        assert torch.equal(own[ours], deep[theirs]), ours


def test_bad_backbone_files_are_clear_errors(tmp_path):
    good = _deep_stem_weights()
    cases = {
        "missing.pth": ({k: v for k, v in good.items() if not k.startswith("layer4.2.")},
                        r"missing key\(s\): layer4\.2"),
        "shape.pth": ({**good, "conv2.weight": torch.zeros(64, 64, 5, 5)},
                      r"wrong shape key\(s\): layer0\.3\.weight \(64, 64, 5, 5\) instead of \(64, 64, 3, 3\)"),
        "extra.pth": ({**good, "aux.weight": torch.zeros(1)}, r"unexpected key\(s\): aux\.weight"),
        "pspnet.pth": (PSPNetResNet50(16).state_dict(), r"no 'conv1\.weight'"),
        "list.pth": ([1, 2, 3], "holds no state dict"),
    }
    for name, (payload, message) in cases.items():
        torch.save(payload, tmp_path / name)
        with pytest.raises(GFSSError, match=message) as error:
            pspnet_from_backbone_weights(tmp_path / name, 16)
        assert str(tmp_path / name) in str(error.value)
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(GFSSError, match="cannot be read"):
        pspnet_from_backbone_weights(tmp_path / "corrupt.pth", 16)
    with pytest.raises(GFSSError, match="does not exist"):
        pspnet_from_backbone_weights(tmp_path / "nowhere.pth", 16)


# ----------------------------------------------------------------------------------------- command line


def _tiny_pascal_root(root):
    """A PASCAL-layout data root: 6 train and 2 val synthetic scenes (their class ids are 1..20 like VOC's)."""
    for folder in ("JPEGImages", "SegmentationClass"):
        (root / folder).mkdir(parents=True)
    for split, count in (("train", 6), ("val", 2)):
        lines = []
        for index in range(count):
            image, label = synthetic.generate_sample(split, index)
            name = f"{split}_{index:04d}"
            Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg")
            Image.fromarray(label).save(root / "SegmentationClass" / f"{name}.png")
            lines.append(f"JPEGImages/{name}.jpg SegmentationClass/{name}.png\n")
        (root / f"{split}.txt").write_text("".join(lines))


def test_train_command_on_a_real_benchmark_layout(tmp_path):
    """`gfss-bench train --benchmark pascal5i` end to end on a tiny PASCAL-layout folder, evaluation included."""
    torch.set_num_threads(2)
    _tiny_pascal_root(tmp_path / "voc")
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "resnet50.pth")
    base = ["train", "--benchmark", "pascal5i", "--fold", "0", "--protocol", "standard", "--device", "cpu",
            "--data-root", str(tmp_path / "voc"), "--out", str(tmp_path / "ckpt")]
    refused = CliRunner().invoke(cli, base)
    assert isinstance(refused.exception, GFSSError) and "--backbone-weights FILE" in str(refused.exception)
    small = CliRunner().invoke(cli, base + ["--arch", "small", "--backbone-weights", "none"])
    assert isinstance(small.exception, GFSSError) and "--backbone-weights: only for --arch pspnet-resnet50" in str(
        small.exception)
    result = CliRunner().invoke(cli, base + ["--backbone-weights", str(tmp_path / "resnet50.pth"), "--steps", "1",
                                             "--batch-size", "2", "--crop-size", "33"])
    assert result.exit_code == 0, result.output
    assert "pascal5i fold 0 standard: base mIoU" in result.output
    assert "--checkpoint " + str(tmp_path / "ckpt" / "pascal5i-standard") in result.output.replace("\n", "")
    manifest = json.loads((tmp_path / "ckpt" / "pascal5i-standard" / "fold0.json").read_text())
    assert 0 <= manifest["val_base_miou"] <= 1 and manifest["metadata"]["stem"] == "7x7"
    assert manifest["metadata"]["training_images"] < 6  # standard: images with classes 1-5 are dropped
    assert manifest["metadata"]["backbone_weights"]["layout"] == "torchvision"
    loaded = load_segmenter(tmp_path / "ckpt" / "pascal5i-standard" / "fold0.pth", expected_outputs=16)
    assert loaded.stem == "7x7"
    small_options = CliRunner().invoke(cli, ["train", "--benchmark", "synthetic5i", "--epochs", "3"])
    assert isinstance(small_options.exception, GFSSError) and "--epochs: only for --arch pspnet-resnet50" in str(
        small_options.exception)
