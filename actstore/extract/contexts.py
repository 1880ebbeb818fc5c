"""Natural-text contexts: documents tokenized into fixed-length windows, every token a row.

Sources: local `.txt` files (one document each), `.jsonl` files (one document per line, its "text"
field), a folder of those, or a Hugging Face dataset name (`hf:NAME[:SPLIT]`) where one is reachable. A file
that is not UTF-8 text (or holds NUL characters: binary) is refused, naming it, before any work.
Each document is tokenized without the tokenizer's own special tokens and cut into windows; with a BOS
token (the vocabulary task's BOS policy) every window is that token and `context_length - 1` tokens of
text, as TransformerLens and SAELens build their contexts, else `context_length` tokens of text. A shorter
tail is dropped; windows are taken in order until `max_rows` tokens.
Row metadata: token id, window (`doc`), position in the window (`pos`), and first_letter's class of the
tokens it labels (its rule: one optional leading space, then ASCII letters), -1 for the rest. Other tasks
label context tokens when they are read (`actstore.store.layers.context_labels`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from actstore.errors import InputError, MissingFile
from actstore.tasks.builtin import FIRST_LETTER_TASK
from actstore.tasks.vocab import token_text, tokenize


@dataclass
class Contexts:
    """Windows of token ids, `context_length` each, and their rows' metadata."""

    windows: list[list[int]]
    token_id: np.ndarray
    """(rows,) every token of every window, window after window."""
    doc: np.ndarray
    """(rows,) the window index."""
    pos: np.ndarray
    """(rows,) the position in the window."""
    label: np.ndarray
    """(rows,) first_letter's class of the tokens it labels, -1 for the rest."""


def read_documents(source: str) -> Iterator[str]:
    """Documents from a file, a folder of .txt/.jsonl files, or `hf:NAME[:SPLIT]`."""
    if source.startswith("hf:"):
        from datasets import load_dataset

        name, _, split = source[3:].partition(":")
        try:
            dataset = load_dataset(name, split=split or "train", streaming=True)
        except Exception as err:
            raise InputError(f"cannot load dataset {name!r}: {err}. Offline, pass local .txt or .jsonl files") from err
        for record in dataset:
            yield record["text"]
        return
    path = Path(source)
    if not path.exists():
        raise MissingFile(f"contexts source {source} does not exist; expected a .txt or .jsonl file, a "
                          f"folder of them, or hf:DATASET")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
    if not files:
        raise InputError(f"{source} holds no .txt or .jsonl files")
    for file in files:
        try:
            text = file.read_text(encoding="utf-8-sig")  # a byte-order mark, as some editors write, is no text
        except UnicodeDecodeError as err:
            raise InputError(f"{file} is not UTF-8 text ({err.reason} at byte {err.start}); expected UTF-8 .txt or "
                             f".jsonl files: convert it, or leave it out of --contexts") from None
        if "\x00" in text:  # valid UTF-8 can still be binary: no text file holds NUL characters
            raise InputError(f"{file} holds NUL characters (at character {text.index(chr(0))}): a binary file, not "
                             f"text; expected UTF-8 .txt or .jsonl files: leave it out of --contexts")
        if file.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines()):
                if line.strip():
                    try:
                        document = json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError) as err:
                        raise InputError(f"{file}:{n + 1}: expected a JSON object with a 'text' field") from err
                    if not isinstance(document, str):
                        raise InputError(f"{file}:{n + 1}: 'text' is a {type(document).__name__}; expected a string")
                    yield document
        else:
            yield text


def build_contexts(tokenizer, source: str, context_length: int, max_rows: int, bos: int | None = None) -> Contexts:
    """Tokenize documents into windows until `max_rows` tokens (rounded down to whole windows); `bos`, when
    not None, starts every window."""
    if context_length < 2 or max_rows < context_length:
        raise InputError(f"need context_length >= 2 and max_rows >= context_length; got {context_length}, {max_rows}")
    windows: list[list[int]] = []
    budget = max_rows // context_length
    head = [] if bos is None else [bos]
    step = context_length - len(head)
    for text in read_documents(source):
        ids = tokenize(tokenizer, [text], None)[0]
        for lo in range(0, len(ids) - step + 1, step):
            windows.append(head + ids[lo:lo + step])
            if len(windows) == budget:
                break
        if len(windows) == budget:
            break
    if not windows:
        raise InputError(f"{source} has no document of at least {context_length} tokens")
    token_id = np.array(windows, dtype=np.int64).reshape(-1)
    labels = {}
    for t in np.unique(token_id):
        label = FIRST_LETTER_TASK.label(token_text(tokenizer.convert_ids_to_tokens(int(t))))
        labels[t] = -1 if label is None or t in tokenizer.all_special_ids else label
    return Contexts(windows=windows, token_id=token_id,
                    doc=np.repeat(np.arange(len(windows)), context_length),
                    pos=np.tile(np.arange(context_length), len(windows)),
                    label=np.array([labels[t] for t in token_id]))
