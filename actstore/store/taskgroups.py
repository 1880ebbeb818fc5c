"""Which group of a store holds each task's rows: `vocab` for first_letter, `vocab_<key>` for any other task with its
own prompt (its identity recorded in the group), the group of the task it relabels otherwise; and the
`actstore extract` command that adds a task's group when it is missing.

`_TaskGroupsMixin` is a part of `ActivationStore` (zarrstore.py): its methods use the store's `path`, `groups`,
`group_attrs` and `columns`.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from actstore.errors import MissingKey
from actstore.store.format import StoreError, is_vocab_group
from actstore.tasks.base import Task
from actstore.tasks.builtin import BUILTIN, FIRST_LETTER_TASK

if TYPE_CHECKING:  # for the annotation only: zarrstore imports this module
    from actstore.store.zarrstore import ActivationStore


class _TaskGroupsMixin:
    """`group_task`, `tasks` and `task_group` of `ActivationStore`."""

    def group_task(self, group: str) -> dict[str, Any] | None:
        """The identity of the task whose prompts a vocabulary group holds (`Task.identity()`): recorded in a
        `vocab_<key>` group; `vocab` is first_letter's (stores before tasks record nothing); None for others."""
        if group == "vocab":
            return self.group_attrs(group).get("task") or FIRST_LETTER_TASK.identity()
        task = self.group_attrs(group).get("task") if is_vocab_group(group) else None
        return dict(task) if isinstance(task, dict) else None

    def tasks(self) -> list[str]:
        """The tasks whose rows this store holds: the task of each vocabulary group (first_letter for `vocab`),
        then each built-in task that relabels a held group's rows (capitalized, when `vocab` is here). Not
        listed, yet available where `vocab` is: any labels:FILE task without a template (it relabels `vocab`)."""
        held = []
        for group in sorted(self.groups, key=lambda g: (g != "vocab", g)):
            task = self.group_task(group)
            if task is not None and task.get("name") not in held:
                held.append(task["name"])
        return held + [t.name for t in BUILTIN.values() if t.relabels and t.prompt_task in held and t.name not in held]

    def task_group(self, task: Task) -> str:
        """The group holding a task's rows, checked: it is here (else MissingKey saying which `actstore extract
        --task` adds it), and for a task with its own prompt, it was extracted for this very task (its name,
        classes, template and, for a label file, the file's bytes); a relabel task needs `vocab`'s text column."""
        group = task.group
        if group not in self.groups:
            what = (f"holds no rows of task {task.name}" if not task.relabels else
                    f"holds no rows of {task.prompt_task}, which task {task.name} relabels")
            raise MissingKey(f"{self.path} {what} (no group {group}; it has {sorted(self.groups) or 'none'}); add "
                             f"them with `{extract_command(self, task)}`")
        if task.relabels:
            if "text" not in self.columns(group):
                raise StoreError(f"{self.path}: its group {group} has no text column, which task {task.name} labels "
                                 f"its rows by; extract the store again with this actstore")
            return group
        found, ours = self.group_task(group), task.identity()
        if found != ours:
            differ = sorted(k for k in {*ours, *(found or {})} if (found or {}).get(k) != ours.get(k))
            raise StoreError(f"{self.path}: its group {group} holds the rows of another version of task {task.name} "
                             f"({', '.join(differ)} differ: stored {({k: (found or {}).get(k) for k in differ})}); "
                             f"score the task as extracted, or extract it into another store")
        return group


def extract_command(store: ActivationStore, task: Task) -> str:
    """The command that adds a task's rows to a store (the store's model and layers, the task's prompt)."""
    args = ["actstore", "extract", "--model", store.spec.model, "--layers", ",".join(map(str, store.layers)),
            "--out", str(store.path), "--task", task.prompt_task if task.relabels else (task.spec or task.name)]
    if task.name.startswith("labels:") and not task.relabels:
        args += ["--template", task.template]
    return shlex.join(args)
