"""Absorption of one class's tokens, per token, and the per-token records that show it (tokens.parquet).

    fraction, full, terms = absorption_per_token(value, cos, is_main, act, version)   # (R,) each
    columns = token_records(rows, names, index, value, cos, terms, act, fraction, full, missed, main_acts, n_main,
                            data)                                          # every class's records at once
    absorbed(record), token_absorbers(record)                                         # one record's verdict, absorbers

The rules themselves are `actstore.score.metrics` (absorption_terms, absorption_fraction, full_absorption); this
module applies them to a class's probe true positives in SAEBench's precision, and writes the records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from actstore.score import metrics

if TYPE_CHECKING:  # an annotation only: config imports causal, which imports `absorbed` from here
    from actstore.score.config import LayerData


class TokenAbsorption(NamedTuple):
    fraction: torch.Tensor
    """(R,) float64 absorption fraction"""
    full: torch.Tensor
    """(R,) bool full absorption"""
    terms: metrics.AbsorptionTerms
    """the sums and top latents they were decided from (per-token records)"""


def token_absorption(value: torch.Tensor, cos: torch.Tensor, is_main: torch.Tensor, act: torch.Tensor,
                     version: str = "saebench-0.6") -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction, full) of `absorption_per_token`."""
    return absorption_per_token(value, cos, is_main, act, version)[:2]


def absorption_per_token(value: torch.Tensor, cos: torch.Tensor, is_main: torch.Tensor, act: torch.Tensor,
                         version: str = "saebench-0.6") -> TokenAbsorption:
    """Per-token absorption fraction (float64) and full absorption (bool) of one class's tokens.

    Each row lists its active latents (`SparseActs.padded`): value (R, L) folded activations, cos (R, L) their
    cos(W_dec[i], p_c) (0 on padding), is_main (R, L) bool; act (R,) = a . p_c. Inputs are float32, as SAEBench's
    tensors are. The rules compare in float64, as SAEBench's do (its per-token values are Python floats): main,
    T and (saebench-0.3) the sum of all projections are float32 sums of float32 products, as its tensor code
    computes them, then widened; the cosine gate and proj_i > 0 stay float32 tensor comparisons, as in SAEBench;
    full absorption's proj / act takes the top latent's activation x cos in float64, as its FeatureScore does.
    So tokens that sit on a threshold (ratio 0.4, activation 1e-8) go the way SAEBench sends them."""
    terms = metrics.absorption_terms(value, cos, is_main)
    act = act.double()
    if version == "saebench-0.3":
        fraction = metrics.absorption_fraction_v03(act, terms.main.double(), (value * cos).sum(dim=1).double())
    else:
        fraction = metrics.absorption_fraction(act, terms.main.double(), terms.top.double())
    best = (value * cos).argmax(dim=1, keepdim=True)  # (R, 1) the latent with the largest proj_i
    top_proj = value.gather(1, best)[:, 0].double() * cos.gather(1, best)[:, 0].double()
    full = metrics.full_absorption(act, terms.main_max_act.double(), top_proj, terms.top_cos.double())
    return TokenAbsorption(fraction, full, terms)


TOKEN_COLUMNS = ("class", "row", "token_id", "text", "probe_projection", "main_projection", "main_acts",
                 "absorber_latents", "absorber_acts", "absorber_cos", "absorber_projections", "top_latent",
                 "top_cos", "top_projection_ratio", "absorption_fraction", "full_absorption", "k_sparse_miss")
"""Columns of the per-token records (tokens.parquet; docs/commands.md "Per-token records" says what each holds);
`class` is the class name (task.classes[c])."""


def record_rows(columns: dict[str, list]):
    """The rows of a column dict, one dict each."""
    names = list(columns)
    return (dict(zip(names, values)) for values in zip(*columns.values()))


def token_records(rows: torch.Tensor, names: list[str], index: torch.Tensor, value: torch.Tensor, cos: torch.Tensor,
                  terms: metrics.AbsorptionTerms, act: torch.Tensor, fraction: torch.Tensor, full: torch.Tensor,
                  missed: torch.Tensor, main_acts: torch.Tensor, n_main: torch.Tensor, data: LayerData
                  ) -> dict[str, list]:
    """The per-token records of every evaluated class at once, as columns (TOKEN_COLUMNS), from the very tensors
    its means are taken from: record r is the true positive rows[r] (R,) of class names[r]; row r of `index,
    value, cos` (R, L) lists its active latents (padded: `SparseActs.padded`); terms/act/fraction/full are
    `absorption_terms`, a . p_c and the rules' outcomes (R,); missed (R,) bool; main_acts (R, K) the main latents'
    activations in the class's order, the first n_main[r] of them its class's.

    The absorbing latents are the (at most top_k) non-main latents of T; the top latent is the
    largest-projection latent overall, with its projection / act (0 where act <= 0). The device tensors come to
    the host in two transfers (integers, floats widened to float64: exactly the values `.tolist()` of each gives);
    the lists are built there.
    """
    proj = value * cos  # (R, L)
    slots = terms.top_slots  # (R, top_k), -1 where empty
    safe = slots.clamp(min=0)
    ratio = torch.where(act > 0, terms.top_proj / torch.where(act > 0, act, torch.ones_like(act)),
                        torch.zeros_like(act))
    top_k, k = slots.shape[1], main_acts.shape[1]
    ints = torch.cat([rows[:, None], index.gather(1, safe), index.gather(1, terms.best_slot[:, None]),
                      (slots >= 0).long(), full[:, None].long(), missed[:, None].long(), n_main[:, None]], 1).cpu()
    floats = torch.cat([value.gather(1, safe), cos.gather(1, safe), proj.gather(1, safe)], 1).double()
    floats = torch.cat([floats, torch.stack([act.double(), terms.main.double(), terms.top_cos.double(),
                                             ratio.double(), fraction.double()], 1), main_acts.double()], 1).cpu()
    row, absorbers, top_latent, present, rest = ints.split([1, top_k, 1, top_k, 3], dim=1)
    absorber_acts, absorber_cos, absorber_proj, scalars, mains = floats.split([top_k, top_k, top_k, 5, k], dim=1)
    keep = present.bool().tolist()
    row_ids, row = row[:, 0], row[:, 0].tolist()

    def listed(t: torch.Tensor) -> list[list]:
        return [[x for x, ok in zip(r, use) if ok] for r, use in zip(t.tolist(), keep)]

    full, missed, n_main = rest.T.tolist()
    act, main, top_cos, ratio, fraction = scalars.T.tolist()
    token_id = data.token_id[row_ids].tolist() if data.token_id is not None else [-1] * len(row)
    return {
        "class": names, "row": row, "token_id": token_id,
        "text": [data.text[r] for r in row] if data.text is not None else [""] * len(row),
        "probe_projection": act, "main_projection": main,
        "main_acts": [values[:n] for values, n in zip(mains.tolist(), n_main)],
        "absorber_latents": listed(absorbers), "absorber_acts": listed(absorber_acts),
        "absorber_cos": listed(absorber_cos), "absorber_projections": listed(absorber_proj),
        "top_latent": top_latent[:, 0].tolist(), "top_cos": top_cos, "top_projection_ratio": ratio,
        "absorption_fraction": fraction, "full_absorption": [bool(f) for f in full],
        "k_sparse_miss": [bool(m) for m in missed],
    }


def absorbed(row: dict) -> bool:
    """A token record is absorbed: its absorption fraction is > 0, or it is fully absorbed."""
    return row["absorption_fraction"] > 0 or row["full_absorption"]


def token_absorbers(row: dict) -> list[tuple[int, float, float]]:
    """(latent, cos, share of the projection) of each absorber of one token record, T's latents first."""
    act = row["probe_projection"]
    out = []
    if row["absorption_fraction"] > 0:
        out = [(int(i), float(c), p / act) for i, c, p in
               zip(row["absorber_latents"], row["absorber_cos"], row["absorber_projections"])]
    if row["full_absorption"] and all(i != row["top_latent"] for i, _, _ in out):
        out.append((int(row["top_latent"]), float(row["top_cos"]), float(row["top_projection_ratio"])))
    return out
