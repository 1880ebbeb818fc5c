"""Fused JumpReLU encoding, probe projection and sparse activations for a group of SAEs in one launch.

For a block of tokens X (N, d) and S SAEs that read the same layer, their latents concatenated (SAE s owns
latents offsets[s]..offsets[s+1] of W_enc (d, M), b_enc, threshold, scale and V), per SAE s:

    pre   = X @ W_enc[:, s] + b_enc[s]                          (N, m_s), fp32 accumulation
    f     = ReLU(pre) * (pre > threshold)                       JumpReLU as sae-lens computes it
    proj  = f @ V[s]                                            (N, P); V = W_dec @ p^T (m, P), P = 26 padded
    l0    = #{i : f_i > 0}                                      (N,)
    idx, val = the active latents (ids local to the SAE, increasing) and f_i * scale_i (folded values),
            the first `capacity` of each token; l0 > capacity marks an overflow, and the launcher runs
            again with room for the largest l0: lists are never silently cut
    near  = #{i : |pre_i - threshold_i| <= flip_tol * max(|pre_i|, |threshold_i|)}, the firing decisions
            close enough to the threshold that another backend's rounding may take them the other way

proj_c = sum_i f_i (W_dec[i] . p_c) = sum_i s_i cos(W_dec[i], p_c) with s_i = f_i |W_dec[i]|: the projection of
the SAE's reconstruction (less b_dec) on the probe direction. The (N, m) matrix never exists: a program owns
BLOCK_N tokens of one SAE and walks its latents BLOCK_M at a time, keeping proj, l0 and the list fill in
registers. The JumpReLU tile is the left operand of the second dot exactly as computed (no transpose: on
Hopper a transposed dot accumulator fed into another dot has miscompiled, triton issues 6124, 10821).

`jumprelu_probe` is the launcher; `jumprelu_probe_reference` is the fp32 torch reference that tests and
benchmarks compare against; `pack_group` concatenates SAEs into the kernel's layout.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

P_PAD = 32  # 26 probe directions padded to a tl.dot-friendly width
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# the interpreter runs every program in numpy: few, large tiles; on a GPU, autotune over the usual shapes
CONFIGS = [triton.Config({"BLOCK_N": 64, "BLOCK_M": 64, "BLOCK_K": 64}, num_warps=4)] if INTERPRET else [
    triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bn, bm, bk, w, s in [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 128, 32, 8, 4),
                             (256, 64, 64, 8, 3), (64, 64, 64, 4, 3), (128, 256, 64, 8, 3)]
]


@triton.autotune(configs=CONFIGS, key=["N", "D", "CAP"])
@triton.jit
def _jumprelu_probe_kernel(
    x_ptr,  # (N, D) tokens
    w_ptr,  # (D, M) concatenated encoders
    b_ptr,  # (M,) fp32 encoder biases
    thr_ptr,  # (M,) fp32 thresholds
    scale_ptr,  # (M,) fp32 decoder norms (folded values = f * scale)
    v_ptr,  # (M, P) fp32 W_dec @ p^T, padded
    off_ptr,  # (S + 1,) int32 latent offsets of the SAEs
    proj_ptr,  # (S * SPLITS, N, P) fp32 out
    l0_ptr,  # (S * SPLITS, N) int32 out
    near_ptr,  # (S * SPLITS, N) int32 out
    idx_ptr,  # (S * SPLITS, N, CAP) int32 out
    val_ptr,  # (S * SPLITS, N, CAP) fp32 out
    N, D, CAP, flip_tol,
    stride_xn, stride_xd, stride_wd, stride_wm,
    SPLITS: tl.constexpr, P: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    job = tl.program_id(1)  # sae * SPLITS + split: a split is a contiguous share of one SAE's latents
    sae = job // SPLITS
    first = tl.load(off_ptr + sae)
    last = tl.load(off_ptr + sae + 1)
    span = tl.cdiv(last - first, SPLITS)
    start = first + (job % SPLITS) * span
    end = tl.minimum(last, start + span)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_ok = rows < N
    cols = tl.arange(0, P)
    proj = tl.zeros((BLOCK_N, P), dtype=tl.float32)
    count = tl.zeros((BLOCK_N,), dtype=tl.int32)
    near = tl.zeros((BLOCK_N,), dtype=tl.int32)
    out_base = (job * N + rows).to(tl.int64) * CAP  # (BLOCK_N,) start of each token's list
    for m0 in range(start, end, BLOCK_M):
        lat = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,) global latent ids
        lat_ok = lat < end
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < D
            x = tl.load(x_ptr + rows[:, None] * stride_xn + ks[None, :] * stride_xd,
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_K)
            w = tl.load(w_ptr + ks[:, None].to(tl.int64) * stride_wd + lat[None, :].to(tl.int64) * stride_wm,
                        mask=k_ok[:, None] & lat_ok[None, :], other=0.0)  # (BLOCK_K, BLOCK_M)
            if IEEE:
                acc = tl.dot(x, w, acc, input_precision="ieee")
            else:
                acc = tl.dot(x, w, acc)
        b = tl.load(b_ptr + lat, mask=lat_ok, other=0.0)
        thr = tl.load(thr_ptr + lat, mask=lat_ok, other=0.0)
        pre = acc + b[None, :]  # (BLOCK_N, BLOCK_M)
        valid = row_ok[:, None] & lat_ok[None, :]
        fire = (pre > thr[None, :]) & (pre > 0) & valid
        f = tl.where(fire, pre, 0.0)
        bound = flip_tol * tl.maximum(tl.abs(pre), tl.abs(thr[None, :]))
        near += tl.sum(((tl.abs(pre - thr[None, :]) <= bound) & valid).to(tl.int32), axis=1)

        v = tl.load(v_ptr + lat[:, None].to(tl.int64) * P + cols[None, :], mask=lat_ok[:, None], other=0.0)
        if IEEE:
            proj = tl.dot(f, v, proj, input_precision="ieee")  # f is the left operand as computed
        else:
            proj = tl.dot(f, v, proj)

        fire_i = fire.to(tl.int32)
        slot = count[:, None] + tl.cumsum(fire_i, axis=1) - 1  # (BLOCK_N, BLOCK_M) place in the token's list
        keep = fire & (slot < CAP)
        scale = tl.load(scale_ptr + lat, mask=lat_ok, other=0.0)
        where = out_base[:, None] + slot
        tl.store(idx_ptr + where, tl.broadcast_to((lat - first)[None, :], (BLOCK_N, BLOCK_M)), mask=keep)
        tl.store(val_ptr + where, f * scale[None, :], mask=keep)
        count += tl.sum(fire_i, axis=1)

    per_token = (job * N + rows).to(tl.int64)
    tl.store(proj_ptr + per_token[:, None] * P + cols[None, :], proj, mask=row_ok[:, None])
    tl.store(l0_ptr + per_token, count, mask=row_ok)
    tl.store(near_ptr + per_token, near, mask=row_ok)


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
    """(M, P_PAD) fp32 W_dec @ p^T, zero-padded"""
    offsets: torch.Tensor
    """(S + 1,) int32"""


class Fused(NamedTuple):
    proj: torch.Tensor
    """(S, N, P_PAD) fp32 projection of f on each probe direction (columns past the probes are 0)"""
    l0: torch.Tensor
    """(S, N) int32 active latents per token"""
    index: torch.Tensor
    """(S, N, capacity) int32 active latent ids per token, increasing; slots at and past l0 are undefined"""
    value: torch.Tensor
    """(S, N, capacity) fp32 folded activations f * scale, same slots"""
    near: torch.Tensor
    """(S, N) int32 firing decisions within flip_tol of the threshold"""
    retries: int
    """launches repeated because some token had more than `capacity` active latents"""


def pack_group(saes: list, directions: torch.Tensor, dtype: torch.dtype, w_enc: torch.Tensor | None = None) -> Group:
    """Concatenate SAEs (objects with w_enc (d, m), b_enc, w_dec (m, d), and threshold unless ReLU).
    directions (P, d) unit probe directions, P <= 32. Several SAEs' encoders are copied once (one SAE's is
    used as it is); `w_enc`: the (d, M) encoders already side by side (a scheduler that loads each SAE's
    encoder into its slice of one buffer), used as it is."""
    device = saes[0].w_enc.device
    widths = [s.w_enc.shape[1] for s in saes]
    offsets = torch.tensor([0] + widths, device=device).cumsum(0).to(torch.int32)
    norms = torch.cat([s.w_dec.float().norm(dim=1) for s in saes])
    v = torch.zeros(sum(widths), P_PAD, device=device)
    v[:, :directions.shape[0]] = torch.cat([s.w_dec.float() @ directions.to(device).float().T for s in saes])
    if w_enc is None:  # one SAE: no copy
        w_enc = saes[0].w_enc if len(saes) == 1 else torch.cat([s.w_enc for s in saes], dim=1)
    return Group(w_enc.to(dtype),  # any strides: a slice of a shared buffer is used in place
                 torch.cat([s.b_enc.float() for s in saes]),
                 torch.cat([s.threshold.float() if getattr(s, "architecture", "jumprelu") == "jumprelu"
                            else torch.zeros_like(s.b_enc.float()) for s in saes]),  # ReLU: threshold 0
                 torch.where(norms > 0, norms, torch.ones_like(norms)), v, offsets)


FLIP_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
"""Relative distance from the threshold within which a decision may differ from an fp32 reference: about
sqrt(d_model) accumulated roundings of the input dtype, generous for fp32 (tf32 off)."""


def default_splits(n: int, s: int, width: int, device: torch.device) -> int:
    """Latent splits per SAE so that the launch has about 4 programs per SM (few tokens, few SAEs would
    otherwise leave most of the GPU idle); each split keeps at least 4096 latents."""
    if device.type != "cuda":
        return 1
    programs = triton.cdiv(n, 128) * s
    want = triton.cdiv(4 * torch.cuda.get_device_properties(device).multi_processor_count, programs)
    return max(1, min(want, width // 4096))


def jumprelu_probe(x: torch.Tensor, group: Group, capacity: int = 64, flip_tol: float | None = None,
                   splits: int | None = None) -> Fused:
    """Launch the fused kernel on tokens x (N, d); grows `capacity` and relaunches until every list fits.

    With splits > 1 each SAE's latents are cut into that many contiguous shares, each its own program
    column (more parallelism for few tokens); the launcher then sums the shares' projections and counts and
    joins their lists in order. Default: `default_splits`.
    """
    if x.dim() != 2 or x.shape[1] != group.w_enc.shape[0]:
        raise ValueError(f"x must be (N, {group.w_enc.shape[0]}); got {tuple(x.shape)}")
    if x.dtype != group.w_enc.dtype:
        raise ValueError(f"x is {x.dtype} but the group's encoders are {group.w_enc.dtype}; pack_group with dtype={x.dtype}")
    if not INTERPRET and not x.is_cuda:
        raise ValueError("the fused kernel runs on CUDA (or under TRITON_INTERPRET=1); use the torch backend on CPU")
    n, d = x.shape
    s = len(group.offsets) - 1
    tol = FLIP_TOL[x.dtype] if flip_tol is None else flip_tol
    widths = group.offsets.diff()
    k = splits or default_splits(n, s, int(widths.min()), x.device)
    proj = torch.empty(s * k, n, P_PAD, device=x.device, dtype=torch.float32)
    l0 = torch.empty(s * k, n, device=x.device, dtype=torch.int32)
    near = torch.empty_like(l0)
    retries = 0
    while True:
        index = torch.empty(s * k, n, capacity, device=x.device, dtype=torch.int32)
        value = torch.empty(s * k, n, capacity, device=x.device, dtype=torch.float32)

        def grid(meta):
            return triton.cdiv(n, meta["BLOCK_N"]), s * k

        _jumprelu_probe_kernel[grid](
            x, group.w_enc, group.b_enc, group.threshold, group.scale, group.v, group.offsets,
            proj, l0, near, index, value, n, d, capacity, tol,
            x.stride(0), x.stride(1), group.w_enc.stride(0), group.w_enc.stride(1),
            SPLITS=k, P=P_PAD, IEEE=x.dtype == torch.float32)
        most = int(l0.max()) if n else 0
        if most <= capacity:
            break
        capacity = triton.next_power_of_2(most)
        retries += 1
    if k == 1:
        return Fused(proj, l0, index, value, near, retries)
    return _join_splits(proj, l0, index, value, near, s, k, retries)


def _join_splits(proj, l0, index, value, near, s: int, k: int, retries: int) -> Fused:
    """Sum the k shares of each SAE and join their lists (share order = latent order)."""
    n, capacity = l0.shape[1], index.shape[2]
    l0 = l0.view(s, k, n)
    total = l0.sum(dim=1, dtype=torch.int32)  # (S, N)
    start = l0.cumsum(dim=1) - l0  # (S, k, N) where each share's entries begin in the joined list
    room = max(1, int(total.max()))
    valid = torch.arange(capacity, device=l0.device) < l0[..., None]  # (S, k, N, capacity)
    sae, share, token, slot = valid.nonzero(as_tuple=True)
    dest = start[sae, share, token] + slot
    joined_index = torch.zeros(s, n, room, dtype=torch.int32, device=l0.device)
    joined_value = torch.zeros(s, n, room, dtype=torch.float32, device=l0.device)
    joined_index[sae, token, dest] = index.view(s, k, n, capacity)[sae, share, token, slot]
    joined_value[sae, token, dest] = value.view(s, k, n, capacity)[sae, share, token, slot]
    return Fused(proj.view(s, k, n, -1).sum(dim=1), total, joined_index, joined_value,
                 near.view(s, k, n).sum(dim=1, dtype=torch.int32), retries)


def jumprelu_probe_reference(x: torch.Tensor, group: Group) -> tuple[torch.Tensor, torch.Tensor, list[list]]:
    """fp32 torch reference of one launch: proj (S, N, P), l0 (S, N), and per SAE and token the (ids,
    values) of its active latents. Dense per SAE: for tests and benchmarks at small shapes."""
    x = x.float()
    offsets = group.offsets.tolist()
    projs, l0s, lists = [], [], []
    for a, b in zip(offsets, offsets[1:]):
        pre = x @ group.w_enc[:, a:b].float() + group.b_enc[a:b]
        f = torch.relu(pre) * (pre > group.threshold[a:b])
        projs.append(f @ group.v[a:b])
        l0s.append((f > 0).sum(dim=1).int())
        lists.append([(row.nonzero()[:, 0], row[row > 0] * group.scale[a:b][row > 0]) for row in f])
    return torch.stack(projs), torch.stack(l0s), lists
