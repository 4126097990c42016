"""BCM against a scikit-learn pipeline written out by hand (GridSearchCV, brute-force mapping table),
its CV folds against StratifiedKFold(5) as the official code uses it (docs/protocol.md §8 item 8), the
ensemble weighting on a toy case, background down-sampling and reproducibility."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from gfss_bench.errors import GFSSError
from gfss_bench.methods import build_method
from gfss_bench.methods.bcm import BCMFitted, Entry, Head, downsample_background
from tests.methods.tasks import make_task


@pytest.fixture(autouse=True)
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def task_for(shots, seed, **kwargs):
    """A small task whose queries are the first support image of each novel class (features only)."""
    task = make_task(shots=shots, seed=seed, num_base=4, num_novel=3, channels=12, feat=8, label=32,
                     queries=3, **kwargs)
    return dataclasses.replace(task, query_features=task.support_features[:, 0].clone())


# ---------------------------------------------------------------- reference, written independently

def ref_small_labels(task):
    n, k, _, h, w = task.support_features.shape
    H, W = task.support_labels.shape[-2:]
    # nearest (F.interpolate's 'nearest'): source index floor(dst * in / out)
    rows = [int(np.floor(y * H / h)) for y in range(h)]
    cols = [int(np.floor(x * W / w)) for x in range(w)]
    return task.support_labels[:, :, rows][:, :, :, cols].numpy()


def ref_table(task):
    nb = task.num_base_and_bg
    small = ref_small_labels(task)
    feats = task.support_features.double().numpy()
    wb, bb = task.base_weight.double().numpy(), task.base_bias.double().numpy()
    table = {}
    for j in range(task.num_novel):
        counts = np.zeros(nb, dtype=int)
        for n, s, y, x in zip(*np.nonzero(small == nb + j)):
            counts[int(np.argmax(feats[n, s, :, y, x] @ wb + bb))] += 1
        if counts.sum():
            best = min(i for i in range(nb) if counts[i] == counts.max())
            table.setdefault(best, []).append(nb + j)
    return dict(sorted(table.items()))


def softmax_decision(d):
    d = np.stack([-d, d], 1) if d.ndim == 1 else d
    e = np.exp(d - d.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ap_scorer(estimator, x, y):
    """Mean one-vs-rest AP over the classes of the validation fold that the model knows."""
    probs = softmax_decision(estimator.decision_function(x))
    cls = list(estimator.classes_)
    return np.mean([average_precision_score(y == c, probs[:, cls.index(c)]) for c in np.unique(y) if c in cls])


def official_splits(y):
    """5, as the official code; where StratifiedKFold(5) raises (every class below 5), the largest count."""
    counts = np.bincount(y)[np.unique(y)]
    return 5 if (counts >= 5).any() else int(counts.max())


def ref_fit(x, y, grid):
    splits = official_splits(y)
    search = GridSearchCV(LogisticRegression(max_iter=100, tol=1e-4), {"C": list(grid)}, scoring=ap_scorer,
                          cv=StratifiedKFold(splits, shuffle=False), refit=True)
    search.fit(x, y)
    return search.best_params_["C"], search.best_estimator_, int(np.bincount(y)[np.unique(y)].min())


def ref_bcm(task, beta=0.5):
    """The whole method (bg_sampling off): table, heads (GridSearchCV), ensemble and label-res decision."""
    n, shots, c, h, w = task.support_features.shape
    table = ref_table(task)
    small = ref_small_labels(task)
    grid = np.logspace(-5, 5, 10)
    feats = task.support_features.double().numpy() ** beta
    heads = {}
    qf = task.query_features.double()
    size = task.query_valid.shape[-2:]
    base = torch.softmax(torch.einsum("qchw,cb->qbhw", qf, task.base_weight.double())
                         + task.base_bias.double().view(1, -1, 1, 1), 1)
    y0 = F.interpolate(base, size=size, mode="bilinear", align_corners=True).argmax(1)
    pred = y0.clone()
    xq = (qf ** beta).permute(0, 2, 3, 1).reshape(-1, c).numpy()
    for k, novel in table.items():
        models = []
        for shot in (list(range(shots)) + [None] if shots > 1 else [None]):  # official order: per-shot models first
            xs, ys = [], []
            for img in range(n):
                for s in (range(shots) if shot is None else [shot]):
                    for yy in range(h):
                        for xx in range(w):
                            lab = small[img, s, yy, xx]
                            if lab == 255:
                                continue
                            xs.append(feats[img, s, :, yy, xx])
                            ys.append(novel.index(lab) + 1 if lab in novel else 0)
            x, y = np.array(xs), np.array(ys)
            if len(np.unique(y)) < 2:
                continue
            C, model, smallest = ref_fit(x, y, grid)
            models.append((shot, C, model, smallest, float(shots) if shot is None and shots > 1 else 1.0))
        heads[k] = models
        acc = np.zeros((xq.shape[0], len(novel) + 1))
        tot = np.zeros(len(novel) + 1)
        for shot, C, model, smallest, weight in models:
            acc[:, model.classes_] += weight * softmax_decision(model.decision_function(xq))
            tot[model.classes_] += weight
        q = torch.from_numpy(acc / tot).view(qf.shape[0], h, w, -1).permute(0, 3, 1, 2)
        a = F.interpolate(q, size=size, mode="bilinear", align_corners=True).argmax(1)
        for pos, label in enumerate(novel, start=1):
            pred[(y0 == k) & (a == pos)] = label
    return table, heads, pred


@pytest.mark.filterwarnings("ignore:The least populated class")  # GridSearchCV's StratifiedKFold(5), as official
@pytest.mark.parametrize("shots,seed", [(1, 0), (2, 2)])
def test_matches_hand_written_sklearn_pipeline(shots, seed):
    task = task_for(shots, seed)
    fitted = build_method("bcm", bg_sampling=False).fit(task)
    table, heads, pred = ref_bcm(task)
    assert fitted.table == {k: tuple(v) for k, v in table.items()}
    assert sorted(len(v) for v in table.values()) == [1, 2]  # a binary and a multinomial head
    smallest_classes = []
    for entry in fitted.entries:
        ref = heads[entry.k]
        assert [h.shot for h in entry.heads] == [r[0] for r in ref]
        for head, (shot, C, model, smallest, weight) in zip(entry.heads, ref):
            assert head.C == pytest.approx(C) and head.weight == weight
            assert head.classes == tuple(model.classes_)
            coef = model.coef_ if len(model.classes_) > 2 else np.concatenate([-model.coef_, model.coef_])
            assert np.allclose(head.coef, coef, atol=1e-6)
            smallest_classes.append(smallest)
    assert max(smallest_classes) >= 5
    assert shots == 1 or min(smallest_classes) < 5  # 2 shots: a head CV'd with a class below 5 pixels
    probs = build_method("bcm", bg_sampling=False).predict(task)
    assert probs.shape == (3, task.num_classes, 32, 32)
    assert torch.equal(probs.argmax(1), pred)
    assert bool((pred >= task.num_base_and_bg).any())  # not vacuous: novel classes are predicted


def test_mapping_ties_go_to_the_smaller_index():
    task = task_for(1, 4)
    nb = task.num_base_and_bg
    c = task.base_weight.shape[0]
    # base classifier that predicts class 2 on the left half and class 1 on the right half of every support
    weight = torch.zeros(c, nb)
    weight[0, 1], weight[1, 2] = 1.0, 1.0
    feats = torch.zeros_like(task.support_features)
    feats[..., 0, :, 4:] = 1.0  # right half -> class 1
    feats[..., 1, :, :4] = 1.0  # left half -> class 2
    labels = torch.zeros_like(task.support_labels)
    for j in range(task.num_novel):
        labels[j, 0, 8:24, 8:24] = nb + j  # symmetric: as many pixels on each side
    tied = dataclasses.replace(task, base_weight=weight, base_bias=torch.zeros(nb), support_features=feats,
                               support_labels=labels)
    assert build_method("bcm").fit(tied).table == {1: tuple(range(nb, nb + task.num_novel))}


def test_ensemble_weighting_by_hand():
    # k = 0 with T[0] = (5, 6): the all-shot model (weight K = 2) saw {0, 1, 2}, shot 0 saw {0, 1},
    # shot 1 saw {0, 2}; features are one pixel with x = 1 so logits are coef + intercept
    def head(classes, logits, weight, shot):
        return Head(classes, np.array(logits, dtype=float).reshape(-1, 1), np.zeros(len(classes)), 1.0, weight, shot)

    full = head((0, 1, 2), [0.0, 1.0, 2.0], 2.0, None)
    shot0 = head((0, 1), [-0.5, 0.5], 1.0, 0)  # binary head stored as (-d, d)
    shot1 = head((0, 2), [0.3, -0.3], 1.0, 1)
    fitted = BCMFitted([Entry(0, (5, 6), [full, shot0, shot1])], 1.0, 5, 7)
    q = fitted.head_probabilities(fitted.entries[0], torch.ones(1, 1, 1, 1)).view(-1).double()
    pf = np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum()
    p0 = 1 / (1 + np.exp(1.0))  # shot 0: P(0) = sigmoid(-2 * 0.5)
    p1 = 1 / (1 + np.exp(-0.6))  # shot 1: P(0) = sigmoid(2 * 0.3)
    expected = [(2 * pf[0] + p0 + p1) / 4, (2 * pf[1] + (1 - p0)) / 3, (2 * pf[2] + (1 - p1)) / 3]
    assert np.allclose(q.numpy(), expected, atol=1e-6)


def test_prediction_only_changes_mapped_base_regions():
    task = task_for(2, 2)
    fitted = build_method("bcm").fit(task)
    probs = fitted.predict(task)
    nb = task.num_base_and_bg
    base = build_method("base").predict(task)
    y0 = F.interpolate(base[:, :nb], size=(32, 32), mode="bilinear", align_corners=True).argmax(1)
    pred = probs.argmax(1)
    changed = pred != y0
    assert bool(changed.any())
    for k, novel in fitted.table.items():
        assert set(pred[changed & (y0 == k)].unique().tolist()) <= set(novel)
    assert bool(torch.isin(y0[changed], torch.tensor(list(fitted.table))).all())
    # the decided class has more than half of the mass, so the runner's argmax is the decision
    assert bool((probs.max(1).values > 0.5).all())


def test_downsample_background():
    rng = np.random.default_rng(0)
    y = np.array([0] * 50 + [1] * 7 + [2] * 12 + [0] * 10)
    keep = downsample_background(y, rng)
    assert np.all(np.diff(keep) > 0)
    assert np.bincount(y[keep]).tolist() == [12, 7, 12]
    assert np.array_equal(downsample_background(y, np.random.default_rng(0)), keep)
    assert not np.array_equal(downsample_background(y, np.random.default_rng(1)), keep)
    few = np.array([0, 0, 1, 1, 1])
    assert np.array_equal(downsample_background(few, rng), np.arange(5))  # no-op when 0 does not outnumber


def test_reproducible_from_the_evaluation_seed():
    task = task_for(2, 2)
    fast = dict(c_grid_size=3)
    a = build_method("bcm", **fast).fit(task)
    b = build_method("bcm", **fast).fit(dataclasses.replace(task, support_features=task.support_features.clone(),
                                                            seed=task.seed + 1))  # the run's seed is not used
    for ea, eb in zip(a.entries, b.entries):
        for ha, hb in zip(ea.heads, eb.heads):
            assert np.array_equal(ha.coef, hb.coef) and ha.C == hb.C
    other = build_method("bcm", **fast).fit(dataclasses.replace(task, evaluation_seed=task.evaluation_seed + 1))
    assert any(not np.array_equal(ha.coef, hb.coef) for ea, eb in zip(a.entries, other.entries)
               for ha, hb in zip(ea.heads, eb.heads))  # the down-sampling depends on the seed
    unsampled = build_method("bcm", bg_sampling=False, **fast).fit(dataclasses.replace(task, evaluation_seed=123))
    again = build_method("bcm", bg_sampling=False, **fast).fit(task)
    assert all(np.array_equal(ha.coef, hb.coef) for ea, eb in zip(unsampled.entries, again.entries)
               for ha, hb in zip(ea.heads, eb.heads))  # without sampling the seed is irrelevant


# ------------------------------------------- the official numpy stream (docs/protocol.md §8 item 9), by hand

def official_draws(tasks, seed, grid_size):
    """§8 item 9 written out: RandomState(seed) once per evaluation; per run, per mapped base label k ascending,
    the per-shot models then the all-shot model; per model, each of the 5 StratifiedKFold training folds, then all
    pixels: np.random.choice(label-0 indices, size=second-largest count, replace=False) when label 0 outnumbers
    it. Returns the kept label-0 indices of every draw, in order."""
    stream, kept = np.random.RandomState(seed), []
    for task in tasks:
        small, nb = ref_small_labels(task), task.num_base_and_bg
        n, shots = small.shape[:2]
        for k, novel in ref_table(task).items():
            for shot in list(range(shots)) + [None]:
                part = small if shot is None else small[:, shot:shot + 1]
                labels = part.reshape(-1)[part.reshape(-1) != 255]
                y = np.array([novel.index(v) + 1 if v in novel else 0 for v in labels])
                if len(set(y.tolist())) < 2:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    trains = [train for train, _ in StratifiedKFold(5).split(y, y)]
                for labels_used in [y[t] for t in trains] + [y]:
                    counts = np.sort(np.bincount(labels_used))
                    zeros = np.where(labels_used == 0)[0]
                    if zeros.size > counts[-2]:
                        kept.append(np.sort(stream.choice(zeros, size=counts[-2], replace=False)).tolist())
    return kept


def recorded_draws(monkeypatch):
    """Every down-sampling bcm makes, as the kept label-0 indices (observed, not changed)."""
    import gfss_bench.methods.bcm as bcm

    seen, original = [], bcm.downsample_background

    def recording(y, rng):
        keep = original(y, rng)
        if keep.size < y.size:
            seen.append([int(i) for i in keep if y[i] == 0])
        return keep

    monkeypatch.setattr(bcm, "downsample_background", recording)
    return seen


def test_draws_replay_the_official_stream_across_runs_and_after_a_resume(monkeypatch):
    tasks = [dataclasses.replace(task_for(5, seed), evaluation_seed=2023) for seed in (3, 4, 5)]
    expected = official_draws(tasks, 2023, 2)
    seen = recorded_draws(monkeypatch)
    method = build_method("bcm", c_grid_size=2)
    states = []
    for task in tasks:
        method.fit(task)
        states.append(json.loads(json.dumps(method.stream_state())))  # what a run checkpoint stores
    assert seen == expected and len(expected) > 3 * 6  # every fit of three 5-shot runs, per-shot models included
    seen.clear()
    resumed = build_method("bcm", c_grid_size=2)  # interrupted after run 0: runs 1 and 2 from the checkpoint
    resumed.restore_stream_state(states[0])
    for task in tasks[1:]:
        resumed.fit(task)
    later = len(seen)  # the draws of runs 1 and 2
    assert seen == expected[-later:] and resumed.stream_state() == states[-1]
    fresh = build_method("bcm", c_grid_size=2)
    seen.clear()
    fresh.fit(tasks[1])
    run1 = expected[-later:][:len(seen)]
    assert seen != run1 and [len(d) for d in seen] == [len(d) for d in run1]  # a fresh stream draws other pixels
    with pytest.raises(ValueError, match="not a bcm stream state"):
        fresh.restore_stream_state({"keys": [1, 2]})


def brute_force_cv(x, y, grid, splits, logistic_regression=LogisticRegression):
    """docs/protocol.md §8 items 4 and 8 (no down-sampling): StratifiedKFold(splits), no shuffle; per C, the mean
    over folds of the mean AP over the validation classes the fold's model saw; folds whose training part
    holds one class cannot be fitted and are not counted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class ..." (official: warns, proceeds)
        folds = list(StratifiedKFold(n_splits=splits).split(x, y))
    scores = []
    for C in grid:
        per_fold = []
        for train, test in folds:
            if len(set(y[train].tolist())) < 2:
                continue
            model = logistic_regression(C=C, max_iter=100, tol=1e-4).fit(x[train], y[train])
            per_fold.append(ap_scorer(model, x[test], y[test]))
        scores.append(np.mean(per_fold))
    return np.array(scores)


def cv_problem(counts, seed=0):
    """Pixels of classes 0..len(counts)-1 with the given counts, in shuffled order, class c shifted by c."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    return rng.random((y.size, 4)) + 0.4 * y[:, None] * rng.random(4), y


@pytest.mark.parametrize("counts", [(60, 3, 20), (60, 1, 20), (40, 4), (40, 1)])
def test_cv_keeps_five_folds_when_a_class_has_fewer_pixels(counts):
    x, y = cv_problem(counts)
    method = build_method("bcm", bg_sampling=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing reaches the user
        C, scores = method.choose_c(x, y)
    grid = np.logspace(-5, 5, 10)
    expected = brute_force_cv(x, y, grid, 5)
    assert np.allclose(scores, expected, atol=1e-9)
    assert C == grid[int(np.argmax(expected))]
    # not vacuous: as many folds as the smallest class (the former rule) would score differently
    if min(counts) > 1:
        assert not np.allclose(scores, brute_force_cv(x, y, grid, min(counts)), atol=1e-6)


def test_cv_falls_back_only_where_stratified_kfold_raises():
    x, y = cv_problem((4, 3))
    with pytest.raises(ValueError):
        list(StratifiedKFold(n_splits=5).split(x, y))
    method = build_method("bcm", bg_sampling=False)
    C, scores = method.choose_c(x, y)
    grid = np.logspace(-5, 5, 10)
    assert np.allclose(scores, brute_force_cv(x, y, grid, 4), atol=1e-9)  # the largest class count
    C, scores = method.choose_c(x[:2], np.array([0, 1]))
    assert C == pytest.approx(grid[4]) and scores is None  # one pixel per class: no CV, the middle C


def test_sklearnex_solver_is_the_official_one():
    sklearnex = pytest.importorskip("sklearnex.linear_model",
                                    reason="scikit-learn-intelex is not installed (pip install 'gfss-bench[intel]')")
    x, y = cv_problem((60, 9, 20))
    method = build_method("bcm", bg_sampling=False, solver="sklearnex", c_grid_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        C, scores = method.choose_c(x, y)
        grid = np.logspace(-5, 5, 4)
        expected = brute_force_cv(x, y, grid, 5, sklearnex.LogisticRegression)
        assert np.allclose(scores, expected, atol=1e-9) and C == grid[int(np.argmax(expected))]
        mine = method._logreg(x, y, 1.0)
        theirs = LogisticRegression(C=1.0, max_iter=100, tol=1e-4).fit(x, y)
    assert isinstance(mine, sklearnex.LogisticRegression)
    assert not np.allclose(mine.coef_, theirs.coef_, atol=1e-6)  # not vacuous: another solver than scikit-learn's
    task = task_for(2, 2)
    fitted = build_method("bcm", solver="sklearnex", c_grid_size=2).fit(task)
    assert fitted.entries and all(e.heads for e in fitted.entries)


def test_sklearnex_solver_missing_or_on_another_machine(monkeypatch):
    import platform
    import sys

    task = task_for(1, 0)
    monkeypatch.setitem(sys.modules, "sklearnex.linear_model", None)  # as if not installed
    with pytest.raises(GFSSError, match=r"pip install 'gfss-bench\[intel\]'"):
        build_method("bcm", solver="sklearnex").fit(task)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(GFSSError, match="built for x86-64 only .this machine is aarch64"):
        build_method("bcm", solver="sklearnex").fit(task)


def test_version_is_bumped_for_the_official_stream():
    assert build_method("bcm").version == 3


def test_ensemble_off_and_one_shot_fit_a_single_model():
    task = task_for(2, 2)
    for fitted in (build_method("bcm", ensemble=False).fit(task), build_method("bcm").fit(task_for(1, 0))):
        assert all(len(e.heads) == 1 and e.heads[0].shot is None and e.heads[0].weight == 1.0
                   for e in fitted.entries)


@pytest.mark.parametrize("options", [dict(beta=0), dict(top_k=2), dict(solver="torch"), dict(cv_folds=1),
                                     dict(c_grid_size=0), dict(c_min_exp=3, c_max_exp=1), dict(tol=0),
                                     dict(ensemble="maybe")])
def test_bad_options_raise(options):
    with pytest.raises(GFSSError):
        build_method("bcm", **options)


def test_options_from_cli_strings():
    m = build_method("bcm", beta="1", ensemble="false", c_grid_size="3", c_min_exp="-1", c_max_exp="1")
    assert m.beta == 1.0 and m.ensemble is False and np.allclose(m.c_grid, [0.1, 1, 10])
