"""The SAEs a score command names, found without reading any weights: folders of params.npz (Gemma Scope's
layout), params.npz files, saved sae-lens folders (one, or a folder of them), catalog names, @FILE lists; each becomes an SAESource with a
stable key (what RESULTS is keyed by), a content fingerprint and a loader.

    select_saes(cfg) -> [SAESource]          --saes, @lists and --release, filtered by --layers / --widths
    resolve_saes(specs, layer) -> [SAESource]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from actstore.errors import InputError, MissingFile
from actstore.options import BadArgument, layer_spec
from actstore.saes.loading import SAEError, SAEWeights, layer_and_l0_from_id, releases

if TYPE_CHECKING:  # the runner imports this module
    from actstore.run.runner import ScoreCommandConfig


@dataclass
class SAESource:
    """One SAE to score: a stable key, where it comes from, and how to load it."""

    key: str
    """unique and stable across runs: the results are keyed by it"""
    release: str
    """catalog release, or the folder it was found in"""
    name: str
    """id inside the release (for Gemma Scope: layer_12/width_16k/average_l0_82)"""
    load: Callable[[int | None, str, torch.dtype], SAEWeights] = field(repr=False)
    """(d_model, device, dtype) -> weights, converted once on loading; raises SAEError for a bad file"""
    layer: int | None = None
    fingerprint: str = ""
    """a local SAE's content identity (digests.py): a rewritten SAE is scored again, whatever its size and mtime"""
    width: int | None = None
    """latents, when known without loading"""
    nbytes: int = 0
    """about how many bytes its weights take in fp32 (the scheduler's memory plan)"""
    l0: float | None = None
    """the L0 its release reports (Gemma Scope: average_l0 in the id)"""


def fingerprint(path: Path) -> str:
    """The content identity of an SAE: a params.npz's zip CRCs, a folder's files' sha256 (cached per file)."""
    from actstore.store.digests import folder_sha256, npz_identity

    return f"folder:{folder_sha256(path)}" if path.is_dir() else npz_identity(path)


def resolve_saes(specs: list[str], layer: int | None = None, notes: list[str] | None = None) -> list[SAESource]:
    """Every SAE named by the specs, in order, without loading any weights. A params.npz that is a broken or
    looping link becomes an SAE that fails alone; a folder under a spec that is not searched (a loop, a second
    link to one folder, a broken link) is named in `notes` with why."""
    from actstore.saes import loading as saes

    out: list[SAESource] = []
    notes = [] if notes is None else notes
    for spec in specs:
        path = Path(spec)
        if path.is_dir() and (path / "params.npz").is_file() and not (path / "cfg.json").exists():
            path = path / "params.npz"  # one SAE's own folder: its layer and id come from the path as below
        if path.is_file() and path.name.endswith(".npz"):
            parts = path.resolve().parent.parts  # id from the layer_N folder on, as in Gemma Scope's layout
            start = max((i for i, p in enumerate(parts) if p.startswith("layer_")), default=len(parts) - 1)
            found, root = [("/".join(parts[start:]), path)], Path(*parts[:start])
        elif path.is_dir() and (path / "cfg.json").exists():
            out.append(_sae_lens_source(path, layer))
            continue
        elif path.is_dir():
            skipped: list = []
            found, root = saes.local_saes(path, skipped), path
            try:
                saved = sorted(p for p in path.iterdir() if p.is_dir() and (p / "cfg.json").is_file())
            except OSError:  # an unreadable folder: local_saes has noted it
                saved = []
            out += [_sae_lens_source(p, layer) for p in saved]  # a folder of saved sae-lens folders, one level
            for where, why, sae_id in skipped:
                if sae_id is None:
                    notes.append(f"not searched under {spec}: {where} is {why}")
                    continue
                id_layer, l0 = layer_and_l0_from_id(sae_id)
                out.append(SAESource(str(where.parent.absolute()), path.resolve().name, sae_id,
                                     lambda d_model, device, dtype, where=where, why=why:
                                     _fail(f"SAE {where}: {why}"),
                                     id_layer if id_layer is not None else layer, "", l0=l0))
            if not found and not skipped and not saved:
                bare = " (it has sae_weights.safetensors but no cfg.json: an sae-lens folder needs both)" \
                    if (path / "sae_weights.safetensors").exists() else ""
                raise MissingFile(f"{path} holds no params.npz files and no saved sae-lens folders{bare}; expected "
                                  f"Gemma Scope's layout (layer_12/width_16k/average_l0_82/params.npz) or folders "
                                  f"written by sae-lens's save_model or save_inference_model (cfg.json and "
                                  f"sae_weights.safetensors)")
        elif spec.partition("/")[0] not in saes.releases():  # a path that is not there: that SAE fails alone
            def missing(d_model, device, dtype, spec=spec):
                hint = "" if spec.startswith(("/", ".")) or spec.endswith(".npz") else \
                    f", and {spec.partition('/')[0]!r} is not a release of the sae-lens catalog (`actstore saes list`)"
                if Path(spec).is_symlink():
                    raise SAEError(f"SAE {spec}: {saes.link_problem(Path(spec))}")
                raise SAEError(f"SAE {spec}: no such file or folder{hint}")
            out.append(SAESource(str(path.absolute()), path.absolute().parent.name, path.name, missing, layer))
            continue
        else:
            release, _, prefix = spec.partition("/")
            entries = [e for e in saes.gemma_scope_catalog(release) if e.id.startswith(prefix)]
            if not entries:
                raise InputError(f"no SAE of {release} has an id starting with {prefix!r}; see `actstore saes list "
                                 f"--release {release}`")
            for e in entries:
                out.append(SAESource(f"{e.release}/{e.id}", e.release, e.id,
                                     lambda d_model, device, dtype, e=e: saes.load_catalog_entry(e, d_model, dtype, device),
                                     e.layer, width=e.width, nbytes=e.width * 2304 * 2 * 4, l0=e.l0))
            continue
        for sae_id, npz in found:
            id_layer, l0 = layer_and_l0_from_id(sae_id)
            out.append(SAESource(str(npz.parent.resolve()), root.resolve().name, sae_id,
                                 lambda d_model, device, dtype, npz=npz, sae_id=sae_id, lay=id_layer, l0=l0:
                                 saes.load_params_npz(npz, sae_id, lay, l0, d_model, dtype, device),
                                 id_layer if id_layer is not None else layer, fingerprint(npz), npz_width(npz),
                                 npz.stat().st_size, l0))
    unique = {s.key: s for s in reversed(out)}  # the same SAE named twice is scored once, first naming kept
    return [s for s in out if unique.get(s.key) is s]


def _sae_lens_source(path: Path, layer: int | None) -> SAESource:
    """A folder sae-lens saved (save_model or save_inference_model), loaded when scored."""
    from actstore.saes import loading as saes

    return SAESource(str(path.resolve()), path.resolve().parent.name, path.name,
                     lambda d_model, device, dtype, p=path: _checked(saes.load_sae_lens_dir(p, dtype, device), d_model),
                     layer, fingerprint(path), nbytes=sum(f.stat().st_size for f in path.iterdir() if f.is_file()))


def _fail(message: str):
    raise SAEError(message)


def npz_width(path: Path) -> int | None:
    """Latents of a params.npz from its small b_enc array alone (None when unreadable: loading says why)."""
    import numpy as np

    try:
        with np.load(path) as params:
            return int(params["b_enc"].shape[0])
    except Exception:  # noqa: BLE001 - a bad file fails when it is loaded, with its own message
        return None


def select_saes(cfg: ScoreCommandConfig, notes: list[str] | None = None) -> list[SAESource]:
    """The SAEs a score command names: --saes (and @FILE lists) and --release, filtered by --layers/--widths;
    `notes` gets the folders not searched (resolve_saes)."""
    from actstore.saes.loading import parse_width

    specs = []
    for spec in cfg.saes:
        specs += read_list(spec[1:]) if spec.startswith("@") else [spec]
    if cfg.release:
        specs.append(cfg.release)
    if not specs:
        raise InputError("name the SAEs to score: --saes SPEC [SPEC ...] and/or --release RELEASE")
    sources = resolve_saes(specs, cfg.layer, notes)
    if cfg.layers:
        wanted = set(layer_spec("--layers", cfg.layers) or [])  # a filter: layers no SAE reads select nothing
        sources = [s for s in sources if s.layer in wanted]
    if cfg.widths:
        widths = {parse_width(w) for w in cfg.widths.split(",")}
        sources = [s for s in sources if s.width in widths]
    return sources


def _checked(sae: SAEWeights, d_model: int | None) -> SAEWeights:
    if d_model is not None and sae.d_model != d_model:
        raise SAEError(f"SAE {sae.id}: reads d_model {sae.d_model}, the store holds d_model {d_model}")
    return sae


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
    try:
        return spec.partition("/")[0] in releases()
    except KeyError:  # no sae-lens: no catalog
        return False
