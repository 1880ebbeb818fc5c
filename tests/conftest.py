"""Shared fixtures: the synthetic world's model and corpus, and one Ray instance for the whole run
(ray.init costs about 3 s and 0.75 GiB, so tests share it)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest


@pytest.fixture(scope="session")
def synth_model(tmp_path_factory):
    from actstore.synth import write_synthetic_model

    return write_synthetic_model(tmp_path_factory.mktemp("world") / "model", n_layers=4, seed=0)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """40 documents of 200 words of the synthetic vocabulary (plus numbers), as JSONL."""
    from actstore.synth import pseudo_words

    words = pseudo_words(40, 0) + ["has", "the", "first", "letter", "123", "A"]
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w") as f:
        for _ in range(40):
            f.write(json.dumps({"text": " ".join(rng.choice(words, size=200))}) + "\n")
    return path


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()
