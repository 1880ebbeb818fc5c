"""Shared fixtures: the synthetic world's model and corpus, a planted store with synthetic SAEs, and one
Ray instance for the whole run (ray.init costs about 3 s and 0.75 GiB, so tests share it)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in its CPU interpreter; read when triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def synth_model(tmp_path_factory):
    from actstore.extract.synthetic import write_synthetic_model

    return write_synthetic_model(tmp_path_factory.mktemp("world") / "model", n_layers=4, seed=0)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """40 documents of 200 words of the synthetic vocabulary (plus numbers), as JSONL: the demo's corpus."""
    from actstore.cli.demo import write_corpus

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    write_corpus(path, seed=0, docs=40, words_per_doc=200)
    return path


@pytest.fixture(scope="session")
def planted_store(tmp_path_factory):
    """A store of a planted world without a model: each row is 3 x its letter's direction plus noise
    (d 64), a context group of the same kind, and trained ground-truth probes."""
    from actstore.score.probes import probe_store
    from actstore.store.zarrstore import ActivationStore, StoreSpec

    path = tmp_path_factory.mktemp("planted") / "s.zarr"
    gen = torch.Generator().manual_seed(0)
    d, n, m = 64, 2080, 3000
    directions = torch.nn.functional.normalize(torch.randn(26, d, generator=gen), dim=1)
    labels = torch.arange(n) % 26
    x = 3 * directions[labels] + 0.5 * torch.randn(n, d, generator=gen)
    split = (torch.rand(n, generator=gen) < 0.2).long()
    ctx_labels = torch.randint(-1, 26, (m,), generator=gen)
    ctx = torch.where(ctx_labels[:, None] >= 0, 3 * directions[ctx_labels.clamp(min=0)], 0) + 0.5 * torch.randn(m, d, generator=gen)
    store = ActivationStore.create(path, StoreSpec(model="planted", d_model=d, layers=[0], dtype="float32",
                                                   shard_rows=1024, chunk_rows=256))
    store.add_group("vocab", rows=n)
    store.write("vocab", 0, {0: x, "label": labels.numpy(), "split": split.numpy(), "token_id": np.arange(n),
                             "position": np.zeros(n, int),
                             "text": np.array([f"{chr(97 + int(c))}{i:04d}" for i, c in enumerate(labels)])})
    store.add_group("context", rows=m)
    store.write("context", 0, {0: ctx, "label": ctx_labels.numpy(), "token_id": np.arange(m), "doc": np.zeros(m, int),
                               "pos": np.arange(m)})
    store.close()
    probe_store(str(path))
    return path


@pytest.fixture(scope="session")
def planted_saes(planted_store, tmp_path_factory):
    from actstore.saes.synthetic import SynthSAEConfig, write_synthetic_saes

    out = tmp_path_factory.mktemp("saes")
    return write_synthetic_saes(str(planted_store), 0, out, SynthSAEConfig(absorption=(0.0, 0.3, 0.5), width=1500))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def hub_offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with an empty Hugging Face cache, in this process. huggingface_hub reads the switch that the
    variable sets, and its cache folder, from `huggingface_hub.constants` at each call (transformers asks it too),
    so no fresh process is needed: one spent most of its time importing torch, transformers or sae-lens again."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))


@pytest.fixture
def small_disk(tmp_path):
    """A factory: `small_disk("300k")` mounts a tmpfs of that size at tmp_path/disk and returns the folder;
    `resize(disk, "64m")` makes room later. Needs root (mount -t tmpfs): a test without it is skipped. Unmounted at
    the end."""
    import shutil
    import subprocess

    mounted = []

    def mount(size: str):
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("a small tmpfs needs root (mount -t tmpfs): the full-disk test is skipped here")
        disk = tmp_path / "disk"
        disk.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)]).returncode:
            pytest.skip("could not mount a tmpfs here: the full-disk test is skipped")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)])


def resize(disk, size: str) -> None:
    """Give a small_disk tmpfs another size."""
    import subprocess

    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)
