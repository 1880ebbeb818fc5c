"""Gemma Scope's params.npz read at the disk's speed: each array's bytes straight into one host buffer.

`np.savez` writes a zip whose members (W_enc.npy, ...) are stored, not compressed: an .npy header, then the
array's raw bytes. `read_host_arrays` reads each member's bytes with one `readinto` into a preallocated torch
buffer (pinned when CUDA is available and the member is at most PIN_LIMIT bytes, so the copy to the GPU is
asynchronous; plain otherwise), verifies the member's zip CRC-32 (`zlib.crc32` releases the GIL, so several
readers run in parallel) and takes dtype and shape from the .npy header. Nothing is checked on the host beyond
that: finiteness and the dtype conversion happen on the device (`loading.load_params_npz`). A member that is
compressed, in Fortran order, of another byte order or another float width is read through numpy instead
(`loading.read_npz`); both raise the same errors (`damaged`, `dtype_error`).

    read_host_arrays(path, sae_id, pin) -> {"W_enc": (d, m), "W_dec": (m, d), "b_enc": (m,), ...} host tensors
"""

from __future__ import annotations

import ast
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from actstore.saes.weights import SAEError

GEMMA_SCOPE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
EXPECT = f"expected Gemma Scope's params.npz (a zip of float arrays {', '.join(GEMMA_SCOPE_KEYS)})"
TORCH_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
                np.dtype(np.float64): torch.float64}
"""the dtypes read straight into a torch buffer (native byte order); any other goes through numpy"""
LOCAL_HEADER = struct.Struct("<4s22xHH")
"""a zip member's local header (30 bytes): signature, then after 22 bytes the name and extra-field lengths"""
CHUNK = 64 * 2**20
"""bytes read and checksummed per step"""
PIN_LIMIT = 2**30
"""the largest member read into pinned memory. torch's pinned allocator rounds each block up to a power of two and
keeps it for reuse, so a 1M-latent W_enc (9.7 GB) would lock 16 GB of RAM per reader; larger members go to
pageable memory, whose copy to the GPU the driver stages (slower, but the disk read dominates at those sizes)"""


class NotPlain(Exception):
    """The file is a valid archive this reader does not take apart itself (compressed, Fortran order, ...)."""


def read_host_arrays(path: str | Path, sae_id: str, pin: bool) -> dict[str, torch.Tensor] | None:
    """The five arrays of a params.npz as host tensors (pinned if `pin`), CRC-checked; None when a member is not
    a plain stored .npy of a native float dtype (the caller then reads the file through numpy). SAEError names
    the file and what is wrong: not a zip, missing arrays, pickled objects, a dtype that is not floating point,
    a CRC error or truncation."""
    try:
        with open(path, "rb", buffering=0) as f:
            magic = f.read(6)
            if magic == b"\x93NUMPY":
                raise SAEError(f"SAE {sae_id}: {path} is a single .npy array, not an .npz archive; {EXPECT}")
            if not magic.startswith(b"PK"):
                raise SAEError(f"SAE {sae_id}: {path} is not a zip archive ({len(magic)} first bytes {magic!r}); "
                               f"{EXPECT}")
            members = {info.filename: info for info in zipfile.ZipFile(f).infolist()}
            names = [n[:-4] for n in members if n.endswith(".npy")]
            missing = [k for k in GEMMA_SCOPE_KEYS if f"{k}.npy" not in members]
            if missing:
                raise SAEError(f"SAE {sae_id}: {path} lacks {missing} (it has {names}); {EXPECT}")
            return {k: _member(f, members[f"{k}.npy"], path, sae_id, pin) for k in GEMMA_SCOPE_KEYS}
    except NotPlain:
        return None
    except SAEError:
        raise
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        raise SAEError(f"SAE {sae_id}: cannot open {path}: {err.strerror or err}") from err
    except Exception as err:  # noqa: BLE001 - BadZipFile (truncated, CRC), OSError, a garbled .npy header, ...
        raise damaged(path, sae_id, err) from err


def _member(f, info: zipfile.ZipInfo, path, sae_id: str, pin: bool) -> torch.Tensor:
    """One stored .npy member: header parsed, bytes read into a fresh host buffer, CRC-32 compared."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise NotPlain(info.filename)
    f.seek(info.header_offset)
    signature, name_len, extra_len = LOCAL_HEADER.unpack(_exact(f, LOCAL_HEADER.size, info))
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header of {info.filename}")
    f.seek(name_len + extra_len, 1)
    preamble = _exact(f, 10, info)
    if preamble[:6] != b"\x93NUMPY":
        raise zipfile.BadZipFile(f"{info.filename} is not an .npy array")
    if preamble[6] == 1:
        header_len, = struct.unpack("<H", preamble[8:10])
    else:
        preamble += _exact(f, 2, info)
        header_len, = struct.unpack("<I", preamble[8:12])
    text = _exact(f, header_len, info)
    header = ast.literal_eval(text.decode("latin1"))
    dtype, shape = np.dtype(header["descr"]), tuple(header["shape"])
    crc = zlib.crc32(text, zlib.crc32(preamble))
    if dtype.hasobject or dtype.kind != "f":  # a damaged header reads as another dtype: the CRC tells them apart
        _check_rest(f, info, crc, info.file_size - len(preamble) - header_len)
        if dtype.hasobject:
            raise SAEError(f"SAE {sae_id}: {path} holds pickled Python objects; {EXPECT}")
        raise dtype_error(path, sae_id, {info.filename[:-4]: str(dtype)})
    if header["fortran_order"] or dtype not in TORCH_DTYPES:
        raise NotPlain(info.filename)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(preamble) + header_len + nbytes != info.file_size:
        raise zipfile.BadZipFile(f"{info.filename} holds {info.file_size} bytes; its header says "
                                 f"{len(preamble) + header_len + nbytes}")
    array = _host_buffer(shape, dtype, pin and nbytes <= PIN_LIMIT)
    view = memoryview(array.numpy().reshape(-1).view(np.uint8))
    for start in range(0, nbytes, CHUNK):
        part = view[start:start + CHUNK]
        got = f.readinto(part)
        while got < len(part):  # a raw file may return less than asked for
            more = f.readinto(part[got:])
            if not more:
                raise zipfile.BadZipFile(f"{info.filename} is truncated")
            got += more
        crc = zlib.crc32(part, crc)
    _compare(crc, info)
    return array


def _check_rest(f, info: zipfile.ZipInfo, crc: int, left: int) -> None:
    """The CRC-32 of the member's remaining `left` bytes, read in CHUNK pieces, against the zip's."""
    while left > 0:
        piece = f.read(min(CHUNK, left))
        if not piece:
            raise zipfile.BadZipFile(f"{info.filename} is truncated")
        crc, left = zlib.crc32(piece, crc), left - len(piece)
    _compare(crc, info)


def _compare(crc: int, info: zipfile.ZipInfo) -> None:
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")


def _host_buffer(shape: tuple, dtype: np.dtype, pin: bool) -> torch.Tensor:
    if pin:
        try:
            return torch.empty(shape, dtype=TORCH_DTYPES[dtype], pin_memory=True)
        except RuntimeError:  # no pinned memory to be had: the copy to the device is only slower
            pass
    return torch.from_numpy(np.empty(shape, dtype))  # numpy asks for 2 MB pages: fewer faults than torch's


def _exact(f, n: int, info: zipfile.ZipInfo) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise zipfile.BadZipFile(f"{info.filename} is truncated")
    return data


def damaged(path, sae_id: str, err: Exception) -> SAEError:
    """The error of a file that cannot be read as a zip of .npy arrays (BadZipFile, CRC, truncation, ...)."""
    detail = str(err).splitlines()[0] if str(err) else ""
    return SAEError(f"SAE {sae_id}: {path} is damaged or truncated ({type(err).__name__}: {detail}); {EXPECT}; "
                    f"fetch it again")


def dtype_error(path, sae_id: str, dtypes: dict[str, str]) -> SAEError:
    """The error of arrays whose dtype is not a float torch takes ({name: dtype})."""
    return SAEError(f"SAE {sae_id}: {path} has arrays of dtype {dtypes}; expected floating point: float16, "
                    f"float32 or float64 (Gemma Scope: float32)")
