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

Why one long module: the driver, its three actors and the store checks of a resume share the run's plan
(`Inputs`, work items, batch boundaries); apart, each would need the others' invariants restated.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from actstore.cli.checks import layer_spec, relabel_message
from actstore.errors import InputError, RunFailed
from actstore.extract.contexts import build_contexts
from actstore.store.zarrstore import ActivationStore, StoreSpec, resume_command
from actstore.tasks.base import FIRST_LETTER, Task
from actstore.tasks.labels import PREFIX as LABELS_PREFIX
from actstore.tasks.registry import get_task, task_names
from actstore.tasks.vocab import MAX_DROPPED, bos_id, build_vocab_task

DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ITEM_BYTES = 128 * 2 ** 20  # activations per Ray task (see extract())
SHARD_ROWS = {"cuda": 16384, "cpu": 1024}  # default --shard-rows: the most work an interrupt can lose


class Interrupted(Exception):
    """Ctrl-C during an extraction; args[0] is the one line to print (finished shards, resume command)."""


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


# ---------------------------------------------------------------------------- the task, as plain data


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
             "contexts": _contexts_source(cfg.contexts),
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


class Coordinator:
    """Holds the task for the workers to fetch (a restarted worker fetches it again) and counts each finished
    forward batch as the workers report it: the driver polls it, so the bar moves per batch rather than per
    work item. Batches are keyed by (group, first row): a retried batch is counted once.

    Workers find it by name: Ray warns about a restartable actor whose constructor arguments hold object
    references, and both the task's ObjectRef and an actor handle do."""

    def __init__(self, task: Inputs):
        self._task = task
        self.done: dict[tuple[str, int], int] = {}
        self.first: tuple[int, int, float] | None = None

    def task(self) -> Inputs:
        return self._task

    def add(self, group: str, start: int, rows: int, tokens: int, seconds: float) -> None:
        self.done[group, start] = rows
        if self.first is None:
            self.first = (rows, tokens, seconds)

    def poll(self) -> tuple[int, tuple[int, int, float] | None]:
        """(rows done, (rows, tokens, seconds) of the first batch or None)."""
        return sum(self.done.values()), self.first


class ModelWorker:
    """Runs the model on row ranges of the task; returns layer -> activations as numpy (bf16 as bits)."""

    def __init__(self, cfg: ExtractConfig, source, coordinator: str, layers: list[int], threads: int):
        """coordinator: the name of the Coordinator actor that holds the task and counts finished batches."""
        import ray

        coordinator = ray.get_actor(coordinator)

        from actstore.extract.model import ResidualReader, load_model

        if cfg.device == "cpu":
            torch.set_num_threads(threads)
        self.task, self.dtype, self.progress = ray.get(coordinator.task.remote()), DTYPE_NAMES[cfg.dtype], coordinator
        model = load_model(source, device=cfg.device, dtype=self.dtype)
        self.reader = ResidualReader(model, layers)
        self.busy = 0.0
        _fault_hooks(self)

    def busy_seconds(self) -> float:
        return self.busy

    def run(self, group: str, start: int, stop: int, rows_per_batch: int) -> dict[int, np.ndarray]:
        """Rows [start, stop) of a group, as forward batches of rows_per_batch rows from `start`."""
        t0 = time.perf_counter()
        try:
            parts = []
            for a in range(start, stop, rows_per_batch):
                t = time.perf_counter()
                parts.append(self._run(group, a, min(a + rows_per_batch, stop)))
                b = min(a + rows_per_batch, stop)
                self.progress.add.remote(group, a, b - a, self._tokens(group, a, b), time.perf_counter() - t)
            return {layer: np.concatenate([p[layer] for p in parts]) for layer in parts[0]}
        finally:
            self.busy += time.perf_counter() - t0

    def _tokens(self, group: str, start: int, stop: int) -> int:
        return sum(map(len, self.task.vocab_ids[start:stop])) if group != "context" else stop - start

    def _run(self, group: str, start: int, stop: int) -> dict[int, np.ndarray]:
        from actstore.extract.model import pad

        if group != "context":  # the task's vocabulary group
            batch, offsets = pad(self.task.vocab_ids[start:stop], self.task.pad_id)
            rows = torch.arange(stop - start)
            cols = offsets + torch.as_tensor(self.task.vocab_positions[start:stop])
            acts = {l: x[rows.to(x.device), cols.to(x.device)] for l, x in self.reader(batch).items()}
        else:
            length = self.task.context_length
            batch, _ = pad(self.task.windows[start // length:stop // length], self.task.pad_id)
            acts = {l: x.reshape(-1, x.shape[-1]) for l, x in self.reader(batch).items()}
        return {l: to_numpy(x.to(self.dtype)) for l, x in acts.items()}


def _fault_hooks(worker: ModelWorker) -> None:
    """Test-only faults, asked for through the workers' environment (ExtractConfig.worker_env, or the driver's
    own); with neither variable set the worker is left as it is, and its forward batches run no extra check.

    ACTSTORE_FAULT_CRASH_ONCE=FLAGFILE:ROW     the process dies as a real crash would (no exception, no cleanup)
                                               at the forward batch that starts at ROW, if FLAGFILE does not exist
                                               yet (it is created first, so the restarted worker goes on)
    ACTSTORE_FAULT_PAUSE_AFTER=FLAGFILE:ROWS   once this worker has computed ROWS rows it creates FLAGFILE and
                                               waits there until it is killed: a test interrupts a run at a known
                                               point, with work certainly left, however fast the machine is
    """
    crash, pause = os.environ.get("ACTSTORE_FAULT_CRASH_ONCE"), os.environ.get("ACTSTORE_FAULT_PAUSE_AFTER")
    if not (crash or pause):
        return
    run, done = worker._run, [0]

    def faulty_run(group: str, start: int, stop: int) -> dict[int, np.ndarray]:
        if crash:
            flag, row = crash.rsplit(":", 1)
            if start == int(row) and not Path(flag).exists():
                Path(flag).touch()
                os._exit(1)
        if pause:
            flag, rows = pause.rsplit(":", 1)
            if done[0] >= int(rows):
                Path(flag).touch()
                while True:
                    time.sleep(1)
        done[0] += stop - start
        return run(group, start, stop)

    worker._run = faulty_run


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
    """Run (or resume) an extraction; returns a summary. Ray is started here unless already running.

    progress: a bar on stderr; else a plain line every cfg.log_interval seconds. Ctrl-C raises Interrupted.
    """
    import ray

    from actstore.extract.model import load_config_and_tokenizer, provenance, resolve_model

    t0 = time.perf_counter()
    task = extract_task(cfg)
    adding = _adds_group(cfg, task)  # a task's group added to an existing store: the store's settings are its own
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
        store = _add_group(cfg, source, layers, extra, inputs, task)
        groups = [inputs.vocab_group]
    else:
        store = _open_store(cfg, source, config, layers, extra, inputs)
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
            from actstore.cluster import init_ray

            init_ray(cfg.address)
        summary.update(_run_work(cfg, source, store, inputs, layers, work, batch_rows, progress))
    except KeyboardInterrupt:
        with ActivationStore.open(cfg.out, require_complete=False) as done:
            missing = {(name.split("/")[0], k) for g in groups for name, shards in done.missing(g).items()
                       for k in shards}
            total = sum(done.num_shards(group) for group in groups)
        if started_ray:
            ray.shutdown()
        raise Interrupted(f"extract: interrupted; {total - len(missing)} of {total} shards ({cfg.shard_rows} rows "
                          f"each) are complete and kept. "
                          f"Resume with: {_resume_command(cfg, source)}") from None
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _run_work(cfg: ExtractConfig, source, store: ActivationStore, task: Inputs, layers: list[int],
              work: list[tuple[str, int, int]], batch_rows: dict[str, int], progress: bool) -> dict:
    """Start the actors, feed them `work` with backpressure, follow their progress; kill them on the way out."""
    import ray

    from actstore.cluster import get, kill, launch, ready, worker_pool

    n_workers, _, threads, options = worker_pool(cfg.device, cfg.workers, cfg.worker_env)
    name = f"actstore-extract-{os.getpid()}-{time.time_ns()}"
    t0 = time.perf_counter()
    store.close()
    (counter,) = launch(Coordinator, 1, dict(num_cpus=0, name=name), task)
    (writer,) = launch(StoreWriter, 1, dict(num_cpus=0), cfg.out,
                       {task.vocab_group: task.vocab_columns, "context": task.context_columns})
    workers = launch(ModelWorker, n_workers, options, cfg, source, name, layers, threads)
    actors = [counter, writer, *workers]
    ready({"progress counter": [counter], "store writer": [writer], "model worker": workers})

    rows_total = sum(stop - start for _, start, stop in work)
    tokens_total = sum(sum(map(len, task.vocab_ids[a:b])) if g != "context" else b - a for g, a, b in work)
    shown = ProgressDisplay(rows_total, progress, cfg.log_interval)
    queue, pending = deque(work), {}
    i, out = 0, {}
    try:
        while queue or pending:
            while queue and len(pending) < cfg.in_flight * n_workers:
                group, start, stop = queue.popleft()
                acts = workers[i % n_workers].run.remote(group, start, stop, batch_rows[group])
                pending[writer.put.remote(group, start, acts)] = stop - start
                i += 1
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in done:
                get(ref, "model worker or the store writer")
                del pending[ref]
            rows, first = get(counter.poll.remote(), "progress counter")
            if first is not None and out.get("startup_seconds") is None:
                out["startup_seconds"] = time.perf_counter() - t0
                shown.estimate(_plan_line(cfg, task, layers, n_workers, first, tokens_total))
            shown.update(rows)
        out["worker_busy_seconds"] = sum(get([w.busy_seconds.remote() for w in workers], "model worker"))
        complete, out["writer_busy_seconds"] = get(writer.close.remote(), "store writer")
    finally:
        shown.close()
        kill(actors)
    if not complete:
        raise RunFailed("the writer ended with shards still buffered; rerun with --resume")
    return out


def _plan_line(cfg: ExtractConfig, task: Inputs, layers: list[int], n_workers: int, first: tuple[int, int, float],
               tokens_total: int) -> str:
    """One line: prompts (and windows) x layers, the first batch's time and the estimate it gives."""
    rows, tokens, seconds = first
    what = f"{len(task.vocab_ids):,} prompts" if task.vocab_ids else ""
    if task.windows:
        what += (" + " if what else "") + f"{len(task.windows):,} context windows"
    speed = tokens / max(seconds, 1e-9)
    return (f"extract: {what} x {len(layers)} layers on {cfg.device} ({n_workers} worker{'s' * (n_workers > 1)}); "
            f"first batch of {rows} rows took {seconds:.1f}s ({speed:,.0f} tokens/s): estimate "
            f"{_duration(tokens_total / speed / n_workers)} for {tokens_total:,} tokens")


class ProgressDisplay:
    """A tqdm bar on a terminal; otherwise a plain line (rows, rows/s, ETA) every `interval` seconds."""

    def __init__(self, total: int, bar: bool, interval: float):
        from tqdm.auto import tqdm

        self.total, self.interval, self.rows = total, interval, 0
        self.t0 = self.last = time.perf_counter()
        self.bar = tqdm(total=total, unit="row", desc="extract", file=sys.stderr, smoothing=0.1) if bar else None

    def estimate(self, line: str) -> None:
        (self.bar.write if self.bar else print)(line, file=sys.stderr)

    def update(self, rows: int) -> None:
        rows = min(rows, self.total)
        if self.bar is not None:
            self.bar.update(rows - self.rows)
        elif time.perf_counter() - self.last >= self.interval and rows < self.total:
            self.last = time.perf_counter()
            rate = rows / (self.last - self.t0)
            line = f"{rate:,.1f} rows/s, ETA {_duration((self.total - rows) / rate)}" if rows else \
                "waiting for the first batch (workers loading the model)"
            print(f"extract: {rows:,}/{self.total:,} rows ({rows / self.total:.1%}), {line}", file=sys.stderr, flush=True)
        self.rows = rows

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _open_store(cfg: ExtractConfig, source, config, layers: list[int], extra: dict, task: Inputs) -> ActivationStore:
    """A new store for this run, or (with --resume) the existing one, checked to be the same run: the same
    settings, model (the same GGUF bytes, folder or hub id and revision) and tokenizer."""
    model = str(Path(source.location) / source.gguf_file) if source.gguf_file else source.location
    spec = StoreSpec(model=model, revision=cfg.revision, d_model=config.hidden_size, layers=layers,
                     dtype=cfg.dtype, prompt_template=extract_task(cfg).template, shard_rows=cfg.shard_rows,
                     chunk_rows=min(1024, cfg.shard_rows), resume_command=_resume_command(cfg, source), extra=extra)
    path = Path(cfg.out)
    if (path / "zarr.json").exists():
        if not cfg.resume:
            raise InputError(f"{path} already exists: pass --resume to finish it, or choose another --out")
        store = ActivationStore.open(path, mode="a")
        theirs, ours = _comparable(asdict(store.spec)), _comparable(asdict(spec))
        if theirs["identity"]["weights"] is None:  # extracted before model folders were hashed: not compared
            ours["identity"]["weights"] = None
        if {**theirs["identity"], "weights": None} == {**ours["identity"], "weights": None} and _nothing_written(store):
            # the folder's files changed before any shard was written (a damaged model, repaired): nothing here came
            # from the recorded files, so the store records the files it is now written from
            store._root.attrs["extra"] = store.spec.extra = {**store.spec.extra, "provenance": spec.extra["provenance"]}
            theirs["identity"]["weights"] = ours["identity"]["weights"]
        if theirs["identity"] != ours["identity"]:
            store.close()
            raise InputError(f"{path} was written from another model or tokenizer: stored {theirs['identity']}, now "
                             f"{ours['identity']}. Resume with the original model (`{resume_command(store)}`), or "
                             f"choose another --out")
        if theirs != ours:
            diff = {k: (theirs[k], ours[k]) for k in ours if theirs.get(k) != ours[k]}
            store.close()
            raise InputError(f"{path} was written by a different run; (stored, now) differ in {diff}. "
                             f"Resume with the original arguments, or choose another --out")
        return store
    store = ActivationStore.create(path, spec)
    if task.vocab_ids:
        store.add_group(task.vocab_group, rows=len(task.vocab_ids), attrs=_task_attrs(extract_task(cfg)))
    if task.windows:
        store.add_group("context", rows=len(task.windows) * task.context_length)
    return store


def _task_attrs(task: Task) -> dict:
    """What a task's own group records of its task (nothing for first_letter's `vocab`, as before tasks)."""
    return {} if task.name == FIRST_LETTER else {"task": task.identity(), "answers": list(task.answers)}


def _adds_group(cfg: ExtractConfig, task: Task) -> bool:
    """Whether this run adds (or resumes) a task's group in an existing store, rather than making (or resuming)
    the store itself: the store exists and either lacks the task's group or holds it as an added group. Then the
    store's dtype, shard size and layers are this run's (given otherwise: refused), and it computes no contexts."""
    path = Path(cfg.out)
    if not (path / "zarr.json").exists():
        return False
    with ActivationStore.open(path, require_complete=False) as store:
        if not store.groups or (task.group in store.groups and not store.group_attrs(task.group).get("resume_command")):
            return False
        spec, layers = store.spec, store.layers
    adds = f"--task {task.name} adds its own rows to the existing store {path}"
    if cfg.contexts is not None or cfg.no_vocab:
        raise InputError(f"{adds} (its contexts, if any, serve every task): drop "
                         f"{'--contexts' if cfg.contexts is not None else '--no-vocab'}")
    for flag, given, held in (("--dtype", cfg.dtype, spec.dtype), ("--shard-rows", cfg.shard_rows, spec.shard_rows)):
        if given is not None and given != held:
            raise InputError(f"{adds}, whose {flag} is {held}; got {flag} {given}: leave it out (or give {held})")
    cfg.dtype, cfg.shard_rows = spec.dtype, spec.shard_rows
    if cfg.layers == "all":  # the store's layers: every group of a store holds the same layers
        cfg.layers = ",".join(map(str, layers))
    if layer_spec("--layers", cfg.layers) != layers:
        raise InputError(f"{adds}, which holds layers {','.join(map(str, layers))}; got --layers {cfg.layers}: every "
                         f"group of a store holds its layers (leave --layers out)")
    policy = (spec.extra.get("bos") or {}).get("policy")
    if policy is not None and policy != cfg.bos:
        raise InputError(f"{adds}, extracted with --bos {policy}; got --bos {cfg.bos}: the rows of one store share "
                         f"one BOS policy (pass --bos {policy})")
    return True


def _add_group(cfg: ExtractConfig, source, layers: list[int], extra: dict, inputs: Inputs,
               task: Task) -> ActivationStore:
    """The existing store with the task's group added (or, when it is there, checked to be this run's, to resume
    it). The group records its task, its run's settings and its own resume command; nothing else is written."""
    path = Path(cfg.out)
    store = ActivationStore.open(path, mode="a")
    theirs, ours = _comparable(asdict(store.spec))["identity"], _comparable({**asdict(store.spec), "extra": extra,
                                                                            "model": _model_name(source)})["identity"]
    if theirs["weights"] is None:  # extracted before model folders were hashed: not compared
        ours["weights"] = None
    if theirs != ours:
        store.close()
        raise InputError(f"{path} was extracted from another model or tokenizer: stored {theirs}, now {ours}. Add "
                         f"--task {task.name} with the store's model (`{resume_command(store)}` names it)")
    keys = ("seed", "max_vocab", "batch_size", "bos", "vocab_rows", "vocab_dropped", "vocab_alphabetic", "vocab_drops")
    attrs = {**_task_attrs(task), "extract": {k: extra.get(k) for k in keys},
             "resume_command": _resume_command(cfg, source)}
    group = inputs.vocab_group
    if group not in store.groups:
        store.add_group(group, rows=len(inputs.vocab_ids), attrs=attrs)
        return store
    held = store.group_attrs(group)
    diff = {k: (held.get(k), attrs[k]) for k in ("task", "answers", "extract") if held.get(k) != attrs.get(k)}
    if diff:
        store.close()
        raise InputError(f"{path}'s group {group} was extracted by another run of --task {task.name}; (stored, now) "
                         f"differ in {diff}. Finish it with the original arguments (`{held.get('resume_command')}`)")
    return store


def _model_name(source) -> str:
    """The model as the store records it: a GGUF file's path, else the folder or hub id."""
    return str(Path(source.location) / source.gguf_file) if source.gguf_file else source.location


def _nothing_written(store: ActivationStore) -> bool:
    """No shard of any array of the store is complete."""
    missing = sum(len(shards) for shards in store.missing().values())
    return missing == sum(store.num_shards(group) * len(store.arrays(group)) for group in store.groups)


def _contexts_source(contexts: str | None) -> str | None:
    """--contexts as recorded and compared: a path resolved (a resume from another folder, or with the path written
    otherwise, names the same files), a dataset name as given."""
    if contexts is None or contexts.startswith("hf:"):
        return contexts
    return str(Path(contexts).resolve())


def _comparable(spec: dict) -> dict:
    """A store spec as a resume compares it: without the resume command or the model as typed, and the
    model reduced to its identity (a GGUF file by its bytes, so it may move)."""
    spec = {**spec, "extra": dict(spec["extra"])}
    spec["extra"]["contexts"] = _contexts_source(spec["extra"].get("contexts"))  # stores recorded it as typed
    prov = spec["extra"].pop("provenance", None) or {}
    spec.pop("resume_command")
    model = spec.pop("model")
    spec["identity"] = {"model": prov.get("gguf_sha256") and f"GGUF sha256 {prov['gguf_sha256'][:16]}" or model,
                        "revision": prov.get("revision"), "tokenizer": prov.get("tokenizer"),
                        "weights": prov.get("folder_sha256")}
    return spec


def _resume_command(cfg: ExtractConfig, source) -> str:
    """The command that finishes this store, valid from any working folder (absolute paths)."""
    quote = shlex.quote
    args = [f"actstore extract {source.as_args()} --layers {quote(cfg.layers)} --out {quote(str(Path(cfg.out).resolve()))}"]
    if cfg.contexts is not None:
        args.append(f"--contexts {quote(_contexts_source(cfg.contexts))}")
    if cfg.max_vocab is not None:
        args.append(f"--max-vocab {cfg.max_vocab}")
    if cfg.contexts:
        args.append(f"--context-rows {cfg.context_rows} --context-length {cfg.context_length}")
    if cfg.no_vocab:
        args.append("--no-vocab")
    if cfg.task != FIRST_LETTER:
        name = cfg.task
        if name.startswith(LABELS_PREFIX):  # the label file as an absolute path: valid from any folder
            name = LABELS_PREFIX + str(Path(name[len(LABELS_PREFIX):]).expanduser().resolve())
        args.append(f"--task {quote(name)}" + (f" --template {quote(cfg.template)}" if cfg.template is not None else ""))
    args.append(f"--batch-size {cfg.batch_size} --shard-rows {cfg.shard_rows} --seed {cfg.seed} --dtype {cfg.dtype} "
                f"--bos {cfg.bos} --max-dropped {cfg.max_dropped}")
    return " ".join(args) + " --resume"
