"""Extraction pipeline throughput next to a bare forward loop over the same model and prompts.

    python benchmarks/extract_bench.py [--model DIR] [--context-rows 65536] [--repeats 3] [--bare-only]

- bare:     a fresh Python process that builds the task (tokenizes), loads the model, runs every batch
            through ResidualReader, gathers the stored positions and copies them to host numpy arrays;
            no Ray, no store. Timed from outside, start to exit.
- pipeline: `actstore.extract.pipeline.extract` with Ray already running (as on a cluster): the driver tokenizes,
            a fresh worker process loads the model and runs the same batches, the StoreWriter writes
            a complete store. Timed start to end.
Both do the same batches (batch size, padding, layers) on the same prompts: the vocabulary task and
`--context-rows` context tokens. Reported: wall seconds, rows/s, tokens/s (every token the model reads,
padding included) and `ratios.pipeline_vs_bare` = pipeline seconds / bare seconds (target <= 1.15).
`--bare-only` runs the bare loop alone (no Ray: for a machine without it, such as the lent GPU).
Both pay for one fresh process (imports, first use of every tensor shape), so the ratio is what Ray,
the writer and the store add.
Without --model the synthetic world's model is written to a scratch folder (4 layers, d_model 64).
With --full-size (for a GPU): a randomly initialized Gemma2 of `Gemma2Config()`'s full size (26 layers,
d_model 2304, 256k vocabulary; `--full-size-layers` shrinks only the depth, for a smoke test) in bf16
with the synthetic tokenizer, on prompts of the real task's length; the JSON then also reports model
FLOP utilization: forward FLOPs (2 x parameters touched per token, embeddings excluded, plus attention)
per second over the bf16 GEMM peak measured in the same run.
Writes benchmarks/results/extract_bench.json (extract_bench_full_size.json with --full-size).
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
from store_bench import environment, write_result  # noqa: E402

from actstore.extract.actors import to_numpy  # noqa: E402
from actstore.extract.pipeline import ExtractConfig, build_task, extract, parse_layers  # noqa: E402
from actstore.extract.model import ResidualReader, load_config_and_tokenizer, load_model, pad  # noqa: E402

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
            to_numpy(x[rows, cols.to(x.device)])
        tokens += batch.input_ids.numel()
        first = first or time.perf_counter() - t0
    for start in range(0, len(task.windows), cfg.batch_size):
        batch, _ = pad(task.windows[start:start + cfg.batch_size], task.pad_id)
        for x in reader(batch).values():
            to_numpy(x.reshape(-1, x.shape[-1]))
        tokens += batch.input_ids.numel()
    rows = len(task.vocab_ids) + len(task.windows) * cfg.context_length
    return {"seconds": time.perf_counter() - t0, "startup_seconds": first, "rows": rows, "tokens": tokens}


def write_full_size_model(folder: Path, layers: int) -> Path:
    """A random Gemma2Config() model (bf16) with the synthetic world's word-level tokenizer."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from actstore.extract.synthetic import write_synthetic_model

    write_synthetic_model(folder / "tokenizer_source", n_layers=1)
    config = Gemma2Config(num_hidden_layers=layers, attn_implementation="eager", pad_token_id=0, eos_token_id=1,
                          bos_token_id=2)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Gemma2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder / "full_size")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (folder / "tokenizer_source" / name).exists():
            shutil.copy(folder / "tokenizer_source" / name, folder / "full_size" / name)
    return folder / "full_size"


def flops_per_token(model_dir: str, layers: list[int], tokens_per_row: float) -> float:
    """Forward FLOPs per token up to the deepest stored block: 2 x block parameters + attention scores."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    depth = max(layers) + 1
    attn = c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    scores = 2 * c.num_attention_heads * c.head_dim * tokens_per_row  # QK^T and AV, average context
    return depth * (2 * (attn + mlp) + 2 * scores)


def gemm_peak_tflops() -> float:
    """Measured bf16 matmul throughput (8192^3) on this GPU: the floor MFU is quoted against."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 20 * 2 * 8192 ** 3 / (time.perf_counter() - t0) / 1e12


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model id or directory (default: the synthetic model)")
    parser.add_argument("--layers", default="all")
    parser.add_argument("--context-rows", type=int, default=65536)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-vocab", type=int, default=None, help="vocabulary prompts (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/extract_bench[_full_size].json)")
    parser.add_argument("--full-size", action="store_true", help="a random full-size Gemma2 in bf16 (for a GPU)")
    parser.add_argument("--full-size-layers", type=int, default=26, help="depth of the --full-size model")
    parser.add_argument("--bare-only", action="store_true", help="the bare loop alone, without Ray or the store")
    parser.add_argument("--bare-config", default=None, help=argparse.SUPPRESS)  # the child of bare_in_fresh_process
    args = parser.parse_args()
    if args.bare_config:
        print(json.dumps(bare(ExtractConfig(**json.loads(args.bare_config)))))
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="extract_bench_", dir=HERE))
    try:
        from actstore.cli.demo import write_corpus
        from actstore.extract.synthetic import write_synthetic_model

        if args.full_size:
            model = str(write_full_size_model(scratch, args.full_size_layers))
        else:
            model = args.model or str(write_synthetic_model(scratch / "model", n_layers=4, seed=0))
        corpus = scratch / "corpus.jsonl"
        write_corpus(corpus, seed=0, docs=args.context_rows // 150 + 1, words_per_doc=300)
        cfg = ExtractConfig(model=model, out=str(scratch / "store.zarr"), layers=args.layers, contexts=str(corpus),
                            context_rows=args.context_rows, context_length=args.context_length,
                            batch_size=args.batch_size, shard_rows=args.context_length * 64, max_vocab=args.max_vocab)
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
        cfg.dtype = "bfloat16" if cfg.device == "cuda" or args.full_size else "float32"
        layers = parse_layers(args.layers, load_config_and_tokenizer(model)[0].num_hidden_layers)
        fpt = flops_per_token(model, layers, tokens_per_row=args.context_length / 2)
        runs = {"bare": []} if args.bare_only else {"bare": [], "pipeline": []}
        if not args.bare_only:
            import ray

            ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        for rep in range(args.repeats):
            b = bare_in_fresh_process(cfg)
            runs["bare"].append(b)
            line = (f"  repeat {rep + 1}/{args.repeats}: bare {b['seconds']:.2f}s (first batch at "
                    f"{b['startup_seconds']:.2f}s of {b['inner_seconds']:.2f}s after imports)")
            if not args.bare_only:
                p = pipeline(cfg, b["tokens"])
                runs["pipeline"].append(p)
                line += (f", pipeline {p['seconds']:.2f}s (startup {p['startup_seconds']:.2f}, worker busy "
                         f"{p['worker_busy_seconds']:.2f}, writer busy {p['writer_busy_seconds']:.2f})")
            print(line, file=sys.stderr)
        if not args.bare_only:
            ray.shutdown()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    summary = {}
    for name, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        summary[name] = {"seconds": seconds, "rows_per_s": results[0]["rows"] / seconds,
                         "tokens_per_s": results[0]["tokens"] / seconds, "runs": results}
    ratio = summary["pipeline"]["seconds"] / summary["bare"]["seconds"] if "pipeline" in summary else None
    for s in summary.values():
        s["model_tflops"] = s["tokens_per_s"] * fpt / 1e12
    peak = gemm_peak_tflops() if torch.cuda.is_available() else None
    if peak:
        for s in summary.values():
            s["mfu_vs_measured_gemm_peak"] = s["model_tflops"] / peak
    model_name = (f"random Gemma2Config() (bf16, {args.full_size_layers} layers)" if args.full_size
                  else args.model or "synthetic (4 layers, d 64)")
    result = {"benchmark": "extract_bench", **environment(), "model": model_name, "flops_per_token": fpt,
              "gemm_peak_tflops": peak,
              "layers": args.layers, "batch_size": args.batch_size, "context_rows": args.context_rows,
              "context_length": args.context_length, "rows": runs["bare"][0]["rows"],
              "tokens": runs["bare"][0]["tokens"], "repeats": args.repeats, "methods": summary,
              "ratios": {"pipeline_vs_bare": ratio},
              "targets": {"pipeline_vs_bare": 1.15}}
    print(f"\nextract_bench: {result['rows']} rows, {result['tokens']} tokens, medians of {args.repeats}, "
          f"{result['device']}")
    print(f"{'method':10s} {'seconds':>8s} {'rows/s':>9s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'MFU':>6s}")
    for name, s in summary.items():
        mfu = f"{s['mfu_vs_measured_gemm_peak']:.3f}" if peak else "-"
        print(f"{name:10s} {s['seconds']:8.2f} {s['rows_per_s']:9.0f} {s['tokens_per_s']:10.0f}"
              f" {s['model_tflops']:8.3f} {mfu:>6s}")
    if ratio is not None:
        print(f"pipeline / bare time: {ratio:.3f} (target <= 1.15)")
    write_result(args.out or HERE / "results" / f"extract_bench{'_full_size' if args.full_size else ''}.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
