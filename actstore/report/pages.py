"""`actstore report RESULTS [--out DIR]`: the figures and tables a reader of "A is for Absorption" expects,
from a results folder of `actstore score` (DIR defaults to RESULTS/report), one section per task the folder
holds: first_letter's figures in DIR (their names as before tasks), any other task's in DIR/<task key>/.

    f1_by_layer.png             per layer: F1 of the ground-truth probe, the main latents and the best single
                                latent (latents classify worse than probes)
    absorption_per_class.png    absorption fraction and full absorption per class: one SAE (--sae, default
                                the most absorbing) and every SAE (mean, min to max)
    precision_recall.png        the main latents' precision against recall, one point per SAE, coloured by L0
    absorption_vs_l0.png        mean absorption fraction against L0, one line per width, a panel per layer
    full_absorption_vs_l0.png   full-absorption rate against L0, likewise
    layer_width_heatmap.png     mean absorption fraction by layer (rows) and by width and L0 rank (columns)
    f1_vs_l0.png                the best single latent's F1 (mean over classes) against L0
    splits_vs_l0.png            number of split features (mean over classes) against L0
    report.html                 one self-contained page: every task's figures (embedded) and tables
    report.json                 what was written: totals, and per task its SAEs, figures and chosen SAE

The figures are drawn by figures.py; this module reads the results and lays the page out.

A results folder written before tasks (no `task` column, a `letter` column) is first_letter's and reads as such.

The four figures against L0 draw, when the results carry them, each SAE's 95% bootstrap interval as an error
bar (absorption, full absorption and single-latent F1; on by default), its null SAE's values (`--null`,
shuffled firing) as a band in the width's colour, and its chance level (`--null`, random decoder: what random
directions of the same width and L0 score by chance; not a zero baseline) as a dotted line.

Every figure and the SAE table name the L1 solver their numbers come from (`--l1-solver`); with `--seeds` > 1
the plain values are the first seed's, and the SAE table adds each metric's standard deviation and range
(max - min) over the seeds (saes.parquet's `<metric>_seed_std` / `_seed_range`).

L0 is the one the release reports (Gemma Scope's average_l0) when there is one, else the L0 measured on
natural text (the store's context tokens), else on the vocabulary prompts; each figure's axis says which.
Lower absorption is better.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from string import Template

from actstore.errors import InputError, MissingFile
from actstore.report.figures import (FIGURES, absorption_per_class, f1_by_layer, finite, l0_axis,  # noqa: F401
                                     layer_width_heatmap, panels_figure, precision_recall, save_panels, solver_note,
                                     width_name)
# l0_axis and panels_figure: re-exported (the report's figures lived here before figures.py)
from actstore.run.results import read_classes, read_saes
from actstore.tasks.base import FIRST_LETTER, task_key

L0_SOURCES = (("l0_reported", "release"), ("l0_text", "natural text"), ("l0_vocab", "vocabulary prompts"))
"""Where an SAE's L0 comes from, in order of preference."""


def load_results(results: Path) -> tuple[list[dict], list[dict]]:
    """(scored SAE rows, failed SAE rows) of a results folder; each row gets `l0` and `l0_source`. A flagged SAE
    (status `flagged`: scored, its numbers suspect for the reason given) is scored, as `score` counts it."""
    path = Path(results) / "saes.parquet"
    if not path.exists():
        raise MissingFile(f"{results} has no saes.parquet: run `actstore score ... --out {results}` first")
    rows = read_saes(results)  # each with its task (first_letter in a folder written before tasks)
    for row in rows:
        row["l0"], row["l0_source"] = next(((row[k], name) for k, name in L0_SOURCES if finite(row.get(k))),
                                           (None, "none"))
    scored = ("ok", "flagged")
    return [r for r in rows if r["status"] in scored], [r for r in rows if r["status"] not in scored]


def choose_sae(scored: list[dict], wanted: str | None) -> dict:
    """The SAE whose classes are drawn: the one named (an id or a prefix of one), else the most absorbing."""
    if wanted:
        match = [r for r in scored if r["sae_id"] == wanted] or [r for r in scored if r["sae_id"].startswith(wanted)]
        if not match:
            raise InputError(f"--sae {wanted!r} names no scored SAE; ids look like {scored[0]['sae_id']!r}")
        return match[0]
    return max(scored, key=lambda r: (r["mean_absorption_fraction"], r["sae_id"]))


def _table(headers: list[str], rows: list[list], table_id: str) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


PAGE = Path(__file__).parent / "static" / "report.html"
"""The report's page, with $placeholders that write_report fills (string.Template); it lives beside the
explorer's page files."""


AGREEMENT_HEADERS = ["both", "projection only", "causal only", "neither", "not sampled"]


def agreement_section(scored: list[dict], classes: list[dict], chosen: dict, suffix: str = "") -> tuple[str, int]:
    """The projection-vs-causal tables (`score --causal`): per SAE, and per class of the chosen SAE, the probe
    true positives each metric calls absorbed (actstore.score.causal.AGREEMENT); ("", 0) without causal results."""
    from actstore.score.causal import AGREEMENT

    causal = [r for r in scored if r.get("mean_causal_absorption") is not None]
    if not causal:
        return "", 0
    per_sae = [[r["sae_id"], r["layer"], width_name(r["width"]), r["mean_full_absorption"], r["mean_causal_absorption"],
                *[r.get(f"total_{k}") for k in AGREEMENT]]
               for r in sorted(causal, key=lambda r: (r["layer"], r["width"], r["l0"] or 0))]
    mine = [r for r in classes if r["sae_key"] == chosen["sae_key"] and r.get("causal_absorption_rate") is not None]
    per_class = [[r["class"], r["num_probe_true_positives"], r["full_absorption_rate"], r["causal_absorption_rate"],
                   r["causal_candidates"], *[r[k] for k in AGREEMENT]] for r in mine]
    html_text = (
        "<h2>Projection vs causal absorption</h2><p>Probe true positives (test split) that the projection metric "
        "(absorption fraction &gt; 0 or full absorption) and the paper's causal metric (integrated-gradient "
        "ablation through the model) call absorbed. A token that is not a causal candidate (a main latent fires, or "
        "the k-sparse probe does) counts as causally not absorbed; candidates outside the causal sample are "
        "counted apart.</p>"
        + _table(["SAE", "layer", "width", "full absorption", "causal absorption", *AGREEMENT_HEADERS], per_sae,
                 "agreement" + suffix)
        + f"<h3>Per class: {html.escape(chosen['sae_id'])}</h3>"
        + _table(["class", "probe true positives", "full absorption", "causal absorption", "causal candidates",
                  *AGREEMENT_HEADERS], per_class, "agreement_classes" + suffix))
    return html_text, 2


SEED_METRICS = (("mean_absorption_fraction", "absorption"), ("mean_full_absorption", "full absorption"),
                ("mean_num_split_features", "split features"), ("mean_single_f1", "single-latent F1"))
"""The SAE table's metrics whose spread over seeds it shows (with --seeds > 1), and their headers."""
BASELINES = (("chance_random_decoder_", "chance level (random decoder)"),
             ("null_shuffled_firing_", "shuffled-firing null"))
"""The SAE table's reference columns (`--null`), for absorption and full absorption: prefix and header."""
SOLVERS = {"saebench": "SAEBench's L1 probe, 50 Adam epochs from a seeded random start: its numbers move with the "
                       "seed on SAEs with near-duplicate class latents",
           "converged": "the same L1 objective solved to optimality: no seed, the same numbers for any seed"}


def sae_table(scored: list[dict], suffix: str) -> str:
    """The SAE table: ids, L0s, the L1 solver and seeds, the means; with --seeds > 1 each SEED_METRICS metric's
    standard deviation and range over seeds; with --null the chance level and the shuffled-firing null of
    absorption and full absorption; and a note saying what the solver and those columns are."""
    seeded = any((r.get("seeds") or 1) > 1 for r in scored)
    baselines = [(prefix, name) for prefix, name in BASELINES
                 if any(finite(r.get(prefix + "mean_absorption_fraction")) for r in scored)]
    headers = ["SAE", "layer", "width", "L0 release", "L0 text", "L0 vocab prompts", "L1 solver", "seeds",
               "absorption", "full absorption", "split features", "probe F1", "main latents F1", "single-latent F1",
               "classes"]
    headers += [f"{name} seed {stat}" for _, name in SEED_METRICS for stat in ("sd", "range")] if seeded else []
    headers += [f"{what}: {name}" for _, name in baselines for what in ("absorption", "full absorption")]
    rows = []
    for r in sorted(scored, key=lambda r: (r["layer"], r["width"], r["l0"] or 0)):
        row = [r["sae_id"], r["layer"], width_name(r["width"]), r.get("l0_reported"), r.get("l0_text"),
               r.get("l0_vocab"), r.get("l1_solver") or "not recorded", r.get("seeds") or 1,
               r["mean_absorption_fraction"], r["mean_full_absorption"], r["mean_num_split_features"],
               r.get("mean_probe_f1"), r.get("mean_main_f1"), r["mean_single_f1"],
               r.get("classes_evaluated", r.get("letters_evaluated"))]
        if seeded:
            row += [r.get(f"{key}_seed_{stat}") for key, _ in SEED_METRICS for stat in ("std", "range")]
        row += [r.get(prefix + key) for prefix, _ in baselines
                for key in ("mean_absorption_fraction", "mean_full_absorption")]
        rows.append(row)
    solvers = sorted({r.get("l1_solver") for r in scored if r.get("l1_solver")})
    notes = ["Every number of an SAE comes from the L1 solver in its row (" + "; ".join(
        f"{name}: {SOLVERS.get(name, name)}" for name in solvers) + ")."]
    if seeded:
        notes.append("With several seeds the plain values are the first seed's; the seed columns give the "
                     "standard deviation and the range (max - min) of each metric over the seeds.")
    if any(prefix.startswith("chance_") for prefix, _ in baselines):
        notes.append("Chance level (random decoder): what random unit directions of the SAE's width and L0 score by "
                     "chance. In small d_model some of them pass absorption's cosine gate, so it is above zero; it is "
                     "not a zero-absorption baseline, and the SAE's value minus it is not absorption recovered.")
    if any(prefix.startswith("null_") for prefix, _ in baselines):
        notes.append("Shuffled-firing null: the SAE's own latents with which latent fires renamed at random; on an "
                     "SAE whose class latents are clean it reads 0 absorption.")
    return _table(headers, rows, "saes" + suffix) + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)


SECTION = Path(__file__).parent / "static" / "report_task.html"
"""One task's section of the report page, with $placeholders (string.Template)."""


def task_order(names) -> list[str]:
    """The tasks of a results folder in the report's order: first_letter first, then by name."""
    return sorted(set(names), key=lambda t: (t != FIRST_LETTER, t))


def write_report(results: str | Path, out: str | Path | None = None, sae: str | None = None) -> dict:
    """Write the figures and report.html (in RESULTS/report unless `out`), one section per task; returns what
    was written (totals over the tasks, and per task under "tasks")."""
    results = Path(results)
    out = Path(out) if out else results / "report"
    scored, failed = load_results(results)
    if not scored:
        raise InputError(f"{results} holds no scored SAE (only {len(failed)} failed ones): nothing to plot")
    if sae and not any(r["sae_id"] == sae or r["sae_id"].startswith(sae) for r in scored):
        choose_sae(scored, sae)  # raises, naming what ids look like
    classes = read_classes(results)
    tasks = task_order(r["task"] for r in scored + failed)
    sections, per_task, figures = [], {}, []
    for task in tasks:
        section, written = _task_section(results, out if task == FIRST_LETTER else out / task_key(task), task,
                                         [r for r in scored if r["task"] == task],
                                         [r for r in failed if r["task"] == task],
                                         [r for r in classes if r["task"] == task], sae,
                                         "" if task == tasks[0] else "-" + task_key(task))
        sections.append(section)
        per_task[task] = written
        figures += written["figures"]
    flagged = sum(t["flagged"] for t in per_task.values())
    first = per_task[tasks[0]]
    page = Template(PAGE.read_text()).substitute(
        title=html.escape(results.name), n_figures=len(figures), n_tables=sum(t["tables"] for t in per_task.values()),
        tasks=html.escape(", ".join(tasks)), sections="".join(sections),
        summary=f"{len(scored)} scores of SAEs on {len(tasks)} task{'s' * (len(tasks) > 1)} ({', '.join(tasks)}), "
                f"{len(failed)} failed. Lower absorption is better.")
    (out / "report.html").write_text(page)
    (out / "report.json").write_text(json.dumps({
        "scored": len(scored), "flagged": flagged, "failed": len(failed),
        "figures": [str(Path(p).relative_to(out)) for p in figures], "sae": first["sae"],
        "l0_sources": first["l0_sources"], "tasks": {t: {k: v for k, v in w.items() if k != "figures"}
                                                     for t, w in per_task.items()}}, indent=1))
    return {"html": str(out / "report.html"), "figures": [str(p) for p in figures], "scored": len(scored),
            "flagged": flagged, "failed": len(failed), "tasks": tasks}


def _task_section(results: Path, out: Path, task: str, scored: list[dict], failed: list[dict], classes: list[dict],
                  sae: str | None, suffix: str) -> tuple[str, dict]:
    """One task's figures (written into `out`) and its section of the page (markup from report_task.html)."""
    flagged = [r for r in scored if r["status"] == "flagged"]
    failed_table = _table(["SAE", "status", "reason"], [[r["sae_id"], r["status"], r["reason"]]
                                                       for r in failed + flagged], "failed" + suffix)
    if not scored:  # every SAE failed on this task: its failures only
        return (Template(SECTION.read_text()).substitute(
            task=html.escape(task), key=task_key(task), classes="", figures="", heatmap_table="", sae_table="",
            agreement="", failed_table=failed_table,
            summary=f"0 SAEs scored, {len(failed)} failed."),
            {"figures": [], "scored": 0, "flagged": 0, "failed": len(failed), "tables": 1, "sae": None,
             "l0_sources": []})
    wanted = sae if sae and any(r["sae_id"] == sae or r["sae_id"].startswith(sae) for r in scored) else None
    chosen = choose_sae(scored, wanted)
    keys = {r["sae_key"] for r in scored}
    classes = [r for r in classes if r["sae_key"] in keys]
    out.mkdir(parents=True, exist_ok=True)
    f1_by_layer(scored, out / "f1_by_layer.png")
    absorption_per_class(scored, classes, chosen, out / "absorption_per_class.png", task)
    precision_recall(scored, out / "precision_recall.png")
    written = [out / "f1_by_layer.png", out / "absorption_per_class.png", out / "precision_recall.png"]
    for name, (key, label) in FIGURES.items():
        save_panels(scored, key, label, out / f"{name}.png")
        written.append(out / f"{name}.png")
    grid = layer_width_heatmap(scored, out / "layer_width_heatmap.png")
    written.insert(5, out / "layer_width_heatmap.png")

    figures = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{html.escape(p.stem.replace('_', ' '))}</figcaption></figure>" for p in written)
    widths = sorted({r["width"] for r in scored})
    sources = sorted({r["l0_source"] for r in scored})
    flagged_note = f" ({len(flagged)} flagged: their numbers are suspect, see the last table)" if flagged else ""
    agreement, n_agreement = agreement_section(scored, classes, chosen, suffix)
    names = sorted({r["class"] for r in classes})
    section = Template(SECTION.read_text()).substitute(
        task=html.escape(task), key=task_key(task), agreement=agreement, figures=figures,
        classes=html.escape(f"{len(names)} classes evaluated: {', '.join(names[:40])}{' ...' * (len(names) > 40)}"),
        summary=f"{len(scored)} SAEs scored{flagged_note}, {len(failed)} failed; layers "
                f"{sorted({r['layer'] for r in scored})}; widths {[width_name(w) for w in widths]}. Figures use the "
                f"L0 of: {', '.join(sources)} (the release's when it reports one, else measured on natural text, else "
                f"on the vocabulary prompts; the SAE table lists all three). Numbers from the {solver_note(scored)}.",
        heatmap_table=_table(["layer"] + [width_name(w) for w in widths], grid, "heatmap" + suffix),
        sae_table=sae_table(scored, suffix),
        failed_table=failed_table)
    return section, {"figures": written, "scored": len(scored), "flagged": len(flagged), "failed": len(failed),
                     "tables": 3 + n_agreement, "sae": chosen["sae_id"], "l0_sources": sources}
