"""Does actstore's absorption track absorption that emerges in trained SAEs? The ground-truth table (issue 22).

    python benchmarks/groundtruth.py [--out DIR] [--size N] [--workers 2] [--seeds 5]

Runs `actstore synth-world` on two worlds, each 15 SAEs of five architectures trained by sae-lens: `few` (26 parents
with 3 children each: each child is a large share of its parent's rows) and `many` (8 parents with 16 children
each: each child a small share, as one word is of its first letter's). For each: the ground-truth absorption,
actstore's measurement with intervals and nulls, the table per SAE and the agreement per architecture; then the
L1 solver's seed spread on these trained (messy) SAEs: --seeds seeds under `saebench` and one `converged` run.
Writes benchmarks/results/groundtruth.json (with the device, versions and date) and, per world,
benchmarks/results/groundtruth_<world>.csv and docs/img/groundtruth_<world>.png. A rerun with the same --out resumes (trained SAEs and scores are kept).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "img"
"""The figures go beside the docs that show them (README.md and docs/groundtruth.md)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/actstore_groundtruth", help="the world's folder (kept for resuming)")
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5, help="L1-probe seeds for the solver spread (0: skip it)")
    args = parser.parse_args()

    import torch

    from actstore.world.run import SynthWorldConfig, synth_world

    record: dict = {"worlds": {}, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else
                    f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
                    "versions": {p: version(p) for p in ("torch", "sae-lens", "actstore")},
                    "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(exist_ok=True)
    for name, (parents, children) in WORLDS.items():
        out = Path(args.out) / name
        start = time.perf_counter()
        table = synth_world(SynthWorldConfig(out=str(out), size=args.size, workers=args.workers,
                                             bootstrap=args.bootstrap, parents=parents, children=children),
                            progress=sys.stderr.isatty())
        seconds = time.perf_counter() - start
        print(f"\nworld {name}: {parents} parents x {children} children")
        print_table(table)
        world = json.loads((out / "world.json").read_text())
        trained = [json.loads(p.read_text()) for p in sorted((out / "saes").glob("*/training.json"))]
        record["worlds"][name] = {**table, "world_spec": world["spec"], "max_feature_cos": world["max_feature_cos"],
                                  "train_seconds": {t["name"]: t["train_seconds"] for t in trained},
                                  "run_seconds": round(seconds, 1)}
        if args.seeds > 1:
            record["worlds"][name]["solver_spread"] = solver_spread(out, world, args.seeds)
        shutil.copyfile(out / "groundtruth.csv", RESULTS / f"groundtruth_{name}.csv")
        FIGURES.mkdir(exist_ok=True)
        shutil.copyfile(out / "groundtruth.png", FIGURES / f"groundtruth_{name}.png")
        (RESULTS / "groundtruth.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"-> {RESULTS / 'groundtruth.json'}, groundtruth_<world>.csv; {FIGURES}/groundtruth_<world>.png")
    return 0


WORLDS = {"few": (26, 3), "many": (8, 16)}
"""World name -> (parents, children per parent)."""


def solver_spread(out: Path, world: dict, seeds: int) -> dict:
    """Per SAE: the range over `seeds` L1-probe seeds (saebench) of the mean absorption fraction and full absorption,
    and the difference between the first seed's value and the converged solver's."""
    import pandas as pd

    from actstore.api import score_saes
    from actstore.world.build import TEMPLATE, task_spec

    common = {"task": task_spec(out), "template": TEMPLATE, "bootstrap": 0, "progress": False}
    score_saes(out / "store.zarr", [str(out / "saes")], out=out / f"results_seeds{seeds}", seeds=seeds, **common)
    score_saes(out / "store.zarr", [str(out / "saes")], out=out / "results_converged", l1_solver="converged", **common)
    many = pd.read_parquet(out / f"results_seeds{seeds}" / "saes.parquet").set_index("sae_id")
    conv = pd.read_parquet(out / "results_converged" / "saes.parquet").set_index("sae_id")
    rows = {}
    for sae in many.index:
        rows[sae] = {f"{m}_{what}": float(value) for m in ("mean_absorption_fraction", "mean_full_absorption")
                     for what, value in (("seed_range", many.loc[sae, f"{m}_seed_range"]),
                                         ("solver_diff", abs(many.loc[sae, m] - conv.loc[sae, m])))}
    for key in ("mean_absorption_fraction_seed_range", "mean_absorption_fraction_solver_diff",
                "mean_full_absorption_seed_range", "mean_full_absorption_solver_diff"):
        values = [r[key] for r in rows.values()]
        print(f"{key:>38}: max {max(values):.3f}, median {sorted(values)[len(values) // 2]:.3f} over {len(values)} SAEs")
    return {"seeds": seeds, "saes": rows}


def print_table(table: dict) -> None:
    print(f"{'SAE':>18} {'L0':>5} | {'fraction':>8} {'[95% CI]':>13} {'chance':>6} {'truth':>6} | "
          f"{'full':>6} {'[95% CI]':>13} {'chance':>6} {'truth':>6} | {'carriers as splits':>18}")
    for r in sorted(table["saes"], key=lambda r: (r["arch"], -r["l0"])):
        cells = []
        for measured, truth in (("mean_absorption_fraction", "gt_absorption_fraction"),
                                ("mean_full_absorption", "gt_full_absorption")):
            low, high = r.get(f"{measured}_ci_low"), r.get(f"{measured}_ci_high")
            ci = f"[{low:.2f}, {high:.2f}]" if low is not None else ""
            chance = r.get(f"chance_random_decoder_{measured}")
            cells.append(f"{r[measured]:8.3f} {ci:>13} {'' if chance is None else f'{chance:6.3f}':>6} {r[truth]:6.3f}")
        split = r.get("carriers_counted_as_splits")
        print(f"{r['sae']:>18} {r['l0']:5.2f} | {cells[0]} | {cells[1]} | {'-' if split is None else f'{split:.2f}':>18}")
    # the agreement per architecture: synth_world has logged it (write_comparison)


if __name__ == "__main__":
    raise SystemExit(main())
