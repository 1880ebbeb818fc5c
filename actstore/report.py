"""`actstore report RESULTS --out DIR`: the figures and tables a reader of "A is for Absorption" expects,
from a results folder of `actstore score`.

    absorption_vs_l0.png        mean absorption fraction against L0, one line per width, a panel per layer
    full_absorption_vs_l0.png   full-absorption rate against L0, likewise
    layer_width_heatmap.png     mean absorption fraction by layer and width (mean over L0s)
    f1_vs_l0.png                the best single latent's F1 (mean over letters) against L0
    splits_vs_l0.png            number of split features (mean over letters) against L0
    *_ci_null_vs_l0.png         absorption, full absorption and single-latent F1 with 95% intervals and the
                                null band (report_uncertainty.py), when the results carry them
    report.html                 one self-contained page: every figure (embedded) and the tables

L0 is the one the release reports (Gemma Scope's average_l0) when there is one, else the L0 measured on the
vocabulary task. Lower absorption is better.
"""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from pathlib import Path

from actstore.report_uncertainty import uncertainty_figures

FIGURES = {
    "absorption_vs_l0": ("mean_absorption_fraction", "mean absorption fraction"),
    "full_absorption_vs_l0": ("mean_full_absorption", "full-absorption rate"),
    "f1_vs_l0": ("mean_single_f1", "best single latent F1"),
    "splits_vs_l0": ("mean_num_split_features", "split features per letter"),
}


def load_results(results: Path) -> tuple[list[dict], list[dict]]:
    """(scored SAE rows, failed SAE rows) of a results folder."""
    import pyarrow.parquet as pq

    path = Path(results) / "saes.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{results} has no saes.parquet: run `actstore score ... --out {results}` first")
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        row["l0"] = row.get("l0_reported") if row.get("l0_reported") is not None else row.get("l0_vocab")
    return [r for r in rows if r["status"] == "ok"], [r for r in rows if r["status"] != "ok"]


def width_name(width: int) -> str:
    return f"{round(width / 1024)}k" if width < 2**20 else f"{round(width / 2**20)}m"


def _panels(scored: list[dict], key: str, label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({r["layer"] for r in scored})
    cols = min(4, len(layers))
    rows_ = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(3.6 * cols, 2.9 * rows_), squeeze=False, sharey=True)
    widths = sorted({r["width"] for r in scored})
    colors = {w: plt.cm.viridis(i / max(1, len(widths) - 1)) for i, w in enumerate(widths)}
    for ax, layer in zip(axes.flat, layers):
        for width in widths:
            points = sorted((r["l0"], r[key]) for r in scored if r["layer"] == layer and r["width"] == width
                            and r.get(key) is not None and r["l0"] is not None)
            if points:
                ax.plot(*zip(*points), marker="o", ms=4, color=colors[width], label=width_name(width))
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("L0", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    axes[0][0].set_ylabel(label, fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="width", loc="upper right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _heatmap(scored: list[dict], path: Path) -> list[list]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers, widths = sorted({r["layer"] for r in scored}), sorted({r["width"] for r in scored})
    cells = defaultdict(list)
    for r in scored:
        cells[r["layer"], r["width"]].append(r["mean_absorption_fraction"])
    grid = np.full((len(layers), len(widths)), np.nan)
    for (layer, width), values in cells.items():
        grid[layers.index(layer), widths.index(width)] = float(np.mean(values))
    fig, ax = plt.subplots(figsize=(1.2 * len(widths) + 2.5, 0.32 * len(layers) + 1.8))
    image = ax.imshow(grid, cmap="magma_r", aspect="auto", vmin=0)
    ax.set_xticks(range(len(widths)), [width_name(w) for w in widths])
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("width")
    ax.set_ylabel("layer")
    for i in range(len(layers)):
        for j in range(len(widths)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] > np.nanmax(grid) / 2 else "black")
    fig.colorbar(image, ax=ax, label="mean absorption fraction")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [[layer] + [None if np.isnan(v) else float(v) for v in grid[i]] for i, layer in enumerate(layers)]


def _table(headers: list[str], rows: list[list], table_id: str) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>actstore report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child {{ text-align: left; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
</style></head>
<body data-figures="{n_figures}" data-tables="{n_tables}">
<h1>First-letter absorption: {title}</h1>
<p>{summary}</p>
{figures}
<h2>Layer x width: mean absorption fraction</h2>
{heatmap_table}
<h2>SAEs</h2>
{sae_table}
<h2>Failed SAEs</h2>
{failed_table}
<script>
window.addEventListener("load", function () {{
  var ok = Array.from(document.images).filter(function (img) {{ return img.complete && img.naturalWidth > 0; }});
  document.body.setAttribute("data-images-rendered", String(ok.length));
  document.body.setAttribute("data-table-rows", String(document.querySelectorAll("tbody tr").length));
}});
</script>
</body></html>
"""


def write_report(results: str | Path, out: str | Path) -> dict:
    """Write the figures and report.html; returns what was written."""
    results, out = Path(results), Path(out)
    scored, failed = load_results(results)
    if not scored:
        raise ValueError(f"{results} holds no scored SAE (only {len(failed)} failed ones): nothing to plot")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (key, label) in FIGURES.items():
        _panels(scored, key, label, out / f"{name}.png")
        written.append(out / f"{name}.png")
    grid = _heatmap(scored, out / "layer_width_heatmap.png")
    written.insert(2, out / "layer_width_heatmap.png")
    written += uncertainty_figures(scored, out)  # error bars and null bands (report_uncertainty.py)

    figures = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{html.escape(p.stem.replace('_', ' '))}</figcaption></figure>" for p in written)
    widths = sorted({r["width"] for r in scored})
    sae_rows = [[r["sae_id"], r["layer"], width_name(r["width"]), r["l0"], r["mean_absorption_fraction"],
                 r["mean_full_absorption"], r["mean_num_split_features"], r["mean_single_f1"], r["letters_evaluated"]]
                for r in sorted(scored, key=lambda r: (r["layer"], r["width"], r["l0"] or 0))]
    page = PAGE.format(
        title=html.escape(results.name), n_figures=len(written), n_tables=3,
        summary=f"{len(scored)} SAEs scored, {len(failed)} failed; layers {sorted({r['layer'] for r in scored})}; "
                f"widths {[width_name(w) for w in widths]}. Lower absorption is better.",
        figures=figures,
        heatmap_table=_table(["layer"] + [width_name(w) for w in widths], grid, "heatmap"),
        sae_table=_table(["SAE", "layer", "width", "L0", "absorption", "full absorption", "split features",
                          "single-latent F1", "letters"], sae_rows, "saes"),
        failed_table=_table(["SAE", "reason"], [[r["sae_id"], r["reason"]] for r in failed], "failed"))
    (out / "report.html").write_text(page)
    (out / "report.json").write_text(json.dumps({"scored": len(scored), "failed": len(failed),
                                                 "figures": [p.name for p in written]}, indent=1))
    return {"html": str(out / "report.html"), "figures": [str(p) for p in written], "scored": len(scored),
            "failed": len(failed)}
