"""actstore: a precompute-once activation store and batch scorer for SAE feature absorption, for any token task.

The public Python API (documented in docs/api.md; everything else is internal):

    open_store(path) -> StoreInfo     layers, groups, tasks and probes of a store
    score_saes(store, saes, task, out)  score SAEs for a task -> Results (pandas DataFrames, report, explorer)
    load_results(path) -> Results     the tables of an existing results folder
    task_names() -> list[str]         the task names `task=` takes (and labels:FILE)
    get_task(name) -> Task            a task's classes, labels and prompt

(The names avoid the subpackages' names: `actstore.score` and `actstore.tasks` are packages.)
Importing actstore is light (no torch): the API's modules load on first use, so `python -m actstore` installs
its signal handling before anything heavy (actstore/__main__.py).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("actstore")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

_PUBLIC = {"open_store": "actstore.api", "score_saes": "actstore.api", "load_results": "actstore.api",
           "task_names": "actstore.tasks.registry", "Results": "actstore.api", "StoreInfo": "actstore.api",
           "get_task": "actstore.tasks.registry", "Task": "actstore.tasks.base", "InputError": "actstore.errors"}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'actstore' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_PUBLIC])
