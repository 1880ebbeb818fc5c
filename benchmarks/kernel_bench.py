"""The fused JumpReLU + probe-projection kernel alone, its launcher, the recheck path, fp32, torch and cuBLAS.

    python benchmarks/kernel_bench.py [--widths 16k,65k] [--tokens 4096,16384] [--saes 1] [--samples 7] [--big]
    python benchmarks/kernel_bench.py --dry-run     # tiny shapes under TRITON_INTERPRET=1: checks the script

At each shape (d 2304, S random JumpReLU SAEs of m latents in one group, N tokens, 26 probe classes), methods:
- kernel: `_jumprelu_probe_kernel` launched directly, the launches (grid, arguments, preallocated outputs) that
  the launcher made for the same call, recorded and replayed: no host sync, no split join, no norms;
  kernel_recheck: likewise the launches of the recheck path below (its candidate-listing mode);
- launcher: `jumprelu_probe` on bf16 operands as it is (its host sync, retries, the split join), its defaults;
- recheck: `encode_group_fused(..., dtype="bfloat16")`, the scorer's path (the bf16 kernel, then the exact fp32
  recheck of the candidates, then the sparse lists); skipped, and said, where encode_group_fused takes no dtype;
- fp32: `jumprelu_probe` on fp32 operands (the fp32-only kernel path);
- torch: per SAE and latent chunk, dense bf16 encode (cuBLAS), bias, threshold, nonzero, gather, projection;
- cublas: `x @ W_enc` in bf16, the shape-matched GEMM (N x 2304 @ 2304 x S m, 16384 output columns at a time);
- limit: the physical floor 2 N d S m / 989e12 s (H100 SXM dense bf16; the H200 has the same tensor cores).
Methods are interleaved: each sample runs every method once, in turn (L2 flushed before each), timed with CUDA
events; a sample of a method under 1 ms repeats it to at least 1 ms and divides. Reported: medians of --samples
samples (>= 5), TFLOP/s, each method against the limit and cuBLAS, and the firing decisions of the fp32 path, the
bf16 launcher and the recheck path that differ from the fp32 torch reference on the first 256 tokens (--dry-run
fails unless the fp32 path's and the recheck's are 0).
Writes benchmarks/results/kernel_bench_<gpu>.json (--dry-run: benchmarks/scratch/kernel_bench_dry_run.json; the
interpreter's times mean nothing).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import statistics
import sys
from pathlib import Path

if "--dry-run" in sys.argv and not os.environ.get("TRITON_INTERPRET"):
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import triton  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from store_bench import environment, print_table, write_result  # noqa: E402

from actstore.kernels import jumprelu_probe as jp  # noqa: E402
from actstore.saes.loading import SAEWeights, parse_width  # noqa: E402
from actstore.score.encode import encode_group_fused  # noqa: E402

CLASSES = 26
PEAK_FLOPS = 989e12
"""dense bf16 tensor-core FLOP/s of an H100 SXM (the H200's tensor cores are the same)"""
METHODS = ("kernel", "kernel_recheck", "launcher", "recheck", "fp32", "torch", "cublas")


def make_saes(d: int, m: int, s: int, device: str, l0_target: int = 60) -> list[SAEWeights]:
    """S random fp32 JumpReLU SAEs, thresholds set so about `l0_target` latents fire per token of x ~ N(0, 1)."""
    from statistics import NormalDist

    gen = torch.Generator(device=device).manual_seed(0)
    z = NormalDist().inv_cdf(1 - l0_target / m)  # W_enc ~ N(0, 1/d): pre ~ N(0, 1)
    return [SAEWeights(f"random-{m}-{i}", torch.randn(d, m, device=device, generator=gen) / d ** 0.5,
                       torch.zeros(m, device=device), torch.randn(m, d, device=device, generator=gen) / d ** 0.5,
                       torch.zeros(d, device=device), "jumprelu", torch.full((m,), z, device=device), layer=0)
            for i in range(s)]


class Recorder:
    """Stands in for the kernel object while the launcher runs: records each launch (grid, args, kwargs) and
    runs it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, args, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch

    def __getattr__(self, name):
        return getattr(self.kernel, name)


def captured_launches(call) -> list:
    """The kernel launches `call()` makes (after a warm-up call settled the list capacity)."""
    call()
    recorder, kernel = Recorder(jp._jumprelu_probe_kernel), jp._jumprelu_probe_kernel
    jp._jumprelu_probe_kernel = recorder
    try:
        call()
    finally:
        jp._jumprelu_probe_kernel = kernel
    if not recorder.launches:
        raise SystemExit("kernel_bench: the call launched no _jumprelu_probe_kernel through the module's name "
                         "(the launcher must look the kernel up as jumprelu_probe._jumprelu_probe_kernel)")
    return recorder.launches


def torch_path(x: torch.Tensor, group, chunk: int) -> torch.Tensor:
    """The unfused path, chunked: dense encode, threshold, nonzero, gather, projection; returns the L0s."""
    offsets = [0, *torch.tensor(group.widths).cumsum(0).tolist()]
    v = group.v.permute(1, 0, 2).reshape(group.v.shape[1], -1)[:, :group.n_classes]  # (M, C)
    l0s, lists = [], []
    for a, b in zip(offsets, offsets[1:]):
        proj = torch.zeros(len(x), group.n_classes, device=x.device)
        l0 = torch.zeros(len(x), dtype=torch.int64, device=x.device)
        for lo in range(a, b, chunk):
            hi = min(b, lo + chunk)
            pre = torch.mm(x, group.w_enc[:, lo:hi]).float() + group.b_enc[lo:hi]
            f = torch.relu(pre) * (pre > group.threshold[lo:hi])
            rows, cols = f.nonzero(as_tuple=True)
            lists.append((rows, cols + (lo - a), f[rows, cols] * group.scale[lo + cols]))
            proj += f @ v[lo:hi]
            l0 += (f > 0).sum(1)
        l0s.append(l0)
    return torch.stack(l0s)


def interleaved(methods: dict, samples: int, device: str) -> dict[str, list[float]]:
    """Milliseconds per call of each method, `samples` rounds, every method once per round in turn."""
    import time

    cuda = device == "cuda"
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if cuda else None
    repeat = {}
    for name, fn in methods.items():  # a warm call (compiles) and the repeat count for >= 1 ms samples
        fn()
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        repeat[name] = max(1, min(50, int(1e-3 / max(time.perf_counter() - t, 1e-6)))) if cuda else 1
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(samples):
        for name, fn in methods.items():
            if cuda:
                flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(repeat[name]):
                    fn()
                end.record()
                torch.cuda.synchronize()
                times[name].append(start.elapsed_time(end) / repeat[name])
            else:
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) * 1e3)
    return times


def bench_shape(d: int, m: int, s: int, n: int, device: str, samples: int) -> dict:
    saes = make_saes(d, m, s, device)
    gen = torch.Generator(device=device).manual_seed(1)
    directions = torch.nn.functional.normalize(torch.randn(CLASSES, d, device=device, generator=gen), dim=1)
    half = torch.bfloat16
    g16, g32 = jp.pack_group(saes, directions, half), jp.pack_group(saes, directions, torch.float32)
    x16 = torch.randn(n, d, device=device, generator=gen).to(half)
    x32 = x16.float()  # the same tokens: every path and the reference see identical values
    takes_dtype = "dtype" in inspect.signature(encode_group_fused).parameters
    launches = {"kernel": captured_launches(lambda: jp.jumprelu_probe(x16, g16))}
    if takes_dtype:
        launches["kernel_recheck"] = captured_launches(
            lambda: encode_group_fused(x16, saes, n, group=g16, dtype="bfloat16"))
    chunk = min(m, 16384)
    buffer = torch.empty(n, min(16384, s * m), device=device, dtype=half)

    def replay(recorded: list):
        def kernel():
            for grid, args, kwargs in recorded:
                jp._jumprelu_probe_kernel[grid](*args, **kwargs)
        return kernel

    def cublas():
        for lo in range(0, g16.w_enc.shape[1], buffer.shape[1]):
            hi = min(g16.w_enc.shape[1], lo + buffer.shape[1])
            torch.mm(x16, g16.w_enc[:, lo:hi], out=buffer[:, :hi - lo])

    methods = {**{name: replay(recorded) for name, recorded in launches.items()},
               "launcher": lambda: jp.jumprelu_probe(x16, g16),
               "recheck": (lambda: encode_group_fused(x16, saes, n, group=g16, dtype="bfloat16")) if takes_dtype
               else None,
               "fp32": lambda: jp.jumprelu_probe(x32, g32), "torch": lambda: torch_path(x16, g16, chunk),
               "cublas": cublas}
    methods = {k: v for k, v in methods.items() if v is not None}
    sub = min(n, 256)
    reference = jp.jumprelu_probe_reference(x32[:sub], g32)[1]  # (S, sub) fp32 torch L0s

    def diff(l0: torch.Tensor) -> int:  # decisions that differ from the reference on the first tokens
        return int((l0[:, :sub] - reference).abs().sum())

    agreement = {"fp32_l0_diff_vs_reference_first_256": diff(jp.jumprelu_probe(x32, g32).l0.view(s, -1, n).sum(1)),
                 "launcher_l0_diff_vs_reference_first_256": diff(jp.jumprelu_probe(x16, g16).l0.view(s, -1, n).sum(1))}
    if takes_dtype:
        acts = encode_group_fused(x16[:sub], saes, n, group=g16, dtype="bfloat16")
        agreement["recheck_l0_diff_vs_reference_first_256"] = diff(torch.stack([a.offsets.diff() for a in acts]))
    times = interleaved(methods, samples, device)
    flops = 2 * n * d * s * m
    limit_ms = flops / PEAK_FLOPS * 1e3
    row = {"d": d, "m": m, "saes": s, "tokens": n, "samples": samples,
           "launches": {name: [str(grid) for grid, _, _ in recorded] for name, recorded in launches.items()},
           "limit_ms": limit_ms, "agreement": agreement,
           "recheck_status": "timed" if takes_dtype else "encode_group_fused takes no dtype (code before the recheck)"}
    for name, ms in times.items():
        median = statistics.median(ms)
        row[name] = {"median_ms": median, "samples_ms": ms, "tflops": flops / (median * 1e-3) / 1e12,
                     "vs_limit": limit_ms / median}
    if "cublas" in times:
        for name in times:
            row[name]["vs_cublas"] = row["cublas"]["median_ms"] / row[name]["median_ms"]
    return row


def gpu_name() -> str:
    found = re.search(r"[A-Z]\d{2,4}", torch.cuda.get_device_name())
    return found.group(0).lower() if found else "gpu"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="16k,65k")
    parser.add_argument("--tokens", default="4096,16384")
    parser.add_argument("--saes", default="1", help="SAEs per group (a list)")
    parser.add_argument("--samples", type=int, default=7, help="interleaved samples per method (>= 5)")
    parser.add_argument("--big", action="store_true", help="add width 1m")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes under TRITON_INTERPRET=1 (no GPU)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    env = environment()
    if args.dry_run:
        device, d, shapes, samples = ("cuda" if torch.cuda.is_available() and not jp.INTERPRET else "cpu"), 64, \
            [(160, 1, 48), (320, 2, 40)], 1
        out = args.out or HERE / "scratch" / "kernel_bench_dry_run.json"
    else:
        if not torch.cuda.is_available():
            print("kernel_bench times the kernel on a CUDA GPU, and there is none here: run it on a GPU, or check "
                  "the script with --dry-run (tiny shapes, Triton's interpreter)", file=sys.stderr)
            return 2
        if args.samples < 5:
            parser.error("--samples must be >= 5 (medians of at least 5 samples)")
        device, d, samples = "cuda", 2304, args.samples
        widths = [parse_width(w) for w in args.widths.split(",")] + ([parse_width("1m")] if args.big else [])
        shapes = [(m, s, n) for m in widths for s in (int(v) for v in args.saes.split(","))
                  for n in (int(t) for t in args.tokens.split(","))]
        env.update(device=torch.cuda.get_device_name(), triton=triton.__version__)
        out = args.out or HERE / "results" / f"kernel_bench_{gpu_name()}.json"
    rows = []
    header = ["m", "S", "N", "limit ms", *(f"{k} ms" for k in METHODS), "kernel/limit", "kernel/cublas",
              "cublas/limit", "L0 diffs fp32/bf16/recheck"]
    for m, s, n in shapes:
        row = bench_shape(d, m, s, n, device, samples)
        rows.append(row)
        wrong = {k: v for k, v in row["agreement"].items() if not k.startswith("launcher") and v}
        if wrong and args.dry_run:  # the fp32 path and the recheck must equal the reference, decision for decision
            print(f"kernel_bench: m {m} S {s} N {n}: L0s differ where they must be equal: {wrong}", file=sys.stderr)
            return 1
        if device == "cuda":
            torch.cuda.empty_cache()
        write_result(out, {"benchmark": "kernel_bench", "environment": env, "dry_run": args.dry_run, "rows": rows,
                           "peak_flops": PEAK_FLOPS, "partial": True})  # a run stopped at its limit keeps these
    table = [[r["m"], r["saes"], r["tokens"], f"{r['limit_ms']:.3f}",
              *(f"{r[k]['median_ms']:.3f}" if k in r else "-" for k in METHODS),
              f"{r['kernel']['vs_limit']:.2f}", f"{r['kernel']['vs_cublas']:.2f}", f"{r['cublas']['vs_limit']:.2f}",
              "/".join(str(r["agreement"].get(f"{k}_l0_diff_vs_reference_first_256", "-"))
                       for k in ("fp32", "launcher", "recheck"))]
             for r in rows]
    print(f"kernel_bench: medians of {samples} interleaved samples, limit = 2 N d S m / {PEAK_FLOPS / 1e12:.0f} TFLOP/s"
          + (" (dry run: interpreter times mean nothing)" if args.dry_run else ""))
    print_table(header, table)
    write_result(out, {"benchmark": "kernel_bench", "environment": env, "dry_run": args.dry_run, "rows": rows,
                       "peak_flops": PEAK_FLOPS})
    return 0


if __name__ == "__main__":
    sys.exit(main())
