"""Checking a store: `actstore verify` (every shard read and checked) and `actstore info` (a summary).

    problems = verify(store)      # [] when every shard is present, complete and intact
    summary = info(store)         # model, layers, groups and rows, completeness, bytes on disk

Functions of an open ActivationStore.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, NamedTuple

from actstore import manifest


class Problem(NamedTuple):
    """One finding of `verify`."""

    array: str
    """`group/array`, for example `vocab/layer_05`."""
    shard: int
    rows: tuple[int, int]
    kind: str
    """`incomplete` (never finished), `missing` (marked done, file gone) or `corrupt`."""
    detail: str


def verify(store, progress: bool = False) -> list[Problem]:
    """Read every shard of every array and check it: the manifest, the files and every checksum."""
    from tqdm.auto import tqdm

    units = [(g, a, k) for g in sorted(store.groups) for a in store.arrays(g) for k in range(store.num_shards(g))]
    problems = []
    markers = {}
    for group, array, shard in tqdm(units, desc="verify", unit="shard", disable=not progress):
        name, rows = f"{group}/{array}", store.shard_rows(group, shard)
        if name not in markers:
            markers[name] = manifest.read_markers(store.path / group / array)
        marker = markers[name].get(shard)
        path = store.shard_file(group, array, shard)
        if not store._done(markers[name], group, shard):
            problems.append(Problem(name, shard, rows, "incomplete", "never finished (no manifest marker)"))
            continue
        if marker.get("file") and not path.exists():
            problems.append(Problem(name, shard, rows, "missing", f"marked complete but {path} is gone"))
            continue
        try:
            store._array(group, array)[rows[0]:rows[1]]
        except Exception as err:
            problems.append(Problem(name, shard, rows, "corrupt", f"{path}: {err}"))
    return problems


def bytes_on_disk(store) -> int:
    return sum(entry.stat().st_size for entry in store.path.rglob("*") if entry.is_file())


def info(store) -> dict[str, Any]:
    """A summary for `actstore info`."""
    missing = store.missing()
    spec = asdict(store.spec)
    return {
        "path": str(store.path),
        "format_version": store._root.attrs["format_version"],
        **{k: spec[k] for k in ("model", "revision", "tokenizer", "layers", "d_model", "dtype", "hook",
                                "prompt_template", "shard_rows", "chunk_rows", "codec")},
        "groups": store.groups,
        "complete": not missing,
        "missing_shards": {name: len(shards) for name, shards in missing.items()},
        "bytes_on_disk": bytes_on_disk(store),
        "actstore_version": store._root.attrs.get("actstore_version"),
        "extra": spec["extra"],
    }
