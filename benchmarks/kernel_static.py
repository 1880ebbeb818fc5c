"""What the fused JumpReLU + probe kernel compiles to on Hopper (sm_90a) and Ampere (sm_80), on a CPU machine.

    python benchmarks/kernel_static.py                       # the kernel as it is, both targets
    python benchmarks/kernel_static.py --baseline main       # and the kernel file at a git ref, for before/after
    python benchmarks/kernel_static.py --targets sm_90a --kept-only --out /tmp/k.json     # the CI test's rows

Every kept config of `actstore.kernels.jumprelu_probe` is compiled with the installed Triton for each target
at a Gemma Scope launch: d_model 2304, 4096 tokens, list capacity 64, one 16k SAE. The pinned config and the
tuned ones (CONFIGS) on the bf16 scoring path (RECHECK, inline-PTX stores, aligned offsets), the pinned one
also at SPLITS shares per SAE (1 is folded into the code, other counts are not), at 1M latents split 17 ways
and on the unaligned path; PINNED_FP32 on the fp32 IEEE path at 1 and SPLITS shares. Widths enter only as
runtime values, so 16k and 1M compile to the same code; the JSON shows it. Figures per compile
(`actstore.kernels.codegen`): registers and stack bytes per thread, spill store bytes, shared memory and
whether it fits the target, MMA instructions (HGMMA on sm_90a, HMMA on sm_80, FFMA for the fp32 dot), the
load instructions and width of each GEMM operand in the main loop (cp.async, TMA or plain loads),
instructions and spills per k-step of the main loop, the wgmma wait depth read from the SASS
(`WARPGROUP.DEPBAR.LE gsb0, N` in the main loop), whether ptxas serialized the wgmmas (advisory C7514, from
ptxas's own log), epilogue instructions, spills and barriers per latent tile. Static counts of SASS
instructions, per thread (per warp). The CI test (tests/test_kernel_static.py) compiles the same rows
(`tasks_for(..., kept_only=True)`) and three mutants.

Table columns: regs, stack (bytes per thread), spill (spill store bytes), smem, mma (per k-step), kstep
(instructions per k-step), kspl (spills per k-step), wait (smallest wgmma wait depth in the main loop; -
without wgmma), C7514, epil / espl / ebar (epilogue instructions, spills, barriers per latent tile).

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
SPLITS = 4
"""shares per SAE of a single-SAE launch (the launcher's split for 4096 tokens of a 16k SAE on an H100): any
value above 1 compiles alike (a runtime integer), 1 is folded into the code"""
OPERANDS = {"x": "x = tl.load(", "w_enc": "w = tl.load("}
"""each GEMM operand's load statement in the kernel's source"""


def launch_args(kernel_module, config: dict, width: int, splits: int, aligned: bool, dtype: str = "bfloat16",
                **overrides) -> dict:
    """The values a launch passes, by parameter name (parameters the kernel lacks are ignored). `config`: the
    tiles and constexprs (a triton.Config's kwargs); dtype: the tokens' and W_enc's ("bfloat16": tensor
    cores, candidates rechecked in fp32 when the kernel has RECHECK; "float32": the IEEE path); `overrides`
    replace any value (a mutant's ASM_STORES=False, a wider class block P)."""
    f32, i32 = torch.float32, torch.int32
    operand = {"bfloat16": torch.bfloat16, "float32": f32}[dtype]
    values = dict(
        x_ptr=operand, w_ptr=operand, b_ptr=f32, thr_ptr=f32, scale_ptr=f32, enorm_ptr=f32, xmax_ptr=f32,
        xnorm_ptr=f32, v_ptr=f32, off_ptr=i32,
        proj_ptr=f32, l0_ptr=i32, near_ptr=i32, idx_ptr=i32, val_ptr=f32,
        N=TOKENS, D=D_MODEL, CAP=CAPACITY, flip_tol=1.6e-2, flip_abs=1e-6, band=1e-2, n_key=TOKENS, splits=splits,
        stride_xn=D_MODEL, stride_xd=1, stride_wd=width, stride_wm=1,
        SPLITS=splits, P=kernel_module.P_PAD, IEEE=dtype == "float32", RECHECK=dtype != "float32",
        ALIGNED=aligned, ASM_STORES=True, UPCAST=False, GROUP_N=getattr(kernel_module, "GROUP_N", 8), **config)
    return {**values, **overrides}


def kernel_configs(kernel_module) -> list[tuple[str, triton.Config, str]]:
    """(role, config, dtype) of every config the kernel module keeps: the pinned one (bf16 scoring), the
    tuned ones (`CONFIGS`, the autotuner's, bf16) that differ from it, and the pinned fp32 one (`PINNED_FP32`;
    a kernel file without one launched fp32 tokens with `PINNED`)."""
    def same(a, b):
        return (a.kwargs, a.num_warps, a.num_stages) == (b.kwargs, b.num_warps, b.num_stages)

    pinned = kernel_module.PINNED
    fp32 = getattr(kernel_module, "PINNED_FP32", pinned)
    return [("pinned", pinned, "bfloat16")] + \
        [("tuned", c, "bfloat16") for c in kernel_module.CONFIGS if not same(c, pinned)] + \
        [("pinned_fp32", fp32, "float32")]


def config_dict(config: triton.Config) -> dict:
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def load_kernel(path: str):
    """The kernel module in file `path`, imported under its file's name."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def task(path: str, target: str, role: str, config: dict, width: int = 16384, splits: int = 1,
         aligned: bool = True, dtype: str = "bfloat16", **overrides) -> dict:
    """One compile: the kernel in file `path`, `config` (`config_dict`) at one launch, `overrides` of
    `launch_args`. Plain data, so a process pool can take it."""
    return {"path": path, "target": target, "role": role, "config": config,
            "launch": {"d_model": D_MODEL, "tokens": TOKENS, "capacity": CAPACITY, "width": width,
                       "splits": splits, "aligned": aligned, "dtype": dtype}, "overrides": overrides}


def compile_task(spec: dict) -> dict:
    """A `task` compiled and read: the row, with the compile's figures (`codegen.analyse`) and what ptxas said
    of its PTX (`codegen.ptxas_report`: stack, spill bytes, C7514)."""
    kernel_module = load_kernel(spec["path"])
    config, launch = dict(spec["config"]), spec["launch"]
    warps, stages = config.pop("num_warps"), config.pop("num_stages")
    fn = kernel_module._jumprelu_probe_kernel
    t0 = time.perf_counter()
    try:
        args = launch_args(kernel_module, config, launch["width"], launch["splits"], launch["aligned"],
                           launch["dtype"], **spec["overrides"])
        kernel = codegen.compile_for(fn, args, spec["target"], warps, stages)
        operands = {name: codegen.lines_of(fn, marker) for name, marker in OPERANDS.items()}
        mma = "FFMA" if launch["dtype"] == "float32" else None  # the IEEE dot: no tensor cores
        figures = codegen.analyse(kernel, spec["target"], operands, mma)
        report = codegen.ptxas_report(kernel, spec["target"])
        # ptxas run here as Triton ran it: the same registers and stack as the cubin's, else the flags differ
        figures["ptxas_matches_cubin"] = (report["registers"], report["stack_bytes"]) == \
            (figures["registers"], figures["stack_bytes"])
        figures.update(report)
    except Exception as err:  # a config that does not compile is a result, not a crash
        figures = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    return {"target": spec["target"], "role": spec["role"], "config": spec["config"], "launch": launch,
            "overrides": spec["overrides"], "compile_seconds": round(time.perf_counter() - t0, 1),
            "figures": figures}


def tasks_for(path: str, targets: list[str], kept_only: bool) -> list[dict]:
    """Every kept config of the kernel in file `path` for each target at the aligned 16k launch; the pinned
    bf16 config also at SPLITS shares, the pinned fp32 one at 1 and SPLITS. Without kept_only, the pinned
    config also at 1M latents split 17 ways and on the unaligned path."""
    tasks = []
    for target in targets:
        for role, config, dtype in kernel_configs(load_kernel(path)):
            splits = [1, SPLITS] if role.startswith("pinned") else [1]
            launches = [dict(splits=k, dtype=dtype) for k in splits]
            if role == "pinned" and not kept_only:
                launches += [dict(width=1 << 20, splits=17), dict(aligned=False)]
            tasks += [task(path, target, role, config_dict(config), **launch) for launch in launches]
    return tasks


def compile_all(tasks: list[dict], label: str, jobs: int) -> list[dict]:
    """Every task compiled, `jobs` at a time (processes: Triton's compile holds the GIL), printed as it comes."""
    rows = []
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in pool.map(compile_task, tasks):
            rows.append({"kernel": label, **row})
            print_row(rows[-1])
    return rows


HEADER = (f"{'kernel':8s} {'target':6s} {'role':11s} {'config':18s} {'launch':14s} regs stack spill  smem mma "
          f"kstep kspl wait C7514  epil espl ebar  operands")


def print_row(row: dict) -> None:
    c, f, launch = row["config"], row["figures"], row["launch"]
    name = f"{c['BLOCK_N']}x{c['BLOCK_M']}x{c['BLOCK_K']} w{c['num_warps']} s{c['num_stages']}"
    where = f"{'fp32' if launch['dtype'] == 'float32' else 'bf16'} {launch['width'] >> 10}k/{launch['splits']}" \
            f"{'' if launch['aligned'] else ' un'}"
    extra = " ".join(f"{k}={v}" for k, v in row.get("overrides", {}).items())
    tag = f"{row['kernel'][:8]:8s} {row['target']:6s} {row['role']:11s} {name:18s} {where:14s}"
    if "error" in f:
        print(f"{tag} ERROR {f['error']} {extra}")
        return
    ops = " ".join(f"{k}:{v['kind']}{v['bytes']}B" for k, v in f["operands"].items())
    wait = "-" if f["wgmma_wait_depth"] is None else str(f["wgmma_wait_depth"])
    print(f"{tag} {f['registers']:4d} {f['stack_bytes']:5d} {f['spill_store_bytes']:5d} "
          f"{f['shared_bytes'] // 1024:4d}K{'' if f['fits'] else '!':1s}{f['mma_per_k_step']:3d} "
          f"{f['instructions_per_k_step']:5d} {f['spills_per_k_step']:4d} {wait:>4s} "
          f"{'yes' if f['serialized'] else 'no':>5s} {f.get('epilogue_instructions_per_tile', -1):5d} "
          f"{f.get('epilogue_spills_per_tile', -1):4d} {f.get('epilogue_barriers_per_tile', -1):4d}  {ops} {extra}")


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
                        help="the rows the CI test checks: each kept config at the aligned 16k launch, the pinned "
                             "ones also at SPLITS shares")
    parser.add_argument("--jobs", type=int, default=2, help="compiles at a time (processes)")
    parser.add_argument("--out", default=str(HERE / "results" / "kernel_static.json"))
    args = parser.parse_args()
    targets = args.targets.split(",")
    unknown = sorted(set(targets) - set(codegen.CAPABILITY))
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {sorted(codegen.CAPABILITY)}")

    print(HEADER)
    result = {"benchmark": "kernel_static", "environment": environment(),
              "rows": [], "baseline": []}
    if args.baseline:
        path, label = kernel_file_at(args.baseline)
        result["baseline"] = compile_all(tasks_for(path, targets, args.kept_only), label, args.jobs)
    if not args.skip_current:
        path = str(ROOT / "kernels" / "jumprelu_probe.py")
        result["rows"] = compile_all(tasks_for(path, targets, args.kept_only), "current", args.jobs)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
