"""Ground-truth first-letter probes, one per stored layer (DESIGN.md, "Metrics", item 1).

    actstore probe STORE [--layers SPEC]

Per layer: `Linear(d_model, 26)` trained one-vs-rest on the vocabulary task's train split with
BCEWithLogits and pos_weight = n_neg / n_pos per letter, Adam (lr 1e-2, weight decay 1e-4), 50 epochs of
batches of 64, the learning rate decayed exponentially to 1e-5 over the epochs (SAEBench's schedule:
gamma = (1e-5 / 1e-2) ** (1 / epochs), stepped after each epoch). A probe fires when its logit > 0; the
direction of letter c is row c normalized. Letters whose test F1 is below 0.6 are not evaluated.

Weights and per-letter train/test precision, recall and F1 go into the store (`probes/layer_LL`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from actstore.errors import InputError
from actstore.score.metrics import precision_recall_f1

MIN_PROBE_F1 = 0.6  # letters below this test F1 are not evaluated (SAEBench)
MIN_LETTERS = 20  # SAEBench's floor: a layer with fewer evaluated letters gives a noisy mean
LETTERS = "abcdefghijklmnopqrstuvwxyz"


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
    """(26, d_model)"""
    bias: torch.Tensor
    """(26,)"""
    metrics: dict[str, dict[str, list[float]]]
    """split ("train", "test") -> "precision" | "recall" | "f1" -> 26 values, a to z."""

    def directions(self) -> torch.Tensor:
        """(26, d_model) unit probe directions p_c."""
        return torch.nn.functional.normalize(self.weight, dim=1)

    def evaluated_letters(self, min_f1: float = MIN_PROBE_F1) -> list[int]:
        """Letters whose test F1 is above min_f1 (strictly, as SAEBench's `f1_probe > min_GT_probe_f1`): the only
        ones the scorer evaluates."""
        return [c for c, f1 in enumerate(self.metrics["test"]["f1"]) if f1 > min_f1]


def pos_weights(labels: torch.Tensor, n_classes: int = 26) -> torch.Tensor:
    """n_neg / n_pos per class (labels (N,) int); a class with no positives gets 1 (it never fires anyway)."""
    n_pos = torch.bincount(labels, minlength=n_classes).float()
    return torch.where(n_pos > 0, (len(labels) - n_pos) / n_pos.clamp(min=1), torch.ones_like(n_pos))


def fit_one_vs_rest(params: list[torch.Tensor], logits, labels: torch.Tensor, cfg: ProbeConfig,
                    extra_loss=None) -> list[float]:
    """SAEBench's one-vs-rest training loop, shared by the ground-truth probe and the sparse L1 probe.

    `logits(rows)` maps a (B,) tensor of row indices to (B, 26) logits; labels (N,) 0..25. Loss: BCEWithLogits
    against one-hot targets with pos_weight = n_neg / n_pos per letter, plus `extra_loss()` when given; Adam
    with cfg.weight_decay; batches of cfg.batch_size rows in a seeded random order; the learning rate decayed
    exponentially from cfg.lr to cfg.end_lr over cfg.epochs. Returns the learning rate of each epoch.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    targets = torch.nn.functional.one_hot(labels, 26).float()
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weights(labels).to(targets.device))
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


def train_probe(x: torch.Tensor, labels: torch.Tensor, split: torch.Tensor, cfg: ProbeConfig = ProbeConfig()
                ) -> tuple[Probe, list[float]]:
    """Train one layer's probe. x (N, d) activations, labels (N,) 0..25, split (N,) 0 train / 1 test.

    Returns the probe and the learning rate used in each epoch.
    """
    torch.manual_seed(cfg.seed)  # the Linear's initialization
    x, labels, split = x.float(), labels.long(), split.long()
    train = split == 0
    xt = x[train]
    probe = torch.nn.Linear(x.shape[1], 26)
    lrs = fit_one_vs_rest(list(probe.parameters()), lambda rows: probe(xt[rows]), labels[train], cfg)
    with torch.no_grad():
        fires = probe(x) > 0  # (N, 26)
    metrics = {}
    for name, rows in (("train", train), ("test", ~train)):
        per = [precision_recall_f1(fires[rows, c], labels[rows] == c) for c in range(26)]
        metrics[name] = {k: [float(getattr(p, k)) for p in per] for k in ("precision", "recall", "f1")}
    return Probe(probe.weight.detach().clone(), probe.bias.detach().clone(), metrics), lrs


def probe_store(path: str, layers: list[int] | None = None, cfg: ProbeConfig = ProbeConfig(),
                progress: bool = False) -> dict[int, Probe]:
    """Train and save the probes of `layers` (default: all) of a store's vocabulary group."""
    from tqdm.auto import tqdm

    from actstore.store.zarrstore import ActivationStore

    store = ActivationStore.open(path, mode="a", require_complete=True)
    if "vocab" not in store.groups:
        store.close()
        raise InputError(f"{path} holds no vocabulary task (it was extracted with --no-vocab): probes train on it; "
                         f"extract again without --no-vocab")
    labels = torch.as_tensor(store.column("vocab", "label")).long()
    split = torch.as_tensor(store.column("vocab", "split")).long()
    out = {}
    for layer in tqdm(layers or store.layers, desc="probe", unit="layer", disable=not progress):
        probe, _ = train_probe(store.read("vocab", layer), labels, split, cfg)
        store.save_probe(layer, probe.weight.numpy(), probe.bias.numpy(),
                         {"metrics": probe.metrics, "config": asdict(cfg), "min_f1": MIN_PROBE_F1})
        out[layer] = probe
    store.close()
    return out


def load_probe(store, layer: int) -> Probe:
    """The saved probe of one layer of an open ActivationStore."""
    weight, bias, attrs = store.load_probe(layer)
    return Probe(torch.from_numpy(np.asarray(weight)), torch.from_numpy(np.asarray(bias)), attrs["metrics"])


def rows_needed(labels: np.ndarray, split: np.ndarray, passing: list[int], letters: int = MIN_LETTERS) -> int | None:
    """About how many vocabulary rows would let `letters` letters pass, assuming a letter passes once it has
    as many training rows as the passing letters have (their median): the rows now, scaled by that count over
    the training rows of the `letters`-th most frequent letter. None when nothing passes, or when that letter
    already has as many (rows are not what it lacks)."""
    counts = np.bincount(labels[split == 0], minlength=26)
    if not passing:
        return None
    enough = float(np.median([counts[c] for c in passing]))
    wanted = np.sort(counts)[::-1][letters - 1]
    if wanted >= enough:
        return None
    return int(np.ceil(len(labels) * enough / max(wanted, 1)))


def layer_guidance(store, layer: int, probe: Probe | None = None, min_f1: float = MIN_PROBE_F1) -> list[str]:
    """Warning lines for a layer whose probe passes fewer than MIN_LETTERS letters (none otherwise), with the
    vocabulary rows that would likely be needed. `store`: an open ActivationStore or its path."""
    from actstore.store.zarrstore import ActivationStore

    if not isinstance(store, ActivationStore):
        with ActivationStore.open(store) as opened:
            return layer_guidance(opened, layer, probe, min_f1)
    probe = probe or load_probe(store, layer)
    passing = probe.evaluated_letters(min_f1)
    if len(passing) >= MIN_LETTERS:
        return []
    labels, split = store.column("vocab", "label"), store.column("vocab", "split")
    extra = store.spec.extra
    line = (f"warning: layer {layer}: {len(passing)} of 26 letters reach probe test F1 {min_f1} (SAEBench wants at "
            f"least {MIN_LETTERS}); the store has {len(labels):,} vocabulary rows")
    need, available = rows_needed(labels, split, passing), extra.get("vocab_alphabetic")
    if need is None:
        return [line + "; more rows may not help: the probe misses frequent letters too (try another layer)"]
    if available is not None and need >= available:
        return [line + f"; about {need:,} would be needed, more than the {available:,} alphabetic tokens the "
                       f"tokenizer has: extract without --max-vocab to use them all"]
    return [line + f"; about {need:,} would be needed (extract with --max-vocab {need})"]


def score_notes(store_path: str, layers, min_f1: float = MIN_PROBE_F1) -> list[str]:
    """What `score` says once before it starts: layers with few letters, and a store without contexts."""
    from actstore.store.zarrstore import ActivationStore

    lines = []
    with ActivationStore.open(store_path) as store:
        for layer in sorted(l for l in layers if l is not None and l in store.layers):
            try:
                lines += layer_guidance(store, layer, min_f1=min_f1)
            except KeyError:  # no probe: each of that layer's SAEs fails with its own reason
                pass
        if "context" not in store.groups:
            lines.append(f"note: {store_path} has no contexts: in-context precision and recall are skipped (extract "
                         f"with --contexts to get them)")
    return lines
