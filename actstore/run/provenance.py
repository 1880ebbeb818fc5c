"""Where a result came from: the store's identity, the probe's identity and every option that changes a
number. Each part of a results folder records it; a rerun recomputes a part whose provenance differs.

    prov = Provenance(store, cfg, device, task)  # one per run (driver) or per worker, for one task
    prov.of(layer) -> dict              # {"store": ..., "probe": ..., "options": {...}, "task": {...}}
    stale_reason(record, expected)      # None when the part can be reused, else why it is recomputed
    part_done(out, source, prov, task)  # whether RESULTS holds a part of this SAE and task that holds

The store's identity for a layer is a digest of the store's attributes and of the manifest markers of the
arrays the scorer reads for the task (its vocabulary group and context: the layer, label and split), which
record each shard's crc32c: another store, a re-extracted layer or a swapped shard changes it, and another
task's group extracted beside it does not. The probe's identity is the sha256 of the task's probe weights. The
task's identity is `task.identity()` (a part written before tasks records none: it is first_letter's).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from actstore.run.results import part_name, read_part
from actstore.run.tokens import tokens_path
from actstore.score.probes import load_probe
from actstore.store import manifest
from actstore.store.format import layer_name
from actstore.store.saved_probes import probe_digest
from actstore.tasks.base import Task
from actstore.tasks.builtin import FIRST_LETTER_TASK

CONTEXT_GROUP = "context"


class Provenance:
    """The provenance of results scored against one store with one command's options."""

    def __init__(self, store, cfg, device: str, task: Task = FIRST_LETTER_TASK):
        import actstore

        self.store, self.task = store, task
        self.identity = json.loads(json.dumps(task.identity()))
        score_cfg = dataclasses.asdict(cfg.score_config())
        for field in ("token_chunk", "latent_chunk"):  # tiling: the same numbers, bit for bit
            score_cfg.pop(field)
        if score_cfg.get("causal") is None:  # parts scored before --causal existed stay valid
            score_cfg.pop("causal", None)
        kind = device.split(":")[0]
        if kind != "cuda" and score_cfg["backend"] == "torch":
            score_cfg["backend"] = "auto"  # off CUDA, auto is the torch backend: the same numbers
        dtype = score_cfg.pop("encode_dtype")  # recorded once, as options' dtype; the torch backend computes in
        if kind != "cuda" or score_cfg["backend"] == "torch":  # fp32 whatever --dtype says: parts stay valid
            dtype = "float32"
        options = {"dtype": dtype, "device": kind, "score": score_cfg,
                   "actstore_version": actstore.__version__}
        self.options = json.loads(json.dumps(options))  # as a part stores them: tuples become lists
        self._layers: dict = {}

    def of(self, layer: int | None) -> dict:
        """Provenance of a part scored at `layer` (None: the layer was unknown, nothing was read)."""
        if layer not in self._layers:
            self._layers[layer] = {"store": self._store_digest(layer), "probe": self._probe_digest(layer),
                                   "options": self.options, "task": self.identity}
        return self._layers[layer]

    def _store_digest(self, layer: int | None) -> str | None:
        store = self.store
        if layer is None or layer not in store.layers:
            return None
        spec = {k: v for k, v in dataclasses.asdict(store.spec).items() if k not in ("resume_command", "extra")}
        parts = [spec]
        read = {self.task.group, CONTEXT_GROUP}  # what the scorer reads: another task's group changes nothing here
        for group in sorted(g for g in store.groups if g in read):
            for array in (layer_name(layer), "label", "split"):
                if array in store.arrays(group):
                    parts.append([group, array, sorted(manifest.read_markers(store.path / group / array).items())])
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def _probe_digest(self, layer: int | None) -> str | None:
        """The sha256 of the task's probe weights (what save_probe records as the probe's `sha256`)."""
        if layer is None:
            return None
        try:
            probe = load_probe(self.store, layer, self.task)
        except KeyError:
            return None
        return probe_digest(probe.weight.numpy(), probe.bias.numpy())


def stale_reason(record: dict, expected: dict) -> str | None:
    """Why a finished part's numbers do not hold for this run (None: they do)."""
    found = record.get("provenance")
    if found is None:
        return "it records no provenance (written by an older actstore)"
    why = []
    if found.get("task", FIRST_LETTER_TASK.identity()) != expected.get("task", FIRST_LETTER_TASK.identity()):
        why.append("another definition of the task")
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


def redo_reason(out, source, provenance: Provenance | None = None, task: Task | None = None) -> str | None:
    """None when RESULTS holds a part of this SAE and task (default: the provenance's, else first_letter) whose
    numbers hold for this run; else why it is computed: '' (never scored), a failure to retry, a torn or
    unreadable part (named), a changed SAE file, or another store, probe, task or options."""
    task = task or (provenance.task if provenance is not None else FIRST_LETTER_TASK)
    path = out / "parts" / part_name(source.key, task)
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


def part_done(out, source, provenance: Provenance | None = None, task: Task | None = None) -> bool:
    """Whether RESULTS already holds a successful score of this SAE on the task (same file, when it is a file;
    the same store, probe, task and options, when `provenance` is given): see redo_reason."""
    return redo_reason(out, source, provenance, task) is None
