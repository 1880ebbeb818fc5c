"""Checks of a store's metadata against itself, run as it is opened and as each array is first read: the root's
attributes against what every array's zarr.json holds, an array's zarr.json against the root's promises, a shard's
marker against the array it lies in, and any zarr.json that is not JSON. Each names the file at fault and how to
repair it (restore a file, set an attribute back, or delete shards and resume).

`_IntegrityMixin` is a part of `ActivationStore` (zarrstore.py): its methods use the store's layout
(`path`, `spec`, `mode`, `_group_meta`, `arrays`, `columns`, `_rows`, `_markers`, `shard_rows`, `shard_file`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from actstore.errors import InputError
from actstore.store.format import DTYPES, FORMAT_VERSION, CorruptShardError, StoreError, _ranges, layer_name


class _IntegrityMixin:
    """The checks `ActivationStore` runs on open (`_attribute_problem`) and on an array's first read
    (`_layout_problem`, `_foreign_shard`)."""

    def _attribute_problem(self) -> str | None:
        """An attribute of the root or a group zarr.json that is invalid, or that every array's zarr.json contradicts
        in the same way (d_model, dtype, rows): then the attribute was changed, not the arrays, and reading would
        blame their intact metadata (or an SAE's width). Checked once, on open, from the arrays' zarr.json read as
        JSON; one that cannot be read, or that disagrees alone, is left to `_array`, which names it."""
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
    if files is None:  # the probes' metadata is not the store's: load_probe names it
        files = [path / "zarr.json", *sorted(p for p in path.glob("*/zarr.json") if p.parent.name != "probes")]
    for meta in files:
        try:
            if not isinstance(json.loads(meta.read_bytes()), dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            return f"its metadata file {meta} is damaged ({err}); {advice}"
    return None
