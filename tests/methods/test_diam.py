"""DIaM: parity with the official-style autograd reference, the closed-form CE gradient, invariants."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gfss_bench.errors import GFSSError
from gfss_bench.methods import build_method
from gfss_bench.methods.common import downsample_nearest
from gfss_bench.methods.diam import _query_grad, _query_probs, _Support
from tests.methods.diam_reference import ReferenceDIaM, reference_diam
from tests.methods.tasks import make_task

TOL = 1e-4


def run_both(task, **options):
    ours = build_method("diam", **options).predict(task)
    ref = reference_diam(task, **options)
    return ours, ref


@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("pi_strategy", ["self", "uniform", "upperbound", "imglvl"])
@pytest.mark.parametrize("finetune_base", [True, False])
def test_parity_with_reference(shots, pi_strategy, finetune_base):
    # H=W=49 labels on 7x7 features; 255 in supports (scattered + border) and in queries
    task = make_task(shots=shots, seed=10 * shots + len(pi_strategy), label=49, feat=7)
    ours, ref = run_both(task, iterations=15, lr=0.005, pi_strategy=pi_strategy, pi_update_at=(4, 9),
                         finetune_base=finetune_base)
    assert ours.shape == ref.shape == (3, 8, 7, 7)
    assert (ours - ref).abs().max().item() < TOL
    # the comparison is not vacuous: the optimisation moved the probabilities
    start = build_method("diam", iterations=0, pi_strategy=pi_strategy).predict(task)
    assert (ours - start).abs().max().item() > 1e-2


@pytest.mark.parametrize("shots,label,feat", [(1, 50, 9), (5, 37, 6)])
def test_parity_full_run_official_defaults(shots, label, feat):
    """100 iterations with the published defaults, label sizes that are not multiples of the features."""
    task = make_task(shots=shots, seed=3, label=label, feat=feat, num_base=5, num_novel=2, queries=2)
    ours, ref = run_both(task)  # defaults: 100 its, lr 0.00125, (100, 1, 1, 100), self, (10,), base on
    assert (ours - ref).abs().max().item() < TOL


def test_parity_other_loss_weights():
    task = make_task(shots=5, seed=4)
    ours, ref = run_both(task, iterations=12, loss_weights=(10.0, 0.0, 2.0, 5.0), lr=0.01, pi_update_at=(2,))
    assert (ours - ref).abs().max().item() < TOL


def test_standard_supports_map_base_labels_to_background():
    task = make_task(shots=5, seed=5, standard=True)
    nb = task.num_base_and_bg
    assert bool(((task.support_labels >= 1) & (task.support_labels < nb)).any())
    mapped = task.support_labels.clone()
    mapped[(mapped >= 1) & (mapped < nb)] = 0
    ours = build_method("diam", iterations=15).predict(task)
    ref = reference_diam(dataclasses.replace(task, support_labels=mapped), iterations=15)
    assert (ours - ref).abs().max().item() < TOL
    # and the mapping matters: the official CE on unmapped labels differs
    unmapped = reference_diam(task, iterations=15)
    assert (unmapped - ref).abs().max().item() > 1e-3


def _per_task_classifier(task, tasks, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    c, nb = task.base_weight.shape
    kc = task.num_classes
    weight = (torch.randn(c, tasks, kc, generator=gen) * 0.4).to(dtype)
    bias = (torch.randn(tasks, kc, generator=gen) * 0.5).to(dtype)
    return weight, bias


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
@pytest.mark.parametrize("train_base", [True, False])
@pytest.mark.parametrize("standard", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
def test_closed_form_support_gradient_matches_autograd(dtype, rtol, train_base, standard, chunked, monkeypatch):
    if chunked:  # 256-pixel chunks: the 3 x 2 x 64 support pixels span two chunks
        monkeypatch.setattr(_Support, "CHUNK_ELEMENTS", 1)
    task = make_task(shots=2, seed=7, standard=standard, num_base=4, num_novel=3, channels=12, label=30, feat=8)
    task = dataclasses.replace(task, support_features=task.support_features.to(dtype))
    tasks, ce_weight = 3, 100.0
    weight, bias = _per_task_classifier(task, tasks, 1, dtype)
    nb = task.num_base_and_bg
    small = downsample_nearest(task.support_labels, (8, 8))
    support = _Support(task, small, ce_weight)
    fixed = None if train_base else support.base_logits(weight[:, 0, :nb].contiguous(), bias[0, :nb].contiguous())
    if not train_base:  # frozen base columns are shared by all tasks
        weight[:, :, :nb] = weight[:, :1, :nb]
        bias[:, :nb] = bias[:1, :nb]
    gw, gb = support.grad(weight, bias, train_base, fixed)
    assert support.features.shape[1] > 256  # more than one chunk when chunked

    # autograd of the reference CE (labels mapped as diam documents), summed over tasks
    labels = task.support_labels.clone()
    labels[(labels >= 1) & (labels < nb)] = 0
    ref = ReferenceDIaM(task.base_weight.to(dtype), task.base_bias.to(dtype), task.num_novel, tasks)
    ref.w_base = weight[:, :, :nb].permute(1, 0, 2).clone().requires_grad_(True)
    ref.w_novel = weight[:, :, nb:].permute(1, 0, 2).clone().requires_grad_(True)
    ref.b_base = bias[:, :nb].clone().requires_grad_(True)
    ref.b_novel = bias[:, nb:].clone().requires_grad_(True)
    fs = task.support_features.flatten(0, 1).unsqueeze(0)
    ls = downsample_nearest(labels.flatten(0, 1).unsqueeze(0), (8, 8))
    onehot = torch.zeros(1, ls.shape[1], task.num_classes, 8, 8, dtype=dtype)
    onehot.scatter_(2, torch.where(ls == 255, 0, ls).unsqueeze(2), 1.0)
    p_s = torch.softmax(ref.logits(fs), dim=2)
    loss = ce_weight * ref.support_ce(p_s, (ls != 255).to(dtype), onehot, shots=2).sum()
    loss.backward()
    exp_w = torch.cat([ref.w_base.grad, ref.w_novel.grad], dim=2).permute(1, 0, 2)
    exp_b = torch.cat([ref.b_base.grad, ref.b_novel.grad], dim=1)
    if not train_base:
        exp_w[:, :, :nb] = 0
        exp_b[:, :nb] = 0
    scale_w, scale_b = exp_w.abs().max(), exp_b.abs().max()
    assert scale_w > 0 and scale_b > 0
    assert (gw - exp_w).abs().max() <= rtol * scale_w
    assert (gb - exp_b).abs().max() <= rtol * scale_b


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
@pytest.mark.parametrize("loss_weights", [(1.0, 1.0, 1.0), (0.0, 2.0, 0.0), (0.5, 0.0, 3.0)])
def test_closed_form_query_gradient_matches_autograd(dtype, rtol, loss_weights):
    w_kl, w_h, w_kd = loss_weights
    task = make_task(shots=1, seed=12, queries=3, channels=12, label=30, feat=8)
    tasks, nb = 3, task.num_base_and_bg
    weight, bias = _per_task_classifier(task, tasks, 2, dtype)
    feats = task.query_features.to(dtype).flatten(2)
    valid = downsample_nearest(task.query_valid, (8, 8)).flatten(1).to(dtype)
    base_w, base_b = task.base_weight.to(dtype), task.base_bias.to(dtype)
    old = torch.softmax(torch.einsum("tcp,ck->tkp", feats, base_w) + base_b.view(1, -1, 1), dim=1)
    pi = torch.softmax(torch.randn(tasks, task.num_classes, generator=torch.Generator().manual_seed(0)), 1).to(dtype)
    pi[0, 2] = 0  # an upperbound-like prior can hold zeros
    valid_w = (valid / (valid.sum(-1, keepdim=True) + 1e-10)).unsqueeze(1)
    gw, gb = _query_grad(_query_probs(weight, bias, feats), feats, valid_w, old, pi, w_kl, w_h, w_kd, nb)

    ref = ReferenceDIaM(base_w, base_b, task.num_novel, tasks)
    ref.pi = pi
    ref.w_base = weight[:, :, :nb].permute(1, 0, 2).clone().requires_grad_(True)
    ref.w_novel = weight[:, :, nb:].permute(1, 0, 2).clone().requires_grad_(True)
    ref.b_base = bias[:, :nb].clone().requires_grad_(True)
    ref.b_novel = bias[:, nb:].clone().requires_grad_(True)
    fq = task.query_features.to(dtype).unsqueeze(1)
    vq = valid.view(tasks, 1, 8, 8)
    p_q = torch.softmax(ref.logits(fq), dim=2)
    kl, ent = ref.query_terms(p_q, vq)
    kd = ref.distillation(p_q, ref.frozen_probs(fq), vq)
    (w_kl * kl + w_h * ent + w_kd * kd).sum().backward()
    exp_w = torch.cat([ref.w_base.grad, ref.w_novel.grad], dim=2)  # [T, C, K]
    exp_b = torch.cat([ref.b_base.grad, ref.b_novel.grad], dim=1)
    assert (gw - exp_w).abs().max() <= rtol * exp_w.abs().max()
    assert (gb - exp_b).abs().max() <= rtol * exp_b.abs().max()


def test_probabilities_shape_sum_and_determinism():
    task = make_task(shots=1, seed=8, queries=4, label=45, feat=9)
    method = build_method("diam", iterations=8)
    a = method.predict(task)
    b = method.predict(task)
    assert a.shape == (4, task.num_classes, 9, 9)
    assert a.dtype == torch.float32
    assert torch.allclose(a.sum(1), torch.ones(4, 9, 9), atol=1e-5)
    assert bool((a >= 0).all())
    assert torch.equal(a, b)


def test_each_query_is_its_own_task():
    task = make_task(shots=5, seed=9, queries=4)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = dataclasses.replace(task, query_features=task.query_features[perm],
                                   query_valid=task.query_valid[perm], query_labels=task.query_labels[perm])
    for strategy in ("self", "imglvl"):
        method = build_method("diam", iterations=12, pi_strategy=strategy)
        a = method.predict(task)
        b = method.predict(permuted)
        assert (a[perm] - b).abs().max().item() < 1e-5
    # and a query alone gives what it gets in the batch
    single = dataclasses.replace(task, query_features=task.query_features[1:2], query_valid=task.query_valid[1:2],
                                 query_labels=task.query_labels[1:2])
    alone = build_method("diam", iterations=12).predict(single)[0]
    batched = build_method("diam", iterations=12).predict(task)[1]
    assert (alone - batched).abs().max().item() < 1e-5


@pytest.mark.parametrize("strategy", ["upperbound", "imglvl"])
def test_oracle_strategies_need_query_labels(strategy):
    method = build_method("diam", pi_strategy=strategy, iterations=2)
    assert method.is_oracle
    with pytest.raises(GFSSError, match="oracle"):
        method.predict(make_task(with_query_labels=False))


def test_non_oracle_strategies_do_not_read_query_labels():
    task = make_task(with_query_labels=False)
    for strategy in ("self", "uniform"):
        method = build_method("diam", pi_strategy=strategy, iterations=2)
        assert not method.is_oracle
        assert method.predict(task).shape[1] == task.num_classes


@pytest.mark.parametrize("options", [dict(pi_strategy="foo"), dict(iterations="abc"), dict(lr=0),
                                     dict(loss_weights=(1, 2, 3)), dict(iterations=-1), dict(lr="fast"),
                                     dict(pi_update_at="x")])
def test_bad_options_raise(options):
    with pytest.raises(GFSSError):
        build_method("diam", **options)


def test_options_from_cli_strings():
    method = build_method("diam", iterations="7", loss_weights="100,1,1,100", pi_update_at="3,5",
                          finetune_base="false")
    assert method.iterations == 7 and method.pi_update_at == (3, 5) and method.finetune_base is False
    assert method.loss_weights == (100.0, 1.0, 1.0, 100.0)


def test_labels_outside_episode_space_raise():
    task = make_task()
    bad = task.support_labels.clone()
    bad[0, 0, 0, 0] = task.num_classes  # one past the last novel class
    with pytest.raises(GFSSError, match="outside"):
        build_method("diam", iterations=1).predict(dataclasses.replace(task, support_labels=bad))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    task = make_task(shots=5, seed=11)
    moved = dataclasses.replace(task, **{f.name: getattr(task, f.name).cuda() for f in dataclasses.fields(task)
                                         if isinstance(getattr(task, f.name), torch.Tensor)})
    cpu = build_method("diam", iterations=20).predict(task)
    gpu = build_method("diam", iterations=20).predict(moved)
    assert gpu.is_cuda
    assert (gpu.cpu() - cpu).abs().max().item() < TOL


@pytest.mark.parametrize("strategy", ["self", "imglvl", "upperbound"])
def test_query_without_valid_pixels_stays_finite(strategy):
    task = make_task(shots=1, seed=13)
    valid = task.query_valid.clone()
    valid[1] = False
    labels = task.query_labels.clone()
    labels[1] = 255
    probs = build_method("diam", iterations=12, pi_strategy=strategy).predict(
        dataclasses.replace(task, query_valid=valid, query_labels=labels))
    assert bool(torch.isfinite(probs).all())
    # the other queries are unaffected by it (each query is its own task)
    alone = build_method("diam", iterations=12, pi_strategy=strategy).predict(
        dataclasses.replace(task, query_features=task.query_features[:1], query_valid=valid[:1],
                            query_labels=labels[:1]))
    assert (alone[0] - probs[0]).abs().max().item() < 1e-5
