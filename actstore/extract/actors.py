"""The Ray actors of an extraction: the Coordinator (holds the task's inputs, counts finished forward batches), the
ModelWorkers (run the model on row ranges) and the StoreWriter (owns the store, writes whole shards). Each is a
plain class; `actstore.cluster.launch` makes it an actor. Activations cross Ray as numpy (`to_numpy`,
`from_numpy`: bfloat16 as its bits).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from actstore.extract.inputs import DTYPE_NAMES, ExtractConfig, Inputs
from actstore.extract.model import ResidualReader, load_model, pad
from actstore.store.zarrstore import ActivationStore


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
