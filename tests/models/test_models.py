"""SmallPSPNet shapes, base training, config hashes and the shipped weights."""

import json

import numpy as np
import pytest
import torch

from gfss_bench.data import synthetic
from gfss_bench.models import zoo
from gfss_bench.models.segmenter import Segmenter
from gfss_bench.models.small_pspnet import build_small_pspnet
from gfss_bench.data.transforms import preprocess
from gfss_bench.models.training import TrainConfig, plateau_reached, train_on_arrays
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
    lut = torch.from_numpy(protocol.training_label_lut(benchmark, 0))
    images, labels = [], []
    for index in range(count):
        image, label = preprocess(*synthetic.generate_sample("train", index), size)
        images.append(image)
        labels.append(lut[label])
    return torch.stack(images), torch.stack(labels)


def _train(config, evaluate=None, state_file=None):
    torch.set_num_threads(1)
    images, labels = _tiny_training_set()
    torch.manual_seed(0)
    return train_on_arrays(build_small_pspnet(16), images, labels, config, evaluate=evaluate, state_file=state_file)


def _same_weights(a, b):
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_a_few_training_steps_reduce_the_loss_and_are_deterministic():
    config = TrainConfig(steps=40, batch_size=4, warmup_steps=5, lr=3e-3, seed=3)
    first, second = _train(config), _train(config)
    assert np.mean(first.losses[-5:]) < 0.7 * np.mean(first.losses[:5])
    assert first.losses == second.losses, "same seed, same losses"
    assert _same_weights(first.ema, second.ema) and _same_weights(first.model, second.model)
    assert not _same_weights(first.ema, first.model), "the EMA weights are an average, not the last weights"


def test_training_inputs_are_exactly_the_evaluation_preprocessing():
    """The small recipe trains on what evaluation scores: `transforms.preprocess` (OpenCV), item for item."""
    from gfss_bench.data.datasets import open_split
    from gfss_bench.models.training import load_preprocessed

    split = open_split(get_benchmark("synthetic5i"), "train")
    images, labels = load_preprocessed(split, 97, [3, 0])
    for row, index in enumerate([3, 0]):
        image, label = preprocess(*split.load(index), 97)
        assert torch.equal(images[row], image) and torch.equal(labels[row].long(), label)


def test_plateau_rule_compares_each_point_with_the_one_at_half_the_steps():
    config = TrainConfig(eval_every=250, min_steps=1000, plateau_gain=0.005)
    curve = [[250, 0.5], [500, 0.80], [750, 0.84], [1000, 0.804]]
    assert plateau_reached(curve, config)  # 1000 vs 500: +0.4 points
    assert not plateau_reached(curve[:3], config)  # 750 has no point at 375, and is below min_steps
    assert not plateau_reached(curve[:-1] + [[1000, 0.806]], config)  # +0.6 points
    assert not plateau_reached([[250, 0.5], [500, 0.5]], config)  # below min_steps
    assert not plateau_reached([], config)


def test_training_stops_at_the_plateau():
    points = iter([0.2, 0.6, 0.70, 0.71, 0.71, 0.703])  # at 2, 4, ..., 12: 8 vs 4 gains 11 points, 12 vs 6 0.3
    state = _train(TrainConfig(steps=40, batch_size=4, warmup_steps=2, eval_every=2, min_steps=8, seed=1),
                   evaluate=lambda model: next(points))
    assert state.step == 12 and [s for s, _ in state.curve] == [2, 4, 6, 8, 10, 12]


def test_an_interrupted_training_resumes_bit_for_bit(tmp_path):
    config = TrainConfig(steps=12, batch_size=4, warmup_steps=2, eval_every=4, min_steps=100, seed=2)
    uninterrupted = _train(config, evaluate=lambda model: 0.5)
    state_file = tmp_path / "state.pt"
    calls = []

    def interrupted(model):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 0.5

    with pytest.raises(KeyboardInterrupt):
        _train(config, evaluate=interrupted, state_file=state_file)
    assert state_file.exists()  # saved at step 4
    resumed = _train(config, evaluate=lambda model: 0.5, state_file=state_file)
    assert resumed.losses == uninterrupted.losses and resumed.curve == uninterrupted.curve
    assert _same_weights(resumed.ema, uninterrupted.ema) and _same_weights(resumed.model, uninterrupted.model)
    # The finished state stays until the caller has written its result; a restart from it trains no more.
    assert state_file.exists()
    again = _train(config, evaluate=lambda model: pytest.fail("a finished training must not evaluate again"),
                   state_file=state_file)
    assert again.step == uninterrupted.step and again.losses == uninterrupted.losses
    assert _same_weights(again.ema, uninterrupted.ema)


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
    zoo.save_weights_file(model, tmp_path / "m.pt", "abc", fp16=True)
    loaded, digest = zoo.load_weights_file(tmp_path / "m.pt")
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
    model, stored = zoo.load_weights_file(path)
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
        zoo.save_weights_file(build_small_pspnet(11), path, zoo.config_hash(benchmark_name, fold, protocol_name))
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
        zoo.save_weights_file(build_small_pspnet(16), path, "abc")
        path.with_suffix(".json").write_text(json.dumps({"config_hash": "abc", "val_base_miou": 0.61}))
        return path

    monkeypatch.setattr(zoo, "train_and_save", fake_train_and_save)
    info = zoo.train_and_cache("synthetic5i", 0, "practical", out=tmp_path / "out" / "model")
    assert info["base_miou"] == 0.61 and info["path"] == tmp_path / "out" / "model.pt"
    assert zoo.load_weights_file(info["path"])[1] == "abc"
    assert json.loads((tmp_path / "out" / "model.json").read_text())["config_hash"] == "abc"


def test_train_and_save_keeps_the_resume_state_until_the_manifest_is_written(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "cache_dir", lambda: tmp_path / "cache")
    state_file = zoo.training_state_file(zoo.config_hash("synthetic5i", 0, "practical", TrainConfig(steps=4)))
    trainings = []

    def fake_training(benchmark_name, fold, protocol_name, *, state_file, **kwargs):
        trainings.append(state_file)
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_bytes(b"finished state")
        return build_small_pspnet(16).eval(), {"steps": 4, "curve": [], "plateau": False, "train_seconds": 1.0,
                                                "device": "cpu", "torch_threads": 1, "training_images": 8,
                                                "final_loss": 0.5}

    def killed_while_scoring(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "train_base_segmenter", fake_training)
    monkeypatch.setattr(zoo, "evaluate_base_miou", killed_while_scoring)
    with pytest.raises(KeyboardInterrupt):
        zoo.train_and_save("synthetic5i", 0, "practical", steps=4, progress=False)
    assert trainings == [state_file] and state_file.exists(), "a kill before the manifest keeps the training"
    monkeypatch.setattr(zoo, "evaluate_base_miou", lambda *args, **kwargs: 0.5)
    path = zoo.train_and_save("synthetic5i", 0, "practical", steps=4, progress=False)
    assert json.loads(path.with_suffix(".json").read_text())["val_base_miou"] == 0.5
    assert not state_file.exists(), "the state goes once the weights and manifest are written"
