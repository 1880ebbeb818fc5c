"""actstore's measured absorption against a world's ground truth: one row per trained SAE, the agreement per
architecture and over the whole set (Spearman rank correlation and mean absolute error), and a figure.

Two diagnostics say why they differ: `carriers_counted_as_splits`, the share of the ground truth's absorbing
latents (carriers) that actstore's k-sparse probe took as the class's own main (split) latents, whose absorption
the metric then cannot see; and `probe_parent_cos`, how closely the ground-truth probe found each parent.

Both sides are averaged over the same parents: the classes actstore evaluated (its probe's test F1 above 0.6).
actstore's numbers carry their bootstrap intervals and nulls (when scored with them) from the results folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from actstore.world.truth import summarize

PAIRS = (("mean_absorption_fraction", "gt_absorption_fraction"), ("mean_full_absorption", "gt_full_absorption"))
"""(actstore's column, the ground truth's) compared."""
LITERAL = tuple((measured, f"{truth}_literal") for measured, truth in PAIRS)
"""The same against the issue's literal parent-latent rule (truth.py)."""


def spearman(a, b) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 3 pairs or a constant side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):  # ties share their mean rank
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def agreement(rows: list[dict], n_boot: int = 1000, seed: int = 0, pairs=PAIRS) -> dict:
    """Spearman and mean absolute error of each measured/true pair over `rows`, and for 5 or more rows a 95%
    percentile interval of the Spearman over SAEs resampled with replacement (resamples where it is undefined,
    a constant side, are left out). Keys are named by the measured column (`pairs` says which truth)."""
    out: dict = {"saes": len(rows)}
    gen = np.random.default_rng(seed)
    draws = gen.integers(0, len(rows), size=(n_boot, len(rows))) if len(rows) >= 5 else None
    for measured, truth in pairs:
        m = np.array([r[measured] for r in rows], dtype=float)
        t = np.array([r[truth] for r in rows], dtype=float)
        out[f"{measured}_spearman"] = spearman(m, t)
        out[f"{measured}_mae"] = float(np.mean(np.abs(m - t))) if rows else None
        if draws is not None:
            boots = [v for v in (spearman(m[d], t[d]) for d in draws) if v is not None]
            out[f"{measured}_spearman_ci"] = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]
    return out


def compare(out: str | Path, results: str | Path) -> dict:
    """The comparison of a world folder's SAEs: {"saes": [row per SAE], "overall": agreement, "by_arch": ...}."""
    import pandas as pd

    out, results = Path(out), Path(results)
    world = json.loads((out / "world.json").read_text())
    saes = pd.read_parquet(results / "saes.parquet")
    saes = saes[(saes["task"] == world["task"]) & (saes["status"] == "ok")]
    # this world's SAEs as found now (a results folder moved with its world also holds their rows under old paths)
    here = (out / "saes").resolve()
    saes = saes[[Path(key).resolve().parent == here for key in saes["sae_key"]]]
    classes = pd.read_parquet(results / "letters.parquet")
    classes = classes[classes["task"] == world["task"]]
    rows = []
    probe_cos = _probe_cosines(out, world)
    for _, sae in saes.sort_values("sae_id").iterrows():
        folder = out / "saes" / sae["sae_id"]
        if not (folder / "truth.json").exists():
            continue
        training = json.loads((folder / "training.json").read_text())
        truth = json.loads((folder / "truth.json").read_text())
        mine = classes[classes["sae_key"] == sae["sae_key"]].set_index("class")["split_latents"]  # evaluated ones
        row = {"sae": sae["sae_id"], "arch": training["arch"], "sparsity": training["sparsity"],
               "l0": float(sae["l0_vocab"]), "classes_evaluated": int(sae["classes_evaluated"]),
               "mean_num_split_features": float(sae["mean_num_split_features"]),
               **summarize(truth["classes"], list(mine.index))}
        for column in sae.index:
            if column.startswith(("mean_absorption_fraction", "mean_full_absorption", "chance_", "null_")) \
                    and "minus" not in column and ("absorption" in column):
                row[column] = None if pd.isna(sae[column]) else float(sae[column])
        carriers = {c["class"]: set(c["carriers"]) for c in truth["classes"] if c["class"] in mine.index}
        held = sum(len(latents) for latents in carriers.values())
        row["carriers_counted_as_splits"] = (sum(len(carriers[c] & set(mine[c])) for c in carriers) / held
                                             if held else None)
        every = summarize(truth["classes"])  # over all parents, evaluated or not
        row["gt_absorption_fraction_all"] = every["gt_absorption_fraction"]
        row["gt_full_absorption_all"] = every["gt_full_absorption"]
        rows.append(row)
    by_arch = {arch: agreement([r for r in rows if r["arch"] == arch]) for arch in sorted({r["arch"] for r in rows})}
    return {"world": world["digest"], "task": world["task"], "parents": len(world["parents"]),
            "children": len(world["children"][0]), "probe_parent_cos": probe_cos, "saes": rows,
            "overall": agreement(rows), "overall_literal": agreement(rows, pairs=LITERAL), "by_arch": by_arch}


def _probe_cosines(out: Path, world: dict) -> dict:
    """How well the ground-truth probe found each parent: cos(p_c, f_parent), min and mean over classes."""
    from actstore.score.probes import load_probe
    from actstore.store.zarrstore import ActivationStore
    from actstore.world.build import load_world, world_task

    _, features = load_world(out)
    with ActivationStore.open(out / "store.zarr") as store:
        directions = load_probe(store, 0, world_task(out)).directions()                   # (C, d_model)
    cos = (directions * torch.nn.functional.normalize(features[world["parents"]], dim=1)).sum(dim=1)
    return {"min": float(cos.min()), "mean": float(cos.mean())}


def write_comparison(out: str | Path, table: dict, log=print) -> None:
    """groundtruth.json, groundtruth.csv and groundtruth.png in `out`, and a summary line per architecture."""
    import pandas as pd

    out = Path(out)
    (out / "groundtruth.json").write_text(json.dumps(table, indent=1) + "\n")
    pd.DataFrame(table["saes"]).to_csv(out / "groundtruth.csv", index=False)
    plot(table, out / "groundtruth.png")
    for name, stats in [("all", table["overall"]), *table["by_arch"].items()]:
        log(f"{name:>11}: {stats['saes']:2d} SAEs  fraction spearman {_fmt(stats['mean_absorption_fraction_spearman'])} "
            f"mae {_fmt(stats['mean_absorption_fraction_mae'])}  full spearman "
            f"{_fmt(stats['mean_full_absorption_spearman'])} mae {_fmt(stats['mean_full_absorption_mae'])}")
    log(f"comparison -> {out / 'groundtruth.json'}, .csv, .png")


def _fmt(value) -> str:
    return "  -  " if value is None else f"{value:5.2f}"


def plot(table: dict, path: Path) -> None:
    """Measured against true (fraction, full absorption), with intervals, chance level and the diagonal; and
    both against L0 per architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = table["saes"]
    archs = sorted({r["arch"] for r in rows})
    colors = dict(zip(archs, plt.get_cmap("tab10").colors))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, (measured, truth), title in zip(axes, PAIRS, ("absorption fraction", "full absorption")):
        top = max([0.05] + [r[measured] for r in rows] + [r[truth] for r in rows] +
                  [r.get(f"{measured}_ci_high") or 0 for r in rows]) * 1.08
        ax.plot([0, top], [0, top], color="0.6", lw=1, ls="--", label="measured = true")
        for r in rows:
            low, high = r.get(f"{measured}_ci_low"), r.get(f"{measured}_ci_high")
            err = None if low is None else [[r[measured] - low], [high - r[measured]]]
            ax.errorbar(r[truth], r[measured], yerr=err, fmt="o", color=colors[r["arch"]], ms=5, capsize=2)
            chance = r.get(f"chance_random_decoder_{measured}")
            if chance is not None:
                ax.plot(r[truth], chance, "x", color=colors[r["arch"]], ms=5, alpha=0.6)
        stats = table["overall"]
        ci = stats.get(f"{measured}_spearman_ci")
        ax.set_title(f"{title}: Spearman {_fmt(stats[f'{measured}_spearman']).strip()}"
                     f"{f' [{ci[0]:.2f}, {ci[1]:.2f}]' if ci else ''}, MAE {_fmt(stats[f'{measured}_mae']).strip()}",
                     fontsize=10)
        ax.set_xlabel(f"ground truth ({truth})")
        ax.set_ylabel(f"actstore ({measured}); x: chance level")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
    ax = axes[2]
    for arch in archs:
        mine = sorted((r for r in rows if r["arch"] == arch), key=lambda r: r["l0"])
        ax.plot([r["l0"] for r in mine], [r["gt_full_absorption"] for r in mine], "-o", color=colors[arch], label=arch)
        ax.plot([r["l0"] for r in mine], [r["mean_full_absorption"] for r in mine], ":s", color=colors[arch], ms=4)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # the minor labels overlap on a short range
    ax.set_xlabel("L0 on the task's rows")
    ax.set_ylabel("full absorption (solid: true, dotted: actstore)")
    ax.legend(fontsize=8)
    fig.suptitle(f"actstore against ground truth: {len(rows)} SAEs trained by sae-lens on world {table['world']} "
                 f"({table['parents']} parents x {table['children']} children each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
