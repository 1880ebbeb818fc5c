"""What the fused kernel compiles to on Hopper, checked on a CPU machine: every kept config of
`actstore.kernels.jumprelu_probe` is compiled for sm_90a with the installed Triton and its own ptxas (no GPU),
its SASS read back (`actstore.kernels.codegen`) and ptxas's own log read (`codegen.ptxas_report`).

Compiled (one process, two compiles at a time; `benchmarks/kernel_static.py`'s `tasks_for(..., kept_only=True)`):
the pinned bf16 config (the scoring path: RECHECK, inline-PTX stores, aligned offsets) at 1 and SPLITS shares
per SAE (1 is folded into the code, any other count is not), every tuned config of CONFIGS, and PINNED_FP32 on
the fp32 IEEE path at 1 and SPLITS shares; then three mutants and the widest class block.

Asserted per row (`problems`):
- it compiles, its shared memory fits an H100's 227 KB, and ptxas run here reports the cubin's registers and
  stack (so its log is the log of the code that was read);
- both GEMM operands load with 16-byte cp.async (or TMA) in the main loop, with no shared-memory store;
- the main loop has no spill and at most K_STEP_BOUND instructions per k-step;
- bf16: HGMMA, and the wgmma pipeline holds in the SASS: every `WARPGROUP.DEPBAR.LE gsb0, N` of the main
  loop has N >= 1, and ptxas gave no advisory C7514 (wgmma serialized). Triton's IR can say depth 1 while
  ptxas serializes every wgmma: the IR is not read;
- fp32: the dot is FFMA (no tensor cores) and the kernel uses no stack at all;
- stack: no stack beyond the spill slots (spill store bytes, the frame rounded to 16), and at most STACK_BOUND
  bytes per thread (0 for every tile that measures 0: the tuned 8-warp tiles and the fp32 tiles);
- epilogue: at most EPILOGUE_SPILL_BOUND spill instructions per latent tile and the instructions per tile
  under EPILOGUE_BOUND; two global stores per list entry a thread holds (index and value, inline PTX).

EPILOGUE_SPILL_BOUND = 96 per tile: the pinned 128x128x64 tile measures 49 at 1 share and 76 at 4 (Triton
3.9, ptxas 13.4) of about 1,970 epilogue instructions, under 5%, spilled to local memory that stays in L1 and
is hidden by the other warps; the list writes through `tl.store` measure 420 (a fifth of the epilogue,
with layout conversions through shared memory), and the bound sits well between. The pinned tile's 240-312
bytes of stack are those spill slots (255 registers); the 8-warp tuned tiles and the fp32 tile use none.

Mutants (source text substituted into a temporary module, or a launch value changed), each failing its check:
(a) W_enc's latent stride no longer specialized to the constant 1 (`do_not_specialize`): 2-byte scalar loads
of W_enc; (b) ASM_STORES=False, the `tl.store` list
writes: the epilogue's spill and instruction bounds; (c) 128x64x64 with 4 warps without RECHECK: ptxas
serializes its wgmmas (C7514, a wait of depth 0 in the main loop).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT / "kernels" / "jumprelu_probe.py"
PTXAS = Path(__import__("triton").__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"

K_STEP_BOUND = {(128, 128, 64): 160, (128, 64, 64): 150, (64, 128, 64): 140, (128, 128, 32): 110,
                (32, 16, 32): 250}
"""instructions per k-step of the main loop, per kept tile (BLOCK_N, BLOCK_M, BLOCK_K): about 1.2x measured
(Triton 3.9: 134, 120, 115, 92 in bf16; 212 for the fp32 tile with 128 FFMA)"""
EPILOGUE_BOUND = {(128, 128, 64): 2400, (128, 64, 64): 1350, (64, 128, 64): 1500, (128, 128, 32): 2300,
                  (32, 16, 32): 600}
"""epilogue instructions per latent tile, per thread: about 1.2x measured (1955-1982, 1086, 1218, 1900, 475)"""
EPILOGUE_SPILL_BOUND = 96
"""spill instructions per latent tile in the epilogue (the module docstring says why)"""
STACK_BOUND = {(128, 128, 64): 384, (128, 128, 32): 192}
"""stack bytes per thread (all spill slots), per tile; 0 for any other tile (measured: 240 and 312 at 1 and 4
shares, 336 with the 64-column class block; 144)"""
WIDE_CLASSES = 200
"""a class count past MAX_CLASS_BLOCK's first block: the widest class block (64 columns)"""

DRIVER = r"""
import json, sys
sys.path.insert(0, "benchmarks")
import kernel_static as ks
spec = json.loads(sys.argv[1])
tasks = ks.tasks_for(spec["kernel"], ["sm_90a"], kept_only=True)
module = ks.load_kernel(spec["kernel"])
wide = module.class_block(spec["wide"])
tasks += [ks.task(**{**t, **({"P": wide} if t.get("P") == "wide" else {})}) for t in spec["extra"]]
kept = [[role, ks.config_dict(c), dtype] for role, c, dtype in ks.kernel_configs(module)]
rows = ks.compile_all(tasks, "test", 2)
json.dump({"kept": kept, "configs": len(module.CONFIGS), "pinned_in_configs": module.PINNED in module.CONFIGS,
           "wide_block": wide, "rows": rows}, open(spec["out"], "w"))
"""


def mutate(source: str, old: str, new: str) -> str:
    assert source.count(old) == 1, f"the mutation's target {old!r} is not in the kernel once: update the test"
    return source.replace(old, new)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    """Every row: the kept configs (`tasks_for`), then the mutants and the wide class block, by role."""
    tmp = tmp_path_factory.mktemp("static")
    source = KERNEL.read_text()
    scalar = tmp / "jumprelu_probe_scalar.py"  # (a) W_enc's latent stride a runtime value, not the constant 1
    scalar.write_text(mutate(source, "@triton.jit\ndef _jumprelu_probe_kernel(",
                             '@triton.jit(do_not_specialize=["stride_wm"])\ndef _jumprelu_probe_kernel('))
    pinned = {"BLOCK_N": 128, "BLOCK_M": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}
    serialized = {"BLOCK_N": 128, "BLOCK_M": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile for a GPU, not interpret
    extra = [dict(path=str(scalar), target="sm_90a", role="mutant_scalar_loads", config=pinned),
             dict(path=str(KERNEL), target="sm_90a", role="mutant_tl_store", config=pinned, ASM_STORES=False),
             dict(path=str(KERNEL), target="sm_90a", role="mutant_serialized", config=serialized, RECHECK=False),
             dict(path=str(KERNEL), target="sm_90a", role="wide_classes", config=pinned, P="wide")]
    out = tmp / "rows.json"
    spec = {"kernel": str(KERNEL), "extra": extra, "out": str(out), "wide": WIDE_CLASSES}
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec)], capture_output=True, text=True,
                          timeout=280, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def problems(row: dict) -> list[str]:
    """What is wrong with one compiled row (empty: nothing); each entry names its check."""
    c, f, launch = row["config"], row["figures"], row["launch"]
    tile = (c["BLOCK_N"], c["BLOCK_M"], c["BLOCK_K"])
    if "error" in f:
        return [f"compile: {f['error']}"]
    found = []
    if not (f["fits"] and f["shared_bytes"] <= 227 * 1024):
        found.append(f"shared memory: {f['shared_bytes']} bytes")
    if not f["ptxas_matches_cubin"]:
        found.append("ptxas: its run reports other registers or stack than the cubin's")
    for operand in ("x", "w_enc"):
        load = f["operands"][operand]
        if load["kind"] not in ("cp.async", "tma") or load["bytes"] not in (16, 0) or load["shared_stores_per_k_step"]:
            found.append(f"loads: {operand} {load}")
    if f["spills_per_k_step"]:
        found.append(f"main-loop spills: {f['spills_per_k_step']}")
    if f["instructions_per_k_step"] > K_STEP_BOUND.get(tile, 0):
        found.append(f"k-step: {f['instructions_per_k_step']} instructions")
    if launch["dtype"] == "float32":
        if f["mma_op"] != "FFMA" or f["mma_per_k_step"] == 0 or f["stack_bytes"]:
            found.append(f"fp32: {f['mma_op']} x {f['mma_per_k_step']}, {f['stack_bytes']} bytes of stack")
    else:
        if f["mma_op"] != "HGMMA" or f["mma_per_k_step"] == 0:
            found.append(f"mma: {f['mma_op']} x {f['mma_per_k_step']}")
        if f["serialized"]:
            found.append("serialized: ptxas C7514, wgmma serialized")
        if f["wgmma_wait_depth"] is None or f["wgmma_wait_depth"] < 1:
            found.append(f"wait depth: SASS waits {f['wgmma_waits_per_k_step']} in the main loop")
    if f["stack_bytes"] > -(-f["spill_store_bytes"] // 16) * 16 or f["stack_bytes"] > STACK_BOUND.get(tile, 0):
        found.append(f"stack: {f['stack_bytes']} bytes ({f['spill_store_bytes']} of spill stores)")
    if f["epilogue_spills_per_tile"] > EPILOGUE_SPILL_BOUND:
        found.append(f"epilogue spills: {f['epilogue_spills_per_tile']} per tile")
    if f["epilogue_instructions_per_tile"] > EPILOGUE_BOUND.get(tile, 0):
        found.append(f"epilogue instructions: {f['epilogue_instructions_per_tile']} per tile")
    per_thread = c["BLOCK_N"] * c["BLOCK_M"] // (32 * c["num_warps"])
    if f["epilogue_global_stores_per_tile"] != 2 * per_thread:  # every entry a thread holds: index and value
        found.append(f"stores: {f['epilogue_global_stores_per_tile']} per tile, not {2 * per_thread}")
    return found


def rows_of(compiled: dict, role: str) -> list[dict]:
    rows = [r for r in compiled["rows"] if r["role"] == role]
    assert rows, f"no row of role {role}"
    return rows


def compiles(test):
    """A test that compiles for sm_90a: slow, and only where Triton has its NVIDIA tools."""
    return pytest.mark.slow(pytest.mark.skipif(not PTXAS.exists(), reason="this Triton has no NVIDIA tools")(test))


@compiles
def test_every_kept_config_compiles_clean_for_hopper_at_one_and_several_shares_and_in_fp32(compiled):
    kept = compiled["rows"][:-4]  # the mutants and the wide block come last
    assert [[r["role"], r["config"], r["launch"]["dtype"]] for r in kept if r["launch"]["splits"] == 1] == \
        compiled["kept"]  # every kept config: pinned, every other of CONFIGS, PINNED_FP32
    assert len(compiled["kept"]) == compiled["configs"] + 1 and compiled["pinned_in_configs"]
    several = [(r["role"], r["launch"]["dtype"]) for r in kept if r["launch"]["splits"] > 1]
    assert several == [("pinned", "bfloat16"), ("pinned_fp32", "float32")]
    assert all(r["launch"]["aligned"] for r in kept)
    for row in kept:
        assert problems(row) == [], (row["role"], row["config"], row["launch"], problems(row))


@compiles
def test_a_wide_class_block_compiles_as_well_as_the_narrow_one(compiled):
    """200 classes: the widest class block (64 columns, 4 launches) with the pinned tiles passes every check
    of the 32-column block (128 columns spilled in the main loop under Triton 3.9: MAX_CLASS_BLOCK stops at 64)."""
    [row] = rows_of(compiled, "wide_classes")
    assert row["overrides"]["P"] == compiled["wide_block"] == 64
    assert problems(row) == [], problems(row)


def checks_failed(row: dict) -> set[str]:
    return {p.split(":")[0] for p in problems(row)}


@compiles
def test_mutant_with_w_enc_scalar_loads_fails_the_load_check(compiled):
    [row] = rows_of(compiled, "mutant_scalar_loads")
    assert row["figures"]["operands"]["w_enc"]["bytes"] == 2, row["figures"]["operands"]
    assert "loads" in checks_failed(row), problems(row)


@compiles
def test_mutant_with_tl_store_list_writes_fails_the_epilogue_checks(compiled):
    [row] = rows_of(compiled, "mutant_tl_store")
    assert {"epilogue spills", "epilogue instructions"} <= checks_failed(row), problems(row)


@compiles
def test_mutant_serialized_config_fails_the_c7514_and_wait_depth_checks(compiled):
    [row] = rows_of(compiled, "mutant_serialized")
    assert {"serialized", "wait depth"} <= checks_failed(row), problems(row)


def test_reading_sass_loops_waits_and_load_widths():
    """The parser on a hand-written listing: a loop is a branch back to a label above it (nested loops
    found innermost first by length); loads are classified by opcode and width; wgmma waits read by depth."""
    from actstore.kernels import codegen

    instructions = [("MOV R1, R2", 10), ("LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R4.64]", 12),
                    ("HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24", 13), ("@!P0 BRA `(.L_x_1)", 11),
                    ("LDG.E.U16 R5, desc[UR4][R6.64]", 14), ("@P1 BRA `(.L_x_0)", 9), ("BRA `(.L_x_2)", 9),
                    ("EXIT", -1)]
    labels = {".L_x_0": 1, ".L_x_1": 1, ".L_x_2": 8}
    assert sorted(codegen.loops(instructions, labels), key=lambda s: s[1] - s[0]) == [(1, 3), (1, 5)]
    assert [codegen.load_kind(t) for t, _ in instructions[:5]] == [None, ("cp.async", 16), None, None, ("load", 2)]
    assert codegen.load_kind("@P2 UTMALDG.2D [UR8], [UR4]") == ("tma", 0)
    assert codegen.load_kind("LDGSTS.E.LTC128B.64 [R3], desc[UR4][R4.64]") == ("cp.async", 8)
    depths = [int(m.group(1), 0) for t in ("WARPGROUP.DEPBAR.LE gsb0, 0x1 ;", "WARPGROUP.DEPBAR.LE gsb0, 0x0",
                                           "DEPBAR.LE SB0, 0x2") if (m := codegen._DEPBAR.search(t))]
    assert depths == [1, 0]
