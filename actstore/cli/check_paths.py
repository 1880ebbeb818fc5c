"""Checks of paths: stores (a store, not a folder inside one), output folders (writable, outside any store), the
SAE sources of --saes and their @list files, sae-lens releases. Part of cli/checks.py's one place for every argument
check.

    existing_store("STORE", "s.zarr")      # a store directory, not a folder inside one
    outside_stores("--out", "results")     # an output folder that is neither a store nor inside one
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from actstore.cli.check_values import BadArgument


def existing_store(name: str, path: str) -> None:
    """A store directory (its zarr.json exists); the store itself says more when it is opened."""
    p = Path(path)
    if not p.exists():
        raise BadArgument(f"{name} {path}: no such store; expected a .zarr directory written by `actstore extract`")
    if not p.is_dir():
        raise BadArgument(f"{name} {path}: a file, not a store; expected a .zarr directory written by "
                          f"`actstore extract`")
    if not (p / "zarr.json").is_file():
        raise BadArgument(f"{path} is not an actstore store: it has no zarr.json (not a Zarr v3 group)")
    outer = enclosing_store(p.parent)
    if outer is not None and not _is_store_root(p):
        raise BadArgument(f"{name} {path}: a folder inside the store {outer}, not a store; pass {outer}")


def _is_store_root(path: Path) -> bool:
    """A folder whose zarr.json is an actstore store's root (it records a format_version)."""
    try:
        meta = json.loads((path / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format_version" in (meta.get("attributes") or {})


def enclosing_store(path: Path) -> Path | None:
    """The actstore store that `path` is, or lies inside (its nearest ancestor that is one), if any."""
    for folder in [path.absolute(), *path.absolute().parents]:
        if folder.is_dir() and _is_store_root(folder):
            return folder
    return None


def outside_stores(name: str, path: str) -> None:
    """An output folder that is neither a store nor inside one: results written there would mix with, or be
    read as, the store's arrays (and `create` or a resume could delete them)."""
    target = Path(path).resolve()
    store = enclosing_store(target)
    if store is not None:
        where = "is the store" if store == target else "lies inside the store"
        raise BadArgument(f"{name} {path}: {where} {store}; write outside it (for example {store.parent / 'results'})")


def writable_folder(name: str, path: str) -> None:
    """An output folder: an existing writable folder, or a path whose nearest existing parent is one."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BadArgument(f"{name} {path}: an existing file; expected a folder (or a path for a new one): "
                          f"choose another path")
    existing = p if p.exists() else next((q for q in p.absolute().parents if q.exists()), None)
    if existing is None or not existing.is_dir():
        raise BadArgument(f"{name} {path}: {existing} is not a folder, so it cannot be created; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadArgument(f"{name} {path}: {existing} is not writable; choose a folder you can write to")


def sae_specs(specs: list[str]) -> None:
    """--saes entries: @lists readable and naming something; a file that is not a params.npz refused (a
    missing path fails that SAE alone, when the run reports)."""
    from actstore.run.sources import read_list  # the run stage reads @lists; here, not at the top: it loads torch

    for spec in specs:
        if spec.startswith("@"):
            read_list(spec[1:])
            continue
        p = Path(spec)
        if p.is_file() and not p.name.endswith(".npz"):
            raise BadArgument(f"--saes {spec}: a file that is not a params.npz; for a list of SAE sources, one per "
                              f"line, write @{spec}")


def release(name: str, value: str | None) -> None:
    from actstore.saes.loading import releases

    if value is None:
        return
    try:
        known = releases()
    except KeyError as err:
        raise BadArgument(f"{name} {value}: {err.args[0]}") from None
    if value not in known:
        near = [r for r in known if r.startswith(value.split("-")[0])][:8] or known[:8]
        raise BadArgument(f"{name}: unknown release {value!r} (not in the sae-lens catalog); for example "
                          f"{', '.join(near)} ({len(known)} in all; `actstore saes list --release R`)")
