"""The synthetic world's model: a tiny Gemma2 with planted first-letter directions, saved as a normal
Hugging Face model directory with an offline word-level tokenizer, so tests and the demo load it through
exactly the code path a real model takes (`AutoModelForCausalLM.from_pretrained(dir)`).

    actstore synth-model --out DIR [--layers 4] [--seed 0] [--spelling]

Vocabulary: generated pseudo-words (each with and without a leading space, like SentencePiece's
"▁word" and "word"), the prompt's own words, the 26 capital letters, and a few tokens the vocabulary
task must reject (digits, an apostrophe, non-ASCII letters, byte tokens, special tokens). The embedding
of every alphabetic token is `strength * d_c + noise`, with d_c a random unit direction per first letter,
so a linear probe on the residual stream finds the letter. `planted.json` in the directory records the
directions.

`--spelling` makes the model spell: its last block has one attention head that moves the query word's
letter subspace to the prompt's final position, and the unembedding reads it out as the capital-letter
tokens "▁A".."▁Z" (`plant_spelling`). The embeddings keep their letter directions and gain one constant
direction z (orthogonal to every letter direction) that the head's keys and queries read. What the head reads
at the word position is exactly the letter subspace span(d_c) (after the block's input RMSNorm): a direction
orthogonal to it and to z changes nothing downstream, which is how a causal decoy is built. The other random
blocks are kept but their outputs are scaled down (post-norm gain `mix`), so the letter survives to the last
block. The default model (no `--spelling`) is unchanged.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import torch

from actstore.errors import InputError
from actstore.tasks.vocab import first_letter_label, token_text

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


SPELL_OFFSET = 5
"""The query word sits this many tokens before the prompt's final ":" (word, ▁has, ▁the, ▁first, ▁letter, :)."""


def write_synthetic_model(out: str | Path, n_layers: int = 4, seed: int = 0, n_per_letter: int = 40,
                          d_model: int = 64, strength: float = 1.0, noise: float = 0.6, spelling: bool = False,
                          mix: float = 0.25, constant: float = 3.0) -> Path:
    """Write the synthetic model directory; returns its path. `spelling`: plant the spelling circuit
    (`plant_spelling`; `mix` scales the other blocks' outputs, `constant` is the z component of every
    embedding)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    out = Path(out)
    words = pseudo_words(n_per_letter, seed)
    vocab = SPECIALS + PROMPT_WORDS + REJECTED + [f"\u2581{c}" for c in string.ascii_uppercase]
    vocab += [f"\u2581{w}" for w in words] + words
    spell = {"head_dim": 32, "tie_word_embeddings": False, "attn_logit_softcapping": None} if spelling else {}
    config = Gemma2Config(**{
        "vocab_size": len(vocab), "hidden_size": d_model, "intermediate_size": 2 * d_model,
        "num_hidden_layers": n_layers, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": d_model // 4,
        "max_position_embeddings": 512, "sliding_window": 256, "pad_token_id": 0, "eos_token_id": 1,
        "bos_token_id": 2, "attn_implementation": "eager", **spell})
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
    planted = {"seed": seed, "layers": n_layers, "d_model": d_model, "strength": strength, "noise": noise,
               "letter_directions": directions.tolist()}
    if spelling:
        planted["spelling"] = plant_spelling(model, vocab, directions, mix, constant, gen)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    build_tokenizer(vocab).save_pretrained(out)
    (out / "planted.json").write_text(json.dumps(planted))
    return out


def rope_offset_phases(inv_freq: torch.Tensor, offset: int, pairs: int = 4, span: int = 512) -> tuple[torch.Tensor, float]:
    """Query phases for RoPE pairs so that q . k peaks at relative offset `offset`: pair i (of the first
    `pairs`, the fastest rotating) gets phase -offset * theta_i, so its term is cos((delta - offset) theta_i).
    Returns the (pairs,) phases and the relative margin of the peak over every other delta in 0..span
    (1 - second best / best), which the construction needs to dominate the keys' spread."""
    theta = inv_freq[:pairs].double()
    delta = torch.arange(span, dtype=torch.float64)
    curve = torch.cos((delta[:, None] - offset) * theta).sum(dim=1)  # (span,)
    others = torch.cat([curve[:offset], curve[offset + 1:]])
    return -offset * theta, float(1 - others.max() / curve[offset])


def plant_spelling(model, vocab: list[str], directions: torch.Tensor, mix: float, constant: float,
                   gen: torch.Generator, gain: float = 20.0, sharpness: float = 60.0, readout: float = 2.0) -> dict:
    """Make `model` (weights in place) spell the first letter at the prompt's final position.

    - every embedding gains `constant * z`, z a unit direction orthogonal to the letter directions D (26, d);
    - every block's attention and MLP outputs are scaled to RMS `mix` (Gemma2's post-norms, gain 1 + w);
    - last block, head 0 (kv head 0): keys k_i = z . x^ on the first 4 RoPE pairs, queries the same with
      phases -5 theta_i (`rope_offset_phases`), scaled so q . k at the word's offset beats every other offset
      by `sharpness` logits (no attention softcapping); values: an orthonormal basis B of span(D) (26 of 32
      dims), o_proj: B^T, so the head writes P_D x^ of the word; the other heads' o_proj are zero; the
      block's attention post-norm gain is `gain`, so that write dominates the final position;
    - lm_head (untied): "▁A".."▁Z" read the dual basis of D ((D D^T)^-1 D, so token c reads d_c's coefficient),
      times `readout`; every other token reads nothing (logit 0).
    Returns what planted.json records: z, the spelling block and the head."""
    d = directions.shape[1]
    n = directions.shape[0]
    basis = torch.linalg.qr(directions.T.double())[0].T.float()  # (n, d) orthonormal rows spanning D
    z = torch.randn(d, generator=gen)
    z = torch.nn.functional.normalize(z - basis.T @ (basis @ z), dim=0)
    blocks = model.model.layers
    last = blocks[-1]
    attn = last.self_attn
    hd = attn.head_dim
    if hd < n:
        raise InputError(f"the spelling head needs head_dim >= {n} letter dimensions; got {hd}")
    phases, margin = rope_offset_phases(model.model.rotary_emb.inv_freq, SPELL_OFFSET)
    with torch.no_grad():
        model.get_input_embeddings().weight += constant * z
        for block in blocks:
            block.post_attention_layernorm.weight.fill_(mix - 1)  # Gemma2 RMSNorm scales by (1 + weight)
            block.post_feedforward_layernorm.weight.fill_(mix - 1)
        last.post_attention_layernorm.weight.fill_(gain - 1)
        # x^ = RMSNorm(x) has norm sqrt(d); its z component is about sqrt(d) when z dominates the embedding
        # (constant 3 against letter 1 and noise 0.6). q . k summed over the pairs is then
        # amp^2 * d * scaling * sum_i cos((delta - 5) theta_i); choose amp for `sharpness` at the peak's margin
        pairs = len(phases)
        scaling = attn.scaling
        amp = (sharpness / (d * scaling * margin * pairs)) ** 0.5
        attn.q_proj.weight.zero_()
        attn.k_proj.weight.zero_()
        attn.v_proj.weight.zero_()
        attn.o_proj.weight.zero_()
        half = hd // 2
        for i, phase in enumerate(phases.tolist()):
            attn.k_proj.weight[i] = amp * z
            attn.q_proj.weight[i] = amp * torch.cos(torch.tensor(phase)) * z
            attn.q_proj.weight[half + i] = amp * torch.sin(torch.tensor(phase)) * z
        attn.v_proj.weight[:n] = basis
        attn.o_proj.weight[:, :n] = basis.T
        gram_inv = torch.linalg.inv(directions.double() @ directions.double().T)
        dual = (gram_inv @ directions.double()).float()  # (n, d): dual[c] . d_a = 1 if a == c else 0
        model.lm_head.weight.zero_()
        for c in range(n):
            model.lm_head.weight[vocab.index(f"\u2581{chr(ord('A') + c)}")] = readout * dual[c]
    return {"z": z.tolist(), "block": len(blocks) - 1, "head": 0, "offset": SPELL_OFFSET, "mix": mix,
            "constant": constant, "gain": gain, "rope_margin": margin, "readout_tokens": "\u2581A..\u2581Z"}
