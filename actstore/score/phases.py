"""Where one SAE's scoring time goes: a clock `score_sae` reads its phases on.

    clock = PhaseClock(sync=True)          # sync: wait for the device at both ends of every phase
    score_sae(sae, data, probe, cfg, clock=clock)
    clock.seconds                          # {"encode": 4.1, "cosines": 0.02, ...}

score_sae's phases (PHASES): the encode pass, latent cosines, the L1 probe, the per-seed work (k-sparse probing,
absorption), precision and recall on context rows, the bootstrap, the per-token records and top tokens, the
summary. What score_sae spends outside them is "other": the caller's total minus their sum. Without a clock
(`clock=None`) score_sae times nothing and synchronizes nothing.
"""

from __future__ import annotations

import collections
import contextlib
import time

import torch

PHASES = ("encode", "cosines", "l1_probe", "seeds", "context", "bootstrap", "records", "summary")
"""the phase names score_sae times, in the order it runs them"""


class PhaseClock:
    """`with clock(name):` adds the block's wall time to `seconds[name]` (a Counter: phases add up over calls).
    With `sync`, the CUDA device is synchronized before and after the block, so that a phase's time is its own
    work and not the queue it inherited (asynchronous launches otherwise charge one phase's kernels to the next
    phase that waits for them)."""

    def __init__(self, sync: bool = False):
        self.sync = sync and torch.cuda.is_available()
        self.seconds: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - start


def no_clock(name: str) -> contextlib.AbstractContextManager:
    """The clock of a call without one: a block that times nothing."""
    return contextlib.nullcontext()
