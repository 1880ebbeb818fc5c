"""The Python API, for notebooks: open a store, score SAEs for a task, get pandas DataFrames back.

    import actstore

    store = actstore.open_store("demo_out/store.zarr")
    store.layers, store.tasks                      # [0, 1, 2, 3], ['first_letter', 'capitalized', ...]
    results = actstore.score_saes(store, ["demo_out/saes"], task="first_letter", out="demo_out/results")
    results.saes                                   # one row per SAE (pandas)
    results.classes                                # one row per (SAE, evaluated class)
    results.explorer()                             # the explorer's index.html (open=True opens a browser)

`saes` takes what `actstore score` takes (params.npz files and folders, saved sae-lens folders, catalog names)
and sae-lens SAE objects, which are saved once under OUT/sae_lens/NAME (sae-lens's own format) and scored from
there, so a rerun finds them scored. Scoring is the CLI's: the same parts, tables and resumption.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from actstore.errors import InputError


@dataclass(frozen=True)
class StoreInfo:
    """What a store holds, read once (the store is not kept open)."""

    path: Path
    layers: list[int]
    """the layers whose activations it holds"""
    d_model: int
    groups: dict[str, int]
    """group -> rows (vocab, context, vocab_<task>)"""
    tasks: list[str]
    """the tasks whose rows it holds: every task with a prompt group here, and the built-in tasks relabeling one"""
    probes: dict[str, list[int]]
    """task -> the layers with a trained probe of that task"""
    model: str | None
    """the model the activations come from, as extract recorded it"""


def open_store(path: str | Path) -> StoreInfo:
    """A store's layers, groups, tasks and probes. Raises InputError (one line: what is wrong, what to do) for
    a path that is not a complete store."""
    from actstore.store.zarrstore import ActivationStore

    with ActivationStore.open(path) as store:
        tasks = store.tasks()
        return StoreInfo(path=Path(path), layers=list(store.layers), d_model=store.spec.d_model,
                         groups=dict(store.groups), tasks=tasks,
                         probes={task: store.probe_layers(task) for task in tasks},
                         model=store.spec.model)


def _score_options() -> dict[str, Any]:
    from actstore.run.runner import ScoreCommandConfig

    return {f.name: f for f in fields(ScoreCommandConfig)}


def score_saes(store: str | Path | StoreInfo, saes: Iterable[Any], task: str = "first_letter",
          out: str | Path | None = None, train_probes: bool = True, progress: bool = True, log=None,
          **options) -> Results:
    """Score SAEs on a store for a task; returns the results folder's tables.

    store: a path or `open_store`'s StoreInfo. saes: paths and names as `actstore score` takes them, or sae-lens
    SAE objects (or a dict name -> SAE object). task: a `task_names()` name or labels:FILE. out: the results folder
    (default: STORE's parent / "results"); a rerun skips what it holds. train_probes: train the task's probes on
    the store's layers that lack them first (as `actstore probe --task`). options: any `actstore score` option by
    its config name (seeds=5, bootstrap=0, null=True, device="cuda", layers="3,9", ...)."""
    from actstore.run.runner import ScoreCommandConfig, run_score
    from actstore.tasks.registry import get_task

    path = Path(store.path if isinstance(store, StoreInfo) else store)
    out = Path(out) if out is not None else path.resolve().parent / "results"
    known = _score_options()
    unknown = sorted(set(options) - set(known) - {"store", "saes", "out", "task"})
    if unknown:
        raise TypeError(f"score_saes() got unknown options {', '.join(unknown)}; it takes {', '.join(sorted(known))}")
    the_task = get_task(task, options.get("template"))
    specs = _sae_specs(saes, out, options.get("layer"))
    if train_probes:
        _train_missing_probes(path, the_task, log or (lambda line: None))
    cfg = ScoreCommandConfig(store=str(path), saes=specs, out=str(out), task=task, **options)
    run_score(cfg, progress=progress, log=log or (lambda line: None))
    return Results(out, the_task.name)


def _sae_specs(saes: Iterable[Any], out: Path, layer: int | None = None) -> list[str]:
    """Paths and names as given; sae-lens SAE objects saved under OUT/sae_lens/NAME once (same weights: same
    folder content, so a rerun scores nothing again)."""
    items = list(saes.items()) if isinstance(saes, dict) else [(None, s) for s in saes]
    specs = []
    for i, (name, sae) in enumerate(items):
        if isinstance(sae, (str, Path)):
            specs.append(str(sae))
            continue
        if not hasattr(sae, "save_model") or not hasattr(sae, "cfg"):
            raise InputError(f"saes[{i}] is a {type(sae).__name__}; expected a path, a catalog name or a sae-lens SAE")
        name = name or _sae_name(sae, i)
        hook = getattr(getattr(sae.cfg, "metadata", None), "hook_name", None) or ""
        if layer is None and not re.search(r"(?:^|\.)(?:blocks|layers)\.\d+\.", hook):
            raise InputError(f"sae-lens SAE {name}: its layer is unknown (its cfg.metadata.hook_name is "
                             f"{hook!r}); pass layer=N to score_saes, or set the hook name "
                             f"(blocks.N.hook_resid_post)")
        folder = out / "sae_lens" / name
        _save_if_changed(sae, folder)
        specs.append(str(folder))
    if not specs:
        raise InputError("no SAEs given: pass paths, catalog names or sae-lens SAE objects")
    return specs


def _sae_name(sae, index: int) -> str:
    meta = getattr(sae.cfg, "metadata", None)
    for value in (getattr(meta, "sae_id", None), getattr(meta, "hook_name", None)):
        if value:
            return str(value).replace("/", "_")
    return f"sae_{index}"


def _save_if_changed(sae, folder: Path) -> None:
    """Save a sae-lens SAE to `folder` unless the folder already holds exactly these weights."""
    import tempfile

    from actstore.store.digests import folder_sha256

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        sae.save_model(tmp)
        if folder.is_dir() and folder_sha256(folder) == folder_sha256(tmp):
            return
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        Path(tmp).rename(folder)
        Path(tmp).mkdir()  # for TemporaryDirectory's cleanup


def _train_missing_probes(path: Path, task, log) -> None:
    from actstore.score.probes import probe_store

    info = open_store(path)
    missing = [layer for layer in info.layers if layer not in info.probes.get(task.name, [])]
    if missing:
        log(f"training {task.name} probes for layers {missing}")
        probe_store(str(path), missing, task=task)


@dataclass(frozen=True)
class Results:
    """A results folder of `actstore score` (one or several tasks), its tables as pandas DataFrames: those of
    `task` only when it is given (what `score_saes` returns), else of every task in the folder."""

    path: Path
    task: str | None = None

    def __post_init__(self):
        if not (Path(self.path) / "saes.parquet").is_file():
            raise InputError(f"{self.path} is not a results folder of `actstore score` (it has no saes.parquet)")

    @property
    def saes(self):
        """One row per (SAE, task): status, means over evaluated classes, intervals, nulls."""
        import pandas as pd

        from actstore.run.results import read_saes

        return self._only(pd.DataFrame(read_saes(Path(self.path))))

    @property
    def classes(self):
        """One row per (SAE, task, evaluated class): precision, recall, splitting, absorption."""
        import pandas as pd

        from actstore.run.results import read_classes

        return self._only(pd.DataFrame(read_classes(Path(self.path))))

    @property
    def tokens(self):
        """One row per (SAE, task, class, probe true positive of the test split): per-token absorption records."""
        import pandas as pd

        path = Path(self.path) / "tokens.parquet"
        frame = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
        if "task" not in frame and len(frame):
            frame["task"] = "first_letter"  # a folder written before tasks
        return self._only(frame)

    def _only(self, frame):
        """The rows of this Results' task (all rows when it has none)."""
        if self.task is None or not len(frame):
            return frame
        return frame[frame["task"] == self.task].reset_index(drop=True)

    @property
    def tasks(self) -> list[str]:
        """The tasks this folder holds results for (all of them, whatever `task` selects)."""
        return sorted(Results(self.path).saes["task"].unique())

    def report(self) -> Path:
        """Write the HTML report (RESULTS/report); returns report.html's path."""
        from actstore.report.pages import write_report

        return Path(write_report(self.path)["html"])

    def explorer(self, open: bool = False) -> Path:
        """Write the absorption explorer (RESULTS/explorer); returns index.html's path, opened in a browser when
        `open`."""
        from actstore.report.explorer import write_explorer

        html = Path(write_explorer(self.path)["html"]).resolve()
        if open:
            import webbrowser

            webbrowser.open(html.as_uri())
        return html


def load_results(path: str | Path, task: str | None = None) -> Results:
    """The tables of an existing results folder: of one task (its name, e.g. first_letter or labels:vowels), or
    of every task when None."""
    return Results(Path(path), task)
