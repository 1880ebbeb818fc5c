"""The bootstrap of `actstore.score.intervals` against a textbook two-stage bootstrap written here independently
(numpy, plain loops): stage 1 draws C classes with replacement, stage 2 resamples each drawn class's tokens with
replacement, independently for every draw; the statistic is the mean over the draws of each draw's class mean.

Monte Carlo tolerance: with B = 4000 replicates on each side, a standard deviation is estimated to about
1/sqrt(2 B) = 1.1% (relative), so two independent estimates differ by about 1.6%: they must agree within 5%
(3 standard errors); the means, whose difference has a standard error of sqrt(2 / B) = 0.022 replicate standard
deviations, within 0.1 of one. Every draw is seeded, so each assertion's outcome is fixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore.score import intervals

B = 4000


def _planted_fractions() -> list[np.ndarray]:
    """Three classes with nearly equal means and large token-level spread: the token stage dominates the
    variance, and a scheme that reuses one token resample for a class drawn twice inflates it."""
    return [np.array([1.0] * 5 + [0.0] * 5), np.array([1.0] * 4 + [0.0] * 6), np.array([1.0] * 6 + [0.3] * 2 + [0.0] * 2)]


def _classes(fractions: list[np.ndarray], counts: list[tuple[int, int, int, int]]) -> list[intervals.ClassTokens]:
    return [intervals.ClassTokens(torch.tensor(f, dtype=torch.float64), torch.tensor(f == 1.0, dtype=torch.float64), c)
            for f, c in zip(fractions, counts)]


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0


def textbook(fractions: list[np.ndarray], counts: list[tuple[int, int, int, int]], n_boot: int, seed: int,
             reuse: bool = False) -> dict[str, np.ndarray]:
    """The two-stage bootstrap, one replicate and one draw at a time. `reuse`: the scheme this module had
    before, where every draw of a class within a replicate shares that class's one token resample."""
    rng = np.random.default_rng(seed)
    rows = [np.repeat(np.arange(4), c) for c in counts]  # each class's test rows as outcomes tp, fp, fn, tn
    n_classes = len(fractions)
    out = {name: np.zeros(n_boot) for name in intervals.CI_METRICS}
    for b in range(n_boot):
        picks = rng.integers(n_classes, size=n_classes)
        shared = {}
        frac, full, f1 = [], [], []
        for c in picks:
            if reuse and c in shared:
                tokens, redrawn = shared[c]
            else:
                tokens = fractions[c][rng.integers(len(fractions[c]), size=len(fractions[c]))]
                redrawn = rows[c][rng.integers(len(rows[c]), size=len(rows[c]))]
                shared[c] = tokens, redrawn
            frac.append(tokens.mean())
            full.append((tokens == 1.0).mean())
            f1.append(_f1(*(int((redrawn == k).sum()) for k in range(3))))
        out["mean_absorption_fraction"][b] = np.mean(frac)
        out["mean_full_absorption"][b] = np.mean(full)
        out["mean_single_f1"][b] = np.mean(f1)
    return out


COUNTS = [(3, 2, 2, 13), (4, 3, 2, 11), (2, 1, 2, 15)]  # single-latent F1 0.6, 0.615, 0.571 on 20 test rows


@pytest.fixture(scope="module")
def replicates():
    fractions = _planted_fractions()
    ours = {k: v.numpy() for k, v in intervals.bootstrap_replicates(_classes(fractions, COUNTS), B, seed=3).items()}
    return ours, textbook(fractions, COUNTS, B, seed=5), textbook(fractions, COUNTS, B, seed=7, reuse=True)


@pytest.mark.parametrize("name", intervals.CI_METRICS)
def test_replicates_match_the_textbook_two_stage_bootstrap(replicates, name):
    ours, book, _ = replicates
    assert ours[name].std() == pytest.approx(book[name].std(), rel=0.05)
    assert abs(ours[name].mean() - book[name].mean()) < 0.1 * book[name].std()


def test_absorption_variance_is_the_two_stage_formula(replicates):
    # with n_c tokens per class: Var = (Var_c(mu_c) + mean_c(sigma_c^2 / n_c)) / C, population variances
    fractions = _planted_fractions()
    mu = np.array([f.mean() for f in fractions])
    within = np.mean([f.var() / len(f) for f in fractions])
    expected = np.sqrt((mu.var() + within) / len(fractions))  # 0.1063
    assert replicates[0]["mean_absorption_fraction"].std() == pytest.approx(expected, rel=0.05)
    assert replicates[0]["mean_absorption_fraction"].mean() == pytest.approx(mu.mean(), abs=0.1 * expected)


@pytest.mark.parametrize("name", intervals.CI_METRICS)
def test_reusing_one_token_resample_per_class_would_fail(replicates, name):
    # the old scheme counts a class's resampling error K times for a class drawn K times: its token-level
    # variance is (2 - 1/C) times the textbook's, here std about 1.2x: far outside the 5% tolerance above
    ours, book, reused = replicates
    assert reused[name].std() > 1.12 * book[name].std()
    assert reused[name].std() > 1.12 * ours[name].std()


def test_seeded_and_classes_without_tokens_score_zero():
    classes = _classes(_planted_fractions(), COUNTS) + [
        intervals.ClassTokens(torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), (0, 0, 0, 0))]
    one = intervals.bootstrap_replicates(classes, 300, seed=1)
    again = intervals.bootstrap_replicates(classes, 300, seed=1)
    other = intervals.bootstrap_replicates(classes, 300, seed=2)
    for name in intervals.CI_METRICS:
        assert torch.equal(one[name], again[name]) and not torch.equal(one[name], other[name])
    # one class of four: a replicate's mean is at most 3/4 of the best class's largest possible mean (1.0)
    assert float(one["mean_absorption_fraction"].max()) <= 0.75
    empty = intervals.bootstrap_replicates(classes[-1:], 50, seed=1)
    assert all(float(v.abs().max()) == 0.0 for v in empty.values())


def test_many_classes_and_tokens_stay_fast():
    # 1000 replicates of 200 classes of about 300 tokens: 6e7 token draws, vectorized per class
    import time

    gen = torch.Generator().manual_seed(0)
    classes = [intervals.ClassTokens(torch.rand(300 + c, generator=gen, dtype=torch.float64),
                                     torch.zeros(300 + c, dtype=torch.float64), (5, 3, 4, 300)) for c in range(200)]
    start = time.perf_counter()
    ci = intervals.bootstrap_intervals(classes, 1000, seed=0)
    assert time.perf_counter() - start < 30  # about 3 s on 2 idle cores
    assert ci["mean_absorption_fraction_ci_low"] < 0.5 < ci["mean_absorption_fraction_ci_high"]
