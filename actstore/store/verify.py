"""Checking a store: `actstore verify` (every shard read and checked) and `actstore info` (a summary).

    problems = verify(store)      # [] when every shard is present, complete and intact
    summary = info(store)         # model, layers, groups and rows, completeness, bytes on disk

Functions of an open ActivationStore; the store's `verify()` and `info()` methods call them.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, NamedTuple

import numpy as np

from actstore.store import manifest, shardio
from actstore.store.format import TASK_GROUP_PREFIX, StoreError
from actstore.store.integrity import _metadata_problem
from actstore.store.saved_probes import probe_digest
from actstore.tasks.base import vocab_group


class Problem(NamedTuple):
    """One finding of `verify`."""

    array: str
    """`group/array`, for example `vocab/layer_05`."""
    shard: int
    rows: tuple[int, int]
    kind: str
    """`incomplete` (never finished), `missing` (marked done, file gone), `corrupt` (checksum, or the shard's
    identity), `structure` (an array or group the attributes promise is absent or misshapen; shard -1) or
    `probe` (a saved probe that does not fit the store or its task; shard -1)."""
    detail: str


def verify(store, progress: bool = False) -> list[Problem]:
    """Check a store whole: its structure (the groups, arrays and columns its attributes promise, with their
    shapes and dtypes), every shard (manifest, file, checksums and identity) and its probes."""
    from tqdm.auto import tqdm

    problems = structure(store)
    broken = {p.array for p in problems}
    units = [(g, a, k) for g in sorted(store.groups) for a in store.arrays(g) if f"{g}/{a}" not in broken
             for k in range(store.num_shards(g))]
    markers = {}
    for group, array, shard in tqdm(units, desc="verify", unit="shard", disable=not progress):
        name = f"{group}/{array}"
        if name not in markers:
            markers[name] = manifest.read_markers(store.path / group / array)
        found = _check_shard(store, group, array, shard, markers[name])
        if found:
            problems.append(Problem(name, shard, store.shard_rows(group, shard), *found))
    return problems + check_tasks(store) + check_probes(store)


def _check_shard(store, group: str, array: str, shard: int, markers: dict) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong with one shard, or None."""
    marker, path = markers.get(shard), store.shard_file(group, array, shard)
    owner = (marker or {}).get("array", f"{group}/{array}")  # markers written before it was recorded lack it
    if owner != f"{group}/{array}":
        return "corrupt", (f"{path} holds the shard of {owner}, as its marker "
                           f"{manifest.marker_path(store.path / group / array, shard)} records: copied from another "
                           f"array; delete that file and its marker, then resume the write that made the store to "
                           f"rewrite it (or restore {store.path / group / array} from a copy of the store)")
    if not store._done(markers, group, shard):
        marker_file = manifest.marker_path(store.path / group / array, shard)
        if marker_file.exists() and shard not in markers:  # unreadable: a kill mid-marker, or damage
            return "incomplete", (f"its manifest marker {marker_file} is not a readable marker (cut short by a kill, or "
                                  f"damaged): the shard counts as never finished, and resuming rewrites it")
        return "incomplete", "never finished (no manifest marker)"
    if marker.get("file") and not path.exists():
        return "missing", f"marked complete but {path} is gone"
    if not marker.get("file") and path.exists():
        return "corrupt", f"{path} exists but the shard was written without a file: it belongs elsewhere"
    if not path.exists():
        return None
    if path.stat().st_size == 0:
        return "corrupt", f"{path} is empty (0 bytes)"
    if "crc32c" in marker and shardio.file_crc32c(str(path)) != marker["crc32c"]:
        return "corrupt", (f"{path} is not the file its manifest marker records (crc32c differs): another "
                           f"shard's file, or damaged")
    try:
        lo, hi = store.shard_rows(group, shard)
        store._read_raw(group, array, lo, hi)
    except Exception as err:  # noqa: BLE001 - every way a shard fails to read is a finding
        return "corrupt", f"{path}: {err}"
    return None


def structure(store) -> list[Problem]:
    """The groups, arrays and columns the store's attributes promise, with their shapes and dtypes, and for a layer
    the layer its metadata says it holds (as reading checks them: `ActivationStore._array`)."""
    root, problems = store._root, []

    def problem(where: str, detail: str) -> None:
        problems.append(Problem(where, -1, (0, 0), "structure", detail))

    for name in root.attrs.get("groups", []):
        if name not in store.groups:
            problem(name, f"the store's attributes list group {name!r}, but {store.path / name} is gone or not a "
                          f"row group")
    for group in store.groups:
        for name in store.arrays(group):
            if not (store.path / group / name / "zarr.json").is_file():
                problem(f"{group}/{name}", f"missing: the store's attributes promise it "
                                           f"({'layer' if name.startswith('layer_') else 'column'})")
                continue
            try:
                store._array(group, name)  # its metadata read, and checked against the attributes
            except StoreError as err:
                problem(f"{group}/{name}", str(err).removeprefix(f"{store.path}: "))
    return problems


def check_probes(store) -> list[Problem]:
    """Each saved probe, of every task (probes/layer_LL for first_letter, probes/<task key>/layer_LL for the
    others): a layer of the store, weight (classes, d_model) and bias (classes,) float32, finite, as many classes
    as its task (recorded with it) has, its metrics present and its bytes the ones recorded when it was saved."""
    folder, problems = store.path / "probes", []
    if not folder.is_dir():
        return []
    # Found on disk, not through zarr: a probe folder whose metadata is gone is invisible to zarr, not absent.
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    retrain = f"retrain them with `actstore probe {store.path}` (it rewrites that file)"
    meta = folder / "zarr.json"
    if not meta.is_file():
        return [Problem("probes", -1, (0, 0), "probe", f"its metadata file {meta} is missing: zarr cannot see the "
                                                        f"probes {', '.join(names) or '(none)'}; {retrain}")]
    damaged = _metadata_problem(store.path, [meta], retrain)
    if damaged:
        return [Problem("probes", -1, (0, 0), "probe", damaged)]
    for name in names:
        if name.startswith("layer_"):
            problems += _check_probe(store, "probes", name)
            continue
        task_dir = folder / name
        layers = sorted(p.name for p in task_dir.iterdir() if p.is_dir())
        if not layers or any(not _is_layer_folder(l) for l in layers):
            problems.append(Problem(f"probes/{name}", -1, (0, 0), "probe", f"{task_dir} is not a probe folder (they "
                                                                          f"are named layer_LL, or <task>/layer_LL); "
                                                                          f"move it out of the store"))
            continue
        problems += [p for l in layers for p in _check_probe(store, f"probes/{name}", l)]
    return problems


def _is_layer_folder(name: str) -> bool:
    return name.startswith("layer_") and name.removeprefix("layer_").isdigit()


def _check_probe(store, prefix: str, name: str) -> list[Problem]:
    """The problems of one saved probe, `prefix`/`name` (name: layer_LL)."""
    where = f"{prefix}/{name}"
    if not _is_layer_folder(name):
        return [Problem(where, -1, (0, 0), "probe", f"{store.path / prefix / name} is not a probe folder (they are "
                                                    f"named layer_LL); move it out of the store")]
    layer = int(name.removeprefix("layer_"))
    try:
        weight, bias, attrs = store._load_probe_at(prefix, layer)
    except Exception as err:  # noqa: BLE001 - an unreadable probe is a finding
        return [Problem(where, -1, (0, 0), "probe", str(err).removeprefix(f"{store.path}: "))]
    found = []
    task = attrs.get("task")
    if prefix != "probes" and not isinstance(task, dict):
        found.append("no 'task' attribute (the task it was trained for)")
    classes = len(task["classes"]) if isinstance(task, dict) and isinstance(task.get("classes"), list) else None
    if layer not in store.layers:
        found.append(f"the store has no layer {layer}")
    if weight.ndim != 2 or weight.shape[1] != store.spec.d_model or bias.shape != weight.shape[:1]:
        found.append(f"weight {weight.shape} and bias {bias.shape}; expected (classes, {store.spec.d_model}) "
                     f"and (classes,)")
    elif classes is not None and len(weight) != classes:
        found.append(f"{len(weight)} rows, but its task {task.get('name')} has {classes} classes")
    elif not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        found.append("NaN or inf in its weights")
    elif "sha256" in attrs and probe_digest(weight, bias) != attrs["sha256"]:
        found.append("its weights are not the ones saved (sha256 differs)")
    if "metrics" not in attrs:
        found.append("no 'metrics' attribute (train/test F1 per class)")
    flag = f" --task {task['name']}" if isinstance(task, dict) and task.get("name") not in (None, "first_letter") else ""
    return [Problem(where, -1, (0, 0), "probe", f"{what}; retrain it with `actstore probe {store.path} --layers "
                                                f"{layer}{flag}`") for what in found]


def check_tasks(store) -> list[Problem]:
    """Each task's vocabulary group (`vocab_<key>`): it records its task (name and classes), its name is that
    task's, and its labels are classes of it (0..C-1)."""
    problems = []
    for group in sorted(g for g in store.groups if g.startswith(TASK_GROUP_PREFIX)):
        task = store.group_task(group)
        if not task or not isinstance(task.get("name"), str) or not isinstance(task.get("classes"), list):
            problems.append(Problem(group, -1, (0, 0), "structure", f"{store.path / group / 'zarr.json'} records no "
                                                                    f"task (name, classes): restore it from a copy"))
            continue
        if vocab_group(task["name"]) != group or task.get("prompt_task", task["name"]) != task["name"]:
            problems.append(Problem(group, -1, (0, 0), "structure", f"it records task {task['name']}, whose rows "
                                                                    f"belong in {vocab_group(task['name'])}: the "
                                                                    f"folder was renamed or copied"))
        if "label" in store.columns(group) and not store.missing(group).get(f"{group}/label"):
            try:
                labels = np.asarray(store.column(group, "label"))
            except Exception:  # noqa: BLE001 - a damaged column is its shard's finding
                continue
            bad = labels[(labels < 0) | (labels >= len(task["classes"]))]
            if bad.size:
                problems.append(Problem(f"{group}/label", -1, (0, 0), "structure",
                                        f"labels {sorted(set(bad.tolist()))[:5]} are not classes of task "
                                        f"{task['name']} (0..{len(task['classes']) - 1})"))
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
        "tasks": store.tasks(),
        "complete": not missing,
        "missing_shards": {name: len(shards) for name, shards in missing.items()},
        "bytes_on_disk": bytes_on_disk(store),
        "actstore_version": store._root.attrs.get("actstore_version"),
        "extra": spec["extra"],
    }
