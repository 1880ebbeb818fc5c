"""actstore: a precompute-once activation store and batch scorer for SAE feature absorption.

The core (store, scoring, kernels) imports with torch, numpy and zarr alone; Ray, transformers and
sae-lens are imported where they are used.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("actstore")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
