"""Whole-set scoring, end to end, before and after issue 23 in one run, against the time to only read the same files.

    python benchmarks/score_bench.py [--widths 16k] [--layers 2] [--saes-per-layer 5] [--vocab-rows 4096]
                                     [--context-rows 4096] [--baseline d38bcc4 | --baseline-dir DIR | --no-baseline]
                                     [--repeats 1] [--encode-timer] [--dtype D]

Builds, in a scratch folder: a bf16 store with d_model 2304 (Gemma-2-2b's) whose vocabulary rows carry planted
letter directions (so every letter's probe is good and every SAE is scored on 26 letters), trains its probes,
and writes random JumpReLU SAEs of Gemma Scope's shapes as params.npz (fp32: 16k = 0.30 GB, 65k = 1.21 GB),
--saes-per-layer per layer and width, about 60 active latents per token. Then, for each width:
- read: every SAE file of that width read once, cold (page cache dropped with posix_fadvise; the pages still
  resident afterwards are counted with mincore and reported: a cache that could not be dropped is said), with
  np.load, nothing else;
- score: the same files, cold, scored end to end in a fresh process by benchmarks/score_driver.py
  (`run_score(..., local=True)`: weights read and converted, layers loaded, every metric, results written),
  once with the baseline's code (a git worktree of --baseline, default d38bcc4, the commit before issue 23, put
  first on PYTHONPATH; removed afterwards) and once with this tree's, alternating baseline/current --repeats
  times on the same store and files.
Reported per version and width: the first SAE (store, layer rows, first read, warm-up) apart from the steady
state (median of the other SAEs' intervals between finished SAEs), the per-SAE ratio to the read, the encoder's
time (main encode: each SAE's first encoder call or its share of a group launch; other: any further call, the
old code's second encode for the L0 on text), the non-encode share of the steady per-SAE time (a) outside the
main encode, (b) outside any encoder call, the baseline/current ratio of each (issue 23's CPU target: >= 5),
and the per-phase profile of both versions (today's via score_sae's clock, the baseline's via wrapped phase
functions; see score_driver.py), and whether the two versions' results agree: every number of every part
(summary and class rows) compared, the count that differ and the largest difference. On CPU the timers need no
sync; on a GPU --encode-timer synchronizes the
device around every timed block (otherwise encode and phase times are host wall times). Also an extrapolation
to the 316 SAEs of gemma-scope-2b-pt-res at the current code's steady rate per byte of the nearest width.
Writes benchmarks/results/score_bench.json (score_bench_<gpu>.json on a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from store_bench import environment, print_table, sync_and_drop, write_result  # noqa: E402

from actstore.saes.loading import parse_width  # noqa: E402

D = 2304
SIGNAL, NOISE = 8.0, 0.25  # rows: SIGNAL x their letter's unit direction + NOISE x N(0, 1) per dimension
ROW_NORM_SQ = SIGNAL ** 2 + NOISE ** 2 * D
PHASE_ORDER = ("encode", "cosines", "l1_probe", "seeds", "context", "bootstrap", "text_l0", "records", "summary")
"""score_sae's phases (actstore.score.phases.PHASES) and the baseline's text_l0, in the order tables list them"""


def build_store(path: Path, layers: list[int], rows: int, context_rows: int) -> None:
    from actstore.score.probes import probe_store
    from actstore.store.zarrstore import ActivationStore, StoreSpec

    gen = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(26, D, generator=gen), dim=1)
    labels = torch.arange(rows) % 26
    split = (torch.rand(rows, generator=gen) < 0.2).long()
    store = ActivationStore.create(path, StoreSpec(model="score-bench", d_model=D, layers=layers, dtype="bfloat16"))
    store.add_group("vocab", rows=rows)
    ctx_labels = torch.randint(-1, 26, (context_rows,), generator=gen)
    store.add_group("context", rows=context_rows)
    acts = {}
    for layer in layers:
        acts[layer] = (SIGNAL * directions[labels] + NOISE * torch.randn(rows, D, generator=gen)).bfloat16()
    store.write("vocab", 0, {**acts, "label": labels.numpy(), "split": split.numpy(), "token_id": np.arange(rows),
                             "position": np.zeros(rows, int), "text": np.array(["w"] * rows)})
    ctx = {layer: (torch.where(ctx_labels[:, None] >= 0, SIGNAL * directions[ctx_labels.clamp(min=0)], 0)
                   + NOISE * torch.randn(context_rows, D, generator=gen)).bfloat16() for layer in layers}
    store.write("context", 0, {**ctx, "label": ctx_labels.numpy(), "token_id": np.arange(context_rows),
                               "doc": np.zeros(context_rows, int), "pos": np.arange(context_rows)})
    store.close()
    probe_store(str(path))


def write_sae(path: Path, m: int, seed: int, l0: int = 60) -> None:
    """A random JumpReLU SAE in Gemma Scope's layout: W_enc ~ N(0, 1/d), so pre ~ N(0, |x|^2 / d) and one
    threshold for all latents gives about `l0` active latents per token."""
    from statistics import NormalDist

    rng = np.random.default_rng(seed)
    w_enc = (rng.standard_normal((D, m), dtype=np.float32) / np.sqrt(D)).astype(np.float32)
    w_dec = rng.standard_normal((m, D), dtype=np.float32) / np.float32(np.sqrt(D))
    threshold = np.full(m, NormalDist(0, (ROW_NORM_SQ / D) ** 0.5).inv_cdf(1 - l0 / m), np.float32)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "params.npz", W_enc=w_enc, W_dec=w_dec, b_enc=np.zeros(m, np.float32),
             b_dec=np.zeros(D, np.float32), threshold=threshold)


def resident_pages(path: Path) -> tuple[int, int]:
    """(pages of `path` in the page cache, pages in all), by mincore(2) over a read-only mapping."""
    import ctypes
    import mmap
    import os

    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    if not size:
        return 0, 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                              ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            vec = ctypes.create_string_buffer(pages)
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            return sum(b & 1 for b in vec.raw), pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def drop(files: list[Path]) -> float:
    """Evict `files` from the page cache; returns the fraction of their pages still resident (0: all cold)."""
    for file in files:
        sync_and_drop(file)
    counts = [resident_pages(file) for file in files]
    return sum(r for r, _ in counts) / max(1, sum(p for _, p in counts))


def io_floor(files: list[Path]) -> tuple[list[float], list[float]]:
    """Seconds to read each file cold with np.load (every array), and the share of its pages that the drop left
    in the page cache before its read."""
    times, resident = [], []
    for file in files:
        resident.append(drop([file]))
        t = time.perf_counter()
        with np.load(file) as params:
            for key in params.files:
                params[key]
        times.append(time.perf_counter() - t)
    return times, resident


def catalog_bytes() -> list[int]:
    """fp32 bytes of every gemma-scope-2b-pt-res SAE (W_enc, W_dec, b_enc, threshold, b_dec)."""
    from actstore.saes.loading import gemma_scope_catalog

    return [e.width * (2 * D + 2) * 4 + D * 4 for e in gemma_scope_catalog("gemma-scope-2b-pt-res")]


def baseline_tree(ref: str, scratch: Path) -> Path:
    """A git worktree of `ref` (detached) under scratch; the caller removes it with remove_tree."""
    import subprocess

    path = scratch / f"baseline_{ref}"
    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", "-f", str(path), ref], check=True,
                   capture_output=True, text=True)
    return path


def remove_tree(path: Path) -> None:
    import subprocess

    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(path)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "prune"], capture_output=True)


def run_version(tree: Path, store: Path, saes: Path, out: Path, args) -> dict:
    """score_driver.py over one width's SAEs in a fresh process with `tree` first on PYTHONPATH."""
    import os
    import subprocess

    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    command = [sys.executable, str(HERE / "score_driver.py"), str(store), str(saes), str(out), str(out) + ".json",
               "--device", args.device, "--tree", str(tree)]
    command += ["--sync"] if args.encode_timer else []
    command += ["--dtype", args.dtype] if args.dtype else []
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"score_bench: the run with {tree} failed (rc {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(Path(str(out) + ".json").read_text())


def digest(run: dict, read_s: float) -> dict:
    """A driver run's figures: the first SAE, the steady state (the others), encode shares, phases."""
    intervals, main, other = run["intervals_s"], run["main_encode_s"], run["other_encode_s"]
    rest = intervals[1:] or intervals
    tail = slice(1, None) if len(intervals) > 1 else slice(None)
    total = sum(rest)
    main_rest, other_rest = sum(main[tail]), sum(other[tail])

    def phases(indices: list[int]) -> dict:
        seen = {k for i in indices for k in run["phases_s"][i]}
        names = [k for k in PHASE_ORDER if k in seen] + sorted(seen - set(PHASE_ORDER))
        mean = {k: statistics.fmean(run["phases_s"][i].get(k, 0.0) for i in indices) for k in names}
        mean["other in score_sae"] = statistics.fmean(run["inside_score_sae_s"][i] - sum(run["phases_s"][i].values())
                                                      for i in indices)
        mean["outside score_sae"] = statistics.fmean(intervals[i] - run["inside_score_sae_s"][i] for i in indices)
        mean["per SAE"] = statistics.fmean(intervals[i] for i in indices)
        return mean

    steady = statistics.median(rest)
    return {
        "first_sae_s": intervals[0], "steady_median_s": steady, "steady_mean_s": statistics.fmean(rest),
        "wall_s": run["wall_s"], "per_sae_vs_read": steady / read_s,
        "first_vs_read": intervals[0] / read_s,
        "main_encode_steady_s_per_sae": main_rest / len(rest), "other_encode_steady_s_per_sae": other_rest / len(rest),
        "share_outside_main_encode": 1 - main_rest / total,
        "share_outside_any_encode": 1 - (main_rest + other_rest) / total,
        "phases_first": phases([0]), "phases_steady": phases(list(range(1, len(intervals))) or [0]),
    }


def agreement(before: dict, after: dict) -> dict:
    """The numbers both versions report for the same SAEs (score_driver's `numbers`): how many, how many differ
    at all, the largest absolute difference, and the first few that differ."""
    saes = sorted(set(before) & set(after))
    shared = [(sae, key) for sae in saes for key in sorted(set(before[sae]) & set(after[sae]))]
    differ = [(sae, key, before[sae][key], after[sae][key]) for sae, key in shared
              if before[sae][key] != after[sae][key]
              and not (math.isnan(before[sae][key]) and math.isnan(after[sae][key]))]
    return {"saes": len(saes), "numbers_compared": len(shared), "numbers_differing": len(differ),
            "max_abs_diff": max((abs(b - a) for _, _, a, b in differ), default=0.0),
            "first_differing": [list(d) for d in differ[:5]]}


def print_phases(width: int, digests: dict[str, dict]) -> None:
    names = []
    for d in digests.values():
        for key in ("phases_first", "phases_steady"):
            names += [n for n in d[key] if n not in names and n not in ("other in score_sae", "outside score_sae",
                                                                       "per SAE")]
    names += ["other in score_sae", "outside score_sae", "per SAE"]
    header = ["phase (s per SAE)"] + [f"{v} {k}" for v in digests for k in ("first", "steady")]
    rows = [[name] + [f"{d[k].get(name, 0.0):.3f}" if name in d[k] else "-" for d in digests.values()
                      for k in ("phases_first", "phases_steady")] for name in names]
    print(f"width {width}: per-phase profile (steady: mean over SAEs 2..n)")
    print_table(header, rows)


def device_suffix() -> str:
    import re

    if not torch.cuda.is_available():
        return ""
    found = re.search(r"[A-Z]\d{2,4}", torch.cuda.get_device_name())
    return "_" + (found.group(0).lower() if found else "gpu")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    gpu = torch.cuda.is_available()
    parser.add_argument("--layers", type=int, default=2, help="how many layers (3, 12, 21, ...)")
    parser.add_argument("--saes-per-layer", type=int, default=5)
    parser.add_argument("--widths", default="16k,65k" if gpu else "16k")
    parser.add_argument("--vocab-rows", type=int, default=4096)
    parser.add_argument("--context-rows", type=int, default=4096)
    parser.add_argument("--baseline", default="d38bcc4", help="git ref of the code before (a worktree of it)")
    parser.add_argument("--baseline-dir", default=None, help="an existing source tree of the code before")
    parser.add_argument("--no-baseline", action="store_true", help="time only this tree's code")
    parser.add_argument("--current-dir", default=str(HERE.parent), help="the source tree timed as current")
    parser.add_argument("--repeats", type=int, default=1, help="baseline/current pairs per width (alternating)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, help="the score command's --dtype for both (default: each's own)")
    parser.add_argument("--encode-timer", action="store_true",
                        help="synchronize the GPU around every timed encoder call and phase")
    parser.add_argument("--scratch", default=str(HERE / "scratch"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    layers = [3 + 9 * i for i in range(args.layers)]
    widths = [parse_width(w) for w in args.widths.split(",")]
    out = args.out or HERE / "results" / f"score_bench{device_suffix()}.json"

    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="score_bench_", dir=args.scratch))
    env = environment()
    trees = {"current": Path(args.current_dir).resolve()}
    made = None
    try:
        if not args.no_baseline:
            if args.baseline_dir:
                trees = {"baseline": Path(args.baseline_dir).resolve(), **trees}
            else:
                made = baseline_tree(args.baseline, root)
                trees = {"baseline": made, **trees}
        t = time.perf_counter()
        build_store(root / "store.zarr", layers, args.vocab_rows, args.context_rows)
        print(f"store: layers {layers} x {args.vocab_rows} vocabulary + {args.context_rows} context rows, d {D}, "
              f"probes trained ({time.perf_counter() - t:.1f}s); versions: "
              + ", ".join(f"{k} {v}" for k, v in trees.items()), flush=True)
        per_width = {}
        for i, m in enumerate(widths):
            folder = root / f"saes_{m}"
            files = []
            for layer in layers:
                for k in range(args.saes_per_layer):
                    sae = folder / f"layer_{layer}" / f"width_{m}" / f"average_l0_{60 + k}"
                    write_sae(sae, m, seed=1000 * i + 10 * layer + k)
                    files.append(sae / "params.npz")
            floor, resident = io_floor(files)
            read_s = statistics.fmean(floor)
            runs: dict[str, list] = {name: [] for name in trees}
            for rep in range(args.repeats):
                order = list(trees) if rep % 2 == 0 else list(trees)[::-1]
                for name in order:
                    left = drop(files)
                    run = run_version(trees[name], root / "store.zarr", folder, root / f"results_{m}_{name}", args)
                    run["resident_before"] = left
                    runs[name].append(run)
                    print(f"  width {m} {name}: {run['saes']} SAEs in {run['wall_s']:.1f}s (backend {run['backend']}, "
                          f"dtype {run['dtype']}, clock hook {run['clock_hook']})", flush=True)
            best = {name: min(rs, key=lambda r: r["wall_s"]) for name, rs in runs.items()}
            digests = {name: digest(run, read_s) for name, run in best.items()}
            cache = max([*resident, *(r["resident_before"] for rs in runs.values() for r in rs)])
            per_width[m] = {"saes": len(files), "bytes_per_sae": files[0].stat().st_size, "read_s_per_sae": read_s,
                            "read_s": floor, "cache_left_after_drop": cache, "versions": digests, "runs": runs}
            if cache > 0.01:
                print(f"  note: the page cache could not be dropped: up to {cache:.0%} of a file's pages stayed "
                      f"resident, so 'read' and the runs' reads are partly warm")
            header = ["version", "first s", "steady s/SAE", "mean s", "read s", "per SAE/read", "main enc s",
                      "other enc s", "outside main", "outside any"]
            print(f"width {m}: {len(files)} SAEs ({len(layers)} layers x {args.saes_per_layer}), "
                  f"{files[0].stat().st_size / 1e9:.2f} GB each")
            print_table(header, [[name, f"{d['first_sae_s']:.2f}", f"{d['steady_median_s']:.2f}",
                                  f"{d['steady_mean_s']:.2f}", f"{read_s:.2f}", f"{d['per_sae_vs_read']:.2f}",
                                  f"{d['main_encode_steady_s_per_sae']:.2f}",
                                  f"{d['other_encode_steady_s_per_sae']:.2f}",
                                  f"{d['share_outside_main_encode']:.1%}", f"{d['share_outside_any_encode']:.1%}"]
                                 for name, d in digests.items()])
            if "baseline" in digests:
                b, c = digests["baseline"], digests["current"]
                per_width[m]["before_vs_after"] = {
                    "steady_per_sae": b["steady_median_s"] / c["steady_median_s"],
                    "share_outside_main_encode": b["share_outside_main_encode"] / c["share_outside_main_encode"],
                    "share_outside_any_encode": b["share_outside_any_encode"] / c["share_outside_any_encode"]}
                ratios = per_width[m]["before_vs_after"]
                print("  before/after: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
                agree = per_width[m]["agreement"] = agreement(best["baseline"].get("numbers", {}),
                                                              best["current"].get("numbers", {}))
                print(f"  results: {agree['numbers_differing']} of {agree['numbers_compared']} numbers of "
                      f"{agree['saes']} SAEs differ between the versions (largest difference "
                      f"{agree['max_abs_diff']:.3g})")
            print_phases(m, digests)
            for run in (r for rs in runs.values() for r in rs):
                run.pop("numbers", None)  # compared above; thousands of values per run, not kept in the JSON
            write_result(out, {"benchmark": "score_bench", "environment": env, "partial": True,  # kept if stopped
                               "widths": {str(k): w for k, w in per_width.items()}})
    finally:
        if made is not None:
            remove_tree(made)
        shutil.rmtree(root, ignore_errors=True)

    # extrapolation: each catalog SAE at the current code's steady per-byte rate of the nearest measured width
    rates = {m: w["versions"]["current"]["steady_median_s"] / w["bytes_per_sae"] for m, w in per_width.items()}
    io_rates = {m: w["read_s_per_sae"] / w["bytes_per_sae"] for m, w in per_width.items()}
    sizes = catalog_bytes()
    nearest = [min(per_width, key=lambda m: abs(np.log(b / per_width[m]["bytes_per_sae"]))) for b in sizes]
    full = sum(rates[m] * b for m, b in zip(nearest, sizes))
    full_io = sum(io_rates[m] * b for m, b in zip(nearest, sizes))
    result = {
        "benchmark": "score_bench", "environment": env, "layers": layers, "saes_per_layer": args.saes_per_layer,
        "vocab_rows": args.vocab_rows, "context_rows": args.context_rows, "repeats": args.repeats,
        "baseline": None if args.no_baseline else (args.baseline_dir or args.baseline),
        "encode_timer_synced": args.encode_timer, "widths": {str(m): w for m, w in per_width.items()},
        "ratios": {"per_sae_vs_read": {str(m): w["versions"]["current"]["per_sae_vs_read"]
                                       for m, w in per_width.items()},
                   "before_vs_after": {str(m): w.get("before_vs_after") for m, w in per_width.items()}},
        "extrapolation_316": {"saes": len(sizes), "bytes": sum(sizes), "score_hours": full / 3600,
                              "io_floor_hours": full_io / 3600},
    }
    print(f"extrapolated to the {len(sizes)} SAEs of gemma-scope-2b-pt-res ({sum(sizes) / 1e9:.0f} GB): "
          f"{full / 3600:.2f} h scoring (current, steady), {full_io / 3600:.2f} h reading at this disk's speed")
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
