"""Bad input, every command: a table of cases, each asserting the exit code (2 for bad input, 1 where a command
reports problems), one line on stderr, no traceback anywhere, a time limit, and nothing already written changed
(the store, the results, the SAEs and the lists are hashed before and after).

Almost every case calls `actstore.cli.main.main` in this process and fails in argument checking, before any model,
store read or Ray; the few that need a fresh interpreter (the `python -m actstore.cli.main` entry point) spawn one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actstore.cli.main import main
from actstore.store.zarrstore import ActivationStore, StoreSpec

D = 16  # the tiny world's d_model


def tiny_store(path: Path, layers=(0, 1)) -> None:
    """A complete store of 300 vocab rows (3 shards), d_model 16, with a probe per layer."""
    gen = torch.Generator().manual_seed(0)
    store = ActivationStore.create(path, StoreSpec(model="tiny", d_model=D, layers=list(layers), dtype="float32",
                                                   shard_rows=128, chunk_rows=64))
    n = 300
    store.add_group("vocab", rows=n)
    data = {l: torch.randn(n, D, generator=gen) for l in layers}
    store.write("vocab", 0, {**data, "token_id": np.arange(n), "label": np.arange(n) % 26, "split": (np.arange(n) % 5 == 0).astype(np.int8),
                             "position": np.zeros(n, int), "text": np.array([f"w{i}" for i in range(n)])})
    for l in layers:
        store.save_probe(l, np.ones((26, D), np.float32), np.zeros(26, np.float32),
                         {"metrics": {split: {k: [0.9] * 26 for k in ("precision", "recall", "f1")}
                                      for split in ("train", "test")}})
    store.close()


def write_sae(path: Path, d: int = D, m: int = 8) -> None:
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, W_enc=rng.normal(size=(d, m)).astype(np.float32), W_dec=rng.normal(size=(m, d)).astype(np.float32),
             b_enc=np.zeros(m, np.float32), b_dec=np.zeros(d, np.float32), threshold=np.ones(m, np.float32))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Everything the cases point at; `written` are the folders that must not change."""
    root = tmp_path_factory.mktemp("fuzz world")  # a space in every path
    tiny_store(root / "store.zarr")
    write_sae(root / "saes" / "layer_0" / "width_8" / "a" / "params.npz")
    (root / "saes" / "layer_0" / "width_8" / "bad").mkdir(parents=True)
    (root / "saes" / "layer_0" / "width_8" / "bad" / "params.npz").write_bytes(b"not a zip")
    results = root / "results"
    (results / "parts").mkdir(parents=True)
    (results / "parts" / "x.json").write_text(json.dumps({"summary": {"status": "ok"}}))
    (results / "saes.parquet").write_bytes(b"PAR1")
    (root / "afile.txt").write_text("hello\n")
    lists = root / "lists"
    lists.mkdir()
    (lists / "nothing.txt").write_text("\n# only a comment\n   \n")
    (lists / "missing line.txt").write_text("# SAEs\n../saes/layer_0\r\n\nno/such/thing\n")
    (lists / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    (lists / "a folder").mkdir()
    (root / "model").mkdir()  # an existing folder standing in for a local model
    (root / "ümlaut dir").mkdir()
    damaged = root / "damaged.zarr"
    tiny_store(damaged)
    shard = damaged / "vocab" / "layer_01" / "c" / "1" / "0"
    shard.write_bytes(b"")  # a 0-byte shard: verify reports it
    incomplete = root / "incomplete.zarr"
    tiny_store(incomplete)
    (incomplete / "vocab" / "layer_00" / "_manifest" / "000001.json").unlink()
    (root / "notastore").mkdir()
    (root / "broken.zarr").mkdir()
    (root / "broken.zarr" / "zarr.json").write_text("{ not json")
    return {"root": root, "written": [root / "store.zarr", root / "saes", results, lists, root / "afile.txt",
                                      damaged, incomplete]}


def digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for top in paths:
        for p in sorted([top] if top.is_file() else top.rglob("*")):
            if p.is_file() and not p.name.endswith(".lock"):
                h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


def lock_files(paths: list[Path]) -> set[Path]:
    return {p for top in paths if top.is_dir() for p in top.rglob("*.lock")}


S, R = "{root}/store.zarr", "{root}/results"
NEW = "{root}/new/out"  # a fresh output path

# (name, argv, expected exit code, a fragment the one stderr line must contain)
CASES: list[tuple[str, list[str], int, str]] = []


def case(name, argv, code=2, fragment="error"):
    CASES.append((name, argv, code, fragment))


# the smallest valid-looking command line of each command
BASE = {"extract": ["extract", "--out", NEW], "probe": ["probe", S], "score": ["score", S, "--out", NEW],
        "synth-model": ["synth-model", "--out", NEW], "demo": ["demo", "--out", NEW], "saes": ["saes", "list"],
        "synth-saes": ["synth-saes", "--store", S, "--layer", "0", "--out", NEW], "report": ["report", R],
        "info": ["info", S], "verify": ["verify", S]}

# argparse itself: unknown commands, options, types
case("no command", [], 2, "required")
case("unknown command", ["frobnicate"], 2, "invalid choice")
for command, base in BASE.items():
    case(f"{command}: unknown option", base + ["--no-such-option"], 2, "unrecognized arguments")
case("extract: --out missing", ["extract"], 2, "--out")
case("score: --out missing", ["score", S], 2, "--out")
case("synth-saes: --store missing", ["synth-saes", "--layer", "0", "--out", NEW], 2, "--store")
for command, option in [("extract", "--context-rows"), ("extract", "--batch-size"), ("extract", "--workers"),
                        ("extract", "--seed"), ("probe", "--epochs"), ("score", "--layer"), ("score", "--workers"),
                        ("score", "--group-size"), ("synth-model", "--layers"), ("synth-saes", "--width"),
                        ("demo", "--seed"), ("saes", "--layer")]:
    base = BASE[command]
    for value in ("abc", "1.5", ""):
        case(f"{command} {option} {value!r}", base + [option, value], 2, "invalid int value")
for value in ("x", "nan-ish"):
    case(f"score --min-probe-f1 {value}", ["score", S, "--out", NEW, "--min-probe-f1", value], 2, "invalid float")
    case(f"score --memory-gb {value}", ["score", S, "--out", NEW, "--memory-gb", value], 2, "invalid float")

# numbers out of range
for value in ("0", "-1", "-3"):
    for option in ("--batch-size", "--context-length", "--in-flight", "--max-vocab", "--shard-rows", "--workers"):
        case(f"extract {option} {value}", ["extract", "--out", NEW, "--model", "{root}/model", option, value], 2,
             "expected a positive integer")
    case(f"probe --epochs {value}", ["probe", S, "--epochs", value], 2, "expected a positive integer")
    case(f"synth-model --layers {value}", ["synth-model", "--out", NEW, "--layers", value], 2, "positive integer")
    case(f"score --group-size {value}", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--group-size", value], 2,
         "positive integer")
    case(f"synth-saes --width {value}", ["synth-saes", "--store", S, "--layer", "0", "--out", NEW, "--width", value], 2,
         "positive integer")
for value in ("-1", "-7"):
    case(f"extract --context-rows {value}", ["extract", "--out", NEW, "--context-rows", value], 2, "integer >= 0")
    case(f"extract --seed {value}", ["extract", "--out", NEW, "--seed", value], 2, "integer >= 0")
    case(f"score --workers {value}", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--workers", value], 2,
         "integer >= 0")
    case(f"score --layer {value}", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--layer", value], 2, ">= 0")
    case(f"saes list --layer {value}", ["saes", "list", "--layer", value], 2, ">= 0")
    case(f"demo --seed {value}", ["demo", "--out", NEW, "--seed", value], 2, ">= 0")
    case(f"probe --seed {value}", ["probe", S, "--seed", value], 2, ">= 0")
    case(f"synth-saes --layer {value}", ["synth-saes", "--store", S, "--layer", value, "--out", NEW], 2, ">= 0")
for value in ("0", "-1", "-0.5"):
    case(f"score --memory-gb {value}", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--memory-gb", value], 2,
         "positive number")
for value in ("-0.1", "1.5", "2"):
    case(f"score --min-probe-f1 {value}", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--min-probe-f1", value],
         2, "fraction")
    case(f"score --max-dead-share {value}", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--max-dead-share",
                                            value], 2, "fraction")
for value in ("-0.1", "1", "1.5"):
    case(f"synth-saes --absorption {value}", ["synth-saes", "--store", S, "--layer", "0", "--out", NEW, "--absorption",
                                             "0", value], 2, "fraction in [0, 1)")
    case(f"synth-saes --min-split-share {value}", ["synth-saes", "--store", S, "--layer", "0", "--out", NEW,
                                                  "--min-split-share", value], 2, "fraction")
for value in ("1", "0", "-2"):
    case(f"synth-saes --splits {value}", ["synth-saes", "--store", S, "--layer", "0", "--out", NEW, "--splits", value],
         2, "integer >= 2")

# layer specs, widths, choices
for spec in ("3-1", "0-1,3-1", "a", "1-", "-1", "1,,2", "1-2-3", "x-y"):
    case(f"probe --layers {spec!r}", ["probe", S, "--layers", spec], 2, "--layers")
    case(f"score --layers {spec!r}", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--layers", spec], 2, "--layers")
case("extract --layers backwards", ["extract", "--out", NEW, "--layers", "5-2"], 2, "runs backwards")
for widths in ("16q", "k", "0", "16k,,65k"):
    case(f"score --widths {widths!r}", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--widths", widths], 2,
         "--widths")
case("saes list --width 3x", ["saes", "list", "--width", "3x"], 2, "--width")
case("saes: unknown action", ["saes", "show"], 2, "expected one of list")
case("saes: unknown release", ["saes", "list", "--release", "gemma-scope-9b-nope"], 2, "unknown release")
case("score: unknown release", ["score", S, "--out", NEW, "--release", "no-such-release"], 2, "unknown release")
for backend in ("cuda", "fast", ""):
    case(f"score --backend {backend!r}", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--backend", backend], 2,
         "--backend")
for dtype in ("float64", "int8", "bf16"):
    case(f"score --dtype {dtype}", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--dtype", dtype], 2, "--dtype")
    case(f"extract --dtype {dtype}", ["extract", "--out", NEW, "--dtype", dtype], 2, "--dtype")

# options of the metrics (issue 13), the real-model extract (issue 10) and the explorer (issue 12)
SAES = ["score", S, "--out", NEW, "--saes", "{root}/saes"]
for option, value, fragment in [("--seeds", "0", "positive integer"), ("--seeds", "-2", "positive integer"),
                                ("--l1-solver", "adam", "--l1-solver"), ("--l1-solver", "", "--l1-solver"),
                                ("--metric-version", "saebench-0.5", "--metric-version"),
                                ("--metric-version", "0.6", "--metric-version"),
                                ("--min-letters", "0", "SAEBench's floor is 20"), ("--bootstrap", "-1", "no intervals"),
                                ("--null-kinds", "gaussian", "--null-kinds")]:
    case(f"score {option} {value!r}", SAES + [option, value], 2, fragment)
for option, value, fragment in [("--bos", "sometimes", "--bos"), ("--max-dropped", "1.5", "fraction"),
                                ("--max-dropped", "-0.1", "fraction"), ("--log-interval", "0", "positive number"),
                                ("--gguf-file", "absent.gguf", "--gguf-file")]:
    case(f"extract {option} {value!r}", ["extract", "--out", NEW, "--model", "{root}/model", option, value], 2, fragment)
case("extract --no-vocab without --contexts", ["extract", "--out", NEW, "--model", "{root}/model", "--no-vocab"], 2,
     "--no-vocab")
case("extract --model missing.gguf", ["extract", "--out", NEW, "--model", "{root}/missing.gguf"], 2, ".gguf file")
case("explore: not a results folder", ["explore", "{root}/notastore"], 2, "not a results folder")
case("explore --out an existing file", ["explore", R, "--out", "{root}/afile.txt"], 2, "an existing file")

# devices and clusters (this machine has no GPU in CI)
if not torch.cuda.is_available():
    case("score --device cuda", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--device", "cuda"], 2, "no CUDA GPU")
    case("extract --device cuda", ["extract", "--out", NEW, "--device", "cuda"], 2, "no CUDA GPU")
    case("score --device cuda:1", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--device", "cuda:1"], 2, "--device")
for dev in ("tpu", "gpu", "cpu:0x"):
    case(f"score --device {dev}", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--device", dev], 2, "expected cpu")
    case(f"extract --device {dev}", ["extract", "--out", NEW, "--device", dev], 2, "expected cpu")
for address in ("127.0.0.1:1", "localhost:9", "nonsense", "ray://127.0.0.1:1"):
    case(f"score --address {address}", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--address", address], 2,
         "--address")
    case(f"extract --address {address}", ["extract", "--out", NEW, "--address", address], 2, "--address")
cores = len(os.sched_getaffinity(0))
case("score: more workers than cores", ["score", S, "--out", NEW, "--saes", "{root}/saes", "--workers", str(cores + 1)],
     2, "one per worker")
case("extract: more workers than cores", ["extract", "--out", NEW, "--workers", str(cores + 1)], 2, "one per worker")

# paths: inputs that are not there or not what they should be, outputs that cannot be written
for command in ("info", "verify", "probe"):
    case(f"{command}: no such store", [command, "{root}/nope.zarr"], 2, "no such store")
    case(f"{command}: a file as store", [command, "{root}/afile.txt"], 2, "a file, not a store")
    case(f"{command}: a folder that is no store", [command, "{root}/notastore"], 2, "not an actstore store")
    case(f"{command}: unicode path that is no store", [command, "{root}/ümlaut dir"], 2, "not an actstore store")
case("info: damaged zarr.json", ["info", "{root}/broken.zarr"], 2, "zarr.json")
case("verify: damaged zarr.json", ["verify", "{root}/broken.zarr"], 2, "zarr.json")
case("score: no such store", ["score", "{root}/nope.zarr", "--out", NEW, "--saes", "{root}/saes"], 2, "no such store")
case("score: incomplete store", ["score", "{root}/incomplete.zarr", "--out", NEW, "--saes", "{root}/saes", "--local"], 2,
     "incomplete")
case("probe: incomplete store", ["probe", "{root}/incomplete.zarr"], 2, "incomplete")
case("synth-saes: no such store", ["synth-saes", "--store", "{root}/nope.zarr", "--layer", "0", "--out", NEW], 2,
     "no such store")
for command, argv in [("extract", ["extract", "--out", "{root}/afile.txt"]),
                      ("synth-model", ["synth-model", "--out", "{root}/afile.txt"]),
                      ("demo", ["demo", "--out", "{root}/afile.txt"]),
                      ("score", ["score", S, "--saes", "{root}/saes", "--out", "{root}/afile.txt"]),
                      ("report", ["report", R, "--out", "{root}/afile.txt"]),
                      ("synth-saes", ["synth-saes", "--store", S, "--layer", "0", "--out", "{root}/afile.txt"]),
                      ("extract under a file", ["extract", "--out", "{root}/afile.txt/sub"]),
                      ("score under a file", ["score", S, "--saes", "{root}/saes", "--out", "{root}/afile.txt/x"])]:
    case(f"{command}: output is a file", argv, 2, "file")
case("report: no such results", ["report", "{root}/nope", "--out", NEW], 2, "not a results folder")
case("report: a file as results", ["report", "{root}/afile.txt", "--out", NEW], 2, "not a results folder")
case("report: a store as results", ["report", S, "--out", NEW], 2, "not a results folder")
case("extract: no such local model", ["extract", "--out", NEW, "--model", "./no/such/model"], 2, "no such local model")
case("extract: model path is a file", ["extract", "--out", NEW, "--model", "{root}/afile.txt"], 2, "no such local model")
case("extract: model with 2 slashes", ["extract", "--out", NEW, "--model", "a/b/c"], 2, "no such local model")
case("extract: no such contexts", ["extract", "--out", NEW, "--model", "{root}/model", "--contexts", "{root}/nope.txt"],
     2, "--contexts")
case("score: no SAEs named", ["score", S, "--out", NEW, "--local"], 2, "name the SAEs")
case("score: --saes a text file", ["score", S, "--out", NEW, "--saes", "{root}/afile.txt"], 2, "write @")
case("score: @list missing", ["score", S, "--out", NEW, "--saes", "@{root}/lists/nope.txt"], 2, "no such file")
case("score: @list a folder", ["score", S, "--out", NEW, "--saes", "@{root}/lists/a folder"], 2, "a folder")
case("score: @list names nothing", ["score", S, "--out", NEW, "--saes", "@{root}/lists/nothing.txt"], 2, "names no SAE")
case("score: @list bad line", ["score", S, "--out", NEW, "--saes", "@{root}/lists/missing line.txt"], 2, "line 4")
case("score: @list not text", ["score", S, "--out", NEW, "--saes", "@{root}/lists/binary.txt"], 2, "UTF-8")
case("score: @ alone", ["score", S, "--out", NEW, "--saes", "@"], 2, "--saes @")
case("synth-saes: layer not in store", ["synth-saes", "--store", S, "--layer", "7", "--out", NEW], 2, "layer")
case("probe: layer not in store", ["probe", S, "--layers", "5"], 2, "asks for")

# commands that run and report problems: exit 1, nothing on stderr but at most one line
case("verify: 0-byte shard", ["verify", "{root}/damaged.zarr"], 1, "")
case("verify: incomplete store", ["verify", "{root}/incomplete.zarr"], 1, "")
case("score: a bad SAE file fails alone", ["score", S, "--out", "{root}/new/r1", "--saes",
                                           "{root}/saes/layer_0/width_8/bad", "--local"], 1, "")
case("score: a missing SAE fails alone", ["score", S, "--out", "{root}/new/r2", "--saes", "{root}/no such.npz",
                                          "--local"], 1, "")

# round 2 (issue 24): outputs inside a store, a store's inner folder as the store, counts beyond the store or memory
for out in ("{root}/store.zarr", "{root}/store.zarr/results", "{root}/store.zarr/vocab"):
    case(f"score --out {out.removeprefix('{root}/')}", ["score", S, "--out", out, "--saes", "{root}/saes"], 2,
         "store")
    case(f"report --out {out.removeprefix('{root}/')}", ["report", R, "--out", out], 2, "store")
    case(f"synth-saes --out {out.removeprefix('{root}/')}", ["synth-saes", "--store", S, "--layer", "0", "--out", out],
         2, "store")
case("extract --out inside a store", ["extract", "--out", "{root}/store.zarr/inner.zarr"], 2, "inside the store")
for inner in ("vocab", "vocab/layer_00", "probes"):
    for command in ("info", "verify", "probe"):
        case(f"{command} STORE/{inner}", [command, f"{{root}}/store.zarr/{inner}"], 2, "a folder inside the store")
    case(f"score STORE/{inner}", ["score", f"{{root}}/store.zarr/{inner}", "--out", NEW, "--saes", "{root}/saes"], 2,
         "a folder inside the store")
for command in ("probe", "score", "extract"):
    argv = {"probe": ["probe", S], "score": SAES, "extract": ["extract", "--out", NEW, "--model", "{root}/model"]}[command]
    for spec in ("0-999999999", "5,10000", "99999999999999999999"):
        case(f"{command} --layers {spec}", argv + ["--layers", spec], 2, "beyond any model's blocks")
case("score --layers not in the store", SAES + ["--layers", "5-9"], 2, "holds layers 0-1 only")
for value in ("100000000", "2000000000"):
    case(f"score --bootstrap {value}", SAES + ["--bootstrap", value], 2, "--bootstrap")
case("score --memory-gb beyond the RAM", SAES + ["--memory-gb", "1000000"], 2, "GB of RAM")

assert len(CASES) >= 190, len(CASES)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,argv,code,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, tmp_path, name, argv, code, fragment):
    root = world["root"]
    argv = [a.replace("{root}", str(root)).replace(str(root) + "/new", str(tmp_path / "new")) for a in argv]
    before, locks_before = digest(world["written"]), lock_files(world["written"])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            got = main(argv)
        except SystemExit as exit_:  # argparse
            got = exit_.code
    stdout, stderr = out.getvalue(), err.getvalue()
    assert got == code, f"exit {got}, expected {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stdout + stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code == 2:
        assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
        assert lines[0].startswith("actstore") and fragment in lines[0], lines[0]
    else:
        assert len(lines) <= 1, stderr
    assert digest(world["written"]) == before, "a bad input changed what was already written"
    left = [p for p in lock_files(world["written"]) - locks_before if p.name != ".lock"]  # a results folder's own
    assert not left, f"lock files left inside what was already written: {left}"
    if code == 2:  # bad input writes nothing new either (the lock file of a refused run aside)
        assert not (tmp_path / "new").exists() or not any(
            p for p in (tmp_path / "new").rglob("*") if p.is_file() and not p.name.endswith("lock"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv,fragment", [
    (["score", "STORE", "--out", "OUT", "--saes", "SAES", "--workers", "99"], "one per worker"),
])
def test_bad_input_from_a_fresh_process(world, tmp_path, argv, fragment):
    """The installed entry point (`python -m actstore.cli.main`), stderr captured from a real process."""
    root = world["root"]
    argv = [{"STORE": str(root / "store.zarr"), "OUT": str(tmp_path / "o"), "SAES": str(root / "saes")}.get(a, a)
            for a in argv]
    result = subprocess.run([sys.executable, "-m", "actstore.cli.main", *argv], capture_output=True, text=True, timeout=100)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr
