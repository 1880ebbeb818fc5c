"""SAEs trained on a world by sae-lens's own trainer (`sae_lens.synthetic.train_toy_sae`), several architectures at
several sparsities, each saved as sae-lens saves it for inference (BatchTopK and Matryoshka as JumpReLU).

    relu        StandardTrainingSAE, ReLU + L1 penalty       sparsity: l1_coefficient
    topk        TopKTrainingSAE                               sparsity: k per row
    batchtopk   BatchTopKTrainingSAE (saved as JumpReLU)      sparsity: k per row on average over a batch
    jumprelu    JumpReLUTrainingSAE                           sparsity: l0_coefficient
    matryoshka  MatryoshkaBatchTopKTrainingSAE (as JumpReLU)  sparsity: k; nested widths [width/6, width]

Each SAE trains in its own process on one thread (the models are small: threads cost more than they give), the
set on `workers` processes. Training batches are drawn from a pool sampled once from the world (sae-lens's
hierarchy sampling is the slow part on a CPU). A finished SAE is a folder `saes/<name>/` written whole by a rename,
so a killed run resumes with the SAEs it lacks.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch

from actstore.world.build import WorldSpec, make_world

HOOK = "blocks.0.hook_resid_post"
"""The hook the world's SAEs record: the store's only layer, 0."""
BATCH = 1024
LR = 3e-3


class Recipe(NamedTuple):
    """How one SAE of the set is trained."""

    arch: str
    """a key of ARCHS"""
    sparsity: float
    """the architecture's sparsity setting (k, l1_coefficient or l0_coefficient)"""

    @property
    def name(self) -> str:
        value = f"{self.sparsity:g}".replace(".", "p")
        return f"{self.arch}_{ARCHS[self.arch][0]}{value}"


ARCHS: dict[str, tuple[str, tuple[float, ...]]] = {
    "relu": ("l1_", (0.2, 0.5, 1.2)),
    "topk": ("k", (1, 2, 4)),
    "batchtopk": ("k", (1, 2, 4)),
    "jumprelu": ("l0c_", (0.1, 0.5, 2.0)),
    "matryoshka": ("k", (1, 2, 4)),
}
"""Architecture -> (name prefix of its sparsity, the default sparsities: three L0s around the world's own, from
below it to above it)."""


def recipes(archs: list[str] | None = None) -> list[Recipe]:
    """The default set: every architecture (or those named) at its three sparsities."""
    return [Recipe(a, s) for a in (archs or list(ARCHS)) for s in ARCHS[a][1]]


def training_sae(recipe: Recipe, spec: WorldSpec):
    """A fresh sae-lens TrainingSAE for the recipe (initialized from torch's global generator)."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                        MatryoshkaBatchTopKTrainingSAEConfig)
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    common = {"d_in": spec.d_model, "d_sae": spec.width}
    # TopK family: activations not rescaled by decoder norms, so the saved SAE encodes as it trained
    topk = {"rescale_acts_by_decoder_norm": False}
    s = recipe.sparsity
    sae = {
        "relu": lambda: StandardTrainingSAE(StandardTrainingSAEConfig(**common, l1_coefficient=s)),
        "topk": lambda: TopKTrainingSAE(TopKTrainingSAEConfig(**common, **topk, k=int(s))),
        "batchtopk": lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, **topk, k=s)),
        "jumprelu": lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common, l0_coefficient=s)),
        "matryoshka": lambda: MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            **common, **topk, k=s, matryoshka_widths=[spec.width // 6, spec.width])),
    }[recipe.arch]()
    sae.cfg.metadata.hook_name = HOOK
    return sae


class _Pool(torch.nn.Module):
    """Batches of feature activations drawn (with replacement, seeded) from a fixed sample of the world; sae-lens's
    trainer calls it as it calls an ActivationGenerator."""

    def __init__(self, activations: torch.Tensor, seed: int):
        super().__init__()
        self.activations = activations                                        # (pool, F)
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, batch_size: int) -> torch.Tensor:
        pick = torch.randint(len(self.activations), (batch_size,), generator=self.gen)
        return self.activations[pick.to(self.activations.device)]


def train_one(spec_dict: dict, recipe: tuple, out: str, device: str = "cpu") -> dict:
    """Train one SAE and save it (sae-lens's inference format) into out/<name>; returns its training record.
    Runs in a worker process, or in the caller's (its thread count and random state are restored)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            return _train(WorldSpec(**spec_dict), Recipe(*recipe), Path(out), device)
    finally:
        torch.set_num_threads(threads)


def _train(spec: WorldSpec, recipe: Recipe, out: Path, device: str) -> dict:
    from sae_lens.synthetic import train_toy_sae
    world = make_world(spec)
    pool = _Pool(world.sample(spec.pool, seed=spec.seed + 7).to(device), seed=_seed(recipe))
    torch.manual_seed(_seed(recipe))
    sae = training_sae(recipe, spec).to(device)
    start = time.perf_counter()
    train_toy_sae(sae, world.feature_dict.to(device), pool, training_samples=spec.train_samples, batch_size=BATCH,
                  lr=LR, device=device)
    sae = sae.to("cpu")
    seconds = time.perf_counter() - start
    final, partial = out / recipe.name, out / f".{recipe.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    sae.save_inference_model(partial)
    record = {"name": recipe.name, "arch": recipe.arch, "sparsity": recipe.sparsity,
              "training_architecture": sae.cfg.architecture(), "train_seconds": round(seconds, 2),
              "train_samples": spec.train_samples, "batch_size": BATCH, "lr": LR, "world": spec.digest(),
              "spec": asdict(spec)}
    (partial / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return record


def _seed(recipe: Recipe) -> int:
    return sum(ord(c) * 31 ** i for i, c in enumerate(recipe.name)) % (2 ** 31)


def trained(out: str | Path, spec: WorldSpec) -> dict[str, dict]:
    """The SAEs already trained in out (name -> training record) for this world."""
    found = {}
    for record_path in sorted(Path(out).glob("*/training.json")):
        record = json.loads(record_path.read_text())
        if record.get("world") == spec.digest() and record.get("name") == record_path.parent.name:  # not .partial
            found[record["name"]] = record
    return found


def train_set(out: str | Path, spec: WorldSpec, todo: list[Recipe], workers: int = 2, device: str = "cpu",
              progress: bool = True, log=print) -> dict[str, dict]:
    """Train the recipes out/ lacks (for this world), `workers` at a time; returns every record of the set.
    A recipe whose training fails is reported in one line; the others still train."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = trained(out, spec)
    missing = [r for r in todo if r.name not in done]
    if len(missing) < len(todo):
        log(f"{len(todo) - len(missing)} of {len(todo)} SAEs already trained in {out}")
    if not missing:
        return {r.name: done[r.name] for r in todo}
    bar = tqdm(total=len(missing), desc="training SAEs (sae-lens)", unit="sae", disable=not progress)
    for recipe, result in _run(missing, spec, out, workers, device):
        if isinstance(result, Exception):  # one SAE's failure is a line; the rest still train
            detail = str(result).splitlines()[0] if str(result) else ""
            log(f"SAE {recipe.name}: training failed ({type(result).__name__}: {detail})")
        else:
            done[recipe.name] = result
            if not progress:  # the bar is off: a line per SAE says the run is alive
                log(f"trained {recipe.name} in {result['train_seconds']:.0f} s")
        bar.update(1)
    bar.close()
    return {r.name: done[r.name] for r in todo if r.name in done}


def _run(todo: list[Recipe], spec: WorldSpec, out: Path, workers: int, device: str):
    """(recipe, its record or the exception it raised), as each finishes: in this process for one worker,
    else in `workers` spawned processes."""
    import concurrent.futures as cf
    import multiprocessing

    if workers <= 1:
        for recipe in todo:
            try:
                yield recipe, train_one(asdict(spec), tuple(recipe), str(out), device)
            except Exception as err:  # noqa: BLE001 - reported by the caller
                yield recipe, err
        return
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # workers inherit it: sae-lens's trainer draws a bar per SAE; ours is the set's
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    finished = False
    try:
        futures = {pool.submit(train_one, asdict(spec), tuple(r), str(out), device): r for r in todo}
        for future in cf.as_completed(futures):
            try:
                yield futures[future], future.result()
            except Exception as err:  # noqa: BLE001 - reported by the caller
                yield futures[future], err
        finished = True
    finally:
        if not finished:  # Ctrl-C, SIGTERM: no queued SAE starts, the running ones stop (their folders are partial)
            running = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
            pool.shutdown(wait=False, cancel_futures=True)
            for process in running:
                process.terminate()
        pool.shutdown(wait=True)
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before
