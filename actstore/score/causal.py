"""The paper's causal absorption metric (DESIGN.md "Metrics" 6; lasr-spelling/sae-spelling's
`FeatureAbsorptionCalculator`), computed once per layer and shared by the layer's SAEs.

    runner = CausalRunner.from_store(store, device, task, cfg)   # the store's own model and tokenizer, checked
    add_causal(result, sae, layer, probe, runner)                # adds causal columns to score_sae's SAEScore

Any task with its own prompt (first_letter, last_letter, labels:FILE with a template): the prompt's query line
is task.template and class c's answer token is task.answers[c] as the prompt writes it. A task that relabels
another's rows (capitalized) has no causal metric: its prompt asks the other task's question (`check_task`).

For one SAE and class c:
- candidates: the test split's probe true positives of c where the k-sparse probe on c's main latents does not
  fire and every main latent is < 1e-8 (score_sae's per-token records); at most `samples` of them, a seeded
  sample; the sampled share is samples / candidates;
- metric: at the prompt's final position, the logit of c's answer token minus the mean logit of the other
  classes' answer tokens (`answer_token_ids`);
- attribution: the SAE spliced in at the hooked block's output with its error term, at the word's position
  only: latents s and error e are interpolated as (1 - alpha) s and (1 - alpha) e for alpha = 0, 1/steps, ...,
  (steps - 1)/steps (the decoder bias stays, as sae-lens's decode adds it after the patched latents), the model
  runs on, and the gradient of the metric with respect to each latent is W_dec[i] . g_alpha, g_alpha the
  gradient at the spliced position. A latent's score is mean_alpha(W_dec[i] . g_alpha) * (0 - s_i);
- absorbed when every main latent (recomputed from the model's own residual) is < 1e-8, the top latent (most
  negative score) has a score <= 0, |top| - |second| >= `delta`, and cos(p_c, W_dec[top]) >= `min_cos`;
- rate: absorptions / sampled share / probe true positives.

Precompute: the model runs once per layer over the prompts any SAE samples, up to the hooked block, and the
residual at every position is kept (`ResidualCache`). Each SAE then runs only the later blocks: blocks 0..L are
swapped for modules that hand back the stored residual (with the splice), so rotary embeddings and masks are
still built by the model's own forward (`spliced_blocks`, actstore.extract.splice). The one early cost left is
the embedding lookup.

This module is long (a little over 400 lines) because the runner's stages share its state: the prompts it
rebuilds and checks against the store, the per-layer residual cache, the candidates' sample and the attribution
all read the same tokenizer, model and answer tokens; what could stand alone (the splicing) is in extract/splice.py.
With `share_prefix=False` every SAE runs the whole model instead (a hook replaces block L's output): the
benchmark's baseline, same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from actstore.errors import InputError
from actstore.extract.model import ModelSource, load_config_and_tokenizer, load_model, pad, tokenizer_identity
from actstore.extract.splice import ResidualCache, replaced_output, spliced_blocks
from actstore.score.absorption import absorbed
from actstore.store.digests import changed_files, file_sha256, folder_files, folder_sha256
from actstore.tasks.base import FIRST_LETTER, Task
from actstore.tasks.vocab import build_vocab_task

EPS = 1e-8
"""main latents count as off below this (the paper's EPS)"""
AnswerTokens = Literal["prompt", "paper"]
ANSWER_TOKENS = get_args(AnswerTokens)
"""`--causal-answer-tokens`: prompt (every class's answer as the prompt writes it, ' A'), or paper (first_letter
only: the correct letter as tokenizer.encode('a')[-1], the others as ' B', ' C', ..., as lasr-spelling/
sae-spelling does)"""


@dataclass(frozen=True)
class CausalConfig:
    """The causal metric's constants; defaults are the paper's."""

    samples: int = 200
    """candidates sampled per class"""
    seed: int = 0
    """the sample's seed"""
    steps: int = 6
    """integrated-gradient steps, alpha = 0, 1/steps, ..., (steps - 1)/steps"""
    delta: float = 1.0
    """|top score| - |second score| must be at least this"""
    min_cos: float = 0.025
    """cos(p_c, W_dec[top]) must be at least this"""
    answer_tokens: AnswerTokens = "prompt"
    """one of ANSWER_TOKENS"""
    batch_prompts: int = 8
    """prompts per forward pass (times `steps` sequences)"""


class CausalError(InputError):
    """The causal metric cannot run on this store (no recorded model, another tokenizer, misaligned rows)."""


def check_task(task: Task) -> None:
    """Refuse a task the causal metric is not defined for: one that relabels another task's rows (its prompt
    asks the other task's question, so no answer token of its own classes is the model's reply)."""
    if task.relabels:
        raise CausalError(f"task {task.name} has no causal metric: it relabels {task.prompt_task}'s rows, whose "
                          f"prompt asks \"{task.template}\" for {task.prompt_task}'s "
                          f"answers, not for {task.name}'s classes; score {task.name} without --causal, or "
                          f"give it a prompt of its own (a labels file with a template) and extract it")


def answer_token_ids(tokenizer, task: Task, scheme: str, word: str) -> tuple[list[int], list[int]]:
    """(correct token of each class, the answer token of each class) for the metric: class c's metric is the
    logit of correct[c] less the mean logit of the answers of the other classes, in class order.

    prompt: every class's token is the one the prompt's own answers use: the token that the query line with
    " " + task.answers[c] adds to the query line (task.template with `word`; one token, else an error), so
    the same for correct and answers. paper (first_letter only): the correct letter is
    `tokenizer.encode(letter)[-1]` (lowercase, no space) and the others as in prompt mode, which is what
    lasr-spelling/sae-spelling's `letter_delta_metric` does."""
    check_task(task)
    if scheme not in ANSWER_TOKENS:
        raise InputError(f"--causal-answer-tokens must be one of {', '.join(ANSWER_TOKENS)}; got {scheme!r}")
    if scheme == "paper" and task.name != FIRST_LETTER:
        raise InputError(f"--causal-answer-tokens paper is lasr-spelling's first-letter metric (a lone lowercase "
                         f"letter); task {task.name} has none: use prompt")
    query = task.template.format(word=word)
    head = tokenizer(query, add_special_tokens=False)["input_ids"]
    answers = []
    for name, answer in zip(task.classes, task.answers):
        ids = tokenizer(f"{query} {answer}", add_special_tokens=False)["input_ids"]
        extra = ids[len(head):]
        if ids[:len(head)] != head or len(extra) != 1:
            raise CausalError(f"task {task.name}: the answer ' {answer}' (class {name}) is not one token after the "
                              f"prompt for this tokenizer ({extra}); the causal metric needs one logit per class")
        answers.append(extra[0])
    if len(set(answers)) < len(answers):
        first = next(c for c, token in enumerate(answers) if answers.count(token) > 1)
        twin = answers.index(answers[first], first + 1)
        raise CausalError(f"task {task.name}: the answers ' {task.answers[first]}' and ' {task.answers[twin]}' are "
                          f"the same token for this tokenizer; the causal metric needs one logit per class")
    correct = list(answers)
    if scheme == "paper":
        unk = getattr(tokenizer, "unk_token_id", None)
        correct = [tokenizer.encode(letter)[-1] for letter in task.classes]
        if unk is not None and unk in correct:
            raise CausalError(f"--causal-answer-tokens paper: the tokenizer has no token for a lone lowercase letter "
                              f"(tokenizer.encode('{task.classes[correct.index(unk)]}') is its unknown token); use "
                              f"prompt")
    return correct, answers


@dataclass
class TokenCausal:
    """The causal outcome of one sampled token."""

    top_latent: int
    """the latent with the most negative score (-1: no active latent has a negative score)"""
    top_score: float
    second_score: float
    top_cos: float
    main_off: bool
    """every main latent < 1e-8 on the model's own residual"""
    absorbed: bool


class CausalRunner:
    """The store's model, a task's vocabulary prompts and answer tokens, and one layer's residual cache at a
    time."""

    def __init__(self, model, tokenizer, input_ids: list[list[int]], positions: np.ndarray, task: Task,
                 cfg: CausalConfig, share_prefix: bool = True):
        self.model, self.tokenizer, self.input_ids, self.positions = model, tokenizer, input_ids, positions
        self.cfg, self.share_prefix, self.task = cfg, share_prefix, task
        for p in model.parameters():
            p.requires_grad_(False)
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        word = tokenizer.decode([input_ids[0][int(positions[0])]]).strip() if len(input_ids) else "word"
        self.correct, self.answers = answer_token_ids(tokenizer, task, cfg.answer_tokens, word)
        self.cache: ResidualCache | None = None
        self.sequences = 0
        """sequences run through the late blocks (or the whole model without share_prefix)"""

    def others(self, c: int) -> list[int]:
        """The answer tokens of every class but c, in class order: the metric's mean runs over them."""
        return self.answers[:c] + self.answers[c + 1:]

    @classmethod
    def from_store(cls, store, device: str, task: Task, cfg: CausalConfig, share_prefix: bool = True):
        """The runner of a store written by `actstore extract` for `task`: its recorded model and tokenizer (the
        tokenizer's vocabulary hash, and a GGUF file's sha256, must match the record), the task's vocabulary
        prompts rebuilt with the recorded seed, --max-vocab and BOS policy, and checked row by row against the
        token ids and positions of the store group that holds them (task.group). A relabeling task is refused
        (`check_task`)."""
        check_task(task)
        source, extra = recorded_source(store)
        check_weights(store, source, extra)
        _, tokenizer = load_config_and_tokenizer(source)
        recorded = extra["provenance"].get("tokenizer")
        if recorded is not None and tokenizer_identity(tokenizer) != recorded:
            raise CausalError(f"the tokenizer of {source.given} is not the one the store {store.path} was extracted "
                              f"with (vocabulary or special tokens differ)")
        bos = (extra.get("bos") or {}).get("policy", "auto")
        if task.group not in store.groups:
            raise CausalError(f"the store {store.path} has no prompt rows of task {task.name} (group {task.group}); "
                              f"extract them with `actstore extract --task {task.name} --resume`")
        rows = build_vocab_task(tokenizer, task=task, seed=extra.get("seed", 42), max_tokens=extra.get("max_vocab"),
                                bos=bos)
        ids = np.asarray(store.column(task.group, "token_id"))
        positions = np.asarray(store.column(task.group, "position"))
        if len(ids) != len(rows.token_id) or not (np.array_equal(ids, rows.token_id)
                                                  and np.array_equal(positions, rows.position)):
            raise CausalError(f"the {task.name} prompts rebuilt from {source.given} do not match the store's rows "
                              f"in {task.group} ({len(rows.token_id)} rows against {len(ids)}); was the store "
                              f"extracted with another actstore version?")
        model = load_model(source, device=device, dtype=torch.float32)
        return cls(model, tokenizer, rows.input_ids, rows.position, task, cfg, share_prefix)

    def residuals(self, layer: int, rows: list[int]) -> list[torch.Tensor]:
        if self.cache is None or self.cache.layer != layer or not self.share_prefix:  # the baseline shares nothing
            self.cache = None  # free the previous layer's first
            self.cache = ResidualCache(self.model, self.input_ids, layer, self.pad_id)
        return self.cache.get(rows)

    def score_tokens(self, sae, layer: int, rows: list[int], classes: list[int], mains: list[list[int]],
                     dec_cos: torch.Tensor) -> list[TokenCausal]:
        """The causal outcome of each (row, class, main latents); dec_cos (m, C) cos(W_dec[i], p_c)."""
        out = []
        step = self.cfg.batch_prompts
        for lo in range(0, len(rows), step):
            out += self._batch(sae, layer, rows[lo:lo + step], classes[lo:lo + step], mains[lo:lo + step], dec_cos)
        return out

    def _batch(self, sae, layer, rows, classes, mains, dec_cos) -> list[TokenCausal]:
        steps, device = self.cfg.steps, self.device
        resid = self.residuals(layer, rows)
        batch, offsets = pad([self.input_ids[r] for r in rows], self.pad_id, side="left")
        width = batch.input_ids.shape[1]
        x = torch.zeros(len(rows), width, resid[0].shape[-1], device=device)
        for j, r in enumerate(resid):
            x[j, width - len(r):] = r
        word = offsets.to(device) + torch.as_tensor(self.positions[rows], device=device)  # (B,)
        b = torch.arange(len(rows), device=device)
        x_word = x[b, word]  # (B, d)
        w_dec, b_dec = sae.w_dec.to(device, torch.float32), sae.b_dec.to(device, torch.float32)
        with torch.no_grad():
            s = sae.encode(x_word.to(sae.w_enc.device, sae.w_enc.dtype)).to(device, torch.float32)  # (B, m) raw
            latent = s @ w_dec
            error = x_word - latent - b_dec
            scale = 1 - torch.arange(steps, device=device, dtype=torch.float32) / steps  # 1 - alpha
            patched = scale[:, None, None] * latent + b_dec + scale[:, None, None] * error  # (steps, B, d)
        patched = patched.reshape(steps * len(rows), -1).requires_grad_(True)
        xs = x.repeat(steps, 1, 1)  # (steps * B, T, d), step-major
        bs = torch.arange(steps * len(rows), device=device)
        xs = xs.index_put((bs, word.repeat(steps)), patched)
        ids = batch.input_ids.to(device).repeat(steps, 1)
        mask = batch.attention_mask.to(device).repeat(steps, 1)
        context = spliced_blocks(self.model, layer, xs, self.cache.as_tuple) if self.share_prefix \
            else replaced_output(self.model, layer, xs)
        with context:
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                                use_cache=False, logits_to_keep=1).logits[:, -1].float()  # (steps * B, V)
        self.sequences += len(ids)
        correct = torch.tensor([self.correct[c] for c in classes], device=device).repeat(steps)
        others = torch.tensor([self.others(c) for c in classes], device=device).repeat(steps, 1)  # (steps B, C - 1)
        metric = logits.gather(1, correct[:, None])[:, 0] - logits.gather(1, others).mean(dim=1)
        (grad,) = torch.autograd.grad(metric.sum(), patched)
        grad = grad.reshape(steps, len(rows), -1).mean(dim=0)  # (B, d) mean over alpha
        out = []
        with torch.no_grad():
            for j in range(len(rows)):
                active = s[j].nonzero()[:, 0]
                scores = -(s[j, active] * (w_dec[active] @ grad[j]))  # (A,) grad x (0 - activation)
                ranked = -scores
                if len(active) < sae.width:  # the inactive latents' score 0 is in the ranking too
                    ranked = torch.cat([ranked, ranked.new_zeros(1)])
                top2 = ranked.topk(min(2, len(ranked)))
                top_score = float(-top2.values[0])
                second = float(-top2.values[1]) if len(ranked) > 1 else 0.0
                top_i = int(top2.indices[0])
                top_latent = int(active[top_i]) if top_i < len(active) and top_score < 0 else -1
                c = classes[j]
                cos = float(dec_cos[top_latent, c]) if top_latent >= 0 else 0.0
                main_off = bool((s[j, mains[j]] < EPS).all()) if mains[j] else True
                absorbed = (main_off and top_latent >= 0 and top_score <= 0
                            and abs(top_score) - abs(second) >= self.cfg.delta and cos >= self.cfg.min_cos)
                out.append(TokenCausal(top_latent, top_score, second, cos, main_off, absorbed))
        return out


def recorded_source(store):
    """The ModelSource a store was extracted from (its `provenance` attribute), and the store's extra record."""
    extra = store.spec.extra or {}
    record = extra.get("provenance")
    if not record or "location" not in record:
        raise CausalError(f"the store {store.path} records no model (it was not written by `actstore extract`); "
                          f"--causal runs the store's own model")
    return ModelSource(**{f.name: record.get(f.name) for f in fields(ModelSource)}), extra


def check_weights(store, source, extra: dict) -> None:
    """The model's files are the ones the store was extracted from: a GGUF file by its sha256, a model folder by
    the digest of its files (stores extracted before folders were hashed record none, and are not checked).
    Raises CausalError."""
    if source.kind == "gguf" and file_sha256(Path(source.location) / source.gguf_file) != source.gguf_sha256:
        raise CausalError(f"{source.gguf_file} in {source.location} is not the file the store {store.path} was "
                          f"extracted from (its sha256 differs); the causal metric must run the store's own model: put "
                          f"that file back, or extract the store again")
    record = extra.get("provenance") or {}
    if source.kind != "folder" or not record.get("folder_sha256"):
        return
    files = folder_files(source.location)
    if folder_sha256(source.location, files) != record["folder_sha256"]:
        what = changed_files(record["folder_files"], files) if record.get("folder_files") else "weights, config or " \
            "tokenizer"
        raise CausalError(f"the model folder {source.location} is not the one the store {store.path} was extracted "
                          f"from (its files' sha256 differs: {what}); the causal metric must run the store's own "
                          f"model: put those files back, or extract the store again")


CAUSAL_TOKEN_COLUMNS = ("causal_sampled", "causal_absorption", "causal_top_latent", "causal_top_score",
                        "causal_second_score", "causal_top_cos")
"""Columns add_causal adds to the per-token records (tokens.parquet)."""
AGREEMENT = ("agree_both", "agree_projection_only", "agree_causal_only", "agree_neither", "agree_unsampled")
"""Per class: probe true positives absorbed by both metrics, by the projection metric only, by the causal one
only, by neither; `agree_unsampled` are causal candidates left out of the sample (the causal metric did not look
at them). A token that is not a causal candidate counts as causally not absorbed. The five add up to the probe's
true positives."""


def _class_rows(result) -> list[dict]:
    """score_sae's per-class rows (SAEScore.classes, or .letters before the scorer's rename)."""
    rows = getattr(result, "classes", None)
    return result.letters if rows is None else rows


def _class_name(row: dict) -> str:
    """A per-class row's class name ("class"; "letter" in rows from before tasks)."""
    return row["class"] if "class" in row else row["letter"]


def _token_classes(records: dict) -> list[str]:
    """The per-token records' class column ("class"; "letter" before tasks)."""
    return records["class"] if "class" in records else records["letter"]


def candidates(records: dict, name: str) -> list[int]:
    """Indices into the per-token records of class `name`'s causal candidates: the k-sparse probe on the main
    latents misses and every main latent is < EPS."""
    return [i for i, (c, miss, acts) in enumerate(zip(_token_classes(records), records["k_sparse_miss"],
                                                        records["main_acts"]))
            if c == name and miss and all(a < EPS for a in acts)]


def decoder_cosines(sae, directions: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """(m, C) cos(W_dec[i], p_c), a block of latents at a time: the scorer's `latent_cosines` decoder half, the
    same operations in the same order (a zero decoder row counts as norm 1)."""
    p = directions.to(device=sae.w_enc.device, dtype=torch.float32)  # (C, d)
    norms = sae.w_dec.float().norm(dim=1)
    scale = torch.where(norms > 0, norms, torch.ones_like(norms))  # (m,)
    return torch.cat([(sae.w_dec[lo:lo + chunk].float() @ p.T) / scale[lo:lo + chunk, None]
                      for lo in range(0, sae.width, chunk)])


def add_causal(result, sae, layer: int, probe, runner: CausalRunner, dec_cos: torch.Tensor | None = None) -> None:
    """Adds the causal metric to an SAEScore (score_sae's result) in place: per class row the rate, counts and
    agreement with the projection metric; per token (CAUSAL_TOKEN_COLUMNS); per SAE the mean and std of the
    rate and the totals. The classes are runner.task's; dec_cos (m, C) defaults to `decoder_cosines`."""
    cfg = runner.cfg
    if dec_cos is None:
        dec_cos = decoder_cosines(sae, probe.directions())
    records = result.tokens
    token_classes = _token_classes(records)
    rows = _class_rows(result)
    n = len(records["row"])
    columns = {"causal_sampled": [False] * n, "causal_absorption": [False] * n, "causal_top_latent": [-1] * n,
               "causal_top_score": [math.nan] * n, "causal_second_score": [math.nan] * n,
               "causal_top_cos": [math.nan] * n}
    class_index = {name: i for i, name in enumerate(runner.task.classes)}
    pools, picks = {}, {}
    for row in rows:  # every class's sample first: the model then runs over them in full batches
        name = _class_name(row)
        pools[name] = picked = candidates(records, name)
        if len(picked) > cfg.samples:
            rng = np.random.default_rng([cfg.seed, class_index[name]])
            picked = sorted(rng.choice(picked, size=cfg.samples, replace=False).tolist())
        picks[name] = picked
    order = [(i, row) for row in rows for i in picks[_class_name(row)]]
    outcome = runner.score_tokens(sae, layer, [records["row"][i] for i, _ in order],
                                  [class_index[_class_name(row)] for _, row in order],
                                  [row["split_latents"] for _, row in order], dec_cos)
    for (i, _), o in zip(order, outcome):
        columns["causal_sampled"][i] = True
        columns["causal_absorption"][i] = o.absorbed
        columns["causal_top_latent"][i] = o.top_latent
        columns["causal_top_score"][i] = o.top_score
        columns["causal_second_score"][i] = o.second_score
        columns["causal_top_cos"][i] = o.top_cos
    rates = []
    for row in rows:
        name = _class_name(row)
        pool, picked = pools[name], picks[name]
        share = len(picked) / len(pool) if pool else 1.0
        found = sum(columns["causal_absorption"][i] for i in picked)
        n_tp = row["num_probe_true_positives"]
        rate = found / share / n_tp if n_tp else 0.0
        rates.append(rate)
        row.update(causal_candidates=len(pool), causal_sampled=len(picked), causal_sample_portion=share,
                   num_causal_absorption=found, causal_absorption_rate=rate)
        counts = dict.fromkeys(AGREEMENT, 0)
        sampled = set(picked)
        in_pool = set(pool)
        for i in range(n):
            if token_classes[i] != name:
                continue
            if i in in_pool and i not in sampled:
                counts["agree_unsampled"] += 1
                continue
            projection = absorbed({"absorption_fraction": records["absorption_fraction"][i],
                                   "full_absorption": records["full_absorption"][i]})
            causal = columns["causal_absorption"][i]
            key = "agree_both" if projection and causal else "agree_projection_only" if projection else \
                "agree_causal_only" if causal else "agree_neither"
            counts[key] += 1
        row.update(counts)
    records.update(columns)
    mean = float(np.mean(rates)) if rates else 0.0
    std = float(np.std(rates, ddof=1)) if len(rates) > 1 else 0.0
    result.summary.update(
        mean_causal_absorption=mean, std_causal_absorption=std,
        causal_sampled=sum(r["causal_sampled"] for r in rows),
        num_causal_absorption=sum(r["num_causal_absorption"] for r in rows),
        causal_answer_tokens=cfg.answer_tokens,
        **{f"total_{k}": sum(r[k] for r in rows) for k in AGREEMENT})
