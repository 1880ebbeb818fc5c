"""Ray actors that start cleanly or fail in one line; extraction and scoring both start theirs here.

An exception in an actor's constructor kills the actor: Ray restarts it (max_restarts) and runs the constructor
again, logs its traceback each time, and fails every call queued on it with a wrapped error whose text is that
traceback again. A constructor's failure is nearly always deterministic (a model that cannot load, an import that
fails), so a retry gains nothing and the user sees pages of noise. Here the constructor runs inside a guard that
keeps its failure instead of dying, the driver asks every actor for it before giving it work, and a failure is
raised in the driver as one line: an InputError for bad input (exit 2), a RunFailed otherwise (exit 1), with the
worker's traceback kept for the log. An actor whose process dies after it has started is still restarted and its
calls retried, as the options given say; if its constructor fails on that restart, the process exits, so those
calls end as a dead actor's (one line), not as errors of a half-built one.

    workers = launch(ModelWorker, 2, options, cfg, source)   # constructors running, each under the guard
    ready({"model worker": workers})                         # raises InputError or RunFailed (one line)
    start(LayerScorer, 1, options, "score worker", cfg)      # both at once, for one kind of actor
    get(refs, "model worker")                                # ray.get; its errors as one line
    pool = worker_pool(device, workers, worker_env)          # how many workers, and each one's Ray options

Ray itself is started here too (`init_ray`), quiet: a worker's failure reaches the user as actstore's one line,
not as Ray's notices about it, and a SIGTERM as the command's own line, not as a native stack dump.
"""

from __future__ import annotations

import os
import traceback
from typing import NamedTuple

from actstore.errors import InputError, RunFailed, import_advice


class WorkerPool(NamedTuple):
    """The workers of a run on the joined Ray cluster: their count and the options each actor is started with."""

    workers: int
    """actors to start: --workers, else one per GPU (cuda), else one"""
    gpus: int
    """GPUs the cluster offers to the run (0 for a CPU run)"""
    threads: int
    """CPU threads each worker may use: the cluster's CPUs shared evenly (at least 1)"""
    options: dict
    """ray.remote options: one GPU each (cuda) or `threads` CPUs each; one restart and one retry after a crash;
    the test-only environment variables, when any"""

    @property
    def worker_threads(self) -> int | None:
        """The threads a CPU worker sets torch to (None on a GPU: torch's default)."""
        return None if self.gpus else self.threads


def worker_pool(device: str, workers: int | None, worker_env: dict | None = None, check: bool = False) -> WorkerPool:
    """The worker pool extraction and scoring both start on the joined Ray cluster (ray.init first): one worker
    per GPU (cuda) or one CPU worker, unless `workers` says; each restarted once and its calls retried once after
    a crash. With `check`, more workers than the cluster can place (one GPU, or one CPU, each) is an InputError
    rather than a run that waits forever."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device.startswith("cuda") else 0
    cpus = int(resources.get("CPU", 1))
    n_workers = workers or max(1, gpus)
    if check and n_workers > (gpus if gpus else cpus):
        raise InputError(f"--workers {n_workers}: the Ray cluster has {gpus} GPUs and {cpus} CPUs, one "
                         f"{'GPU' if gpus else 'CPU'} per worker; use --workers {gpus or cpus} or fewer")
    threads = max(1, cpus // n_workers)
    options = dict(max_restarts=1, max_task_retries=1, num_gpus=1 if gpus else 0, num_cpus=0 if gpus else threads,
                   runtime_env={"env_vars": worker_env} if worker_env else None)
    return WorkerPool(n_workers, gpus, threads, options)


def init_ray(address: str | None) -> None:
    """ray.init as actstore runs it: no dashboard, workers' logs not copied to this terminal, no "(raylet) Task ...
    failed. There are 1 retries remaining" notice when work is retried or its actors are killed on the way out
    (the driver says what failed, in one line), and this process's own SIGINT and SIGTERM handlers kept. Ray
    replaces the SIGTERM handler as it starts, with one that exits (code 15) and, once connected, with a native
    one that dumps a stack ("*** SIGTERM received ***") and aborts; actstore's entry point (actstore/__main__.py)
    turns SIGTERM into one line and exit 143 after the same cleanup as Ctrl-C. A process without handlers of its
    own (a notebook, a library caller) keeps Ray's."""
    import signal

    import ray

    # read from the environment by Ray's core when the driver connects (RayConfig); a caller's setting wins
    os.environ.setdefault("RAY_enable_output_error_log_if_still_retry", "0")
    kept = {s: h for s in (signal.SIGINT, signal.SIGTERM)
            if callable(h := signal.getsignal(s)) and h is not signal.default_int_handler}
    if signal.SIGTERM in kept:
        # nor the native handler while Ray starts (RAY_DISABLE_FAILURE_SIGNAL_HANDLER, which Ray reads from this module
        # as the driver connects); Ray's worker processes keep theirs, whose dumps go to their log files
        from ray._private import ray_constants

        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    except SystemExit as stop:  # Ray's handler got a SIGTERM while Ray started (it exits, code 15): pass it on
        if stop.code != signal.SIGTERM or signal.SIGTERM not in kept:
            raise
        signal.signal(signal.SIGTERM, kept[signal.SIGTERM])
        kept[signal.SIGTERM](signal.SIGTERM, None)  # ours: raises KeyboardInterrupt, as for any SIGTERM
    for signum, handler in kept.items():
        signal.signal(signum, handler)


def _guarded(cls: type) -> type:
    """A subclass of `cls` whose constructor keeps its exception instead of raising it, and answers
    `startup_failure()` with (is bad input, one line, traceback) or None."""

    class Guarded(cls):
        def __init__(self, *args, **kwargs):
            self._startup_failure = None
            try:
                super().__init__(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - reported to the driver, which raises it as one line
                import ray

                if ray.get_runtime_context().was_current_actor_reconstructed:
                    os._exit(1)  # a restart after a crash, and the driver asks no one: die, so its calls fail as "died"
                self._startup_failure = (isinstance(err, InputError), _cause_line(err),
                                         "".join(traceback.format_exception(err)))

        def startup_failure(self) -> tuple[bool, str, str] | None:
            return self._startup_failure

    Guarded.__name__ = Guarded.__qualname__ = cls.__name__
    return Guarded


def _cause_line(err: BaseException) -> str:
    """One line for an exception raised while an actor started: its message (with what to do for an import)."""
    detail = str(err).splitlines()[0] if str(err) else ""
    if isinstance(err, InputError):
        return detail
    return f"{type(err).__name__}: {detail}" + (import_advice() if isinstance(err, ImportError) else "")


def launch(cls: type, count: int, options: dict, *args, **kwargs) -> list:
    """`count` actors of `cls` (ray.remote options `options`), constructed with *args, **kwargs under the guard;
    their constructors are still running: wait for them with `ready` before giving them work."""
    import ray

    remote = ray.remote(_guarded(cls)).options(**options)
    return [remote.remote(*args, **kwargs) for _ in range(count)]


def ready(actors: dict[str, list]) -> None:
    """Wait until every actor ({what they are: actors}, e.g. {"model worker": [...]}) has started. A constructor's
    failure ends them all and raises: InputError for bad input, else RunFailed naming what failed (with the
    worker's traceback)."""
    everyone = [a for group in actors.values() for a in group]
    try:
        for what, group in actors.items():
            failures = [f for f in get([a.startup_failure.remote() for a in group], what) if f is not None]
            if failures:
                bad_input, line, remote_traceback = failures[0]
                raise InputError(line) if bad_input else RunFailed(f"a {what} could not start: {line}",
                                                                   remote_traceback)
    except BaseException:
        kill(everyone)
        raise


def start(cls: type, count: int, options: dict, what: str, *args, **kwargs) -> list:
    """`launch` and `ready` for actors of one kind: `count` started actors of `cls`, or one line of failure."""
    actors = launch(cls, count, options, *args, **kwargs)
    ready({what: actors})
    return actors


def get(refs, what: str):
    """ray.get(refs), with the errors it can raise as one line each: a worker's InputError, RunFailed or OSError
    as itself; an actor that died (after its restarts) as RunFailed. Any other error in a worker is a bug and
    stays Ray's error, with the worker's traceback, for the log."""
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as err:
        if isinstance(err.cause, (InputError, RunFailed, OSError)):
            raise err.cause from None
        raise
    except RayActorError as err:
        raise RunFailed(f"a {what} died and did not come back after its restart ({type(err).__name__}); rerun the "
                        f"same command to resume: finished work is kept") from None
    except RayError as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise RunFailed(f"Ray failed while waiting for a {what}: {type(err).__name__}: {detail}; rerun the same "
                        f"command to resume: finished work is kept") from None


def kill(actors: list) -> None:
    import ray

    for actor in actors:
        ray.kill(actor)
