"""`actstore synth-world`: build a ground-truth world, train a set of SAEs on it with sae-lens, compute each one's
ground-truth absorption, score them all with actstore as any store is scored, and set the two side by side.

    OUT/world.json, features.npz, world.csv     the world (features, hierarchy, the task's labels)
    OUT/store.zarr                               its rows, as a task of its own (labels:OUT/world.csv)
    OUT/saes/<arch>_<sparsity>/                  each SAE as sae-lens saves it for inference, with
                                                 training.json and truth.json (ground truth per parent)
    OUT/results/                                 `actstore score`'s folder (tables, SAEBench JSON, nulls)
    OUT/groundtruth.json, .csv, .png             measured against ground truth: per SAE, per architecture

Every step keeps what an earlier run finished: a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from actstore.world.build import TEMPLATE, WorldSpec, load_world, task_spec, world_task, write_world
from actstore.world.train import ARCHS, recipes, train_set
from actstore.world.truth import GATE, MIN_FIRING, PARENT_MIN, SELECTIVE, VERSION, ground_truth


@dataclass
class SynthWorldConfig:
    """Build a ground-truth world with sae-lens's synthetic tools (parents with mutually exclusive children), train
    SAEs of five architectures at three sparsities each on it with sae-lens, and measure how well actstore's
    absorption tracks the ground truth."""

    out: str
    """folder for the world, its store, the trained SAEs, the results and the comparison"""
    size: int = 1
    """scale of the world: dimensions, background features, rows and training samples times SIZE (1 trains the
    set in minutes on 2 CPU cores; larger sizes are for a GPU machine)"""
    seed: int = 0
    """seed of the world (its features and rows)"""
    parents: int = 26
    """parent features: the task's classes"""
    children: int = 3
    """child features per parent (mutually exclusive, each firing only with its parent; with many, each child is a
    small share of its parent's rows, as one word is of its first letter's)"""
    archs: list[str] = field(default_factory=lambda: list(ARCHS), metadata={"choices": lambda: list(ARCHS)})
    """architectures to train, each at three sparsities"""
    workers: int = 2
    """SAEs trained at once (one process and one thread each)"""
    bootstrap: int = 1000
    """bootstrap replicates for the intervals of actstore's numbers (0: none)"""
    no_null: bool = False
    """skip the nulls (chance level and shuffled firing) that every SAE is otherwise scored with"""
    device: str = "auto"
    """where SAEs train and are scored: cpu, cuda, or auto (cuda when there is one)"""


def synth_world(cfg: SynthWorldConfig, progress: bool = True, log=print) -> dict:
    """Every step of the command; returns the comparison (groundtruth.json's contents)."""
    from actstore.world.compare import compare, write_comparison

    out = Path(cfg.out)
    spec = WorldSpec.sized(cfg.size, cfg.seed, cfg.parents, cfg.children)
    store_path = write_world(out, spec, log=log)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    records = train_set(out / "saes", spec, recipes(cfg.archs), workers=cfg.workers, device=device,
                        progress=progress, log=log)
    if not records:
        from actstore.errors import RunFailed

        raise RunFailed(f"no SAE of {out / 'saes'} trained; the lines above say why")
    write_truths(out, records, log=log)
    results = score_world(out, store_path, cfg, progress=progress, log=log)
    table = compare(out, results)
    write_comparison(out, table, log=log)
    return table


def write_truths(out: Path, records: dict[str, dict], log=print) -> None:
    """truth.json beside each trained SAE (kept when present and of this definitions' VERSION: the SAE and the
    world have not changed)."""
    from actstore.saes.loading import load_sae_lens_dir
    from actstore.store.zarrstore import ActivationStore

    info, features = load_world(out)
    todo = [name for name in records if _truth_version(out / "saes" / name / "truth.json") != VERSION]
    if not todo:
        return
    with ActivationStore.open(out / "store.zarr") as store:
        group = world_task(out).group
        split = np.asarray(store.column(group, "split"))
        test = np.flatnonzero(split == 1)
        x = store.read(group, 0)[torch.as_tensor(test)].float()                   # (n_test, d_model)
        parent = np.asarray(store.column(group, "label")).astype(np.int64)[test]
        child = np.asarray(store.column(group, "child")).astype(np.int64)[test]
    for name in todo:
        sae = load_sae_lens_dir(out / "saes" / name)
        with torch.no_grad():
            acts = sae.encode(x)                                                 # (n_test, width)
        per_class = ground_truth(acts, sae.w_dec, features, parent, child, info["children"], info["classes"])
        truth = {"sae": name, "version": VERSION, "gate": GATE, "parent_min": PARENT_MIN, "selective": SELECTIVE,
                 "min_firing": MIN_FIRING, "test_rows": len(test), "l0_test_rows": float((acts > 0).sum(1).float().mean()),
                 "classes": per_class}
        (out / "saes" / name / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    log(f"ground truth of {len(todo)} SAEs -> {out / 'saes'}/*/truth.json")


def _truth_version(path: Path) -> int | None:
    try:
        return json.loads(path.read_text()).get("version")
    except (OSError, ValueError):  # missing, or torn by a kill: computed again
        return None


def score_world(out: Path, store_path: Path, cfg: SynthWorldConfig, progress: bool = True, log=print) -> Path:
    """actstore's measurement of every trained SAE, as `actstore score` makes it (probes first)."""
    from actstore.api import score_saes

    results = out / "results"
    score_saes(store_path, [str(out / "saes")], task=task_spec(out), template=TEMPLATE, out=results,
               progress=progress, log=log, bootstrap=cfg.bootstrap, null=not cfg.no_null, seeds=1, device=cfg.device)
    log(f"scored task {world_task(out).name} -> {results}")
    return results
