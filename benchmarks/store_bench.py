"""Store write and read throughput next to a raw .npy memmap of the same bytes on the same disk.

    python benchmarks/store_bench.py [--gb 1.2] [--repeats 3] [--codecs none,zstd] [--dir DIR]

One run writes and reads the same activation-like bf16 rows (d_model 2304, Gemma-2-2b's width) three
ways, interleaved `--repeats` times (rotating the order), and reports medians:

- raw:        numpy.lib.format.open_memmap, block assignment, flush, fsync   (the floor the issue names)
- files:      one flat file per 16384-row block, written / read by `--threads` threads, fsync
              (the store's layout and parallelism without its format: what the format itself costs)
- store/none: ActivationStore, shards of 16384 x 2304, chunks of 1024 rows, crc32c, no compression
- store/zstd: the same with zstd level 1 before the crc32c

MB/s = raw activation bytes (rows x 2304 x 2) / seconds. Writes are timed until every file is fsynced,
so both paths pay for the disk. Reads are timed twice: cold (files fsynced and dropped from the page
cache with posix_fadvise(DONTNEED), so bytes come from the disk) and warm (from the page cache); a read
produces each block as an in-memory array (np.array of the memmap slice; a torch tensor from the store).

Prints a table and writes benchmarks/results/store_bench.json with `ratios.write_vs_raw` and
`ratios.read_vs_raw` (cold reads: the same disk) plus `read_warm_vs_raw`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from actstore.store.zarrstore import ActivationStore, StoreSpec
from actstore.store.verify import bytes_on_disk

D_MODEL, SHARD_ROWS, CHUNK_ROWS = 2304, 16384, 1024
HERE = Path(__file__).resolve().parent


def activation_like(rows: int, seed: int) -> torch.Tensor:
    """(rows, 2304) bf16 shaped like a residual stream: per-dimension scales spread over two orders of
    magnitude (log-normal) and a few massive dimensions, so exponent bytes vary as they do in a model."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(D_MODEL, generator=gen) * 0.7)
    scale[torch.randperm(D_MODEL, generator=gen)[:4]] = 60.0
    out = torch.empty(rows, D_MODEL, dtype=torch.bfloat16)
    for lo in range(0, rows, SHARD_ROWS):
        hi = min(lo + SHARD_ROWS, rows)
        out[lo:hi] = (torch.randn(hi - lo, D_MODEL, generator=gen) * scale).to(torch.bfloat16)
    return out


def files_under(path: Path) -> list[Path]:
    return [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]


def fsync_all(path: Path, drop: bool = False) -> None:
    """fsync every file under `path`; with drop, then ask the kernel to evict them from the page cache."""
    for file in files_under(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            if drop:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sync_and_drop(path: Path) -> None:
    fsync_all(path, drop=True)


def bench_raw(folder: Path, acts: torch.Tensor) -> dict:
    path = folder / "raw.npy"
    path.unlink(missing_ok=True)
    bits = acts.view(torch.int16).numpy().view(np.uint16)
    rows = len(bits)
    t0 = time.perf_counter()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=bits.shape)
    for lo in range(0, rows, SHARD_ROWS):
        out[lo:lo + SHARD_ROWS] = bits[lo:lo + SHARD_ROWS]
    out.flush()
    del out
    fsync_all(path)
    write = time.perf_counter() - t0

    def read() -> float:
        t = time.perf_counter()
        m = np.load(path, mmap_mode="r")
        for lo in range(0, rows, SHARD_ROWS):
            block = np.array(m[lo:lo + SHARD_ROWS])
        del m, block
        return time.perf_counter() - t

    sync_and_drop(path)
    cold = read()
    warm = read()
    return {"write_s": write, "read_cold_s": cold, "read_warm_s": warm, "bytes_on_disk": path.stat().st_size}


def bench_files(folder: Path, acts: torch.Tensor, threads: int) -> dict:
    """One flat file per shard-sized block, written and read by `threads` threads: the store's layout and
    parallelism without its format (no chunks, index, checksums or manifest)."""
    path = folder / "flat"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    bits = acts.view(torch.int16).numpy().view(np.uint16)
    rows = len(bits)
    blocks = range(0, rows, SHARD_ROWS)
    t0 = time.perf_counter()

    def write(lo: int) -> None:
        with open(path / str(lo), "wb") as f:
            f.write(bits[lo:lo + SHARD_ROWS])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, blocks))
    fsync_all(path)
    write_s = time.perf_counter() - t0

    def read() -> float:
        t = time.perf_counter()

        def read_block(lo: int) -> np.ndarray:
            block = np.empty((min(SHARD_ROWS, rows - lo), D_MODEL), dtype=np.uint16)
            with open(path / str(lo), "rb", buffering=0) as f:
                f.readinto(block)
            return block

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(read_block, blocks))
        return time.perf_counter() - t

    sync_and_drop(path)
    cold = read()
    warm = read()
    shutil.rmtree(path)
    return {"write_s": write_s, "read_cold_s": cold, "read_warm_s": warm, "bytes_on_disk": rows * D_MODEL * 2}


def bench_store(folder: Path, acts: torch.Tensor, codec: str, threads: int) -> dict:
    path = folder / f"store_{codec}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    rows = len(acts)
    spec = StoreSpec(model="bench", d_model=D_MODEL, layers=[0], shard_rows=SHARD_ROWS, chunk_rows=CHUNK_ROWS,
                     codec=codec)
    step = SHARD_ROWS * threads  # one call hands each I/O thread a shard
    t0 = time.perf_counter()
    with ActivationStore.create(path, spec, io_threads=threads) as store:
        store.add_group("context", rows=rows, columns={})
        for lo in range(0, rows, step):
            store.write("context", lo, {0: acts[lo:lo + step]})
    fsync_all(path)
    write = time.perf_counter() - t0

    def read() -> float:
        t = time.perf_counter()
        with ActivationStore.open(path, io_threads=threads) as store:
            for block in store.blocks("context", 0, prefetch=2 * threads):
                pass
        return time.perf_counter() - t

    sync_and_drop(path)
    cold = read()
    warm = read()
    with ActivationStore.open(path) as store:  # not timed: the bytes must be the bytes written
        assert torch.equal(store.read("context", 0, rows - 5000, rows).view(torch.int16),
                           acts[rows - 5000:].view(torch.int16))
        size = bytes_on_disk(store)
    return {"write_s": write, "read_cold_s": cold, "read_warm_s": warm, "bytes_on_disk": size}


def warm_up_page_cache(folder: Path, acts: torch.Tensor) -> None:
    """Write and delete twice the data once, untimed. On this VM the first write into never-used page
    cache runs up to 10x slower than later ones (the guest's memory is touched for the first time):
    without this, whichever method runs first looks slow (benchmarks/NOTES.md)."""
    bits = acts.view(torch.int16).numpy()
    for _ in range(2):
        path = folder / "warm_up.bin"
        with open(path, "wb") as f:
            f.write(bits)
        fsync_all(path)
        path.unlink()


def write_result(path: str | Path, result: dict) -> None:
    """Write a benchmark's JSON (creating results/ or scratch/) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A benchmark's table on stdout: one line per row, each column right-aligned to its widest cell."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def environment() -> dict:
    import zarr

    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"device": gpu or f"CPU: {cpu}", "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "zarr": zarr.__version__, "numpy": np.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.2, help="raw activation bytes to write (GB)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions; medians are reported")
    parser.add_argument("--codecs", default="none,zstd", help="store codecs to measure")
    parser.add_argument("--baselines", default="raw,files", help="baselines to measure (raw is required for ratios)")
    parser.add_argument("--threads", type=int, default=2, help="store I/O threads")
    parser.add_argument("--dir", default=str(HERE / "scratch"), help="scratch folder on the disk to measure")
    parser.add_argument("--out", default=str(HERE / "results" / "store_bench.json"))
    args = parser.parse_args()

    shards = max(1, round(args.gb * 1e9 / (SHARD_ROWS * D_MODEL * 2)))
    rows = shards * SHARD_ROWS
    mb = rows * D_MODEL * 2 / 1e6
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"generating {rows} x {D_MODEL} bf16 rows ({mb:.0f} MB) ...", file=sys.stderr)
    acts = activation_like(rows, seed=0)
    methods = args.baselines.split(",") + [f"store/{c}" for c in args.codecs.split(",")]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    warm_up_page_cache(folder, acts)
    for rep in range(args.repeats):
        for method in methods[rep % len(methods):] + methods[:rep % len(methods)]:  # rotate the order
            if method == "raw":
                result = bench_raw(folder, acts)
            elif method == "files":
                result = bench_files(folder, acts, args.threads)
            else:
                result = bench_store(folder, acts, method.split("/")[1], args.threads)
            runs[method].append(result)
            print(f"  repeat {rep + 1}/{args.repeats} {method:10s} write {mb / result['write_s']:7.0f} MB/s  "
                  f"read cold {mb / result['read_cold_s']:7.0f}  warm {mb / result['read_warm_s']:7.0f}",
                  file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)

    summary = {}
    for method, results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in ("write_s", "read_cold_s", "read_warm_s")}
        summary[method] = {
            "write_MBps": mb / med["write_s"], "read_cold_MBps": mb / med["read_cold_s"],
            "read_warm_MBps": mb / med["read_warm_s"], "bytes_on_disk": results[0]["bytes_on_disk"],
            "disk_vs_raw_bytes": results[0]["bytes_on_disk"] / (rows * D_MODEL * 2),
            "runs": results,
        }
    raw = summary["raw"]
    ratios = {}
    for method in methods[1:]:
        s, f = summary[method], summary["files"]
        ratios[method] = {"write_vs_raw": s["write_MBps"] / raw["write_MBps"],
                          "read_vs_raw": s["read_cold_MBps"] / raw["read_cold_MBps"],
                          "read_warm_vs_raw": s["read_warm_MBps"] / raw["read_warm_MBps"],
                          "write_vs_files": s["write_MBps"] / f["write_MBps"],
                          "read_vs_files": s["read_cold_MBps"] / f["read_cold_MBps"],
                          "read_warm_vs_files": s["read_warm_MBps"] / f["read_warm_MBps"]}
    default = "store/none"
    result = {"benchmark": "store_bench", **environment(), "rows": rows, "d_model": D_MODEL, "dtype": "bfloat16",
              "raw_MB": mb, "shard_rows": SHARD_ROWS, "chunk_rows": CHUNK_ROWS, "io_threads": args.threads,
              "repeats": args.repeats, "methods": summary,
              "ratios": {**ratios.get(default, {}), "by_method": ratios},
              "targets": {"write_vs_raw": 0.7, "read_vs_raw": 0.8}}

    print(f"\nstore_bench: {rows} x {D_MODEL} bf16 = {mb:.0f} MB, medians of {args.repeats}, {result['device']}")
    table = []
    for method in methods:
        s, r = summary[method], ratios.get(method, {"write_vs_raw": 1, "read_vs_raw": 1, "read_warm_vs_raw": 1})
        table.append([method, f"{s['write_MBps']:.0f}", f"{s['read_cold_MBps']:.0f}", f"{s['read_warm_MBps']:.0f}",
                      f"{s['disk_vs_raw_bytes']:.3f}", f"{r['write_vs_raw']:.2f}", f"{r['read_vs_raw']:.2f}",
                      f"{r['read_warm_vs_raw']:.2f}"])
    print_table(["method", "write MB/s", "read cold", "read warm", "disk/raw", "write/raw", "read/raw", "warm/raw"],
                table)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
