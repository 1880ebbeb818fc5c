"""A task from the user's own labels: `labels:FILE`, a CSV or JSONL table of token -> class.

    token,class                                {"token": " cat", "class": "animal"}
    " cat",animal                              {"token": " dog", "class": "animal"}
    " red",colour                              {"token": " red", "class": "colour"}

`token` is a vocabulary entry's text as actstore reads it (tokenizer space markers as spaces, so " cat" is the
word-initial token and "cat" the one inside a word); tokens not in the file are not in the task. Classes are
the distinct `class` values, sorted; a task has 2 or more. With a prompt template (`--template "{word} is a
kind of:"`) the task has its own prompt, answered by the class names, and `extract --task` extracts its rows;
without one it relabels first_letter's rows (the same activations) and needs no extraction.
The task's name is `labels:<file stem>`; its identity includes the file's sha256, so editing the file rescores.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from actstore.errors import InputError
from actstore.tasks.base import FIRST_LETTER, MAX_CLASSES, Task
from actstore.tasks.builtin import FIRST_LETTER_TASK

PREFIX = "labels:"


def read_labels(path: Path) -> tuple[dict[str, str], str]:
    """token text -> class name, from a .csv (header `token,class`) or .jsonl file, and the sha256 of the bytes
    read (one read: the identity is that of the labels used)."""
    if not path.is_file():
        raise InputError(f"--task {PREFIX}{path}: no such file; give a CSV (header token,class) or a JSONL file "
                         f"(one {{\"token\": ..., \"class\": ...}} per line)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"--task {PREFIX}{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise InputError(f"--task {PREFIX}{path}: the file is empty; expected a CSV (header token,class) or JSONL "
                         f"(one {{\"token\": ..., \"class\": ...}} per line) labeling at least 2 classes")
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise InputError(f"--task {PREFIX}{path}: line {n} is not JSON ({e.msg})") from None
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"token", "class"} <= set(reader.fieldnames):
            raise InputError(f"--task {PREFIX}{path}: the CSV's header is {reader.fieldnames}; it needs the "
                             f"columns token and class")
        rows = [(n, row) for n, row in enumerate(reader, 2)]
    else:
        raise InputError(f"--task {PREFIX}{path}: expected a .csv or .jsonl file; got {path.suffix or 'no suffix'}")
    labels: dict[str, str] = {}
    for n, row in rows:
        token, cls = row.get("token") if isinstance(row, dict) else None, row.get("class") if isinstance(row, dict) else None
        if not isinstance(token, str) or not token or not isinstance(cls, (str, int)) or str(cls) == "":
            raise InputError(f"--task {PREFIX}{path}: line {n} needs a non-empty token (text) and class; got {row!r}")
        if labels.setdefault(token, str(cls)) != str(cls):
            raise InputError(f"--task {PREFIX}{path}: line {n} labels {token!r} {cls!r}, an earlier line "
                             f"{labels[token]!r}; a token has one class")
    classes = set(labels.values())
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise InputError(f"--task {PREFIX}{path}: {len(classes)} distinct classes; a task needs 2 to {MAX_CLASSES}")
    return labels, hashlib.sha256(data).hexdigest()


def labels_task(path: str | Path, template: str | None = None) -> Task:
    """The task of a label file; with `template` it has its own prompt, else it relabels first_letter's rows."""
    path = Path(path).expanduser()
    table, digest = read_labels(path)
    classes = tuple(sorted(set(table.values())))
    index = {c: i for i, c in enumerate(classes)}
    by_token = {token: index[cls] for token, cls in table.items()}
    name = f"{PREFIX}{path.stem}"
    if template is not None and "{word}" not in template:
        raise InputError(f"--template {template!r}: a prompt template holds {{word}}, where the token goes "
                         f"(e.g. \"{{word}} is a kind of:\")")
    return Task(name=name, classes=classes, label=by_token.get,
                template=template if template is not None else FIRST_LETTER_TASK.template,
                answers=classes,
                prompt_task=name if template is not None else FIRST_LETTER,
                min_evaluated=2, description=f"labels from {path}",
                digest=digest, spec=f"{PREFIX}{path.resolve()}")
