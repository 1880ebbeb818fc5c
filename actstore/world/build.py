"""The world: known features made with sae-lens's synthetic tools, and its rows written into an actstore store.

    features   F = P parents + P*K children + B background, unit vectors in d_model dims (sae-lens's
               FeatureDictionary, orthogonalized as far as d_model allows)
    hierarchy  one organizational root with the P parents as mutually exclusive children (a row has at most one
               parent, as a word has one first letter); each parent's K children are mutually exclusive and fire
               only with their parent (as "snake" only with "starts with S")
    a row      x = sum_f a_f * feature_f, a from sae-lens's ActivationGenerator with the hierarchy applied

The store holds the rows where a parent fires, in one layer (0): label = the parent, `child` = the global index
of the child feature that fires with it (-1 when none), `text` = "p07" or "p07.2" (parent 7 with its child 2).
The task is `labels:DIR/world.csv` with its own template: the standard `labels:FILE` task, so probes, scoring and
reports run on the world exactly as on a model's store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from actstore.store.format import TASK_COLUMNS, StoreSpec
from actstore.store.zarrstore import ActivationStore
from actstore.run.results import sae_lens_version
from actstore.tasks.labels import labels_task

TEMPLATE = "{word} belongs to:"
"""The world task's query line (a label file with a template has its own prompt; no model ever reads it)."""
LABELS = "world.csv"
"""The world task's label file in the world's folder."""
TEST_SHARE = 0.2


@dataclass(frozen=True)
class WorldSpec:
    """The size and statistics of a ground-truth world (the defaults train a set in minutes on 2 CPU cores)."""

    parents: int = 26
    """parent features (the task's classes; as many as first_letter's)"""
    children: int = 3
    """child features per parent, mutually exclusive, each firing only with its parent"""
    background: int = 24
    """independent features outside the hierarchy"""
    d_model: int = 128
    """dimension of the rows (at least the feature count, so the orthogonalized features are nearly orthogonal)"""
    width: int = 192
    """latents of each trained SAE"""
    rows: int = 16384
    """labeled rows (a parent fires) written to the store; 20% are the test split"""
    parent_p: float = 0.04
    """firing probability of each parent before the root's mutual exclusion"""
    child_p: float = 0.25
    """firing probability of each child when its parent fires, before mutual exclusion"""
    background_p: float = 0.05
    """firing probability of each background feature"""
    magnitude_std: float = 0.15
    """standard deviation of firing magnitudes (mean 1)"""
    train_samples: int = 1_000_000
    """training samples per SAE"""
    pool: int = 204_800
    """size of the sampled pool that training batches are drawn from (sae-lens's hierarchy sampling is the
    slow part of training on a CPU; a pool makes it once)"""
    seed: int = 0

    @classmethod
    def sized(cls, size: int = 1, seed: int = 0, parents: int | None = None, children: int | None = None) -> WorldSpec:
        """The default world with `parents` x `children` (default 26 x 3) scaled by `size`: background features,
        rows and samples times size; d_model the feature count rounded up to 32 (so features stay orthogonal) and
        the SAEs' width 1.5 times it; each child's firing probability such that some child fires on 1 - 0.75^3 = 58%
        of a parent's rows whatever their number (0.25 each for 3)."""
        children = children or cls.children
        base = cls(seed=seed, parents=parents or cls.parents, children=children,
                   child_p=cls.child_p if children == 3 else round(1 - (1 - cls.child_p) ** (3 / children), 6))
        background = base.background * size
        features = base.parents * (1 + base.children) + background
        d_model = -(-features // 32) * 32
        return replace(base, background=background, d_model=d_model, width=d_model * 3 // 2, rows=base.rows * size,
                       train_samples=base.train_samples * size, pool=base.pool * size)

    @property
    def n_features(self) -> int:
        return self.parents * (1 + self.children) + self.background

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


class World(NamedTuple):
    """A world's features and its sampler (sae-lens objects)."""

    spec: WorldSpec
    feature_dict: object
    """sae_lens.synthetic.FeatureDictionary: feature_vectors (F, d_model), unit rows"""
    generator: object
    """sae_lens.synthetic.ActivationGenerator with the hierarchy applied"""

    @property
    def features(self) -> torch.Tensor:
        """(F, d_model) unit feature directions."""
        return self.feature_dict.feature_vectors.detach()

    def child_indices(self, p: int) -> list[int]:
        s = self.spec
        return [s.parents + p * s.children + j for j in range(s.children)]

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """(n, F) feature activations, the same for the same seed (sae-lens samples from torch's global
        generator: forked here, so the caller's random state is untouched)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return self.generator(n)


def make_world(spec: WorldSpec) -> World:
    """The world's features and sampler, deterministic in spec.seed."""
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary, HierarchyNode, hierarchy_modifier

    def children(p: int) -> list:
        return [HierarchyNode(spec.parents + p * spec.children + j) for j in range(spec.children)]

    root = HierarchyNode(None, [HierarchyNode(p, children(p), mutually_exclusive_children=spec.children >= 2)
                                for p in range(spec.parents)], mutually_exclusive_children=True)
    probs = torch.full((spec.n_features,), spec.background_p)
    probs[:spec.parents] = spec.parent_p
    probs[spec.parents:spec.parents * (1 + spec.children)] = spec.child_p
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        feature_dict = FeatureDictionary(spec.n_features, spec.d_model, seed=spec.seed)
    generator = ActivationGenerator(spec.n_features, probs, std_firing_magnitudes=spec.magnitude_std,
                                    mean_firing_magnitudes=1.0, modify_activations=hierarchy_modifier(root))
    return World(spec, feature_dict, generator)


def class_names(spec: WorldSpec) -> list[str]:
    digits = len(str(spec.parents - 1))
    return [f"p{p:0{digits}d}" for p in range(spec.parents)]


def row_texts(spec: WorldSpec) -> dict[tuple[int, int], str]:
    """(parent, child slot or -1) -> the row's text: "p07" alone, "p07.2" with its child 2."""
    names = class_names(spec)
    return {(p, j): names[p] if j < 0 else f"{names[p]}.{j}" for p in range(spec.parents)
            for j in range(-1, spec.children)}


class WorldRows(NamedTuple):
    """The labeled rows of a world."""

    x: torch.Tensor
    """(n, d_model) float32"""
    parent: np.ndarray
    """(n,) the parent that fires"""
    child: np.ndarray
    """(n,) the global feature index of the child that fires with it, -1 when none"""
    split: np.ndarray
    """(n,) 0 train, 1 test"""


def world_rows(world: World, seed: int = 1) -> WorldRows:
    """`spec.rows` rows where a parent fires (sampled in batches, rows without a parent dropped)."""
    spec = world.spec
    kept_a: list[torch.Tensor] = []
    have, batch = 0, 0
    while have < spec.rows:
        a = world.sample(8192, seed * 1_000_003 + batch)
        a = a[(a[:, :spec.parents] > 0).any(dim=1)]
        kept_a.append(a)
        have, batch = have + len(a), batch + 1
    a = torch.cat(kept_a)[:spec.rows]                                           # (n, F)
    parent = a[:, :spec.parents].argmax(dim=1).numpy()
    kids = a[:, spec.parents:spec.parents * (1 + spec.children)].reshape(len(a), spec.parents, spec.children)
    mine = kids[torch.arange(len(a)), torch.as_tensor(parent)]                  # (n, K) the parent's own children
    slot = torch.where(mine.amax(dim=1) > 0, mine.argmax(dim=1), torch.full((len(a),), -1))
    child = np.where(slot.numpy() >= 0, spec.parents + parent * spec.children + slot.numpy(), -1)
    x = world.feature_dict(a).detach().float()                                  # (n, d_model)
    order = np.random.default_rng(spec.seed).permutation(len(a))
    split = np.zeros(len(a), dtype=np.int64)
    split[order[:round(TEST_SHARE * len(a))]] = 1
    return WorldRows(x, parent.astype(np.int64), child.astype(np.int64), split)


def write_world(out: str | Path, spec: WorldSpec, log=print) -> Path:
    """Write world.json, features.npz, world.csv (the labels) and store.zarr into `out`; a folder already holding this very
    world (same spec, complete store) is kept as it is. Returns the store's path."""
    out = Path(out)
    store_path = out / "store.zarr"
    meta_path = out / "world.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("spec") == asdict(spec):
        try:
            ActivationStore.open(store_path).close()
            log(f"world {spec.digest()}: {store_path} already written")
            return store_path
        except Exception:  # noqa: BLE001 - an incomplete or damaged store is made again (seconds)
            pass
    from actstore.errors import InputError

    if meta_path.exists():
        held = json.loads(meta_path.read_text()).get("spec")
        if held != asdict(spec):
            differ = sorted(k for k in asdict(spec) if (held or {}).get(k) != asdict(spec)[k])
            raise InputError(f"{out} holds another world ({', '.join(differ)} differ); choose another --out, or "
                             f"give that world's --size, --seed, --parents and --children")
    if store_path.exists() and _world_digest(store_path) != spec.digest():
        raise InputError(f"{store_path} is not this world's store (another store, or another world's); it is left "
                         f"as it is: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(spec)
    rows = world_rows(world)
    texts = row_texts(spec)
    names = class_names(spec)
    with open(out / LABELS, "w") as f:
        f.write("token,class\n" + "".join(f"{t},{names[p]}\n" for (p, _), t in sorted(texts.items())))
    task = world_task(out)
    np.savez(out / "features.npz", features=world.features.numpy())
    slot = np.where(rows.child >= 0, (rows.child - spec.parents) % max(spec.children, 1), -1)
    row_text = np.array([texts[(p, j)] for p, j in zip(rows.parent.tolist(), slot.tolist())], dtype=object)
    if store_path.exists():
        shutil.rmtree(store_path)
    features = world.features
    cos = features @ features.T - torch.eye(len(features))
    info = {"spec": asdict(spec), "digest": spec.digest(), "classes": names, "task": task.name, "template": TEMPLATE,
            "parents": list(range(spec.parents)), "children": [world.child_indices(p) for p in range(spec.parents)],
            "background": list(range(spec.parents * (1 + spec.children), spec.n_features)),
            "max_feature_cos": round(float(cos.abs().max()), 6), "sae_lens": sae_lens_version()}
    store = ActivationStore.create(store_path, StoreSpec(
        model=f"sae_lens.synthetic world {spec.digest()}", d_model=spec.d_model, layers=[0], dtype="float32",
        prompt_template=TEMPLATE, shard_rows=_shard_rows(len(rows.x)),
        extra={"vocab_rows": 0, "world": {k: info[k] for k in ("digest", "spec", "sae_lens")}}))
    with store:
        store.add_group(task.group, rows=len(rows.x), columns={**TASK_COLUMNS, "child": "int32"},
                        attrs={"task": task.identity(), "answers": list(task.answers)})
        store.write(task.group, 0, {0: rows.x, "token_id": rows.parent * (spec.children + 1) + slot + 1,
                                    "label": rows.parent, "split": rows.split,
                                    "position": np.zeros(len(rows.x), dtype=np.int64), "text": row_text,
                                    "child": rows.child})
    meta_path.write_text(json.dumps(info, indent=1) + "\n")  # last: its presence says the world is whole
    log(f"world {spec.digest()}: {len(rows.x)} rows ({int(rows.split.sum())} test), {spec.n_features} features in "
        f"{spec.d_model} dims -> {store_path}")
    return store_path


def _world_digest(store_path: Path) -> str | None:
    """The world a store at store_path was written for (None: not a world's store, or unreadable)."""
    try:
        attrs = json.loads((store_path / "zarr.json").read_text()).get("attributes", {})
        return ((attrs.get("extra") or {}).get("world") or {}).get("digest")
    except (OSError, ValueError, AttributeError):
        return None


def _shard_rows(n: int) -> int:
    """Shards of 16384 rows, or one shard for a smaller world (chunks of 1024 must divide it)."""
    return 16384 if n >= 16384 else max(1024, -(-n // 1024) * 1024)


def world_task(out: str | Path):
    """The world's task: `labels:OUT/world.csv` with its own template (`task_spec(out)` as `--task` takes it)."""
    return labels_task(Path(out) / LABELS, TEMPLATE)


def task_spec(out: str | Path) -> str:
    """What `--task` (with `--template TEMPLATE`) takes for the world in `out`."""
    return f"labels:{Path(out) / LABELS}"


def load_world(out: str | Path) -> tuple[dict, torch.Tensor]:
    """world.json's contents and the (F, d_model) feature directions of a written world."""
    out = Path(out)
    meta_path = out / "world.json"
    if not meta_path.exists():
        from actstore.errors import MissingFile

        raise MissingFile(f"{out} holds no world (no world.json); make one with `actstore synth-world --out {out}`")
    with np.load(out / "features.npz") as f:
        return json.loads(meta_path.read_text()), torch.from_numpy(f["features"])
