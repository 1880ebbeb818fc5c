"""What an extraction computes from: its config (`ExtractConfig`, the options of `actstore extract`), the layers and
task it names, and the task's vocabulary prompts and the natural-text contexts as plain data (`Inputs`), built once
by the driver and fetched by every worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from actstore.options import layer_spec
from actstore.tasks.registry import relabel_message
from actstore.errors import InputError
from actstore.extract.contexts import build_contexts
from actstore.tasks.base import FIRST_LETTER, Task
from actstore.tasks.registry import get_task, task_names
from actstore.tasks.vocab import MAX_DROPPED, bos_id, build_vocab_task

DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class ExtractConfig:
    """Run a model once and store its residual-stream activations: the vocabulary task, and natural-text
    contexts when given. Resumable (--resume), on this machine or a Ray cluster (--address)."""

    out: str
    """Path of the store to write (a .zarr directory)."""
    model: str = "google/gemma-2-2b"
    """Hugging Face model id, a model folder, or a .gguf file."""
    gguf_file: str | None = None
    """GGUF file inside the --model folder (when the folder holds several)."""
    layers: str = "all"
    """Blocks to store: a list (0,5,12), a range (0-25) or all."""
    revision: str | None = None
    """Model revision (branch, tag or commit)."""
    contexts: str | None = None
    """Natural-text source: a .txt/.jsonl file, a folder of them, or hf:DATASET[:SPLIT]."""
    context_rows: int = 65536
    """Maximum context tokens (rows) to store."""
    context_length: int = 128
    """Tokens per context window (BOS included, when one is prepended)."""
    no_vocab: bool = False
    """Store natural-text contexts only, without the vocabulary task (needs --contexts)."""
    bos: str = "auto"
    """BOS policy for prompts and context windows: auto (prepend BOS when the tokenizer puts one first itself,
    as Gemma's does and TransformerLens and SAEBench run it), always (the tokenizer's bos_token in any case), or
    never. Specials a tokenizer appends (EOS, SEP) are never added."""
    max_dropped: float = MAX_DROPPED
    """Refuse (exit non-zero) when more than this share of vocabulary rows tokenizes unexpectedly and is dropped."""
    resume: bool = False
    """Continue a killed run: recompute only the shards the store is missing."""
    workers: int | None = None
    """ModelWorker actors (default: one per GPU, or one CPU worker without a GPU)."""
    address: str | None = None
    """Ray cluster to join (default: start Ray on this machine)."""
    batch_size: int = 32
    """Prompts (or context windows) per forward pass."""
    device: str | None = None
    """cuda or cpu (default: cuda when available)."""
    dtype: str | None = None
    """Activation dtype: bfloat16, float16 or float32 (default: bfloat16 on GPU, float32 on CPU)."""
    shard_rows: int | None = None
    """Rows per store shard (a multiple of context_length); the most an interrupt can lose (default: 16384 on
    GPU, 1024 on CPU)."""
    seed: int = 42
    """Seed of the vocabulary split and ICL examples."""
    max_vocab: int | None = None
    """Keep a seeded sample of this many vocabulary tokens (default: all)."""
    in_flight: int = 4
    """Work items (Ray tasks of up to 128 MiB of activations) outstanding per worker (backpressure)."""
    log_interval: float = 30.0
    """Seconds between progress lines when stderr is not a terminal."""
    task: str = field(default=FIRST_LETTER, metadata={"choices": task_names})
    """The task whose vocabulary prompts to extract: first_letter (SAEBench's), last_letter, or labels:FILE with --template. Into an existing store its rows are added as their own group beside the others (rerunning the command resumes it). A task that relabels another's rows (capitalized, labels:FILE without --template) needs no extraction."""
    template: str | None = None
    """The prompt template of a labels:FILE task, with {word} where the token goes ("{word} is a kind of:")."""
    worker_env: dict[str, str] = field(default_factory=dict)
    """Environment variables for the worker processes (fault injection in tests)."""


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """'all' | '0-25' | '0,5,12' -> sorted block indices, checked against the model's n_layers."""
    layers = layer_spec("--layers", spec)
    if layers is None:
        return list(range(n_layers))
    bad = sorted(l for l in layers if not 0 <= l < n_layers)
    if bad or not layers:
        raise InputError(f"the model has blocks 0-{n_layers - 1}; --layers {spec!r} asks for {bad or 'none'}")
    return sorted(layers)


def extract_task(cfg: ExtractConfig) -> Task:
    """The task `--task` (and `--template`) names, refused when it only relabels another's rows."""
    task = get_task(cfg.task, cfg.template)
    if task.relabels:
        raise InputError(relabel_message(task))
    return task



@dataclass
class Inputs:
    """Everything workers and the writer need, computed once by the driver."""

    vocab_group: str
    """the group of the vocabulary rows: `vocab` (first_letter) or `vocab_<key>`"""
    vocab_ids: list[list[int]]
    vocab_positions: np.ndarray
    vocab_columns: dict[str, np.ndarray]
    windows: list[list[int]]
    context_columns: dict[str, np.ndarray]
    context_length: int
    pad_id: int


def build_task(cfg: ExtractConfig, tokenizer) -> tuple[Inputs, dict]:
    """The task's vocabulary prompts and the contexts as plain data, and what the store records about them.
    Raises ValueError when more than cfg.max_dropped of the vocabulary rows were dropped."""
    task = extract_task(cfg)
    bos = bos_id(tokenizer, cfg.bos)
    extra = {"seed": cfg.seed, "max_vocab": cfg.max_vocab, "batch_size": cfg.batch_size,
             "contexts": contexts_source(cfg.contexts),
             "bos": {"policy": cfg.bos, "token_id": bos,
                     "token": None if bos is None else tokenizer.convert_ids_to_tokens(bos)}}
    ids, positions, columns = [], np.zeros(0, dtype=np.int64), {}
    if cfg.no_vocab:
        if not cfg.contexts:
            raise InputError("--no-vocab stores contexts only, and needs --contexts (a .txt/.jsonl file or folder)")
        extra.update(vocab_rows=0, vocab_dropped=0)
    else:
        vocab = build_vocab_task(tokenizer, task, seed=cfg.seed, max_tokens=cfg.max_vocab, bos=cfg.bos)
        message = vocab.drop_message(cfg.max_dropped)
        if message:
            raise InputError(message)
        ids, positions = vocab.input_ids, vocab.position
        columns = {"token_id": vocab.token_id, "label": vocab.label, "split": vocab.split, "position": vocab.position,
                   "text": vocab.text}
        extra.update(vocab_rows=len(vocab.token_id), vocab_dropped=vocab.dropped, vocab_alphabetic=vocab.alphabetic,
                     vocab_drops={reason: {"count": len(texts), "examples": texts[:5]}
                                  for reason, texts in vocab.drops.items() if texts})
    windows, context_columns = [], {}
    if cfg.contexts:
        ctx = build_contexts(tokenizer, cfg.contexts, cfg.context_length, cfg.context_rows, bos=bos)
        windows = ctx.windows
        context_columns = {"token_id": ctx.token_id, "doc": ctx.doc, "pos": ctx.pos, "label": ctx.label}
    extra.update(context_length=cfg.context_length if cfg.contexts else None,
                 context_rows=len(windows) * cfg.context_length)
    if task.name != FIRST_LETTER:  # stores of first_letter record no task, as before tasks (a resume compares extra)
        extra["task"] = task.name
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    return Inputs(task.group, ids, positions, columns, windows, context_columns, cfg.context_length, pad_id), extra


def contexts_source(contexts: str | None) -> str | None:
    """--contexts as recorded and compared: a path resolved (a resume from another folder, or with the path written
    otherwise, names the same files), a dataset name as given."""
    if contexts is None or contexts.startswith("hf:"):
        return contexts
    return str(Path(contexts).resolve())
