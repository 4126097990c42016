"""Feature sources (memory, float16 disk cache, streamed), DataLoader workers, and the evaluation settings."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gfss_bench.data.datasets import open_split
from gfss_bench.data.episodes import query_candidates
from gfss_bench.models.features import EXTRACTION_CHUNK, Extractor, FeatureConfig, StoredFeatures, StreamedFeatures
from gfss_bench.evaluation.runner import execute
from gfss_bench.evaluation.spec import RunSpec
from gfss_bench.cli import cli
from tests.evaluation.toy import toy_benchmark
from gfss_bench.errors import GFSSError
from gfss_bench.protocols import get_benchmark
from gfss_bench.results.store import ResultStore
from tests.evaluation.test_runner import CountingLoader, TinySegmenter

BENCH = get_benchmark("synthetic5i")


@pytest.fixture(scope="module")
def split():
    return open_split(BENCH, "val")


def _extractor(split, workers=0, seed=0):
    torch.manual_seed(seed)
    segmenter = TinySegmenter(16).eval()
    if seed:
        torch.nn.init.normal_(segmenter.features.weight)
    return Extractor(segmenter, split, BENCH.image_size, torch.device("cpu"), workers=workers)


def _all(source, batches):
    features, labels = zip(*source.batches(batches))
    return torch.cat(features), torch.cat(labels)


def test_memory_disk_and_streamed_sources_agree(split, tmp_path):
    indices = list(range(3 * EXTRACTION_CHUNK + 5))
    batches = [indices[7:30], indices[:7], indices[30:]]  # any grouping and order
    memory = StoredFeatures(_extractor(split), indices)
    memory.fill(range(len(memory.chunks)))
    disk = StoredFeatures(_extractor(split), indices, tmp_path, {"segmenter": "tiny"})
    disk.fill(range(len(disk.chunks)))
    from_memory, labels = _all(memory, batches)
    from_disk, disk_labels = _all(disk, batches)
    streamed, streamed_labels = _all(StreamedFeatures(_extractor(split)), batches)
    assert from_memory.shape == (len(indices), 8, 13, 13) and from_memory.dtype == torch.float32
    assert torch.equal(from_disk, from_memory.half().float())  # the cache holds float16 of the same values
    assert torch.allclose(streamed, from_memory, atol=1e-5)
    assert torch.equal(labels, disk_labels) and torch.equal(labels, streamed_labels)
    assert labels.dtype == torch.uint8 and labels.shape == (len(indices), 97, 97)  # at the evaluation size
    assert (labels == 255).any()  # padding


def test_disk_cache_resumes_and_is_keyed_by_segmenter(split, tmp_path, monkeypatch):
    indices = list(range(3 * EXTRACTION_CHUNK))
    first = StoredFeatures(_extractor(split), indices, tmp_path, {"segmenter": "a"})
    first.fill([0, 2])  # interrupted after two chunks
    again = StoredFeatures(_extractor(split), indices, tmp_path, {"segmenter": "a"})
    assert again.missing_chunks() == [1]
    seen = []
    real_run = again.extractor.run
    monkeypatch.setattr(again.extractor, "run", lambda batches: (seen.append(batches), real_run(batches))[1])
    again.fill(range(3))
    assert seen == [[again.chunks[1]]]  # only the missing chunk was extracted
    other = StoredFeatures(_extractor(split), indices, tmp_path, {"segmenter": "b"})
    assert other.missing_chunks() == [0, 1, 2] and other.arrays.folder != again.arrays.folder


def test_loader_workers_do_not_change_features(split):
    batches = [list(range(0, 10)), list(range(10, 21))]
    serial, _ = _all(StreamedFeatures(_extractor(split, workers=0)), batches)
    parallel, _ = _all(StreamedFeatures(_extractor(split, workers=2)), batches)
    assert torch.equal(serial, parallel)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_extraction_is_close_to_fp32_and_returns_fp32(split, precision):
    batches = [list(range(8))]
    exact, _ = _all(StreamedFeatures(_extractor(split)), batches)
    reduced_extractor = _extractor(split)
    reduced_extractor.precision = precision
    reduced, _ = _all(StreamedFeatures(reduced_extractor), batches)
    assert reduced.dtype == torch.float32
    assert not torch.equal(reduced, exact)  # autocast really ran the convolution in reduced precision
    assert torch.allclose(reduced, exact, rtol=0.05, atol=0.05 * float(exact.abs().max()))


def _confusions(results):
    return [[run["confusion"] for run in result["runs"]] for result in results]


def test_streamed_and_cached_runs_equal_the_in_memory_run(tmp_path):
    bench = toy_benchmark(tmp_path / "bench")  # 12 images: the three feature sources are what is compared
    specs = [RunSpec.create(m, bench, 0, "practical", 1, runs=2) for m in ("base", "imprint")]
    memory = execute(specs, ResultStore(tmp_path / "a"), segmenter_loader=CountingLoader())
    streamed = execute(specs, ResultStore(tmp_path / "b"), segmenter_loader=CountingLoader(),
                       features=FeatureConfig(memory_limit_gib=0))
    assert _confusions(streamed) == _confusions(memory)
    assert [r["provenance"]["feature_storage"] for r in memory + streamed] == ["memory"] * 2 + ["streamed"] * 2
    cached_specs = [RunSpec.create(m, bench, 0, "practical", 1, runs=2, feature_cache=True)
                    for m in ("base", "imprint")]
    assert {s.run_id for s in cached_specs}.isdisjoint(s.run_id for s in specs)  # fp16 features: other run ids
    with pytest.raises(GFSSError, match="--feature-cache"):
        execute(cached_specs, ResultStore(tmp_path / "c"), segmenter_loader=CountingLoader())
    config = FeatureConfig(cache_dir=tmp_path / "features")
    cached = execute(cached_specs, ResultStore(tmp_path / "c"), segmenter_loader=CountingLoader(), features=config)
    messages = []
    again = execute(cached_specs, ResultStore(tmp_path / "c"), segmenter_loader=CountingLoader(), features=config,
                    force=True, log=messages.append)
    assert _confusions(again) == _confusions(cached)
    assert any("chunks already stored" in m for m in messages)
    assert cached[0]["provenance"]["feature_storage"] == "disk"


def test_queries_per_run_support_source_and_filters(tmp_path):
    val_counts = open_split(BENCH, "val").class_pixel_counts()
    train_names = set(open_split(BENCH, "train").names)
    official, capped, from_train, any_novel = (
        RunSpec.create("base", "synthetic5i", 0, "practical", 1, evaluation=evaluation, runs=1)
        for evaluation in ({}, {"max_queries": 50}, {"support_source": "train"},
                           {"single_novel_supports": False}))
    results = execute([official, capped, from_train, any_novel], ResultStore(tmp_path),
                      segmenter_loader=CountingLoader())
    candidates = len(query_candidates(BENCH, val_counts))
    runs = [result["runs"][0] for result in results]
    assert runs[0]["num_queries"] == candidates - 5  # the 5 supports are removed from the queries
    assert runs[1]["num_queries"] == 50
    assert runs[2]["num_queries"] == candidates  # supports from train: every val candidate is a query
    assert all(name in train_names for group in runs[2]["support_images"] for name in group)
    assert results[2]["spec"]["evaluation"]["support_source"] == "train"
    assert results[0]["spec"]["evaluation"] == {"image_size": 97, "min_support_pixels": 887, "max_queries": None,
                                                "support_source": "val", "single_novel_supports": True}
    assert len({official.run_id, capped.run_id, from_train.run_id, any_novel.run_id}) == 4


@pytest.mark.parametrize("args, message", [
    (["--image-size", "100"], "takes sides with (S-1) % 8 == 0, not 100; choose an --image-size it takes"),
    (["--image-size", "5"], "--image-size must be between 9 and 4096"),
    (["--queries", "ten"], "--queries must be"),
    (["--min-support-pixels", "0"], "--min-support-pixels must be"),
    (["--feature-memory", "-1"], "--feature-memory must be"),
])
def test_bad_evaluation_options_are_clear_errors(args, message, tmp_path):
    result = CliRunner().invoke(cli, ["run", "-m", "base", "--results-dir", str(tmp_path)] + args)
    assert isinstance(result.exception, GFSSError) and message in str(result.exception)
    assert not list(tmp_path.glob("*.json"))


def test_cli_evaluation_options_reach_the_result(tmp_path):
    args = ["run", "-m", "base", "-f", "1", "--runs", "1", "--queries", "40", "--support-source", "train",
            "--image-size", "89", "--min-support-pixels", "500", "--results-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (stored,) = tmp_path.glob("*.json")
    record = json.loads(stored.read_text())
    assert record["spec"]["evaluation"] == {"image_size": 89, "min_support_pixels": 500, "max_queries": 40,
                                            "support_source": "train", "single_novel_supports": True}
    assert record["spec"]["feature_precision"] == "fp32" and record["runs"][0]["num_queries"] == 40
    assert np.array(record["runs"][0]["confusion"]).sum() > 0
