"""Uncertainty of an SAE's scores: bootstrap confidence intervals and the spread across L1-probe seeds.

    bootstrap_intervals(classes, n_boot, seed) -> {"mean_absorption_fraction_ci_low": ..., ...}
    seed_spread([summary per seed], keys) -> {"<key>_seed_mean", "<key>_seed_std", "<key>_seed_range"}
    main_latent_agreement([main latents per seed]) -> share of seeds that found the most common set

Bootstrap (two stages, the textbook two-stage bootstrap): each replicate draws C classes from the C evaluated
classes with replacement (stage 1), then, for each draw, resamples that class's tokens with replacement (stage
2), independently for every draw: a class drawn twice in a replicate gets two independent token resamples. The
SAE's value is the mean over the C draws of each draw's class value on its drawn tokens (any number of classes:
a task's C). The interval is the replicates' 2.5 and 97.5 percentiles. (Reusing one token resample for every
draw of a class, as this module did before issue 22, counts that resample's error K times for a class drawn K
times: it multiplies the token-level part of the replicates' variance by E[K^2] = 2 - 1/C, widening the
intervals; tests/test_bootstrap.py checks both against a textbook version.)

- absorption fraction and full absorption: a class's tokens are the probe's true positives on the test split;
  its value is the mean of their per-token values (fraction in [0, 1], full absorption 0 or 1); the two are
  resampled with the same draws. A class without true positives scores 0, as in the scorer;
- single-latent F1: a class's tokens are all test rows; resampling them with replacement draws the counts of
  (tp, fp, fn, tn) from a multinomial with the observed shares, drawn here as a chain of binomials, again
  independently for every draw of the class.

Vectorized over replicates and draws (a loop over classes, each drawing the tokens of all its draws in blocks of
about 2^22 indices), on the CPU whatever the scorer's device: the same inputs give the same draws on a GPU run.
Everything is seeded: the same inputs give the same interval.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import NamedTuple

import torch

CI_METRICS = ("mean_absorption_fraction", "mean_full_absorption", "mean_single_f1")
"""summary columns that get `<metric>_ci_low` / `<metric>_ci_high`"""


class ClassTokens(NamedTuple):
    """What the bootstrap needs of one evaluated class."""

    fraction: torch.Tensor
    """(n,) absorption fraction of each true positive"""
    full: torch.Tensor
    """(n,) 1.0 where that true positive is fully absorbed"""
    single_counts: tuple[int, int, int, int]
    """(tp, fp, fn, tn) of the single latent on the test rows"""


DRAWS_PER_BLOCK = 1 << 22
"""token draws of one class held at once by the bootstrap (with their gathered values, about 100 MB)"""


def _token_means(picks: torch.Tensor, classes: list[ClassTokens], gen: torch.Generator) -> torch.Tensor:
    """(B, C', 2): for each replicate and draw of picks (B, C') class ids, the drawn class's mean fraction and
    full-absorption rate on its own resample of its tokens (stage 2; 0 for a class without tokens). One class at
    a time: all of its draws, across replicates, resample its n tokens as one (draws, n) block of indices."""
    out = torch.zeros(picks.numel(), 2, dtype=torch.float64)
    flat = picks.reshape(-1)
    where = torch.argsort(flat, stable=True).split(torch.bincount(flat, minlength=len(classes)).tolist())
    for tokens, slots in zip(classes, where):  # slots: the (replicate, draw) positions that drew this class
        n = len(tokens.fraction)
        if n == 0 or not len(slots):
            continue
        values = torch.stack([tokens.fraction.double().cpu(), tokens.full.double().cpu()], 1)  # (n, 2)
        for lo in range(0, len(slots), max(1, DRAWS_PER_BLOCK // n)):
            block = slots[lo:lo + max(1, DRAWS_PER_BLOCK // n)]
            out[block] = values[torch.randint(n, (len(block), n), generator=gen)].mean(1)
    return out.view(*picks.shape, 2)


def _f1_replicates(picks: torch.Tensor, classes: list[ClassTokens], gen: torch.Generator) -> torch.Tensor:
    """(B, C'): for each replicate and draw of picks (B, C'), the drawn class's single-latent F1 = 2 tp / (2 tp +
    fp + fn) on its test rows redrawn with replacement (0 where undefined), independently for every draw: the
    multinomial counts of (tp, fp, fn, tn) as a chain of binomials, each over the rows the earlier ones left."""
    counts = torch.tensor([tokens.single_counts for tokens in classes], dtype=torch.float64)  # (C', 4)
    remaining = counts.flip(1).cumsum(1).flip(1)  # (C', 4) rows of this outcome or a later one
    share = torch.where(remaining > 0, counts / remaining.clamp(min=1), torch.zeros_like(counts)).clamp(0, 1)
    left = remaining[:, 0][picks]  # (B, C') every draw redraws all its class's test rows
    drawn = []
    for j in range(3):
        k = torch.binomial(left, share[:, j][picks], generator=gen)
        drawn.append(k)
        left = left - k
    tp, fp, fn = drawn
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(denom))


def bootstrap_replicates(classes: list[ClassTokens], n_boot: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """(B,) replicates of each metric of CI_METRICS (two-stage bootstrap, module docstring): stage 1 draws the
    classes of every replicate, stage 2 each draw's tokens, independently per draw."""
    gen = torch.Generator().manual_seed(seed)
    n_classes = len(classes)
    picks = torch.randint(n_classes, (n_boot, n_classes), generator=gen)  # (B, C') stage 1: classes drawn
    means = _token_means(picks, classes, gen)  # (B, C', 2)
    return {"mean_absorption_fraction": means[:, :, 0].mean(1), "mean_full_absorption": means[:, :, 1].mean(1),
            "mean_single_f1": _f1_replicates(picks, classes, gen).mean(1)}


def percentile_interval(replicates: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    low, high = torch.quantile(replicates, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=replicates.dtype))
    return float(low), float(high)


def bootstrap_intervals(classes: list[ClassTokens], n_boot: int = 1000, seed: int = 0, level: float = 0.95
                        ) -> dict[str, float]:
    """`<metric>_ci_low` / `<metric>_ci_high` for each metric of CI_METRICS; {} without classes or replicates."""
    if not classes or n_boot <= 0:
        return {}
    out = {}
    for name, reps in bootstrap_replicates(classes, n_boot, seed).items():
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = percentile_interval(reps, level)
    return out


def seed_spread(summaries: list[dict], keys: list[str]) -> dict[str, float]:
    """Per key: the mean, sample standard deviation and range (max - min) of its value across seeds."""
    out = {}
    for key in keys:
        values = [float(s[key]) for s in summaries if s.get(key) is not None]
        if not values:
            continue
        out[f"{key}_seed_mean"] = statistics.fmean(values)
        out[f"{key}_seed_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out[f"{key}_seed_range"] = max(values) - min(values)
    return out


def main_latent_agreement(mains: list[list[int]]) -> float:
    """The share of seeds whose set of main latents is the most common one (1.0: every seed agrees)."""
    if not mains:
        return 1.0
    counts = Counter(frozenset(m) for m in mains)
    return counts.most_common(1)[0][1] / len(mains)
