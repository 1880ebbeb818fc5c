"""Extraction pipeline throughput next to a bare forward loop over the same model and prompts.

    python benchmarks/extract_bench.py [--model DIR] [--context-rows 65536] [--repeats 3]

- bare:     a fresh Python process that builds the task (tokenizes), loads the model, runs every batch
            through ResidualReader, gathers the stored positions and copies them to host numpy arrays;
            no Ray, no store. Timed from outside, start to exit.
- pipeline: `actstore.extract.extract` with Ray already running (as on a cluster): the driver tokenizes,
            a fresh worker process loads the model and runs the same batches, the StoreWriter writes
            a complete store. Timed start to end.
Both do the same batches (batch size, padding, layers) on the same prompts: the vocabulary task and
`--context-rows` context tokens. Reported: wall seconds, rows/s, tokens/s (every token the model reads,
padding included) and `ratios.pipeline_vs_bare` = pipeline seconds / bare seconds (target <= 1.15).
Both pay for one fresh process (imports, first use of every tensor shape), so the ratio is what Ray,
the writer and the store add.
Without --model the synthetic world's model is written to a scratch folder (4 layers, d_model 64).
Writes benchmarks/results/extract_bench.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_bench import environment  # noqa: E402

from actstore.extract import ExtractConfig, build_task, extract, parse_layers  # noqa: E402
from actstore.model import ResidualReader, load_config_and_tokenizer, load_model, pad  # noqa: E402

HERE = Path(__file__).resolve().parent


def bare(cfg: ExtractConfig) -> dict:
    """The same work as the pipeline's workers, in one loop: the floor the pipeline is measured against."""
    t0 = time.perf_counter()
    config, tokenizer = load_config_and_tokenizer(cfg.model)
    task, _ = build_task(cfg, tokenizer)
    model = load_model(cfg.model, device=cfg.device, dtype=getattr(torch, cfg.dtype))
    reader = ResidualReader(model, parse_layers(cfg.layers, config.num_hidden_layers))
    tokens, first = 0, None
    for start in range(0, len(task.vocab_ids), cfg.batch_size):
        batch, offsets = pad(task.vocab_ids[start:start + cfg.batch_size], task.pad_id)
        cols = offsets + torch.as_tensor(task.vocab_positions[start:start + cfg.batch_size])
        rows = torch.arange(len(cols))
        for x in reader(batch).values():
            x[rows, cols.to(x.device)].cpu().numpy()
        tokens += batch.input_ids.numel()
        first = first or time.perf_counter() - t0
    for start in range(0, len(task.windows), cfg.batch_size):
        batch, _ = pad(task.windows[start:start + cfg.batch_size], task.pad_id)
        for x in reader(batch).values():
            x.reshape(-1, x.shape[-1]).cpu().numpy()
        tokens += batch.input_ids.numel()
    rows = len(task.vocab_ids) + len(task.windows) * cfg.context_length
    return {"seconds": time.perf_counter() - t0, "startup_seconds": first, "rows": rows, "tokens": tokens}


def bare_in_fresh_process(cfg: ExtractConfig) -> dict:
    """`bare` in a new interpreter, timed from outside: like the pipeline's worker, it pays for importing
    torch and transformers and for the first use of every tensor shape in a fresh process."""
    t0 = time.perf_counter()
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "worker_env"}
    done = subprocess.run([sys.executable, __file__, "--bare-config", json.dumps(fields)], capture_output=True,
                          text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "seconds": time.perf_counter() - t0, "inner_seconds": result["seconds"]}


def pipeline(cfg: ExtractConfig, tokens: int) -> dict:
    shutil.rmtree(cfg.out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = extract(cfg, progress=False)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "startup_seconds": summary["startup_seconds"], "rows": summary["rows_computed"],
            "tokens": tokens, "worker_busy_seconds": summary["worker_busy_seconds"],
            "writer_busy_seconds": summary["writer_busy_seconds"]}


def main() -> int:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model id or directory (default: the synthetic model)")
    parser.add_argument("--layers", default="all")
    parser.add_argument("--context-rows", type=int, default=65536)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "extract_bench.json"))
    parser.add_argument("--bare-config", default=None, help=argparse.SUPPRESS)  # the child of bare_in_fresh_process
    args = parser.parse_args()
    if args.bare_config:
        print(json.dumps(bare(ExtractConfig(**json.loads(args.bare_config)))))
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="extract_bench_", dir=HERE))
    try:
        from actstore.demo import write_corpus
        from actstore.synth import write_synthetic_model

        model = args.model or str(write_synthetic_model(scratch / "model", n_layers=4, seed=0))
        corpus = scratch / "corpus.jsonl"
        write_corpus(corpus, seed=0, docs=args.context_rows // 150 + 1, words_per_doc=300)
        cfg = ExtractConfig(model=model, out=str(scratch / "store.zarr"), layers=args.layers, contexts=str(corpus),
                            context_rows=args.context_rows, context_length=args.context_length,
                            batch_size=args.batch_size, shard_rows=args.context_length * 64)
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
        cfg.dtype = "bfloat16" if cfg.device == "cuda" else "float32"
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        runs = {"bare": [], "pipeline": []}
        for rep in range(args.repeats):
            b = bare_in_fresh_process(cfg)
            p = pipeline(cfg, b["tokens"])
            runs["bare"].append(b)
            runs["pipeline"].append(p)
            print(f"  repeat {rep + 1}/{args.repeats}: bare {b['seconds']:.2f}s (first batch at "
                  f"{b['startup_seconds']:.2f}s of {b['inner_seconds']:.2f}s after imports), "
                  f"pipeline {p['seconds']:.2f}s (startup {p['startup_seconds']:.2f}, worker busy "
                  f"{p['worker_busy_seconds']:.2f}, writer busy {p['writer_busy_seconds']:.2f})", file=sys.stderr)
        ray.shutdown()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    summary = {}
    for name, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        summary[name] = {"seconds": seconds, "rows_per_s": results[0]["rows"] / seconds,
                         "tokens_per_s": results[0]["tokens"] / seconds, "runs": results}
    ratio = summary["pipeline"]["seconds"] / summary["bare"]["seconds"]
    result = {"benchmark": "extract_bench", **environment(), "model": args.model or "synthetic (4 layers, d 64)",
              "layers": args.layers, "batch_size": args.batch_size, "context_rows": args.context_rows,
              "context_length": args.context_length, "rows": runs["bare"][0]["rows"],
              "tokens": runs["bare"][0]["tokens"], "repeats": args.repeats, "methods": summary,
              "ratios": {"pipeline_vs_bare": ratio},
              "targets": {"pipeline_vs_bare": 1.15}}
    print(f"\nextract_bench: {result['rows']} rows, {result['tokens']} tokens, medians of {args.repeats}, "
          f"{result['device']}")
    print(f"{'method':10s} {'seconds':>8s} {'rows/s':>9s} {'tokens/s':>10s}")
    for name, s in summary.items():
        print(f"{name:10s} {s['seconds']:8.2f} {s['rows_per_s']:9.0f} {s['tokens_per_s']:10.0f}")
    print(f"pipeline / bare time: {ratio:.3f} (target <= 1.15)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
