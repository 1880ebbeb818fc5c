"""`actstore score`: tables, SAEBench JSON, per-SAE failures, and resuming after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from actstore.cli.main import main
from actstore.run.runner import ScoreCommandConfig, resolve_saes, run_score

VOLATILE = {"seconds"}  # what may differ between two runs of the same SAE


def rows(path):
    return sorted((({k: v for k, v in r.items() if k not in VOLATILE}) for r in pq.read_table(path).to_pylist()),
                  key=lambda r: (r["sae_id"], r.get("letter", "")))


@pytest.fixture(scope="module")
def suite(planted_saes, tmp_path_factory):
    """The planted SAEs plus a corrupt file, a file with NaN, and one of another model's width."""
    root = tmp_path_factory.mktemp("suite")
    for folder in planted_saes:
        shutil.copytree(folder, root / folder.relative_to(folder.parents[2]))
    bad = root / "layer_0" / "bad"
    (bad / "garbage").mkdir(parents=True)
    (bad / "garbage" / "params.npz").write_bytes(b"not a zip file")
    with np.load(planted_saes[0] / "params.npz") as p:
        arrays = dict(p)
    arrays["threshold"][5] = np.nan
    (bad / "nan").mkdir()
    np.savez(bad / "nan" / "params.npz", **arrays)
    (bad / "wide").mkdir()
    np.savez(bad / "wide" / "params.npz", W_enc=np.zeros((128, 8), np.float32), W_dec=np.zeros((8, 128), np.float32),
             b_enc=np.zeros(8, np.float32), b_dec=np.zeros(128, np.float32), threshold=np.zeros(8, np.float32))
    return root


def test_score_writes_tables_json_and_failure_rows(planted_store, suite, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["score", str(planted_store), "--saes", str(suite), str(suite / "missing.npz"), "--out", str(out),
                 "--local"])
    assert code == 1  # some SAEs failed; the others are scored
    saes = {r["sae_id"]: r for r in pq.read_table(out / "saes.parquet").to_pylist()}
    assert len(saes) == 7
    assert {k for k, r in saes.items() if r["status"] == "ok"} == {f"layer_0/width_1500/absorption_{p}" for p in ("00", "30", "50")}
    assert "is not a zip archive" in saes["layer_0/bad/garbage"]["reason"]
    assert "NaN or inf in ['threshold']" in saes["layer_0/bad/nan"]["reason"]
    assert "reads d_model 128, the store holds d_model 64" in saes["layer_0/bad/wide"]["reason"]
    assert "missing.npz: no such file or folder" in saes["missing.npz"]["reason"]
    assert "3 SAEs scored, 4 failed" in capsys.readouterr().out

    letters = pq.read_table(out / "letters.parquet").to_pylist()
    truth = json.loads((suite / "layer_0/width_1500/absorption_30/truth.json").read_text())
    mine = [r for r in letters if r["sae_id"] == "layer_0/width_1500/absorption_30"]
    assert [r["letter"] for r in mine] == [r["class"] for r in mine] == truth["evaluated_classes"]
    assert {r["task"] for r in mine} == {"first_letter"}
    summary = saes["layer_0/width_1500/absorption_30"]
    assert summary["mean_absorption_fraction"] == pytest.approx(np.mean([r["mean_absorption_fraction"] for r in mine]))
    assert summary["mean_absorption_fraction"] == pytest.approx(truth["summary"]["absorption_fraction"], abs=1e-6)

    named, = (out / "saebench").glob(f"{suite.name}_layer_0_width_1500_absorption_30_*_eval_results.json")
    report = json.loads(named.read_text())
    assert report["eval_type_id"] == "absorption_first_letter"
    mean = report["eval_result_metrics"]["mean"]
    assert set(mean) == {"mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features",
                         "std_dev_absorption_fraction_score", "std_dev_full_absorption_score",
                         "std_dev_num_split_features"}
    assert mean["mean_absorption_fraction_score"] == summary["mean_absorption_fraction"]
    assert mean["std_dev_num_split_features"] == pytest.approx(np.std([r["num_split_features"] for r in mine], ddof=1))
    detail = report["eval_result_details"][0]
    assert set(detail) == {"first_letter", "mean_absorption_fraction", "full_absorption_rate", "num_full_absorption",
                           "num_probe_true_positives", "num_split_features"}
    assert report["sae_lens_id"] == "layer_0/width_1500/absorption_30" and report["sae_cfg_dict"]["d_sae"] == 1500


@pytest.fixture(scope="module")
def suite10(planted_store, tmp_path_factory):
    """10 synthetic SAEs (absorption 0%, 10%, ..., 90%) on the planted store's layer 0."""
    from actstore.saes.synthetic import SynthSAEConfig, write_synthetic_saes

    out = tmp_path_factory.mktemp("suite10")
    rates = tuple(round(0.1 * i, 1) for i in range(10))
    write_synthetic_saes(str(planted_store), 0, out, SynthSAEConfig(absorption=rates, width=1200))
    return out


@pytest.mark.slow
def test_a_killed_score_of_10_saes_resumes_with_identical_results(planted_store, suite10, tmp_path, capsys,
                                                                   ray_session):
    reference = tmp_path / "reference"
    run_score(ScoreCommandConfig(str(planted_store), str(reference), [str(suite10)], local=True), log=lambda _: None)

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "actstore.cli.main", "score", str(planted_store), "--saes", str(suite10), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(list((out / "parts").glob("*.json"))) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray cluster and the worker, mid-run
    proc.wait()
    finished = len(list((out / "parts").glob("*.json")))
    assert 3 <= finished < 10, "the kill should land mid-run"
    assert not (out / "saes.parquet").exists()  # the tables are written at the end

    # The same command once more, through the entry point the `actstore` script calls, in this process and on
    # this session's Ray cluster: a fresh process would first spend about 20 s importing and starting Ray.
    capsys.readouterr()
    assert main(cmd[3:]) == 0
    again = capsys.readouterr().out
    # the killed run's Ray worker may outlive its driver for a moment and finish one more SAE before the
    # rerun looks: count what the rerun found, at least what was there at the kill
    already = int(again.split(" already in ")[0].split(", ")[-1])
    assert finished <= already < 10 and f"computed {10 - already} of 10" in again
    assert rows(out / "saes.parquet") == rows(reference / "saes.parquet")
    assert rows(out / "letters.parquet") == rows(reference / "letters.parquet")
    # per-token records: every finished part has its tokens beside it, and the combined table is the same
    assert all((p.with_name(p.name.removesuffix(".json") + ".tokens.parquet")).exists()
               for p in (out / "parts").glob("*.json"))
    token_rows = [sorted(pq.read_table(d / "tokens.parquet").to_pylist(), key=lambda r: (r["sae_key"], r["letter"],
                                                                                        r["row"])) for d in (out, reference)]
    assert token_rows[0] == token_rows[1] and len(token_rows[0]) > 1000

    summary = run_score(ScoreCommandConfig(str(planted_store), str(out), [str(suite10)], local=True), log=lambda _: None)
    assert summary["computed"] == 0  # everything is there: nothing recomputed
    params = next(suite10.rglob("params.npz"))
    stat = params.stat()
    os.utime(params, ns=(time.time_ns(), time.time_ns()))  # touched, the same bytes: its numbers hold
    assert run_score(ScoreCommandConfig(str(planted_store), str(out), [str(suite10)], local=True),
                     log=lambda _: None)["computed"] == 0
    with np.load(params) as p:  # other weights of the same size, the old mtime put back: scored again
        arrays = {k: p[k] for k in p.files}
    np.savez(params, **{**arrays, "threshold": arrays["threshold"] * 1.5})
    os.utime(params, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (params.stat().st_size, params.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert run_score(ScoreCommandConfig(str(planted_store), str(out), [str(suite10)], local=True),
                     log=lambda _: None)["computed"] == 1


def test_spec_forms(planted_saes, tmp_path):
    root = planted_saes[0].parents[2]
    found = resolve_saes([str(root), str(planted_saes[0] / "params.npz")])
    assert [s.name for s in found] == [f"layer_0/width_1500/absorption_{p}" for p in ("00", "30", "50")]
    assert all(s.layer == 0 for s in found)  # the same file named twice is scored once
    from actstore.run.runner import select_saes

    listing = tmp_path / "list.txt"
    listing.write_text(f"# the suite, and one file twice\n{root}\n\n{planted_saes[0] / 'params.npz'}\n")
    picked = select_saes(ScoreCommandConfig("s", "o", [f"@{listing}"], layers="0-25", widths="1500"))
    assert [s.name for s in picked] == [s.name for s in found]
    assert select_saes(ScoreCommandConfig("s", "o", [f"@{listing}"], widths="16k")) == []
    gemma = select_saes(ScoreCommandConfig("s", "o", release="gemma-scope-2b-pt-res", layers="5,12", widths="1m"))
    assert len(gemma) == 12 and {s.layer for s in gemma} == {5, 12} and {s.width for s in gemma} == {2**20}
    with pytest.raises(ValueError, match="name the SAEs to score"):
        select_saes(ScoreCommandConfig("s", "o"))
    catalog = resolve_saes(["gemma-scope-2b-pt-res/layer_12/width_16k"])
    assert len(catalog) == 5 and all(s.layer == 12 and s.key.startswith("gemma-scope-2b-pt-res/layer_12/width_16k/")
                                     for s in catalog)


def test_the_demo_table_fails_on_a_value_off_by_more_than_its_tolerance(planted_store, planted_saes, tmp_path, capsys):
    from actstore.cli.demo import print_truth_table

    root = tmp_path / "saes"
    shutil.copytree(planted_saes[0].parents[2], root)
    folders = sorted((root / "layer_0" / "width_1500").iterdir())
    run_score(ScoreCommandConfig(str(planted_store), str(tmp_path / "out"), [str(root)], local=True), log=lambda _: None)
    assert print_truth_table(folders, tmp_path / "out")
    truth = json.loads((folders[1] / "truth.json").read_text())
    letter = truth["evaluated_classes"][0]
    truth["classes"][letter]["absorption_fraction"] += 0.021  # just outside the 0.02 tolerance
    (folders[1] / "truth.json").write_text(json.dumps(truth))
    capsys.readouterr()
    assert not print_truth_table(folders, tmp_path / "out")
    out = capsys.readouterr().out
    assert f"MISS absorption_30 class {letter} absorption_fraction" in out and "MISSED" in out


def test_synth_saes_command(planted_store, tmp_path, capsys):
    code = main(["synth-saes", "--store", str(planted_store), "--layer", "0", "--out", str(tmp_path / "s"),
                 "--absorption", "0.2", "--splits", "2", "--width", "1200"])
    out = capsys.readouterr().out
    assert code == 0 and "layer_0/width_1200/absorption_20: planted absorption fraction" in out
    truth = json.loads((tmp_path / "s/layer_0/width_1200/absorption_20/truth.json").read_text())
    assert truth["config"]["splits"] == [2] and truth["width"] == 1200
    assert sum(e["role"].startswith("split") for e in truth["classes"].values()) == 1
    assert main(["synth-saes", "--store", str(planted_store), "--layer", "3", "--out", str(tmp_path / "t")]) == 2
    assert "probe for layer 3: run `actstore probe" in capsys.readouterr().err


def test_tables_hold_every_column_whatever_row_comes_first(tmp_path):
    from actstore.run.results import write_tables

    (tmp_path / "parts").mkdir()
    base = {"release": "r", "layer": 0, "width": 8, "seconds": 0.1}
    failed = {**base, "sae_key": "a", "sae_id": "a", "summary": {"status": "failed", "reason": "bad"}, "letters": []}
    scored = {**base, "sae_key": "b", "sae_id": "b", "summary": {"status": "ok", "reason": "", "mean_x": 0.5},
              "letters": [{"letter": "a", "v": 1.0}, {"letter": "b", "v": 2.0, "context_p": 0.3}]}
    (tmp_path / "parts" / "0.json").write_text(json.dumps(failed))  # parts are read in name order
    (tmp_path / "parts" / "1.json").write_text(json.dumps(scored))
    assert write_tables(tmp_path) == (1, 1)
    saes = pq.read_table(tmp_path / "saes.parquet").to_pylist()
    assert [r["mean_x"] for r in saes] == [None, 0.5] and [r["reason"] for r in saes] == ["bad", ""]
    letters = pq.read_table(tmp_path / "letters.parquet").to_pylist()
    assert [r["context_p"] for r in letters] == [None, 0.3]


def test_dtype_is_the_kernels_encode_dtype_and_changes_no_number_on_the_torch_path(planted_store, planted_saes,
                                                                                     tmp_path):
    """--dtype (default bfloat16) is the fused kernel's encode dtype: the weights stay float32 and the torch backend
    computes in float32 whatever it says, so every number equals a --dtype float32 run's."""
    sae = resolve_saes([str(planted_saes[1] / "params.npz")])[0].load(64, "cpu", torch.bfloat16)
    assert sae.w_enc.dtype == sae.threshold.dtype == torch.bfloat16  # a loader converts to what it is asked
    assert ScoreCommandConfig("s", "o").dtype == "bfloat16" == ScoreCommandConfig("s", "o").score_config().encode_dtype
    rows = {}
    for dtype in ("bfloat16", "float32"):
        out = tmp_path / dtype
        run_score(ScoreCommandConfig(str(planted_store), str(out), [str(planted_saes[1] / "params.npz")], local=True,
                                     dtype=dtype, backend="torch", bootstrap=0), log=lambda _: None)
        (rows[dtype],) = pq.read_table(out / "saes.parquet").to_pylist()
    assert rows["bfloat16"]["status"] == "ok" and rows["bfloat16"]["letters_evaluated"] > 5
    varying = {"seconds", "scored_at", "sae_key", "out"}  # when and how long, not what
    assert {k: v for k, v in rows["bfloat16"].items() if k not in varying} == \
        {k: v for k, v in rows["float32"].items() if k not in varying}
    lines = []  # so on CPU a rerun with another --dtype or --backend auto (torch here) computes nothing again
    run_score(ScoreCommandConfig(str(planted_store), str(tmp_path / "float32"), [str(planted_saes[1] / "params.npz")],
                                 local=True, dtype="float16", backend="auto", bootstrap=0), log=lines.append)
    assert any("1 SAEs named, 1 already in" in line and "0 to score" in line for line in lines), lines
    with pytest.raises(ValueError, match="--dtype 'int8': expected one of bfloat16, float16, float32"):
        run_score(ScoreCommandConfig(str(planted_store), str(tmp_path / "x"), [str(planted_saes[1])], dtype="int8"))


@pytest.mark.slow
def test_ray_workers_retry_a_crashed_group_and_match_a_local_run(planted_store, planted_saes, tmp_path, ray_session):
    root = planted_saes[0].parents[2]
    local = tmp_path / "local"
    run_score(ScoreCommandConfig(str(planted_store), str(local), [str(root)], local=True, group_size=2),
              log=lambda _: None)
    flag = tmp_path / "crashed"
    lines = []
    summary = run_score(ScoreCommandConfig(str(planted_store), str(tmp_path / "ray"), [str(root)], group_size=2,
                                           worker_env={"ACTSTORE_FAULT_SCORE_CRASH_ONCE": f"{flag}:1"}),
                        log=lines.append)
    assert flag.exists()  # the worker died before its second SAE; Ray restarted it and retried the job
    assert (summary["computed"], summary["scored"], summary["failed"]) == (3, 3, 0)
    assert "scored 3 and failed 0 of 3" in lines[-1] and "SAEs/min" in lines[-1]
    assert rows(tmp_path / "ray" / "saes.parquet") == rows(local / "saes.parquet")
    assert rows(tmp_path / "ray" / "letters.parquet") == rows(local / "letters.parquet")


def test_plan_groups_by_layer_within_the_memory_budget():
    from actstore.run.batch import plan_jobs
    from actstore.run.runner import SAESource

    def src(name, layer, nbytes):
        return SAESource(name, "r", name, None, layer, nbytes=nbytes)

    sources = [src("a", 3, 10), src("b", 1, 10), src("c", 3, 10), src("d", 3, 45), src("e", 3, 10), src("f", None, 1),
               src("g", 1, 200)]
    jobs = plan_jobs(sources, budget_bytes=100, group_size=2)  # groups: <= 2 SAEs and <= 50 bytes
    assert [j.layer for j in jobs] == [1, 3, None]
    assert [[s.name for s in g] for g in jobs[0].groups] == [["b"], ["g"]]  # g alone: larger than the budget
    assert [[s.name for s in g] for g in jobs[1].groups] == [["a", "c"], ["d"], ["e"]]


def test_report_renders_in_headless_chromium(planted_store, suite, tmp_path):
    import shutil as sh

    from actstore.report.pages import write_report

    results = tmp_path / "results"
    run_score(ScoreCommandConfig(str(planted_store), str(results), [str(suite)], local=True), log=lambda _: None)
    written = write_report(results, tmp_path / "report")
    assert (written["scored"], written["failed"]) == (3, 3)
    names = sorted(Path(p).name for p in written["figures"])
    assert names == ["absorption_per_class.png", "absorption_vs_l0.png", "f1_by_layer.png", "f1_vs_l0.png",
                     "full_absorption_vs_l0.png", "layer_width_heatmap.png", "precision_recall.png", "splits_vs_l0.png"]
    for p in written["figures"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chromium = sh.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it as root)")
    page = Path(written["html"]).resolve().as_uri()
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(flags + ["--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    body = dom[dom.index("<body"):dom.index(">", dom.index("<body"))]
    # every embedded figure decoded (naturalWidth > 0), and the rows of the three tables are in the page:
    # heatmap 1 layer + 3 scored SAEs + 3 failed SAEs
    assert 'data-images-rendered="8"' in body and 'data-table-rows="7"' in body, body
    assert "layer_0/width_1500/absorption_30" in dom and "NaN or inf" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2400", page], capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] == 2400 and pixels.std() > 0.05  # drawn figures and tables, not a blank page
