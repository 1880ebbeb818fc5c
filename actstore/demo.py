"""`actstore demo`: what exists of the pipeline, end to end, on synthetic data, checked as it goes.

Today the chain is: create a store shaped like the vocabulary task and a natural-text context set
(activations with planted first-letter directions, bfloat16) and stop halfway, as a killed run would;
show that reading it is refused; resume it, writing only the missing shards; verify every checksum;
stream it back in blocks and compare bit for bit. Rerunning on the same --out resumes (or, when the
store is complete, writes nothing and checks it again). Later issues add extraction from a synthetic
model, probes, synthetic SAEs and scoring to this same command.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from actstore.store import ActivationStore, IncompleteStoreError, StoreSpec, layer_name

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
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = {"vocab": VOCAB_ROWS, "context": CONTEXT_ROWS}
    data = {group: _group_data(group, n, seed) for group, n in rows.items()}
    if not (path / "zarr.json").exists():
        spec = StoreSpec(model="synthetic", d_model=D_MODEL, layers=LAYERS, shard_rows=SHARD_ROWS, chunk_rows=256,
                         prompt_template="{word} has the first letter:", resume_command=f"actstore demo --out {out}",
                         extra={"seed": seed})
        with ActivationStore.create(path, spec) as store:
            for group, n in rows.items():
                store.add_group(group, rows=n)
            half = (VOCAB_ROWS // 2) // SHARD_ROWS * SHARD_ROWS  # as if killed halfway through vocab
            store.write("vocab", 0, {k: v[:half] for k, v in data["vocab"].items()})
        print(f"created {path} and wrote half of it, as a run killed midway would")
        _check_refused(path)
    with ActivationStore.open(path, mode="a") as store:
        if store.spec.extra.get("seed") != seed:
            raise ValueError(f"{path} holds the demo for seed {store.spec.extra.get('seed')}; use another --out")
        missing = store.missing()
        total = sum(store.num_shards(g) * len(store.arrays(g)) for g in rows)
        for group in rows:
            for name, values in data[group].items():
                for k in missing.get(f"{group}/{_array(name)}", []):
                    lo, hi = store.shard_rows(group, k)
                    store.write(group, lo, {name: values[lo:hi]})
    print(f"resumed: wrote the {sum(map(len, missing.values()))} missing of {total} shards; the store holds "
          f"{sum(rows.values())} rows x {len(LAYERS)} layers x d_model {D_MODEL} (bfloat16)")

    store = ActivationStore.open(path)
    problems = store.verify()
    print(f"verified every shard and checksum: {'ok' if not problems else problems}")
    mismatched = 0
    for group in rows:
        for layer in LAYERS:
            expected = data[group][layer]
            for block in store.blocks(group, layer, block_rows=1500):
                same = torch.equal(block.acts.view(torch.int16), expected[block.start:block.stop].view(torch.int16))
                mismatched += not same
        for name in data[group]:
            if isinstance(name, str):
                mismatched += not np.array_equal(store.column(group, name), data[group][name])
    print(f"streamed every layer back in blocks with prefetch and read every column: "
          f"{'bit-exact' if not mismatched else f'{mismatched} blocks differ'}")
    info = store.info()
    print(f"store on disk: {info['bytes_on_disk'] / 1e6:.1f} MB, complete={info['complete']}; "
          f"took {time.perf_counter() - t0:.1f}s")
    print("next: extraction from a model, probes, SAE scoring (later issues extend this demo)")
    return 0 if not problems and not mismatched else 1


def _array(name: str | int) -> str:
    return layer_name(name) if isinstance(name, int) else name


def _group_data(group: str, n: int, seed: int) -> dict:
    data: dict = {}
    for layer in LAYERS:
        data[layer], labels = synthetic_rows(n, layer, seed + (group == "context"))
    data.update(_columns(group, n, labels))
    return data


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
