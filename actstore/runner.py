"""`actstore score`: score many SAEs against one store, into a results folder that a rerun resumes.

    actstore score STORE --saes SPEC [SPEC ...] --out RESULTS [--layer L] [--device auto]

SPEC is one of:
- a folder of params.npz files laid out like Gemma Scope (every params.npz under it is one SAE);
- one params.npz file;
- a folder saved by sae-lens (holds cfg.json);
- a catalog name: RELEASE (every SAE of it), or RELEASE/ID-PREFIX (for example
  gemma-scope-2b-pt-res/layer_12/width_16k), loaded from a Hugging Face cache or through sae-lens.

RESULTS:
    parts/<key>.json                        one finished (or failed) SAE, written atomically when it ends
    saes.parquet                            one row per SAE: means and standard deviations, or why it failed
    letters.parquet                         one row per (SAE, evaluated letter)
    saebench/<release>_<id>_eval_results.json   SAEBench's absorption output format, one per scored SAE

A rerun skips every SAE with a finished part (for a local file: the same size and modification time) and
retries failed ones; the tables are rebuilt from the parts, so a run killed at any point loses at most the
SAE it was computing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actstore.probes import load_probe
from actstore.saes import SAEError, SAEWeights, layer_and_l0_from_id
from actstore.scoring import BACKENDS, LayerData, NotScorable, ScoreConfig, score_sae

EVAL_TYPE_ID = "absorption_first_letter"  # SAEBench's eval_type_id for this eval


@dataclass
class ScoreCommandConfig:
    """Score SAEs on the first-letter task against a store's activations and probes: precision, recall,
    feature splitting and absorption per SAE and letter, as Parquet tables and SAEBench-style JSON."""

    store: str
    """path of the store (a .zarr directory with probes: run `actstore probe` first)"""
    saes: list[str]
    """SAEs to score: folders of params.npz, params.npz files, saved sae-lens folders, or catalog names (RELEASE or RELEASE/ID-PREFIX)"""
    out: str
    """results folder (created; a rerun skips SAEs already scored there)"""
    layer: int | None = None
    """the layer every SAE reads, for SAEs whose id or config does not say"""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)"""
    min_probe_f1: float = 0.6
    """letters whose probe test F1 is below this are not evaluated (SAEBench)"""
    backend: str = "auto"
    """encoder: torch (reference), triton (fused kernel), or auto (triton on CUDA for JumpReLU/ReLU SAEs)"""
    dtype: str = "float32"
    """dtype the SAE weights are loaded in and encoded with (float32, bfloat16 or float16); accumulation is fp32"""


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
    """size and modification time of a local file: a rewritten SAE is scored again"""


def fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def resolve_saes(specs: list[str], layer: int | None = None) -> list[SAESource]:
    """Every SAE named by the specs, in order, without loading any weights."""
    from actstore import saes

    out: list[SAESource] = []
    for spec in specs:
        path = Path(spec)
        if path.is_file() and path.name.endswith(".npz"):
            parts = path.resolve().parent.parts  # id from the layer_N folder on, as in Gemma Scope's layout
            start = max((i for i, p in enumerate(parts) if p.startswith("layer_")), default=len(parts) - 1)
            found, root = [("/".join(parts[start:]), path)], Path(*parts[:start])
        elif path.is_dir() and (path / "cfg.json").exists():
            out.append(SAESource(str(path.resolve()), path.resolve().parent.name, path.name,
                                 lambda d_model, device, dtype, p=path: _checked(saes.load_sae_lens_dir(p, dtype, device), d_model),
                                 layer, fingerprint(path / "cfg.json")))
            continue
        elif path.is_dir():
            found, root = saes.local_saes(path), path
            if not found:
                raise FileNotFoundError(f"{path} holds no params.npz files (expected Gemma Scope's layout: "
                                        f"layer_12/width_16k/average_l0_82/params.npz)")
        elif spec.partition("/")[0] not in saes.releases():  # a path that is not there: that SAE fails alone
            def missing(d_model, device, dtype, spec=spec):
                hint = "" if spec.startswith(("/", ".")) or spec.endswith(".npz") else \
                    f", and {spec.partition('/')[0]!r} is not a release of the sae-lens catalog (`actstore saes list`)"
                raise SAEError(f"SAE {spec}: no such file or folder{hint}")
            out.append(SAESource(str(path.absolute()), path.absolute().parent.name, path.name, missing, layer))
            continue
        else:
            release, _, prefix = spec.partition("/")
            entries = [e for e in saes.gemma_scope_catalog(release) if e.id.startswith(prefix)]
            if not entries:
                raise ValueError(f"no SAE of {release} has an id starting with {prefix!r}; see `actstore saes list "
                                 f"--release {release}`")
            for e in entries:
                out.append(SAESource(f"{e.release}/{e.id}", e.release, e.id,
                                     lambda d_model, device, dtype, e=e: saes.load_catalog_entry(e, d_model, dtype, device),
                                     e.layer))
            continue
        for sae_id, npz in found:
            id_layer, l0 = layer_and_l0_from_id(sae_id)
            out.append(SAESource(str(npz.parent.resolve()), root.resolve().name, sae_id,
                                 lambda d_model, device, dtype, npz=npz, sae_id=sae_id, lay=id_layer, l0=l0:
                                 saes.load_params_npz(npz, sae_id, lay, l0, d_model, dtype, device),
                                 id_layer if id_layer is not None else layer, fingerprint(npz)))
    unique = {s.key: s for s in reversed(out)}  # the same SAE named twice is scored once, first naming kept
    return [s for s in out if unique.get(s.key) is s]


def _checked(sae: SAEWeights, d_model: int | None) -> SAEWeights:
    if d_model is not None and sae.d_model != d_model:
        raise SAEError(f"SAE {sae.id}: reads d_model {sae.d_model}, the store holds d_model {d_model}")
    return sae


def part_name(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:20] + ".json"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_layer(store, layer: int) -> LayerData:
    """A layer's vocabulary rows as float32 (N, d_model), and its context rows when the store has them, kept
    in the store's dtype (a million bf16 context tokens of Gemma is 4.6 GB; the scorer casts a tile at a time)."""
    data = LayerData(store.read("vocab", layer).float(), torch.as_tensor(store.column("vocab", "label")).long(),
                     torch.as_tensor(store.column("vocab", "split")).long())
    if "context" in store.groups:
        data.context_x = store.read("context", layer)  # (M, d_model)
        data.context_labels = torch.as_tensor(store.column("context", "label")).long()
    return data


def saebench_json(source: SAESource, sae: SAEWeights, summary: dict, letters: list[dict], cfg: ScoreConfig,
                  spec) -> dict:
    """SAEBench's AbsorptionEvalOutput, field for field (sae_bench/evals/absorption/eval_output.py)."""
    import actstore

    return {
        "eval_type_id": EVAL_TYPE_ID,
        "eval_config": {"model_name": spec.model, "prompt_template": spec.prompt_template,
                        "f1_jump_threshold": cfg.split_min_f1_gain, "max_k_value": cfg.max_k,
                        "k_sparse_probe_l1_decay": cfg.l1, "k_sparse_probe_batch_size": cfg.sparse_probe.batch_size,
                        "k_sparse_probe_num_epochs": cfg.sparse_probe.epochs, "min_probe_f1": cfg.min_probe_f1},
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": {"mean": {
            "mean_absorption_fraction_score": summary["mean_absorption_fraction"],
            "mean_full_absorption_score": summary["mean_full_absorption"],
            "mean_num_split_features": summary["mean_num_split_features"],
            "std_dev_absorption_fraction_score": summary["std_absorption_fraction"],
            "std_dev_full_absorption_score": summary["std_full_absorption"],
            "std_dev_num_split_features": summary["std_num_split_features"],
        }},
        "eval_result_details": [{
            "first_letter": r["letter"], "mean_absorption_fraction": r["mean_absorption_fraction"],
            "full_absorption_rate": r["full_absorption_rate"], "num_full_absorption": r["num_full_absorption"],
            "num_probe_true_positives": r["num_probe_true_positives"], "num_split_features": r["num_split_features"],
        } for r in letters],
        "eval_result_unstructured": None,
        "sae_bench_commit_hash": f"actstore {actstore.__version__}",
        "sae_lens_id": source.name,
        "sae_lens_release_id": source.release,
        "sae_lens_version": None,
        "sae_cfg_dict": {"architecture": sae.architecture, "d_in": sae.d_model, "d_sae": sae.width,
                         "hook_layer": sae.layer, "hook_name": f"blocks.{sae.layer}.hook_{sae.hook}", "k": sae.k,
                         "apply_b_dec_to_input": sae.apply_b_dec_to_input},
    }


def write_tables(out: Path) -> tuple[int, int]:
    """Rebuild saes.parquet and letters.parquet from the parts; returns (scored, failed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [json.loads(p.read_text()) for p in sorted((out / "parts").glob("*.json"))]
    saes = [{**{k: p[k] for k in ("sae_key", "release", "sae_id", "layer", "width", "seconds")}, **p["summary"]}
            for p in parts]
    letters = [{"sae_key": p["sae_key"], "release": p["release"], "sae_id": p["sae_id"], "layer": p["layer"], **row}
               for p in parts for row in p["letters"]]
    def table(rows: list[dict]):  # the union of the rows' keys (Table.from_pylist takes the first row's only)
        names = list(dict.fromkeys(k for row in rows for k in row))
        return pa.Table.from_pydict({k: [row.get(k) for row in rows] for k in names})

    pq.write_table(table(saes), out / "saes.parquet")
    if letters:
        pq.write_table(table(letters), out / "letters.parquet")
    ok = sum(p["summary"]["status"] == "ok" for p in parts)
    return ok, len(parts) - ok


def run_score(cfg: ScoreCommandConfig, progress: bool = False, log=print) -> dict:
    """Score every SAE the specs name that RESULTS does not hold yet; returns a summary."""
    from tqdm.auto import tqdm

    from actstore.store import ActivationStore

    t0 = time.perf_counter()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if cfg.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype must be float32, bfloat16 or float16; got {cfg.dtype!r}")
    if cfg.backend != "auto" and cfg.backend not in BACKENDS:
        raise ValueError(f"unknown backend {cfg.backend!r}; choose auto or one of {sorted(BACKENDS)}")
    score_cfg = ScoreConfig(min_probe_f1=cfg.min_probe_f1, backend=cfg.backend)
    out = Path(cfg.out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    (out / "saebench").mkdir(exist_ok=True)
    store = ActivationStore.open(cfg.store, require_complete=True)
    sources = resolve_saes(cfg.saes, cfg.layer)
    done = set()
    for part in (out / "parts").glob("*.json"):
        record = json.loads(part.read_text())
        if record["summary"]["status"] == "ok":
            done.add((record["sae_key"], record.get("fingerprint", "")))
    todo = [s for s in sources if (s.key, s.fingerprint) not in done]
    todo.sort(key=lambda s: (s.layer is None, s.layer or 0))  # one layer's rows are loaded once
    log(f"{len(sources)} SAEs named, {len(sources) - len(todo)} already in {out}, {len(todo)} to score on {device}")
    layer_cache: dict[int, LayerData] = {}
    bar = tqdm(todo, desc="score", unit="SAE", disable=not progress)
    for source in bar:
        t = time.perf_counter()
        record = {"sae_key": source.key, "release": source.release, "sae_id": source.name, "layer": source.layer,
                  "width": None, "fingerprint": source.fingerprint, "letters": []}
        try:
            sae = source.load(store.spec.d_model, device, getattr(torch, cfg.dtype))
            layer = sae.layer if sae.layer is not None else source.layer if source.layer is not None else cfg.layer
            if layer is None:
                raise NotScorable(f"SAE {source.name}: its layer is unknown (not in its id or config); pass --layer")
            if layer not in store.layers:
                raise NotScorable(f"SAE {source.name} reads layer {layer}; the store has layers {store.layers}: "
                                  f"extract it with `actstore extract ... --layers {layer} --resume`")
            try:
                probe = load_probe(store, layer)
            except KeyError as err:
                raise NotScorable(f"the store has no probe for layer {layer}: run `actstore probe {cfg.store} "
                                  f"--layers {layer}`") from err
            sae.layer = layer
            record.update(layer=layer, width=sae.width)
            if layer not in layer_cache:
                layer_cache.clear()
                layer_cache[layer] = load_layer(store, layer)
            result = score_sae(sae, layer_cache[layer], probe, score_cfg)
            record.update(letters=result.letters, summary=result.summary)
            report = saebench_json(source, sae, result.summary, result.letters, score_cfg, store.spec)
            name = f"{source.release}_{source.name}_eval_results.json".replace("/", "_").lstrip("_")
            _write_atomic(out / "saebench" / name, json.dumps(report, indent=1))
        except (SAEError, NotScorable, FileNotFoundError) as err:
            record["summary"] = {"status": "failed", "reason": str(err)}
            log(f"  {source.name}: failed: {err}")
        record["seconds"] = time.perf_counter() - t
        _write_atomic(out / "parts" / part_name(source.key), json.dumps(record))
        bar.set_postfix(last=f"{record['seconds']:.1f}s")
    store.close()
    scored, failed = write_tables(out)
    wall = time.perf_counter() - t0
    return {"named": len(sources), "computed": len(todo), "scored": scored, "failed": failed, "seconds": wall,
            "saes_per_minute": len(todo) / wall * 60 if wall else 0.0, "out": str(out)}
