"""Bad input that must never give a wrong number or take good work down: bad SAE files fail alone, results know
their provenance, swapped shards and structural damage are caught, concurrent runs are refused, a full disk
and Ctrl-C end in one line and resume."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import storeworld
from conftest import resize
from actstore.cli import checks
from actstore.run.sources import read_list
from actstore.store import locks
from actstore.store import verify
from actstore.cli.main import main
from actstore.run.provenance import Provenance, redo_reason
from actstore.run.results import part_name, read_part, saebench_name, write_atomic, write_tables
from actstore.run.runner import ScoreCommandConfig, resolve_saes, run_score
from actstore.store.zarrstore import ActivationStore, CorruptShardError

VOLATILE = {"seconds"}


def table(path: Path) -> dict:
    return {(r["sae_key"], r.get("letter")): {k: v for k, v in r.items() if k not in VOLATILE}
            for r in pq.read_table(path).to_pylist()}


def npz_bytes(**arrays) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mixed(planted_saes, tmp_path_factory):
    """One good planted SAE and a bad file of every kind, in one Gemma Scope-like folder; name -> reason part."""
    root = tmp_path_factory.mktemp("mixed folder")
    good = root / "layer_0" / "width_1500" / "good"
    shutil.copytree(planted_saes[0], good)
    with np.load(good / "params.npz") as p:
        arrays = {k: p[k] for k in p.files}
    m, d = arrays["W_dec"].shape
    raw = (good / "params.npz").read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    bad = {
        "not_a_zip": (b"hello, not a zip", "is not a zip archive"),
        "zero_bytes": (b"", "is not a zip archive"),
        "truncated": (raw[: len(raw) // 3], "damaged or truncated"),
        "crc_error": (bytes(flipped), "damaged or truncated"),
        "plain_npy": (None, "single .npy array"),
        "wrong_keys": (npz_bytes(W_enc=arrays["W_enc"], W_dec=arrays["W_dec"]), "lacks ['b_enc', 'b_dec', 'threshold']"),
        "pickled": (npz_bytes(**{**arrays, "b_dec": np.array([{"a": 1}], dtype=object)}), "pickled Python objects"),
        "int_dtype": (npz_bytes(**{**arrays, "W_enc": arrays["W_enc"].astype(np.int32)}), "expected floating point"),
        "width_0": (npz_bytes(W_enc=np.zeros((d, 0), np.float32), W_dec=np.zeros((0, d), np.float32),
                              b_enc=np.zeros(0, np.float32), b_dec=np.zeros(d, np.float32),
                              threshold=np.zeros(0, np.float32)), "width 0"),
        "nan": (npz_bytes(**{**arrays, "W_dec": np.where(np.arange(m)[:, None] == 3, np.nan, arrays["W_dec"])}),
                "NaN or inf"),
        "inf": (npz_bytes(**{**arrays, "b_enc": np.full(m, np.inf, np.float32)}), "NaN or inf"),
        "shapes": (npz_bytes(**{**arrays, "W_dec": arrays["W_dec"][:, :-1]}), "inconsistent shapes"),
        "d_model": (npz_bytes(**{k: np.zeros(tuple(2 * d if s == d else s for s in a.shape), np.float32)
                                 for k, a in arrays.items()}), "the store holds d_model 64"),
        "zero_decoder": (npz_bytes(**{**arrays, "W_dec": np.zeros_like(arrays["W_dec"])}), "every decoder row is zero"),
    }
    for name, (content, _) in bad.items():
        folder = root / "layer_0" / "width_1500" / name
        folder.mkdir(parents=True)
        if name == "plain_npy":
            with open(folder / "params.npz", "wb") as f:
                np.save(f, arrays["W_enc"])
        else:
            (folder / "params.npz").write_bytes(content)
    return root, good, {f"layer_0/width_1500/{k}": v[1] for k, v in bad.items()}


def test_every_bad_sae_file_fails_alone_and_the_good_one_scores_as_alone(planted_store, mixed, tmp_path, capsys):
    root, good, reasons = mixed
    assert main(["score", str(planted_store), "--saes", str(root), "--out", str(tmp_path / "all"), "--local"]) == 1
    rows = {r["sae_id"]: r for r in pq.read_table(tmp_path / "all" / "saes.parquet").to_pylist()}
    assert len(rows) == len(reasons) + 1
    for sae_id, fragment in reasons.items():
        assert rows[sae_id]["status"] == "failed" and fragment in rows[sae_id]["reason"], (sae_id, rows[sae_id]["reason"])
        assert "\n" not in rows[sae_id]["reason"]
    assert rows["layer_0/width_1500/good"]["status"] == "ok"
    assert f"1 SAEs scored, {len(reasons)} failed" in capsys.readouterr().out
    # the same SAE alone: every number identical, per SAE and per letter
    assert main(["score", str(planted_store), "--saes", str(good), "--out", str(tmp_path / "alone"), "--local"]) == 0
    alone, together = table(tmp_path / "alone" / "saes.parquet"), table(tmp_path / "all" / "saes.parquet")
    assert len(alone) == 1 and all(together[key] == row for key, row in alone.items())
    alone, together = table(tmp_path / "alone" / "letters.parquet"), table(tmp_path / "all" / "letters.parquet")
    assert len(alone) >= 10 and all(together[key] == row for key, row in alone.items())


def test_degenerate_saes_are_flagged_not_plain_ok(planted_store, planted_saes, tmp_path):
    folder = tmp_path / "layer_0" / "width_1500" / "odd"
    folder.mkdir(parents=True)
    with np.load(planted_saes[0] / "params.npz") as p:
        arrays = {k: p[k].copy() for k in p.files}
    arrays["threshold"][:7] = -0.5  # 7 negative thresholds
    arrays["W_dec"][10:13] = 0  # 3 zero decoder rows
    np.savez(folder / "params.npz", **arrays)
    summary = run_score(ScoreCommandConfig(str(planted_store), str(tmp_path / "r"), saes=[str(folder)], local=True),
                        log=lambda *a: None)
    assert summary["failed"] == 0
    (row,) = pq.read_table(tmp_path / "r" / "saes.parquet").to_pylist()
    assert row["status"] == "flagged"
    assert "3 of 1500 decoder rows are zero" in row["reason"] and "7 of 1500 JumpReLU thresholds are negative" in row["reason"]
    # a dead-latent share above the limit flags too: the planted SAE's fillers never fire on the vocabulary
    dead = row["dead_latent_share"]
    assert 0.5 < dead < 1
    out = tmp_path / "r2"
    run_score(ScoreCommandConfig(str(planted_store), str(out), saes=[str(planted_saes[0])], local=True,
                                 max_dead_share=dead - 0.01), log=lambda *a: None)
    (row,) = pq.read_table(out / "saes.parquet").to_pylist()
    assert row["status"] == "flagged" and "never fire on the vocabulary task" in row["reason"]


def test_rerun_recomputes_when_options_store_or_probe_differ(planted_store, planted_saes, tmp_path):
    out, logs = tmp_path / "r", []
    cfg = ScoreCommandConfig(str(planted_store), str(out), saes=[str(planted_saes[1])], local=True)
    assert run_score(cfg, log=logs.append)["computed"] == 1
    assert run_score(cfg, log=logs.append)["computed"] == 0  # same store, probe and options: reused
    logs.clear()
    changed = ScoreCommandConfig(**{**cfg.__dict__, "min_probe_f1": 0.5})
    assert run_score(changed, log=logs.append)["computed"] == 1
    assert any("recomputing 1" in line and "min_probe_f1 0.6 -> 0.5" in line for line in logs), logs
    # another store (here: the same rows with one probe retrained) and another store's data: unit-level
    part = read_part(out / "parts" / part_name(resolve_saes([str(planted_saes[1])])[0].key))
    other = tmp_path / "other.zarr"
    shutil.copytree(planted_store, other)
    with ActivationStore.open(other) as store:
        same = Provenance(store, changed, "cpu")
        assert redo_reason(out, resolve_saes([str(planted_saes[1])])[0], same) is None  # a copy is the same store
    with ActivationStore.open(other, mode="a") as store:
        w, b, attrs = store.load_probe(0)
        store.save_probe(0, w * 1.01, b, attrs)
        prov = Provenance(store, changed, "cpu").of(0)
        assert prov["probe"] != part["provenance"]["probe"] and prov["store"] == part["provenance"]["store"]
    storeworld.build(tmp_path / "w.zarr", shards=None, layers=[0]).close()
    with ActivationStore.open(tmp_path / "w.zarr") as store:
        assert Provenance(store, changed, "cpu").of(0)["store"] != part["provenance"]["store"]


def test_swapped_shard_files_are_caught_on_read_and_by_verify(tmp_path):
    path = tmp_path / "s.zarr"
    storeworld.build(path).close()
    layer = path / "vocab" / "layer_00" / "c"
    a, b = layer / "0" / "0", layer / "1" / "0"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    label = path / "vocab" / "label" / "c"
    la, lb = (label / "2").read_bytes(), (label / "3").read_bytes()
    (label / "2").write_bytes(lb)
    (label / "3").write_bytes(la)
    with ActivationStore.open(path) as store:
        with pytest.raises(CorruptShardError, match="in the wrong place"):
            store.read("vocab", 0, 0, 10)
        with pytest.raises(CorruptShardError, match="not the ones its manifest marker records"):
            store.column("vocab", "label", 2048, 2050)
        problems = verify.verify(store)
    assert sorted((p.array, p.shard, p.kind) for p in problems) == [
        ("vocab/label", 2, "corrupt"), ("vocab/label", 3, "corrupt"), ("vocab/layer_00", 0, "corrupt"),
        ("vocab/layer_00", 1, "corrupt")]


def test_verify_checks_structure_every_shard_and_the_probes(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    store = storeworld.build(path, layers=[0, 3])
    store.save_probe(3, np.ones((26, 1024), np.float32), np.zeros(26, np.float32), {"metrics": {}})
    store.close()
    (path / "vocab" / "layer_03" / "c" / "4" / "0").write_bytes(b"")  # a 0-byte shard
    with ActivationStore.open(path, mode="a") as store:
        weight = store._root["probes"]["layer_03"]["weight"]
        weight[0, 0] = 2.0  # the probe's bytes are no longer those saved
        assert {(p.array, p.shard, p.kind) for p in verify.verify(store)} == {
            ("vocab/layer_03", 4, "corrupt"), ("probes/layer_03", -1, "probe")}
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "is empty (0 bytes)" in out and "sha256 differs" in out
    shutil.rmtree(path / "vocab")  # the group the attributes promise is gone
    assert main(["verify", str(path)]) == 1
    assert "structure  vocab: the store's attributes list group 'vocab'" in capsys.readouterr().out
    storeworld.build(tmp_path / "t.zarr", layers=[0]).close()
    shutil.rmtree(tmp_path / "t.zarr" / "vocab" / "split")  # a column the attributes promise
    with ActivationStore.open(tmp_path / "t.zarr", require_complete=False) as store:
        assert [(p.array, p.kind) for p in verify.structure(store)] == [("vocab/split", "structure")]


def test_saebench_names_are_unique_per_sae_file():
    a = SimpleNamespace(key="/data/run1/saes/layer_0/x", release="saes", name="layer_0/x")
    b = SimpleNamespace(key="/data/run2/saes/layer_0/x", release="saes", name="layer_0/x")
    catalog = SimpleNamespace(key="gemma-scope-2b-pt-res/layer_0/x", release="gemma-scope-2b-pt-res", name="layer_0/x")
    assert saebench_name(a) != saebench_name(b)
    assert saebench_name(catalog) == "gemma-scope-2b-pt-res_layer_0_x_eval_results.json"  # SAEBench's own name


def test_concurrent_part_writers_never_tear_and_torn_parts_are_redone(tmp_path):
    path = tmp_path / "race" / "p.json"
    path.parent.mkdir()
    records = [json.dumps({"summary": {"status": "ok"}, "pad": str(i) * 20000}) for i in range(3)]
    stop, torn = threading.Event(), []

    def writer(text):
        while not stop.is_set():
            write_atomic(path, text)

    def reader():
        while not stop.is_set():
            if path.exists() and read_part(path) is None:
                torn.append(1)

    threads = [threading.Thread(target=writer, args=(r,)) for r in records] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    threading.Event().wait(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert not torn and not list(path.parent.glob("*.partial"))
    # a torn part (written by an older version, or by hand) is named and recomputed, and the tables skip it
    source = SimpleNamespace(key="/x/sae", fingerprint="", layer=0, name="sae")
    (tmp_path / "parts").mkdir()
    torn_part = tmp_path / "parts" / part_name(source.key)
    torn_part.write_text('{"summary": {"status": "ok", "reason": "Unterminated')
    assert redo_reason(tmp_path, source) == f"its part {torn_part} is torn or unreadable"
    assert write_tables(tmp_path) == (0, 0)


def test_an_sae_folder_and_list_files_name_the_sae(planted_saes, tmp_path):
    folder = planted_saes[0]
    (source,) = resolve_saes([str(folder)])
    assert source.name == "layer_0/width_1500/absorption_00" and source.layer == 0
    link = tmp_path / "ünï cödé link"
    link.symlink_to(folder.parents[2], target_is_directory=True)
    lists = tmp_path / "my lists"
    lists.mkdir()
    rel = os.path.relpath(link / "layer_0" / "width_1500" / "absorption_00", lists)
    (lists / "l.txt").write_bytes(f"# SAEs\r\n\r\n   {rel}   \r\n{link}/layer_0 # inline comment\r\n".encode())
    specs = read_list(str(lists / "l.txt"))
    assert specs == [str(lists / rel), str(link / "layer_0")]
    keys = {s.name for s in resolve_saes(specs)}
    assert "layer_0/width_1500/absorption_00" in keys and len(keys) == len(planted_saes)
    (lists / "bad.txt").write_text("# one good line, then one that names nothing\n" + rel + "\n\nnot/here\n")
    with pytest.raises(checks.BadArgument, match=r"line 4: 'not/here' names nothing"):
        read_list(str(lists / "bad.txt"))


def test_a_second_score_into_one_results_folder_is_refused(planted_store, tmp_path, capsys):
    cfg = ScoreCommandConfig(str(planted_store), str(tmp_path / "r"))
    with locks.hold("score", cfg):
        assert main(["score", str(planted_store), "--out", str(tmp_path / "r"), "--saes", "x.npz", "--local"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"results folder {tmp_path / 'r'} is in use by `actstore score` (pid {os.getpid()}" in err
    assert len(err.splitlines()) == 1


def test_probe_while_score_reads_and_two_extract_resumes_are_refused(planted_store, tmp_path, capsys):
    with locks.hold("score", ScoreCommandConfig(str(planted_store), str(tmp_path / "r"))):
        assert main(["probe", str(planted_store)]) == 2
        assert "is in use by other actstore processes reading it" in capsys.readouterr().err
    store = tmp_path / "s.zarr"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from actstore.store import locks; "
                               "from types import SimpleNamespace as N\n"
                               "with locks.hold('extract', N(out=sys.argv[1])):\n print('held', flush=True); time.sleep(60)",
                               str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["extract", "--out", str(store), "--resume", "--model", str(tmp_path)]) == 2
        assert f"is in use by `actstore extract` (pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing anything: its lock file stays, and is taken over (never stale)
    assert json.loads(locks.store_lock_path(store).read_text())["pid"] == holder.pid
    with locks.hold("extract", SimpleNamespace(out=str(store))):
        assert json.loads(locks.store_lock_path(store).read_text())["pid"] == os.getpid()


def test_worker_errors_cross_ray_as_one_plain_line():
    err = CorruptShardError("vocab/layer_00", 3, (0, 10), "/s/c/3/0", "chunk 1: crc mismatch")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is CorruptShardError and str(again) == str(err)
    from actstore.run.batch import Job, LayerScorer, WorkerError

    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("cannot pickle")

    scorer = LayerScorer.__new__(LayerScorer)
    scorer._run = lambda job, on_done: (_ for _ in ()).throw(Unpicklable("weird\nsecond line"))
    with pytest.raises(WorkerError) as caught:
        scorer.run(Job(4, []))
    assert str(caught.value) == "scoring layer 4 failed: internal error (a bug in actstore): Unpicklable: weird"
    again = pickle.loads(pickle.dumps(caught.value))
    assert str(again) == str(caught.value)
    assert "Traceback" in again.remote_traceback and "Unpicklable: weird\nsecond line" in again.remote_traceback


def test_ctrl_c_in_score_ends_in_one_line_and_the_rerun_resumes(planted_store, planted_saes, tmp_path, capsys,
                                                                 monkeypatch):
    from actstore.run import batch

    real, calls = batch.LayerScorer._write, []

    def write_then_interrupt(self, source, record):
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(self, source, record)

    monkeypatch.setattr(batch.LayerScorer, "_write", write_then_interrupt)
    argv = ["score", str(planted_store), "--saes", str(planted_saes[0]), str(planted_saes[2]), "--out",
            str(tmp_path / "r"), "--local", "--group-size", "1"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == "actstore score: interrupted; what finished is kept: run the same command again to resume"
    assert len(list((tmp_path / "r" / "parts").glob("*.json"))) == 1 and not list(tmp_path.rglob("*.partial"))
    monkeypatch.setattr(batch.LayerScorer, "_write", real)
    assert main(argv) == 0
    assert "2 SAEs named, 1 already in" in capsys.readouterr().out


def test_a_full_disk_ends_in_one_line_and_nothing_partial_is_trusted(planted_store, planted_saes, tmp_path, capsys,
                                                                     small_disk):
    disk = small_disk("40k")
    out = disk / "r"
    argv = ["score", str(planted_store), "--saes", str(planted_saes[0]), "--out", str(out), "--local"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("actstore score: error: no space left on the device") and len(err.splitlines()) == 1
    assert not list(out.rglob("*.partial"))  # what was written is whole: a part is there entirely or not at all
    assert all(read_part(p) is not None for p in (out / "parts").glob("*.json"))
    # the store side: a shard write that runs out of space leaves the store resumable
    resize(disk, "1m")  # metadata fits, a shard not
    store = ActivationStore.create(disk / "s.zarr", storeworld.spec(layers=[0]))
    store.add_group("vocab", rows=storeworld.ROWS)
    with pytest.raises(OSError) as caught:
        storeworld.write_shards(store, "vocab", [0])
    assert caught.value.errno == errno.ENOSPC
    resize(disk, "64m")
    assert main(argv) == 0  # the rerun scores it whole
    storeworld.write_shards(store, "vocab", list(range(store.num_shards("vocab"))), only_missing=True)
    assert store.missing() == {} and verify.verify(store) == []
    store.close()
