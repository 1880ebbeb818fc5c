"""How much the L1 probe's seed moves each SAE's scores: 5 seeds under `saebench` against `converged`.

    python benchmarks/seed_spread.py --store DEMO/store.zarr --saes DEMO/saes [--layer 0] [--seeds 5]

SAEs: the synthetic SAEs under --saes (clean planted letter latents, from `actstore synth-saes` or the demo),
and for each a "mixed" variant written beside it (DIR/mixed/...): every letter's main latent gets a twin that
fires on exactly the same tokens (its encoder, bias and threshold halved: same decisions, half the activation)
and decodes to a mix of its letter's direction and another letter's (decoder d_c + 0.8 d_c', normalized).
That is a weak, mixed letter latent next to the clean one: the L1 probe's objective barely prefers either,
so Adam's random start decides which becomes the main latent, and with it the projection the absorption
rules see. Scores every SAE with --seeds under both solvers (`score_sae`, one encoding each) and prints, per
SAE and solver, the spread across seeds (standard deviation and range) of the mean absorption fraction and
full-absorption rate, and the mean share of seeds that agree on each letter's main latents.
Writes benchmarks/results/seed_spread.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from store_bench import environment, write_result  # noqa: E402


def write_mixed(folder: Path, out: Path, seed: int = 0) -> Path:
    """The mixed variant of a synthetic SAE (module docstring) at out/params.npz."""
    truth = json.loads((folder / "truth.json").read_text())
    with np.load(folder / "params.npz") as p:
        arrays = {k: p[k].copy() for k in p.files}
    mains = {c: e["main_latents"][0] for c, e in truth["letters"].items() if e.get("main_latents")}
    letters = sorted(mains)
    rng = np.random.default_rng(seed)
    w_enc, w_dec = [arrays["W_enc"]], [arrays["W_dec"]]
    b_enc, threshold = [arrays["b_enc"]], [arrays["threshold"]]
    for c in letters:
        i = mains[c]
        other = mains[letters[(letters.index(c) + 1 + rng.integers(len(letters) - 1)) % len(letters)]]
        dec = arrays["W_dec"][i] + 0.8 * arrays["W_dec"][other]
        w_enc.append(arrays["W_enc"][:, i:i + 1] * 0.5)
        b_enc.append(arrays["b_enc"][i:i + 1] * 0.5)
        threshold.append(arrays["threshold"][i:i + 1] * 0.5)
        w_dec.append((dec / np.linalg.norm(dec))[None, :])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "params.npz", W_enc=np.concatenate(w_enc, 1), W_dec=np.concatenate(w_dec, 0),
             b_enc=np.concatenate(b_enc), b_dec=arrays["b_dec"], threshold=np.concatenate(threshold))
    return out


def main() -> int:
    from actstore.store.layers import load_layer
    from actstore.score.probes import load_probe
    from actstore.saes.loading import load_params_npz
    from actstore.score.config import ScoreConfig
    from actstore.score.scorer import score_sae
    from actstore.store.zarrstore import ActivationStore

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--saes", required=True, help="folder of synthetic SAEs (each with truth.json)")
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / "seed_spread.json"))
    args = parser.parse_args()
    store = ActivationStore.open(args.store)
    data, probe = load_layer(store, args.layer), load_probe(store, args.layer)
    store.close()
    clean = sorted(p.parent for p in Path(args.saes).rglob("truth.json") if "mixed" not in p.parts)
    saes = [(f"{f.name}", f) for f in clean]
    saes += [(f"{f.name} mixed", write_mixed(f, Path(args.saes) / "mixed" / f.name)) for f in clean]
    result = {"environment": environment(), "store": args.store, "seeds": args.seeds, "saes": {}}
    print(f"{'SAE':>18s} {'solver':>10s} {'absorption':>10s} {'sd':>7s} {'range':>7s} {'full abs':>8s} "
          f"{'sd':>7s} {'range':>7s} {'main agree':>10s}")
    for name, folder in saes:
        sae = load_params_npz(folder / "params.npz", name, layer=args.layer)
        result["saes"][name] = {}
        for solver in ("saebench", "converged"):
            s = score_sae(sae, data, probe, ScoreConfig(l1_solver=solver, seeds=args.seeds, bootstrap=0)).summary
            keep = {k: s[k] for k in ("mean_absorption_fraction_seed_mean", "mean_absorption_fraction_seed_std",
                                      "mean_absorption_fraction_seed_range", "mean_full_absorption_seed_mean",
                                      "mean_full_absorption_seed_std", "mean_full_absorption_seed_range",
                                      "mean_main_latents_agreement", "classes_evaluated")}
            result["saes"][name][solver] = keep
            print(f"{name:>18s} {solver:>10s} {keep['mean_absorption_fraction_seed_mean']:10.3f} "
                  f"{keep['mean_absorption_fraction_seed_std']:7.3f} {keep['mean_absorption_fraction_seed_range']:7.3f} "
                  f"{keep['mean_full_absorption_seed_mean']:8.3f} {keep['mean_full_absorption_seed_std']:7.3f} "
                  f"{keep['mean_full_absorption_seed_range']:7.3f} {keep['mean_main_latents_agreement']:10.2f}",
                  flush=True)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
