"""The report's figures (`actstore report`, pages.py): one function per figure, each drawing rows of
saes.parquet (and the per-class table) with matplotlib and saving a PNG. pages.py lays them out with the tables.

    panels_figure(scored, key, label)   a metric against L0: a panel per layer, a line per width, intervals,
                                        null bands and chance levels where the rows carry them
    f1_by_layer, absorption_per_class, precision_recall, layer_width_heatmap
                                        the other figures (pages.py names their files)
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

FIGURES = {
    "absorption_vs_l0": ("mean_absorption_fraction", "mean absorption fraction"),
    "full_absorption_vs_l0": ("mean_full_absorption", "full-absorption rate"),
    "f1_vs_l0": ("mean_single_f1", "best single latent F1"),
    "splits_vs_l0": ("mean_num_split_features", "split features per class"),
}


def finite(x) -> bool:
    return x is not None and x == x


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

    values = [v for v in values if finite(v) and v > 0]
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
    """(lowest, highest) of the row's null values of `key` (`null_<kind>_<key>` columns: the shuffled-firing
    null), or None when it has none. A chance level (`chance_<kind>_<key>`, `chance_level`) is not a null."""
    values = [v for k, v in row.items() if k.startswith("null_") and k.endswith(f"_{key}") and finite(v)]
    return (min(values), max(values)) if values else None


def chance_level(row: dict, key: str) -> float | None:
    """The row's chance level of `key` (`chance_random_decoder_<key>`: what random directions of the SAE's width
    and L0 score by chance; actstore.score.nulls), or None."""
    value = row.get(f"chance_random_decoder_{key}")
    return value if finite(value) else None


def solver_note(scored: list[dict]) -> str:
    """Which L1 solver (and how many seeds) produced the rows' numbers: "L1 solver saebench" or
    "L1 solver saebench, first of 5 seeds"; several, by SAE, when the rows differ."""
    solvers = sorted({str(r.get("l1_solver") or "not recorded") for r in scored})
    seeds = max((int(r.get("seeds") or 1) for r in scored), default=1)
    text = "L1 solver " + (solvers[0] if len(solvers) == 1 else " / ".join(solvers) + " (by SAE)")
    return text + (f", first of {seeds} seeds" if seeds > 1 else "")


def save_panels(scored: list[dict], key: str, label: str, path: Path) -> None:
    _save(panels_figure(scored, key, label), path)


def panels_figure(scored: list[dict], key: str, label: str):
    """One panel per layer, one line per width; where the rows carry them, each point's 95% bootstrap interval
    as an error bar (`<key>_ci_low` / `_ci_high`), the null SAEs' values as a band in the width's colour
    (at each SAE's L0, its lowest to highest null: shuffled firing), and the chance level (random decoder) as a
    dotted line of crosses: what random directions of the same width and L0 score by chance, which in small
    d_model is above zero even for absorption (an SAE's value minus it is not absorption recovered). The title
    names the L1 solver (and seeds) the numbers come from."""
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
            points = sorted((r for r in mine if r["width"] == width and finite(r.get(key)) and finite(r["l0"])),
                            key=lambda r: r["l0"])
            if not points:
                continue
            l0s, ys = [r["l0"] for r in points], [r[key] for r in points]
            handles[width], = ax.plot(l0s, ys, marker="o", ms=5, color=colors[width])
            bars = [(r["l0"], r[key], r[f"{key}_ci_low"], r[f"{key}_ci_high"]) for r in points
                    if finite(r.get(f"{key}_ci_low")) and finite(r.get(f"{key}_ci_high"))]
            if bars:
                x, y, low, high = zip(*bars)
                extra["95% bootstrap interval"] = ax.errorbar(
                    x, y, yerr=[[a - b for a, b in zip(y, low)], [b - a for a, b in zip(y, high)]], fmt="none",
                    ecolor=colors[width], capsize=3, lw=1)
            band = [(r["l0"], *null_band(r, key)) for r in points if null_band(r, key)]
            if band:
                x, low, high = zip(*band)
                extra["null SAE (shuffled firing)"] = ax.fill_between(x, low, high, color=colors[width], alpha=0.18,
                                                                        lw=0)
                if len(x) == 1:  # one SAE: a band needs two points, so mark its null range as a thick bar
                    ax.vlines(x, low, high, color=colors[width], alpha=0.35, lw=8)
            chance = [(r["l0"], chance_level(r, key)) for r in points if chance_level(r, key) is not None]
            if chance:
                extra["chance level (random decoder)"], = ax.plot(*zip(*chance), ls=":", marker="x", ms=6,
                                                                 color=colors[width])
        l0_axis(ax, [r["l0"] for r in mine])
        ax.set_title(f"layer {layer}")
        ax.set_xlabel(l0_label(scored))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(label)
    fig.suptitle(f"{label} ({solver_note(scored)})")
    fig.tight_layout()
    shown = [w for w in widths if w in handles]
    _legend_right(fig, [handles[w] for w in shown] + list(extra.values()),
                  [width_name(w) for w in shown] + list(extra), "width")
    return fig


def f1_by_layer(scored: list[dict], path: Path) -> None:
    """F1 of the probe, the main latents and the best single latent, per SAE (dots) and per layer (mean)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    layers = sorted({r["layer"] for r in scored if r["layer"] is not None})
    series = (("mean_probe_f1", "ground-truth probe", "#222"), ("mean_main_f1", "main latents (k-sparse)", "#c55"),
              ("mean_single_f1", "best single latent", "#37a"))
    for offset, (key, name, color) in zip((-0.15, 0.0, 0.15), series):
        values = {layer: [r[key] for r in scored if r["layer"] == layer and finite(r.get(key))] for layer in layers}
        dots = [(layer + offset, v) for layer in layers for v in values[layer]]
        if not dots:
            continue
        ax.scatter(*zip(*dots), s=14, color=color, alpha=0.35)
        means = [(layer + offset, sum(values[layer]) / len(values[layer])) for layer in layers if values[layer]]
        ax.plot(*zip(*means), marker="o", color=color, label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("F1 on the test split (mean over classes)")
    ax.set_xticks(layers)
    ax.set_xlim(min(layers, default=0) - 0.6, max(layers, default=0) + 0.6)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("F1 against the ground truth by layer: probe, main latents, best single latent\n"
                 f"(small dots: SAEs; large: their mean; {solver_note(scored)})")
    _legend_right(fig, *ax.get_legend_handles_labels(), "")
    _save(fig, path)


def absorption_per_class(scored: list[dict], classes: list[dict], chosen: dict, path: Path, task: str) -> None:
    """Absorption and full absorption per class: the chosen SAE's bars, then every SAE's mean (min to max)."""
    import numpy as np

    plt = _plt()
    names = sorted({r["class"] for r in classes})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 0.42 * len(names) + 2), 7), sharex=True)
    mine = {r["class"]: r for r in classes if r["sae_key"] == chosen["sae_key"]}
    x = np.arange(len(names))
    for ax, rows, title in ((top, None, (f"{chosen['sae_id']} (layer {chosen['layer']}, L0 {chosen['l0']:.1f}, "
                                         if finite(chosen["l0"]) else f"{chosen['sae_id']} (")
                             + f"{solver_note([chosen])})"),
                            (bottom, classes, f"all {len(scored)} SAEs ({solver_note(scored)})")):
        for shift, key, name, color in ((-0.2, "mean_absorption_fraction", "absorption fraction", "#c55"),
                                        (0.2, "full_absorption_rate", "full-absorption rate", "#37a")):
            if rows is None:
                ax.bar(x + shift, [mine[c][key] if c in mine else 0 for c in names], 0.4, color=color, label=name)
                continue
            values = [[r[key] for r in rows if r["class"] == c] for c in names]
            mean = np.array([np.mean(v) for v in values])
            err = np.array([[m - min(v), max(v) - m] for m, v in zip(mean, values)]).T
            ax.bar(x + shift, mean, 0.4, color=color, label=name, yerr=err, capsize=2, ecolor="#555")
        ax.set_title(title)
        ax.set_ylabel("share of true positives")
        ax.grid(alpha=0.3, axis="y")
    bottom.set_xticks(x, [c.upper() if len(c) == 1 else c for c in names])
    bottom.set_xlabel(f"{task.replace('_', ' ')} (bars: mean over SAEs, whiskers: min to max)")
    fig.tight_layout()
    _legend_right(fig, *top.get_legend_handles_labels(), "")
    _save(fig, path)


def precision_recall(scored: list[dict], path: Path) -> None:
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 5))
    points = [(r["mean_main_recall"], r["mean_main_precision"], r["l0"]) for r in scored
              if finite(r.get("mean_main_recall")) and finite(r["l0"])]
    if points:
        l0 = np.array([p[2] for p in points])
        norm = LogNorm(l0.min(), l0.max()) if l0.min() > 0 and l0.max() / l0.min() >= 10 else Normalize(l0.min(), l0.max() + 1e-9)
        image = ax.scatter([p[0] for p in points], [p[1] for p in points], c=l0, cmap="viridis", norm=norm, s=30,
                           edgecolor="k", linewidth=0.3)
        fig.colorbar(image, ax=ax, label=l0_label(scored))
    ax.set_xlabel("recall of the main latents (mean over classes)")
    ax.set_ylabel("precision of the main latents")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"Main latents: precision against recall, one dot per SAE\n({solver_note(scored)})")
    _save(fig, path)


def layer_width_heatmap(scored: list[dict], path: Path) -> list[list]:
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
        rows.sort(key=lambda r: (r["l0"] if finite(r["l0"]) else 0, r["sae_id"]))
        for i, r in enumerate(rows):
            j = columns.index((width, i))
            grid[layers.index(layer), j] = r["mean_absorption_fraction"]
            l0s[layers.index(layer), j] = r["l0"] if finite(r["l0"]) else np.nan
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
    ax.set_title(f"Absorption by layer, width and {l0_label(scored)}\n({solver_note(scored)})")
    _save(fig, path)
    cells = defaultdict(list)
    for r in scored:
        cells[r["layer"], r["width"]].append(r["mean_absorption_fraction"])
    return [[layer] + [float(np.mean(cells[layer, w])) if cells[layer, w] else None for w in widths] for layer in layers]
