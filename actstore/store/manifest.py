"""Which shards of a store are complete: one small marker file per finished (array, shard).

A marker is written only after the shard's bytes are in the file system, and removed before a shard
is rewritten, so a writer killed at any instant leaves markers only for shards that are whole. Markers
are separate files (never one shared JSON), so writers in different processes that own disjoint shards
never race on the manifest.

    <store>/<group>/<array>/_manifest/000003.json   {"rows": [49152, 65536], "file": true,
                                                      "array": "vocab/layer_05", "crc32c": 2882343476,
                                                      "chunks": [...]}

`rows` is the row range the shard held when it was written: after an append grows the array, the last
shard's range changes and its old marker stops counting. `file` says whether Zarr wrote a shard file at
all (it writes none for a shard that is entirely the fill value), so `verify` can tell a shard that was
legitimately empty from one whose file was lost. `crc32c` (of the file but its last 4 bytes, its own checksum) and, for activation shards,
`chunks` (each chunk's crc32c, null where empty) are the shard's identity: a checksum says a file is intact,
the identity says it is the right shard. Reads compare the chunks, `actstore verify` the whole file, so a
shard file swapped with another is caught. Markers written before identities were recorded lack both.
`array` (`group/array`) is the rest of the identity: the same bytes under another array's folder (a layer's
folder copied over another's, markers and all) are that other array's data, and reads and `verify` refuse
them. Markers written before it was recorded lack it and are accepted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST_DIR = "_manifest"


def marker_path(array_dir: Path, shard: int) -> Path:
    return array_dir / MANIFEST_DIR / f"{shard:06d}.json"


def write_marker(array_dir: Path, shard: int, rows: tuple[int, int], has_file: bool,
                 identity: dict | None = None) -> None:
    """Record shard `shard` of the array at `array_dir` as complete. `identity`: what the shard is (`array`,
    `crc32c`, `chunks`; see above), None for a shard written without a file.

    Written in place, not through a temp file: a marker is one short JSON object, and every strict
    prefix of a JSON object is invalid JSON, so a write cut short reads as "not done".
    """
    path = marker_path(array_dir, shard)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"rows": list(rows), "file": has_file, **(identity or {})}))


def remove_marker(array_dir: Path, shard: int) -> None:
    marker_path(array_dir, shard).unlink(missing_ok=True)


def read_markers(array_dir: Path) -> dict[int, dict]:
    """All markers of one array: shard index -> {"rows": [start, stop], "file": bool, and the identity}."""
    folder = array_dir / MANIFEST_DIR
    if not folder.is_dir():
        return {}
    markers = {}
    for entry in os.scandir(folder):
        name = entry.name
        if not name.endswith(".json"):
            continue
        try:
            shard, marker = int(name[:-5]), json.loads(Path(entry.path).read_text())
        except (ValueError, json.JSONDecodeError):
            continue  # cut short by a kill: the shard counts as not done, and resume rewrites it
        if isinstance(marker, dict):  # anything else is damage: the shard counts as not done, like a torn one
            markers[shard] = marker
    return markers
