"""The checks of `actstore score`: the store and the task (its rows in the store, its causal metric), the output,
the SAE sources, the scorer's options, the device and the cluster, and what --bootstrap takes of the memory. Part of
cli/checks.py's one place for every argument check.
"""

from __future__ import annotations

import os
from pathlib import Path

from actstore.cli.check_cluster import device, dtype_on_device, physical_memory, ray_address, workers_placeable
from actstore.cli.check_paths import existing_store, outside_stores, release, sae_specs, writable_folder
from actstore.cli.check_values import BadArgument, fraction, integer, layer_spec, positive_number, task_spec, widths


def score(cfg) -> None:
    existing_store("STORE", cfg.store)
    task_spec("--task", cfg.task, cfg.template)
    writable_folder("--out", cfg.out)
    outside_stores("--out", cfg.out)
    sae_specs(cfg.saes)
    release("--release", cfg.release)
    layer_spec("--layers", cfg.layers)
    widths("--widths", cfg.widths)
    integer("--layer", cfg.layer, 0)
    dev = device("--device", cfg.device)
    dtype_on_device("--dtype", cfg.dtype, dev)
    if cfg.backend == "triton" and not dev.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        raise BadArgument(f"--backend triton: the fused kernel runs on CUDA, and --device is {dev}; use --backend "
                          f"torch (or auto) here")
    fraction("--min-probe-f1", cfg.min_probe_f1, closed=True)
    fraction("--max-dead-share", cfg.max_dead_share, closed=True)
    _metric_options(cfg)
    integer("--workers", cfg.workers, 0)
    integer("--group-size", cfg.group_size, 1)
    positive_number("--memory-gb", cfg.memory_gb)
    ray_address("--address", cfg.address)
    if not cfg.local:
        workers_placeable("--workers", cfg.workers, dev, cfg.address)
    if cfg.memory_gb is not None and not dev.startswith("cuda") and cfg.memory_gb * 2**30 > physical_memory():
        raise BadArgument(f"--memory-gb {cfg.memory_gb}: this machine has {physical_memory() / 2**30:.1f} GB of RAM; "
                          f"give less (the default is a third of it)")
    _score_against_store(cfg)


BOOTSTRAP_BYTES = (24, 112)
"""bytes per bootstrap replicate, per token of the largest class and per class (measured, issue 22:
score/intervals.py holds one class's token draws and their gathered values at a time, at most 2^22 of them, and
a dozen (replicates, classes) arrays; an upper bound, NOTES.md)"""


def _score_against_store(cfg) -> None:
    """--layers and --bootstrap against what the store holds and what the memory takes."""
    import numpy as np

    from actstore.store.format import _ranges
    from actstore.store.zarrstore import ActivationStore, extract_command

    with ActivationStore.open(cfg.store) as store:  # an incomplete store is refused here, saying how to resume
        wanted = layer_spec("--layers", cfg.layers)
        if wanted is not None and not set(wanted) & set(store.layers):
            raise BadArgument(f"--layers {cfg.layers}: the store {cfg.store} holds layers {_ranges(store.layers)} "
                              f"only; name some of those")
        the_task = task_spec("--task", cfg.task, cfg.template)
        group = the_task.group
        if group != "vocab" and group not in store.groups:
            raise BadArgument(f"--task {cfg.task}: the store {cfg.store} holds no rows of its prompt (group {group}); "
                              f"extract them with `{extract_command(store, the_task)}`")
        if cfg.bootstrap and the_task.relabels and "text" in store.columns(group):
            labels = np.array([-1 if (c := the_task.label(str(t))) is None else c for t in store.column(group, "text")])
        elif cfg.bootstrap and "label" in store.columns(group):
            labels = np.asarray(store.column(group, "label"))
        else:
            labels = None
        if labels is not None:
            counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(1, int)
            need = cfg.bootstrap * (BOOTSTRAP_BYTES[0] * int(counts.max()) + BOOTSTRAP_BYTES[1] * len(counts))
            have = physical_memory() / 4
            if need > have:
                raise BadArgument(f"--bootstrap {cfg.bootstrap}: the intervals would take about {need / 2**30:.1f} GB "
                                  f"on this store (its largest class has {int(counts.max())} tokens), more than a "
                                  f"quarter of this machine's {physical_memory() / 2**30:.0f} GB; use --bootstrap "
                                  f"{int(have // (need / cfg.bootstrap))} or fewer (the default is 1000)")


def _metric_options(cfg) -> None:
    """The scorer's numeric options (its choices are Literal fields, checked by `choices`)."""
    integer("--seeds", cfg.seeds, 1)
    integer("--min-classes", cfg.min_classes, 1, " (SAEBench's floor is 20 of 26 letters)")
    integer("--bootstrap", cfg.bootstrap, 0, " (0: no intervals)")
    _causal_options(cfg)


def _causal_options(cfg) -> None:
    """--causal-*: the sample size and seed; with --causal, the task must have a causal metric and the store must
    record a model that is here."""
    integer("--causal-samples", cfg.causal_samples, 1)
    integer("--causal-seed", cfg.causal_seed, 0)
    if cfg.causal:
        causal_task("--causal", cfg.task, cfg.template)
        causal_store("--causal", cfg.store)


def causal_task(name: str, spec: str, template: str | None) -> None:
    """The task has a causal metric: its prompt asks its own question (one that relabels another task's rows has
    none; actstore.score.causal.check_task says why)."""
    from actstore.score.causal import CausalError, check_task

    try:
        check_task(task_spec("--task", spec, template))
    except CausalError as err:
        raise BadArgument(f"{name}: {err}") from None


def causal_store(name: str, path: str) -> None:
    """The store records the model it was extracted from (`actstore extract` does), and a local model is still
    where the record says (a hub model is looked up when it loads)."""
    from actstore.score.causal import CausalError, check_weights, recorded_source
    from actstore.store.zarrstore import ActivationStore

    with ActivationStore.open(path) as store:
        try:
            source, extra = recorded_source(store)
            if source.kind in ("folder", "gguf"):
                where = Path(source.location) / (source.gguf_file or "")
                if not where.exists():
                    raise BadArgument(f"{name}: the store {path} was extracted from {where}, which is not there any "
                                      f"more; the causal metric runs that model (put it back, or extract the store "
                                      f"again)")
                check_weights(store, source, extra)
        except CausalError as err:
            raise BadArgument(f"{name}: {err}") from None
