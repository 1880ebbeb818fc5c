"""The two background stages of a score worker: SAEs read ahead of the scorer, and part files written behind it.

    for item, loaded, seconds in read_ahead(items, load, size, ahead, budget): ...   loaded: the result or the error
    writer = PartWriter(); writer.put(fn, *args); writer.close()                         errors raised in the caller

`read_ahead` keeps a pool of reader threads loading the next items of the worker's whole list (across layers,
so the first SAE of the next layer is read while the last of this one is scored), at most `ahead` items and
`budget` bytes beyond what the scorer has taken; the read is the only stage that waits for the disk. The
`PartWriter` writes each finished SAE's part file on one thread, in order, so the scorer goes on at once; its
queue is bounded, its first error is raised in the scorer's thread, and closing it writes whatever is queued
(also on Ctrl-C in the process that scores; a worker killed from outside loses its queue, at most 16 parts,
which a rerun computes again: each part is written under a temporary name and renamed, never half).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

READERS = 2
"""reader threads: one reads a file while another checksums and copies the previous one to the device"""


def read_ahead(items: Iterable, load: Callable, size: Callable, ahead: int, budget: float,
               threads: int = READERS) -> Iterator[tuple]:
    """(item, load(item) or the exception it raised, seconds it took) for each item, in order, loaded on
    `threads` threads. Besides the item last yielded, at most `ahead` items (and `budget` bytes of size(item))
    are being loaded or wait loaded; one item is always let through, however large. Closing the generator
    cancels what has not started."""
    pending: deque = deque()  # (item, future, bytes), in order
    items = iter(items)
    state = {"held": 0, "next": next(items, pending)}  # `pending` marks the end: no item is it

    def timed(item):
        t = time.perf_counter()
        try:
            result = load(item)
        except Exception as err:  # noqa: BLE001 - one item's failure is that item's result
            result = err
        return result, time.perf_counter() - t

    def fill() -> None:
        while (item := state["next"]) is not pending and (
                not pending or (len(pending) < ahead and state["held"] + size(item) <= budget)):
            nbytes = size(item)
            pending.append((item, pool.submit(timed, item), nbytes))
            state["held"] += nbytes
            state["next"] = next(items, pending)

    pool = ThreadPoolExecutor(threads, thread_name_prefix="actstore-read")
    try:
        fill()
        while pending:
            item, future, nbytes = pending.popleft()
            result, seconds = future.result()
            state["held"] -= nbytes
            fill()  # the next reads start before the scorer takes this one
            yield item, result, seconds
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class PartWriter:
    """Calls `fn(*args)` for each `put`, in order, on one thread; at most `depth` calls wait. The first error a
    call raises is raised again by the next `put` or by `close` (the calls after it are skipped: the disk that
    failed once is not trusted with the rest)."""

    def __init__(self, depth: int = 16):
        self.queue: queue.Queue = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="actstore-write", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            call = self.queue.get()
            try:
                if call is None:
                    return
                if self.error is None:
                    call[0](*call[1])
            except BaseException as err:  # noqa: BLE001 - raised in the scorer's thread
                self.error = err
            finally:
                self.queue.task_done()

    def put(self, fn: Callable, *args) -> None:
        self._raise()
        self.queue.put((fn, args))

    def close(self, check: bool = True) -> None:
        """Write everything queued, stop the thread, and raise the first error (unless `check` is false: an
        exception is already on its way, Ctrl-C for one)."""
        self.queue.put(None)
        self.thread.join()
        if check:
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error
