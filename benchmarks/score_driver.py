"""One instrumented, in-process `actstore score` run: what score_bench.py times, in a process of its own, against
whichever actstore PYTHONPATH names (today's tree, or a git worktree of the baseline commit).

    PYTHONPATH=TREE python benchmarks/score_driver.py STORE SAES OUT JSON [--device cpu] [--dtype D] [--sync]

Only API present before and after issue 23 is used: `run_score(ScoreCommandConfig(store, out, [saes],
local=True))`, the scorer's `BACKENDS` dict, and the names `score_sae` and `encode_group_fused` in
actstore.run.batch. Instrumentation, all by wrapping (the code under test is not edited):
- per SAE: the time each `score_sae` call returns, from the start of run_score; the intervals between them are
  the per-SAE times of the pipeline (the first from the start: store, layer rows, first read, warm-up);
- encoder calls: every entry of actstore.score.encode.BACKENDS (the scorer looks them up in that dict) and the
  group launch batch.encode_group_fused. The first encoder call inside a score_sae call that was not handed
  `acts` is that SAE's main encode, any other is "other" (the old code's second encode for the L0 on text); a
  group launch is the main encode of its SAEs, split evenly among them;
- phases: score_sae's `clock` hook (actstore.score.phases.PhaseClock) where score_sae takes one, else the old
  scorer's phase functions wrapped as benchmarks/score_profile.py does (a call inside another counts as the
  outer one's).
--sync synchronizes the CUDA device around every timed block (on CPU nothing needs it); without it, GPU
encode and phase times are host-side wall times (a launch that syncs itself is still timed whole).
Writes JSON: wall, per-SAE intervals, encode seconds per SAE (main, other), phases per SAE, the parts' records.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import sys
import time
from pathlib import Path

import torch


class Probe:
    """The instrumentation of one run (see the module docstring)."""

    def __init__(self, sync: bool):
        self.sync = sync and torch.cuda.is_available()
        self.start = time.perf_counter()
        self.ends: list[float] = []  # each score_sae's return, seconds from start
        self.main: collections.Counter = collections.Counter()  # SAE index -> main-encode seconds
        self.other: collections.Counter = collections.Counter()
        self.phases: list[dict] = []  # per SAE: phase -> seconds
        self.inside: list[float] = []  # per SAE: seconds inside score_sae
        self.current = None  # while a score_sae call runs: {"acts": given?, "encodes": count}

    def _sync(self) -> None:
        if self.sync:
            torch.cuda.synchronize()

    def timed_encoder(self, fn):
        def encoder(*args, **kwargs):
            self._sync()
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            self._sync()
            seconds, index = time.perf_counter() - t, len(self.ends)
            call = self.current
            if call is not None and not call["acts"] and call["encodes"] == 0:
                self.main[index] += seconds
            else:
                self.other[index] += seconds
            if call is not None:
                call["encodes"] += 1
            return out
        return encoder

    def timed_group(self, fn):
        def group_encoder(x, saes, *args, **kwargs):
            self._sync()
            t = time.perf_counter()
            out = fn(x, saes, *args, **kwargs)
            self._sync()
            seconds = time.perf_counter() - t
            for k in range(len(saes)):  # the next len(saes) score_sae calls are this group's
                self.main[len(self.ends) + k] += seconds / len(saes)
            return out
        return group_encoder

    def timed_score(self, fn, clock_class, old_phases):
        def score_sae(*args, **kwargs):
            clock = clock_class(sync=self.sync) if clock_class is not None else None
            if clock is not None:
                kwargs["clock"] = clock
            self.current, old_phases.seconds = {"acts": kwargs.get("acts") is not None, "encodes": 0}, \
                collections.Counter()
            self._sync()
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                now = time.perf_counter()
                self.inside.append(now - t)
                self.ends.append(now - self.start)
                self.phases.append(dict(clock.seconds if clock is not None else old_phases.seconds))
                self.current = None
        return score_sae


class OldPhases:
    """The pre-clock scorer's phases, its functions wrapped (score_profile.py's approach)."""

    def __init__(self, sync: bool):
        self.sync = sync and torch.cuda.is_available()
        self.seconds, self.depth, self.saved = collections.Counter(), 0, []

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            if self.sync:
                torch.cuda.synchronize()
            t = time.perf_counter()
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.sync:
                    torch.cuda.synchronize()
                self.seconds[name] += time.perf_counter() - t
        return timed

    def install(self) -> None:
        from actstore.score import intervals
        from actstore.score import scorer

        for name, module, attr in [("cosines", scorer, "latent_cosines"), ("l1_probe", scorer, "l1_weights"),
                                   ("seeds", scorer, "_score_seeds"), ("context", scorer, "_in_context"),
                                   ("summary", scorer, "_summary"), ("bootstrap", intervals, "bootstrap_intervals"),
                                   ("text_l0", scorer, "text_l0"), ("records", scorer, "top_tokens")]:
            if hasattr(module, attr):
                setattr(module, attr, self.wrap(name, getattr(module, attr)))
        # the main encode inside score_sae, as a phase: the first BACKENDS call at depth 0 (text_l0's is its own)
        for key, fn in list(scorer.BACKENDS.items()):
            scorer.BACKENDS[key] = self.wrap("encode", fn)


def numbers(part: dict) -> dict:
    """A part's numeric results, flat: summary.<key> and classes.<i>.<key> (floats and ints, not bools, not the
    timing), for comparing two versions' parts of the same SAE."""
    flat = {f"summary.{k}": v for k, v in part["summary"].items()}
    flat.update({f"classes.{i}.{k}": v for i, row in enumerate(part["classes"]) for k, v in row.items()})
    return {k: v for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and not k.endswith("seconds")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store")
    parser.add_argument("saes")
    parser.add_argument("out")
    parser.add_argument("json")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, help="--dtype of the score command (default: the version's own)")
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--tree", default=None, help="fail unless actstore is imported from this folder")
    args = parser.parse_args()

    import actstore
    from actstore.run import batch
    from actstore.run.runner import ScoreCommandConfig, run_score
    from actstore.score import encode, scorer

    where = Path(actstore.__file__).resolve().parent
    if args.tree and not where.is_relative_to(Path(args.tree).resolve()):
        raise SystemExit(f"score_driver: actstore imported from {where}, expected under {args.tree}: PYTHONPATH must "
                         f"name the tree first (an installed copy shadows it)")
    clock_class = None
    if "clock" in inspect.signature(scorer.score_sae).parameters:
        from actstore.score.phases import PhaseClock

        clock_class = PhaseClock
    probe = Probe(args.sync)
    old = OldPhases(args.sync)
    if clock_class is None:
        old.install()  # before the encoder timer: the timer then sees every call, the phase wrapper only depth 0
    for key, fn in list(encode.BACKENDS.items()):
        encode.BACKENDS[key] = probe.timed_encoder(fn)
    batch.encode_group_fused = probe.timed_group(batch.encode_group_fused)
    batch.score_sae = probe.timed_score(batch.score_sae, clock_class, old)

    options = {"local": True, "device": args.device}
    if args.dtype:
        options["dtype"] = args.dtype
    config = ScoreCommandConfig(args.store, args.out, [args.saes], **options)
    failures = []
    probe.start = time.perf_counter()
    summary = run_score(config, log=lambda line: failures.append(line) if "failed:" in line else None)
    wall = time.perf_counter() - probe.start
    if summary["failed"] or failures:
        raise SystemExit(f"score_driver: {summary['failed']} SAEs failed: {failures}")
    parts = [json.loads(p.read_text()) for p in sorted((Path(args.out) / "parts").glob("*.json"))]
    n = len(probe.ends)
    result = {
        "actstore": str(where), "clock_hook": clock_class is not None, "sync": probe.sync, "wall_s": wall,
        "saes": n, "ends_s": probe.ends, "intervals_s": [b - a for a, b in zip([0.0] + probe.ends, probe.ends)],
        "inside_score_sae_s": probe.inside, "main_encode_s": [probe.main[i] for i in range(n)],
        "other_encode_s": [probe.other[i] for i in range(n)], "phases_s": probe.phases,
        "record_seconds": [p["seconds"] for p in parts],
        "mean_l0": sum(p["summary"]["l0_vocab"] for p in parts) / max(1, len(parts)),
        "backend": parts[0]["summary"]["backend"] if parts else None,
        "dtype": config.dtype, "device": str(torch.cuda.get_device_name()) if torch.cuda.is_available() else "cpu",
        "numbers": {p["sae_key"]: numbers(p) for p in parts},
    }
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
