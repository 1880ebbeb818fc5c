"""`actstore demo`: what exists of the pipeline, end to end, on synthetic data, checked as it goes.

Today the chain is: write a store shaped like the vocabulary task and a natural-text context set
(activations with planted first-letter directions, bfloat16), kill nothing but leave it half-written
and resume it, verify every checksum, stream it back in blocks and compare bit for bit. Later issues
add extraction from a synthetic model, probes, synthetic SAEs and scoring to this same command.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from actstore.store import ActivationStore, IncompleteStoreError, StoreSpec

D_MODEL, LAYERS, VOCAB_ROWS, CONTEXT_ROWS, SHARD_ROWS = 256, [0, 1, 2], 5000, 12000, 1024


def synthetic_rows(n: int, layer: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Activations (n, D_MODEL) bf16 = planted letter direction of each row's label + noise, and labels."""
    gen = torch.Generator().manual_seed(seed * 1000 + layer)
    directions = torch.randn(26, D_MODEL, generator=gen)
    labels = torch.randint(0, 26, (n,), generator=gen)
    acts = 3 * directions[labels] + torch.randn(n, D_MODEL, generator=gen)
    return acts.to(torch.bfloat16), labels.numpy()


def run_demo(out: str, seed: int = 0) -> int:
    out_dir = Path(out)
    path = out_dir / "store.zarr"
    if path.exists():
        shutil.rmtree(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spec = StoreSpec(model="synthetic", d_model=D_MODEL, layers=LAYERS, shard_rows=SHARD_ROWS, chunk_rows=256,
                     prompt_template="{word} has the first letter:",
                     resume_command=f"actstore demo --out {out}")
    expected: dict[tuple[str, int], torch.Tensor] = {}
    rows = {"vocab": VOCAB_ROWS, "context": CONTEXT_ROWS}
    with ActivationStore.create(path, spec) as store:
        for group, n in rows.items():
            store.add_group(group, rows=n)
            data: dict = {}
            for layer in LAYERS:
                acts, labels = synthetic_rows(n, layer, seed + (group == "context"))
                expected[group, layer] = acts
                data[layer] = acts
            data.update(_columns(group, n, labels))
            half = (n // 2) // SHARD_ROWS * SHARD_ROWS
            store.write(group, 0, {k: v[:half] for k, v in data.items()})
            if group == "vocab":
                _check_refused(path)  # half-written: reading is refused with a resume hint
            store.write(group, half, {k: v[half:] for k, v in data.items()})
    print(f"wrote {path}: {sum(rows.values())} rows x {len(LAYERS)} layers x d_model {D_MODEL} (bfloat16), "
          f"{len(rows)} groups, shards of {SHARD_ROWS} rows")

    store = ActivationStore.open(path)
    problems = store.verify()
    print(f"verified every shard and checksum: {'ok' if not problems else problems}")
    mismatched = 0
    for (group, layer), acts in expected.items():
        for block in store.blocks(group, layer, block_rows=1500):
            same = torch.equal(block.acts.view(torch.int16), acts[block.start:block.stop].view(torch.int16))
            mismatched += not same
    print(f"streamed every layer back in blocks with prefetch: "
          f"{'bit-exact' if not mismatched else f'{mismatched} blocks differ'}")
    info = store.info()
    print(f"store on disk: {info['bytes_on_disk'] / 1e6:.1f} MB, complete={info['complete']}; "
          f"took {time.perf_counter() - t0:.1f}s")
    print("next: extraction from a model, probes, SAE scoring (later issues extend this demo)")
    return 0 if not problems and not mismatched else 1


def _columns(group: str, n: int, labels: np.ndarray) -> dict[str, np.ndarray]:
    if group == "vocab":
        rng = np.random.default_rng(n)
        return {"token_id": np.arange(n), "label": labels, "split": (rng.random(n) < 0.2).astype(np.int8),
                "position": np.full(n, -6), "text": np.array([f"{chr(97 + l)}word{i}" for i, l in enumerate(labels)])}
    return {"token_id": np.arange(n) % 1000, "doc": np.arange(n) // 128, "pos": np.arange(n) % 128,
            "label": labels}


def _check_refused(path: Path) -> None:
    try:
        ActivationStore.open(path)
    except IncompleteStoreError as err:
        print(f"half-written store refused for reading, as it should be:\n  {err}")
    else:
        raise AssertionError("a half-written store opened for reading")
