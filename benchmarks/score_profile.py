"""Where one SAE's scoring time goes: loading its file and each phase of `score_sae`, the device synchronized
around every phase so that each phase's time is its own.

    python benchmarks/score_profile.py [--widths 16k,65k] [--device cuda] [--vocab-rows 4096]
                                       [--context-rows 4096] [--repeat 2] [--out JSON]

The rows and SAEs are seed_bench.py's (d_model 2304, planted letter directions, a random JumpReLU SAE with about
60 active latents per token), scored with the command's defaults (1 seed, 1000 bootstrap replicates, records
on). The SAE is written once as a Gemma Scope `params.npz` (fp32) and timed as `load`: read, checked and
converted onto the device (`load_params_npz`), as the scorer's workers do. The phases are score_sae's own
(`actstore.score.phases.PhaseClock`, the device synchronized around each): the encode pass (vocabulary rows and
the L0-on-text rows together), latent cosines, the L1 probe, the per-seed work (k-sparse probing, absorption),
context precision and recall, the bootstrap, the per-token records and top tokens, the summary; `other` is what
is left of `score_sae`'s time. A scorer from before the clock (no `clock` argument) is timed by wrapping the
functions it calls (`Timer`), its second encode of the context rows as `text_l0`. The first run of each
width warms up (on a GPU: compiles the kernel); reported: the best of --repeat runs after it, per phase.
Writes benchmarks/results/score_profile.json (score_profile_<device>.json off the CPU).
"""

from __future__ import annotations

import argparse
import collections
import inspect
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from seed_bench import random_sae, rows  # noqa: E402
from store_bench import environment, print_table, write_result  # noqa: E402

from actstore.score import intervals as uncertainty  # noqa: E402

from actstore.score import scorer as scoring  # noqa: E402
from actstore.saes.loading import load_params_npz, parse_width  # noqa: E402

CLOCKED = "clock" in inspect.signature(scoring.score_sae).parameters
"""score_sae times its own phases (actstore.score.phases); else `Timer` wraps the functions it calls"""
NAMES = ["encode", "cosines", "l1_probe", "seeds", "context", "bootstrap", "records", "summary", "text_l0"]
"""the table's phases: score_sae's (`phases.PHASES`) and, for a scorer before the clock, its second encode"""
OLD_PHASES = {  # a scorer before the clock: phase name -> (module, attribute) of a function score_sae calls
    "cosines": (scoring, "latent_cosines"),
    "l1_probe": (scoring, "l1_weights"),
    "seeds": (scoring, "_score_seeds"),  # k-sparse, absorption and records
    "context": (scoring, "_in_context"),
    "summary": (scoring, "_summary"),
    "bootstrap": (uncertainty, "bootstrap_intervals"),
    "text_l0": (scoring, "text_l0"),
    "records": (scoring, "top_tokens"),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timer:
    """Wraps each phase's function (and the encoders) so that calls add their synchronized time to `seconds`;
    a wrapped call inside another (the encoder inside `text_l0`) counts as the outer one's."""

    def __init__(self, device: str):
        self.device, self.seconds, self.saved, self.depth = device, collections.Counter(), [], 0

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            sync(self.device)
            t = time.perf_counter()
            self.depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                self.depth -= 1
            sync(self.device)
            self.seconds[name] += time.perf_counter() - t
            return out
        return timed

    def __enter__(self):
        for name, (module, attr) in OLD_PHASES.items():
            self.saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, self.wrap(name, getattr(module, attr)))
        self.backends = dict(scoring.BACKENDS)
        for key, fn in self.backends.items():
            scoring.BACKENDS[key] = self.wrap("encode", fn)
        return self

    def __exit__(self, *exc):
        for module, attr, fn in self.saved:
            setattr(module, attr, fn)
        scoring.BACKENDS.update(self.backends)


def write_npz(sae, path: Path) -> None:
    np.savez(path, W_enc=sae.w_enc.cpu().numpy(), W_dec=sae.w_dec.cpu().numpy(), b_enc=sae.b_enc.cpu().numpy(),
             b_dec=sae.b_dec.cpu().numpy(), threshold=sae.threshold.cpu().numpy())


def profile_width(m: int, data, probe, device: str, repeat: int, scratch: Path) -> dict:
    sae = random_sae(m, seed=m)
    path = scratch / f"sae_{m}.npz"
    write_npz(sae, path)
    runs = []
    for run in range(repeat + 1):  # the first warms up
        sync(device)
        t = time.perf_counter()
        loaded = load_params_npz(path, f"random-{m}", layer=0, device=device)
        sync(device)
        load = time.perf_counter() - t
        if CLOCKED:
            from actstore.score.phases import PhaseClock

            timer = PhaseClock(sync=device.startswith("cuda"))
            t = time.perf_counter()
            scoring.score_sae(loaded, data, probe, scoring.ScoreConfig(), clock=timer)
            sync(device)
            total = time.perf_counter() - t
        else:
            with Timer(device) as timer:
                t = time.perf_counter()
                scoring.score_sae(loaded, data, probe, scoring.ScoreConfig())
                sync(device)
                total = time.perf_counter() - t
        phases = {"load": load, **{name: timer.seconds.get(name, 0.0) for name in NAMES}}
        phases["other"] = total - sum(v for k, v in phases.items() if k != "load")
        runs.append({"score_seconds": total, "phases": phases})
        del loaded
    kept = runs[1:]
    best = min(kept, key=lambda r: r["score_seconds"])
    return {"warm_up": runs[0], "runs": kept, "best": best, "file_bytes": path.stat().st_size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="16k,65k")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab-rows", type=int, default=4096)
    parser.add_argument("--context-rows", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data, probe = rows(args.vocab_rows, args.context_rows)
    result = {"benchmark": "score_profile", "environment": environment(), "vocab_rows": args.vocab_rows,
              "context_rows": args.context_rows, "device": args.device, "widths": {}}
    with tempfile.TemporaryDirectory(prefix="score_profile_", dir=HERE) as scratch:
        for m in [parse_width(w) for w in args.widths.split(",")]:
            result["widths"][str(m)] = profile_width(m, data, probe, args.device, args.repeat, Path(scratch))
    names = ["load", *NAMES, "other"]
    header = ["phase"] + [f"{int(m) // 1024}k s" for m in result["widths"]] + [f"{int(m) // 1024}k share" for m in result["widths"]]
    table = []
    for name in names:
        seconds = [w["best"]["phases"][name] for w in result["widths"].values()]
        shares = [w["best"]["phases"][name] / (w["best"]["score_seconds"] + w["best"]["phases"]["load"])
                  for w in result["widths"].values()]
        table.append([name] + [f"{s:.3f}" for s in seconds] + [f"{s:.0%}" for s in shares])
    table.append(["load + score"] + [f"{w['best']['score_seconds'] + w['best']['phases']['load']:.3f}"
                                     for w in result["widths"].values()] + ["100%"] * len(result["widths"]))
    print(f"score_profile: {args.vocab_rows} vocabulary + {args.context_rows} context rows, {args.device}, "
          f"best of {args.repeat} after a warm-up")
    print_table(header, table)
    suffix = "" if args.device == "cpu" else "_" + torch.cuda.get_device_name().split()[-1].lower()
    write_result(args.out or HERE / "results" / f"score_profile{suffix}.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
