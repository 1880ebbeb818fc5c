"""Who may work on a store or a results folder at once: one writer, or any number of readers.

    with hold("score", cfg):   # the locks the command needs, taken before any work, released after
        ...

- `extract` and `probe` write a store: an exclusive lock on it;
- `score` and `synth-saes` read a store (shared: any number at once, but not while it is written), and
  `score` writes its results folder (exclusive: two runs into one folder would score the same SAEs twice).

A lock is `fcntl.flock` on a lock file: the kernel drops it when its holder dies, however it dies, so a
lock is never stale; the file keeps the holder's command, pid and host, quoted to whoever is refused, and a
file left by a dead holder is simply taken over. A store's lock file sits beside it (`.NAME.lock`: inside,
`create` would find the store not empty); a results folder's inside it (`.lock`). flock does not work
across the machines of a network file system on every system: there, run one writer per store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from actstore.errors import InputError


class Busy(InputError):
    """Another process holds a lock this command needs; the message names it and says what to do."""


def store_lock_path(store: str | Path) -> Path:
    store = Path(store).absolute()
    return store.parent / f".{store.name}.lock"


@contextlib.contextmanager
def lock(path: Path, exclusive: bool, what: str, command: str):
    """Hold a flock on `path` (created if needed); raises Busy at once if it is held incompatibly. A path
    whose folder cannot be written (a read-only store) is not locked: nobody can write there anyway."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            raise Busy(f"{what} is in use by {holder}; wait for it to finish (or stop it), then run this "
                       f"command again") from None
        os.ftruncate(fd, 0)  # whatever it says is stale: its writer is gone, or we would not hold the lock
        if exclusive:
            os.pwrite(fd, json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        yield
        if exclusive:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"`actstore {info['command']}` (pid {info['pid']} on {info['host']}, since {info['since']})"
    except (ValueError, KeyError, OSError):
        return "other actstore processes reading it"


@contextlib.contextmanager
def hold(command: str, cfg):
    """The locks `command` needs (see the module docstring), for the duration of the block."""
    with contextlib.ExitStack() as stack:
        if command in ("extract", "probe"):
            store = cfg.out if command == "extract" else cfg.store
            stack.enter_context(lock(store_lock_path(store), True, f"store {store}", command))
        elif command in ("score", "synth-saes"):
            stack.enter_context(lock(store_lock_path(cfg.store), False, f"store {cfg.store}", command))
        if command == "score":
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            stack.enter_context(lock(Path(cfg.out) / ".lock", True, f"results folder {cfg.out}", command))
        yield
