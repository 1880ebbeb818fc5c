"""`actstore report RESULTS [--out DIR]`: the figures and tables a reader of "A is for Absorption" expects,
from a results folder of `actstore score` (DIR defaults to RESULTS/report).

    f1_by_layer.png             per layer: F1 of the ground-truth probe, the main latents and the best single
                                latent (latents classify worse than probes)
    absorption_per_letter.png   absorption fraction and full absorption per letter: one SAE (--sae, default
                                the most absorbing) and every SAE (mean, min to max)
    precision_recall.png        the main latents' precision against recall, one point per SAE, coloured by L0
    absorption_vs_l0.png        mean absorption fraction against L0, one line per width, a panel per layer
    full_absorption_vs_l0.png   full-absorption rate against L0, likewise
    layer_width_heatmap.png     mean absorption fraction by layer (rows) and by width and L0 rank (columns)
    f1_vs_l0.png                the best single latent's F1 (mean over letters) against L0
    splits_vs_l0.png            number of split features (mean over letters) against L0
    report.html                 one self-contained page: every figure (embedded) and the tables

The four figures against L0 draw, when the results carry them, each SAE's 95% bootstrap interval as an error
bar (absorption, full absorption and single-latent F1; on by default) and its null SAEs' values (`--null`) as
a band in the width's colour.

L0 is the one the release reports (Gemma Scope's average_l0) when there is one, else the L0 measured on
natural text (the store's context tokens), else on the vocabulary prompts; each figure's axis says which.
Lower absorption is better.
"""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from pathlib import Path
from string import Template

from actstore.errors import InputError, MissingFile

FIGURES = {
    "absorption_vs_l0": ("mean_absorption_fraction", "mean absorption fraction"),
    "full_absorption_vs_l0": ("mean_full_absorption", "full-absorption rate"),
    "f1_vs_l0": ("mean_single_f1", "best single latent F1"),
    "splits_vs_l0": ("mean_num_split_features", "split features per letter"),
}
L0_SOURCES = (("l0_reported", "release"), ("l0_text", "natural text"), ("l0_vocab", "vocabulary prompts"))
"""Where an SAE's L0 comes from, in order of preference."""


def _finite(x) -> bool:
    return x is not None and x == x


def load_results(results: Path) -> tuple[list[dict], list[dict]]:
    """(scored SAE rows, failed SAE rows) of a results folder; each row gets `l0` and `l0_source`. A flagged SAE
    (status `flagged`: scored, its numbers suspect for the reason given) is scored, as `score` counts it."""
    import pyarrow.parquet as pq

    path = Path(results) / "saes.parquet"
    if not path.exists():
        raise MissingFile(f"{results} has no saes.parquet: run `actstore score ... --out {results}` first")
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        row["l0"], row["l0_source"] = next(((row[k], name) for k, name in L0_SOURCES if _finite(row.get(k))),
                                           (None, "none"))
    scored = ("ok", "flagged")
    return [r for r in rows if r["status"] in scored], [r for r in rows if r["status"] not in scored]


def width_name(width: int) -> str:
    """As Gemma Scope names widths (16384 -> 16k, 65536 -> 65k, 2**20 -> 1m: thousands, rounded down); a width
    that is no multiple of 1024 as it is (1500)."""
    if width % 2**20 == 0:
        return f"{width // 2**20}m"
    return f"{width // 1000}k" if width % 1024 == 0 else str(width)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9})
    return plt


def l0_label(scored: list[dict]) -> str:
    sources = sorted({r["l0_source"] for r in scored})
    return "L0 (" + (sources[0] if len(sources) == 1 else " / ".join(sources) + ", by SAE") + ")"


def l0_axis(ax, values: list[float]) -> None:
    """Log scale with plain tick labels (10, 20, 50, ...) when L0 spans a decade or more, else linear: the
    ticks are readable whatever the range."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

    values = [v for v in values if _finite(v) and v > 0]
    if values and max(values) / min(values) >= 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        formatter = ScalarFormatter()
        formatter.set_scientific(False)
        ax.xaxis.set_major_formatter(formatter)
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5))


def _legend_right(fig, handles, labels, title: str) -> None:
    """A legend in a column right of every axis, never over the data."""
    fig.legend(handles, labels, title=title, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")  # bbox: the outside legend is kept in the image
    import matplotlib.pyplot as plt

    plt.close(fig)


def null_band(row: dict, key: str) -> tuple[float, float] | None:
    """(lowest, highest) of the row's null values of `key` (`null_<kind>_<key>` columns: random decoder,
    shuffled firing), or None when it has none."""
    values = [v for k, v in row.items() if k.startswith("null_") and k.endswith(f"_{key}") and _finite(v)]
    return (min(values), max(values)) if values else None


def _panels(scored: list[dict], key: str, label: str, path: Path) -> None:
    _save(panels_figure(scored, key, label), path)


def panels_figure(scored: list[dict], key: str, label: str):
    """One panel per layer, one line per width; where the rows carry them, each point's 95% bootstrap interval
    as an error bar (`<key>_ci_low` / `_ci_high`) and the null SAEs' values as a band in the width's colour
    (at each SAE's L0, its lowest to highest null): a point inside the band is what an SAE that knows
    nothing of letters also scores."""
    plt = _plt()
    layers = sorted({r["layer"] for r in scored}, key=lambda l: (l is None, l or 0))
    cols = min(4, len(layers))
    rows_ = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4.6 * cols, 3.6 * rows_), squeeze=False, sharey=True)
    widths = sorted({r["width"] for r in scored})
    colors = {w: plt.cm.viridis(i / max(1, len(widths) - 1) * 0.9) for i, w in enumerate(widths)}
    handles, extra = {}, {}
    for ax, layer in zip(axes.flat, layers):
        mine = [r for r in scored if r["layer"] == layer]
        for width in widths:
            points = sorted((r for r in mine if r["width"] == width and _finite(r.get(key)) and _finite(r["l0"])),
                            key=lambda r: r["l0"])
            if not points:
                continue
            l0s, ys = [r["l0"] for r in points], [r[key] for r in points]
            handles[width], = ax.plot(l0s, ys, marker="o", ms=5, color=colors[width])
            bars = [(r["l0"], r[key], r[f"{key}_ci_low"], r[f"{key}_ci_high"]) for r in points
                    if _finite(r.get(f"{key}_ci_low")) and _finite(r.get(f"{key}_ci_high"))]
            if bars:
                x, y, low, high = zip(*bars)
                extra["95% bootstrap interval"] = ax.errorbar(
                    x, y, yerr=[[a - b for a, b in zip(y, low)], [b - a for a, b in zip(y, high)]], fmt="none",
                    ecolor=colors[width], capsize=3, lw=1)
            band = [(r["l0"], *null_band(r, key)) for r in points if null_band(r, key)]
            if band:
                x, low, high = zip(*band)
                extra["null SAEs (lowest to highest)"] = ax.fill_between(x, low, high, color=colors[width], alpha=0.18,
                                                                        lw=0)
                if len(x) == 1:  # one SAE: a band needs two points, so mark its null range as a thick bar
                    ax.vlines(x, low, high, color=colors[width], alpha=0.35, lw=8)
        l0_axis(ax, [r["l0"] for r in mine])
        ax.set_title(f"layer {layer}")
        ax.set_xlabel(l0_label(scored))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(label)
    fig.tight_layout()
    shown = [w for w in widths if w in handles]
    _legend_right(fig, [handles[w] for w in shown] + list(extra.values()),
                  [width_name(w) for w in shown] + list(extra), "width")
    return fig


def _by_layer(scored: list[dict], path: Path) -> None:
    """F1 of the probe, the main latents and the best single latent, per SAE (dots) and per layer (mean)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    layers = sorted({r["layer"] for r in scored if r["layer"] is not None})
    series = (("mean_probe_f1", "ground-truth probe", "#222"), ("mean_main_f1", "main latents (k-sparse)", "#c55"),
              ("mean_single_f1", "best single latent", "#37a"))
    for offset, (key, name, color) in zip((-0.15, 0.0, 0.15), series):
        values = {layer: [r[key] for r in scored if r["layer"] == layer and _finite(r.get(key))] for layer in layers}
        dots = [(layer + offset, v) for layer in layers for v in values[layer]]
        if not dots:
            continue
        ax.scatter(*zip(*dots), s=14, color=color, alpha=0.35)
        means = [(layer + offset, sum(values[layer]) / len(values[layer])) for layer in layers if values[layer]]
        ax.plot(*zip(*means), marker="o", color=color, label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("F1 on the test split (mean over letters)")
    ax.set_xticks(layers)
    ax.set_xlim(min(layers, default=0) - 0.6, max(layers, default=0) + 0.6)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("F1 against the ground truth by layer: probe, main latents, best single latent\n"
                 "(small dots: SAEs; large: their mean)")
    _legend_right(fig, *ax.get_legend_handles_labels(), "")
    _save(fig, path)


def _per_letter(scored: list[dict], letters: list[dict], chosen: dict, path: Path) -> None:
    """Absorption and full absorption per letter: the chosen SAE's bars, then every SAE's mean (min to max)."""
    import numpy as np

    plt = _plt()
    names = sorted({r["letter"] for r in letters})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 0.42 * len(names) + 2), 7), sharex=True)
    mine = {r["letter"]: r for r in letters if r["sae_key"] == chosen["sae_key"]}
    x = np.arange(len(names))
    for ax, rows, title in ((top, None, f"{chosen['sae_id']} (layer {chosen['layer']}, L0 {chosen['l0']:.1f})"
                             if _finite(chosen["l0"]) else chosen["sae_id"]), (bottom, letters, f"all {len(scored)} SAEs")):
        for shift, key, name, color in ((-0.2, "mean_absorption_fraction", "absorption fraction", "#c55"),
                                        (0.2, "full_absorption_rate", "full-absorption rate", "#37a")):
            if rows is None:
                ax.bar(x + shift, [mine[c][key] if c in mine else 0 for c in names], 0.4, color=color, label=name)
                continue
            values = [[r[key] for r in rows if r["letter"] == c] for c in names]
            mean = np.array([np.mean(v) for v in values])
            err = np.array([[m - min(v), max(v) - m] for m, v in zip(mean, values)]).T
            ax.bar(x + shift, mean, 0.4, color=color, label=name, yerr=err, capsize=2, ecolor="#555")
        ax.set_title(title)
        ax.set_ylabel("share of true positives")
        ax.grid(alpha=0.3, axis="y")
    bottom.set_xticks(x, [c.upper() for c in names])
    bottom.set_xlabel("first letter (bars: mean over SAEs, whiskers: min to max)")
    fig.tight_layout()
    _legend_right(fig, *top.get_legend_handles_labels(), "")
    _save(fig, path)


def _precision_recall(scored: list[dict], path: Path) -> None:
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 5))
    points = [(r["mean_main_recall"], r["mean_main_precision"], r["l0"]) for r in scored
              if _finite(r.get("mean_main_recall")) and _finite(r["l0"])]
    if points:
        l0 = np.array([p[2] for p in points])
        norm = LogNorm(l0.min(), l0.max()) if l0.min() > 0 and l0.max() / l0.min() >= 10 else Normalize(l0.min(), l0.max() + 1e-9)
        image = ax.scatter([p[0] for p in points], [p[1] for p in points], c=l0, cmap="viridis", norm=norm, s=30,
                           edgecolor="k", linewidth=0.3)
        fig.colorbar(image, ax=ax, label=l0_label(scored))
    ax.set_xlabel("recall of the main latents (mean over letters)")
    ax.set_ylabel("precision of the main latents")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("Main latents: precision against recall, one dot per SAE")
    _save(fig, path)


def _heatmap(scored: list[dict], path: Path) -> list[list]:
    """Rows: layers; columns: each width's SAEs by L0 rank (lowest L0 first), so one layer still shows how
    absorption moves with width and L0. Each cell: the absorption fraction and the SAE's L0. Returns the
    layer x width table of means (over L0s) for the page."""
    import numpy as np

    plt = _plt()
    layers = sorted({r["layer"] for r in scored}, key=lambda l: (l is None, l or 0))
    widths = sorted({r["width"] for r in scored})
    ranks = {}  # (layer, width) -> SAEs sorted by L0
    for r in scored:
        ranks.setdefault((r["layer"], r["width"]), []).append(r)
    depth = {w: max(len(v) for (_, w2), v in ranks.items() if w2 == w) for w in widths}
    columns = [(w, i) for w in widths for i in range(depth[w])]
    grid = np.full((len(layers), len(columns)), np.nan)
    l0s = np.full_like(grid, np.nan)
    for (layer, width), rows in ranks.items():
        rows.sort(key=lambda r: (r["l0"] if _finite(r["l0"]) else 0, r["sae_id"]))
        for i, r in enumerate(rows):
            j = columns.index((width, i))
            grid[layers.index(layer), j] = r["mean_absorption_fraction"]
            l0s[layers.index(layer), j] = r["l0"] if _finite(r["l0"]) else np.nan
    fig, ax = plt.subplots(figsize=(min(20, 0.75 * len(columns) + 3.5), min(14, 0.42 * len(layers) + 2.4)))
    vmax = max(float(np.nanmax(grid)), 1e-3)
    image = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=vmax)
    ax.set_xticks(range(len(columns)), [f"{width_name(w)}\n#{i + 1}" for w, i in columns])
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("width, and SAE rank by L0 within it (#1: lowest L0)")
    ax.set_ylabel("layer")
    if len(columns) * len(layers) <= 400:
        for i in range(len(layers)):
            for j in range(len(columns)):
                if not np.isnan(grid[i, j]):
                    l0 = "" if np.isnan(l0s[i, j]) else f"\nL0 {l0s[i, j]:.3g}"
                    ax.text(j, i, f"{grid[i, j]:.2f}{l0}", ha="center", va="center", fontsize=7,
                            color="black" if grid[i, j] > vmax * 0.6 else "white")
    fig.colorbar(image, ax=ax, label="mean absorption fraction")
    ax.set_title(f"Absorption by layer, width and {l0_label(scored)}")
    _save(fig, path)
    cells = defaultdict(list)
    for r in scored:
        cells[r["layer"], r["width"]].append(r["mean_absorption_fraction"])
    return [[layer] + [float(np.mean(cells[layer, w])) if cells[layer, w] else None for w in widths] for layer in layers]


def choose_sae(scored: list[dict], wanted: str | None) -> dict:
    """The SAE whose letters are drawn: the one named (an id or a prefix of one), else the most absorbing."""
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


def agreement_section(scored: list[dict], letters: list[dict], chosen: dict) -> tuple[str, int]:
    """The projection-vs-causal tables (`score --causal`): per SAE, and per letter of the chosen SAE, the probe
    true positives each metric calls absorbed (actstore.score.causal.AGREEMENT); ("", 0) without causal results."""
    from actstore.score.causal import AGREEMENT

    causal = [r for r in scored if r.get("mean_causal_absorption") is not None]
    if not causal:
        return "", 0
    per_sae = [[r["sae_id"], r["layer"], width_name(r["width"]), r["mean_full_absorption"], r["mean_causal_absorption"],
                *[r.get(f"total_{k}") for k in AGREEMENT]]
               for r in sorted(causal, key=lambda r: (r["layer"], r["width"], r["l0"] or 0))]
    mine = [r for r in letters if r["sae_key"] == chosen["sae_key"] and r.get("causal_absorption_rate") is not None]
    per_letter = [[r["letter"], r["num_probe_true_positives"], r["full_absorption_rate"], r["causal_absorption_rate"],
                   r["causal_candidates"], *[r[k] for k in AGREEMENT]] for r in mine]
    html_text = (
        "<h2>Projection vs causal absorption</h2><p>Probe true positives (test split) that the projection metric "
        "(absorption fraction &gt; 0 or full absorption) and the paper's causal metric (integrated-gradient "
        "ablation through the model) call absorbed. A token that is not a causal candidate (a main latent fires, or "
        "the k-sparse probe does) counts as causally not absorbed; candidates outside the causal sample are "
        "counted apart.</p>"
        + _table(["SAE", "layer", "width", "full absorption", "causal absorption", *AGREEMENT_HEADERS], per_sae,
                 "agreement")
        + f"<h3>Per letter: {html.escape(chosen['sae_id'])}</h3>"
        + _table(["letter", "probe true positives", "full absorption", "causal absorption", "causal candidates",
                  *AGREEMENT_HEADERS], per_letter, "agreement_letters"))
    return html_text, 2


def write_report(results: str | Path, out: str | Path | None = None, sae: str | None = None) -> dict:
    """Write the figures and report.html (in RESULTS/report unless `out`); returns what was written."""
    import pyarrow.parquet as pq

    results = Path(results)
    out = Path(out) if out else results / "report"
    scored, failed = load_results(results)
    if not scored:
        raise InputError(f"{results} holds no scored SAE (only {len(failed)} failed ones): nothing to plot")
    chosen = choose_sae(scored, sae)
    keys = {r["sae_key"] for r in scored}
    letters = [r for r in pq.read_table(results / "letters.parquet").to_pylist() if r["sae_key"] in keys]
    out.mkdir(parents=True, exist_ok=True)
    _by_layer(scored, out / "f1_by_layer.png")
    _per_letter(scored, letters, chosen, out / "absorption_per_letter.png")
    _precision_recall(scored, out / "precision_recall.png")
    written = [out / "f1_by_layer.png", out / "absorption_per_letter.png", out / "precision_recall.png"]
    for name, (key, label) in FIGURES.items():
        _panels(scored, key, label, out / f"{name}.png")
        written.append(out / f"{name}.png")
    grid = _heatmap(scored, out / "layer_width_heatmap.png")
    written.insert(5, out / "layer_width_heatmap.png")

    figures = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{html.escape(p.stem.replace('_', ' '))}</figcaption></figure>" for p in written)
    widths = sorted({r["width"] for r in scored})
    sae_rows = [[r["sae_id"], r["layer"], width_name(r["width"]), r.get("l0_reported"), r.get("l0_text"),
                 r.get("l0_vocab"), r["mean_absorption_fraction"], r["mean_full_absorption"],
                 r["mean_num_split_features"], r.get("mean_probe_f1"), r.get("mean_main_f1"), r["mean_single_f1"],
                 r["letters_evaluated"]]
                for r in sorted(scored, key=lambda r: (r["layer"], r["width"], r["l0"] or 0))]
    sources = sorted({r["l0_source"] for r in scored})
    flagged = [r for r in scored if r["status"] == "flagged"]
    flagged_note = f" ({len(flagged)} flagged: their numbers are suspect, see the last table)" if flagged else ""
    agreement, n_agreement = agreement_section(scored, letters, chosen)
    page = Template(PAGE.read_text()).substitute(
        title=html.escape(results.name), n_figures=len(written), n_tables=3 + n_agreement, agreement=agreement,
        summary=f"{len(scored)} SAEs scored{flagged_note}, {len(failed)} failed; layers {sorted({r['layer'] for r in scored})}; "
                f"widths {[width_name(w) for w in widths]}. Lower absorption is better. Figures use the L0 of: "
                f"{', '.join(sources)} (the release's when it reports one, else measured on natural text, else on "
                f"the vocabulary prompts; the SAE table lists all three).",
        figures=figures,
        heatmap_table=_table(["layer"] + [width_name(w) for w in widths], grid, "heatmap"),
        sae_table=_table(["SAE", "layer", "width", "L0 release", "L0 text", "L0 vocab prompts", "absorption",
                          "full absorption", "split features", "probe F1", "main latents F1", "single-latent F1",
                          "letters"], sae_rows, "saes"),
        failed_table=_table(["SAE", "status", "reason"], [[r["sae_id"], r["status"], r["reason"]]
                                                          for r in failed + flagged], "failed"))
    (out / "report.html").write_text(page)
    (out / "report.json").write_text(json.dumps({"scored": len(scored), "flagged": len(flagged), "failed": len(failed),
                                                 "figures": [p.name for p in written], "sae": chosen["sae_id"],
                                                 "l0_sources": sources}, indent=1))
    return {"html": str(out / "report.html"), "figures": [str(p) for p in written], "scored": len(scored),
            "flagged": len(flagged), "failed": len(failed)}
