"""Per-token records and absorbers: what each SAE does on each probe true positive, and which latents absorb.

    RESULTS/parts/<part>.tokens.parquet  one SAE's per-token records on one task (scorer.TOKEN_COLUMNS), written
                                         before its part, so a finished part always has its tokens beside it
    RESULTS/tokens.parquet               every scored (SAE, task)'s records, with sae_key, task and class (and
                                         `letter` = class on first_letter rows, as before tasks); text columns
                                         dictionary-encoded
    RESULTS/absorbers.parquet            one row per (SAE, task, latent that absorbs some token): its classes,
                                         tokens, mean share of the projection, top-activating vocabulary tokens

A token is absorbed when its absorption fraction is > 0 or it is fully absorbed. Its absorbers are the
latents of T (DESIGN.md "Metrics" 4: at most 3 non-main latents, cos >= 0.1, positive projection) when the
fraction is > 0, and the largest-projection latent when it is fully absorbed. A latent's share of a token's
projection is proj_i / act, with act = a . p_c the model's own projection on the probe.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from actstore.score.absorption import absorbed, token_absorbers
from actstore.tasks.base import FIRST_LETTER

TEXT_COLUMNS = ("sae_key", "task", "class", "letter", "text")
"""Columns stored dictionary-encoded: few distinct values, repeated on many rows."""


def tokens_path(part: Path) -> Path:
    """parts/<hash>.json -> parts/<hash>.tokens.parquet"""
    return part.with_name(part.name.removesuffix(".json") + ".tokens.parquet")


def _table(columns: dict[str, list]):
    import pyarrow as pa

    floats = {name for name, values in columns.items() if values and isinstance(values[0], float)}
    lists = {name for name, values in columns.items()
             if values and isinstance(values[0], list) and any(v and isinstance(v[0], float) for v in values)}
    arrays = {}
    for name, values in columns.items():
        if name in TEXT_COLUMNS:
            arrays[name] = pa.array(values, pa.string()).dictionary_encode()
        elif name in floats:
            arrays[name] = pa.array(values, pa.float32())
        elif name in lists:
            arrays[name] = pa.array(values, pa.list_(pa.float32()))
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays)


def write_tokens(path: Path, tokens: dict[str, list]) -> int:
    """Write one SAE's records atomically (a temporary file renamed into place); returns the bytes written."""
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".partial")
    pq.write_table(_table(tokens), tmp, compression="zstd")
    os.replace(tmp, path)
    return path.stat().st_size


def combine_tokens(out: Path, parts: list[tuple[Path, dict]]) -> int:
    """RESULTS/tokens.parquet from the per-SAE files of the scored parts; returns the rows written (0: no
    file, when no scored SAE has records)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path, record in parts:
        file = tokens_path(path)
        if record["summary"]["status"] != "ok" or not file.exists():
            continue
        table = pq.read_table(file)
        task = record.get("task") or FIRST_LETTER

        def text(value, n=len(table)):
            return pa.array([value] * n, pa.string()).dictionary_encode()

        if "class" not in table.column_names:  # an SAE's records written before tasks: `letter` is its class
            table = table.append_column("class", table.column("letter"))
        if task == FIRST_LETTER and "letter" not in table.column_names:
            table = table.append_column("letter", table.column("class"))
        elif task != FIRST_LETTER and "letter" in table.column_names:
            table = table.drop_columns(["letter"])
        table = table.add_column(0, "task", text(task)).add_column(0, "sae_key", text(record["sae_key"]))
        tables.append(table)
    if not tables:
        return 0
    table = pa.concat_tables(tables, promote_options="default").unify_dictionaries()
    pq.write_table(table, out / "tokens.parquet", compression="zstd")
    return len(table)


def token_class(row: dict) -> str:
    """A token record's class (`letter` in records written before tasks)."""
    return row["class"] if row.get("class") is not None else row["letter"]


def absorbers(records: list[dict], top_tokens: dict) -> list[dict]:
    """One SAE's absorbers from its token records (dicts with TOKEN_COLUMNS): latent, classes, tokens it
    absorbs (text, row), mean share of the projection, and its top vocabulary tokens (`top_tokens`: latent ->
    [[row, text, activation], ...], the scorer's `latent_top_tokens`). Sorted by tokens absorbed, then id."""
    found: dict[int, dict] = defaultdict(lambda: {"classes": [], "tokens": [], "rows": [], "shares": []})
    for row in records:
        if not absorbed(row):
            continue
        name = token_class(row)
        for latent, _, share in token_absorbers(row):
            entry = found[latent]
            if name not in entry["classes"]:
                entry["classes"].append(name)
            entry["tokens"].append(row["text"])
            entry["rows"].append(row["row"])
            entry["shares"].append(share)
    out = []
    for latent, entry in found.items():
        top = top_tokens.get(str(latent), top_tokens.get(latent, []))
        out.append({"latent": latent, "classes": entry["classes"], "num_tokens": len(entry["tokens"]),
                    "tokens": entry["tokens"], "rows": entry["rows"],
                    "mean_share": sum(entry["shares"]) / len(entry["shares"]),
                    "top_tokens": [t[1] for t in top], "top_acts": [float(t[2]) for t in top]})
    return sorted(out, key=lambda a: (-a["num_tokens"], a["latent"]))


def write_absorbers(out: Path, parts: list[tuple[Path, dict]]) -> int:
    """RESULTS/absorbers.parquet from the per-SAE token files and the parts' top tokens; returns its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for path, record in parts:
        file = tokens_path(path)
        if record["summary"]["status"] != "ok" or not file.exists():
            continue
        records = pq.read_table(file).to_pylist()
        task = record.get("task") or FIRST_LETTER
        for a in absorbers(records, record.get("latent_top_tokens", {})):
            rows.append({"sae_key": record["sae_key"], "task": task, **a,
                         **({"letters": a["classes"]} if task == FIRST_LETTER else {})})
    if not rows:
        return 0
    names = list(dict.fromkeys(k for row in rows for k in row))  # the union: `letters` is on first_letter rows only
    table = pa.Table.from_pydict({k: [row.get(k) for row in rows] for k in names})
    pq.write_table(table, out / "absorbers.parquet", compression="zstd")
    return len(rows)
