"""The store's format: its constants and dtypes, the spec written to its root, its errors, and the names of its
groups, arrays and probes; `prepare` checks one input against the array it goes into.

Everything here is plain data and checks: no file is opened (the store itself is zarrstore.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from zarr.codecs import Crc32cCodec, ZstdCodec

from actstore.errors import InputError
from actstore.tasks.base import FIRST_LETTER, Task, task_key

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
