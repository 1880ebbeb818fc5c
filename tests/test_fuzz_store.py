"""Damaged stores, every command that reads one: a layer's folder grafted over another's, and damaged metadata
(invalid JSON in each zarr.json, an edited shape, dtype or d_model, a flipped byte in a probe, a deleted
probes/zarr.json). Each case builds its damage here, from a copy of one clean store, and asserts the exit code (2
and one stderr line for a command that cannot read the store; 1 with the problem listed for `verify`), that the
line names the file and the real fault, that no traceback shows, and that nothing already written changed.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from actstore.cli.main import main
from actstore.store.zarrstore import ActivationStore, CorruptShardError
from test_fuzz import D, digest, tiny_store, write_sae

METRICS = {split: {k: [0.9] * 26 for k in ("precision", "recall", "f1")} for split in ("train", "test")}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, Path]:
    """A complete store (test_fuzz's tiny one: 300 vocab rows in 3 shards, layers 0 and 1, d_model 16) whose probes
    have full metrics and a bias that is not the fill value (so bias/c/0 is a file), and one SAE of layer 0."""
    root = tmp_path_factory.mktemp("fuzz store")
    tiny_store(root / "clean.zarr")
    with ActivationStore.open(root / "clean.zarr", mode="a") as store:
        for layer in store.layers:
            weight = np.random.default_rng(layer).normal(size=(26, D)).astype(np.float32)
            store.save_probe(layer, weight, np.full(26, 0.5, np.float32), {"metrics": METRICS})
    write_sae(root / "saes" / "layer_0" / "width_8" / "a" / "params.npz")
    return {"store": root / "clean.zarr", "saes": root / "saes"}


@pytest.fixture
def store(clean, tmp_path) -> Path:
    """A fresh copy of the clean store, for one case to damage."""
    shutil.copytree(clean["store"], tmp_path / "s.zarr")
    return tmp_path / "s.zarr"


def run(argv: list[str]) -> tuple[int, str, list[str]]:
    """(exit code, stdout, non-blank stderr lines) of `actstore ARGV` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), [line for line in err.getvalue().splitlines() if line.strip()]


def command(name: str, store: Path, clean: dict[str, Path]) -> list:
    return {"info": ["info", store], "verify": ["verify", store], "probe": ["probe", store, "--epochs", "1"],
            "score": ["score", store, "--out", store.parent / "results", "--saes", clean["saes"], "--local"]}[name]


def refused(store: Path, clean: dict[str, Path], name: str, *fragments: str) -> str:
    """Run a command that cannot read the damaged store: exit 2, one stderr line holding every fragment, the store
    unchanged. Returns the line."""
    before = digest([store])
    code, stdout, lines = run(command(name, store, clean))
    assert code == 2, f"actstore {name}: exit {code}\nstdout: {stdout}\nstderr: {lines}"
    assert len(lines) == 1 and lines[0].startswith(f"actstore {name}: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in: {lines[0]}"
    assert digest([store]) == before, f"actstore {name} changed the damaged store"
    return lines[0]


def listed(store: Path, *fragments: str) -> str:
    """`actstore verify` on the damaged store: exit 1, nothing on stderr, the fragments on one problem line, the
    store unchanged. Returns that line."""
    before = digest([store])
    code, stdout, lines = run(["verify", store])
    assert code == 1, f"verify: exit {code}\nstdout: {stdout}\nstderr: {lines}"
    assert not lines, lines
    hits = [line for line in stdout.splitlines() if all(f in line for f in fragments)]
    assert hits, f"no problem line holds {fragments}:\n{stdout}"
    assert digest([store]) == before, "verify changed the store"
    return hits[0]


def edit_json(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


# ---------------------------------------------------------------------------- the clean store


def test_clean_store_verifies_and_old_markers_read_the_same(clean, store, tmp_path):
    """A good store verifies clean; markers written before the array was recorded are accepted, and the store's
    data and an SAE's scores do not change with them."""
    code, stdout, lines = run(["verify", store])
    assert (code, lines) == (0, []) and "structure as promised" in stdout
    marker = json.loads((store / "vocab" / "layer_00" / "_manifest" / "000001.json").read_text())
    assert marker["array"] == "vocab/layer_00"
    old = tmp_path / "old.zarr"
    shutil.copytree(store, old)
    for path in old.glob("*/*/_manifest/*.json"):  # markers as the previous version wrote them
        edit_json(path, lambda m: m.pop("array"))
    assert run(["verify", old])[0] == 0
    gen = torch.Generator().manual_seed(0)  # tiny_store's data, made again
    expected = {layer: torch.randn(300, D, generator=gen) for layer in (0, 1)}
    with ActivationStore.open(store) as new_store, ActivationStore.open(old) as old_store:
        for layer in (0, 1):
            assert torch.equal(new_store.read("vocab", layer), expected[layer])
            assert torch.equal(old_store.read("vocab", layer), expected[layer])
    summaries = []
    for path in (store, old):
        assert run(command("score", path, clean))[0] == 0
        summaries.append(json.loads(next((path.parent / "results" / "parts").glob("*.json")).read_text())["summary"])
        shutil.rmtree(path.parent / "results")
    assert summaries[0]["status"] == "ok" and summaries[0]["classes_evaluated"] == 26
    numbers = [{k: v for k, v in s.items() if isinstance(v, float)} for s in summaries]
    assert numbers[0] == numbers[1] and len(numbers[0]) > 10


# ---------------------------------------------------------------------------- 1. a layer grafted over another


def test_grafted_layer_folder_is_refused(clean, store):
    """vocab/layer_01 copied whole (zarr.json, shards, markers) over vocab/layer_00."""
    shutil.rmtree(store / "vocab" / "layer_00")
    shutil.copytree(store / "vocab" / "layer_01", store / "vocab" / "layer_00")
    folder = str(store / "vocab" / "layer_00")
    listed(store, "structure", "vocab/layer_00", folder, "holds the shards of vocab/layer_01", "copied over")
    for name in ("score", "probe"):
        refused(store, clean, name, folder, "holds the shards of vocab/layer_01", "copied over", "restore the folder")


def test_grafted_column_folder_is_a_graft_not_edited_metadata(clean, store):
    """vocab/token_id copied whole over vocab/label: its dtype differs too, but the markers say whose shards these
    are, so the message is the graft's (before: "metadata changed, keep the shards", which was wrong)."""
    shutil.rmtree(store / "vocab" / "label")
    shutil.copytree(store / "vocab" / "token_id", store / "vocab" / "label")
    line = refused(store, clean, "score", str(store / "vocab" / "label"), "holds the shards of vocab/token_id",
                   "restore the folder")
    assert "keep them" not in line


def test_only_the_layer_metadata_swapped_keeps_the_shards(clean, store):
    """layer_01's zarr.json copied over layer_00's, shards and markers kept: the metadata is at fault, not the
    shards (their markers record vocab/layer_00)."""
    meta = store / "vocab" / "layer_00" / "zarr.json"
    shutil.copyfile(store / "vocab" / "layer_01" / "zarr.json", meta)
    line = refused(store, clean, "score", str(meta), "says the array holds layer 1", "the metadata file was replaced",
                   "keep them")
    assert "copied from another array" not in line


def test_edited_shard_rows_attribute_is_named_not_called_a_killed_write(clean, store):
    """shard_rows 128 -> 64 in the root zarr.json: every shard would look unfinished, and resuming would rewrite
    intact data; the attribute is named instead."""
    meta = store / "zarr.json"
    edit_json(meta, lambda m: m["attributes"].update(shard_rows=64))
    for name in ("verify", "score", "probe"):
        line = refused(store, clean, name, str(meta), "says shard_rows 64", "shards of 128 rows", "was changed")
        assert "killed" not in line and "--resume" not in line, line


def test_a_probe_folder_copied_from_another_layer_is_refused(clean, store):
    """probes/layer_01 copied over probes/layer_00: the probe records its layer (before: scored with the other
    layer's probe at exit 0)."""
    shutil.rmtree(store / "probes" / "layer_00")
    shutil.copytree(store / "probes" / "layer_01", store / "probes" / "layer_00")
    advice = f"actstore probe {store} --layers 0"
    listed(store, "probes/layer_00", "holds the probe of layer 1", advice)
    refused(store, clean, "score", "probes/layer_00", "holds the probe of layer 1", advice)


def test_grafted_shards_and_markers_are_refused(clean, store):
    """Only layer_01's shard files and _manifest copied over layer_00's; layer_00's zarr.json kept."""
    for part in ("c", "_manifest"):
        shutil.rmtree(store / "vocab" / "layer_00" / part)
        shutil.copytree(store / "vocab" / "layer_01" / part, store / "vocab" / "layer_00" / part)
    folder = str(store / "vocab" / "layer_00")
    listed(store, "structure", "vocab/layer_00", folder, "holds the shards of vocab/layer_01", "copied over")
    for name in ("score", "probe"):
        refused(store, clean, name, folder, "holds the shards of vocab/layer_01", "copied over", "restore the folder")


def test_one_grafted_shard_is_the_only_one_refused(store):
    """Shard 1 of layer_01 (file and marker) copied over layer_00's: the other shards still read."""
    for rel in ("c/1/0", "_manifest/000001.json"):
        shutil.copyfile(store / "vocab" / "layer_01" / rel, store / "vocab" / "layer_00" / rel)
    code, stdout, _ = run(["verify", store])
    assert code == 1 and [line.split(":")[0] for line in stdout.splitlines()] == [
        "corrupt    vocab/layer_00 shard 1 (rows 128-255)"], stdout
    with ActivationStore.open(store) as opened:
        assert opened.read("vocab", 0, 0, 128).shape == (128, D)
        assert opened.read("vocab", 0, 256, 300).shape == (44, D)
        with pytest.raises(CorruptShardError, match="shard 1 .*holds the shard of vocab/layer_01"):
            opened.read("vocab", 0)


def test_layer_attribute_of_another_layer_is_a_structure_problem(clean, store):
    """layer_00's zarr.json edited to say it holds layer 1."""
    edit_json(store / "vocab" / "layer_00" / "zarr.json", lambda m: m["attributes"].update(layer=1))
    listed(store, "structure", "vocab/layer_00", "holds layer 1")
    refused(store, clean, "score", str(store / "vocab" / "layer_00" / "zarr.json"), "holds layer 1")


# ---------------------------------------------------------------------------- 2a. invalid JSON in a zarr.json

# (zarr.json, verify's exit code, the commands that read it and must refuse)
ZARR_JSONS = [
    ("zarr.json", 2, ("info", "score", "probe")),
    ("vocab/zarr.json", 2, ("info", "score", "probe")),
    ("vocab/layer_00/zarr.json", 1, ("score", "probe")),
    ("vocab/label/zarr.json", 1, ("score", "probe")),
    ("vocab/token_id/zarr.json", 1, ("score",)),
    ("probes/zarr.json", 1, ("score",)),
    ("probes/layer_00/zarr.json", 1, ("score",)),
    ("probes/layer_00/weight/zarr.json", 1, ("score",)),
    ("probes/layer_00/bias/zarr.json", 1, ("score",)),
]


@pytest.mark.parametrize("rel,verify_code,readers", ZARR_JSONS, ids=[z[0] for z in ZARR_JSONS])
def test_invalid_json_in_a_zarr_json_names_the_file(clean, store, rel, verify_code, readers):
    meta = store / rel
    meta.write_text('{"zarr_format": 3, "node_type": ')  # cut short: invalid JSON
    fault = f"its metadata file {meta} is damaged"
    if verify_code == 2:
        refused(store, clean, "verify", fault)
    else:
        line = listed(store, fault)
        assert line.startswith("probe" if rel.startswith("probes/") else "structure"), line
    for name in readers:
        line = refused(store, clean, name, fault)
        if rel.startswith("probes/"):  # the probe is named, and how to make it again
            assert f"actstore probe {store}" in line, line
    if rel.startswith("probes/"):  # what the message says to do repairs it
        assert run(["probe", store, "--epochs", "1"])[0] == 0
        assert run(["verify", store])[0] == 0


# ---------------------------------------------------------------------------- 2b. an array's shape or dtype edited


@pytest.mark.parametrize("field,value,said", [("shape", [300, 8], "shape (300, 8)"),
                                              ("data_type", "float16", "dtype float16")])
def test_edited_array_metadata_blames_the_metadata_not_the_shards(clean, store, field, value, said):
    meta = store / "vocab" / "layer_00" / "zarr.json"
    edit_json(meta, lambda m: m.update({field: value}))
    line = listed(store, "structure", "vocab/layer_00", str(meta), said, "was changed")
    for text in [line] + [refused(store, clean, name, str(meta), said, "was changed", "not at fault", "restore")
                          for name in ("score", "probe")]:
        assert "Delete" not in text and "delete" not in text and "c/0/0" not in text, text


# ---------------------------------------------------------------------------- 2c. a flipped byte in a probe


@pytest.mark.parametrize("rel", ["weight/c/0/0", "bias/c/0"])
def test_flipped_byte_in_a_probe_names_the_probe_and_file(clean, store, rel):
    path = store / "probes" / "layer_00" / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the values, not the checksum
    path.write_bytes(bytes(data))
    advice = f"actstore probe {store} --layers 0"
    listed(store, "probes/layer_00", str(path), "crc32c", advice)
    refused(store, clean, "score", "probes/layer_00", str(path), "crc32c", advice)
    assert run(["probe", store, "--layers", "0", "--epochs", "1"])[0] == 0  # what the message says repairs it
    assert run(["verify", store])[0] == 0


@pytest.mark.parametrize("rel", ["weight/c/0/0", "bias/c/0"])
def test_deleted_probe_chunk_is_not_read_as_zeros(clean, store, rel):
    """Zarr reads a deleted chunk file as the fill value (zeros): the probe's recorded sha256 catches it, in
    `score` as in `verify` (before: score used the zeroed probe)."""
    (store / "probes" / "layer_00" / rel).unlink()
    advice = f"actstore probe {store} --layers 0"
    listed(store, "probes/layer_00", "sha256 differs", advice)
    refused(store, clean, "score", "probes/layer_00", "sha256 differs", advice)


def test_probe_metrics_the_scorer_needs_are_checked(clean, store):
    """A probe whose metrics lack the test precision the scorer reports is named (before: an internal error,
    KeyError 'precision')."""
    import zarr

    group = zarr.open_group(store / "probes" / "layer_00", mode="r+")
    group.attrs["metrics"] = {"test": {"f1": [0.9] * 26}}
    advice = f"actstore probe {store} --layers 0"
    refused(store, clean, "score", "probes/layer_00", "has no test precision as 26 numbers", advice)
    listed(store, "probes/layer_00", "has no test precision", advice)


# ---------------------------------------------------------------------------- 2d. probes/zarr.json deleted


def test_deleted_probes_metadata_is_found_on_disk(clean, store):
    meta = store / "probes" / "zarr.json"
    meta.unlink()
    listed(store, "probes", str(meta), "is missing", "layer_00, layer_01", f"actstore probe {store}")
    refused(store, clean, "score", str(meta), "is missing", "probes/layer_00")
    assert run(["probe", store, "--epochs", "1"])[0] == 0
    assert run(["verify", store])[0] == 0


# ---------------------------------------------------------------------------- 2e. root or group attributes edited


@pytest.mark.parametrize("rel,key,value,fault", [
    ("zarr.json", "d_model", 8, "says d_model 8, but every layer array holds rows of 16"),
    ("zarr.json", "dtype", "float16", "says dtype float16, but every layer array holds float32"),
    ("vocab/zarr.json", "rows", 200, "says vocab has 200 rows, but all 7 of its arrays hold 300"),
])
def test_edited_store_attribute_is_named_on_open(clean, store, rel, key, value, fault):
    meta = store / rel
    edit_json(meta, lambda m: m["attributes"].update({key: value}))
    for name in ("info", "verify", "score", "probe"):
        line = refused(store, clean, name, str(meta), fault, "was changed")
        assert "SAE" not in line and "shard" not in line, line


def test_a_damaged_marker_is_named_and_verify_quotes_the_resume(store):
    """A marker that is not JSON counts as never finished (a kill mid-marker looks the same), but verify names the
    file, and quotes the store's resume command for incomplete shards."""
    import zarr

    zarr.open_group(store, mode="r+").attrs["resume_command"] = f"actstore extract --out {store} --resume"
    marker = store / "vocab" / "layer_00" / "_manifest" / "000001.json"
    marker.write_text("{ bad json")
    code, stdout, lines = run(["verify", store])
    assert code == 1 and not lines
    assert f"incomplete vocab/layer_00 shard 1 (rows 128-255): its manifest marker {marker} is not a readable marker" \
        in stdout, stdout
    assert f"resume the write with `actstore extract --out {store.resolve()} --resume`" in stdout.replace("'", ""), stdout


@pytest.mark.parametrize("layers,fault", [
    ([0, 1, 2], "says layers 0-2, but no group has layer 2's array (vocab/layer_02)"),
    ([0], "says layers 0, but every group holds layer 1 too (vocab/layer_01)"),
])
def test_edited_layers_attribute_is_named_not_called_incomplete(clean, store, layers, fault):
    """The root's 'layers' edited: before, [0, 1, 2] read as a killed write ("resume it"), and [0] made verify advise
    retraining the probe of a layer the store had "not got"."""
    meta = store / "zarr.json"
    edit_json(meta, lambda m: m["attributes"].update(layers=layers))
    for name in ("info", "verify", "score", "probe"):
        line = refused(store, clean, name, str(meta), fault, "'layers' attribute was changed", "[0, 1]")
        assert "resume" not in line and "retrain" not in line, line
