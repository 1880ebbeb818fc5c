"""bf16 encoding with the exact fp32 recheck, the kernel's grouped grid order and its wave-filling splits.

The kernel runs in Triton's interpreter on CPU (conftest sets TRITON_INTERPRET=1; 16-bit operands are widened
to fp32 before each dot there, so products are exact and sums fp32, as on tensor cores) or compiled on CUDA.
"""

from __future__ import annotations

import pytest
import torch

from actstore.kernels.jumprelu_probe import (GROUP_N, default_splits, grid_order, jumprelu_probe,
                                             jumprelu_probe_reference, pack_group, recheck_band)
from actstore.score.encode import decoder_scale, encode_group_fused
from test_kernels import DEVICE, make_sae, needs_kernel


def exact_pre(x: torch.Tensor, sae) -> torch.Tensor:
    """(N, m) float64 pre-activations of the fp32 operands: products exact, float64 sums."""
    return x.double() @ sae.w_enc.double() + sae.b_enc.double()


def test_the_grouped_grid_order_is_a_bijection_for_ragged_counts():
    """Every (token block, job) pair is visited once, for group sizes that do and do not divide the blocks;
    within a group consecutive programs share a job over GROUP_N blocks (W_enc read once per group)."""
    for blocks in range(1, 20):
        for jobs in range(1, 7):
            for group_n in (1, 3, GROUP_N):
                seen = [grid_order(pid, blocks, jobs, group_n) for pid in range(blocks * jobs)]
                assert sorted(seen) == [(b, j) for b in range(blocks) for j in range(jobs)]
    assert [grid_order(pid, 10, 2, 4) for pid in range(8)] == [(0, 0), (1, 0), (2, 0), (3, 0),
                                                              (0, 1), (1, 1), (2, 1), (3, 1)]
    assert [grid_order(pid, 10, 2, 4) for pid in range(16, 20)] == [(8, 0), (9, 0), (8, 1), (9, 1)]


def test_splits_fill_whole_waves():
    # 132 SMs, 16k tokens (128 blocks of 128), one SAE of 16k: every split count up to 16 is 128k / (132 k'),
    # 0.9697 at best: ties go to 1
    assert default_splits(16384, 1, 16384, 132) == 1
    # 4096 tokens (32 blocks): 1 split 32/132; 4 splits 128/132 = 0.97, the best up to 16 (8: 256/264, equal)
    assert default_splits(4096, 1, 16384, 132) == 4
    # 4096 tokens, one SAE of 1M: 33 splits fill 1056 = 8 x 132 exactly
    assert default_splits(4096, 1, 1 << 20, 132) == 33
    # 1000 tokens (8 blocks), 3 SAEs of 4096 (at most 4 splits): 24 programs a split; 4: 96/132 = 0.73, the best
    assert default_splits(1000, 3, 4096, 132) == 4
    # shares keep 1024 latents: a 2000-latent SAE is never split; no tokens: 1
    assert default_splits(128, 1, 2000, 132) == 1 and default_splits(0, 2, 16384, 132) == 1
    # 64-token blocks, 114 SMs (H100 PCIe), 57 blocks: 2 splits fill 114 exactly
    assert default_splits(57 * 64, 1, 16384, 114, block_n=64) == 2


def test_the_band_constant():
    """c = 2u + u^2 + gamma (1 + u)^2 for d 2304 in bf16 (u = 2^-8, gamma = 2305 x 2^-23 / (1 - 2305 x 2^-23)),
    widened by the norms' and the test's fp32 roundings by less than 0.1%."""
    u, gamma = 2.0 ** -8, 2305 * 2.0 ** -23 / (1 - 2305 * 2.0 ** -23)
    c = 2 * u + u * u + gamma * (1 + u) ** 2
    big, reach = recheck_band(2304, torch.bfloat16)
    assert c == pytest.approx(8.1048e-3, rel=1e-4) and c < big < c * 1.001 and reach < 1e-36
    assert recheck_band(2304, torch.float16)[0] == pytest.approx(2 * 2.0 ** -11 + gamma, rel=1e-2)


@needs_kernel
@pytest.mark.parametrize("dtype, splits", [("bfloat16", 1), ("bfloat16", 3), ("float16", 1)])
def test_16_bit_operands_with_the_recheck_decide_as_exact_arithmetic(dtype, splits, monkeypatch):
    """Two SAEs of ragged widths, 45 tokens in chunks of 30: the 16-bit kernel's candidates rechecked in float64
    give exactly the firing of exact arithmetic, the fp32 reference's except where counted near; values
    float32(pre64) x scale (2.5e-7 relative: the two float64 sums may round to neighbouring fp32 values, 2^-23,
    and the product once more), and within fp32
    summation (1e-5 relative) of the fp32 reference's where the decisions agree."""
    import actstore.kernels.jumprelu_probe as kernel_module

    d = 40
    saes = [make_sae(d, 77, 41), make_sae(d, 133, 42)]
    x = torch.randn(45, d, generator=torch.Generator().manual_seed(43)).to(DEVICE) * 3
    launcher = kernel_module.jumprelu_probe
    monkeypatch.setattr(kernel_module, "jumprelu_probe", lambda *a, **k: launcher(*a, **k, splits=splits))
    got = encode_group_fused(x, saes, token_chunk=30, dtype=dtype)
    group32 = pack_group(saes, torch.zeros(0, d, device=DEVICE), torch.float32)
    _, l0_32, lists32 = jumprelu_probe_reference(x, group32)
    for s, (sae, acts) in enumerate(zip(saes, got)):
        pre = exact_pre(x, sae)
        fires = pre > sae.threshold.double().clamp(min=0)
        assert torch.equal(acts.l0, fires.sum(dim=1))
        assert torch.equal(acts.index, fires.nonzero()[:, 1])
        expected = pre[fires].float() * decoder_scale(sae)[acts.index]
        torch.testing.assert_close(acts.value, expected, rtol=2.5e-7, atol=0)
        assert int((acts.l0 - l0_32[s]).abs().sum()) <= acts.near
        values32 = torch.cat([v for _, v in lists32[s]])
        if torch.equal(acts.l0, l0_32[s].long()):
            torch.testing.assert_close(acts.value, values32, rtol=1e-5, atol=1e-6)


@needs_kernel
def test_thresholds_between_the_bf16_and_the_exact_pre_flip_without_the_recheck_only():
    """Planted: each latent's threshold halfway between one token's pre from bf16-rounded operands and its exact
    pre. bf16 without the recheck decides by the rounded pre and flips those decisions (so the test can fail);
    with the recheck every decision is exact arithmetic's."""
    d, m = 64, 96
    sae = make_sae(d, m, 51)
    gen = torch.Generator().manual_seed(52)
    x = (torch.randn(40, d, generator=gen) * 4).to(DEVICE)
    pre = exact_pre(x, sae)
    rounded = x.bfloat16().double() @ sae.w_enc.bfloat16().double() + sae.b_enc.double()
    token = (pre - rounded).abs().argmax(dim=0)  # per latent, the token whose rounding moved pre most
    lat = torch.arange(m, device=pre.device)
    planted = ((pre[token, lat] + rounded[token, lat]) / 2)
    usable = (planted > 0) & ((pre[token, lat] - rounded[token, lat]).abs() > 1e-4 * planted.abs())
    sae.threshold = torch.where(usable, planted, torch.full_like(planted, 1e9)).float()
    assert int(usable.sum()) >= 10
    truth = pre > sae.threshold.double().clamp(min=0)

    group = pack_group([sae], torch.zeros(0, d, device=DEVICE), torch.bfloat16)
    plain = jumprelu_probe(x.bfloat16(), group, capacity=m)
    flipped = int((plain.l0[0].long() - truth.sum(dim=1)).abs().sum())
    assert flipped >= 5  # the rounded operands decide the planted entries the other way
    acts = encode_group_fused(x, [sae], dtype="bfloat16")[0]
    assert torch.equal(acts.l0, truth.sum(dim=1)) and torch.equal(acts.index, truth.nonzero()[:, 1])


@needs_kernel
def test_the_band_holds_for_every_entry():
    """Dense: bias 0 and threshold 0, the tokens and their negatives (pre(-x) = -pre(x), so every entry is a
    candidate in one of them): each listed raw pre is within the band C (|x_n||w_i| + |b_i|) of the exact pre,
    and every entry whose exact pre > 0 is listed."""
    d, m = 48, 70
    sae = make_sae(d, m, 61)
    sae.b_enc.zero_()
    sae.threshold.zero_()
    x = (torch.randn(33, d, generator=torch.Generator().manual_seed(62)) * 5).to(DEVICE)
    group = pack_group([sae], torch.zeros(0, d, device=DEVICE), torch.bfloat16)
    big, _ = recheck_band(d, torch.bfloat16)
    worst, listed = 0.0, 0
    for sign in (1, -1):
        xs = sign * x
        out = jumprelu_probe(xs.bfloat16(), group, capacity=m, recheck=True,
                             x_norm=torch.linalg.vector_norm(xs, dim=1))
        pre = exact_pre(xs, sae)
        band = big * (xs.double().norm(dim=1)[:, None] * sae.w_enc.double().norm(dim=0)[None, :])
        for n in range(len(xs)):
            k = int(out.l0[0, n])
            ids = out.index[0, n, :k].long()
            err = (out.value[0, n, :k].double() - pre[n, ids]).abs()
            assert bool((err <= band[n, ids]).all())
            worst = max(worst, float((err / band[n, ids]).max()))
            assert set((pre[n] > 0).nonzero()[:, 0].tolist()) <= set(ids.tolist())
            listed += k
    assert listed >= 33 * m  # every entry listed at least once
    assert worst > 1e-3  # the kernel's pre is the bf16 one, not exact (else the check says nothing)
