"""The scorer: sparse encoding against dense encoding, the L1 probe against a dense twin, the balanced
logistic regression against scikit-learn, and planted-truth recovery on synthetic SAEs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from actstore.score import metrics
from actstore.score.probes import ProbeConfig, fit_one_vs_rest
from actstore.saes.loading import SAEWeights, load_params_npz
from actstore.errors import NotScorable
from actstore.score.config import ScoreConfig
from actstore.score.encode import decoder_scale, encode_sparse
from actstore.score.ksparse import fit_balanced_logistic
from actstore.score.l1probe import train_sparse_probe, train_sparse_probes
from actstore.score.scorer import score_sae
from actstore.score.sparse import SparseActs
from actstore.store.zarrstore import ActivationStore
from actstore.saes.synthetic import compare_with_truth


def random_sae(d: int, m: int, architecture: str = "jumprelu", seed: int = 0) -> SAEWeights:
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(m, d, generator=gen) * torch.rand(m, 1, generator=gen) * 3  # rows of varied norms
    w_dec[3] = 0  # a dead latent: nothing to fold
    return SAEWeights("rand", torch.randn(d, m, generator=gen) / d ** 0.5, torch.randn(m, generator=gen) * 0.1,
                      w_dec, torch.zeros(d), architecture, torch.rand(m, generator=gen) * 0.5, k=7, layer=0)


@pytest.mark.parametrize("architecture", ["jumprelu", "relu", "topk"])
def test_sparse_encoding_equals_dense_encoding_times_decoder_norms(architecture):
    sae = random_sae(24, 333, architecture)
    x = torch.randn(101, 24, generator=torch.Generator().manual_seed(1))
    dense = sae.encode(x) * decoder_scale(sae)  # (101, 333) the folded activations, computed whole
    assert decoder_scale(sae)[3] == 1 and decoder_scale(sae)[0] == pytest.approx(float(sae.w_dec[0].norm()))
    for token_chunk, latent_chunk in ((7, 50), (101, 333), (64, 1000)):  # ragged tiles, whole, oversize
        acts = encode_sparse(x, sae, decoder_scale(sae), token_chunk, latent_chunk)
        assert torch.equal(acts.l0, (dense != 0).sum(dim=1))
        rebuilt = torch.zeros_like(dense)
        rows = torch.repeat_interleave(torch.arange(101), acts.l0)
        rebuilt[rows, acts.index] = acts.value
        # a tile's GEMM blocks its sums differently from the whole matmul: fp32 rounding, values of order 1
        torch.testing.assert_close(rebuilt, dense, rtol=0, atol=2e-5)
        for r in (0, 50, 100):  # latent ids increase within a row
            ids = acts.index[acts.offsets[r]:acts.offsets[r + 1]]
            assert torch.all(ids[1:] > ids[:-1])
    if architecture == "topk":
        assert acts.l0.max() <= 7


def test_sparse_rows_columns_and_padding():
    # rows: 0 -> {2: 1.0, 5: 2.0}; 1 -> {}; 2 -> {0: 3.0}; 3 -> {1: 4.0, 2: 5.0, 6: 6.0}
    acts = SparseActs(torch.tensor([0, 2, 2, 3, 6]), torch.tensor([2, 5, 0, 1, 2, 6]),
                      torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), width=7)
    picked = acts.rows(torch.tensor([3, 1, 0]))
    assert picked.offsets.tolist() == [0, 3, 3, 5] and picked.index.tolist() == [1, 2, 6, 2, 5]
    assert acts.rows(torch.tensor([False, True, True, False])).index.tolist() == [0]
    assert acts.dense_columns(torch.tensor([2, 0])).tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 3.0], [5.0, 0.0]]
    index, value, valid = acts.padded()
    assert index.shape == (4, 3) and valid.sum(dim=1).tolist() == [2, 0, 1, 3]
    assert value.tolist() == [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [4.0, 5.0, 6.0]]


def test_per_token_latent_lists_give_the_same_absorption_terms_as_one_shared_list():
    gen = torch.Generator().manual_seed(3)
    acts = torch.relu(torch.randn(9, 12, generator=gen))
    cos = torch.rand(12, generator=gen) - 0.3
    is_main = torch.zeros(12, dtype=torch.bool)
    is_main[[1, 4]] = True
    shared = metrics.absorption_terms(acts, cos, is_main)
    # the same rows, each listing only its active latents (padding s = 0, cos = 0, not main)
    sparse = SparseActs(torch.cat([torch.zeros(1, dtype=torch.int64), (acts > 0).sum(1).cumsum(0)]),
                        (acts > 0).nonzero()[:, 1], acts[acts > 0], 12)
    index, value, valid = sparse.padded()
    per_row = metrics.absorption_terms(value, torch.where(valid, cos[index], 0.0), is_main[index] & valid)
    torch.testing.assert_close(per_row.main, shared.main, rtol=0, atol=1e-6)
    torch.testing.assert_close(per_row.top, shared.top, rtol=0, atol=1e-6)
    # an inactive main latent is absent from a row's list: its largest main activation is -inf, not 0;
    # both are below the 1e-8 "off" bound, and the rules' decisions are the same
    torch.testing.assert_close(per_row.main_max_act.clamp(min=0), shared.main_max_act, rtol=0, atol=0)
    assert bool((per_row.main_max_act == float("-inf")).any())
    act = shared.main + torch.linspace(-0.5, 2.0, 9)  # tokens on both sides of every rule
    torch.testing.assert_close(metrics.absorption_fraction(act, per_row.main, per_row.top),
                               metrics.absorption_fraction(act, shared.main, shared.top), rtol=0, atol=1e-6)
    assert torch.equal(metrics.full_absorption(act, *per_row[4:5], *per_row[2:4]),
                       metrics.full_absorption(act, *shared[4:5], *shared[2:4]))
    # the absorbing latents and the largest-projection latent name the same latents through either list
    for r in range(9):
        named = [int(index[r, s]) for s in per_row.top_slots[r].tolist() if s >= 0]
        assert named == [s for s in shared.top_slots[r].tolist() if s >= 0]
        if valid[r].any():
            assert int(index[r, per_row.best_slot[r]]) == int(shared.best_slot[r])


def test_balanced_logistic_regression_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=gen) * torch.tensor([1.0, 5.0, 0.2])
    y = (x[:, 0] + 0.3 * x[:, 1] + torch.randn(400, generator=gen) > 1.5)  # imbalanced: about 20% positive
    sparse = x * (torch.rand(400, 3, generator=gen) < 0.15)  # as latents fire: most rows all 0 (merged per class)
    for features in (x, sparse):
        w, b = fit_balanced_logistic(features, y)
        ref = LogisticRegression(class_weight="balanced", max_iter=10000, tol=1e-10)
        ref.fit(features.double().numpy(), y.numpy())  # float64: sklearn's float32 solve is good to about 4e-4
        np.testing.assert_allclose(w.numpy(), ref.coef_[0], rtol=0, atol=1e-4)
        assert float(b) == pytest.approx(float(ref.intercept_[0]), abs=1e-4)


def test_sparse_l1_probe_equals_the_same_probe_trained_on_dense_activations():
    sae = random_sae(16, 90)
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(300) % 26
    acts = encode_sparse(x, sae, decoder_scale(sae))
    cfg = ScoreConfig(sparse_probe=ProbeConfig(epochs=6, batch_size=64, weight_decay=1e-6))
    sparse = train_sparse_probe(acts, labels, 26, cfg)  # (90, 26)

    dense = (sae.encode(x) * decoder_scale(sae))  # (300, 90)
    gen = torch.Generator().manual_seed(0)  # nn.Linear's initialization, drawn as the scorer draws it
    weight = ((torch.rand(90, 26, generator=gen) * 2 - 1) / 90 ** 0.5).requires_grad_()
    bias = ((torch.rand(26, generator=gen) * 2 - 1) / 90 ** 0.5).requires_grad_()
    fit_one_vs_rest([weight, bias], lambda rows: dense[rows] @ weight + bias, labels, cfg.sparse_probe,
                    extra_loss=lambda: 1e-2 * weight.abs().sum(dim=0).mean())
    torch.testing.assert_close(sparse, weight.detach(), rtol=0, atol=2e-6)


@pytest.mark.parametrize("n_classes", [2, 26, 40])
def test_seeds_trained_together_equal_each_seed_trained_alone(n_classes):
    """train_sparse_probes trains several seeds as one probe with C x S outputs: each seed's block must follow
    the steps of that seed alone, with several batches per epoch (each seed its own batch order) and with one."""
    sae = random_sae(16, 90)
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(300) % n_classes
    acts = encode_sparse(x, sae, decoder_scale(sae))
    for batch_size in (64, 4096):
        cfg = ScoreConfig(sparse_probe=ProbeConfig(epochs=6, batch_size=batch_size, weight_decay=1e-6))
        together = train_sparse_probes(acts, labels, n_classes, cfg, [0, 3, 5])
        assert [w.shape for w in together] == [(90, n_classes)] * 3
        for seed, weight in zip((0, 3, 5), together):
            alone = train_sparse_probe(acts, labels, n_classes, dataclasses.replace(
                cfg, sparse_probe=dataclasses.replace(cfg.sparse_probe, seed=seed)))
            torch.testing.assert_close(weight, alone, rtol=0, atol=1e-7)
        assert not torch.equal(together[0], together[1])  # the seeds differ


# ---------------------------------------------------------------------------- planted truth


def test_planted_values_are_what_the_construction_says(planted_saes):
    for folder, rate in zip(planted_saes, (0.0, 0.3, 0.5)):
        truth = json.loads((folder / "truth.json").read_text())
        splits = {c: e for c, e in truth["classes"].items() if e["role"].startswith("split")}
        assert sorted(e["num_split_features"] for e in splits.values()) == [2, 3]
        for letter, entry in truth["classes"].items():
            if letter in splits:
                assert entry["absorption_fraction"] == 0 and len(entry["main_latents"]) == entry["num_split_features"]
                continue
            n = entry["num_probe_true_positives"]
            if letter not in truth["evaluated_classes"]:  # probe test F1 < 0.6: planted clean, never scored
                assert entry["main_off_test_true_positives"] == 0 and entry["absorption_fraction"] == 0
                continue
            # round(f n) of the n test-split true positives lose the main latent, and each has an absorber
            assert entry["main_off_test_true_positives"] == round(rate * n)
            assert entry["absorption_fraction"] == pytest.approx(round(rate * n) / n, abs=1e-12)
        with np.load(folder / "params.npz") as params:
            assert params["W_enc"].shape == (64, 1500) and params["threshold"].shape == (1500,)


def test_planted_thresholds_clear_every_row_by_more_than_float32_rounding():
    """The scorer encodes in float32; a planted firing decision closer to its threshold than float32 rounding
    could go either way, and the planted truth would be wrong by that row (real stores hold near-identical rows:
    "about" and " about"). float32_slack bounds the rounding of u . x + b; main_threshold avoids such gaps."""
    from actstore.saes.planting import float32_slack, main_threshold

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2000, 576, generator=gen, dtype=torch.float64) * 40  # norms about 960, like a real residual
    u = torch.nn.functional.normalize(torch.randn(576, 8, generator=gen, dtype=torch.float64), dim=0)
    b = 1234.5
    exact = x @ u + b
    rounded = (x.float() @ u.float() + torch.tensor(b, dtype=torch.float32)).double()
    slack = float32_slack(x, b)
    assert float((rounded - exact).abs().max()) < slack < 1e-3 * float(exact.abs().max())

    s = torch.tensor([0.0, 1.0, 2.0, 2.0 + 1e-9, 3.0, 5.0], dtype=torch.float64)
    tp = torch.sort(s[1:5]).values  # the true positives' scores: 1, 2, 2 + 1e-9, 3
    assert main_threshold(s, tp, 0, 1e-6) == (0.5, 0)  # off on none: the widest gap below the lowest
    assert main_threshold(s, tp, 2, 1e-12) == (pytest.approx(2.0 + 5e-10, abs=1e-15), 2)  # the gap is clear of rounding this small
    assert main_threshold(s, tp, 2, 1e-6) == (1.5, 1)  # not of 1e-6: the nearest clear j, the lower on a tie
    assert main_threshold(s, tp, 4, 1e-6) == (pytest.approx(3.0 + 4e-6, abs=1e-15), 4)
    # no test true positive (a letter the probe misses): silent, not a latent that fires on every row
    assert main_threshold(s, tp[:0], 0, 1e-6) == (pytest.approx(5.0 + 4e-6, abs=1e-15), 0)


def test_scorer_recovers_every_planted_value(planted_store, planted_saes):
    store = ActivationStore.open(planted_store)
    from actstore.score.probes import load_probe
    from actstore.store.layers import load_layer

    data, probe = load_layer(store, 0), load_probe(store, 0)
    for folder in planted_saes:
        truth = json.loads((folder / "truth.json").read_text())
        sae = load_params_npz(folder / "params.npz", folder.name, layer=0)
        result = score_sae(sae, data, probe)
        checks = compare_with_truth(truth, result.classes)
        assert checks and all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]
        for c in checks:  # the construction is exact: measured equals planted to float32 rounding
            assert c["measured"] == pytest.approx(c["planted"], abs=1e-6)
        by_letter = {r["class"]: r for r in result.classes}
        for letter in truth["evaluated_classes"]:
            assert sorted(by_letter[letter]["split_latents"]) == sorted(truth["classes"][letter]["main_latents"])
        # in context: the single latent's firing, computed here from the dense encoding of the context rows
        alpha = data.context_labels >= 0
        dense = sae.encode(data.context_x[alpha])
        for letter in truth["evaluated_classes"][:3]:
            row = by_letter[letter]
            fires, truth_c = dense[:, row["single_latent"]] > 0, data.context_labels[alpha] == ord(letter) - 97
            p, r, _ = metrics.precision_recall_f1(fires, truth_c)
            assert (row["context_single_precision"], row["context_single_recall"]) == (pytest.approx(p), pytest.approx(r))
            assert p > 0 and r > 0  # the main latent fires on context tokens of its letter too
        # noise 0.5 x sqrt(64) against signal 3: some probes miss 0.6 test F1, and their letters are skipped
        assert 5 < len(truth["evaluated_classes"]) < 26
        assert [r["class"] for r in result.classes] == truth["evaluated_classes"]
        assert all(r["probe_test_f1"] > 0.6 for r in result.classes)
        assert result.summary["mean_absorption_fraction"] == pytest.approx(truth["summary"]["absorption_fraction"], abs=1e-6)


def test_too_few_evaluated_letters_is_not_scorable(planted_store, planted_saes):
    from actstore.score.probes import load_probe
    from actstore.store.layers import load_layer

    store = ActivationStore.open(planted_store)
    probe = load_probe(store, 0)
    probe.metrics["test"]["f1"] = [0.9] + [0.1] * 25
    sae = load_params_npz(planted_saes[0] / "params.npz", "x", layer=0)
    with pytest.raises(NotScorable, match="only 1 classes of task first_letter have a probe test F1 > 0.6 at layer 0 "
                                          ".needs 2, --min-classes."):
        score_sae(sae, load_layer(store, 0), probe)


# ---------------------------------------------------------------------------- any number of classes


def planted_classes(n_classes: int, per_class: int = 30, n_test: int = 10, seed: int = 0):
    """A hand-built world of C classes in d = C + 2 dimensions, with its probe and SAE, and the planted values.

    Row of class c: 3 e_c (+ 3 f on its absorbed rows) + noise 0.02; f = e_C is the absorbed tokens' feature.
    The last n_test rows of each class are its test split; class c's first k_c = 0, 3, 5 (c mod 3) test rows
    are absorbed. The probe is 2 e_c - 3 (exact: fires on its class alone, test F1 1). SAE (JumpReLU):
    - main latent c: encoder e_c - 0.5 f, b_enc 10, threshold 12.25 (pre 13 on its class, 11.5 on its absorbed
      rows, <= 10 elsewhere), decoder 2 e_c: folded value 26 >= a . p_c = 3, so absorption 0 where it fires;
    - absorbing latent C + c: encoder e_c + 3 f, threshold 7.5 (pre 12 on c's absorbed rows, <= 3 elsewhere),
      decoder 0.5 (e_c + f) / sqrt(2): cos 1/sqrt(2) with p_c, folded value 6, projection 4.24 >= 0.4 x 3; it
      never fires on a train row, so the L1 probe gives it no weight and k-sparse probing keeps the main latent
      alone. An absorbed row has fraction 1 and is fully absorbed; every other row 0;
    - fillers up to a width of 2048 on e_{C+1}, threshold 1: silent (noise 0.02). The width matters: SAEBench's
      50 Adam steps move a weight by about 0.1, and silent latents keep their random start (+-1/sqrt(width)),
      which must stay below that for the main latent to rank first (with 7 latents, C = 2, a silent latent's
      start outranks class 1's main latent, and k-sparse probing then takes class 0's latent as its main).
    """
    from actstore.score.config import LayerData
    from actstore.score.probes import Probe
    from actstore.tasks.base import Task

    gen = torch.Generator().manual_seed(seed)
    c_, d = n_classes, n_classes + 2
    eye = torch.eye(d)
    f = eye[c_]
    fillers = 2048 - 2 * n_classes
    labels = torch.arange(n_classes * per_class) % n_classes
    order = torch.arange(len(labels)) // n_classes  # the row's index within its class
    test = order >= per_class - n_test
    absorbed_count = [(0, 3, 5)[c % 3] for c in range(n_classes)]
    absorbed = test & (order - (per_class - n_test) < torch.tensor(absorbed_count)[labels])
    x = 3 * eye[labels] + 3 * absorbed[:, None] * f + 0.02 * torch.randn(len(labels), d, generator=gen)
    names = tuple(f"class{c:03d}" for c in range(n_classes))
    task = Task(name="planted", classes=names, label=lambda text: None, template="{word}:", answers=names,
                prompt_task="planted", min_evaluated=2)
    data = LayerData(x, labels, test.long(), token_id=torch.arange(len(labels)),
                     text=[f"t{i}" for i in range(len(labels))], task=task)
    ones = [1.0] * n_classes
    probe = Probe(2 * eye[:n_classes], torch.full((n_classes,), -3.0),
                  {split: {"precision": ones, "recall": ones, "f1": ones} for split in ("train", "test")})
    w_enc = torch.cat([(eye[:n_classes] - 0.5 * f).T, (eye[:n_classes] + 3 * f).T,
                       eye[c_ + 1][:, None].expand(d, fillers)], 1)  # (d, m)
    b_enc = torch.cat([torch.full((n_classes,), 10.0), torch.zeros(n_classes + fillers)])
    threshold = torch.cat([torch.full((n_classes,), 12.25), torch.full((n_classes,), 7.5), torch.ones(fillers)])
    w_dec = torch.cat([2 * eye[:n_classes], 0.5 * (eye[:n_classes] + f) / 2 ** 0.5,
                       torch.nn.functional.normalize(torch.randn(fillers, d, generator=gen), dim=1)])
    sae = SAEWeights("planted", w_enc, b_enc, w_dec, torch.zeros(d), "jumprelu", threshold, layer=0)
    return data, probe, sae, absorbed_count


@pytest.mark.parametrize("n_classes", [2, 40])
def test_scorer_recovers_planted_absorption_for_any_number_of_classes(n_classes):
    data, probe, sae, absorbed = planted_classes(n_classes)
    result = score_sae(sae, data, probe, ScoreConfig(bootstrap=200))
    assert [r["class"] for r in result.classes] == list(data.task.classes)  # every class passes F1 > 0.6
    for c, row in enumerate(result.classes):
        k = absorbed[c]
        assert row["num_probe_true_positives"] == 10 and row["num_full_absorption"] == k
        assert row["mean_absorption_fraction"] == row["full_absorption_rate"] == k / 10
        assert row["split_latents"] == [c] and row["single_latent"] == c
        assert (row["main_precision"], row["main_recall"]) == (1.0, (10 - k) / 10)
        assert (row["single_precision"], row["single_recall"]) == (1.0, (10 - k) / 10)
        assert row["split_cos_dec"] == [pytest.approx(1.0, abs=1e-6)]
    mean = sum(k / 10 for k in absorbed) / n_classes
    summary = result.summary
    assert summary["classes_evaluated"] == n_classes
    assert summary["mean_absorption_fraction"] == pytest.approx(mean, abs=1e-12)
    assert summary["mean_full_absorption"] == pytest.approx(mean, abs=1e-12)
    assert summary["mean_absorption_fraction_ci_low"] <= mean <= summary["mean_absorption_fraction_ci_high"]
    # per-token records: one per (class, test true positive), the absorbed ones naming their absorber
    tokens = result.tokens
    assert len(tokens["row"]) == 10 * n_classes and set(tokens["class"]) == set(data.task.classes)
    for name, row, latents, fraction in zip(tokens["class"], tokens["row"], tokens["absorber_latents"],
                                            tokens["absorption_fraction"]):
        c = data.task.classes.index(name)
        assert int(data.labels[row]) == c
        is_absorbed = (row // n_classes) - 20 < absorbed[c]
        assert (latents, fraction) == (([n_classes + c], 1.0) if is_absorbed else ([], 0.0))
    assert sorted(result.latent_top_tokens) == [n_classes + c for c in range(n_classes) if absorbed[c]]


def test_planted_classes_with_nulls_and_the_converged_solver():
    """40 classes through the converged L1 solver (C outputs) and both nulls: the same planted values, and the
    shuffled-firing null keeps the dead-latent share (a renaming keeps every count)."""
    data, probe, sae, absorbed = planted_classes(40)
    solved = score_sae(sae, data, probe, ScoreConfig(bootstrap=0, l1_solver="converged"))
    nulled = score_sae(sae, data, probe, ScoreConfig(bootstrap=0, nulls=("random_decoder", "shuffled_firing")))
    assert solved.summary["l1_converged"]
    for result in (solved, nulled):
        assert [r["mean_absorption_fraction"] for r in result.classes] == [k / 10 for k in absorbed]
        assert [r["split_latents"] for r in result.classes] == [[c] for c in range(40)]
    summary = nulled.summary
    assert summary["dead_latent_share_minus_null_shuffled_firing"] == 0.0
    for prefix in ("chance_random_decoder_", "null_shuffled_firing_"):  # the random decoder is a chance level
        assert 0.0 <= summary[prefix + "mean_absorption_fraction"] <= 1.0
    assert summary["mean_absorption_fraction_minus_null_shuffled_firing"] == \
        summary["mean_absorption_fraction"] - summary["null_shuffled_firing_mean_absorption_fraction"]
    assert not any("random_decoder" in k and not k.startswith("chance_") for k in summary)  # no SAE minus chance


def test_a_probe_of_another_task_is_refused():
    data, probe, sae, _ = planted_classes(3)
    with pytest.raises(ValueError, match="the probe has 2 classes, task planted has 3"):
        score_sae(sae, data, dataclasses.replace(probe, weight=probe.weight[:2], bias=probe.bias[:2]))
