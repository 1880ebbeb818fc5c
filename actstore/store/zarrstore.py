"""The activation store: residual-stream activations and row metadata in sharded, checksummed Zarr v3.

One store holds one model (at one revision); each task with its own prompt has its own group of vocabulary
rows (actstore.tasks: `vocab` for first_letter, `vocab_<key>` for any other), beside the others:

    store.zarr/                       attrs: format_version, model, revision, tokenizer, d_model, layers,
                                             hook, prompt_template, dtype, shard_rows, chunk_rows, codec
      vocab/                          attrs: kind="rows", rows, columns
        layer_05    [rows, d_model]   bfloat16 as uint16 bits (attr logical_dtype), or float16 / float32
        token_id    [rows] int32      ... one 1-D array per metadata column
        <array>/_manifest/000003.json one marker per completed shard (see manifest.py)
      vocab_last_letter/              attrs: the same, and task (its identity), answers; a group added to an
                                      existing store also records its extraction (extract) and resume_command
      context/                        the same for natural-text tokens
      probes/layer_05/                first_letter's probe of layer 5: weight (classes, d_model), bias (classes,)
      probes/last_letter/layer_05/    any other task's: probes/<task key>/layer_LL

Activation arrays are sharded: `shard_rows` rows per file, cut into `chunk_rows`-row chunks that each
carry a crc32c; the shard index carries its own crc32c. Metadata arrays keep one chunk of `shard_rows`
per file, so a shard index means the same rows in every array of a group.

Writes are shard-aligned (a region starts on a shard boundary and ends on one or at the last row), so
any two writers that own different shards, in one process or several, never touch the same file.
Reading requires every shard to be marked complete; a half-written store tells how to resume.

    store = ActivationStore.create("s.zarr", StoreSpec(model="google/gemma-2-2b", d_model=2304,
                                                       layers=[0, 12]))
    store.add_group("vocab", rows=n)
    store.write("vocab", 0, {0: acts0, 12: acts12, "token_id": ids, ...})   # shard-aligned
    x = ActivationStore.open("s.zarr").read("vocab", 12)                    # (n, 2304) bfloat16

The store is one class, `ActivationStore`, whose parts live by concern: this module holds its layout (create,
open, groups, arrays, shards, manifest); rowio.py its reads and writes; integrity.py the checks of its metadata;
taskgroups.py which group holds a task's rows; saved_probes.py its probes; format.py the spec, errors and names
(re-exported here, so `from actstore.store.zarrstore import ActivationStore, StoreSpec, StoreError` keeps working).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from actstore import __version__
from actstore.errors import MissingKey
from actstore.store import manifest
from actstore.store.format import (
    CODECS, DTYPES, FORMAT_VERSION, STANDARD_COLUMNS, TASK_COLUMNS, TASK_GROUP_PREFIX, Block, CorruptShardError,
    IncompleteStoreError, StoreError, StoreSpec, _ranges, is_vocab_group, layer_name, prepare, probe_prefix,
    standard_columns)
from actstore.store.integrity import _IntegrityMixin, _metadata_problem, _open_root
from actstore.store.rowio import _RowsMixin, read_blocks
from actstore.store.saved_probes import _ProbesMixin, probe_digest
from actstore.store.taskgroups import _TaskGroupsMixin, extract_command

__all__ = [  # the store's public names, importable from here wherever they are defined
    "ActivationStore", "StoreSpec", "StoreError", "IncompleteStoreError", "CorruptShardError", "Block",
    "FORMAT_VERSION", "DTYPES", "CODECS", "STANDARD_COLUMNS", "TASK_COLUMNS", "TASK_GROUP_PREFIX",
    "standard_columns", "is_vocab_group", "layer_name", "probe_prefix", "prepare", "read_blocks", "probe_digest",
    "extract_command", "incomplete_message", "resume_command",
]


class ActivationStore(_IntegrityMixin, _RowsMixin, _TaskGroupsMixin, _ProbesMixin):
    """A store on the local (or a shared) file system. Use `create` or `open`, not the constructor."""

    def __init__(self, path: Path, root: zarr.Group, mode: str, io_threads: int):
        self.path, self._root, self.mode = path, root, mode
        try:
            self.spec = StoreSpec(**{k: v for k, v in root.attrs.items() if k in StoreSpec.__dataclass_fields__})
        except TypeError as err:  # a required attribute is gone
            raise StoreError(f"{path}: its metadata file {path / 'zarr.json'} lacks store attributes ({err}); restore "
                             f"it from a copy") from err
        self._pool = ThreadPoolExecutor(max(1, io_threads), thread_name_prefix="actstore-io")
        self._known_complete = False  # set by open() after checking; reads then skip the manifest
        self._partial: set[str] = set()  # groups added for a task and not finished: read only after checking
        self._direct: dict[str, tuple[int, ...] | None] = {}  # array -> chunk shape for shardio I/O
        self._groups: dict[str, dict] | None = None  # see _group_meta
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._marker_cache: dict[tuple[str, str], dict[int, dict]] = {}

    # ------------------------------------------------------------------ create / open

    @classmethod
    def create(cls, path: str | os.PathLike, spec: StoreSpec, overwrite: bool = False,
               io_threads: int = 2) -> ActivationStore:
        """Create an empty store. `io_threads` shards are written (and read ahead) in parallel."""
        spec.validate()
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise StoreError(f"{path} already exists; open it with mode='a' to resume, or pass overwrite=True")
            shutil.rmtree(path)  # markers and stray .partial files too, not only what Zarr knows about
        root = zarr.open_group(path, mode="w")
        root.attrs.update({"format_version": FORMAT_VERSION, "actstore_version": __version__, **asdict(spec)})
        return cls(path, root, "a", io_threads)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", io_threads: int = 2,
             require_complete: bool | None = None) -> ActivationStore:
        """Open a store: mode 'r' to read, 'a' to write (resume) as well.

        By default mode 'r' requires the store complete and raises IncompleteStoreError, saying how to
        resume, if it is not; `require_complete=False` opens it anyway (to inspect or verify it), and then
        every read checks that the shards it touches are complete.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' (read a complete store) or 'a' (resume writing); got {mode!r}")
        path = Path(path)
        store = cls(path, _open_root(path, mode), mode, io_threads)
        problem = store._attribute_problem()
        if problem:
            store.close()
            raise StoreError(problem)
        if require_complete if require_complete is not None else mode == "r":
            missing = store.missing()
            # A task's group added to a finished store and not finished yet (its extraction killed or running) does
            # not stop the other tasks' rows from being read: reading it says how to finish it.
            partial = {name.split("/")[0] for name in missing}
            added = {g for g in partial if store.group_attrs(g).get("resume_command")}
            if partial - added:
                raise IncompleteStoreError(incomplete_message(store, missing))
            store._known_complete, store._partial = True, added
        return store

    # ------------------------------------------------------------------ layout

    @property
    def layers(self) -> list[int]:
        return list(self.spec.layers)

    @property
    def groups(self) -> dict[str, int]:
        """Row group name -> number of rows."""
        return {name: meta["rows"] for name, meta in self._group_meta().items()}

    def group_attrs(self, group: str) -> dict[str, Any]:
        """A row group's attributes as written (kind, rows, columns; a task's group: task, answers, ...)."""
        return dict(self._meta(group)["attrs"])

    def _group_meta(self) -> dict[str, dict]:
        """Row group name -> {"rows", "columns"}, read from Zarr once: it changes only through this object
        (add_group, append; one coordinator grows a store), and re-reading it per call cost more than
        copying a shard."""
        if self._groups is None:
            # Each group read alone, found on disk: the probes are not a row group, and damage there is theirs
            # (verify and load_probe name it), not a reason the activations cannot be read.
            names = sorted(p.name for p in self.path.iterdir() if p.name != "probes" and (p / "zarr.json").is_file())
            groups = {}
            for name in names:
                meta = self.path / name / "zarr.json"
                try:
                    group = self._root[name]
                    if isinstance(group, zarr.Group) and group.attrs.get("kind") == "rows":
                        groups[name] = {"rows": int(group.attrs["rows"]), "columns": dict(group.attrs["columns"]),
                                        "attrs": dict(group.attrs)}
                except Exception as err:  # a damaged group zarr.json: name it
                    problem = _metadata_problem(self.path, [meta]) or (
                        f"its metadata file {meta} does not describe a row group ({type(err).__name__}: {err}); "
                        f"restore it from a copy, or make the store again")
                    raise StoreError(f"{self.path}: {problem}") from err
            self._groups = groups
        return self._groups

    def _rows(self, group: str) -> int:
        return self._meta(group)["rows"]

    def columns(self, group: str) -> dict[str, str]:
        return dict(self._meta(group)["columns"])

    def arrays(self, group: str) -> list[str]:
        """Every array of a row group: the layer arrays, then the metadata columns."""
        return [layer_name(l) for l in self.spec.layers] + list(self.columns(group))

    def add_group(self, name: str, rows: int, columns: Mapping[str, str] | None = None,
                  attrs: Mapping[str, Any] | None = None) -> None:
        """Create a row group of `rows` rows with one array per layer and per metadata column.

        `columns` maps column name to a numpy dtype name or "str"; the default is the standard set
        for `vocab`, `context` and a task's `vocab_<key>` (`standard_columns`). `attrs` (JSON) are recorded
        beside kind, rows and columns: a task's group records `task` (its identity) and `answers`.
        """
        self._require_writable()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name) or name == "probes":
            raise ValueError(f"group name must be a name such as 'vocab' or 'vocab_last_letter' (letters, digits, _ . -; "
                             f"not 'probes'); got {name!r}")
        if name in self._root:
            raise StoreError(f"{self.path} already has a group {name!r}")
        if columns is None:
            columns = standard_columns(name)
            if columns is None:
                raise ValueError(f"group {name!r} is not standard ({sorted(STANDARD_COLUMNS)} or "
                                 f"{TASK_GROUP_PREFIX}<task>); pass its columns")
        attrs = dict(attrs or {})
        reserved = sorted({"kind", "rows", "columns"} & set(attrs))
        if reserved:
            raise ValueError(f"attrs must not set {reserved}: add_group writes them")
        for col in columns:
            if col.startswith("layer_"):
                raise ValueError(f"column names must not start with 'layer_' (reserved for activations): {col!r}")
        if rows < 0:
            raise ValueError(f"rows must be >= 0; got {rows}")
        meta = {"kind": "rows", "rows": rows, "columns": dict(columns), **attrs}
        group = self._root.create_group(name, attributes=meta)
        self._group_meta()[name] = {"rows": rows, "columns": dict(columns), "attrs": meta}
        self._root.attrs["groups"] = sorted(self._group_meta())  # verify finds a group that was deleted
        _create_arrays(group, self.spec, rows, columns)

    def _meta(self, group: str) -> dict:
        groups = self._group_meta()
        if group not in groups:
            raise MissingKey(f"{self.path} has no row group {group!r}; it has {sorted(groups) or 'none'}")
        return groups[group]

    def _array(self, group: str, array: str) -> zarr.Array:
        """An array of a row group, checked once (when first opened) against what the store's attributes promise."""
        if (group, array) not in self._arrays:
            meta = self.path / group / array / "zarr.json"
            try:
                arr = self._root[group][array]
            except (ValueError, TypeError, KeyError) as err:  # zarr reads the array's zarr.json here
                problem = _metadata_problem(self.path, [meta]) if meta.exists() else None
                if problem is None and meta.exists():
                    problem = (f"its metadata file {meta} does not describe an array zarr can read "
                               f"({type(err).__name__}: {err}); restore it from a copy, or make the store again")
                raise StoreError(f"{self.path}: {problem or err}") from err
            if not isinstance(arr, zarr.Array):
                raise StoreError(f"{self.path}: its metadata file {meta} describes a group, not the array {group}/"
                                 f"{array}; restore it from a copy, or make the store again")
            problem = self._layout_problem(group, array, arr)
            if problem:
                raise StoreError(f"{self.path}: {problem}")
            self._arrays[group, array] = arr
        return self._arrays[group, array]

    def _layer_array(self, layer: int) -> str:
        """`layer_LL`, checked against the store's layers."""
        if layer not in self.spec.layers:
            raise MissingKey(f"{self.path} has layers {_ranges(self.spec.layers)}; layer {layer} was not extracted "
                             f"into it")
        return layer_name(int(layer))

    def _array_name(self, group: str, key: str | int) -> str:
        if isinstance(key, (int, np.integer)):
            return self._layer_array(key)
        if key not in self.arrays(group):
            raise MissingKey(f"{group} has no array {key!r}; it has {self.arrays(group)}")
        return key

    def num_shards(self, group: str) -> int:
        return -(-self._rows(group) // self.spec.shard_rows)

    def shard_rows(self, group: str, shard: int) -> tuple[int, int]:
        """Row range [start, stop) of a shard of a group."""
        rows, size = self._rows(group), self.spec.shard_rows
        return shard * size, min((shard + 1) * size, rows)

    def shard_file(self, group: str, array: str, shard: int) -> Path:
        arr = self._array(group, array)
        coords = (shard, 0) if arr.ndim == 2 else (shard,)
        return self.path / group / array / arr.metadata.encode_chunk_key(coords)

    # ------------------------------------------------------------------ manifest

    def missing(self, group: str | None = None) -> dict[str, list[int]]:
        """`group/array` -> indices of shards not yet complete (only arrays that miss some)."""
        out = {}
        for g in [group] if group else sorted(self.groups):
            for array in self.arrays(g):
                markers = manifest.read_markers(self.path / g / array)
                todo = [k for k in range(self.num_shards(g)) if not self._done(markers, g, k)]
                if todo:
                    out[f"{g}/{array}"] = todo
        return out

    def _markers(self, group: str, array: str) -> dict[int, dict]:
        """An array's manifest markers; read once when the store was found complete and is read-only."""
        if not self._known_complete or self.mode == "a" or group in self._partial:
            return manifest.read_markers(self.path / group / array)
        if (group, array) not in self._marker_cache:
            self._marker_cache[group, array] = manifest.read_markers(self.path / group / array)
        return self._marker_cache[group, array]

    def _done(self, markers: dict[int, dict], group: str, shard: int) -> bool:
        """A shard is complete when its marker covers the rows the shard has now (an append moves them)."""
        return markers.get(shard, {}).get("rows") == list(self.shard_rows(group, shard))

    @property
    def complete(self) -> bool:
        return not self.missing()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, model={self.spec.model!r}, groups={self.groups})"


def _create_arrays(group: zarr.Group, spec: StoreSpec, rows: int, columns: Mapping[str, str]) -> None:
    """One sharded array per layer and one array per metadata column, in a new row group."""
    for layer in spec.layers:
        group.create_array(
            layer_name(layer), shape=(rows, spec.d_model), dtype=DTYPES[spec.dtype][1],
            chunks=(spec.chunk_rows, spec.d_model), shards=(spec.shard_rows, spec.d_model),
            compressors=CODECS[spec.codec](), fill_value=0,
            attributes={"logical_dtype": spec.dtype, "layer": layer},
        )
    for col, dtype in columns.items():
        group.create_array(
            col, shape=(rows,), dtype=str if dtype == "str" else np.dtype(dtype),
            chunks=(spec.shard_rows,), compressors=CODECS[spec.codec](),
        )



def incomplete_message(store: ActivationStore, missing: dict[str, list[int]]) -> str:
    total = sum(len(v) for v in missing.values())
    shown = ", ".join(f"{name} ({_ranges(shards)})" for name, shards in list(missing.items())[:4])
    more = f" and {len(missing) - 4} more arrays" if len(missing) > 4 else ""
    groups = sorted({name.split("/")[0] for name in missing})
    own = [store.group_attrs(g).get("resume_command") for g in groups if g in store.groups]
    if own and all(own):  # only groups added for a task, each with its own command
        how = "resume it with " + " and ".join(f"`{c}`" for c in dict.fromkeys(own))
    else:
        how = (f"resume it with `{resume_command(store)}`" if store.spec.resume_command
               else "rerun the command that wrote it with --resume (or open it with mode='a' and write the "
                    "missing shards)")
    return (f"{store.path} is incomplete: {total} shards were never finished, in {shown}{more}. "
            f"It was probably killed mid-write; {how}. Only the missing shards are rewritten.")



def resume_command(store: ActivationStore) -> str | None:
    """The recorded command that finishes the store, aimed at the store as opened now (a copied or moved store
    is resumed where it is, not where it was written)."""
    command = store.spec.resume_command
    try:
        args = shlex.split(command or "")
    except ValueError:  # not a shell command line: quote it as recorded
        return command
    if "--out" not in args[:-1]:
        return command
    args[args.index("--out") + 1] = str(store.path.resolve())
    return shlex.join(args)
