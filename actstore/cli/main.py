"""Store a model's activations once, then measure the feature absorption of many SAEs on them, for any token task.

The `actstore` command line: the parser, built from one config dataclass per command (cli/configs.py, and
ExtractConfig, ScoreCommandConfig beside their work), and `main`, which parses, checks every argument (cli/checks.py),
runs the command (cli/commands.py) and turns any failure into one line and an exit code. The docstring under each
field is its --help text (read from the source, so the two cannot drift); renamed options keep their old spellings
as hidden aliases (a config's ALIASES).

    actstore extract --model M --layers SPEC --out STORE [...]   run a model once, store its activations
    actstore synth-model --out DIR [--layers N] [--spelling]     the synthetic world's model
    actstore probe STORE [--layers SPEC] [--task NAME]           ground-truth probes of a task (first_letter)
    actstore saes list [--release R] [--layer L] [--width W]     the SAEs of a release (sae-lens catalog)
    actstore synth-saes --store STORE --layer L --out DIR        synthetic SAEs with planted absorption
    actstore synth-world --out DIR [--size N]                    a ground-truth world: SAEs trained by sae-lens, measured
    actstore score STORE --saes SPEC... --out RESULTS [--task T] absorption, splits, precision/recall per SAE
    actstore report RESULTS [--out DIR]                          figures and an HTML page of the results
    actstore explore RESULTS [--out DIR]                         a static page to explore absorption token by token
    actstore info STORE [--json]                                 what a store holds, complete or not, size
    actstore verify STORE                                        read every shard, check every checksum
    actstore demo --out DIR                                      the chain end to end on synthetic data
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m actstore.cli.main`: the entry point, whose guard covers the imports below
    from actstore.__main__ import main as _entry

    raise SystemExit(_entry())

import argparse
import ast
import dataclasses
import functools
import inspect
import os
import sys
import textwrap
import typing
from pathlib import Path

from actstore.cli.checks import check, failure_line, literal_choices
from actstore.cli.commands import (cmd_demo, cmd_explore, cmd_extract, cmd_info, cmd_probe, cmd_report, cmd_saes,
                                   cmd_score, cmd_synth_model, cmd_synth_saes, cmd_synth_world, cmd_verify)
from actstore.cli.configs import (DemoConfig, ExploreConfig, InfoConfig, ProbeCommandConfig, ReportConfig, SaesConfig,
                                  SynthModelConfig, SynthSAEsCommandConfig, VerifyConfig)
from actstore.errors import InputError, RunFailed, import_advice
from actstore.extract.pipeline import ExtractConfig
from actstore.run.runner import ScoreCommandConfig
from actstore.world.run import SynthWorldConfig

POSITIONAL = {"store", "action", "results"}
HIDDEN = {"worker_env"}  # fault injection for tests, not a CLI option


@functools.lru_cache(maxsize=None)  # reading the source costs ~30 ms a class; main() runs many times in tests
def field_docs(cls) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body (or a dataclass base's)."""
    docs = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, following in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                    and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def add_config_arguments(parser: argparse.ArgumentParser, config) -> None:
    """One option per field of a command's config: its docstring is the help, a Literal type's values (or a
    field's metadata "choices", a function of the registry) are listed there and checked by cli.checks (one place
    for every check), and the config's ALIASES (old spellings of renamed options) are accepted, hidden."""
    docs, hints = field_docs(config), typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if f.name in HIDDEN:
            continue
        kind = hints[f.name]
        optional = type(None) in typing.get_args(kind)
        base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind  # X | None -> X
        allowed = literal_choices(kind) or (f.metadata["choices"]() if "choices" in f.metadata else None)
        flag = f"--{f.name.replace('_', '-')}"
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        doc = docs[f.name] + (f" (one of: {', '.join(allowed)})" if allowed and not all(a in docs[f.name]
                                                                                      for a in allowed) else "")
        if f.name in getattr(config, "positional", POSITIONAL):
            parser.add_argument(f.name, help=doc)
            continue
        if base is bool:
            parser.add_argument(flag, action="store_true", help=doc)
        elif typing.get_origin(base) in (list, tuple):
            item = typing.get_args(base)[0]
            item = str if typing.get_origin(item) is typing.Literal else item
            default = None if required else f.default_factory() if f.default is dataclasses.MISSING else list(f.default)
            parser.add_argument(flag, type=item, nargs="+", required=required, default=default, help=doc)
        elif required:
            parser.add_argument(flag, type=_parse_type(base), required=True, help=doc)
        else:
            shown = "" if "default" in docs[f.name] else f" (default: {f.default})"
            parser.add_argument(flag, type=_parse_type(base), default=f.default, help=doc + shown)
        for alias in [a for a, name in getattr(config, "ALIASES", {}).items() if name == f.name]:
            kwargs = {"action": "store_true"} if base is bool else {"type": _parse_type(base)}
            parser.add_argument(alias, dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def _parse_type(base):
    """What argparse converts an option's text with: str for a Literal (cli.checks checks the value)."""
    return str if typing.get_origin(base) is typing.Literal else base


COMMANDS = {
    "extract": (ExtractConfig, cmd_extract),
    "synth-model": (SynthModelConfig, cmd_synth_model),
    "probe": (ProbeCommandConfig, cmd_probe),
    "saes": (SaesConfig, cmd_saes),
    "synth-saes": (SynthSAEsCommandConfig, cmd_synth_saes),
    "synth-world": (SynthWorldConfig, cmd_synth_world),
    "score": (ScoreCommandConfig, cmd_score),
    "report": (ReportConfig, cmd_report),
    "explore": (ExploreConfig, cmd_explore),
    "info": (InfoConfig, cmd_info),
    "verify": (VerifyConfig, cmd_verify),
    "demo": (DemoConfig, cmd_demo),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (not usage plus error), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="actstore", description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (config, _) in COMMANDS.items():
        doc = " ".join(config.__doc__.split())
        add_config_arguments(sub.add_parser(name, help=doc.split(";")[0], description=doc), config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Its input checks' errors (InputError) are one line and exit 2; a stopped run (Ctrl-C,
    SIGTERM, the disk, a worker) is one line and exit 1 (130 for Ctrl-C, 143 for SIGTERM); anything else is a bug
    in actstore: one line naming a log file that holds the traceback, exit 1. A Ctrl-C while the arguments are
    parsed is one line too; one in the imports before this runs is actstore/__main__.py's (the entry point)."""
    from actstore.store import locks
    from actstore.__main__ import say, stopped

    if argv is None:  # a process's own command line: a console script installed when it named actstore.cli.main:main
        from actstore.__main__ import main as entry

        return entry()  # the entry point's handling, which calls this again with the arguments
    words = [a for a in argv if not a.startswith("-")]
    command = words[0] if words else ""  # for a line before parsing ends; then the parsed one
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        config_cls, run = COMMANDS[command]
        cfg = config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
                            if f.name not in HIDDEN})
        check(command, cfg)  # every argument, before any work
        with locks.hold(command, cfg):
            return run(cfg)
    except BrokenPipeError:  # `actstore info ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except InputError as err:
        say(f"{_who(command)}: error: {err}")
        return 2
    except (OSError, RunFailed, KeyboardInterrupt) as err:  # the disk, a worker, Ctrl-C, SIGTERM: one line
        line, code = stopped() or (failure_line(err), 130 if isinstance(err, KeyboardInterrupt) else 1)
        if getattr(err, "remote_traceback", "") and code == 1:  # a worker's unforeseen failure: keep its traceback
            line += f" (the worker's traceback is in {error_log(command, argv, err)})"
        say(f"{_who(command)}: {line}")
        return code
    except ImportError as err:  # the environment, not our code nor the input: say what to do
        say(f"{_who(command)}: error: {type(err).__name__}: {err}{import_advice()}")
        return 1
    except Exception as err:  # noqa: BLE001 - a bug in actstore, not the user's input: say so, keep the traceback
        if stop := stopped():  # what a Ctrl-C or SIGTERM broke on its way (Ray's processes get Ctrl-C too)
            say(f"{_who(command)}: {stop[0]}")
            return stop[1]
        log = error_log(command, argv, err)
        detail = str(err).splitlines()[0] if str(err) else ""
        say(f"{_who(command)}: internal error (a bug in actstore, not in your input): "
            f"{type(err).__name__}: {detail}; the traceback is in {log}; please report it with that file")
        return 1


def error_log(command: str, argv: list[str] | None, err: BaseException) -> Path:
    """Write the command line, versions and traceback of an unexpected error (and a worker's, when it carries
    one) to $ACTSTORE_CACHE/logs/ (default ~/.cache/actstore/logs), or the temporary folder if that cannot be
    written; returns the file's path."""
    import platform
    import tempfile
    import time
    import traceback

    from actstore import __version__
    from actstore.extract.model import cache_dir

    text = (f"actstore {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
            f"command: actstore {' '.join(sys.argv[1:] if argv is None else argv)}\n"
            f"working folder: {os.getcwd()}\n\n" + "".join(traceback.format_exception(err))
            + (f"\nthe worker's traceback:\n{err.remote_traceback}" if getattr(err, "remote_traceback", "") else ""))
    name = f"internal-error-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (cache_dir() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue
    return Path("(no writable folder for the log)")


def _who(command: str) -> str:
    """What a line of main() starts with: `actstore score`, or `actstore` before a command is known."""
    return f"actstore {command}" if command else "actstore"


# `python -m actstore.cli.main` runs actstore/__main__.py's entry point instead: see the top of this file.
