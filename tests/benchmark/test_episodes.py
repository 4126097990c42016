import numpy as np
import pytest

from gfss_bench.benchmark.episodes import make_episode, support_candidates
from gfss_bench.errors import GFSSError
from gfss_bench.protocols import get_benchmark

BENCH = get_benchmark("pascal5i")
BIG = BENCH.min_support_pixels


def counts(*images):
    """Pixel-count rows from {class: pixels} dicts."""
    table = np.zeros((len(images), 256), dtype=np.int64)
    for row, image in enumerate(images):
        for cls, pixels in image.items():
            table[row, cls] = pixels
    return table


def test_support_filter_follows_facts():
    table = counts({1: BIG}, {1: BIG - 1}, {1: BIG, 2: 10}, {1: BIG, 7: 500}, {2: BIG}, {0: 99})
    candidates = support_candidates(BENCH, 0, table)
    assert list(candidates[0]) == [0, 3]  # too small, and with another novel class, are excluded
    assert list(candidates[1]) == [4]


def table_with_enough_supports():
    images = [{c: BIG, 8: 100} for c in range(1, 6) for _ in range(6)] + [{9: 50}] * 20 + [{0: 10}] * 3
    return counts(*images)


def test_episode_is_a_pure_function_of_its_coordinates():
    table = table_with_enough_supports()
    first = make_episode(BENCH, 0, 5, run=2, seed=2023, pixel_counts=table)
    again = make_episode(BENCH, 0, 5, run=2, seed=2023, pixel_counts=table)
    assert first == again
    other_run = make_episode(BENCH, 0, 5, run=3, seed=2023, pixel_counts=table)
    other_seed = make_episode(BENCH, 0, 5, run=2, seed=7, pixel_counts=table)
    assert first.supports != other_run.supports or first.supports != other_seed.supports


def test_supports_are_removed_from_queries_and_background_only_images_excluded():
    table = table_with_enough_supports()
    episode = make_episode(BENCH, 0, 1, run=0, seed=2023, pixel_counts=table)
    assert len(episode.supports) == 5 and all(len(s) == 1 for s in episode.supports)
    used = {i for s in episode.supports for i in s}
    assert not used & set(episode.queries)
    background_only = set(range(len(table) - 3, len(table)))
    assert not background_only & set(episode.queries)
    assert len(episode.queries) == len(table) - 3 - 5
    for j, group in enumerate(episode.supports):
        assert all(table[i, j + 1] >= BIG for i in group)


def test_too_few_candidates_are_repeated_and_none_is_an_error():
    table = counts({1: BIG}, {1: BIG}, {2: BIG}, {3: BIG}, {4: BIG}, {5: BIG}, {9: 1})
    episode = make_episode(BENCH, 0, 5, run=0, seed=1, pixel_counts=table)
    assert sorted(episode.supports[0]) in ([0, 0, 0, 1, 1], [0, 0, 1, 1, 1])
    assert episode.supports[1] == (2,) * 5
    with pytest.raises(GFSSError, match="novel class 5 .*no support candidate"):
        make_episode(BENCH, 0, 1, run=0, seed=1, pixel_counts=table[[0, 2, 3, 4, 6]])


def test_coco_queries_are_shuffled_and_capped():
    coco = get_benchmark("coco20i")
    images = [{c: 20000} for c in coco.novel_classes(0)] + [{2: 5}] * 30
    table = counts(*images)
    episode = make_episode(coco, 0, 1, run=0, seed=2023, pixel_counts=table)
    assert sorted(episode.queries) == list(range(20, 50))
    assert list(episode.queries) != sorted(episode.queries)
