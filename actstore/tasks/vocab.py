"""The vocabulary task of any task with its own prompt (DESIGN.md, "Vocabulary task"; for first_letter it is
SAEBench's absorption eval, byte for byte).

For any Hugging Face tokenizer and task (actstore.tasks):
- tokens: every vocabulary entry the task labels (`task.label` of its text: tokenizer space markers as
  spaces); special tokens never qualify. first_letter: one optional leading space, then only ASCII letters
  (byte tokens such as `<0x41>` never qualify); its label is the lowercased first letter's index.
- split: a seeded shuffle, 80% train (0), 20% test (1).
- prompt: "\\n" + ten example lines `task.example_line(example, its label)` joined by "\\n", then "\\n" and
  the query line `task.template` with the word: for first_letter "{example} has the first letter: {LETTER}"
  lines and "\\n{word} has the first letter:". Examples come from the query's split and never include the query.
- tokenization: without the tokenizer's own special tokens (no appended EOS or [SEP], whatever its
  post-processor does), then one explicit BOS policy: `auto` prepends the BOS token when the tokenizer
  puts one first itself (Gemma, Llama: as TransformerLens, and so SAEBench, run them) and nothing when
  it does not (SmolLM2, GPT-2); `always` prepends the tokenizer's bos_token in any case (TransformerLens's
  default for every model); `never` prepends nothing.
- position: the query token's index in the tokenized prompt, computed from the tokenization of the
  prompt up to the query word and checked to hold the vocabulary token; rows where tokenization merges
  differently are dropped and counted, by reason, with examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from actstore.errors import InputError
from actstore.tasks.base import Task
from actstore.tasks.builtin import FIRST_LETTER_TASK, first_letter_label  # noqa: F401 - first_letter_label: compat

TEMPLATE = FIRST_LETTER_TASK.template
"""first_letter's query line (stores record it as `prompt_template`); other tasks carry their own."""
N_EXAMPLES = 10
TEST_FRACTION = 0.2
# How tokenizers spell a leading space inside a token: SentencePiece and GPT-2 byte-level BPE.
SPACE_MARKERS = ("\u2581", "\u0120")
BOS_POLICIES = ("auto", "always", "never")
MAX_DROPPED = 0.05  # default share of vocabulary rows extract may drop before it refuses
_WORD = "\x00"  # stands for the word while a template is cut around it


def query_parts(task: Task) -> tuple[str, str]:
    """The query line's text before and after the word: ("", " has the first letter:") for first_letter."""
    before, after = task.template.format(word=_WORD).split(_WORD, 1)
    return before, after


def drop_reasons(task: Task = FIRST_LETTER_TASK) -> dict[str, str]:
    """Why a row is dropped (the keys of VocabTask.drops), in words naming the task's query line."""
    before, after = query_parts(task)
    return {
        "split": (f"the word is not one token inside the prompt (its text tokenizes differently after "
                  f"{'a newline' if not before else repr(before)})"),
        "merge": f"the word merges with the text after it ({after!r})",
    }


DROP_REASONS = drop_reasons()
"""first_letter's drop reasons (compat: drop_reasons(task) names any task's)."""


@dataclass
class VocabTask:
    """The rows of a task's vocabulary prompts, in vocabulary order, after dropping misaligned prompts."""

    token_id: np.ndarray
    """(n,) int: the query token."""
    text: np.ndarray
    """(n,) str: the token's string (with its leading space, if any)."""
    label: np.ndarray
    """(n,) int: the token's class, 0..C-1 (task.n_classes = C)."""
    split: np.ndarray
    """(n,) int: 0 train, 1 test."""
    prompts: list[str]
    """The prompt of each row."""
    input_ids: list[list[int]]
    """The tokenized prompt of each row."""
    position: np.ndarray
    """(n,) int: index of the query token in input_ids."""
    dropped: int
    """Tokens whose prompt did not tokenize with the query token at the computed position."""
    drops: dict[str, list[str]]
    """Reason (a key of drop_reasons()) -> the texts of the dropped tokens, in vocabulary order."""
    bos_id: int | None
    """The BOS token id prepended to every prompt, or None."""
    alphabetic: int
    """Tokens of the whole vocabulary the task labels (before any --max-vocab sample); for first_letter, the
    alphabetic tokens (the name is the store's `vocab_alphabetic`)."""
    task: Task = field(default=FIRST_LETTER_TASK, repr=False)
    """The task whose prompts these are."""

    @property
    def labeled(self) -> int:
        """Tokens of the whole vocabulary the task labels (the same number as `alphabetic`)."""
        return self.alphabetic

    def drop_message(self, max_share: float) -> str | None:
        """An error message when more than `max_share` of the rows were dropped, else None."""
        total = self.dropped + len(self.token_id)
        if total == 0 or self.dropped / total <= max_share:
            return None
        why = drop_reasons(self.task)
        reasons = "; ".join(f"{len(texts)} because {why[r]}, e.g. {', '.join(repr(t) for t in texts[:5])}"
                            for r, texts in self.drops.items() if texts)
        return (f"the vocabulary task dropped {self.dropped} of {total} rows ({self.dropped / total:.2%}, more than "
                f"--max-dropped {max_share:g}): {reasons}. Check the tokenizer (or raise --max-dropped)")


def token_text(raw: str) -> str:
    """A vocabulary entry as text: tokenizer-specific space markers become spaces."""
    for marker in SPACE_MARKERS:
        raw = raw.replace(marker, " ")
    return raw


def task_tokens(tokenizer, task: Task = FIRST_LETTER_TASK) -> list[tuple[int, str, int]]:
    """(token id, text, label) for every vocabulary entry the task labels, sorted by token id."""
    special = set(tokenizer.all_special_ids)
    out = []
    for raw, token_id in tokenizer.get_vocab().items():
        if token_id in special:
            continue
        text = token_text(raw)
        label = task.label(text)
        if label is not None:
            out.append((token_id, text, label))
    return sorted(out)


def alphabetic_tokens(tokenizer) -> list[tuple[int, str, int]]:
    """(token id, text, first-letter label) for every alphabetic vocabulary entry, sorted by token id."""
    return task_tokens(tokenizer, FIRST_LETTER_TASK)


def bos_id(tokenizer, policy: str = "auto") -> int | None:
    """The token id to prepend under a BOS policy (auto, always, never), or None."""
    if policy not in BOS_POLICIES:
        raise InputError(f"--bos must be one of {', '.join(BOS_POLICIES)}; got {policy!r}")
    if policy == "never":
        return None
    bos = tokenizer.bos_token_id
    if policy == "always" and bos is None:
        raise InputError(f"--bos always: the tokenizer ({type(tokenizer).__name__}) has no BOS token; pass --bos auto "
                         f"or --bos never")
    if policy == "auto" and bos is not None:
        own = tokenizer("a")["input_ids"]  # with the tokenizer's own specials: does it put BOS first?
        return bos if own and own[0] == bos else None
    return bos


def tokenize(tokenizer, texts: list[str], bos: int | None, chunk: int = 4096) -> list[list[int]]:
    """Token ids of many texts, without the tokenizer's own special tokens, `bos` (when not None) first.
    One batched call per chunk (a fast tokenizer runs it in parallel)."""
    out: list[list[int]] = []
    for lo in range(0, len(texts), chunk):
        out += tokenizer(texts[lo:lo + chunk], add_special_tokens=False)["input_ids"]
    return [[bos, *ids] for ids in out] if bos is not None else out


def build_prompt(word: str, examples: list[str], task: Task = FIRST_LETTER_TASK,
                 labels: list[int] | None = None) -> str:
    """A row's prompt: a newline, the examples' lines (`labels`: theirs, default task.label of each), the query."""
    labels = [task.label(ex) for ex in examples] if labels is None else labels
    lines = [task.example_line(ex, int(label)) for ex, label in zip(examples, labels)]
    return "\n" + "\n".join(lines) + "\n" + task.template.format(word=word)


def build_vocab_task(tokenizer, task: Task = FIRST_LETTER_TASK, seed: int = 42, max_tokens: int | None = None,
                     bos: str = "auto") -> VocabTask:
    """The whole vocabulary task of `task` for one tokenizer. `max_tokens` keeps a seeded sample (for tests and
    quick runs); `bos` is the BOS policy (auto, always, never). For first_letter the prompts, ids and split are
    those of every store before tasks, byte for byte."""
    bos_token = bos_id(tokenizer, bos)
    tokens = task_tokens(tokenizer, task)
    labeled = len(tokens)
    if len(tokens) < N_EXAMPLES + 2:
        raise InputError(f"the tokenizer has only {len(tokens)} tokens that task {task.name} labels; its vocabulary "
                         f"task needs at least {N_EXAMPLES + 2}")
    rng = np.random.default_rng(seed)
    if max_tokens is not None and max_tokens < len(tokens):
        keep = np.sort(rng.choice(len(tokens), size=max_tokens, replace=False))
        tokens = [tokens[i] for i in keep]
    ids = np.array([t[0] for t in tokens])
    texts = np.array([t[1] for t in tokens])
    labels = np.array([t[2] for t in tokens])
    order = rng.permutation(len(tokens))
    split = np.zeros(len(tokens), dtype=np.int8)
    split[order[round(len(tokens) * (1 - TEST_FRACTION)):]] = 1
    members = {s: np.flatnonzero(split == s) for s in (0, 1)}

    _, after = query_parts(task)
    all_prompts, heads = [], []
    for row in range(len(tokens)):
        pool = members[int(split[row])]
        pool = pool[pool != row]
        picks = np.random.default_rng([seed, int(ids[row])]).choice(pool, size=min(N_EXAMPLES, len(pool)),
                                                                     replace=False)
        prompt = build_prompt(texts[row], [texts[i] for i in picks], task, [labels[i] for i in picks])
        all_prompts.append(prompt)
        heads.append(prompt[: len(prompt) - len(after)])  # the prompt up to and including the query word
    encoded_all, heads_all = tokenize(tokenizer, all_prompts, bos_token), tokenize(tokenizer, heads, bos_token)
    keep_rows, prompts, input_ids, positions = [], [], [], []
    drops: dict[str, list[str]] = {reason: [] for reason in DROP_REASONS}
    for row, (encoded, head) in enumerate(zip(encoded_all, heads_all)):
        position = len(head) - 1
        if head[-1] != ids[row]:
            drops["split"].append(str(texts[row]))
        elif encoded[: position + 1] != head:
            drops["merge"].append(str(texts[row]))
        else:
            keep_rows.append(row)
            prompts.append(all_prompts[row])
            input_ids.append(encoded)
            positions.append(position)
    keep = np.array(keep_rows, dtype=np.int64)
    return VocabTask(token_id=ids[keep], text=texts[keep], label=labels[keep], split=split[keep], prompts=prompts,
                     input_ids=input_ids, position=np.array(positions, dtype=np.int64),
                     dropped=len(tokens) - len(keep), drops=drops, bos_id=bos_token, alphabetic=labeled, task=task)
