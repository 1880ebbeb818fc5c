"""SAE sources behind one interface: weights, biases, threshold, layer, width, L0 and id.

Sources:
- the Gemma Scope catalog, read once from sae-lens's `pretrained_saes.yaml` (`gemma_scope_catalog`);
  an entry loads from a Hugging Face cache's `params.npz` when present, else through sae-lens;
- a local directory of `params.npz` files laid out like Gemma Scope (`local_saes`);
- sae-lens SAE objects and saved sae-lens directories (`from_sae_lens`, `load_sae_lens_dir`; `saelens.py`): standard
  ReLU, TopK, BatchTopK, JumpReLU and Matryoshka BatchTopK, inference or training classes.

Each becomes an `SAEWeights` (`weights.py`), whose encoder comes from a registry (`ENCODERS`): JumpReLU, ReLU and
TopK (BatchTopK and Matryoshka BatchTopK load as JumpReLU, as sae-lens saves them for inference). A bad file
(missing keys, wrong shapes, NaN or inf, a d_model that is not the store's) raises SAEError naming that SAE only.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actstore.errors import InputError, MissingFile, MissingKey
from actstore.saes.reader import EXPECT, GEMMA_SCOPE_KEYS, damaged, dtype_error, read_host_arrays
from actstore.saes.weights import SAEError, SAEWeights

WIDTH_SUFFIX = {"k": 1000, "m": 1000 * 1000}


# ---------------------------------------------------------------------------- params.npz (Gemma Scope)


def load_params_npz(path: str | Path, sae_id: str, layer: int | None = None, l0: float | None = None,
                    d_model: int | None = None, dtype: torch.dtype = torch.float32,
                    device: str = "cpu") -> SAEWeights:
    """A Gemma Scope `params.npz`, checked, each array converted once into `dtype` on `device`.

    The file's bytes go straight into host buffers (`reader.read_host_arrays`: pinned when CUDA is available,
    CRC-checked), then to the device asynchronously; finiteness is checked there (one host sync per SAE) and the
    dtype converted there. Every way the file can be bad (not a zip, truncated, a CRC error, missing keys,
    pickled objects, a dtype that is not floating point, width 0, NaN or inf, inconsistent shapes, another
    model's d_model) raises SAEError saying what is wrong and what was expected."""
    cuda = torch.device(device).type == "cuda"
    host = read_host_arrays(path, sae_id, pin=cuda)
    if host is None:  # compressed members, Fortran order, another byte order: numpy reads them
        host = {k: torch.from_numpy(a) for k, a in read_npz(path, sae_id).items()}
    d, m = host["W_enc"].shape if host["W_enc"].ndim == 2 else (None, None)
    expected = {"W_enc": (d, m), "W_dec": (m, d), "b_enc": (m,), "b_dec": (d,), "threshold": (m,)}
    wrong = {k: tuple(a.shape) for k, a in host.items() if d is None or tuple(a.shape) != expected[k]}
    if wrong:
        taken = f"W_enc {tuple(host['W_enc'].shape)} read as d {d}, m {m}" if d is not None else \
            f"W_enc {tuple(host['W_enc'].shape)} is not 2-D"
        raise SAEError(f"SAE {sae_id}: inconsistent shapes in {path}: {wrong} ({taken}); expected W_enc (d, m), "
                       f"W_dec (m, d), b_enc (m,), b_dec (d,), threshold (m,)")
    if m == 0 or d == 0:
        raise SAEError(f"SAE {sae_id}: {path} has width {m} and d_model {d}; expected at least one latent and one "
                       f"input dimension")
    if d_model is not None and d != d_model:
        raise SAEError(f"SAE {sae_id}: reads d_model {d}, the store holds d_model {d_model}: it belongs to another model")
    t = {k: a.to(device, non_blocking=cuda) for k, a in host.items()}  # from pinned memory: asynchronous
    extremes = torch.stack([torch.stack(torch.aminmax(a)).float() for a in t.values()])  # (5, 2); NaN propagates
    finite = torch.isfinite(extremes).all(dim=1).tolist()  # the one sync; a pass without a (d, m) bool temporary
    bad = [k for k, ok in zip(t, finite) if not ok]
    if bad:  # float64 values past float32's range are inf once checked (and once converted)
        what = "NaN, inf or values beyond float32's range" if any(t[k].dtype == torch.float64 for k in bad) else \
            "NaN or inf"
        raise SAEError(f"SAE {sae_id}: {path} has {what} in {bad}; expected finite weights")
    t = {k: a.to(dtype) for k, a in t.items()}
    return SAEWeights(sae_id, t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], "jumprelu", t["threshold"],
                      layer=layer, l0=l0)


def read_npz(path: str | Path, sae_id: str) -> dict[str, np.ndarray]:
    """The five arrays of a params.npz through numpy, in native byte order: `load_params_npz`'s way to the members
    `reader.read_host_arrays` does not take apart (compressed, Fortran order, another byte order or float width),
    once the reader has found the file a zip with every key. SAEError for anything else, as the reader's."""
    try:
        with np.load(path, allow_pickle=False) as params:
            arrays = {k: params[k] for k in GEMMA_SCOPE_KEYS}
    except ValueError as err:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        what = "holds pickled Python objects" if "allow_pickle" in str(err) else f"cannot be read ({err})"
        raise SAEError(f"SAE {sae_id}: {path} {what}; {EXPECT}") from err
    except Exception as err:  # noqa: BLE001 - BadZipFile (CRC, truncated), EOFError, zlib.error, OSError, ...
        raise damaged(path, sae_id, err) from err
    not_float = {k: str(a.dtype) for k, a in arrays.items() if a.dtype.kind != "f" or a.dtype.itemsize > 8}
    if not_float:
        raise dtype_error(path, sae_id, not_float)
    return {k: a.astype(a.dtype.newbyteorder("="), copy=False) for k, a in arrays.items()}  # torch: native order


def degeneracies(sae: SAEWeights) -> list[str]:
    """What makes an SAE's numbers suspect (zero decoder rows, negative JumpReLU thresholds), one phrase
    each; raises SAEError when nothing can be measured (every decoder row zero)."""
    zero = int((sae.w_dec.float().abs().amax(dim=1) == 0).sum())
    if zero == sae.width:
        raise SAEError(f"SAE {sae.id}: every decoder row is zero, so no latent has a direction to measure "
                       f"absorption along; expected a trained decoder")
    found = [f"{zero} of {sae.width} decoder rows are zero (latents without a direction)"] if zero else []
    if sae.threshold is not None:
        negative = int((sae.threshold < 0).sum())
        if negative:
            found.append(f"{negative} of {sae.width} JumpReLU thresholds are negative (those latents fire on "
                         f"negative pre-activations; expected thresholds >= 0)")
    return found


# ---------------------------------------------------------------------------- the Gemma Scope catalog


@dataclass(frozen=True)
class CatalogEntry:
    release: str
    id: str
    """The sae-lens id, for example layer_12/width_16k/average_l0_82."""
    repo_id: str
    path: str
    """The folder of params.npz inside repo_id."""
    layer: int | None
    """None for embedding SAEs."""
    width: int
    l0: float | None


def parse_width(text: str) -> int:
    """Gemma Scope's width names are rounded powers of two: '16k' -> 16384, '65k' -> 65536,
    '1m' -> 1048576; a plain number is taken as it is."""
    match = re.fullmatch(r"(\d+)([km]?)", text)
    if not match:
        raise InputError(f"a width looks like 16k, 65k or 1m; got {text!r}")
    if not match[2]:
        return int(match[1])
    approx = int(match[1]) * WIDTH_SUFFIX[match[2]]
    return 2 ** round(np.log2(approx))


@functools.lru_cache(maxsize=None)
def _pretrained_yaml() -> dict:
    """sae-lens's catalog, read from its file without importing sae-lens (which imports transformers)."""
    import importlib.util

    import yaml

    found = importlib.util.find_spec("sae_lens")
    if found is None or not found.submodule_search_locations:
        raise MissingKey("the SAE catalog comes from sae-lens, which is not installed: pip install sae-lens")
    text = (Path(found.submodule_search_locations[0]) / "pretrained_saes.yaml").read_text()
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1.5 MB: C parser, 10x faster


def releases() -> list[str]:
    return sorted(_pretrained_yaml())


def gemma_scope_catalog(release: str = "gemma-scope-2b-pt-res", layer: int | None = None,
                        width: int | None = None) -> list[CatalogEntry]:
    """The release's SAEs from sae-lens's catalog, optionally filtered by layer and width."""
    catalog = _pretrained_yaml()
    if release not in catalog:
        near = [r for r in catalog if r.startswith(release.split("-")[0])][:12] or sorted(catalog)[:12]
        raise MissingKey(f"unknown release {release!r}; for example: {near} ({len(catalog)} in all)")
    entries = []
    for sae in catalog[release]["saes"]:
        parts = sae["path"].split("/")
        sae_layer = int(parts[0].split("_")[1]) if parts[0].startswith("layer_") else None
        sae_width = parse_width(parts[1].split("_")[1])
        entry = CatalogEntry(release, sae["id"], catalog[release]["repo_id"], sae["path"], sae_layer, sae_width,
                             sae.get("l0"))
        if (layer is None or entry.layer == layer) and (width is None or entry.width == width):
            entries.append(entry)
    return entries


def load_catalog_entry(entry: CatalogEntry, d_model: int | None = None, dtype: torch.dtype = torch.float32,
                       device: str = "cpu") -> SAEWeights:
    """From a Hugging Face cache's params.npz when it is there; otherwise through sae-lens (network)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(entry.repo_id, f"{entry.path}/params.npz")
    if isinstance(cached, str):
        return load_params_npz(cached, entry.id, entry.layer, entry.l0, d_model, dtype, device)
    try:
        from sae_lens import SAE

        sae = SAE.from_pretrained(entry.release, entry.id, device=device)
    except Exception as err:  # offline: LocalEntryNotFoundError; gated or missing: other hub errors
        raise SAEError(
            f"SAE {entry.release}/{entry.id} is not in the Hugging Face cache and could not be downloaded "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Supply it locally: fetch "
            f"{entry.repo_id}/{entry.path}/params.npz where there is network, put it at "
            f"DIR/{entry.path}/params.npz, and pass DIR as a local source"
        ) from err
    weights = from_sae_lens(sae, entry.id, dtype=dtype, device=device)
    weights.layer, weights.l0 = entry.layer, entry.l0
    return weights


# ---------------------------------------------------------------------------- local folders and sae-lens


def local_saes(root: str | Path, skipped: list[tuple[Path, str, str | None]] | None = None
               ) -> list[tuple[str, Path]]:
    """(id, params.npz path) of every params.npz under root; the id is its folder relative to root, as named
    (links kept in it). Linked folders and files are followed, each real folder searched once (under its own
    name before a link's). What cannot be
    followed goes into `skipped` as (path, why, id): id is the SAE's for a params.npz that is a broken or looping
    link (it is then not in the list: its SAE fails with `why`), None for a folder (a loop, a second link to a
    folder already searched, an unreadable or broken link)."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFile(f"{root} is not a folder of params.npz files (laid out like Gemma Scope: "
                          f"layer_12/width_16k/average_l0_82/params.npz)")
    skipped = [] if skipped is None else skipped
    found: list[tuple[str, Path]] = []
    searched: dict[Path, Path] = {}  # real folder -> the path it was first searched under

    def search(folder: Path, relative: Path) -> None:
        real = folder.resolve()
        if real in searched:
            skipped.append((folder, f"a link to {real}, already searched as {searched[real]}", None))
            return
        searched[real] = folder
        try:
            entries = sorted(os.scandir(folder), key=lambda e: (e.is_symlink(), e.name))  # a folder before links
        except OSError as err:
            skipped.append((folder, f"cannot be listed ({err.strerror})", None))
            return
        for entry in entries:
            path = Path(entry.path)
            target = link_problem(path) if entry.is_symlink() else None
            if entry.name == "params.npz":
                if target is None and path.is_file():
                    found.append((str(relative) if relative.parts else ".", path))
                else:
                    skipped.append((path, target or "not a file", str(relative) if relative.parts else "."))
            elif target is not None:
                skipped.append((path, target, None))
            elif path.is_dir():
                search(path, relative / entry.name)

    search(root, Path())
    return found


def link_problem(path: Path) -> str | None:
    """Why a link cannot be followed (broken, looping), or None."""
    try:
        path.resolve(strict=True)
    except FileNotFoundError:
        return f"a broken link (to {os.readlink(path)}, which is not there)"
    except (RuntimeError, OSError) as err:  # ELOOP, or Python's own loop detection
        return f"a link that loops ({getattr(err, 'strerror', None) or err})"
    return None


def layer_and_l0_from_id(sae_id: str) -> tuple[int | None, float | None]:
    """Gemma Scope ids carry both: layer_12/width_16k/average_l0_82 -> (12, 82.0)."""
    layer = re.search(r"layer_(\d+)", sae_id)
    l0 = re.search(r"average_l0_(\d+(?:\.\d+)?)", sae_id)
    return (int(layer[1]) if layer else None), (float(l0[1]) if l0 else None)


def from_sae_lens(sae, sae_id: str | None = None, dtype: torch.dtype = torch.float32,
                  device: str = "cpu") -> SAEWeights:
    """An sae-lens SAE object, inference or training class, as SAEWeights (`actstore.saes.saelens`)."""
    from actstore.saes import saelens

    return saelens.from_sae_lens(sae, sae_id, dtype, device)


def load_sae_lens_dir(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> SAEWeights:
    """A folder saved by sae-lens (`save_model`, `save_inference_model`) as SAEWeights (`actstore.saes.saelens`)."""
    from actstore.saes import saelens

    return saelens.load_sae_lens_dir(path, dtype, device)
