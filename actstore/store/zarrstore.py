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

Why one long module: every check here (attributes against arrays, markers against shards, probes against their
task) guards the same ActivationStore object's reads and writes; the checks of a whole store (verify.py),
the manifest and the shard I/O live beside it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from actstore.store import manifest

from actstore.store import shardio
from actstore.errors import InputError, MissingKey
from actstore.tasks.base import FIRST_LETTER, Task, task_key
from actstore.tasks.builtin import BUILTIN, FIRST_LETTER_TASK

FORMAT_VERSION = 1

# logical dtype -> (torch dtype, numpy dtype Zarr stores). Zarr has no bfloat16 (zarr-python issues 2656,
# 711): its bits go in as uint16 and are viewed back, which is bit-exact.
DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "bfloat16": (torch.bfloat16, np.dtype(np.uint16)),
    "float16": (torch.float16, np.dtype(np.float16)),
    "float32": (torch.float32, np.dtype(np.float32)),
}

# Chunk codecs after the bytes serializer. crc32c is always last, so every chunk is checked on read.
CODECS = {
    "none": lambda: [Crc32cCodec()],
    "zstd": lambda: [ZstdCodec(level=1), Crc32cCodec()],
}

# The metadata columns of the two standard groups (DESIGN.md, "The store").
STANDARD_COLUMNS: dict[str, dict[str, str]] = {
    "vocab": {"token_id": "int32", "label": "int8", "split": "int8", "position": "int16", "text": "str"},
    "context": {"token_id": "int32", "doc": "int32", "pos": "int32", "label": "int8"},
}
TASK_COLUMNS = {**STANDARD_COLUMNS["vocab"], "label": "int16"}
"""The columns of a task's own vocabulary group (`vocab_<key>`): vocab's, with room for up to 4096 classes."""
TASK_GROUP_PREFIX = "vocab_"


def standard_columns(group: str) -> dict[str, str] | None:
    """The columns of a standard group (vocab, context, a task's vocab_<key>), or None for another name."""
    if group.startswith(TASK_GROUP_PREFIX):
        return dict(TASK_COLUMNS)
    return dict(STANDARD_COLUMNS[group]) if group in STANDARD_COLUMNS else None


def is_vocab_group(group: str) -> bool:
    """A group of a task's vocabulary prompts: `vocab` (first_letter's) or `vocab_<key>`."""
    return group == "vocab" or group.startswith(TASK_GROUP_PREFIX)


def probe_prefix(task: str | Task) -> str:
    """Where a task's probes live in a store: probes (first_letter) or probes/<key> (any other task)."""
    name = task.name if isinstance(task, Task) else task
    return "probes" if name == FIRST_LETTER else f"probes/{task_key(name)}"


def extract_command(store: ActivationStore, task: Task) -> str:
    """The command that adds a task's rows to a store (the store's model and layers, the task's prompt)."""
    import shlex

    args = ["actstore", "extract", "--model", store.spec.model, "--layers", ",".join(map(str, store.layers)),
            "--out", str(store.path), "--task", task.prompt_task if task.relabels else task.name]
    if task.name.startswith("labels:") and not task.relabels:
        args += ["--template", task.template]
    return shlex.join(args)


class StoreError(InputError):
    """A store that is missing, not a store, half-written or damaged; the message says what to do."""


class IncompleteStoreError(StoreError):
    """Some shards were never finished (a killed or still-running write)."""


class CorruptShardError(StoreError):
    """A shard whose bytes fail their checksum or cannot be decoded, or that belongs to another array.
    `advice`: what to do, when it is not "delete that file and its marker, then resume"."""

    def __init__(self, array: str, shard: int, rows: tuple[int, int], file: str, reason: str,
                 advice: str | None = None):
        self.array, self.shard, self.rows, self.file = array, shard, rows, file
        self.reason, self.advice = reason, advice
        super().__init__(
            f"{array} shard {shard} (rows {rows[0]}-{rows[1] - 1}, file {file}) is corrupt: {reason}. "
            + (advice or f"Delete that file and its marker {array}/_manifest/{shard:06d}.json, then resume the write "
                         f"that made the store to rewrite it.")
        )

    def __reduce__(self):  # picklable with its fields, so it crosses Ray intact
        return type(self), (self.array, self.shard, self.rows, self.file, self.reason, self.advice)


@dataclass
class StoreSpec:
    """What a store holds; written to its root attributes at creation."""

    model: str
    """Hugging Face model id or local path the activations came from."""
    d_model: int
    """Width of the residual stream."""
    layers: list[int]
    """Blocks whose output (resid_post) is stored."""
    dtype: str = "bfloat16"
    """Logical dtype of activations: bfloat16, float16 or float32 (kept bit-exact)."""
    revision: str | None = None
    """Model revision (commit or tag), when known."""
    tokenizer: str | None = None
    """Tokenizer id, when it differs from the model's."""
    hook: str = "resid_post"
    """Where in the block activations are taken."""
    prompt_template: str = ""
    """The vocabulary task's prompt template."""
    shard_rows: int = 16384
    """Rows per shard file: the unit of writing, of the manifest and of concurrency."""
    chunk_rows: int = 1024
    """Rows per checksummed chunk inside a shard; must divide shard_rows."""
    codec: str = "none"
    """Chunk compression: none or zstd (benchmarks/NOTES.md has the measurement behind the default)."""
    resume_command: str | None = None
    """The command that resumes the write that makes this store; quoted when it is found incomplete."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else the creator records (for example dropped-row counts)."""

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise InputError(f"dtype must be one of {sorted(DTYPES)}; got {self.dtype!r}")
        if self.codec not in CODECS:
            raise InputError(f"codec must be one of {sorted(CODECS)}; got {self.codec!r}")
        if self.d_model <= 0:
            raise InputError(f"d_model must be positive; got {self.d_model}")
        if not self.layers or any(not isinstance(l, int) or l < 0 for l in self.layers):
            raise InputError(f"layers must be a non-empty list of block indices >= 0; got {self.layers!r}")
        if len(set(self.layers)) != len(self.layers):
            raise InputError(f"layers must not repeat; got {self.layers!r}")
        if self.shard_rows <= 0 or self.chunk_rows <= 0 or self.shard_rows % self.chunk_rows:
            raise InputError(
                f"chunk_rows must be positive and divide shard_rows; got shard_rows={self.shard_rows}, "
                f"chunk_rows={self.chunk_rows}"
            )


class Block(NamedTuple):
    """Rows [start, stop) of one layer, as read by `ActivationStore.blocks`."""

    start: int
    stop: int
    acts: torch.Tensor
    """(stop - start, d_model) in the store's dtype."""


def layer_name(layer: int) -> str:
    return f"layer_{layer:02d}"


class ActivationStore:
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
        from actstore import __version__

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

    def _attribute_problem(self) -> str | None:
        """An attribute of the root or a group zarr.json that is invalid, or that every array's zarr.json contradicts
        in the same way (d_model, dtype, rows): then the attribute was changed, not the arrays, and reading would
        blame their intact metadata (or an SAE's width). Checked once, on open, from the arrays' zarr.json read as
        JSON; one that cannot be read, or that disagrees alone, is left to `_array`, which names it."""
        import json

        root = self.path / "zarr.json"
        try:
            self.spec.validate()
        except (InputError, TypeError) as err:
            return (f"{self.path}: its metadata file {root} holds invalid store attributes ({err}); restore it from "
                    f"a copy")
        problem = self._layers_problem() if self.mode == "r" else None  # a write in progress may lack arrays yet
        if problem:
            return problem
        layers = []  # (zarr.json, its JSON, its shape) of every layer array
        for group, meta in self._group_meta().items():
            arrays = []
            for name in self.arrays(group):
                try:
                    found = json.loads((self.path / group / name / "zarr.json").read_bytes())
                    arrays.append((self.path / group / name / "zarr.json", found, tuple(found["shape"])))
                except (OSError, ValueError, TypeError, KeyError):
                    continue
            layers += [a for a in arrays if a[0].parent.name.startswith("layer_")]
            rows = {shape[0] for *_, shape in arrays if shape}
            if len(arrays) >= 2 and len(rows) == 1 and rows != {meta["rows"]}:
                held = rows.pop()
                return (f"{self.path}: its metadata file {self.path / group / 'zarr.json'} says {group} has "
                        f"{meta['rows']} rows, but all {len(arrays)} of its arrays hold {held} (their zarr.json): "
                        f"its 'rows' attribute was changed (or an append was cut short); restore that file from a "
                        f"copy (or set rows back to {held})")
        try:
            # A layer's width counts when its shape agrees with its own chunk grid (an edited shape alone does not).
            widths = {shape[1] if shape[1] == found["chunk_grid"]["configuration"]["chunk_shape"][1] else None
                      for _, found, shape in layers}
            dtypes = {(found["attributes"]["logical_dtype"], found["data_type"]) for _, found, _ in layers}
            shards = {found["chunk_grid"]["configuration"]["chunk_shape"][0] for _, found, _ in layers}
        except (TypeError, KeyError, IndexError):
            return None
        if len(shards) == 1 and shards != {self.spec.shard_rows}:
            held = shards.pop()
            return (f"{self.path}: its metadata file {root} says shard_rows {self.spec.shard_rows}, but every layer "
                    f"array is cut into shards of {held} rows (e.g. {layers[0][0]}): the store's 'shard_rows' "
                    f"attribute was changed (its shards are intact: do not resume over them); restore {root} from a "
                    f"copy (or set shard_rows back to {held})")
        if len(widths) == 1 and None not in widths and widths != {self.spec.d_model}:
            width = widths.pop()
            return (f"{self.path}: its metadata file {root} says d_model {self.spec.d_model}, but every layer array "
                    f"holds rows of {width} (e.g. {layers[0][0]}): the store's 'd_model' attribute was changed; "
                    f"restore {root} from a copy (or set d_model back to {width})")
        if len(dtypes) == 1:
            logical, stored = dtypes.pop()
            if logical != self.spec.dtype and logical in DTYPES and str(DTYPES[logical][1]) == stored:
                return (f"{self.path}: its metadata file {root} says dtype {self.spec.dtype}, but every layer array "
                        f"holds {logical} (e.g. {layers[0][0]}): the store's 'dtype' attribute was changed; restore "
                        f"{root} from a copy (or set dtype back to {logical!r})")
        return None

    def _layers_problem(self) -> str | None:
        """The root's 'layers' attribute against the layer folders every row group holds on disk: a layer listed
        that no group has, or one every group has that is not listed, means the attribute was changed (reading would
        call the store incomplete, or a probe a stray)."""
        groups = self._group_meta()
        if not groups:
            return None
        root, listed = self.path / "zarr.json", set(self.spec.layers)
        held = [{int(p.parent.name.removeprefix("layer_")) for p in (self.path / g).glob("layer_*/zarr.json")
                 if p.parent.name.removeprefix("layer_").isdigit()} for g in groups]
        absent = sorted(set.intersection(*[listed - h for h in held]))  # listed, in no group
        extra = sorted(set.intersection(*[h - listed for h in held]))  # in every group, not listed
        if not absent and not extra:
            return None
        first = next(iter(groups))
        found = sorted(listed - set(absent) | set(extra))
        what = (f"no group has layer {absent[0]}'s array ({first}/{layer_name(absent[0])})" if absent else
                f"every group holds layer {extra[0]} too ({first}/{layer_name(extra[0])})")
        return (f"{self.path}: its metadata file {root} says layers {_ranges(self.spec.layers)}, but {what}: the "
                f"store's 'layers' attribute was changed (or those folders {'deleted' if absent else 'copied in'}); "
                f"restore {root} from a copy (or set layers back to {found})")

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

    def group_task(self, group: str) -> dict[str, Any] | None:
        """The identity of the task whose prompts a vocabulary group holds (`Task.identity()`): recorded in a
        `vocab_<key>` group; `vocab` is first_letter's (stores before tasks record nothing); None for others."""
        if group == "vocab":
                return self.group_attrs(group).get("task") or FIRST_LETTER_TASK.identity()
        task = self.group_attrs(group).get("task") if is_vocab_group(group) else None
        return dict(task) if isinstance(task, dict) else None

    def tasks(self) -> list[str]:
        """The tasks whose rows this store holds: the task of each vocabulary group (first_letter for `vocab`),
        then each built-in task that relabels a held group's rows (capitalized, when `vocab` is here). Not
        listed, yet available where `vocab` is: any labels:FILE task without a template (it relabels `vocab`)."""
        held = []
        for group in sorted(self.groups, key=lambda g: (g != "vocab", g)):
            task = self.group_task(group)
            if task is not None and task.get("name") not in held:
                held.append(task["name"])
        return held + [t.name for t in BUILTIN.values() if t.relabels and t.prompt_task in held and t.name not in held]

    def task_group(self, task: Task) -> str:
        """The group holding a task's rows, checked: it is here (else MissingKey saying which `actstore extract
        --task` adds it), and for a task with its own prompt, it was extracted for this very task (its name,
        classes, template and, for a label file, the file's bytes); a relabel task needs `vocab`'s text column."""
        group = task.group
        if group not in self.groups:
            what = (f"holds no rows of task {task.name}" if not task.relabels else
                    f"holds no rows of {task.prompt_task}, which task {task.name} relabels")
            raise MissingKey(f"{self.path} {what} (no group {group}; it has {sorted(self.groups) or 'none'}); add "
                             f"them with `{extract_command(self, task)}`")
        if task.relabels:
            if "text" not in self.columns(group):
                raise StoreError(f"{self.path}: its group {group} has no text column, which task {task.name} labels "
                                 f"its rows by; extract the store again with this actstore")
            return group
        found, ours = self.group_task(group), task.identity()
        if found != ours:
            differ = sorted(k for k in {*ours, *(found or {})} if (found or {}).get(k) != ours.get(k))
            raise StoreError(f"{self.path}: its group {group} holds the rows of another version of task {task.name} "
                             f"({', '.join(differ)} differ: stored {({k: (found or {}).get(k) for k in differ})}); "
                             f"score the task as extracted, or extract it into another store")
        return group

    def probe_layers(self, task: str | Task = FIRST_LETTER) -> list[int]:
        """The layers with a saved probe of a task (found on disk; `load_probe` checks each)."""
        folder = self.path / probe_prefix(task)
        if not folder.is_dir():
            return []
        found = {p.name.removeprefix("layer_") for p in folder.iterdir() if p.is_dir() and p.name.startswith("layer_")}
        return sorted(int(l) for l in found if l.isdigit() and int(l) in self.spec.layers)

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

    def _layout_problem(self, group: str, array: str, arr: zarr.Array) -> str | None:
        """What is wrong with an array's metadata (its zarr.json) against the store's attributes: its shape (rows
        from the group's zarr.json, d_model from the root's), its dtype, and for a layer, the layer it holds."""
        meta, where = self.path / group / array / "zarr.json", f"{group}/{array}"
        recorded = [m.get("array", where) for m in self._markers(group, array).values()]
        owners = sorted(set(recorded)) if recorded and where not in recorded else []
        if owners:  # every shard's marker names another array: the whole folder came from there (a shard or a few
            # copied in alone are named shard by shard, on read)
            return (f"the folder {self.path / group / array} holds the shards of {', '.join(owners)} (its manifest "
                    f"markers record so): it was copied over {where} from another array; restore the folder from a "
                    f"copy of the store, or make the store again")
        if array.startswith("layer_"):
            layer = arr.attrs.get("layer")
            if layer is not None and layer != int(array.removeprefix("layer_")):
                if self._markers(group, array):  # the markers record this array: only the metadata was replaced
                    return (f"its metadata file {meta} says the array holds layer {layer}, but it is {where}, and its "
                            f"shards' markers record {where}: the metadata file was replaced (its shard files are not "
                            f"at fault: keep them); restore {meta} from a copy of the store")
                return (f"its metadata file {meta} says the array holds layer {layer}, but it is {where}: the folder "
                        f"was copied from another array, and its shards are layer {layer}'s data; restore the folder "
                        f"from a copy of the store, or make the store again")
            shape, dtype = (self._rows(group), self.spec.d_model), DTYPES[self.spec.dtype][1]
        else:
            kind = self.columns(group)[array]
            shape, dtype = (self._rows(group),), None if kind == "str" else np.dtype(kind)
        found = []
        if tuple(arr.shape) != shape:
            found.append(f"shape {tuple(arr.shape)}, but the store's attributes promise {shape}")
        if dtype is not None and arr.dtype != dtype:
            found.append(f"dtype {arr.dtype}, but the store's attributes promise {dtype}")
        if dtype is None and arr.dtype.kind not in "OUT" and "str" not in str(arr.dtype).lower():
            found.append(f"dtype {arr.dtype}, but the store's attributes promise strings")
        if not found:
            return None
        return (f"the metadata file {meta} of {where} was changed: it says {' and '.join(found)}; its shard files are "
                f"not at fault (keep them): restore {meta} from a copy of the store")

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

    def _foreign_shard(self, group: str, array: str, shard: int, markers: dict[int, dict]) -> CorruptShardError:
        """The error for a shard whose marker records another array: its folder's files were copied from there."""
        name, owner = f"{group}/{array}", markers[shard]["array"]
        foreign = [k for k, m in markers.items() if m.get("array", name) != name]
        return CorruptShardError(
            name, shard, self.shard_rows(group, shard), str(self.shard_file(group, array, shard)),
            f"it holds the shard of {owner}, as its marker {name}/_manifest/{shard:06d}.json records: copied from "
            f"another array (shards {_ranges(foreign)} of {name} are such copies)",
            f"Delete the files and markers of those shards (or the folder {self.path / group / array}'s c/ and "
            f"_manifest/), then resume the write that made the store to rewrite them; or restore the folder from a "
            f"copy of the store.")

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

    # ------------------------------------------------------------------ probes

    def save_probe(self, layer: int, weight: np.ndarray, bias: np.ndarray, attrs: dict[str, Any],
                   task: Task | None = None) -> None:
        """Store a layer's ground-truth probe of a task (weight (C, d_model), bias (C,), C = task.n_classes; default
        first_letter) under probes/layer_LL (first_letter) or probes/<task key>/layer_LL, replacing an earlier one;
        `attrs` (JSON) holds its metrics and training settings; the task's identity is recorded beside them."""
        task = task or FIRST_LETTER_TASK
        self._require_writable()
        name = self._layer_array(layer)
        classes = task.n_classes
        if weight.shape != (classes, self.spec.d_model) or bias.shape != (classes,):
            raise ValueError(f"a probe of task {task.name} is weight ({classes}, {self.spec.d_model}) and bias "
                             f"({classes},); got {weight.shape}, {bias.shape}")
        prefix = probe_prefix(task)
        parts = prefix.split("/")
        for depth in range(1, len(parts) + 1):
            meta = self.path.joinpath(*parts[:depth], "zarr.json")
            if meta.exists() and _metadata_problem(self.path, [meta]):
                meta.unlink()  # it says only "a group" (each probe's data and attributes are in its folder): remake it
        probes = self._root.require_group("probes")
        for part in parts[1:]:
            probes = probes.require_group(part)
        attrs = {**attrs, "layer": int(layer), "sha256": probe_digest(weight, bias)}  # its identity, checked on load
        if task.name != FIRST_LETTER or "task" in attrs:
            attrs["task"] = task.identity()
        group = probes.create_group(name, overwrite=True, attributes=attrs)
        for key, values in (("weight", weight), ("bias", bias)):
            values = np.ascontiguousarray(values, dtype=np.float32)
            group.create_array(key, data=values, chunks=values.shape, compressors=CODECS["none"]())

    def load_probe(self, layer: int, task: Task | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(weight, bias, attrs) of a layer's saved probe of a task (default first_letter). Raises MissingKey when
        there is none, StoreError naming the probe and the file when it cannot be read, or when it was trained for
        another version of the task (a label file edited since, say)."""
        task = task or FIRST_LETTER_TASK
        weight, bias, attrs = self._load_probe_at(probe_prefix(task), layer, task)
        found = attrs.get("task")
        if found is not None and found != task.identity():
            differ = sorted(k for k in {*found, *task.identity()} if found.get(k) != task.identity().get(k))
            raise StoreError(f"{self.path}: the probe of task {task.name}, layer {layer} ({probe_prefix(task)}/"
                             f"{layer_name(layer)}) was trained for another version of the task ({', '.join(differ)} "
                             f"differ); {_train_command(self.path, layer, task)}")
        if weight.ndim != 2 or len(weight) != task.n_classes:
            raise StoreError(f"{self.path}: the probe of layer {layer} ({probe_prefix(task)}/{layer_name(layer)}) has "
                             f"{len(weight)} rows, but task {task.name} has {task.n_classes} classes: it was trained "
                             f"for another task; {_train_command(self.path, layer, task)}")
        return weight, bias, attrs

    def _load_probe_at(self, prefix: str, layer: int, task: Task | None = None
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """A probe's (weight, bias, attrs) under `prefix`/layer_LL, checked: its metadata, checksums, layer and
        digest, and metrics for as many classes as its weight has rows (`task`: named in the advice)."""
        name, top = layer_name(layer), self.path / "probes"
        folder, retrain = self.path / prefix / name, _train_command(self.path, layer, task, prefix)
        if not folder.is_dir():
            raise MissingKey(f"{self.path} has no probe for layer {layer}"
                             + (f" of task {task.name}" if task is not None and task.name != FIRST_LETTER else "")
                             + f"; {retrain.replace('retrain', 'train')}")
        where = f"{self.path}: the probe of layer {layer} ({prefix}/{name})"
        groups = [top / "zarr.json"] + ([self.path / prefix / "zarr.json"] if prefix != "probes" else [])
        metas = [*groups, *(folder / key / "zarr.json" for key in ("", "weight", "bias"))]
        for meta in metas:  # checked on disk: zarr calls a folder without its zarr.json absent
            if not meta.is_file():
                raise StoreError(f"{where} cannot be read: its metadata file {meta} is missing; {retrain}")
        problem = _metadata_problem(self.path, metas, retrain)
        if problem:
            raise StoreError(f"{where} cannot be read: {problem}")
        try:
            group = self._root[f"{prefix}/{name}"]
            arrays, attrs = {key: group[key] for key in ("weight", "bias")}, dict(group.attrs)
            for key, arr in arrays.items():
                if not isinstance(arr, zarr.Array):
                    raise TypeError(f"{folder / key / 'zarr.json'} describes a group, not an array")
        except Exception as err:  # noqa: BLE001 - valid JSON that zarr cannot read as a probe
            raise StoreError(f"{where} cannot be read: its metadata in {folder} is not a probe's "
                             f"({type(err).__name__}: {err}); {retrain}") from err
        values = []
        for key, arr in arrays.items():
            file = folder / key / arr.metadata.encode_chunk_key((0,) * arr.ndim)  # one chunk per array
            try:
                values.append(arr[:])
            except Exception as err:  # noqa: BLE001 - a checksum mismatch is a ValueError; a torn file fails otherwise
                why = "fails its crc32c checksum" if "checksum" in str(err) else f"cannot be decoded ({err})"
                raise StoreError(f"{where} is damaged: {file} {why}; {retrain}") from err
        if attrs.get("layer", layer) != layer:  # probes saved before the layer was recorded lack it
            raise StoreError(f"{where} holds the probe of layer {attrs['layer']} (its attributes in "
                             f"{folder / 'zarr.json'} say so): the folder was copied from {prefix}/"
                             f"{layer_name(attrs['layer']) if isinstance(attrs['layer'], int) else '?'}; {retrain}")
        if "sha256" in attrs and probe_digest(*values) != attrs["sha256"]:  # a chunk file deleted reads as zeros
            raise StoreError(f"{where} is damaged: its weights are not the ones saved (sha256 differs: a chunk file "
                             f"in {folder} was deleted, replaced or edited); {retrain}")
        problem = _probe_metrics_problem(attrs.get("metrics"), len(values[0]))
        if problem:
            raise StoreError(f"{where} is damaged: its 'metrics' attribute in {folder / 'zarr.json'} {problem}; "
                             f"{retrain}")
        return values[0], values[1], attrs

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, model={self.spec.model!r}, groups={self.groups})"


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


def _open_root(path: Path, mode: str) -> zarr.Group:
    """The root group of the store at `path`, checked to be an actstore store this version reads."""
    if not path.exists():
        raise StoreError(f"{path} does not exist: expected an actstore store (a Zarr v3 directory)")
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path} is not an actstore store: it has no zarr.json (not a Zarr v3 group)")
    try:
        root = zarr.open_group(path, mode="r" if mode == "r" else "r+")
    except Exception as err:  # zarr raises several types for a node that is not a group
        problem = (_metadata_problem(path)
                   or f"its metadata file {path / 'zarr.json'} does not describe a Zarr group ({err})")
        raise StoreError(f"{path} is not an actstore store: {problem}") from err
    version = root.attrs.get("format_version")
    if version is None:
        raise StoreError(f"{path} is a Zarr group but not an actstore store (no 'format_version' attribute in "
                         f"{path / 'zarr.json'}; if it was one, restore that file from a copy)")
    if version > FORMAT_VERSION:
        raise StoreError(f"{path} has store format {version}; this actstore reads up to {FORMAT_VERSION}: "
                         f"upgrade actstore")
    return root


def _metadata_problem(path: Path, files: list[Path] | None = None,
                      advice: str = "restore it from a copy, or make the store again") -> str | None:
    """'<file> is damaged (...); <advice>' for the first unreadable zarr.json of `files` (default: the store's root
    and groups)."""
    import json

    if files is None:  # the probes' metadata is not the store's: load_probe names it
        files = [path / "zarr.json", *sorted(p for p in path.glob("*/zarr.json") if p.parent.name != "probes")]
    for meta in files:
        try:
            if not isinstance(json.loads(meta.read_bytes()), dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            return f"its metadata file {meta} is damaged ({err}); {advice}"
    return None


def prepare(spec: StoreSpec, columns: dict[str, str], where: str, value: Any) -> np.ndarray:
    """Check one input against its array (`group/name`; `columns`: the group's) and return it as the numpy
    array Zarr stores."""
    name = where.rpartition("/")[2]
    if name.startswith("layer_"):
        torch_dtype = DTYPES[spec.dtype][0]
        if isinstance(value, np.ndarray):
            if spec.dtype == "bfloat16":
                raise TypeError(f"{where} holds bfloat16, which numpy cannot represent; pass a torch "
                                f"tensor of dtype torch.bfloat16 (got a numpy {value.dtype} array)")
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where} expects a torch tensor; got {type(value).__name__}")
        if value.dtype != torch_dtype:
            raise TypeError(f"{where} holds {spec.dtype}; got {value.dtype}. The store keeps the "
                            f"model's dtype bit-exact and does not round: cast with .to({torch_dtype}) first")
        if value.ndim != 2 or value.shape[1] != spec.d_model:
            raise ValueError(f"{where} expects shape (rows, {spec.d_model}); got {tuple(value.shape)}")
        value = value.detach().cpu().contiguous()
        if torch_dtype == torch.bfloat16:
            return value.view(torch.int16).numpy().view(np.uint16)
        return value.numpy()
    dtype = columns[name]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    if value.ndim != 1:
        raise ValueError(f"{where} is a column and expects shape (rows,); got {value.shape}")
    if dtype == "str":
        if value.size and value.dtype.kind not in "UTO":
            raise TypeError(f"{where} holds strings; got {value.dtype}")
        return value.astype(str)
    target = np.dtype(dtype)
    if target.kind in "iu":
        if value.size and value.dtype.kind not in "iu":
            raise TypeError(f"{where} holds {target}; got {value.dtype} (integers expected)")
        info = np.iinfo(target)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise ValueError(f"{where} holds {target} ({info.min}..{info.max}); got values in "
                             f"{value.min()}..{value.max()}")
        return value.astype(target)
    if value.dtype != target:
        raise TypeError(f"{where} holds {target}; got {value.dtype}")
    return value


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


def _train_command(path: Path, layer: int, task: Task | None, prefix: str = "probes") -> str:
    """'retrain it with `actstore probe STORE --layers L [--task T]`' for a probe of `task` (or under `prefix`)."""
    import shlex

    name = task.name if task is not None else None if prefix == "probes" else prefix.removeprefix("probes/")
    flag = "" if name in (None, FIRST_LETTER) else f" --task {shlex.quote(name)}"
    if task is not None and task.name.startswith("labels:") and not task.relabels:
        flag += f" --template {shlex.quote(task.template)}"
    return f"retrain it with `actstore probe {path} --layers {layer}{flag}`"


def resume_command(store: ActivationStore) -> str | None:
    """The recorded command that finishes the store, aimed at the store as opened now (a copied or moved store
    is resumed where it is, not where it was written)."""
    import shlex

    command = store.spec.resume_command
    try:
        args = shlex.split(command or "")
    except ValueError:  # not a shell command line: quote it as recorded
        return command
    if "--out" not in args[:-1]:
        return command
    args[args.index("--out") + 1] = str(store.path.resolve())
    return shlex.join(args)


def _probe_metrics_problem(metrics: Any, classes: int) -> str | None:
    """What is wrong with a probe's metrics as the scorer reads them (test precision, recall and F1, one number per
    class), or None."""
    test = metrics.get("test") if isinstance(metrics, dict) else None
    if not isinstance(test, dict):
        return "holds no test metrics (expected {'test': {'precision': [...], 'recall': [...], 'f1': [...]}})"
    for key in ("precision", "recall", "f1"):
        values = test.get(key)
        if not isinstance(values, list) or len(values) != classes or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
            return f"has no test {key} as {classes} numbers in [0, 1], one per class"
    return None


def probe_digest(weight: np.ndarray, bias: np.ndarray) -> str:
    """sha256 of a probe's float32 weight and bias bytes."""
    import hashlib

    digest = hashlib.sha256()
    for values in (weight, bias):
        digest.update(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    values, out, i = sorted(values), [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ", ".join(out)
