"""The report's figures on a whole-set-shaped results folder: every figure written, L0 ticks readable at any
range, the L0 each SAE is plotted at and where it comes from, the heatmap's cells with one layer."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actstore.report.pages import l0_axis, load_results, width_name, write_report


def results_folder(path, layers, l0s, widths=(16384, 65536), l0_key="l0_reported"):
    saes, letters = [], []
    for layer in layers:
        for width in widths:
            for i, l0 in enumerate(l0s):
                key = f"layer_{layer}/width_{width_name(width)}/average_l0_{l0}"
                saes.append({"sae_key": key, "release": "r", "sae_id": key, "layer": layer, "width": width,
                             "status": "ok", "reason": "", "letters_evaluated": 2, l0_key: float(l0),
                             "l0_vocab": 2.0 * l0, "mean_absorption_fraction": 0.1 * i,
                             "mean_full_absorption": 0.05 * i, "mean_num_split_features": 1.0 + i,
                             "mean_single_f1": 0.7, "mean_main_f1": 0.8, "mean_probe_f1": 0.95,
                             "mean_main_precision": 0.9, "mean_main_recall": 0.6})
                letters += [{"sae_key": key, "letter": c, "mean_absorption_fraction": 0.1 * i,
                             "full_absorption_rate": 0.05 * i} for c in "ab"]
    path.mkdir()
    pq.write_table(pa.Table.from_pylist(saes), path / "saes.parquet")
    pq.write_table(pa.Table.from_pylist(letters), path / "letters.parquet")
    return path


def test_l0_ticks_are_plain_numbers_at_any_range():
    for values, scale in (([6, 40, 420], "log"), ([1.08, 1.2, 1.36], "linear"), ([20, 35, 60], "linear")):
        fig, ax = plt.subplots()
        ax.plot(values, [0, 1, 2])
        l0_axis(ax, values)
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()
                  and values[0] <= t.get_position()[0] <= values[-1]]
        assert ax.get_xscale() == scale and len(labels) >= 2, (values, labels)
        assert all("^" not in l and "e" not in l for l in labels), labels  # 10, 20, 50: never 10^1 nor 1e1
        plt.close(fig)


def test_whole_set_report_and_a_one_layer_heatmap(tmp_path):
    many = results_folder(tmp_path / "many", range(0, 26, 5), (6, 22, 80, 420))
    written = write_report(many)
    assert written["html"] == str(many / "report" / "report.html")  # inside the results folder by default
    assert len(written["figures"]) == 8 and written["scored"] == 6 * 2 * 4
    meta = json.loads((many / "report" / "report.json").read_text())
    assert meta["l0_sources"] == ["release"] and meta["sae"].endswith("average_l0_420")  # the most absorbing
    one = results_folder(tmp_path / "one", [12], (6, 22, 80), widths=(16384,), l0_key="l0_text")
    write_report(one, sae="layer_12/width_16k/average_l0_22")
    image = plt.imread(one / "report" / "layer_width_heatmap.png")
    assert image.shape[1] > 400  # one column per SAE of the layer: three cells, not one black square
    assert json.loads((one / "report" / "report.json").read_text())["l0_sources"] == ["natural text"]


def test_l0_comes_from_the_release_then_text_then_vocabulary(tmp_path):
    path = tmp_path / "r"
    path.mkdir()
    rows = [{"sae_id": "a", "status": "ok", "l0_reported": 80.0, "l0_text": 40.0, "l0_vocab": 90.0},
            {"sae_id": "b", "status": "ok", "l0_reported": None, "l0_text": 40.0, "l0_vocab": 90.0},
            {"sae_id": "c", "status": "ok", "l0_reported": None, "l0_text": float("nan"), "l0_vocab": 90.0}]
    pq.write_table(pa.Table.from_pylist(rows), path / "saes.parquet")
    scored, _ = load_results(path)
    assert [(r["l0"], r["l0_source"]) for r in scored] == [(80.0, "release"), (40.0, "natural text"),
                                                          (90.0, "vocabulary prompts")]


def test_report_names_an_sae_that_is_not_there(tmp_path):
    one = results_folder(tmp_path / "one", [3], (10,))
    with pytest.raises(ValueError, match="--sae 'nope' names no scored SAE"):
        write_report(one, sae="nope")


def test_figures_against_l0_draw_each_saes_interval_its_null_band_and_its_chance_level():
    from matplotlib.collections import LineCollection, PolyCollection

    from actstore.report.pages import panels_figure

    rows = [{"layer": 3, "width": 16384, "l0": l0, "l0_source": "release", "mean_absorption_fraction": y,
             "mean_absorption_fraction_ci_low": y - 0.02 * (i + 1), "mean_absorption_fraction_ci_high": y + 0.01,
             "chance_random_decoder_mean_absorption_fraction": 0.05 + i / 100,
             "null_shuffled_firing_mean_absorption_fraction": 0.01 + i / 200, "l1_solver": "converged", "seeds": 1}
            for i, (l0, y) in enumerate(((10.0, 0.3), (40.0, 0.2), (90.0, 0.25)))]
    rows.append({"layer": 3, "width": 65536, "l0": 20.0, "l0_source": "release", "mean_absorption_fraction": 0.4,
                 "l1_solver": "converged", "seeds": 1})  # neither: a plain point
    fig = panels_figure(rows, "mean_absorption_fraction", "absorption")
    ax = fig.axes[0]
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bars) == 1  # only the 16k SAEs carry intervals
    segments = sorted(seg.flatten().tolist() for seg in bars[0].get_segments())  # [x, y_low, x, y_high] per SAE
    assert sum(segments, []) == pytest.approx([10, 0.28, 10, 0.31, 40, 0.16, 40, 0.21, 90, 0.19, 90, 0.26], abs=1e-12)
    band = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(band) == 1
    vertices = band[0].get_paths()[0].vertices
    # the band is the shuffled-firing null alone (0.01, 0.015, 0.02): the chance level is not a null
    for l0, value in ((10.0, 0.01), (40.0, 0.015), (90.0, 0.02)):
        ys = sorted(y for x, y in vertices if x == l0)
        assert abs(ys[0] - value) < 1e-12 and abs(ys[-1] - value) < 1e-12, (l0, ys)
    chance = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(chance) == 1
    assert chance[0].get_xydata().flatten().tolist() == pytest.approx([10, 0.05, 40, 0.06, 90, 0.07])
    labels = fig.legends[0].get_texts()
    assert [t.get_text() for t in labels] == ["16k", "65k", "95% bootstrap interval", "null SAE (shuffled firing)",
                                              "chance level (random decoder)"]
    assert fig._suptitle.get_text() == "absorption (L1 solver converged)"
    plt.close(fig)
