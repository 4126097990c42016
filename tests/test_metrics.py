import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gfss_bench.metrics import harmonic_mean, per_class_iou, scores
from gfss_bench.scoring import confusion_matrix


def numpy_confusion(prediction, target, num_classes):
    """Independent reference: a plain loop over pixels."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(prediction.ravel(), target.ravel()):
        if t != 255:
            matrix[t, p] += 1
    return matrix


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 7), st.integers(1, 40), st.integers(0, 2**31 - 1), st.floats(0, 0.5))
def test_confusion_matches_numpy_reference(num_classes, size, seed, ignore_fraction):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, size=(size, 3))
    target[rng.random(target.shape) < ignore_fraction] = 255
    prediction = rng.integers(0, num_classes, size=(size, 3))
    ours = confusion_matrix(torch.from_numpy(prediction), torch.from_numpy(target), num_classes).numpy()
    np.testing.assert_array_equal(ours, numpy_confusion(prediction, target, num_classes))
    assert ours.dtype == np.int64
    assert ours.sum() == (target != 255).sum()


def test_confusion_is_summable_over_batches():
    rng = np.random.default_rng(0)
    target, prediction = rng.integers(0, 4, (2, 10, 10)), rng.integers(0, 4, (2, 10, 10))
    whole = confusion_matrix(torch.from_numpy(prediction), torch.from_numpy(target), 4)
    parts = sum(confusion_matrix(torch.from_numpy(prediction[i]), torch.from_numpy(target[i]), 4) for i in range(2))
    assert torch.equal(whole, parts)


def test_out_of_range_label_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 5]), 3)


def test_iou_hand_computed_and_absent_class_skipped():
    # classes: 0 bg, 1 base, 2 novel, 3 novel absent from labels and predictions
    confusion = np.array([[5, 1, 0, 0],
                          [2, 3, 0, 0],
                          [0, 1, 4, 0],
                          [0, 0, 0, 0]])
    iou = per_class_iou(confusion)
    assert iou[0] == pytest.approx(5 / 8)
    assert iou[1] == pytest.approx(3 / 7)
    assert iou[2] == pytest.approx(4 / 5)
    assert math.isnan(iou[3])
    diam = scores(confusion, num_base=1, convention="diam")
    assert diam.base == pytest.approx(3 / 7)
    assert diam.novel == pytest.approx(4 / 5)  # the absent class is skipped, not counted as 0
    assert diam.mean == pytest.approx((3 / 7 + 4 / 5) / 2)
    assert diam.hm == pytest.approx(2 * (3 / 7) * (4 / 5) / (3 / 7 + 4 / 5))
    pop = scores(confusion, num_base=1, convention="pop")
    assert pop.base == pytest.approx((5 / 8 + 3 / 7) / 2)
    assert pop.total == pytest.approx((5 / 8 + 3 / 7 + 4 / 5) / 3)


def test_predicted_but_absent_class_counts_as_zero_iou():
    confusion = np.array([[4, 0, 1], [0, 3, 0], [0, 0, 0]])
    assert per_class_iou(confusion)[2] == 0.0
    assert scores(confusion, num_base=1).novel == 0.0


def test_harmonic_mean_edge_cases():
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    assert math.isnan(harmonic_mean(float("nan"), 0.3))


def test_unknown_convention():
    with pytest.raises(ValueError, match="convention"):
        scores(np.eye(3, dtype=np.int64), 1, "nope")


def numpy_scores(confusion, num_base, convention):
    """Reference: per-class IoU with plain loops; classes with an empty union are skipped."""
    k = confusion.shape[0]
    iou = []
    for c in range(k):
        inter = confusion[c, c]
        union = confusion[c, :].sum() + confusion[:, c].sum() - inter
        iou.append(inter / union if union > 0 else None)

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else float("nan")

    first = 1 if convention == "diam" else 0
    base, novel = mean(iou[first:num_base + 1]), mean(iou[num_base + 1:])
    total = mean(iou) if convention == "pop" else float("nan")
    return iou, base, novel, total


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 30), st.integers(0, 2**31 - 1), st.floats(0, 0.9),
       st.lists(st.integers(0, 8), max_size=4), st.sampled_from(["diam", "pop"]))
def test_scores_match_numpy_reference(num_base, num_novel, size, seed, ignore_fraction, absent, convention):
    """Random predictions/labels with ignored pixels and classes absent from labels and/or predictions."""
    import math

    from gfss_bench.metrics import per_class_iou, scores

    k = 1 + num_base + num_novel
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, size=(2, size, size))
    prediction = rng.integers(0, k, size=(2, size, size))
    for c in absent:  # empty classes: gone from the labels, and from predictions too for even ids
        if c < k:
            target[target == c] = (c + 1) % k
            if c % 2 == 0:
                prediction[prediction == c] = (c + 1) % k
    target[rng.random(target.shape) < ignore_fraction] = 255
    confusion = confusion_matrix(torch.from_numpy(prediction), torch.from_numpy(target), k).numpy()
    assert np.array_equal(confusion, numpy_confusion(prediction, target, k))
    iou, base, novel, total = numpy_scores(confusion, num_base, convention)
    ours = per_class_iou(confusion)
    for a, b in zip(ours, iou):
        assert (b is None and math.isnan(a)) or (b is not None and math.isclose(a, b, rel_tol=1e-12))
    s = scores(confusion, num_base, convention)
    for a, b in ((s.base, base), (s.novel, novel), (s.total, total)):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    if not (math.isnan(base) or math.isnan(novel)):
        assert math.isclose(s.mean, (base + novel) / 2, rel_tol=1e-12)
        expected_hm = 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)
        assert math.isclose(s.hm, expected_hm, rel_tol=1e-12, abs_tol=1e-15)
