"""Every command's arguments, checked in one place before any work starts (cli.main calls `check`): a config's
typed choices, then the command's own checks. The checks are split by concern (check_values: numbers, choices,
specs; check_paths: stores, output folders, SAE sources; check_cluster: device, dtype, Ray, memory; check_extract
and check_score: those two commands' options); this module holds `check`, the other commands' checks, and the names
other modules call.

A bad argument raises BadArgument with one line: what was given, what was expected, what to do; the CLI
prints it and exits 2. Nothing here loads a model, starts Ray or reads activations: checks are cheap (a
directory listing, a TCP connect with a short timeout, a tiny tensor on the chosen device).

    check("score", cfg)                    # raises BadArgument: the config's typed choices (its Literal
                                           # fields, `choices`), then the command's own checks
    layer_spec("--layers", "0-3,5")        # [0, 1, 2, 3, 5]; "all" -> None
"""

from __future__ import annotations

from pathlib import Path

from actstore.cli import check_extract, check_score
from actstore.cli.check_paths import existing_store, outside_stores, release, writable_folder
from actstore.cli.check_values import (BadArgument, choice, choices, fraction, integer, layer_spec, literal_choices,
                                       task_spec, widths)

__all__ = ["BadArgument", "CHECKS", "check", "choices", "failure_line", "layer_spec", "literal_choices"]
# what cli.main, __main__ and the tests import from here (the stages below the CLI import actstore.options)


def check(command: str, cfg) -> None:
    """Check a command's config: its typed choices, then the command's own checks; raises BadArgument."""
    choices(cfg)
    CHECKS[command](cfg)


def _synth_saes(cfg) -> None:
    existing_store("--store", cfg.store)
    integer("--layer", cfg.layer, 0)
    writable_folder("--out", cfg.out)
    outside_stores("--out", cfg.out)
    for value in cfg.absorption:
        fraction("--absorption", value)
    for value in cfg.splits:
        integer("--splits", value, 2, " (latents covering one class)")
    integer("--width", cfg.width, 1)
    fraction("--min-split-share", cfg.min_split_share)
    integer("--seed", cfg.seed, 0)


def _synth_world(cfg) -> None:
    writable_folder("--out", cfg.out)
    outside_stores("--out", cfg.out)
    integer("--size", cfg.size, 1, " (1: minutes on 2 CPU cores)")
    integer("--seed", cfg.seed, 0)
    integer("--workers", cfg.workers, 1)
    integer("--bootstrap", cfg.bootstrap, 0)
    integer("--parents", cfg.parents, 2, " (a task has at least 2 classes)")
    integer("--children", cfg.children, 2, " (mutually exclusive children need at least 2)")
    from actstore.world.train import ARCHS

    unknown = [a for a in cfg.archs if a not in ARCHS]
    if unknown or not cfg.archs:
        raise BadArgument(f"--archs {' '.join(cfg.archs)}: expected one or more of {', '.join(ARCHS)}")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise BadArgument(f"--device {cfg.device!r}: expected auto, cpu or cuda (cuda:N)")


def _report(cfg) -> None:
    results = Path(cfg.results)
    if not results.is_dir() or not ((results / "saes.parquet").is_file() or (results / "parts").is_dir()):
        raise BadArgument(f"RESULTS {cfg.results}: not a results folder of `actstore score` (no saes.parquet or "
                          f"parts/ inside); run `actstore score STORE --out {cfg.results}` first")
    if cfg.out is not None:
        writable_folder("--out", cfg.out)
        outside_stores("--out", cfg.out)


def _probe(cfg) -> None:
    existing_store("STORE", cfg.store)
    task_spec("--task", cfg.task, cfg.template)
    layer_spec("--layers", cfg.layers)
    integer("--epochs", cfg.epochs, 1)
    integer("--seed", cfg.seed, 0)


def _saes(cfg) -> None:
    choice("ACTION", cfg.action, {"list"})
    release("--release", cfg.release)
    integer("--layer", cfg.layer, 0)
    widths("--width", cfg.width)


def _synth_model(cfg) -> None:
    writable_folder("--out", cfg.out)
    outside_stores("--out", cfg.out)
    integer("--layers", cfg.layers, 1)
    integer("--seed", cfg.seed, 0)
    if getattr(cfg, "spelling", False) and cfg.layers < 2:
        raise BadArgument(f"--spelling --layers {cfg.layers}: the spelling head sits in the last block and the causal "
                          f"metric hooks a block before it; use --layers 2 or more")


def _demo(cfg) -> None:
    writable_folder("--out", cfg.out)
    outside_stores("--out", cfg.out)
    integer("--seed", cfg.seed, 0)


CHECKS = {
    "extract": check_extract.extract, "synth-model": _synth_model, "probe": _probe, "saes": _saes,
    "synth-saes": _synth_saes, "synth-world": _synth_world, "score": check_score.score, "report": _report, "explore": _report,
    "info": lambda cfg: existing_store("STORE", cfg.store), "verify": lambda cfg: existing_store("STORE", cfg.store),
    "demo": _demo,
}


def failure_line(err: BaseException) -> str:
    """One line for a run that stopped: Ctrl-C, a full disk, another OS error, a worker's failure. What was
    written before is whole (atomic renames, per-shard markers), so rerunning resumes."""
    import errno

    if isinstance(err, KeyboardInterrupt):
        return "interrupted; what finished is kept: run the same command again to resume"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        return f"error: no space left on the device{where}; free space, then run the same command again to resume"
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        return f"error: {err.strerror or err}{where}; fix that, then run the same command again to resume"
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"error: {detail}"
