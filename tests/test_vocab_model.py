"""The vocabulary task, contexts and the model runner, on the synthetic model through the real loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore.extract.contexts import build_contexts, read_documents
from actstore.extract.model import ModelLoadError, ResidualReader, decoder_layers, load_config_and_tokenizer, load_model, pad
from actstore.tasks.vocab import alphabetic_tokens, build_prompt, build_vocab_task, first_letter_label, token_text


@pytest.fixture(scope="module")
def tokenizer(synth_model):
    return load_config_and_tokenizer(str(synth_model))[1]


@pytest.fixture(scope="module")
def model(synth_model):
    return load_model(str(synth_model))


@pytest.mark.parametrize("raw,label", [
    ("\u2581cat", 2), ("cat", 2), ("\u0120Zebra", 25), ("\u2581A", 0), ("b", 1),
    ("\u2581123", None), ("\u2581don't", None), ("\u2581caf\u00e9", None), ("<0x41>", None), ("\u2581", None),
    ("\u2581\u2581cat", None), ("", None), ("x1", None),
])
def test_token_rules(raw, label):
    """One optional leading space (SentencePiece or GPT-2 spelling), then ASCII letters only."""
    assert first_letter_label(token_text(raw)) == label


def test_alphabetic_tokens_of_a_real_tokenizer(tokenizer):
    tokens = alphabetic_tokens(tokenizer)
    texts = {text for _, text, _ in tokens}
    assert " A" in texts and " Z" in texts  # single letters count
    assert not texts & {" 123", " don't", " caf\u00e9", "<0x41>", "<pad>", "<bos>", ":", "\n"}
    words = [t for t in texts if len(t.strip()) > 1]
    # every pseudo-word with and without its leading space, and the prompt's " has the first letter"
    assert len(words) == 2 * 26 * 40 + 4
    for token_id, text, label in tokens:
        assert tokenizer.convert_ids_to_tokens(token_id).replace("\u2581", " ") == text
        assert label == ord(text.strip()[0].lower()) - 97


def test_vocab_task_split_prompts_and_positions(tokenizer):
    task = build_vocab_task(tokenizer, seed=7)
    n = len(task.token_id)
    assert task.dropped == 0 and n == 26 * 80 + 4 + 26
    assert abs(task.split.mean() - 0.2) <= 1 / n
    split_of = dict(zip(task.text, task.split))
    for i in range(0, n, 97):
        lines = task.prompts[i].split("\n")
        assert lines[0] == "" and len(lines) == 12 and lines[-1] == f"{task.text[i]} has the first letter:"
        examples = [line.rsplit(" has the first letter: ", 1) for line in lines[1:-1]]
        assert all(letter == word.strip()[0].upper() for word, letter in examples)
        assert all(split_of[word] == task.split[i] for word, _ in examples)  # ICL examples from the same split
        assert task.text[i] not in [word for word, _ in examples]  # never the query itself
        ids = task.input_ids[i]
        assert ids[task.position[i]] == task.token_id[i]
        assert task.position[i] == len(ids) - 6  # the query is 6th from the end, as with Gemma's tokenizer
    again = build_vocab_task(tokenizer, seed=7)
    assert again.prompts == task.prompts and np.array_equal(again.split, task.split)
    assert build_vocab_task(tokenizer, seed=8).prompts != task.prompts


class MergingTokenizer:
    """Wraps a tokenizer; the word 'zzmerge' merges with the ' has' after it (as BPE merges can)."""

    def __init__(self, inner):
        self.inner, self.all_special_ids, self.bos_token_id = inner, inner.all_special_ids, inner.bos_token_id
        vocab = dict(inner.get_vocab())
        vocab["zzmerge"] = max(vocab.values()) + 1
        self._vocab = vocab

    def get_vocab(self):
        return self._vocab

    def __getattr__(self, name):  # pad/eos ids, convert_ids_to_tokens: the inner tokenizer's
        return getattr(self.inner, name)

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):
            return {"input_ids": [self(t, add_special_tokens)["input_ids"] for t in text]}
        ids = self.inner(text.replace("zzmerge has", "a has").replace("zzmerge", "b"),
                         add_special_tokens=add_special_tokens)["input_ids"]
        if "zzmerge" in text and not text.endswith("zzmerge"):
            return {"input_ids": ids}
        return {"input_ids": ids[:-1] + [self._vocab["zzmerge"]] if text.endswith("zzmerge") else ids}


def test_rows_whose_tokenization_merges_are_dropped_and_counted(tokenizer):
    task = build_vocab_task(MergingTokenizer(tokenizer), seed=7)
    assert task.dropped == 1 and task.drops == {"split": [], "merge": ["zzmerge"]}
    assert "zzmerge" not in set(task.text)
    assert task.drop_message(0.05) is None  # 1 of 2111 rows
    assert task.drop_message(0.0001) == (
        "the vocabulary task dropped 1 of 2111 rows (0.05%, more than --max-dropped 0.0001): 1 because the word merges "
        "with the text after it (' has the first letter:'), e.g. 'zzmerge'. Check the tokenizer (or raise --max-dropped)")
    assert len(task.token_id) == 26 * 80 + 4 + 26


def test_extract_refuses_a_task_that_drops_more_than_max_dropped(tokenizer):
    from actstore.extract.pipeline import ExtractConfig, build_task

    cfg = ExtractConfig(out="unused", max_dropped=0.0001)
    with pytest.raises(ValueError, match=r"dropped 1 of 2111 rows .* because the word merges .* e.g. 'zzmerge'"):
        build_task(cfg, MergingTokenizer(tokenizer))
    cfg.max_dropped = 0.05
    assert build_task(cfg, MergingTokenizer(tokenizer))[1]["vocab_drops"] == {"merge": {"count": 1, "examples": ["zzmerge"]}}


def test_build_prompt_format():
    assert build_prompt(" cat", ["dog", " Emu"]) == (
        "\ndog has the first letter: D\n Emu has the first letter: E\n cat has the first letter:")


def test_contexts_windows_labels_and_cap(tokenizer, corpus):
    ctx = build_contexts(tokenizer, str(corpus), context_length=64, max_rows=1000, bos=tokenizer.bos_token_id)
    assert len(ctx.windows) == 15 and len(ctx.token_id) == 960  # the cap, in whole windows
    assert all(len(w) == 64 and w[0] == tokenizer.bos_token_id for w in ctx.windows)  # BOS starts every window
    text = tokenizer(next(read_documents(str(corpus))), add_special_tokens=False)["input_ids"]
    assert ctx.windows[0][1:] == text[:63] and ctx.windows[1][1:] == text[63:126]  # then the text, in order
    plain = build_contexts(tokenizer, str(corpus), context_length=64, max_rows=1000)  # --bos never
    assert plain.windows[0] == text[:64] and tokenizer.bos_token_id not in plain.token_id
    np.testing.assert_array_equal(ctx.doc[:66], np.r_[np.zeros(64), 1, 1])
    np.testing.assert_array_equal(ctx.pos[62:66], [62, 63, 0, 1])
    for t, label in zip(ctx.token_id[:300], ctx.label[:300]):
        text = tokenizer.convert_ids_to_tokens(int(t)).replace("\u2581", " ")
        expected = ord(text.strip()[0].lower()) - 97 if text.strip().isalpha() and t != tokenizer.bos_token_id else -1
        assert label == expected
    assert (ctx.label == -1).any() and (ctx.label >= 0).mean() > 0.8


def test_contexts_errors(tokenizer, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a b"}\n{"txt": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object with a 'text' field"):
        build_contexts(tokenizer, str(bad), 2, 10)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_contexts(tokenizer, str(tmp_path / "none.txt"), 2, 10)


# ---------------------------------------------------------------------------- the model runner


def test_hooks_give_block_outputs_including_the_last_block(model, tokenizer):
    ids = tokenizer("\n xyz has the first letter:")["input_ids"]
    batch, _ = pad([ids], 0)
    captured = ResidualReader(model, [0, 1, 2, 3])(batch)
    with torch.no_grad():
        hidden = model(input_ids=batch.input_ids, output_hidden_states=True).hidden_states
    for layer in (0, 1, 2):  # inner blocks: hidden_states[L + 1] is the block output
        assert torch.equal(captured[layer], hidden[layer + 1])
    # The last entry of hidden_states is after the final norm, not the block output: they must differ,
    # and the final norm of what we captured must give it back.
    assert not torch.allclose(captured[3], hidden[4])
    torch.testing.assert_close(model.model.norm(captured[3]), hidden[4], rtol=1e-5, atol=1e-5)


def test_forward_pass_stops_after_the_deepest_requested_block(model, tokenizer):
    calls = []
    handle = decoder_layers(model)[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        ResidualReader(model, [1, 0])(pad([tokenizer("a b")["input_ids"]], 0)[0])
        assert calls == []
        ResidualReader(model, [2])(pad([tokenizer("a b")["input_ids"]], 0)[0])
        assert calls == [1]
    finally:
        handle.remove()


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_give_the_activations_of_single_prompts(model, tokenizer, side):
    prompts = ["\n xyz has the first letter:", "\ncat", "\n" + " the" * 30 + " letter:"]
    seqs = [tokenizer(p)["input_ids"] for p in prompts]
    reader = ResidualReader(model, [0, 3])
    batch, offsets = pad(seqs, tokenizer.pad_token_id, side=side)
    together = reader(batch)
    for i, seq in enumerate(seqs):
        alone = reader(pad([seq], tokenizer.pad_token_id)[0])
        for layer in (0, 3):
            got = together[layer][i, offsets[i]:offsets[i] + len(seq)]
            # fp32; only the GEMM shapes differ (measured up to 4.4e-6 absolute on values of order 1-10)
            torch.testing.assert_close(got, alone[layer][0], rtol=0, atol=1e-5)


def test_bad_layers_are_refused(model):
    with pytest.raises(ValueError, match=r"blocks 0-3; asked for \[4\]"):
        ResidualReader(model, [0, 4])


def test_an_unreachable_model_gives_a_clear_error(tmp_path, hub_offline):
    with pytest.raises(ModelLoadError) as raised:
        load_config_and_tokenizer("google/gemma-2-2b")
    assert str(raised.value).startswith("could not load model 'google/gemma-2-2b'")
    assert "pass its directory as --model" in str(raised.value)
    with pytest.raises(ModelLoadError, match="no-such-model: no such file or folder; expected a hub id"):
        load_config_and_tokenizer(str(tmp_path / "no-such-model"))
