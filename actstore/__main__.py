"""The `actstore` command's entry point: the console script, `python -m actstore` and `python -m actstore.cli.main` all
start here, so that Ctrl-C or SIGTERM at any moment of a command ends it in one line.

The command line imports torch (about a second) before it parses anything; a Ctrl-C there used to end in Python's
traceback. This module imports nothing but the standard library before its signal handlers are in place, then
imports the CLI inside its guard:

    Ctrl-C    KeyboardInterrupt in the main thread, as Python's own handler raises it; the command's cleanup runs
              (actors killed, locks released), one line ("interrupted; ..."), exit 130. During the CLI's imports it
              waits for their end (under a second): raised in torch's, it can abort the process from C++
    SIGTERM   KeyboardInterrupt too, so that every cleanup written for Ctrl-C runs for it; one line ("stopped
              (SIGTERM); ..."), exit 143. Ray's core replaces the handler on connecting, with a native stack dump:
              actstore.cluster.init_ray puts it back.
    again     a second signal while the first one's cleanup runs ends the process at once, with the line if it is
              not out yet: what was written is whole (parts and shards are renamed into place; the locks are the
              kernel's, freed with the process)
    missed    a KeyboardInterrupt that Python could only print and drop (it landed in an at-fork hook while Ray
              spawned its processes) is not lost: the signal comes again
    after     once a command has failed or stopped and printed its line, stdout and stderr go to /dev/null: Ray's and
              zarr's threads complain while the process shuts down, and the line is what the user needs

Not covered: the ~40 ms before this module runs (Python's startup and `import actstore`). A signal a command was
started with ignored (`actstore ... &` from a script ignores SIGINT) stays ignored.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGTERM_LINE = "stopped (SIGTERM); what finished is kept: run the same command again to resume"


class Stop(KeyboardInterrupt):
    """What the handler raises, for SIGINT and SIGTERM: a KeyboardInterrupt, so that every cleanup written for Ctrl-C
    runs, of a type of its own, so that Python does not end the process with SIGINT once it has exited (it does after
    a plain KeyboardInterrupt passed through code run with PyRun_*, as torch's import runs some: a SIGTERM then
    ended as a Ctrl-C, -2 rather than 143)."""


class _Handler:
    """SIGINT's and SIGTERM's handler, and what it has seen. The first signal raises Stop in the main thread (for
    SIGTERM too: Ray turns an exception raised while it waits into a plain KeyboardInterrupt anyway, so `received`
    says which it was), or, during the CLI's imports, is only noted. A second one while the command is still
    stopping ends the process at once, with the stop's line if none was printed yet; any once the command has
    returned (`code` set) ends it silently."""

    def __init__(self):
        self.command = ""  # the command word, for a line printed here
        self.importing = True  # the CLI's imports: the first signal waits for their end (see main)
        self.received: int | None = None
        self.said = False  # the command's last line is out
        self.code: int | None = None

    def __call__(self, signum: int, frame) -> None:
        if self.received is None and self.code is None:
            self.received = signum
            if not self.importing:
                raise Stop
            return
        code = self.code
        if code is None:  # the first one's cleanup (Ray's shutdown) runs long, and the user insists
            line, code = stopped() or _stop_line(signum)
            if not self.said:
                try:
                    say(f"actstore{' ' + self.command if self.command else ''}: {line}")
                except (OSError, RuntimeError, ValueError):  # stderr closed, or interrupted in the middle of a write
                    pass
        _flush()
        os._exit(code or 128 + signum)


_HANDLER = _Handler()


def stopped() -> tuple[str, int] | None:
    """(the line to print, the exit code) once SIGINT or SIGTERM has stopped this process's command, else None.
    Whatever the command raised after it (a Ray worker that died of the same Ctrl-C) is reported as the stop."""
    return None if _HANDLER.received is None else _stop_line(_HANDLER.received)


def say(line: str) -> None:
    """Print the command's last line on stderr: a signal after this ends the process without another."""
    _HANDLER.said = True
    print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command (sys.argv's by default) under the handlers; returns its exit code (see actstore.cli.main.main)."""
    argv = sys.argv[1:] if argv is None else argv
    _HANDLER.__init__()
    _HANDLER.command = next((a for a in argv if not a.startswith("-")), "")
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _HANDLER)
    sys.unraisablehook = _unraisable
    try:
        # torch and the rest: a second of imports. A signal meanwhile is acted on once they are done: an exception
        # raised in some of torch's import code passes through C++ that cannot pass it on, which aborts the process
        # ("terminate called after throwing an instance of 'pybind11::error_already_set'")
        from actstore.cli import main as cli

        _HANDLER.importing = False
        if _HANDLER.received is not None:
            raise Stop
        code = cli.main(argv)
    except KeyboardInterrupt:  # before the command's own handling began (imports), or between its steps
        line, code = stopped() or _stop_line(signal.SIGINT)
        say(f"actstore{' ' + _HANDLER.command if _HANDLER.command else ''}: {line}")
    except SystemExit as done:  # argparse: --help, or a usage error it printed
        _HANDLER.code = done.code if isinstance(done.code, int) else 1
        raise
    if code == 130 and _HANDLER.received == signal.SIGTERM:  # a command that says "interrupted" itself (extract)
        code = 143
    _HANDLER.code = code
    if code:
        _quiet()
    return code


def _stop_line(signum: int) -> tuple[str, int]:
    if signum == signal.SIGTERM:
        return SIGTERM_LINE, 143  # 128 + the signal, as a shell reports a process it ended
    from actstore.cli.checks import failure_line  # the standard library and actstore.errors: milliseconds

    return failure_line(KeyboardInterrupt()), 130


def _unraisable(unraisable) -> None:
    """sys.unraisablehook: a stop signal's KeyboardInterrupt that landed where Python can only print it and go on
    (an at-fork hook while Ray spawns its processes, a __del__) is not lost, nor printed: the signal comes again, from
    a timer thread, and lands in the command's own code."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt) and _HANDLER.received and _HANDLER.code is None:
        signum, _HANDLER.received = _HANDLER.received, None
        threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
        return
    sys.__unraisablehook__(unraisable)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it anyway
            pass


def _quiet() -> None:
    """stdout and stderr to /dev/null, for the rest of the process (its shutdown), once its line is out."""
    _flush()
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(null, fd)
    os.close(null)


if __name__ == "__main__":  # `python -m actstore`: the importable copy runs, the one whose state cli.main reads
    from actstore.__main__ import main as _entry

    sys.exit(_entry())
