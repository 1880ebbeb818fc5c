"""Extraction: Ray actors run the model and stream vocabulary and context activations into a store.

    driver ── batches (row ranges) ──► ModelWorker actors (one per GPU; one CPU worker without a GPU)
       │                                     │ activations (ObjectRef, never through the driver)
       └── progress, backpressure ◄── StoreWriter actor ── shard-aligned writes ──► ActivationStore

The driver plans work as row ranges of the shards the store is missing (all of them for a new store):
items of whole forward batches inside a shard, each at most 128 MiB of activations, at most `in_flight`
per worker outstanding. Workers report each finished forward batch to a small Coordinator actor, so the bar
(or, without a terminal, a log line every `log_interval` seconds) moves per batch, and the first batch's
time gives the run's estimate. Ctrl-C kills the actors, keeps every finished shard and raises Interrupted
with the resume command; an interrupt loses at most the shards being filled (on CPU shards are 1024 rows
by default, for that reason). The StoreWriter owns the store: it buffers rows until a shard is
whole, then writes it with its metadata columns and marks it complete. A worker that dies is restarted
and its batch retried (Ray's max_restarts / max_task_retries). A run killed at any point leaves only
complete shards marked; `--resume` recomputes exactly the missing shards, with the same batch boundaries,
so the finished store is byte-identical to an uninterrupted run.

Tasks (actstore.tasks): `--task NAME` extracts that task's vocabulary prompts (default first_letter, into
the group `vocab`; any other task with its own prompt into `vocab_<key>`). Into an existing store, a task's
group is added beside the others, with the store's model, layers, dtype, shard size and BOS policy; the
group records the settings of its own run and its own resume command, so rerunning the command resumes it,
and no other group (or probe) of the store is touched.

The modules, in the order a run goes through them: inputs.py (the config, the task's prompts and contexts as
plain data), target.py (the store written: new, resumed, or a task's group added), workloop.py (work items, the
loop that feeds the actors, progress), actors.py (Coordinator, ModelWorker, StoreWriter); this module is the
driver that ties them together.
"""

from __future__ import annotations

import time

import torch

from actstore.cluster import init_ray
from actstore.errors import InputError
from actstore.extract.inputs import DTYPE_NAMES, ExtractConfig, build_task, extract_task, parse_layers
from actstore.extract.model import load_config_and_tokenizer, provenance, resolve_model
from actstore.extract.target import add_group, adds_group, extract_resume_command, open_store
from actstore.extract.workloop import run_work, work_items
from actstore.store.zarrstore import ActivationStore

ITEM_BYTES = 128 * 2 ** 20  # activations per Ray task (see extract())
SHARD_ROWS = {"cuda": 16384, "cpu": 1024}  # default --shard-rows: the most work an interrupt can lose


class Interrupted(Exception):
    """Ctrl-C during an extraction; args[0] is the one line to print (finished shards, resume command)."""


def extract(cfg: ExtractConfig, progress: bool = True) -> dict:
    """Run (or resume) an extraction; returns a summary. Ray is started here unless already running.

    progress: a bar on stderr; else a plain line every cfg.log_interval seconds. Ctrl-C raises Interrupted.
    """
    import ray

    t0 = time.perf_counter()
    task = extract_task(cfg)
    adding = adds_group(cfg, task)  # a task's group added to an existing store: the store's settings are its own
    cfg.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.dtype = cfg.dtype or ("bfloat16" if cfg.device.startswith("cuda") else "float32")
    cfg.shard_rows = cfg.shard_rows or SHARD_ROWS["cpu" if cfg.device == "cpu" else "cuda"]
    if cfg.dtype not in DTYPE_NAMES:
        raise InputError(f"--dtype must be one of {sorted(DTYPE_NAMES)}; got {cfg.dtype!r}")
    if not 0 <= cfg.max_dropped <= 1:
        raise InputError(f"--max-dropped is a share of the vocabulary rows, 0 to 1; got {cfg.max_dropped}")
    source = resolve_model(cfg.model, cfg.gguf_file, cfg.revision)
    config, tokenizer = load_config_and_tokenizer(source)
    layers = parse_layers(cfg.layers, config.num_hidden_layers)
    if cfg.contexts and cfg.shard_rows % cfg.context_length:
        raise InputError(f"--shard-rows ({cfg.shard_rows}) must be a multiple of --context-length "
                         f"({cfg.context_length}), so that no context window straddles two shards")
    inputs, extra = build_task(cfg, tokenizer)
    extra["provenance"] = provenance(source, config, tokenizer)
    if adding:
        store = add_group(cfg, source, layers, extra, inputs, task)
        groups = [inputs.vocab_group]
    else:
        store = open_store(cfg, source, config, layers, extra, inputs)
        groups = [g for g in store.groups if not store.group_attrs(g).get("resume_command")]  # the store's own run

    # A Ray task carries up to ITEM_BYTES of activations: few enough round trips that the worker's compute
    # is not interrupted by them (benchmarks/NOTES.md), small enough for `in_flight` of them to be in memory.
    row_bytes = len(layers) * config.hidden_size * torch.finfo(DTYPE_NAMES[cfg.dtype]).bits // 8
    rows_per_item = max(1, ITEM_BYTES // row_bytes)
    batch_rows = {inputs.vocab_group: cfg.batch_size, "context": cfg.batch_size * cfg.context_length}
    work = [item for group in groups for item in work_items(store, group, batch_rows[group], rows_per_item)]
    rows_total = sum(stop - start for _, start, stop in work)
    summary = {"store": cfg.out, "task": task.name, "group": inputs.vocab_group, "layers": layers,
               "vocab_rows": extra["vocab_rows"], "context_rows": 0 if adding else extra["context_rows"],
               "rows_computed": rows_total, "vocab_dropped": extra["vocab_dropped"]}
    if not work:
        store.close()
        summary["seconds"] = time.perf_counter() - t0
        return summary

    started_ray = not ray.is_initialized()
    try:
        if started_ray:
            init_ray(cfg.address)
        summary.update(run_work(cfg, source, store, inputs, layers, work, batch_rows, progress))
    except KeyboardInterrupt:
        with ActivationStore.open(cfg.out, require_complete=False) as done:
            missing = {(name.split("/")[0], k) for g in groups for name, shards in done.missing(g).items()
                       for k in shards}
            total = sum(done.num_shards(group) for group in groups)
        if started_ray:
            ray.shutdown()
        raise Interrupted(f"extract: interrupted; {total - len(missing)} of {total} shards ({cfg.shard_rows} rows "
                          f"each) are complete and kept. "
                          f"Resume with: {extract_resume_command(cfg, source)}") from None
    summary["seconds"] = time.perf_counter() - t0
    return summary
