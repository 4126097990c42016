"""`diam`: DIaM transductive inference (Hajimiri et al., CVPR 2023), numerically as the official code.

What is computed (gfss-facts §5): every query image is its own task with its own copy of the
classifier (base weights/biases from the frozen segmenter, novel weights initialised to the
L2-normalised mean support feature of each novel class, novel biases 0). Each task minimises

    w_CE * CE_support + w_KL * KL(marginal || pi) + w_H * H + w_KD * KD

with plain SGD (sum of the task losses), and the prediction is the softmax of the adapted
classifier. The class prior pi is estimated by `pi_strategy`: "self" (mean query prediction of the
initial classifier, re-estimated with the current classifier after each step listed in
`pi_update_at`), "uniform", or the oracles "upperbound" (true class proportions of the query) and
"imglvl" (like "self" but with the classes absent from the query's ground truth masked out; not
re-estimated, as in the official code).

How it is computed differs from the official code, not what: the official code re-scores every
support pixel for every task and lets autograd back-propagate through a
[tasks x support pixels x classes] tensor, which dominates time and memory. Here the support
cross-entropy gradient is computed in closed form, streamed one support image at a time: one GEMM
scores the image's valid pixels for all tasks at once, the per-pixel gradient with respect to the
logits is formed in the (small) class dimension, and a second GEMM accumulates it into the weight
gradient of every task. With A the set of classes whose probabilities the target sums (the merged
background {0..B} for a background pixel, {j} for a pixel of novel class j), s = sum_{c in A} p_c
and the pixel loss -w*log(s + 1e-10), the gradient with respect to logit z_c is

    w * p_c * (s - 1[c in A]) / (s + 1e-10).

The query-side losses involve only each task's own query and go through autograd. Parameters are
updated as `param -= lr * grad` (what torch.optim.SGD does without momentum).

Standard-protocol supports may contain base labels 1..B. The official merged-background CE has no
entry for them (it would add a constant with zero gradient and count those pixels in the
average); here they are mapped to background (0) before the CE. Practical-protocol supports
(0 / novel / 255 only) are unaffected, so they match the official computation.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from gfss_bench.errors import GFSSError
from gfss_bench.methods.contract import Method, Task, check_choice, register_method

EPS = 1e-10
PI_STRATEGIES = ("self", "uniform", "upperbound", "imglvl")
IGNORE = 255


def downsample_nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest downsampling of [..., H, W] integer/bool maps to [..., h, w] (long), as F.interpolate does."""
    lead = labels.shape[:-2]
    flat = labels.reshape(1, -1, *labels.shape[-2:]).float()
    small = F.interpolate(flat, size=size, mode="nearest")
    return small.reshape(*lead, *size).long()


def check_labels(labels: torch.Tensor, num_classes: int, what: str) -> None:
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        found = sorted(set(labels[bad].unique().tolist()))[:5]
        raise GFSSError(f"{what} contain labels {found} outside the episode label space "
                        f"0..{num_classes - 1} (and 255 = ignore)")


def check_task_shapes(task: Task) -> None:
    sf, qf = task.support_features, task.query_features
    if sf.dim() != 5 or qf.dim() != 4:
        raise GFSSError(f"support_features must be [N, K, C, h, w] and query_features [Q, C, h, w]; "
                        f"got {tuple(sf.shape)} and {tuple(qf.shape)}")
    c = task.base_weight.shape[0]
    if sf.shape[2] != c or qf.shape[1] != c or sf.shape[-2:] != qf.shape[-2:]:
        raise GFSSError(f"feature shapes disagree: base_weight {tuple(task.base_weight.shape)}, "
                        f"support {tuple(sf.shape)}, query {tuple(qf.shape)}")
    if tuple(task.support_labels.shape[:2]) != tuple(sf.shape[:2]):
        raise GFSSError(f"support_labels {tuple(task.support_labels.shape)} do not match support_features "
                        f"{tuple(sf.shape)} in [N, K]")
    if task.query_valid.shape[0] != qf.shape[0]:
        raise GFSSError(f"query_valid has {task.query_valid.shape[0]} maps for {qf.shape[0]} queries")


def novel_prototypes(support_features: torch.Tensor, small_labels: torch.Tensor, num_base_and_bg: int) -> torch.Tensor:
    """L2-normalised mean support feature of each novel class, [C, N] (DIaM's initialisation).

    `small_labels` [N, K, h, w] are the support labels at feature resolution. The mean runs over every
    support pixel (of every image) labelled B+1+j; a class without pixels gets a zero vector.
    """
    n, k, c = support_features.shape[:3]
    feats = support_features.reshape(n * k, c, -1)  # [NK, C, hw]
    onehot = (small_labels.reshape(n * k, -1, 1) ==
              torch.arange(num_base_and_bg, num_base_and_bg + n, device=small_labels.device)).float()
    sums = torch.einsum("icp,ipj->cj", feats, onehot)
    counts = onehot.sum(dim=(0, 1))
    protos = sums / (counts + EPS)
    return protos / (protos.norm(dim=0, keepdim=True) + EPS)


class _Support:
    """Valid support pixels of each image, their targets and per-pixel CE weights (precomputed once)."""

    def __init__(self, task: Task, small_labels: torch.Tensor, ce_weight: float):
        nb, kc = task.num_base_and_bg, task.num_classes
        n, k, c = task.support_features.shape[:3]
        feats = task.support_features.reshape(n * k, c, -1)
        labels = small_labels.reshape(n * k, -1).clone()
        labels[(labels >= 1) & (labels < nb)] = 0  # base labels -> background (see module docstring)
        valid = labels != IGNORE
        n_valid = int(valid.sum())
        bg_weight = 0.01 if k == 1 else 0.15
        self.images = []
        for i in range(n * k):
            keep = valid[i]
            count = int(keep.sum())
            if count == 0:
                continue
            lab = labels[i]
            idx = None
            if count < lab.numel():
                idx = keep.nonzero().squeeze(1)
                lab = lab[idx]
            is_bg = lab == 0
            is_novel = lab >= nb
            pix_w = torch.where(is_bg, bg_weight, 1.0) * (ce_weight / n_valid)
            target = torch.where(is_novel, lab, torch.zeros_like(lab))  # gather index (unused for bg)
            self.images.append((feats[i], idx, is_bg, is_novel.float(), pix_w, target))
        self.num_classes = kc
        self.nb = nb

    def features(self, i: int) -> torch.Tensor:
        f, idx = self.images[i][0], self.images[i][1]
        return f if idx is None else f.index_select(1, idx)

    def base_logits(self, weight: torch.Tensor, bias: torch.Tensor) -> list[torch.Tensor]:
        """Frozen base logits [n_i, B+1] per image (used when the base classifier is not trained)."""
        return [torch.addmm(bias, self.features(i).t(), weight) for i in range(len(self.images))]

    def grad(self, weight: torch.Tensor, bias: torch.Tensor, train_base: bool,
             fixed_base: Optional[list[torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form gradient of the weighted support CE, summed over tasks.

        weight [C, T, B+1+N], bias [T, B+1+N]; returns gradients of the same shapes (only the novel
        columns are non-zero when `train_base` is False).
        """
        c, t, kc = weight.shape
        nb = self.nb
        grad_w = torch.zeros_like(weight)
        grad_b = torch.zeros_like(bias)
        if train_base:
            w_flat, b_flat = weight.view(c, t * kc), bias.view(t * kc)
            gw_flat = grad_w.view(c, t * kc)
        else:
            w_flat = weight[:, :, nb:].reshape(c, t * (kc - nb))
            b_flat = bias[:, nb:].reshape(t * (kc - nb))
            gw_nov = torch.zeros(c, t * (kc - nb), dtype=weight.dtype, device=weight.device)
        for i, (_, _, is_bg, is_novel, pix_w, target) in enumerate(self.images):
            feats = self.features(i)  # [C, n]
            n = feats.shape[1]
            if train_base:
                probs = torch.softmax(torch.addmm(b_flat, feats.t(), w_flat).view(n, t, kc), dim=-1)
            else:
                novel = torch.addmm(b_flat, feats.t(), w_flat).view(n, t, kc - nb)
                logits = torch.cat([fixed_base[i].unsqueeze(1).expand(n, t, nb), novel], dim=-1)
                probs = torch.softmax(logits, dim=-1)
            merged_bg = probs[..., :nb].sum(-1)  # [n, t]
            own = probs.gather(-1, target.view(n, 1, 1).expand(n, t, 1)).squeeze(-1)
            s = torch.where(is_bg.unsqueeze(1), merged_bg, own)
            coef = pix_w.unsqueeze(1) / (s + EPS)
            a = coef * s
            # probs becomes the gradient w.r.t. the logits: p_c * (a - coef * 1[c in A])
            probs[..., :nb].mul_((a - coef * is_bg.unsqueeze(1)).unsqueeze(-1))
            probs[..., nb:].mul_(a.unsqueeze(-1))
            probs.scatter_add_(-1, target.view(n, 1, 1).expand(n, t, 1), (-a * is_novel.unsqueeze(1)).unsqueeze(-1))
            if train_base:
                g = probs.view(n, t * kc)
                gw_flat.addmm_(feats, g)
                grad_b.view(-1).add_(g.sum(0))
            else:
                g = probs[..., nb:].reshape(n, t * (kc - nb))
                gw_nov.addmm_(feats, g)
                grad_b[:, nb:].add_(g.sum(0).view(t, kc - nb))
        if not train_base:
            grad_w[:, :, nb:] = gw_nov.view(c, t, kc - nb)
        return grad_w, grad_b


def _query_probs(weight: torch.Tensor, bias: torch.Tensor, feats_q: torch.Tensor) -> torch.Tensor:
    """weight [C, T, K], bias [T, K], feats_q [T, C, P] -> probabilities [T, K, P]."""
    logits = torch.bmm(weight.permute(1, 2, 0), feats_q) + bias.unsqueeze(-1)
    return torch.softmax(logits, dim=1)


def _valid_mean_prob(probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """probs [T, K, P], valid [T, P] float -> [T, K]."""
    return (probs * valid.unsqueeze(1)).sum(-1) / (valid.sum(-1, keepdim=True) + EPS)


@register_method("diam")
class DIaM(Method):
    """DIaM (CVPR 2023); the options are the official defaults (loss_weights = CE, KL, H, KD)."""

    iterations: int = 100
    lr: float = 0.00125
    loss_weights: tuple[float, float, float, float] = (100.0, 1.0, 1.0, 100.0)
    pi_strategy: str = "self"
    pi_update_at: tuple[int, ...] = (10,)
    finetune_base: bool = True

    @property
    def is_oracle(self) -> bool:
        return self.pi_strategy in ("upperbound", "imglvl")

    def validate(self) -> None:
        check_choice(self.name, "pi_strategy", self.pi_strategy, PI_STRATEGIES)
        if self.iterations < 0:
            raise GFSSError(f"option 'iterations' of method 'diam' must be >= 0, got {self.iterations}")
        if not self.lr > 0:
            raise GFSSError(f"option 'lr' of method 'diam' must be > 0, got {self.lr}")
        if any(w < 0 for w in self.loss_weights):
            raise GFSSError(f"option 'loss_weights' of method 'diam' must be non-negative, got {self.loss_weights}")

    def _true_pi(self, task: Task, valid: torch.Tensor, size) -> torch.Tensor:
        if task.query_labels is None:
            raise GFSSError(f"diam with pi_strategy={self.pi_strategy!r} is an oracle setting and needs the "
                            f"query labels (task.query_labels is None)")
        check_labels(task.query_labels, task.num_classes, "query labels")
        small = downsample_nearest(task.query_labels, size).flatten(1)  # [T, P]
        small = torch.where(small == IGNORE, torch.zeros_like(small), small)
        onehot = F.one_hot(small, task.num_classes).float().transpose(1, 2)  # [T, K, P]
        return _valid_mean_prob(onehot, valid)

    def _estimate_pi(self, weight, bias, feats_q, valid, true_pi=None) -> torch.Tensor:
        with torch.no_grad():
            logits = torch.bmm(weight.permute(1, 2, 0), feats_q) + bias.unsqueeze(-1)
            if true_pi is not None:
                logits = logits.masked_fill((true_pi == 0).unsqueeze(-1), float("-inf"))
            return _valid_mean_prob(torch.softmax(logits, dim=1), valid)

    def predict(self, task: Task) -> torch.Tensor:
        check_task_shapes(task)
        check_labels(task.support_labels, task.num_classes, "support labels")
        w_ce, w_kl, w_h, w_kd = (float(w) for w in self.loss_weights)
        nb, kc = task.num_base_and_bg, task.num_classes
        base_w = task.base_weight.float()
        base_b = task.base_bias.float()
        sfeat = task.support_features.float()
        q, c, h, w = task.query_features.shape
        size = (h, w)
        feats_q = task.query_features.float().reshape(q, c, h * w)
        valid_q = downsample_nearest(task.query_valid, size).reshape(q, h * w).float()

        small_s = downsample_nearest(task.support_labels, size)  # [N, K, h, w]
        protos = novel_prototypes(sfeat, small_s, nb)
        weight = torch.cat([base_w.unsqueeze(1).expand(c, q, nb), protos.unsqueeze(1).expand(c, q, kc - nb)],
                           dim=2).contiguous()  # [C, T, K]
        bias = torch.cat([base_b.unsqueeze(0).expand(q, nb), base_b.new_zeros(q, kc - nb)], dim=1).contiguous()

        true_pi = self._true_pi(task, valid_q, size) if self.is_oracle else None
        if self.pi_strategy == "uniform":
            pi = torch.full((q, kc), 1.0 / kc, device=weight.device)
        elif self.pi_strategy == "upperbound":
            pi = true_pi
        else:
            pi = self._estimate_pi(weight, bias, feats_q, valid_q, true_pi if self.pi_strategy == "imglvl" else None)

        with torch.no_grad():
            old = torch.softmax(torch.einsum("tcp,ck->tkp", feats_q, base_w) + base_b.view(1, -1, 1), dim=1)
        support = _Support(task, small_s, w_ce) if w_ce != 0 else None
        fixed_base = None
        if support is not None and not self.finetune_base:
            fixed_base = support.base_logits(base_w, base_b)
        n_valid_q = valid_q.sum(-1) + EPS  # [T]
        update_at = set(self.pi_update_at)

        for it in range(self.iterations):
            w_leaf = weight.detach().requires_grad_(True)
            b_leaf = bias.detach().requires_grad_(True)
            probs = _query_probs(w_leaf, b_leaf, feats_q)  # [T, K, P]
            loss = probs.new_zeros(())
            if w_h != 0:
                ent = -(probs * torch.log(probs + EPS)).sum(1)
                loss = loss + w_h * ((ent * valid_q).sum(-1) / n_valid_q).sum()
            if w_kl != 0:
                marginal = (probs * valid_q.unsqueeze(1)).sum(-1) / n_valid_q.unsqueeze(1)
                loss = loss + w_kl * (marginal * torch.log(EPS + marginal / (pi + EPS))).sum()
            if w_kd != 0:
                folded = torch.cat([probs[:, :1] + probs[:, nb:].sum(1, keepdim=True), probs[:, 1:nb]], dim=1)
                kd = (folded * torch.log(EPS + folded / (EPS + old))).sum(1)
                loss = loss + w_kd * ((kd * valid_q).sum(-1) / n_valid_q).sum()
            if loss.requires_grad:
                grad_w, grad_b = torch.autograd.grad(loss, [w_leaf, b_leaf])
            else:
                grad_w, grad_b = torch.zeros_like(weight), torch.zeros_like(bias)
            with torch.no_grad():
                if support is not None:
                    sw, sb = support.grad(weight, bias, self.finetune_base, fixed_base)
                    grad_w += sw
                    grad_b += sb
                if self.finetune_base:
                    weight.add_(grad_w, alpha=-self.lr)
                    bias.add_(grad_b, alpha=-self.lr)
                else:
                    weight[:, :, nb:].add_(grad_w[:, :, nb:], alpha=-self.lr)
                    bias[:, nb:].add_(grad_b[:, nb:], alpha=-self.lr)
            if (it + 1) in update_at and self.pi_strategy == "self" and w_kl != 0:
                pi = self._estimate_pi(weight, bias, feats_q, valid_q)

        with torch.no_grad():
            return _query_probs(weight, bias, feats_q).reshape(q, kc, h, w)
