"""The report's uncertainty figures: each metric against L0 with its 95% bootstrap interval as error bars and
the null SAEs' values as a band (`actstore.uncertainty`, `actstore.nulls`).

    uncertainty_figures(scored, out) -> [out/<metric>_ci_null_vs_l0.png, ...]   (none without interval columns)

One panel per layer, one line per width; the grey band spans, at each SAE's L0, the lowest to the highest of its
nulls' values (random decoder, shuffled firing), so a point inside the band is what an SAE that knows nothing
of letters also scores. Kept apart from report.py's own figures so each can change alone.
"""

from __future__ import annotations

from pathlib import Path

from actstore.uncertainty import CI_METRICS

LABELS = {"mean_absorption_fraction": "mean absorption fraction", "mean_full_absorption": "full-absorption rate",
          "mean_single_f1": "best single latent F1"}


def null_band(row: dict, metric: str) -> tuple[float, float] | None:
    """(lowest, highest) of the row's null values of `metric`, or None when it has none."""
    values = [v for k, v in row.items() if k.startswith("null_") and k.endswith(f"_{metric}") and v is not None]
    return (min(values), max(values)) if values else None


def uncertainty_figures(scored: list[dict], out: Path) -> list[Path]:
    """One figure per metric of CI_METRICS that the rows carry intervals for; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from actstore.report import width_name

    written = []
    for metric in CI_METRICS:
        rows = [r for r in scored if r.get(f"{metric}_ci_low") is not None and r.get("l0") is not None]
        if not rows:
            continue
        layers = sorted({r["layer"] for r in rows})
        widths = sorted({r["width"] for r in rows})
        cols = min(4, len(layers))
        fig, axes = plt.subplots(-(-len(layers) // cols), cols, figsize=(3.6 * cols, 2.9 * -(-len(layers) // cols)),
                                 squeeze=False, sharey=True)
        colors = {w: plt.cm.viridis(i / max(1, len(widths) - 1)) for i, w in enumerate(widths)}
        for ax, layer in zip(axes.flat, layers):
            mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["l0"])
            band = [(r["l0"], *null_band(r, metric)) for r in mine if null_band(r, metric)]
            if band:
                l0s, lows, highs = zip(*band)
                ax.fill_between(l0s, lows, highs, color="0.6", alpha=0.35, step="mid", label="null band")
            for width in widths:
                points = [r for r in mine if r["width"] == width]
                if not points:
                    continue
                ys = [r[metric] for r in points]
                err = [[y - r[f"{metric}_ci_low"] for y, r in zip(ys, points)],
                       [r[f"{metric}_ci_high"] - y for y, r in zip(ys, points)]]
                ax.errorbar([r["l0"] for r in points], ys, yerr=err, marker="o", ms=4, capsize=3,
                            color=colors[width], label=width_name(width))
            ax.set(title=f"layer {layer}", xscale="log", xlabel="L0")
            ax.grid(alpha=0.3)
        for ax in axes.flat[len(layers):]:
            ax.remove()
        axes[0][0].set_ylabel(f"{LABELS[metric]} (95% CI)", fontsize=8)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper right", fontsize=8)
        fig.tight_layout(rect=(0, 0, 0.9, 1))
        path = Path(out) / f"{metric.removeprefix('mean_')}_ci_null_vs_l0.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
