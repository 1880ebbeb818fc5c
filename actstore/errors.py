"""What kind of failure an error is, so that the command line says the right thing about it.

    InputError    what the user gave cannot work: an argument, a file, a store, a model, an SAE. The message is
                  one line (what was given, what was expected, what to do); the CLI prints it and exits 2.
    RunFailed     the run stopped for a reason outside the input: a worker died or could not start, a download
                  failed. One line, exit 1; rerunning resumes. When a worker met an unexpected error, the
                  worker's traceback rides along and the CLI writes it to a log file.
    anything else a bug in actstore: the CLI prints one short line, writes the traceback to a log file and
                  names it, exit 1. It is never reported as the user's mistake.

InputError is a ValueError and RunFailed a RuntimeError, as the errors they replace were, so code and tests that
catch those still do. Where an input error also has to be a KeyError (a name the store or catalog lacks) or a
FileNotFoundError (a path that is not there), MissingKey and MissingFile are both.
"""

from __future__ import annotations


def import_advice() -> str:
    """What to do about an ImportError: the environment is broken or something shadows an installed package."""
    import os

    return (f". Python cannot import what actstore needs: reinstall the environment (`make setup`), and check that "
            f"nothing in the working folder {os.getcwd()} is named like an installed package (a folder with an "
            f"__init__.py shadows it)")


class InputError(ValueError):
    """Input that cannot work; its message is one line saying what was expected and what to do."""


class MissingKey(InputError, KeyError):
    """A name the store, catalog or results lack (a layer, a probe, a release)."""

    __str__ = Exception.__str__  # the message as written, not KeyError's quoted repr


class MissingFile(InputError, FileNotFoundError):
    """A file or folder the input names that is not there."""


class NotScorable(InputError):
    """This SAE (or its layer) cannot be scored; the message says why. Other SAEs are unaffected (the runner
    writes a row saying so)."""


class RunFailed(RuntimeError):
    """A run that stopped outside the user's input (a worker died or could not start, a download failed); one
    line, and rerunning resumes. `remote_traceback`: a worker's traceback when the cause was unexpected there (the
    CLI writes it to a log file and names the file)."""

    def __init__(self, message: str, remote_traceback: str = ""):
        super().__init__(message)
        self.remote_traceback = remote_traceback

    def __reduce__(self):  # crosses Ray (pickle) with its traceback
        return type(self), (self.args[0], self.remote_traceback)
