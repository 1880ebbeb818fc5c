"""The work loop of an extraction: the store's missing shards cut into work items (`work_items`), the actors started
and fed with backpressure while their progress is shown (`run_work`), and the progress display itself.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque

from actstore.cluster import get, kill, launch, ready, worker_pool
from actstore.errors import RunFailed
from actstore.extract.actors import Coordinator, ModelWorker, StoreWriter
from actstore.extract.inputs import ExtractConfig, Inputs
from actstore.store.zarrstore import ActivationStore


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


def run_work(cfg: ExtractConfig, source, store: ActivationStore, task: Inputs, layers: list[int],
             work: list[tuple[str, int, int]], batch_rows: dict[str, int], progress: bool) -> dict:
    """Start the actors, feed them `work` with backpressure, follow their progress; kill them on the way out."""
    import ray

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
