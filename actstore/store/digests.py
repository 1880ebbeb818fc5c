"""What a file or folder holds, cheaply: content digests that a rewrite cannot keep, computed once per file.

    file_sha256(path)     sha256 of a file's bytes, cached by its inode, size, mtime and ctime
    folder_files(path)    relative path -> file_sha256 of every file under a folder but hidden ones and documents
    folder_sha256(path)   one sha256 over folder_files
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

from actstore.cache import cache_dir

_lock = threading.Lock()
_memory: dict[str, str] = {}


def _cache_file() -> Path:
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


DOCUMENTS = ("*.md", "*.rst", "*.png", "*.jpg", "*.jpeg", "*.gif", "*.svg", "*.pdf", "README*", "LICENSE*",
             "NOTICE*", "USE_POLICY*")
"""files of a model or SAE folder that say nothing about its numbers (a model card, a licence, pictures)"""


def folder_files(path: str | os.PathLike) -> dict[str, str]:
    """relative path -> file_sha256 of every file under a folder that can change a number: all of them but hidden
    ones (caches, locks, .gitattributes) and DOCUMENTS. Links are followed."""
    root = Path(path)
    files = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = file.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or any(file.match(p) for p in DOCUMENTS):
            continue
        files[relative.as_posix()] = file_sha256(file)
    return files


def folder_sha256(path: str | os.PathLike, files: dict[str, str] | None = None) -> str:
    """One sha256 over `folder_files` (given, or computed): any such file added, removed, renamed or rewritten
    changes it."""
    files = folder_files(path) if files is None else files
    return hashlib.sha256("".join(f"{name}\0{sha}\0" for name, sha in sorted(files.items())).encode()).hexdigest()


def changed_files(recorded: dict[str, str], now: dict[str, str]) -> str:
    """'model.safetensors changed, extra.bin added' between two folder_files records."""
    parts = [f"{name} changed" for name in sorted(recorded) if name in now and now[name] != recorded[name]]
    parts += [f"{name} added" for name in sorted(set(now) - set(recorded))]
    parts += [f"{name} removed" for name in sorted(set(recorded) - set(now))]
    return ", ".join(parts[:5]) + (f" and {len(parts) - 5} more" if len(parts) > 5 else "")


def npz_identity(path: str | os.PathLike) -> str:
    """`npz:` and a sha256 of the members' names, CRC-32s and sizes as the zip's central directory records them.
    A file that is not a readable zip gets a file_sha256 instead (loading it then says what is wrong)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = sorted((info.filename, info.CRC, info.file_size) for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return f"sha256:{file_sha256(path)}"
    return "npz:" + hashlib.sha256(json.dumps(members).encode()).hexdigest()
