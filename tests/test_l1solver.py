"""The converged L1 probe: KKT conditions at its solution (checked with autograd on dense activations), an
objective no worse than scikit-learn's L1 logistic regression on the same objective, and no seed; for 2, 26
(first_letter) and 40 classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore.score.l1solver import probe_objective, solve_l1_probe


CLASSES = (2, 26, 40)
"""class counts the solver is checked at: binary, first_letter's, and more than the latents' 30"""


def sparse_world(n_classes: int = 26, n: int = 260, m: int = 30, seed: int = 0):
    """Rows that fire a few latents each; latent j leans towards class j % C (so the probe has something to
    find; classes past m have no latent of their own) and every class has positives. Returns CSR (offsets, index,
    value), the dense (n, m) matrix, labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes
    logits = torch.randn(n, m, generator=gen) + 2.5 * (torch.arange(m)[None, :] % n_classes == labels[:, None])
    dense = torch.where(logits > 1.2, logits.abs() * torch.rand(n, m, generator=gen) + 0.1, torch.zeros(()))
    dense[:, 7] = 0  # a latent that never fires: its weight must be exactly 0
    nz = dense.nonzero()
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = torch.bincount(nz[:, 0], minlength=n).cumsum(0)
    return (offsets, nz[:, 1], dense[nz[:, 0], nz[:, 1]]), dense, labels


@pytest.mark.parametrize("n_classes", CLASSES)
def test_kkt_conditions_hold_at_the_solution_by_autograd(n_classes):
    (offsets, index, value), dense, labels = sparse_world(n_classes, n=10 * n_classes + 140)
    l1, wd = 1e-2, 1e-6
    sol = solve_l1_probe(offsets, index, value, 30, labels, n_classes, l1, wd, tol=1e-9)
    assert sol.converged and sol.kkt <= 1e-9
    assert sol.weight.shape == (30, n_classes) and sol.bias.shape == (n_classes,)
    w = sol.weight.double().requires_grad_()
    b = sol.bias.double().requires_grad_()
    # the loss as SAEBench trains it (mean BCE with pos_weight over N x C, + l1 * mean_c |w_c|_1, + Adam's
    # coupled weight decay wd/2 |theta|^2), times C: each class's G_c, summed (so mu = C wd in G_c)
    n_pos = torch.bincount(labels, minlength=n_classes).double()
    pw = (len(labels) - n_pos) / n_pos
    loss = torch.nn.BCEWithLogitsLoss(pos_weight=pw)(dense.double() @ w + b,
                                                     torch.nn.functional.one_hot(labels, n_classes).double())
    smooth = n_classes * (loss + wd / 2 * (w.square().sum() + b.square().sum()))
    g_w, g_b = torch.autograd.grad(smooth, [w, b])
    # the solution is float32: its rounding (about 1e-7 relative on weights of order 1) moves gradients
    # by about 1e-7 times the curvature (entries up to pw ~ C - 1 x activations ~ 4): 1e-5 bounds it for C <= 26,
    # 2e-5 at 40
    tol = 1e-5 if n_classes <= 26 else 2e-5
    w0 = sol.weight.double()
    on = w0 != 0
    assert float((g_w[on] + l1 * torch.sign(w0[on])).abs().max()) <= tol
    assert float(g_w[~on].abs().max()) <= l1 + tol
    assert float(g_b.abs().max()) <= tol
    assert torch.all(sol.weight[7] == 0)  # never fires
    assert bool(on[:, :min(n_classes, 30)].any(dim=0).all())  # each class with a latent of its own keeps a
    assert on.sum() > min(n_classes, 30)  # weight, and more than one somewhere: the test has teeth


@pytest.mark.parametrize("n_classes", CLASSES)
def test_objective_no_worse_than_scikit_learn_l1_logistic_regression(n_classes):
    """G_c = 1/N sum_n s_n softplus(-t_n z_n) + l1 |w|_1 (wd = 0) equals l1 * (|w|_1 + C sum_n s_n log(1 +
    exp(-t_n z_n))) with C = 1 / (l1 N) and sample weights s_n = pw_c on positives, 1 on negatives: scikit-learn's
    L1 objective, the intercept unpenalized. Same minimizer; the objectives are compared on G_c."""
    from sklearn.linear_model import LogisticRegression

    (offsets, index, value), dense, labels = sparse_world(n_classes, n=10 * n_classes + 140, seed=1)
    l1, n = 1e-2, len(labels)
    sol = solve_l1_probe(offsets, index, value, 30, labels, n_classes, l1, weight_decay=0.0, tol=1e-8)
    ours = probe_objective(offsets, index, value, 30, labels, sol.weight, sol.bias, l1, weight_decay=0.0)
    assert ours.shape == (n_classes,)
    for c in sorted({0, n_classes // 5, n_classes // 2, n_classes - 1}):
        y = (labels == c).numpy()
        s = np.where(y, (n - y.sum()) / y.sum(), 1.0)
        # liblinear (newGLMNET) converges tightly; it penalizes the intercept, made negligible by a large
        # intercept_scaling (the intercept's weight is b / 1e4, its penalty 1e-4 |b| in scikit-learn's units)
        ref = LogisticRegression(penalty="l1", solver="liblinear", C=1 / (l1 * n), tol=1e-12, max_iter=100000,
                                 intercept_scaling=1e4)
        ref.fit(dense.double().numpy(), y, sample_weight=s)
        w = torch.zeros(30, n_classes, dtype=torch.float64)
        b = torch.zeros(n_classes, dtype=torch.float64)
        w[:, c], b[c] = torch.from_numpy(ref.coef_[0]), float(ref.intercept_[0])
        theirs = probe_objective(offsets, index, value, 30, labels, w, b, l1, weight_decay=0.0)[c]
        # ours is float32-rounded (1e-7 relative on weights of order 1, objective gradient ~0 at the optimum):
        # the objective moves by ~1e-12; liblinear stops at 1e-12 of its own scale
        assert float(ours[c]) <= float(theirs) + 1e-10, (c, float(ours[c]), float(theirs))
        assert float(ours[c]) == pytest.approx(float(theirs), abs=1e-8)  # the same problem, both converged


def test_solution_is_the_same_however_latents_are_ordered_and_has_no_seed():
    (offsets, index, value), _, labels = sparse_world(seed=2)
    a = solve_l1_probe(offsets, index, value, 30, labels, 26, tol=1e-8)
    b = solve_l1_probe(offsets, index, value, 30, labels, 26, tol=1e-8)
    assert torch.equal(a.weight, b.weight)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))  # latent j becomes perm[j]
    c = solve_l1_probe(offsets, perm[index], value, 30, labels, 26, tol=1e-8)
    # different column order only reorders float sums: the solutions agree to the KKT tolerance's scale
    torch.testing.assert_close(c.weight[perm], a.weight, rtol=0, atol=1e-6)
