"""The params.npz reader (actstore/saes/reader.py) against numpy's own np.load, and its failures: a flipped byte
names the damaged array, a non-finite array fails on the device check, each SAE alone."""

import zipfile

import numpy as np
import pytest
import torch

from actstore.saes.loading import load_params_npz
from actstore.saes.reader import read_host_arrays
from actstore.saes.weights import SAEError


def gemma_scope_arrays(d: int, m: int, dtype=np.float32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"W_enc": (d, m), "W_dec": (m, d), "b_enc": (m,), "b_dec": (d,), "threshold": (m,)}
    return {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}


@pytest.mark.parametrize("d, m, dtype", [(7, 13, np.float32), (64, 300, np.float32), (1, 1, np.float32),
                                         (5, 9, np.float16), (3, 4, np.float64)])
def test_the_reader_returns_exactly_what_np_load_does(tmp_path, d, m, dtype):
    path = tmp_path / "params.npz"
    np.savez(path, **gemma_scope_arrays(d, m, dtype))
    host = read_host_arrays(path, "sae", pin=False)
    with np.load(path) as reference:
        for key in reference.files:
            assert host[key].numpy().dtype == reference[key].dtype
            assert np.array_equal(host[key].numpy(), reference[key]), key
        sae = load_params_npz(path, "sae")
        assert sae.w_enc.dtype == torch.float32  # converted after the read, values exact (fp16/fp64 test data fit)
        assert torch.equal(sae.w_enc, torch.from_numpy(reference["W_enc"].astype(np.float32)))
        assert torch.equal(sae.threshold, torch.from_numpy(reference["threshold"].astype(np.float32)))


def test_compressed_members_are_read_through_numpy_with_the_same_result(tmp_path):
    arrays = gemma_scope_arrays(6, 11)
    np.savez_compressed(tmp_path / "params.npz", **arrays)
    assert read_host_arrays(tmp_path / "params.npz", "sae", pin=False) is None  # not taken apart here
    sae = load_params_npz(tmp_path / "params.npz", "sae")
    assert torch.equal(sae.w_dec, torch.from_numpy(arrays["W_dec"]))


def test_big_endian_arrays_load_as_the_little_endian_ones_and_float128_fails_clearly(tmp_path):
    arrays = gemma_scope_arrays(6, 11)
    np.savez(tmp_path / "le.npz", **arrays)
    np.savez(tmp_path / "be.npz", **{k: a.astype(">f4") for k, a in arrays.items()})
    assert read_host_arrays(tmp_path / "be.npz", "sae", pin=False) is None  # numpy reads these
    little, big = load_params_npz(tmp_path / "le.npz", "le"), load_params_npz(tmp_path / "be.npz", "be")
    for field in ("w_enc", "b_enc", "w_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(big, field), getattr(little, field)), field
    if np.dtype(np.longdouble).itemsize > 8:  # x86: 80-bit extended precision stored in 16 bytes
        np.savez(tmp_path / "f128.npz", **{k: a.astype(np.longdouble) for k, a in arrays.items()})
        with pytest.raises(SAEError, match=r"SAE f128: .*'W_enc': 'float128'.*expected floating point: float16, "
                                           r"float32 or float64"):
            load_params_npz(tmp_path / "f128.npz", "f128")


def data_offset(path, member: str) -> int:
    """Where a stored member's .npy bytes begin in the file."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    raw = path.read_bytes()
    name_len, extra_len = np.frombuffer(raw[info.header_offset + 26:info.header_offset + 30], "<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len)


def test_a_flipped_byte_fails_with_the_file_and_the_array_named(tmp_path):
    path = tmp_path / "params.npz"
    np.savez(path, **gemma_scope_arrays(8, 16))
    raw = bytearray(path.read_bytes())
    raw[data_offset(path, "W_dec.npy") + 200] ^= 0x01  # one bit of the array's data, past its .npy header
    path.write_bytes(bytes(raw))
    with pytest.raises(SAEError) as caught:
        load_params_npz(path, "layer_3/sae")
    message = str(caught.value)
    assert message.startswith(f"SAE layer_3/sae: {path} is damaged or truncated (BadZipFile: Bad CRC-32 for file "
                              f"'W_dec.npy')") and "fetch it again" in message


def test_a_flipped_byte_in_a_header_that_reads_as_another_dtype_is_damage_not_a_dtype(tmp_path):
    path = tmp_path / "params.npz"
    np.savez(path, **gemma_scope_arrays(8, 16))
    raw = bytearray(path.read_bytes())
    at = raw.index(b"'<f4'", data_offset(path, "W_enc.npy"))  # the .npy header's descr, inside W_enc.npy
    raw[at + 2] = ord("i")  # '<f4' -> '<i4': a valid header of an integer array, the CRC no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(SAEError, match=r"is damaged or truncated \(BadZipFile: Bad CRC-32 for file 'W_enc.npy'\)"):
        load_params_npz(path, "sae")


def test_a_truncated_member_and_an_integer_array_fail_saying_so(tmp_path):
    path = tmp_path / "params.npz"
    np.savez(path, **gemma_scope_arrays(8, 16))
    raw = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(raw[:data_offset(path, "W_enc.npy") + 100])  # the central directory is gone too
    with pytest.raises(SAEError, match="is damaged or truncated"):
        load_params_npz(cut, "sae")
    arrays = gemma_scope_arrays(8, 16)
    np.savez(path, **{**arrays, "b_dec": arrays["b_dec"].astype(np.int32)})
    with pytest.raises(SAEError, match=r"has arrays of dtype \{'b_dec': 'int32'\}; expected floating point"):
        load_params_npz(path, "sae")


@pytest.mark.parametrize("key, value", [("W_enc", np.nan), ("threshold", np.inf)])
def test_a_non_finite_array_fails_on_the_device_check_naming_it(tmp_path, key, value):
    arrays = gemma_scope_arrays(4, 10)
    arrays[key].flat[3] = value
    np.savez(tmp_path / "params.npz", **arrays)
    with pytest.raises(SAEError) as caught:
        load_params_npz(tmp_path / "params.npz", "sae", device="cpu")
    assert str(caught.value) == \
        f"SAE sae: {tmp_path / 'params.npz'} has NaN or inf in ['{key}']; expected finite weights"


def test_only_members_up_to_the_pin_limit_ask_for_pinned_memory_and_a_refusal_falls_back(tmp_path, monkeypatch):
    """torch's pinned allocator rounds blocks up to a power of two and keeps them: members above PIN_LIMIT are read
    into pageable memory; where pinned memory is refused (no CUDA here), the read goes on in pageable memory."""
    from actstore.saes import reader

    arrays = gemma_scope_arrays(16, 40)  # W_enc and W_dec 2,560 bytes, b_enc and threshold 160, b_dec 64
    np.savez(tmp_path / "params.npz", **arrays)
    asked = []
    empty = torch.empty

    def refusing_empty(*shape, pin_memory=False, **kwargs):
        asked.append((tuple(shape[0]), pin_memory))
        if pin_memory:
            raise RuntimeError("cannot pin: no CUDA")
        return empty(*shape, **kwargs)

    monkeypatch.setattr(reader, "PIN_LIMIT", 200)
    monkeypatch.setattr(reader.torch, "empty", refusing_empty)
    host = read_host_arrays(tmp_path / "params.npz", "sae", pin=True)
    assert sorted(asked) == [((16,), True), ((40,), True), ((40,), True)]  # the two big members never asked
    for key, array in arrays.items():
        assert np.array_equal(host[key].numpy(), array), key
