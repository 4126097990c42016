"""SmallPSPNet shapes, base training, config hashes and the shipped weights."""

import json

import numpy as np
import pytest
import torch

from gfss_bench.benchmark import synthetic
from gfss_bench.models import zoo
from gfss_bench.models.segmenter import Segmenter
from gfss_bench.models.small_pspnet import build_small_pspnet
from gfss_bench.models.training import TrainConfig, resize_and_pad_for_training, train_on_arrays
from gfss_bench.protocols import get_benchmark, get_protocol

COMBINATIONS = [(b, f, p) for b, folds in (("synthetic5i", 4), ("synthetic10i", 2))
                for f in range(folds) for p in ("standard", "practical")]


def test_shapes_and_classifier_interface():
    torch.manual_seed(0)
    model = build_small_pspnet(16).eval()
    assert isinstance(model, Segmenter) and model.num_outputs == 16
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 700_000
    x = torch.randn(2, 3, 97, 97)
    with torch.no_grad():
        features = model.extract_features(x)
        logits = model(x)
    assert features.shape == (2, model.num_features, 13, 13)
    assert (features >= 0).all(), "features are post-ReLU"
    assert logits.shape == (2, 16, 13, 13)
    weight, bias = model.classifier_weight_and_bias()
    assert weight.shape == (model.num_features, 16) and bias.shape == (16,)
    manual = torch.einsum("nchw,ck->nkhw", features, weight) + bias.view(1, -1, 1, 1)
    assert torch.allclose(manual, logits, atol=1e-5)
    with torch.no_grad():
        assert model.extract_features(torch.randn(1, 3, 417, 417)).shape[-2:] == (53, 53)


def _tiny_training_set(count=8, size=97):
    benchmark, protocol = get_benchmark("synthetic5i"), get_protocol("practical")
    lut = protocol.training_label_lut(benchmark, 0)
    images, labels = [], []
    for index in range(count):
        image, label = synthetic.generate_sample("train", index)
        image, label = resize_and_pad_for_training(image, label, size)
        images.append(image)
        labels.append(lut[label])
    return np.stack(images), np.stack(labels)


def test_a_few_training_steps_reduce_the_loss_and_are_deterministic():
    torch.set_num_threads(1)
    images, labels = _tiny_training_set()
    config = TrainConfig(steps=40, batch_size=4, warmup_steps=5, lr=3e-3, seed=3)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_small_pspnet(16)
        losses = train_on_arrays(model, images, labels, config, progress=False)
        runs.append((losses, model.state_dict()))
    losses = runs[0][0]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert runs[0][0] == runs[1][0], "same seed, same losses"
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_config_hash_covers_data_version_fold_protocol_and_hyperparameters(monkeypatch):
    base = zoo.config_hash("synthetic5i", 0, "practical")
    assert base == zoo.config_hash("synthetic5i", 0, "practical")
    others = {
        zoo.config_hash("synthetic5i", 1, "practical"),
        zoo.config_hash("synthetic5i", 0, "standard"),
        zoo.config_hash("synthetic10i", 0, "practical"),
        zoo.config_hash("synthetic5i", 0, "practical", TrainConfig(seed=1)),
        zoo.config_hash("synthetic5i", 0, "practical", TrainConfig(steps=7)),
    }
    monkeypatch.setattr(synthetic, "VERSION", synthetic.VERSION + 1)
    others.add(zoo.config_hash("synthetic5i", 0, "practical"))
    assert base not in others and len(others) == 6


def test_save_and_load_round_trip_in_fp16(tmp_path):
    torch.manual_seed(0)
    model = build_small_pspnet(11).eval()
    zoo.save_segmenter(model, tmp_path / "m.pt", "abc", fp16=True)
    loaded, digest = zoo.load_segmenter(tmp_path / "m.pt")
    assert digest == "abc" and not loaded.training
    x = torch.randn(1, 3, 97, 97)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=5e-2)
    assert all(v.dtype == torch.float32 for v in loaded.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize("benchmark_name,fold,protocol", COMBINATIONS)
def test_shipped_weights_match_the_current_config(benchmark_name, fold, protocol):
    name = zoo.weights_name(benchmark_name, fold, protocol)
    path = zoo.WEIGHTS_DIR / f"{name}.pt"
    manifest = zoo.read_manifest(benchmark_name, fold, protocol)
    assert manifest is not None and path.exists(), f"{name} is not shipped"
    current = zoo.config_hash(benchmark_name, fold, protocol)
    assert manifest["config_hash"] == current, (
        f"{name}.pt is stale: retrain it with `{manifest['command']}`")
    assert path.stat().st_size < 1_500_000
    assert manifest["val_base_miou"] >= 0.5 and manifest["train_seconds"] > 0 and manifest["command"]
    model, stored = zoo.load_segmenter(path)
    assert stored == current
    assert model.num_outputs == len(get_benchmark(benchmark_name).base_classes(fold)) + 1


def test_builtin_segmenter_loads_shipped_weights_without_training(monkeypatch):
    monkeypatch.setattr(zoo, "train_and_save", lambda *a, **k: pytest.fail("trained instead of loading"))
    model = zoo.builtin_segmenter("synthetic5i", 0, "practical")
    assert not model.training and model.num_outputs == 16


def test_builtin_segmenter_trains_once_when_stale_and_reuses_the_cache(monkeypatch, tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "synthetic10i-fold1-standard.json").write_text(json.dumps({"config_hash": "0000"}))
    (weights / "synthetic10i-fold1-standard.pt").write_bytes(b"stale")
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(zoo, "cache_dir", lambda: tmp_path / "cache")
    calls = []

    def fake_train_and_save(benchmark_name, fold, protocol_name, **kwargs):
        calls.append((benchmark_name, fold, protocol_name))
        path = tmp_path / "cache" / "segmenters" / f"{zoo.config_hash(benchmark_name, fold, protocol_name)}.pt"
        zoo.save_segmenter(build_small_pspnet(11), path, zoo.config_hash(benchmark_name, fold, protocol_name))
        return path

    monkeypatch.setattr(zoo, "train_and_save", fake_train_and_save)
    first = zoo.builtin_segmenter("synthetic10i", 1, "standard", progress=False)
    assert "trained for config 0000" in capsys.readouterr().err
    second = zoo.builtin_segmenter("synthetic10i", 1, "standard", progress=False)
    assert calls == [("synthetic10i", 1, "standard")] and first.num_outputs == second.num_outputs == 11


def test_builtin_segmenter_refuses_real_benchmarks():
    from gfss_bench.errors import GFSSError

    with pytest.raises(GFSSError, match="no built-in segmenter"):
        zoo.builtin_segmenter("pascal5i", 0, "practical")


def test_shipped_weights_reproduce_their_manifest_miou():
    from gfss_bench.models.training import evaluate_base_miou

    manifest = zoo.read_manifest("synthetic5i", 2, "standard")
    model = zoo.builtin_segmenter("synthetic5i", 2, "standard", progress=False)
    miou = evaluate_base_miou(model, "synthetic5i", 2, "standard")
    assert abs(miou - manifest["val_base_miou"]) < 0.005


def test_train_and_cache_copies_weights_and_manifest_to_out(monkeypatch, tmp_path):
    def fake_train_and_save(benchmark_name, fold, protocol_name, **kwargs):
        path = tmp_path / "cache" / "abc.pt"
        zoo.save_segmenter(build_small_pspnet(16), path, "abc")
        path.with_suffix(".json").write_text(json.dumps({"config_hash": "abc", "val_base_miou": 0.61}))
        return path

    monkeypatch.setattr(zoo, "train_and_save", fake_train_and_save)
    info = zoo.train_and_cache("synthetic5i", 0, "practical", out=tmp_path / "out" / "model")
    assert info["base_miou"] == 0.61 and info["path"] == tmp_path / "out" / "model.pt"
    assert zoo.load_segmenter(info["path"])[1] == "abc"
    assert json.loads((tmp_path / "out" / "model.json").read_text())["config_hash"] == "abc"
