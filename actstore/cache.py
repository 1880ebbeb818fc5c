"""Where actstore keeps what it computes once and reuses: $ACTSTORE_CACHE, default ~/.cache/actstore.

Under it: digests.json (content digests, actstore.store.digests), gguf/ (GGUF files converted to transformers
folders, actstore.extract.model), real-models/ (actstore.extract.realmodels) and logs/ (the CLI's). Its own
module, below every stage, so that the store's digests and the model loader both reach it without importing
each other.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("ACTSTORE_CACHE", "~/.cache/actstore")).expanduser()
