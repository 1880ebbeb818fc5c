"""Ground-truth absorption of an SAE trained on a world, from the world's known features (no probe, no k-sparse
probe: nothing actstore measures).

For an SAE with decoder rows W_i (unit direction w_i = W_i / |W_i|), activations s_i on a row, and the world's unit
feature directions f:

    parent latent      L_p = argmax_i cos(w_i, f_p): the latent that best matches parent p's true direction
    child latents      C_p = { i != L_p : c = argmax_{f != p} cos(w_i, f) is a child of p, cos(w_i, f_c) >= GATE }:
                       latents whose best match, the parent itself aside, is one of p's children (a child latent that
                       absorbed its parent matches both; leaving p out names the child)
    carriers           i in C_p with cos(w_i, f_p) >= GATE: child latents whose decoder carries p's direction
    along f_p          c_i = s_i * (W_i . f_p), what latent i adds to the reconstruction along f_p
    on a row of p      main = c_{L_p}; absorbed = sum over carriers of max(c_i, 0)
      full absorption      s_{L_p} == 0 and absorbed > 0: the parent latent is silent while a child latent
                           carries the parent's direction
      absorption fraction  absorbed / (absorbed + max(main, 0)), 0 when both are 0

Per parent: the means over its test rows (the rows of the class in the store's test split, the rows actstore's
metric reads, before its probe picks its true positives). Per SAE: means over parents.
"""

from __future__ import annotations

import math

import numpy as np
import torch

GATE = 0.1
"""cos(w_i, f_p) a child latent needs to count as carrying the parent's direction (the world's features are
orthogonal to about 1e-2, so a latent that learned its child alone stays far below it)."""


def latent_matches(w_dec: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(m, F) cos(w_i, f) of every decoder row with every unit feature direction."""
    w = torch.nn.functional.normalize(w_dec.float(), dim=1)
    return w @ torch.nn.functional.normalize(features.float(), dim=1).T


def ground_truth(acts: torch.Tensor, w_dec: torch.Tensor, features: torch.Tensor, parent: np.ndarray,
                 children: list[list[int]], class_names: list[str], gate: float = GATE) -> list[dict]:
    """Per parent: its ground-truth absorption fraction and full-absorption rate on the given rows.

    acts: (n, m) the SAE's activations on the rows; w_dec: (m, d) its decoder; features: (F, d) the world's
    feature directions; parent: (n,) each row's parent (its class); children[p]: p's child feature indices."""
    cos = latent_matches(w_dec, features)                                      # (m, F)
    along = w_dec.float() @ torch.nn.functional.normalize(features.float(), dim=1).T   # (m, F) W_i . f
    acts = acts.float()
    out = []
    for p, name in enumerate(class_names):
        rows = torch.as_tensor(parent == p)
        n = int(rows.sum())
        lead = int(cos[:, p].argmax())
        others = cos.clone()
        others[:, p] = -math.inf
        best, best_cos = others.argmax(dim=1), others.amax(dim=1)             # (m,) the best match but p
        mine = torch.isin(best, torch.as_tensor(children[p], dtype=best.dtype)) & (best_cos >= gate)
        mine[lead] = False
        carriers = torch.nonzero(mine & (cos[:, p] >= gate)).flatten()
        s = acts[rows]                                                         # (n_p, m)
        main = s[:, lead] * along[lead, p]
        absorbed = (s[:, carriers] * along[carriers, p]).clamp(min=0).sum(dim=1)
        full = (s[:, lead] == 0) & (absorbed > 0)
        total = absorbed + main.clamp(min=0)
        fraction = torch.where(total > 0, absorbed / total.clamp(min=1e-30), torch.zeros_like(total))
        out.append({"class": name, "rows": n, "parent_latent": lead, "parent_latent_cos": round(float(cos[lead, p]), 6),
                    "carriers": carriers.tolist(),
                    "gt_absorption_fraction": float(fraction.mean()) if n else 0.0,
                    "gt_full_absorption": float(full.float().mean()) if n else 0.0})
    return out


def summarize(per_class: list[dict], classes: list[str] | None = None) -> dict:
    """Means over parents (those in `classes`, when given: the classes actstore evaluated)."""
    rows = [r for r in per_class if classes is None or r["class"] in classes]
    return {"gt_absorption_fraction": float(np.mean([r["gt_absorption_fraction"] for r in rows])) if rows else None,
            "gt_full_absorption": float(np.mean([r["gt_full_absorption"] for r in rows])) if rows else None,
            "gt_classes": len(rows)}
