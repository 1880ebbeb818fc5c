"""What a file or folder holds, cheaply: content digests that a rewrite cannot keep, computed once per file.

    file_sha256(path)     sha256 of a file's bytes, cached by its inode, size, mtime and ctime
    folder_sha256(path)   one sha256 over the names and file_sha256 of every file under a folder
    npz_identity(path)    a .npz's members with their zip CRC-32s and sizes, from its central directory

A size and a modification time say nothing about content: a file rewritten in place at the same size, its
mtime set back (`touch -r`, `cp -p`, a restore), passes. The inode change time (ctime) cannot be set back by
anyone but the kernel, and any write or `touch` moves it, so a cache keyed by (device, inode, size, mtime,
ctime) returns a digest only for the very bytes it was computed from. The cache is one JSON file,
$ACTSTORE_CACHE/digests.json, replaced atomically; writers in several processes may lose each other's
entries (the digest is then computed again), never corrupt them.

A .npz is a zip archive whose central directory records each member's CRC-32 and size, and reading a member
checks its bytes against that CRC (zipfile does; a mismatch fails the load). So the central directory is a
content identity that costs one small read, with no hashing of the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
from pathlib import Path

_lock = threading.Lock()
_memory: dict[str, str] = {}


def _cache_file() -> Path:
    from actstore.model import cache_dir

    return cache_dir() / "digests.json"


def _key(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


def _load() -> dict[str, str]:
    try:
        cached = json.loads(_cache_file().read_text())
    except (OSError, ValueError):  # none yet, or unreadable: start again
        return {}
    return cached if isinstance(cached, dict) else {}


def _store(key: str, digest: str) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cached = {**_load(), key: digest}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        tmp.write_text(json.dumps(cached))
        os.replace(tmp, path)
    except OSError:  # a read-only cache folder: digests are computed each time
        pass


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex), computed once per (inode, size, mtime, ctime)."""
    path = Path(path)
    key = _key(path)
    with _lock:
        if key not in _memory:
            _memory.update(_load())
    if key in _memory:
        return _memory[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    if _key(path) != key:  # written while it was read: what was read is no one version of it
        return file_sha256(path)
    with _lock:
        _memory[key] = digest.hexdigest()
        _store(key, _memory[key])
    return _memory[key]


def folder_sha256(path: str | os.PathLike) -> str:
    """sha256 over the relative path and file_sha256 of every file under a folder (hidden ones aside: caches,
    locks); links are followed. Any file added, removed, renamed or rewritten changes it."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = file.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(f"{relative.as_posix()}\0{file_sha256(file)}\0".encode())
    return digest.hexdigest()


def npz_identity(path: str | os.PathLike) -> str:
    """`npz:` and a sha256 of the members' names, CRC-32s and sizes as the zip's central directory records them.
    A file that is not a readable zip gets a file_sha256 instead (loading it then says what is wrong)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = sorted((info.filename, info.CRC, info.file_size) for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return f"sha256:{file_sha256(path)}"
    return "npz:" + hashlib.sha256(json.dumps(members).encode()).hexdigest()
