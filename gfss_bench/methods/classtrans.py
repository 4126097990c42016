"""`classtrans`: ClassTrans test-time adaptation (earth-insights/ClassTrans, 2024; second in the OpenEarthMap
GFSS challenge), as docs/protocol.md §9 describes it.

Notation: C_b = B+1 outputs of the frozen 1x1 head (W̄, b̄), N novel classes, C = C_b + N, features of
dimension c. Every query image is its own task with its own copy of every parameter below.

Fit (once per support set; reads the base classifier and the support fields only):

1. Support masks are nearest-downsampled to feature resolution; a pixel is valid where its label is not 255.
2. Novel weights by optimal transport. Every support pixel (ignore pixels included) is pseudo-labelled with
   the argmax of softmax(W̄ᵀf + b̄). The class "means" divide by the total number of support feature pixels
   S·h·w (S = N·K maps), not by the class's own count: μᴮ_k sums the features pseudo-labelled k, μᴺ_j those
   labelled novel j (zero when absent). Cost M[j, k] = ||μᴮ_k − μᴺ_j||² (unnormalised); Sinkhorn with
   λ = `ot_lambda`: P = exp(−λM) / sum, then, until the row sums change by at most `sinkhorn_tol` between
   sweeps, scale the rows to 1/N and the columns to 1/C_b. W_n = W̄ Pᵀ, novel biases 0, no normalisation.
3. The valid support pixels are packed once with their (CE-mapped) labels, CE weights, LDAM margins and
   snapshot logits W̄ᵀf.

Predict (per query batch; each query is a task):

4. Parameters: the trainable head W_b, b_b (a copy of the frozen one), W_n, b_n, and the transition module:
   R (c x C_b) then Q (c x C) drawn from N(0, `transition_std`²), zero biases r (C_b), q (C) and a zero
   per-class scale γ (C). With a(x) = Σ_k (R_kᵀf + r_k)(W̄_kᵀf) (snapshot logits without bias), the
   transition logits are γ_i (Q_iᵀf + q_i) a(x); classifier logits z^cls = [W_bᵀf + b_b ; W_nᵀf + b_n]; full
   logits z = z^cls + transition logits (equal to z^cls at the start, γ = 0).
5. π = mean of softmax(z) (full logits, no gradient) over the query's valid pixels, before the first step
   and again after step t whenever t + 1 is in `pi_update_at` (10, 20, 30, 40, 50, 100).
6. Loss per step t = 0..`iterations`-1, summed over tasks: w_CE·CE + w_H·H + w_KL·KL + w_KD·KD with
   `loss_weights` = (w_CE, w_H, w_KL, w_KD) = (650, 3, 16, 7) (the official order; diam's option is ordered
   CE, KL, H, KD). CE is on the support with the full logits: DIaM's merged form (docs/protocol.md §5: base
   probabilities added to background, background weight 0.01 at 1 shot and 0.15 otherwise, the mean over
   all valid support pixels), or, for t >= `ldam_from` (101) when `ldam`, the same CE of
   softmax(z − m_y·onehot(y)) with the margin m_y = `ldam_max_margin`·(n_min / n_y)^(1/4) on the true class's
   logit only (no scale). H, KL(marginal || π) and KD (to the snapshot's softmax(W̄ᵀf + b̄), novel mass folded
   into background) are DIaM's (§5), on the classifier logits z^cls only, as valid-pixel means of the query.
7. Optimiser: SGD with momentum and weight decay (`lr` 9e-5, `momentum` 0.9, `weight_decay` 5e-4, as
   torch.optim.SGD computes it) over W_n, b_n, Q, q, R, r, γ and, with `finetune_base` (default, the official
   `fine_tune_base_classifier`), W_b, b_b.
8. Output: softmax of the full logits at feature resolution, [Q, B+1+N, h, w].

Choices of this port (the official code is tied to OpenEarthMap and to one query at a time on one GPU):

- LDAM class counts n_c are the valid support pixels of each class at feature resolution (after the base
  labels of standard-protocol supports are mapped to background), n_min their minimum over the classes
  present; `class_counts` (one positive number per episode class, background first; counts or proportions,
  only ratios matter) replaces them, e.g. with the official OpenEarthMap counts; `ldam=False` turns LDAM off.
  The official counts are OpenEarthMap constants.
- The query terms and π are weighted by the query's own valid mask (as DIaM). The official code weights them
  by the number of valid support masks at each pixel, which is a plain mean only on unpadded images.
- The transition weights are seeded per query: R then Q are filled on the CPU with
  `normal_(0, transition_std, generator=torch.Generator().manual_seed(s))` and moved to the device, s being
  `task.query_seeds[i]` (the runner derives it from the run's seed and the query image's index in the val
  list) or `task.seed + i` when `query_seeds` is None. Results thus do not depend on the batch size, the query
  order or the number of processes. The official code continues one CUDA stream (seeded 2023) over its
  shuffled queries, which cannot be replayed; re-seeded per query the same way, its draws are these.
- Sinkhorn runs in float64 (the 1e-7 tolerance is at float32's rounding level, and exp(−λM) underflows float32
  for costs above ~1000) on exp(−λ(M − min M)), which the first normalisation makes identical to exp(−λM).
  It stops after `sinkhorn_max_iter` sweeps with a warning (the official loop has no cap).
- Queries are batched as separate tasks, each with its own parameters (and its own γ); one query per task as
  in the official code, so batching changes nothing but float rounding.
- Standard-protocol supports may contain base labels 1..B: as in `diam`, they are mapped to background before
  the CE and the LDAM counts (the official merged CE has no entry for them). The optimal-transport
  initialisation uses the labels as they are (only the novel labels enter it).
- π is re-estimated at the listed steps whatever the loss weights (the official code skips it when the
  entropy weight is 0).

How it is computed: autograd over all tasks at once. The valid support pixels are processed in chunks; one
GEMM per chunk scores the classifier, R and Q columns of every task, and each chunk's CE is back-propagated
before the next (the CE is a sum over pixels), which bounds memory. The parameters of all tasks are stacked
([c, T, ...]); the SGD update is element-wise, hence per task.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from gfss_bench.errors import GFSSError
from gfss_bench.methods.common import EPS, IGNORE, check_labels, check_task_shapes, downsample_nearest
from gfss_bench.methods.contract import Fitted, Method, Task, register_method

CHUNK_ELEMENTS = 1 << 23  # support logits per chunk (pixels x tasks x columns)


def sinkhorn(cost: torch.Tensor, lam: float, tol: float, max_iter: int) -> torch.Tensor:
    """Entropic optimal transport plan [N, C_b] with uniform marginals 1/N (rows) and 1/C_b (columns), in float64.

    P = exp(-lam * M) normalised to sum 1; each sweep records the row sums u, scales the rows to 1/N and then the
    columns to 1/C_b; it stops once the row sums differ from the previous sweep's u by at most `tol`.
    """
    m = cost.detach().double().cpu()
    n, nb = m.shape
    kernel = torch.exp(-lam * (m - m.min()))  # the shift is a global factor, removed by the normalisation
    if not bool((kernel.sum(1) > 0).all() and (kernel.sum(0) > 0).all()):
        raise GFSSError(f"classtrans: exp(-ot_lambda * cost) underflows for a whole row or column (cost range "
                        f"{float(m.min()):.4g}..{float(m.max()):.4g}, ot_lambda={lam}); lower ot_lambda")
    plan = kernel / kernel.sum()
    row_target, col_target = 1.0 / n, 1.0 / nb
    u = torch.zeros(n, dtype=torch.float64)
    for _ in range(max_iter):
        rows = plan.sum(1)
        if float((u - rows).abs().max()) <= tol:
            return plan
        u = rows
        plan *= (row_target / u).reshape(-1, 1)
        plan *= (col_target / plan.sum(0)).reshape(1, -1)
    if float((u - plan.sum(1)).abs().max()) > tol:
        warnings.warn(f"classtrans: Sinkhorn did not reach the tolerance {tol:g} in sinkhorn_max_iter={max_iter} "
                      f"sweeps; using the last plan", RuntimeWarning, stacklevel=2)
    return plan


def transport_novel_weights(base_weight: torch.Tensor, base_bias: torch.Tensor, support_features: torch.Tensor,
                            small_labels: torch.Tensor, lam: float, tol: float, max_iter: int) -> torch.Tensor:
    """W_n = W̄ Pᵀ [c, N] (step 2 of the module docstring)."""
    n, k, c = support_features.shape[:3]
    nb = base_weight.shape[1]
    feats = support_features.reshape(n * k, c, -1)  # [S, c, hw]
    total = feats.shape[0] * feats.shape[2]  # S * h * w: the denominator of every "mean"
    logits = torch.matmul(base_weight.t(), feats) + base_bias.view(1, -1, 1)  # [S, C_b, hw]
    pseudo = torch.softmax(logits, dim=1).argmax(dim=1)  # [S, hw]
    classes = torch.arange(nb, device=feats.device)
    mu_base = torch.bmm(feats, (pseudo.unsqueeze(-1) == classes).to(feats.dtype)).sum(0) / total  # [c, C_b]
    labels = small_labels.reshape(n * k, -1)
    novel = torch.arange(nb, nb + n, device=feats.device)
    mu_novel = torch.bmm(feats, (labels.unsqueeze(-1) == novel).to(feats.dtype)).sum(0) / total  # [c, N]
    mu_base, mu_novel = mu_base.double(), mu_novel.double()
    cost = (mu_novel.unsqueeze(2) - mu_base.unsqueeze(1)).pow(2).sum(0)  # [N, C_b]
    plan = sinkhorn(cost, lam, tol, max_iter).to(feats.device)
    return (base_weight.double() @ plan.t()).to(base_weight.dtype)


def ldam_margins(counts: torch.Tensor, max_margin: float) -> torch.Tensor:
    """max_margin * (n_min / n_c)^(1/4) per class, n_min over the classes with n_c > 0 (0 for the others)."""
    counts = counts.double()
    present = counts > 0
    if not bool(present.any()):
        return torch.zeros_like(counts)
    n_min = counts[present].min()
    return torch.where(present, max_margin * (n_min / counts.clamp_min(1e-300)).pow(0.25), 0.0)


class _Support:
    """The valid support pixels ([P, c], packed once) with targets, CE weights, margins and snapshot logits."""

    def __init__(self, task: Task, small_labels: torch.Tensor, features: torch.Tensor,
                 class_counts: tuple[float, ...], max_margin: float):
        nb, kc = task.num_base_and_bg, task.num_classes
        n, k, c = features.shape[:3]
        labels = small_labels.reshape(-1).clone()
        labels[(labels >= 1) & (labels < nb)] = 0  # base labels -> background (module docstring)
        valid = labels != IGNORE
        self.features = features.permute(0, 1, 3, 4, 2).reshape(-1, c)[valid]  # [P, c], image-major pixel order
        self.target = labels[valid]
        self.count = int(self.target.numel())
        self.is_bg = self.target == 0
        bg_weight = 0.01 if k == 1 else 0.15
        self.pix_w = torch.where(self.is_bg, bg_weight, 1.0).to(features.dtype) / (self.count + EPS)
        if class_counts:
            counts = torch.tensor(class_counts, dtype=torch.float64)
        else:
            counts = torch.bincount(self.target.cpu(), minlength=kc).double()
        self.margin = ldam_margins(counts, max_margin).to(features)[self.target]  # [P]
        self.snapshot = self.features @ task.base_weight.float()  # [P, C_b], frozen logits without bias


def _transition(out: torch.Tensor, snapshot: torch.Tensor, gamma: torch.Tensor, kc: int, nb: int,
                dim: int) -> torch.Tensor:
    """Full logits from the stacked scores `out` = [classifier (C) | R (C_b) | Q (C)] along `dim`."""
    cls, row, col = out.split([kc, nb, kc], dim=dim)
    a = (row * snapshot).sum(dim, keepdim=True)
    return cls + gamma * col * a


class _Fit(Fitted):
    def __init__(self, method: "ClassTrans", task: Task, size: tuple[int, int], base_w: torch.Tensor,
                 base_b: torch.Tensor, novel_w: torch.Tensor, support: Optional[_Support]):
        self.method, self.size = method, size
        self.nb, self.kc = task.num_base_and_bg, task.num_classes
        self.base_w, self.base_b, self.novel_w, self.support = base_w, base_b, novel_w, support

    def predict(self, task: Task) -> torch.Tensor:
        q, c, h, w = task.query_features.shape
        if (h, w) != self.size or c != self.base_w.shape[0]:
            raise GFSSError(f"query features {tuple(task.query_features.shape)} do not match the fitted support "
                            f"features (C={self.base_w.shape[0]}, {self.size[0]}x{self.size[1]})")
        seeds = task.query_seeds_of()
        if q == 0:
            return self.base_w.new_zeros(0, self.kc, h, w)
        with torch.no_grad():
            return self._adapt(task, seeds).reshape(q, self.kc, h, w)

    def _adapt(self, task: Task, seeds: list[int]) -> torch.Tensor:
        m = self.method
        w_ce, w_h, w_kl, w_kd = (float(v) for v in m.loss_weights)
        nb, kc = self.nb, self.kc
        q, c, h, w = task.query_features.shape
        device = self.base_w.device
        feats_q = task.query_features.float().reshape(q, c, h * w)
        valid_q = downsample_nearest(task.query_valid, self.size).reshape(q, h * w).float()
        valid_w = valid_q / (valid_q.sum(-1, keepdim=True) + EPS)  # [T, P]: valid-pixel mean weights
        snap_q = torch.matmul(self.base_w.t(), feats_q)  # [T, C_b, P]
        old = torch.softmax(snap_q + self.base_b.view(1, -1, 1), dim=1)  # frozen snapshot probabilities

        # stacked parameters: columns [W_b | W_n | R | Q] of every task, biases [b_b | b_n | r | q], scale γ
        cols = 2 * kc + nb
        weight = torch.empty(c, q, cols, device=device)
        weight[:, :, :nb] = self.base_w.unsqueeze(1)
        weight[:, :, nb:kc] = self.novel_w.unsqueeze(1)
        for t, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(seed)
            row = torch.empty(c, nb).normal_(0.0, m.transition_std, generator=gen)
            col = torch.empty(c, kc).normal_(0.0, m.transition_std, generator=gen)
            weight[:, t, kc:kc + nb] = row.to(device)
            weight[:, t, kc + nb:] = col.to(device)
        bias = torch.zeros(q, cols, device=device)
        bias[:, :nb] = self.base_b
        gamma = torch.zeros(q, kc, device=device)
        params = [weight.requires_grad_(True), bias.requires_grad_(True), gamma.requires_grad_(True)]
        buffers: list[Optional[torch.Tensor]] = [None, None, None]

        def full_query_logits() -> torch.Tensor:  # [T, C, P]
            out = torch.baddbmm(bias.unsqueeze(-1), weight.permute(1, 2, 0), feats_q)
            return _transition(out, snap_q, gamma.unsqueeze(-1), kc, nb, dim=1)

        def estimate_pi() -> torch.Tensor:
            return (torch.softmax(full_query_logits(), dim=1) * valid_w.unsqueeze(1)).sum(-1)

        pi = estimate_pi()
        update_at = set(m.pi_update_at)
        support = self.support if (w_ce != 0 and self.support is not None and self.support.count) else None
        for it in range(m.iterations):
            with torch.enable_grad():
                # query terms: classifier logits only
                logits = torch.baddbmm(bias[:, :kc].unsqueeze(-1), weight[:, :, :kc].permute(1, 2, 0), feats_q)
                probs = torch.softmax(logits, dim=1)  # [T, C, P]
                entropy = (-(probs * torch.log(probs + EPS)).sum(1) * valid_w).sum(-1)
                marginal = (probs * valid_w.unsqueeze(1)).sum(-1)
                kl = (marginal * torch.log(EPS + marginal / (pi + EPS))).sum(1)
                folded = torch.cat([probs[:, :1] + probs[:, nb:].sum(1, keepdim=True), probs[:, 1:nb]], dim=1)
                kd = ((folded * torch.log(EPS + folded / (EPS + old))).sum(1) * valid_w).sum(-1)
                (w_h * entropy + w_kl * kl + w_kd * kd).sum().backward()
                if support is not None:
                    self._support_backward(support, weight, bias, gamma, w_ce,
                                           use_ldam=m.ldam and it >= m.ldam_from)
            self._sgd_step(params, buffers)
            if (it + 1) in update_at:
                pi = estimate_pi()
        return torch.softmax(full_query_logits(), dim=1).detach()

    def _support_backward(self, support: _Support, weight: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor,
                          w_ce: float, use_ldam: bool) -> None:
        """Back-propagate w_CE * CE (summed over tasks) chunk by chunk over the packed support pixels."""
        nb, kc = self.nb, self.kc
        c, t, cols = weight.shape
        step = max(256, CHUNK_ELEMENTS // (t * cols))
        flat_w = weight.view(c, t * cols)
        flat_b = bias.reshape(t * cols)
        for lo in range(0, support.count, step):
            hi = min(lo + step, support.count)
            n = hi - lo
            out = torch.addmm(flat_b, support.features[lo:hi], flat_w).view(n, t, cols)
            logits = _transition(out, support.snapshot[lo:hi].unsqueeze(1), gamma, kc, nb, dim=2)  # [n, T, C]
            index = support.target[lo:hi].view(n, 1, 1).expand(n, t, 1)
            if use_ldam:
                own = logits.gather(2, index) - support.margin[lo:hi].view(n, 1, 1)
                logits = logits.scatter(2, index, own)
            probs = torch.softmax(logits, dim=2)
            merged_bg = probs[..., :nb].sum(2)
            own_p = probs.gather(2, index).squeeze(2)
            s = torch.where(support.is_bg[lo:hi].unsqueeze(1), merged_bg, own_p)
            loss = -(support.pix_w[lo:hi].unsqueeze(1) * torch.log(s + EPS)).sum()
            (w_ce * loss).backward()

    def _sgd_step(self, params: list[torch.Tensor], buffers: list[Optional[torch.Tensor]]) -> None:
        """torch.optim.SGD (momentum, dampening 0, weight decay), element-wise on the stacked parameters."""
        m = self.method
        for i, p in enumerate(params):
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            p.grad = None
            d = grad.add(p, alpha=m.weight_decay) if m.weight_decay != 0 else grad
            if m.momentum != 0:
                if buffers[i] is None:
                    buffers[i] = d.clone()
                else:
                    buffers[i].mul_(m.momentum).add_(d)
                d = buffers[i]
            if not m.finetune_base and i < 2:  # W_b, b_b are not optimised
                d = d.clone()
                d[..., :self.nb] = 0
            p.add_(d, alpha=-m.lr)


@register_method("classtrans")
class ClassTrans(Method):
    """ClassTrans (earth-insights, 2024); the options are the official defaults (loss_weights = CE, H, KL, KD)."""

    iterations: int = 130
    lr: float = 9e-5
    momentum: float = 0.9
    weight_decay: float = 5e-4
    loss_weights: tuple[float, float, float, float] = (650.0, 3.0, 16.0, 7.0)
    pi_update_at: tuple[int, ...] = (10, 20, 30, 40, 50, 100)
    ldam: bool = True
    ldam_from: int = 101
    ldam_max_margin: float = 6.0
    class_counts: tuple[float, ...] = ()
    ot_lambda: float = 0.1
    sinkhorn_tol: float = 1e-7
    sinkhorn_max_iter: int = 100000
    transition_std: float = 0.01
    finetune_base: bool = True

    def validate(self) -> None:
        def bad(key: str, rule: str) -> GFSSError:
            return GFSSError(f"option {key!r} of method 'classtrans' must be {rule}, got {getattr(self, key)!r}")

        if self.iterations < 0:
            raise bad("iterations", ">= 0")
        if not self.lr > 0:
            raise bad("lr", "> 0")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "in [0, 1)")
        if self.weight_decay < 0:
            raise bad("weight_decay", ">= 0")
        if any(v < 0 for v in self.loss_weights):
            raise bad("loss_weights", "non-negative")
        if self.ldam_from < 0:
            raise bad("ldam_from", ">= 0")
        if self.ldam_max_margin < 0:
            raise bad("ldam_max_margin", ">= 0")
        if any(not v > 0 for v in self.class_counts):
            raise bad("class_counts", "positive numbers (one per episode class, background first) or empty")
        if not self.ot_lambda > 0:
            raise bad("ot_lambda", "> 0")
        if not self.sinkhorn_tol > 0:
            raise bad("sinkhorn_tol", "> 0")
        if self.sinkhorn_max_iter < 1:
            raise bad("sinkhorn_max_iter", ">= 1")
        if self.transition_std < 0:
            raise bad("transition_std", ">= 0")

    def fit(self, task: Task) -> Fitted:
        check_task_shapes(task)
        check_labels(task.support_labels, task.num_classes, "support labels")
        if self.class_counts and len(self.class_counts) != task.num_classes:
            raise GFSSError(f"option 'class_counts' of method 'classtrans' needs one count per episode class "
                            f"({task.num_classes}: background, {task.num_base_and_bg - 1} base, {task.num_novel} "
                            f"novel), got {len(self.class_counts)}")
        with torch.no_grad():
            size = tuple(task.support_features.shape[-2:])
            sfeat = task.support_features.float()
            base_w, base_b = task.base_weight.float(), task.base_bias.float()
            small = downsample_nearest(task.support_labels, size)  # [N, K, h, w]
            novel_w = transport_novel_weights(base_w, base_b, sfeat, small, self.ot_lambda, self.sinkhorn_tol,
                                              self.sinkhorn_max_iter)
            support = _Support(task, small, sfeat, self.class_counts, self.ldam_max_margin)
        return _Fit(self, task, size, base_w, base_b, novel_w, support)
