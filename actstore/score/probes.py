"""Ground-truth probes of a task, one per stored layer (DESIGN.md, "Metrics", item 1).

    actstore probe STORE [--layers SPEC] [--task NAME]

Per layer: `Linear(d_model, C)` (C = the task's classes; 26 letters for first_letter) trained one-vs-rest
on the task's train rows with BCEWithLogits and pos_weight = n_neg / n_pos per class, Adam (lr 1e-2, weight
decay 1e-4), 50 epochs of batches of 64, the learning rate decayed exponentially to 1e-5 over the epochs
(SAEBench's schedule: gamma = (1e-5 / 1e-2) ** (1 / epochs), stepped after each epoch). A probe fires when
its logit > 0; the direction of class c is row c normalized. Classes whose test F1 is below 0.6 are not
evaluated.

Weights and per-class train/test precision, recall and F1 go into the store (`probes/layer_LL` for
first_letter, `probes/<task key>/layer_LL` for any other task).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from actstore.errors import InputError
from actstore.score.metrics import precision_recall_f1
from actstore.store.taskrows import task_rows
from actstore.store.zarrstore import ActivationStore
from actstore.tasks.base import Task
from actstore.tasks.builtin import FIRST_LETTER_TASK

MIN_PROBE_F1 = 0.6  # classes below this test F1 are not evaluated (SAEBench)


@dataclass
class ProbeConfig:
    """Training constants; defaults are SAEBench's."""

    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-2
    end_lr: float = 1e-5
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass
class Probe:
    weight: torch.Tensor
    """(C, d_model)"""
    bias: torch.Tensor
    """(C,)"""
    metrics: dict[str, dict[str, list[float]]]
    """split ("train", "test") -> "precision" | "recall" | "f1" -> C values, one per class in label order."""

    @property
    def n_classes(self) -> int:
        return len(self.weight)

    def directions(self) -> torch.Tensor:
        """(C, d_model) unit probe directions p_c."""
        return torch.nn.functional.normalize(self.weight, dim=1)

    def evaluated_classes(self, min_f1: float = MIN_PROBE_F1) -> list[int]:
        """Classes whose test F1 is above min_f1 (strictly, as SAEBench's `f1_probe > min_GT_probe_f1`): the only
        ones the scorer evaluates."""
        return [c for c, f1 in enumerate(self.metrics["test"]["f1"]) if f1 > min_f1]



def pos_weights(labels: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    """(C,) n_neg / n_pos per class (labels (N,) int 0..C-1); a class with no positives gets 1 (it never fires
    anyway). n_classes: C (None: first_letter's, for callers before tasks)."""
    n_classes = FIRST_LETTER_TASK.n_classes if n_classes is None else n_classes
    n_pos = torch.bincount(labels, minlength=n_classes).float()
    return torch.where(n_pos > 0, (len(labels) - n_pos) / n_pos.clamp(min=1), torch.ones_like(n_pos))


def fit_one_vs_rest(params: list[torch.Tensor], logits, labels: torch.Tensor, cfg: ProbeConfig,
                    extra_loss=None, n_classes: int | None = None) -> list[float]:
    """SAEBench's one-vs-rest training loop, shared by the ground-truth probe and the sparse L1 probe.

    `logits(rows)` maps a (B,) tensor of row indices to (B, C) logits; labels (N,) 0..C-1 (n_classes: C; None:
    the width of `logits`' output). Loss: BCEWithLogits against one-hot targets with pos_weight = n_neg / n_pos
    per class, plus `extra_loss()` when given; Adam with cfg.weight_decay; batches of cfg.batch_size rows in a
    seeded random order; the learning rate decayed exponentially from cfg.lr to cfg.end_lr over cfg.epochs.
    Returns the learning rate of each epoch.
    """
    if n_classes is None:
        with torch.no_grad():
            n_classes = logits(torch.zeros(0, dtype=torch.long)).shape[-1]
    gen = torch.Generator().manual_seed(cfg.seed)
    targets = torch.nn.functional.one_hot(labels, n_classes).float()
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weights(labels, n_classes).to(targets.device))
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=(cfg.end_lr / cfg.lr) ** (1 / cfg.epochs))
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        for batch in torch.randperm(len(labels), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss = loss_fn(logits(batch), targets[batch.to(targets.device)])
            if extra_loss is not None:
                loss = loss + extra_loss()
            loss.backward()
            opt.step()
        schedule.step()
    return lrs


def train_probe(x: torch.Tensor, labels: torch.Tensor, split: torch.Tensor, cfg: ProbeConfig = ProbeConfig(),
                n_classes: int | None = None) -> tuple[Probe, list[float]]:
    """Train one layer's probe. x (N, d) activations, labels (N,) 0..C-1, split (N,) 0 train / 1 test;
    n_classes: C (None: first_letter's 26 classes, as before tasks).

    Returns the probe and the learning rate used in each epoch.
    """
    n_classes = FIRST_LETTER_TASK.n_classes if n_classes is None else n_classes
    torch.manual_seed(cfg.seed)  # the Linear's initialization
    x, labels, split = x.float(), labels.long(), split.long()
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < n_classes:
        raise InputError(f"probe labels run {int(labels.min())}..{int(labels.max())}; a task of {n_classes} classes "
                         f"has labels 0..{n_classes - 1}")
    train = split == 0
    xt = x[train]
    probe = torch.nn.Linear(x.shape[1], n_classes)
    lrs = fit_one_vs_rest(list(probe.parameters()), lambda rows: probe(xt[rows]), labels[train], cfg,
                          n_classes=n_classes)
    with torch.no_grad():
        fires = probe(x) > 0  # (N, C)
    metrics = {}
    for name, rows in (("train", train), ("test", ~train)):
        per = [precision_recall_f1(fires[rows, c], labels[rows] == c) for c in range(n_classes)]
        metrics[name] = {k: [float(getattr(p, k)) for p in per] for k in ("precision", "recall", "f1")}
    return Probe(probe.weight.detach().clone(), probe.bias.detach().clone(), metrics), lrs


def probe_store(path: str, layers: list[int] | None = None, cfg: ProbeConfig = ProbeConfig(),
                task: Task = FIRST_LETTER_TASK, progress: bool = False) -> dict[int, Probe]:
    """Train and save the probes of a task (default first_letter) on `layers` (default: all) of a store."""
    from tqdm.auto import tqdm

    store = ActivationStore.open(path, mode="a", require_complete=True)
    try:
        if task.group == "vocab" and "vocab" not in store.groups and not store.spec.extra.get("vocab_rows", 1):
            raise InputError(f"{path} holds no vocabulary task (it was extracted with --no-vocab): probes train on "
                             f"it; extract again without --no-vocab (or add it with `actstore extract --task "
                             f"{task.prompt_task} --out {path} ...`)")
        rows = task_rows(store, task)
        index = None if rows.index is None else torch.as_tensor(rows.index)
        labels, split = torch.as_tensor(rows.labels).long(), torch.as_tensor(rows.split).long()
        out = {}
        for layer in tqdm(layers or store.layers, desc=f"probe {task.name}", unit="layer", disable=not progress):
            x = store.read(rows.group, layer)
            probe, _ = train_probe(x if index is None else x[index], labels, split, cfg, n_classes=task.n_classes)
            store.save_probe(layer, probe.weight.numpy(), probe.bias.numpy(),
                             {"metrics": probe.metrics, "config": asdict(cfg), "min_f1": MIN_PROBE_F1}, task=task)
            out[layer] = probe
    finally:
        store.close()
    return out


def load_probe(store, layer: int, task: Task = FIRST_LETTER_TASK) -> Probe:
    """The saved probe of a task (default first_letter) at one layer of an open ActivationStore."""
    weight, bias, attrs = store.load_probe(layer, task)
    return Probe(torch.from_numpy(np.asarray(weight)), torch.from_numpy(np.asarray(bias)), attrs["metrics"])


def rows_needed(labels: np.ndarray, split: np.ndarray, passing: list[int], wanted: int = FIRST_LETTER_TASK.min_evaluated,
                n_classes: int | None = None) -> int | None:
    """About how many vocabulary rows would let `wanted` classes pass, assuming a class passes once it has
    as many training rows as the passing classes have (their median): the rows now, scaled by that count over
    the training rows of the `wanted`-th most frequent class. None when nothing passes, or when that class
    already has as many (rows are not what it lacks)."""
    n_classes = FIRST_LETTER_TASK.n_classes if n_classes is None else n_classes
    counts = np.bincount(labels[split == 0], minlength=n_classes)
    if not passing:
        return None
    enough = float(np.median([counts[c] for c in passing]))
    wanted_count = np.sort(counts)[::-1][min(wanted, len(counts)) - 1]
    if wanted_count >= enough:
        return None
    return int(np.ceil(len(labels) * enough / max(wanted_count, 1)))


def layer_guidance(store, layer: int, probe: Probe | None = None, min_f1: float = MIN_PROBE_F1,
                   task: Task = FIRST_LETTER_TASK) -> list[str]:
    """Warning lines for a layer whose probe of `task` passes fewer than task.min_evaluated classes (none
    otherwise), with the vocabulary rows that would likely be needed. `store`: an open ActivationStore or its
    path."""
    if not isinstance(store, ActivationStore):
        with ActivationStore.open(store) as opened:
            return layer_guidance(opened, layer, probe, min_f1, task)
    probe = probe or load_probe(store, layer, task)
    passing = probe.evaluated_classes(min_f1)
    if len(passing) >= task.min_evaluated:
        return []
    rows = task_rows(store, task)
    labels, split = rows.labels, rows.split
    where = store.group_attrs(rows.group).get("extract") or store.spec.extra
    line = (f"warning: layer {layer}: {len(passing)} of {task.n_classes} classes of {task.name} reach probe test F1 {min_f1} "
            f"({'SAEBench wants' if task.saebench_eval else 'the task needs'} at least {task.min_evaluated}); the store has {len(labels):,} vocabulary rows")
    need, available = rows_needed(labels, split, passing, task.min_evaluated, task.n_classes), where.get("vocab_alphabetic")
    if task.relabels:
        available = None  # a relabel task holds some of its group's rows: the tokenizer's count is not its own
    if need is None:
        return [line + "; more rows may not help: the probe misses frequent classes too (try another layer)"]
    if available is not None and need >= available:
        return [line + f"; about {need:,} would be needed, more than the {available:,} tokens the task labels in the "
                       f"tokenizer: extract without --max-vocab to use them all"]
    return [line + f"; about {need:,} would be needed (extract with --max-vocab {need})"]


def score_notes(store_path: str, layers, min_f1: float = MIN_PROBE_F1, task: Task = FIRST_LETTER_TASK) -> list[str]:
    """What `score` says once before it starts: layers with few evaluated classes, and a store without contexts."""
    lines = []
    with ActivationStore.open(store_path) as store:
        for layer in sorted(l for l in layers if l is not None and l in store.layers):
            try:
                lines += layer_guidance(store, layer, min_f1=min_f1, task=task)
            except KeyError:  # no probe (or no rows of the task): each of that layer's SAEs fails with its own reason
                pass
        if "context" not in store.groups:
            lines.append(f"note: {store_path} has no contexts: in-context precision and recall are skipped (extract "
                         f"with --contexts to get them)")
    return lines
