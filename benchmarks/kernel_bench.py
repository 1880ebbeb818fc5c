"""The fused JumpReLU + probe-projection kernel against the unfused torch path and the GEMM floor.

    python benchmarks/kernel_bench.py [--widths 16k,65k,262k,1m] [--tokens 4096,16384,65536] [--groups 1,5,10]
    python benchmarks/kernel_bench.py --smoke     # tiny fp32 shapes: checks the script (on CPU in Triton's
                                                  # interpreter; on a GPU compiled)

At each shape (d 2304, S SAEs of m latents each in one group, N tokens, bf16 in, fp32 accumulation):
- fused: `actstore.kernels.jumprelu_probe` (projection on 26 probe directions, L0, sparse lists with
  capacity 64 and the retry), one launch for the group, with the PINNED tiles scoring uses;
  fused_tuned: the same, autotuned over the kept CONFIGS;
- torch: per SAE and per latent chunk, dense encode (cuBLAS bf16 GEMM), bias, threshold, ReLU, nonzero,
  gather of the values, projection; the chunk sized so the (N x chunk) activations take the same memory
  as the fused path's outputs (at least 1024 latents);
- gemm: the floor, a plain cuBLAS bf16 GEMM of the same shape (N x 2304 @ 2304 x S*m), written to a reused
  output buffer a 16384-column chunk at a time (the whole N x S*m output would not fit).
Times are triton.testing.do_bench medians. FLOPs = 2 N d S m (the encoder; the projection adds 2 N S m
32, 1.4%). Reported per shape: ms, TFLOP/s, tokens/s (N / time: tokens scored against the whole group),
peak extra memory of the fused call, agreement with the fp32 reference on the first 256 tokens (the torch
path is no reference: it rounds pre to bf16 before thresholding), and ratios `fused_vs_gemm_floor` (gemm ms /
fused ms, a throughput fraction; target >= 0.7 on an H100) and `fused_vs_torch` (torch ms / fused ms, a
speed-up; target >= 3).
Shapes whose weights would not fit in 60% of GPU memory are skipped and listed.
Writes benchmarks/results/kernel_bench.json (with --smoke, benchmarks/scratch/kernel_bench_smoke.json: the
interpreter's times mean nothing).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
SMOKE_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
"""--smoke runs the compiled kernel on a GPU, the interpreter elsewhere"""
if "--smoke" in sys.argv and SMOKE_DEVICE == "cpu" and not os.environ.get("TRITON_INTERPRET"):
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import triton  # noqa: E402

sys.path.insert(0, str(HERE))
from store_bench import environment, write_result  # noqa: E402

from actstore.kernels.jumprelu_probe import (Group, P_PAD, default_splits, jumprelu_probe,  # noqa: E402
                                             jumprelu_probe_reference)
from actstore.saes.loading import parse_width  # noqa: E402

CAPACITY = 64
CLASSES = 26
"""probe classes projected on: first_letter's, the case scoring measures (the kernel takes any count)"""


def make_group(d: int, m: int, s: int, dtype: torch.dtype, device: str, l0_target: int = 60) -> Group:
    """S random JumpReLU SAEs of m latents, thresholds set so about `l0_target` latents fire per token."""
    gen = torch.Generator(device=device).manual_seed(0)
    w = torch.randn(d, s * m, device=device, dtype=dtype, generator=gen) / d ** 0.5  # pre ~ N(0, |x|^2 / d)
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - l0_target / m)  # x ~ N(0, 1): pre ~ N(0, 1)
    threshold = torch.full((s * m,), z, device=device)
    v = torch.randn(1, s * m, P_PAD, device=device, generator=gen) / d ** 0.5  # one block of P_PAD >= CLASSES
    v[:, :, CLASSES:] = 0
    offsets = torch.arange(s + 1, device=device, dtype=torch.int32) * m
    return Group(w, torch.zeros(s * m, device=device), threshold, torch.ones(s * m, device=device), v, offsets,
                 (m,) * s, None, CLASSES)


def torch_path(x: torch.Tensor, group: Group, chunk: int) -> tuple[torch.Tensor, list]:
    """The unfused path, chunked: dense encode, threshold, nonzero, projection."""
    offsets = group.offsets.tolist()
    v = group.v.permute(1, 0, 2).reshape(group.v.shape[1], -1)[:, :group.n_classes]  # (M, C)
    projs, lists = [], []
    for a, b in zip(offsets, offsets[1:]):
        proj = torch.zeros(len(x), group.n_classes, device=x.device)
        found = []
        for lo in range(a, b, chunk):
            hi = min(b, lo + chunk)
            pre = torch.mm(x, group.w_enc[:, lo:hi]).float() + group.b_enc[lo:hi]  # (N, chunk)
            f = torch.relu(pre) * (pre > group.threshold[lo:hi])
            rows, cols = f.nonzero(as_tuple=True)
            found.append((rows, cols + (lo - a), f[rows, cols] * group.scale[lo + cols]))
            proj += f @ v[lo:hi]
        projs.append(proj)
        lists.append(found)
    return torch.stack(projs), lists


def gemm_floor(x: torch.Tensor, group: Group, out: torch.Tensor) -> None:
    cols = out.shape[1]
    for lo in range(0, group.w_enc.shape[1], cols):
        hi = min(group.w_enc.shape[1], lo + cols)
        torch.mm(x, group.w_enc[:, lo:hi], out=out[:, :hi - lo])


def timed(fn, device: str, reps: int) -> float:
    """Median milliseconds: triton's do_bench on a GPU (CUDA events, cache flushed), wall clock on CPU."""
    if device == "cuda":
        return triton.testing.do_bench(fn, warmup=25, rep=reps)
    import statistics
    import time

    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def bench_shape(d: int, m: int, s: int, n: int, dtype: torch.dtype, device: str, reps: int) -> dict:
    group = make_group(d, m, s, dtype, device)
    x = torch.randn(n, d, device=device, dtype=dtype)
    fused_extra = s * n * (P_PAD + 2 * 2 + 2 * CAPACITY) * 4  # proj, l0, near, index, value
    chunk = max(1024, triton.next_power_of_2(max(1, fused_extra // (n * 4 * 2))))  # pre and f, fp32
    chunk = min(chunk, m)
    out = jumprelu_probe(x, group, CAPACITY)  # warm-up, autotune; capacity settles
    capacity = out.index.shape[2]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        jumprelu_probe(x, group, capacity)
        torch.cuda.synchronize()
        peak_extra = torch.cuda.max_memory_allocated() - base
    else:
        peak_extra = None
    ref_proj, _ = torch_path(x, group, chunk)
    agreement = float(((out.proj - ref_proj).abs().max() / ref_proj.abs().max().clamp(min=1e-6)))
    # against the fp32 reference on the first tokens (the torch path rounds pre to the GEMM's output dtype)
    sub = min(n, 256)
    fp32_proj, fp32_l0, _ = jumprelu_probe_reference(x[:sub].float(), group)
    vs_fp32 = float((out.proj[:, :sub] - fp32_proj).abs().max() / fp32_proj.abs().max().clamp(min=1e-6))
    flips = int((out.l0[:, :sub] - fp32_l0).abs().sum())
    buf = torch.empty(n, min(16384, s * m), device=device, dtype=dtype)
    times = {
        "fused": timed(lambda: jumprelu_probe(x, group, capacity), device, reps),
        "fused_tuned": timed(lambda: jumprelu_probe(x, group, capacity, tuned=True), device, reps),
        "torch": timed(lambda: torch_path(x, group, chunk), device, reps),
        "gemm": timed(lambda: gemm_floor(x, group, buf), device, reps),
    }
    flops = 2 * n * d * s * m
    row = {"d": d, "m": m, "saes": s, "tokens": n, "dtype": str(dtype).replace("torch.", ""), "torch_chunk": chunk,
           "latent_splits": default_splits(n, s, m, x.device),
           "capacity": capacity, "mean_l0": float(out.l0.float().mean()), "near_threshold": int(out.near.sum()),
           "proj_max_rel_diff_vs_torch": agreement, "proj_max_rel_diff_vs_fp32_first_256": vs_fp32,
           "l0_flips_vs_fp32_first_256": flips, "near_first_256": int(out.near[:, :sub].sum()), "fused_peak_extra_bytes": peak_extra,
           "fused_extra_bytes_expected": s * n * (P_PAD + 2 + 2 * capacity) * 4}
    for name, ms in times.items():
        row[f"{name}_ms"] = ms
        row[f"{name}_tflops"] = flops / (ms * 1e-3) / 1e12
        row[f"{name}_tokens_per_s"] = n / (ms * 1e-3)
    row["ratios"] = {"fused_vs_gemm_floor": times["gemm"] / times["fused"], "fused_vs_torch": times["torch"] / times["fused"]}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="16k,65k,262k,1m")
    parser.add_argument("--tokens", default="4096,16384,65536")
    parser.add_argument("--groups", default="1,5,10")
    parser.add_argument("--reps", type=int, default=200, help="do_bench's rep budget in ms per method and shape")
    parser.add_argument("--smoke", action="store_true", help="tiny fp32 shapes (CPU: Triton's interpreter; GPU: compiled)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    env = environment()
    if args.smoke:
        device, dtype, d = SMOKE_DEVICE, torch.float32, 64
        widths, tokens, groups = [200, 333], [96], [1, 2]
        # the interpreter cannot be timed meaningfully: the smoke run checks agreement and the JSON only
        x = torch.randn(40, d, device=device)
        group = make_group(d, 150, 2, dtype, device, l0_target=20)
        out, (proj, l0, _) = jumprelu_probe(x, group, 8), jumprelu_probe_reference(x, group)
        assert torch.equal(out.l0, l0) and torch.allclose(out.proj, proj, atol=1e-4), "fused != reference"
    else:
        if not torch.cuda.is_available():
            print("kernel_bench needs CUDA (or --smoke for a CPU check of the script)", file=sys.stderr)
            return 2
        device, dtype, d = "cuda", torch.bfloat16, 2304
        env["device"] = torch.cuda.get_device_name()
        env["triton"] = triton.__version__
        widths = [parse_width(w) for w in args.widths.split(",")]
        tokens = [int(t) for t in args.tokens.split(",")]
        groups = [int(g) for g in args.groups.split(",")]
    out = args.out or (HERE / "scratch" / "kernel_bench_smoke.json" if args.smoke else HERE / "results" / "kernel_bench.json")
    budget = 0.6 * torch.cuda.get_device_properties(0).total_memory if device == "cuda" else float("inf")

    rows, skipped = [], []
    print(f"{'m':>8s} {'S':>3s} {'N':>6s} {'fused ms':>9s} {'TFLOP/s':>8s} {'torch ms':>9s} {'gemm ms':>8s} "
          f"{'vs gemm':>8s} {'vs torch':>8s} {'extra MB':>9s}")
    for m in widths:
        for s in groups:
            weights = s * m * d * dtype.itemsize + s * m * (P_PAD + 4) * 4
            if weights > budget:
                skipped.append({"m": m, "saes": s, "weights_bytes": weights})
                continue
            for n in tokens:
                row = bench_shape(d, m, s, n, dtype, device, reps=10 if args.smoke else args.reps)
                rows.append(row)
                extra = "-" if row["fused_peak_extra_bytes"] is None else f"{row['fused_peak_extra_bytes'] / 1e6:.1f}"
                print(f"{m:8d} {s:3d} {n:6d} {row['fused_ms']:9.2f} {row['fused_tflops']:8.1f} {row['torch_ms']:9.2f} "
                      f"{row['gemm_ms']:8.2f} {row['ratios']['fused_vs_gemm_floor']:8.2f} "
                      f"{row['ratios']['fused_vs_torch']:8.2f} {extra:>9s}")
                if device == "cuda":
                    torch.cuda.empty_cache()
                    # the JSON so far: a run stopped at its time limit keeps the shapes it finished
                    write_result(out, {"benchmark": "kernel_bench", "environment": env, "smoke": args.smoke,
                                       "rows": rows, "skipped": skipped, "partial": True})
    for skip in skipped:
        print(f"skipped m={skip['m']} S={skip['saes']}: weights {skip['weights_bytes'] / 1e9:.1f} GB > 60% of GPU memory")
    result = {"benchmark": "kernel_bench", "environment": env, "smoke": args.smoke, "rows": rows, "skipped": skipped}
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
