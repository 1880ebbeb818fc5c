"""SAEBench's L1 probe solved to optimality: `--l1-solver converged`.

SAEBench ranks an SAE's latents for class c by the weights of a C-output L1 probe (C = the task's classes)
trained with 50 Adam epochs from a random start (`l1probe.train_sparse_probe`, `--l1-solver saebench`). That
run stops far from the optimum of its convex objective, so its seed decides which latents come first on SAEs
whose class latents are not clean. This module minimizes the same objective until the optimality conditions
hold, from a fixed start: no seed, the same weights every time.

The objective Adam minimizes (torch's BCEWithLogitsLoss averages over all N x C entries; Adam's weight_decay
wd adds wd * theta to every gradient, the gradient of wd / 2 |theta|^2 over weights and biases):

    F(W, b) = 1/(C N) sum_{n,c} l_nc + l1/C sum_c |w_c|_1 + wd/2 (|W|^2 + |b|^2)
    l_nc    = pw_c y_nc softplus(-z_nc) + (1 - y_nc) softplus(z_nc),   z_nc = x_n . w_c + b_c

with pw_c = n_neg / n_pos (`probes.pos_weights`). It separates over classes: F = 1/C sum_c G_c with

    G_c(w, b) = 1/N sum_n l_nc + l1 |w|_1 + mu/2 (|w|^2 + b^2),   mu = C wd.

G_c is strongly convex for wd > 0, so its minimizer is unique. `solve_l1_probe` runs FISTA on all C classes
at once (a step size, a momentum and a restart per class; each step tries 0.9 x the last step's curvature
bound and backtracks on each class's own sufficient-decrease test, computed as a Bregman term so that it
stays exact near the optimum, where differences of objective values are rounding noise), and stops when the
KKT conditions hold to `tol`, the largest over classes and coordinates of

    |g_i + l1 sign(w_i)|   where w_i != 0,    max(|g_i| - l1, 0)   where w_i = 0,    |g_b|   (the bias),

g the gradient of G_c's smooth part. Latents that never fire on the train rows have g_i = 0 and so w_i = 0 at
the optimum: the solve runs on the firing latents only (at most the number of active entries, however wide
the SAE), in float64, with the activations as a sparse CSR matrix: memory is the active entries plus a few
(firing latents x C) arrays.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from actstore.score.probes import pos_weights
from actstore.score.sparse import csr


class L1Solution(NamedTuple):
    weight: torch.Tensor
    """(m, C) float32 probe weights (0 for latents that never fire on the train rows)"""
    bias: torch.Tensor
    """(C,) float32"""
    kkt: float
    """the largest KKT violation at the solution (see the module docstring)"""
    iterations: int
    converged: bool
    """kkt <= tol within max_iter iterations"""


class _Problem:
    """The C classes' smooth parts on sparse rows: X (N, m') CSR float64, targets y (N, C), weights s."""

    def __init__(self, offsets: torch.Tensor, index: torch.Tensor, value: torch.Tensor, m: int,
                 labels: torch.Tensor, n_classes: int, weight_decay: float):
        n = len(offsets) - 1
        rows = torch.repeat_interleave(torch.arange(n, device=index.device), offsets.diff())
        self.x = csr(offsets, index, value, (n, m))  # (N, m')
        order = torch.argsort(index * n + rows)
        counts = torch.bincount(index, minlength=m)
        t_offsets = torch.zeros(m + 1, dtype=torch.int64, device=index.device)
        t_offsets[1:] = counts.cumsum(0)
        self.xt = csr(t_offsets, rows[order], value[order], (m, n))  # (m', N)
        self.y = torch.nn.functional.one_hot(labels, n_classes).double()  # (N, C)
        pw = pos_weights(labels, n_classes).double().to(index.device)  # (C,)
        self.s = torch.where(self.y > 0, pw, torch.ones_like(self.y))  # (N, C) per-entry loss weights
        self.n, self.mu = n, n_classes * weight_decay

    def logits(self, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.x @ w + b  # (N, C)

    def smooth(self, z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(C,) each G_c's smooth part, given the logits z = X w + b."""
        loss = self.s * torch.where(self.y > 0, torch.nn.functional.softplus(-z), torch.nn.functional.softplus(z))
        return loss.sum(0) / self.n + self.mu / 2 * (w.square().sum(0) + b.square())

    def value(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(C,) smooth part of each G_c, and the logits z (N, C)."""
        z = self.logits(w, b)
        return self.smooth(z, w, b), z

    def bregman(self, z: torch.Tensor, z_new: torch.Tensor) -> torch.Tensor:
        """(C,) sum_n s l(z_new) - l(z) - l'(z) (z_new - z), over N: the loss's curvature along a step, computed
        term by term as log1p(sigma(u) expm1(d)) - sigma(u) d (u, d: z and the step, negated for positives), which
        keeps its precision when the step is tiny (a difference of loss values would round to noise there)."""
        sign = 1 - 2 * self.y  # (N, C) -1 on positives
        u, d = sign * z, sign * (z_new - z)
        p = torch.sigmoid(u)
        return (self.s * (torch.log1p(p * torch.expm1(d)) - p * d)).sum(0) / self.n

    def grad(self, z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.s * (torch.sigmoid(z) - self.y)  # (N, C) d l / d z
        return self.xt @ r / self.n + self.mu * w, r.sum(0) / self.n + self.mu * b

    def lipschitz(self, iterations: int = 30) -> torch.Tensor:
        """(C,) an estimate of each class's gradient Lipschitz constant, max s / (4 N) sigma_max([X 1])^2 + mu
        (power iteration from a fixed start; backtracking corrects an underestimate)."""
        v = torch.ones(self.x.shape[1] + 1, 1, dtype=torch.float64, device=self.y.device)
        sigma2 = 1.0
        for _ in range(iterations):
            u = self.x @ v[:-1] + v[-1]  # (N, 1)
            v_new = torch.cat([self.xt @ u, u.sum(0, keepdim=True)])
            sigma2 = float(v_new.norm() / v.norm().clamp(min=1e-300))
            v = v_new / v_new.norm().clamp(min=1e-300)
        return self.s.max(0).values * sigma2 / (4 * self.n) + self.mu


def kkt_violation(grad_w: torch.Tensor, grad_b: torch.Tensor, w: torch.Tensor, l1: float) -> torch.Tensor:
    """(C,) each class's largest KKT violation (module docstring); grad_* of the smooth part at (w, b)."""
    nonzero = (grad_w + l1 * torch.sign(w)).abs()
    zero = (grad_w.abs() - l1).clamp(min=0)
    per = torch.where(w != 0, nonzero, zero)
    worst = per.max(0).values if len(per) else torch.zeros_like(grad_b)
    return torch.maximum(worst, grad_b.abs())


def _soft(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.sign(v) * (v.abs() - t).clamp(min=0)


def solve_l1_probe(offsets: torch.Tensor, index: torch.Tensor, value: torch.Tensor, width: int,
                   labels: torch.Tensor, n_classes: int, l1: float = 1e-2, weight_decay: float = 1e-6,
                   tol: float = 1e-6, max_iter: int = 20000, check_every: int = 10) -> L1Solution:
    """Minimize every G_c (module docstring) over sparse rows in CSR form (offsets (N + 1,), index (nnz,) latent
    ids, value (nnz,)), labels (N,) 0..n_classes-1. Deterministic: FISTA from w = 0, b = 0, no random draws."""
    device = index.device
    firing, local = torch.unique(index, return_inverse=True)  # solve on latents that fire on some row
    prob = _Problem(offsets, local, value.double(), len(firing), labels.long().to(device), n_classes, weight_decay)
    m, c = len(firing), n_classes
    w = torch.zeros(m, c, dtype=torch.float64, device=device)
    b = torch.zeros(c, dtype=torch.float64, device=device)
    yw, yb, w_prev, b_prev = w, b, w, b
    z_y = z_w = prob.logits(w, b)
    t = torch.ones(c, dtype=torch.float64, device=device)
    step_l = prob.lipschitz()
    objective_prev = torch.full((c,), math.inf, dtype=torch.float64, device=device)
    kkt = torch.full((c,), math.inf, dtype=torch.float64, device=device)
    it = 0
    for it in range(1, max_iter + 1):
        g_w, g_b = prob.grad(z_y, yw, yb)
        step_l = step_l * 0.9  # let the step grow back where the curvature allows it (backtracking corrects)
        for _ in range(80):  # backtracking, per class (80 doublings: past any honest Lipschitz constant)
            w_new = _soft(yw - g_w / step_l, l1 / step_l)
            b_new = yb - g_b / step_l
            z_new = prob.logits(w_new, b_new)
            dw, db = w_new - yw, b_new - yb
            # sufficient decrease of the smooth part: f(new) <= f(y) + g . d + L/2 |d|^2, i.e. the loss's
            # Bregman term plus mu/2 |d|^2 within L/2 |d|^2, each side computed without cancellation
            step2 = dw.square().sum(0) + db.square()
            bad = prob.bregman(z_y, z_new) + prob.mu / 2 * step2 > step_l / 2 * step2
            if not bool(bad.any()):
                break
            step_l = torch.where(bad, 2 * step_l, step_l)
        objective = prob.smooth(z_new, w_new, b_new) + l1 * w_new.abs().sum(0)
        restart = objective > objective_prev  # adaptive restart (O'Donoghue and Candes 2015), per class
        t = torch.where(restart, torch.ones_like(t), t)
        t_next = (1 + torch.sqrt(1 + 4 * t.square())) / 2
        momentum = torch.where(restart, torch.zeros_like(t), (t - 1) / t_next)
        w_prev, b_prev, w, b, z_w = w, b, w_new, b_new, z_new
        yw, yb = w + momentum * (w - w_prev), b + momentum * (b - b_prev)
        z_y = prob.logits(yw, yb)
        t, objective_prev = t_next, objective
        if it % check_every == 0 or it == max_iter:
            kkt = kkt_violation(*prob.grad(z_w, w, b), w, l1)
            if float(kkt.max()) <= tol:
                break
    full = torch.zeros(width, c, dtype=torch.float32, device=device)
    full[firing] = w.float()
    return L1Solution(full, b.float(), float(kkt.max()), it, float(kkt.max()) <= tol)


def probe_objective(offsets: torch.Tensor, index: torch.Tensor, value: torch.Tensor, width: int,
                    labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, l1: float = 1e-2,
                    weight_decay: float = 1e-6) -> torch.Tensor:
    """(C,) G_c at a given (weight (m, C), bias (C,)), in float64: what `solve_l1_probe` minimizes
    (C = weight.shape[1])."""
    prob = _Problem(offsets, index, value.double(), width, labels.long().to(index.device), weight.shape[1],
                    weight_decay)
    smooth, _ = prob.value(weight.double(), bias.double())
    return smooth + l1 * weight.double().abs().sum(0)
