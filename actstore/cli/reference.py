"""The command-line reference, docs/cli.md, written from the parser's own `--help` so that it cannot drift.

    python -m actstore.cli.reference            rewrite docs/cli.md (`make docs` runs it)
    python -m actstore.cli.reference --check    exit 1 when docs/cli.md differs from what the parser says

The parser is built in this process (actstore.cli.main.build_parser) and every subcommand's help is formatted
at a fixed width, without colour, so the page is the same on any terminal. tests/test_docs.py compares it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actstore.cli.main import COMMANDS, build_parser

WIDTH = 110  # columns of the help text: the page's code blocks, whatever the terminal
PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"  # in the source tree (docs/ is not installed)

HEADER = """\
# Command-line reference

<!-- Written by `python -m actstore.cli.reference` (`make docs`) from the parser's own --help: do not edit by hand;
tests/test_docs.py fails when this page differs from the parser. -->

Every command's `--help`, as `actstore COMMAND --help` prints it. The options come from one config dataclass per
command (the docstring under each field is its help text). What the commands do, in depth:
[Commands](commands.md); their errors and exit codes: [Errors and bad input](errors.md).

"""


def _fixed(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser with a help formatter of WIDTH columns and no colour (Python 3.14 colours a terminal's help)."""
    formatter = parser.formatter_class
    parser.formatter_class = lambda prog: formatter(prog, width=WIDTH)
    parser.color = False
    return parser


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Command name -> its parser, in the order `actstore --help` lists them."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return dict(action.choices)


def render() -> str:
    """The page: `actstore --help`, then each command's, in COMMANDS' order."""
    parser = _fixed(build_parser())
    subs = subparsers(parser)
    assert list(subs) == list(COMMANDS), f"parser commands {list(subs)} differ from COMMANDS {list(COMMANDS)}"
    parts = [HEADER, "```text\n", parser.format_help().rstrip() + "\n", "```\n"]
    for name, sub in subs.items():
        parts += [f"\n## actstore {name}\n\n", "```text\n", _fixed(sub).format_help().rstrip() + "\n", "```\n"]
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(prog="python -m actstore.cli.reference", description=__doc__.split("\n")[0])
    args.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when they differ")
    args.add_argument("--out", type=Path, default=PAGE, help=f"the page (default: {PAGE})")
    opts = args.parse_args(argv)
    page = render()
    if opts.check:
        if not opts.out.is_file() or opts.out.read_text() != page:
            print(f"{opts.out} is out of date with the parser's --help: run `make docs` "
                  f"(or `python -m actstore.cli.reference`) and commit it", file=sys.stderr)
            return 1
        return 0
    opts.out.write_text(page)
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
