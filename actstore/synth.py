"""The synthetic world's model: a tiny Gemma2 with planted first-letter directions, saved as a normal
Hugging Face model directory with an offline word-level tokenizer, so tests and the demo load it through
exactly the code path a real model takes (`AutoModelForCausalLM.from_pretrained(dir)`).

    actstore synth-model --out DIR [--layers 4] [--seed 0]

Vocabulary: generated pseudo-words (each with and without a leading space, like SentencePiece's
"▁word" and "word"), the prompt's own words, the 26 capital letters, and a few tokens the vocabulary
task must reject (digits, an apostrophe, non-ASCII letters, byte tokens, special tokens). The embedding
of every alphabetic token is `strength * d_c + noise`, with d_c a random unit direction per first letter,
so a linear probe on the residual stream finds the letter. `planted.json` in the directory records the
directions.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import torch

from actstore.vocab import first_letter_label, token_text

PROMPT_WORDS = ["\u2581has", "\u2581the", "\u2581first", "\u2581letter", ":", "\n"]
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
REJECTED = ["\u2581123", "\u2581don't", "\u2581caf\u00e9", "<0x41>", "<0x62>", "\u2581", "\u2581x1", "-"]


def pseudo_words(n_per_letter: int, seed: int) -> list[str]:
    """Distinct lowercase pseudo-words, `n_per_letter` starting with each letter, none a prompt word."""
    rng = np.random.default_rng(seed)
    taken = {w.strip("\u2581") for w in PROMPT_WORDS}
    words: set[str] = set()
    for letter in string.ascii_lowercase:
        made = 0
        while made < n_per_letter:
            rest = "".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(2, 7))))
            if letter + rest not in words and letter + rest not in taken:
                words.add(letter + rest)
                made += 1
    return sorted(words)


def build_tokenizer(vocab: list[str]):
    """A word-level fast tokenizer: newlines and colons split off, spaces become "▁" (SentencePiece style),
    a <bos> prepended like Gemma's."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(ids, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n|:"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never"),
    ])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="never")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", ids["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def write_synthetic_model(out: str | Path, n_layers: int = 4, seed: int = 0, n_per_letter: int = 40,
                          d_model: int = 64, strength: float = 1.0, noise: float = 0.6) -> Path:
    """Write the synthetic model directory; returns its path."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    out = Path(out)
    words = pseudo_words(n_per_letter, seed)
    vocab = SPECIALS + PROMPT_WORDS + REJECTED + [f"\u2581{c}" for c in string.ascii_uppercase]
    vocab += [f"\u2581{w}" for w in words] + words
    config = Gemma2Config(
        vocab_size=len(vocab), hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=d_model // 4, max_position_embeddings=512,
        sliding_window=256, pad_token_id=0, eos_token_id=1, bos_token_id=2, attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    directions = torch.nn.functional.normalize(torch.randn(26, d_model, generator=gen), dim=-1)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight  # (vocab, d_model); Gemma2 scales it by sqrt(d_model)
        for i, raw in enumerate(vocab):
            label = first_letter_label(token_text(raw)) if raw not in SPECIALS else None
            base = torch.nn.functional.normalize(torch.randn(d_model, generator=gen), dim=0) * noise
            emb[i] = base + (strength * directions[label] if label is not None else 0)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    build_tokenizer(vocab).save_pretrained(out)
    (out / "planted.json").write_text(json.dumps({
        "seed": seed, "layers": n_layers, "d_model": d_model, "strength": strength, "noise": noise,
        "letter_directions": directions.tolist(),
    }))
    return out
