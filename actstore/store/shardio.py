"""Direct shard I/O for uncompressed activations: one `preadv` into the caller's memory, Zarr's bytes out.

Zarr's `sharding_indexed` codec, with chunk codecs `[bytes (little endian), crc32c]` and the index at
the end (what the store writes when codec="none"), lays a shard file out as

    chunk bytes + crc32c(chunk) (4 bytes, little endian)     ... one per inner chunk, in any order
    index: n_chunks x (offset uint64, nbytes uint64), little endian, then crc32c(index)

with offset = nbytes = 2**64 - 1 for a chunk that was never written (it reads as the fill value).
Reading through Zarr costs a copy of the file into a buffer, a copy of each chunk into the output and an
asyncio round trip per chunk; here the kernel copies each chunk straight into its rows of the output
(and its checksum into a 4-byte slot) with one system call per run of contiguous chunks, and the crc32c
is checked in place. Tests check this reader against Zarr's on the same files, bit for bit, and on
damaged files. Anything this reader does not expect (another codec chain, a chunk of the wrong size)
raises ShardFormatError, and the store falls back to Zarr.

Writing is the mirror image: `write_shard` produces the file Zarr would write, byte for byte, from the
caller's array without Zarr's intermediate copies.
"""

from __future__ import annotations

import os
import sys
import uuid

import google_crc32c
import numpy as np

EMPTY = 2 ** 64 - 1


class ShardFormatError(ValueError):
    """The shard file is damaged or not laid out as this reader expects."""


def direct_io_chunk_shape(array_metadata: dict) -> tuple[int, ...] | None:
    """The inner chunk shape if an array's codecs are exactly what `read_rows` handles, else None."""
    codecs = array_metadata.get("codecs", [])
    if sys.byteorder != "little" or len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    config = codecs[0]["configuration"]
    plain = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
    if [_strip(c) for c in config["codecs"]] != plain or [_strip(c) for c in config["index_codecs"]] != plain:
        return None
    if config.get("index_location", "end") != "end":
        return None
    return tuple(config["chunk_shape"])


def _strip(codec: dict) -> dict:
    return {k: v for k, v in codec.items() if k != "configuration" or v}


def read_rows(path: str, out: np.ndarray, lo: int, hi: int, chunk_rows: int, chunks_per_shard: int,
              fill: int = 0, expected: list | None = None) -> None:
    """Read rows [lo, hi) of one shard (shard-local row numbers) into `out` (hi - lo, width), C-contiguous.

    `expected`: the crc32c of each chunk as written (None for an empty chunk), from the shard's manifest
    marker; a file whose chunks are intact but hold other data (a shard file in the wrong place) fails too.
    Raises FileNotFoundError if the shard file does not exist and ShardFormatError if it is damaged
    (a checksum mismatch, a truncated file, an index that does not fit, other data than recorded).
    """
    if not out.flags.c_contiguous or out.shape[0] != hi - lo:
        raise ValueError(f"out must be C-contiguous with {hi - lo} rows; got {out.shape}")
    row_bytes = out.strides[0]
    chunk_bytes = chunk_rows * row_bytes
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        index = _read_index(fd, size, chunks_per_shard)
        runs: list[tuple[int, list]] = []  # (file offset, buffers) per run of contiguous chunks
        run_end = -1  # file offset just past the last run
        checks: list[tuple[np.ndarray, np.ndarray, int]] = []  # (chunk bytes, stored crc, chunk index)
        bounce: list[tuple[np.ndarray, int, int, int]] = []  # partial chunks: (buffer, src row, dst row, rows)
        flat = out.reshape(-1).view(np.uint8)
        for c in range(lo // chunk_rows, -(-hi // chunk_rows)):
            offset, nbytes = int(index[c, 0]), int(index[c, 1])
            c_lo, c_hi = c * chunk_rows, (c + 1) * chunk_rows
            a, b = max(c_lo, lo), min(c_hi, hi)
            if offset == EMPTY and nbytes == EMPTY:
                out[a - lo:b - lo] = fill
                continue
            if nbytes != chunk_bytes + 4 or offset + nbytes > size - (16 * chunks_per_shard + 4):
                raise ShardFormatError(f"chunk {c} has {nbytes} bytes at offset {offset}; expected "
                                       f"{chunk_bytes + 4} inside a {size}-byte file")
            if a == c_lo and b == c_hi:  # the whole chunk lands in place
                target = flat[(a - lo) * row_bytes:(b - lo) * row_bytes]
            else:  # a chunk cut by the range: read it whole (its crc covers all of it), copy the rows
                target = np.empty(chunk_bytes, dtype=np.uint8)
                bounce.append((target, a - c_lo, a - lo, b - a))
            crc = np.empty(4, dtype=np.uint8)
            checks.append((target, crc, c))
            if offset == run_end:
                runs[-1][1].extend([target, crc])
            else:
                runs.append((offset, [target, crc]))
            run_end = offset + nbytes
        if expected is not None:
            written = [c for c in range(lo // chunk_rows, -(-hi // chunk_rows))
                       if (int(index[c, 0]), int(index[c, 1])) != (EMPTY, EMPTY)]
            if [c for c in range(lo // chunk_rows, -(-hi // chunk_rows)) if expected[c] is not None] != written:
                raise ShardFormatError(f"the file's written chunks {written} are not the ones its manifest marker "
                                       f"records: it holds another shard's data")
        for offset, buffers in runs:
            for start in range(0, len(buffers), 512):  # stay under IOV_MAX (1024)
                part = buffers[start:start + 512]
                want = sum(len(buf) for buf in part)
                got = os.preadv(fd, part, offset)
                if got != want:
                    raise ShardFormatError(f"short read: {got} of {want} bytes at offset {offset}")
                offset += want
        for target, crc, c in checks:
            stored = int.from_bytes(crc.tobytes(), "little")
            if google_crc32c.value(target) != stored:
                raise ShardFormatError(f"chunk {c}: stored and computed crc32c do not match")
            if expected is not None and expected[c] != stored:
                raise ShardFormatError(f"chunk {c} is intact but holds other data than the shard its manifest "
                                       f"marker records (crc32c {stored:08x}, recorded {expected[c]:08x}): "
                                       f"a shard file in the wrong place")
        for buffer, src, dst, rows in bounce:
            flat.reshape(-1, row_bytes)[dst:dst + rows] = buffer.reshape(chunk_rows, row_bytes)[src:src + rows]
    finally:
        os.close(fd)


def _read_index(fd: int, size: int, chunks_per_shard: int) -> np.ndarray:
    index_bytes = 16 * chunks_per_shard + 4
    if size < index_bytes:
        raise ShardFormatError(f"file of {size} bytes is shorter than its {index_bytes}-byte index")
    raw = os.pread(fd, index_bytes, size - index_bytes)
    if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
        raise ShardFormatError("shard index: stored and computed crc32c do not match")
    return np.frombuffer(raw[:-4], dtype="<u8").reshape(chunks_per_shard, 2)


def write_shard(path: str, values: np.ndarray, chunk_rows: int, chunks_per_shard: int) -> dict | None:
    """Write one shard file exactly as Zarr's sharding codec would, straight from `values`.

    `values` (rows, width) C-contiguous, rows <= chunk_rows * chunks_per_shard (fewer for the last
    shard of an array). The bytes are Zarr's, byte for byte (tests compare): chunks in C order, each
    followed by its crc32c; a chunk whose bytes are all zero (the fill value) is left out with an empty
    index entry, as Zarr does with write_empty_chunks=False; the index and its crc32c at the end. The
    file is written to `<path>.<hex>.partial` and renamed, as Zarr does. A shard with nothing but zeros
    gets no file. Returns the shard's identity for its manifest marker, `{"crc32c": crc32c of the whole
    file, "chunks": crc32c of each chunk, None where empty}`, or None when no file was written.
    """
    rows, row_bytes = values.shape[0], values.strides[0]
    if not values.flags.c_contiguous or rows > chunk_rows * chunks_per_shard:
        raise ValueError(f"values must be C-contiguous with at most {chunk_rows * chunks_per_shard} rows; "
                         f"got {values.shape}")
    flat = values.reshape(-1).view(np.uint8)
    index = np.full((chunks_per_shard, 2), EMPTY, dtype="<u8")
    buffers: list = []
    crcs: list[int | None] = [None] * chunks_per_shard
    offset = 0
    for c in range(-(-rows // chunk_rows)):
        chunk = flat[c * chunk_rows * row_bytes:min((c + 1) * chunk_rows, rows) * row_bytes]
        if not chunk.any():
            continue
        if len(chunk) < chunk_rows * row_bytes:  # the array's last chunk: Zarr pads it with the fill value
            padded = np.zeros(chunk_rows * row_bytes, dtype=np.uint8)
            padded[:len(chunk)] = chunk
            chunk = padded
        crcs[c] = google_crc32c.value(chunk)
        buffers += [chunk, crcs[c].to_bytes(4, "little")]
        index[c] = (offset, len(chunk) + 4)
        offset += len(chunk) + 4
    if not buffers:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return None
    index_bytes = index.tobytes()
    buffers += [index_bytes, google_crc32c.value(index_bytes).to_bytes(4, "little")]
    _write_file(path, buffers)
    whole = 0
    for buffer in buffers[:-1]:  # all but the index's own crc32c: see file_crc32c
        whole = google_crc32c.extend(whole, buffer)
    return {"crc32c": whole, "chunks": crcs}


def file_crc32c(path: str) -> int:
    """crc32c of a file without its last 4 bytes, read in 16 MiB pieces. Zarr's files end with the crc32c
    of what precedes it, and the crc32c of anything followed by its own crc32c is one constant (the CRC
    residue): over the whole file it would say nothing about the content."""
    size, crc, done = os.path.getsize(path), 0, 0
    with open(path, "rb") as f:
        while done < size - 4 and (piece := f.read(min(1 << 24, size - 4 - done))):
            crc = google_crc32c.extend(crc, piece)
            done += len(piece)
    return crc


def _write_file(path: str, buffers: list) -> None:
    """Write buffers to a temp file beside `path`, then rename it over `path` (Zarr's LocalStore does the same)."""
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            for buffer in buffers:
                f.write(buffer)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
