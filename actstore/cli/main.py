"""The `actstore` command line. One config dataclass per command; the docstring under each field is its
--help text (read from the source, so the two cannot drift). Choices are typed (`typing.Literal`, or a field's
metadata "choices" from a registry) and checked in cli/checks.py; renamed options keep their old spellings as
hidden aliases (a config's ALIASES). Longer than most modules because every command's config and its small
runner live here, side by side.

    actstore extract --model M --layers SPEC --out STORE [...]   run a model once, store its activations
    actstore synth-model --out DIR [--layers N] [--spelling]     the synthetic world's model
    actstore probe STORE [--layers SPEC] [--task NAME]           ground-truth probes of a task (first_letter)
    actstore saes list [--release R] [--layer L] [--width W]     the SAEs of a release (sae-lens catalog)
    actstore synth-saes --store STORE --layer L --out DIR        synthetic SAEs with planted absorption
    actstore score STORE --saes SPEC... --out RESULTS [--task T] absorption, splits, precision/recall per SAE
    actstore report RESULTS [--out DIR]                          figures and an HTML page of the results
    actstore explore RESULTS [--out DIR]                         a static page to explore absorption token by token
    actstore info STORE [--json]                                 what a store holds, complete or not, size
    actstore verify STORE                                        read every shard, check every checksum
    actstore demo --out DIR                                      the chain end to end on synthetic data
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m actstore.cli.main`: the entry point, whose guard covers the imports below
    from actstore.__main__ import main as _entry

    raise SystemExit(_entry())

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import os
import sys
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actstore.errors import InputError, RunFailed, import_advice
from actstore.extract.pipeline import ExtractConfig
from actstore.run.runner import ScoreCommandConfig
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
    planted letter latents, splits and absorbing latents; the planted truth goes beside each as truth.json."""

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


POSITIONAL = {"store", "action", "results"}
HIDDEN = {"worker_env"}  # fault injection for tests, not a CLI option


@functools.lru_cache(maxsize=None)  # reading the source costs ~30 ms a class; main() runs many times in tests
def field_docs(cls) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body (or a dataclass base's)."""
    docs = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, following in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                    and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def add_config_arguments(parser: argparse.ArgumentParser, config) -> None:
    """One option per field of a command's config: its docstring is the help, a Literal type's values (or a
    field's metadata "choices", a function of the registry) are listed there and checked by cli.checks (one place
    for every check), and the config's ALIASES (old spellings of renamed options) are accepted, hidden."""
    from actstore.cli.checks import literal_choices

    docs, hints = field_docs(config), typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if f.name in HIDDEN:
            continue
        kind = hints[f.name]
        optional = type(None) in typing.get_args(kind)
        base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind  # X | None -> X
        allowed = literal_choices(kind) or (f.metadata["choices"]() if "choices" in f.metadata else None)
        flag = f"--{f.name.replace('_', '-')}"
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        doc = docs[f.name] + (f" (one of: {', '.join(allowed)})" if allowed and not all(a in docs[f.name]
                                                                                      for a in allowed) else "")
        if f.name in getattr(config, "positional", POSITIONAL):
            parser.add_argument(f.name, help=doc)
            continue
        if base is bool:
            parser.add_argument(flag, action="store_true", help=doc)
        elif typing.get_origin(base) in (list, tuple):
            item = typing.get_args(base)[0]
            item = str if typing.get_origin(item) is typing.Literal else item
            default = None if required else f.default_factory() if f.default is dataclasses.MISSING else list(f.default)
            parser.add_argument(flag, type=item, nargs="+", required=required, default=default, help=doc)
        elif required:
            parser.add_argument(flag, type=_parse_type(base), required=True, help=doc)
        else:
            shown = "" if "default" in docs[f.name] else f" (default: {f.default})"
            parser.add_argument(flag, type=_parse_type(base), default=f.default, help=doc + shown)
        for alias in [a for a, name in getattr(config, "ALIASES", {}).items() if name == f.name]:
            kwargs = {"action": "store_true"} if base is bool else {"type": _parse_type(base)}
            parser.add_argument(alias, dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def _parse_type(base):
    """What argparse converts an option's text with: str for a Literal (cli.checks checks the value)."""
    return str if typing.get_origin(base) is typing.Literal else base


def cmd_info(cfg: InfoConfig) -> int:
    from actstore.store import verify
    from actstore.store.zarrstore import ActivationStore

    info = verify.info(ActivationStore.open(cfg.store, require_complete=False))
    if cfg.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"store        {info['path']}  (format {info['format_version']}, actstore {info['actstore_version']})")
    print(f"model        {info['model']}" + (f" @ {info['revision']}" if info["revision"] else ""))
    print(f"layers       {info['layers']}  ({info['hook']}, d_model {info['d_model']}, {info['dtype']})")
    print(f"shards       {info['shard_rows']} rows, chunks of {info['chunk_rows']}, codec {info['codec']}")
    for name, rows in info["groups"].items():
        print(f"group        {name}: {rows} rows")
    print(f"tasks        {', '.join(info['tasks']) or 'none'}")
    extra = info["extra"]
    if "vocab_dropped" in extra:
        print(f"vocab        {extra.get('vocab_rows')} rows kept, {extra['vocab_dropped']} dropped"
              + "".join(f"; {v['count']} {r} (e.g. {', '.join(map(repr, v['examples'][:3]))})"
                        for r, v in extra.get("vocab_drops", {}).items()))
    if "bos" in extra:
        print(f"BOS          {extra['bos']['policy']}: " + (f"{extra['bos']['token']!r} prepended"
                                                            if extra["bos"]["token_id"] is not None else "none"))
    prov = extra.get("provenance")
    if prov:
        where = f"{prov['location']}/{prov['gguf_file']} (sha256 {prov['gguf_sha256'][:16]}...)" if prov["gguf_file"] \
            else prov["location"] + (f" @ {prov.get('commit') or prov['revision']}" if prov["kind"] == "hub" else "")
        tok = prov["tokenizer"]
        print(f"source       {where}, given as {prov['given']}")
        print(f"tokenizer    {tok['class']}, {tok['vocab_size']} tokens, vocab sha256 {tok['vocab_sha256'][:16]}...")
    status = "yes" if info["complete"] else f"NO: {sum(info['missing_shards'].values())} shards missing"
    print(f"complete     {status}")
    print(f"on disk      {info['bytes_on_disk'] / 1e6:.1f} MB")
    return 0


def cmd_verify(cfg: VerifyConfig) -> int:
    from actstore.store import verify
    from actstore.store.zarrstore import ActivationStore, resume_command

    store = ActivationStore.open(cfg.store, require_complete=False)  # incomplete shards become problems
    problems = verify.verify(store, progress=sys.stderr.isatty())
    if cfg.json:
        print(json.dumps([p._asdict() for p in problems], indent=2))
    elif problems:
        for p in problems:
            where = f" shard {p.shard} (rows {p.rows[0]}-{p.rows[1] - 1})" if p.shard >= 0 else ""
            print(f"{p.kind:10s} {p.array}{where}: {p.detail}")
        unfinished = {p.array.split("/")[0] for p in problems if p.kind == "incomplete"}
        commands = [store.group_attrs(g).get("resume_command") or resume_command(store) for g in sorted(unfinished)
                    if g in store.groups]  # a task's group added to the store has its own
        for command in dict.fromkeys(c for c in commands if c):
            print(f"resume the write with `{command}`: only the unfinished shards are rewritten")
    else:
        print(f"{cfg.store}: structure as promised, every shard present, intact and in its place, probes intact")
    return 1 if problems else 0


def cmd_demo(cfg: DemoConfig) -> int:
    from actstore.cli.demo import run_demo

    return run_demo(cfg.out, seed=cfg.seed)


def cmd_probe(cfg: ProbeCommandConfig) -> int:
    from actstore.score import probes
    from actstore.extract.pipeline import parse_layers
    from actstore.store.zarrstore import ActivationStore, probe_prefix
    from actstore.tasks.registry import get_task

    task = get_task(cfg.task, cfg.template)
    with ActivationStore.open(cfg.store) as store:
        have = store.layers
        store.task_group(task)  # the task's rows are here (else: which `actstore extract --task` adds them)
    layers = have if cfg.layers == "all" else parse_layers(cfg.layers, max(have) + 1)
    absent = [l for l in layers if l not in have]
    if absent:
        raise InputError(f"{cfg.store} has layers {have}; --layers {cfg.layers} asks for {absent}")
    trained = probes.probe_store(cfg.store, layers, probes.ProbeConfig(epochs=cfg.epochs, seed=cfg.seed), task,
                                 progress=sys.stderr.isatty())
    header = "classes evaluated (F1 > 0.6)"
    print(f"{'layer':>5s} {'test F1 mean':>12s} {'min':>6s} {header:>30s}   task {task.name}")
    for layer, probe in trained.items():
        f1 = probe.metrics["test"]["f1"]
        print(f"{layer:5d} {np.mean(f1):12.3f} {min(f1):6.3f} {len(probe.evaluated_classes()):30d}")
    for layer, probe in trained.items():
        for line in probes.layer_guidance(cfg.store, layer, probe, task=task):
            print(line, file=sys.stderr)
    print(f"saved in {cfg.store}/{probe_prefix(task)}/")
    return 0


def cmd_saes(cfg: SaesConfig) -> int:
    from actstore.saes.loading import gemma_scope_catalog, parse_width

    if cfg.action != "list":
        raise InputError(f"actstore saes knows one action, list; got {cfg.action!r}")
    entries = gemma_scope_catalog(cfg.release, cfg.layer, parse_width(cfg.width) if cfg.width else None)
    if cfg.json:
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return 0
    print(f"{'id':42s} {'layer':>5s} {'width':>8s} {'L0':>6s}")
    for e in entries:
        print(f"{e.id:42s} {'emb' if e.layer is None else e.layer:>5} {e.width:8d} {e.l0 if e.l0 else '-':>6}")
    print(f"{len(entries)} SAEs in {cfg.release}")
    return 0


def cmd_extract(cfg: ExtractConfig) -> int:
    from actstore.extract.pipeline import Interrupted, extract

    try:
        summary = extract(cfg, progress=sys.stderr.isatty())
    except Interrupted as stop:  # Ctrl-C: finished shards kept, one line, the shell's status for SIGINT
        print(stop.args[0], file=sys.stderr)
        return 130
    print(f"{summary['store']}: computed {summary['rows_computed']} rows ({summary['group']} {summary['vocab_rows']}, "
          f"{summary['vocab_dropped']} dropped; context {summary['context_rows']}) for layers {summary['layers']} "
          f"in {summary['seconds']:.1f}s")
    return 0


def cmd_synth_saes(cfg: SynthSAEsCommandConfig) -> int:
    from actstore.saes.synthetic import write_synthetic_saes

    base = SynthSAEConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(SynthSAEConfig)})
    for folder in write_synthetic_saes(cfg.store, cfg.layer, cfg.out, base, log=print):
        truth = json.loads((folder / "truth.json").read_text())["summary"]
        print(f"{folder}: planted absorption fraction {truth['absorption_fraction']:.3f}, full absorption "
              f"{truth['full_absorption_rate']:.3f}, split features {truth['num_split_features']:.3f}")
    return 0


def cmd_score(cfg: ScoreCommandConfig) -> int:
    from actstore.run.runner import run_score

    summary = run_score(cfg, progress=sys.stderr.isatty())
    flagged = f" ({summary['flagged']} flagged)" if summary["flagged"] else ""
    print(f"{summary['out']}: {summary['scored']} SAEs scored{flagged}, {summary['failed']} failed; computed "
          f"{summary['computed']} of {summary['named']} in {summary['seconds']:.1f}s "
          f"({summary['saes_per_minute']:.1f} SAEs/min)")
    return 1 if summary["failed"] else 0


def cmd_report(cfg: ReportConfig) -> int:
    from actstore.report.pages import write_report

    written = write_report(cfg.results, cfg.out or os.path.join(cfg.results, "report"), sae=cfg.sae)
    flagged = f", {written['flagged']} flagged" if written["flagged"] else ""
    tasks = f" on {len(written['tasks'])} tasks" if len(written["tasks"]) > 1 else ""
    print(f"{written['html']}: {written['scored']} SAEs{tasks} ({written['failed']} failed{flagged}), "
          f"{len(written['figures'])} figures")
    return 0


def cmd_explore(cfg: ExploreConfig) -> int:
    from actstore.report.explorer import write_explorer

    written = write_explorer(cfg.results, cfg.out)
    tasks = f" on {len(written['tasks'])} tasks ({', '.join(written['tasks'])})" if len(written["tasks"]) > 1 else ""
    print(f"{written['html']}: {written['saes']} SAEs{tasks}; open it in a browser (file:// works, no server needed)")
    return 0


def cmd_synth_model(cfg: SynthModelConfig) -> int:
    from actstore.extract.synthetic import write_synthetic_model

    path = write_synthetic_model(cfg.out, n_layers=cfg.layers, seed=cfg.seed, spelling=cfg.spelling)
    kind = "spelling " if cfg.spelling else ""
    print(f"wrote a {cfg.layers}-layer {kind}synthetic Gemma2 and its tokenizer to {path}")
    return 0


COMMANDS = {
    "extract": (ExtractConfig, cmd_extract),
    "synth-model": (SynthModelConfig, cmd_synth_model),
    "probe": (ProbeCommandConfig, cmd_probe),
    "saes": (SaesConfig, cmd_saes),
    "synth-saes": (SynthSAEsCommandConfig, cmd_synth_saes),
    "score": (ScoreCommandConfig, cmd_score),
    "report": (ReportConfig, cmd_report),
    "explore": (ExploreConfig, cmd_explore),
    "info": (InfoConfig, cmd_info),
    "verify": (VerifyConfig, cmd_verify),
    "demo": (DemoConfig, cmd_demo),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (not usage plus error), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="actstore", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (config, _) in COMMANDS.items():
        doc = " ".join(config.__doc__.split())
        add_config_arguments(sub.add_parser(name, help=doc.split(";")[0], description=doc), config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Its input checks' errors (InputError) are one line and exit 2; a stopped run (Ctrl-C,
    SIGTERM, the disk, a worker) is one line and exit 1 (130 for Ctrl-C, 143 for SIGTERM); anything else is a bug
    in actstore: one line naming a log file that holds the traceback, exit 1. A Ctrl-C while the arguments are
    parsed is one line too; one in the imports before this runs is actstore/__main__.py's (the entry point)."""
    from actstore.cli import checks
    from actstore.store import locks
    from actstore.__main__ import say, stopped

    if argv is None:  # a process's own command line: a console script installed when it named actstore.cli.main:main
        from actstore.__main__ import main as entry

        return entry()  # the entry point's handling, which calls this again with the arguments
    words = [a for a in argv if not a.startswith("-")]
    command = words[0] if words else ""  # for a line before parsing ends; then the parsed one
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        config_cls, run = COMMANDS[command]
        cfg = config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
                            if f.name not in HIDDEN})
        checks.check(command, cfg)  # every argument, before any work
        with locks.hold(command, cfg):
            return run(cfg)
    except BrokenPipeError:  # `actstore info ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except InputError as err:
        say(f"{_who(command)}: error: {err}")
        return 2
    except (OSError, RunFailed, KeyboardInterrupt) as err:  # the disk, a worker, Ctrl-C, SIGTERM: one line
        line, code = stopped() or (checks.failure_line(err), 130 if isinstance(err, KeyboardInterrupt) else 1)
        if getattr(err, "remote_traceback", "") and code == 1:  # a worker's unforeseen failure: keep its traceback
            line += f" (the worker's traceback is in {error_log(command, argv, err)})"
        say(f"{_who(command)}: {line}")
        return code
    except ImportError as err:  # the environment, not our code nor the input: say what to do
        say(f"{_who(command)}: error: {type(err).__name__}: {err}{import_advice()}")
        return 1
    except Exception as err:  # noqa: BLE001 - a bug in actstore, not the user's input: say so, keep the traceback
        if stop := stopped():  # what a Ctrl-C or SIGTERM broke on its way (Ray's processes get Ctrl-C too)
            say(f"{_who(command)}: {stop[0]}")
            return stop[1]
        log = error_log(command, argv, err)
        detail = str(err).splitlines()[0] if str(err) else ""
        say(f"{_who(command)}: internal error (a bug in actstore, not in your input): "
            f"{type(err).__name__}: {detail}; the traceback is in {log}; please report it with that file")
        return 1


def error_log(command: str, argv: list[str] | None, err: BaseException) -> Path:
    """Write the command line, versions and traceback of an unexpected error (and a worker's, when it carries
    one) to $ACTSTORE_CACHE/logs/ (default ~/.cache/actstore/logs), or the temporary folder if that cannot be
    written; returns the file's path."""
    import platform
    import tempfile
    import time
    import traceback

    from actstore import __version__
    from actstore.extract.model import cache_dir

    text = (f"actstore {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
            f"command: actstore {' '.join(sys.argv[1:] if argv is None else argv)}\n"
            f"working folder: {os.getcwd()}\n\n" + "".join(traceback.format_exception(err))
            + (f"\nthe worker's traceback:\n{err.remote_traceback}" if getattr(err, "remote_traceback", "") else ""))
    name = f"internal-error-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (cache_dir() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue
    return Path("(no writable folder for the log)")


def _who(command: str) -> str:
    """What a line of main() starts with: `actstore score`, or `actstore` before a command is known."""
    return f"actstore {command}" if command else "actstore"


# `python -m actstore.cli.main` runs actstore/__main__.py's entry point instead: see the top of this file.
