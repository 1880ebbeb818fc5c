"""`actstore demo`: the pipeline end to end on the synthetic world, checked as it goes.

1. synth-model: a tiny Gemma2 with planted first-letter directions and its offline tokenizer, and a
   corpus of the synthetic vocabulary, as JSONL;
2. extract: Ray actors run the model on the vocabulary task and the corpus into a store (rerunning the
   demo resumes a killed run, or finds the store complete and computes nothing);
3. verify every shard and checksum;
4. probe: train the ground-truth probe of every layer (SAEBench's recipe) and save it in the store; on
   layer 0 it must find the planted letters (mean test F1 >= 0.9);
5. synth-saes: four SAEs on layer 0 with planted absorption 0%, 10%, 30%, 50% of each letter's true
   positives, and two letters split into 2 and 3 latents (truth.json beside each; kept on a rerun);
6. score them (`actstore score`, results in DIR/results; a rerun skips what is scored);
7. print planted against measured values: every evaluated letter's absorption fraction, full-absorption
   rate, number of split features and (unsplit letters) single-latent F1, and their means, within
   `synth_saes.TOLERANCE`;
8. `actstore report` on the results: figures and an HTML page in DIR/results/report;
9. `actstore explore` on the results: the absorption explorer in DIR/results/explorer, checked against the
   planted truth (every planted absorbed token listed, with exactly its planted absorber);
10. a second task, from a label file as a user would write one: DIR/vowels.csv labels every vocabulary token
   of the store by whether its word starts with a vowel (`labels:vowels`, 2 classes, relabeling the first-letter
   rows: no extraction). Its probes are trained, SAEs planted against them (absorption 0/20/40%, one class
   split in 2; DIR/saes_vowels), scored into the same results folder beside the first task's, and checked
   planted against measured as in 7; report and explorer are rebuilt with both tasks.

Exit status 1 if a check fails.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from actstore.store import verify
from actstore.store.zarrstore import ActivationStore
from actstore.tasks.base import FIRST_LETTER

MIN_PROBE_F1 = 0.9


def write_corpus(path: Path, seed: int, docs: int = 80, words_per_doc: int = 200) -> None:
    """Documents of random synthetic-vocabulary words, with some non-alphabetic tokens mixed in."""
    from actstore.extract.synthetic import pseudo_words

    words = pseudo_words(40, seed) + ["has", "the", "first", "letter", "123", "A"]
    rng = np.random.default_rng(seed + 1)
    with open(path, "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": " ".join(rng.choice(words, size=words_per_doc))}) + "\n")


def run_demo(out: str, seed: int = 0) -> int:
    from actstore.extract.pipeline import ExtractConfig, extract
    from actstore.score.probes import probe_store
    from actstore.extract.synthetic import write_synthetic_model

    t0 = time.perf_counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir, corpus, store_path = out_dir / "model", out_dir / "corpus.jsonl", out_dir / "store.zarr"
    if not (model_dir / "config.json").exists():
        write_synthetic_model(model_dir, n_layers=4, seed=seed)
        write_corpus(corpus, seed)
    print(f"1. synthetic model (4-layer Gemma2, planted letter directions) and corpus in {out_dir}")

    cfg = ExtractConfig(model=str(model_dir), out=str(store_path), contexts=str(corpus), context_rows=8192,
                        context_length=64, shard_rows=1024, batch_size=16, resume=store_path.exists())
    summary = extract(cfg, progress=True)
    print(f"2. extracted layers {summary['layers']}: {summary['vocab_rows']} vocabulary prompts and "
          f"{summary['context_rows']} context tokens; computed {summary['rows_computed']} rows in "
          f"{summary['seconds']:.1f}s" + (" (resumed)" if cfg.resume else ""))

    store = ActivationStore.open(store_path)
    problems = verify.verify(store)
    print(f"3. verified every shard and checksum: {'ok' if not problems else problems}")
    store.close()
    trained = probe_store(str(store_path))
    f1 = {layer: float(np.mean(probe.metrics["test"]["f1"])) for layer, probe in trained.items()}
    print("4. ground-truth probes saved in the store; mean test F1 by layer: "
          + ", ".join(f"{layer}: {value:.3f}" for layer, value in f1.items())
          + f" (layer 0 needs >= {MIN_PROBE_F1})")
    f1 = f1[0]

    from actstore.run.runner import ScoreCommandConfig, run_score
    from actstore.saes.synthetic import SynthSAEConfig, sae_folders, write_synthetic_saes

    synth_cfg = SynthSAEConfig(seed=seed)
    folders = sae_folders(out_dir / "saes", 0, synth_cfg)
    if not all((folder / "truth.json").exists() for folder in folders):  # truth.json is written last
        folders = write_synthetic_saes(str(store_path), 0, out_dir / "saes", synth_cfg)
    print(f"5. {len(folders)} synthetic SAEs (layer 0, planted absorption 0/10/30/50%, splits into 2 and 3) "
          f"to {out_dir / 'saes'}")
    summary = run_score(ScoreCommandConfig(store=str(store_path), saes=[str(out_dir / "saes")],
                                           out=str(out_dir / "results"), device="cpu"), progress=True,
                        log=lambda line: print("   " + line))
    print(f"6. scored: {summary['scored']} SAEs ({summary['computed']} computed now) in {summary['seconds']:.1f}s")
    ok = print_truth_table(folders, out_dir / "results") and summary["failed"] == 0
    from actstore.report.pages import write_report

    report = write_report(out_dir / "results")
    print(f"8. report: {report['html']} ({len(report['figures'])} figures)")
    from actstore.report.explorer import write_explorer

    explorer = write_explorer(out_dir / "results")
    listed = explorer_matches_truth(folders, Path(explorer["html"]).parent)
    ok &= listed
    print(f"9. explorer: {Path(explorer['html']).resolve()} ({explorer['saes']} SAEs; planted absorptions "
          f"{'all listed with their planted absorbers' if listed else 'NOT ALL LISTED'}); open it in a browser")

    ok &= second_task(out_dir, store_path, seed)
    info = verify.info(store)
    print(f"store: {info['groups']}, {info['bytes_on_disk'] / 1e6:.1f} MB; demo took {time.perf_counter() - t0:.1f}s")
    return 0 if not problems and f1 >= MIN_PROBE_F1 and ok else 1


SECOND_TASK_ABSORPTION = (0.0, 0.2, 0.4)
VOWELS = "aeiou"


def write_vowel_labels(store_path: Path, path: Path) -> int:
    """A label file (CSV, token,class) for every vocabulary token of the store: vowel or consonant, by the
    first letter of its word. Returns the number of tokens labeled."""
    import csv

    from actstore.tasks.base import word_of

    with ActivationStore.open(store_path) as store:
        texts = sorted({str(t) for t in store.column("vocab", "text")})
    rows = [(t, "vowel" if word_of(t)[0].lower() in VOWELS else "consonant") for t in texts if word_of(t)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["token", "class"])
        writer.writerows(rows)
    return len(rows)


def second_task(out_dir: Path, store_path: Path, seed: int) -> bool:
    """Step 10: a user's label file as a second task beside the first, planted and checked the same way."""
    from actstore.report.explorer import write_explorer
    from actstore.report.pages import write_report
    from actstore.run.runner import ScoreCommandConfig, run_score
    from actstore.saes.synthetic import SynthSAEConfig, sae_folders, write_synthetic_saes
    from actstore.score.probes import probe_store
    from actstore.tasks.registry import get_task

    labels = out_dir / "vowels.csv"
    count = write_vowel_labels(store_path, labels)
    spec = f"labels:{labels}"
    task = get_task(spec)
    probe = probe_store(str(store_path), [0], task=task)[0]
    f1 = dict(zip(task.classes, probe.metrics["test"]["f1"]))
    print(f"10. second task {task.name} ({count} tokens labeled in {labels.name}: {', '.join(task.classes)}; it "
          f"relabels the first-letter rows): probe test F1 on layer 0 "
          + ", ".join(f"{c} {v:.3f}" for c, v in f1.items()))
    synth_cfg = SynthSAEConfig(seed=seed, absorption=SECOND_TASK_ABSORPTION, splits=(2,), task=spec)
    saes = out_dir / "saes_vowels"
    folders = sae_folders(saes, 0, synth_cfg)
    if not all((folder / "truth.json").exists() for folder in folders):
        folders = write_synthetic_saes(str(store_path), 0, saes, synth_cfg, log=lambda line: print("    " + line))
    summary = run_score(ScoreCommandConfig(store=str(store_path), saes=[str(saes)], out=str(out_dir / "results"),
                                           device="cpu", task=spec), progress=True, log=lambda line: print("    " + line))
    print(f"    {task.name}: {len(folders)} SAEs ({summary['computed']} computed now) in {summary['seconds']:.1f}s, "
          f"beside the first task's in {out_dir / 'results'}")
    ok = print_truth_table(folders, out_dir / "results", task.name) and summary["failed"] == 0
    ok &= min(f1.values()) >= MIN_PROBE_F1
    report = write_report(out_dir / "results")
    explorer = write_explorer(out_dir / "results")
    listed = explorer_matches_truth(folders, Path(explorer["html"]).parent, task.name)
    print(f"    report and explorer rebuilt with both tasks: {report['html']}; {task.name}'s planted absorptions "
          f"{'all listed with their planted absorbers' if listed else 'NOT ALL LISTED'}")
    return ok and listed


COLUMN_NAMES = {"single_f1": "single_f1 (unsplit classes)"}
"""Headers of the demo's table where the metric's own name would mislead: the planted single-latent F1 exists
for unsplit classes only, so its mean is not saes.parquet's mean_single_f1 (over every evaluated class)."""


def explorer_matches_truth(folders: list[Path], explorer: Path, task: str = FIRST_LETTER) -> bool:
    """Whether the explorer's data lists, for every synthetic SAE of `task` and evaluated class, exactly the
    planted absorbed tokens (vocabulary rows), each with exactly its planted absorber."""
    from actstore.saes.synthetic import truth_classes

    index = _data_file(explorer / "data" / "index.js")
    by_key = {(s["key"], s["task"]): s for s in index["saes"]}
    for folder in folders:
        truth = json.loads((folder / "truth.json").read_text())
        data = _data_file(explorer / "data" / by_key[str(folder.resolve()), task]["file"])
        evaluated, per_class = truth_classes(truth)
        for name in evaluated:
            planted = {row: [latent] for row, latent in per_class[name].get("absorbed_rows", [])}
            listed = {t[0]: [a[0] for a in t[7]] for t in data["tokens"].get(name, [])}
            if listed != planted:
                return False
    return True


def _data_file(path: Path):
    """The JSON payload of an explorer data file (`CALL({...});`)."""
    text = path.read_text()
    return json.loads(text[text.index("(") + 1:text.rindex(")")])


def print_truth_table(folders: list[Path], results: Path, task: str = FIRST_LETTER) -> bool:
    """Planted against measured for each synthetic SAE of `task`; True when every value is within tolerance."""
    from actstore.run.results import read_classes
    from actstore.saes.synthetic import TOLERANCE, compare_with_truth

    class_rows = [r for r in read_classes(results) if r["task"] == task]
    metrics = list(TOLERANCE)
    print(f"   {'planted / measured':16s} " + " ".join(f"{COLUMN_NAMES.get(m, m):>26s}" for m in metrics))
    all_ok, misses = True, []
    for folder in folders:
        truth = json.loads((folder / "truth.json").read_text())
        rows = [r for r in class_rows if r["sae_key"] == str(folder.resolve())]
        checks = compare_with_truth(truth, rows)
        means = {c["metric"]: c for c in checks if c["scope"] == "mean"}
        cells = [f"{means[m]['planted']:.4f} / {means[m]['measured']:.4f} {'ok' if means[m]['ok'] else 'MISS':>4s}"
                 for m in metrics]
        print(f"   {folder.name:16s} " + " ".join(f"{c:>26s}" for c in cells))
        splits = [c for c in checks if c["metric"] == "num_split_features" and c["scope"] != "mean" and c["planted"] > 1]
        print(f"   {'':16s} split classes: " + ", ".join(f"{c['scope']} {c['planted']:.0f} / {c['measured']:.0f}"
                                                   for c in splits)
              + f"; classes checked: {sum(c['metric'] == 'absorption_fraction' and c['scope'] != 'mean' for c in checks)}")
        misses += [(folder.name, c) for c in checks if not c["ok"]]
        all_ok &= all(c["ok"] for c in checks)
    for name, c in misses:
        print(f"   MISS {name} class {c['scope']} {c['metric']}: planted {c['planted']:.4f}, measured {c['measured']:.4f}")
    print(f"{'7.' if task == FIRST_LETTER else '  '} {task}: planted vs measured, per class and mean, tolerances {TOLERANCE}: {'all within' if all_ok else 'MISSED'}")
    return all_ok
