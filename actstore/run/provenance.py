"""Where a result came from: the store's identity, the probe's identity and every option that changes a
number. Each part of a results folder records it; a rerun recomputes a part whose provenance differs.

    prov = Provenance(store, cfg)       # one per run (driver) or per worker
    prov.of(layer) -> dict              # {"store": ..., "probe": ..., "options": {...}}
    stale_reason(record, source, prov)  # None when the part can be reused, else why it is recomputed

The store's identity for a layer is a digest of the store's attributes and of the manifest markers of the
arrays the scorer reads (vocab and context: the layer, label and split), which record each shard's crc32c:
another store, a re-extracted layer or a swapped shard changes it. The probe's identity is the sha256 of its
weights (recorded when it was saved) or, for probes saved before that, of the weights themselves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from actstore.store import manifest


class Provenance:
    """The provenance of results scored against one store with one command's options."""

    def __init__(self, store, cfg, device: str):
        import actstore

        self.store = store
        score_cfg = dataclasses.asdict(cfg.score_config())
        for field in ("token_chunk", "latent_chunk"):  # tiling: the same numbers, bit for bit
            score_cfg.pop(field)
        if score_cfg.get("causal") is None:  # parts scored before --causal existed stay valid
            score_cfg.pop("causal", None)
        options = {"dtype": cfg.dtype, "device": device.split(":")[0], "score": score_cfg,
                   "actstore_version": actstore.__version__}
        self.options = json.loads(json.dumps(options))  # as a part stores them: tuples become lists
        self._layers: dict = {}

    def of(self, layer: int | None) -> dict:
        """Provenance of a part scored at `layer` (None: the layer was unknown, nothing was read)."""
        if layer not in self._layers:
            self._layers[layer] = {"store": self._store_digest(layer), "probe": self._probe_digest(layer),
                                   "options": self.options}
        return self._layers[layer]

    def _store_digest(self, layer: int | None) -> str | None:
        from actstore.store.zarrstore import layer_name

        store = self.store
        if layer is None or layer not in store.layers:
            return None
        spec = {k: v for k, v in dataclasses.asdict(store.spec).items() if k not in ("resume_command", "extra")}
        parts = [spec]
        for group in sorted(store.groups):
            for array in (layer_name(layer), "label", "split"):
                if array in store.arrays(group):
                    parts.append([group, array, sorted(manifest.read_markers(store.path / group / array).items())])
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def _probe_digest(self, layer: int | None) -> str | None:
        from actstore.store.zarrstore import probe_digest

        if layer is None:
            return None
        try:
            weight, bias, attrs = self.store.load_probe(layer)
        except KeyError:
            return None
        return attrs.get("sha256") or probe_digest(weight, bias)


def stale_reason(record: dict, expected: dict) -> str | None:
    """Why a finished part's numbers do not hold for this run (None: they do)."""
    found = record.get("provenance")
    if found is None:
        return "it records no provenance (written by an older actstore)"
    why = []
    if found.get("store") != expected["store"]:
        why.append("another store (or its data changed)")
    if found.get("probe") != expected["probe"]:
        why.append("another probe")
    if found.get("options") != expected["options"]:
        old, new = found.get("options") or {}, expected["options"]
        changed = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new if k != "score" and old.get(k) != new[k]]
        if old.get("score") != new["score"]:
            changed += [f"{k} {(old.get('score') or {}).get(k)!r} -> {v!r}" for k, v in new["score"].items()
                        if (old.get("score") or {}).get(k) != v]
        why.append("other options (" + ", ".join(changed) + ")")
    return "scored against " + " and ".join(why) if why else None


def redo_reason(out, source, provenance: Provenance | None = None) -> str | None:
    """None when RESULTS holds a part of this SAE whose numbers hold for this run; else why it is computed:
    '' (never scored), a failure to retry, a torn or unreadable part (named), a changed SAE file, or another
    store, probe or options."""
    from actstore.run.results import part_name, read_part
    from actstore.run.tokens import tokens_path

    path = out / "parts" / part_name(source.key)
    if not path.exists():
        return ""
    record = read_part(path)
    if record is None:
        return f"its part {path} is torn or unreadable"
    if record["summary"].get("status") not in ("ok", "flagged"):
        return "it failed before"
    found = record.get("fingerprint", "")
    if found != source.fingerprint:
        if found.count(":") == 1 and found.replace(":", "").isdigit():  # size:mtime, before content identities
            return "its part records only the file's size and time (an older actstore), not its content"
        return "its file changed"
    if not tokens_path(path).exists():
        return "it was scored before per-token records existed"
    if provenance is None:
        return None
    return stale_reason(record, provenance.of(source.layer if source.layer is not None else record.get("layer")))
