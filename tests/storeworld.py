"""A deterministic store world for the store tests, runnable as a writer process.

Every shard's content is a pure function of (group, array, shard), so any process (a first writer, a
resuming one, one of two concurrent ones) writes the same bytes for the same shard. Activations are
random 16-bit patterns viewed as bfloat16: every NaN payload, infinity, signed zero and subnormal, so a
bit-exact round trip is really checked.

    python tests/storeworld.py STORE create|resume|write [--shards 0,2,4] [--start-flag FILE]
                                                          [--die-at WHERE:N]

prints `done <shard>` after each shard it finishes. `--die-at` makes the process SIGKILL itself at an
exact, worst moment: `file:N` halfway through writing the N-th file Zarr writes (a torn temp file; creating the store
writes 42 metadata files first),
`marker:N` after the N-th shard's bytes are written but before its marker, `marker-half:N` halfway
through writing the N-th marker.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from actstore.store.zarrstore import ActivationStore, StoreSpec

SPEC = dict(model="world/tiny", d_model=1024, layers=[0, 3, 7], shard_rows=1024, chunk_rows=256,
            prompt_template="{word} has the first letter:", resume_command="python tests/storeworld.py S resume")
ROWS = 1024 * 11 + 300  # 12 shards, the last one partial


def spec(**overrides) -> StoreSpec:
    return StoreSpec(**{**SPEC, **overrides})


def shard_values(group: str, array: str, lo: int, hi: int, d_model: int = SPEC["d_model"]):
    """The content of rows [lo, hi) of one array: a pure function of its name and rows."""
    seed = sum(map(ord, f"{group}/{array}")) * 1_000_003 + lo
    gen = torch.Generator().manual_seed(seed)
    n = hi - lo
    if array.startswith("layer_"):
        bits = torch.randint(-(2 ** 15), 2 ** 15, (n, d_model), dtype=torch.int32, generator=gen)
        return bits.to(torch.int16).view(torch.bfloat16)
    rng = np.random.default_rng(seed)
    return {
        "token_id": lambda: rng.integers(0, 256_000, n),
        "label": lambda: rng.integers(0, 26, n),
        "split": lambda: (rng.random(n) < 0.2).astype(np.int8),
        "position": lambda: np.full(n, -6),
        "text": lambda: np.array([f"w{lo + i}" for i in range(n)]),
    }[array]()


def write_shards(store: ActivationStore, group: str, shards: list[int], announce: bool = False,
                 only_missing: bool = False) -> None:
    """Write whole shards of a group, one shard per call: of every array, or of those missing it."""
    missing = store.missing(group) if only_missing else {}
    for k in shards:
        lo, hi = store.shard_rows(group, k)
        arrays = [a for a in store.arrays(group) if not only_missing or k in missing.get(f"{group}/{a}", ())]
        store.write(group, lo, {a: shard_values(group, a, lo, hi) for a in arrays})
        if announce:
            print(f"done {k}", flush=True)


def resume(path: Path, announce: bool = False) -> None:
    """What a resume does: open the store and write every shard that some array of `vocab` misses."""
    store = ActivationStore.open(path, mode="a")
    todo = sorted({k for shards in store.missing("vocab").values() for k in shards})
    write_shards(store, "vocab", todo, announce=announce, only_missing=True)
    store.close()


def build(path: Path, shards: list[int] | None = None, **overrides) -> ActivationStore:
    """A fresh store with a `vocab` group of ROWS rows; writes `shards` (default: all)."""
    store = ActivationStore.create(path, spec(**overrides))
    store.add_group("vocab", rows=ROWS)
    write_shards(store, "vocab", list(range(store.num_shards("vocab"))) if shards is None else shards)
    return store


def die_at(where: str, n: int) -> None:
    """Patch the write path so that the n-th write of kind `where` kills this process midway."""
    import zarr.storage._local as local

    from actstore.store import manifest

    from actstore.store import shardio

    calls, lock = [0], threading.Lock()

    def nth() -> bool:
        with lock:
            calls[0] += 1
            return calls[0] == n

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "file":
        real_put = local._put

        def put(path, value, exclusive=False):
            if nth():
                data = bytes(value.as_buffer_like())
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path.with_suffix(".0123abcd.partial"), "wb") as f:
                    f.write(data[: len(data) // 2])
                die()
            return real_put(path, value, exclusive)

        real_write_file = shardio._write_file

        def write_file(path, buffers):  # activation shards bypass Zarr's _put: die halfway there too
            if nth():
                data = b"".join(bytes(b) for b in buffers)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(f"{path}.0123abcd.partial", "wb") as f:
                    f.write(data[: len(data) // 2])
                die()
            return real_write_file(path, buffers)

        local._put = put
        shardio._write_file = write_file
    else:
        real_marker = manifest.write_marker

        def marker(array_dir, shard, rows, has_file, identity=None):
            if nth():
                if where == "marker-half":
                    path = manifest.marker_path(array_dir, shard)
                    path.write_text('{"rows": [%d, %d], "fi' % rows)
                die()
            return real_marker(array_dir, shard, rows, has_file, identity)

        manifest.write_marker = marker


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("action", choices=["create", "resume", "write"])
    parser.add_argument("--shards", default=None, help="comma-separated shard indices (write)")
    parser.add_argument("--start-flag", default=None, help="wait until this file exists, then write")
    parser.add_argument("--die-at", default=None, help="file:N, marker:N or marker-half:N")
    args = parser.parse_args()
    if args.die_at:
        where, n = args.die_at.split(":")
        die_at(where, int(n))
    if args.start_flag:
        while not Path(args.start_flag).exists():
            time.sleep(0.001)
    if args.action == "resume":
        resume(Path(args.store), announce=True)
        return 0
    if args.action == "create":
        store = ActivationStore.create(args.store, spec())
        store.add_group("vocab", rows=ROWS)
        print("created", flush=True)
        todo = list(range(store.num_shards("vocab")))
    else:
        store = ActivationStore.open(args.store, mode="a")
        todo = [int(k) for k in args.shards.split(",")]
    write_shards(store, "vocab", todo, announce=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
