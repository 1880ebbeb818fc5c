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
"""

from __future__ import annotations

import os
import traceback

from actstore.errors import InputError, RunFailed, import_advice


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
