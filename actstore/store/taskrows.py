"""A task's rows in a store: which group, which of its rows, their classes and split; and the context rows'
classes for a task. Plain arrays (no scorer types), so probes and the scorer's loader both build on it.

A task with its own prompt reads its group (`vocab` for first_letter, `vocab_<key>` otherwise) and its label
column; a task that relabels another's rows (capitalized, labels:FILE without a template) reads that group and
labels each row by `task.label` of its text, leaving out the rows it does not label.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from actstore.errors import InputError
from actstore.tasks.base import Task
from actstore.tasks.builtin import FIRST_LETTER_TASK


class TaskRows(NamedTuple):
    """A task's vocabulary rows in a store."""

    group: str
    """the group holding them"""
    index: np.ndarray | None
    """(n,) the group's rows the task labels, ascending; None: every row"""
    labels: np.ndarray
    """(n,) int64 classes 0..C-1"""
    split: np.ndarray
    """(n,) int64: 0 train, 1 test"""


def task_rows(store, task: Task = FIRST_LETTER_TASK) -> TaskRows:
    """The rows of `task` in an open ActivationStore (MissingKey naming the `actstore extract --task` that adds
    them when the store lacks them)."""
    group = store.task_group(task)
    split = np.asarray(store.column(group, "split")).astype(np.int64)
    if not task.relabels:
        return TaskRows(group, None, np.asarray(store.column(group, "label")).astype(np.int64), split)
    labels = [task.label(str(text)) for text in store.column(group, "text")]
    index = np.array([i for i, label in enumerate(labels) if label is not None], dtype=np.int64)
    found = sorted({labels[i] for i in index})
    if len(found) < 2:
        held = ", ".join(task.classes[c] for c in found) or "none"
        raise InputError(f"task {task.name} labels {len(index)} of the {len(labels)} rows of {store.path}'s group "
                         f"{group}, in {len(found)} class{'' if len(found) == 1 else 'es'} ({held}); probes and "
                         f"absorption need rows of at least 2 classes: label tokens the store holds (`actstore "
                         f"info`), or extract a store whose vocabulary holds yours")
    return TaskRows(group, index, np.array([labels[i] for i in index], dtype=np.int64), split[index])


def context_labels(store, task: Task) -> torch.Tensor:
    """(M,) the context rows' classes for a task: the stored first-letter labels for first_letter; for any other
    task, task.label of the token's text where a vocabulary group names the token (-1 elsewhere)."""
    if task.name == FIRST_LETTER_TASK.name:
        return torch.as_tensor(store.column("context", "label")).long()
    texts: dict[int, str] = {}
    for group in store.groups:
        if group != "context" and {"token_id", "text"} <= set(store.columns(group)):
            texts.update(zip(np.asarray(store.column(group, "token_id")).tolist(),
                             (str(t) for t in store.column(group, "text"))))
    classes = {token: task.label(text) for token, text in texts.items()}
    ids = np.asarray(store.column("context", "token_id")).tolist()
    return torch.tensor([-1 if classes.get(t) is None else classes[t] for t in ids], dtype=torch.long)
