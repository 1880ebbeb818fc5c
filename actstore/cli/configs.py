"""The config dataclass of each command that has none elsewhere (extract's is extract/pipeline.ExtractConfig,
score's run/runner.ScoreCommandConfig, synth-saes' base saes/synthetic.SynthSAEConfig). The docstring under each
field is its --help text (cli/main.py reads it from the source, so the two cannot drift); a class's docstring is
the command's description, its text before the first ";" the one-line summary in `actstore --help`. Choices are
typed (`typing.Literal`, or a field's metadata "choices" from a registry) and checked in cli/checks.py.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from actstore.saes.synthetic import SynthSAEConfig
from actstore.tasks.registry import DEFAULT_TASK, task_names


@dataclass
class InfoConfig:
    """Show what a store holds: model, layers, groups and rows, completeness, bytes on disk."""

    store: str
    """path of the store (a .zarr directory)"""
    json: bool = False
    """print machine-readable JSON instead of a table"""


@dataclass
class VerifyConfig:
    """Read every shard of a store and check its manifest, files and checksums; exit 1 on any problem."""

    store: str
    """path of the store (a .zarr directory)"""
    json: bool = False
    """print the problems as JSON"""


@dataclass
class DemoConfig:
    """Run the pipeline end to end on the built-in synthetic world and check what it produced."""

    out: str = "demo_out"
    """directory for the demo's outputs (created; a rerun resumes or rechecks)"""
    seed: int = 0
    """random seed of the synthetic world"""


@dataclass
class SynthModelConfig:
    """Write the synthetic world's model: a tiny Gemma2 with planted first-letter directions and an
    offline word-level tokenizer, as a normal Hugging Face model directory."""

    out: str
    """directory to write the model into"""
    layers: int = 4
    """number of transformer blocks"""
    seed: int = 0
    """random seed (pseudo-words, weights, planted directions)"""
    spelling: bool = False
    """plant a spelling circuit: an attention head in the last block moves the query word's letter to the final position and the unembedding reads it out as the tokens A..Z (for the causal metric, `score --causal`)"""


@dataclass
class ProbeCommandConfig:
    """Train the ground-truth probe of a task at each layer on the store's vocabulary rows of that task
    (one-vs-rest, SAEBench's settings) and save it in the store with per-class train/test precision, recall and
    F1."""

    store: str
    """path of the store (a .zarr directory)"""
    layers: str = "all"
    """layers to probe: a list (0,5,12), a range (0-25) or all (the store's layers)"""
    task: str = dataclasses.field(default=DEFAULT_TASK, metadata={"choices": task_names})
    """the task: a built-in task or labels:FILE (a CSV or JSONL of token -> class); its probes go to probes/ (first_letter) or probes/<task>/"""
    template: str | None = None
    """the prompt template a labels:FILE task was extracted with (`extract --task labels:FILE --template T`); without it the task relabels first_letter's rows"""
    epochs: int = 50
    """training epochs (SAEBench: 50)"""
    seed: int = 0
    """random seed of initialization and batch order"""


@dataclass
class SaesConfig:
    """List the SAEs of a release from sae-lens's catalog (pretrained_saes.yaml)."""

    action: str
    """what to do: list"""
    release: str = "gemma-scope-2b-pt-res"
    """the release, as sae-lens names it"""
    layer: int | None = None
    """only SAEs reading this layer"""
    width: str | None = None
    """only SAEs of this width (16k, 65k, 1m, ...)"""
    json: bool = False
    """print JSON instead of a table"""


@dataclass(kw_only=True)
class SynthSAEsCommandConfig(SynthSAEConfig):
    """Write synthetic JumpReLU SAEs in Gemma Scope's params.npz layout, built against a store's probes, with
    planted class latents, splits and absorbing latents; the planted truth goes beside each as truth.json."""

    positional: typing.ClassVar[set[str]] = set()  # `--store STORE`, as the other synth command reads
    store: str
    """path of the store (with probes: run `actstore probe` first)"""
    layer: int
    """the layer the SAEs read"""
    out: str
    """folder to write layer_L/width_W/absorption_F/params.npz into"""


@dataclass
class ReportConfig:
    """Plot a results folder of `actstore score`, one section per task: absorption and full absorption against L0
    per width (panels by layer), a layer x width heatmap, single-latent F1 and split features against L0; PNGs and
    one HTML page."""

    results: str
    """results folder written by `actstore score`"""
    out: str | None = None
    """folder for the PNG figures and report.html (default: RESULTS/report)"""
    sae: str | None = None
    """the SAE whose absorption per class is drawn, for each task (an id, or a prefix of one; default: the one with the highest mean absorption)"""


@dataclass
class ExploreConfig:
    """Write a static absorption explorer of a results folder: choose a task, an SAE and a class, see the main
    latents, the tokens they miss and the latents that absorb them, and search a token across every SAE. Opens
    from file:// in a browser, no server needed."""

    results: str
    """results folder written by `actstore score`"""
    out: str | None = None
    """folder for the page and its data files (default: RESULTS/explorer)"""

