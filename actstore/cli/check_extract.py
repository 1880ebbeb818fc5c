"""The checks of `actstore extract`: the output, the model, the task (one with a prompt of its own), the contexts,
the counts, the device and the cluster. Part of cli/checks.py's one place for every argument check.
"""

from __future__ import annotations

import os
from pathlib import Path

from actstore.cli.check_cluster import device, dtype_on_device, ray_address, workers_placeable
from actstore.cli.check_paths import enclosing_store, writable_folder
from actstore.cli.check_values import BadArgument, choice, fraction, integer, layer_spec, positive_number, task_spec
from actstore.tasks.registry import relabel_message


def extract(cfg) -> None:
    writable_folder("--out", cfg.out)
    store = enclosing_store(Path(cfg.out).parent)
    if store is not None:
        raise BadArgument(f"--out {cfg.out}: lies inside the store {store}; a store cannot hold another, choose a "
                          f"path outside it")
    model = cfg.model
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or model.endswith(".gguf") or Path(model).exists():
        p = Path(os.path.expanduser(model))
        if not (p.is_dir() or (p.is_file() and p.suffix == ".gguf")):
            raise BadArgument(f"--model {model}: no such local model folder or .gguf file; expected a Hugging Face "
                              f"id (org/name), a folder with config.json, or a .gguf file")
        if cfg.gguf_file is not None and not (p / cfg.gguf_file).is_file():
            raise BadArgument(f"--gguf-file {cfg.gguf_file}: not a file in {model}; name a .gguf file inside the "
                              f"--model folder")
    choice("--bos", cfg.bos, {"auto", "always", "never"})
    task = extract_task(cfg)
    if cfg.no_vocab and task.name != "first_letter":
        raise BadArgument(f"--no-vocab stores contexts only, and --task {task.name} asks for that task's vocabulary "
                          f"rows: drop one of them")
    fraction("--max-dropped", cfg.max_dropped, closed=True)
    positive_number("--log-interval", cfg.log_interval)
    if cfg.no_vocab and cfg.contexts is None:
        raise BadArgument("--no-vocab stores contexts only, and no --contexts was given: nothing to store; pass "
                          "--contexts FILE (or drop --no-vocab)")
    layer_spec("--layers", cfg.layers)
    if cfg.contexts is not None and not cfg.contexts.startswith("hf:") and not Path(cfg.contexts).exists():
        raise BadArgument(f"--contexts {cfg.contexts}: no such file or folder; expected a .txt/.jsonl file, a "
                          f"folder of them, or hf:DATASET[:SPLIT]")
    for name, value, low in (("--context-rows", cfg.context_rows, 0), ("--context-length", cfg.context_length, 1),
                             ("--workers", cfg.workers, 1), ("--batch-size", cfg.batch_size, 1),
                             ("--shard-rows", cfg.shard_rows, 1), ("--seed", cfg.seed, 0),
                             ("--max-vocab", cfg.max_vocab, 1), ("--in-flight", cfg.in_flight, 1)):
        integer(name, value, low)
    dev = device("--device", cfg.device)
    dtype_on_device("--dtype", cfg.dtype, dev)
    ray_address("--address", cfg.address)
    workers_placeable("--workers", cfg.workers, dev, cfg.address)


def extract_task(cfg):
    """The task of `extract --task` (and --template): one the registry knows, with its own prompt (a task that
    relabels another's rows needs no extraction: the line says what to run instead)."""
    task = task_spec("--task", cfg.task, cfg.template)
    if task.relabels:
        raise BadArgument(relabel_message(task))
    return task
