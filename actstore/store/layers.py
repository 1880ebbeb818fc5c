"""A layer's rows of a store for a task, as the scorer and the probes take them (LayerData).

    rows = task_rows(store, task)             # which rows of which group, their labels 0..C-1 and split
    data = load_layer(store, layer, task)     # their activations too, and the contexts labeled for the task

Which rows a task reads, and how they are labeled: actstore/store/taskrows.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actstore.store.taskrows import context_labels, task_rows
from actstore.tasks.base import Task
from actstore.tasks.builtin import FIRST_LETTER_TASK


@dataclass
class LayerData:
    """One layer's rows of a store, as the scorer needs them (`load_layer`)."""

    x: torch.Tensor
    """(N, d) the task's vocabulary rows' activations"""
    labels: torch.Tensor
    """(N,) 0..C-1, C = task.n_classes"""
    split: torch.Tensor
    """(N,) 0 train, 1 test"""
    context_x: torch.Tensor | None = None
    """(M, d) natural-text activations, or None when the store has no contexts"""
    context_labels: torch.Tensor | None = None
    """(M,) 0..C-1 for tokens the task labels, -1 elsewhere"""
    token_id: torch.Tensor | None = None
    """(N,) the vocabulary rows' token ids (per-token records name their tokens; -1 when absent)"""
    text: list[str] | None = None
    """(N,) the vocabulary rows' token strings"""
    task: Task = FIRST_LETTER_TASK
    """The task these rows are labeled for (its classes name the labels)"""


def load_layer(store, layer: int, task: Task = FIRST_LETTER_TASK) -> LayerData:
    """A layer's rows of a task as float32 (N, d_model), and its context rows when the store has them, kept
    in the store's dtype (a million bf16 context tokens of Gemma is 4.6 GB; the scorer casts a tile at a time).
    first_letter reads `vocab` whole, as it always did."""
    rows = task_rows(store, task)
    x = store.read(rows.group, layer).float()
    keep = (lambda values: values) if rows.index is None else (lambda values: values[torch.as_tensor(rows.index)])
    data = LayerData(keep(x), torch.as_tensor(rows.labels).long(), torch.as_tensor(rows.split).long(), task=task)
    columns = store.columns(rows.group)  # per-token records name their tokens
    if "token_id" in columns:
        data.token_id = keep(torch.as_tensor(store.column(rows.group, "token_id")).long())
    if "text" in columns:
        text = store.column(rows.group, "text")
        data.text = [str(t) for t in (text if rows.index is None else text[rows.index])]
    if "context" in store.groups:
        data.context_x = store.read("context", layer)  # (M, d_model)
        data.context_labels = context_labels(store, task)
    return data
