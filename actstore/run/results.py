"""A results folder of `actstore score`: one part file per (SAE, task), the tables rebuilt from them, and
SAEBench's JSON. Below both the driver (runner.py) and the workers (batch.py), which read and write it.

    RESULTS/parts/<hash>.json                 one finished (or failed) SAE of first_letter, written atomically
    RESULTS/parts/<hash>.<task key>.json      the same for any other task (capitalized, labels-animals, ...)
    RESULTS/saes.parquet                      one row per (SAE, task): means and standard deviations, or why it
                                              failed; column `task` (absent in folders written before tasks:
                                              read them as first_letter)
    RESULTS/letters.parquet                   the per-class table: one row per (SAE, task, evaluated class),
                                              columns `task` and `class`, and `letter` (= class) on first_letter
                                              rows. Its name is kept from when first letter was the only task, so
                                              old folders and readers still work; read it with `read_classes`,
                                              which fills `task` and `class` in for an old folder's rows
    RESULTS/saebench/<release>_<id>_eval_results.json   SAEBench's absorption output, one per scored SAE, for
                                              tasks that SAEBench has (task.saebench_eval: first_letter only)
    RESULTS/parts/<hash>[.<task key>].tokens.parquet, RESULTS/tokens.parquet, RESULTS/absorbers.parquet
                                              per-token records and absorbers (tokens.py), with `task` and `class`
                                              columns, written before the part / with the tables

<hash> is a digest of the SAE's key: first_letter's part names are those of every actstore before tasks, and
another task's parts sit beside them under their own names, so scoring a second task never touches (or
invalidates) the first one's. A part records its task's name and, in its provenance, `task.identity()`.

`source` below is a runner.SAESource (key, release, name, layer, width, l0, fingerprint).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import time
import uuid
from pathlib import Path

from actstore.saes.loading import SAEWeights
from actstore.score.config import ScoreConfig
from actstore.score.nulls import legacy_columns
from actstore.run.tokens import combine_tokens, tokens_path, write_absorbers, write_tokens
from actstore.tasks.base import FIRST_LETTER, Task, task_key
from actstore.tasks.builtin import FIRST_LETTER_TASK

EVAL_TYPE_ID = FIRST_LETTER_TASK.saebench_eval  # SAEBench's eval_type_id of first_letter (absorption_first_letter)
CLASS_TABLE = "letters.parquet"
"""The per-class table's file name (kept from when first letter was the only task)."""
CAUSAL_CLASS_FIELDS = ("causal_absorption_rate", "num_causal_absorption", "causal_candidates", "causal_sampled",
                        "causal_sample_portion")
"""Extra per-class fields of the SAEBench JSON when --causal ran (the paper's metric; SAEBench has none)."""


def part_name(key: str, task: Task | str = FIRST_LETTER_TASK) -> str:
    """The part file of one SAE's score on one task (a Task or its name): `<hash>.json` for first_letter (as
    before tasks), `<hash>.<task key>.json` for any other."""
    digest = hashlib.sha1(key.encode()).hexdigest()[:20]
    name = task if isinstance(task, str) else task.name
    return f"{digest}.json" if name == FIRST_LETTER else f"{digest}.{task_key(name)}.json"


def part_task(part: dict) -> str:
    """The task a part record scored (first_letter for parts written before tasks)."""
    return part.get("task") or FIRST_LETTER


def part_classes(part: dict) -> list[dict]:
    """A part's per-class rows (`classes`; `letters` in parts written before tasks), each with its `class`."""
    rows = part.get("classes", part.get("letters")) or []
    return [{**row, "class": row.get("class", row.get("letter"))} for row in rows]


def class_row(task: str, row: dict) -> dict:
    """A per-class row as the tables hold it: `task`, `class`, and `letter` (= class) on first_letter rows."""
    out = {"task": task, **row, "class": row.get("class", row.get("letter"))}
    if task == FIRST_LETTER:
        out["letter"] = out["class"]
    else:
        out.pop("letter", None)
    return out


SUMMARY_ALIASES = {"classes_evaluated": "letters_evaluated",
                   "classes_main_latents_all_agree": "letters_main_latents_all_agree"}
"""summary columns -> the names results written before tasks gave them: kept beside them on first_letter's rows
(as `letter` beside `class`), and read from a part written before tasks"""


def sae_row(task: str, row: dict) -> dict:
    """An SAE's summary row as saes.parquet holds it: the class-named columns, and on first_letter's rows their
    letter-named aliases too; a chance level's columns under their name (`legacy_columns`)."""
    out = legacy_columns(dict(row))
    for name, alias in SUMMARY_ALIASES.items():
        if name not in out and alias in out:  # a part written before tasks
            out[name] = out[alias]
        if task == FIRST_LETTER and name in out:
            out[alias] = out[name]
        else:
            out.pop(alias, None)
    return out


def read_saes(out: Path) -> list[dict]:
    """saes.parquet's rows, each with its `task` (first_letter in a folder written before tasks) and a chance
    level's columns under their name (`legacy_columns`: a folder written before it was named)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(Path(out) / "saes.parquet").to_pylist()
    for row in rows:
        row["task"] = row.get("task") or FIRST_LETTER
        legacy_columns(row)
    return rows


def read_classes(out: Path) -> list[dict]:
    """The per-class table's rows (CLASS_TABLE), each with `task` and `class` (an old folder's rows have only
    `letter`: they are first_letter's); [] when the folder has none (nothing was scored)."""
    import pyarrow.parquet as pq

    path = Path(out) / CLASS_TABLE
    if not path.exists():
        return []
    return [class_row(row.get("task") or FIRST_LETTER, row) for row in pq.read_table(path).to_pylist()]


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


SAEBENCH_PROMPT_TOKEN_POS = -6
"""AbsorptionEvalConfig's default prompt_token_pos: the query word's index from the prompt's end when the
template's tail (" has the first letter:") is 5 tokens, as with Gemma's (and GPT-2's, Llama's, the synthetic
world's) tokenizer. Written when a store cannot tell (it names no tokenizer that loads here)."""
SAEBENCH_LLM_BATCH_SIZE = 10
"""AbsorptionEvalConfig's default llm_batch_size, written when a store does not record its extraction batch size"""
SAEBENCH_EVAL_PROBE_BATCH_SIZE = 24
"""AbsorptionEvalConfig's default eval_k_sparse_probe_batch_size: a detail of SAEBench's evaluation loop that does
not change its numbers (actstore evaluates the k-sparse probes in one pass)"""
SAE_LENS_ARCHITECTURE = {"relu": "standard"}
"""actstore's architecture names -> sae-lens's, where they differ"""


def sae_lens_architecture(sae: SAEWeights) -> str:
    """The architecture as sae-lens names the SAE's encoder (standard, topk, jumprelu)."""
    return SAE_LENS_ARCHITECTURE.get(sae.architecture, sae.architecture)


def trained_as(sae: SAEWeights) -> str:
    """The architecture the SAE was trained as, by sae-lens's name (batchtopk for a BatchTopK saved as JumpReLU),
    else its encoder's."""
    return getattr(sae, "source_architecture", None) or sae_lens_architecture(sae)


def prompt_token_pos(spec) -> tuple[int, str]:
    """The query word's position counted from the prompt's end (SAEBench's prompt_token_pos: -6 for Gemma), and
    where it came from: `store` (the store records it, extra.prompt_token_pos), `tokenizer` (the store's tokenizer,
    loaded from local files only, tokenizing the template's tail after the word as extraction does: the query's
    `position` column counts from the start, and prompts differ in length, so the column alone cannot tell), or
    `saebench default` (SAEBENCH_PROMPT_TOKEN_POS: no tokenizer named, or none loads here)."""
    extra = getattr(spec, "extra", {}) or {}
    if isinstance(extra.get("prompt_token_pos"), int):
        return extra["prompt_token_pos"], "store"
    prov = extra.get("provenance") or {}
    if prov.get("kind") in ("hub", "folder") and prov.get("location") and getattr(spec, "prompt_template", ""):
        pos = _tail_position(prov["location"], prov.get("revision"), spec.prompt_template,
                             (extra.get("bos") or {}).get("token_id"))
        if pos is not None:
            return pos, "tokenizer"
    return SAEBENCH_PROMPT_TOKEN_POS, "saebench default"


@functools.lru_cache(maxsize=8)
def _tail_position(location: str, revision: str | None, template: str, bos: int | None) -> int | None:
    """-(1 + the tokens of the template's text after the word), tokenized as extraction does (actstore.tasks.vocab);
    None when the tokenizer does not load from local files."""
    from actstore.tasks.vocab import tokenize

    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(location, revision=revision, local_files_only=True)
    except Exception:  # not cached, gone, gated: the default is written, and says so
        return None
    _, after = template.format(word="\x00").split("\x00", 1)
    prompt = "\n" + template.format(word="cat")
    full, head = tokenize(tokenizer, [prompt, prompt[:len(prompt) - len(after)]], bos)
    return len(head) - 1 - len(full)


def saebench_eval_config(cfg: ScoreConfig, spec) -> dict:
    """SAEBench's AbsorptionEvalConfig (sae_bench/evals/absorption/eval_config.py), its field names, our values, every
    field of the type SAEBench requires. saebench-0.6 writes v0.6.0's fields; saebench-0.3 writes v0.3.2's only
    (through k_sparse_probe_num_epochs): v0.3.2 has no min_GT_probe_f1 (it evaluates every letter, as that version
    does here), no min_feats_for_eval (actstore's own floor, --min-classes, is in eval_result_unstructured), and no
    eval_k_sparse_probe_batch_size or precalc_k_sparse_probe_sae_acts. prompt_token_pos: `prompt_token_pos(spec)`;
    llm_batch_size: the extraction's batch size (SAEBENCH_LLM_BATCH_SIZE when the store does not record it)."""
    extra = getattr(spec, "extra", {}) or {}
    batch = extra.get("batch_size")
    config = {"model_name": spec.model, "random_seed": cfg.sparse_probe.seed, "f1_jump_threshold": cfg.split_min_f1_gain,
              "max_k_value": cfg.max_k, "prompt_template": spec.prompt_template,
              "prompt_token_pos": prompt_token_pos(spec)[0],
              "llm_batch_size": batch if isinstance(batch, int) else SAEBENCH_LLM_BATCH_SIZE,
              "llm_dtype": spec.dtype, "k_sparse_probe_l1_decay": cfg.l1,
              "k_sparse_probe_batch_size": cfg.sparse_probe.batch_size,
              "k_sparse_probe_num_epochs": cfg.sparse_probe.epochs}
    if cfg.metric_version != "saebench-0.3":
        config.update(min_GT_probe_f1=cfg.min_probe_f1, min_feats_for_eval=cfg.min_classes,
                      eval_k_sparse_probe_batch_size=SAEBENCH_EVAL_PROBE_BATCH_SIZE,
                      precalc_k_sparse_probe_sae_acts=True)
    return config


def sae_lens_version() -> str | None:
    """The installed sae-lens's version (package metadata; sae_lens is not imported), None when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return None


def saebench_sae_cfg(sae: SAEWeights, spec) -> dict:
    """The SAE's config as sae-lens's SAEConfig.to_dict writes it (sae_lens/saes/sae.py: d_in, d_sae, dtype, device,
    apply_b_dec_to_input, normalize_activations, reshape_activations, metadata, architecture; TopK adds k and
    rescale_acts_by_decoder_norm), with the hook's layer and name also at the top level, where sae-lens < 6 wrote
    them. metadata: the installed sae-lens's version, no training version (actstore does not know it), the store's
    model, the hook, prepend_bos from the store's BOS policy (None when it does not record one), and for an SAE that
    runs as another architecture than it was trained as (BatchTopK, Matryoshka: jumprelu) its training_architecture,
    as sae-lens's save_inference_model records it."""
    hook_name = None if sae.layer is None else f"blocks.{sae.layer}.hook_{sae.hook}"
    bos = (getattr(spec, "extra", {}) or {}).get("bos")
    cfg = {"d_in": sae.d_model, "d_sae": sae.width, "dtype": str(sae.w_enc.dtype).removeprefix("torch."),
           "device": sae.w_enc.device.type, "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input),
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": sae_lens_version(), "sae_lens_training_version": None,
                        "model_name": spec.model, "hook_name": hook_name, "hook_head_index": None,
                        "prepend_bos": None if not isinstance(bos, dict) else bos.get("token_id") is not None}}
    if trained_as(sae) != sae_lens_architecture(sae):
        cfg["metadata"]["training_architecture"] = trained_as(sae)  # a BatchTopK saved for inference, as sae-lens writes it
    if sae.architecture == "topk":  # the weights as scored: any decoder-norm rescaling is folded in
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    cfg.update(architecture=sae_lens_architecture(sae), hook_layer=sae.layer,
               hook_name=hook_name)
    return cfg


def saebench_json(source, sae: SAEWeights, summary: dict, classes: list[dict], cfg: ScoreConfig,
                  spec, eval_type_id: str = EVAL_TYPE_ID) -> dict:
    """SAEBench's AbsorptionEvalOutput, field for field (sae_bench/evals/absorption/eval_output.py); valid under its
    pydantic model (tests/saebench_schema.py, tests/test_saebench_json.py)."""
    import actstore

    return {
        "eval_type_id": eval_type_id,
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
            "first_letter": r.get("class", r.get("letter")), "mean_absorption_fraction": r["mean_absorption_fraction"],
            "full_absorption_rate": r["full_absorption_rate"], "num_full_absorption": r["num_full_absorption"],
            "num_probe_true_positives": r["num_probe_true_positives"], "num_split_features": r["num_split_features"],
            **{k: r[k] for k in CAUSAL_CLASS_FIELDS if k in r},
        } for r in classes],
        "eval_result_unstructured": {"actstore": {"metric_version": summary.get("metric_version"),
                                                  "l1_solver": summary.get("l1_solver"),
                                                  "min_classes": cfg.min_classes,
                                                  "prompt_token_pos_source": prompt_token_pos(spec)[1],
                                                  "summary": summary}},
        "sae_bench_commit_hash": f"actstore {actstore.__version__}",
        "sae_lens_id": source.name,
        "sae_lens_release_id": source.release,
        "sae_lens_version": sae_lens_version(),
        "sae_cfg_dict": saebench_sae_cfg(sae, spec),
    }


def write_tables(out: Path) -> tuple[int, int]:
    """Rebuild saes.parquet and the per-class table (CLASS_TABLE) from the parts of every task; returns
    (scored, failed) over all of them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    read = [(path, read_part(path)) for path in sorted((out / "parts").glob("*.json"))]
    read = [(path, part) for path, part in read if part is not None]  # a torn part is scored again
    parts = [part for _, part in read]
    saes = [sae_row(part_task(p), {**{k: p[k] for k in ("sae_key", "release", "sae_id", "layer", "width", "seconds")},
                                   "architecture": p.get("architecture"), "task": part_task(p), **p["summary"]})
            for p in parts]
    classes = [class_row(part_task(p), {"sae_key": p["sae_key"], "release": p["release"], "sae_id": p["sae_id"],
                                         "layer": p["layer"], **row}) for p in parts for row in part_classes(p)]

    def table(rows: list[dict]):  # the union of the rows' keys (Table.from_pylist takes the first row's only)
        names = list(dict.fromkeys(k for row in rows for k in row))
        return pa.Table.from_pydict({k: [row.get(k) for row in rows] for k in names})

    for rows, name in ((saes, "saes.parquet"), (classes, CLASS_TABLE)):
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


def _record(source, task: Task, **fields) -> dict:
    return {"sae_key": source.key, "release": source.release, "sae_id": source.name, "layer": source.layer,
            "width": source.width, "l0_reported": source.l0, "fingerprint": source.fingerprint, "task": task.name,
            "classes": [], **fields}


def record_result(out: Path, source, sae: SAEWeights, result, cfg: ScoreConfig, spec,
                  task: Task = FIRST_LETTER_TASK) -> dict:
    """The part record of a scored SAE; writes its SAEBench JSON when SAEBench has the task."""
    classes = result.classes
    if task.saebench_eval:
        report = saebench_json(source, sae, result.summary, classes, cfg, spec, task.saebench_eval)
        write_atomic(out / "saebench" / saebench_name(source), json.dumps(report, indent=1))
    if result.tokens is not None:  # before the part: a finished part always has its tokens beside it
        write_tokens(tokens_path(out / "parts" / part_name(source.key, task)), result.tokens)
    return _record(source, task, layer=sae.layer, width=sae.width, l0_reported=source.l0 or sae.l0,
                   architecture=trained_as(sae),
                   classes=classes, summary=result.summary,
                   latent_top_tokens={str(k): v for k, v in (result.latent_top_tokens or {}).items()})


def record_failure(out: Path, source, err: Exception, task: Task = FIRST_LETTER_TASK) -> dict:
    return _record(source, task, summary={"status": "failed", "reason": str(err)})
