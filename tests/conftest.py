"""Shared fixtures: the synthetic world's model and corpus, and one Ray instance for the whole run
(ray.init costs about 3 s and 0.75 GiB, so tests share it)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def synth_model(tmp_path_factory):
    from actstore.synth import write_synthetic_model

    return write_synthetic_model(tmp_path_factory.mktemp("world") / "model", n_layers=4, seed=0)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """40 documents of 200 words of the synthetic vocabulary (plus numbers), as JSONL: the demo's corpus."""
    from actstore.demo import write_corpus

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    write_corpus(path, seed=0, docs=40, words_per_doc=200)
    return path


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()
