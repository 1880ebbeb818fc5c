"""Reading and writing a store's rows: shard-aligned writes (each shard marked complete once its bytes are on
disk), appends, reads that check every shard they touch (complete, its own array's, its bytes the ones its
marker records), and blocks streamed with read-ahead on the store's I/O threads.

`_RowsMixin` is a part of `ActivationStore` (zarrstore.py): its methods use the store's layout (`path`, `spec`,
`mode`, `_pool`, `_array`, `_array_name`, `_meta`, `_rows`, `arrays`, `columns`, `shard_rows`, `shard_file`,
`_markers`, `_done`) and its checks (`_foreign_shard`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from actstore.errors import MissingKey
from actstore.store import manifest, shardio
from actstore.store.format import Block, CorruptShardError, IncompleteStoreError, StoreError, _ranges, prepare

if TYPE_CHECKING:  # for the annotation only: zarrstore imports this module
    from actstore.store.zarrstore import ActivationStore


class _RowsMixin:
    """`write`, `append`, `read`, `column` and `blocks` of `ActivationStore`."""

    # ------------------------------------------------------------------ writing

    def write(self, group: str, start: int, data: Mapping[str | int, Any]) -> None:
        """Write rows [start, start + n) of some arrays of a group, and mark their shards complete.

        `data` maps a layer index (or `layer_LL`) to activations `(n, d_model)` in the store's dtype (a
        torch tensor; numpy works for float16/float32), and a column name to `(n,)` values. The region
        must be shard-aligned: `start` a multiple of shard_rows, `start + n` one too or the group's end.
        Shards are written in parallel; each is marked complete only once its bytes are written.
        """
        self._require_writable()
        if not data:
            raise ValueError("nothing to write: data is empty")
        arrays = {self._array_name(group, key): value for key, value in data.items()}
        prepared = {name: prepare(self.spec, self._meta(group)["columns"], f"{group}/{name}", value) for name, value in arrays.items()}
        lengths = {name: len(v) for name, v in prepared.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all arrays of one write must have the same number of rows; got {lengths}")
        self._write_prepared(group, start, prepared)

    def _write_prepared(self, group: str, start: int, prepared: dict[str, np.ndarray]) -> None:
        rows, size = self._rows(group), self.spec.shard_rows
        stop = start + len(next(iter(prepared.values())))
        if start < 0 or stop > rows or stop == start:
            raise ValueError(f"rows [{start}, {stop}) are outside {group}'s {rows} rows (or empty)")
        if start % size or (stop % size and stop != rows):
            raise ValueError(
                f"writes must be shard-aligned: rows [{start}, {stop}) of {group} do not start and end on "
                f"multiples of shard_rows={size} (the end may also be the last row, {rows}). Buffer rows "
                f"until a shard is full: two writers of one shard lose data."
            )
        jobs = [self._pool.submit(self._write_shard, group, name, k, values[lo - start:hi - start])
                for name, values in prepared.items()
                for k in range(start // size, -(-stop // size))
                for lo, hi in [self.shard_rows(group, k)]]
        for job in jobs:
            job.result()

    def _write_shard(self, group: str, array: str, shard: int, values: np.ndarray) -> None:
        array_dir = self.path / group / array
        lo, hi = self.shard_rows(group, shard)
        path = self.shard_file(group, array, shard)
        manifest.remove_marker(array_dir, shard)
        # Zarr writes a file as `<name>.<uuid>.partial` and renames it; a writer killed mid-write leaves
        # that behind. And Zarr reads an existing edge shard back before updating it, which is never
        # needed here. So clear both first; this writer owns this shard, so nobody else is writing them.
        for stale in path.parent.glob(f"{path.name}.*.partial"):
            stale.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        chunk_shape = self._direct_io(group, array)
        if chunk_shape is None:
            self._array(group, array)[lo:hi] = values
            identity = {"crc32c": shardio.file_crc32c(str(path))} if path.exists() else None
        else:
            identity = shardio.write_shard(str(path), np.ascontiguousarray(values), chunk_shape[0],
                                           self.spec.shard_rows // chunk_shape[0])
        manifest.write_marker(array_dir, shard, (lo, hi), identity is not None,
                              {"array": f"{group}/{array}", **(identity or {})})

    def append(self, group: str, data: Mapping[str | int, Any]) -> None:
        """Grow a group by n rows, writing every one of its arrays (all layers and columns).

        One process (the coordinator) appends: growing an array rewrites its metadata. The last shard,
        if partial, is rewritten with the new rows after it; until that finishes it counts as incomplete.
        """
        self._require_writable()
        given = {self._array_name(group, key) for key in data}
        absent = [a for a in self.arrays(group) if a not in given]
        if absent:
            raise ValueError(f"append writes every array of {group}; missing {absent}")
        new_rows = {name: prepare(self.spec, self._meta(group)["columns"], f"{group}/{name}", value) for name, value in
                    ((self._array_name(group, key), value) for key, value in data.items())}
        lengths = {len(v) for v in new_rows.values()}
        if len(lengths) != 1:
            raise ValueError(f"all arrays of one append must have the same number of rows; got {sorted(lengths)}")
        old = self._rows(group)
        new = old + lengths.pop()
        head = old - old % self.spec.shard_rows  # first row of the partial last shard
        merged = {name: np.concatenate([self._read_raw(group, name, head, old), values])
                  for name, values in new_rows.items()}
        for name in self.arrays(group):
            arr = self._array(group, name)
            arr.resize((new, *arr.shape[1:]))
        self._root[group].attrs["rows"] = new
        self._meta(group)["rows"] = new
        self._write_prepared(group, head, merged)

    def _require_writable(self) -> None:
        if self.mode != "a":
            raise StoreError(f"{self.path} was opened for reading; open it with mode='a' to write")

    # ------------------------------------------------------------------ reading

    def read(self, group: str, layer: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Activations of rows [start, stop) of one layer: `(stop - start, d_model)` in the store's dtype."""
        return self._read_array(group, self._array_name(group, layer), start, stop)

    def column(self, group: str, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Values of rows [start, stop) of one metadata column."""
        if name.startswith("layer_") or name not in self.columns(group):
            raise MissingKey(f"{group} has no column {name!r}; it has {sorted(self.columns(group))}")
        return self._read_array(group, name, start, stop)

    def _read_array(self, group: str, array: str, start: int, stop: int | None):
        values = self._read_raw(group, array, start, stop)
        if not array.startswith("layer_"):
            return values
        if self.spec.dtype == "bfloat16":
            return torch.from_numpy(values.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(values)

    def _read_raw(self, group: str, array: str, start: int, stop: int | None) -> np.ndarray:
        """Rows [start, stop) of an array as Zarr stores them (bfloat16 as uint16 bits)."""
        rows = self._rows(group)
        stop = rows if stop is None else stop
        if not 0 <= start <= stop <= rows:
            raise IndexError(f"rows [{start}, {stop}) are outside {group}'s {rows} rows")
        size = self.spec.shard_rows
        shards = range(start // size, -(-stop // size))
        markers = self._markers(group, array)
        if not self._known_complete or self.mode == "a" or group in self._partial:
            todo = [k for k in shards if not self._done(markers, group, k)]
            if todo:
                how = self.group_attrs(group).get("resume_command") if group in self.groups else None
                raise IncompleteStoreError(f"{self.path}: {group}/{array} shards {_ranges(todo)} are not written yet"
                                           + (f"; finish them with `{how}`" if how else ""))
        name = f"{group}/{array}"
        for k in shards:  # one lookup per shard read: the array is part of a shard's identity
            if markers.get(k, {}).get("array", name) != name:
                raise self._foreign_shard(group, array, k, markers)
        arr = self._array(group, array)
        chunk_shape = self._direct_io(group, array)
        if chunk_shape is None:
            parts = [self._read_shard(group, array, k, max(lo, start), min(hi, stop), markers.get(k, {}))
                     for k in shards for lo, hi in [self.shard_rows(group, k)]]
            return arr[start:stop] if not parts else np.concatenate(parts) if len(parts) > 1 else parts[0]
        out = np.empty((stop - start, *arr.shape[1:]), dtype=arr.dtype)
        for k in shards:
            lo, hi = self.shard_rows(group, k)
            a, b = max(lo, start), min(hi, stop)
            try:
                shardio.read_rows(str(self.shard_file(group, array, k)), out[a - start:b - start], a - lo, b - lo,
                                  chunk_rows=chunk_shape[0], chunks_per_shard=size // chunk_shape[0],
                                  expected=markers.get(k, {}).get("chunks"))
            except FileNotFoundError:  # decides: fill or lost
                out[a - start:b - start] = self._read_shard(group, array, k, a, b, markers.get(k, {}))
            except (shardio.ShardFormatError, OSError) as err:  # not programming errors: those propagate
                raise CorruptShardError(f"{group}/{array}", k, (lo, hi),
                                        str(self.shard_file(group, array, k)), str(err)) from err
        return out

    def _read_shard(self, group: str, array: str, shard: int, start: int, stop: int, marker: dict) -> np.ndarray:
        """Rows [start, stop) (inside one shard) through Zarr, with its failures named by shard; the file is
        checked against the identity its marker records (these are small metadata shards, or compressed)."""
        lo, hi = self.shard_rows(group, shard)
        path = self.shard_file(group, array, shard)
        if not path.exists():  # Zarr would silently return the fill value
            if marker.get("file", True):
                raise CorruptShardError(f"{group}/{array}", shard, (lo, hi), str(path),
                                        "the file is missing although the shard was written")
        elif "crc32c" in marker and shardio.file_crc32c(str(path)) != marker["crc32c"]:
            raise CorruptShardError(f"{group}/{array}", shard, (lo, hi), str(path),
                                    "its bytes are not the ones its manifest marker records (another shard's "
                                    "file, or damaged)")
        try:
            return self._array(group, array)[start:stop]
        except Exception as err:  # crc mismatch is a ValueError; a torn file fails in other ways
            raise CorruptShardError(f"{group}/{array}", shard, (lo, hi), str(path), str(err)) from err

    def _direct_io(self, group: str, array: str) -> tuple[int, ...] | None:
        """The inner chunk shape if `shardio` can read and write this array's shards directly, else None."""
        key = f"{group}/{array}"
        if key not in self._direct:
            self._direct[key] = (shardio.direct_io_chunk_shape(self._array(group, array).metadata.to_dict())
                                 if array.startswith("layer_") else None)
        return self._direct[key]

    def blocks(self, group: str, layer: int, block_rows: int | None = None, prefetch: int = 2,
               start: int = 0, stop: int | None = None) -> Iterator[Block]:
        """Stream one layer in blocks of `block_rows` rows (default: one shard), `prefetch` read ahead in
        parallel: see `read_blocks`."""
        return read_blocks(self, group, layer, block_rows, prefetch, start, stop)


def read_blocks(store: ActivationStore, group: str, layer: int, block_rows: int | None = None, prefetch: int = 2,
                start: int = 0, stop: int | None = None) -> Iterator[Block]:
    """Stream one layer in blocks of `block_rows` rows (default: one shard), with up to `prefetch`
    blocks read ahead in parallel on the store's I/O threads, so a layer larger than memory is
    processed at disk speed while the consumer computes."""
    rows = store._rows(group)
    stop = rows if stop is None else stop
    block_rows = block_rows or store.spec.shard_rows
    if block_rows <= 0 or prefetch < 1:
        raise ValueError(f"block_rows and prefetch must be positive; got {block_rows}, {prefetch}")
    store._array_name(group, layer)
    bounds = iter([(lo, min(lo + block_rows, stop)) for lo in range(start, stop, block_rows)])
    ahead: deque[tuple[int, int, Future]] = deque()
    try:
        while True:
            while len(ahead) < prefetch and (bound := next(bounds, None)):
                ahead.append((*bound, store._pool.submit(store.read, group, layer, *bound)))
            if not ahead:
                return
            lo, hi, job = ahead.popleft()
            yield Block(lo, hi, job.result())
    finally:
        for *_, job in ahead:
            job.cancel()
