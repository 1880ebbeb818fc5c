"""The built-in tasks: first_letter (SAEBench's absorption eval), last_letter and capitalized.

    first_letter  26 classes a..z: the lowercased first letter of an alphabetic token (one optional leading
                  space, then ASCII letters). Prompt "{word} has the first letter:", answers " A".." Z".
    last_letter   26 classes a..z: its last letter. Prompt "{word} has the last letter:" (its own extraction).
    capitalized   2 classes lower, upper: whether a word-initial alphabetic token (a leading space, then ASCII
                  letters) starts with an uppercase letter. It relabels first_letter's rows (same prompt, same
                  activations), so it needs no extraction; its causal metric is not defined (the prompt asks
                  for a letter, not for its case).
"""

from __future__ import annotations

import string

from actstore.tasks.base import FIRST_LETTER, Task, word_of

ALPHABET = tuple(string.ascii_lowercase)
UPPER = tuple(string.ascii_uppercase)


def first_letter_label(text: str) -> int | None:
    """The first-letter class of a token's text (0..25), or None when it is not alphabetic."""
    word = word_of(text)
    return None if word is None else ord(word[0].lower()) - ord("a")


def last_letter_label(text: str) -> int | None:
    """The last-letter class of a token's text (0..25), or None when it is not alphabetic."""
    word = word_of(text)
    return None if word is None else ord(word[-1].lower()) - ord("a")


def capitalized_label(text: str) -> int | None:
    """1 when a word-initial alphabetic token starts uppercase, 0 lowercase, None for any other token."""
    if not text.startswith(" "):
        return None
    word = word_of(text)
    return None if word is None else int(word[0].isupper())


FIRST_LETTER_TASK = Task(
    name=FIRST_LETTER, classes=ALPHABET, label=first_letter_label, template="{word} has the first letter:",
    answers=UPPER, prompt_task=FIRST_LETTER, min_evaluated=20, saebench_eval="absorption_first_letter",
    description="the first letter of an alphabetic token (SAEBench's absorption eval)")

LAST_LETTER_TASK = Task(
    name="last_letter", classes=ALPHABET, label=last_letter_label, template="{word} has the last letter:",
    answers=UPPER, prompt_task="last_letter", min_evaluated=20,
    description="the last letter of an alphabetic token (its own prompt: `extract --task last_letter`)")

CAPITALIZED_TASK = Task(
    name="capitalized", classes=("lower", "upper"), label=capitalized_label,
    template=FIRST_LETTER_TASK.template, answers=("lower", "upper"), prompt_task=FIRST_LETTER, min_evaluated=2,
    description="whether a word-initial token starts uppercase (relabels first_letter's rows)")

BUILTIN = {task.name: task for task in (FIRST_LETTER_TASK, LAST_LETTER_TASK, CAPITALIZED_TASK)}
