"""The Python API (actstore/api.py): the docs' example runs as written, and sae-lens SAE objects score as their
files do."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import actstore

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_import_is_light_and_public_names_resolve():
    code = "import sys, actstore; assert 'torch' not in sys.modules, 'import actstore loaded torch'; " \
           "print(sorted(n for n in actstore.__all__ if not n.startswith('_')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == sorted(["open_store", "score_saes", "load_results", "task_names", "Results", "StoreInfo",
                                "get_task", "Task", "InputError"])
    assert actstore.task_names()[:3] == ["first_letter", "last_letter", "capitalized"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        actstore.nope  # noqa: B018


@pytest.fixture
def demo_out(tmp_path, planted_store, planted_saes, monkeypatch):
    """tmp/demo_out laid out as `make demo` writes it: store.zarr (a copy of the planted store) and saes/."""
    out = tmp_path / "demo_out"
    shutil.copytree(planted_store, out / "store.zarr")
    shutil.copytree(planted_saes[0].parents[2], out / "saes")
    monkeypatch.chdir(tmp_path)
    return out


def test_the_docs_example_runs_and_its_numbers_are_the_planted_ones(demo_out, capsys):
    import json

    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) == 1
    scope: dict = {}
    exec(compile(blocks[0], str(DOCS), "exec"), scope)  # noqa: S102 - the documented example, as a reader runs it
    assert scope["store"].layers == [0] and "first_letter" in scope["store"].tasks
    saes, classes = scope["saes"], scope["classes"]
    assert len(saes) == 3 and (saes["status"] == "ok").all() and set(saes["task"]) == {"first_letter"}
    for folder in sorted((demo_out / "saes").rglob("truth.json")):
        truth = json.loads(folder.read_text())
        row = saes[saes["sae_key"] == str(folder.parent.resolve())].iloc[0]
        assert row["mean_absorption_fraction"] == pytest.approx(truth["summary"]["absorption_fraction"], abs=0.02)
        mine = classes[classes["sae_key"] == str(folder.parent.resolve())]
        assert sorted(mine["class"]) == sorted(truth["evaluated_classes"])
    assert scope["page"] == (demo_out / "results" / "explorer" / "index.html").resolve() and scope["page"].is_file()
    again = actstore.load_results(demo_out / "results")
    assert again.tasks == ["first_letter"] and len(again.tokens) > 0


def test_sae_lens_objects_score_as_their_files_do(demo_out):
    """A sae-lens JumpReLU SAE holding a planted params.npz's weights gives the params.npz's numbers exactly."""
    import torch
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    npz = sorted((demo_out / "saes").rglob("params.npz"))[1]
    params = dict(np.load(npz))
    d_in, d_sae = params["W_enc"].shape
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu"))
    sae.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()}, strict=False)
    out = demo_out / "api_results"
    common = dict(task="first_letter", bootstrap=0, device="cpu", local=True, layer=0, progress=False)
    from_object = actstore.score_saes("demo_out/store.zarr", {"planted": sae}, out=out, **common).saes
    from_file = actstore.score_saes("demo_out/store.zarr", [str(npz)], out=out, **common).saes
    assert (out / "sae_lens" / "planted" / "cfg.json").is_file()
    a = from_object[from_object["sae_id"] == "planted"].iloc[0]
    b = from_file[from_file["sae_key"] == str(npz.parent.resolve())].iloc[0]
    for metric in ("mean_absorption_fraction", "mean_full_absorption", "mean_num_split_features", "mean_single_f1",
                   "mean_main_f1", "l0_vocab"):
        assert a[metric] == b[metric], metric
    again = actstore.score_saes("demo_out/store.zarr", {"planted": sae}, out=out, **common)
    assert len(again.saes) == 2  # the same weights: found scored, not a second row


def test_bad_input_is_one_clear_error(demo_out):
    with pytest.raises(actstore.InputError, match="not a results folder"):
        actstore.load_results(demo_out)
    with pytest.raises(TypeError, match="unknown options sedes"):
        actstore.score_saes("demo_out/store.zarr", ["demo_out/saes"], sedes=3)
    with pytest.raises(actstore.InputError, match="expected a path, a catalog name or a sae-lens SAE"):
        actstore.score_saes("demo_out/store.zarr", [3.5])
    with pytest.raises(actstore.InputError, match="not a task"):
        actstore.score_saes("demo_out/store.zarr", ["demo_out/saes"], task="second_letter")


def test_results_hold_the_scored_task_and_a_layerless_sae_lens_sae_is_refused(demo_out, tmp_path):
    """score_saes returns its task's rows though the folder holds another task's; a sae-lens SAE whose hook
    name has no layer is one InputError naming layer=, before any work."""
    import csv

    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    labels = tmp_path / "halves.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([("token", "class")] + [(f"{chr(97 + c)}{i:04d}", "early" if c < 13 else "late")
                                                        for i, c in enumerate(np.arange(2080) % 26)])
    common = dict(out=demo_out / "results", bootstrap=0, device="cpu", local=True, progress=False)
    first = actstore.score_saes("demo_out/store.zarr", ["demo_out/saes"], task="first_letter", **common)
    second = actstore.score_saes("demo_out/store.zarr", ["demo_out/saes"], task=f"labels:{labels}", **common)
    assert set(first.saes["task"]) == {"first_letter"} and set(second.saes["task"]) == {"labels:halves"}
    assert set(second.classes["class"]) <= {"early", "late"} and len(first.classes) > len(second.classes)
    assert first.tasks == second.tasks == ["first_letter", "labels:halves"]
    # letter-named aliases on first_letter's rows only, as the `letter` column
    assert (first.saes["letters_evaluated"] == first.saes["classes_evaluated"]).all()
    assert second.saes["letters_evaluated"].isna().all() and (second.saes["classes_evaluated"] >= 2).all()
    assert len(actstore.load_results(demo_out / "results").saes) == 6
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=64, d_sae=16, dtype="float32", device="cpu"))
    with pytest.raises(actstore.InputError, match=r"its layer is unknown .*pass layer=N to score_saes"):
        actstore.score_saes("demo_out/store.zarr", {"nolayer": sae}, out=tmp_path / "r", train_probes=False)
    assert not (tmp_path / "r" / "sae_lens").exists()


def test_a_label_file_the_store_does_not_hold_is_one_line(demo_out, tmp_path):
    labels = tmp_path / "absent.csv"
    labels.write_text('token,class\n" zzzz",a\n" qqqq",b\n')
    with pytest.raises(actstore.InputError, match=r"labels 0 of the 2080 rows .* in 0 classes \(none\)"):
        actstore.score_saes("demo_out/store.zarr", ["demo_out/saes"], task=f"labels:{labels}", out=tmp_path / "r")
