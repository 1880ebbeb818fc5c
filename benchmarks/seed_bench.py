"""What `--seeds 5` costs against one seed: the seed-dependent steps rerun over one encoding.

    python benchmarks/seed_bench.py [--widths 16k,65k] [--solvers saebench,converged] [--vocab-rows 2048]
                                    [--context-rows 1024] [--repeat 2] [--device cuda]

In process (no Ray; the device's default backend: torch on CPU, the fused kernel on CUDA): vocabulary rows of
d_model 2304 with planted letter directions and their trained probe (as score_bench.py builds them), a random JumpReLU SAE of each width with about 60 active
latents per token (score_bench.write_sae's recipe), then `score_sae` with seeds 1 and 5 under each L1 solver
(bootstrap intervals on, 1000 replicates, as the command's default). The machine may be shared, so the two are
interleaved (1 seed, 5 seeds, 1 seed, 5 seeds, ...): reports seconds (best of --repeat), the ratio of the bests
and each adjacent pair's ratio, per width and solver; the issue's target is <= 1.5. Also the encoding alone,
so the split between the one encoding pass and the per-seed work is visible.
Writes benchmarks/results/seed_bench.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from score_bench import D, NOISE, ROW_NORM_SQ, SIGNAL  # noqa: E402
from store_bench import environment, write_result  # noqa: E402

from actstore.saes.loading import parse_width  # noqa: E402


def rows(n: int, context: int):
    from actstore.score.probes import train_probe
    from actstore.score.config import LayerData

    gen = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(26, D, generator=gen), dim=1)
    labels = torch.arange(n) % 26
    split = (torch.rand(n, generator=gen) < 0.2).long()
    x = SIGNAL * directions[labels] + NOISE * torch.randn(n, D, generator=gen)
    ctx_labels = torch.randint(-1, 26, (context,), generator=gen)
    ctx = torch.where(ctx_labels[:, None] >= 0, SIGNAL * directions[ctx_labels.clamp(min=0)], 0) \
        + NOISE * torch.randn(context, D, generator=gen)
    probe, _ = train_probe(x, labels, split)
    return LayerData(x, labels, split, ctx, ctx_labels), probe


def random_sae(m: int, seed: int, l0: int = 60, device: str = "cpu"):
    from statistics import NormalDist

    from actstore.saes.loading import SAEWeights

    gen = torch.Generator().manual_seed(seed)
    w_enc = torch.randn(D, m, generator=gen) / D ** 0.5
    w_dec = torch.randn(m, D, generator=gen) / D ** 0.5
    threshold = torch.full((m,), NormalDist(0, (ROW_NORM_SQ / D) ** 0.5).inv_cdf(1 - l0 / m))
    return SAEWeights(f"random-{m}", w_enc.to(device), torch.zeros(m, device=device), w_dec.to(device),
                      torch.zeros(D, device=device), "jumprelu", threshold.to(device), layer=0)


def interleaved(repeat: int, one, five) -> tuple[list[float], list[float]]:
    """Seconds of `one` and `five`, run alternately `repeat` times each."""
    ones, fives = [], []
    for _ in range(repeat):
        for fn, times in ((one, ones), (five, fives)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return ones, fives


def main() -> int:
    from actstore.score.config import ScoreConfig
    from actstore.score.encode import decoder_scale, encode_sparse
    from actstore.score.scorer import score_sae

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="16k,65k")
    parser.add_argument("--solvers", default="saebench,converged")
    parser.add_argument("--vocab-rows", type=int, default=2048)
    parser.add_argument("--context-rows", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the SAE lives and the scoring runs (cpu, cuda)")
    parser.add_argument("--out", default=str(HERE / "results" / "seed_bench.json"))
    args = parser.parse_args()
    data, probe = rows(args.vocab_rows, args.context_rows)
    env = environment()
    if args.device.startswith("cuda"):
        env["device"] = torch.cuda.get_device_name()
    result = {"environment": env, "vocab_rows": args.vocab_rows, "context_rows": args.context_rows,
              "d_model": D, "repeat": args.repeat, "load_average_before": os.getloadavg(), "widths": {}}
    print(f"{'width':>6s} {'solver':>10s} {'encode s':>9s} {'1 seed s':>9s} {'5 seeds s':>10s} {'ratio':>6s} "
          f"{'pair ratios':>12s}")
    for width in [parse_width(w) for w in args.widths.split(",")]:
        sae = random_sae(width, seed=width, device=args.device)
        t = time.perf_counter()
        encode_sparse(data.x, sae, decoder_scale(sae))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        encode = time.perf_counter() - t
        per_solver = {}
        for solver in args.solvers.split(","):
            ones, fives = interleaved(
                args.repeat, lambda: score_sae(sae, data, probe, ScoreConfig(l1_solver=solver)),
                lambda: score_sae(sae, data, probe, ScoreConfig(l1_solver=solver, seeds=5)))
            pairs = [b / a for a, b in zip(ones, fives)]
            one, five = min(ones), min(fives)
            per_solver[solver] = {"seconds_1_seed": one, "seconds_5_seeds": five, "ratio": five / one,
                                  "runs_1_seed": ones, "runs_5_seeds": fives, "pair_ratios": pairs}
            print(f"{width:6d} {solver:>10s} {encode:9.2f} {one:9.2f} {five:10.2f} {five / one:6.2f} "
                  f"{' '.join(f'{r:.2f}' for r in pairs):>12s}", flush=True)
        result["widths"][str(width)] = {"encode_seconds": encode, **per_solver}
        write_result(args.out, result)  # each width as it finishes: a run stopped at a time limit keeps them
    result["load_average_after"] = os.getloadavg()
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
