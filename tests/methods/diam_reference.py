"""Parity reference for DIaM: a plain autograd implementation laid out like the official code.

It keeps one copy of the classifier per query (task), scores support and query features for every
task with one einsum, builds the four losses of docs/protocol.md §5 on full probability tensors, sums
the per-task losses and lets `torch.optim.SGD` + `backward()` do the update. It is slow and
memory-hungry on purpose (it materialises [tasks x support pixels x classes]); `gfss_bench`'s
`diam` method must reproduce its probabilities.

Support labels are used as given: a base label (1..B) in a support mask is one-hot encoded like
any class, exactly as the official code does (the merged-background probability has no entry for
it). Callers that compare with gfss_bench on standard-protocol supports map base labels to 0 first.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

EPS = 1e-10


def _nearest(t: torch.Tensor, size) -> torch.Tensor:
    """[a, b, H, W] (any dtype) -> float [a, b, h, w], nearest interpolation."""
    return F.interpolate(t.float(), size=size, mode="nearest")


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """long [a, b, h, w] -> float [a, b, num_classes, h, w]; ignore (255) becomes class 0 (masked later)."""
    lab = labels.clone()
    lab[lab == 255] = 0
    out = torch.zeros(*lab.shape[:2], num_classes, *lab.shape[2:], device=labels.device)
    out.scatter_(2, lab.unsqueeze(2), 1.0)
    return out


def _masked_mean(t: torch.Tensor, mask: torch.Tensor, dims) -> torch.Tensor:
    return (mask * t).sum(dim=dims) / (mask.sum(dim=dims) + EPS)


class ReferenceDIaM:
    def __init__(self, base_weight: torch.Tensor, base_bias: torch.Tensor, num_novel: int, num_tasks: int,
                 iterations: int = 100, lr: float = 0.00125,
                 loss_weights: Sequence[float] = (100.0, 1.0, 1.0, 100.0), pi_strategy: str = "self",
                 pi_update_at: Sequence[int] = (10,), finetune_base: bool = True):
        self.nb = base_weight.shape[1]  # B+1
        self.nn = num_novel
        self.nc = self.nb + self.nn
        self.tasks = num_tasks
        self.frozen_w = base_weight.clone()
        self.frozen_b = base_bias.clone()
        self.w_base = base_weight.unsqueeze(0).repeat(num_tasks, 1, 1)  # [T, C, B+1]
        self.b_base = base_bias.unsqueeze(0).repeat(num_tasks, 1)  # [T, B+1]
        self.w_novel: Optional[torch.Tensor] = None
        self.b_novel: Optional[torch.Tensor] = None
        self.pi: Optional[torch.Tensor] = None
        self.true_pi: Optional[torch.Tensor] = None
        self.iterations = iterations
        self.lr = lr
        self.loss_weights = tuple(loss_weights)
        self.pi_strategy = pi_strategy
        self.pi_update_at = tuple(pi_update_at)
        self.finetune_base = finetune_base

    # --- initialisation -------------------------------------------------------------------
    def init_prototypes(self, feat_s: torch.Tensor, lab_s: torch.Tensor) -> None:
        """feat_s [N, K, C, h, w], lab_s [N, K, H, W]."""
        small = _nearest(lab_s, feat_s.shape[-2:]).long().unsqueeze(2)  # [N, K, 1, h, w]
        protos = torch.zeros(feat_s.shape[2], self.nn, device=feat_s.device)
        for j in range(self.nn):
            mask = (small == self.nb + j)
            protos[:, j] = _masked_mean(feat_s, mask, (0, 1, 3, 4))
        protos = protos / (protos.norm(dim=0, keepdim=True) + EPS)
        self.w_novel = protos.unsqueeze(0).repeat(self.tasks, 1, 1)  # [T, C, N]
        self.b_novel = torch.zeros(self.tasks, self.nn, device=feat_s.device)

    # --- scoring --------------------------------------------------------------------------
    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [1 or T, o, C, h, w] -> [T, o, B+1+N, h, w]."""
        base = torch.einsum("tochw,tcK->toKhw", feats, self.w_base) + self.b_base[:, None, :, None, None]
        novel = torch.einsum("tochw,tcK->toKhw", feats, self.w_novel) + self.b_novel[:, None, :, None, None]
        return torch.cat([base, novel], dim=2)

    def frozen_probs(self, feats_q: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("tochw,cK->toKhw", feats_q, self.frozen_w) + self.frozen_b.view(1, 1, -1, 1, 1)
        return torch.softmax(z, dim=2)

    # --- class prior ----------------------------------------------------------------------
    def compute_pi(self, feats_q: torch.Tensor, valid_q: torch.Tensor, labels_q: Optional[torch.Tensor] = None):
        """feats_q [T, 1, C, h, w]; valid_q [T, 1, H', W'] (any size); labels_q [T, 1, H, W]."""
        size = feats_q.shape[-2:]
        valid = _nearest(valid_q, size).long().unsqueeze(2)  # [T, 1, 1, h, w]
        if labels_q is not None:
            small = _nearest(labels_q, size).long()
            self.true_pi = _masked_mean(_one_hot(small, self.nc), valid, (1, 3, 4))
        if self.pi_strategy == "upperbound":
            self.pi = self.true_pi
        elif self.pi_strategy == "uniform":
            self.pi = torch.full((self.tasks, self.nc), 1.0 / self.nc, device=feats_q.device)
        elif self.pi_strategy in ("self", "imglvl"):
            with torch.no_grad():
                z = self.logits(feats_q)
                if self.pi_strategy == "imglvl":
                    t_idx, c_idx = torch.where(self.true_pi == 0)
                    z[t_idx, :, c_idx] = -torch.inf
                p = torch.softmax(z, dim=2)
            self.pi = _masked_mean(p, valid, (1, 3, 4))
        else:
            raise ValueError(self.pi_strategy)

    # --- losses ---------------------------------------------------------------------------
    def support_ce(self, p_s: torch.Tensor, valid_s: torch.Tensor, onehot_s: torch.Tensor, shots: int):
        merged = p_s.clone()
        merged[:, :, 0] += p_s[:, :, 1:self.nb].sum(dim=2)
        merged[:, :, 1:self.nb] = 0.0
        class_w = torch.ones(1, 1, self.nc, 1, 1, device=p_s.device)
        class_w[:, :, 0] = 0.01 if shots == 1 else 0.15
        ce = (-(onehot_s * torch.log(merged + EPS)) * class_w).sum(dim=2)  # [T, NK, h, w]
        return _masked_mean(ce, valid_s, (1, 2, 3))  # [T]

    def distillation(self, p_q: torch.Tensor, q_old: torch.Tensor, valid_q: torch.Tensor):
        folded = p_q.clone()[:, :, :self.nb]
        folded[:, :, 0] += p_q[:, :, self.nb:].sum(dim=2)
        kd = (folded * torch.log(EPS + folded / (EPS + q_old))).sum(dim=2)
        return _masked_mean(kd, valid_q, (1, 2, 3))

    def query_terms(self, p_q: torch.Tensor, valid_q: torch.Tensor):
        ent = -(p_q * torch.log(p_q + EPS)).sum(dim=2)
        ent = _masked_mean(ent, valid_q, (1, 2, 3))
        marginal = _masked_mean(p_q, valid_q.unsqueeze(2), (1, 3, 4))
        kl = (marginal * torch.log(EPS + marginal / (self.pi + EPS))).sum(dim=1)
        return kl, ent

    # --- optimisation ---------------------------------------------------------------------
    def optimize(self, feat_s: torch.Tensor, lab_s: torch.Tensor, feats_q: torch.Tensor, valid_q: torch.Tensor):
        w_ce, w_kl, w_h, w_kd = self.loss_weights
        shots = feat_s.shape[1]
        params = [self.w_novel, self.b_novel]
        if self.finetune_base:
            params += [self.w_base, self.b_base]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=self.lr)

        fs = feat_s.flatten(0, 1).unsqueeze(0)  # [1, NK, C, h, w]
        ls = _nearest(lab_s.flatten(0, 1).unsqueeze(0), fs.shape[-2:]).long()  # [1, NK, h, w]
        onehot_s = _one_hot(ls, self.nc)
        valid_s = (ls != 255).float()
        vq = _nearest(valid_q, feats_q.shape[-2:]).long()  # [T, 1, h, w]

        for it in range(self.iterations):
            p_s = torch.softmax(self.logits(fs), dim=2)
            p_q = torch.softmax(self.logits(feats_q), dim=2)
            kd = self.distillation(p_q, self.frozen_probs(feats_q), vq)
            kl, ent = self.query_terms(p_q, vq)
            ce = self.support_ce(p_s, valid_s, onehot_s, shots)
            loss = w_ce * ce + w_kl * kl + w_h * ent + w_kd * kd
            opt.zero_grad()
            loss.sum(0).backward()
            opt.step()
            if (it + 1) in self.pi_update_at and self.pi_strategy == "self" and w_kl != 0:
                self.compute_pi(feats_q, vq)


def reference_diam(task, iterations: int = 100, lr: float = 0.00125,
                   loss_weights: Sequence[float] = (100.0, 1.0, 1.0, 100.0), pi_strategy: str = "self",
                   pi_update_at: Sequence[int] = (10,), finetune_base: bool = True) -> torch.Tensor:
    """Run the reference on a gfss_bench Task; returns probabilities [Q, B+1+N, h, w]."""
    q = task.query_features.shape[0]
    ref = ReferenceDIaM(task.base_weight, task.base_bias, task.num_novel, q, iterations=iterations, lr=lr,
                        loss_weights=loss_weights, pi_strategy=pi_strategy, pi_update_at=pi_update_at,
                        finetune_base=finetune_base)
    feats_q = task.query_features.unsqueeze(1)
    valid_q = task.query_valid.unsqueeze(1)
    labels_q = task.query_labels.unsqueeze(1) if task.query_labels is not None else None
    ref.init_prototypes(task.support_features, task.support_labels)
    ref.compute_pi(feats_q, valid_q, labels_q)
    ref.optimize(task.support_features, task.support_labels, feats_q, valid_q)
    with torch.no_grad():
        return torch.softmax(ref.logits(feats_q), dim=2).squeeze(1)
