"""Synthetic JumpReLU SAEs with planted class latents, splits and absorption, built against a store's
probes for a task, in Gemma Scope's `params.npz` layout, with the planted truth written beside them: this module
loads a layer's world from the store, writes the SAEs (saes/planting.py builds each), compares a scored SAE with
its truth, and turns absorbers into causal decoys for the spelling model.

    actstore synth-saes --store STORE --layer L --out DIR [--task NAME] [--absorption 0,0.1,0.3,0.5] [--splits 2,3]

    write_synthetic_saes(store, layer, out, SynthSAEConfig())  # DIR/layer_L/width_W/absorption_F/{params.npz,truth.json}
    compare_with_truth(truth, rows)                            # planted vs measured, per class and metric
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from actstore.errors import InputError
from actstore.saes.planting import LayerWorld, SynthSAEConfig, class_decoders, plant_sae, plant_split
from actstore.score.probes import MIN_PROBE_F1, load_probe
from actstore.tasks.registry import DEFAULT_TASK, get_task


def load_world(store_path: str, layer: int, task: str = DEFAULT_TASK) -> LayerWorld:
    """A layer's rows of a task, and its probe, in float64."""
    from actstore.store.layers import load_layer
    from actstore.store.zarrstore import ActivationStore

    task_ = get_task(task)
    with ActivationStore.open(store_path, require_complete=True) as store:
        try:
            probe = load_probe(store, layer, task_)
        except KeyError as err:
            raise InputError(f"{store_path} has no {task_.name} probe for layer {layer}: run `actstore probe "
                             f"{store_path} --layers {layer} --task {task_.name}` first") from err
        data = load_layer(store, layer, task_)
    x = data.x.double()  # (N, d)
    fires = (x @ probe.weight.double().T + probe.bias.double()) > 0
    return LayerWorld(x, data.labels, data.split == 1, fires, probe.directions().double(), probe.evaluated_classes(),
                      task_.classes)


def sae_folders(out: str | Path, layer: int, cfg: SynthSAEConfig) -> list[Path]:
    """Where write_synthetic_saes puts each SAE: OUT/layer_L/width_W/absorption_PP (Gemma Scope's nesting)."""
    width_name = f"{cfg.width // 1024}k" if cfg.width % 1024 == 0 else str(cfg.width)
    return [Path(out) / f"layer_{layer}" / f"width_{width_name}" / f"absorption_{round(rate * 100):02d}"
            for rate in cfg.absorption]


def write_synthetic_saes(store_path: str, layer: int, out: str | Path, cfg: SynthSAEConfig = SynthSAEConfig(),
                         log=None) -> list[Path]:
    """Write one SAE per absorption rate; returns their folders. Plants only what the store supports: a
    split no class can carry (too few test true positives) is left out and `log` (a callable) says so."""
    world = load_world(store_path, layer, cfg.task)
    if not world.evaluated:
        raise InputError(f"no {cfg.task} class of layer {layer} reaches probe test F1 {MIN_PROBE_F1}: nothing to plant against; "
                         f"extract more vocabulary rows (see `actstore probe`'s guidance) or choose another layer")
    n_classes = len(world.classes)
    order = [int(c) for c in torch.randperm(n_classes, generator=torch.Generator().manual_seed(cfg.seed))]
    test_tp = ((world.labels[:, None] == torch.arange(n_classes)) & world.probe_fires & world.test[:, None]).sum(dim=0)
    candidates = [c for c in order if c in world.evaluated and test_tp[c] >= cfg.min_truth_positives]
    split_classes: dict[int, int] = {}
    _, null = class_decoders(world.directions)
    for k in cfg.splits:  # the first classes (in a seeded order) that admit a clean split
        for c in candidates:
            if c not in split_classes and plant_split(world, c, k, null, 0.0, cfg) is not None:
                split_classes[c] = k
                break
        else:
            if log is not None:
                log(f"synth-saes: no split into {k} latents planted: no evaluated class of layer {layer} has {k} "
                    f"directions that each cover >= {cfg.min_split_positives} and >= {cfg.min_split_share:.0%} of its "
                    f"test true positives alone (more vocabulary rows give more)")
    folders = []
    for i, (rate, folder) in enumerate(zip(cfg.absorption, sae_folders(out, layer, cfg))):
        params, truth = plant_sae(world, rate, split_classes, cfg, seed=cfg.seed * 1000 + i)
        if i == 0 and truth["unsupported_classes"] and log is not None:
            log(f"synth-saes: the planted truth covers {len(truth['evaluated_classes'])} of the "
                f"{len(world.evaluated)} classes the probe passes; {', '.join(truth['unsupported_classes'])} have "
                f"fewer than {cfg.min_truth_positives} test true positives (more vocabulary rows give more)")
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "params.npz", **params)
        truth.update(layer=layer, store=str(store_path), config=asdict(cfg))
        (folder / "truth.json").write_text(json.dumps(truth, indent=1))
        folders.append(folder)
    return folders


TOLERANCE = {"absorption_fraction": 0.02, "full_absorption_rate": 0.02, "num_split_features": 0.0, "single_f1": 0.02}
"""How far a measured value may be from its planted value (absolute). The construction makes every planted
value exact, so the measured ones match to float32 rounding; 0.02 is the issue's stated aim."""

MEASURED = {"absorption_fraction": "mean_absorption_fraction", "full_absorption_rate": "full_absorption_rate",
            "num_split_features": "num_split_features", "single_f1": "single_f1"}


def truth_classes(truth: dict) -> tuple[list[str], dict[str, dict]]:
    """A truth.json's evaluated classes and per-class truth (older files say "letters")."""
    if "classes" in truth:
        return truth["evaluated_classes"], truth["classes"]
    return truth["evaluated_letters"], truth["letters"]


def compare_with_truth(truth: dict, rows: list[dict], tolerance: dict[str, float] = TOLERANCE) -> list[dict]:
    """Planted against measured, per evaluated class and metric, and for the means over classes.

    truth: a truth.json; rows: the scorer's per-class rows of that SAE. Returns rows {scope, metric, planted,
    measured, ok}; scope is a class or "mean". Single-latent F1 is planted for unsplit classes only.
    """
    measured = {row.get("class", row.get("letter")): row for row in rows}
    evaluated, per_class = truth_classes(truth)
    out = []
    for metric, tol in tolerance.items():
        planted_vals, measured_vals = [], []
        for name in evaluated:
            planted = per_class[name].get(metric)
            if planted is None:
                continue
            got = measured[name][MEASURED[metric]] if name in measured else float("nan")
            out.append({"scope": name, "metric": metric, "planted": planted, "measured": got,
                        "ok": abs(got - planted) <= tol + 1e-6})
            planted_vals.append(planted), measured_vals.append(got)
        if planted_vals:
            planted, got = float(np.mean(planted_vals)), float(np.mean(measured_vals))
            out.append({"scope": "mean", "metric": metric, "planted": planted, "measured": got,
                        "ok": abs(got - planted) <= tol + 1e-6})
    return out


def plant_decoys(folder: str | Path, out: str | Path, model_dir: str | Path, probe_directions: torch.Tensor,
                 letters: list[str]) -> Path:
    """A copy of a planted SAE (folder with params.npz and truth.json) whose absorbing latents of `letters` are
    causal decoys: each keeps its encoder and activation, but its decoder becomes w_c, the part of the probe
    direction p_c orthogonal to everything the spelling model's head reads (its letter subspace span(d) and its
    key direction z; planted.json of a `synth-model --spelling` model), scaled to the old row's norm.

    So the projection metric still sees an absorber (cos(w_c, p_c) = |p_c outside the read subspace|, and the
    activation is large), while ablating it leaves the model's output unchanged: the causal metric must reject
    it. truth.json records, per decoy letter, `decoy_latents`, `decoy_cos` and `causal_absorption_rate` 0 (the
    other letters keep their planted rate)."""
    planted = json.loads((Path(model_dir) / "planted.json").read_text())
    if "spelling" not in planted:
        raise InputError(f"{model_dir} is not a spelling model (synth-model --spelling): it has no head to read")
    read = torch.cat([torch.tensor(planted["letter_directions"]), torch.tensor([planted["spelling"]["z"]])]).double()
    basis = torch.linalg.qr(read.T)[0]  # (d, 27) orthonormal columns spanning what the head reads
    params = dict(np.load(Path(folder) / "params.npz"))
    truth = json.loads((Path(folder) / "truth.json").read_text())
    w_dec = torch.as_tensor(params["W_dec"]).double()
    _, per_class = truth_classes(truth)
    classes = get_task(truth.get("task", DEFAULT_TASK)).classes
    for letter in letters:
        entry = per_class[letter]
        p = probe_directions[classes.index(letter)].double()
        w = p - basis @ (basis.T @ p)
        cos = float(w.norm())  # cos(w / |w|, p) for a unit p
        latents = entry.get("absorbing_latents", [])
        for latent in latents:
            w_dec[latent] = w / w.norm() * w_dec[latent].norm()
        entry.update(decoy_latents=latents, decoy_cos=cos, causal_absorption_rate=0.0)
    for entry in per_class.values():
        entry.setdefault("causal_absorption_rate", entry.get("full_absorption_rate", 0.0))
    params["W_dec"] = w_dec.numpy().astype(np.float32)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "params.npz", **params)
    truth["decoy_classes"] = list(letters)
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return out
