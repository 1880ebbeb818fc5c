"""What each command does once its arguments are checked: one small function per command, taking its config and
returning the exit code (cli/main.py's COMMANDS maps a command's name to its config and its function). The work
itself is elsewhere (store/, extract/, score/, run/, report/); these functions call it and print its summary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

from actstore.cli.configs import (DemoConfig, ExploreConfig, InfoConfig, ProbeCommandConfig, ReportConfig, SaesConfig,
                                  SynthModelConfig, SynthSAEsCommandConfig, VerifyConfig)
from actstore.errors import InputError
from actstore.extract.pipeline import ExtractConfig
from actstore.run.runner import ScoreCommandConfig
from actstore.saes.synthetic import SynthSAEConfig


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


def cmd_synth_world(cfg) -> int:
    from actstore.world.run import synth_world

    synth_world(cfg, progress=sys.stderr.isatty())
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

