"""Extraction: Ray actors run the model and stream vocabulary and context activations into a store.

    driver ── batches (row ranges) ──► ModelWorker actors (one per GPU; one CPU worker without a GPU)
       │                                     │ activations (ObjectRef, never through the driver)
       └── progress, backpressure ◄── StoreWriter actor ── shard-aligned writes ──► ActivationStore

The driver plans work as row ranges of the shards the store is missing (all of them for a new store):
items of whole forward batches inside a shard, each at most 128 MiB of activations, at most `in_flight`
per worker outstanding. The StoreWriter owns the store: it buffers rows until a shard is
whole, then writes it with its metadata columns and marks it complete. A worker that dies is restarted
and its batch retried (Ray's max_restarts / max_task_retries). A run killed at any point leaves only
complete shards marked; `--resume` recomputes exactly the missing shards, with the same batch boundaries,
so the finished store is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from actstore.store import ActivationStore, StoreSpec
from actstore.vocab import TEMPLATE

DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ITEM_BYTES = 128 * 2 ** 20  # activations per Ray task (see extract())


@dataclass
class ExtractConfig:
    """Run a model once and store its residual-stream activations: the vocabulary task, and natural-text
    contexts when given. Resumable (--resume), on this machine or a Ray cluster (--address)."""

    out: str
    """Path of the store to write (a .zarr directory)."""
    model: str = "google/gemma-2-2b"
    """Hugging Face model id or local directory."""
    layers: str = "all"
    """Blocks to store: a list (0,5,12), a range (0-25) or all."""
    revision: str | None = None
    """Model revision (branch, tag or commit)."""
    contexts: str | None = None
    """Natural-text source: a .txt/.jsonl file, a folder of them, or hf:DATASET[:SPLIT]."""
    context_rows: int = 65536
    """Maximum context tokens (rows) to store."""
    context_length: int = 128
    """Tokens per context window."""
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
    shard_rows: int = 16384
    """Rows per store shard (a multiple of context_length)."""
    seed: int = 42
    """Seed of the vocabulary split and ICL examples."""
    max_vocab: int | None = None
    """Keep a seeded sample of this many vocabulary tokens (default: all)."""
    in_flight: int = 4
    """Work items (Ray tasks of up to 128 MiB of activations) outstanding per worker (backpressure)."""
    worker_env: dict[str, str] = field(default_factory=dict)
    """Environment variables for the worker processes (fault injection in tests)."""


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """'all' | '0-25' | '0,5,12' -> sorted block indices, checked against the model's n_layers."""
    spec = spec.strip()
    if spec == "all":
        return list(range(n_layers))
    layers: set[int] = set()
    try:
        for part in spec.split(","):
            lo, sep, hi = part.partition("-")
            layers.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise ValueError(f"--layers must be a list (0,5,12), a range (0-25) or all; got {spec!r}") from None
    bad = sorted(l for l in layers if not 0 <= l < n_layers)
    if bad or not layers:
        raise ValueError(f"the model has blocks 0-{n_layers - 1}; --layers {spec!r} asks for {bad or 'none'}")
    return sorted(layers)


# ---------------------------------------------------------------------------- the task, as plain data


@dataclass
class Task:
    """Everything workers and the writer need, computed once by the driver."""

    vocab_ids: list[list[int]]
    vocab_positions: np.ndarray
    vocab_columns: dict[str, np.ndarray]
    windows: list[list[int]]
    context_columns: dict[str, np.ndarray]
    context_length: int
    pad_id: int


def build_task(cfg: ExtractConfig, tokenizer) -> tuple[Task, dict]:
    from actstore.contexts import build_contexts
    from actstore.vocab import build_vocab_task

    vocab = build_vocab_task(tokenizer, seed=cfg.seed, max_tokens=cfg.max_vocab)
    columns = {"token_id": vocab.token_id, "label": vocab.label, "split": vocab.split, "position": vocab.position,
               "text": vocab.text}
    windows, context_columns = [], {}
    if cfg.contexts:
        ctx = build_contexts(tokenizer, cfg.contexts, cfg.context_length, cfg.context_rows)
        windows = ctx.windows
        context_columns = {"token_id": ctx.token_id, "doc": ctx.doc, "pos": ctx.pos, "label": ctx.label}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    extra = {"vocab_rows": len(vocab.token_id), "vocab_dropped": vocab.dropped, "seed": cfg.seed,
             "max_vocab": cfg.max_vocab, "batch_size": cfg.batch_size, "contexts": cfg.contexts,
             "context_length": cfg.context_length if cfg.contexts else None, "context_rows": len(windows) *
             cfg.context_length}
    return Task(vocab.input_ids, vocab.position, columns, windows, context_columns, cfg.context_length, pad_id), extra


def work_items(store: ActivationStore, group: str, rows_per_batch: int, rows_per_item: int
               ) -> list[tuple[str, int, int]]:
    """(group, start, stop) work items covering the shards of `group` that any array is missing.

    An item is one Ray task: up to `rows_per_item` rows (whole batches) inside one shard; the worker runs
    it as forward batches of `rows_per_batch` rows. Items and batches start at each shard's first row,
    so a shard is always cut the same way, in a first run or a resumed one: the same inputs in the same
    shapes, hence the same bytes.
    """
    rows_per_item = max(rows_per_batch, rows_per_item // rows_per_batch * rows_per_batch)
    missing = sorted({k for shards in store.missing(group).values() for k in shards})
    out = []
    for k in missing:
        lo, hi = store.shard_rows(group, k)
        out += [(group, a, min(a + rows_per_item, hi)) for a in range(lo, hi, rows_per_item)]
    return out


# ---------------------------------------------------------------------------- actors


class ModelWorker:
    """Runs the model on row ranges of the task; returns layer -> activations as numpy (bf16 as bits)."""

    def __init__(self, cfg: ExtractConfig, task: Task, layers: list[int], threads: int):
        from actstore.model import ResidualReader, load_model

        if cfg.device == "cpu":
            torch.set_num_threads(threads)
        self.task, self.dtype = task, DTYPE_NAMES[cfg.dtype]
        model = load_model(cfg.model, cfg.revision, device=cfg.device, dtype=self.dtype)
        self.reader = ResidualReader(model, layers)
        self.crash = os.environ.get("ACTSTORE_FAULT_CRASH_ONCE")  # "FLAGFILE:ROW" (tests)
        self.busy = 0.0

    def busy_seconds(self) -> float:
        return self.busy

    def run(self, group: str, start: int, stop: int, rows_per_batch: int) -> dict[int, np.ndarray]:
        """Rows [start, stop) of a group, as forward batches of rows_per_batch rows from `start`."""
        t0 = time.perf_counter()
        try:
            self._maybe_crash(start)
            parts = [self._run(group, a, min(a + rows_per_batch, stop)) for a in range(start, stop, rows_per_batch)]
            return {layer: np.concatenate([p[layer] for p in parts]) for layer in parts[0]}
        finally:
            self.busy += time.perf_counter() - t0

    def _run(self, group: str, start: int, stop: int) -> dict[int, np.ndarray]:
        from actstore.model import pad

        if group == "vocab":
            batch, offsets = pad(self.task.vocab_ids[start:stop], self.task.pad_id)
            rows = torch.arange(stop - start)
            cols = offsets + torch.as_tensor(self.task.vocab_positions[start:stop])
            acts = {l: x[rows.to(x.device), cols.to(x.device)] for l, x in self.reader(batch).items()}
        else:
            length = self.task.context_length
            batch, _ = pad(self.task.windows[start // length:stop // length], self.task.pad_id)
            acts = {l: x.reshape(-1, x.shape[-1]) for l, x in self.reader(batch).items()}
        return {l: to_numpy(x.to(self.dtype)) for l, x in acts.items()}

    def _maybe_crash(self, start: int) -> None:
        if self.crash:
            flag, row = self.crash.rsplit(":", 1)
            if start == int(row) and not Path(flag).exists():
                Path(flag).touch()
                os._exit(1)  # the process dies as a real crash would: no exception, no cleanup


class StoreWriter:
    """Owns the store; buffers rows until a shard is whole, then writes it with its metadata columns."""

    def __init__(self, path: str, columns: dict[str, dict[str, np.ndarray]]):
        self.store = ActivationStore.open(path, mode="a")
        self.columns = columns
        self.pending: dict[tuple[str, int], dict] = {}  # (group, shard) -> {"filled", layer -> buffer}
        self.busy = 0.0

    def put(self, group: str, start: int, acts: dict[int, np.ndarray]) -> int:
        """Take rows [start, start + n) of every layer; returns n once buffered (or written)."""
        t0 = time.perf_counter()
        try:
            return self._put(group, start, acts)
        finally:
            self.busy += time.perf_counter() - t0

    def _put(self, group: str, start: int, acts: dict[int, np.ndarray]) -> int:
        size = self.store.spec.shard_rows
        shard = start // size
        lo, hi = self.store.shard_rows(group, shard)
        entry = self.pending.setdefault((group, shard), {"filled": 0, "layers": {}})
        n = 0
        for layer, x in acts.items():
            buf = entry["layers"].setdefault(layer, np.empty((hi - lo, x.shape[1]), dtype=x.dtype))
            buf[start - lo:start - lo + len(x)] = x
            n = len(x)
        entry["filled"] += n
        if entry["filled"] == hi - lo:
            data = {layer: from_numpy(buf, self.store.spec.dtype) for layer, buf in entry["layers"].items()}
            data.update({name: values[lo:hi] for name, values in self.columns[group].items()})
            self.store.write(group, lo, data)
            del self.pending[group, shard]
        return n

    def close(self) -> tuple[bool, float]:
        """(every shard written, seconds spent in put)."""
        self.store.close()
        return not self.pending, self.busy


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """Activations as host numpy for Ray to move: bfloat16 as its int16 bits (numpy has no bfloat16)."""
    x = x.detach().cpu().contiguous()
    return x.view(torch.int16).numpy() if x.dtype == torch.bfloat16 else x.numpy()


def from_numpy(x: np.ndarray, dtype: str) -> torch.Tensor:
    """The inverse of to_numpy, given the logical dtype."""
    return torch.from_numpy(x).view(torch.bfloat16) if dtype == "bfloat16" else torch.from_numpy(x)


# ---------------------------------------------------------------------------- the driver


def extract(cfg: ExtractConfig, progress: bool = True) -> dict:
    """Run (or resume) an extraction; returns a summary. Ray is started here unless already running."""
    import ray
    from tqdm.auto import tqdm

    from actstore.model import load_config_and_tokenizer

    t0 = time.perf_counter()
    cfg.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.dtype = cfg.dtype or ("bfloat16" if cfg.device.startswith("cuda") else "float32")
    if cfg.dtype not in DTYPE_NAMES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPE_NAMES)}; got {cfg.dtype!r}")
    config, tokenizer = load_config_and_tokenizer(cfg.model, cfg.revision)
    layers = parse_layers(cfg.layers, config.num_hidden_layers)
    if cfg.contexts and cfg.shard_rows % cfg.context_length:
        raise ValueError(f"--shard-rows ({cfg.shard_rows}) must be a multiple of --context-length "
                         f"({cfg.context_length}), so that no context window straddles two shards")
    task, extra = build_task(cfg, tokenizer)
    store = _open_store(cfg, config, layers, extra, task)

    # A Ray task carries up to ITEM_BYTES of activations: few enough round trips that the worker's compute
    # is not interrupted by them (benchmarks/NOTES.md), small enough for `in_flight` of them to be in memory.
    row_bytes = len(layers) * config.hidden_size * torch.finfo(DTYPE_NAMES[cfg.dtype]).bits // 8
    rows_per_item = max(1, ITEM_BYTES // row_bytes)
    batch_rows = {"vocab": cfg.batch_size, "context": cfg.batch_size * cfg.context_length}
    work = work_items(store, "vocab", batch_rows["vocab"], rows_per_item)
    if cfg.contexts:
        work += work_items(store, "context", batch_rows["context"], rows_per_item)
    rows_total = sum(stop - start for _, start, stop in work)
    summary = {"store": cfg.out, "layers": layers, "vocab_rows": extra["vocab_rows"],
               "context_rows": extra["context_rows"], "rows_computed": rows_total}
    if not work:
        store.close()
        summary["seconds"] = time.perf_counter() - t0
        return summary

    if not ray.is_initialized():
        ray.init(address=cfg.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0)) if cfg.device.startswith("cuda") else 0
    n_workers = cfg.workers or max(1, gpus)
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // n_workers)
    task_ref = ray.put(task)
    options = dict(max_restarts=1, max_task_retries=1, num_gpus=1 if gpus else 0, num_cpus=0 if gpus else threads,
                   runtime_env={"env_vars": cfg.worker_env} if cfg.worker_env else None)
    workers = [ray.remote(ModelWorker).options(**options).remote(cfg, task_ref, layers, threads)
               for _ in range(n_workers)]
    columns = {"vocab": task.vocab_columns, "context": task.context_columns}
    writer = ray.remote(StoreWriter).options(num_cpus=0).remote(cfg.out, columns)
    store.close()

    queue, pending = deque(work), {}
    bar = tqdm(total=rows_total, unit="row", desc="extract", disable=not progress, file=sys.stderr, smoothing=0.1)
    i, first = 0, None
    try:
        while queue or pending:
            while queue and len(pending) < cfg.in_flight * n_workers:
                group, start, stop = queue.popleft()
                acts = workers[i % n_workers].run.remote(group, start, stop, batch_rows[group])
                pending[writer.put.remote(group, start, acts)] = stop - start
                i += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                ray.get(ref)
                bar.update(pending.pop(ref))
                if first is None:  # startup: Ray, actors, model load and the first batch
                    first = time.perf_counter() - t0
        summary["worker_busy_seconds"] = sum(ray.get([w.busy_seconds.remote() for w in workers]))
        complete, summary["writer_busy_seconds"] = ray.get(writer.close.remote())
    finally:
        bar.close()
        for actor in workers + [writer]:
            ray.kill(actor)
    if not complete:
        raise RuntimeError("the writer ended with shards still buffered; rerun with --resume")
    summary["seconds"] = time.perf_counter() - t0
    summary["startup_seconds"] = first
    return summary


def _open_store(cfg: ExtractConfig, config, layers: list[int], extra: dict, task: Task) -> ActivationStore:
    """A new store for this run, or (with --resume) the existing one, checked to be the same run."""
    spec = StoreSpec(model=cfg.model, revision=cfg.revision, d_model=config.hidden_size, layers=layers,
                     dtype=cfg.dtype, prompt_template=TEMPLATE, shard_rows=cfg.shard_rows,
                     chunk_rows=min(1024, cfg.shard_rows), resume_command=_resume_command(cfg), extra=extra)
    path = Path(cfg.out)
    if (path / "zarr.json").exists():
        if not cfg.resume:
            raise ValueError(f"{path} already exists: pass --resume to finish it, or choose another --out")
        store = ActivationStore.open(path, mode="a")
        theirs = {k: v for k, v in asdict(store.spec).items() if k != "resume_command"}
        ours = {k: v for k, v in asdict(spec).items() if k != "resume_command"}
        if theirs != ours:
            diff = {k: (theirs[k], ours[k]) for k in ours if theirs[k] != ours[k]}
            raise ValueError(f"{path} was written by a different run; (stored, now) differ in {diff}. "
                             f"Resume with the original arguments, or choose another --out")
        return store
    store = ActivationStore.create(path, spec)
    store.add_group("vocab", rows=len(task.vocab_ids))
    if task.windows:
        store.add_group("context", rows=len(task.windows) * task.context_length)
    return store


def _resume_command(cfg: ExtractConfig) -> str:
    args = [f"actstore extract --model {cfg.model} --layers {cfg.layers} --out {cfg.out}"]
    for name in ("revision", "contexts", "max_vocab"):
        if getattr(cfg, name) is not None:
            args.append(f"--{name.replace('_', '-')} {getattr(cfg, name)}")
    if cfg.contexts:
        args.append(f"--context-rows {cfg.context_rows} --context-length {cfg.context_length}")
    args.append(f"--batch-size {cfg.batch_size} --shard-rows {cfg.shard_rows} --seed {cfg.seed} --dtype {cfg.dtype}")
    return " ".join(args) + " --resume"
