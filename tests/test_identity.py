"""Bad input, round 2 (issue 24): what a file is, by content; SAEs found through links or named as skipped; a
flagged SAE reported as scored; resume advice that works for a relative --contexts and for a copied store."""

from __future__ import annotations

import os
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from actstore.store import digests
from actstore.cli.main import main
from actstore.run.runner import ScoreCommandConfig, fingerprint, resolve_saes, run_score


def rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """Other bytes of the same size, written in place, with the old modification time put back."""
    stat = path.stat()
    assert len(data) == stat.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns, path.stat().st_ino) == (stat.st_size, stat.st_mtime_ns,
                                                                                  stat.st_ino)


def test_a_cached_file_digest_follows_a_rewrite_that_keeps_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSTORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(digests, "_memory", {})
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 4096)
    first = digests.file_sha256(path)
    assert first == __import__("hashlib").sha256(b"a" * 4096).hexdigest()
    assert first in (tmp_path / "cache" / "digests.json").read_text()  # cached for the next process
    os.utime(path)  # touched, the same bytes: the same digest
    assert digests.file_sha256(path) == first
    rewrite_keeping_size_and_mtime(path, b"b" * 4096)
    assert digests.file_sha256(path) == __import__("hashlib").sha256(b"b" * 4096).hexdigest()
    monkeypatch.setattr(digests, "_memory", {})  # a fresh process, reading the cache file
    assert digests.file_sha256(path) == __import__("hashlib").sha256(b"b" * 4096).hexdigest()


def test_an_sae_with_other_weights_of_the_same_size_and_mtime_is_another_sae(planted_saes, tmp_path):
    """The fingerprint of a params.npz is its members' zip CRCs: other weights change it whatever the size and
    mtime say; a touch alone does not."""
    npz = tmp_path / "params.npz"
    shutil.copyfile(planted_saes[0] / "params.npz", npz)
    before = fingerprint(npz)
    os.utime(npz)
    assert fingerprint(npz) == before
    with np.load(npz) as p:
        arrays = {k: p[k] for k in p.files}
    other = tmp_path / "other.npz"
    np.savez(other, **{**arrays, "b_enc": arrays["b_enc"] + 1})
    rewrite_keeping_size_and_mtime(npz, other.read_bytes())
    assert fingerprint(npz) != before and fingerprint(npz).startswith("npz:")
    assert fingerprint(npz) == fingerprint(other)  # the same members, the same identity, wherever the file is


def test_sae_folders_behind_links_are_found_and_what_cannot_be_followed_is_named(planted_store, planted_saes, tmp_path,
                                                                               capsys):
    """Under --saes: a linked SAE folder is scored; a params.npz that is a broken or looping link fails alone,
    saying so; a folder loop and a second link to a folder already searched are named, not silently skipped."""
    root = tmp_path / "saes"
    (root / "layer_0" / "width_1500").mkdir(parents=True)
    real = root / "layer_0" / "width_1500" / "real"
    shutil.copytree(planted_saes[0], real)
    (root / "layer_0" / "width_1500" / "linked").symlink_to(planted_saes[1])  # a folder outside the tree
    (root / "layer_0" / "width_1500" / "again").symlink_to(real)  # a second name for one folder
    broken = root / "layer_0" / "width_1500" / "broken"
    broken.mkdir()
    (broken / "params.npz").symlink_to(tmp_path / "gone.npz")
    looping = root / "layer_0" / "width_1500" / "looping"
    looping.mkdir()
    (looping / "params.npz").symlink_to(looping / "params.npz")
    (root / "layer_0" / "loop").symlink_to(root / "layer_0")  # a folder that contains itself

    notes: list[str] = []
    sources = {s.name: s for s in resolve_saes([str(root)], notes=notes)}
    assert set(sources) == {"layer_0/width_1500/real", "layer_0/width_1500/linked", "layer_0/width_1500/broken",
                            "layer_0/width_1500/looping"}
    assert sorted(n.split(": ", 1)[1].split(" is ")[0] for n in notes) == sorted(
        [str(root / "layer_0" / "loop"), str(root / "layer_0" / "width_1500" / "again")]), notes
    assert all("already searched" in n for n in notes)

    out = tmp_path / "r"
    capsys.readouterr()
    assert main(["score", str(planted_store), "--saes", str(root), "--out", str(out), "--local", "--bootstrap", "0"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert f"not searched under {root}: {root / 'layer_0' / 'loop'} is a link to" in captured.out
    rows = {r["sae_id"]: r for r in pq.read_table(out / "saes.parquet").to_pylist()}
    assert rows["layer_0/width_1500/linked"]["status"] == "ok" and rows["layer_0/width_1500/real"]["status"] == "ok"
    assert rows["layer_0/width_1500/broken"]["status"] == "failed"
    assert f"a broken link (to {tmp_path / 'gone.npz'}, which is not there)" in rows["layer_0/width_1500/broken"]["reason"]
    assert "a link that loops" in rows["layer_0/width_1500/looping"]["reason"]
    assert "2 SAEs scored, 2 failed" in captured.out


def test_a_flagged_sae_is_reported_as_scored_everywhere(planted_store, planted_saes, tmp_path, capsys):
    """A degenerate SAE is scored and flagged: the line per SAE, the run's summary, the final line and the exit
    code agree (before: the line said "failed" while the summary counted it as scored)."""
    folder = tmp_path / "layer_0" / "width_1500" / "odd"
    folder.mkdir(parents=True)
    with np.load(planted_saes[0] / "params.npz") as p:
        arrays = {k: p[k].copy() for k in p.files}
    arrays["W_dec"][10:13] = 0  # 3 zero decoder rows: flagged
    np.savez(folder / "params.npz", **arrays)
    capsys.readouterr()
    assert main(["score", str(planted_store), "--saes", str(folder), "--out", str(tmp_path / "r"), "--local",
                 "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "failed:" not in out
    assert "layer_0/width_1500/odd: scored, flagged: 3 of 1500 decoder rows are zero" in out
    assert "holds 1 scored (1 flagged), 0 failed" in out
    assert "scored 1 (1 flagged) and failed 0 of 1" in out and "1 SAEs scored (1 flagged), 0 failed" in out
    assert main(["report", str(tmp_path / "r")]) == 0  # the report counts it as score does, and shows why
    assert "1 SAEs (0 failed, 1 flagged)" in capsys.readouterr().out
    page = (tmp_path / "r" / "report" / "report.html").read_text()
    assert "1 SAEs scored (1 flagged" in page and "3 of 1500 decoder rows are zero" in page


def test_a_refused_score_leaves_no_results_folder(planted_store, tmp_path):
    """SAE specs that name nothing are refused before RESULTS is made (before: an empty parts/ and saebench/)."""
    from actstore.errors import InputError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no params.npz"):
        run_score(ScoreCommandConfig(str(planted_store), str(tmp_path / "r"), [str(empty)], local=True),
                  log=lambda _: None)
    assert not (tmp_path / "r").exists()


def test_contexts_with_a_byte_order_mark_read_as_text(tmp_path):
    from actstore.extract.contexts import read_documents

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "abc def"}\n{"text": "ghi"}\n')
    assert list(read_documents(str(path))) == ["abc def", "ghi"]
    binary = tmp_path / "nul.txt"
    binary.write_bytes(b"some words " * 10 + b"\x00\x01" * 100)
    with pytest.raises(ValueError, match=f"{binary} holds NUL characters .*a binary file"):
        list(read_documents(str(binary)))


@pytest.mark.slow
def test_resume_advice_works_for_a_relative_contexts_path_and_for_a_copied_store(synth_model, corpus, tmp_path,
                                                                                 monkeypatch, ray_session, capsys):
    """A store extracted with a relative --contexts resumes with the command it quotes (absolute paths) from another
    folder; a copy of a half-written store quotes a command for the copy, which then completes the copy (before:
    "written by a different run", and a copy's command finished the original, "computed 0 rows")."""
    from actstore.store.zarrstore import ActivationStore, IncompleteStoreError

    model = tmp_path / "model"
    shutil.copytree(synth_model, model)
    monkeypatch.chdir(corpus.parent)
    original = tmp_path / "first run" / "s.zarr"  # a space: the quoted command must quote it
    args = ["extract", "--model", str(model), "--out", str(original), "--contexts", corpus.name, "--layers", "0",
            "--max-vocab", "200", "--context-rows", "256", "--context-length", "64", "--shard-rows", "128",
            "--batch-size", "16"]
    assert main(args) == 0
    complete = {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()
                and p.name != "zarr.json"}
    (original / "vocab" / "layer_00" / "_manifest" / "000001.json").unlink()  # one shard never finished
    copy = tmp_path / "copy.zarr"
    shutil.copytree(original, copy)

    monkeypatch.chdir("/")
    for store in (copy, original):
        with pytest.raises(IncompleteStoreError) as caught:
            ActivationStore.open(store)
        command = shlex.split(str(caught.value).split("resume it with `")[1].split("`")[0])
        assert command[command.index("--out") + 1] == str(store.resolve())
        assert command[command.index("--contexts") + 1] == str(corpus.resolve())
        t0 = time.time()
        assert main(command[1:]) == 0, "the quoted command failed"
        assert time.time() - t0 < 120
        with ActivationStore.open(store) as done:
            assert done.complete
        assert {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()
                and p.name != "zarr.json"} == complete

    # the model folder's weights replaced after shards were written: a resume is refused, naming the weights
    from actstore.extract.synthetic import write_synthetic_model

    other = write_synthetic_model(tmp_path / "other", n_layers=4, seed=1)
    shutil.copyfile(other / "model.safetensors", model / "model.safetensors")
    (original / "vocab" / "layer_00" / "_manifest" / "000001.json").unlink()
    capsys.readouterr()
    assert main(command[1:]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "was written from another model or tokenizer" in line and "'weights'" in line, line
