"""imprint, finetune and base: initialisation, class order, training and invariants."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from gfss_bench.errors import GFSSError
from gfss_bench.methods import build_method
from gfss_bench.methods.finetune import support_cross_entropy, train_classifier
from gfss_bench.methods.imprint import imprinted_classifier
from tests.methods.tasks import make_task


def brute_force_prototypes(task):
    """Per novel class, the mean feature over support pixels labelled B+1+j (nearest-downsampled)."""
    n, k, c, h, w = task.support_features.shape
    small = F.interpolate(task.support_labels.float().flatten(0, 1).unsqueeze(1), size=(h, w), mode="nearest")
    small = small.view(n, k, h, w).long()
    protos = []
    for j in range(n):
        picked = [task.support_features[a, b, :, y, x] for a in range(n) for b in range(k) for y in range(h)
                  for x in range(w) if small[a, b, y, x] == task.num_base_and_bg + j]
        protos.append(torch.stack(picked).mean(0))
    return torch.stack(protos, dim=1)  # [C, N]


@pytest.mark.parametrize("shots", [1, 3])
def test_imprint_prototypes_are_rescaled_support_means(shots):
    task = make_task(shots=shots, seed=20, label=40, feat=8)
    weight, bias = imprinted_classifier(task)
    nb = task.num_base_and_bg
    assert weight.shape == (task.base_weight.shape[0], task.num_classes)
    assert torch.equal(weight[:, :nb], task.base_weight) and torch.equal(bias[:nb], task.base_bias)
    assert torch.equal(bias[nb:], torch.zeros(task.num_novel))
    target_norm = task.base_weight.norm(dim=0).mean()
    assert torch.allclose(weight[:, nb:].norm(dim=0), target_norm.expand(task.num_novel), rtol=1e-5)
    expected = brute_force_prototypes(task)
    expected = expected / expected.norm(dim=0, keepdim=True) * target_norm
    assert torch.allclose(weight[:, nb:], expected, rtol=1e-4, atol=1e-6)
    unscaled, _ = imprinted_classifier(task, rescale=False)
    assert torch.allclose(unscaled[:, nb:].norm(dim=0), torch.ones(task.num_novel), rtol=1e-5)


def test_imprint_predicts_base_then_novel():
    task = make_task(shots=1, seed=21)
    probs = build_method("imprint").predict(task)
    weight, bias = imprinted_classifier(task)
    logits = torch.einsum("qchw,ck->qkhw", task.query_features, weight) + bias.view(1, -1, 1, 1)
    assert probs.shape == (3, task.num_classes, 7, 7)
    assert torch.allclose(probs, torch.softmax(logits, 1), atol=1e-6)
    # base/background columns first: with the novel classes removed, the base method's ranking remains
    base = build_method("base").predict(task)
    nb = task.num_base_and_bg
    assert torch.equal(probs[:, :nb].argmax(1), base[:, :nb].argmax(1))
    # a query pixel equal to a novel prototype direction is predicted as that novel class
    directions = (weight[:, nb:].t() * 10).view(task.num_novel, -1, 1, 1).expand(-1, -1, 7, 7)
    probe = dataclasses.replace(task, query_features=directions.contiguous(),
                                query_valid=task.query_valid[:1].expand(task.num_novel, -1, -1),
                                query_labels=None)
    assert build_method("imprint").predict(probe)[:, :, 0, 0].argmax(1).tolist() == \
        list(range(nb, task.num_classes))


@pytest.mark.parametrize("finetune_base", [False, True])
def test_finetune_decreases_support_loss(finetune_base):
    task = make_task(shots=2, seed=22, label=35, feat=7)
    history: list[float] = []
    weight, bias = train_classifier(task, iterations=40, lr=0.01, finetune_base=finetune_base, history=history)
    assert len(history) == 40
    assert history[-1] < 0.8 * history[0]
    nb = task.num_base_and_bg
    start_w, start_b = imprinted_classifier(task)
    if finetune_base:
        assert not torch.equal(weight[:, :nb], start_w[:, :nb])
    else:
        assert torch.equal(weight[:, :nb], start_w[:, :nb]) and torch.equal(bias[:nb], start_b[:nb])
    assert not torch.equal(weight[:, nb:], start_w[:, nb:])
    # the returned classifier is the one after the last step (its loss is at most the last recorded)
    n, k, c = task.support_features.shape[:3]
    targets = F.interpolate(task.support_labels.float().flatten(0, 1).unsqueeze(1), size=(7, 7),
                            mode="nearest").long().view(n * k, -1)
    final = support_cross_entropy(weight, bias, task.support_features.reshape(n * k, c, -1), targets)
    assert float(final) <= history[-1]


def test_finetune_predict_shape_determinism_and_cache():
    task = make_task(shots=1, seed=23)
    method = build_method("finetune", iterations=10, lr=0.01)
    a = method.predict(task)
    b = method.predict(task)  # cached classifier
    assert a.shape == (3, task.num_classes, 7, 7)
    assert torch.allclose(a.sum(1), torch.ones(3, 7, 7), atol=1e-5)
    assert torch.equal(a, b)
    fresh = build_method("finetune", iterations=10, lr=0.01).predict(dataclasses.replace(
        task, support_features=task.support_features.clone()))  # new tensors: recomputed, same result
    assert torch.equal(a, fresh)
    # different options are not served from the cache; 0 iterations is imprinting
    zero = build_method("finetune", iterations=0).predict(task)
    assert torch.allclose(zero, build_method("imprint").predict(task), atol=1e-6)
    # a changed support tensor (in place) is noticed
    task.support_features.mul_(2)
    assert not torch.allclose(build_method("finetune", iterations=10, lr=0.01).predict(task), a)


def test_finetune_trains_under_no_grad():
    task = make_task(shots=1, seed=26)
    with torch.no_grad():
        probs = build_method("finetune", iterations=5, lr=0.01).predict(task)
    assert not torch.allclose(probs, build_method("imprint").predict(task))


def test_finetune_queries_are_independent():
    task = make_task(shots=1, seed=24, queries=4)
    a = build_method("finetune", iterations=5).predict(task)
    single = dataclasses.replace(task, query_features=task.query_features[2:3], query_valid=task.query_valid[2:3])
    assert (build_method("finetune", iterations=5).predict(single)[0] - a[2]).abs().max() < 1e-5


@pytest.mark.parametrize("name,options", [("finetune", dict(iterations="abc")), ("finetune", dict(lr=-1)),
                                          ("imprint", dict(rescale="maybe")), ("finetune", dict(steps=3))])
def test_bad_options_raise(name, options):
    with pytest.raises(GFSSError):
        build_method(name, **options)


def test_base_method_never_predicts_novel():
    task = make_task(shots=1, seed=25)
    probs = build_method("base").predict(task)
    nb = task.num_base_and_bg
    assert probs.shape == (3, task.num_classes, 7, 7)
    assert torch.equal(probs[:, nb:], torch.zeros_like(probs[:, nb:]))
    assert int(probs.argmax(1).max()) < nb
    assert not build_method("base").is_oracle and not build_method("imprint").is_oracle
