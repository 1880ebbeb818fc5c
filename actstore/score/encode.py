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
    from actstore.kernels.jumprelu_probe import jumprelu_probe, pack_group  # Triton: imported when used

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
        enc.append((p @ w).T / w.norm(dim=0).clamp(min=1e-30)[:, None])
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
