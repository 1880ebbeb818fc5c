"""Issue 13's metrics: SAEBench v0.3's fraction by hand, threshold tokens in float64 as SAEBench's own code sends
them, the strict F1 > 0.6 filter, bootstrap intervals, seeds over one encoding, the converged solver's seed-free
main latents, null SAEs on the planted world, --min-classes and SAEBench's eval_config."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from actstore.score import metrics

from actstore.score import intervals as uncertainty
from actstore.store.layers import load_layer
from actstore.score.nulls import random_decoder_null, shuffle_permutation, shuffled_firing_null
from actstore.score.probes import Probe, ProbeConfig, load_probe
from actstore.saes.loading import load_params_npz
from actstore.score.absorption import token_absorption
from actstore.score.config import ScoreConfig
from actstore.score.encode import decoder_scale, encode_sparse
from actstore.score.scorer import score_sae
from actstore.score.sparse import SparseActs
from actstore.store.zarrstore import ActivationStore

# ---------------------------------------------------------------------------- SAEBench v0.3.2's fraction


@pytest.mark.parametrize("act, main, total, expected", [
    (2.0, 0.5, 1.5, (1.5 - 0.5) / 1.5),  # (total - main) / total
    (2.0, 0.5, 0.4, 0.0),  # total - main < 0: clipped to 0
    (2.0, -0.5, 1.0, 1.0),  # (1 + 0.5) / 1 = 1.5: clipped to 1
    (1.0, 1.0, 3.0, 0.0),  # main >= act
    (2.0, 0.5, 0.0, 0.0),  # total <= 0
    (2.0, 0.0, 0.8, 1.0),  # no main projection: everything is absorbed, with no 0.4 rule (v0.6 would say 1 too)
    (10.0, 0.0, 0.8, 1.0),  # ... even when the projections explain 8% of act (v0.6: T / act < 0.4 gives 0)
])
def test_v03_fraction_by_hand(act, main, total, expected):
    got = metrics.absorption_fraction_v03(torch.tensor([act]), torch.tensor([main]), torch.tensor([total]))
    assert float(got) == pytest.approx(expected, abs=1e-7)


def test_v03_counts_every_active_latent_without_a_cosine_gate():
    # one token: main latent (s 1, cos 0.5), latents with cos 0.05 (below v0.6's 0.1 gate) and -0.2
    value = torch.tensor([[1.0, 2.0, 1.0]])
    cos = torch.tensor([[0.5, 0.05, -0.2]])
    is_main = torch.tensor([[True, False, False]])
    act = torch.tensor([1.0])
    f03, _ = token_absorption(value, cos, is_main, act, "saebench-0.3")
    total = 0.5 + 0.1 - 0.2  # every projection, any sign
    assert float(f03) == pytest.approx((total - 0.5) / total if total - 0.5 > 0 else 0.0, abs=1e-7)
    value = torch.tensor([[0.2, 2.0, 1.0]])  # main 0.1; total 0.1 + 0.1 - 0.2 = 0 -> 0
    assert float(token_absorption(value, cos, is_main, act, "saebench-0.3")[0]) == 0.0
    value = torch.tensor([[0.2, 6.0, 0.5]])  # main 0.1, total 0.1 + 0.3 - 0.1 = 0.3: (0.3 - 0.1) / 0.3
    assert float(token_absorption(value, cos, is_main, act, "saebench-0.3")[0]) == pytest.approx(2 / 3, abs=1e-6)
    # v0.6 on the same token: the 0.05 latent fails the cosine gate, T = 0, T / act < 0.4 -> 0
    assert float(token_absorption(value, cos, is_main, act, "saebench-0.6")[0]) == 0.0


# ---------------------------------------------------------------------------- threshold tokens, float64


def saebench_token(acts: torch.Tensor, cos: torch.Tensor, main_ids: list[int], act: torch.Tensor):
    """SAEBench v0.6.0's calculate_absorption for one token, transliterated (float32 tensors, Python floats)."""
    proj = acts * cos
    act_probe_proj = act.item()
    main_p = torch.sum(proj[main_ids]).item()
    mask = torch.ones(len(proj), dtype=torch.bool)
    mask[main_ids] = False
    mask &= cos >= 0.1
    mask &= proj > 0
    pot = proj[mask]
    top = torch.sum(pot.topk(k=min(3, pot.numel())).values).item()
    if main_p >= act_probe_proj or top / act_probe_proj < 0.4:
        fraction = 0.0
    elif main_p <= 0.0:
        fraction = 1.0
    else:
        a = min(top, act_probe_proj - main_p)
        fraction = float(np.clip(a / (a + main_p), 0.0, 1.0))
    best = int(proj.topk(1).indices[0])
    s, c = acts[best].item(), cos[best].item()
    full = (all(acts[i].item() < 1e-8 for i in main_ids) and c >= 0.025 and act_probe_proj >= 0
            and s * c / act_probe_proj >= 0.4)
    return fraction, full


def boundary_tokens() -> list[tuple[list[float], list[float], float]]:
    """(activations, cosines, act) of tokens on a threshold; latent 0 is the main latent, 1 the absorber."""
    f32 = np.float32
    tokens = []
    rng = np.random.default_rng(0)
    # T / act just below 0.4 in float64 whose float32 quotient rounds up to float32(0.4) (a float64 quotient
    # >= 0.4 always rounds to >= float32(0.4), so only this side can differ)
    while len(tokens) < 3:
        a = f32(rng.uniform(1, 10))
        t = f32(f32(0.4) * a)
        for step in range(-8, 9):
            u = t
            for _ in range(abs(step)):
                u = np.nextafter(u, f32(0) if step < 0 else f32(100))
            if float(u) / float(a) < 0.4 and (u / a) >= f32(0.4):
                tokens.append(([0.0, float(u)], [0.5, 1.0], float(a)))
                break
    # a main latent at float32(1e-8) = 9.99999994e-09: below 1e-8 in float64 (SAEBench: off), not in float32
    tokens.append(([float(f32(1e-8)), 1.0], [0.0, 1.0], 1.0))
    # full absorption's proj / act, act 1: activation x cos just below 0.4 in float64 (exact for two float32s)
    # whose float32 product rounds up to float32(0.4)
    while len(tokens) < 6:
        c = f32(rng.uniform(0.2, 0.9))
        s = f32(f32(0.4) / c)
        for step in range(-8, 9):
            u = s
            for _ in range(abs(step)):
                u = np.nextafter(u, f32(0) if step < 0 else f32(100))
            if float(u) * float(c) < 0.4 and (u * c) >= f32(0.4):
                tokens.append(([0.0, float(u)], [0.05, float(c)], 1.0))  # main: cos 0.05, off
                break
    return tokens


def test_threshold_tokens_go_as_saebench_float64_code_sends_them():
    tokens = boundary_tokens()
    assert len(tokens) >= 6  # the searches found tokens on each threshold
    dense = torch.tensor([t[0] for t in tokens])  # (R, 2) float32
    cos = torch.tensor([t[1] for t in tokens])
    act = torch.tensor([t[2] for t in tokens])
    expected = [saebench_token(dense[r], cos[r], [0], act[r]) for r in range(len(tokens))]
    # each token as the scorer sees it: its active latents only (SparseActs.padded)
    nz = dense > 0
    sparse = SparseActs(torch.cat([torch.zeros(1, dtype=torch.int64), nz.sum(1).cumsum(0)]), nz.nonzero()[:, 1],
                        dense[nz], 2)
    index, value, valid = sparse.padded()
    token_cos = torch.where(valid, cos.gather(1, index), 0.0)
    fraction, full = token_absorption(value, token_cos, (index == 0) & valid, act)
    assert fraction.tolist() == [e[0] for e in expected]
    assert full.tolist() == [e[1] for e in expected]
    # the same rules in float32 send some of these tokens the other way: the test has teeth
    terms = metrics.absorption_terms(value, token_cos, (index == 0) & valid)
    f32_fraction = metrics.absorption_fraction(act, terms.main, terms.top)
    f32_full = metrics.full_absorption(act, terms.main_max_act, terms.top_proj, terms.top_cos)
    assert f32_fraction.tolist() != fraction.tolist() and f32_full.tolist() != full.tolist()


def test_a_letter_with_probe_f1_exactly_06_is_not_evaluated():
    f1 = [0.9] * 26
    f1[3] = 2 * 3 / (2 * 3 + 2 + 2)  # tp 3, fp 2, fn 2: exactly 0.6
    f1[4] = 0.6000001
    probe = Probe(torch.zeros(26, 4), torch.zeros(26), {"test": {"f1": f1}})
    assert f1[3] == 0.6 and 3 not in probe.evaluated_classes() and 4 in probe.evaluated_classes()


# ---------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_of_one_letter_matches_the_binomial_standard_error():
    # one letter, 400 true positives, 30% fully absorbed: the token bootstrap's 95% interval is about
    # p +- 1.96 sqrt(p (1 - p) / n) = 0.3 +- 0.0449; letters resampled from one letter change nothing
    full = (torch.arange(400) < 120).double()
    letter = uncertainty.ClassTokens(full, full, (10, 0, 0, 390))
    ci = uncertainty.bootstrap_intervals([letter], n_boot=4000, seed=1)
    half = 1.96 * (0.3 * 0.7 / 400) ** 0.5
    # Monte Carlo error of a 2.5% quantile from 4000 replicates: about 0.004 here; discreteness 1/400
    assert ci["mean_full_absorption_ci_low"] == pytest.approx(0.3 - half, abs=0.008)
    assert ci["mean_full_absorption_ci_high"] == pytest.approx(0.3 + half, abs=0.008)
    assert ci["mean_single_f1_ci_low"] == ci["mean_single_f1_ci_high"] == 1.0  # no fp, no fn in any redraw


@pytest.mark.parametrize("n_classes", [20, 40, 200])
def test_bootstrap_over_letters_matches_the_standard_error_of_their_mean(n_classes):
    # classes whose tokens all have the same value: only the class level varies. The interval is about
    # mean +- 1.96 sd / sqrt(C'), sd the population standard deviation of the C' classes' values
    values = torch.linspace(0.0, 0.95, n_classes, dtype=torch.float64)
    letters = [uncertainty.ClassTokens(torch.full((50,), float(v)), torch.zeros(50), (5, 5, 5, 85)) for v in values]
    ci = uncertainty.bootstrap_intervals(letters, n_boot=4000, seed=2)
    half = 1.96 * float(values.std(unbiased=False)) / n_classes ** 0.5
    mean = float(values.mean())
    assert ci["mean_absorption_fraction_ci_low"] == pytest.approx(mean - half, abs=0.01)
    assert ci["mean_absorption_fraction_ci_high"] == pytest.approx(mean + half, abs=0.01)
    assert ci["mean_full_absorption_ci_low"] == ci["mean_full_absorption_ci_high"] == 0.0
    # F1 = 2*5 / (10 + 10) = 0.5 for every letter; its interval straddles it
    assert ci["mean_single_f1_ci_low"] < 0.5 < ci["mean_single_f1_ci_high"]
    assert uncertainty.bootstrap_intervals(letters, n_boot=300, seed=2) == \
        uncertainty.bootstrap_intervals(letters, n_boot=300, seed=2)  # seeded


def test_bootstrap_over_two_classes_spans_them():
    # two classes of constant values 0 and 0.9: a replicate draws both classes from {0, 0.9}, so its mean is
    # 0 (1/4 of replicates), 0.45 (1/2) or 0.9 (1/4): the 2.5% and 97.5% percentiles are exactly 0 and 0.9
    classes = [uncertainty.ClassTokens(torch.full((30,), v, dtype=torch.float64),
                                       torch.full((30,), v, dtype=torch.float64), (30, 0, 0, 0))
               for v in (0.0, 0.9)]
    ci = uncertainty.bootstrap_intervals(classes, n_boot=2000, seed=4)
    # (a class's mean of 30 tokens of 0.9 is 0.9 to float64 rounding of the sum)
    for name in ("mean_absorption_fraction", "mean_full_absorption"):
        assert ci[f"{name}_ci_low"] == 0.0 and ci[f"{name}_ci_high"] == pytest.approx(0.9, rel=1e-15, abs=0)
    assert ci["mean_single_f1_ci_low"] == ci["mean_single_f1_ci_high"] == 1.0  # every row a tp in every redraw


# ---------------------------------------------------------------------------- seeds, converged, nulls


@pytest.fixture(scope="module")
def world(planted_store, planted_saes):
    store = ActivationStore.open(planted_store)
    data, probe = load_layer(store, 0), load_probe(store, 0)
    store.close()
    sae = load_params_npz(planted_saes[1] / "params.npz", "absorption_30", layer=0)
    truth = json.loads((planted_saes[1] / "truth.json").read_text())
    return data, probe, sae, truth


def with_duplicates(sae, truth):
    """The SAE with a copy of every main latent appended (same encoder, decoder, threshold): two latents that
    fire identically, which the L1 probe can only tell apart by its random start."""
    mains = torch.tensor([i for e in truth["classes"].values() for i in e.get("main_latents", [])])
    cat = lambda a, dim: torch.cat([a, a.index_select(dim, mains)], dim)
    return dataclasses.replace(sae, w_enc=cat(sae.w_enc, 1), b_enc=cat(sae.b_enc, 0), w_dec=cat(sae.w_dec, 0),
                               threshold=cat(sae.threshold, 0))


def test_seeds_reuse_one_encoding_and_equal_separate_runs(world):
    data, probe, sae, _ = world
    cfg = ScoreConfig(seeds=2, bootstrap=0)
    both = score_sae(sae, LayerData(data), probe, cfg)
    alone = score_sae(sae, LayerData(data), probe, dataclasses.replace(
        cfg, seeds=1, sparse_probe=dataclasses.replace(cfg.sparse_probe, seed=1)))
    for row, other in zip(both.classes, alone.classes):
        assert row["split_latents_by_seed"][1] == other["split_latents"]
        assert row["mean_absorption_fraction_by_seed"][1] == other["mean_absorption_fraction"]
    assert both.summary["seeds"] == 2 and "mean_absorption_fraction_seed_std" in both.summary


def LayerData(data):  # the vocabulary rows alone: context precision/recall are not what these tests measure
    from actstore.score.config import LayerData as Rows

    return Rows(data.x, data.labels, data.split)


def test_converged_main_latents_are_identical_across_seeds_where_saebench_disagrees(world):
    data, probe, sae, truth = world
    dup = with_duplicates(sae, truth)
    adam = score_sae(dup, LayerData(data), probe, ScoreConfig(seeds=3, bootstrap=0))
    solved = score_sae(dup, LayerData(data), probe, ScoreConfig(seeds=3, bootstrap=0, l1_solver="converged"))
    assert adam.summary["mean_main_latents_agreement"] < 1.0  # the seed picks one of each twin
    assert solved.summary["l1_converged"] and solved.summary["mean_main_latents_agreement"] == 1.0
    assert all(v == 0.0 for k, v in solved.summary.items() if k.endswith(("_seed_std", "_seed_range")))
    other = score_sae(dup, LayerData(data), probe, ScoreConfig(bootstrap=0, l1_solver="converged",
                                                               sparse_probe=ProbeConfig(batch_size=4096, seed=7,
                                                                                        weight_decay=1e-6)))
    assert [r["split_latents"] for r in other.classes] == [r["split_latents"] for r in solved.classes]


def test_planted_saes_sit_above_their_shuffled_null_by_the_planted_amount(world):
    """By construction (synth_saes.py) only letter c's own planted latents (main, split and absorbing) have a
    decoder with cos != 0 with p_c (fillers decode outside the probes' span, other letters' latents orthogonally
    to p_c). The null renames latent j to perm[j] on every token. So on a true positive t of c, the null's
    projections on p_c are all 0 (absorption 0, no full absorption) unless some latent active on t is renamed
    onto one of c's own latents: not only c's own latents (c's main latent onto c's absorber), but any latent
    that fires on t, such as another letter's main latent firing on one of c's tokens. A letter is clean when
    no active latent of any of its test true positives lands in its own latents; on clean letters the null reads
    exactly 0 and SAE - null = planted."""
    data, probe, sae, truth = world
    cfg = ScoreConfig(bootstrap=0, l1_solver="converged")
    acts = encode_sparse(data.x, sae, decoder_scale(sae))
    null_sae, null_acts, cosines, _ = shuffled_firing_null(sae, data.x, acts, probe.directions())
    null = score_sae(null_sae, LayerData(data), probe, cfg, acts=null_acts, cosines=cosines)
    perm = shuffle_permutation(sae.width)
    fires = (data.x.float() @ probe.weight.T.float() + probe.bias.float()) > 0  # (N, 26) as the scorer's probe
    renamed = {}  # letter -> the latents the null fires on its test true positives
    for c in truth["evaluated_classes"]:
        label = "abcdefghijklmnopqrstuvwxyz".index(c)
        tp = ((data.split == 1) & (data.labels == label) & fires[:, label]).nonzero()[:, 0]
        renamed[c] = {int(perm[i]) for i in acts.rows(tp).index.tolist()}
    own = {c: set(e.get("main_latents", []) + e.get("absorbing_latents", [])) for c, e in truth["classes"].items()}
    clean = [c for c in truth["evaluated_classes"] if not renamed[c] & own[c]]
    assert len(clean) >= len(truth["evaluated_classes"]) - 2  # a collision needs one of ~60 ids among 1500
    scored = score_sae(sae, LayerData(data), probe, dataclasses.replace(cfg, nulls=("shuffled_firing",)))
    mine = {r["class"]: r for r in scored.classes}
    for row in null.classes:
        if row["class"] in clean:
            planted = truth["classes"][row["class"]]["absorption_fraction"]
            assert row["mean_absorption_fraction"] == 0.0 and row["full_absorption_rate"] == 0.0, row["class"]
            assert mine[row["class"]]["mean_absorption_fraction"] - 0.0 == pytest.approx(planted, abs=0.02)
    if len(clean) == len(truth["evaluated_classes"]):
        assert scored.summary["mean_absorption_fraction_minus_null_shuffled_firing"] == pytest.approx(
            truth["summary"]["absorption_fraction"], abs=0.02)  # synth_saes.TOLERANCE
    # the null keeps the SAE's per-token L0 exactly
    assert torch.equal(null_acts.l0, acts.l0) and scored.summary["null_shuffled_firing_l0_vocab"] == \
        scored.summary["l0_vocab"]


def test_random_decoder_null_matches_width_and_l0(world):
    data, probe, sae, _ = world
    acts = encode_sparse(data.x, sae, decoder_scale(sae))
    null = random_decoder_null(sae, data.x, acts, probe.directions()).sae
    null_acts = encode_sparse(data.x, null, decoder_scale(null))
    assert null.width == sae.width
    # all 2080 rows fit the threshold's sample (2^24 / 1500 rows): the L0 matches to one firing in the whole set
    assert abs(int(null_acts.l0.sum()) - int(acts.l0.sum())) <= 1
    torch.testing.assert_close(null.w_dec.norm(dim=1), torch.ones(sae.width), rtol=0, atol=1e-6)


def test_every_metric_has_its_null_and_the_shuffled_null_fires_on_context_rows_where_its_source_does(world):
    """With context rows, each null carries every SAE-dependent metric of the summary (listed here by hand, not
    read from the code), and the shuffled-firing null the SAE's value minus it (the random decoder is a chance
    level: no difference). The shuffled-firing null's latent j fires on a context token
    where the SAE's latent perm^-1(j) does: its context precision and recall are recomputed here from the SAE's
    own encoding of the context rows; its dead-latent share is the SAE's (a renaming keeps every count)."""
    from actstore.score.metrics import precision_recall_f1
    from actstore.score.config import LayerData as Rows

    data, probe, sae, _ = world
    rows = Rows(data.x, data.labels, data.split, data.context_x, data.context_labels)
    assert int((data.context_labels >= 0).sum()) > 100
    cfg = ScoreConfig(bootstrap=0, l1_solver="converged")
    scored = score_sae(sae, rows, probe, dataclasses.replace(cfg, nulls=("random_decoder", "shuffled_firing")))
    metrics = ["mean_absorption_fraction", "mean_full_absorption", "mean_num_split_features", "mean_single_f1",
               "mean_single_precision", "mean_single_recall", "mean_main_f1", "mean_main_precision",
               "mean_main_recall", "mean_context_single_precision", "mean_context_single_recall",
               "mean_context_main_precision", "mean_context_main_recall", "dead_latent_share"]
    # the random decoder is a chance level (chance_*, with its gate share, no difference); shuffled firing a null
    for kind, prefix, extra in (("random_decoder", "chance_random_decoder_", {"gate_share"}),
                                ("shuffled_firing", "null_shuffled_firing_", set())):
        nulled = {k[len(prefix):] for k in scored.summary if k.startswith(prefix)}
        assert nulled == set(metrics) | {"l0_vocab"} | extra, kind
        for metric in metrics:
            null_value = scored.summary[prefix + metric]
            assert null_value == null_value, (kind, metric)  # a number, not NaN
            if kind == "shuffled_firing":
                assert scored.summary[f"{metric}_minus_null_{kind}"] == scored.summary[metric] - null_value
    assert not any(k.endswith("_minus_null_random_decoder") or k.startswith("null_random_decoder_")
                   for k in scored.summary)
    assert scored.summary["dead_latent_share_minus_null_shuffled_firing"] == 0.0

    acts = encode_sparse(data.x, sae, decoder_scale(sae))
    null_sae, null_acts, cosines, source = shuffled_firing_null(sae, data.x, acts, probe.directions())
    null = score_sae(null_sae, Rows(data.x, data.labels, data.split), probe, cfg, acts=null_acts, cosines=cosines)
    alpha = data.context_labels >= 0
    fires = encode_sparse(data.context_x[alpha], sae, decoder_scale(sae)).dense_columns(
        torch.arange(sae.width)) > 0  # (M, m) the SAE's own firing on the alphabetic context tokens
    singles = cosines[1].argmax(dim=0)  # (26,) the null's single latents: the SAE's encoder cosines, kept
    single_p, main_r = [], []
    for row in null.classes:
        c = "abcdefghijklmnopqrstuvwxyz".index(row["class"])
        truth = data.context_labels[alpha] == c
        single_p.append(precision_recall_f1(fires[:, source[singles[c]]], truth).precision)
        main_r.append(precision_recall_f1(fires[:, source[row["split_latents"]]].any(dim=1), truth).recall)
    assert scored.summary["null_shuffled_firing_mean_context_single_precision"] == pytest.approx(
        sum(single_p) / len(single_p), abs=1e-12)
    assert scored.summary["null_shuffled_firing_mean_context_main_recall"] == pytest.approx(
        sum(main_r) / len(main_r), abs=1e-12)


# ---------------------------------------------------------------------------- the score command


SAEBENCH_EVAL_CONFIG = {  # AbsorptionEvalConfig's fields, SAEBench v0.6.0 (sae_bench/evals/absorption/eval_config.py)
    "model_name", "random_seed", "f1_jump_threshold", "max_k_value", "prompt_template", "prompt_token_pos",
    "llm_batch_size", "llm_dtype", "k_sparse_probe_l1_decay", "k_sparse_probe_batch_size", "k_sparse_probe_num_epochs",
    "min_GT_probe_f1", "min_feats_for_eval", "eval_k_sparse_probe_batch_size", "precalc_k_sparse_probe_sae_acts"}


def test_min_classes_fails_each_sae_alone_and_outputs_record_version_and_solver(planted_store, planted_saes, tmp_path):
    import pyarrow.parquet as pq

    from actstore.run.runner import ScoreCommandConfig, run_score

    saes = [str(p / "params.npz") for p in planted_saes[:2]]
    out = tmp_path / "strict"
    summary = run_score(ScoreCommandConfig(str(planted_store), str(out), saes=saes, local=True, min_classes=26),
                        log=lambda *_: None)
    assert summary["failed"] == 2 and summary["scored"] == 0  # the run finished; each SAE failed alone
    rows = pq.read_table(out / "saes.parquet").to_pylist()
    assert all("needs 26, --min-classes" in r["reason"] for r in rows)

    out = tmp_path / "ok"
    run_score(ScoreCommandConfig(str(planted_store), str(out), saes=saes[:1], local=True, bootstrap=200,
                                 metric_version="saebench-0.3", l1_solver="converged"), log=lambda *_: None)
    row = pq.read_table(out / "saes.parquet").to_pylist()[0]
    assert (row["metric_version"], row["l1_solver"]) == ("saebench-0.3", "converged")
    assert row["mean_absorption_fraction_ci_low"] <= row["mean_absorption_fraction"] <= row["mean_absorption_fraction_ci_high"]
    letters = pq.read_table(out / "letters.parquet").to_pylist()
    assert {r["metric_version"] for r in letters} == {"saebench-0.3"}
    assert len(letters) == 26  # saebench-0.3: every letter with probe true positives, no F1 filter
    report = json.loads(next((out / "saebench").glob("*.json")).read_text())
    # saebench-0.3: v0.3.2's AbsorptionEvalConfig, which has no F1 filter and none of v0.6.0's last four fields
    assert set(report["eval_config"]) == SAEBENCH_EVAL_CONFIG - {
        "min_GT_probe_f1", "min_feats_for_eval", "eval_k_sparse_probe_batch_size", "precalc_k_sparse_probe_sae_acts"}
    assert report["eval_result_unstructured"]["actstore"]["min_classes"] == 2
    assert report["eval_result_unstructured"]["actstore"]["metric_version"] == "saebench-0.3"
