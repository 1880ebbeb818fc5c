"""Whole-set scoring, end to end, against the I/O floor: the time to only read each SAE's file.

    python benchmarks/score_bench.py [--layers 3,12,19] [--widths 16k,65k] [--vocab-rows 4096] [--local]

Builds, in a scratch folder: a bf16 store with d_model 2304 (Gemma-2-2b's) whose vocabulary rows carry
planted letter directions (so every letter's probe is good and every SAE is scored on 26 letters), trains
its probes, and writes random JumpReLU SAEs of Gemma Scope's shapes as params.npz (fp32: 16k = 0.30 GB,
65k = 1.21 GB), one per layer and width, about 60 active latents per token. Then, for each width:
- io_floor: every SAE file of that width read once, cold (page cache dropped with posix_fadvise), with
  np.load, nothing else;
- score: `actstore score` (Ray, one worker; the device's default backend) over the same files, cold, end to
  end (weights read and converted, layers loaded, every metric, results written). `--local` scores in this
  process without Ray (`score --local`), for a machine without Ray.
Reported per width: seconds per SAE for both, `ratios.per_sae_vs_io_floor` (target on a GPU <= 1.25; on CPU
the ratio is reported as measured), and an extrapolation to the 316 SAEs of gemma-scope-2b-pt-res: each
catalog SAE costs the measured per-byte rate of the nearest measured width times its bytes.
Writes benchmarks/results/score_bench.json.
"""

from __future__ import annotations

import argparse
import json
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
from store_bench import environment, sync_and_drop, write_result  # noqa: E402

from actstore.saes.loading import parse_width  # noqa: E402

D = 2304
SIGNAL, NOISE = 8.0, 0.25  # rows: SIGNAL x their letter's unit direction + NOISE x N(0, 1) per dimension
ROW_NORM_SQ = SIGNAL ** 2 + NOISE ** 2 * D


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


def io_floor(files: list[Path]) -> list[float]:
    """Seconds to read each file cold with np.load (every array)."""
    times = []
    for file in files:
        sync_and_drop(file)
        t = time.perf_counter()
        with np.load(file) as params:
            for key in params.files:
                params[key]
        times.append(time.perf_counter() - t)
    return times


def catalog_bytes() -> list[int]:
    """fp32 bytes of every gemma-scope-2b-pt-res SAE (W_enc, W_dec, b_enc, threshold, b_dec)."""
    from actstore.saes.loading import gemma_scope_catalog

    return [e.width * (2 * D + 2) * 4 + D * 4 for e in gemma_scope_catalog("gemma-scope-2b-pt-res")]


def main() -> int:
    from actstore.run.runner import ScoreCommandConfig, run_score

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default="3,12,19")
    parser.add_argument("--widths", default="16k,65k")
    parser.add_argument("--vocab-rows", type=int, default=4096)
    parser.add_argument("--context-rows", type=int, default=4096)
    parser.add_argument("--local", action="store_true", help="score in this process, without Ray")
    parser.add_argument("--scratch", default=str(HERE / "scratch"))
    parser.add_argument("--out", default=str(HERE / "results" / "score_bench.json"))
    args = parser.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    widths = [parse_width(w) for w in args.widths.split(",")]

    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="score_bench_", dir=args.scratch))
    env = environment()
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
    try:
        t = time.perf_counter()
        build_store(root / "store.zarr", layers, args.vocab_rows, args.context_rows)
        print(f"store: {len(layers)} layers x {args.vocab_rows} vocabulary + {args.context_rows} context rows, "
              f"d {D}, probes trained ({time.perf_counter() - t:.1f}s)")
        per_width = {}
        for i, m in enumerate(widths):
            folder = root / f"saes_{m}"
            files = []
            for layer in layers:
                write_sae(folder / f"layer_{layer}" / f"width_{m}" / "bench", m, seed=100 * i + layer)
                files.append(folder / f"layer_{layer}" / f"width_{m}" / "bench" / "params.npz")
            floor = io_floor(files)
            for file in files:
                sync_and_drop(file)
            t = time.perf_counter()
            summary = run_score(ScoreCommandConfig(str(root / "store.zarr"), str(root / f"results_{m}"), [str(folder)],
                                                   local=args.local),
                                log=lambda line: print("  " + line) if "failed:" in line else None)
            wall = time.perf_counter() - t
            assert summary["scored"] == len(files), summary
            parts = [json.loads(p.read_text()) for p in (root / f"results_{m}" / "parts").glob("*.json")]
            per_width[m] = {
                "saes": len(files), "bytes_per_sae": files[0].stat().st_size,
                "io_floor_s_per_sae": statistics.fmean(floor), "io_floor_s": floor,
                "score_wall_s": wall, "score_s_per_sae": wall / len(files),
                "score_record_s": [p["seconds"] for p in parts],
                "mean_l0": statistics.fmean(p["summary"]["l0_vocab"] for p in parts),
                "backend": parts[0]["summary"]["backend"],
            }
            per_width[m]["ratio"] = per_width[m]["score_s_per_sae"] / per_width[m]["io_floor_s_per_sae"]
            print(f"width {m:7d}: {len(files)} SAEs, I/O floor {per_width[m]['io_floor_s_per_sae']:.2f} s/SAE, "
                  f"score {per_width[m]['score_s_per_sae']:.2f} s/SAE (wall{'' if args.local else ', Ray startup included'}), "
                  f"ratio {per_width[m]['ratio']:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    # extrapolation: each catalog SAE at the per-byte score rate of the nearest measured width
    rates = {m: w["score_s_per_sae"] / w["bytes_per_sae"] for m, w in per_width.items()}
    io_rates = {m: w["io_floor_s_per_sae"] / w["bytes_per_sae"] for m, w in per_width.items()}
    sizes = catalog_bytes()
    nearest = [min(per_width, key=lambda m: abs(np.log(b / per_width[m]["bytes_per_sae"]))) for b in sizes]
    full = sum(rates[m] * b for m, b in zip(nearest, sizes))
    full_io = sum(io_rates[m] * b for m, b in zip(nearest, sizes))
    result = {
        "benchmark": "score_bench", "environment": env, "layers": layers, "vocab_rows": args.vocab_rows,
        "context_rows": args.context_rows, "ray": not args.local, "widths": {str(m): w for m, w in per_width.items()},
        "ratios": {"per_sae_vs_io_floor": {str(m): w["ratio"] for m, w in per_width.items()}},
        "extrapolation_316": {"saes": len(sizes), "bytes": sum(sizes), "score_hours": full / 3600,
                              "io_floor_hours": full_io / 3600},
    }
    print(f"extrapolated to the {len(sizes)} SAEs of gemma-scope-2b-pt-res ({sum(sizes) / 1e9:.0f} GB): "
          f"{full / 3600:.2f} h scoring, {full_io / 3600:.2f} h reading at this disk's speed")
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
