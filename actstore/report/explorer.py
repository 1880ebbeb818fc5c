"""`actstore explore RESULTS [--out DIR]`: a static absorption explorer of a results folder.

    DIR/index.html, explorer.css, explorer.js   the page (copied from actstore/report/static/, no build step)
    DIR/data/index.js                           the tasks (name, classes) and every scored (SAE, task)'s
                                                summary: what the page needs to draw first
    DIR/data/sae_NNNN.js                        one (SAE, task): its classes, absorbed tokens, absorbers;
                                                loaded when shown
    DIR/data/search_X.js                        the cross-SAE token index of tokens whose first character is X
                                                (a-z, _ for the rest); loaded when a search needs it

The page's class buttons are the task's evaluated classes; with several tasks a task selector picks one. Its
URL is `#sae=N&class=C[&latent=L]` (`#letter=C`, the spelling before tasks, is read as `#class=C`).

It opens from file:// (no server, no fetch of local files): data files are scripts that call
`ACTSTORE.loaded(...)` when the page inserts their <script> tag. Python only fills data in; the markup lives
in actstore/report/static/. A token is listed when it is absorbed (tokens.py): absorption fraction > 0 or fully
absorbed; every probe true positive stays in tokens.parquet.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

from actstore.score.causal import AGREEMENT
from actstore.errors import InputError, MissingFile
from actstore.tasks.base import FIRST_LETTER
from actstore.report.pages import load_results, width_name
from actstore.report.pages import task_order
from actstore.run.results import part_name, read_classes
from actstore.run.tokens import token_class, tokens_path
from actstore.score.absorption import absorbed, token_absorbers

ASSETS = Path(__file__).parent / "static"
PAGE_FILES = ("index.html", "explorer.css", "explorer.js")
NEURONPEDIA = "https://www.neuronpedia.org/gemma-2-2b/{layer}-gemmascope-res-{width}/"
"""Neuronpedia's page of a Gemma Scope 2b residual latent is this plus the latent's index."""


def neuronpedia_base(release: str, sae_id: str, layer: int | None) -> str | None:
    """Neuronpedia's URL prefix for a Gemma Scope 2b residual SAE (width as its id writes it: 16k, 65k, 1m),
    None for any other SAE (no page exists)."""
    width = re.search(r"width_(\d+[km])", sae_id)
    if not release.startswith("gemma-scope-2b-pt-res") or width is None or layer is None:
        return None
    return NEURONPEDIA.format(layer=layer, width=width.group(1))


def width_label(sae_id: str, width: int) -> str:
    """The width as the SAE's id writes it (Gemma Scope: width_16k, width_65k, width_1m), else 16k / 1m."""
    named = re.search(r"width_(\d+[km])", sae_id)
    if named:
        return named.group(1)
    return width_name(width)


def _script(call: str, payload) -> str:
    """A data file: one call with the payload as a JSON literal (JSON is valid JavaScript)."""
    return f"{call}({json.dumps(payload, separators=(',', ':'), allow_nan=False)});\n"


def _round(x, digits: int = 4):
    return None if x is None or x != x else round(float(x), digits)


def _classes(rows: list[dict]) -> list[dict]:
    keep = ("class", "probe_test_precision", "probe_test_recall", "probe_test_f1", "main_precision", "main_recall",
            "main_f1", "single_precision", "single_recall", "single_f1", "single_latent", "num_split_features",
            "split_latents", "split_cos_dec", "k_sparse_f1", "num_probe_true_positives", "mean_absorption_fraction",
            "full_absorption_rate", "causal_absorption_rate", "num_causal_absorption", "causal_candidates",
            "causal_sampled", *AGREEMENT)
    out = []
    for row in rows:
        entry = {k: row.get(k) for k in keep}
        for k, v in entry.items():
            if isinstance(v, float):
                entry[k] = _round(v)
            elif isinstance(v, list):
                entry[k] = [_round(x) if isinstance(x, float) else x for x in v]
        out.append(entry)
    return out


def sae_payload(classes: list[dict], records: list[dict], absorbers: list[dict]) -> dict:
    """One (SAE, task)'s data file: its classes, its absorbed tokens per class and its absorbers.

    A token is [row, text, act, absorption fraction, full (0/1), k-sparse miss (0/1), main projection,
    [[latent, cos, share], ...], causal (1/0, null when the causal metric did not sample it), the causal top
    latent and its score (null when not sampled)]. Listed: absorbed by either metric."""
    tokens = defaultdict(list)
    for r in records:
        sampled = bool(r.get("causal_sampled"))
        if absorbed(r) or (sampled and r.get("causal_absorption")):
            tokens[token_class(r)].append([r["row"], r["text"], _round(r["probe_projection"]),
                                        _round(r["absorption_fraction"]), int(r["full_absorption"]),
                                        int(r["k_sparse_miss"]), _round(r["main_projection"]),
                                        [[i, _round(c), _round(s)] for i, c, s in token_absorbers(r)],
                                        int(r["causal_absorption"]) if sampled else None,
                                        r["causal_top_latent"] if sampled else None,
                                        _round(r["causal_top_score"]) if sampled else None])
    return {"classes": _classes(classes), "tokens": tokens,
            "absorbers": {str(a["latent"]): {"classes": a.get("classes", a.get("letters")), "num_tokens": a["num_tokens"],
                                             "mean_share": _round(a["mean_share"]), "tokens": a["tokens"],
                                             "top_tokens": a["top_tokens"],
                                             "top_acts": [_round(x, 3) for x in a["top_acts"]]}
                          for a in absorbers}}


def search_shard(text: str) -> str:
    """The search index file a token's hits live in: by its first character (lower case, a-z), `_` for the rest.
    The page computes the same name (explorer.js `shardOf`)."""
    first = text.strip()[:1].lower()
    return first if "a" <= first <= "z" else "_"


def write_search_index(data: Path, texts: list[str], hits: list[list]) -> list[Path]:
    """data/search_X.js for each first character X: the absorbed tokens starting with it and their hits
    [text index, entry n, class, latent, absorption fraction, share], so a search loads one small file."""
    by_shard: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    local: dict[int, int] = {}
    for hit in hits:
        shard_texts, shard_hits = by_shard[search_shard(texts[hit[0]])]
        if hit[0] not in local:
            local[hit[0]] = len(shard_texts)
            shard_texts.append(texts[hit[0]])
        shard_hits.append([local[hit[0]], *hit[1:]])
    written = []
    for shard in [chr(c) for c in range(97, 123)] + ["_"]:  # every shard exists: a search never loads a 404
        shard_texts, shard_hits = by_shard.get(shard, ([], []))
        path = data / f"search_{shard}.js"
        path.write_text(_script("ACTSTORE.searchLoaded", {"shard": shard, "texts": shard_texts, "hits": shard_hits}))
        written.append(path)
    return written


def write_explorer(results: str | Path, out: str | Path | None = None) -> dict:
    """Write the explorer of a results folder; returns {"html": path, "saes": SAEs, "entries": (SAE, task) pairs,
    "tasks": names, "bytes": {...}}."""
    import pyarrow.parquet as pq

    results = Path(results)
    out = Path(out) if out else results / "explorer"
    for name in ("saes.parquet", "tokens.parquet"):
        if not (results / name).exists():
            raise MissingFile(f"{results} has no {name}: run `actstore score ... --out {results}` first "
                              f"(tokens.parquet needs a score of this version)")
    saes, _ = load_results(results)  # scored SAEs, each with the L0 the report uses and where it comes from
    if not saes:
        raise InputError(f"{results} holds no scored SAE: nothing to explore")
    order = {t: i for i, t in enumerate(task_order(r["task"] for r in saes))}
    saes.sort(key=lambda r: (order[r["task"]], r["layer"] if r["layer"] is not None else -1, r["width"],
                             r["l0"] or 0, r["sae_id"]))
    classes = defaultdict(list)
    for row in read_classes(results):
        classes[row["sae_key"], row["task"]].append(row)
    absorbers = defaultdict(list)
    if (results / "absorbers.parquet").exists():
        for row in pq.read_table(results / "absorbers.parquet").to_pylist():
            absorbers[row["sae_key"], row.get("task") or FIRST_LETTER].append(row)

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in PAGE_FILES:
        shutil.copyfile(ASSETS / name, out / name)

    index, texts, hits, text_ids = [], [], [], {}
    for n, sae in enumerate(saes):
        key, task = sae["sae_key"], sae["task"]
        file = f"sae_{n:04d}.js"
        own = tokens_path(results / "parts" / part_name(key, task))  # this SAE's rows of tokens.parquet
        if not own.exists():
            raise MissingFile(f"{results}: SAE {sae['sae_id']} has no per-token records ({own.name}); it was "
                              f"scored by an older actstore: rerun `actstore score ... --out {results}`, which "
                              f"scores it again")
        records = pq.read_table(own).to_pylist()
        payload = sae_payload(classes[key, task], records, absorbers[key, task])
        (data / file).write_text(_script("ACTSTORE.loaded", {"n": n, **payload}))
        index.append({"n": n, "key": key, "task": task, "id": sae["sae_id"], "release": sae["release"], "layer": sae["layer"],
                      "width": sae["width"], "width_name": width_label(sae["sae_id"], sae["width"]),
                      "l0": _round(sae["l0"], 1), "l0_source": sae["l0_source"],
                      "absorption": _round(sae["mean_absorption_fraction"]),
                      "full_absorption": _round(sae["mean_full_absorption"]),
                      "l1_solver": sae.get("l1_solver"), "seeds": sae.get("seeds") or 1,
                      "absorption_seed_range": _round(sae.get("mean_absorption_fraction_seed_range")),
                      "absorption_chance": _round(sae.get("chance_random_decoder_mean_absorption_fraction")),
                      "classes": [r["class"] for r in payload["classes"]], "file": file,
                      "neuronpedia": neuronpedia_base(sae["release"], sae["sae_id"], sae["layer"])})
        for name, rows in payload["tokens"].items():
            for token in rows:
                text = token[1]
                if text not in text_ids:
                    text_ids[text] = len(texts)
                    texts.append(text)
                for latent, _, share in token[7] or [[None, None, None]]:
                    hits.append([text_ids[text], n, name, latent, token[3], share])
    tasks = [{"name": t, "classes": sorted({c for e in index if e["task"] == t for c in e["classes"]})}
             for t in task_order(e["task"] for e in index)]
    (data / "index.js").write_text(_script("ACTSTORE.indexLoaded", {"title": results.resolve().name, "tasks": tasks,
                                                                    "saes": index}))
    shards = write_search_index(data, texts, hits)
    sizes = {"page": sum((out / f).stat().st_size for f in PAGE_FILES), "index": (data / "index.js").stat().st_size,
             "search": sum(p.stat().st_size for p in shards),
             "saes": sum((data / e["file"]).stat().st_size for e in index)}
    return {"html": str(out / "index.html"), "saes": len({e["key"] for e in index}), "entries": len(index),
            "tasks": [t["name"] for t in tasks], "bytes": sizes}
