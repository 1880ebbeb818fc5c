"""k-sparse probing (SAEBench): for each class, balanced logistic regressions on the k latents the L1 probe
ranks first, k = 1, 2, ..., and the k where the test F1 stops gaining (`metrics.choose_split_k`): the class's
main latents.

    probing = k_sparse(dense, column, candidates, labels, train, min_gain)   # {(seed, class): Probing}
    w, b = fit_balanced_logistic(x, y)       # scikit-learn's LogisticRegression(class_weight="balanced")
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from actstore.score import metrics
from actstore.score.metrics import confusion_counts, prf


def fit_balanced_logistic(x: torch.Tensor, y: torch.Tensor, c: float = 1.0, max_iter: int = 100
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary logistic regression with balanced class weights, as scikit-learn's
    `LogisticRegression(class_weight="balanced", C=c)` (SAEBench's k-sparse probe):

        minimize 0.5 |w|^2 + c * sum_i s_i * log(1 + exp(-t_i (x_i . w + b))),  t_i = +-1,
        s_i = N / (2 * count of row i's class); the intercept b is not penalized.

    x (N, k), y (N,) bool -> w (k,), b (). `fit_balanced_logistics` for one problem.
    """
    w, b = fit_balanced_logistics(x[None], y[None], c, max_iter)
    return w[0], b[0]


def fit_balanced_logistics(x: torch.Tensor, y: torch.Tensor, c: float = 1.0, max_iter: int = 100,
                           tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """P independent `fit_balanced_logistic` problems on the same number of rows, solved together: x (P, N, k),
    y (P, N) bool -> w (P, k), b (P,).

    Newton's method in float64 from 0 (the objective is strongly convex in w and convex in b, with a
    (k + 1) x (k + 1) Hessian per problem), each step halved until it decreases its problem's objective
    (Armijo); a problem stops when its gradient is below tol x N in absolute value or the decrease the Newton
    step predicts is within rounding of its objective."""
    p, n, k = x.shape
    n_pos = y.sum(dim=1, keepdim=True).double()
    s = n / (2 * torch.where(y, n_pos, n - n_pos).clamp(min=1))  # (P, N) balanced class weights
    # rows whose features are all 0 have logit b: per class, they act as one row weighted by their summed s,
    # so each problem keeps its other rows (first, padded with weight 0) and two such rows: the same objective
    # on far fewer rows when the latents fire rarely
    active = (x != 0).any(dim=2)  # (P, N)
    keep = int(active.sum(dim=1).max())
    order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :keep]  # (P, keep) active rows first
    zero_pos, zero_neg = ((s * (~active & y)).sum(1), (s * (~active & ~y)).sum(1))  # (P,) each
    x = torch.cat([x.double().gather(1, order[:, :, None].expand(p, keep, k)),
                   torch.zeros(p, 2, k, dtype=torch.float64, device=x.device)], dim=1)  # (P, keep + 2, k)
    y = torch.cat([y.gather(1, order), torch.tensor([[True, False]], device=y.device).expand(p, 2)], dim=1)
    s = torch.cat([s.gather(1, order) * active.gather(1, order), torch.stack([zero_pos, zero_neg], 1)], dim=1)
    xb = torch.cat([x, torch.ones(p, keep + 2, 1, dtype=torch.float64, device=x.device)], dim=2)  # (P, R, k+1)
    t = y.double() * 2 - 1  # (P, R)
    reg = torch.ones(k + 1, dtype=torch.float64, device=x.device)
    reg[-1] = 0  # the intercept is not penalized
    theta = torch.zeros(p, k + 1, dtype=torch.float64, device=x.device)

    def objective(theta: torch.Tensor) -> torch.Tensor:  # (P,)
        margin = t * (xb @ theta[:, :, None])[:, :, 0]
        return 0.5 * (reg * theta.square()).sum(1) + c * (s * torch.nn.functional.softplus(-margin)).sum(1)

    for _ in range(max_iter):
        z = (xb @ theta[:, :, None])[:, :, 0]  # (P, N)
        q = torch.sigmoid(-t * z)  # (P, N) the loss's derivative in the margin, negated
        grad = reg * theta - c * (xb.transpose(1, 2) @ (s * t * q)[:, :, None])[:, :, 0]  # (P, k+1)
        hess = torch.diag(reg) + c * (xb * (s * q * (1 - q))[:, :, None]).transpose(1, 2) @ xb  # (P, k+1, k+1)
        direction = -torch.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        decrement = -(grad * direction).sum(1)  # (P,) the squared Newton decrement: twice the predicted decrease
        before = objective(theta)
        # a problem is done when its gradient is small or the decrease Newton predicts is rounding noise
        live = (grad.abs().amax(1) > tol * n) & (decrement > 1e-13 * before.abs().clamp(min=1))
        if not bool(live.any()):
            break
        step = torch.ones(p, dtype=torch.float64, device=x.device)
        for _ in range(40):
            ok = ~live | (objective(theta + step[:, None] * direction) <= before - 1e-4 * step * decrement)
            if bool(ok.all()):
                break
            step = torch.where(ok, step, step / 2)
        theta = theta + torch.where(live, step, torch.zeros_like(step))[:, None] * direction
    return theta[:, :-1], theta[:, -1]


class Probing(NamedTuple):
    """k-sparse probing of one (seed, class)."""

    f1s: list[float]
    """test F1 of the balanced probe on the top k candidates, k = 1, 2, ... as far as `choose_split_k` went"""
    main: list[int]
    """the main latents: the kept k candidates"""
    fires: torch.Tensor
    """(N_test,) bool: the kept probe's firing on the test rows"""


def k_sparse(dense: torch.Tensor, column: dict[int, int], candidates: dict[tuple[int, int], list[int]],
             labels: torch.Tensor, train: torch.Tensor, min_gain: float = metrics.SPLIT_MIN_F1_GAIN
             ) -> dict[tuple[int, int], Probing]:
    """k-sparse probing of every (seed, class) of `candidates` (its latents, largest L1 weight first): the
    balanced probe on the top k, k = 1, 2, ... until `choose_split_k` (with `min_gain`) stops. The fits of one
    k are solved together (`fit_balanced_logistics`, at most about 2^22 values a block; their F1s read in one
    transfer per block, as choose_split_k decides on the host), and a (class, latents) pair that several seeds
    rank first is fitted once. dense (N, U): the activations of the latents `column`
    names; labels (N,) class ids; train (N,) bool."""
    x_train, x_test = dense[train], dense[~train]  # (N_train, U), (N_test, U)
    fits: dict[tuple[int, tuple[int, ...]], tuple[float, torch.Tensor]] = {}
    f1s: dict[tuple[int, int], list[float]] = {key: [] for key in candidates}
    out: dict[tuple[int, int], Probing] = {}
    for k in range(1, max(map(len, candidates.values()), default=0) + 1):
        active = [key for key in candidates if key not in out and len(candidates[key]) >= k]
        need = sorted({(c, tuple(candidates[(s, c)][:k])) for s, c in active} - fits.keys())
        block = max(1, (1 << 22) // (len(x_train) * (k + 1)))
        for lo in range(0, len(need), block):
            problems = need[lo:lo + block]
            cols = torch.tensor([[column[i] for i in latents] for _, latents in problems], device=dense.device)
            truth = torch.stack([labels == c for c, _ in problems])  # (P, N)
            w, b = fit_balanced_logistics(x_train[:, cols].transpose(0, 1), truth[:, train])  # (P, k), (P,)
            logits = (x_test[:, cols].transpose(0, 1).double() @ w[:, :, None])[:, :, 0] + b[:, None]  # (P, N_test)
            fires = logits > 0
            counts = confusion_counts(fires, truth[:, ~train]).tolist()  # one transfer for the block's problems
            for j, problem in enumerate(problems):
                fits[problem] = (prf(*counts[j][:3]).f1, fires[j])
        for s, c in active:
            f1s[(s, c)].append(fits[(c, tuple(candidates[(s, c)][:k]))][0])
            kept = metrics.choose_split_k(f1s[(s, c)], min_gain)
            if kept < k or k == len(candidates[(s, c)]):
                main = candidates[(s, c)][:kept]
                out[(s, c)] = Probing(f1s[(s, c)], main, fits[(c, tuple(main))][1])
    return out
