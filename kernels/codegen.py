"""Compile a Triton kernel for a GPU that is not there and read what it became: DESIGN.md's "Checking GPU
code without a GPU", as one importable place for `benchmarks/kernel_static.py` and the CI test.

    kernel = compile_for(fn, args, "sm_90a", num_warps=8, num_stages=3)     # args: the launch's values by name
    figures = analyse(kernel, "sm_90a", operands={"x": lines_of(fn, "x = tl.load("), ...})
    report = ptxas_report(kernel, "sm_90a")      # what ptxas says of the same PTX: stack, spills, C7514

`compile_for` specializes exactly as a launch would (Triton's own argument binder: 16-byte aligned pointers,
integers divisible by 16 marked so, integers equal to 1 folded), then `triton.compile`s for the target
(sm_90a: Hopper, wgmma; sm_80: Ampere, mma.sync). `analyse` reads the cubin's SASS (with source lines, from
the triton wheel's `nvdisasm`) and resource usage (`cuobjdump`):
- loops are the backward branches; the main loop is the innermost loop that holds the first GEMM's MMA
  instructions, and the tile loop the smallest loop around it. Instructions per k-step = the main loop's
  length; epilogue instructions per tile = the tile loop's length less the main loop's (one pass, per thread:
  SASS is per-warp code, so per warp too);
- each GEMM operand's loads are the load instructions whose source line lies in that operand's statement:
  LDGSTS (cp.async) or LDG (a plain load, then a shared-memory store) with its width in bytes, or UTMALDG
  (TMA);
- spills are local-memory instructions (STL/LDL); Triton kernels have no local arrays, so the stack frame
  is all spill;
- the wgmma pipeline depth is read from the SASS, not from Triton's IR: the `WARPGROUP.DEPBAR.LE gsb0, N`
  waits in the main loop (N >= 1: the next k-step's MMAs are issued before this one's are waited on). ptxas
  may serialize what the IR pipelined (a wait of 0 after every wgmma) and says so only in its own log,
  advisory C7514, which `ptxas_report` reads by running Triton's ptxas on the kernel's PTX with Triton's
  flags, together with the stack frame and spill bytes of `ptxas -v`.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import tempfile
import textwrap
from pathlib import Path

import torch

SHARED_LIMIT = {"sm_90a": 232448, "sm_80": 166912}
"""Shared memory one block may use, bytes: H100 227 KB, A100 163 KB (opt-in maxima, CUDA guide table 21)."""
CAPABILITY = {"sm_90a": 90, "sm_80": 80}

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LINE = re.compile(r'//## File "(.*)", line (\d+)')
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA\b.*\(\s*(\.L_x_\d+)\s*\)")
_DEPBAR = re.compile(r"WARPGROUP\.DEPBAR\.LE\s+gsb0\s*,\s*(0x[0-9a-f]+|\d+)")
_ADVISORY = re.compile(r"\((C\d{4})\)\s*(.*)")
_PROPERTIES = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _jit(fn):
    """The JITFunction itself, under any autotuner or heuristics wrappers."""
    from triton.runtime.jit import JITFunction

    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def compile_for(fn, args: dict, target: str, num_warps: int, num_stages: int):
    """triton.compile `fn` (a @triton.jit function, or an autotuner around one) for `target` ("sm_90a" or
    "sm_80"). `args` maps every parameter to its launch value: a torch.dtype stands for a tensor of that
    dtype (16-byte aligned, as the caching allocator gives), ints and floats as they would be passed."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import MockTensor, create_function_from_signature

    fn = _jit(fn)
    missing = [name for name in fn.arg_names if name not in args]
    if missing:
        raise ValueError(f"compile_for needs a value for every parameter of {fn.__name__}; missing {missing}")
    gpu = GPUTarget("cuda", CAPABILITY[target], 32)
    backend = make_backend(gpu)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    values = [MockTensor(v) if isinstance(v, torch.dtype) else v for v in (args[name] for name in fn.arg_names)]
    options = {"num_warps": num_warps, "num_stages": num_stages}
    bound, specialization, opts = binder(*values, **options)
    opts, signature, constexprs, attrs = fn._pack_args(backend, options, bound, specialization, opts)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=gpu, options=opts.__dict__)


def lines_of(fn, marker: str) -> list[int]:
    """Lines (of the kernel's file) of every statement in `fn` whose text contains `marker`: where a compiled
    instruction of that statement is attributed."""
    py = _jit(fn).fn
    source, first = inspect.getsourcelines(py)
    text = "".join(source)
    tree = ast.parse(textwrap.dedent(text))
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and not isinstance(node, (ast.FunctionDef, ast.For, ast.If, ast.While)):
            segment = "".join(source[node.lineno - 1:node.end_lineno])
            if marker in segment:
                found.update(range(node.lineno + first - 1, node.end_lineno + first))
    if not found:
        raise ValueError(f"no statement of {py.__name__} contains {marker!r}")
    return sorted(found)


def sass(cubin: bytes) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """The cubin's instructions as (text, line of the kernel's file, or -1 for Triton's own library code) and its
    labels (name -> index of the next instruction). Lines, not paths: a kernel from Triton's cache carries the
    path of the copy it was first compiled from."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        listing = subprocess.run([_tool("nvdisasm"), "-g", "-c", f.name], capture_output=True, text=True,
                                 check=True).stdout
    instructions, labels, line = [], {}, -1
    for raw in listing.splitlines():
        if m := _LINE.search(raw):
            line = -1 if "/triton/language/" in m.group(1).replace("\\", "/") else int(m.group(2))
        elif m := _LABEL.match(raw.strip()):
            labels[m.group(1)] = len(instructions)
        elif m := _INSTR.search(raw):
            instructions.append((m.group(2), line))
    return instructions, labels


def resources(cubin: bytes) -> dict:
    """Registers and stack (spill) bytes per thread, from cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    found = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {"registers": int(found["REG"]), "stack_bytes": int(found["STACK"]) + int(found["LOCAL"])}


def loops(instructions: list[tuple[str, int]], labels: dict[str, int]) -> list[tuple[int, int]]:
    """(first, last) instruction indices of every loop: a branch back to a label above it."""
    found = []
    for i, (text, _) in enumerate(instructions):
        if (m := _BRANCH.search(text)) and labels.get(m.group(1), i + 1) <= i:
            found.append((labels[m.group(1)], i))
    return found


def load_kind(text: str) -> tuple[str, int] | None:
    """('cp.async' | 'load' | 'tma', bytes per instruction) of a global-memory load instruction, else None."""
    op = _opcode(text)
    if op.startswith("UTMALDG"):
        return "tma", 0
    if not (op.startswith("LDGSTS") or op.startswith("LDG.")):
        return None
    width = 4
    for suffix, size in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if suffix in op:
            width = size
    return ("cp.async" if op.startswith("LDGSTS") else "load"), width


def _opcode(text: str) -> str:
    parts = text.split()
    return parts[1] if parts[0].startswith("@") else parts[0]


def analyse(kernel, target: str, operands: dict[str, list[int]], mma: str | None = None) -> dict:
    """The static figures of a compiled kernel (see the module docstring). `operands`: name -> source
    lines of the statement that loads that GEMM operand (`lines_of`). mma: the main loop's multiply
    instruction, by default the target's tensor-core MMA (HGMMA on sm_90a, HMMA on sm_80); "FFMA" for an
    fp32 IEEE dot, which runs on the CUDA cores. wgmma_waits_per_k_step: the depth N of
    every `WARPGROUP.DEPBAR.LE gsb0, N` in the main loop (sm_90a; empty for mma.sync, which has no async
    wait); wgmma_wait_depth: the smallest of them (0: some wgmma of the k-step is waited on before the next
    is issued; None without a wait)."""
    cubin = kernel.asm["cubin"]
    instructions, labels = sass(cubin)
    mma = mma or ("HGMMA" if target == "sm_90a" else "HMMA")
    found = sorted(loops(instructions, labels), key=lambda span: span[1] - span[0])
    operand_lines = {line for lines in operands.values() for line in lines}

    def holds_gemm(span):  # the main loop: the innermost loop with MMAs that load the operands
        body = instructions[span[0]:span[1] + 1]
        return any(_opcode(t).startswith(mma) for t, _ in body) and any(line in operand_lines for _, line in body)

    main = next((span for span in found if holds_gemm(span)), None)
    if main is None:
        raise ValueError("no loop holds the GEMM's MMA instructions and operand loads; is this the kernel?")
    tile = next((s for s in found if s[0] <= main[0] and s[1] >= main[1] and s != main), None)
    body = instructions[main[0]:main[1] + 1]
    per_operand = {}
    for name, lines in operands.items():
        mine = [t for t, line in body if line in set(lines)]
        kinds = [k for k in map(load_kind, mine) if k is not None]
        stores = sum(1 for t in mine if _opcode(t).startswith("STS"))
        per_operand[name] = {
            "kind": "+".join(sorted({k for k, _ in kinds})) or "none",
            "bytes": min((w for _, w in kinds), default=0),
            "loads_per_k_step": len(kinds), "shared_stores_per_k_step": stores,
        }

    def count(span, pred):
        return sum(1 for t, _ in instructions[span[0]:span[1] + 1] if pred(_opcode(t)))

    spill = lambda op: op.startswith(("STL", "LDL"))  # noqa: E731
    res = resources(cubin)
    shared = int(kernel.metadata.shared)
    figures = {
        **res, "shared_bytes": shared, "shared_limit": SHARED_LIMIT[target], "fits": shared <= SHARED_LIMIT[target],
        "sass_instructions": len(instructions),
        "mma_op": mma, "mma_per_k_step": count(main, lambda op: op.startswith(mma)),
        "mma_total": sum(1 for t, _ in instructions if _opcode(t).startswith(mma)),
        "instructions_per_k_step": main[1] - main[0] + 1,
        "spills_per_k_step": count(main, spill),
        "operands": per_operand,
    }
    if tile is not None:  # the tile loop less the main loop: once per latent tile
        for name, pred in (("instructions", lambda op: True), ("spills", spill),
                           ("barriers", lambda op: op.startswith("BAR")),
                           ("global_stores", lambda op: op.startswith("STG"))):
            figures[f"epilogue_{name}_per_tile"] = count(tile, pred) - count(main, pred)
    waits = [int(m.group(1), 0) for t, _ in body if (m := _DEPBAR.search(t))]
    figures["wgmma_waits_per_k_step"] = waits
    figures["wgmma_wait_depth"] = min(waits, default=None)
    figures["wgmma_arrives_per_k_step"] = count(main, lambda op: op.startswith("WARPGROUP.ARRIVE"))
    return figures


def ptxas_report(kernel, target: str) -> dict:
    """What ptxas says of the kernel's PTX, run as Triton runs it for `target` (its ptxas binary, line info,
    register allocation level, fp fusion and ptx options, `-v`) plus --warn-on-spills: registers, stack
    frame and spill store/load bytes per thread, and the advisories by code, e.g. C7514 ("wgmma.mma_async
    instructions are serialized ..."), which appears nowhere in the cubin or the IR. `serialized` is whether
    C7514 was given. The binary is Triton's choice for the target: for sm_90a Triton 3.9 runs its
    `ptxas-blackwell` (CUDA 13.4); its `ptxas` (12.9) rejects the PTX's version."""
    from triton import knobs
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(CAPABILITY[target]).path
    options = kernel.metadata
    flags = ["-lineinfo"] if not knobs.compilation.disable_line_info else ["-lineinfo", "-suppress-debug-info"]
    flags += [] if options.enable_fp_fusion else ["--fmad=false"]
    flags += ["-v", "--warn-on-spills", "--regAllocOptLevel=2", *(options.ptx_options or "").split()]
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(kernel.asm["ptx"])
        done = subprocess.run([ptxas, *flags, f"--gpu-name={target}", str(ptx), "-o", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True)
    log = done.stderr + done.stdout
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed on the kernel's PTX ({target}), rc {done.returncode}:\n{log[-2000:]}")
    properties = _PROPERTIES.search(log)
    registers = re.search(r"Used (\d+) registers", log)
    if properties is None or registers is None:
        raise ValueError(f"ptxas -v printed no function properties; its log:\n{log[-2000:]}")
    advisories = sorted({m.group(1) for line in log.splitlines() if (m := _ADVISORY.search(line))})
    stack, stores, loads = map(int, properties.groups())
    return {"registers": int(registers.group(1)), "stack_bytes": stack, "spill_store_bytes": stores,
            "spill_load_bytes": loads, "advisories": advisories, "serialized": "C7514" in advisories,
            "ptxas": Path(ptxas).name}
