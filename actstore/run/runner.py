"""`actstore score`: score many SAEs against one store, into a results folder that a rerun resumes.

    actstore score STORE --saes SPEC [SPEC ...] --out RESULTS [--layer L] [--device auto]

SPEC is one of:
- a folder of params.npz files laid out like Gemma Scope (every params.npz under it is one SAE);
- one params.npz file;
- a folder saved by sae-lens (holds cfg.json);
- a catalog name: RELEASE (every SAE of it), or RELEASE/ID-PREFIX (for example
  gemma-scope-2b-pt-res/layer_12/width_16k), loaded from a Hugging Face cache or through sae-lens.

RESULTS holds one part file per (SAE, task) and the tables built from them (results.py); the workers that
write the parts are in batch.py; the SAEs a command names are found in sources.py (no weights read).

A rerun skips every SAE with a finished part (for a local file: the same size and modification time) and
retries failed ones; the tables are rebuilt from the parts, so a run killed at any point loses at most the
SAEs it was computing and the few whose part files were still queued for writing (with --local, Ctrl-C and
SIGTERM write those first; Ray workers are ended at once, and a rerun computes those again).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from actstore.options import choices
from actstore.errors import RunFailed
from actstore.run.provenance import Provenance, part_done, redo_reason
from actstore.run.results import part_name, read_part, write_tables
from actstore.run.sources import SAESource, fingerprint, resolve_saes, select_saes  # noqa: F401 - re-exported
from actstore.score.causal import ANSWER_TOKENS, CausalConfig
from actstore.score.metrics import METRIC_VERSIONS
from actstore.score.nulls import NULLS
from actstore.score.config import L1_SOLVERS, ScoreConfig
from actstore.score.encode import BACKENDS
from actstore.score.probes import score_notes
from actstore.store.zarrstore import ActivationStore
from actstore.tasks.registry import DEFAULT_TASK, get_task, task_names


_SCORE_FIELDS = {f.name: f for f in dataclasses.fields(ScoreConfig)}
_CAUSAL_FIELDS = {f.name: f for f in dataclasses.fields(CausalConfig)}


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def score_option(name: str):
    """A command option that sets ScoreConfig.<name>: its default is ScoreConfig's, read from there (not copied)."""
    return field(default=_default(_SCORE_FIELDS[name]), metadata={"score": name})


def causal_option(name: str):
    """A command option that sets CausalConfig.<name> (with --causal); its default is CausalConfig's."""
    return field(default=_default(_CAUSAL_FIELDS[name]), metadata={"causal": name})


Backend = Literal[("auto", *BACKENDS)]
L1Solver = Literal[L1_SOLVERS]
MetricVersion = Literal[tuple(METRIC_VERSIONS)]
NullKind = Literal[tuple(NULLS)]
AnswerTokens = Literal[ANSWER_TOKENS]
DType = Literal["float32", "bfloat16", "float16"]


@dataclass
class ScoreCommandConfig:
    """Score SAEs on a task (default first_letter) against a store's activations and probes: precision, recall,
    feature splitting and absorption per SAE and class, as Parquet tables (and SAEBench-style JSON for first_letter).

    The options below that set the scorer's constants (score_option, causal_option) take their defaults from
    ScoreConfig and CausalConfig; `score_config()` builds the ScoreConfig the workers score with."""

    ALIASES: ClassVar[dict[str, str]] = {"--min-letters": "min_classes",
                                         "--causal-letter-tokens": "causal_answer_tokens"}
    """old spellings of renamed options, still accepted (hidden from --help)"""

    store: str
    """path of the store (a .zarr directory with probes: run `actstore probe` first)"""
    out: str
    """results folder (created; a rerun skips SAEs already scored there, task by task)"""
    saes: list[str] = field(default_factory=list)
    """SAEs to score: folders of params.npz, params.npz files, saved sae-lens folders, catalog names (RELEASE or RELEASE/ID-PREFIX), or @FILE, a list of these one per line"""
    task: str = field(default=DEFAULT_TASK, metadata={"choices": task_names})
    """the task scored: a built-in task or labels:FILE (its probes: `actstore probe STORE --task NAME`); several tasks' results live side by side in one results folder"""
    template: str | None = None
    """the prompt template of a labels:FILE task extracted with its own prompt (as given to `actstore extract --task`); leave out for a task that relabels first_letter's rows"""
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
    min_probe_f1: float = score_option("min_probe_f1")
    """classes whose probe test F1 is below this are not evaluated (SAEBench)"""
    backend: Backend = score_option("backend")
    """encoder: torch (reference), triton (fused kernel), or auto (triton on CUDA for JumpReLU/ReLU SAEs)"""
    dtype: DType = "bfloat16"
    """the fused kernel's encode dtype (CUDA): bfloat16 or float16 on tensor cores, every firing decision and value then rechecked exactly in float32, or float32 (the fp32-only kernel); SAE weights are always float32, and the torch backend (CPU) always computes in float32"""
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
    l1_solver: L1Solver = score_option("l1_solver")
    """the L1 probe that ranks latents: saebench (SAEBench's 50 Adam epochs from a seeded random start; the default, for comparability with published numbers) or converged (the same objective solved to optimality: no seed, identical scores for any seed)"""
    seeds: int = score_option("seeds")
    """run the seed-dependent steps (L1 probe, k-sparse probing, absorption) for this many L1-probe seeds over one encoding; saes.parquet gets every metric's mean, std and range across seeds and each class's main-latent agreement"""
    metric_version: MetricVersion = score_option("metric_version")
    """saebench-0.6 (SAEBench v0.6.0's absorption fraction and F1 > 0.6 class filter) or saebench-0.3 (v0.3.2's fraction and all classes, for comparison with published numbers)"""
    min_classes: int = score_option("min_classes")
    """an SAE with fewer evaluated classes fails (alone, with a row saying why); SAEBench's floor is 20 (of 26 letters)"""
    bootstrap: int = score_option("bootstrap")
    """bootstrap replicates behind the 95 percent intervals (<metric>_ci_low/_ci_high; 0: none)"""
    null: bool = False
    """also score null SAEs matched to each SAE (--null-kinds) and report every metric beside its null value and chance level"""
    null_kinds: list[NullKind] = field(default_factory=lambda: ["random_decoder", "shuffled_firing"])
    """the nulls --null scores: random_decoder, a chance level, not a zero baseline (random unit decoders, same width and L0: what random directions score by chance; columns chance_random_decoder_*), shuffled_firing, a null (the SAE's latents, firing renamed by a permutation: 0 absorption on clean class latents; columns null_shuffled_firing_* and *_minus_null_shuffled_firing)"""
    causal: bool = False
    """also compute the paper's causal absorption (integrated-gradient ablation through the store's own model, which must load here): per SAE and class the causal rate, and its agreement with the projection metric"""
    causal_samples: int = causal_option("samples")
    """causal candidates sampled per class (the paper: 200)"""
    causal_seed: int = causal_option("seed")
    """seed of the causal candidates' sample"""
    causal_answer_tokens: AnswerTokens = causal_option("answer_tokens")
    """answer tokens of the causal metric: prompt (each class's answer as the prompt writes it, ' A'), or paper (first_letter: the correct letter as tokenizer.encode('a')[-1], the others ' B', ' C', as lasr-spelling/sae-spelling)"""

    def score_config(self) -> ScoreConfig:
        """The scorer's constants these options set (what the workers score with, and what a part's
        provenance records): the score_option fields by name, --null and --causal* gathered."""
        chosen = {f.metadata["score"]: getattr(self, f.name) for f in dataclasses.fields(self) if "score" in f.metadata}
        causal = CausalConfig(**{f.metadata["causal"]: getattr(self, f.name) for f in dataclasses.fields(self)
                                 if "causal" in f.metadata}) if self.causal else None
        return ScoreConfig(**chosen, encode_dtype=self.dtype, nulls=tuple(self.null_kinds) if self.null else (),
                           causal=causal)


def run_score(cfg: ScoreCommandConfig, progress: bool = False, log=print) -> dict:
    """Score every SAE the command names that RESULTS does not hold yet; returns a summary."""
    from tqdm.auto import tqdm

    from actstore.run.batch import LayerScorer, memory_budget, plan_jobs

    t0 = time.perf_counter()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    choices(cfg)  # the typed choices (a caller from Python skips the CLI's checks)
    task = get_task(cfg.task, cfg.template)
    out = Path(cfg.out)
    notes: list[str] = []
    sources = select_saes(cfg, notes)
    for note in notes:
        log(f"  {note}")
    with ActivationStore.open(cfg.store) as store:  # refuses an incomplete store up front, saying how to resume
        provenance = Provenance(store, cfg, device, task)
        reasons = {s.key: redo_reason(out, s, provenance, task) for s in sources}
    (out / "parts").mkdir(parents=True, exist_ok=True)  # once the input holds: a refused run leaves no folder
    if task.saebench_eval:
        (out / "saebench").mkdir(exist_ok=True)
    todo = [s for s in sources if reasons[s.key] is not None]
    for line in score_notes(cfg.store, {s.layer for s in sources}, cfg.min_probe_f1, task):
        log(line)
    jobs = plan_jobs(todo, memory_budget(device, cfg.memory_gb), cfg.group_size)
    on_task = "" if task.name == DEFAULT_TASK else f" ({task.name})"
    log(f"{len(sources)} SAEs named, {len(sources) - len(todo)} already in {out}{on_task}, {len(todo)} to score on "
        f"{device} ({len(jobs)} layers)")
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
            scorer.run(jobs, on_done=done)  # one call: the SAEs are read ahead across layers
            scorer.close()
        elif jobs:
            _run_ray(cfg, device, jobs, todo, out, done, provenance, task)
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


def _run_ray(cfg: ScoreCommandConfig, device: str, jobs: list, todo: list, out: Path, done, provenance,
             task) -> None:
    """One LayerScorer actor per GPU (or one CPU worker), whole layers each, all of an actor's layers in one call;
    progress from the parts they write. A crashed actor is restarted and its call retried once."""
    import ray

    from actstore.cluster import get, init_ray, kill, start, worker_pool
    from actstore.run.batch import LayerScorer

    if not ray.is_initialized():
        init_ray(cfg.address)
    pool = worker_pool(device, cfg.workers, cfg.worker_env, check=True)
    actors = start(LayerScorer, pool.workers, pool.options, "score worker", cfg, device, pool.worker_threads)
    # each worker's whole list of layers in one call, so that it reads ahead across them
    pending = [actors[w].run.remote(jobs[w::pool.workers]) for w in range(min(pool.workers, len(jobs)))]
    expected = {out / "parts" / part_name(s.key, task): s for s in todo}
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
                    if part_done(out, source, provenance, task):
                        expected.pop(path)
                        done(read_part(path))
                if expected:
                    missing = ", ".join(s.name for s in list(expected.values())[:5])
                    raise RunFailed(f"the workers ended without scoring {len(expected)} SAEs ({missing}); rerun")
    finally:
        kill(actors)

