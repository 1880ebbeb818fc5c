"""Null SAEs matched to a scored SAE (`--null`): what each metric reads on an SAE that knows nothing of the task.

    null = make_null(kind, sae, x, acts, directions)       # scored by `score_sae` like the SAE (acts, cosines, source)
    null_columns(kind, null_summary, summary) -> {"null_<kind>_<metric>": ..., "<metric>_minus_null_<kind>": ...}

Two nulls, each with the SAE's width and its L0 on the vocabulary rows:

- `random_decoder`: a JumpReLU SAE with random unit decoder rows (seeded), encoder = decoder transposed, b_enc 0
  and one threshold for every latent, set so that the mean L0 on a sample of the layer's vocabulary rows equals
  the SAE's (the rows sampled are at most 2^24 / width, at least 16; the L0 it reaches is reported as
  `null_random_decoder_l0_vocab`). It asks how much of a score random directions of the same sparsity reach:
  random unit vectors in d dimensions have cosines of about 1/sqrt(d) with a probe, so absorption's cosine gates
  pass by chance in small d_model;
- `shuffled_firing`: the SAE's own encoder and decoder per latent, but each token's active latents renamed by one
  seeded permutation of the latent ids (same values, so per-token L0 and the activation distribution are exactly
  the SAE's). It keeps the geometry of the dictionary and breaks the link between what fires and what it
  decodes to. Nothing is re-encoded: the SAE's sparse activations are permuted.

Each null is scored like the SAE, on the same rows (same probe, metric version and L1 solver; one seed, no
intervals, no per-token records or top tokens: ScoreConfig.records off; no L0 on natural text, which a null
matches by construction or not at all; no causal metric). Columns: every metric of `null_metrics` (each
SAE-dependent mean of the summary, context precision and recall included, and the dead-latent share) with its
null value and the SAE's value minus it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from actstore.errors import InputError
from actstore.saes.loading import SAEWeights
from actstore.score.encode import decoder_scale, latent_cosines
from actstore.score.sparse import SparseActs

NOT_NULLED = ("mean_probe_f1",)
"""summary means that do not depend on the SAE (the ground-truth probe's F1): no null column"""
NULL_SEED = 0


class Null(NamedTuple):
    """A null SAE as the scorer takes it: `sae` encodes it unless `acts` (its activations of the vocabulary rows)
    and `cosines` ((dec_cos, enc_cos) with the probe directions) are given; `source` (m,) names, for each of its
    latents, the latent of `sae` whose firing it copies (the scorer encodes that one on context rows), or None."""

    sae: SAEWeights
    acts: SparseActs | None = None
    cosines: tuple | None = None
    source: torch.Tensor | None = None


def null_metrics(null_summary: dict) -> list[str]:
    """The metrics a null's summary (one seed, no intervals) gives a value for: every SAE-dependent mean
    (absorption, full absorption, split features, single- and main-latent precision, recall and F1 on the task,
    and on context rows when the store has them) and the dead-latent share."""
    return [k for k in null_summary if k.startswith("mean_") and k not in NOT_NULLED] + ["dead_latent_share"]


def random_decoder_null(sae: SAEWeights, x: torch.Tensor, acts, directions: torch.Tensor, seed: int = NULL_SEED
                        ) -> Null:
    """The null SAE alone: encoded by the scorer like any SAE. x (N, d) the vocabulary rows, acts the SAE's
    sparse activations of them (for its L0)."""
    gen = torch.Generator().manual_seed(seed)
    m, d, device, dtype = sae.width, sae.d_model, sae.w_enc.device, sae.w_enc.dtype
    w_dec = torch.nn.functional.normalize(torch.randn(m, d, generator=gen), dim=1).to(device, dtype)  # (m, d)
    rows = max(16, min(len(x), (1 << 24) // m))
    sample = x[torch.randperm(len(x), generator=gen)[:rows]].to(device, dtype)  # (r, d)
    pre = (sample @ w_dec.T).float().flatten()  # (r * m,)
    fires = int(round(float(acts.l0.float().mean()) * len(sample)))  # the SAE's mean L0 on this many rows
    if fires <= 0:
        threshold = float(pre.max())  # nothing fires (pre > threshold is strict)
    elif fires >= len(pre):
        threshold = float(pre.min()) - 1.0
    else:
        threshold = float(pre.kthvalue(len(pre) - fires).values)  # exactly `fires` values lie above it
    null = SAEWeights(f"{sae.id} random-decoder null", w_dec.T, torch.zeros(m, device=device, dtype=dtype), w_dec,
                      torch.zeros(d, device=device, dtype=dtype), "jumprelu",
                      torch.full((m,), threshold, device=device, dtype=dtype), layer=sae.layer)
    return Null(null)


def shuffled_firing_null(sae: SAEWeights, x: torch.Tensor, acts, directions: torch.Tensor, seed: int = NULL_SEED
                         ) -> Null:
    """The SAE, its activations with latent ids permuted, the SAE's cosines with `directions` (C, d), and the
    inverse permutation as `source`: latent perm[i] fires where latent i did, with i's values (on context rows
    too: the scorer encodes latent source[j] = i for the null's latent j)."""
    perm = shuffle_permutation(sae.width, seed).to(acts.index.device)
    n = len(acts.offsets) - 1
    rows = torch.repeat_interleave(torch.arange(n, device=acts.index.device), acts.l0)
    index = perm[acts.index]
    order = torch.argsort(rows * sae.width + index)  # ids increase within a row again
    permuted = SparseActs(acts.offsets, index[order], acts.value[order], acts.width, acts.near)
    return Null(sae, permuted, latent_cosines(sae, directions, decoder_scale(sae)), torch.argsort(perm))


def shuffle_permutation(width: int, seed: int = NULL_SEED) -> torch.Tensor:
    """(width,) the shuffled-firing null's renaming: latent i's firing goes to latent perm[i]."""
    return torch.randperm(width, generator=torch.Generator().manual_seed(seed))


NULLS = {"random_decoder": random_decoder_null, "shuffled_firing": shuffled_firing_null}
"""`--null` choices"""


def make_null(kind: str, sae: SAEWeights, x: torch.Tensor, acts: SparseActs, directions: torch.Tensor) -> Null:
    """The null `kind` (a key of NULLS) of `sae`: x (N, d) the vocabulary rows, acts the SAE's sparse activations
    of them, directions (C, d) the probe directions."""
    if kind not in NULLS:
        raise InputError(f"unknown null {kind!r}; choose from {sorted(NULLS)}")
    return NULLS[kind](sae, x, acts, directions)


def null_columns(kind: str, null_summary: dict, summary: dict) -> dict:
    """The columns of one null: its L0 on the vocabulary rows, and every metric of `null_metrics` with the null's
    value (`null_<kind>_<metric>`) and the SAE's value minus it (`<metric>_minus_null_<kind>`)."""
    out = {f"null_{kind}_l0_vocab": null_summary["l0_vocab"]}
    for metric in null_metrics(null_summary):
        out[f"null_{kind}_{metric}"] = null_summary[metric]
        out[f"{metric}_minus_null_{kind}"] = summary[metric] - null_summary[metric]
    return out
