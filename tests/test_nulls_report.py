"""The random-decoder null is a chance level, named as one; the report names the L1 solver of every number and
shows the spread over seeds (issue 22).

The chance level is checked against a numpy re-derivation of the chance that a random unit vector in d
dimensions passes absorption's 0.1 cosine gate (the integral of the density of one coordinate of a uniform
point on the sphere, and a Monte Carlo draw), the page against the results tables of a real scoring run."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actstore.run.results import read_saes, sae_row
from actstore.saes.loading import load_params_npz
from actstore.score.encode import decoder_scale, encode_sparse
from actstore.score.metrics import ABSORPTION_MIN_COS
from actstore.score.nulls import gate_share, legacy_columns, make_null


def gate_chance(d: int, min_cos: float = ABSORPTION_MIN_COS) -> float:
    """P(cos(u, p) >= min_cos) for u uniform on the unit sphere of R^d: one coordinate t of a uniform point has
    density proportional to (1 - t^2)^((d - 3) / 2) on [-1, 1]; integrated numerically (trapezoids)."""
    t = np.linspace(-1, 1, 2_000_001)
    density = (1 - t ** 2) ** ((d - 3) / 2)
    total = np.trapezoid(density, t)
    keep = t >= min_cos
    return float(np.trapezoid(density[keep], t[keep]) / total)


@pytest.fixture(scope="module")
def layer(planted_store):
    from actstore.score.probes import load_probe
    from actstore.store.layers import load_layer
    from actstore.store.zarrstore import ActivationStore

    with ActivationStore.open(planted_store) as store:
        return load_layer(store, 0), load_probe(store, 0)


def test_the_random_decoder_null_is_the_chance_of_passing_the_cosine_gate(layer, planted_saes):
    """The null's gate share (its (latent, class) pairs with cos >= 0.1) is the chance that a random unit vector
    in d = 64 passes the gate: 0.214 by the integral, the same by 400,000 numpy draws (sd 0.0007: within 0.003).
    The null's 1,500 latents against 26 classes are a sample: per latent the sd is sqrt(p (1 - p) / 1500) = 0.011
    at worst (classes fully correlated), so the null is within 0.03 of it. Its absorption on the planted 0% SAE
    comes only from latents past the gate: at most the share of true positives with such a latent active."""
    data, probe = layer
    d = data.x.shape[1]
    chance = gate_chance(d)
    rng = np.random.default_rng(1)
    u = rng.standard_normal((400_000, d))
    drawn = float(np.mean(u[:, 0] / np.linalg.norm(u, axis=1) >= ABSORPTION_MIN_COS))
    assert d == 64 and abs(chance - 0.2140) < 1e-3 and abs(drawn - chance) < 0.003, (chance, drawn)

    sae = load_params_npz(Path(planted_saes[0]) / "params.npz", "planted 0", layer=0)
    acts = encode_sparse(data.x, sae, decoder_scale(sae))
    null = make_null("random_decoder", sae, data.x, acts, probe.directions())
    share = gate_share(null.sae.w_dec, probe.directions())  # chance_random_decoder_gate_share
    assert abs(share - chance) < 0.03, (share, chance)
    w_dec = null.sae.w_dec.double().numpy()
    p = probe.directions().double().numpy()
    cos = (w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1, keepdims=True)).T
    assert share == pytest.approx(float(np.mean(cos >= ABSORPTION_MIN_COS)), abs=1e-12)


def test_scored_chance_level_reads_above_the_planted_zero_within_its_gate_bound(layer, planted_saes):
    """On the planted 0% SAE (d = 64) the random decoder reads absorption by chance, above the SAE's 0, with
    no difference column (the shuffled-firing null reads 0 there: tests/test_trust.py). The chance level is
    bounded by a numpy re-derivation: a true positive can count as absorbed only when one of the null's active
    latents passes the gate."""
    from actstore.score.config import ScoreConfig
    from actstore.score.scorer import score_sae

    data, probe = layer
    sae = load_params_npz(Path(planted_saes[0]) / "params.npz", "planted 0", layer=0)
    result = score_sae(sae, data, probe, ScoreConfig(bootstrap=0, nulls=("random_decoder",)))
    s = result.summary
    assert s["mean_absorption_fraction"] == 0.0
    assert not any(k.endswith("_minus_null_random_decoder") for k in s)
    level = s["chance_random_decoder_mean_absorption_fraction"]
    assert abs(s["chance_random_decoder_gate_share"] - gate_chance(data.x.shape[1])) < 0.03
    assert level > 0.05, level  # chance absorption: random latents pass the 0.1 gate at d = 64

    acts = encode_sparse(data.x, sae, decoder_scale(sae))
    null = make_null("random_decoder", sae, data.x, acts, probe.directions()).sae
    x = data.x.double().numpy()
    fires = x @ null.w_enc.double().numpy() > float(null.threshold[0])  # (N, m)
    w = null.w_dec.double().numpy()
    p = probe.directions().double().numpy()
    gate = (w / np.linalg.norm(w, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1, keepdims=True)).T >= 0.1
    fires_probe = x @ probe.weight.double().numpy().T + probe.bias.double().numpy() > 0
    labels, test = data.labels.numpy(), data.split.numpy() != 0
    shares = []
    for row in result.classes:
        c = ord(row["class"]) - ord("a")  # first_letter's classes are the letters, in label order
        tp = test & (labels == c) & fires_probe[:, c]
        shares.append(float(np.mean((fires[tp] & gate[:, c]).any(axis=1))))
    assert level <= np.mean(shares) + 1e-9, (level, np.mean(shares))


def mixed_sae(folder: Path, out: Path) -> Path:
    """The planted SAE with a weak twin for every class's main latent (benchmarks/seed_spread.py): it fires on
    the same tokens at half the activation and decodes to a mix of its class's direction and the next class's,
    so SAEBench's L1 probe picks between the two by its seed."""
    truth = json.loads((folder / "truth.json").read_text())
    per_class = truth.get("classes", truth.get("letters"))
    mains = [e["main_latents"][0] for _, e in sorted(per_class.items()) if e.get("main_latents")]
    with np.load(folder / "params.npz") as p:
        a = {k: p[k].copy() for k in p.files}
    twins = [(i, mains[(j + 1) % len(mains)]) for j, i in enumerate(mains)]
    dec = np.stack([a["W_dec"][i] + 0.8 * a["W_dec"][o] for i, o in twins])
    out.mkdir(parents=True)
    np.savez(out / "params.npz", W_enc=np.concatenate([a["W_enc"], a["W_enc"][:, mains] * 0.5], 1),
             W_dec=np.concatenate([a["W_dec"], dec / np.linalg.norm(dec, axis=1, keepdims=True)]),
             b_enc=np.concatenate([a["b_enc"], a["b_enc"][mains] * 0.5]), b_dec=a["b_dec"],
             threshold=np.concatenate([a["threshold"], a["threshold"][mains] * 0.5]))
    return out / "params.npz"


def page_table(html_text: str, table_id: str) -> tuple[list[str], list[list[str]]]:
    table = re.search(f'<table id="{table_id}">(.*?)</table>', html_text, re.S).group(1)
    headers = [unescape(h) for h in re.findall(r"<th>(.*?)</th>", table)]
    rows = [[unescape(c) for c in re.findall(r"<td>(.*?)</td>", r)] for r in re.findall(r"<tr>(.*?)</tr>", table)[1:]]
    return headers, rows


def test_a_scoring_run_with_two_seeds_shows_its_solver_and_seed_spread(planted_store, planted_saes, tmp_path):
    """A real `score` run (in process, --seeds 2, --null --null-kinds random_decoder) of an SAE whose classes have
    near-duplicate main latents: the page's SAE table names the L1 solver and the seeds, its seed sd and range
    columns are saes.parquet's values (rounded as the page prints them), the absorption spread is not 0, the
    random decoder appears as a chance level, and no column is a difference from it."""
    from actstore.report.pages import write_report
    from actstore.run.runner import ScoreCommandConfig, run_score

    sae = mixed_sae(Path(planted_saes[0]), tmp_path / "mixed")
    out = tmp_path / "results"
    run_score(ScoreCommandConfig(store=str(planted_store), saes=[str(sae)], out=str(out), layer=0, device="cpu",
                                 local=True, seeds=2, null=True, null_kinds=["random_decoder"], bootstrap=0),
              log=lambda line: None)
    row = pq.read_table(out / "saes.parquet").to_pylist()[0]
    assert row["status"] == "ok" and row["seeds"] == 2 and row["l1_solver"] == "saebench"
    assert row["mean_absorption_fraction_seed_range"] > 0  # the seed moves this SAE's absorption
    text = Path(write_report(out)["html"]).read_text()
    headers, rows = page_table(text, "saes")
    cells = dict(zip(headers, rows[0]))
    assert cells["L1 solver"] == "saebench" and cells["seeds"] == "2"
    for key, name in (("mean_absorption_fraction", "absorption"), ("mean_full_absorption", "full absorption"),
                      ("mean_num_split_features", "split features"), ("mean_single_f1", "single-latent F1")):
        for stat, label in (("std", "sd"), ("range", "range")):
            assert cells[f"{name} seed {label}"] == f"{row[f'{key}_seed_{stat}']:.4f}", (name, stat)
    assert cells["absorption: chance level (random decoder)"] == \
        f"{row['chance_random_decoder_mean_absorption_fraction']:.4f}"
    assert "L1 solver saebench, first of 2 seeds" in text and "not absorption recovered" in text
    assert not any("minus" in h for h in headers)
    assert not any("random_decoder" in k and not k.startswith("chance_") for k in row)


def test_results_written_before_the_chance_level_was_named_read_under_its_name(tmp_path):
    """An old saes.parquet (null_random_decoder_*, *_minus_null_random_decoder) and an old part's summary read
    with chance_random_decoder_* columns and no difference; the report shows it as the chance level."""
    from actstore.report.pages import write_report

    old = {"sae_key": "k", "release": "r", "sae_id": "old", "layer": 0, "width": 1500, "status": "ok", "reason": "",
           "classes_evaluated": 2, "l0_vocab": 3.0, "mean_absorption_fraction": 0.0, "mean_full_absorption": 0.0,
           "mean_num_split_features": 1.0, "mean_single_f1": 0.9, "mean_main_precision": 0.9,
           "mean_main_recall": 0.9, "l1_solver": "saebench", "seeds": 1,
           "null_random_decoder_mean_absorption_fraction": 0.17, "null_random_decoder_mean_full_absorption": 0.08,
           "mean_absorption_fraction_minus_null_random_decoder": -0.17,
           "null_shuffled_firing_mean_absorption_fraction": 0.0,
           "mean_absorption_fraction_minus_null_shuffled_firing": 0.0}
    part = sae_row("first_letter", old)
    assert legacy_columns(dict(old)) == {k: v for k, v in part.items() if k != "letters_evaluated"}
    assert part["chance_random_decoder_mean_absorption_fraction"] == 0.17
    assert "null_random_decoder_mean_absorption_fraction" not in part
    assert "mean_absorption_fraction_minus_null_random_decoder" not in part
    assert part["mean_absorption_fraction_minus_null_shuffled_firing"] == 0.0
    folder = tmp_path / "old"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([old]), folder / "saes.parquet")
    pq.write_table(pa.Table.from_pylist([{"sae_key": "k", "letter": c, "mean_absorption_fraction": 0.0,
                                          "full_absorption_rate": 0.0} for c in "ab"]), folder / "letters.parquet")
    row = read_saes(folder)[0]
    assert row["chance_random_decoder_mean_full_absorption"] == 0.08
    assert not any(k.startswith("null_random_decoder") or k.endswith("minus_null_random_decoder") for k in row)
    headers, rows = page_table(Path(write_report(folder)["html"]).read_text(), "saes")
    cells = dict(zip(headers, rows[0]))
    assert cells["absorption: chance level (random decoder)"] == "0.1700" and cells["L1 solver"] == "saebench"
    assert "absorption seed sd" not in cells  # one seed: no spread columns
