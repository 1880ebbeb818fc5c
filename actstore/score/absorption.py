"""Absorption of one class's tokens, per token, and the per-token records that show it (tokens.parquet).

    fraction, full, terms = absorption_per_token(value, cos, is_main, act, version)   # (R,) each
    columns = token_records(tp, index, value, cos, terms, act, fraction, full, missed, main_acts, data)
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


def token_records(tp: torch.Tensor, index: torch.Tensor, value: torch.Tensor, cos: torch.Tensor,
                  terms: metrics.AbsorptionTerms, act: torch.Tensor, fraction: torch.Tensor, full: torch.Tensor,
                  missed: torch.Tensor, main_acts: torch.Tensor, data: LayerData) -> dict[str, list]:
    """One class's per-token records, as columns (every TOKEN_COLUMNS name but `class`), from the very
    tensors its means are taken from: row r of `index, value, cos` (R, L) lists the active latents of the
    r-th true positive (tp, (N,) bool); terms/act/fraction/full are `absorption_terms`, a . p_c and the rules'
    outcomes (R,); missed (R,) bool; main_acts (R, k) the main latents' activations in the class's order.

    The absorbing latents are the (at most top_k) non-main latents of T; the top latent is the
    largest-projection latent overall, with its projection / act (0 where act <= 0).
    """
    rows = tp.nonzero()[:, 0].cpu()
    proj = value * cos  # (R, L)
    slots = terms.top_slots  # (R, top_k), -1 where empty
    safe = slots.clamp(min=0)
    present = slots >= 0
    ratio = torch.where(act > 0, terms.top_proj / torch.where(act > 0, act, torch.ones_like(act)),
                        torch.zeros_like(act))

    def listed(t: torch.Tensor) -> list[list]:
        return [[x for x, ok in zip(r, keep) if ok] for r, keep in zip(t.tolist(), present.tolist())]

    token_id = data.token_id[rows].tolist() if data.token_id is not None else [-1] * len(rows)
    return {
        "row": rows.tolist(), "token_id": token_id,
        "text": [data.text[r] for r in rows.tolist()] if data.text is not None else [""] * len(rows),
        "probe_projection": act.tolist(), "main_projection": terms.main.tolist(), "main_acts": main_acts.tolist(),
        "absorber_latents": listed(index.gather(1, safe)), "absorber_acts": listed(value.gather(1, safe)),
        "absorber_cos": listed(cos.gather(1, safe)), "absorber_projections": listed(proj.gather(1, safe)),
        "top_latent": index.gather(1, terms.best_slot[:, None])[:, 0].tolist(), "top_cos": terms.top_cos.tolist(),
        "top_projection_ratio": ratio.tolist(), "absorption_fraction": fraction.tolist(),
        "full_absorption": full.tolist(), "k_sparse_miss": missed.tolist(),
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
