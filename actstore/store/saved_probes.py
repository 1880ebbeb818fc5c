"""A store's saved probes, one per task and layer: `probes/layer_LL` for first_letter, `probes/<task key>/layer_LL`
for any other task, each a weight (classes, d_model) and bias (classes,) in float32 with their metrics and a
sha256 of their bytes. Loading checks everything a copied, edited or half-deleted probe could get wrong, and
says how to retrain it.

`_ProbesMixin` is a part of `ActivationStore` (zarrstore.py): its methods use the store's `path`, `spec`, `_root`,
`_layer_array` and `_require_writable`.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from actstore.errors import MissingKey
from actstore.store.format import CODECS, StoreError, layer_name, probe_prefix
from actstore.store.integrity import _metadata_problem
from actstore.tasks.base import FIRST_LETTER, Task
from actstore.tasks.builtin import FIRST_LETTER_TASK


class _ProbesMixin:
    """`save_probe`, `load_probe` and `probe_layers` of `ActivationStore`."""

    def probe_layers(self, task: str | Task = FIRST_LETTER) -> list[int]:
        """The layers with a saved probe of a task (found on disk; `load_probe` checks each)."""
        folder = self.path / probe_prefix(task)
        if not folder.is_dir():
            return []
        found = {p.name.removeprefix("layer_") for p in folder.iterdir() if p.is_dir() and p.name.startswith("layer_")}
        return sorted(int(l) for l in found if l.isdigit() and int(l) in self.spec.layers)


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


def _train_command(path: Path, layer: int, task: Task | None, prefix: str = "probes") -> str:
    """'retrain it with `actstore probe STORE --layers L [--task T]`' for a probe of `task` (or under `prefix`)."""
    name = task.name if task is not None else None if prefix == "probes" else prefix.removeprefix("probes/")
    flag = "" if name in (None, FIRST_LETTER) else f" --task {shlex.quote(name)}"
    if task is not None and task.name.startswith("labels:") and not task.relabels:
        flag += f" --template {shlex.quote(task.template)}"
    return f"retrain it with `actstore probe {path} --layers {layer}{flag}`"



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
    digest = hashlib.sha256()
    for values in (weight, bias):
        digest.update(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return digest.hexdigest()
