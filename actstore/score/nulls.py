"""Null SAEs matched to a scored SAE (`--null`): what each metric reads on an SAE that knows nothing of the task.

    null = make_null(kind, sae, x, acts, directions)       # scored by `score_sae` like the SAE (acts, cosines, source)
    null_columns(kind, null_summary, summary, null)        # its columns in the SAE's summary (below)
    legacy_columns(row)                                    # a row written before the chance level was named

Two nulls, each with the SAE's width and its L0 on the vocabulary rows. They answer different questions:

- `random_decoder`, a **chance level**, not a zero-absorption baseline: a JumpReLU SAE with random unit decoder
  rows (seeded), encoder = decoder transposed, b_enc 0 and one threshold for every latent, set so that the mean
  L0 on a sample of the layer's vocabulary rows equals the SAE's (the rows sampled are at most 2^24 / width, at
  least 16). It reads what a dictionary of random directions of the same width and sparsity scores by chance.
  Its latents that fire on a class's tokens are the ones that happen to point along the class's activations,
  and a random unit vector in d dimensions has cos >= 0.1 (absorption's cosine gate) with a probe direction
  with probability 0.5 I_{0.99}((d - 1) / 2, 1 / 2): 0.21 at d = 64 (the demo), 0.012 at d = 512, 8e-7 at
  d = 2304 (Gemma 2 2B). So in small d some random latents pass the gate and absorb: on the demo's planted
  0% and 10% SAEs this null reads 0.12-0.18, more than the SAEs themselves. An SAE's value minus it is not
  recovered absorption, and no such column is written. Columns: `chance_random_decoder_<metric>`,
  `chance_random_decoder_l0_vocab` (the L0 it reaches) and `chance_random_decoder_gate_share` (the share of
  (latent, class) pairs whose decoder row has cos >= 0.1 with the class's probe direction: the chance above,
  measured on this null's own latents);
- `shuffled_firing`, a **null** SAE: the SAE's own encoder and decoder per latent, but each token's active
  latents renamed by one seeded permutation of the latent ids (same values, so per-token L0 and the activation
  distribution are exactly the SAE's). It keeps the geometry of the dictionary and breaks the link between what
  fires and what it decodes to; nothing is re-encoded: the SAE's sparse activations are permuted. On an SAE
  whose class latents are clean it reads 0 absorption, and the SAE minus it is the SAE's absorption (tested on
  planted SAEs). Columns: `null_shuffled_firing_<metric>`, `<metric>_minus_null_shuffled_firing` and
  `null_shuffled_firing_l0_vocab`.

Each is scored like the SAE, on the same rows (same probe, metric version and L1 solver; one seed, no
intervals, no per-token records or top tokens: ScoreConfig.records off; no L0 on natural text, which a null
matches by construction or not at all; no causal metric), for every metric of `null_metrics` (each
SAE-dependent mean of the summary, context precision and recall included, and the dead-latent share).
Results written before the chance level was named (`null_random_decoder_<metric>` and
`<metric>_minus_null_random_decoder`) read through `legacy_columns`: the former as `chance_random_decoder_<metric>`,
the latter dropped.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from actstore.errors import InputError
from actstore.saes.loading import SAEWeights
from actstore.score.encode import decoder_scale, latent_cosines
from actstore.score.metrics import ABSORPTION_MIN_COS
from actstore.score.sparse import SparseActs

NOT_NULLED = ("mean_probe_f1",)
"""summary means that do not depend on the SAE (the ground-truth probe's F1): no null column"""
NULL_SEED = 0
CHANCE_LEVELS = ("random_decoder",)
"""nulls that measure a chance level (columns `chance_<kind>_*`, no difference column), not a zero baseline"""


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


def gate_share(w_dec: torch.Tensor, directions: torch.Tensor, min_cos: float = ABSORPTION_MIN_COS) -> float:
    """The share of (latent, class) pairs whose decoder row w_dec (m, d) has cos >= min_cos with the class's
    probe direction (directions (C, d)): for random unit rows, the chance that a latent passes absorption's
    cosine gate."""
    cos = torch.nn.functional.normalize(w_dec.double(), dim=1) @ torch.nn.functional.normalize(
        directions.double().to(w_dec.device), dim=1).T  # (m, C)
    return float((cos >= min_cos).double().mean())


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


def column_prefix(kind: str) -> str:
    """`chance_<kind>_` for a chance level (CHANCE_LEVELS), `null_<kind>_` for a null."""
    return f"chance_{kind}_" if kind in CHANCE_LEVELS else f"null_{kind}_"


def null_columns(kind: str, null_summary: dict, summary: dict, null: Null | None = None,
                 directions: torch.Tensor | None = None) -> dict:
    """The columns of one null: its L0 on the vocabulary rows, every metric of `null_metrics` with the null's
    value (`<prefix><metric>`, prefix `column_prefix(kind)`), and for a null that is not a chance level the
    SAE's value minus it (`<metric>_minus_null_<kind>`). With the null and the probe directions (C, d), a chance
    level's `gate_share` too."""
    prefix = column_prefix(kind)
    out = {f"{prefix}l0_vocab": null_summary["l0_vocab"]}
    if kind in CHANCE_LEVELS and null is not None and directions is not None:
        out[f"{prefix}gate_share"] = gate_share(null.sae.w_dec, directions)
    for metric in null_metrics(null_summary):
        out[prefix + metric] = null_summary[metric]
        if kind not in CHANCE_LEVELS:
            out[f"{metric}_minus_null_{kind}"] = summary[metric] - null_summary[metric]
    return out


def legacy_columns(row: dict) -> dict:
    """A summary row (a part's or saes.parquet's) as this version names its columns: a chance level's columns
    written as a null's (`null_random_decoder_<metric>`, before the chance level was named) renamed
    `chance_random_decoder_<metric>`, and their differences (`<metric>_minus_null_random_decoder`) dropped.
    Changes `row` in place and returns it."""
    for kind in CHANCE_LEVELS:
        old, new, diff = f"null_{kind}_", f"chance_{kind}_", f"_minus_null_{kind}"
        for key in [k for k in row if k.startswith(old) or k.endswith(diff)]:
            value = row.pop(key)
            if key.startswith(old) and row.get(new + key[len(old):]) is None:
                row[new + key[len(old):]] = value
    return row
