"""A results folder of `actstore score`: one part file per SAE, the tables rebuilt from them, and SAEBench's
JSON. Below both the driver (runner.py) and the workers (batch.py), which read and write it.

    RESULTS/parts/<key>.json                  one finished (or failed) SAE, written atomically when it ends
    RESULTS/saes.parquet                      one row per SAE: means and standard deviations, or why it failed
    RESULTS/letters.parquet                   one row per (SAE, evaluated letter)
    RESULTS/saebench/<release>_<id>_eval_results.json   SAEBench's absorption output, one per scored SAE
    RESULTS/parts/<key>.tokens.parquet, RESULTS/tokens.parquet, RESULTS/absorbers.parquet   per-token records
                                              and absorbers (tokens.py), written before the part / with the tables

`source` below is a runner.SAESource (key, release, name, layer, width, l0, fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from pathlib import Path

from actstore.saes.loading import SAEWeights
from actstore.score.scorer import ScoreConfig
from actstore.run.tokens import combine_tokens, tokens_path, write_absorbers, write_tokens

EVAL_TYPE_ID = "absorption_first_letter"  # SAEBench's eval_type_id for this eval
CAUSAL_LETTER_FIELDS = ("causal_absorption_rate", "num_causal_absorption", "causal_candidates", "causal_sampled",
                        "causal_sample_portion")
"""Extra per-letter fields of the SAEBench JSON when --causal ran (the paper's metric; SAEBench has none)."""


def part_name(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:20] + ".json"


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary name unique to this writer (host, pid, random), then rename: concurrent
    writers never share a temporary file, and a reader sees the old file or the new one, whole."""
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # disk full, Ctrl-C: leave no partial file behind
        tmp.unlink(missing_ok=True)
        raise


def read_part(path: Path) -> dict | None:
    """A part record, or None when the file is torn, damaged or gone (the SAE then counts as not done)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("summary"), dict) else None


def saebench_name(source) -> str:
    """SAEBench's file name, `<release>_<id>_eval_results.json`, with a hash of the SAE's key when the key
    is not release/id (a local file: two folders may share release and id names)."""
    name = f"{source.release}_{source.name}"
    if source.key != f"{source.release}/{source.name}":
        name += "_" + hashlib.sha1(source.key.encode()).hexdigest()[:8]
    return f"{name}_eval_results.json".replace("/", "_").lstrip("_")


def saebench_eval_config(cfg: ScoreConfig, spec) -> dict:
    """SAEBench's AbsorptionEvalConfig (sae_bench/evals/absorption/eval_config.py), its field names, our values.
    None where actstore has no such value (the query's position from the prompt's end, when the store does not
    record it; SAEBench's eval batch size, a detail of its own loop)."""
    extra = getattr(spec, "extra", {}) or {}
    return {"model_name": spec.model, "random_seed": cfg.sparse_probe.seed, "f1_jump_threshold": cfg.split_min_f1_gain,
            "max_k_value": cfg.max_k, "prompt_template": spec.prompt_template,
            "prompt_token_pos": extra.get("prompt_token_pos"), "llm_batch_size": extra.get("batch_size"),
            "llm_dtype": spec.dtype, "k_sparse_probe_l1_decay": cfg.l1,
            "k_sparse_probe_batch_size": cfg.sparse_probe.batch_size,
            "k_sparse_probe_num_epochs": cfg.sparse_probe.epochs, "min_GT_probe_f1": cfg.min_probe_f1,
            "min_feats_for_eval": cfg.min_letters, "eval_k_sparse_probe_batch_size": None,
            "precalc_k_sparse_probe_sae_acts": True}


def saebench_json(source, sae: SAEWeights, summary: dict, letters: list[dict], cfg: ScoreConfig,
                  spec) -> dict:
    """SAEBench's AbsorptionEvalOutput, field for field (sae_bench/evals/absorption/eval_output.py)."""
    import actstore

    return {
        "eval_type_id": EVAL_TYPE_ID,
        "eval_config": saebench_eval_config(cfg, spec),
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": {"mean": {
            "mean_absorption_fraction_score": summary["mean_absorption_fraction"],
            "mean_full_absorption_score": summary["mean_full_absorption"],
            "mean_num_split_features": summary["mean_num_split_features"],
            "std_dev_absorption_fraction_score": summary["std_absorption_fraction"],
            "std_dev_full_absorption_score": summary["std_full_absorption"],
            "std_dev_num_split_features": summary["std_num_split_features"],
            **({"mean_causal_absorption_score": summary["mean_causal_absorption"],
                "std_dev_causal_absorption_score": summary["std_causal_absorption"]}
               if "mean_causal_absorption" in summary else {}),
        }},
        "eval_result_details": [{
            "first_letter": r["letter"], "mean_absorption_fraction": r["mean_absorption_fraction"],
            "full_absorption_rate": r["full_absorption_rate"], "num_full_absorption": r["num_full_absorption"],
            "num_probe_true_positives": r["num_probe_true_positives"], "num_split_features": r["num_split_features"],
            **{k: r[k] for k in CAUSAL_LETTER_FIELDS if k in r},
        } for r in letters],
        "eval_result_unstructured": {"actstore": {"metric_version": summary.get("metric_version"),
                                                  "l1_solver": summary.get("l1_solver"), "summary": summary}},
        "sae_bench_commit_hash": f"actstore {actstore.__version__}",
        "sae_lens_id": source.name,
        "sae_lens_release_id": source.release,
        "sae_lens_version": None,
        "sae_cfg_dict": {"architecture": sae.architecture, "d_in": sae.d_model, "d_sae": sae.width,
                         "hook_layer": sae.layer, "hook_name": f"blocks.{sae.layer}.hook_{sae.hook}", "k": sae.k,
                         "apply_b_dec_to_input": sae.apply_b_dec_to_input},
    }


def write_tables(out: Path) -> tuple[int, int]:
    """Rebuild saes.parquet and letters.parquet from the parts; returns (scored, failed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    read = [(path, read_part(path)) for path in sorted((out / "parts").glob("*.json"))]
    read = [(path, part) for path, part in read if part is not None]  # a torn part is scored again
    parts = [part for _, part in read]
    saes = [{**{k: p[k] for k in ("sae_key", "release", "sae_id", "layer", "width", "seconds")}, **p["summary"]}
            for p in parts]
    letters = [{"sae_key": p["sae_key"], "release": p["release"], "sae_id": p["sae_id"], "layer": p["layer"], **row}
               for p in parts for row in p["letters"]]
    def table(rows: list[dict]):  # the union of the rows' keys (Table.from_pylist takes the first row's only)
        names = list(dict.fromkeys(k for row in rows for k in row))
        return pa.Table.from_pydict({k: [row.get(k) for row in rows] for k in names})

    for rows, name in ((saes, "saes.parquet"), (letters, "letters.parquet")):
        if rows or name == "saes.parquet":  # through a temporary name: a full disk leaves the old table
            tmp = out / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
            try:
                pq.write_table(table(rows), tmp)
                os.replace(tmp, out / name)
            finally:
                tmp.unlink(missing_ok=True)
    combine_tokens(out, read)
    write_absorbers(out, read)
    ok = sum(p["summary"]["status"] in ("ok", "flagged") for p in parts)
    return ok, len(parts) - ok


def part_done(out: Path, source, provenance=None) -> bool:
    """Whether RESULTS already holds a successful score of this SAE (same file, when it is a file; the same
    store, probe and options, when `provenance` is given): see provenance.redo_reason."""
    from actstore.run.provenance import redo_reason

    return redo_reason(out, source, provenance) is None


def _record(source, **fields) -> dict:
    return {"sae_key": source.key, "release": source.release, "sae_id": source.name, "layer": source.layer,
            "width": source.width, "l0_reported": source.l0, "fingerprint": source.fingerprint, "letters": [],
            **fields}


def record_result(out: Path, source, sae: SAEWeights, result, cfg: ScoreConfig, spec) -> dict:
    """The part record of a scored SAE; writes its SAEBench JSON."""
    report = saebench_json(source, sae, result.summary, result.letters, cfg, spec)
    write_atomic(out / "saebench" / saebench_name(source), json.dumps(report, indent=1))
    if result.tokens is not None:  # before the part: a finished part always has its tokens beside it
        write_tokens(tokens_path(out / "parts" / part_name(source.key)), result.tokens)
    return _record(source, layer=sae.layer, width=sae.width, l0_reported=source.l0 or sae.l0,
                   letters=result.letters, summary=result.summary,
                   latent_top_tokens={str(k): v for k, v in (result.latent_top_tokens or {}).items()})


def record_failure(out: Path, source, err: Exception) -> dict:
    return _record(source, summary={"status": "failed", "reason": str(err)})
