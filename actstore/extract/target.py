"""The store an extraction writes: a new store, the store a `--resume` finishes (checked to be the same run: its
settings, model and tokenizer), or an existing store that a task's group is added to (with the store's own
settings), and the resume command each records.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict
from pathlib import Path

from actstore.options import layer_spec
from actstore.errors import InputError
from actstore.extract.inputs import ExtractConfig, Inputs, contexts_source, extract_task
from actstore.store.zarrstore import ActivationStore, StoreSpec, resume_command
from actstore.tasks.base import FIRST_LETTER, Task
from actstore.tasks.labels import PREFIX as LABELS_PREFIX


def open_store(cfg: ExtractConfig, source, config, layers: list[int], extra: dict, task: Inputs) -> ActivationStore:
    """A new store for this run, or (with --resume) the existing one, checked to be the same run: the same
    settings, model (the same GGUF bytes, folder or hub id and revision) and tokenizer."""
    model = str(Path(source.location) / source.gguf_file) if source.gguf_file else source.location
    spec = StoreSpec(model=model, revision=cfg.revision, d_model=config.hidden_size, layers=layers,
                     dtype=cfg.dtype, prompt_template=extract_task(cfg).template, shard_rows=cfg.shard_rows,
                     chunk_rows=min(1024, cfg.shard_rows), resume_command=extract_resume_command(cfg, source),
                     extra=extra)
    path = Path(cfg.out)
    if (path / "zarr.json").exists():
        if not cfg.resume:
            raise InputError(f"{path} already exists: pass --resume to finish it, or choose another --out")
        store = ActivationStore.open(path, mode="a")
        theirs, ours = _comparable(asdict(store.spec)), _comparable(asdict(spec))
        if theirs["identity"]["weights"] is None:  # extracted before model folders were hashed: not compared
            ours["identity"]["weights"] = None
        if {**theirs["identity"], "weights": None} == {**ours["identity"], "weights": None} and _nothing_written(store):
            # the folder's files changed before any shard was written (a damaged model, repaired): nothing here came
            # from the recorded files, so the store records the files it is now written from
            store._root.attrs["extra"] = store.spec.extra = {**store.spec.extra, "provenance": spec.extra["provenance"]}
            theirs["identity"]["weights"] = ours["identity"]["weights"]
        if theirs["identity"] != ours["identity"]:
            store.close()
            raise InputError(f"{path} was written from another model or tokenizer: stored {theirs['identity']}, now "
                             f"{ours['identity']}. Resume with the original model (`{resume_command(store)}`), or "
                             f"choose another --out")
        if theirs != ours:
            diff = {k: (theirs[k], ours[k]) for k in ours if theirs.get(k) != ours[k]}
            store.close()
            raise InputError(f"{path} was written by a different run; (stored, now) differ in {diff}. "
                             f"Resume with the original arguments, or choose another --out")
        return store
    store = ActivationStore.create(path, spec)
    if task.vocab_ids:
        store.add_group(task.vocab_group, rows=len(task.vocab_ids), attrs=_task_attrs(extract_task(cfg)))
    if task.windows:
        store.add_group("context", rows=len(task.windows) * task.context_length)
    return store


def _task_attrs(task: Task) -> dict:
    """What a task's own group records of its task (nothing for first_letter's `vocab`, as before tasks)."""
    return {} if task.name == FIRST_LETTER else {"task": task.identity(), "answers": list(task.answers)}


def adds_group(cfg: ExtractConfig, task: Task) -> bool:
    """Whether this run adds (or resumes) a task's group in an existing store, rather than making (or resuming)
    the store itself: the store exists and either lacks the task's group or holds it as an added group. Then the
    store's dtype, shard size and layers are this run's (given otherwise: refused), and it computes no contexts."""
    path = Path(cfg.out)
    if not (path / "zarr.json").exists():
        return False
    with ActivationStore.open(path, require_complete=False) as store:
        if not store.groups or (task.group in store.groups and not store.group_attrs(task.group).get("resume_command")):
            return False
        spec, layers = store.spec, store.layers
    adds = f"--task {task.name} adds its own rows to the existing store {path}"
    if cfg.contexts is not None or cfg.no_vocab:
        raise InputError(f"{adds} (its contexts, if any, serve every task): drop "
                         f"{'--contexts' if cfg.contexts is not None else '--no-vocab'}")
    for flag, given, held in (("--dtype", cfg.dtype, spec.dtype), ("--shard-rows", cfg.shard_rows, spec.shard_rows)):
        if given is not None and given != held:
            raise InputError(f"{adds}, whose {flag} is {held}; got {flag} {given}: leave it out (or give {held})")
    cfg.dtype, cfg.shard_rows = spec.dtype, spec.shard_rows
    if cfg.layers == "all":  # the store's layers: every group of a store holds the same layers
        cfg.layers = ",".join(map(str, layers))
    if layer_spec("--layers", cfg.layers) != layers:
        raise InputError(f"{adds}, which holds layers {','.join(map(str, layers))}; got --layers {cfg.layers}: every "
                         f"group of a store holds its layers (leave --layers out)")
    policy = (spec.extra.get("bos") or {}).get("policy")
    if policy is not None and policy != cfg.bos:
        raise InputError(f"{adds}, extracted with --bos {policy}; got --bos {cfg.bos}: the rows of one store share "
                         f"one BOS policy (pass --bos {policy})")
    return True


def add_group(cfg: ExtractConfig, source, layers: list[int], extra: dict, inputs: Inputs,
              task: Task) -> ActivationStore:
    """The existing store with the task's group added (or, when it is there, checked to be this run's, to resume
    it). The group records its task, its run's settings and its own resume command; nothing else is written."""
    path = Path(cfg.out)
    store = ActivationStore.open(path, mode="a")
    theirs, ours = _comparable(asdict(store.spec))["identity"], _comparable({**asdict(store.spec), "extra": extra,
                                                                            "model": _model_name(source)})["identity"]
    if theirs["weights"] is None:  # extracted before model folders were hashed: not compared
        ours["weights"] = None
    if theirs != ours:
        store.close()
        raise InputError(f"{path} was extracted from another model or tokenizer: stored {theirs}, now {ours}. Add "
                         f"--task {task.name} with the store's model (`{resume_command(store)}` names it)")
    keys = ("seed", "max_vocab", "batch_size", "bos", "vocab_rows", "vocab_dropped", "vocab_alphabetic", "vocab_drops")
    attrs = {**_task_attrs(task), "extract": {k: extra.get(k) for k in keys},
             "resume_command": extract_resume_command(cfg, source)}
    group = inputs.vocab_group
    if group not in store.groups:
        store.add_group(group, rows=len(inputs.vocab_ids), attrs=attrs)
        return store
    held = store.group_attrs(group)
    diff = {k: (held.get(k), attrs[k]) for k in ("task", "answers", "extract") if held.get(k) != attrs.get(k)}
    if diff:
        store.close()
        raise InputError(f"{path}'s group {group} was extracted by another run of --task {task.name}; (stored, now) "
                         f"differ in {diff}. Finish it with the original arguments (`{held.get('resume_command')}`)")
    return store


def _model_name(source) -> str:
    """The model as the store records it: a GGUF file's path, else the folder or hub id."""
    return str(Path(source.location) / source.gguf_file) if source.gguf_file else source.location


def _nothing_written(store: ActivationStore) -> bool:
    """No shard of any array of the store is complete."""
    missing = sum(len(shards) for shards in store.missing().values())
    return missing == sum(store.num_shards(group) * len(store.arrays(group)) for group in store.groups)



def _comparable(spec: dict) -> dict:
    """A store spec as a resume compares it: without the resume command or the model as typed, and the
    model reduced to its identity (a GGUF file by its bytes, so it may move)."""
    spec = {**spec, "extra": dict(spec["extra"])}
    spec["extra"]["contexts"] = contexts_source(spec["extra"].get("contexts"))  # stores recorded it as typed
    prov = spec["extra"].pop("provenance", None) or {}
    spec.pop("resume_command")
    model = spec.pop("model")
    spec["identity"] = {"model": prov.get("gguf_sha256") and f"GGUF sha256 {prov['gguf_sha256'][:16]}" or model,
                        "revision": prov.get("revision"), "tokenizer": prov.get("tokenizer"),
                        "weights": prov.get("folder_sha256")}
    return spec


def extract_resume_command(cfg: ExtractConfig, source) -> str:
    """The command that finishes this store, valid from any working folder (absolute paths)."""
    quote = shlex.quote
    args = [f"actstore extract {source.as_args()} --layers {quote(cfg.layers)} --out {quote(str(Path(cfg.out).resolve()))}"]
    if cfg.contexts is not None:
        args.append(f"--contexts {quote(contexts_source(cfg.contexts))}")
    if cfg.max_vocab is not None:
        args.append(f"--max-vocab {cfg.max_vocab}")
    if cfg.contexts:
        args.append(f"--context-rows {cfg.context_rows} --context-length {cfg.context_length}")
    if cfg.no_vocab:
        args.append("--no-vocab")
    if cfg.task != FIRST_LETTER:
        name = cfg.task
        if name.startswith(LABELS_PREFIX):  # the label file as an absolute path: valid from any folder
            name = LABELS_PREFIX + str(Path(name[len(LABELS_PREFIX):]).expanduser().resolve())
        args.append(f"--task {quote(name)}" + (f" --template {quote(cfg.template)}" if cfg.template is not None else ""))
    args.append(f"--batch-size {cfg.batch_size} --shard-rows {cfg.shard_rows} --seed {cfg.seed} --dtype {cfg.dtype} "
                f"--bos {cfg.bos} --max-dropped {cfg.max_dropped}")
    return " ".join(args) + " --resume"
