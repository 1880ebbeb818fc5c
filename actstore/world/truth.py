"""Ground-truth absorption of an SAE trained on a world, from the world's known features (no probe, no k-sparse
probe: nothing actstore measures).

For an SAE with decoder rows W_i (unit direction w_i = W_i / |W_i|), activations s_i on a row, and the world's unit
feature directions f:

    child latents      C_p = latents that fire on p's rows almost only with one child: at least MIN_FIRING of p's
                       rows, and of those at least SELECTIVE with the same child c of p (the world knows each row's
                       child). Firing, not the decoder, tells them apart: an absorbing child latent's decoder holds
                       the parent's direction (cos 0.78 with it in TopK k=1 of the default world), and a parent
                       latent's decoder can lean toward a child (cos 0.3-0.4 in Matryoshka k=2) while firing on the
                       parent's rows with or without one
    parent latent      L_p = argmax_{i not in C_p} cos(w_i, f_p): the latent that best matches p's true direction
                       among those that are not a child's; none when its cosine is under PARENT_MIN (the SAE has
                       no latent for the parent alone: its direction lives only in child latents)
    carriers           i in C_p with cos(w_i, f_p) >= GATE: child latents whose decoder carries p's direction
    along f_p          c_i = s_i * (W_i . f_p), what latent i adds to the reconstruction along f_p
    on a row of p      main = c_{L_p} (0 without a parent latent); absorbed = sum over carriers of max(c_i, 0)
      full absorption      s_{L_p} == 0 (or no parent latent) and absorbed > 0: the parent latent is silent while
                           a child latent carries the parent's direction
      absorption fraction  absorbed / (absorbed + max(main, 0)), 0 when both are 0

The issue's literal rule takes L_p = argmax over every latent. On an SAE that absorbs heavily the best match to
the parent is often an absorbing child latent, and the literal rule then calls it the parent latent and cannot
count its absorption. Both are computed: `gt_*` (the rule above) and `gt_*_literal`, with
`parent_latent_is_child` (the share of parents whose literal parent latent is a child latent).

Per parent: the means over its test rows (the rows of the class in the store's test split, the rows actstore's
metric reads, before its probe picks its true positives; in the default worlds the probes' test F1 is 1.0, so
they are the same rows). Per SAE: means over parents.
"""

from __future__ import annotations

import math

import numpy as np
import torch

GATE = 0.1
"""cos(w_i, f_p) a child latent needs to count as carrying the parent's direction (the world's features are
orthogonal to about 1e-2, so a latent that learned its child alone stays far below it)."""
PARENT_MIN = 0.5
"""cos(w_i, f_p) the best non-child latent needs to be p's parent latent."""
SELECTIVE = 0.9
"""Share of a latent's firing rows of parent p that must hold one child of p for it to be that child's latent."""
MIN_FIRING = 3
"""Fewest of p's rows a latent must fire on to be classed by its firing."""
VERSION = 3
"""The definitions' version, recorded in truth.json: a truth.json of another version is computed again."""


def latent_matches(w_dec: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(m, F) cos(w_i, f) of every decoder row with every unit feature direction."""
    w = torch.nn.functional.normalize(w_dec.float(), dim=1)
    return w @ torch.nn.functional.normalize(features.float(), dim=1).T


def ground_truth(acts: torch.Tensor, w_dec: torch.Tensor, features: torch.Tensor, parent: np.ndarray,
                 child: np.ndarray, children: list[list[int]], class_names: list[str],
                 gate: float = GATE) -> list[dict]:
    """Per parent: its ground-truth absorption fraction and full-absorption rate on the given rows, by the rule
    above (`gt_*`) and the literal one (`gt_*_literal`).

    acts: (n, m) the SAE's activations on the rows; w_dec: (m, d) its decoder; features: (F, d) the world's
    feature directions; parent: (n,) each row's parent (its class); child: (n,) the child feature that fires with
    it (-1: none); children[p]: p's child feature indices."""
    cos = latent_matches(w_dec, features)                                      # (m, F)
    along = w_dec.float() @ torch.nn.functional.normalize(features.float(), dim=1).T   # (m, F) W_i . f
    acts = acts.float()
    out = []
    for p, name in enumerate(class_names):
        mine = parent == p
        s = acts[torch.as_tensor(mine)]                                        # (n_p, m)
        is_child = child_latents(s > 0, torch.as_tensor(child[mine]), children[p])
        outside = torch.where(is_child, torch.full_like(cos[:, p], -math.inf), cos[:, p])
        lead = int(outside.argmax()) if float(outside.max()) >= PARENT_MIN else None
        literal = int(cos[:, p].argmax())
        carriers = torch.nonzero(is_child & (cos[:, p] >= gate)).flatten()
        fraction, full = _rates(s, along[:, p], lead, carriers)
        literal_carriers = carriers[carriers != literal]
        fraction_literal, full_literal = _rates(s, along[:, p], literal, literal_carriers)
        out.append({"class": name, "rows": len(s), "parent_latent": lead,
                    "parent_latent_cos": round(float(outside.max()), 6), "carriers": carriers.tolist(),
                    "gt_absorption_fraction": fraction, "gt_full_absorption": full,
                    "parent_latent_literal": literal, "parent_latent_is_child": bool(is_child[literal]),
                    "gt_absorption_fraction_literal": fraction_literal, "gt_full_absorption_literal": full_literal})
    return out


def child_latents(fires: torch.Tensor, row_child: torch.Tensor, kids: list[int]) -> torch.Tensor:
    """(m,) bool: the latents that fire on at least MIN_FIRING of the rows and, of those rows, on at least
    SELECTIVE with one and the same child. fires: (n_p, m) bool on a parent's rows; row_child: (n_p,) each row's
    child feature (-1: none); kids: the parent's children."""
    fires = fires.float()
    count = fires.sum(dim=0)                                                   # (m,)
    best = torch.zeros_like(count)
    for c in kids:
        best = torch.maximum(best, fires[row_child == c].sum(dim=0))           # rows with child c it fires on
    return (count >= MIN_FIRING) & (best >= SELECTIVE * count)


def _rates(s: torch.Tensor, along: torch.Tensor, lead: int | None, carriers: torch.Tensor) -> tuple[float, float]:
    """(mean absorption fraction, full-absorption rate) over the rows s (n_p, m), with parent latent `lead` (None:
    none) and the given carriers; along: (m,) W_i . f_p."""
    if not len(s):
        return 0.0, 0.0
    main = s[:, lead] * along[lead] if lead is not None else torch.zeros(len(s))
    silent = s[:, lead] == 0 if lead is not None else torch.ones(len(s), dtype=torch.bool)
    absorbed = (s[:, carriers] * along[carriers]).clamp(min=0).sum(dim=1)
    total = absorbed + main.clamp(min=0)
    fraction = torch.where(total > 0, absorbed / total.clamp(min=1e-30), torch.zeros_like(total))
    return float(fraction.mean()), float((silent & (absorbed > 0)).float().mean())


def summarize(per_class: list[dict], classes: list[str] | None = None) -> dict:
    """Means over parents (those in `classes`, when given: the classes actstore evaluated)."""
    rows = [r for r in per_class if classes is None or r["class"] in classes]
    keys = ("gt_absorption_fraction", "gt_full_absorption", "gt_absorption_fraction_literal",
            "gt_full_absorption_literal")
    out = {key: float(np.mean([r[key] for r in rows])) if rows else None for key in keys}
    out["parent_latent_is_child"] = float(np.mean([r["parent_latent_is_child"] for r in rows])) if rows else None
    return {**out, "gt_classes": len(rows)}
