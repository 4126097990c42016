import pytest

from gfss_bench.errors import GFSSError
from gfss_bench.protocols import BENCHMARKS, get_benchmark, get_protocol

# Facts §2, written out by hand.
PASCAL5I = {0: [1, 2, 3, 4, 5], 1: [6, 7, 8, 9, 10], 2: [11, 12, 13, 14, 15], 3: [16, 17, 18, 19, 20]}
PASCAL10I = {0: list(range(1, 11)), 1: list(range(11, 21))}


@pytest.mark.parametrize("fold,novel", PASCAL5I.items())
def test_pascal5i(fold, novel):
    bench = get_benchmark("pascal5i")
    assert list(bench.novel_classes(fold)) == novel
    assert list(bench.base_classes(fold)) == [c for c in range(1, 21) if c not in novel]


@pytest.mark.parametrize("fold,novel", PASCAL10I.items())
def test_pascal10i(fold, novel):
    assert list(get_benchmark("pascal10i").novel_classes(fold)) == novel
    assert len(get_benchmark("pascal10i").base_classes(fold)) == 10


def test_coco20i_interleaved_and_contiguous():
    bench = get_benchmark("coco20i")
    assert bench.novel_classes(0)[:4] == (1, 5, 9, 13) and bench.novel_classes(0)[-1] == 77
    assert bench.novel_classes(3)[:3] == (4, 8, 12) and bench.novel_classes(3)[-1] == 80
    all_novel = sorted(c for f in range(4) for c in bench.novel_classes(f))
    assert all_novel == list(range(1, 81))
    contiguous = get_benchmark("coco20i-contiguous")
    assert contiguous.novel_classes(2) == tuple(range(41, 61))
    assert bench.class_names[0] == "person" and bench.class_names[79] == "toothbrush"
    assert bench.class_names[9] == "traffic light"
    assert bench.max_queries == 10000


def test_official_eval_settings_and_scaled_synthetic():
    assert get_benchmark("pascal5i").image_size == 417
    assert get_benchmark("pascal5i").min_support_pixels == 16384
    synthetic = get_benchmark("synthetic5i")
    assert synthetic.num_folds == 4 and len(synthetic.novel_classes(0)) == 5
    assert get_benchmark("synthetic10i").num_folds == 2
    expected = 16384 * (synthetic.image_size / 417) ** 2
    assert synthetic.min_support_pixels == round(expected)


def test_episode_label_space():
    bench = get_benchmark("pascal5i")
    lut = bench.episode_label_lut(1)  # novel 6..10
    assert lut[0] == 0 and lut[255] == 255
    assert [lut[c] for c in (1, 2, 3, 4, 5, 11)] == [1, 2, 3, 4, 5, 6]
    assert [lut[c] for c in range(6, 11)] == [16, 17, 18, 19, 20]
    assert lut[21] == 255  # unknown ids are never scored as a class
    assert bench.episode_class_names(1)[16] == "bus"


def test_fold_out_of_range():
    with pytest.raises(GFSSError, match="--fold 4 .*choose from: 0, 1, 2, 3"):
        get_benchmark("pascal5i").novel_classes(4)


def test_protocols_shape_labels():
    bench = get_benchmark("pascal5i")
    practical, standard = get_protocol("practical"), get_protocol("standard")
    train = practical.training_label_lut(bench, 0)
    assert all(train[c] == 0 for c in range(1, 6))  # novel -> background in base training
    assert train[6] == 1 and train[20] == 15 and train[255] == 255
    assert practical.keeps_training_image({3, 7}, bench.novel_classes(0))
    assert not standard.keeps_training_image({3, 7}, bench.novel_classes(0))
    assert standard.keeps_training_image({7, 8}, bench.novel_classes(0))
    support_practical = practical.support_label_lut(bench, 0)
    support_standard = standard.support_label_lut(bench, 0)
    assert support_practical[7] == 0 and support_standard[7] == 2
    assert support_practical[3] == support_standard[3] == 18


def test_registry_is_complete():
    assert set(BENCHMARKS) >= {"pascal5i", "pascal10i", "coco20i", "coco20i-contiguous", "synthetic5i",
                               "synthetic10i"}
