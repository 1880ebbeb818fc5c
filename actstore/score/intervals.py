"""Uncertainty of an SAE's scores: bootstrap confidence intervals and the spread across L1-probe seeds.

    bootstrap_intervals(classes, n_boot, seed) -> {"mean_absorption_fraction_ci_low": ..., ...}
    seed_spread([summary per seed], keys) -> {"<key>_seed_mean", "<key>_seed_std", "<key>_seed_range"}
    main_latent_agreement([main latents per seed]) -> share of seeds that found the most common set

Bootstrap (two levels): each replicate resamples the evaluated classes with replacement, and, inside every
class, its tokens with replacement; the SAE's value is the mean over the drawn classes of each class's value on
its drawn tokens (any number of classes: a task's C). The interval is the replicates' 2.5 and 97.5 percentiles.

- absorption fraction and full absorption: a class's tokens are the probe's true positives on the test split;
  its value is the mean of their per-token values (fraction in [0, 1], full absorption 0 or 1); the two are
  resampled with the same draws. A class without true positives scores 0, as in the scorer;
- single-latent F1: a class's tokens are all test rows; resampling them with replacement draws the counts of
  (tp, fp, fn, tn) from a multinomial with the observed shares, drawn here as a chain of binomials.

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


def _token_means(tokens: ClassTokens, n_boot: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) each: the class's mean fraction and full-absorption rate on resampled tokens."""
    n = len(tokens.fraction)
    if n == 0:
        return torch.zeros(n_boot, dtype=torch.float64), torch.zeros(n_boot, dtype=torch.float64)
    draw = torch.randint(n, (n_boot, n), generator=gen)  # (B, n)
    # on the CPU whatever the scorer's device: the same draws give the same intervals on a GPU
    return tokens.fraction.double().cpu()[draw].mean(1), tokens.full.double().cpu()[draw].mean(1)


def _f1_replicates(counts: tuple[int, int, int, int], n_boot: int, gen: torch.Generator) -> torch.Tensor:
    """(B,) F1 = 2 tp / (2 tp + fp + fn) on n rows redrawn with replacement (0 where undefined)."""
    n = sum(counts)
    left = torch.full((n_boot,), float(n), dtype=torch.float64)
    share_left = 1.0
    drawn = []
    for count in counts[:-1]:
        p = min(1.0, count / n / share_left) if n and share_left > 0 else 0.0
        k = torch.binomial(left, torch.full_like(left, p), generator=gen)
        drawn.append(k)
        left, share_left = left - k, share_left - (count / n if n else 0.0)
    tp, fp, fn = drawn
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(denom))


def bootstrap_replicates(classes: list[ClassTokens], n_boot: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """(B,) replicates of each metric of CI_METRICS (two-level bootstrap, module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    per_class = {name: [] for name in CI_METRICS}
    for tokens in classes:
        fraction, full = _token_means(tokens, n_boot, gen)
        per_class["mean_absorption_fraction"].append(fraction)
        per_class["mean_full_absorption"].append(full)
        per_class["mean_single_f1"].append(_f1_replicates(tokens.single_counts, n_boot, gen))
    n_classes = len(classes)
    picks = torch.randint(n_classes, (n_boot, n_classes), generator=gen)  # (B, C') classes drawn
    weights = torch.zeros(n_boot, n_classes, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(n_boot, n_classes, dtype=torch.float64)) / n_classes  # (B, C')
    return {name: (weights * torch.stack(values, 1)).sum(1) for name, values in per_class.items()}


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
