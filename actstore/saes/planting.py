"""How a synthetic JumpReLU SAE is planted: class latents, splits and absorption, built against a store's probes
for a task, so that its truth is known. saes/synthetic.py loads the world, writes the SAEs and compares them with
the truth; this module is the construction (`plant_sae`), the same for every task's classes (first_letter's 26
letters, or any other task's C classes, C < d_model).

    params, truth = plant_sae(world, absorption=0.3, split_classes={4: 2}, cfg=SynthSAEConfig(), seed=0)

One SAE per absorption rate f (saes/synthetic.py writes it to DIR/layer_L/width_W/absorption_F/params.npz, and
truth.json beside it). Every latent is built from the store's own activations x and the layer's probe (directions
p_c), so the truth is known by construction, not by measurement:

- decoder directions: class c's latents decode along d_c, p_c made orthogonal to every other class's
  probe direction, so a latent of class c projects on p_c only (cos(d_c, p_c) = kappa_c, about 0.8 in
  64 dimensions) and on no other class's probe. Fillers decode inside the probes' orthogonal complement;
- main latent of class c (an "absorbed" class): encoder p_c, fires when p_c . x > tau_c, with tau_c in
  the widest gap of all rows' scores between the round(f * n)-th and the next of the n test-split true
  positives' scores. So it is off on exactly round(f * n) of them; its activation B + p_c . x with B large
  makes main >= act wherever it fires (absorption fraction 0 there). A class without test true positives
  (one the probe misses) gets a silent main latent. Every threshold clears every row's score by more than
  float32 rounding (`float32_slack`): the scorer encodes in float32, and real stores hold near-identical rows;
- absorbing latents: one per test-split true positive of c where the main latent is off, a
  token-aligned latent: an encoder direction u_t (found by a perceptron) under which row t scores above
  every other row, a threshold in that margin, so it fires on row t alone; decoder normalize(d_c + n_t)
  (n_t a unit vector orthogonal to all probes), cos with p_c about 0.55 >= 0.1; activation about 2 B, so
  proj / act >= 0.4: such a row has absorption fraction 1 and is fully absorbed. Train rows get no
  absorbers (a token-aligned latent fires on its own token, which lies in one split): an absorber that
  fired on a train row would get a positive L1-probe weight for c, and with one batch per epoch, as in a
  small world, 50 Adam steps move every weight with a consistent gradient by about the same amount, so
  it could outrank the main latent;
- split classes (`--splits 2,3`: one class covered by 2 latents, one by 3): k latents with encoders
  cos(a) p_c + sin(a) (cos(phi_j) r1 + sin(phi_j) r2), r1, r2 the class's two widest directions outside
  the probes' span, phi_j = 2 pi j / k, each threshold above every other class's row (precision 1); the
  angle a is chosen so that each latent alone covers at least `min_split_share` of the class's true
  positives that no other split latent covers; no absorbers, so absorption 0;
- fillers: random encoders and decoders inside the probes' orthogonal complement, up to the width, with
  thresholds above every vocabulary row: silent on the task (they may fire on context tokens). A filler
  that fired on a few rows would touch some class's rows, and with pos_weight ~25 the L1 probe pushes
  its weight for that class up as fast as the main latent's: 50 Adam steps cannot tell them apart.
  Latent order is a seeded permutation.

Planted values are per class (on the test split's probe true positives, the rows the scorer evaluates)
and their means over the probe's evaluated classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from actstore.errors import InputError
from actstore.tasks.registry import DEFAULT_TASK


@dataclass
class SynthSAEConfig:
    """What `actstore synth-saes` plants."""

    absorption: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5)
    """one SAE per absorption rate (fraction of each absorbed class's test true positives)"""
    splits: tuple[int, ...] = (2, 3)
    """one split class per entry, covered by that many latents (2 or 3)"""
    width: int = 2048
    """latents per SAE (planted ones plus fillers)"""
    min_split_share: float = 0.1
    """each split latent must cover at least this share of its class's test-split true positives alone"""
    min_truth_positives: int = 10
    """classes with fewer test true positives are left out of the planted truth (truth.json's evaluated_classes):
    on so few rows one row moves the scorer's k-sparse F1 by more than its 0.03 step, so a split count is noise"""
    min_split_positives: int = 4
    """... and at least this many of them: a real store's rare classes cannot carry a split the scorer could see"""
    seed: int = 0
    """random seed (which classes split, decoder noise, latent order)"""
    task: str = DEFAULT_TASK
    """the task whose probes the SAEs are planted against (first_letter, or any task the store has probes for)"""


@dataclass
class LayerWorld:
    """One layer's vocabulary rows and probe, in float64."""

    x: torch.Tensor  # (N, d)
    labels: torch.Tensor  # (N,)
    test: torch.Tensor  # (N,) bool
    probe_fires: torch.Tensor  # (N, C) bool
    directions: torch.Tensor  # (C, d) unit p_c
    evaluated: list[int]
    classes: tuple[str, ...]  # (C,) the task's class names


def class_decoders(directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d_c = p_c minus its projection on the span of the other C - 1 probe directions, normalized (C, d), and
    an orthonormal basis of the complement of all C directions' span (d, d - C)."""
    n, d = directions.shape
    if d <= n:
        raise InputError(f"planting needs d_model > {n} classes (room outside the probes' span); the store has {d}")
    out = []
    for c in range(n):
        others = torch.cat([directions[:c], directions[c + 1:]])  # (C - 1, d)
        coef = torch.linalg.lstsq(others.T, directions[c, :, None]).solution  # (C - 1, 1)
        out.append(torch.nn.functional.normalize(directions[c] - (others.T @ coef)[:, 0], dim=0))
    q, _ = torch.linalg.qr(torch.cat([directions.T, torch.randn(d, d - n, dtype=directions.dtype,
                                                                  generator=torch.Generator().manual_seed(0))], 1))
    return torch.stack(out), q[:, n:]


def widest_gap(values: torch.Tensor, lo: float, hi: float) -> float:
    """The midpoint of the widest gap between consecutive distinct `values` inside [lo, hi] (lo, hi included
    as ends): a threshold as far as possible from every row's score."""
    inside = torch.unique(torch.cat([values[(values > lo) & (values < hi)], torch.tensor([lo, hi], dtype=values.dtype)]))
    gaps = inside.diff()
    j = int(gaps.argmax())
    return float((inside[j] + inside[j + 1]) / 2)


def token_aligned_encoders(x: torch.Tensor, targets: torch.Tensor, steps: int = 400
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each target row t, a unit u_t with u_t . x_t > u_t . x_s for every other row s (a perceptron on
    the hardest other row). Returns u (T, d) and the margins u_t . x_t - max_s u_t . x_s (T,), <= 0 where
    no separating direction was found."""
    centred = x - x.mean(dim=0)
    u = torch.nn.functional.normalize(centred[targets], dim=1)  # (T, d)
    own = torch.arange(len(targets))
    for _ in range(steps):
        scores = u @ x.T  # (T, N)
        mine = scores[own, targets].clone()
        scores[own, targets] = -torch.inf
        rival = scores.argmax(dim=1)
        margin = mine - scores[own, rival]
        if bool((margin > 1e-2 * x.norm(dim=1).mean()).all()):
            break
        step = (margin <= 1e-2 * x.norm(dim=1).mean()).double()[:, None]
        u = torch.nn.functional.normalize(u + 0.1 * step * (x[targets] - x[rival]), dim=1)
    scores = u @ x.T
    mine = scores[own, targets].clone()
    scores[own, targets] = -torch.inf
    return u, mine - scores.max(dim=1).values


def float32_slack(x: torch.Tensor, offset: float) -> float:
    """A bound on how far a float32 pre-activation `u . x + b` (u a unit vector, |b| <= `offset`), compared
    with a float32 threshold, can be from its exact value: the dot product's rounding (at most d x eps x |x|
    in any summation order), the bias's and the threshold's. A planted firing decision must clear its
    threshold by more than this, or the scorer, which encodes in float32, could decide it the other way."""
    eps = float(torch.finfo(torch.float32).eps)
    top = float(x.norm(dim=1).max())
    return eps * ((x.shape[1] + 2) * top + 2 * (abs(offset) + top))


def main_threshold(s: torch.Tensor, sorted_tp: torch.Tensor, j: int, slack: float) -> tuple[float, int]:
    """A threshold tau on the scores `s` that leaves the main latent off on the j lowest of the test true
    positives' sorted scores `sorted_tp` and on no higher one, in the widest gap there; when that gap is
    within float32 `slack` of a row (near-identical scores), the nearest j that has a clear gap. Returns
    (tau, the j planted). A class with no test true positive gets a silent latent: a threshold under every
    row would make it fire on every row, a feature the L1 probe ranks first for other classes."""
    n = len(sorted_tp)
    if n == 0:
        return float(s.max()) + 4 * slack, 0
    for k in sorted(range(n + 1), key=lambda k: (abs(k - j), k)):  # j first, then the nearest, lower on a tie
        if k == 0:
            below = s[s < sorted_tp[0]]
            tau = widest_gap(s, float(below.max()) if len(below) else float(sorted_tp[0]) - 1.0, float(sorted_tp[0]))
        elif k == n:
            tau = float(sorted_tp[-1]) + 4 * slack
        else:
            tau = widest_gap(s, float(sorted_tp[k - 1]), float(sorted_tp[k]))
        if float((s - tau).abs().min()) > 2 * slack:
            return tau, k
    raise InputError("no threshold clears every row's score by float32 rounding; the store's rows are too alike")


class Latent(dict):
    """One planted latent: encoder (d,), b_enc, threshold, decoder (d,) and what it is."""


def _rates(fires: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    tp = int((fires & truth).sum())
    return tp / max(1, int(fires.sum())), tp / max(1, int(truth.sum()))


def plant_split(world: LayerWorld, c: int, k: int, null: torch.Tensor, bias: float, cfg: SynthSAEConfig
                ) -> list[Latent] | None:
    """k latents that split class c's true positives, or None when no angle gives each one its share."""
    x, truth = world.x, world.labels == c
    tp = truth & world.probe_fires[:, c]
    inside = (x[tp] - x[tp].mean(dim=0)) @ null  # (n, d - C)
    _, _, vh = torch.linalg.svd(inside, full_matrices=False)
    r1, r2 = null @ vh[0], null @ vh[1]
    best = None
    for angle in np.linspace(0.05, 1.55, 61):
        ws, thresholds, covers = [], [], []
        for j in range(k):
            phi = 2 * np.pi * j / k
            w = np.cos(angle) * world.directions[c] + np.sin(angle) * (np.cos(phi) * r1 + np.sin(phi) * r2)
            s = x @ w
            top_other = float(s[~truth].max())
            thr = widest_gap(s, top_other, top_other + 0.1 * float(s.std()))
            ws.append(w), thresholds.append(thr), covers.append((s > thr) & tp & world.test)
        alone = [int((cov & ~torch.stack([o for i, o in enumerate(covers) if i != j]).any(dim=0)).sum())
                 for j, cov in enumerate(covers)]
        share = min(alone) / int((tp & world.test).sum())
        if share >= cfg.min_split_share and min(alone) >= cfg.min_split_positives and (best is None or share > best[0]):
            best = (share, ws, thresholds)
    if best is None:
        return None
    return [Latent(kind="split", of=c, enc=w, b=bias, thr=bias + t, dec=None) for w, t in zip(best[1], best[2])]


def plant_sae(world: LayerWorld, absorption: float, split_classes: dict[int, int], cfg: SynthSAEConfig,
              seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """params.npz arrays and the planted truth of one SAE."""
    gen = torch.Generator().manual_seed(seed)
    x, labels, d = world.x, world.labels, world.x.shape[1]
    dec_dirs, null = class_decoders(world.directions)
    kappa = (dec_dirs * world.directions).sum(dim=1)  # (C,) cos(d_c, p_c)
    scores = x @ world.directions.T  # (N, C) act = a . p_c
    bias = float(2 * scores.abs().max() / kappa.min() + 1)
    slack = float32_slack(x, bias)  # the main latents' and fillers' (bias b); absorbers' below (bias 2 b)

    def null_unit(n: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(n, null.shape[1], dtype=x.dtype, generator=gen) @ null.T, dim=1)

    latents: list[Latent] = []
    truth: dict[str, dict] = {}
    names = world.classes
    absorbed_rows: list[tuple[int, int]] = []  # (class, row)
    for c in range(len(names)):
        tp = (labels == c) & world.probe_fires[:, c]
        test_tp = tp & world.test
        s = scores[:, c]
        if c in split_classes:
            planted = plant_split(world, c, split_classes[c], null, bias, cfg)
            if planted is None:
                raise InputError(f"class {names[c]}: no split into {split_classes[c]} latents found")
            for lat in planted:
                lat["dec"] = torch.nn.functional.normalize(dec_dirs[c] + 0.3 * null_unit(1)[0], dim=0)
            latents += planted
            truth[names[c]] = {"role": f"split into {len(planted)}", "num_split_features": len(planted),
                                 "absorption_fraction": 0.0, "full_absorption_rate": 0.0,
                                 "num_probe_true_positives": int(test_tp.sum())}
            continue
        sorted_tp = torch.sort(s[test_tp]).values
        n = len(sorted_tp)
        tau, j = main_threshold(s, sorted_tp, int(round(absorption * n)) if c in world.evaluated else 0, slack)
        latents.append(Latent(kind="main", of=c, enc=world.directions[c], b=bias, thr=bias + tau, dec=dec_dirs[c]))
        off = test_tp & (s <= tau)  # absorbers on the test split only: see the module docstring
        absorbed_rows += [(c, int(r)) for r in off.nonzero()[:, 0]]
        fires_test = (s > tau) & world.test
        precision, recall = _rates(fires_test, (labels == c) & world.test)
        truth[names[c]] = {"role": "absorbed" if j else "clean", "num_split_features": 1,
                             "num_probe_true_positives": n, "main_off_test_true_positives": j,
                             "single_precision": precision, "single_recall": recall,
                             "single_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}

    # token-aligned absorbing latents, one per true positive the main latent misses
    rows = torch.tensor([r for _, r in absorbed_rows], dtype=torch.int64)
    absorbed = torch.zeros(len(x), dtype=torch.bool)
    if len(rows):
        u, margin = token_aligned_encoders(x, rows)
        absorber_slack = float32_slack(x, 2 * bias)
        for (c, row), u_t, m_t in zip(absorbed_rows, u, margin):
            if m_t / 2 <= absorber_slack:  # no margin, or one that float32 rounding in the scorer could cross: not absorbed
                continue
            own = float(u_t @ x[row])
            dec = torch.nn.functional.normalize(dec_dirs[c] + null_unit(1)[0], dim=0)
            latents.append(Latent(kind="absorber", of=c, row=row, enc=u_t, b=2 * bias,
                                  thr=2 * bias + own - float(m_t) / 2, dec=dec))
            absorbed[row] = scores[row, c] > 0
    for c in range(len(names)):
        entry = truth[names[c]]
        if entry["role"].startswith("split"):
            continue
        test_tp = (labels == c) & world.probe_fires[:, c] & world.test
        n = int(test_tp.sum())
        entry["absorption_fraction"] = int((absorbed & test_tp).sum()) / n if n else 0.0
        entry["full_absorption_rate"] = entry["absorption_fraction"]

    if len(latents) > cfg.width:
        raise InputError(f"{len(latents)} planted latents do not fit in width {cfg.width}; raise --width")
    n_fill = cfg.width - len(latents)
    fill_enc, fill_dec = null_unit(n_fill), null_unit(n_fill)
    fill_top = (x @ fill_enc.T).max(dim=0).values if n_fill else torch.zeros(0, dtype=x.dtype)  # (n_fill,)

    order = torch.randperm(cfg.width, generator=gen)  # planted latent i goes to position order[i]
    w_enc = torch.zeros(d, cfg.width, dtype=x.dtype)
    w_dec = torch.zeros(cfg.width, d, dtype=x.dtype)
    b_enc = torch.zeros(cfg.width, dtype=x.dtype)
    threshold = torch.zeros(cfg.width, dtype=x.dtype)
    for i, lat in enumerate(latents):
        w_enc[:, order[i]], w_dec[order[i]] = lat["enc"], lat["dec"]
        b_enc[order[i]], threshold[order[i]] = lat["b"], lat["thr"]
    fill = order[len(latents):]
    w_enc[:, fill], w_dec[fill] = fill_enc.T, fill_dec
    b_enc[fill], threshold[fill] = bias, bias + fill_top + max(0.1, 4 * slack)

    for lat, position in zip(latents, order.tolist()):
        entry = truth[names[lat["of"]]]
        if lat["kind"] in ("main", "split"):
            entry.setdefault("main_latents", []).append(position)
        if lat["kind"] == "main":
            entry["single_latent"] = position
        if lat["kind"] == "absorber":
            entry.setdefault("absorbing_latents", []).append(position)
            if absorbed[lat["row"]]:  # [vocabulary row, its absorber] of each absorbed token
                entry.setdefault("absorbed_rows", []).append([lat["row"], position])
    supported = [c for c in world.evaluated
                 if int(((labels == c) & world.probe_fires[:, c] & world.test).sum()) >= cfg.min_truth_positives]
    evaluated = [names[c] for c in supported]
    if not evaluated:
        raise InputError(f"no evaluated class has {cfg.min_truth_positives} test true positives: too few vocabulary "
                         f"rows to plant a truth the scorer can measure; extract more (--max-vocab)")
    summary = {key: float(np.mean([truth[c][key] for c in evaluated]))
               for key in ("absorption_fraction", "full_absorption_rate", "num_split_features")}
    singles = [truth[c]["single_f1"] for c in evaluated if "single_f1" in truth[c]]
    summary["single_f1_unsplit_classes"] = float(np.mean(singles)) if singles else None
    params = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": torch.zeros(d, dtype=x.dtype),
              "threshold": threshold}
    return ({k: v.numpy().astype(np.float32) for k, v in params.items()},
            {"absorption_target": absorption, "width": cfg.width, "task": cfg.task, "evaluated_classes": evaluated,
             "unsupported_classes": [names[c] for c in world.evaluated if c not in supported],
             "planted_latents": len(latents), "summary": summary, "classes": truth})


