"""`bcm`: base-class mapping (Sakai et al., NeurIPS 2024, "A Surprisingly Simple Approach to GFSS").

Inductive (docs/protocol.md §8): `fit` builds classifiers from the support set once per run; `predict`
then scores each query pixel independently with one linear head per mapping-table entry.

Fit:

1. Mapping table. Support masks are nearest-downsampled to feature resolution. For each novel class,
   the base segmenter's top-1 prediction (argmax of W_b.f + b_b) is counted over the support pixels
   of that class (all shots) and the class is mapped to the most frequent base label k (ties to the
   smaller index; k may be background). T[k] lists the novel classes mapped to k, ascending.
2. For each k in T, a logistic regression over {0 = stay k, 1..|T[k]|} is trained on all valid
   support pixels (pixels of the novel classes of T[k] get their position in T[k], every other valid
   pixel gets 0), on the features raised element-wise to `beta`.
3. scikit-learn's `LogisticRegression` (L2, lbfgs, `max_iter`, `tol`, intercept; multinomial for
   three or more classes, binomial for two), or with `solver=sklearnex` scikit-learn-intelex's (the
   official solver; the extra `gfss-bench[intel]`, x86-64 only). C is chosen over logspace(`c_min_exp`, `c_max_exp`,
   `c_grid_size`) by `cv_folds`-fold `StratifiedKFold` without shuffling, scored by the mean over the
   classes present in the validation fold of one-vs-rest average precision, averaged over folds; ties
   go to the first C. As in the official code (docs/protocol.md §8 item 8) the folds stay `cv_folds` when a
   class has fewer pixels: scikit-learn then proceeds (its warning is silenced), some validation
   folds lack that class, and a class absent from a training fold is not scored in its validation
   fold. With `bg_sampling`, the label-0 pixels of each training fold and of the final
   refit are down-sampled without replacement to the count of the largest other class when they
   outnumber it (that class is then the second largest). The draws replay the official numpy stream
   (docs/protocol.md §8 item 9): one `numpy.random.RandomState(task.evaluation_seed)` per evaluation,
   continued across its runs (the method object lives for one evaluation; `stream_state` goes into
   the run checkpoints), drawn in the official order: mapped base labels k ascending; per k the
   per-shot models 0..K-1 and then the all-shot model; per model the CV training folds in order,
   then the final refit.
4. Probabilities of a head are the softmax of its decision function (the binary case is written
   as the two logits (-d, d), i.e. sigmoid(2d), as scikit-learn's multinomial binary case).
5. Shot-wise ensemble (`ensemble` and K > 1): per k, also one model per shot i (trained on shot i of
   every novel class, same CV); class probabilities are averaged with weight 1 per shot model and K
   for the all-shot model, per class over the models that saw that class.

Predict, at label resolution (the size of `query_valid`): y0 = argmax of the base probabilities
upsampled bilinearly (align_corners=True). For each k in T, the k-head probabilities are computed at
feature resolution, upsampled the same way, and where y0 == k and their argmax a != 0 the prediction
becomes T[k][a-1]. Base classes not in T never change.

Output: probabilities [Q, B+1+N, H, W] at label resolution (the runner scores them as they are, so
its argmax is exactly the decision above). They are 0.5 * (s + onehot(decision)), with s the
hierarchical posterior: the upsampled base probabilities p, where in the region y0 == k in T the
mass p_k is split over k and T[k] in proportion to the (renormalised) upsampled k-head probabilities.
The decided class has s > 0 (p_k >= 1/(B+1) and the chosen head probability >= 1/(|T[k]|+1)), so its
output exceeds 0.5 and every other class stays <= 0.5: the argmax is the BCM decision, never a tie.

Degenerate cases (documented choices, not in the paper):

- a novel class without any support pixel at feature resolution is left out of the table (never
  predicted);
- a model whose training pixels hold a single class is not fitted (a shot model that saw none of
  T[k] contributes nothing; an entry without an all-shot model never changes predictions). The
  official code crashes there instead; it happens with the official repeats (docs/protocol.md §4a),
  where a class short of candidates fills its slots with the first class's supports, so its shot
  model for such a slot sees no pixel of it. It draws nothing from the stream;
- only where scikit-learn would raise, CV deviates: when every class has fewer pixels than
  `cv_folds` (StratifiedKFold raises), it uses as many folds as the largest class has pixels; when
  that is below 2 (or the grid has one value), CV is skipped and the middle grid value
  C_grid[(len - 1) // 2] is used; a training fold holding a single class (e.g. a binary model with a
  one-pixel class; LogisticRegression raises) is left out of the average;
- features are raised to `beta` as sign(x) * |x|**beta (by numpy in float32 for the fits), which is
  x**beta for the post-ReLU (non-negative) features BCM assumes; support features with negative values
  stop the fit with one line (`check_non_negative`) unless beta = 1.

Only `top_k` = 1 (the official setting) is implemented, and no torch solver (none has been shown
to reach scikit-learn's objective and predictions). scikit-learn runs on the CPU with as many BLAS
threads as `torch.get_num_threads()`; the heads are applied on the query tensors' device.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from gfss_bench.errors import GFSSError
from gfss_bench.methods.contract import Fitted, Method, Task, check_choice, register_method
from gfss_bench.methods.common import IGNORE, check_labels, check_task_shapes, downsample_nearest

SOLVERS = ("sklearn", "sklearnex")
X86 = ("x86_64", "amd64", "i386", "i686", "x86")
PREDICT_CHUNK = 16  # queries per chunk at label resolution (bounds memory)


def power_features(x: torch.Tensor, beta: float) -> torch.Tensor:
    """sign(x) * |x|**beta (= x**beta for non-negative features)."""
    if beta == 1:
        return x
    return torch.sign(x) * x.abs().pow(beta)


def check_non_negative(features: torch.Tensor, beta: float, segmenter: str) -> None:
    """BCM's x**beta is meant for post-ReLU features; on negative ones it is not the published transform."""
    if beta != 1 and features.numel() and float(features.min()) < 0:
        raise GFSSError(f"bcm: the features of segmenter {segmenter or '(unnamed)'} have negative values, but "
                        f"x**beta (beta={beta:g}) needs non-negative ones; pass -o bcm.beta=1 to fit on the raw "
                        "features")


def power_array(x: np.ndarray, beta: float) -> np.ndarray:
    """sign(x) * |x|**beta computed by numpy in the array's own precision, as the official code raises its numpy
    features. torch's float32 `pow(0.5)` differs from numpy's square root in the last bit for about 18% of values,
    and the fits (lbfgs stopped at `max_iter`) can turn such differences into percent-level coefficient changes."""
    if beta == 1:
        return x
    return np.sign(x) * np.abs(x) ** np.asarray(beta, dtype=x.dtype)


def mapping_table(task: Task) -> dict[int, tuple[int, ...]]:
    """T: base label k -> the novel episode labels mapped to it (ascending); see the module docstring."""
    nb = task.num_base_and_bg
    small = downsample_nearest(task.support_labels, tuple(task.support_features.shape[-2:]))
    logits = torch.einsum("nkchw,cb->nkbhw", task.support_features.float(), task.base_weight.float())
    pred = (logits + task.base_bias.float().view(1, 1, -1, 1, 1)).argmax(2)
    table: dict[int, list[int]] = {}
    for j in range(task.num_novel):
        where = small == nb + j
        if not bool(where.any()):
            continue
        counts = torch.bincount(pred[where].flatten().cpu(), minlength=nb).numpy()
        table.setdefault(int(np.argmax(counts)), []).append(nb + j)  # np.argmax: first maximum
    return {k: tuple(sorted(v)) for k, v in sorted(table.items())}


def downsample_background(y: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Sorted indices of `y` keeping every non-zero label and, when label 0 outnumbers the largest
    other class, that many label-0 indices drawn without replacement (`rng.choice` on the label-0
    indices in increasing order, as the official code draws)."""
    zero = np.flatnonzero(y == 0)
    others = y[y != 0]
    if others.size == 0:
        return np.arange(y.size)
    target = int(np.bincount(others).max())
    if zero.size <= target:
        return np.arange(y.size)
    keep = rng.choice(zero, size=target, replace=False)
    return np.sort(np.concatenate([np.flatnonzero(y != 0), keep]))


def head_probabilities(decision: np.ndarray) -> np.ndarray:
    """Softmax of a decision function [P, M] (or [P] for two classes: softmax of (-d, d))."""
    if decision.ndim == 1:
        decision = np.stack([-decision, decision], axis=1)
    z = decision - decision.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def mean_average_precision(y: np.ndarray, probs: np.ndarray, classes: np.ndarray) -> float:
    """Mean over the `classes` (probs' columns) present in `y` of one-vs-rest average precision."""
    from sklearn.metrics import average_precision_score

    present = [i for i, c in enumerate(classes) if bool((y == c).any())]
    return float(np.mean([average_precision_score(y == classes[i], probs[:, i]) for i in present]))


@dataclass
class Head:
    """One fitted logistic regression: logits = features**beta @ coef.T + intercept over `classes`."""

    classes: tuple[int, ...]  # positions in {0..|T[k]|} it saw, ascending
    coef: np.ndarray  # [len(classes), C] (binary heads stored as (-w, w))
    intercept: np.ndarray  # [len(classes)]
    C: float
    weight: float
    shot: Optional[int]  # None for the all-shot model
    cv_scores: Optional[np.ndarray] = None  # mean CV score per grid value (None when CV was skipped)


@dataclass
class Entry:
    k: int
    novel: tuple[int, ...]
    heads: list[Head] = field(default_factory=list)


class BCMFitted(Fitted):
    """The mapping table with its fitted heads; predicts query batches at label resolution."""

    def __init__(self, entries: list[Entry], beta: float, num_base_and_bg: int, num_classes: int):
        self.entries = entries
        self.beta = beta
        self.nb = num_base_and_bg
        self.num_classes = num_classes

    @property
    def table(self) -> dict[int, tuple[int, ...]]:
        return {e.k: e.novel for e in self.entries}

    def head_probabilities(self, entry: Entry, feats: torch.Tensor) -> torch.Tensor:
        """Ensembled k-head probabilities [Q, 1+|T[k]|, h, w] at feature resolution (feats already ** beta)."""
        m = len(entry.novel) + 1
        q, _, h, w = feats.shape
        acc = feats.new_zeros(q, m, h, w)
        total = feats.new_zeros(m)
        for head in entry.heads:
            coef = torch.as_tensor(head.coef, dtype=feats.dtype, device=feats.device)
            bias = torch.as_tensor(head.intercept, dtype=feats.dtype, device=feats.device)
            probs = torch.softmax(torch.einsum("qchw,mc->qmhw", feats, coef) + bias.view(1, -1, 1, 1), dim=1)
            idx = torch.as_tensor(head.classes, device=feats.device)
            acc.index_add_(1, idx, probs * head.weight)
            total[idx] += head.weight
        return acc / total.clamp_min(1e-30).view(1, -1, 1, 1)

    def predict(self, task: Task) -> torch.Tensor:
        qf = task.query_features.float()
        size = tuple(task.query_valid.shape[-2:])
        if qf.shape[1] != task.base_weight.shape[0]:
            raise GFSSError(f"query features have {qf.shape[1]} channels, the base classifier {task.base_weight.shape[0]}")
        out = []
        with torch.no_grad():
            for start in range(0, qf.shape[0], PREDICT_CHUNK):
                out.append(self._predict_chunk(task, qf[start:start + PREDICT_CHUNK], size))
        if not out:
            return qf.new_zeros(0, self.num_classes, *size)
        return torch.cat(out)

    def _predict_chunk(self, task: Task, qf: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        nb = self.nb
        logits = torch.einsum("qchw,cb->qbhw", qf, task.base_weight.float()) + task.base_bias.float().view(1, -1, 1, 1)
        base = F.interpolate(torch.softmax(logits, 1), size=size, mode="bilinear", align_corners=True)
        y0 = base.argmax(1)
        s = torch.cat([base, base.new_zeros(base.shape[0], self.num_classes - nb, *size)], dim=1)
        decision = y0.clone()
        feats = power_features(qf, self.beta) if self.entries else qf
        for entry in self.entries:
            if not entry.heads:
                continue
            region = y0 == entry.k
            if not bool(region.any()):
                continue
            q = F.interpolate(self.head_probabilities(entry, feats), size=size, mode="bilinear", align_corners=True)
            a = q.argmax(1)
            qn = q / q.sum(1, keepdim=True).clamp_min(1e-30)
            pk = base[:, entry.k]
            labels = torch.as_tensor(entry.novel, device=qf.device)
            s[:, entry.k] = torch.where(region, pk * qn[:, 0], s[:, entry.k])
            for j, label in enumerate(entry.novel):
                s[:, label] = torch.where(region, pk * qn[:, j + 1], s[:, label])
            change = region & (a > 0)
            decision = torch.where(change, labels[(a - 1).clamp_min(0)], decision)
        onehot = F.one_hot(decision, self.num_classes).permute(0, 3, 1, 2).to(s.dtype)
        return 0.5 * (s + onehot)


@register_method("bcm")
class BCM(Method):
    """BCM (NeurIPS 2024); the options are the official settings (C grid = logspace(min, max, size))."""

    # 2: CV keeps `cv_folds` folds when a class has fewer pixels (official behaviour); 3: the down-sampling replays
    # the official numpy stream, continued across runs (per-shot models fitted before the all-shot model)
    version = 3
    beta: float = 0.5
    top_k: int = 1
    ensemble: bool = True
    bg_sampling: bool = True
    c_grid_size: int = 10
    c_min_exp: float = -5.0
    c_max_exp: float = 5.0
    cv_folds: int = 5
    max_iter: int = 100
    tol: float = 1e-4
    solver: str = "sklearn"

    def validate(self) -> None:
        check_choice(self.name, "solver", self.solver, SOLVERS)
        problems = [
            ("beta", self.beta > 0, "> 0"), ("top_k", self.top_k == 1, "1 (the only implemented value)"),
            ("c_grid_size", self.c_grid_size >= 1, ">= 1"), ("c_max_exp", self.c_max_exp >= self.c_min_exp,
                                                             ">= c_min_exp"),
            ("cv_folds", self.cv_folds >= 2, ">= 2"), ("max_iter", self.max_iter >= 1, ">= 1"),
            ("tol", self.tol > 0, "> 0"),
        ]
        for key, ok, allowed in problems:
            if not ok:
                raise GFSSError(f"option {key!r} of method 'bcm' must be {allowed}, got {getattr(self, key)!r}")

    @property
    def c_grid(self) -> np.ndarray:
        return np.logspace(self.c_min_exp, self.c_max_exp, self.c_grid_size)

    def fit(self, task: Task) -> BCMFitted:
        from threadpoolctl import threadpool_limits

        if self.solver == "sklearnex":
            sklearnex_logistic_regression()  # a clear error before anything is fitted
        # scikit-learn's BLAS/OpenMP use as many threads as torch does (unbounded pools on small
        # matrices mostly wait for each other on a shared CPU)
        with threadpool_limits(limits=torch.get_num_threads()):
            return self._fit(task)

    def stream_state(self) -> Optional[dict]:
        stream = self.__dict__.get("_stream")
        if stream is None:
            return None
        _, keys, position, has_gauss, cached = stream.get_state()
        return {"keys": keys.tolist(), "pos": int(position), "has_gauss": int(has_gauss), "cached": float(cached)}

    def restore_stream_state(self, state: Optional[dict]) -> None:
        if state is None:
            object.__setattr__(self, "_stream", None)
            return
        try:
            stream = np.random.RandomState()
            stream.set_state(("MT19937", np.asarray(state["keys"], dtype=np.uint32), int(state["pos"]),
                              int(state["has_gauss"]), float(state["cached"])))
        except (TypeError, KeyError, ValueError, OverflowError) as error:
            raise ValueError(f"not a bcm stream state ({error})") from None
        object.__setattr__(self, "_stream", stream)

    def _numpy_stream(self, task: Task) -> np.random.RandomState:
        """The evaluation's stream (docs/protocol.md §8 item 9): seeded at the first fit, continued afterwards."""
        if self.__dict__.get("_stream") is None:
            object.__setattr__(self, "_stream", np.random.RandomState(int(task.evaluation_seed) % (1 << 32)))
        return self.__dict__["_stream"]

    def _fit(self, task: Task) -> BCMFitted:
        check_task_shapes(task)
        check_labels(task.support_labels, task.num_classes, "support labels")
        n, k_shots, c, h, w = task.support_features.shape
        table = mapping_table(task)
        small = downsample_nearest(task.support_labels, (h, w)).cpu()  # [N, K, h, w]
        check_non_negative(task.support_features, self.beta, task.segmenter)
        feats = task.support_features.detach().float().cpu().permute(0, 1, 3, 4, 2).reshape(-1, c).numpy()
        x_all = power_array(feats, self.beta).astype(np.float64)  # pixel order: (n, shot, y, x)
        labels = small.reshape(-1).numpy()
        shot_of = np.broadcast_to(np.arange(k_shots).reshape(1, -1, 1), (n, k_shots, h * w)).reshape(-1)
        valid = labels != IGNORE
        x_all, labels, shot_of = x_all[valid], labels[valid], shot_of[valid]
        ensemble = self.ensemble and k_shots > 1
        stream = self._numpy_stream(task)
        entries = []
        for k, novel in table.items():
            y = np.zeros(labels.shape, dtype=np.int64)
            for pos, label in enumerate(novel, start=1):
                y[labels == label] = pos
            entry = Entry(k, novel)
            subsets = [(i, shot_of == i, 1.0) for i in range(k_shots)] if ensemble else []  # the official order
            subsets.append((None, np.ones(y.shape, dtype=bool), float(k_shots) if ensemble else 1.0))
            for shot, rows, weight in subsets:
                head = self._fit_head(x_all[rows], y[rows], stream)
                if head is not None:
                    head.weight, head.shot = weight, shot
                    entry.heads.append(head)
            entries.append(entry)
        return BCMFitted(entries, self.beta, task.num_base_and_bg, task.num_classes)

    def _sample(self, y: np.ndarray, stream: Optional[np.random.RandomState]) -> np.ndarray:
        if not self.bg_sampling or stream is None:
            return np.arange(y.size)
        return downsample_background(y, stream)

    def _logreg(self, x: np.ndarray, y: np.ndarray, C: float):
        from sklearn.exceptions import ConvergenceWarning

        if self.solver == "sklearnex":
            LogisticRegression = sklearnex_logistic_regression()
        else:
            from sklearn.linear_model import LogisticRegression
        model = LogisticRegression(C=C, solver="lbfgs", max_iter=self.max_iter, tol=self.tol, fit_intercept=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)
        return model

    def choose_c(self, x: np.ndarray, y: np.ndarray, stream: Optional[np.random.RandomState] = None
                 ) -> tuple[float, Optional[np.ndarray]]:
        """The grid value with the best mean CV score (first on ties) and the scores; see the docstring. Each
        training fold's down-sampling draws from `stream`, in fold order (None: no down-sampling)."""
        from sklearn.model_selection import StratifiedKFold

        grid = self.c_grid
        splits = min(self.cv_folds, int(np.bincount(y).max()))  # below cv_folds only where StratifiedKFold raises
        if splits < 2 or grid.size == 1:
            return float(grid[(grid.size - 1) // 2]), None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            split = list(StratifiedKFold(n_splits=splits, shuffle=False).split(x, y))
        folds = []
        for train, test in split:
            if np.unique(y[train]).size > 1:  # LogisticRegression cannot fit a single class
                folds.append((train[self._sample(y[train], stream)], test))
        scores = np.zeros(grid.size)
        for g, C in enumerate(grid):
            for train, test in folds:
                model = self._logreg(x[train], y[train], float(C))
                probs = head_probabilities(model.decision_function(x[test]))
                scores[g] += mean_average_precision(y[test], probs, model.classes_)
        scores /= len(folds)
        return float(grid[int(np.argmax(scores))]), scores

    def _fit_head(self, x: np.ndarray, y: np.ndarray, stream: np.random.RandomState) -> Optional[Head]:
        classes = np.unique(y)
        if classes.size < 2:
            return None
        C, scores = self.choose_c(x, y, stream)
        keep = self._sample(y, stream)
        model = self._logreg(x[keep], y[keep], C)
        coef, intercept = model.coef_, model.intercept_
        if classes.size == 2:
            coef, intercept = np.concatenate([-coef, coef]), np.concatenate([-intercept, intercept])
        return Head(tuple(int(c) for c in model.classes_), coef, intercept, C, 1.0, None, scores)


def sklearnex_logistic_regression():
    """scikit-learn-intelex's LogisticRegression (the official BCM solver), or a GFSSError saying how to get it."""
    import platform

    machine = platform.machine().lower()
    if machine not in X86:
        raise GFSSError(f"option solver='sklearnex' of method 'bcm' needs scikit-learn-intelex, which is built for "
                        f"x86-64 only (this machine is {machine or 'unknown'}); use solver=sklearn")
    try:
        from sklearnex.linear_model import LogisticRegression
    except ImportError:
        raise GFSSError("option solver='sklearnex' of method 'bcm' needs scikit-learn-intelex: pip install "
                        "'gfss-bench[intel]' (or use solver=sklearn)") from None
    return LogisticRegression
