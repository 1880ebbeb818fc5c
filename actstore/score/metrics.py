"""The metrics of DESIGN.md ("Metrics"), as pure functions of tensors: no I/O, no global state.

Constants are SAEBench's defaults (the absorption eval of SAEBench, Karvonen et al. 2025, and
"A is for Absorption", Chanin et al. 2024) and every function takes them as arguments. Shapes are
written next to each argument; N is tokens (the true positives of one class, for absorption).

This module is the scorer's arithmetic (`actstore.score.scorer` feeds it); each function here is tested
against hand-computed cases.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# SAEBench defaults
ABSORPTION_MIN_COS = 0.1  # a non-main latent counts towards absorption only if cos(W_dec[i], p_c) >= this
ABSORPTION_TOP_K = 3  # ... and only the 3 largest projections among those
ABSORPTION_MIN_RATIO = 0.4  # T / act below this: no absorption
FULL_ABSORPTION_MAIN_EPS = 1e-8  # a main latent is off when its activation is below this
FULL_ABSORPTION_MIN_COS = 0.025
FULL_ABSORPTION_MIN_RATIO = 0.4
SPLIT_MIN_F1_GAIN = 0.03  # k-sparse probing: keep k + 1 only if F1 improves by more than this
SPLIT_MAX_K = 10


class PRF(NamedTuple):
    precision: float
    recall: float
    f1: float


def precision_recall_f1(predicted: torch.Tensor, truth: torch.Tensor) -> PRF:
    """Precision tp / (tp + fp), recall tp / (tp + fn), F1 2 tp / (2 tp + fp + fn); 0 where undefined.

    predicted, truth: (N,) bool.
    """
    tp, fp, fn, _ = confusion_counts(predicted, truth).tolist()
    return prf(tp, fp, fn)


def prf(tp: int, fp: int, fn: int) -> PRF:
    """`precision_recall_f1` from the counts (Python numbers: the scorer reads the counts of every class in one
    transfer and takes the ratios here, in the same float arithmetic)."""
    return PRF(tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0,
               2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)


def confusion_counts(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(..., 4) int64 counts (tp, fp, fn, tn) over the last dim of predicted and truth (..., N), bool: on the
    device, for any number of problems at once."""
    predicted, truth = predicted.bool(), truth.bool()
    return torch.stack([(predicted & truth).sum(-1), (predicted & ~truth).sum(-1), (~predicted & truth).sum(-1),
                        (~predicted & ~truth).sum(-1)], dim=-1)


def jumprelu(x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """JumpReLU encoding as Gemma Scope and sae-lens define it: pre = x @ W_enc + b_enc (b_dec is not
    subtracted), f = ReLU(pre) * (pre > threshold), strict. For threshold >= 0 (Gemma Scope) this is
    pre * (pre > threshold).

    x (N, d), w_enc (d, m), b_enc (m,), threshold (m,) -> (N, m).
    """
    pre = x @ w_enc + b_enc
    return torch.relu(pre) * (pre > threshold)


class Folded(NamedTuple):
    w_enc: torch.Tensor
    """(d, m) columns scaled by the decoder row norms."""
    b_enc: torch.Tensor
    """(m,)"""
    threshold: torch.Tensor
    """(m,)"""
    w_dec: torch.Tensor
    """(m, d) unit rows."""


def fold_decoder_norms(w_enc: torch.Tensor, b_enc: torch.Tensor, threshold: torch.Tensor,
                       w_dec: torch.Tensor) -> Folded:
    """Scale every latent so its decoder row has unit norm, keeping reconstructions and firing decisions.

    With n_i = |W_dec[i]|: W_dec[i] / n_i, W_enc[:, i] * n_i, b_enc[i] * n_i, threshold[i] * n_i. Then
    pre_i and threshold_i both scale by n_i > 0 (same decisions), f_i scales by n_i, and f_i W_dec[i] is
    unchanged; f_i * cos(W_dec[i], p) is the projection of latent i's reconstruction on a unit p.
    A latent with a zero decoder row keeps its weights (nothing to fold).
    """
    norms = w_dec.norm(dim=1)  # (m,)
    scale = torch.where(norms > 0, norms, torch.ones_like(norms))
    return Folded(w_enc * scale, b_enc * scale, threshold * scale, w_dec / scale[:, None])


def choose_split_k(f1_by_k: list[float], min_gain: float = SPLIT_MIN_F1_GAIN) -> int:
    """k-sparse probing's number of split features: walk k = 1, 2, ... and keep k while its F1 beats the
    best so far by more than `min_gain`; stop at the first k that does not.

    f1_by_k: F1 of the k-latent probe for k = 1..K (index 0 is k = 1). Returns the last kept k (>= 1).
    """
    if not f1_by_k:
        raise ValueError("f1_by_k is empty: need the F1 of at least the 1-latent probe")
    best, kept = f1_by_k[0], 1
    for k, f1 in enumerate(f1_by_k[1:], start=2):
        if f1 <= best + min_gain:
            break
        best, kept = f1, k
    return kept


class TopK(NamedTuple):
    values: torch.Tensor
    indices: torch.Tensor


def stable_top_k(x: torch.Tensor, k: int, dim: int = -1) -> TopK:
    """The k largest entries of x along `dim`, largest first, equal values in increasing index order (the
    lowest index wins a tie): (values, indices) as `torch.topk`'s, each of x's shape with min(k, size) along
    `dim`.

    `torch.topk` leaves the order of equal values to the implementation, and CPU and CUDA differ (on the CPU
    the top 5 of a column of zeros but for x[5] = 2 come as [5, 1, 3, 4, 0]); this rule is the same on every
    device. A full `torch.sort(stable=True)` would give it too, at 40x topk's time on a 131072 x 130 weight
    matrix; here topk finds the k-th largest value v and the entries above it, a second topk the lowest
    indices holding v, and only those k are sorted (by index, then stably by value, descending: torch
    documents `stable` as keeping the order of equal elements, on every device). x must hold no NaN
    (ValueError)."""
    return _stable_top_k(x, k, dim, check_nan=True)


def _stable_top_k(x: torch.Tensor, k: int, dim: int, check_nan: bool) -> TopK:
    """`stable_top_k`; without `check_nan` (a host sync) for callers whose x cannot hold NaN."""
    moved = x.movedim(dim, -1).contiguous()  # (..., n), rows contiguous: topk and the passes below are faster
    n = moved.shape[-1]
    k = min(k, n)
    if k == 0:
        empty = moved[..., :0]
        return TopK(empty.movedim(-1, dim), torch.zeros_like(empty, dtype=torch.int64).movedim(-1, dim))
    best = moved.topk(k, dim=-1)  # holds every entry above the k-th value, and any NaN (topk ranks it first)
    if check_nan and bool(torch.isnan(best.values).any()):
        raise ValueError("stable_top_k: x holds NaN, which has no place in a ranking")
    kth = best.values[..., -1:]  # (..., 1)
    above = best.values > kth  # (..., k) topk's entries above the k-th value: all of them, in some order
    need = k - above.sum(-1, keepdim=True)  # (..., 1) how many entries equal to the k-th value are taken
    positions = torch.arange(n, device=x.device).expand_as(moved)
    tied = torch.where(moved == kth, positions, n).topk(k, dim=-1, largest=False).values  # lowest first
    index = torch.cat([torch.where(above, best.indices, n),
                       torch.where(torch.arange(k, device=x.device) < need, tied, n)], dim=-1)  # (..., 2k)
    index = index.sort(dim=-1).values[..., :k]  # the k taken (n marks the rest), increasing
    values = moved.gather(-1, index)
    order = values.sort(dim=-1, descending=True, stable=True).indices
    return TopK(values.gather(-1, order).movedim(-1, dim), index.gather(-1, order).movedim(-1, dim))


class AbsorptionTerms(NamedTuple):
    main: torch.Tensor
    """(N,) sum of proj_i over the main latents."""
    top: torch.Tensor
    """(N,) T: the sum of the `top_k` largest positive proj_i among non-main latents with cos_i >= min_cos."""
    top_proj: torch.Tensor
    """(N,) the largest proj_i over all latents given."""
    top_cos: torch.Tensor
    """(N,) cos_i of that latent."""
    main_max_act: torch.Tensor
    """(N,) the largest main-latent activation s_i (-inf without main latents)."""
    top_slots: torch.Tensor
    """(N, top_k) int64: which columns of `acts` make up T, largest proj_i first (equal ones: the lowest column
    first, `stable_top_k`); -1 where fewer than top_k latents are eligible (the absorbing latents of each
    token)."""
    best_slot: torch.Tensor
    """(N,) int64: the column of the latent with the largest proj_i (the one `top_proj` and `top_cos` describe)."""


def absorption_terms(acts: torch.Tensor, cos: torch.Tensor, is_main: torch.Tensor,
                     min_cos: float = ABSORPTION_MIN_COS, top_k: int = ABSORPTION_TOP_K) -> AbsorptionTerms:
    """The per-token sums the absorption rules need, from the SAE activations of candidate latents.

    acts (N, m) SAE activations s_i (folded); cos cos(W_dec[i], p_c) and is_main (bool), each either (m,),
    the same latents for every token, or (N, m), a different list of latents per token (the scorer passes each
    token's active latents, padded with s = 0, cos = 0, is_main = False). proj_i = s_i * cos_i.
    Latents absent from `acts` have s_i = 0: they never add to T (proj_i > 0 is required) nor to main, and a
    main latent that is absent is off (s_i = 0 < eps), so passing only the active latents loses nothing.
    """
    cos, is_main = cos.expand_as(acts), is_main.expand_as(acts)
    proj = acts * cos  # (N, m)
    main = (proj * is_main).sum(dim=1)
    eligible = (~is_main) & (cos >= min_cos)  # (N, m)
    candidates = torch.where(eligible & (proj > 0), proj, torch.zeros_like(proj))
    k = min(top_k, proj.shape[1])
    n = proj.shape[0]
    # equal proj_i: the lowest column first; candidates hold no NaN (NaN > 0 is False), so no check (a host sync)
    picked = _stable_top_k(candidates, k, 1, check_nan=False) if k else None
    top = picked.values.sum(dim=1) if k else torch.zeros(n, dtype=proj.dtype, device=proj.device)
    slots = torch.full((n, top_k), -1, dtype=torch.int64, device=proj.device)
    if k:  # a slot counts only where its candidate is positive: zeros are not absorbers
        slots[:, :k] = torch.where(picked.values > 0, picked.indices, torch.full_like(picked.indices, -1))
    best = proj.argmax(dim=1, keepdim=True)  # (N, 1)
    main_acts = torch.where(is_main, acts, torch.full_like(acts, float("-inf")))
    return AbsorptionTerms(main, top, proj.gather(1, best)[:, 0], cos.gather(1, best)[:, 0],
                           main_acts.max(dim=1).values, slots, best[:, 0])


def absorption_fraction(act: torch.Tensor, main: torch.Tensor, top: torch.Tensor,
                        min_ratio: float = ABSORPTION_MIN_RATIO) -> torch.Tensor:
    """Per token, with act = a . p_c, main and T from `absorption_terms`:

        0                          if main >= act or T / act < min_ratio
        1                          else, if main <= 0
        clip(A / (A + main), 0, 1) else, with A = min(T, act - main)

    Tokens with act <= 0 get 0 (there is no probe direction to absorb; T / act would be <= 0 < min_ratio
    for act < 0, and act = 0 would divide by zero). act, main, top: (N,) -> (N,).
    """
    positive = act > 0
    safe_act = torch.where(positive, act, torch.ones_like(act))
    none = (main >= act) | (top / safe_act < min_ratio) | ~positive
    a = torch.minimum(top, act - main)
    partial = (a / (a + main)).clamp(0, 1)
    out = torch.where(main <= 0, torch.ones_like(act), partial)
    return torch.where(none, torch.zeros_like(act), out)


def full_absorption(act: torch.Tensor, main_max_act: torch.Tensor, top_proj: torch.Tensor, top_cos: torch.Tensor,
                    main_eps: float = FULL_ABSORPTION_MAIN_EPS, min_cos: float = FULL_ABSORPTION_MIN_COS,
                    min_ratio: float = FULL_ABSORPTION_MIN_RATIO) -> torch.Tensor:
    """Per token, True when every main latent is off (s_i < main_eps) and the latent with the largest
    proj_i has cos >= min_cos, act >= 0 and proj / act >= min_ratio. act = 0 exactly counts as False
    (proj / act is undefined there). (N,) each -> (N,) bool."""
    positive = act > 0
    ratio = top_proj / torch.where(positive, act, torch.ones_like(act))
    return (main_max_act < main_eps) & (top_cos >= min_cos) & (act >= 0) & positive & (ratio >= min_ratio)


def absorption_fraction_v03(act: torch.Tensor, main: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """SAEBench v0.3.2's absorption fraction, per token (`--metric-version saebench-0.3`):

        0                                 if main >= act or total <= 0
        clip((total - main) / total, 0, 1) else

    with total = the sum of proj_i over every active latent (any sign, no cosine gate, any number of them)
    and main the main latents' share of it. act, main, total: (N,) -> (N,). Full absorption is the same in
    both versions (`full_absorption`)."""
    none = (main >= act) | (total <= 0)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(none, torch.zeros_like(act), ((total - main) / safe).clamp(0, 1))


METRIC_VERSIONS = {
    "saebench-0.6": "SAEBench v0.6.0: absorption fraction from at most 3 absorbers with cos >= 0.1 whose projections "
                    "reach 0.4 of act; classes with ground-truth probe test F1 > 0.6",
    "saebench-0.3": "SAEBench v0.3.2: absorption fraction (all active latents' projection - main latents') / all "
                    "active latents' projection; every class with probe true positives, no F1 filter",
}
"""`--metric-version` choices; full absorption and k-sparse probing are the same in both."""
