"""End-to-end runner on the real synthetic data with a tiny fixed random segmenter (no training)."""

import numpy as np
import pytest
import torch
from torch import nn

from gfss_bench.scoring import score_probabilities
from gfss_bench.evaluation.runner import execute
from gfss_bench.evaluation.spec import RunSpec
from gfss_bench.errors import GFSSError
from gfss_bench.protocols import get_benchmark
from gfss_bench.results.store import ResultStore


class TinySegmenter(nn.Module):
    def __init__(self, num_outputs: int, channels: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Conv2d(3, channels, kernel_size=9, stride=8, padding=4)
        self.classifier = nn.Conv2d(channels, num_outputs, kernel_size=1)

    def extract_features(self, images):
        return torch.relu(self.features(images))

    def classifier_weight_and_bias(self):
        return self.classifier.weight[:, :, 0, 0].t(), self.classifier.bias


class CountingLoader:
    def __init__(self):
        self.calls = 0

    def __call__(self, spec, device):
        self.calls += 1
        return TinySegmenter(len(get_benchmark(spec.benchmark).base_classes(spec.fold)) + 1).eval()


def test_run_store_cache_hit_and_force(tmp_path):
    store = ResultStore(tmp_path)
    loader = CountingLoader()
    spec = RunSpec.create("base", "synthetic5i", 1, "practical", 1, runs=2)
    [first] = execute([spec], store, batch_size=16, segmenter_loader=loader)
    assert loader.calls == 1 and store.contains(spec.run_id)
    assert len(first["runs"]) == 2
    confusion = np.array(first["runs"][0]["confusion"])
    num_base = len(get_benchmark("synthetic5i").base_classes(1))
    assert confusion.shape == (21, 21)
    assert confusion[:, num_base + 1:].sum() == 0  # `base` never predicts a novel class
    assert first["runs"][0]["scores"]["novel"] == 0.0
    assert first["runs"][0]["num_queries"] == first["runs"][1]["num_queries"]
    assert first["runs"][0]["support_images"] != first["runs"][1]["support_images"]
    assert first["provenance"]["versions"]["torch"] == torch.__version__.split("+")[0] or \
        first["provenance"]["versions"]["torch"] == torch.__version__

    def confusions(result):
        return [r["confusion"] for r in result["runs"]]

    [again] = execute([spec], store, segmenter_loader=loader)
    assert loader.calls == 1 and confusions(again) == confusions(first)  # cache hit: nothing recomputed
    [forced] = execute([spec], store, batch_size=5, force=True, segmenter_loader=loader)
    assert loader.calls == 2 and confusions(forced) == confusions(first)  # batching does not change `base`


def test_methods_share_one_feature_extraction(tmp_path):
    loader = CountingLoader()
    specs = [RunSpec.create(m, "synthetic5i", 0, "practical", 1, runs=1) for m in ("base", "imprint")]
    results = execute(specs, ResultStore(tmp_path), segmenter_loader=loader)
    assert loader.calls == 1
    assert results[0]["runs"][0]["support_images"] == results[1]["runs"][0]["support_images"]


def test_spec_id_is_stable_and_sensitive():
    a = RunSpec.create("diam", "synthetic5i", 0, "practical", 1)
    assert a.run_id == RunSpec.create("diam", "synthetic5i", 0, "practical", 1, options={"iterations": "100"}).run_id
    assert a.run_id != RunSpec.create("diam", "synthetic5i", 0, "practical", 1, options={"iterations": 50}).run_id
    assert a.run_id != RunSpec.create("diam", "synthetic5i", 0, "practical", 5).run_id
    with pytest.raises(GFSSError):
        RunSpec.create("diam", "synthetic5i", 0, "practical", 1, runs=0)


def test_scoring_upsamples_and_ignores():
    probs = torch.zeros(1, 3, 2, 2)
    probs[0, 1, 0, :] = 1  # top row class 1
    probs[0, 2, 1, :] = 1  # bottom row class 2
    labels = torch.tensor([[[1, 1, 1], [1, 2, 255], [2, 2, 2]]])
    confusion = score_probabilities(probs, labels, 3)
    # align_corners=True: the middle row is a tie between rows -> argmax picks the first (class 1)
    assert confusion[1, 1] == 4 and confusion[2, 1] == 1 and confusion[2, 2] == 3
    assert confusion.sum() == 8


def test_scoring_takes_label_size_probabilities_as_they_are(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 4, 5, 6, generator=gen), 1)
    labels = torch.randint(0, 4, (2, 5, 6), generator=gen)
    labels[0, 0, :] = 255

    def no_resampling(*args, **kwargs):
        raise AssertionError("label-size probabilities must not be resampled")

    monkeypatch.setattr("gfss_bench.scoring.F.interpolate", no_resampling)
    confusion = score_probabilities(probs, labels, 4)
    pred, valid = probs.argmax(1), labels != 255
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for t, p in zip(labels[valid].tolist(), pred[valid].tolist()):
        expected[t, p] += 1
    assert torch.equal(confusion, expected)


def test_runner_fits_once_per_episode_and_predicts_every_batch(tmp_path, monkeypatch):
    from gfss_bench.methods import Method, build_method

    class Counting(Method):
        """Wraps `base`: counts fit calls and the batches each fitted object predicts."""

        is_oracle = False

        def __init__(self):
            self.inner = build_method("base")
            self.fits, self.batches = [], []

        def fit(self, task):
            assert task.query_features.shape[0] == 0 and task.query_labels is None  # support only
            self.fits.append(task.support_features.shape)
            fitted = self.inner.fit(task)
            outer = self

            class Fitted:
                def predict(self, batch):
                    outer.batches.append(batch.query_features.shape[0])
                    return fitted.predict(batch)

            return Fitted()

    counting = Counting()
    monkeypatch.setattr(RunSpec, "build", lambda self: counting)
    spec = RunSpec.create("base", "synthetic5i", 2, "practical", 1, runs=2)
    [result] = execute([spec], ResultStore(tmp_path), batch_size=40, segmenter_loader=CountingLoader())
    assert len(counting.fits) == 2  # one fit per run (episode)
    queries = sum(r["num_queries"] for r in result["runs"])
    assert sum(counting.batches) == queries and max(counting.batches) == 40
    assert len(counting.batches) == sum(-(-r["num_queries"] // 40) for r in result["runs"])
