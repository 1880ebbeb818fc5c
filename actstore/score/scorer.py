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
Everything runs on the device the SAE's weights are on; the layer's rows move there a tile at a time. One
encode pass covers the vocabulary rows and the rows of the L0 on natural text (`encoded_rows`). The per-class
numbers stay on the device until one transfer per SAE; `score_sae(..., clock=PhaseClock())` times the phases
(`actstore.score.phases`).

This module is long (about 450 lines): score_sae's steps share their intermediate tensors (the true positives'
layout, each seed's absorption terms, the dense columns of the ranked latents), which the class rows, the
bootstrap inputs and the records are all read from in one place so they come to the host together.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import NamedTuple

import torch

from actstore.errors import InputError, NotScorable
from actstore.saes.loading import SAEWeights
from actstore.score import intervals, metrics
from actstore.score.absorption import absorbed, absorption_per_token, record_rows, token_absorbers, token_records
from actstore.score.config import LayerData, ScoreConfig
from actstore.score.encode import BACKENDS, decoder_scale, dense_latents, latent_cosines, pick_backend
from actstore.score.ksparse import Probing, k_sparse
from actstore.score.l1probe import l1_weights
from actstore.score.nulls import make_null, null_columns
from actstore.score.phases import PhaseClock, no_clock
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
    """One seed's class rows, main latents per class, per-token values (for the bootstrap) and the device
    tensors its per-token records are built from (`_records`, for the first seed only, when asked for)."""

    rows: list[dict]
    mains: dict[int, list[int]]
    tokens: list[intervals.ClassTokens]
    records: dict


class _TruePositives(NamedTuple):
    """What absorption needs of the evaluated classes that no seed changes: the probe's true positives of each
    on the test split, class after class (a row is a true positive of its own class only), and their active
    latents (`SparseActs.padded`, to the longest row of all; class j's block is rows spans[j] and its first
    widths[j] columns: the padding `padded` gives that class's rows alone, so its sums add the same terms in
    the same order)."""

    rows: torch.Tensor
    """(R,) row ids"""
    owner: torch.Tensor
    """(R,) position in `classes` of each row's class"""
    spans: list[tuple[int, int]]
    widths: list[int]
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

    def block(self, j: int, t: torch.Tensor) -> torch.Tensor:
        """Class j's rows of a (R, L) tensor, cut to its own padding width."""
        (lo, hi), width = self.spans[j], self.widths[j]
        return t[lo:hi, :width].contiguous()


def evaluated_classes(probe: Probe, tp_test_counts: list[int], cfg: ScoreConfig) -> list[int]:
    """The classes a metric version evaluates: saebench-0.6 those whose probe test F1 is > cfg.min_probe_f1
    (strictly, as SAEBench); saebench-0.3 every class with probe true positives on the test split."""
    if cfg.metric_version == "saebench-0.3":
        return [c for c, count in enumerate(tp_test_counts) if count > 0]
    return probe.evaluated_classes(cfg.min_probe_f1)


def _measures_text(data: LayerData, cfg: ScoreConfig) -> bool:
    """Whether the L0 on natural text is measured: the store has context rows and it is not turned off."""
    return data.context_x is not None and len(data.context_x) > 0 and cfg.text_l0_rows > 0


def _text_rows(data: LayerData, cfg: ScoreConfig) -> torch.Tensor | None:
    """The context rows the L0 on natural text is measured on: the first cfg.text_l0_rows labeled ones (never
    BOS or other special tokens, which the store labels -1, as it does tokens the task does not label); None
    when it is not measured (`_measures_text`)."""
    if not _measures_text(data, cfg):
        return None
    return data.context_x[data.context_labels >= 0][:cfg.text_l0_rows]


def encoded_rows(data: LayerData, cfg: ScoreConfig) -> torch.Tensor:
    """The rows one SAE's encode pass covers: the vocabulary rows data.x, then the rows of the L0 on natural
    text (up to cfg.text_l0_rows labeled context rows), so one encoder call serves both. score_sae's `acts`,
    when given, are these rows' activations."""
    text = _text_rows(data, cfg)
    if text is None or not len(text):
        return data.x
    dtype = torch.promote_types(data.x.dtype, text.dtype)
    return torch.cat([data.x.to(dtype), text.to(data.x.device, dtype)])


def score_sae(sae: SAEWeights, data: LayerData, probe: Probe, cfg: ScoreConfig = ScoreConfig(),
              progress=None, acts: SparseActs | None = None, cosines: tuple | None = None,
              source: torch.Tensor | None = None, clock: PhaseClock | None = None) -> SAEScore:
    """Every metric of one SAE against one layer's probe for the task of `data` (C = data.task.n_classes; the
    probe has C rows). `progress(rows)` is called as rows are encoded; `acts`: the activations of
    `encoded_rows(data, cfg)` when already encoded (a group launch of the kernel; its vocabulary rows and text
    rows are split here); `cosines`: (dec_cos, enc_cos), each (m, C), when the caller knows them (a null SAE,
    `actstore.score.nulls`); `source` (m,): latent j fires where `sae`'s latent source[j] does (the
    shuffled-firing null), on context rows; `clock`: a `PhaseClock` that times each phase (None: nothing timed).

    The seed-dependent steps (L1 probe, k-sparse probing, absorption) run once per seed of cfg.seeds over the
    one encoding; the class rows and the summary's plain columns are the first seed's. The numbers come to the
    host once per SAE (the per-class rows and the bootstrap's inputs in one transfer), besides the few reads
    that decide shapes: the evaluated classes, the candidate and single latents, the true positives' layout,
    k-sparse probing's F1s per k."""
    clock = clock or no_clock
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
    directions = probe.directions()
    with torch.no_grad():
        probe_fires = (x.float() @ probe.weight.T.float() + probe.bias.float()).to(device) > 0  # (N, C)
        act_all = (x.float() @ directions.T.float()).to(device)  # (N, C) a . p_c
    tp_all = (~train)[:, None] & (labels[:, None] == torch.arange(n_classes, device=device)) & probe_fires  # (N, C)
    tp_counts = tp_all.sum(0).tolist()
    classes = evaluated_classes(probe, tp_counts, cfg)
    if len(classes) < cfg.min_classes:
        rule = "have probe true positives" if cfg.metric_version == "saebench-0.3" else \
            f"have a probe test F1 > {cfg.min_probe_f1}"
        raise NotScorable(f"only {len(classes)} classes of task {data.task.name} {rule} at layer {sae.layer} (needs "
                          f"{cfg.min_classes}, --min-classes); nothing to measure this SAE against")
    scale = decoder_scale(sae)
    backend = pick_backend(cfg.backend, sae)
    rows = encoded_rows(data, cfg)
    with clock("encode"):
        if acts is None:
            acts = BACKENDS[backend](rows, sae, scale, cfg.token_chunk, cfg.latent_chunk, progress,
                                     dtype=cfg.encode_dtype)
    if len(acts.offsets) - 1 != len(rows):
        raise InputError(f"score_sae got activations of {len(acts.offsets) - 1} rows; it expects those of "
                         f"encoded_rows(data, cfg), {len(x)} vocabulary rows and {len(rows) - len(x)} context "
                         f"rows for the L0 on text: encode encoded_rows(data, cfg)")
    acts, text_acts = acts.split(len(x))
    with clock("cosines"):
        dec_cos, enc_cos = cosines if cosines is not None else latent_cosines(sae, directions, scale)  # (m, C)
    seeds = [cfg.sparse_probe.seed + i for i in range(max(1, cfg.seeds))]
    with clock("l1_probe"):
        weights, solver_info = l1_weights(acts.rows(train), labels[train], n_classes, cfg, seeds)
    with clock("seeds"):
        singles = enc_cos.argmax(dim=0).tolist()  # (C,)
        positives = _true_positives(acts, classes, tp_all, tp_counts, act_all, dec_cos)
        runs = _score_seeds(acts, weights, classes, singles, positives, probe, labels, train, dec_cos, enc_cos, cfg,
                            data)
    if data.context_x is not None and len(data.context_x):
        with clock("context"):
            _in_context(runs, classes, singles, sae, scale, data, cfg, source)
    with clock("summary"):
        stats = torch.stack([acts.l0.float().mean().double(),
                             (torch.bincount(acts.index, minlength=acts.width) == 0).float().mean().double(),
                             text_acts.l0.float().mean().double() if len(text_acts.l0) else
                             torch.tensor(float("nan"), dtype=torch.float64, device=device)]).tolist()
        rows = runs[0].rows
        summary = _summary(rows, stats)
        summary.update(backend=backend, near_threshold_decisions=acts.near, metric_version=cfg.metric_version,
                       l1_solver=cfg.l1_solver, seeds=len(seeds), **solver_info)
        if _measures_text(data, cfg):  # (not _text_rows: that copies the rows)
            summary.update(l0_text=stats[2], l0_text_rows=len(text_acts.l0))
        for row in rows:
            row.update(metric_version=cfg.metric_version, l1_solver=cfg.l1_solver)
        if len(runs) > 1:
            _seed_columns(runs, stats, summary)
    with clock("bootstrap"):
        summary.update(intervals.bootstrap_intervals(runs[0].tokens, cfg.bootstrap, cfg.bootstrap_seed))
    if cfg.nulls:
        summary.update(_null_columns(sae, data, probe, cfg, acts, summary))
    if not cfg.records:
        return SAEScore(rows, summary)
    with clock("records"):
        records = _records(runs[0], positives, classes, data)
        absorbing = sorted({latent for record in record_rows(records) if absorbed(record)
                            for latent, _, _ in token_absorbers(record)})
        text = data.text or [""] * len(labels)
        tops = {latent: [[row, text[row], value] for row, value in best]
                for latent, best in top_tokens(acts, absorbing, cfg.top_tokens).items()}
    return SAEScore(rows, summary, records, tops)


def _true_positives(acts: SparseActs, classes: list[int], tp_all: torch.Tensor, tp_counts: list[int],
                    act_all: torch.Tensor, dec_cos: torch.Tensor) -> _TruePositives:
    """The evaluated classes' true positives and their active latents (`_TruePositives`): two host reads, the
    entries' count and each class's longest row."""
    device = acts.value.device
    chosen = torch.tensor(classes, device=device)
    owner, rows = tp_all[:, chosen].T.nonzero(as_tuple=True)  # class by class, rows increasing within a class
    index, value, valid = acts.rows(rows).padded()  # (R, L)
    cos = torch.where(valid, dec_cos[index, chosen[owner][:, None]], torch.zeros_like(value))
    longest = torch.zeros(len(classes), dtype=torch.int64, device=device).scatter_reduce(
        0, owner, valid.sum(1), "amax")
    widths = [max(1, w) for w in longest.tolist()]
    ends = torch.tensor([tp_counts[c] for c in classes]).cumsum(0).tolist()
    spans = [(end - tp_counts[c], end) for end, c in zip(ends, classes)]
    return _TruePositives(rows, owner, spans, widths, index, value, cos, valid, act_all[rows, chosen[owner]])


def _score_seeds(acts: SparseActs, weights: list[torch.Tensor], classes: list[int], singles: list[int],
                 positives: _TruePositives, probe: Probe, labels: torch.Tensor, train: torch.Tensor,
                 dec_cos: torch.Tensor, enc_cos: torch.Tensor, cfg: ScoreConfig, data: LayerData) -> list[_Run]:
    """k-sparse probing, single latents and absorption of every evaluated class, for each seed's L1-probe
    weight (m, C), whose k = max_k largest signed weights per class are its candidates (largest first; equal
    weights, such as the exact zeros the converged solver leaves, in increasing latent id:
    `metrics.stable_top_k`, the same order on CPU and GPU, where `torch.topk`'s differs). What no seed
    changes is computed once: the activations of every latent any seed ranks (one dense gather), the single
    latents' scores, each class's true positives and their active latents; the k-sparse fits of all seeds and
    classes are solved together per k (`k_sparse`). Every seed's per-class numbers stay on the device until
    one transfer for all of them (`_class_rows`)."""
    k = min(cfg.max_k, acts.width)
    ranked = torch.stack([metrics.stable_top_k(weight, k, dim=0).indices.T for weight in weights]).tolist()
    candidates = {(s, c): ranked[s][c] for s in range(len(weights)) for c in classes}  # largest weight first
    wanted = sorted({i for ids in candidates.values() for i in ids} | {singles[c] for c in classes})
    column = {latent: j for j, latent in enumerate(wanted)}
    dense = acts.dense_columns(torch.tensor(wanted, device=acts.value.device))  # (N, U)
    probing = k_sparse(dense, column, candidates, labels, train, cfg.split_min_f1_gain)
    return _class_rows(probing, positives, dense, column, classes, singles, probe, labels, train, dec_cos, enc_cos,
                       cfg, data, len(weights))


def _class_rows(probing: dict[tuple[int, int], Probing], positives: _TruePositives, dense: torch.Tensor,
                column: dict[int, int], classes: list[int], singles: list[int], probe: Probe, labels: torch.Tensor,
                train: torch.Tensor, dec_cos: torch.Tensor, enc_cos: torch.Tensor, cfg: ScoreConfig,
                data: LayerData, n_seeds: int) -> list[_Run]:
    """Every seed's class rows and bootstrap inputs. The per-class work runs on the device: counts of all
    classes at once; absorption class by class (each on its own padding width: the float sums then add the
    same terms in the same order as a class alone, which a single padded batch would not); then every number
    comes to the host in one float64 transfer (counts and float32 values are exact in it)."""
    device, n = dense.device, len(classes)
    chosen = torch.tensor(classes, device=device)
    test = ~train
    truth_test = labels[test][None, :] == chosen[:, None]  # (C', N_test)
    single_fires = (dense[test][:, [column[singles[c]] for c in classes]] > 0).T  # (C', N_test)
    single_counts = metrics.confusion_counts(single_fires, truth_test)  # (C', 4)
    single_cos = enc_cos[torch.tensor([singles[c] for c in classes], device=device), chosen]  # (C',)
    parts, spans, runs = [single_counts.double().flatten(), single_cos.double()], [], []
    for s in range(n_seeds):
        mains = [probing[(s, c)].main for c in classes]
        width = max(map(len, mains))
        padded = torch.tensor([main + [-1] * (width - len(main)) for main in mains], device=device)  # (C', K)
        main_counts = metrics.confusion_counts(torch.stack([probing[(s, c)].fires for c in classes]), truth_test)
        split_cos = dec_cos[padded.clamp(min=0), chosen[:, None]].double()  # (C', K), read where padded >= 0
        fractions, fulls, terms, means = [], [], [], []
        for j in range(n):
            value, cos, index = (positives.block(j, t) for t in (positives.value, positives.cos, positives.index))
            is_main = (index[:, :, None] == padded[j]).any(2) & positives.block(j, positives.valid)
            lo, hi = positives.spans[j]
            fraction, full, term = absorption_per_token(value, cos, is_main, positives.act[lo:hi], cfg.metric_version)
            fractions.append(fraction)
            fulls.append(full)
            terms.append(term)
            means.append(torch.stack([fraction.mean(), full.double().mean(), full.sum().double()]))
        fraction, full = torch.cat(fractions), torch.cat(fulls)
        parts += [main_counts.double().flatten(), split_cos.flatten(), torch.stack(means).flatten(), fraction,
                  full.double()]
        runs.append((mains, padded, fraction, full, terms))
        spans.append(len(fraction))
    host = torch.cat(parts).cpu()  # the one transfer of every class's numbers
    head = host[:5 * n].tolist()
    single_counts, single_cos, out, at = head[:4 * n], head[4 * n:], [], 5 * n
    names = data.task.classes
    for s, (mains, padded, fraction, full, terms) in enumerate(runs):
        width = padded.shape[1]
        main_counts = host[at:at + 4 * n].tolist()
        split_cos = host[at + 4 * n:at + (4 + width) * n].tolist()
        means = host[at + (4 + width) * n:at + (7 + width) * n].tolist()
        at += (7 + width) * n
        fraction_host, full_host = host[at:at + spans[s]], host[at + spans[s]:at + 2 * spans[s]]
        at += 2 * spans[s]
        rows, tokens = [], []
        for j, c in enumerate(classes):
            lo, hi = positives.spans[j]
            counts = [int(v) for v in single_counts[4 * j:4 * j + 4]]
            main_prf = metrics.prf(*[int(v) for v in main_counts[4 * j:4 * j + 3]])
            single_prf = metrics.prf(*counts[:3])
            n_tp = hi - lo
            tokens.append(intervals.ClassTokens(fraction_host[lo:hi], full_host[lo:hi], tuple(counts)))
            rows.append({
                "class": names[c], "probe_test_f1": float(probe.metrics["test"]["f1"][c]),
                "probe_test_precision": float(probe.metrics["test"]["precision"][c]),
                "probe_test_recall": float(probe.metrics["test"]["recall"][c]),
                "num_probe_true_positives": n_tp,
                "mean_absorption_fraction": means[3 * j] if n_tp else 0.0,
                "full_absorption_rate": means[3 * j + 1] if n_tp else 0.0,
                "num_full_absorption": int(means[3 * j + 2]),
                "num_split_features": len(mains[j]), "split_latents": mains[j],
                "k_sparse_f1": probing[(s, c)].f1s, "split_cos_dec": split_cos[width * j:width * j + len(mains[j])],
                "main_precision": main_prf.precision, "main_recall": main_prf.recall, "main_f1": main_prf.f1,
                "single_latent": singles[c], "single_latent_enc_cos": single_cos[j],
                "single_precision": single_prf.precision, "single_recall": single_prf.recall,
                "single_f1": single_prf.f1,
            })
        missed = torch.stack([~probing[(s, c)].fires for c in classes])  # (C', N_test)
        out.append(_Run(rows, dict(zip(classes, mains)), tokens,
                        {"fraction": fraction, "full": full, "terms": terms, "missed": missed, "padded": padded,
                         "dense": dense, "column": column, "test": test}))
    return out


def _records(run: _Run, positives: _TruePositives, classes: list[int], data: LayerData) -> dict[str, list]:
    """A seed's per-token records (`token_records`) of every evaluated class at once, from the device tensors
    its class rows were computed from (`_class_rows`)."""
    state = run.records
    dense, column, padded = state["dense"], state["column"], state["padded"]
    device = dense.device
    lookup = torch.full((max(column) + 2,), -1, dtype=torch.int64)  # latent id -> dense column; -1 -> -1
    lookup[torch.tensor(list(column))] = torch.tensor(list(column.values()))
    cols = lookup.to(device)[padded]  # (C', K) each class's main latents' dense columns, -1 past its own
    owner, rows = positives.owner, positives.rows
    picked = cols[owner]  # (R, K)
    main_acts = dense[rows[:, None], picked.clamp(min=0)] * (picked >= 0)
    test_position = state["test"].long().cumsum(0) - 1  # (N,) a test row's place among the test rows
    missed = state["missed"][owner, test_position[rows]]
    terms = metrics.AbsorptionTerms(*(torch.cat(field) for field in zip(*state["terms"])))
    names = [data.task.classes[c] for j, c in enumerate(classes)
             for _ in range(positives.spans[j][1] - positives.spans[j][0])]
    return token_records(rows, names, positives.index, positives.value, positives.cos, terms, positives.act,
                         state["fraction"], state["full"], missed, main_acts, (picked >= 0).sum(1), data)


SEED_PER_CLASS = ("mean_absorption_fraction", "full_absorption_rate", "num_split_features")
"""class-row metrics that also get a `<metric>_by_seed` list"""


def _seed_columns(runs: list[_Run], stats: list[float], summary: dict) -> None:
    """Per SAE: the mean, standard deviation and range across seeds of every summary metric, and how often the
    main latents agree; per class: each seed's values and main latents, and their agreement."""
    per_seed = [_summary(run.rows, stats) for run in runs]
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
    latent source[j] when a source is given: only whether it fires is read). The counts of every class and run
    are taken together on the device and read in one transfer."""
    device = sae.w_enc.device
    labeled = data.context_labels >= 0
    x, labels = data.context_x[labeled], data.context_labels[labeled].to(device).long()
    wanted = sorted({singles[c] for c in classes} | {i for run in runs for c in classes for i in run.mains[c]})
    column = {latent: j for j, latent in enumerate(wanted)}
    encoded = torch.tensor(wanted, device=device)
    if source is not None:
        encoded = source.to(encoded.device)[encoded]
    fires = dense_latents(x, sae, scale, encoded, cfg.token_chunk, cfg.latent_chunk) > 0  # (M', U)
    truth = (labels[None, :] == torch.tensor(classes, device=device)[:, None])  # (C', M')
    predicted = [fires[:, [column[singles[c]] for c in classes]].T]  # (C', M') the single latents
    for run in runs:  # a class's main latents fire when any of them does: a 0/1 product counts them exactly
        member = torch.zeros(len(wanted), len(classes), device=device)
        for j, c in enumerate(classes):
            member[[column[i] for i in run.mains[c]], j] = 1
        predicted.append((fires.float() @ member > 0).T)
    counts = metrics.confusion_counts(torch.stack(predicted), truth[None]).tolist()  # (1 + runs, C', 4)
    for r, run in enumerate(runs):
        for j, row in enumerate(run.rows):
            single, main = metrics.prf(*counts[0][j][:3]), metrics.prf(*counts[1 + r][j][:3])
            row.update(context_tokens=len(labels), context_positives=counts[0][j][0] + counts[0][j][2],
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


def _summary(rows: list[dict], stats: list[float]) -> dict:
    """The SAE's row from its class rows and stats = [L0 on the vocabulary rows, dead-latent share, ...]."""
    summary = {"status": "ok", "reason": "", "classes_evaluated": len(rows), "l0_vocab": stats[0],
               "dead_latent_share": stats[1]}
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
