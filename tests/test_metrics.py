"""Every metric formula against hand-computed cases, including every branch of the absorption rules."""

from __future__ import annotations

import pytest
import torch

from actstore.score.metrics import (absorption_fraction, absorption_terms, choose_split_k, fold_decoder_norms,
                              full_absorption, jumprelu, precision_recall_f1)

t = torch.tensor


def test_precision_recall_f1_by_hand():
    predicted = t([1, 1, 1, 0, 0, 0, 1], dtype=torch.bool)
    truth = t([1, 1, 0, 1, 0, 0, 0], dtype=torch.bool)
    # tp 2, fp 2, fn 1: precision 2/4, recall 2/3, F1 4/7
    assert precision_recall_f1(predicted, truth) == pytest.approx((0.5, 2 / 3, 4 / 7), abs=1e-12)
    assert precision_recall_f1(torch.zeros(3, dtype=torch.bool), t([1, 0, 0]).bool()) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == (0.0, 0.0, 0.0)


def test_jumprelu_by_hand_and_strictness():
    x = t([[1.0, 2.0]])
    w = t([[1.0, 0.0, 1.0, -1.0], [0.0, 1.0, 1.0, 0.0]])
    b = t([0.0, 0.0, -1.0, 0.5])
    thr = t([1.0, 1.5, 2.0, -1.0])
    # pre = [1, 2, 2, -0.5]: 1 > 1 no (strict), 2 > 1.5 yes, 2 > 2 no, -0.5 > -1 yes but ReLU -> 0
    assert jumprelu(x, w, b, thr).tolist() == [[0.0, 2.0, 0.0, 0.0]]


def test_jumprelu_equals_sae_lens_on_the_same_weights():
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(0)
    d, m = 24, 40
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d, d_sae=m, apply_b_dec_to_input=False))  # Gemma Scope's setting
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p))
        sae.threshold.copy_(torch.rand(m) * 2 - 0.5)  # some negative thresholds: ReLU matters there
    x = torch.randn(50, d)
    ours = jumprelu(x, sae.W_enc, sae.b_enc, sae.threshold)
    theirs = sae.encode(x)
    assert (ours > 0).sum() > 100  # a meaningful share fires
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # same fp32 ops in the same order


def test_folding_keeps_reconstructions_and_decisions():
    torch.manual_seed(1)
    d, m = 6, 5
    w_enc, b_enc, w_dec = torch.randn(d, m), torch.randn(m), torch.randn(m, d) * t([0.5, 1.0, 2.0, 3.0, 0.1])[:, None]
    thr = torch.rand(m)
    x = torch.randn(30, d)
    folded = fold_decoder_norms(w_enc, b_enc, thr, w_dec)
    torch.testing.assert_close(folded.w_dec.norm(dim=1), torch.ones(m))
    f, g = jumprelu(x, w_enc, b_enc, thr), jumprelu(x, folded.w_enc, folded.b_enc, folded.threshold)
    assert torch.equal(f > 0, g > 0)
    torch.testing.assert_close(g, f * w_dec.norm(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g @ folded.w_dec, f @ w_dec, rtol=1e-5, atol=1e-5)
    # Hand case: decoder row (3, 4) has norm 5: W_enc column, b_enc and threshold become 5x.
    one = fold_decoder_norms(t([[1.0], [2.0]]), t([0.5]), t([0.2]), t([[3.0, 4.0]]))
    assert one.w_enc.tolist() == [[5.0], [10.0]] and one.b_enc.tolist() == [2.5]
    assert one.threshold.tolist() == pytest.approx([1.0]) and one.w_dec[0].tolist() == pytest.approx([0.6, 0.8])


@pytest.mark.parametrize("f1s,k", [
    ([0.5], 1),
    ([0.5, 0.52, 0.9], 1),  # +0.02 at k=2 is not > 0.03: stop there, even though k=3 would help
    ([0.5, 0.6, 0.62, 0.95], 2),  # +0.1 kept; then +0.02 stops
    ([0.5, 0.531, 0.562], 3),  # +0.031 twice
    ([0.5, 0.53], 1),  # exactly 0.03 is not more than 0.03
    ([0.9, 0.8, 0.99], 1),
])
def test_choose_split_k(f1s, k):
    assert choose_split_k(f1s) == k


def test_absorption_terms_by_hand():
    cos = t([0.5, 0.05, 0.2, 0.3, 0.15, 0.12])
    is_main = t([True, False, False, False, False, False])
    acts = t([[0.0, 4.0, 1.0, 2.0, 1.0, 1.0],
              [2.0, 0.0, 0.0, 0.0, 0.0, -1.0]])
    terms = absorption_terms(acts, cos, is_main)
    # token 0: proj = [0, 0.2, 0.2, 0.6, 0.15, 0.12]; eligible (not main, cos >= 0.1): 2, 3, 4, 5;
    # top 3 of those: 0.6 + 0.2 + 0.15 = 0.95 (latent 1 has cos 0.05 < 0.1, latent 5 is 4th)
    # token 1: proj = [1.0, 0, 0, 0, 0, -0.12]; main = 1.0; no positive eligible proj: T = 0
    torch.testing.assert_close(terms.main, t([0.0, 1.0]))
    torch.testing.assert_close(terms.top, t([0.95, 0.0]))
    torch.testing.assert_close(terms.top_proj, t([0.6, 1.0]))
    torch.testing.assert_close(terms.top_cos, t([0.3, 0.5]))
    torch.testing.assert_close(terms.main_max_act, t([0.0, 2.0]))
    # the absorbing latents, largest projection first (-1: no eligible positive projection), and the
    # largest-projection latent overall
    assert terms.top_slots.tolist() == [[3, 2, 4], [-1, -1, -1]]
    assert terms.best_slot.tolist() == [3, 0]


@pytest.mark.parametrize("act,main,top,expected,branch", [
    (1.0, 1.2, 2.0, 0.0, "main >= act"),
    (1.0, 1.0, 2.0, 0.0, "main == act"),
    (1.0, 0.5, 0.3, 0.0, "T / act < 0.4"),
    (1.0, -0.1, 0.5, 1.0, "main <= 0"),
    (1.0, 0.0, 0.4, 1.0, "main == 0, T / act exactly 0.4"),
    (1.0, 0.2, 0.5, 0.5 / 0.7, "A = T"),
    (1.0, 0.3, 0.9, 0.7, "A = act - main"),
    (2.0, 0.5, 0.8, 0.8 / 1.3, "A = T, act 2"),
    (-1.0, -2.0, 1.0, 0.0, "act < 0"),
    (0.0, -1.0, 1.0, 0.0, "act == 0"),
])
def test_absorption_fraction_every_branch(act, main, top, expected, branch):
    got = absorption_fraction(t([act]), t([main]), t([top]))
    assert got.item() == pytest.approx(expected, abs=1e-7), branch


@pytest.mark.parametrize("act,main_max,proj,cos,expected,branch", [
    (1.0, 0.0, 0.5, 0.03, True, "all conditions hold"),
    (1.0, 1e-7, 0.5, 0.03, False, "a main latent is on (1e-7 >= 1e-8)"),
    (1.0, 9e-9, 0.5, 0.03, True, "main latent below 1e-8 counts as off"),
    (1.0, float("-inf"), 0.5, 0.03, True, "no main latents"),
    (1.0, 0.0, 0.5, 0.02, False, "cos < 0.025"),
    (1.0, 0.0, 0.5, 0.025, True, "cos exactly 0.025"),
    (-0.1, 0.0, 0.5, 0.03, False, "act < 0"),
    (1.0, 0.0, 0.3, 0.03, False, "proj / act < 0.4"),
    (1.0, 0.0, 0.4, 0.03, True, "proj / act exactly 0.4"),
])
def test_full_absorption_every_branch(act, main_max, proj, cos, expected, branch):
    got = full_absorption(t([act]), t([main_max]), t([proj]), t([cos]))
    assert got.item() is expected, branch
