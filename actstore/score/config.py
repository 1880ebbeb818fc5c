"""What the scorer takes: its constants (`ScoreConfig`, SAEBench's absorption eval by default) and one layer's
rows of a store (`LayerData`, labeled for a task with C classes: defined in actstore/store/layers.py, which
builds it, and named here for the scorer's callers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from actstore.score import metrics
from actstore.score.causal import CausalConfig
from actstore.score.probes import ProbeConfig
from actstore.store.layers import LayerData  # noqa: F401 - re-exported: the scorer's input

L1_SOLVERS = ("saebench", "converged")
"""`--l1-solver` choices (ScoreConfig.l1_solver)"""


@dataclass
class ScoreConfig:
    """Scoring constants; defaults are SAEBench's absorption eval."""

    sparse_probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(batch_size=4096, weight_decay=1e-6))
    """the L1 probe's training recipe (SAEBench: batch 4096, weight decay 1e-6, lr 1e-2 to 1e-5, 50 epochs)"""
    l1: float = 1e-2
    """L1 coefficient: times the mean over classes of the summed absolute weights"""
    max_k: int = metrics.SPLIT_MAX_K
    """largest k tried in k-sparse probing"""
    split_min_f1_gain: float = metrics.SPLIT_MIN_F1_GAIN
    """keep k + 1 latents only if test F1 improves by more than this"""
    min_probe_f1: float = 0.6
    """classes are evaluated when their ground-truth probe's test F1 is above this (strictly, as SAEBench)"""
    min_classes: int = 2
    """an SAE with fewer evaluated classes is not scored (its standard deviations need two)"""
    token_chunk: int = 4096
    """rows encoded at once"""
    latent_chunk: int = 16384
    """latents encoded at once; token_chunk x latent_chunk fp32 values is the encoder's working memory"""
    backend: str = "auto"
    """encoder: torch (the reference), triton (the fused kernel), or auto (triton on CUDA for JumpReLU/ReLU)"""
    encode_dtype: str = "bfloat16"
    """the fused kernel's operands (triton backend): bfloat16 or float16 on tensor cores, each followed by an exact
    fp32 recheck of the candidates near or past the threshold (every firing decision and value is fp32's), or
    float32 (the fp32 kernel alone, no tensor cores); the torch backend computes in the SAE's dtype"""
    l1_solver: str = "saebench"
    """the L1 probe: saebench (50 Adam epochs from a seeded random start, as SAEBench) or converged (the same
    objective solved to its KKT conditions, no seed: actstore.score.l1solver)"""
    l1_tol: float = 1e-6
    """converged: the largest KKT violation allowed at the solution"""
    l1_max_iter: int = 20000
    """converged: iteration cap (the summary says whether the tolerance was met: l1_converged)"""
    seeds: int = 1
    """the L1 probe's seed-dependent steps run for seeds sparse_probe.seed, +1, ... over one encoding"""
    metric_version: str = "saebench-0.6"
    """absorption fraction and class rules: a key of metrics.METRIC_VERSIONS"""
    bootstrap: int = 1000
    """bootstrap replicates of the 95% intervals (0: none)"""
    bootstrap_seed: int = 0
    nulls: tuple[str, ...] = ()
    """null SAEs scored beside this one: keys of actstore.score.nulls.NULLS"""
    records: bool = True
    """per-token records and each absorbing latent's top tokens (SAEScore.tokens, latent_top_tokens); the null
    SAEs skip them (only their metrics are read)"""
    top_tokens: int = 8
    """vocabulary tokens kept per absorbing latent, most active first"""
    text_l0_rows: int = 8192
    """labeled context tokens the L0 on natural text is measured on (0: not measured; the null SAEs)"""
    causal: CausalConfig | None = None
    """the paper's causal absorption metric beside the projection metrics (actstore.score.causal), or None"""
