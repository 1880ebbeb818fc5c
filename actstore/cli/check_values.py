"""Checks of plain values: numbers, typed choices, layer and width specs (actstore/options.py, which the stages
below the CLI use too), task names. Part of cli/checks.py's one place for every argument check.

    integer("--seeds", 0, 1)               # BadArgument: "--seeds 0: expected a positive integer"
    choices(cfg)                           # every Literal-typed field of a config holds one of its values
    layer_spec("--layers", "0-3,5")        # [0, 1, 2, 3, 5]; "all" -> None
"""

from __future__ import annotations


from actstore.errors import InputError
from actstore.options import (MAX_LAYER, BadArgument, choice, choices, fraction, integer,  # noqa: F401 - re-exported
                              layer_spec, literal_choices, positive_number)


def task_spec(name: str, spec: str, template: str | None = None):
    """A task the registry knows (actstore.tasks.registry): a built-in name or labels:FILE; returns it."""
    from actstore.tasks.registry import get_task

    try:
        return get_task(spec, template)
    except InputError as err:
        raise BadArgument(str(err)) from None


def widths(name: str, spec: str | None) -> None:
    from actstore.saes.loading import parse_width

    for width in (spec or "").split(",") if spec is not None else []:
        try:
            if parse_width(width.strip()) <= 0:
                raise ValueError
        except ValueError:
            raise BadArgument(f"{name} {spec!r}: expected widths such as 16k,65k,1m or 2048; "
                              f"{width.strip()!r} is not one") from None
