"""Encode rows through an SAE into sparse, decoder-norm-folded activations: the scorer's first stage.

    scale = decoder_scale(sae)                                  # (m,) |W_dec[i]|, 1 where a row is zero
    acts = BACKENDS[pick_backend(name, sae)](x, sae, scale)    # SparseActs of rows x (N, d)
    dec_cos, enc_cos = latent_cosines(sae, probe.directions(), scale)   # (m, C) each

Folding: latent i's activation is reported as s_i * n_i and its decoder as W_dec[i] / n_i (reconstructions
unchanged). The encoder runs on the weights as loaded, so firing decisions are exactly the SAE's own, and no folded
copy of W_enc is ever built (a 1M-latent W_enc is 9.7 GB). Two encoders: `encode_sparse`, the torch reference
(chunked over tokens and latents so memory stays at `token_chunk x latent_chunk` however wide the SAE), and
`encode_sparse_fused`, the Triton kernel (`actstore.kernels.jumprelu_probe`; auto = the kernel on CUDA). The kernel
counts firing decisions within rounding of a threshold (`SparseActs.near`): only those may differ between them.
"""

from __future__ import annotations

import torch

from actstore.errors import InputError, NotScorable
from actstore.saes.loading import SAEWeights
from actstore.score.sparse import SparseActs


def decoder_scale(sae: SAEWeights) -> torch.Tensor:
    """(m,) decoder row norms, 1 where a row is zero (nothing to fold)."""
    norms = sae.w_dec.float().norm(dim=1)
    return torch.where(norms > 0, norms, torch.ones_like(norms))


def encode_sparse(x: torch.Tensor, sae: SAEWeights, scale: torch.Tensor, token_chunk: int = 4096,
                  latent_chunk: int = 16384, progress=None, dtype: str | None = None) -> SparseActs:
    """Sparse folded activations of rows x (N, d): the scorer's encoder (and the fused kernel's oracle).

    Elementwise architectures (JumpReLU, ReLU) are encoded in tiles of token_chunk x latent_chunk; TopK needs
    a whole row of pre-activations, so its token chunk shrinks to keep the same number of values.
    scale (m,): the decoder norms multiplied into the values (`decoder_scale`). dtype: ignored (the backends'
    common keyword): the reference computes in the SAE weights' dtype.
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


ENCODE_DTYPES = ("bfloat16", "float16", "float32")
"""the fused kernel's operand dtypes (`ScoreConfig.encode_dtype`)"""
RECHECK_CHUNK = 1 << 14
"""candidates recomputed at once: 2 x RECHECK_CHUNK x d float64 operands (600 MB at d 2304)"""


def encode_group_fused(x: torch.Tensor, saes: list[SAEWeights], token_chunk: int = 4096, progress=None,
                       group=None, dtype: str | None = None) -> list[SparseActs]:
    """Sparse activations of several SAEs of one layer from the fused Triton kernel
    (`actstore.kernels.jumprelu_probe`): one launch per token chunk serves the whole group. JumpReLU and ReLU.

    dtype: the kernel's operands (None: bfloat16); `group` (pack_group output, W_enc in any of them) is packed
    in it when None, else its W_enc's dtype rules. The saes keep their fp32 weights: with 16-bit operands the
    kernel lists candidates (every entry whose exact pre may pass max(thr, 0)) and each is recomputed here in
    float64 from the fp32 tokens and sae.w_enc, so every firing decision is exact arithmetic's and each value
    float32(pre) * scale; `near` counts those whose exact pre lies within fp32's band of the edge (FLIP_TOL
    relative + FLIP_ABS |x_n| |w_i|), the only ones an fp32 reference summing in another order may decide the
    other way. float32: the fp32 kernel alone, its own near count. One host read per launch and one per call.
    """
    from actstore.kernels.jumprelu_probe import FLIP_ABS, FLIP_TOL, jumprelu_probe, pack_group  # Triton: when used

    for sae in saes:
        if sae.architecture not in ("jumprelu", "relu"):
            raise NotScorable(f"SAE {sae.id}: the fused kernel encodes JumpReLU and ReLU SAEs, not "
                              f"{sae.architecture}; use --backend torch")
        if sae.apply_b_dec_to_input and len(saes) > 1:
            raise ValueError(f"SAE {sae.id} subtracts b_dec from its input: encode it alone")
    dtype = dtype or "bfloat16"
    if dtype not in ENCODE_DTYPES:
        raise InputError(f"encode dtype {dtype!r}: choose one of {ENCODE_DTYPES}")
    device = saes[0].w_enc.device
    group = group or pack_group(saes, torch.zeros(0, saes[0].d_model, device=device), getattr(torch, dtype))
    operand = group.w_enc.dtype
    recheck = operand != torch.float32
    starts = [0]  # each SAE's first latent in the group
    for sae in saes[:-1]:
        starts.append(starts[-1] + sae.width)
    parts = [[] for _ in saes]  # per SAE, per launch: (l0 (n,), ids, values, kept or None)
    near = torch.zeros(len(saes), dtype=torch.int64, device=device)
    for start in range(0, len(x), token_chunk):
        xb = x[start:start + token_chunk].to(device=device, dtype=torch.float32)  # (n, d) the exact tokens
        if saes[0].apply_b_dec_to_input:
            xb = xb - saes[0].b_dec.float()
        x_norm = torch.linalg.vector_norm(xb, dim=1)
        out = jumprelu_probe(xb.to(operand).contiguous(), group, recheck=recheck, x_norm=x_norm)  # one host sync
        for i, sae in enumerate(saes):
            ids, vals = out.csr(i)  # the SAE's lists joined on the device, sized by that sync
            if recheck:
                l0, vals, kept, close = _recheck(xb, x_norm, sae, group, starts[i], out.l0[i], ids, out.nnz[i],
                                                 FLIP_TOL[torch.float32], FLIP_ABS)
                near[i] += close
                parts[i].append((l0, ids, vals, kept))
            else:
                near[i] += out.near[i].sum()
                parts[i].append((out.l0[i].long(), ids, vals, None))
        if progress is not None:
            progress(len(xb))
    totals = torch.stack([sum(p[0].sum() for p in per) for per in parts]) if len(x) else torch.zeros_like(near)
    counts = torch.cat([totals, near]).tolist()  # the call's one host read: entries and near counts per SAE
    return [_joined(per, counts[i], sae.width, counts[len(saes) + i], device) for i, (per, sae) in
            enumerate(zip(parts, saes))]


def _recheck(xb: torch.Tensor, x_norm: torch.Tensor, sae: SAEWeights, group, lo: int, l0: torch.Tensor,
             ids: torch.Tensor, nnz: int, flip_tol: float, flip_abs: float) -> tuple:
    """One SAE's candidates (ids (nnz,), token-ordered, l0 (n,) per token) recomputed exactly: pre64 = x_n .
    W_enc[:, i] + b_i in float64 from fp32 operands (products exact, d-term float64 sums), RECHECK_CHUNK at a
    time. Returns the kept entries per token (n,), the values (nnz,) float32(pre64) * scale_i, the kept mask
    (nnz,) pre64 > max(thr_i, 0), and the count of candidates within fp32's band of the edge; no host read."""
    tokens = torch.repeat_interleave(torch.arange(len(l0), device=l0.device), l0.long(), output_size=nnz)
    edge = group.threshold[lo:lo + sae.width].double().clamp(min=0)
    scale = group.scale[lo:lo + sae.width]
    enc_norm = sae.enc_norm if group.enc_norm is None else group.enc_norm[lo:lo + sae.width]
    w_t = sae.w_enc.T  # (m, d) a view: rows gathered whatever the layout
    pre = torch.empty(nnz, dtype=torch.float64, device=ids.device)
    for c in range(0, nnz, RECHECK_CHUNK):
        t, i = tokens[c:c + RECHECK_CHUNK], ids[c:c + RECHECK_CHUNK]
        pre[c:c + RECHECK_CHUNK] = (xb[t].double() * w_t[i].double()).sum(dim=1) + sae.b_enc[i].double()
    edge = edge[ids]  # (nnz,)
    kept = pre > edge
    band = flip_tol * torch.maximum(pre.abs(), edge) + flip_abs * x_norm[tokens].double() * enc_norm[ids].double()
    close = ((pre - edge).abs() <= band).sum()
    per_token = torch.zeros(len(l0), dtype=torch.int64, device=l0.device).index_add_(0, tokens, kept.long())
    return per_token, pre.float() * scale[ids], kept, close


def _joined(parts: list, nnz: int, width: int, near: int, device) -> SparseActs:
    """One SAE's launches joined into one CSR of nnz entries (the kept ones where a launch was rechecked),
    compacted on the device by a scatter (no host read)."""
    if not parts:
        return SparseActs(torch.zeros(1, dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.int64,
                          device=device), torch.zeros(0, device=device), width, near)
    l0 = torch.cat([p[0] for p in parts])
    offsets = torch.zeros(len(l0) + 1, dtype=torch.int64, device=device)
    offsets[1:] = l0.cumsum(0)
    ids, vals = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
    kept = torch.cat([p[3] if p[3] is not None else torch.ones(len(p[1]), dtype=torch.bool, device=device)
                      for p in parts])
    dest = torch.where(kept, kept.long().cumsum(0) - 1, nnz)  # invalid entries to a spare slot past the end
    index = torch.zeros(nnz + 1, dtype=torch.int64, device=device).scatter_(0, dest, ids.long())
    value = torch.zeros(nnz + 1, dtype=torch.float32, device=device).scatter_(0, dest, vals.float())
    return SparseActs(offsets, index[:nnz], value[:nnz], width, near)


def encode_sparse_fused(x: torch.Tensor, sae: SAEWeights, scale: torch.Tensor, token_chunk: int = 4096,
                        latent_chunk: int = 16384, progress=None, dtype: str | None = None) -> SparseActs:
    """One SAE through the fused kernel (`encode_group_fused`, in `dtype`); same interface as `encode_sparse`."""
    return encode_group_fused(x, [sae], token_chunk, progress, dtype=dtype)[0]


BACKENDS = {"torch": encode_sparse, "triton": encode_sparse_fused}
"""Encoders of the scorer; `auto` picks triton for JumpReLU/ReLU SAEs on CUDA, torch otherwise."""


def pick_backend(name: str, sae: SAEWeights) -> str:
    """The encoder `name` (auto, or a key of BACKENDS) means for this SAE."""
    if name == "auto":
        return "triton" if sae.w_enc.is_cuda and sae.architecture in ("jumprelu", "relu") else "torch"
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose auto or one of {sorted(BACKENDS)}")
    return name


def latent_cosines(sae: SAEWeights, directions: torch.Tensor, scale: torch.Tensor, chunk: int = 65536
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(W_dec[i], p_c) and cos(W_enc[:, i], p_c), each (m, C) for directions (C, d), computed a block of
    latents at a time."""
    p = directions.to(device=sae.w_enc.device, dtype=torch.float32)  # (C, d)
    dec, enc = [], []
    for lo in range(0, sae.width, chunk):
        hi = min(sae.width, lo + chunk)
        dec.append((sae.w_dec[lo:hi].float() @ p.T) / scale[lo:hi, None])
        w = sae.w_enc[:, lo:hi].float()  # (d, chunk)
        enc.append((p @ w).T / sae.enc_norm[lo:hi].clamp(min=1e-30)[:, None])
    return torch.cat(dec), torch.cat(enc)


def dense_latents(x: torch.Tensor, sae: SAEWeights, scale: torch.Tensor, latents: torch.Tensor,
                  token_chunk: int = 4096, latent_chunk: int = 16384) -> torch.Tensor:
    """(N, len(latents)) folded activations of a few latents of rows x (N, d): direct for elementwise encoders,
    through the whole row for TopK."""
    if sae.architecture == "topk":
        return encode_sparse(x, sae, scale, token_chunk, latent_chunk).dense_columns(latents)
    picked = sae.select(latents)
    out = [picked.encode(x[s:s + token_chunk].to(sae.w_enc.device, sae.w_enc.dtype)).float()
           for s in range(0, len(x), token_chunk)]
    return torch.cat(out) * scale[latents]
