"""Fused JumpReLU encoding, probe projection and sparse activations for a group of SAEs in one launch.

For a block of tokens X (N, d) and S SAEs that read the same layer, their latents concatenated (SAE s owns
latents offsets[s]..offsets[s+1] of W_enc (d, M), b_enc, threshold, scale and V), per SAE s:

    pre   = X @ W_enc[:, s] + b_enc[s]                          (N, m_s), fp32 accumulation
    f     = ReLU(pre) * (pre > threshold)                       JumpReLU as sae-lens computes it
    proj  = f @ V[s]                                            (N, C); V = W_dec @ p^T (m, C), C probe classes
    l0    = #{i : f_i > 0}                                      (N,)
    idx, val = the active latents (ids local to the SAE, increasing) and f_i * scale_i (folded values),
            the first `capacity` of each token; l0 > capacity marks an overflow, and the launcher runs
            again with room for the largest l0: lists are never silently cut
    near  = #{i : |pre_i - thr_i| <= flip_tol * max(|pre_i|, |thr_i|) + flip_abs * |x_n| |W_enc[:, i]|}, the
            firing decisions close enough to the threshold that another order of summation or rounding of pre
            may take them the other way (|x_n|: the token's norm)

Exact decisions from 16-bit operands (RECHECK): the kernel lists CANDIDATES instead, every entry with
pre >= edge - C ((|x_n| + a)(|w_i| + a) + |b_i|) (edge = max(thr_i, 0)), with its raw pre; the caller
recomputes each candidate in float64 from the fp32 operands (`actstore.score.encode.encode_group_fused`), so
every firing decision is exact arithmetic's. The band holds |pre_kernel - pre_exact| for every entry:
  x and W_enc rounded to the operand dtype, x^_j = x_j + e_j with |e_j| <= u |x_j| + alpha (u = 2^-8 bf16,
  2^-11 fp16; alpha: half the subnormal spacing, 2^-25 fp16, 2^-134 bf16), products exact in fp32, then d + 1
  terms (the bias first) summed in fp32 in any order by additions that may truncate (tensor cores align and
  truncate: u_acc = 2^-23 per term, gamma = (d + 1) u_acc / (1 - (d + 1) u_acc)). With S = sum_j |x_j w_ji| + |b_i|:
    |pre_kernel - pre_exact| <= c S + A (|x| + |w_i|) + A0,  c = 2u + u^2 + gamma (1 + u)^2,
    A = alpha (1 + u)(1 + gamma) sqrt(d), A0 = d alpha^2 (1 + gamma)
  and S <= |x_n| |w_i| + |b_i| (Cauchy-Schwarz). The norms are fp32 sums of d squares and a root, low by at most
  eta = (d + 2) u_acc / (1 - (d + 2) u_acc); the band and the test pre >= edge - band take 5 fp32 roundings,
  whose error is below 2^-20 S when pre_exact > edge >= 0 (then edge < S). So C = (c + 2^-20) / ((1 - eta)^2
  (1 - u_acc)^5) and a = A / c (C a (|x| + |w|) >= A, C a^2 >= A0) (`recheck_band`). d 2304, bf16: c = 8.105e-3,
  C = 8.110e-3 (a = 3e-37: nothing); fp16: C = 1.254e-3, a = 1.14e-3. fp16 tokens must stay below 65504.
  With RECHECK, proj is still from the firing in the operand dtype (scoring does not read proj).

proj_c = sum_i f_i (W_dec[i] . p_c) = sum_i s_i cos(W_dec[i], p_c) with s_i = f_i |W_dec[i]|: the projection of
the SAE's reconstruction (less b_dec) on the probe direction. The (N, m) matrix never exists: a program owns
BLOCK_N tokens of one SAE and walks its latents BLOCK_M at a time, keeping proj, l0 and the list fill in
registers. The JumpReLU tile is the left operand of the second dot exactly as computed (no transpose: on
Hopper a transposed dot accumulator fed into another dot has miscompiled, triton issues 6124, 10821).

Classes: V is stored in blocks of P columns (`class_block`: the class count's next power of two, at least 32
and at most MAX_CLASS_BLOCK), zero-padded, (B, M, P) with B = ceil(C / P); one launch projects on one block.
Any count of 2 to 4096 classes (and more) works: up to MAX_CLASS_BLOCK classes in one launch, beyond that one
launch per block, each encoding again (the GEMM is the cost; the projection adds 2 N m P flops per block).

What it compiles to on Hopper is checked without a GPU (`benchmarks/kernel_static.py`, `kernels/codegen.py`):
- main loop: when every offset is a multiple of 16 (ALIGNED, set by the launcher) the latent loop is 0-based
  from a start the compiler knows is a multiple of 16, so both operands load as 16-byte cp.async and the
  wgmma of one k-step overlaps the next (wait depth 1); otherwise W_enc falls back to 2-byte loads;
- epilogue, per latent tile: thresholds folded per latent (fires iff pre > max(thr, 0); near iff
  lo <= pre <= hi), a token's place for each firing latent as a second small MMA (firing flags, fp16 0/1,
  times a strictly upper triangular matrix: an exact prefix count that stays in the accumulator layout,
  where `tl.cumsum` went through shared memory twice), and the list entries stored from that layout by
  inline PTX (a predicated st.global per entry; `tl.store` would convert 64-bit pointer, mask and value
  tiles through shared memory first). The interpreter, which cannot run PTX, takes `tl.store`;
- offsets: what can pass 2^31 is formed once per program in 64 bits; per-tile offsets stay 32-bit
  (`check_offsets`).

This module is long (about 560 lines) because it holds one fused op whole, as STYLE.md asks of kernels/<op>.py:
the Triton kernel, its launcher (checks, class blocks, overflow retry, split join) and the fp32 torch reference
that the tests and benchmarks import beside it.

`jumprelu_probe` is the launcher; `jumprelu_probe_reference` is the fp32 torch reference that tests and
benchmarks compare against; `pack_group` concatenates SAEs into the kernel's layout.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

MIN_CLASS_BLOCK = 32
"""the narrowest class block: a tl.dot-friendly width (first_letter's classes pad to it, as always)"""
MAX_CLASS_BLOCK = 64
"""the widest class block one launch projects on. The proj accumulator takes BLOCK_N x P / (32 x warps) fp32
registers per thread beside the pre and prefix-count tiles; compiled for sm_90a with the pinned tiles (Triton
3.9), P = 32 and 64 give the same spill-free 138-instruction k-step (epilogue spills 22 and 36 per tile), 128
spills 6 per k-step in the main loop, 256 142 (tests/test_kernel_static.py checks 64)"""
P_PAD = MIN_CLASS_BLOCK  # the class block of 2..32 classes (the name benchmarks/kernel_static.py reads)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ALIGN = 16
"""latent offsets that are multiples of this let W_enc load as 16-byte async copies (8 bf16 latents)"""


def _config(bn: int, bm: int, bk: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


# The interpreter runs every program in numpy: few, large tiles. On a GPU, scoring always launches PINNED, so
# which latents fire never depends on a timing (configs sum in different orders); the autotuned path
# (`tuned=True`, benchmarks) picks among CONFIGS, each of which compiles for sm_90a and sm_80 and fits both
# targets' shared memory (`benchmarks/kernel_static.py`). Dropped from the list at main: 128x256 (256 KB of
# shared memory under Triton 3.9), 256x64 (748 spill instructions in the sm_80 main loop under 3.9) and 64x64
# (its work is covered by 128x64 and 64x128; each kept config costs a compile in the CI test). 128x64 and 64x128
# take 8 warps: with 4, ptxas serializes their wgmma chain (warning C7514, wait depth 0 in SASS) and the epilogue
# spills (tests/test_kernel_static.py fails on both).
PINNED = _config(64, 64, 64, 4, 1) if INTERPRET else _config(128, 128, 64, 8, 3)
CONFIGS = [PINNED] if INTERPRET else [PINNED, _config(128, 64, 64, 8, 4), _config(64, 128, 64, 8, 4),
                                      _config(128, 128, 32, 8, 4)]
PINNED_FP32 = PINNED if INTERPRET else _config(32, 16, 32, 4, 2)
"""the tiles of fp32 tokens (ieee dots on CUDA cores, no tensor cores: other tiles than PINNED's may fit)"""
GROUP_N = 8
"""token blocks per group of the grid order (`grid_order`): with the pinned tiles at d 2304 in bf16 the group's x
blocks take 8 x 128 x 2304 x 2 bytes = 4.7 MB of L2, and each share's W_enc is read from memory once per group"""


@triton.jit
def _jumprelu_probe_kernel(
    x_ptr,  # (N, D) tokens
    w_ptr,  # (D, M) concatenated encoders
    b_ptr,  # (M,) fp32 encoder biases
    thr_ptr,  # (M,) fp32 thresholds
    scale_ptr,  # (M,) fp32 decoder norms (folded values = f * scale)
    enorm_ptr,  # (M,) fp32 encoder column norms |W_enc[:, i]| (of the unrounded weights)
    xnorm_ptr,  # (N,) fp32 token norms |x_n| (of the unrounded tokens)
    v_ptr,  # (M, P) fp32 W_dec @ p^T, padded
    off_ptr,  # (S + 1,) int32 latent offsets of the SAEs
    proj_ptr,  # (S * splits, N, P) fp32 out
    l0_ptr,  # (S * splits, N) int32 out
    near_ptr,  # (S * splits, N) int32 out
    idx_ptr,  # (S * splits, N, CAP) int32 out
    val_ptr,  # (S * splits, N, CAP) fp32 out
    N, D, CAP, flip_tol, flip_abs,
    band,  # RECHECK: C of the candidate band C (|x_n| |w_i| + |b_i|) (`recheck_band`)
    splits,  # shares per SAE
    n_key,  # tokens rounded up to a power of two: the autotuner's key, unused here
    stride_xn, stride_xd, stride_wd, stride_wm,
    P: tl.constexpr, IEEE: tl.constexpr,
    ASM_STORES: tl.constexpr,  # list entries stored by inline PTX (a GPU; the interpreter takes tl.store)
    ALIGNED: tl.constexpr,  # every offset is a multiple of 16 (the launcher checks): aligned W_enc loads
    RECHECK: tl.constexpr,  # list the candidates pre >= edge - band (raw pre) instead of the firing latents
    UPCAST: tl.constexpr,  # the interpreter: 16-bit operands widened to fp32 before the dot (exact products)
    GROUP_N: tl.constexpr,  # token blocks of a group in the grid order (`GROUP_N`)
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Offsets: products that can pass 2^31 (token x row stride, latent x W_enc stride, job x N x CAP) are
    # formed once per program in 64 bits, as base pointers; per-tile offsets from those bases stay in 32 bits
    # (BLOCK_N x stride_xn, BLOCK_K x stride_wd, BLOCK_N x CAP, BLOCK_M x P: the launcher checks the bounds).
    # Grid order (1D, `grid_order`): GROUP_N token blocks form a group; within it the block runs fastest and
    # the job (sae * splits + share, a contiguous run of one SAE's latents) next, so the group's x blocks stay
    # in L2 while each share's W_enc tiles are read once per group by GROUP_N programs side by side.
    pid = tl.program_id(0)
    blocks = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_N * (tl.num_programs(0) // blocks)  # the grid is blocks x jobs programs
    first_block = pid // per_group * GROUP_N
    in_group = tl.minimum(blocks - first_block, GROUP_N)  # the last group may hold fewer blocks
    pid_n = first_block + pid % per_group % in_group
    job = pid % per_group // in_group
    sae = job // splits
    first = tl.load(off_ptr + sae)
    last = tl.load(off_ptr + sae + 1)
    if ALIGNED:  # exact for offsets that are multiples of 16, and the compiler then knows they are
        first = first // 16 * 16
        last = last // 16 * 16
    span = tl.cdiv(tl.cdiv(last - first, splits), 16) * 16  # shares start on 16-latent boundaries
    start = first + (job % splits) * span
    width = tl.minimum(last - start, span)  # latents of this share (<= 0: nothing to do)
    if ALIGNED:
        start = tl.multiple_of(start, 16)
        width = tl.multiple_of(width, 16)
    row0 = pid_n * BLOCK_N
    rows = tl.arange(0, BLOCK_N)  # (BLOCK_N,) tokens of the block, from row0
    row_ok = rows < N - row0
    cols = tl.arange(0, P)
    ks = tl.arange(0, BLOCK_K)
    ms = tl.arange(0, BLOCK_M)
    x_block = x_ptr + row0.to(tl.int64) * stride_xn + rows[:, None] * stride_xn + ks[None, :] * stride_xd
    w_share = w_ptr + start.to(tl.int64) * stride_wm + ks[:, None] * stride_wd + ms[None, :] * stride_wm
    v_share = v_ptr + start.to(tl.int64) * P + ms[:, None] * P + cols[None, :]
    out = (job.to(tl.int64) * N + row0) * CAP  # where this program's lists begin
    # exclusive prefix count of a row of firing flags as one small MMA: before[n, j] = sum_{i < j} fire[n, i]
    if IEEE:
        earlier = (ms[:, None] < ms[None, :]).to(tl.float32)  # (BLOCK_M, BLOCK_M) strictly upper triangular
    else:
        earlier = (ms[:, None] < ms[None, :]).to(tl.float16)  # 0/1 and sums <= BLOCK_M: exact
    widen = 1 / (1 - flip_tol)
    x_norm = tl.load(xnorm_ptr + row0 + rows, mask=row_ok, other=0.0)  # (BLOCK_N,)
    reach = flip_abs * x_norm * widen  # times |W_enc[:, i]|: the near band's absolute part, widened
    proj = tl.zeros((BLOCK_N, P), dtype=tl.float32)
    count = tl.zeros((BLOCK_N,), dtype=tl.int32)
    near = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for m0 in range(0, width, BLOCK_M):  # 0-based: the offsets' alignment carries to every tile
        lat_ok = ms < width - m0  # (BLOCK_M,)
        lat = start + m0 + ms  # (BLOCK_M,) global latent ids
        # read before the k-loop, so their latency hides behind it
        b = tl.load(b_ptr + lat, mask=lat_ok, other=0.0)
        v = tl.load(v_share + m0 * P, mask=lat_ok[:, None], other=0.0)  # (BLOCK_M, P)
        x_ptrs = x_block
        w_ptrs = w_share + m0 * stride_wm
        pre = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32) + b[None, :]  # the bias starts the sum
        for k0 in range(0, D, BLOCK_K):
            k_ok = ks < D - k0
            x = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_K)
            w = tl.load(w_ptrs, mask=k_ok[:, None] & lat_ok[None, :], other=0.0)  # (BLOCK_K, BLOCK_M)
            if UPCAST:  # the interpreter's dot multiplies bf16's raw bits; bf16/fp16 products are exact in fp32
                pre = tl.dot(x.to(tl.float32), w.to(tl.float32), pre, input_precision="ieee")
            elif IEEE:
                pre = tl.dot(x, w, pre, input_precision="ieee")
            else:
                pre = tl.dot(x, w, pre)
            x_ptrs += BLOCK_K * stride_xd
            w_ptrs += BLOCK_K * stride_wd
        # per latent, then one or two operations per element: JumpReLU fires iff pre > max(threshold, 0)
        thr = tl.load(thr_ptr + lat, mask=lat_ok, other=float("nan"))
        edge = tl.where(lat_ok, tl.maximum(thr, 0.0), float("inf"))
        e_norm = tl.load(enorm_ptr + lat, mask=lat_ok, other=0.0)
        scale = tl.load(scale_ptr + lat, mask=lat_ok, other=0.0)
        fire = pre > edge[None, :]  # (BLOCK_N, BLOCK_M)
        if RECHECK:  # candidates: every entry whose exact pre may pass the edge, evaluated as the bound assumes
            listed = pre >= edge[None, :] - band * (x_norm[:, None] * e_norm[None, :] + tl.abs(b)[None, :])
        else:
            listed = fire
            # near: |pre - thr| <= flip_tol max(|pre|, |thr|) + a (a = flip_abs |x_n| |w_i|) lies within
            # lo <= pre <= hi (a widened by 1 / (1 - flip_tol), so the interval holds the band); NaN past the
            # share: never near
            spread = reach[:, None] * e_norm[None, :]  # (BLOCK_N, BLOCK_M)
            lo = tl.minimum(thr * (1 - flip_tol), thr * widen)[None, :] - spread
            hi = tl.maximum(thr * (1 - flip_tol), thr * widen)[None, :] + spread
            near += tl.sum(((pre >= lo) & (pre <= hi)).to(tl.int32), axis=1)
        # each listed latent's place among the tile's listed latents of its token, as one small MMA (exact: 0/1
        # products, sums <= BLOCK_M); the token's list continues at count, in a room of CAP - count slots
        if IEEE:
            proj = tl.dot(tl.where(fire, pre, 0.0), v, proj, input_precision="ieee")  # f, the left operand as computed
            before = tl.dot(tl.where(listed, 1.0, 0.0), earlier, input_precision="ieee")
        else:  # fp16 operands: tf32's precision (11 bits), and a 16-bit left operand stays in registers
            proj = tl.dot(tl.where(fire, pre, 0.0).to(tl.float16), v.to(tl.float16), proj)
            before = tl.dot(tl.where(listed, 1.0, 0.0).to(tl.float16), earlier)
        room = tl.where(row_ok, CAP - count, 0).to(tl.float32)  # (BLOCK_N,)
        keep = listed & (before < room[:, None])
        slot = before.to(tl.int32)
        list_start = out + rows * CAP + count  # (BLOCK_N,) 64 bits, per token; slot adds 32 bits per entry
        local = tl.broadcast_to((start - first + m0 + ms)[None, :], (BLOCK_N, BLOCK_M))  # ids within the SAE
        value = pre if RECHECK else pre * scale[None, :]  # a candidate's raw pre (the recheck recomputes it)
        if ASM_STORES:  # stored from the MMA layout as they are: no layout conversion through shared memory
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $5, 0; @p st.global.b32 [$1], $3; @p st.global.b32 [$2], $4; "
                "mov.b32 $0, 0; }", "=r,l,l,r,r,r",
                [((idx_ptr + list_start)[:, None] + slot).to(tl.int64),  # addresses as integers ("l")
                 ((val_ptr + list_start)[:, None] + slot).to(tl.int64),
                 local, value, keep.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
        else:
            tl.store((idx_ptr + list_start)[:, None] + slot, local, mask=keep)
            tl.store((val_ptr + list_start)[:, None] + slot, value, mask=keep)
        count += tl.sum(listed.to(tl.int32), axis=1)

    per_token = job.to(tl.int64) * N + row0
    tl.store(proj_ptr + per_token * P + rows[:, None] * P + cols[None, :], proj, mask=row_ok[:, None])
    tl.store(l0_ptr + per_token + rows, count, mask=row_ok)
    tl.store(near_ptr + per_token + rows, near, mask=row_ok)


_jumprelu_probe_tuned = triton.autotune(configs=CONFIGS, key=["n_key", "D", "splits", "ALIGNED", "IEEE", "P",
                                                                "RECHECK"])(
    _jumprelu_probe_kernel)
"""The same kernel, autotuned: the key is what changes the best tiles (token count to a power of two, d_model,
shares per SAE, alignment, dtype, class block, recheck), not the list capacity or a partial block's exact size."""


def grid_order(pid: int, blocks: int, jobs: int, group_n: int = GROUP_N) -> tuple[int, int]:
    """(token block, job) of program `pid` of the kernel's 1D grid of blocks x jobs programs, as the kernel
    computes it: GROUP_N token blocks form a group (the last may hold fewer); within a group the block runs
    fastest, then the job. A plain-Python copy of the kernel's first lines, for the tests."""
    per_group = group_n * jobs
    first_block = pid // per_group * group_n
    in_group = min(blocks - first_block, group_n)
    return first_block + pid % per_group % in_group, pid % per_group // in_group


class Group(NamedTuple):
    """S SAEs of one layer in the kernel's layout."""

    w_enc: torch.Tensor
    """(d, M) the encoders side by side, in the tokens' dtype"""
    b_enc: torch.Tensor
    """(M,) fp32"""
    threshold: torch.Tensor
    """(M,) fp32 (0 for a ReLU SAE)"""
    scale: torch.Tensor
    """(M,) fp32 decoder row norms, 1 for a zero row"""
    v: torch.Tensor
    """(B, M, P) fp32 W_dec @ p^T in B blocks of P class columns (`class_block`), zero-padded past the classes"""
    offsets: torch.Tensor
    """(S + 1,) int32"""
    widths: tuple = ()
    """the S widths, on the host (so a launch needs no device read to plan); empty: read from offsets"""
    enc_norm: torch.Tensor | None = None
    """(M,) fp32 encoder column norms (the near band's absolute part); None: computed at each launch"""
    classes: int | None = None
    """C, the probe classes (columns of proj); None: every column of v (B x P)"""

    @property
    def n_classes(self) -> int:
        return self.classes if self.classes is not None else self.v.shape[0] * self.v.shape[2]


class Fused(NamedTuple):
    proj: torch.Tensor
    """(S, N, C) fp32 projection of f on each probe direction"""
    l0: torch.Tensor
    """(S, N) int32 active latents per token"""
    index: torch.Tensor
    """(S, N, capacity) int32 active latent ids per token, increasing; slots at and past l0 are undefined"""
    value: torch.Tensor
    """(S, N, capacity) fp32 folded activations f * scale, same slots"""
    near: torch.Tensor
    """(S, N) int32 firing decisions within flip_tol of the threshold (0 with recheck: the recheck decides)"""
    retries: int
    """launches repeated because some token had more than `capacity` active latents"""
    nnz: tuple = ()
    """(S,) active entries of each SAE over all tokens, read in the launch's one host synchronisation"""

    def csr(self, sae: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SAE `sae`'s lists joined token after token: index (nnz,) int64 and value (nnz,) fp32, on the
        device and without a host synchronisation (the size is `nnz[sae]`)."""
        l0 = self.l0[sae].long()  # (N,)
        first = l0.cumsum(0) - l0
        slot = torch.arange(self.index.shape[2], device=l0.device)
        return _scatter_lists(self.index[sae], self.value[sae], first[:, None] + slot, slot < l0[:, None],
                              (self.nnz[sae],))


def class_block(classes: int) -> int:
    """Class columns one launch projects on: the next power of two >= classes, within [32, MAX_CLASS_BLOCK]."""
    return max(MIN_CLASS_BLOCK, min(MAX_CLASS_BLOCK, triton.next_power_of_2(max(classes, 1))))


def pack_group(saes: list, directions: torch.Tensor, dtype: torch.dtype, w_enc: torch.Tensor | None = None) -> Group:
    """Concatenate SAEs (objects with w_enc (d, m), b_enc, w_dec (m, d), and threshold unless ReLU).
    directions (C, d) unit probe directions, any C (0: lists only; V is then one zero block of 32 columns).
    V takes M x B x P x 4 bytes (`class_block`): 1M latents x 4096 classes is 16 GiB. Several SAEs' encoders
    are copied once (one SAE's is used as it is); `w_enc`: the (d, M) encoders already side by side (a
    scheduler that loads each SAE's encoder into its slice of one buffer), used as it is."""
    device = saes[0].w_enc.device
    widths = [s.w_enc.shape[1] for s in saes]
    offsets = torch.tensor([0] + widths, device=device).cumsum(0).to(torch.int32)
    norms = torch.cat([s.w_dec.float().norm(dim=1) for s in saes])
    enc_norm = torch.cat([s.enc_norm for s in saes])  # computed once per SAE (SAEWeights.enc_norm)
    classes = directions.shape[0]
    block = class_block(classes)
    blocks = max(1, triton.cdiv(classes, block))
    v = torch.zeros(blocks, sum(widths), block, device=device)  # (B, M, P)
    cos = torch.cat([s.w_dec.float() @ directions.to(device).float().T for s in saes])  # (M, C)
    for b in range(blocks):
        part = cos[:, b * block:(b + 1) * block]
        v[b, :, :part.shape[1]] = part
    if w_enc is None:  # one SAE: no copy
        w_enc = saes[0].w_enc if len(saes) == 1 else torch.cat([s.w_enc for s in saes], dim=1)
    return Group(w_enc.to(dtype),  # any strides: a slice of a shared buffer is used in place
                 torch.cat([s.b_enc.float() for s in saes]),
                 torch.cat([s.threshold.float() if getattr(s, "architecture", "jumprelu") == "jumprelu"
                            else torch.zeros_like(s.b_enc.float()) for s in saes]),  # ReLU: threshold 0
                 torch.where(norms > 0, norms, torch.ones_like(norms)), v, offsets, tuple(widths), enc_norm, classes)


FLIP_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
"""Relative distance from the threshold within which a decision may differ from an fp32 reference: about
sqrt(d_model) accumulated roundings of the input dtype, generous for fp32 (tf32 off)."""
FLIP_ABS = 1e-6
"""The near band's absolute part, times |x|max |W_enc[:, i]|: a d-term fp32 dot's rounding is relative to
sum_j |x_j w_ji| (<= |x| |w_i|), not to |pre|; with summands of random sign its standard deviation is about
2^-24 |x| |w_i| / sqrt(2) (4e-8), so 1e-6 is 25 of them. Without it, thresholds near 0 had a band narrower than
the rounding: an H200 run found fp32 decisions flipped outside it (benchmarks/NOTES.md)."""


UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 0.0}
"""u of rounding an fp32 value to the kernel's operand dtype (fp32 tokens are not rounded)"""
SUBNORMAL_ERROR = {torch.bfloat16: 2.0 ** -134, torch.float16: 2.0 ** -25, torch.float32: 0.0}
"""the absolute rounding error of a value in the dtype's subnormal range (half its smallest spacing)"""


def recheck_band(d: int, dtype: torch.dtype) -> tuple[float, float]:
    """(C, a) of the candidate band C ((|x_n| + a)(|w_i| + a) + |b_i|) of d_model d and operand `dtype`
    (the module docstring derives it); the launcher adds a to the fp32 norms it passes."""
    u, alpha, acc = UNIT_ROUNDOFF[dtype], SUBNORMAL_ERROR[dtype], 2.0 ** -23
    gamma = (d + 1) * acc / (1 - (d + 1) * acc)
    c = 2 * u + u * u + gamma * (1 + u) ** 2
    eta = (d + 2) * acc / (1 - (d + 2) * acc)  # an fp32 norm's relative error, from below
    big = (c + 2.0 ** -20) / ((1 - eta) ** 2 * (1 - acc) ** 5)
    return big, alpha * (1 + u) * (1 + gamma) * math.sqrt(d) / c


MIN_SHARE = 1024
"""the fewest latents a split share keeps (`default_splits`)"""


def default_splits(n: int, s: int, width: int, sm_count: int, block_n: int = 128) -> int:
    """Latent splits per SAE so that the launch fills whole waves of the GPU.

    A launch runs ceil(n / block_n) x s x splits programs; with the pinned tiles one program fills an SM (128
    KB of shared memory), so they run in waves = ceil(programs / sm_count) and the last wave leaves
    waves x sm_count - programs SMs idle. Of splits in 1..max(1, width // MIN_SHARE) (each share keeps at
    least MIN_SHARE latents), the one with the best wave efficiency programs / (waves x sm_count), the fewest
    splits among equals (each split reads the token block again). Example: 132 SMs, 4096 tokens (32 blocks),
    one SAE of 16k: 1 split is 32/132 = 0.24, 4 splits 128/132 = 0.97 (8 splits: 256/264, the same, so 4).
    block_n: the launch's BLOCK_N (128 for the pinned GPU tiles)."""
    blocks = -(-n // block_n) * s
    if blocks == 0:
        return 1
    best, best_programs, best_slots = 1, blocks, -(-blocks // sm_count) * sm_count
    for splits in range(2, max(1, width // MIN_SHARE) + 1):
        programs = blocks * splits
        slots = -(-programs // sm_count) * sm_count
        if programs * best_slots > best_programs * slots:  # a strictly better fraction, in integers
            best, best_programs, best_slots = splits, programs, slots
    return best


_room = {"capacity": 64}
"""The list capacity the last launch in this process needed: the next launch starts there (a block whose L0
fits then runs once, across token blocks and across SAEs); it grows and never shrinks."""


def check_offsets(n: int, stride_xn: int, stride_wd: int, latents: int, capacity: int,
                  configs: list[triton.Config], columns: int = P_PAD) -> None:
    """The kernel forms per-tile offsets in 32 bits from 64-bit per-program bases (tokens x row stride, latents x
    W_enc's stride and job x N x capacity can each pass 2^31 at Gemma Scope sizes; W_enc's pointers advance
    along d_model in 64 bits): refuse a launch whose per-tile offsets would not fit under any of `configs`.
    columns: the class block P (V's rows are P wide)."""
    block_n, block_k = (max(c.kwargs[name] for c in configs) for name in ("BLOCK_N", "BLOCK_K"))
    biggest = {"BLOCK_N x row stride of x": block_n * stride_xn, "BLOCK_K x row stride of W_enc": block_k * stride_wd,
               "BLOCK_N x list capacity": (block_n + 1) * capacity, "latents x probe columns": latents * columns}
    over = [name for name, value in biggest.items() if value >= 2**31]
    if over:
        raise ValueError(f"a launch with {n} tokens, x row stride {stride_xn}, W_enc row stride {stride_wd}, {latents} "
                         f"latents and list capacity {capacity} would overflow the kernel's 32-bit tile offsets "
                         f"({', '.join(over)}); encode fewer SAEs per group or fewer tokens per block")


def jumprelu_probe(x: torch.Tensor, group: Group, capacity: int | None = None, flip_tol: float | None = None,
                   splits: int | None = None, tuned: bool = False, recheck: bool = False,
                   x_norm: torch.Tensor | None = None) -> Fused:
    """Launch the fused kernel on tokens x (N, d); grows `capacity` and relaunches until every list fits.

    capacity: list room per token; None: the room the last launch needed (64 at first). One host
    synchronisation per launch reads the largest L0 (and the entries per SAE); nothing else waits for the GPU.
    With splits > 1 each SAE's latents are cut into that many contiguous shares (starting on 16-latent
    boundaries), each its own job (more parallelism for few tokens); the shares' projections and
    counts are summed and their lists joined in order, on the device. Default: `default_splits` (1 off CUDA).
    tuned: autotune the tiles (benchmarks); scoring uses the one PINNED config (PINNED_FP32 for fp32 tokens), so
    which latents fire never depends on which config won a timing.
    recheck: list the candidates instead of the firing latents (module docstring): the lists hold every entry
    whose exact pre may pass the edge, each with its raw pre as value; l0 and nnz count candidates, near is 0,
    proj is still that of the firing in x's dtype. x_norm: (N,) fp32 norms of the tokens x was rounded from
    (None: x's own, bounded up by 1 / (1 - u) when x is 16-bit); the group's enc_norm must be those of the
    unrounded encoders (pack_group's), else they are computed from W_enc and bounded the same way.
    Classes: one launch per block of group.v (B = 1 up to MAX_CLASS_BLOCK classes). With B > 1 the first block's
    launch settles the lists (and any retry); each later block runs the same kernel again on the same tokens
    for its projection columns, rewriting the same lists (the pinned tiles are deterministic), so every class
    count gets the exact answer, at B times the encoder's cost.
    """
    if x.dim() != 2 or x.shape[1] != group.w_enc.shape[0]:
        raise ValueError(f"x must be (N, {group.w_enc.shape[0]}); got {tuple(x.shape)}")
    if x.dtype != group.w_enc.dtype:
        raise ValueError(f"x is {x.dtype} but the group's encoders are {group.w_enc.dtype}; pack_group with dtype={x.dtype}")
    if not 0 <= (flip_tol or 0) < 1:
        raise ValueError(f"flip_tol is a relative distance in [0, 1); got {flip_tol}")
    if not INTERPRET and not x.is_cuda:
        raise ValueError("the fused kernel runs on CUDA (or under TRITON_INTERPRET=1); use the torch backend on CPU")
    n, d = x.shape
    widths = list(group.widths) or group.offsets.diff().tolist()
    s = len(widths)
    capacity = capacity or _room["capacity"]
    tol = FLIP_TOL[x.dtype] if flip_tol is None else flip_tol
    loose = 1 / (1 - UNIT_ROUNDOFF[x.dtype])  # |v| <= |rounded v| / (1 - u)
    enc_norm = group.enc_norm if group.enc_norm is not None else \
        torch.linalg.vector_norm(group.w_enc, dim=0, dtype=torch.float32) * loose
    if x_norm is None:
        x_norm = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32) * loose
    band, reach = recheck_band(d, x.dtype) if recheck else (0.0, 0.0)
    if reach:  # 16-bit subnormals: (|x| + a)(|w| + a) holds their absolute rounding
        x_norm, enc_norm = x_norm + reach, enc_norm + reach
    pinned = PINNED_FP32 if x.dtype == torch.float32 else PINNED
    sm_count = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 0
    k = splits or (default_splits(n, s, min(widths), sm_count, pinned.kwargs["BLOCK_N"]) if sm_count else 1)
    aligned = all(w % ALIGN == 0 for w in widths)  # offsets are partial sums of the widths
    if group.v.dim() != 3 or group.v.shape[1] != group.w_enc.shape[1]:
        raise ValueError(f"group.v must be (blocks, {group.w_enc.shape[1]}, P); got {tuple(group.v.shape)} "
                         f"(pack_group builds it)")
    blocks, _, block = group.v.shape
    proj = torch.empty(blocks, s * k, n, block, device=x.device, dtype=torch.float32)  # one (S k, N, P) per block
    l0 = torch.empty(s * k, n, device=x.device, dtype=torch.int32)
    near = torch.empty_like(l0)
    retries = 0
    flags = dict(P=block, IEEE=x.dtype == torch.float32, ALIGNED=aligned, ASM_STORES=not INTERPRET, RECHECK=recheck,
                 UPCAST=INTERPRET and x.dtype != torch.float32, GROUP_N=GROUP_N)

    def launch(b: int, index: torch.Tensor, value: torch.Tensor) -> None:
        args = (x, group.w_enc, group.b_enc, group.threshold, group.scale, enc_norm, x_norm, group.v[b],
                group.offsets, proj[b], l0, near, index, value, n, d, index.shape[2], tol, FLIP_ABS, band, k,
                triton.next_power_of_2(max(n, 1)), x.stride(0), x.stride(1), group.w_enc.stride(0),
                group.w_enc.stride(1))
        if tuned:
            _jumprelu_probe_tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]) * s * k,)](*args, **flags)
        else:
            _jumprelu_probe_kernel[(triton.cdiv(n, pinned.kwargs["BLOCK_N"]) * s * k,)](
                *args, **flags, num_warps=pinned.num_warps, num_stages=pinned.num_stages, **pinned.kwargs)

    while True:
        check_offsets(n, x.stride(0), group.w_enc.stride(0), group.v.shape[1], capacity,
                      CONFIGS if tuned else [pinned], block)
        index = torch.empty(s * k, n, capacity, device=x.device, dtype=torch.int32)
        value = torch.empty(s * k, n, capacity, device=x.device, dtype=torch.float32)
        launch(0, index, value)
        shares = l0.view(s, k, n)
        # the launch's one host synchronisation: largest share L0 (overflow?), largest joined L0, entries per SAE
        stats = torch.cat([shares.amax().view(1), shares.sum(dim=1).amax().view(1), shares.sum(dim=(1, 2))]) \
            if n else torch.zeros(2 + s, dtype=torch.int32)
        most, longest, *nnz = stats.tolist()
        if most <= capacity:
            break
        capacity = triton.next_power_of_2(most)
        retries += 1
    _room["capacity"] = max(_room["capacity"], capacity)
    for b in range(1, blocks):  # the lists fit now: the later class blocks' projections
        launch(b, index, value)
    # (B, S k, N, P) -> (S k, N, C): the class blocks side by side, padding dropped (a view when B = 1)
    proj = (proj[0] if blocks == 1 else proj.permute(1, 2, 0, 3).reshape(s * k, n, blocks * block))
    proj = proj[:, :, :group.n_classes]
    if k == 1:
        return Fused(proj, l0, index, value, near, retries, tuple(nnz))
    return _join_splits(proj, shares, index, value, near, max(1, longest), retries, tuple(nnz))


def _scatter_lists(index: torch.Tensor, value: torch.Tensor, dest: torch.Tensor, valid: torch.Tensor,
                   shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries of index/value (any shape) where `valid` moved to flat position `dest` of new tensors of
    `shape` (int64 ids, fp32 values), on the device: invalid entries go to a spare slot past the end."""
    size = math.prod(shape)
    dest = torch.where(valid, dest, size).reshape(-1)
    ids = torch.zeros(size + 1, dtype=torch.int64, device=index.device)
    vals = torch.zeros(size + 1, dtype=torch.float32, device=index.device)
    ids.scatter_(0, dest, index.reshape(-1).long())
    vals.scatter_(0, dest, value.reshape(-1))
    return ids[:size].view(shape), vals[:size].view(shape)


def _join_splits(proj, shares, index, value, near, room: int, retries: int, nnz: tuple) -> Fused:
    """Sum the k shares of each SAE and join their lists (share order = latent order) into `room` slots."""
    s, k, n = shares.shape
    capacity = index.shape[2]
    start = shares.cumsum(dim=1) - shares  # (S, k, N) where each share's entries begin in the joined list
    slot = torch.arange(capacity, device=shares.device)
    sae = torch.arange(s, device=shares.device)[:, None, None, None]
    token = torch.arange(n, device=shares.device)[None, None, :, None]
    dest = (sae * n + token) * room + start[..., None] + slot  # (S, k, N, capacity) flat place in (S, N, room)
    joined_index, joined_value = _scatter_lists(index.view(s, k, n, capacity), value.view(s, k, n, capacity),
                                                dest, slot < shares[..., None], (s, n, room))
    return Fused(proj.reshape(s, k, n, proj.shape[2]).sum(dim=1), shares.sum(dim=1, dtype=torch.int32),
                 joined_index.int(), joined_value, near.view(s, k, n).sum(dim=1, dtype=torch.int32), retries, nnz)


def jumprelu_probe_reference(x: torch.Tensor, group: Group) -> tuple[torch.Tensor, torch.Tensor, list[list]]:
    """fp32 torch reference of one launch: proj (S, N, C), l0 (S, N), and per SAE and token the (ids,
    values) of its active latents. Dense per SAE: for tests and benchmarks at small shapes."""
    x = x.float()
    offsets = group.offsets.tolist()
    blocks, width, block = group.v.shape
    v = group.v.permute(1, 0, 2).reshape(width, blocks * block)[:, :group.n_classes]  # (M, C)
    projs, l0s, lists = [], [], []
    for a, b in zip(offsets, offsets[1:]):
        pre = x @ group.w_enc[:, a:b].float() + group.b_enc[a:b]
        f = torch.relu(pre) * (pre > group.threshold[a:b])
        projs.append(f @ v[a:b])
        l0s.append((f > 0).sum(dim=1).int())
        lists.append([(row.nonzero()[:, 0], row[row > 0] * group.scale[a:b][row > 0]) for row in f])
    return torch.stack(projs), torch.stack(l0s), lists
