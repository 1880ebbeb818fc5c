"""Every command's arguments, checked in one place before any work starts (cli.main calls `check`). It is
longer than most modules on purpose: one module holds every check, so none hides inside a worker.

A bad argument raises BadArgument with one line: what was given, what was expected, what to do; the CLI
prints it and exits 2. Nothing here loads a model, starts Ray or reads activations: checks are cheap (a
directory listing, a TCP connect with a short timeout, a tiny tensor on the chosen device).

    check("score", cfg)                    # raises BadArgument: the config's typed choices (its Literal
                                           # fields, `choices`), then the command's own checks
    read_list("saes.txt")                  # the SPECs of an @list file, relative paths resolved
    layer_spec("--layers", "0-3,5")        # [0, 1, 2, 3, 5]; "all" -> None
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

from actstore.errors import InputError


class BadArgument(InputError):
    """An argument that cannot work; the message is one line saying what was expected and what to do."""


# ---------------------------------------------------------------------------- numbers and choices


def integer(name: str, value: int | None, low: int = 1, what: str = "") -> None:
    """`value` (when given) is an integer >= low."""
    if value is not None and value < low:
        kind = "a positive integer" if low == 1 else "an integer >= 0" if low == 0 else f"an integer >= {low}"
        raise BadArgument(f"{name} {value}: expected {kind}{what}")


def fraction(name: str, value: float | None, closed: bool = False) -> None:
    """`value` (when given) is in [0, 1) (or [0, 1] when `closed`)."""
    if value is not None and not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise BadArgument(f"{name} {value}: expected a fraction in [0, {'1]' if closed else '1)'}")


def positive_number(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise BadArgument(f"{name} {value}: expected a positive number")


def choice(name: str, value: str | None, allowed) -> None:
    if value is not None and value not in allowed:
        raise BadArgument(f"{name} {value!r}: expected one of {', '.join(sorted(allowed))}")


def literal_choices(kind) -> tuple | None:
    """The values a field's type allows when it is a typing.Literal (or X | None, or a list of one): None otherwise."""
    import typing

    args = [a for a in typing.get_args(kind) if a is not type(None)] if typing.get_origin(kind) in (
        typing.Union, __import__("types").UnionType) else [kind]
    if len(args) == 1 and typing.get_origin(args[0]) in (list, tuple):
        args = [typing.get_args(args[0])[0]]
    return typing.get_args(args[0]) if len(args) == 1 and typing.get_origin(args[0]) is typing.Literal else None


def choices(cfg) -> None:
    """Every field of a command's config typed as a Literal holds one of its values (for a list, each item):
    the one check of the typed choices, which come from the registries (scorer backends, L1 solvers, metric
    versions, nulls, causal answer tokens)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        allowed = literal_choices(hints[f.name])
        if allowed is None:
            continue
        value = getattr(cfg, f.name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            choice(f"--{f.name.replace('_', '-')}", item, allowed)


def task_spec(name: str, spec: str, template: str | None = None):
    """A task the registry knows (actstore.tasks.registry): a built-in name or labels:FILE; returns it."""
    from actstore.tasks.registry import get_task

    try:
        return get_task(spec, template)
    except InputError as err:
        raise BadArgument(str(err)) from None


MAX_LAYER = 9999
"""the largest block index a --layers spec may name (the deepest models have a few hundred blocks)"""


def physical_memory() -> int:
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def layer_spec(name: str, spec: str | None) -> list[int] | None:
    """'0,5,12', '0-25' (ascending) or 'all' (None) -> sorted layers; anything else is BadArgument."""
    if spec is None or spec.strip() == "all":
        return None
    layers: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise BadArgument(f"{name} {spec!r}: expected layers as a list (0,5,12), an ascending range (0-25) "
                              f"or all; {part.strip()!r} is none of these")
        lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if hi < lo:
            raise BadArgument(f"{name} {spec!r}: the range {lo}-{hi} runs backwards; write {hi}-{lo}")
        if hi > MAX_LAYER:  # checked before the range is expanded: 0-999999999 would fill the memory
            raise BadArgument(f"{name} {spec!r}: layer {hi} is beyond any model's blocks (at most {MAX_LAYER} here); "
                              f"name the layers the model or store has")
        layers.update(range(lo, hi + 1))
    return sorted(layers)


def widths(name: str, spec: str | None) -> None:
    from actstore.saes.loading import parse_width

    for width in (spec or "").split(",") if spec is not None else []:
        try:
            if parse_width(width.strip()) <= 0:
                raise ValueError
        except ValueError:
            raise BadArgument(f"{name} {spec!r}: expected widths such as 16k,65k,1m or 2048; "
                              f"{width.strip()!r} is not one") from None


# ---------------------------------------------------------------------------- paths


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


def read_list(path: str) -> list[str]:
    """The SPECs of an @list file: one per line; `#` comments, blank lines, CRLF and surrounding spaces are
    ignored; a relative path is resolved against the list's own folder. A line that names nothing (no file
    or folder there, not a catalog release) is BadArgument quoting its line number."""
    p = Path(path)
    if not p.is_file():
        what = "a folder" if p.is_dir() else "no such file"
        raise BadArgument(f"--saes @{path}: {what}; expected a text file listing one SAE source per line")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise BadArgument(f"--saes @{path}: cannot be read as UTF-8 text ({err}); expected one SAE source per "
                          f"line") from None
    specs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        local = Path(os.path.expanduser(line))
        local = local if local.is_absolute() else p.parent / local
        if local.exists():
            specs.append(str(local))
        elif _is_catalog_name(line):
            specs.append(line)
        else:
            raise BadArgument(f"--saes @{path}, line {number}: {line!r} names nothing (no file or folder {local}, "
                              f"no catalog release); expected a params.npz, a folder of them, a saved sae-lens "
                              f"folder or RELEASE[/ID-PREFIX]")
    if not specs:
        raise BadArgument(f"--saes @{path}: names no SAE (only blank or comment lines); expected one SAE source "
                          f"per line")
    return specs


def _is_catalog_name(spec: str) -> bool:
    from actstore.saes.loading import releases

    try:
        return spec.partition("/")[0] in releases()
    except KeyError:  # no sae-lens: no catalog
        return False


def sae_specs(specs: list[str]) -> None:
    """--saes entries: @lists readable and naming something; a file that is not a params.npz refused (a
    missing path fails that SAE alone, when the run reports)."""
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


# ---------------------------------------------------------------------------- devices and clusters


def device(name: str, value: str | None) -> str:
    """A device that exists here: cpu, cuda or cuda:N (N < the GPU count), mps where available; returns it
    (auto and None become cuda when available, else cpu)."""
    import torch

    if value in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cpu":
        return value
    match = re.fullmatch(r"cuda(?::(\d+))?", value)
    if match:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BadArgument(f"{name} {value}: this machine has no CUDA GPU visible to torch; use {name} cpu")
        if match[1] is not None and int(match[1]) >= count:
            raise BadArgument(f"{name} {value}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
        return value
    if value == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return value
    raise BadArgument(f"{name} {value!r}: expected cpu, cuda or cuda:N (a device this machine has)")


def dtype_on_device(name: str, dtype: str | None, dev: str) -> None:
    """The dtype exists and the operations the scorer and extractor use run in it on the device."""
    import torch

    if dtype is None:
        return
    choice(name, dtype, {"float32", "bfloat16", "float16"})
    t = getattr(torch, dtype)
    try:
        x = torch.ones(4, 8, dtype=t, device=dev)
        w = torch.ones(8, 16, dtype=t, device=dev)
        pre = torch.addmm(torch.zeros(16, dtype=t, device=dev), x, w)
        (pre * (pre > 0)).nonzero()
        pre.topk(2, dim=-1)
    except (RuntimeError, TypeError) as err:
        raise BadArgument(f"{name} {dtype} does not work on {dev} here ({str(err).splitlines()[0]}); use "
                          f"{name} float32") from None


def ray_address(name: str, address: str | None, timeout: float = 3.0) -> None:
    """A Ray cluster answers at `address` (host:port, ray://host:port, or auto: the running local cluster)
    within `timeout` seconds."""
    if address in (None, "local"):
        return
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS") or ""
        current = Path("/tmp/ray/ray_current_cluster")
        if not target and current.is_file():
            target = current.read_text().strip()
        if not target:
            raise BadArgument(f"{name} auto: no Ray cluster is running on this machine (start one with `ray start "
                              f"--head`, or leave {name} out to start a private one)")
    match = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", target)
    if not match:
        raise BadArgument(f"{name} {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout).close()
    except OSError as err:
        raise BadArgument(f"{name} {address}: no Ray cluster answers at {match[1]}:{match[2]} within {timeout:g} s "
                          f"({err.strerror or err}); start it (`ray up cluster.yaml`) or check the address") from None


def workers_placeable(name: str, workers: int | None, dev: str, address: str | None) -> None:
    """On this machine (no --address), each worker needs a GPU (cuda) or a CPU core: more cannot be placed
    and would wait forever. A cluster is checked once joined (its resources are unknown until then)."""
    import torch

    if not workers or address not in (None, "local"):
        return
    if dev.startswith("cuda"):
        have, what = torch.cuda.device_count(), "GPUs"
    else:
        have, what = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(), "CPU cores"
    if workers > have:
        raise BadArgument(f"{name} {workers}: this machine has {have} {what}, one per worker; use {name} {have} "
                          f"or fewer")


# ---------------------------------------------------------------------------- per command


def check(command: str, cfg) -> None:
    """Check a command's config: its typed choices, then the command's own checks; raises BadArgument."""
    choices(cfg)
    CHECKS[command](cfg)


def _extract(cfg) -> None:
    writable_folder("--out", cfg.out)
    store = enclosing_store(Path(cfg.out).parent)
    if store is not None:
        raise BadArgument(f"--out {cfg.out}: lies inside the store {store}; a store cannot hold another, choose a "
                          f"path outside it")
    model = cfg.model
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or model.endswith(".gguf") or Path(model).exists():
        p = Path(os.path.expanduser(model))
        if not (p.is_dir() or (p.is_file() and p.suffix == ".gguf")):
            raise BadArgument(f"--model {model}: no such local model folder or .gguf file; expected a Hugging Face "
                              f"id (org/name), a folder with config.json, or a .gguf file")
        if cfg.gguf_file is not None and not (p / cfg.gguf_file).is_file():
            raise BadArgument(f"--gguf-file {cfg.gguf_file}: not a file in {model}; name a .gguf file inside the "
                              f"--model folder")
    choice("--bos", cfg.bos, {"auto", "always", "never"})
    task = extract_task(cfg)
    if cfg.no_vocab and task.name != "first_letter":
        raise BadArgument(f"--no-vocab stores contexts only, and --task {task.name} asks for that task's vocabulary "
                          f"rows: drop one of them")
    fraction("--max-dropped", cfg.max_dropped, closed=True)
    positive_number("--log-interval", cfg.log_interval)
    if cfg.no_vocab and cfg.contexts is None:
        raise BadArgument("--no-vocab stores contexts only, and no --contexts was given: nothing to store; pass "
                          "--contexts FILE (or drop --no-vocab)")
    layer_spec("--layers", cfg.layers)
    if cfg.contexts is not None and not cfg.contexts.startswith("hf:") and not Path(cfg.contexts).exists():
        raise BadArgument(f"--contexts {cfg.contexts}: no such file or folder; expected a .txt/.jsonl file, a "
                          f"folder of them, or hf:DATASET[:SPLIT]")
    for name, value, low in (("--context-rows", cfg.context_rows, 0), ("--context-length", cfg.context_length, 1),
                             ("--workers", cfg.workers, 1), ("--batch-size", cfg.batch_size, 1),
                             ("--shard-rows", cfg.shard_rows, 1), ("--seed", cfg.seed, 0),
                             ("--max-vocab", cfg.max_vocab, 1), ("--in-flight", cfg.in_flight, 1)):
        integer(name, value, low)
    dev = device("--device", cfg.device)
    dtype_on_device("--dtype", cfg.dtype, dev)
    ray_address("--address", cfg.address)
    workers_placeable("--workers", cfg.workers, dev, cfg.address)


def _score(cfg) -> None:
    existing_store("STORE", cfg.store)
    task_spec("--task", cfg.task, cfg.template)
    writable_folder("--out", cfg.out)
    outside_stores("--out", cfg.out)
    sae_specs(cfg.saes)
    release("--release", cfg.release)
    layer_spec("--layers", cfg.layers)
    widths("--widths", cfg.widths)
    integer("--layer", cfg.layer, 0)
    dev = device("--device", cfg.device)
    dtype_on_device("--dtype", cfg.dtype, dev)
    if cfg.backend == "triton" and not dev.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        raise BadArgument(f"--backend triton: the fused kernel runs on CUDA, and --device is {dev}; use --backend "
                          f"torch (or auto) here")
    fraction("--min-probe-f1", cfg.min_probe_f1, closed=True)
    fraction("--max-dead-share", cfg.max_dead_share, closed=True)
    _metric_options(cfg)
    integer("--workers", cfg.workers, 0)
    integer("--group-size", cfg.group_size, 1)
    positive_number("--memory-gb", cfg.memory_gb)
    ray_address("--address", cfg.address)
    if not cfg.local:
        workers_placeable("--workers", cfg.workers, dev, cfg.address)
    if cfg.memory_gb is not None and not dev.startswith("cuda") and cfg.memory_gb * 2**30 > physical_memory():
        raise BadArgument(f"--memory-gb {cfg.memory_gb}: this machine has {physical_memory() / 2**30:.1f} GB of RAM; "
                          f"give less (the default is a third of it)")
    _score_against_store(cfg)


BOOTSTRAP_BYTES = (16, 72)
"""bytes per bootstrap replicate, per token of the largest class and per class (measured: uncertainty.py holds
two (replicates, tokens) arrays of one class at a time and a few (replicates, classes) ones; NOTES.md)"""


def _score_against_store(cfg) -> None:
    """--layers and --bootstrap against what the store holds and what the memory takes."""
    import numpy as np

    from actstore.store.zarrstore import ActivationStore, _ranges

    with ActivationStore.open(cfg.store) as store:  # an incomplete store is refused here, saying how to resume
        wanted = layer_spec("--layers", cfg.layers)
        if wanted is not None and not set(wanted) & set(store.layers):
            raise BadArgument(f"--layers {cfg.layers}: the store {cfg.store} holds layers {_ranges(store.layers)} "
                              f"only; name some of those")
        the_task = task_spec("--task", cfg.task, cfg.template)
        group = the_task.group
        if group != "vocab" and group not in store.groups:
            raise BadArgument(f"--task {cfg.task}: the store {cfg.store} holds no rows of its prompt (group {group}); "
                              f"extract them with `actstore extract --task {cfg.task} ... --out {cfg.store} --resume`")
        if cfg.bootstrap and the_task.relabels and "text" in store.columns(group):
            labels = np.array([-1 if (c := the_task.label(str(t))) is None else c for t in store.column(group, "text")])
        elif cfg.bootstrap and "label" in store.columns(group):
            labels = np.asarray(store.column(group, "label"))
        else:
            labels = None
        if labels is not None:
            counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(1, int)
            need = cfg.bootstrap * (BOOTSTRAP_BYTES[0] * int(counts.max()) + BOOTSTRAP_BYTES[1] * len(counts))
            have = physical_memory() / 4
            if need > have:
                raise BadArgument(f"--bootstrap {cfg.bootstrap}: the intervals would take about {need / 2**30:.1f} GB "
                                  f"on this store (its largest class has {int(counts.max())} tokens), more than a "
                                  f"quarter of this machine's {physical_memory() / 2**30:.0f} GB; use --bootstrap "
                                  f"{int(have // (need / cfg.bootstrap))} or fewer (the default is 1000)")


def _metric_options(cfg) -> None:
    """The scorer's numeric options (its choices are Literal fields, checked by `choices`)."""
    integer("--seeds", cfg.seeds, 1)
    integer("--min-classes", cfg.min_classes, 1, " (SAEBench's floor is 20 of 26 letters)")
    integer("--bootstrap", cfg.bootstrap, 0, " (0: no intervals)")
    _causal_options(cfg)


def _causal_options(cfg) -> None:
    """--causal-*: the sample size and seed; with --causal, the store must record a model that is here."""
    integer("--causal-samples", cfg.causal_samples, 1)
    integer("--causal-seed", cfg.causal_seed, 0)
    if cfg.causal:
        causal_store("--causal", cfg.store)


def causal_store(name: str, path: str) -> None:
    """The store records the model it was extracted from (`actstore extract` does), and a local model is still
    where the record says (a hub model is looked up when it loads)."""
    from actstore.score.causal import CausalError, check_weights, recorded_source
    from actstore.store.zarrstore import ActivationStore

    with ActivationStore.open(path) as store:
        try:
            source, extra = recorded_source(store)
            if source.kind in ("folder", "gguf"):
                where = Path(source.location) / (source.gguf_file or "")
                if not where.exists():
                    raise BadArgument(f"{name}: the store {path} was extracted from {where}, which is not there any "
                                      f"more; the causal metric runs that model (put it back, or extract the store "
                                      f"again)")
                check_weights(store, source, extra)
        except CausalError as err:
            raise BadArgument(f"{name}: {err}") from None


def _synth_saes(cfg) -> None:
    existing_store("--store", cfg.store)
    integer("--layer", cfg.layer, 0)
    writable_folder("--out", cfg.out)
    outside_stores("--out", cfg.out)
    for value in cfg.absorption:
        fraction("--absorption", value)
    for value in cfg.splits:
        integer("--splits", value, 2, " (latents covering one letter)")
    integer("--width", cfg.width, 1)
    fraction("--min-split-share", cfg.min_split_share)
    integer("--seed", cfg.seed, 0)


def _report(cfg) -> None:
    results = Path(cfg.results)
    if not results.is_dir() or not ((results / "saes.parquet").is_file() or (results / "parts").is_dir()):
        raise BadArgument(f"RESULTS {cfg.results}: not a results folder of `actstore score` (no saes.parquet or "
                          f"parts/ inside); run `actstore score STORE --out {cfg.results}` first")
    if cfg.out is not None:
        writable_folder("--out", cfg.out)
        outside_stores("--out", cfg.out)


def relabel_message(task) -> str:
    """The one line for `extract --task` of a task that relabels another's rows."""
    return (f"--task {task.name} relabels {task.prompt_task}'s rows (the same prompt, the same activations): it needs "
            f"no extraction of its own; extract {task.prompt_task} if the store lacks it, then run `actstore probe "
            f"STORE --task {task.name}` and `actstore score STORE --task {task.name} ...`")


def extract_task(cfg):
    """The task of `extract --task` (and --template): one the registry knows, with its own prompt (a task that
    relabels another's rows needs no extraction: the line says what to run instead)."""
    task = task_spec("--task", cfg.task, cfg.template)
    if task.relabels:
        raise BadArgument(relabel_message(task))
    return task


def _probe(cfg) -> None:
    existing_store("STORE", cfg.store)
    task_spec("--task", cfg.task, cfg.template)
    layer_spec("--layers", cfg.layers)
    integer("--epochs", cfg.epochs, 1)
    integer("--seed", cfg.seed, 0)


def _saes(cfg) -> None:
    choice("ACTION", cfg.action, {"list"})
    release("--release", cfg.release)
    integer("--layer", cfg.layer, 0)
    widths("--width", cfg.width)


def _synth_model(cfg) -> None:
    writable_folder("--out", cfg.out)
    outside_stores("--out", cfg.out)
    integer("--layers", cfg.layers, 1)
    integer("--seed", cfg.seed, 0)
    if getattr(cfg, "spelling", False) and cfg.layers < 2:
        raise BadArgument(f"--spelling --layers {cfg.layers}: the spelling head sits in the last block and the causal "
                          f"metric hooks a block before it; use --layers 2 or more")


def _demo(cfg) -> None:
    writable_folder("--out", cfg.out)
    outside_stores("--out", cfg.out)
    integer("--seed", cfg.seed, 0)


CHECKS = {
    "extract": _extract, "synth-model": _synth_model, "probe": _probe, "saes": _saes, "synth-saes": _synth_saes,
    "score": _score, "report": _report, "explore": _report, "info": lambda cfg: existing_store("STORE", cfg.store),
    "verify": lambda cfg: existing_store("STORE", cfg.store), "demo": _demo,
}


def failure_line(err: BaseException) -> str:
    """One line for a run that stopped: Ctrl-C, a full disk, another OS error, a worker's failure. What was
    written before is whole (atomic renames, per-shard markers), so rerunning resumes."""
    import errno

    if isinstance(err, KeyboardInterrupt):
        return "interrupted; what finished is kept: run the same command again to resume"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        return f"error: no space left on the device{where}; free space, then run the same command again to resume"
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        return f"error: {err.strerror or err}{where}; fix that, then run the same command again to resume"
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"error: {detail}"
