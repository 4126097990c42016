"""`diam`: DIaM transductive inference (Hajimiri et al., CVPR 2023), numerically as the official code.

What is computed (docs/protocol.md §5): every query image is its own task with its own copy of the
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
cross-entropy gradient is computed in closed form, streamed over chunks of the valid support pixels
(packed once): one GEMM scores a chunk for all tasks at once, the per-pixel gradient
with respect to the logits is formed in the (small) class dimension, and a second GEMM accumulates
it into the weight gradient of every task. With A the set of classes whose probabilities the
target sums (the merged background {0..B} for a background pixel, {j} for a pixel of novel class
j), s = sum_{c in A} p_c and the pixel loss -w*log(s + 1e-10), the gradient with respect to logit
z_c is

    w * p_c * (s - 1[c in A]) / (s + 1e-10).

The query-side losses involve only each task's own query; their gradient is closed-form too
(`_query_grad`), so no autograd graph is built. Parameters are updated as `param -= lr * grad`
(what torch.optim.SGD does without momentum). Everything stays on the input tensors' device.

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
from gfss_bench.methods.common import EPS, IGNORE, check_labels, check_task_shapes, downsample_nearest, novel_prototypes
from gfss_bench.methods.contract import Method, Task, check_choice, register_method

PI_STRATEGIES = ("self", "uniform", "upperbound", "imglvl")


class _Support:
    """The valid support pixels, packed once ([C, P_valid]), with their targets and CE weights."""

    CHUNK_ELEMENTS = 1 << 22  # logits per chunk (pixels x tasks x classes): 16 MiB in float32

    def __init__(self, task: Task, small_labels: torch.Tensor, ce_weight: float,
                 features: Optional[torch.Tensor] = None):
        nb = task.num_base_and_bg
        features = task.support_features if features is None else features
        n, k, c = features.shape[:3]
        feats = features.reshape(n * k, c, -1)
        labels = small_labels.reshape(n * k, -1).clone()
        labels[(labels >= 1) & (labels < nb)] = 0  # base labels -> background (see module docstring)
        valid = labels != IGNORE
        counts = valid.sum(1).tolist()
        n_valid = sum(counts)
        # [C, P_valid]: one copy of the valid support features, so that chunks are plain GEMM operands
        self.features = torch.empty(c, n_valid, dtype=feats.dtype, device=feats.device)
        offset = 0
        for i, count in enumerate(counts):
            if count == feats.shape[2]:
                self.features[:, offset:offset + count].copy_(feats[i])
            elif count:
                self.features[:, offset:offset + count] = feats[i].index_select(1, valid[i].nonzero().squeeze(1))
            offset += count
        lab = labels[valid]  # same (image, pixel) order as the packed features
        self.is_bg = lab == 0
        self.is_novel = (lab >= nb).to(feats.dtype)
        bg_weight = 0.01 if k == 1 else 0.15
        self.pix_w = torch.where(self.is_bg, bg_weight, 1.0).to(feats.dtype) * (ce_weight / max(n_valid, 1))
        self.target = torch.where(lab >= nb, lab, torch.zeros_like(lab))  # gather index (unused for bg)
        self.nb = nb

    def base_logits(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Frozen base logits [P_valid, B+1] (used when the base classifier is not trained)."""
        return torch.addmm(bias, self.features.t(), weight)

    def grad(self, weight: torch.Tensor, bias: torch.Tensor, train_base: bool,
             fixed_base: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form gradient of the weighted support CE, summed over tasks.

        weight [C, T, B+1+N], bias [T, B+1+N]; returns gradients of the same shapes (only the novel
        columns are non-zero when `train_base` is False).
        """
        c, t, kc = weight.shape
        nb = self.nb
        grad_w = torch.zeros_like(weight)
        grad_b = torch.zeros_like(bias)
        total = self.features.shape[1]
        if total == 0:
            return grad_w, grad_b
        cols = kc if train_base else kc - nb
        w_flat = weight.view(c, t * kc) if train_base else weight[:, :, nb:].reshape(c, t * cols)
        b_flat = bias.view(t * kc) if train_base else bias[:, nb:].reshape(t * cols)
        if train_base:  # accumulate in place
            gw, gb = grad_w.view(c, t * kc), grad_b.view(t * kc)
        else:
            gw = torch.zeros(c, t * cols, dtype=weight.dtype, device=weight.device)
            gb = torch.zeros(t * cols, dtype=weight.dtype, device=weight.device)
        bg_indicator = torch.zeros(kc, dtype=weight.dtype, device=weight.device)
        bg_indicator[:nb] = 1
        step = max(256, self.CHUNK_ELEMENTS // (t * kc))
        ones = torch.ones(min(step, total), dtype=weight.dtype, device=weight.device)
        for lo in range(0, total, step):
            hi = min(lo + step, total)
            n = hi - lo
            feats = self.features[:, lo:hi].t()  # [n, C]
            target = self.target[lo:hi].view(n, 1, 1).expand(n, t, 1)
            is_bg = self.is_bg[lo:hi].unsqueeze(1)
            if train_base:
                logits = torch.addmm(b_flat, feats, w_flat).view(n, t, kc)
            else:
                novel = torch.addmm(b_flat, feats, w_flat).view(n, t, cols)
                logits = torch.cat([fixed_base[lo:hi].unsqueeze(1).expand(n, t, nb), novel], dim=-1)
            probs = torch.softmax(logits, dim=-1)
            del logits
            merged_bg = torch.mv(probs.view(n * t, kc), bg_indicator).view(n, t)  # sum of p_0..p_B
            own = probs.gather(-1, target).squeeze(-1)
            s = torch.where(is_bg, merged_bg, own)
            coef = self.pix_w[lo:hi].unsqueeze(1) / (s + EPS)
            a = coef * s
            # probs becomes the gradient w.r.t. the logits: p_c * (a - coef * 1[c in A])
            probs[..., :nb].mul_((a - coef * is_bg).unsqueeze(-1))
            probs[..., nb:].mul_(a.unsqueeze(-1))
            probs.scatter_add_(-1, target, (-a * self.is_novel[lo:hi].unsqueeze(1)).unsqueeze(-1))
            g = probs.view(n, t * kc) if train_base else probs[..., nb:].reshape(n, t * cols)
            gw.addmm_(feats.t(), g)
            gb.addmv_(g.t(), ones[:n])
        if not train_base:
            grad_w[:, :, nb:] = gw.view(c, t, cols)
            grad_b[:, nb:] = gb.view(t, cols)
        return grad_w, grad_b


def _query_probs(weight: torch.Tensor, bias: torch.Tensor, feats_q: torch.Tensor) -> torch.Tensor:
    """weight [C, T, K], bias [T, K], feats_q [T, C, P] -> probabilities [T, K, P]."""
    logits = torch.baddbmm(bias.unsqueeze(-1), weight.permute(1, 2, 0), feats_q)
    return torch.softmax(logits, dim=1)


def _query_grad(probs: torch.Tensor, feats_q: torch.Tensor, valid_w: torch.Tensor, old: torch.Tensor,
                pi: torch.Tensor, w_kl: float, w_h: float, w_kd: float, nb: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form gradient of the query losses (KL to pi, entropy, distillation), summed over tasks.

    probs [T, K, P] (current query probabilities), feats_q [T, C, P], valid_w [T, 1, P] = valid / (#valid
    + 1e-10), old [T, B+1, P] frozen base probabilities, pi [T, K]. All three losses are valid-pixel means
    (the KL through the marginal), so dL/dp = valid_w * inner with
      entropy      inner_c = -w_H  * (log(p_c + e) + p_c / (p_c + e))
      KL           inner_c =  w_KL * (log(e + r_c) + r_c / (e + r_c)),  r = marginal / (pi + e)
      distillation inner_c =  w_KD * (log(e + u_c') + u_c' / (e + u_c')),  u = folded p / (e + old),
                   c' = c for c <= B, 0 for novel c (novel probabilities are folded into background);
    and dL/dz_c = p_c * (g_c - sum_k p_k g_k). Returns (dW [T, C, K], db [T, K]).
    """
    if w_h != 0:
        inner = torch.log(probs + EPS).add_(probs / (probs + EPS)).mul_(-w_h)
    else:
        inner = torch.zeros_like(probs)
    if w_kl != 0:
        marginal = torch.bmm(probs, valid_w.transpose(1, 2)).squeeze(-1)  # [T, K]
        r = marginal / (pi + EPS)
        inner.add_((torch.log(r + EPS) + r / (r + EPS)).mul_(w_kl).unsqueeze(-1))
    if w_kd != 0:
        folded = probs[:, :nb].clone()
        folded[:, 0] += probs[:, nb:].sum(1)
        u = folded.div_(old + EPS)
        dk = torch.log(u + EPS).add_(u / (u + EPS)).mul_(w_kd)
        inner[:, :nb] += dk
        inner[:, nb:] += dk[:, :1]
    inner.sub_((probs * inner).sum(1, keepdim=True)).mul_(probs).mul_(valid_w)  # dL/dz
    return torch.bmm(feats_q, inner.transpose(1, 2)), inner.sum(-1)


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
        with torch.no_grad():
            return self._predict(task)

    def _predict(self, task: Task) -> torch.Tensor:
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
            # imglvl on a query without valid pixels masks every class: the official code gets NaN there
            pi = torch.nan_to_num(pi, nan=0.0)

        old = torch.softmax(torch.matmul(base_w.t(), feats_q) + base_b.view(1, -1, 1), dim=1)  # frozen, [T, B+1, P]
        support = _Support(task, small_s, w_ce, sfeat) if w_ce != 0 else None
        fixed_base = None
        if support is not None and not self.finetune_base:
            fixed_base = support.base_logits(base_w, base_b)
        valid_w = (valid_q / (valid_q.sum(-1, keepdim=True) + EPS)).unsqueeze(1)  # [T, 1, P]
        update_at = set(self.pi_update_at)

        for it in range(self.iterations):
            grad_w, grad_b = _query_grad(_query_probs(weight, bias, feats_q), feats_q, valid_w, old, pi,
                                         w_kl, w_h, w_kd, nb)
            grad_w = grad_w.permute(1, 0, 2)  # [C, T, K]
            if support is not None:
                sw, sb = support.grad(weight, bias, self.finetune_base, fixed_base)
                grad_w = grad_w + sw
                grad_b = grad_b + sb
            if self.finetune_base:
                weight.add_(grad_w, alpha=-self.lr)
                bias.add_(grad_b, alpha=-self.lr)
            else:
                weight[:, :, nb:].add_(grad_w[:, :, nb:], alpha=-self.lr)
                bias[:, nb:].add_(grad_b[:, nb:], alpha=-self.lr)
            if (it + 1) in update_at and self.pi_strategy == "self" and w_kl != 0:
                pi = self._estimate_pi(weight, bias, feats_q, valid_q)

        return _query_probs(weight, bias, feats_q).reshape(q, kc, h, w)
