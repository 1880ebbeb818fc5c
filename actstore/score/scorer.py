"""Score one SAE on a task's classes: the torch reference (CPU or GPU) of docs/metrics.md.

    score_sae(sae, layer_data, probe, ScoreConfig()) -> SAEScore (one row per evaluated class + a summary)

For one SAE reading one layer, with C = layer_data.task.n_classes classes (2 and up) and the task's ground-truth
probe (C rows):
1. encode the vocabulary rows into sparse, decoder-norm-folded activations (`actstore.score.encode`);
2. k-sparse probing: a C-output L1 probe on the sparse train activations (`actstore.score.l1probe`); for each
   class and k = 1..max_k, a balanced logistic regression on the k latents with the largest signed L1 weight
   (equal weights, as the converged solver's exact zeros: the lowest latent id first, `metrics.stable_top_k`),
   F1 on the test split (`actstore.score.ksparse`); `metrics.choose_split_k` picks the main latents;
3. single latent: the latent with the highest encoder cosine with p_c, fires when its activation > 0;
4. absorption over the probe's true positives of class c on the test split (`actstore.score.absorption`);
5. in context: the single latent's and the main latents' precision and recall on the labeled context tokens.

Classes are evaluated when their probe test F1 is above `min_probe_f1` (strictly; `metric_version` saebench-0.3:
every class with probe true positives); fewer than `min_classes` evaluated classes raise NotScorable (the runner
writes a row saying so). Steps 2-4 depend on the L1 probe's seed: with `seeds` > 1 they run for every seed over
the one encoding, batched (one L1 probe with C x seeds outputs, the k-sparse fits of all seeds solved together,
the seed-free parts once; `l1_solver` converged has no seed). Formulas live in `actstore.score.metrics`, intervals
and seed spreads in `actstore.score.intervals`, null SAEs in `actstore.score.nulls`.
Everything runs on the device the SAE's weights are on; the layer's rows move there a tile at a time.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import NamedTuple

import torch

from actstore.errors import InputError, NotScorable
from actstore.saes.loading import SAEWeights
from actstore.score import intervals, metrics
from actstore.score.absorption import (TOKEN_COLUMNS, absorbed, absorption_per_token, record_rows, token_absorbers,
                                       token_records)
from actstore.score.config import LayerData, ScoreConfig
from actstore.score.encode import BACKENDS, decoder_scale, dense_latents, latent_cosines, pick_backend
from actstore.score.ksparse import Probing, k_sparse
from actstore.score.l1probe import l1_weights
from actstore.score.metrics import precision_recall_f1
from actstore.score.nulls import make_null, null_columns
from actstore.score.probes import Probe
from actstore.score.sparse import SparseActs, top_tokens

class SAEScore(NamedTuple):
    classes: list[dict]
    """One row per evaluated class ("class": its name, task.classes[c])."""
    summary: dict
    """The SAE's row: means and standard deviations over evaluated classes."""
    tokens: dict | None = None
    """Per-token records, one per (evaluated class, probe true positive on the test split), as columns
    (name -> list; `actstore.score.absorption.token_records`); None when not computed (ScoreConfig.records off)."""
    latent_top_tokens: dict | None = None
    """latent id -> its most active vocabulary rows [[row, text, activation], ...] (`top_tokens`), largest
    first, for every latent that absorbs some token (a reader sees whether it is token-aligned)."""

    @property
    def letters(self) -> list[dict]:
        """`classes`, by its name before tasks (compatibility alias)."""
        return self.classes


class _Run(NamedTuple):
    """One seed's class rows, main latents per class, per-token values (for the bootstrap) and per-token
    records (columns, `token_records`; the first seed's only, empty for the others and when not asked for)."""

    rows: list[dict]
    mains: dict[int, list[int]]
    tokens: list[intervals.ClassTokens]
    records: dict[str, list]


class _ClassRows(NamedTuple):
    """What absorption needs of one class that no seed changes: its probe true positives on the test split and
    their active latents (`SparseActs.padded`)."""

    tp: torch.Tensor
    """(N,) bool"""
    index: torch.Tensor
    """(R, L) latent ids"""
    value: torch.Tensor
    """(R, L) folded activations, 0 on padding"""
    cos: torch.Tensor
    """(R, L) cos(W_dec[i], p_c), 0 on padding"""
    valid: torch.Tensor
    """(R, L) bool"""
    act: torch.Tensor
    """(R,) a . p_c"""


def evaluated_classes(probe: Probe, tp_test_counts: list[int], cfg: ScoreConfig) -> list[int]:
    """The classes a metric version evaluates: saebench-0.6 those whose probe test F1 is > cfg.min_probe_f1
    (strictly, as SAEBench); saebench-0.3 every class with probe true positives on the test split."""
    if cfg.metric_version == "saebench-0.3":
        return [c for c, count in enumerate(tp_test_counts) if count > 0]
    return probe.evaluated_classes(cfg.min_probe_f1)


def score_sae(sae: SAEWeights, data: LayerData, probe: Probe, cfg: ScoreConfig = ScoreConfig(),
              progress=None, acts: SparseActs | None = None, cosines: tuple | None = None,
              source: torch.Tensor | None = None) -> SAEScore:
    """Every metric of one SAE against one layer's probe for the task of `data` (C = data.task.n_classes; the
    probe has C rows). `progress(rows)` is called as rows are encoded; `acts`: the vocabulary rows' sparse
    activations when already encoded (a group launch of the kernel); `cosines`: (dec_cos, enc_cos), each (m, C),
    when the caller knows them (a null SAE, `actstore.score.nulls`); `source` (m,): latent j fires where `sae`'s
    latent source[j] does (the shuffled-firing null), on context rows.

    The seed-dependent steps (L1 probe, k-sparse probing, absorption) run once per seed of cfg.seeds over the
    one encoding; the class rows and the summary's plain columns are the first seed's."""
    if cfg.metric_version not in metrics.METRIC_VERSIONS:
        raise InputError(f"unknown metric version {cfg.metric_version!r}; "
                         f"choose one of {sorted(metrics.METRIC_VERSIONS)}")
    n_classes = data.task.n_classes
    if probe.weight.shape[0] != n_classes:
        raise InputError(f"the probe has {probe.weight.shape[0]} classes, task {data.task.name} has {n_classes}: "
                         f"train the task's probes with `actstore probe STORE --task {data.task.name}`")
    device = sae.w_enc.device
    x, labels, split = data.x, data.labels.to(device).long(), data.split.to(device).long()
    train = split == 0
    with torch.no_grad():
        probe_fires = (x.float() @ probe.weight.T.float() + probe.bias.float()).to(device) > 0  # (N, C)
        act_all = (x.float() @ probe.directions().T.float()).to(device)  # (N, C) a . p_c
    tp_all = (~train)[:, None] & (labels[:, None] == torch.arange(n_classes, device=device)) & probe_fires  # (N, C)
    classes = evaluated_classes(probe, tp_all.sum(0).tolist(), cfg)
    if len(classes) < cfg.min_classes:
        rule = "have probe true positives" if cfg.metric_version == "saebench-0.3" else \
            f"have a probe test F1 > {cfg.min_probe_f1}"
        raise NotScorable(f"only {len(classes)} classes of task {data.task.name} {rule} at layer {sae.layer} (needs "
                          f"{cfg.min_classes}, --min-classes); nothing to measure this SAE against")
    scale = decoder_scale(sae)
    dec_cos, enc_cos = cosines if cosines is not None else latent_cosines(sae, probe.directions(), scale)  # (m, C)

    backend = pick_backend(cfg.backend, sae)
    if acts is None:
        acts = BACKENDS[backend](x, sae, scale, cfg.token_chunk, cfg.latent_chunk, progress)
    seeds = [cfg.sparse_probe.seed + i for i in range(max(1, cfg.seeds))]
    weights, solver_info = l1_weights(acts.rows(train), labels[train], n_classes, cfg, seeds)
    singles = enc_cos.argmax(dim=0).tolist()  # (C,)
    runs = _score_seeds(acts, weights, classes, singles, probe, labels, train, tp_all, act_all, dec_cos, enc_cos, cfg,
                        data)
    if data.context_x is not None and len(data.context_x):
        _in_context(runs, classes, singles, sae, scale, data, cfg, source)
    rows = runs[0].rows
    summary = _summary(rows, acts)
    summary.update(backend=backend, near_threshold_decisions=acts.near, metric_version=cfg.metric_version,
                   l1_solver=cfg.l1_solver, seeds=len(seeds), **solver_info)
    summary.update(intervals.bootstrap_intervals(runs[0].tokens, cfg.bootstrap, cfg.bootstrap_seed))
    for row in rows:
        row.update(metric_version=cfg.metric_version, l1_solver=cfg.l1_solver)
    if len(runs) > 1:
        _seed_columns(runs, acts, summary)
    if data.context_x is not None and len(data.context_x) and cfg.text_l0_rows > 0:
        summary["l0_text"] = text_l0(sae, scale, data, cfg, backend)
    if cfg.nulls:
        summary.update(_null_columns(sae, data, probe, cfg, acts, summary))
    if not cfg.records:
        return SAEScore(rows, summary)
    records = runs[0].records
    absorbing = sorted({latent for record in record_rows(records) if absorbed(record)
                        for latent, _, _ in token_absorbers(record)})
    text = data.text or [""] * len(labels)
    tops = {latent: [[row, text[row], value] for row, value in best]
            for latent, best in top_tokens(acts, absorbing, cfg.top_tokens).items()}
    return SAEScore(rows, summary, records, tops)


def _score_seeds(acts: SparseActs, weights: list[torch.Tensor], classes: list[int], singles: list[int],
                 probe: Probe, labels: torch.Tensor, train: torch.Tensor, tp_all: torch.Tensor, act_all: torch.Tensor,
                 dec_cos: torch.Tensor, enc_cos: torch.Tensor, cfg: ScoreConfig, data: LayerData) -> list[_Run]:
    """k-sparse probing, single latents and absorption of every evaluated class, for each seed's L1-probe
    weight (m, C), whose k = max_k largest signed weights per class are its candidates (largest first; equal
    weights, such as the exact zeros the converged solver leaves, in increasing latent id:
    `metrics.stable_top_k`, the same order on CPU and GPU, where `torch.topk`'s differs). What no seed
    changes is computed once: the activations of every latent any seed ranks (one dense gather), the single
    latents' scores, each class's true positives and their active latents; the k-sparse fits of all seeds and
    classes are solved together per k (`k_sparse`)."""
    device = acts.value.device
    k = min(cfg.max_k, acts.width)
    candidates = {}
    for s, weight in enumerate(weights):
        top = metrics.stable_top_k(weight, k, dim=0).indices.T.tolist()  # (C, k) largest weight first, ties: lowest id
        candidates.update({(s, c): top[c] for c in classes})
    wanted = sorted({i for ids in candidates.values() for i in ids} | {singles[c] for c in classes})
    column = {latent: j for j, latent in enumerate(wanted)}
    dense = acts.dense_columns(torch.tensor(wanted, device=device))  # (N, U)
    probing = k_sparse(dense, column, candidates, labels, train, cfg.split_min_f1_gain)
    shared = {}
    for c in classes:
        tp = tp_all[:, c]  # the probe's true positives on the test split
        index, value, valid = acts.rows(tp).padded()  # (R, L)
        cos = torch.where(valid, dec_cos[index, c], torch.zeros_like(value))
        shared[c] = _ClassRows(tp, index, value, cos, valid, act_all[tp, c])
    return [_score_classes(s, probing, shared, dense, column, classes, singles, probe, labels, train, dec_cos,
                           enc_cos, cfg, data, records=cfg.records and s == 0) for s in range(len(weights))]


def _score_classes(seed: int, probing: dict[tuple[int, int], Probing], shared: dict[int, _ClassRows],
                   dense: torch.Tensor, column: dict[int, int], classes: list[int], singles: list[int], probe: Probe,
                   labels: torch.Tensor, train: torch.Tensor, dec_cos: torch.Tensor, enc_cos: torch.Tensor,
                   cfg: ScoreConfig, data: LayerData, records: bool) -> _Run:
    """One seed's class rows, from its k-sparse probing and the classes' shared rows (`_score_seeds`);
    per-token records only when `records`."""
    device = dense.device
    names = data.task.classes
    rows, mains, tokens = [], {}, []
    columns: dict[str, list] = {name: [] for name in TOKEN_COLUMNS}
    for c in classes:
        truth = labels == c
        truth_test = truth[~train]
        f1s, main, main_fires = probing[(seed, c)]
        mains[c] = main
        main_prf = precision_recall_f1(main_fires, truth_test)
        single = singles[c]
        single_fires = dense[~train, column[single]] > 0
        single_prf = precision_recall_f1(single_fires, truth_test)

        tp, index, value, cos, valid, act = shared[c]
        is_main = torch.isin(index, torch.tensor(main, device=device)) & valid
        fraction, full, terms = absorption_per_token(value, cos, is_main, act, cfg.metric_version)
        if records:
            missed = torch.zeros(len(labels), dtype=torch.bool, device=device)
            missed[~train] = ~main_fires.to(device)  # the k-sparse probe on the main latents says "not c"
            class_records = token_records(tp, index, value, cos, terms, act, fraction, full, missed[tp],
                                          dense[tp][:, [column[i] for i in main]], data)
            for name, values in class_records.items():
                columns[name] += values
            columns["class"] += [names[c]] * len(class_records["row"])
        n_tp = int(tp.sum())
        tokens.append(intervals.ClassTokens(fraction, full.double(), (
            int((single_fires & truth_test).sum()), int((single_fires & ~truth_test).sum()),
            int((~single_fires & truth_test).sum()), int((~single_fires & ~truth_test).sum()))))
        rows.append({
            "class": names[c], "probe_test_f1": float(probe.metrics["test"]["f1"][c]),
            "probe_test_precision": float(probe.metrics["test"]["precision"][c]),
            "probe_test_recall": float(probe.metrics["test"]["recall"][c]),
            "num_probe_true_positives": n_tp,
            "mean_absorption_fraction": float(fraction.mean()) if n_tp else 0.0,
            "full_absorption_rate": float(full.double().mean()) if n_tp else 0.0,
            "num_full_absorption": int(full.sum()),
            "num_split_features": len(main), "split_latents": main, "k_sparse_f1": f1s,
            "split_cos_dec": [float(dec_cos[i, c]) for i in main],
            "main_precision": main_prf.precision, "main_recall": main_prf.recall, "main_f1": main_prf.f1,
            "single_latent": single, "single_latent_enc_cos": float(enc_cos[single, c]),
            "single_precision": single_prf.precision, "single_recall": single_prf.recall,
            "single_f1": single_prf.f1,
        })
    return _Run(rows, mains, tokens, columns if records else {})


def text_l0(sae: SAEWeights, scale: torch.Tensor, data: LayerData, cfg: ScoreConfig, backend: str) -> float:
    """Mean L0 on natural text: over the first `text_l0_rows` labeled context tokens (never BOS or other
    special tokens, which the store labels -1, as it does tokens the task does not label)."""
    x = data.context_x[data.context_labels >= 0][:cfg.text_l0_rows].float()
    if not len(x):
        return float("nan")
    return float(BACKENDS[backend](x, sae, scale, cfg.token_chunk, cfg.latent_chunk).l0.float().mean())


SEED_PER_CLASS = ("mean_absorption_fraction", "full_absorption_rate", "num_split_features")
"""class-row metrics that also get a `<metric>_by_seed` list"""


def _seed_columns(runs: list[_Run], acts: SparseActs, summary: dict) -> None:
    """Per SAE: the mean, standard deviation and range across seeds of every summary metric, and how often the
    main latents agree; per class: each seed's values and main latents, and their agreement."""
    per_seed = [_summary(run.rows, acts) for run in runs]
    keys = [k for k in per_seed[0] if k.startswith("mean_")]
    summary.update(intervals.seed_spread(per_seed, keys))
    agreements = []
    for i, row in enumerate(runs[0].rows):
        mains = [run.rows[i]["split_latents"] for run in runs]
        row["split_latents_by_seed"] = mains
        row["main_latents_agreement"] = intervals.main_latent_agreement(mains)
        agreements.append(row["main_latents_agreement"])
        for key in SEED_PER_CLASS:
            row[f"{key}_by_seed"] = [run.rows[i][key] for run in runs]
    summary["mean_main_latents_agreement"] = statistics.fmean(agreements) if agreements else 1.0
    summary["classes_main_latents_all_agree"] = sum(a == 1.0 for a in agreements)


def _in_context(runs: list[_Run], classes: list[int], singles: list[int], sae: SAEWeights, scale: torch.Tensor,
                data: LayerData, cfg: ScoreConfig, source: torch.Tensor | None = None) -> None:
    """Adds each class's single-latent and main-latent precision/recall on the labeled context tokens to every
    run's rows; the context rows are encoded once, for the union of the runs' latents (latent j as `sae`'s
    latent source[j] when a source is given: only whether it fires is read)."""
    labeled = data.context_labels >= 0
    x, labels = data.context_x[labeled], data.context_labels[labeled].to(sae.w_enc.device).long()
    wanted = sorted({singles[c] for c in classes} | {i for run in runs for c in classes for i in run.mains[c]})
    column = {latent: j for j, latent in enumerate(wanted)}
    encoded = torch.tensor(wanted, device=sae.w_enc.device)
    if source is not None:
        encoded = source.to(encoded.device)[encoded]
    dense = dense_latents(x, sae, scale, encoded, cfg.token_chunk, cfg.latent_chunk)  # (M', U)
    for run in runs:
        for row, c in zip(run.rows, classes):
            truth = labels == c
            single = precision_recall_f1(dense[:, column[singles[c]]] > 0, truth)
            main = precision_recall_f1((dense[:, [column[i] for i in run.mains[c]]] > 0).any(dim=1), truth)
            row.update(context_tokens=len(labels), context_positives=int(truth.sum()),
                       context_single_precision=single.precision, context_single_recall=single.recall,
                       context_main_precision=main.precision, context_main_recall=main.recall)


def _null_columns(sae: SAEWeights, data: LayerData, probe: Probe, cfg: ScoreConfig, acts: SparseActs,
                  summary: dict) -> dict:
    """Score each null of cfg.nulls on the SAE's rows (context rows included; `actstore.score.nulls`): one seed,
    no intervals, records, text L0 or causal metric; its columns (`null_columns`)."""
    null_cfg = replace(cfg, nulls=(), seeds=1, bootstrap=0, records=False, text_l0_rows=0, causal=None)
    out = {}
    for kind in cfg.nulls:
        null = make_null(kind, sae, data.x, acts, probe.directions())
        result = score_sae(null.sae, data, probe, null_cfg, acts=null.acts, cosines=null.cosines, source=null.source)
        out.update(null_columns(kind, result.summary, summary, null, probe.directions()))
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _summary(rows: list[dict], acts: SparseActs) -> dict:
    summary = {"status": "ok", "reason": "", "classes_evaluated": len(rows), "l0_vocab": float(acts.l0.float().mean()),
               "dead_latent_share": float((torch.bincount(acts.index, minlength=acts.width) == 0).float().mean())}
    for key, name in (("mean_absorption_fraction", "absorption_fraction"), ("full_absorption_rate", "full_absorption"),
                      ("num_split_features", "num_split_features"), ("single_f1", "single_f1"),
                      ("single_precision", "single_precision"), ("single_recall", "single_recall"),
                      ("main_f1", "main_f1"), ("main_precision", "main_precision"), ("main_recall", "main_recall"),
                      ("probe_test_f1", "probe_f1")):
        summary[f"mean_{name}"], summary[f"std_{name}"] = _mean_std([float(r[key]) for r in rows])
    for key in ("context_single_precision", "context_single_recall", "context_main_precision",
                "context_main_recall"):
        if rows and key in rows[0]:
            summary[f"mean_{key}"] = statistics.fmean(r[key] for r in rows)
    return summary
