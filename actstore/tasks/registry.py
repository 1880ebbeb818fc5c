"""The task registry: `--task NAME` (a built-in) or `--task labels:FILE` (the user's labels)."""

from __future__ import annotations

from actstore.errors import InputError
from actstore.tasks.base import FIRST_LETTER, Task
from actstore.tasks.builtin import BUILTIN
from actstore.tasks.labels import PREFIX, labels_task

DEFAULT_TASK = FIRST_LETTER


def task_names() -> list[str]:
    """What `--task` accepts: the built-in names, then labels:FILE."""
    return [*BUILTIN, f"{PREFIX}FILE"]


def get_task(spec: str | Task, template: str | None = None) -> Task:
    """The task a `--task` value names. `template` gives a labels:FILE task its own prompt (built-ins have theirs)."""
    if isinstance(spec, Task):
        return spec
    if spec.startswith(PREFIX):
        return labels_task(spec[len(PREFIX):], template)
    if spec not in BUILTIN:
        raise InputError(f"--task {spec!r}: not a task; choose one of {', '.join(task_names())}")
    if template is not None:
        raise InputError(f"--template gives a labels:FILE task its prompt; {spec} has its own "
                         f"({BUILTIN[spec].template!r})")
    return BUILTIN[spec]


def relabel_message(task) -> str:
    """The one line for `extract --task` of a task that relabels another's rows."""
    return (f"--task {task.name} relabels {task.prompt_task}'s rows (the same prompt, the same activations): it needs "
            f"no extraction of its own; extract {task.prompt_task} if the store lacks it, then run `actstore probe "
            f"STORE --task {task.name}` and `actstore score STORE --task {task.name} ...`")
