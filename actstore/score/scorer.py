"""Score one SAE on the first-letter task: the torch reference (CPU or GPU) of DESIGN.md's "Metrics".

    score_sae(sae, layer_data, probe, ScoreConfig()) -> SAEScore (one row per evaluated letter + a summary)

Steps, for one SAE reading one layer:
1. fold: with n_i = |W_dec[i]|, latent i's activation is reported as s_i * n_i and its decoder as
   W_dec[i] / n_i (reconstructions unchanged). The encoder runs on the weights as loaded, so firing decisions
   are exactly the SAE's own, and no folded copy of W_enc is ever built (a 1M-latent W_enc is 9.7 GB);
2. encode the vocabulary rows into sparse activations (CSR rows of (latent, value)): `encode_sparse`, the
   torch reference, chunked over tokens and latents so memory stays at `token_chunk x latent_chunk` however
   wide the SAE, or `encode_sparse_fused`, the Triton kernel (the `backend` switch; auto = the kernel on
   CUDA). The kernel counts firing decisions within rounding of a threshold, reported per SAE as
   `near_threshold_decisions`: only those may differ between the backends;
3. k-sparse probing: a 26-output L1 probe on the sparse train activations (`train_sparse_probe`); for each
   letter and k = 1..max_k, a balanced logistic regression on the k latents with the largest signed L1
   weight (`fit_balanced_logistic`), F1 on the test split; `metrics.choose_split_k` picks the main latents;
4. single latent: the latent with the highest encoder cosine with p_c, fires when its activation > 0;
5. absorption over the probe's true positives of letter c on the test split (`metrics.absorption_*`);
6. in context: the single latent's and the main latents' precision and recall on alphabetic context tokens.

Letters are evaluated when their probe test F1 is above `min_probe_f1` (strictly; `metric_version` saebench-0.3:
every letter with probe true positives); fewer than `min_letters` evaluated letters raise NotScorable (the runner
writes a row saying so). Steps 3-5 depend on the L1 probe's seed: with `seeds` > 1 they run for every seed over
the one encoding, batched (one L1 probe with 26 x seeds outputs, the k-sparse fits of all seeds solved together,
the seed-free parts once; `l1_solver` converged has no seed). Formulas live in `actstore.score.metrics`, intervals and seed
spreads in `actstore.score.intervals`, null SAEs in `actstore.score.nulls`.
Everything runs on the device the SAE's weights are on; the layer's rows move there a tile at a time.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch

from actstore.score import metrics

from actstore.score import intervals as uncertainty
from actstore.score.causal import CausalConfig
from actstore.errors import InputError
from actstore.score.metrics import precision_recall_f1
from actstore.tasks.base import Task
from actstore.tasks.builtin import FIRST_LETTER_TASK
from actstore.score.probes import LETTERS, Probe, ProbeConfig, pos_weights
from actstore.saes.loading import SAEWeights
from actstore.run.tokens import absorbed, token_absorbers


class NotScorable(InputError):
    """This SAE (or its layer) cannot be scored; the message says why. Other SAEs are unaffected."""


@dataclass
class ScoreConfig:
    """Scoring constants; defaults are SAEBench's absorption eval."""

    sparse_probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(batch_size=4096, weight_decay=1e-6))
    """the L1 probe's training recipe (SAEBench: batch 4096, weight decay 1e-6, lr 1e-2 to 1e-5, 50 epochs)"""
    l1: float = 1e-2
    """L1 coefficient: times the mean over letters of the summed absolute weights"""
    max_k: int = metrics.SPLIT_MAX_K
    """largest k tried in k-sparse probing"""
    split_min_f1_gain: float = metrics.SPLIT_MIN_F1_GAIN
    """keep k + 1 latents only if test F1 improves by more than this"""
    min_probe_f1: float = 0.6
    """letters are evaluated when their ground-truth probe's test F1 is above this (strictly, as SAEBench)"""
    min_letters: int = 2
    """an SAE with fewer evaluated letters is not scored (its standard deviations need two)"""
    token_chunk: int = 4096
    """rows encoded at once"""
    latent_chunk: int = 16384
    """latents encoded at once; token_chunk x latent_chunk fp32 values is the encoder's working memory"""
    backend: str = "auto"
    """encoder: torch (the reference), triton (the fused kernel), or auto (triton on CUDA for JumpReLU/ReLU)"""
    l1_solver: str = "saebench"
    """the L1 probe: saebench (50 Adam epochs from a seeded random start, as SAEBench) or converged (the same
    objective solved to its KKT conditions, no seed: actstore.score.l1solver)"""
    l1_tol: float = 1e-6
    """converged: the largest KKT violation allowed at the solution"""
    l1_max_iter: int = 20000
    """converged: iteration cap (the summary says whether the tolerance was met: l1_converged)"""
    seeds: int = 1
    """the L1 probe's seed-dependent steps run for seeds sparse_probe.seed, +1, ... over one encoding"""
    metric_version: str = "saebench-0.6"
    """absorption fraction and letter rules: a key of metrics.METRIC_VERSIONS"""
    bootstrap: int = 1000
    """bootstrap replicates of the 95% intervals (0: none)"""
    bootstrap_seed: int = 0
    nulls: tuple[str, ...] = ()
    """null SAEs scored beside this one: keys of actstore.score.nulls.NULLS"""
    records: bool = True
    """per-token records and each absorbing latent's top tokens (SAEScore.tokens, latent_top_tokens); the null
    SAEs skip them (only their metrics are read)"""
    top_tokens: int = 8
    """vocabulary tokens kept per absorbing latent, most active first"""
    text_l0_rows: int = 8192
    """alphabetic context tokens the L0 on natural text is measured on (0: not measured; the null SAEs)"""
    causal: CausalConfig | None = None
    """the paper's causal absorption metric beside the projection metrics (actstore.score.causal), or None"""


class SparseActs(NamedTuple):
    """Sparse SAE activations in CSR form: row r's active latents are index[offsets[r]:offsets[r + 1]]."""

    offsets: torch.Tensor
    """(N + 1,) int64"""
    index: torch.Tensor
    """(nnz,) int64 latent ids, increasing within a row"""
    value: torch.Tensor
    """(nnz,) float32 folded activations (> 0 for JumpReLU and ReLU)"""
    width: int
    near: int = 0
    """firing decisions within rounding of the threshold (the fused kernel counts them; 0 for the torch
    reference, which is the definition)"""

    @property
    def l0(self) -> torch.Tensor:
        """(N,) active latents per row."""
        return self.offsets.diff()

    def rows(self, rows: torch.Tensor) -> SparseActs:
        """The given rows (an index tensor or a bool mask), in that order."""
        if rows.dtype == torch.bool:
            rows = rows.nonzero()[:, 0]
        rows = rows.to(self.offsets.device)
        starts, counts = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64, device=rows.device)
        offsets[1:] = counts.cumsum(0)
        # entry j of the new CSR comes from starts[row of j] + (j - offsets[row of j])
        owner = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
        take = starts[owner] + torch.arange(int(offsets[-1]), device=rows.device) - offsets[owner]
        return SparseActs(offsets, self.index[take], self.value[take], self.width, self.near)

    def dense_columns(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, len(latents)) activations of the given latents (distinct ids)."""
        column = torch.full((self.width,), -1, dtype=torch.int64, device=self.index.device)
        column[latents] = torch.arange(len(latents), device=self.index.device)
        out = torch.zeros(len(self.offsets) - 1, len(latents), device=self.value.device)
        hit = column[self.index] >= 0
        owner = torch.repeat_interleave(torch.arange(len(self.offsets) - 1, device=self.index.device), self.l0)
        out[owner[hit], column[self.index[hit]]] = self.value[hit]
        return out

    def padded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each row's entries padded to the longest row (at least 1): index, value (0 where padding) and a
        validity mask, each (N, L)."""
        n, width = len(self.offsets) - 1, max(1, int(self.l0.max())) if len(self.offsets) > 1 else 1
        slot = torch.arange(len(self.index), device=self.index.device)
        owner = torch.repeat_interleave(torch.arange(n, device=self.index.device), self.l0)
        slot = slot - self.offsets[owner]
        index = torch.zeros(n, width, dtype=torch.int64, device=self.index.device)
        value = torch.zeros(n, width, device=self.value.device)
        valid = torch.zeros(n, width, dtype=torch.bool, device=self.index.device)
        index[owner, slot], value[owner, slot], valid[owner, slot] = self.index, self.value, True
        return index, value, valid


def decoder_scale(sae: SAEWeights) -> torch.Tensor:
    """(m,) decoder row norms, 1 where a row is zero (nothing to fold)."""
    norms = sae.w_dec.float().norm(dim=1)
    return torch.where(norms > 0, norms, torch.ones_like(norms))


def encode_sparse(x: torch.Tensor, sae: SAEWeights, scale: torch.Tensor, token_chunk: int = 4096,
                  latent_chunk: int = 16384, progress=None) -> SparseActs:
    """Sparse folded activations of rows x (N, d): the scorer's encoder (and the fused kernel's oracle).

    Elementwise architectures (JumpReLU, ReLU) are encoded in tiles of token_chunk x latent_chunk; TopK needs
    a whole row of pre-activations, so its token chunk shrinks to keep the same number of values.
    scale (m,): the decoder norms multiplied into the values (`decoder_scale`).
    """
    m, device = sae.width, sae.w_enc.device
    whole_rows = sae.architecture == "topk"
    if whole_rows:
        token_chunk, latent_chunk = max(1, token_chunk * latent_chunk // m), m
    rows, cols, vals = [], [], []
    for start in range(0, len(x), token_chunk):
        xb = x[start:start + token_chunk].to(device=device, dtype=sae.w_enc.dtype)  # (n, d)
        for lo in range(0, m, latent_chunk):
            acts = sae.latents(lo, min(m, lo + latent_chunk)).encode(xb)  # (n, chunk)
            r, c = acts.nonzero(as_tuple=True)
            rows.append(r + start)
            cols.append(c + lo)
            vals.append(acts[r, c].float() * scale[c + lo])
        if progress is not None:
            progress(len(xb))
    row, col, val = (torch.cat(t) if t else torch.zeros(0, device=device) for t in (rows, cols, vals))
    order = torch.argsort(row.long() * m + col.long())
    counts = torch.bincount(row.long(), minlength=len(x))
    offsets = torch.zeros(len(x) + 1, dtype=torch.int64, device=device)
    offsets[1:] = counts.cumsum(0)
    return SparseActs(offsets, col.long()[order], val.float()[order], m)


def encode_group_fused(x: torch.Tensor, saes: list[SAEWeights], token_chunk: int = 4096, progress=None,
                       group=None) -> list[SparseActs]:
    """Sparse activations of several SAEs of one layer from the fused Triton kernel
    (`actstore.kernels.jumprelu_probe`): one launch per token chunk serves the whole group, in the SAEs'
    dtype with fp32 accumulation. JumpReLU and ReLU only. Firing decisions within the kernel's flip
    tolerance of a threshold are counted in each result's `near`. `group`: the SAEs already packed."""
    from actstore.kernels.jumprelu_probe import jumprelu_probe, pack_group

    for sae in saes:
        if sae.architecture not in ("jumprelu", "relu"):
            raise NotScorable(f"SAE {sae.id}: the fused kernel encodes JumpReLU and ReLU SAEs, not "
                              f"{sae.architecture}; use --backend torch")
        if sae.apply_b_dec_to_input and len(saes) > 1:
            raise ValueError(f"SAE {sae.id} subtracts b_dec from its input: encode it alone")
    device, dtype = saes[0].w_enc.device, saes[0].w_enc.dtype
    if saes[0].apply_b_dec_to_input:
        x = x - saes[0].b_dec.to(x.device, x.dtype)
    group = group or pack_group(saes, torch.zeros(0, saes[0].d_model, device=device), dtype)
    n_saes = len(saes)
    offsets = [[torch.zeros(1, dtype=torch.int64, device=device)] for _ in saes]
    index, value = [[] for _ in saes], [[] for _ in saes]
    near = torch.zeros(n_saes, dtype=torch.int64, device=device)
    for start in range(0, len(x), token_chunk):
        xb = x[start:start + token_chunk].to(device=device, dtype=dtype).contiguous()
        out = jumprelu_probe(xb, group)  # list room carried from the last launch; one host sync per launch
        for i in range(n_saes):
            ids, vals = out.csr(i)  # joined on the device, sized by that sync
            index[i].append(ids)
            value[i].append(vals)
            offsets[i].append(offsets[i][-1][-1] + out.l0[i].long().cumsum(0))
        near += out.near.sum(dim=1)
        if progress is not None:
            progress(len(xb))
    near = near.tolist()

    def cat(t, dtype):
        return torch.cat(t) if t else torch.zeros(0, dtype=dtype, device=device)

    return [SparseActs(torch.cat(offsets[i]), cat(index[i], torch.int64), cat(value[i], torch.float32), sae.width,
                       near[i]) for i, sae in enumerate(saes)]


def encode_sparse_fused(x: torch.Tensor, sae: SAEWeights, scale: torch.Tensor, token_chunk: int = 4096,
                        latent_chunk: int = 16384, progress=None) -> SparseActs:
    """One SAE through the fused kernel (`encode_group_fused`); same interface as `encode_sparse`."""
    return encode_group_fused(x, [sae], token_chunk, progress)[0]


L1_SOLVERS = ("saebench", "converged")
"""`--l1-solver` choices (ScoreConfig.l1_solver)"""

BACKENDS = {"torch": encode_sparse, "triton": encode_sparse_fused}
"""Encoders of the scorer; `auto` picks triton for JumpReLU/ReLU SAEs on CUDA, torch otherwise."""


def pick_backend(name: str, sae: SAEWeights) -> str:
    if name == "auto":
        return "triton" if sae.w_enc.is_cuda and sae.architecture in ("jumprelu", "relu") else "torch"
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose auto or one of {sorted(BACKENDS)}")
    return name


def transposed_csr(acts: SparseActs) -> torch.Tensor:
    """The activations transposed: (m, N) sparse CSR, row i holding latent i's (row, value) entries."""
    from actstore.score.l1solver import _csr

    n = len(acts.offsets) - 1
    owner = torch.repeat_interleave(torch.arange(n, device=acts.index.device), acts.l0)  # (nnz,) each entry's row
    order = torch.argsort(acts.index * n + owner)
    offsets = torch.zeros(acts.width + 1, dtype=torch.int64, device=acts.index.device)
    offsets[1:] = torch.bincount(acts.index, minlength=acts.width).cumsum(0)
    return _csr(offsets, owner[order], acts.value[order], (acts.width, n))


def train_sparse_probe(acts: SparseActs, labels: torch.Tensor, cfg: ScoreConfig) -> torch.Tensor:
    """SAEBench's L1 probe on sparse activations, seed cfg.sparse_probe.seed: `train_sparse_probes` for one seed."""
    return train_sparse_probes(acts, labels, cfg, [cfg.sparse_probe.seed])[0]


def train_sparse_probes(acts: SparseActs, labels: torch.Tensor, cfg: ScoreConfig, seeds: list[int]
                        ) -> list[torch.Tensor]:
    """SAEBench's L1 probe, trained for several seeds at once on rows of `acts`: one-vs-rest BCE with
    pos_weight plus cfg.l1 * mean over letters of sum_i |w_ci|, Adam with the ground-truth probe's recipe
    (`fit_one_vs_rest`: batches in a seeded random order, the learning rate decayed per epoch).

    The seeds train as one probe with 26 x S outputs, weight (m, 26 S): seed s's block (columns 26 s ..
    26 s + 25) starts from torch.nn.Linear's initialization drawn from seed s's own generator (uniform in
    +-1/sqrt(m)), sees seed s's own batch order, and gets its own loss's gradient. Adam is elementwise, so
    each block follows exactly the steps a run of that seed alone takes (to float rounding); what the seeds
    share is the work: when the train rows fit one batch (SAEBench's 4096), every seed's batch is every row, and
    the logits of all seeds come from one pass over the active entries. The gradients are written out (no
    autograd): logits z = embedding bag of the batch (sum of value x weight row over each row's active latents),
    dLoss/dz = (sigmoid(z) (1 - y + pw y) - pw y) / (B x 26), dLoss/dW = A^T dLoss/dz (A^T the batch's
    activations as a sparse (m, B) CSR matrix, `transposed_csr`), plus l1 / 26 sign(W). Cost: the active entries x 26 S per step, plus Adam on m x 26 S weights.
    Returns each seed's (m, 26) weight.
    """
    m, device, n_seeds, n = acts.width, acts.value.device, len(seeds), len(labels)
    probe_cfg = cfg.sparse_probe
    bound = 1 / math.sqrt(m)
    inits = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        inits.append(((torch.rand(m, 26, generator=gen) * 2 - 1) * bound, (torch.rand(26, generator=gen) * 2 - 1) * bound))
    weight = torch.cat([w for w, _ in inits], dim=1).to(device)  # (m, 26 S)
    bias = torch.cat([b for _, b in inits]).to(device)  # (26 S,)
    labels = labels.to(device)
    targets = torch.nn.functional.one_hot(labels, 26).float()  # (n, 26)
    pw = pos_weights(labels).to(device)  # (26,)
    opt = torch.optim.Adam([weight, bias], lr=probe_cfg.lr, weight_decay=probe_cfg.weight_decay, fused=True)
    schedule = torch.optim.lr_scheduler.ExponentialLR(
        opt, gamma=(probe_cfg.end_lr / probe_cfg.lr) ** (1 / probe_cfg.epochs))
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    whole = n <= probe_cfg.batch_size  # one batch per epoch: every seed's batch is every train row

    def gradient(batch: SparseActs, batch_t: torch.Tensor, y: torch.Tensor, pws: torch.Tensor, blocks: slice
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The BCE gradient of a batch for the seeds of `blocks` (a slice of the 26 S columns): (m, 26 s) and
        (26 s,). batch_t: the batch's activations transposed, (m, B) sparse CSR; y (B, 26 s) targets; pws (26 s,)."""
        z = torch.nn.functional.embedding_bag(batch.index, weight, batch.offsets[:-1], mode="sum",
                                              per_sample_weights=batch.value)[:, blocks] + bias[blocks]  # (B, 26 s)
        dz = (torch.sigmoid(z) * (1 - y + pws * y) - pws * y) / (len(y) * 26)  # (B, 26 s)
        return batch_t @ dz, dz.sum(dim=0)

    if whole:
        acts_t, y_all, pw_all = transposed_csr(acts), targets.repeat(1, n_seeds), pw.repeat(n_seeds)
    for _ in range(probe_cfg.epochs):
        if whole:
            weight.grad, bias.grad = gradient(acts, acts_t, y_all, pw_all, slice(None))
            weight.grad.add_(weight.sign(), alpha=cfg.l1 / 26)
            opt.step()
        else:
            orders = [torch.randperm(n, generator=gen).split(probe_cfg.batch_size) for gen in gens]
            for batches in zip(*orders):
                weight.grad, bias.grad = torch.empty_like(weight), torch.empty_like(bias)
                for s, rows in enumerate(batches):
                    batch, block = acts.rows(rows), slice(26 * s, 26 * s + 26)
                    weight.grad[:, block], bias.grad[block] = gradient(batch, transposed_csr(batch),
                                                                       targets[rows.to(device)], pw, block)
                weight.grad.add_(weight.sign(), alpha=cfg.l1 / 26)
                opt.step()
        schedule.step()
    return list(weight.split(26, dim=1))


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


@dataclass
class LayerData:
    """One layer's rows of a store, as the scorer needs them."""

    x: torch.Tensor
    """(N, d) vocabulary-task activations"""
    labels: torch.Tensor
    """(N,) 0..25"""
    split: torch.Tensor
    """(N,) 0 train, 1 test"""
    context_x: torch.Tensor | None = None
    """(M, d) natural-text activations, or None when the store has no contexts"""
    context_labels: torch.Tensor | None = None
    """(M,) 0..25 for alphabetic tokens, -1 elsewhere"""
    token_id: torch.Tensor | None = None
    """(N,) the vocabulary rows' token ids (per-token records name their tokens; -1 when absent)"""
    text: list[str] | None = None
    """(N,) the vocabulary rows' token strings"""
    task: Task = FIRST_LETTER_TASK
    """The task these rows are labeled for (its classes name the labels)"""


class SAEScore(NamedTuple):
    letters: list[dict]
    """One row per evaluated letter."""
    summary: dict
    """The SAE's row: means and standard deviations over evaluated letters."""
    tokens: dict | None = None
    """Per-token records, one per (evaluated letter, probe true positive on the test split), as columns
    (name -> list; `token_records`); None when not computed (ScoreConfig.records off)."""
    latent_top_tokens: dict | None = None
    """latent id -> its most active vocabulary rows [[row, text, activation], ...] (`top_tokens`), largest
    first, for every latent that absorbs some token (a reader sees whether it is token-aligned)."""


def latent_cosines(sae: SAEWeights, directions: torch.Tensor, scale: torch.Tensor, chunk: int = 65536
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(W_dec[i], p_c) and cos(W_enc[:, i], p_c), each (m, 26), computed a block of latents at a time."""
    p = directions.to(device=sae.w_enc.device, dtype=torch.float32)  # (26, d)
    dec, enc = [], []
    for lo in range(0, sae.width, chunk):
        hi = min(sae.width, lo + chunk)
        dec.append((sae.w_dec[lo:hi].float() @ p.T) / scale[lo:hi, None])
        w = sae.w_enc[:, lo:hi].float()  # (d, chunk)
        enc.append((p @ w).T / w.norm(dim=0).clamp(min=1e-30)[:, None])
    return torch.cat(dec), torch.cat(enc)


def _dense_latents(x: torch.Tensor, sae: SAEWeights, scale: torch.Tensor, latents: torch.Tensor,
                   cfg: ScoreConfig) -> torch.Tensor:
    """(N, len(latents)) folded activations of a few latents: direct for elementwise encoders, through the
    whole row for TopK."""
    if sae.architecture == "topk":
        return encode_sparse(x, sae, scale, cfg.token_chunk, cfg.latent_chunk).dense_columns(latents)
    picked = sae.select(latents)
    out = [picked.encode(x[s:s + cfg.token_chunk].to(sae.w_enc.device, sae.w_enc.dtype)).float()
           for s in range(0, len(x), cfg.token_chunk)]
    return torch.cat(out) * scale[latents]


class _Probing(NamedTuple):
    """k-sparse probing of one (seed, letter)."""

    f1s: list[float]
    """test F1 of the balanced probe on the top k candidates, k = 1, 2, ... as far as `choose_split_k` went"""
    kept: int
    """the number of main latents"""
    fires: torch.Tensor
    """(N_test,) bool: the kept probe's firing on the test rows"""


class _Probing(NamedTuple):
    """k-sparse probing of one (seed, letter)."""

    f1s: list[float]
    """test F1 of the balanced probe on the top k candidates, k = 1, 2, ... as far as `choose_split_k` went"""
    main: list[int]
    """the main latents: the kept k candidates"""
    fires: torch.Tensor
    """(N_test,) bool: the kept probe's firing on the test rows"""


def _k_sparse(dense: torch.Tensor, column: dict[int, int], candidates: dict[tuple[int, int], list[int]],
              labels: torch.Tensor, train: torch.Tensor, cfg: ScoreConfig) -> dict[tuple[int, int], _Probing]:
    """k-sparse probing of every (seed, letter) of `candidates` (its latents, largest L1 weight first): the
    balanced probe on the top k, k = 1, 2, ... until `choose_split_k` stops. The fits of one k are solved
    together (`fit_balanced_logistics`, at most about 2^22 values a block), and a (letter, latents) pair that
    several seeds rank first is fitted once. dense (N, U): the activations of the latents `column` names."""
    x_train, x_test = dense[train], dense[~train]  # (N_train, U), (N_test, U)
    fits: dict[tuple[int, tuple[int, ...]], tuple[float, torch.Tensor]] = {}
    f1s: dict[tuple[int, int], list[float]] = {key: [] for key in candidates}
    out: dict[tuple[int, int], _Probing] = {}
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
            for j, problem in enumerate(problems):
                fires = logits[j] > 0
                fits[problem] = (precision_recall_f1(fires, truth[j, ~train]).f1, fires)
        for s, c in active:
            f1s[(s, c)].append(fits[(c, tuple(candidates[(s, c)][:k]))][0])
            kept = metrics.choose_split_k(f1s[(s, c)], cfg.split_min_f1_gain)
            if kept < k or k == len(candidates[(s, c)]):
                out[(s, c)] = _Probing(f1s[(s, c)], candidates[(s, c)][:kept], fits[(c, tuple(candidates[(s, c)][:kept]))][1])
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def evaluated_letters(probe: Probe, tp_test_counts: list[int], cfg: ScoreConfig) -> list[int]:
    """The letters a metric version evaluates: saebench-0.6 those whose probe test F1 is > cfg.min_probe_f1
    (strictly, as SAEBench); saebench-0.3 every letter with probe true positives on the test split."""
    if cfg.metric_version == "saebench-0.3":
        return [c for c in range(26) if tp_test_counts[c] > 0]
    return probe.evaluated_letters(cfg.min_probe_f1)


def _l1_weights(acts: SparseActs, labels: torch.Tensor, cfg: ScoreConfig, seeds: list[int]) -> tuple[list, dict]:
    """The L1 probe's (m, 26) weight for each seed, and what the solver reports. `converged` has no seed: one
    solve serves every seed."""
    if cfg.l1_solver == "converged":
        from actstore.score.l1solver import solve_l1_probe

        sol = solve_l1_probe(acts.offsets, acts.index, acts.value, acts.width, labels, cfg.l1,
                             cfg.sparse_probe.weight_decay, cfg.l1_tol, cfg.l1_max_iter)
        return [sol.weight] * len(seeds), {"l1_kkt": sol.kkt, "l1_iterations": sol.iterations,
                                           "l1_converged": sol.converged}
    if cfg.l1_solver != "saebench":
        raise InputError(f"unknown L1 solver {cfg.l1_solver!r}; choose one of {L1_SOLVERS}")
    group = max(1, SEED_GROUP_VALUES // (acts.width * 26))  # seeds per batched probe: bounded memory at any width
    groups = [seeds[lo:lo + group] for lo in range(0, len(seeds), group)]
    return [w for part in groups for w in train_sparse_probes(acts, labels, cfg, part)], {}


SEED_GROUP_VALUES = 1 << 26
"""The batched L1 probe's weight holds at most this many values (m x 26 x seeds; 256 MB in float32, about 1 GB
with its gradient and Adam's two moments) unless one seed needs more: 39 seeds at 65k, 2 at 1M latents."""


def score_sae(sae: SAEWeights, data: LayerData, probe: Probe, cfg: ScoreConfig = ScoreConfig(),
              progress=None, acts: SparseActs | None = None, cosines: tuple | None = None,
              source: torch.Tensor | None = None) -> SAEScore:
    """Every metric of one SAE against one layer's probe. `progress(rows)` is called as rows are encoded;
    `acts`: the vocabulary rows' sparse activations when already encoded (a group launch of the kernel);
    `cosines`: (dec_cos, enc_cos), each (m, 26), when the caller knows them (a null SAE, `actstore.score.nulls`);
    `source` (m,): latent j fires where `sae`'s latent source[j] does (the shuffled-firing null), on context rows.

    The seed-dependent steps (L1 probe, k-sparse probing, absorption) run once per seed of cfg.seeds over the
    one encoding; the letter rows and the summary's plain columns are the first seed's."""
    if cfg.metric_version not in metrics.METRIC_VERSIONS:
        raise InputError(f"unknown metric version {cfg.metric_version!r}; choose one of {sorted(metrics.METRIC_VERSIONS)}")
    device = sae.w_enc.device
    x, labels, split = data.x, data.labels.to(device).long(), data.split.to(device).long()
    train = split == 0
    with torch.no_grad():
        probe_fires = (x.float() @ probe.weight.T.float() + probe.bias.float()).to(device) > 0  # (N, 26)
        act_all = (x.float() @ probe.directions().T.float()).to(device)  # (N, 26) a . p_c
    tp_all = (~train)[:, None] & (labels[:, None] == torch.arange(26, device=device)) & probe_fires  # (N, 26)
    letters = evaluated_letters(probe, tp_all.sum(0).tolist(), cfg)
    if len(letters) < cfg.min_letters:
        rule = "have probe true positives" if cfg.metric_version == "saebench-0.3" else \
            f"have a probe test F1 > {cfg.min_probe_f1}"
        raise NotScorable(f"only {len(letters)} letters {rule} at layer {sae.layer} (needs {cfg.min_letters}, "
                          f"--min-letters); nothing to measure this SAE against")
    scale = decoder_scale(sae)
    dec_cos, enc_cos = cosines if cosines is not None else latent_cosines(sae, probe.directions(), scale)  # (m, 26)

    backend = pick_backend(cfg.backend, sae)
    if acts is None:
        acts = BACKENDS[backend](x, sae, scale, cfg.token_chunk, cfg.latent_chunk, progress)
    seeds = [cfg.sparse_probe.seed + i for i in range(max(1, cfg.seeds))]
    weights, solver_info = _l1_weights(acts.rows(train), labels[train], cfg, seeds)
    singles = enc_cos.argmax(dim=0).tolist()  # (26,)
    runs = _score_seeds(acts, weights, letters, singles, probe, labels, train, tp_all, act_all, dec_cos, enc_cos, cfg,
                        data)
    if data.context_x is not None and len(data.context_x):
        _in_context(runs, letters, singles, sae, scale, data, cfg, source)
    rows = runs[0].rows
    summary = _summary(rows, acts)
    summary.update(backend=backend, near_threshold_decisions=acts.near, metric_version=cfg.metric_version,
                   l1_solver=cfg.l1_solver, seeds=len(seeds), **solver_info)
    summary.update(uncertainty.bootstrap_intervals(runs[0].tokens, cfg.bootstrap, cfg.bootstrap_seed))
    for row in rows:
        row.update(metric_version=cfg.metric_version, l1_solver=cfg.l1_solver)
    if len(runs) > 1:
        _seed_columns(runs, acts, summary)
    if data.context_x is not None and len(data.context_x) and cfg.text_l0_rows > 0:
        summary["l0_text"] = text_l0(sae, scale, data, cfg, backend)
    if cfg.nulls:
        from actstore.score.nulls import null_columns

        summary.update(null_columns(sae, data, probe, cfg, acts, summary))
    if not cfg.records:
        return SAEScore(rows, summary)
    records = runs[0].records
    absorbing = sorted({latent for record in _records(records) if absorbed(record)
                        for latent, _, _ in token_absorbers(record)})
    text = data.text or [""] * len(labels)
    tops = {latent: [[row, text[row], value] for row, value in best]
            for latent, best in top_tokens(acts, absorbing, cfg.top_tokens).items()}
    return SAEScore(rows, summary, records, tops)


class TokenAbsorption(NamedTuple):
    fraction: torch.Tensor
    """(R,) float64 absorption fraction"""
    full: torch.Tensor
    """(R,) bool full absorption"""
    terms: metrics.AbsorptionTerms
    """the sums and top latents they were decided from (per-token records)"""


def token_absorption(value: torch.Tensor, cos: torch.Tensor, is_main: torch.Tensor, act: torch.Tensor,
                     version: str = "saebench-0.6") -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction, full) of `absorption_per_token`."""
    return absorption_per_token(value, cos, is_main, act, version)[:2]


def absorption_per_token(value: torch.Tensor, cos: torch.Tensor, is_main: torch.Tensor, act: torch.Tensor,
                         version: str = "saebench-0.6") -> TokenAbsorption:
    """Per-token absorption fraction (float64) and full absorption (bool) of one letter's tokens.

    Each row lists its active latents (`SparseActs.padded`): value (R, L) folded activations, cos (R, L) their
    cos(W_dec[i], p_c) (0 on padding), is_main (R, L) bool; act (R,) = a . p_c. Inputs are float32, as SAEBench's
    tensors are. The rules compare in float64, as SAEBench's do (its per-token values are Python floats): main,
    T and (saebench-0.3) the sum of all projections are float32 sums of float32 products, as its tensor code
    computes them, then widened; the cosine gate and proj_i > 0 stay float32 tensor comparisons, as in SAEBench;
    full absorption's proj / act takes the top latent's activation x cos in float64, as its FeatureScore does.
    So tokens that sit on a threshold (ratio 0.4, activation 1e-8) go the way SAEBench sends them."""
    terms = metrics.absorption_terms(value, cos, is_main)
    act = act.double()
    if version == "saebench-0.3":
        fraction = metrics.absorption_fraction_v03(act, terms.main.double(), (value * cos).sum(dim=1).double())
    else:
        fraction = metrics.absorption_fraction(act, terms.main.double(), terms.top.double())
    best = (value * cos).argmax(dim=1, keepdim=True)  # (R, 1) the latent with the largest proj_i
    top_proj = value.gather(1, best)[:, 0].double() * cos.gather(1, best)[:, 0].double()
    full = metrics.full_absorption(act, terms.main_max_act.double(), top_proj, terms.top_cos.double())
    return TokenAbsorption(fraction, full, terms)


class _Run(NamedTuple):
    """One seed's letter rows, main latents per letter, per-token values (for the bootstrap) and per-token
    records (columns, `token_records`; the first seed's only, empty for the others and when not asked for)."""

    rows: list[dict]
    mains: dict[int, list[int]]
    tokens: list[uncertainty.LetterTokens]
    records: dict[str, list]


class _LetterRows(NamedTuple):
    """What absorption needs of one letter that no seed changes: its probe true positives on the test split and
    their active latents (`SparseActs.padded`)."""

    tp: torch.Tensor
    """(N,) bool"""
    index: torch.Tensor
    """(R, L) latent ids"""
    value: torch.Tensor
    """(R, L) folded activations, 0 on padding"""
    cos: torch.Tensor
    """(R, L) cos(W_dec[i], p_c), 0 on padding"""
    valid: torch.Tensor
    """(R, L) bool"""
    act: torch.Tensor
    """(R,) a . p_c"""


def _score_seeds(acts: SparseActs, weights: list[torch.Tensor], letters: list[int], singles: list[int],
                 probe: Probe, labels: torch.Tensor, train: torch.Tensor, tp_all: torch.Tensor, act_all: torch.Tensor,
                 dec_cos: torch.Tensor, enc_cos: torch.Tensor, cfg: ScoreConfig, data: LayerData) -> list[_Run]:
    """k-sparse probing, single latents and absorption of every evaluated letter, for each seed's L1-probe
    weight (m, 26). What no seed changes is computed once: the activations of every latent any seed ranks
    (one dense gather), the single latents' scores, each letter's true positives and their active latents; the
    k-sparse fits of all seeds and letters are solved together per k (`_k_sparse`)."""
    device = acts.value.device
    k = min(cfg.max_k, acts.width)
    candidates = {}
    for s, weight in enumerate(weights):
        top = weight.topk(k, dim=0).indices.T.tolist()  # (26, k) largest signed weight first
        candidates.update({(s, c): top[c] for c in letters})
    wanted = sorted({i for ids in candidates.values() for i in ids} | {singles[c] for c in letters})
    column = {latent: j for j, latent in enumerate(wanted)}
    dense = acts.dense_columns(torch.tensor(wanted, device=device))  # (N, U)
    probing = _k_sparse(dense, column, candidates, labels, train, cfg)
    shared = {}
    for c in letters:
        tp = tp_all[:, c]  # the probe's true positives on the test split
        index, value, valid = acts.rows(tp).padded()  # (R, L)
        cos = torch.where(valid, dec_cos[index, c], torch.zeros_like(value))
        shared[c] = _LetterRows(tp, index, value, cos, valid, act_all[tp, c])
    return [_score_letters(s, probing, shared, dense, column, letters, singles, probe, labels, train, dec_cos,
                           enc_cos, cfg, data, records=cfg.records and s == 0) for s in range(len(weights))]


def _score_letters(seed: int, probing: dict[tuple[int, int], _Probing], shared: dict[int, _LetterRows],
                   dense: torch.Tensor, column: dict[int, int], letters: list[int], singles: list[int], probe: Probe,
                   labels: torch.Tensor, train: torch.Tensor, dec_cos: torch.Tensor, enc_cos: torch.Tensor,
                   cfg: ScoreConfig, data: LayerData, records: bool) -> _Run:
    """One seed's letter rows, from its k-sparse probing and the letters' shared rows (`_score_seeds`);
    per-token records only when `records`."""
    device = dense.device
    rows, mains, tokens = [], {}, []
    columns: dict[str, list] = {name: [] for name in TOKEN_COLUMNS}
    for c in letters:
        truth = labels == c
        truth_test = truth[~train]
        f1s, main, main_fires = probing[(seed, c)]
        mains[c] = main
        main_prf = precision_recall_f1(main_fires, truth_test)
        single = singles[c]
        single_fires = dense[~train, column[single]] > 0
        single_prf = precision_recall_f1(single_fires, truth_test)

        tp, index, value, cos, valid, act = shared[c]
        is_main = torch.isin(index, torch.tensor(main, device=device)) & valid
        fraction, full, terms = absorption_per_token(value, cos, is_main, act, cfg.metric_version)
        if records:
            missed = torch.zeros(len(labels), dtype=torch.bool, device=device)
            missed[~train] = ~main_fires.to(device)  # the k-sparse probe on the main latents says "not c"
            letter_records = token_records(tp, index, value, cos, terms, act, fraction, full, missed[tp],
                                           dense[tp][:, [column[i] for i in main]], data)
            for name, values in letter_records.items():
                columns[name] += values
            columns["letter"] += [LETTERS[c]] * len(letter_records["row"])
        n_tp = int(tp.sum())
        tokens.append(uncertainty.LetterTokens(fraction, full.double(), (
            int((single_fires & truth_test).sum()), int((single_fires & ~truth_test).sum()),
            int((~single_fires & truth_test).sum()), int((~single_fires & ~truth_test).sum()))))
        rows.append({
            "letter": LETTERS[c], "probe_test_f1": float(probe.metrics["test"]["f1"][c]),
            "probe_test_precision": float(probe.metrics["test"]["precision"][c]),
            "probe_test_recall": float(probe.metrics["test"]["recall"][c]),
            "num_probe_true_positives": n_tp,
            "mean_absorption_fraction": float(fraction.mean()) if n_tp else 0.0,
            "full_absorption_rate": float(full.double().mean()) if n_tp else 0.0,
            "num_full_absorption": int(full.sum()),
            "num_split_features": len(main), "split_latents": main, "k_sparse_f1": f1s,
            "split_cos_dec": [float(dec_cos[i, c]) for i in main],
            "main_precision": main_prf.precision, "main_recall": main_prf.recall, "main_f1": main_prf.f1,
            "single_latent": single, "single_latent_enc_cos": float(enc_cos[single, c]),
            "single_precision": single_prf.precision, "single_recall": single_prf.recall,
            "single_f1": single_prf.f1,
        })
    return _Run(rows, mains, tokens, columns if records else {})


TOKEN_COLUMNS = ("letter", "row", "token_id", "text", "probe_projection", "main_projection", "main_acts",
                 "absorber_latents", "absorber_acts", "absorber_cos", "absorber_projections", "top_latent",
                 "top_cos", "top_projection_ratio", "absorption_fraction", "full_absorption", "k_sparse_miss")
"""Columns of the per-token records (tokens.parquet; README "Per-token records" says what each holds)."""


def _records(columns: dict[str, list]):
    """The rows of a column dict, one dict each."""
    names = list(columns)
    return (dict(zip(names, values)) for values in zip(*columns.values()))


def token_records(tp: torch.Tensor, index: torch.Tensor, value: torch.Tensor, cos: torch.Tensor,
                  terms: metrics.AbsorptionTerms, act: torch.Tensor, fraction: torch.Tensor, full: torch.Tensor,
                  missed: torch.Tensor, main_acts: torch.Tensor, data: LayerData) -> dict[str, list]:
    """One letter's per-token records, as columns (every TOKEN_COLUMNS name but `letter`), from the very
    tensors its means are taken from: row r of `index, value, cos` (R, L) lists the active latents of the
    r-th true positive (tp, (N,) bool); terms/act/fraction/full are `absorption_terms`, a . p_c and the rules'
    outcomes (R,); missed (R,) bool; main_acts (R, k) the main latents' activations in the letter's order.

    The absorbing latents are the (at most top_k) non-main latents of T; the top latent is the
    largest-projection latent overall, with its projection / act (0 where act <= 0).
    """
    rows = tp.nonzero()[:, 0].cpu()
    proj = value * cos  # (R, L)
    slots = terms.top_slots  # (R, top_k), -1 where empty
    safe = slots.clamp(min=0)
    present = slots >= 0
    ratio = torch.where(act > 0, terms.top_proj / torch.where(act > 0, act, torch.ones_like(act)),
                        torch.zeros_like(act))

    def listed(t: torch.Tensor) -> list[list]:
        return [[x for x, ok in zip(r, keep) if ok] for r, keep in zip(t.tolist(), present.tolist())]

    token_id = data.token_id[rows].tolist() if data.token_id is not None else [-1] * len(rows)
    return {
        "row": rows.tolist(), "token_id": token_id,
        "text": [data.text[r] for r in rows.tolist()] if data.text is not None else [""] * len(rows),
        "probe_projection": act.tolist(), "main_projection": terms.main.tolist(), "main_acts": main_acts.tolist(),
        "absorber_latents": listed(index.gather(1, safe)), "absorber_acts": listed(value.gather(1, safe)),
        "absorber_cos": listed(cos.gather(1, safe)), "absorber_projections": listed(proj.gather(1, safe)),
        "top_latent": index.gather(1, terms.best_slot[:, None])[:, 0].tolist(), "top_cos": terms.top_cos.tolist(),
        "top_projection_ratio": ratio.tolist(), "absorption_fraction": fraction.tolist(),
        "full_absorption": full.tolist(), "k_sparse_miss": missed.tolist(),
    }


def top_tokens(acts: SparseActs, latents: list[int], n: int, chunk: int = 512) -> dict[int, list[tuple[int, float]]]:
    """For each latent, the n vocabulary rows on which it is most active: [(row, activation), ...] (rows where
    it is silent left out). `chunk` latents at a time: N x chunk floats of memory however many absorb."""
    out = {}
    for lo in range(0, len(latents), chunk):
        block = latents[lo:lo + chunk]
        dense = acts.dense_columns(torch.tensor(block, device=acts.index.device))  # (N, chunk)
        best = dense.topk(min(n, dense.shape[0]), dim=0)
        for j, latent in enumerate(block):
            out[latent] = [(int(r), float(v)) for r, v in zip(best.indices[:, j].tolist(), best.values[:, j].tolist())
                           if v > 0]
    return out


def text_l0(sae: SAEWeights, scale: torch.Tensor, data: LayerData, cfg: ScoreConfig, backend: str) -> float:
    """Mean L0 on natural text: over the first `text_l0_rows` alphabetic context tokens (never BOS or other
    special tokens, which the store labels -1, as it does non-alphabetic tokens)."""
    x = data.context_x[data.context_labels >= 0][:cfg.text_l0_rows].float()
    if not len(x):
        return float("nan")
    return float(BACKENDS[backend](x, sae, scale, cfg.token_chunk, cfg.latent_chunk).l0.float().mean())


SEED_PER_LETTER = ("mean_absorption_fraction", "full_absorption_rate", "num_split_features")


def _seed_columns(runs: list[_Run], acts: SparseActs, summary: dict) -> None:
    """Per SAE: the mean, standard deviation and range across seeds of every summary metric, and how often the
    main latents agree; per letter: each seed's values and main latents, and their agreement."""
    per_seed = [_summary(run.rows, acts) for run in runs]
    keys = [k for k in per_seed[0] if k.startswith("mean_")]
    summary.update(uncertainty.seed_spread(per_seed, keys))
    agreements = []
    for i, row in enumerate(runs[0].rows):
        mains = [run.rows[i]["split_latents"] for run in runs]
        row["split_latents_by_seed"] = mains
        row["main_latents_agreement"] = uncertainty.main_latent_agreement(mains)
        agreements.append(row["main_latents_agreement"])
        for key in SEED_PER_LETTER:
            row[f"{key}_by_seed"] = [run.rows[i][key] for run in runs]
    summary["mean_main_latents_agreement"] = statistics.fmean(agreements) if agreements else 1.0
    summary["letters_main_latents_all_agree"] = sum(a == 1.0 for a in agreements)


def _in_context(runs: list[_Run], letters: list[int], singles: list[int], sae: SAEWeights, scale: torch.Tensor,
                data: LayerData, cfg: ScoreConfig, source: torch.Tensor | None = None) -> None:
    """Adds each letter's single-latent and main-latent precision/recall on alphabetic context tokens to every
    run's rows; the context rows are encoded once, for the union of the runs' latents (latent j as `sae`'s
    latent source[j] when a source is given: only whether it fires is read)."""
    alpha = data.context_labels >= 0
    x, labels = data.context_x[alpha], data.context_labels[alpha].to(sae.w_enc.device).long()
    wanted = sorted({singles[c] for c in letters} | {i for run in runs for c in letters for i in run.mains[c]})
    column = {latent: j for j, latent in enumerate(wanted)}
    encoded = torch.tensor(wanted, device=sae.w_enc.device)
    if source is not None:
        encoded = source.to(encoded.device)[encoded]
    dense = _dense_latents(x, sae, scale, encoded, cfg)  # (M', U)
    for run in runs:
        for row, c in zip(run.rows, letters):
            truth = labels == c
            single = precision_recall_f1(dense[:, column[singles[c]]] > 0, truth)
            main = precision_recall_f1((dense[:, [column[i] for i in run.mains[c]]] > 0).any(dim=1), truth)
            row.update(context_tokens=len(labels), context_positives=int(truth.sum()),
                       context_single_precision=single.precision, context_single_recall=single.recall,
                       context_main_precision=main.precision, context_main_recall=main.recall)


def _summary(rows: list[dict], acts: SparseActs) -> dict:
    summary = {"status": "ok", "reason": "", "letters_evaluated": len(rows), "l0_vocab": float(acts.l0.float().mean()),
               "dead_latent_share": float((torch.bincount(acts.index, minlength=acts.width) == 0).float().mean())}
    for key, name in (("mean_absorption_fraction", "absorption_fraction"), ("full_absorption_rate", "full_absorption"),
                      ("num_split_features", "num_split_features"), ("single_f1", "single_f1"),
                      ("single_precision", "single_precision"), ("single_recall", "single_recall"),
                      ("main_f1", "main_f1"), ("main_precision", "main_precision"), ("main_recall", "main_recall"),
                      ("probe_test_f1", "probe_f1")):
        summary[f"mean_{name}"], summary[f"std_{name}"] = _mean_std([float(r[key]) for r in rows])
    for key in ("context_single_precision", "context_single_recall", "context_main_precision",
                "context_main_recall"):
        if rows and key in rows[0]:
            summary[f"mean_{key}"] = statistics.fmean(r[key] for r in rows)
    return summary
