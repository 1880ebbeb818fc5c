"""The ground-truth world (issue 22): the world's rows against sae-lens's own sampler, the ground-truth absorption
against hand-computed and planted values, SAEs of every architecture trained by sae-lens and resumed, and the
comparison's statistics against scipy."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from actstore.world.build import WorldSpec, class_names, load_world, make_world, world_rows, write_world
from actstore.world.compare import agreement, spearman
from actstore.world.truth import GATE, ground_truth, summarize

TINY = WorldSpec(parents=4, children=2, background=4, d_model=16, width=24, rows=1024, train_samples=4096, pool=4096)
"""A world small enough to build, train and score in seconds (16 features in 16 dims)."""


# ---------------------------------------------------------------------------- ground truth, by hand


def _one_parent_world():
    """Features e0 (parent), e1, e2 (its children), e3 (background) in 4 dims; four latents: 0 the parent, 1 child
    1 with the parent absorbed (decoder (e1 + e0)/sqrt 2), 2 child 2 alone, 3 the background."""
    features = torch.eye(4)
    w_dec = torch.stack([features[0], (features[1] + features[0]) / math.sqrt(2), features[2], features[3]])
    return features, w_dec


def test_ground_truth_counts_a_silent_parent_latent_with_an_absorbing_child_as_full_absorption():
    features, w_dec = _one_parent_world()
    r2 = math.sqrt(2)
    acts = torch.tensor([[1.0, 0, 0, 0],        # parent alone: its latent fires            fraction 0, not full
                         [0.0, r2, 0, 0],       # parent + child 1: only the absorbing latent fraction 1, full
                         [1.0, 0, 1, 0],        # parent + child 2: the clean child latent  fraction 0, not full
                         [0.5, r2 / 2, 0, 1]])  # partial: both carry half the parent's direction: 0.5, not full
    acts, child = acts.repeat(3, 1), np.tile([-1, 1, 2, 1], 3)  # each row 3 times: MIN_FIRING rows per latent
    out = ground_truth(acts, w_dec, features, np.zeros(12, dtype=np.int64), child, [[1, 2]], ["p0"])
    # latent 1 adds s * (W_1 . e0) = sqrt2 * (1/sqrt2) = 1 along e0 on row 1; 0.5 on row 3, as latent 0 does
    assert out[0]["gt_full_absorption"] == pytest.approx(1 / 4, abs=1e-7)
    assert out[0]["gt_absorption_fraction"] == pytest.approx((0 + 1 + 0 + 0.5) / 4, abs=1e-7)
    assert out[0]["parent_latent"] == 0 and out[0]["carriers"] == [1]  # latent 2 carries no parent direction


def test_the_parent_latent_is_never_a_child_latent_and_may_be_missing():
    """An SAE with no latent for the parent alone: its child latents (each firing only with its child) hold mostly
    the parent's direction (cos 0.8), so the literal rule (the best match to the parent, whatever it is) names one
    of them the parent latent and counts only the other child's rows; the rule used names no parent latent and
    counts both as full absorption."""
    features = torch.eye(4)
    w_dec = torch.stack([0.8 * features[0] + 0.6 * features[1], 0.75 * features[0] + 0.66 * features[2],
                         features[3]])
    acts = torch.tensor([[1.0, 0, 0], [0.0, 1.0, 0], [1.0, 0, 0], [0.0, 0, 1.0]]).repeat(3, 1)
    child, parent = np.tile([1, 2, 1, -1], 3), np.zeros(12, dtype=np.int64)
    out = ground_truth(acts, w_dec, features, parent, child, [[1, 2]], ["p0"])[0]
    assert out["parent_latent"] is None and out["carriers"] == [0, 1]
    assert out["gt_full_absorption"] == pytest.approx(3 / 4) and out["gt_absorption_fraction"] == pytest.approx(3 / 4)
    assert out["parent_latent_literal"] == 0 and out["parent_latent_is_child"]
    assert out["gt_full_absorption_literal"] == pytest.approx(1 / 4)  # row 2 only: latent 0 is "the parent" there
    # with a parent latent of its own (cos 0.9 >= PARENT_MIN) both rules agree on it
    with_parent = torch.cat([w_dec, torch.nn.functional.normalize(features[0] + 0.1 * features[3], dim=0)[None]])
    out = ground_truth(torch.cat([acts, torch.zeros(12, 1)], dim=1), with_parent, features, parent, child, [[1, 2]],
                       ["p0"])[0]
    assert out["parent_latent"] == 3 and out["gt_full_absorption"] == pytest.approx(3 / 4)


def test_ground_truth_gate_and_unmatched_latents():
    """A child latent whose decoder holds less than GATE of the parent carries nothing; a latent that fires without
    a child is no child latent, however much parent direction it has."""
    features = torch.eye(4)
    weak = torch.nn.functional.normalize(features[1] + 0.05 * features[0], dim=0)   # cos with e0 about 0.05 < GATE
    background = torch.nn.functional.normalize(features[3] + 0.9 * features[0], dim=0)  # best match e3
    w_dec = torch.stack([features[0], weak, features[2], background])
    acts = torch.tensor([[0.0, 1.0, 0, 0], [0.0, 0, 0, 1.0]]).repeat(3, 1)
    out = ground_truth(acts, w_dec, features, np.zeros(6, dtype=np.int64), np.tile([1, -1], 3), [[1, 2]], ["p0"])
    assert float(weak @ features[0]) < GATE
    assert out[0]["gt_full_absorption"] == 0 and out[0]["gt_absorption_fraction"] == 0 and out[0]["carriers"] == []


def test_ground_truth_on_planted_saes_of_a_sampled_world():
    """On the world's own rows: an SAE whose latents are the true features absorbs nothing; one whose child latents
    also hold their parent (and whose parent latent fires only without a child) fully absorbs exactly the rows
    where a child fires."""
    world = make_world(TINY)
    rows = world_rows(world)
    f = world.features                                                             # (F, d)
    a = torch.linalg.lstsq(f.T, rows.x.T).solution.T                               # (n, F) the rows' activations
    assert torch.allclose(a @ f, rows.x, atol=1e-4)
    a = torch.where(a > 1e-3, a, torch.zeros_like(a))                              # solver noise is not firing
    kids = [world.child_indices(p) for p in range(TINY.parents)]
    clean = ground_truth(a, f, f, rows.parent, rows.child, kids, class_names(TINY))
    assert all(c["gt_full_absorption"] == 0 and c["gt_absorption_fraction"] < 1e-3 for c in clean)

    absorbing_dec = f.clone()
    acts = a.clone()
    for p in range(TINY.parents):
        for c in kids[p]:
            absorbing_dec[c] = f[c] + f[p]                                         # child latent = child + parent
            with_child = acts[:, c] > 0
            acts[with_child, p] = 0                                                # the parent latent is silent
    planted = ground_truth(acts, absorbing_dec, f, rows.parent, rows.child, kids, class_names(TINY))
    for p, c in enumerate(planted):
        mine = rows.parent == p
        expected = float(np.mean(rows.child[mine] >= 0))
        assert c["gt_full_absorption"] == pytest.approx(expected, abs=1e-6)  # a float32 mean
        assert c["gt_absorption_fraction"] == pytest.approx(expected, abs=1e-5)
    assert summarize(planted)["gt_classes"] == TINY.parents
    assert summarize(planted, ["p0"])["gt_full_absorption"] == pytest.approx(planted[0]["gt_full_absorption"])


# ---------------------------------------------------------------------------- the world and its store


def test_world_rows_follow_the_hierarchy_and_are_deterministic():
    world = make_world(TINY)
    rows = world_rows(world)
    assert rows.x.shape == (TINY.rows, TINY.d_model)
    # a row's child is one of its parent's own children, or none; every parent has rows, with and without a child
    has = rows.child >= 0
    owner = (rows.child[has] - TINY.parents) // TINY.children
    assert np.array_equal(owner, rows.parent[has])
    assert set(rows.parent.tolist()) == set(range(TINY.parents)) and 0.2 < has.mean() < 0.8
    # x projects onto its parent's direction with the firing magnitude (mean 1, std 0.15; features ~orthogonal)
    along = (rows.x * world.features[torch.as_tensor(rows.parent)]).sum(dim=1)
    assert 0.7 < float(along.mean()) < 1.3
    assert abs(rows.split.mean() - 0.2) < 1 / TINY.rows
    again = world_rows(make_world(TINY))
    assert torch.equal(again.x, rows.x) and np.array_equal(again.child, rows.child)
    other = world_rows(make_world(replace(TINY, seed=1)))
    assert not torch.equal(other.x, rows.x)


def test_write_world_makes_a_store_the_labels_task_reads(tmp_path):
    from actstore.store.taskrows import task_rows
    from actstore.store.zarrstore import ActivationStore
    from actstore.tasks.registry import get_task
    from actstore.world.build import TEMPLATE

    store_path = write_world(tmp_path, TINY, log=lambda line: None)
    info, features = load_world(tmp_path)
    assert info["spec"] == asdict(TINY) and features.shape == (TINY.n_features, TINY.d_model)
    task = get_task(f"labels:{tmp_path / 'world.csv'}", TEMPLATE)
    assert task.classes == tuple(class_names(TINY)) and task.name == info["task"]
    rows = world_rows(make_world(TINY))
    with ActivationStore.open(store_path) as store:
        held = task_rows(store, task)
        assert np.array_equal(held.labels, rows.parent) and np.array_equal(held.split, rows.split)
        assert torch.equal(store.read(held.group, 0), rows.x)
        assert np.array_equal(np.asarray(store.column(held.group, "child")), rows.child)
        texts = [str(t) for t in store.column(held.group, "text")]
        assert all(task.label(t) == p for t, p in zip(texts, rows.parent))  # the labels file agrees with the rows
    mtime = (tmp_path / "world.json").stat().st_mtime_ns
    write_world(tmp_path, TINY, log=lambda line: None)                            # the same world: kept
    assert (tmp_path / "world.json").stat().st_mtime_ns == mtime
    from actstore.errors import InputError

    with pytest.raises(InputError, match="holds another world .*seed.*differ"):
        write_world(tmp_path, replace(TINY, seed=3), log=lambda line: None)
    # a folder holding another store: refused, the store left as it was
    other = tmp_path / "other"
    (other / "store.zarr").mkdir(parents=True)
    (other / "store.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not this world's store"):
        write_world(other, TINY, log=lambda line: None)
    assert (other / "store.zarr" / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------- sae-lens training, scoring, comparison


def test_every_architecture_trains_saves_loads_and_resumes(tmp_path):
    from actstore.saes.loading import load_sae_lens_dir
    from actstore.world.train import ARCHS, Recipe, train_set

    todo = [Recipe(arch, ARCHS[arch][1][1]) for arch in ARCHS]
    lines: list[str] = []
    records = train_set(tmp_path, TINY, todo, workers=1, progress=False, log=lines.append)
    assert sorted(records) == sorted(r.name for r in todo)
    assert sorted(lines) == sorted(f"trained {r.name} in {records[r.name]['train_seconds']:.0f} s" for r in todo)
    lines.clear()
    kinds = {}
    for recipe in todo:
        sae = load_sae_lens_dir(tmp_path / recipe.name)
        assert (sae.d_model, sae.width, sae.layer) == (TINY.d_model, TINY.width, 0)
        kinds[recipe.arch] = sae.architecture
        assert records[recipe.name]["training_architecture"] == {"relu": "standard", "matryoshka": "matryoshka_batchtopk"}.get(
            recipe.arch, recipe.arch)
    # BatchTopK and Matryoshka are saved by sae-lens for inference as JumpReLU
    assert kinds == {"relu": "relu", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu",
                     "matryoshka": "jumprelu"}
    # a rerun trains nothing; a half-written folder (killed before its rename) is not an SAE, and is redone
    (tmp_path / "topk_k2").rename(tmp_path / ".topk_k2.partial")
    again = train_set(tmp_path, TINY, todo, workers=1, progress=False, log=lines.append)
    assert lines[0] == "4 of 5 SAEs already trained in " + str(tmp_path) and sorted(again) == sorted(records)
    assert lines[1:] == [f"trained topk_k2 in {again['topk_k2']['train_seconds']:.0f} s"]
    assert not (tmp_path / ".topk_k2.partial").exists() and (tmp_path / "topk_k2" / "cfg.json").exists()


def test_spearman_and_agreement_match_scipy():
    from scipy.stats import spearmanr

    gen = np.random.default_rng(0)
    for n in (3, 7, 15):
        a, b = gen.random(n), gen.random(n)
        b[: n // 2] = b[0]  # ties
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    rows = [{"mean_absorption_fraction": m, "gt_absorption_fraction": t, "mean_full_absorption": t,
             "gt_full_absorption": t} for m, t in ((0.1, 0.2), (0.3, 0.2), (0.5, 0.6))]
    stats = agreement(rows)
    assert stats["mean_absorption_fraction_mae"] == pytest.approx((0.1 + 0.1 + 0.1) / 3)
    assert stats["mean_full_absorption_mae"] == 0 and stats["mean_full_absorption_spearman"] == pytest.approx(1.0)
    assert "mean_full_absorption_spearman_ci" not in stats  # under 5 SAEs: no interval
    # resampled SAEs: a measurement equal to the truth stays at 1 in every resample; a reversed one at -1
    six = [{"mean_absorption_fraction": -t, "gt_absorption_fraction": t, "mean_full_absorption": t,
            "gt_full_absorption": t} for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
    stats = agreement(six)
    assert stats["mean_full_absorption_spearman_ci"] == pytest.approx([1.0, 1.0])
    assert stats["mean_absorption_fraction_spearman_ci"] == pytest.approx([-1.0, -1.0])


def test_synth_world_end_to_end_on_a_tiny_world(tmp_path, monkeypatch, ray_session):
    """The command's steps on a tiny world, two SAEs: ground truth beside each, scored by actstore with nulls and
    intervals, and the comparison written (the full set is benchmarks/groundtruth.py's)."""
    import actstore.world.run as run
    from actstore.world.train import Recipe

    monkeypatch.setattr(run.WorldSpec, "sized", classmethod(lambda cls, *args: TINY))
    monkeypatch.setattr(run, "recipes", lambda archs: [Recipe("topk", 1), Recipe("jumprelu", 0.5)])
    cfg = run.SynthWorldConfig(out=str(tmp_path / "world"), workers=1, bootstrap=50)
    lines: list[str] = []
    table = run.synth_world(cfg, progress=False, log=lines.append)
    assert [r["sae"] for r in table["saes"]] == ["jumprelu_l0c_0p5", "topk_k1"]
    for row in table["saes"]:
        truth = json.loads((tmp_path / "world" / "saes" / row["sae"] / "truth.json").read_text())
        evaluated = row["classes_evaluated"]
        assert row["gt_classes"] == evaluated and len(truth["classes"]) == TINY.parents
        assert row["mean_absorption_fraction_ci_low"] <= row["mean_absorption_fraction"] <= \
            row["mean_absorption_fraction_ci_high"]
        assert "chance_random_decoder_mean_absorption_fraction" in row
        split = row["carriers_counted_as_splits"]
        assert split is None or 0 <= split <= 1
    assert table["overall"]["saes"] == 2 and table["overall"]["mean_full_absorption_spearman"] is None
    assert 0.5 < table["probe_parent_cos"]["min"] <= table["probe_parent_cos"]["mean"] <= 1
    for name in ("groundtruth.json", "groundtruth.csv", "groundtruth.png"):
        assert (tmp_path / "world" / name).stat().st_size > 0
    assert json.loads((tmp_path / "world" / "groundtruth.json").read_text())["saes"] == table["saes"]
    import pandas as pd

    saes = pd.read_parquet(tmp_path / "world" / "results" / "saes.parquet").set_index("sae_id")
    assert saes["architecture"].to_dict() == {"topk_k1": "topk", "jumprelu_l0c_0p5": "jumprelu"}  # as sae-lens names it


@pytest.mark.parametrize("args, message", [
    (["--size", "0"], "--size"),
    (["--children", "1"], "--children"),
    (["--archs", "gated"], "gated"),
    (["--device", "tpu"], "--device"),
])
def test_synth_world_refuses_bad_arguments_in_one_line(tmp_path, capsys, args, message):
    from actstore.cli.main import main

    assert main(["synth-world", "--out", str(tmp_path / "w"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not (tmp_path / "w").exists()


def test_child_latents_are_told_by_their_firing():
    """A latent is a child's when it fires on MIN_FIRING rows or more, at least SELECTIVE of them with that child."""
    from actstore.world.truth import child_latents

    row_child = torch.tensor([5] * 9 + [6] * 5 + [-1] * 6)                    # 20 rows: child 5, child 6, none
    fires = torch.zeros(20, 4, dtype=torch.bool)
    fires[:9, 0] = True                                   # only with child 5: a child latent
    fires[:10, 1] = True                                  # 9 with child 5, 1 with child 6: 0.9, a child latent
    fires[:11, 2] = True                                  # 9 of 11 = 0.82: fires with either, not a child latent
    fires[14:16, 3] = True                                # 2 rows without a child: too few, and no child
    assert child_latents(fires, row_child, [5, 6]).tolist() == [True, True, False, False]
    fires[:2, 3] = True                                   # now 2 with child 5 and 2 without: 0.5
    assert not child_latents(fires, row_child, [5, 6])[3]
