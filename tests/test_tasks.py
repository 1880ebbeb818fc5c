"""Tasks in the store, extraction and probes: first_letter unchanged, last_letter's own prompts and group,
capitalized and labels:FILE relabeling the vocab rows, probes of 2, 26 and 40 classes."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actstore.cli.main import main
from actstore.errors import InputError
from actstore.score.probes import ProbeConfig, load_probe, probe_store, train_probe
from actstore.store import verify
from actstore.store.layers import load_layer
from actstore.store.zarrstore import ActivationStore, IncompleteStoreError, StoreError, StoreSpec
from actstore.tasks.builtin import CAPITALIZED_TASK, FIRST_LETTER_TASK, LAST_LETTER_TASK
from actstore.tasks.labels import labels_task
from actstore.tasks.registry import get_task
from actstore.tasks.vocab import build_prompt, build_vocab_task, drop_reasons

ROOT = Path(__file__).resolve().parents[1]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- vocabulary prompts


@pytest.fixture(scope="module")
def reference_vocab(tmp_path_factory):
    """actstore/tasks/vocab.py as it was before tasks (the commit that introduced the task registry), loaded
    as its own module: first_letter's rows must come out byte for byte the same."""
    source = subprocess.run(["git", "show", "1a7a260:actstore/tasks/vocab.py"], cwd=ROOT, capture_output=True,
                            text=True)
    if source.returncode:
        pytest.skip(f"no git history here to read the reference from ({source.stderr.strip()})")
    path = tmp_path_factory.mktemp("reference") / "vocab_before_tasks.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("vocab_before_tasks", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synth_tokenizer(synth_model):
    from actstore.extract.model import load_config_and_tokenizer

    return load_config_and_tokenizer(str(synth_model))[1]


@pytest.mark.parametrize("kw", [dict(seed=7), dict(seed=42, max_tokens=600), dict(seed=3, bos="never")])
def test_first_letter_rows_are_byte_identical_to_before_tasks(reference_vocab, synth_tokenizer, kw):
    old = reference_vocab.build_vocab_task(synth_tokenizer, **kw)
    new = build_vocab_task(synth_tokenizer, **kw)
    assert new.prompts == old.prompts and new.input_ids == old.input_ids
    for name in ("token_id", "text", "label", "split", "position"):
        a, b = getattr(old, name), getattr(new, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert (new.dropped, new.drops, new.alphabetic, new.bos_id) == (old.dropped, old.drops, old.alphabetic, old.bos_id)
    assert build_vocab_task(synth_tokenizer, FIRST_LETTER_TASK, **kw).prompts == old.prompts


def test_first_letter_prompt_by_hand():
    assert build_prompt(" cat", ["dog", " Emu"]) == (
        "\ndog has the first letter: D\n Emu has the first letter: E\n cat has the first letter:")
    assert build_prompt(" cat", ["dog", " Emu"], LAST_LETTER_TASK) == (
        "\ndog has the last letter: G\n Emu has the last letter: U\n cat has the last letter:")
    assert drop_reasons(LAST_LETTER_TASK)["merge"] == "the word merges with the text after it (' has the last letter:')"


class TinyTokenizer:
    """A word-level tokenizer: a newline, or an optional space and a run of non-space characters, is one token
    (SentencePiece's "\u2581" for the space); anything not in the vocabulary is <unk>."""

    WORDS = ["cat", "dog", "Emu", "yak", "owl", "bee", "ant", "fox", "gnu", "hen", "koi", "ram", "eel", "asp"]

    def __init__(self):
        pieces = ["<pad>", "<bos>", "<unk>", "\n", "\u2581has", "\u2581the", "\u2581last", "\u2581letter:", "7up"]
        pieces += [p for w in self.WORDS for p in (f"\u2581{w}", w)] + [f"\u2581{c}" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
        self.vocab = {p: i for i, p in enumerate(pieces)}
        self.all_special_ids, self.bos_token_id, self.pad_token_id, self.eos_token_id = [0, 1, 2], 1, 0, None

    def get_vocab(self):
        return dict(self.vocab)

    def convert_ids_to_tokens(self, i):
        return {v: k for k, v in self.vocab.items()}[i]

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):
            return {"input_ids": [self(t, add_special_tokens)["input_ids"] for t in text]}
        pieces = re.findall(r"\n| ?[^ \n]+", text)
        return {"input_ids": [self.vocab.get(p.replace(" ", "\u2581"), 2) for p in pieces]}


def test_last_letter_rows_and_prompts_by_hand():
    tok = TinyTokenizer()
    task = build_vocab_task(tok, LAST_LETTER_TASK, seed=1, bos="never")
    # every piece whose text is a word (one optional leading space, ASCII letters): the 14 words twice, has, the,
    # last, and the 26 answer letters; not "letter:" (a colon), "7up" (a digit) nor the specials
    assert task.alphabetic == 2 * 14 + 3 + 26 and task.dropped == 0 and len(task.token_id) == task.alphabetic
    by_text = dict(zip(task.text.tolist(), range(len(task.text))))
    for text, last in ((" cat", "t"), ("Emu", "u"), (" has", "s"), (" Q", "q"), (" asp", "p")):
        row = by_text[text]
        assert task.label[row] == ord(last) - ord("a")
        prompt = task.prompts[row]
        assert prompt.startswith("\n") and prompt.endswith(f"\n{text} has the last letter:")
        lines = prompt.split("\n")[1:-1]
        assert len(lines) == 10
        for line in lines:
            word, answer = line.rsplit(" has the last letter: ", 1)
            assert answer == word[-1].upper() and word != text
            assert task.split[by_text[word]] == task.split[row]  # examples from the query's split
        assert task.input_ids[row][task.position[row]] == task.token_id[row] == tok.vocab[text.replace(" ", "\u2581")]
        assert task.input_ids[row][task.position[row] + 1:] == [tok.vocab[p] for p in
                                                               ("\u2581has", "\u2581the", "\u2581last", "\u2581letter:")]


def test_a_template_with_text_before_the_word(tmp_path):
    tok = TinyTokenizer()
    kinds = {" cat": "animal", " dog": "animal", " owl": "bird", " hen": "bird", " eel": "fish", " koi": "fish",
             " yak": "animal", " fox": "animal", " ant": "insect", " bee": "insect", " gnu": "animal", " ram": "animal",
             " asp": "snake"}
    task = get_task(f"labels:{_labels_file(tmp_path / 'kinds.csv', kinds)}", "the{word} is a kind of:")
    rows = build_vocab_task(tok, task, seed=0, bos="never")
    assert len(rows.token_id) == 13 and rows.dropped == 0
    row = int(np.flatnonzero(rows.text == " owl")[0])
    assert rows.prompts[row].endswith("\nthe owl is a kind of:") and task.classes[rows.label[row]] == "bird"
    assert rows.input_ids[row][rows.position[row]] == tok.vocab["\u2581owl"]


# ---------------------------------------------------------------------------- label files


def _labels_file(path: Path, table: dict[str, str]) -> Path:
    path.write_text("token,class\n" + "".join(f"\"{t}\",{c}\n" for t, c in table.items()))
    return path


def test_labels_csv_and_jsonl_give_the_same_task(tmp_path):
    table = {" cat": "animal", " red": "colour", " dog": "animal", "blue": "colour"}
    csv_task = labels_task(_labels_file(tmp_path / "words.csv", table))
    (tmp_path / "words.jsonl").write_text("".join(json.dumps({"token": t, "class": c}) + "\n" for t, c in table.items()))
    jsonl_task = labels_task(tmp_path / "words.jsonl")
    for task in (csv_task, jsonl_task):
        assert task.name == "labels:words" and task.classes == ("animal", "colour") and task.relabels
        assert [task.label(t) for t in (" cat", " red", "blue", "cat", " cow")] == [0, 1, 1, None, None]
    assert csv_task.digest != jsonl_task.digest  # the file's bytes are its identity
    own = labels_task(tmp_path / "words.csv", "{word} is a kind of:")
    assert not own.relabels and own.group == "vocab_labels-words" and own.answers == ("animal", "colour")


@pytest.mark.parametrize("name,text,message", [
    ("a.csv", "tok,cls\n\" a\",x\n", "needs the columns token and class"),
    ("a.csv", "token,class\n\" a\",x\n\" b\",x\n", "1 distinct classes; a task needs 2"),
    ("a.csv", "token,class\n\" a\",x\n\" a\",y\n", "line 3 labels ' a' 'y', an earlier line 'x'"),
    ("a.csv", "token,class\n,x\n\" b\",y\n", "line 2 needs a non-empty token"),
    ("a.jsonl", '{"token": " a", "class": "x"}\nnot json\n', "line 2 is not JSON"),
    ("a.jsonl", '{"token": " a", "class": "x"}\n[1, 2]\n', "line 2 needs a non-empty token"),
    ("a.txt", "token,class\n", "expected a .csv or .jsonl file"),
])
def test_bad_label_files_are_refused_in_one_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=re.escape(message)):
        get_task(f"labels:{tmp_path / name}")


def test_label_file_errors_missing_and_binary(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        get_task(f"labels:{tmp_path / 'none.csv'}")
    (tmp_path / "bin.csv").write_bytes(b"token,class\n\xff\xfe,x\n")
    with pytest.raises(InputError, match="not UTF-8"):
        get_task(f"labels:{tmp_path / 'bin.csv'}")
    with pytest.raises(InputError, match="holds \\{word\\}"):
        get_task(f"labels:{_labels_file(tmp_path / 'ok.csv', {' a': 'x', ' b': 'y'})}", "no word here")


# ---------------------------------------------------------------------------- a store of a few tasks


def planted_rows(texts: list[str], classes: list[int], n_classes: int, d: int = 24, seed: int = 0):
    """Rows = 3 x the planted direction of the class + noise, a 20% test split."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(n_classes, d, generator=gen), dim=1)
    labels = torch.tensor(classes)
    x = 3 * directions[labels] + 0.3 * torch.randn(len(texts), d, generator=gen)
    split = (torch.rand(len(texts), generator=gen) < 0.2).long()
    return x, labels, split


def word_texts(n: int, seed: int = 0) -> list[str]:
    """Distinct alphabetic token texts, half word-initial (a leading space), a third capitalized."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        word = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(rng.integers(2, 7))))
        word = word.capitalize() if rng.random() < 1 / 3 else word
        text = (" " if rng.random() < 0.5 else "") + word
        if text not in out:
            out.append(text)
    return out


@pytest.fixture
def vocab_store(tmp_path):
    """A first_letter store of 1,300 planted rows (d 24), layer 0: the vocab group of a real extraction, whose
    activations carry the capitalization too (a second planted direction)."""
    texts = word_texts(1300)
    first = [FIRST_LETTER_TASK.label(t) for t in texts]
    x, labels, split = planted_rows(texts, first, 26)
    gen = torch.Generator().manual_seed(5)
    upper = torch.nn.functional.normalize(torch.randn(24, generator=gen), dim=0)
    x = x + 3 * torch.tensor([float(t.strip()[0].isupper()) for t in texts])[:, None] * upper
    path = tmp_path / "s.zarr"
    store = ActivationStore.create(path, StoreSpec(model="planted", d_model=24, layers=[0], dtype="float32",
                                                   shard_rows=512, chunk_rows=256))
    store.add_group("vocab", rows=len(texts))
    store.write("vocab", 0, {0: x, "label": labels.numpy(), "split": split.numpy(), "token_id": np.arange(len(texts)),
                             "position": np.zeros(len(texts), int), "text": np.array(texts)})
    store.close()
    return path, texts, x


def test_capitalized_relabels_the_vocab_rows(vocab_store):
    path, texts, x = vocab_store
    with ActivationStore.open(path) as store:
        assert store.tasks() == ["first_letter", "capitalized"]
        data = load_layer(store, 0, CAPITALIZED_TASK)
        first = load_layer(store, 0)
    keep = [i for i, t in enumerate(texts) if t.startswith(" ")]  # word-initial rows only
    assert data.text == [texts[i] for i in keep] and data.token_id.tolist() == keep
    assert data.labels.tolist() == [int(texts[i][1].isupper()) for i in keep]
    assert torch.equal(data.x, x[keep]) and data.task is CAPITALIZED_TASK
    assert torch.equal(first.x, x) and first.labels.tolist() == [FIRST_LETTER_TASK.label(t) for t in texts]


def test_probes_of_2_26_and_40_classes_are_kept_per_task(vocab_store, tmp_path):
    path, texts, _ = vocab_store
    classes = {t: f"k{sum(map(ord, t.strip()[:2].lower())) % 40:02d}" for t in texts}  # 40 classes, by 2 letters
    table = tmp_path / "pairs.csv"
    _labels_file(table, classes)
    pairs = get_task(f"labels:{table}")
    cfg = ProbeConfig(epochs=3)
    trained = {task.name: probe_store(str(path), cfg=cfg, task=task)[0]
               for task in (FIRST_LETTER_TASK, CAPITALIZED_TASK, pairs)}
    before = tree(path / "probes" / "layer_00")
    assert main(["probe", str(path), "--task", "capitalized", "--epochs", "30"]) == 0  # another task's probe
    assert tree(path / "probes" / "layer_00") == before  # first_letter's, untouched
    with ActivationStore.open(path) as store:
        assert store.probe_layers("first_letter") == [0] and store.probe_layers(pairs) == [0]
        for task, classes_n in ((FIRST_LETTER_TASK, 26), (CAPITALIZED_TASK, 2), (pairs, pairs.n_classes)):
            probe = load_probe(store, 0, task)
            assert probe.weight.shape == (classes_n, 24) and probe.bias.shape == (classes_n,)
            assert all(len(v) == classes_n for v in probe.metrics["test"].values())
        assert pairs.n_classes == 40 and torch.equal(load_probe(store, 0, pairs).weight, trained[pairs.name].weight)
        assert (path / "probes" / "capitalized" / "layer_00").is_dir() and (path / "probes" / "labels-pairs").is_dir()
        assert len(load_probe(store, 0, CAPITALIZED_TASK).evaluated_classes()) == 2  # the planted case direction
        with pytest.raises(KeyError, match="no probe for layer 0 of task last_letter"):
            load_probe(store, 0, LAST_LETTER_TASK)
        assert verify.verify(store) == []
    _labels_file(table, {**classes, texts[0]: "zz"})  # the label file edited: its probes are another task's
    with ActivationStore.open(path) as store, pytest.raises(StoreError, match="another version of the task"):
        load_probe(store, 0, get_task(f"labels:{table}"))


def test_a_probe_of_the_wrong_size_is_named(vocab_store):
    path, _, _ = vocab_store
    with ActivationStore.open(path, mode="a") as store:
        with pytest.raises(ValueError, match="a probe of task capitalized is weight \\(2, 24\\)"):
            store.save_probe(0, np.ones((26, 24), np.float32), np.zeros(26, np.float32), {}, CAPITALIZED_TASK)
        metrics = {"test": {k: [0.9] * 26 for k in ("precision", "recall", "f1")}}
        store.save_probe(0, np.ones((26, 24), np.float32), np.zeros(26, np.float32), {"metrics": metrics})
    folder = path / "probes" / "capitalized"
    shutil.copytree(path / "probes" / "layer_00", folder / "layer_00")  # first_letter's probe where capitalized's goes
    (folder / "zarr.json").write_text((path / "probes" / "zarr.json").read_text())
    with ActivationStore.open(path) as store:
        with pytest.raises(StoreError, match="has 26 rows, but task capitalized has 2 classes"):
            load_probe(store, 0, CAPITALIZED_TASK)
        (problem,) = verify.verify(store)
    assert problem.array == "probes/capitalized/layer_00" and "no 'task' attribute" in problem.detail


def test_probes_need_c_classes_of_labels():
    x, labels, split = planted_rows(["w"] * 200, [i % 2 for i in range(200)], 2)
    probe, _ = train_probe(x, labels, split, ProbeConfig(epochs=20), n_classes=2)
    assert probe.weight.shape == (2, 24) and probe.evaluated_classes() == [0, 1]
    with pytest.raises(InputError, match="a task of 2 classes has labels 0..1"):
        train_probe(x, labels + 1, split, ProbeConfig(epochs=1), n_classes=2)


def test_a_task_the_store_lacks_names_the_extract_command(vocab_store):
    path, _, _ = vocab_store
    with ActivationStore.open(path) as store:
        with pytest.raises(KeyError, match=r"holds no rows of task last_letter .*`actstore extract --model planted "
                                           r"--layers 0 --out \S+ --task last_letter`"):
            load_layer(store, 0, LAST_LETTER_TASK)
    assert main(["probe", str(path), "--task", "last_letter"]) == 2


# ---------------------------------------------------------------------------- extract --task into a store


@pytest.mark.slow
def test_extract_last_letter_adds_a_resumable_group_and_touches_nothing_else(synth_model, corpus, tmp_path,
                                                                             ray_session, capsys):
    from actstore.extract.model import load_config_and_tokenizer
    from actstore.extract.pipeline import ExtractConfig, extract

    out = tmp_path / "s.zarr"
    base = dict(model=str(synth_model), out=str(out), max_vocab=300, shard_rows=128, batch_size=8, layers="0,1")
    extract(ExtractConfig(**base, contexts=str(corpus), context_rows=256, context_length=64), progress=False)
    probe_store(str(out), cfg=ProbeConfig(epochs=2))
    vocab, probes, context = (tree(out / g) for g in ("vocab", "probes", "context"))

    args = ["extract", "--model", str(synth_model), "--out", str(out), "--max-vocab", "200", "--batch-size", "8",
            "--task", "last_letter"]
    assert main(args) == 0  # the store's layers, dtype and shard size: none given
    assert "computed 200 rows (vocab_last_letter 200" in capsys.readouterr().out
    added = tree(out / "vocab_last_letter")
    assert (tree(out / "vocab"), tree(out / "probes"), tree(out / "context")) == (vocab, probes, context)

    with ActivationStore.open(out) as store:
        assert store.groups == {"vocab": 300, "context": 256, "vocab_last_letter": 200}
        assert store.tasks() == ["first_letter", "last_letter", "capitalized"]
        assert store.group_attrs("vocab_last_letter")["task"] == LAST_LETTER_TASK.identity()
        data = load_layer(store, 1, LAST_LETTER_TASK)
        text = [str(t) for t in store.column("vocab_last_letter", "text")]
        assert data.labels.tolist() == [ord(t[-1].lower()) - 97 for t in text]
        assert store.column("vocab_last_letter", "label").dtype == np.int16
        known = dict(zip(store.column("vocab", "token_id").tolist(), store.column("vocab", "text")))
        known.update(zip(store.column("vocab_last_letter", "token_id").tolist(), text))
        expected = [-1 if t not in known else LAST_LETTER_TASK.label(str(known[t])) for t in
                    store.column("context", "token_id").tolist()]
        assert data.context_labels.tolist() == expected and (data.context_labels >= 0).any()
        assert verify.verify(store) == []
    rows = build_vocab_task(load_config_and_tokenizer(str(synth_model))[1], LAST_LETTER_TASK, seed=42, max_tokens=200)
    assert data.text == rows.text.tolist() and data.split.tolist() == rows.split.tolist()
    assert rows.prompts[0].endswith(f"\n{rows.text[0]} has the last letter:")

    # a simulated kill: two shards of the new group never finished (markers gone, a torn temp file left)
    for array in ("layer_00", "layer_01", "label"):
        for marker in (out / "vocab_last_letter" / array / "_manifest").glob("00000[01].json"):
            marker.unlink()
    (out / "vocab_last_letter" / "layer_00" / "c" / "0" / "0.0123abcd.partial").write_bytes(b"torn")
    with ActivationStore.open(out) as store:  # first_letter still reads; the unfinished group says how to finish
        assert load_layer(store, 0).x.shape == (300, 64)
        with pytest.raises(IncompleteStoreError, match="finish them with `actstore extract .*--task last_letter"):
            load_layer(store, 0, LAST_LETTER_TASK)
    assert main(["probe", str(out), "--task", "last_letter"]) == 2
    assert "shards 0-1 are not written yet; finish them with `actstore extract" in capsys.readouterr().err
    assert main(args) == 0  # the same command resumes it
    assert "computed 200 rows" in capsys.readouterr().out  # both shards (128 + 72 rows)
    assert tree(out / "vocab_last_letter") == added and tree(out / "vocab") == vocab
    assert main(args) == 0 and "computed 0 rows" in capsys.readouterr().out

    assert main(args[:-2] + ["--task", "capitalized"]) == 2
    assert "relabels first_letter's rows" in capsys.readouterr().err
    assert main([*args[:5], "--max-vocab", "150", *args[7:]]) == 2  # another run of the same task: refused
    assert "differ in" in capsys.readouterr().err
    assert main([*args, "--layers", "0"]) == 2 and "holds layers 0,1" in capsys.readouterr().err
    assert main(["probe", str(out), "--task", "last_letter", "--epochs", "2"]) == 0
    with ActivationStore.open(out) as store:
        assert load_probe(store, 1, LAST_LETTER_TASK).weight.shape == (26, 64) and verify.verify(store) == []
    assert tree(out / "probes" / "layer_00") == tree_probe(probes, "layer_00")


def tree_probe(files: dict[str, bytes], layer: str) -> dict[str, bytes]:
    return {k.removeprefix(f"{layer}/"): v for k, v in files.items() if k.startswith(f"{layer}/")}


@pytest.mark.slow
def test_a_fresh_store_of_a_labels_task_with_its_own_prompt(synth_model, synth_tokenizer, tmp_path, ray_session):
    from actstore.extract.pipeline import ExtractConfig, extract
    from actstore.tasks.vocab import task_tokens

    words = [text for _, text, _ in task_tokens(synth_tokenizer) if text.startswith(" ") and len(text) > 2][:90]
    table = _labels_file(tmp_path / "length.csv", {w: f"len{min(len(w) - 1, 6)}" for w in words})
    task = get_task(f"labels:{table}", "{word} has this many letters:")
    cfg = dict(model=str(synth_model), out=str(tmp_path / "s.zarr"), task=f"labels:{table}",
               template=task.template, layers="0", shard_rows=64, batch_size=8)
    summary = extract(ExtractConfig(**cfg), progress=False)
    assert summary["group"] == "vocab_labels-length" and summary["rows_computed"] == 90
    with ActivationStore.open(tmp_path / "s.zarr") as store:
        assert store.groups == {"vocab_labels-length": 90} and store.tasks() == ["labels:length"]
        assert store.spec.prompt_template == task.template and store.spec.extra["task"] == "labels:length"
        assert "--task labels:" + str(table) in store.spec.resume_command
        data = load_layer(store, 0, task)
        assert [task.classes[c] for c in data.labels] == [f"len{min(len(t) - 1, 6)}" for t in data.text]
        with pytest.raises(KeyError, match="holds no rows of first_letter, which task capitalized relabels"):
            load_layer(store, 0, CAPITALIZED_TASK)
    assert extract(ExtractConfig(**cfg, resume=True), progress=False)["rows_computed"] == 0


def test_verify_checks_a_task_group_and_info_lists_the_tasks(vocab_store, capsys):
    path, texts, x = vocab_store
    n = 300
    with ActivationStore.open(path, mode="a") as store:
        store.add_group("vocab_last_letter", rows=n, attrs={"task": LAST_LETTER_TASK.identity(),
                                                             "answers": list(LAST_LETTER_TASK.answers)})
        assert store.columns("vocab_last_letter")["label"] == "int16"
        labels = np.array([LAST_LETTER_TASK.label(t) for t in texts[:n]])
        labels[7] = 30  # not a class of last_letter
        store.write("vocab_last_letter", 0, {0: x[:n], "label": labels, "split": np.zeros(n, int),
                                             "token_id": np.arange(n), "position": np.zeros(n, int),
                                             "text": np.array(texts[:n])})
    with ActivationStore.open(path) as store:
        assert store.tasks() == ["first_letter", "last_letter", "capitalized"]
        (problem,) = verify.verify(store)
    assert problem.array == "vocab_last_letter/label" and "labels [30] are not classes of task last_letter (0..25)" \
        in problem.detail
    assert main(["info", str(path)]) == 0
    assert "tasks        first_letter, last_letter, capitalized" in capsys.readouterr().out
    attrs = path / "vocab_last_letter" / "zarr.json"
    meta = json.loads(attrs.read_text())
    meta["attributes"]["task"]["name"] = "first_letter"  # the group renamed, or another task's copied in
    attrs.write_text(json.dumps(meta))
    with ActivationStore.open(path) as store:
        found = {p.array: p.detail for p in verify.verify(store)}
        assert "belong in vocab" in found["vocab_last_letter"]
        with pytest.raises(StoreError, match="holds the rows of another version of task last_letter .name"):
            load_layer(store, 0, LAST_LETTER_TASK)
