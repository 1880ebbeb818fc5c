"""Causal absorption cost: the shared per-layer precompute against the whole model per SAE.

    python benchmarks/causal_bench.py [--layers 1,4,6] [--saes 4] [--prompts 32] [--blocks 8] [--d-model 128]
                                      [--repeat 2]

Writes a spelling synthetic model (synth-model --spelling, `--blocks` blocks of width `--d-model`) in a
scratch folder, takes `--prompts` vocabulary prompts, and for each hooked layer scores `--saes` random JumpReLU
SAEs (width 4 x d_model, about 20 active latents per token) with actstore.score.causal's CausalRunner twice:
- shared: blocks 0..L run once per layer (ResidualCache), each SAE runs the later blocks with its splice;
- whole: every SAE runs the whole model for every interpolation step (the paper's way), no cache.
Both give the same scores (checked). The modes alternate, `--repeat` times, and each keeps its fastest run.
Reported per layer: wall seconds per SAE for each, their ratio, and
model FLOPs counted from the weights (2 x parameters per token per block forward, the same for the backward
with respect to the inputs only; attention scores and the embedding left out). Writes
benchmarks/results/causal_bench.json. `--model` runs a real model instead (SmolLM2's .gguf, for example: its letters' tokens come from its own
tokenizer). Gemma-shaped runs need a GPU (none was lent when this was written).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from store_bench import environment, write_result  # noqa: E402


def random_sae(d: int, width: int, x: torch.Tensor, seed: int):
    """A JumpReLU SAE whose thresholds let about 20 latents fire on the rows x."""
    from actstore.saes.loading import SAEWeights

    gen = torch.Generator().manual_seed(seed)
    w_enc = torch.nn.functional.normalize(torch.randn(d, width, generator=gen), dim=0)
    pre = x @ w_enc
    threshold = pre.quantile(1 - 20 / width, dim=0).clamp(min=1e-3)
    return SAEWeights(id=f"random{seed}", w_enc=w_enc, b_enc=torch.zeros(width),
                      w_dec=torch.nn.functional.normalize(torch.randn(width, d, generator=gen), dim=1),
                      b_dec=torch.randn(d, generator=gen) * 0.1, threshold=threshold)


def block_flops(model, layer: int) -> float:
    """2 x parameters of one block (per token, forward)."""
    from actstore.extract.model import decoder_layers

    return 2.0 * sum(p.numel() for p in decoder_layers(model)[layer].parameters())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default="1,4,6")
    parser.add_argument("--saes", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", default=None, help="a real model (folder or .gguf) instead of the synthetic one")
    parser.add_argument("--out", default=str(HERE / "results" / "causal_bench.json"))
    args = parser.parse_args()

    from actstore.score.causal import CausalConfig, CausalRunner
    from actstore.extract.model import load_model
    from actstore.tasks.builtin import FIRST_LETTER_TASK
    from actstore.extract.synthetic import write_synthetic_model
    from actstore.tasks.vocab import build_vocab_task
    from transformers import AutoTokenizer

    if args.model:
        from actstore.extract.model import decoder_layers, load_config_and_tokenizer, resolve_model

        source = resolve_model(args.model)
        model, tokenizer = load_model(source), load_config_and_tokenizer(source)[1]
        args.blocks, args.d_model = len(decoder_layers(model)), model.config.hidden_size
        task = build_vocab_task(tokenizer, seed=42, max_tokens=4 * args.prompts)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="causal_bench_"))
        folder = write_synthetic_model(scratch / "model", n_layers=args.blocks, d_model=args.d_model, spelling=True)
        model, tokenizer = load_model(str(folder)), AutoTokenizer.from_pretrained(str(folder))
        task = build_vocab_task(tokenizer, seed=42)
    rows = list(range(args.prompts))
    letters = [int(task.label[r]) for r in rows]
    tokens = sum(len(task.input_ids[r]) for r in rows)
    cfg = CausalConfig()
    result = {"environment": environment(), "model": {"name": args.model or "synthetic spelling",
                                                      "blocks": args.blocks, "d_model": args.d_model},
              "load_average_before": os.getloadavg()[0], "command": " ".join(sys.argv),
              "saes": args.saes, "prompts": args.prompts, "tokens": tokens, "steps": cfg.steps, "layers": {}}
    print(f"{args.model or 'spelling model'}: {args.blocks} blocks, d_model {args.d_model}; {args.prompts} prompts ({tokens} tokens), "
          f"{args.saes} SAEs per layer, {cfg.steps} steps")
    print("layer | shared s/SAE | whole s/SAE | wall ratio | FLOPs shared/SAE | FLOPs whole/SAE | FLOP ratio")
    for layer in [int(l) for l in args.layers.split(",")]:
        n, per_block = args.blocks, block_flops(model, 0)
        outcome, seconds = {}, {}
        first = CausalRunner(model, tokenizer, task.input_ids, task.position, FIRST_LETTER_TASK, cfg)
        x = torch.cat([r[int(task.position[i])][None] for i, r in zip(rows, first.residuals(layer, rows))])
        saes = [random_sae(args.d_model, 4 * args.d_model, x, seed) for seed in range(args.saes)]
        dec_cos = torch.zeros(4 * args.d_model, FIRST_LETTER_TASK.n_classes)
        for repeat in range(args.repeat):  # modes alternate; each keeps its fastest repeat (a shared machine)
            for mode, share in (("whole", False), ("shared", True)):  # each runner starts with no cache
                runner = CausalRunner(model, tokenizer, task.input_ids, task.position, FIRST_LETTER_TASK, cfg,
                                      share_prefix=share)
                t = time.perf_counter()
                outcome[mode] = [runner.score_tokens(sae, layer, rows, letters, [[] for _ in rows], dec_cos)
                                 for sae in saes]
                spent = (time.perf_counter() - t) / args.saes
                seconds[mode] = min(spent, seconds.get(mode, spent))
        same = all(abs(a.top_score - b.top_score) <= 1e-4 * max(1.0, abs(b.top_score))
                   for sa, sb in zip(outcome["shared"], outcome["whole"]) for a, b in zip(sa, sb))
        early, late = layer + 1, n - layer - 1
        flops_whole = per_block * tokens * (early + cfg.steps * (n + late))
        flops_shared = per_block * tokens * (cfg.steps * 2 * late + early / args.saes)
        result["layers"][str(layer)] = {
            "shared_s_per_sae": seconds["shared"], "whole_s_per_sae": seconds["whole"],
            "wall_ratio": seconds["whole"] / seconds["shared"], "flops_shared_per_sae": flops_shared,
            "flops_whole_per_sae": flops_whole, "flop_ratio": flops_whole / flops_shared, "same_scores": same}
        r = result["layers"][str(layer)]
        print(f"{layer} | {r['shared_s_per_sae']:.2f} | {r['whole_s_per_sae']:.2f} | {r['wall_ratio']:.2f} | "
              f"{flops_shared:.3g} | {flops_whole:.3g} | {r['flop_ratio']:.2f}" + ("" if same else "  SCORES DIFFER"))
    result["load_average_after"] = os.getloadavg()[0]
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
