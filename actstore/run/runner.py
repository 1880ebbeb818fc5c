"""`actstore score`: score many SAEs against one store, into a results folder that a rerun resumes.

    actstore score STORE --saes SPEC [SPEC ...] --out RESULTS [--layer L] [--device auto]

SPEC is one of:
- a folder of params.npz files laid out like Gemma Scope (every params.npz under it is one SAE);
- one params.npz file;
- a folder saved by sae-lens (holds cfg.json);
- a catalog name: RELEASE (every SAE of it), or RELEASE/ID-PREFIX (for example
  gemma-scope-2b-pt-res/layer_12/width_16k), loaded from a Hugging Face cache or through sae-lens.

RESULTS holds one part file per SAE and the tables built from them (results.py); the workers that write
the parts are in batch.py.

A rerun skips every SAE with a finished part (for a local file: the same size and modification time) and
retries failed ones; the tables are rebuilt from the parts, so a run killed at any point loses at most the
SAE it was computing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actstore.errors import InputError, MissingFile, RunFailed
from actstore.run.provenance import Provenance, redo_reason
from actstore.run.results import part_done, part_name, read_part, write_tables
from actstore.saes.loading import SAEError, SAEWeights, layer_and_l0_from_id
from actstore.score.scorer import BACKENDS, ScoreConfig
from actstore.store.zarrstore import ActivationStore


@dataclass
class ScoreCommandConfig:
    """Score SAEs on the first-letter task against a store's activations and probes: precision, recall,
    feature splitting and absorption per SAE and letter, as Parquet tables and SAEBench-style JSON."""

    store: str
    """path of the store (a .zarr directory with probes: run `actstore probe` first)"""
    out: str
    """results folder (created; a rerun skips SAEs already scored there)"""
    saes: list[str] = field(default_factory=list)
    """SAEs to score: folders of params.npz, params.npz files, saved sae-lens folders, catalog names (RELEASE or RELEASE/ID-PREFIX), or @FILE, a list of these one per line"""
    release: str | None = None
    """score a whole catalog release (for example gemma-scope-2b-pt-res), narrowed by --layers and --widths"""
    layers: str | None = None
    """only SAEs of these layers: a list (0,5,12) or a range (0-25)"""
    widths: str | None = None
    """only SAEs of these widths: a list such as 16k,65k"""
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
    workers: int = 0
    """Ray workers (0: one per GPU, or one CPU worker without a GPU); each takes whole layers"""
    local: bool = False
    """score in this process, without Ray"""
    address: str | None = None
    """Ray cluster address (auto: the running cluster); default: a local Ray"""
    memory_gb: float | None = None
    """SAE weights a worker may hold, current and next group together (default: half the GPU, a third of RAM)"""
    group_size: int = 10
    """SAEs of one layer scored together (one kernel launch per token block serves the group)"""
    max_dead_share: float = 0.999
    """an SAE with a larger share of latents that never fire on the vocabulary task is flagged, not plain ok"""
    worker_env: dict[str, str] = field(default_factory=dict)
    """environment variables for the Ray workers (fault injection in tests)"""
    l1_solver: str = "saebench"
    """the L1 probe that ranks latents: saebench (SAEBench's 50 Adam epochs from a seeded random start; the default, for comparability with published numbers) or converged (the same objective solved to optimality: no seed, identical scores for any seed)"""
    seeds: int = 1
    """run the seed-dependent steps (L1 probe, k-sparse probing, absorption) for this many L1-probe seeds over one encoding; saes.parquet gets every metric's mean, std and range across seeds and each letter's main-latent agreement"""
    metric_version: str = "saebench-0.6"
    """saebench-0.6 (SAEBench v0.6.0's absorption fraction and F1 > 0.6 letter filter) or saebench-0.3 (v0.3.2's fraction and all letters, for comparison with published numbers)"""
    min_letters: int = 2
    """an SAE with fewer evaluated letters fails (alone, with a row saying why); SAEBench's floor is 20"""
    bootstrap: int = 1000
    """bootstrap replicates behind the 95 percent intervals (<metric>_ci_low/_ci_high; 0: none)"""
    null: bool = False
    """also score null SAEs matched to each SAE (--null-kinds) and report every metric beside its null value"""
    null_kinds: list[str] = field(default_factory=lambda: ["random_decoder", "shuffled_firing"])
    """the nulls --null scores: random_decoder (random unit decoders, same width and L0), shuffled_firing (the SAE's latents, firing renamed by a permutation)"""
    causal: bool = False
    """also compute the paper's causal absorption (integrated-gradient ablation through the store's own model, which must load here): per SAE and letter the causal rate, and its agreement with the projection metric"""
    causal_samples: int = 200
    """causal candidates sampled per letter (the paper: 200)"""
    causal_seed: int = 0
    """seed of the causal candidates' sample"""
    causal_letter_tokens: str = "prompt"
    """letter tokens of the causal metric: prompt (each letter as the prompt's answers write it, ' A'), or paper (the correct letter as tokenizer.encode('a')[-1], the others ' B', ' C', as lasr-spelling/sae-spelling)"""

    def score_config(self) -> ScoreConfig:
        """The scorer's constants these options set (what the workers score with, and what a part's
        provenance records)."""
        from actstore.score.causal import CausalConfig

        causal = CausalConfig(samples=self.causal_samples, seed=self.causal_seed,
                              letter_tokens=self.causal_letter_tokens) if self.causal else None
        return ScoreConfig(min_probe_f1=self.min_probe_f1, backend=self.backend, l1_solver=self.l1_solver,
                           seeds=self.seeds, metric_version=self.metric_version, min_letters=self.min_letters,
                           bootstrap=self.bootstrap, nulls=tuple(self.null_kinds) if self.null else (), causal=causal)


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
            out.append(SAESource(str(path.resolve()), path.resolve().parent.name, path.name,
                                 lambda d_model, device, dtype, p=path: _checked(saes.load_sae_lens_dir(p, dtype, device), d_model),
                                 layer, fingerprint(path),
                                 nbytes=sum(f.stat().st_size for f in path.iterdir() if f.is_file())))
            continue
        elif path.is_dir():
            skipped: list = []
            found, root = saes.local_saes(path, skipped), path
            for where, why, sae_id in skipped:
                if sae_id is None:
                    notes.append(f"not searched under {spec}: {where} is {why}")
                    continue
                id_layer, l0 = layer_and_l0_from_id(sae_id)
                out.append(SAESource(str(where.parent.absolute()), path.resolve().name, sae_id,
                                     lambda d_model, device, dtype, where=where, why=why:
                                     _fail(f"SAE {where}: {why}"),
                                     id_layer if id_layer is not None else layer, "", l0=l0))
            if not found and not skipped:
                raise MissingFile(f"{path} holds no params.npz files (expected Gemma Scope's layout: "
                                  f"layer_12/width_16k/average_l0_82/params.npz)")
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
    from actstore.cli.checks import layer_spec, read_list
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


def run_score(cfg: ScoreCommandConfig, progress: bool = False, log=print) -> dict:
    """Score every SAE the command names that RESULTS does not hold yet; returns a summary."""
    from tqdm.auto import tqdm

    from actstore.run.batch import LayerScorer, memory_budget, plan_jobs

    t0 = time.perf_counter()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if cfg.dtype not in ("float32", "bfloat16", "float16"):
        raise InputError(f"--dtype must be float32, bfloat16 or float16; got {cfg.dtype!r}")
    if cfg.backend != "auto" and cfg.backend not in BACKENDS:
        raise InputError(f"unknown backend {cfg.backend!r}; choose auto or one of {sorted(BACKENDS)}")
    out = Path(cfg.out)
    notes: list[str] = []
    sources = select_saes(cfg, notes)
    for note in notes:
        log(f"  {note}")
    with ActivationStore.open(cfg.store) as store:  # refuses an incomplete store up front, saying how to resume
        provenance = Provenance(store, cfg, device)
        reasons = {s.key: redo_reason(out, s, provenance) for s in sources}
    (out / "parts").mkdir(parents=True, exist_ok=True)  # once the input holds: a refused run leaves no folder
    (out / "saebench").mkdir(exist_ok=True)
    todo = [s for s in sources if reasons[s.key] is not None]
    from actstore.score.probes import score_notes

    for line in score_notes(cfg.store, {s.layer for s in sources}, cfg.min_probe_f1):
        log(line)
    jobs = plan_jobs(todo, memory_budget(device, cfg.memory_gb), cfg.group_size)
    log(f"{len(sources)} SAEs named, {len(sources) - len(todo)} already in {out}, {len(todo)} to score on {device} "
        f"({len(jobs)} layers)")
    redo = {}
    for s in todo:
        if reasons[s.key] and reasons[s.key] != "it failed before":
            redo.setdefault(reasons[s.key], []).append(s.name)
    for reason, names in redo.items():  # a rerun says why it recomputes what RESULTS already holds
        log(f"  recomputing {len(names)} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): {reason}")
    bar = tqdm(total=len(todo), desc="score", unit="SAE", disable=not progress, smoothing=0.1)
    failed_now, flagged_now = [], []

    def done(record: dict) -> None:
        bar.update(1)
        bar.set_postfix(last=f"{record['seconds']:.1f}s")
        status = record["summary"]["status"]
        if status == "flagged":  # scored, with a warning: counted as scored here and in the tables
            flagged_now.append(record)
            log(f"  {record['sae_id']}: scored, flagged: {record['summary']['reason']}")
        elif status != "ok":
            failed_now.append(record)
            log(f"  {record['sae_id']}: failed: {record['summary']['reason']}")

    try:
        if jobs and cfg.local:
            scorer = LayerScorer(cfg, device)
            for job in jobs:
                scorer.run(job, on_done=done)
            scorer.close()
        elif jobs:
            _run_ray(cfg, device, jobs, todo, out, done, provenance)
    finally:
        bar.close()
    scored, failed = write_tables(out)
    flagged_total = _count_flagged(out)
    wall = time.perf_counter() - t0
    summary = {"named": len(sources), "computed": len(todo), "scored": scored, "flagged": flagged_total,
               "failed": failed, "seconds": wall,
               "saes_per_minute": len(todo) / wall * 60 if wall else 0.0, "out": str(out)}
    flagged_here = f" ({len(flagged_now)} flagged)" if flagged_now else ""
    flagged_there = f" ({flagged_total} flagged)" if flagged_total else ""
    log(f"scored {len(todo) - len(failed_now)}{flagged_here} and failed {len(failed_now)} of {len(todo)} in "
        f"{wall:.1f}s ({summary['saes_per_minute']:.1f} SAEs/min); {out} holds {scored} scored{flagged_there}, "
        f"{failed} failed")
    return summary


def _count_flagged(out: Path) -> int:
    """Flagged SAEs (scored, numbers suspect) in a results folder's saes.parquet."""
    import pyarrow.parquet as pq

    table = pq.read_table(out / "saes.parquet")
    return table.column("status").to_pylist().count("flagged") if "status" in table.column_names else 0


def _run_ray(cfg: ScoreCommandConfig, device: str, jobs: list, todo: list, out: Path, done, provenance) -> None:
    """One LayerScorer actor per GPU (or one CPU worker), whole layers each; progress from the parts they
    write. A crashed actor is restarted and its job retried once."""
    import ray

    from actstore.cluster import get, init_ray, kill, start
    from actstore.run.batch import LayerScorer

    if not ray.is_initialized():
        init_ray(cfg.address)
    gpus = int(ray.cluster_resources().get("GPU", 0)) if device.startswith("cuda") else 0
    n_workers = cfg.workers or max(1, gpus)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    if n_workers > (gpus if gpus else cpus):  # they could not all be placed: the run would wait forever
        raise InputError(f"--workers {n_workers}: the Ray cluster has {gpus} GPUs and {cpus} CPUs, one "
                         f"{'GPU' if gpus else 'CPU'} per worker; use --workers {gpus or cpus} or fewer")
    threads = max(1, cpus // n_workers)
    options = dict(max_restarts=1, max_task_retries=1, num_gpus=1 if gpus else 0, num_cpus=0 if gpus else threads,
                   runtime_env={"env_vars": cfg.worker_env} if cfg.worker_env else None)
    actors = start(LayerScorer, n_workers, options, "score worker", cfg, device, None if gpus else threads)
    pending = [actors[i % n_workers].run.remote(job) for i, job in enumerate(jobs)]  # actors run calls in order
    expected = {out / "parts" / part_name(s.key): s for s in todo}
    before = {path: path.stat().st_mtime_ns if path.exists() else 0 for path in expected}
    try:
        while expected:
            finished, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5) if pending else ([], [])
            get(finished, "score worker")  # a worker's error, or an actor that died twice, raises here
            for path in [p for p in expected if p.exists() and p.stat().st_mtime_ns != before[p]]:
                record = read_part(path)
                if record is not None:  # None: being replaced this instant; read again next round
                    expected.pop(path)
                    done(record)
            if not pending and expected:
                # written meanwhile by someone else (a worker of a killed earlier run that Ray had not yet
                # reaped): the workers skipped them as done
                for path, source in list(expected.items()):
                    if part_done(out, source, provenance):
                        expected.pop(path)
                        done(read_part(path))
                if expected:
                    missing = ", ".join(s.name for s in list(expected.values())[:5])
                    raise RunFailed(f"the workers ended without scoring {len(expected)} SAEs ({missing}); rerun")
    finally:
        kill(actors)

