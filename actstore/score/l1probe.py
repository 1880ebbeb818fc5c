"""The L1 probe on an SAE's sparse activations: it ranks the latents k-sparse probing tries for each class.

    weights, info = l1_weights(acts, labels, n_classes, cfg, seeds)   # one (m, C) weight per seed

`--l1-solver saebench` trains SAEBench's probe (`train_sparse_probes`: 50 Adam epochs from a seeded random
start, several seeds batched as one probe); `converged` solves the same objective to its KKT conditions
(`actstore.score.l1solver`), no seed.
"""

from __future__ import annotations

import math

import torch

from actstore.errors import InputError
from actstore.score.config import L1_SOLVERS, ScoreConfig
from actstore.score.l1solver import solve_l1_probe
from actstore.score.probes import pos_weights
from actstore.score.sparse import SparseActs, transposed_csr

SEED_GROUP_VALUES = 64 << 20
"""The batched L1 probe's weight holds at most this many values (m x C x seeds; 256 MB in float32, about 1 GB
with its gradient and Adam's two moments) unless one seed needs more: for first_letter's classes, 39 seeds at
65k latents, 2 at 1M."""


def train_sparse_probe(acts: SparseActs, labels: torch.Tensor, n_classes: int, cfg: ScoreConfig) -> torch.Tensor:
    """SAEBench's L1 probe on sparse activations, seed cfg.sparse_probe.seed: `train_sparse_probes` for one seed."""
    return train_sparse_probes(acts, labels, n_classes, cfg, [cfg.sparse_probe.seed])[0]


def train_sparse_probes(acts: SparseActs, labels: torch.Tensor, n_classes: int, cfg: ScoreConfig, seeds: list[int]
                        ) -> list[torch.Tensor]:
    """SAEBench's L1 probe, trained for several seeds at once on rows of `acts` (labels (N,) 0..C-1, C =
    n_classes): one-vs-rest BCE with pos_weight plus cfg.l1 * mean over classes of sum_i |w_ci|, Adam with the
    ground-truth probe's recipe (`fit_one_vs_rest`: batches in a seeded random order, the learning rate decayed
    per epoch).

    The seeds train as one probe with C x S outputs, weight (m, C S): seed s's block (columns C s .. C s + C - 1)
    starts from torch.nn.Linear's initialization drawn from seed s's own generator (uniform in +-1/sqrt(m)), sees
    seed s's own batch order, and gets its own loss's gradient. Adam is elementwise, so each block follows exactly
    the steps a run of that seed alone takes (to float rounding); what the seeds share is the work: when the train
    rows fit one batch (SAEBench's 4096), every seed's batch is every row, and the logits of all seeds come from
    one pass over the active entries. The gradients are written out (no autograd): logits z = embedding bag of
    the batch (sum of value x weight row over each row's active latents), dLoss/dz = (sigmoid(z) (1 - y + pw y) -
    pw y) / (B x C), dLoss/dW = A^T dLoss/dz (A^T the batch's activations as a sparse (m, B) CSR matrix,
    `transposed_csr`), plus l1 / C sign(W). Cost: the active entries x C S per step, plus Adam on m x C S weights.
    Returns each seed's (m, C) weight.
    """
    m, device, n_seeds, n, c = acts.width, acts.value.device, len(seeds), len(labels), n_classes
    probe_cfg = cfg.sparse_probe
    bound = 1 / math.sqrt(m)
    inits = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        inits.append(((torch.rand(m, c, generator=gen) * 2 - 1) * bound,
                      (torch.rand(c, generator=gen) * 2 - 1) * bound))
    weight = torch.cat([w for w, _ in inits], dim=1).to(device)  # (m, C S)
    bias = torch.cat([b for _, b in inits]).to(device)  # (C S,)
    labels = labels.to(device)
    targets = torch.nn.functional.one_hot(labels, c).float()  # (n, C)
    pw = pos_weights(labels, c).to(device)  # (C,)
    opt = torch.optim.Adam([weight, bias], lr=probe_cfg.lr, weight_decay=probe_cfg.weight_decay, fused=True)
    schedule = torch.optim.lr_scheduler.ExponentialLR(
        opt, gamma=(probe_cfg.end_lr / probe_cfg.lr) ** (1 / probe_cfg.epochs))
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    whole = n <= probe_cfg.batch_size  # one batch per epoch: every seed's batch is every train row

    def gradient(batch: SparseActs, batch_t: torch.Tensor, y: torch.Tensor, pws: torch.Tensor, blocks: slice
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The BCE gradient of a batch for the seeds of `blocks` (a slice of the C S columns): (m, C s) and
        (C s,). batch_t: the batch's activations transposed, (m, B) sparse CSR; y (B, C s) targets; pws (C s,)."""
        z = torch.nn.functional.embedding_bag(batch.index, weight, batch.offsets[:-1], mode="sum",
                                              per_sample_weights=batch.value)[:, blocks] + bias[blocks]  # (B, C s)
        dz = (torch.sigmoid(z) * (1 - y + pws * y) - pws * y) / (len(y) * c)  # (B, C s)
        return batch_t @ dz, dz.sum(dim=0)

    if whole:
        acts_t, y_all, pw_all = transposed_csr(acts), targets.repeat(1, n_seeds), pw.repeat(n_seeds)
    for _ in range(probe_cfg.epochs):
        if whole:
            weight.grad, bias.grad = gradient(acts, acts_t, y_all, pw_all, slice(None))
            weight.grad.add_(weight.sign(), alpha=cfg.l1 / c)
            opt.step()
        else:
            orders = [torch.randperm(n, generator=gen).split(probe_cfg.batch_size) for gen in gens]
            for batches in zip(*orders):
                weight.grad, bias.grad = torch.empty_like(weight), torch.empty_like(bias)
                for s, rows in enumerate(batches):
                    batch, block = acts.rows(rows), slice(c * s, c * s + c)
                    weight.grad[:, block], bias.grad[block] = gradient(batch, transposed_csr(batch),
                                                                       targets[rows.to(device)], pw, block)
                weight.grad.add_(weight.sign(), alpha=cfg.l1 / c)
                opt.step()
        schedule.step()
    return list(weight.split(c, dim=1))


def l1_weights(acts: SparseActs, labels: torch.Tensor, n_classes: int, cfg: ScoreConfig, seeds: list[int]
               ) -> tuple[list[torch.Tensor], dict]:
    """The L1 probe's (m, C) weight for each seed, and what the solver reports. `converged` has no seed: one
    solve serves every seed."""
    if cfg.l1_solver == "converged":
        sol = solve_l1_probe(acts.offsets, acts.index, acts.value, acts.width, labels, n_classes, cfg.l1,
                             cfg.sparse_probe.weight_decay, cfg.l1_tol, cfg.l1_max_iter)
        return [sol.weight] * len(seeds), {"l1_kkt": sol.kkt, "l1_iterations": sol.iterations,
                                           "l1_converged": sol.converged}
    if cfg.l1_solver != "saebench":
        raise InputError(f"unknown L1 solver {cfg.l1_solver!r}; choose one of {L1_SOLVERS}")
    group = max(1, SEED_GROUP_VALUES // (acts.width * n_classes))  # seeds per batched probe: bounded memory
    groups = [seeds[lo:lo + group] for lo in range(0, len(seeds), group)]
    return [w for part in groups for w in train_sparse_probes(acts, labels, n_classes, cfg, part)], {}
