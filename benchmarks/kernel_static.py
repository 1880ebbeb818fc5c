"""What the fused JumpReLU + probe kernel compiles to on Hopper (sm_90a) and Ampere (sm_80), on a CPU machine.

    python benchmarks/kernel_static.py                       # the kernel as it is, both targets
    python benchmarks/kernel_static.py --baseline main       # and the kernel file at a git ref, for before/after
    python benchmarks/kernel_static.py --targets sm_90a --kept-only --out /tmp/k.json     # the CI test's run

Every kept config of `actstore.kernels.jumprelu_probe` (the pinned one first) is compiled with the installed
Triton for each target at a Gemma Scope launch: bf16 tokens, d_model 2304, 4096 tokens, list capacity 64,
one SAE; the pinned config also at 1M latents split 17 ways (the launcher's split for 4096 tokens on an
H100) and on the unaligned path. Widths enter only as runtime values (offsets, W_enc's row stride), so 16k
and 1M compile to the same code; the JSON shows it. Figures per compile (`actstore.kernels.codegen`):
registers and spill bytes per thread, shared memory and whether it fits the target, MMA instructions
(HGMMA on sm_90a, HMMA on sm_80), the load instructions and width of each GEMM operand in the main loop
(cp.async, TMA or plain loads), instructions per k-step of the main loop, epilogue instructions, spills and
barriers per latent tile, and the `warp_group_dot_wait` depths. Static counts of SASS instructions, per
thread (per warp).

Writes benchmarks/results/kernel_static.json (the baseline's figures under "baseline").
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import triton  # noqa: E402

from actstore.kernels import codegen  # noqa: E402
from store_bench import write_result  # noqa: E402

D_MODEL, TOKENS, CAPACITY = 2304, 4096, 64
OPERANDS = {"x": "x = tl.load(", "w_enc": "w = tl.load("}
"""each GEMM operand's load statement in the kernel's source"""


def launch_args(kernel_module, config: triton.Config, width: int, splits: int, aligned: bool) -> dict:
    """The values a launch passes, by parameter name (parameters the kernel lacks are ignored)."""
    f32, i32, bf16 = torch.float32, torch.int32, torch.bfloat16
    values = dict(
        x_ptr=bf16, w_ptr=bf16, b_ptr=f32, thr_ptr=f32, scale_ptr=f32, enorm_ptr=f32, xmax_ptr=f32, v_ptr=f32,
        off_ptr=i32,
        proj_ptr=f32, l0_ptr=i32, near_ptr=i32, idx_ptr=i32, val_ptr=f32,
        N=TOKENS, D=D_MODEL, CAP=CAPACITY, flip_tol=1.6e-2, flip_abs=1e-6, n_key=TOKENS, splits=splits,
        stride_xn=D_MODEL, stride_xd=1, stride_wd=width, stride_wm=1,
        SPLITS=splits, P=kernel_module.P_PAD, IEEE=False, ALIGNED=aligned, ASM_STORES=True, **config.kwargs)
    return values


def kernel_configs(kernel_module) -> list[tuple[str, triton.Config]]:
    pinned = getattr(kernel_module, "PINNED", None)
    kept = [("pinned", pinned)] if pinned is not None else []
    return kept + [("tuned", c) for c in kernel_module.CONFIGS if pinned is None or c.kwargs != pinned.kwargs
                   or c.num_warps != pinned.num_warps or c.num_stages != pinned.num_stages]


def load_kernel(path: str):
    """The kernel module in file `path`, imported under its file's name."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_one(path: str, target: str, role: str, index: int, width: int, splits: int, aligned: bool) -> dict:
    """One row: config `index` of `kernel_configs` of the kernel in file `path`, compiled and read."""
    kernel_module = load_kernel(path)
    config = kernel_configs(kernel_module)[index][1]
    fn = kernel_module._jumprelu_probe_kernel
    t0 = time.perf_counter()
    try:
        kernel = codegen.compile_for(fn, launch_args(kernel_module, config, width, splits, aligned), target,
                                     config.num_warps, config.num_stages)
        operands = {name: codegen.lines_of(fn, marker) for name, marker in OPERANDS.items()}
        figures = codegen.analyse(kernel, target, operands)
    except Exception as err:  # a config that does not compile is a result, not a crash
        figures = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    return {"target": target, "role": role,
            "config": {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages},
            "launch": {"d_model": D_MODEL, "tokens": TOKENS, "capacity": CAPACITY, "width": width, "splits": splits,
                       "aligned": aligned, "dtype": "bfloat16"},
            "compile_seconds": round(time.perf_counter() - t0, 1), "figures": figures}


def measure(path: str, targets: list[str], label: str, kept_only: bool, jobs: int) -> list[dict]:
    """Every kept config of the kernel in file `path` for each target, `jobs` compiles at a time."""
    tasks = []
    for target in targets:
        for index, (role, _) in enumerate(kernel_configs(load_kernel(path))):
            launches = [(16384, 1, True)]
            if role == "pinned" and not kept_only:
                launches += [(1 << 20, 17, True), (16384, 1, False)]
            tasks += [(path, target, role, index, *launch) for launch in launches]
    rows = []
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in pool.map(compile_one, *zip(*tasks)):
            rows.append({"kernel": label, **row})
            print_row(rows[-1])
    return rows


def print_row(row: dict) -> None:
    c, f, launch = row["config"], row["figures"], row["launch"]
    name = f"{c['BLOCK_N']}x{c['BLOCK_M']}x{c['BLOCK_K']} w{c['num_warps']} s{c['num_stages']}"
    tag = f"{row['kernel'][:8]:8s} {row['target']:6s} {row['role']:6s} {name:20s} " \
          f"m={launch['width'] >> 10}k/{launch['splits']}{'' if launch['aligned'] else ' unal'}"
    if "error" in f:
        print(f"{tag:58s} ERROR {f['error']}")
        return
    ops = " ".join(f"{k}:{v['kind']}{v['bytes']}B" for k, v in f["operands"].items())
    print(f"{tag:58s} {f['registers']:4d} {f['spill_bytes']:6d} {f['shared_bytes'] // 1024:5d}K"
          f"{'' if f['fits'] else '!':1s} {f['mma_per_k_step']:3d} {f['instructions_per_k_step']:5d} "
          f"{f['spills_per_k_step']:3d} {f.get('epilogue_instructions_per_tile', -1):6d} "
          f"{f.get('epilogue_spills_per_tile', -1):4d} {f.get('epilogue_barriers_per_tile', -1):4d}  {ops}  "
          f"waits {f.get('dot_wait_pendings')}")


def kernel_file_at(ref: str) -> tuple[str, str]:
    """kernels/jumprelu_probe.py as it is at git `ref`, written to a temporary file: (path, label)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:kernels/jumprelu_probe.py"], check=True,
                            capture_output=True, text=True).stdout
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], check=True, capture_output=True,
                         text=True).stdout.strip()
    path = Path(tempfile.mkdtemp()) / f"jumprelu_probe_{sha}.py"
    path.write_text(source)
    return str(path), f"{ref}@{sha}"


def environment() -> dict:
    import datetime
    import platform

    return {"device": "none: static compilation for sm_90a / sm_80 on a CPU machine",
            "python": platform.python_version(),
            "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="sm_90a,sm_80")
    parser.add_argument("--baseline", default=None, help="also compile kernels/jumprelu_probe.py at this git ref")
    parser.add_argument("--skip-current", action="store_true", help="only the baseline")
    parser.add_argument("--kept-only", action="store_true",
                        help="each kept config once, at the aligned 16k launch (what the CI test checks)")
    parser.add_argument("--jobs", type=int, default=2, help="compiles at a time (processes)")
    parser.add_argument("--out", default=str(HERE / "results" / "kernel_static.json"))
    args = parser.parse_args()
    targets = args.targets.split(",")
    unknown = sorted(set(targets) - set(codegen.CAPABILITY))
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {sorted(codegen.CAPABILITY)}")

    print(f"{'kernel':8s} {'target':6s} {'role':6s} {'config':20s} {'launch':10s}"
          f"{'':12s}regs spillB  smem mma k-step kspl  epil espl ebar  operands")
    result = {"benchmark": "kernel_static", "environment": environment(),
              "rows": [], "baseline": []}
    if args.baseline:
        path, label = kernel_file_at(args.baseline)
        result["baseline"] = measure(path, targets, label, args.kept_only, args.jobs)
    if not args.skip_current:
        result["rows"] = measure(str(ROOT / "kernels" / "jumprelu_probe.py"), targets, "current", args.kept_only,
                                 args.jobs)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
