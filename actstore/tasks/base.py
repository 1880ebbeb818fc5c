"""What a task is: a labeled token feature whose absorption actstore measures.

A task names its classes, labels vocabulary tokens (a function of the token's text: its string with
tokenizer space markers turned into spaces, leading space kept; None for a token outside the task), and
asks for its label with an in-context prompt (`template`, the answer text of each class). Tasks that share
a prompt share the store's activations: a task whose `prompt_task` is another task's name only relabels
that task's rows, and needs no extraction of its own.

The store group of a task's vocabulary rows: `vocab` for the first-letter prompt (every store before tasks
holds it), `vocab_<key>` for any other prompt. Probes: `probes/layer_LL` for first_letter (unchanged),
`probes/<key>/layer_LL` for the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

MIN_CLASSES, MAX_CLASSES = 2, 4096
FIRST_LETTER = "first_letter"


@dataclass(frozen=True)
class Task:
    """A token feature with classes, its labeling rule and its prompt."""

    name: str
    """The task's name as `--task` takes it: first_letter, last_letter, capitalized, labels:FILE."""
    classes: tuple[str, ...]
    """Class names, in label order (label c is classes[c])."""
    label: Callable[[str], int | None] = field(compare=False, repr=False)
    """Token text -> class index, or None when the token is not in the task."""
    template: str
    """The query line of the prompt, with `{word}`: "{word} has the first letter:"."""
    answers: tuple[str, ...]
    """The answer of each class as the prompt's example lines write it after the query line and a space ("A")."""
    prompt_task: str
    """The task whose prompt (and store group) holds this task's rows: the task's own name, or the name of
    the task it relabels."""
    min_evaluated: int
    """Fewest evaluated classes (probe test F1 above 0.6) for a layer's mean to be trusted (SAEBench: 20 of 26)."""
    description: str = ""
    saebench_eval: str | None = None
    """SAEBench's eval name for this task, when it has one (its JSON output is written only then)."""
    digest: str = ""
    """Content identity of a task defined by a file (labels:FILE): the file's sha256; empty for built-ins."""
    spec: str = ""
    """What `--task` takes to rebuild the task when it differs from its name (labels:/abs/path/FILE.csv)."""

    def __post_init__(self):
        if not MIN_CLASSES <= len(self.classes) <= MAX_CLASSES:
            raise ValueError(f"task {self.name}: {len(self.classes)} classes; a task has {MIN_CLASSES} to "
                             f"{MAX_CLASSES}")
        if len(self.answers) != len(self.classes):
            raise ValueError(f"task {self.name}: {len(self.answers)} answers for {len(self.classes)} classes")
        if "{word}" not in self.template:
            raise ValueError(f"task {self.name}: the template {self.template!r} has no {{word}}")

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def key(self) -> str:
        """The task's name as a file and group name: first_letter, last_letter, labels-animals."""
        return task_key(self.name)

    @property
    def relabels(self) -> bool:
        """True when the task reads another task's rows (same prompt) and extracts nothing of its own."""
        return self.prompt_task != self.name

    @property
    def group(self) -> str:
        """The store group holding this task's vocabulary rows."""
        return vocab_group(self.prompt_task)

    def example_line(self, word: str, label: int) -> str:
        """One line of the prompt's examples: the query line and the answer ("cat has the first letter: C")."""
        return f"{self.template.format(word=word)} {self.answers[label]}"

    def identity(self) -> dict:
        """What a result of this task depends on, beside the store and the SAE: recorded in every part."""
        out = {"name": self.name, "classes": list(self.classes), "template": self.template,
               "prompt_task": self.prompt_task}
        if self.digest:
            out["digest"] = self.digest
        return out


def task_key(name: str) -> str:
    """A task name as a file and group name (letters, digits, _ . -)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "task"


def vocab_group(prompt_task: str) -> str:
    """The store group of a prompt's vocabulary rows: `vocab` for first_letter's, `vocab_<key>` otherwise."""
    return "vocab" if prompt_task == FIRST_LETTER else f"vocab_{task_key(prompt_task)}"


def word_of(text: str) -> str | None:
    """A token's word: its text after one optional leading space, when that is non-empty ASCII letters; else None.
    The rule of SAEBench's first-letter vocabulary, shared by the built-in tasks."""
    word = text[1:] if text.startswith(" ") else text
    if not word or not word.isascii() or not word.isalpha():
        return None
    return word
