"""The method contract, checked for every registered method (new methods are picked up automatically).

Options below only shorten the optimisation-based methods; every other option keeps its default.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gfss_bench.methods import METHODS, Fitted, Task, build_method
from tests.methods.tasks import make_task

FAST_OPTIONS = {"diam": dict(iterations=5), "finetune": dict(iterations=5)}  # classtrans: its defaults are fast
TOL = 1e-5


def method(name):
    return build_method(name, **FAST_OPTIONS.get(name, {}))


class NoQueryLabels(Task):
    """A task whose query labels raise when read (a method that is no oracle must never look)."""

    @property
    def query_labels(self):
        raise AssertionError("a non-oracle method read task.query_labels")

    @query_labels.setter
    def query_labels(self, value):
        assert value is None


def small_task(shots=2, seed=0, queries=4, **kwargs):
    task = make_task(shots=shots, seed=seed, queries=queries, num_base=3, num_novel=3, channels=8, feat=6,
                     label=23, **kwargs)
    # one seed per query image, as the runner gives (methods that draw per query must follow their queries)
    return dataclasses.replace(task, query_seeds=torch.arange(queries, dtype=torch.int64) * 7919 + seed)


def without_labels(task: Task) -> Task:
    fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.name != "query_labels"}
    return NoQueryLabels(**fields)


def queries(task: Task, index) -> Task:
    return dataclasses.replace(task, query_features=task.query_features[index], query_valid=task.query_valid[index],
                               query_labels=None if task.query_labels is None else task.query_labels[index],
                               query_seeds=None if task.query_seeds is None else task.query_seeds[index])


def cloned(task: Task) -> Task:
    return dataclasses.replace(task, **{f.name: getattr(task, f.name).clone() for f in dataclasses.fields(task)
                                        if isinstance(getattr(task, f.name), torch.Tensor)})


NAMES = METHODS.names()


def test_every_method_is_covered():
    assert {"base", "bcm", "classtrans", "diam", "finetune", "imprint"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_shape_range_and_normalisation(name):
    task = small_task(seed=1)
    probs = method(name).predict(task)
    q, kc = task.query_features.shape[0], task.num_classes
    assert tuple(probs.shape) in ((q, kc, 6, 6), (q, kc, 23, 23))  # feature or label resolution
    assert probs.dtype == torch.float32 and bool(torch.isfinite(probs).all())
    assert bool((probs >= 0).all()) and bool((probs <= 1).all())
    assert torch.allclose(probs.sum(1), torch.ones_like(probs[:, 0]), atol=TOL)


@pytest.mark.parametrize("name", NAMES)
def test_identical_input_and_seed_give_identical_output(name):
    task = small_task(seed=2)
    a = method(name).predict(task)
    b = method(name).predict(cloned(task))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_fit_once_then_predict_batches_equals_predict(name):
    task = small_task(seed=3, queries=5)
    whole = method(name).predict(task)
    support_only = queries(dataclasses.replace(task, query_labels=None), slice(0, 0))  # what the runner fits on
    fitted = method(name).fit(support_only)
    assert isinstance(fitted, Fitted)
    parts = torch.cat([fitted.predict(queries(task, slice(0, 2))), fitted.predict(queries(task, slice(2, 5)))])
    assert (parts - whole).abs().max().item() < TOL


@pytest.mark.parametrize("name", NAMES)
def test_query_order_does_not_matter(name):
    task = small_task(seed=4, queries=4)
    perm = torch.tensor([2, 0, 3, 1])
    a = method(name).predict(task)
    b = method(name).predict(queries(task, perm))
    assert (a[perm] - b).abs().max().item() < TOL


@pytest.mark.parametrize("name", NAMES)
def test_query_labels_are_not_read_unless_oracle(name):
    m = method(name)
    if m.is_oracle:
        pytest.skip("oracle method")
    task = small_task(seed=5)
    guarded = without_labels(task)
    with pytest.raises(AssertionError, match="read task.query_labels"):
        guarded.query_labels  # the guard works
    probs = m.predict(guarded)
    assert torch.equal(probs, method(name).predict(dataclasses.replace(task, query_labels=None)))
    assert torch.equal(method(name).fit(guarded).predict(guarded), probs)  # a fresh object: bcm's stream restarts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_agrees_with_cpu(name):
    task = small_task(seed=6)
    moved = dataclasses.replace(task, **{f.name: getattr(task, f.name).cuda() for f in dataclasses.fields(task)
                                         if isinstance(getattr(task, f.name), torch.Tensor)})
    cpu = method(name).predict(task)
    gpu = method(name).predict(moved)
    assert gpu.is_cuda
    gpu = gpu.cpu()
    # hard decisions (bcm's one-hot part) may flip at exact near-ties; everything else must agree closely
    same = cpu.argmax(1) == gpu.argmax(1)
    assert same.float().mean().item() > 0.999
    assert ((cpu - gpu).abs().amax(1)[same]).max().item() < 1e-4
