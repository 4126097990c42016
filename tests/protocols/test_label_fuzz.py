"""Hypothesis: label look-up tables of every protocol vs. a dict-based reference, on random benchmarks."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gfss_bench.protocols import PROTOCOLS
from gfss_bench.protocols.catalog import Benchmark


@st.composite
def benchmarks_and_folds(draw):
    num_classes = draw(st.integers(2, 80))
    num_folds = draw(st.integers(1, 4))
    folds = tuple(
        tuple(draw(st.lists(st.integers(1, num_classes), min_size=1, max_size=num_classes - 1, unique=True)))
        for _ in range(num_folds))
    bench = Benchmark("fuzz", "random", "synthetic", tuple(f"c{i}" for i in range(1, num_classes + 1)), folds)
    return bench, draw(st.integers(0, num_folds - 1))


def reference_maps(bench, fold):
    novel = sorted(set(bench.fold_novel_classes[fold]))
    base = [c for c in range(1, bench.num_classes + 1) if c not in novel]
    episode = {0: 0, 255: 255}
    episode.update({c: 1 + i for i, c in enumerate(base)})
    episode.update({c: 1 + len(base) + i for i, c in enumerate(novel)})
    training = {**episode, **{c: 0 for c in novel}}
    support_practical = {**episode, **{c: 0 for c in base}}
    return episode, training, {"standard": episode, "practical": support_practical}, base, novel


@settings(max_examples=150, deadline=None)
@given(benchmarks_and_folds())
def test_luts_match_dict_reference(case):
    bench, fold = case
    episode, training, support, base, novel = reference_maps(bench, fold)
    unknown = 255
    lut = bench.episode_label_lut(fold)
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    for value in range(256):
        assert lut[value] == episode.get(value, unknown), value
    assert list(bench.episode_classes(fold)) == [0] + base + novel
    for name, protocol in PROTOCOLS.items():
        train_lut, support_lut = protocol.training_label_lut(bench, fold), protocol.support_label_lut(bench, fold)
        for value in range(256):
            assert train_lut[value] == training.get(value, unknown), (name, value)
            assert support_lut[value] == support[name].get(value, unknown), (name, value)
        # image selection for base training: only `standard` drops images with a novel class
        assert protocol.keeps_training_image(base[:2], novel) is True
        assert protocol.keeps_training_image(base[:1] + novel[:1], novel) is (name == "practical")


@settings(max_examples=60, deadline=None)
@given(benchmarks_and_folds(), st.integers(0, 2**31 - 1))
def test_applying_luts_to_random_labels(case, seed):
    bench, fold = case
    episode, training, support, _, _ = reference_maps(bench, fold)
    labels = np.random.default_rng(seed).integers(0, 256, size=(5, 7)).astype(np.uint8)
    expected = np.vectorize(lambda v: episode.get(int(v), 255))(labels)
    assert np.array_equal(bench.episode_label_lut(fold)[labels], expected)
    protocol = PROTOCOLS.get("practical")
    expected = np.vectorize(lambda v: support["practical"].get(int(v), 255))(labels)
    assert np.array_equal(protocol.support_label_lut(bench, fold)[labels], expected)
