"""Values of command options, parsed and checked the same way for the CLI (actstore/cli/checks.py, the one
place every argument is checked) and the stages below it: numbers, typed choices, layer specs. BadArgument is
the error every check raises: one line saying what was expected and what to do.

    integer("--seeds", 0, 1)               # BadArgument: "--seeds 0: expected a positive integer"
    choices(cfg)                           # every Literal-typed field of a config holds one of its values
    layer_spec("--layers", "0-3,5")        # [0, 1, 2, 3, 5]; "all" -> None
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing

from actstore.errors import InputError


class BadArgument(InputError):
    """An argument that cannot work; the message is one line saying what was expected and what to do."""


# ---------------------------------------------------------------------------- numbers and choices


def integer(name: str, value: int | None, low: int = 1, what: str = "") -> None:
    """`value` (when given) is an integer >= low."""
    if value is not None and value < low:
        kind = "a positive integer" if low == 1 else "an integer >= 0" if low == 0 else f"an integer >= {low}"
        raise BadArgument(f"{name} {value}: expected {kind}{what}")


def fraction(name: str, value: float | None, closed: bool = False) -> None:
    """`value` (when given) is in [0, 1) (or [0, 1] when `closed`)."""
    if value is not None and not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise BadArgument(f"{name} {value}: expected a fraction in [0, {'1]' if closed else '1)'}")


def positive_number(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise BadArgument(f"{name} {value}: expected a positive number")


def choice(name: str, value: str | None, allowed) -> None:
    if value is not None and value not in allowed:
        raise BadArgument(f"{name} {value!r}: expected one of {', '.join(sorted(allowed))}")


def literal_choices(kind) -> tuple | None:
    """The values a field's type allows when it is a typing.Literal (or X | None, or a list of one): None otherwise."""
    args = [a for a in typing.get_args(kind) if a is not type(None)] if typing.get_origin(kind) in (
        typing.Union, types.UnionType) else [kind]
    if len(args) == 1 and typing.get_origin(args[0]) in (list, tuple):
        args = [typing.get_args(args[0])[0]]
    return typing.get_args(args[0]) if len(args) == 1 and typing.get_origin(args[0]) is typing.Literal else None


def choices(cfg) -> None:
    """Every field of a command's config typed as a Literal holds one of its values (for a list, each item):
    the one check of the typed choices, which come from the registries (scorer backends, L1 solvers, metric
    versions, nulls, causal answer tokens)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        allowed = literal_choices(hints[f.name])
        if allowed is None:
            continue
        value = getattr(cfg, f.name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            choice(f"--{f.name.replace('_', '-')}", item, allowed)


MAX_LAYER = 9999
"""the largest block index a --layers spec may name (the deepest models have a few hundred blocks)"""


def layer_spec(name: str, spec: str | None) -> list[int] | None:
    """'0,5,12', '0-25' (ascending) or 'all' (None) -> sorted layers; anything else is BadArgument."""
    if spec is None or spec.strip() == "all":
        return None
    layers: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise BadArgument(f"{name} {spec!r}: expected layers as a list (0,5,12), an ascending range (0-25) "
                              f"or all; {part.strip()!r} is none of these")
        lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if hi < lo:
            raise BadArgument(f"{name} {spec!r}: the range {lo}-{hi} runs backwards; write {hi}-{lo}")
        if hi > MAX_LAYER:  # checked before the range is expanded: 0-999999999 would fill the memory
            raise BadArgument(f"{name} {spec!r}: layer {hi} is beyond any model's blocks (at most {MAX_LAYER} here); "
                              f"name the layers the model or store has")
        layers.update(range(lo, hi + 1))
    return sorted(layers)
