"""The store: round trips, layout as Zarr sees it, the manifest, resume, kills, corruption, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import storeworld
from actstore.store import verify
from actstore.store.zarrstore import (ActivationStore, CorruptShardError, IncompleteStoreError, StoreError,
                            StoreSpec)

WORLD = Path(storeworld.__file__)


def tree(path: Path) -> dict[str, bytes]:
    """Every file under a directory, by relative path: the thing 'byte-identical' compares."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16) if x.dtype in (torch.bfloat16, torch.float16) else x.view(torch.int32)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted write every resumed or concurrent write must reproduce byte for byte."""
    path = tmp_path_factory.mktemp("ref") / "store.zarr"
    storeworld.build(path).close()
    return path


# ---------------------------------------------------------------------------- round trips and layout


def test_bfloat16_round_trip_is_bit_exact_for_every_bit_pattern(tmp_path):
    store = ActivationStore.create(tmp_path / "s.zarr", StoreSpec(model="m", d_model=256, layers=[2],
                                                                  shard_rows=256, chunk_rows=64))
    store.add_group("vocab", rows=256)
    every_pattern = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    acts = every_pattern.reshape(256, 256)  # all 65536 bf16 bit patterns, NaN payloads included
    store.write("vocab", 0, {2: acts})
    back = ActivationStore.open(tmp_path / "s.zarr", require_complete=False).read("vocab", 2)
    assert back.dtype == torch.bfloat16 and back.shape == (256, 256)
    assert torch.equal(bits(back), bits(acts))


@pytest.mark.parametrize("dtype,torch_dtype,zarr_dtype", [
    ("bfloat16", torch.bfloat16, "uint16"), ("float16", torch.float16, "float16"),
    ("float32", torch.float32, "float32")])
def test_each_dtype_round_trips_and_zarr_sees_its_storage_dtype(tmp_path, dtype, torch_dtype, zarr_dtype):
    path = tmp_path / "s.zarr"
    store = ActivationStore.create(path, StoreSpec(model="m", d_model=48, layers=[0, 1], dtype=dtype,
                                                   shard_rows=128, chunk_rows=32))
    store.add_group("context", rows=300)
    acts = {l: torch.randn(300, 48).to(torch_dtype) for l in (0, 1)}
    cols = {"token_id": np.arange(300), "doc": np.arange(300) // 50, "pos": np.arange(300) % 50,
            "label": np.where(np.arange(300) % 3, np.arange(300) % 26, -1)}
    store.write("context", 0, {**acts, **cols})
    store = ActivationStore.open(path)
    for layer, x in acts.items():
        assert torch.equal(bits(store.read("context", layer)), bits(x))
        assert torch.equal(bits(store.read("context", layer, 100, 229)), bits(x[100:229]))
    for name, values in cols.items():
        np.testing.assert_array_equal(store.column("context", name), values)
    # The same bits through plain zarr, as a reader without actstore would see them.
    raw = zarr.open_array(path / "context" / "layer_01", mode="r")
    assert str(raw.dtype) == zarr_dtype and raw.attrs["logical_dtype"] == dtype
    assert raw.shards == (128, 48) and raw.chunks == (32, 48)
    if dtype == "bfloat16":
        np.testing.assert_array_equal(raw[:], acts[1].view(torch.int16).numpy().view(np.uint16))


def test_vocab_columns_and_text_round_trip(tmp_path, reference):
    store = ActivationStore.open(reference)
    lo, hi = store.shard_rows("vocab", 11)
    assert (lo, hi) == (11 * 1024, storeworld.ROWS)
    for name in ("token_id", "label", "split", "position", "text"):
        np.testing.assert_array_equal(store.column("vocab", name, lo, hi),
                                      storeworld.shard_values("vocab", name, lo, hi))
    assert store.column("vocab", "label").dtype == np.int8
    assert store.column("vocab", "token_id").dtype == np.int32


def test_store_attributes_and_one_file_per_shard(reference):
    attrs = json.loads((reference / "zarr.json").read_text())["attributes"]
    assert attrs["format_version"] == 1 and attrs["model"] == "world/tiny" and attrs["layers"] == [0, 3, 7]
    assert attrs["d_model"] == 1024 and attrs["hook"] == "resid_post" and attrs["dtype"] == "bfloat16"
    assert attrs["prompt_template"] == "{word} has the first letter:"
    shard_files = sorted(p.name for p in (reference / "vocab" / "layer_03" / "c").iterdir())
    assert shard_files == sorted(str(k) for k in range(12))  # ceil(11564 / 1024) shards, one file each
    meta = json.loads((reference / "vocab" / "layer_03" / "zarr.json").read_text())
    sharding = meta["codecs"][0]
    assert sharding["name"] == "sharding_indexed"
    assert [c["name"] for c in sharding["configuration"]["codecs"]] == ["bytes", "crc32c"]
    assert [c["name"] for c in sharding["configuration"]["index_codecs"]] == ["bytes", "crc32c"]


def test_zstd_codec_round_trips_and_is_smaller_on_low_entropy_data(tmp_path):
    sizes = {}
    acts = (torch.randn(512, 64) * 0.01).to(torch.bfloat16)  # narrow exponents: compressible bytes
    for codec in ("none", "zstd"):
        path = tmp_path / f"{codec}.zarr"
        store = ActivationStore.create(path, StoreSpec(model="m", d_model=64, layers=[0], codec=codec,
                                                       shard_rows=256, chunk_rows=128))
        store.add_group("vocab", rows=512, columns={})
        store.write("vocab", 0, {0: acts})
        assert torch.equal(bits(ActivationStore.open(path).read("vocab", 0)), bits(acts))
        sizes[codec] = sum(len(b) for n, b in tree(path / "vocab" / "layer_00").items() if "/c/" in f"/{n}")
    assert sizes["zstd"] < 0.9 * sizes["none"]


def test_blocks_stream_a_layer_with_prefetch(reference):
    store = ActivationStore.open(reference)
    whole = store.read("vocab", 7)
    blocks = list(store.blocks("vocab", 7, block_rows=3000, prefetch=2))
    assert [(b.start, b.stop) for b in blocks] == [(0, 3000), (3000, 6000), (6000, 9000), (9000, 11564)]
    assert torch.equal(bits(torch.cat([b.acts for b in blocks])), bits(whole))
    stream = store.blocks("vocab", 7, block_rows=1000)
    assert next(stream).stop == 1000
    stream.close()  # stopping early joins the prefetch thread instead of hanging


def test_blocks_raise_a_corrupt_shard_in_the_consumer(tmp_path, reference):
    path = tmp_path / "s.zarr"
    storeworld.build(path).close()
    _flip_byte(path / "vocab" / "layer_00" / "c" / "2" / "0", offset=1000)
    with pytest.raises(CorruptShardError, match="shard 2"):
        for _ in ActivationStore.open(path).blocks("vocab", 0, block_rows=1024):
            pass


def test_append_grows_a_group_through_its_partial_last_shard(tmp_path):
    path = tmp_path / "s.zarr"
    store = ActivationStore.create(path, StoreSpec(model="m", d_model=32, layers=[1], shard_rows=100, chunk_rows=50))
    store.add_group("g", rows=0, columns={"token_id": "int32"})
    parts = [torch.randn(n, 32).to(torch.bfloat16) for n in (130, 70, 5)]
    for i, x in enumerate(parts):
        store.append("g", {1: x, "token_id": np.arange(len(x)) + 1000 * i})
    store = ActivationStore.open(path)
    assert store.groups == {"g": 205}
    assert torch.equal(bits(store.read("g", 1)), bits(torch.cat(parts)))
    np.testing.assert_array_equal(store.column("g", "token_id")[125:135], [125, 126, 127, 128, 129, 1000, 1001,
                                                                           1002, 1003, 1004])


def test_append_killed_after_growing_leaves_the_last_shard_incomplete(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    store = ActivationStore.create(path, StoreSpec(model="m", d_model=8, layers=[0], shard_rows=10, chunk_rows=5))
    store.add_group("g", rows=0, columns={})
    store.append("g", {0: torch.ones(15, 8, dtype=torch.bfloat16)})
    monkeypatch.setattr(store, "_write_prepared", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        store.append("g", {0: torch.ones(10, 8, dtype=torch.bfloat16)})
    assert store.missing() == {"g/layer_00": [1, 2]}  # shard 1 grew from rows 10-14 to 10-19; 2 is new


# ---------------------------------------------------------------------------- manifest and resume


def test_incomplete_store_refuses_reading_and_says_how_to_resume(tmp_path):
    path = tmp_path / "s.zarr"
    storeworld.build(path, shards=[0, 1, 2, 5]).close()
    with pytest.raises(IncompleteStoreError) as err:
        ActivationStore.open(path)
    message = str(err.value)
    assert "3-4, 6-11" in message and "vocab/layer_00" in message
    assert "python tests/storeworld.py S resume" in message  # the store's own resume command
    store = ActivationStore.open(path, require_complete=False)
    assert store.missing()["vocab/text"] == [3, 4, 6, 7, 8, 9, 10, 11]
    assert torch.equal(bits(store.read("vocab", 3, 0, 3072)),
                       bits(torch.cat([storeworld.shard_values("vocab", "layer_03", k * 1024, (k + 1) * 1024)
                                       for k in range(3)])))
    with pytest.raises(IncompleteStoreError, match="shards 3"):
        store.read("vocab", 3, 0, 4000)


def test_resume_rewrites_only_missing_shards_and_matches_an_uninterrupted_write(tmp_path, reference):
    path = tmp_path / "s.zarr"
    storeworld.build(path, shards=[0, 1, 2, 5]).close()
    # A shard complete in one array and not in another: only that array's shard may be rewritten.
    (path / "vocab" / "label" / "_manifest" / "000001.json").unlink()
    shard_files = [p for p in path.rglob("*") if p.is_file() and "c" in p.relative_to(path).parts]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shard_files}
    time.sleep(0.01)
    store = ActivationStore.open(path, mode="a")
    storeworld.write_shards(store, "vocab", [1, 3, 4, 6, 7, 8, 9, 10, 11], only_missing=True)
    untouched = [p for p in before if not (p.parts[-3:] == ("label", "c", "1"))]
    for p in untouched:
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == before[p], f"{p} was rewritten"
    label_1 = path / "vocab" / "label" / "c" / "1"
    assert (label_1.stat().st_ino, label_1.stat().st_mtime_ns) != before[label_1]
    assert tree(path) == tree(reference)


def _run_world(path: Path, action: str, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORLD), str(path), action, *extra],
                            stdout=subprocess.PIPE, text=True, **popen)


@pytest.mark.parametrize("die_at", ["file:45", "file:75", "marker:17", "marker-half:40", "after:3"])
def test_sigkill_mid_write_then_resume_is_byte_identical(tmp_path, reference, die_at):
    """SIGKILL at exact worst moments (mid-file, between data and marker, mid-marker), and from outside
    while the writer runs (right after it reports its third shard of twelve)."""
    path = tmp_path / "s.zarr"
    if die_at.startswith("after"):
        writer = _run_world(path, "create")
        assert writer.stdout.readline().strip() == "created"
        for _ in range(int(die_at.split(":")[1])):
            assert writer.stdout.readline().startswith("done")
        writer.send_signal(signal.SIGKILL)
    else:
        writer = _run_world(path, "create", "--die-at", die_at)
    writer.communicate(timeout=120)
    assert writer.returncode == -signal.SIGKILL
    with pytest.raises(IncompleteStoreError):
        ActivationStore.open(path)
    killed = ActivationStore.open(path, require_complete=False)
    assert killed.missing()
    if die_at.startswith("file"):
        assert list(path.rglob("*.partial")), "the kill should have left a torn temp file"
    if die_at.startswith("marker:"):  # the killed shard's bytes are there, unmarked
        assert any(killed.shard_file("vocab", a.split("/")[1], k).exists()
                   for a, shards in killed.missing().items() for k in shards)
    storeworld.resume(path)  # in this process: a second start of Python, torch and zarr was half of each case
    assert tree(path) == tree(reference)


def test_torn_files_left_by_a_kill_are_cleaned_by_resume(tmp_path, reference):
    path = tmp_path / "s.zarr"
    storeworld.build(path).close()
    shard = path / "vocab" / "layer_07" / "c" / "4" / "0"
    # What a kill leaves: a truncated file with its marker gone, Zarr's temp file, a half-written marker.
    shard.write_bytes(shard.read_bytes()[:5000])
    (path / "vocab" / "layer_07" / "_manifest" / "000004.json").unlink()
    (shard.parent / "0.5f0c2b.partial").write_bytes(b"\0" * 100)
    marker = path / "vocab" / "text" / "_manifest" / "000009.json"
    marker.write_text(marker.read_text()[:-3])
    store = ActivationStore.open(path, mode="a")
    assert store.missing() == {"vocab/layer_07": [4], "vocab/text": [9]}
    storeworld.write_shards(store, "vocab", [4, 9], only_missing=True)
    assert tree(path) == tree(reference)


def test_two_writer_processes_on_disjoint_shards_lose_nothing(tmp_path, reference):
    path = tmp_path / "s.zarr"
    store = ActivationStore.create(path, storeworld.spec())
    store.add_group("vocab", rows=storeworld.ROWS)
    flag = tmp_path / "go"
    evens, odds = ",".join(map(str, range(0, 12, 2))), ",".join(map(str, range(1, 12, 2)))
    writers = [_run_world(path, "write", "--shards", s, "--start-flag", str(flag)) for s in (evens, odds)]
    time.sleep(1.0)  # both are waiting on the flag: start them together, interleaved shard by shard
    flag.touch()
    for w in writers:
        out, _ = w.communicate(timeout=120)
        assert w.returncode == 0 and out.count("done") == 6
    assert ActivationStore.open(path).complete
    assert tree(path) == tree(reference)


# ---------------------------------------------------------------------------- corruption


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["chunk data", "shard index", "truncated", "deleted"])
def test_corrupted_shard_is_reported_by_array_and_shard(tmp_path, where):
    path = tmp_path / "s.zarr"
    storeworld.build(path).close()
    shard = path / "vocab" / "layer_03" / "c" / "6" / "0"
    if where == "chunk data":
        _flip_byte(shard, offset=300_000)  # inside the second chunk of the shard
    elif where == "shard index":
        _flip_byte(shard, offset=shard.stat().st_size - 10)
    elif where == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
    else:
        shard.unlink()
    store = ActivationStore.open(path)
    problems = verify.verify(store)
    assert [(p.array, p.shard, p.kind) for p in problems] == [
        ("vocab/layer_03", 6, "missing" if where == "deleted" else "corrupt")]
    if where != "deleted":
        with pytest.raises(CorruptShardError) as err:
            store.read("vocab", 3, 5000, 7000)
        assert (err.value.array, err.value.shard) == ("vocab/layer_03", 6)
        assert "rows 6144-7167" in str(err.value)
    assert torch.equal(bits(store.read("vocab", 3, 0, 6144)),  # the other shards still read
                       bits(torch.cat([storeworld.shard_values("vocab", "layer_03", k * 1024, (k + 1) * 1024)
                                       for k in range(6)])))


def test_verify_of_an_intact_store_finds_nothing(reference):
    assert verify.verify(ActivationStore.open(reference)) == []


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def small(tmp_path) -> ActivationStore:
    store = ActivationStore.create(tmp_path / "s.zarr", StoreSpec(model="m", d_model=16, layers=[0, 5],
                                                                  shard_rows=32, chunk_rows=16))
    store.add_group("vocab", rows=100)
    return store


@pytest.mark.parametrize("data,error,match", [
    ({0: torch.zeros(32, 16)}, TypeError, r"holds bfloat16; got torch.float32.*\.to\(torch.bfloat16\)"),
    ({0: np.zeros((32, 16), np.float32)}, TypeError, "numpy cannot represent"),
    ({0: torch.zeros(32, 8, dtype=torch.bfloat16)}, ValueError, r"expects shape \(rows, 16\); got \(32, 8\)"),
    ({0: torch.zeros(32, dtype=torch.bfloat16)}, ValueError, r"expects shape \(rows, 16\)"),
    ({12: torch.zeros(32, 16, dtype=torch.bfloat16)}, KeyError, r"has layers 0, 5; layer 12 was not extracted"),
    ({"lable": np.zeros(32)}, KeyError, "no array 'lable'"),
    ({"label": np.full(32, 300)}, ValueError, r"int8 \(-128..127\); got values in 300..300"),
    ({"label": np.zeros(32, np.float32)}, TypeError, "integers expected"),
    ({0: torch.zeros(16, 16, dtype=torch.bfloat16)}, ValueError, "shard-aligned"),
    ({0: torch.zeros(64, 16, dtype=torch.bfloat16), "label": np.zeros(32, int)}, ValueError, "same number of rows"),
])
def test_bad_writes_are_refused_with_a_clear_error(small, data, error, match):
    with pytest.raises(error, match=match):
        small.write("vocab", 0, data)
    assert small.missing("vocab")["vocab/layer_00"] == [0, 1, 2, 3]  # nothing was marked


def test_misaligned_start_and_range_are_refused(small):
    x = torch.zeros(32, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="shard-aligned"):
        small.write("vocab", 16, {0: x})
    with pytest.raises(ValueError, match="outside"):
        small.write("vocab", 96, {0: x})
    small.write("vocab", 96, {0: x[:4]})  # the last, partial shard ends at the group's last row
    assert 3 not in small.missing("vocab")["vocab/layer_00"]


def test_reading_a_layer_that_is_not_there_names_the_layers(small):
    with pytest.raises(KeyError, match="has layers 0, 5; layer 12 was not extracted"):
        small.read("vocab", 12)
    with pytest.raises(KeyError, match="no row group 'context'"):
        small.read("context", 0)
    with pytest.raises(IndexError, match="outside"):
        small.read("vocab", 0, 50, 200)


@pytest.mark.parametrize("make,match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "has no zarr.json"),
    (lambda p: zarr.create_array(p, shape=(2,), dtype="int8"), "not an actstore store"),
    (lambda p: zarr.open_group(p, mode="w"), "no 'format_version'"),
    (lambda p: zarr.open_group(p, mode="w").attrs.update(format_version=99), "format 99.*upgrade"),
])
def test_a_path_that_is_not_a_store_is_refused(tmp_path, make, match):
    path = tmp_path / "x.zarr"
    make(path)
    with pytest.raises(StoreError, match=match):
        ActivationStore.open(path)


@pytest.mark.parametrize("overrides,match", [
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(codec="lz5"), "codec must be one of"),
    (dict(layers=[]), "non-empty"),
    (dict(layers=[3, 3]), "must not repeat"),
    (dict(shard_rows=1000, chunk_rows=300), "divide shard_rows"),
])
def test_bad_specs_are_refused(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        ActivationStore.create(tmp_path / "s.zarr", storeworld.spec(**overrides))


def test_create_refuses_to_overwrite_and_reading_store_refuses_writes(tmp_path, reference):
    with pytest.raises(StoreError, match="already exists"):
        ActivationStore.create(reference, storeworld.spec())
    with pytest.raises(StoreError, match="opened for reading"):
        ActivationStore.open(reference).write("vocab", 0, {0: torch.zeros(1024, 1024, dtype=torch.bfloat16)})


# ---------------------------------------------------------------------------- direct shard reads


def test_direct_reads_match_zarr_bit_for_bit_on_any_row_range(reference):
    store = ActivationStore.open(reference)
    assert store._direct_io("vocab", "layer_03") == (256, 1024)  # the shardio path is taken
    raw = zarr.open_array(reference / "vocab" / "layer_03", mode="r")
    rng = np.random.default_rng(0)
    ranges = [(0, storeworld.ROWS), (0, 1), (255, 257), (1000, 3100), (11264, 11564), (11563, 11564)]
    ranges += [tuple(sorted(rng.integers(0, storeworld.ROWS + 1, 2))) for _ in range(20)]
    for lo, hi in ranges:
        np.testing.assert_array_equal(store.read("vocab", 3, lo, hi).view(torch.int16).numpy().view(np.uint16),
                                      raw[lo:hi], err_msg=f"rows {lo}-{hi}")


def test_direct_reads_return_fill_for_chunks_zarr_left_out(tmp_path):
    path = tmp_path / "s.zarr"
    store = ActivationStore.create(path, StoreSpec(model="m", d_model=64, layers=[0], shard_rows=256, chunk_rows=32))
    store.add_group("vocab", rows=600, columns={})
    acts = torch.randn(600, 64).to(torch.bfloat16)
    acts[32:64] = 0  # an all-zero chunk: Zarr writes no bytes for it (index entry "empty")
    acts[256:512] = 0  # an all-zero shard: no file at all
    store.write("vocab", 0, {0: acts})
    assert not store.shard_file("vocab", "layer_00", 1).exists()
    store = ActivationStore.open(path)
    assert store._direct_io("vocab", "layer_00") is not None
    assert torch.equal(bits(store.read("vocab", 0)), bits(acts))
    assert verify.verify(store) == []
    store.shard_file("vocab", "layer_00", 2).unlink()  # a shard that had a file and lost it
    with pytest.raises(CorruptShardError, match="shard 2 .*missing"):
        store.read("vocab", 0, 500, 600)


def test_compressed_stores_read_through_zarr(tmp_path):
    path = tmp_path / "s.zarr"
    storeworld.build(path, codec="zstd").close()
    store = ActivationStore.open(path)
    assert store._direct_io("vocab", "layer_00") is None
    assert torch.equal(bits(store.read("vocab", 0, 1000, 2100)),
                       bits(torch.cat([storeworld.shard_values("vocab", "layer_00", 0, 1024)[1000:],
                                       storeworld.shard_values("vocab", "layer_00", 1024, 2048),
                                       storeworld.shard_values("vocab", "layer_00", 2048, 3072)[:52]])))


@pytest.mark.parametrize("case", ["full", "last shard", "zero chunk", "zero shard", "negative zeros"])
def test_direct_writes_are_byte_identical_to_zarrs_own(tmp_path, case):
    """The shard files `shardio.write_shard` makes are the files Zarr makes from the same rows."""
    rows, shard = (700, 1) if case == "last shard" else (1024, 0)
    acts = storeworld.shard_values("vocab", "layer_00", 0, 1024, d_model=96)
    if case == "zero chunk":
        acts[256:512] = 0
    if case == "zero shard":
        acts[:] = 0
    if case == "negative zeros":  # -0.0 is not the fill value: Zarr compares bits, and so must we
        acts[:] = -0.0
    ours = ActivationStore.create(tmp_path / "ours.zarr", StoreSpec(model="m", d_model=96, layers=[0],
                                                                    shard_rows=512, chunk_rows=128))
    ours.add_group("vocab", rows=rows, columns={})
    assert ours._direct_io("vocab", "layer_00") == (128, 96)
    ours.write("vocab", 0, {0: acts[:rows]})
    theirs = zarr.open_array(tmp_path / "ours.zarr" / "vocab" / "layer_00", mode="r")
    zarr_copy = zarr.create_array(tmp_path / "theirs.zarr", shape=theirs.shape, chunks=theirs.chunks,
                                  shards=theirs.shards, dtype=theirs.dtype, compressors=theirs.compressors,
                                  fill_value=0)
    zarr_copy[:] = acts[:rows].view(torch.int16).numpy().view(np.uint16)
    for k in range(-(-rows // 512)):
        mine, zarrs = (tmp_path / "ours.zarr" / "vocab" / "layer_00" / "c" / str(k) / "0",
                       tmp_path / "theirs.zarr" / "c" / str(k) / "0")
        assert mine.exists() == zarrs.exists() == (case != "zero shard")
        if zarrs.exists():
            assert mine.read_bytes() == zarrs.read_bytes(), f"shard {k} differs from Zarr's encoding"
    np.testing.assert_array_equal(theirs[:], zarr_copy[:])


def test_overwrite_starts_from_nothing(tmp_path):
    path = tmp_path / "s.zarr"
    storeworld.build(path, shards=[0, 1]).close()
    store = ActivationStore.create(path, storeworld.spec(layers=[1]), overwrite=True)
    assert store.groups == {} and store.layers == [1]
    assert not list(path.rglob("_manifest")) and not (path / "vocab").exists()
