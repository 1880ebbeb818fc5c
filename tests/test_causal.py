"""The paper's causal absorption metric (actstore.score.causal) on a synthetic world where causality is known: a
model that spells (synth-model --spelling), SAEs with planted absorbing latents, and planted decoys (aligned
with the probe, invisible to the spelling head)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from actstore.errors import InputError
from actstore.extract.splice import replaced_output, spliced_blocks
from actstore.score.causal import CausalConfig, CausalError, CausalRunner, answer_token_ids, check_task
from actstore.tasks.base import Task
from actstore.tasks.builtin import CAPITALIZED_TASK, FIRST_LETTER_TASK, LAST_LETTER_TASK

LETTERS = FIRST_LETTER_TASK.classes  # the spelling world's classes: first_letter's a..z

LAYER = 0  # the 2-block spelling model's head is in block 1; the metric hooks block 0
ROWS = 520
DECOY_LETTERS = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 2-block spelling model, a store of its block-0 residuals on 520 vocabulary prompts (written here, in
    process, as `extract` writes it, with the model's provenance), probes, and one SAE with planted absorption
    0.5 whose first three letters' absorbers are made decoys."""
    from actstore.extract.model import ResidualReader, load_config_and_tokenizer, load_model, pad, provenance, resolve_model
    from actstore.score.probes import load_probe, probe_store
    from actstore.store.zarrstore import ActivationStore, StoreSpec
    from actstore.extract.synthetic import write_synthetic_model
    from actstore.saes.synthetic import SynthSAEConfig, plant_decoys, write_synthetic_saes
    from actstore.tasks.vocab import build_vocab_task

    root = tmp_path_factory.mktemp("spelling")
    model_dir = write_synthetic_model(root / "model", n_layers=2, seed=0, spelling=True, n_per_letter=20)
    source = resolve_model(str(model_dir))
    config, tokenizer = load_config_and_tokenizer(source)
    task = build_vocab_task(tokenizer, seed=42, max_tokens=ROWS)
    model = load_model(source)
    reader = ResidualReader(model, [LAYER])
    xs = []
    for lo in range(0, len(task.input_ids), 128):
        batch, offsets = pad(task.input_ids[lo:lo + 128], tokenizer.pad_token_id, side="left")
        x = reader(batch)[LAYER]
        xs.append(x[torch.arange(len(offsets)), offsets + torch.as_tensor(task.position[lo:lo + 128])])
    path = root / "s.zarr"
    extra = {"seed": 42, "max_vocab": ROWS, "bos": {"policy": "auto"},
             "provenance": provenance(source, config, tokenizer)}
    store = ActivationStore.create(path, StoreSpec(model=str(model_dir), d_model=64, layers=[LAYER], dtype="float32",
                                                   shard_rows=1024, chunk_rows=256, extra=extra))
    store.add_group("vocab", rows=len(task.token_id))
    store.write("vocab", 0, {LAYER: torch.cat(xs), "label": task.label, "split": task.split,
                             "token_id": task.token_id, "position": task.position, "text": task.text})
    store.close()
    probe_store(str(path))
    with ActivationStore.open(path) as store:
        probe = load_probe(store, LAYER)
    [planted] = write_synthetic_saes(str(path), LAYER, root / "saes",
                                     SynthSAEConfig(absorption=(0.5,), splits=(), width=300, min_truth_positives=3))
    truth = json.loads((planted / "truth.json").read_text())
    decoy = plant_decoys(planted, root / "decoy" / f"layer_{LAYER}" / "width_300" / "decoy", model_dir,
                         probe.directions(), truth["evaluated_classes"][:DECOY_LETTERS])
    return {"root": root, "model_dir": model_dir, "model": model, "tokenizer": tokenizer, "task": task,
            "store": path, "probe": probe, "decoy": decoy}


def test_the_spelling_model_spells_and_its_head_is_what_spells(world):
    """Greedy next token over the WHOLE vocabulary at the final position of 260 task prompts: the first letter
    (as the prompt's answers write it, ' A'..' Z') >= 95% of the time; with the spelling head's output zeroed it
    is right only by chance (< 15%)."""
    model, tokenizer, task = world["model"], world["tokenizer"], world["task"]
    from actstore.extract.model import pad

    letters = torch.tensor([tokenizer.convert_tokens_to_ids(f"\u2581{c.upper()}") for c in LETTERS])
    rows = range(0, len(task.input_ids), 2)
    want = letters[torch.as_tensor(task.label[::2])]

    def accuracy() -> float:
        batch, _ = pad([task.input_ids[r] for r in rows], tokenizer.pad_token_id, side="left")
        mask = batch.attention_mask
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                           logits_to_keep=1).logits[:, -1]
        return float((logits.argmax(-1) == want).float().mean())

    assert accuracy() >= 0.95
    o_proj = model.model.layers[-1].self_attn.o_proj.weight
    saved = o_proj.detach().clone()
    with torch.no_grad():
        o_proj.zero_()
    try:
        assert accuracy() < 0.15
    finally:
        with torch.no_grad():
            o_proj.copy_(saved)


@pytest.fixture(scope="module")
def runner(world):
    from actstore.store.zarrstore import ActivationStore

    with ActivationStore.open(world["store"]) as store:
        return CausalRunner.from_store(store, "cpu", FIRST_LETTER_TASK, CausalConfig())


def test_spliced_later_blocks_reproduce_the_model(world, runner):
    """Blocks 0..L replaced by the stored residual (the precompute path) and the whole model with block L's
    output replaced (the baseline) both give the plain model's final logits, fp32, to 1e-5 of their scale."""
    from actstore.extract.model import pad

    model, rows = world["model"], [0, 7, 100, 301]
    batch, _ = pad([runner.input_ids[r] for r in rows], runner.pad_id, side="left")
    mask = batch.attention_mask
    kwargs = dict(input_ids=batch.input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                  logits_to_keep=1)
    resid = runner.residuals(LAYER, rows)
    x = torch.zeros(len(rows), batch.input_ids.shape[1], resid[0].shape[-1])
    for j, r in enumerate(resid):
        x[j, x.shape[1] - len(r):] = r
    with torch.no_grad():
        plain = model(**kwargs).logits[:, -1]
        with spliced_blocks(model, LAYER, x, runner.cache.as_tuple):
            spliced = model(**kwargs).logits[:, -1]
        with replaced_output(model, LAYER, x):
            whole = model(**kwargs).logits[:, -1]
    scale = plain.abs().max()
    assert torch.allclose(spliced, plain, atol=1e-5 * scale, rtol=0)
    assert torch.allclose(whole, plain, atol=1e-5 * scale, rtol=0)
    assert type(model.model.layers[0]).__name__ == "Gemma2DecoderLayer"  # restored


def reference_scores(model, runner, sae, row: int, letter: int) -> torch.Tensor:
    """The paper's procedure written out literally, independently of CausalRunner: the whole model, block L's
    output hooked; at the word position the SAE's latents are a leaf (the patched hook_sae_acts_post),
    decoded with b_dec, plus the scaled error; gradients with respect to the latents, averaged over alpha; the
    score vector over ALL latents is mean grad x (0 - activation)."""
    from actstore.extract.model import decoder_layers

    ids = torch.tensor([runner.input_ids[row]])
    pos = int(runner.positions[row])
    grads = []
    with torch.no_grad():
        captured = {}
        handle = decoder_layers(model)[LAYER].register_forward_hook(lambda m, a, o: captured.update(x=o))
        model(input_ids=ids)
        handle.remove()
        x = captured["x"][0, pos]
        acts = sae.encode(x[None])[0]
        error = x - (acts @ sae.w_dec + sae.b_dec)
    for step in range(6):
        alpha = step / 6
        patched = ((1 - alpha) * acts).clone().requires_grad_(True)

        def hook(module, args, output):
            out = output.clone()
            out[0, pos] = patched @ sae.w_dec + sae.b_dec + (1 - alpha) * error
            return out

        handle = decoder_layers(model)[LAYER].register_forward_hook(hook)
        logits = model(input_ids=ids).logits[0, -1]
        handle.remove()
        metric = logits[runner.correct[letter]] - logits[runner.others(letter)].mean()
        grads.append(torch.autograd.grad(metric, patched)[0])
    return torch.stack(grads).mean(dim=0) * (0 - acts)


def test_scores_match_a_literal_reference_of_the_papers_procedure(world, runner):
    """For absorbed, decoy and clean tokens: the top latent and the top two scores from CausalRunner (residual
    gradients through the spliced later blocks) equal the reference's (latent gradients through the whole
    model), to 1e-4 relative."""
    from actstore.saes.loading import load_params_npz

    sae = load_params_npz(world["decoy"] / "params.npz", "decoy", LAYER, None, 64, torch.float32, "cpu")
    truth = json.loads((world["decoy"] / "truth.json").read_text())
    decoy_letter = truth["decoy_classes"][0]
    kept = next(c for c in truth["evaluated_classes"] if c not in truth["decoy_classes"])
    picks = [(truth["classes"][kept]["absorbed_rows"][0][0], kept),
             (truth["classes"][decoy_letter]["absorbed_rows"][0][0], decoy_letter)]
    clean = next(r for r in range(ROWS) if world["task"].label[r] == LETTERS.index(kept)
                 and r not in [a for a, _ in truth["classes"][kept]["absorbed_rows"]])
    picks.append((clean, kept))
    dec_cos = torch.zeros(sae.width, len(LETTERS))
    got = runner.score_tokens(sae, LAYER, [r for r, _ in picks], [LETTERS.index(c) for _, c in picks],
                              [[] for _ in picks], dec_cos)
    for (row, c), outcome in zip(picks, got):
        scores = reference_scores(world["model"], runner, sae, row, LETTERS.index(c))
        top = (-scores).topk(2)
        # abs 1e-4: a decoy's true score is 0; both sides give float32 noise of about 1e-6 there
        assert outcome.top_score == pytest.approx(float(-top.values[0]), rel=1e-4, abs=1e-4)
        assert outcome.second_score == pytest.approx(float(-top.values[1]), rel=1e-4, abs=1e-4)
        if outcome.top_latent >= 0:
            assert outcome.top_latent == int(top.indices[0])


@pytest.fixture(scope="module")
def scored(world):
    from actstore.run.runner import ScoreCommandConfig, run_score

    out = world["root"] / "results"
    cfg = ScoreCommandConfig(store=str(world["store"]), saes=[str(world["decoy"])], out=str(out), local=True,
                             causal=True, bootstrap=0)
    run_score(cfg, log=lambda *a: None)
    return cfg, out


def test_planted_absorbers_are_found_at_the_planted_rate_and_decoys_are_rejected(world, scored):
    """Per evaluated letter of the planted truth, the causal rate equals the planted one exactly: every planted
    absorber is the only active latent on its token (main latent off, fillers silent), decodes along its
    letter's probe direction (cos ~0.5 >= 0.025) with an activation ~2x the largest probe score, so its score is
    tens of logits below zero against a second of 0 (|top| - |second| >> 1.0); no sample is drawn (fewer
    candidates than 200). The decoys keep the projection metric's full absorption (their cos with p_c is
    |p_c outside the head's subspace|, well above 0.025), but their scores are ~0: causal rate 0, and each of
    their tokens counts as projection-only in the agreement."""
    _, out = scored
    truth = json.loads((world["decoy"] / "truth.json").read_text())
    letters = {r["letter"]: r for r in pq.read_table(out / "letters.parquet").to_pylist()}
    tokens = pq.read_table(out / "tokens.parquet").to_pylist()
    assert truth["decoy_classes"] and all(truth["classes"][c]["decoy_cos"] > 0.1 for c in truth["decoy_classes"])
    for c in truth["evaluated_classes"]:
        row, planted = letters[c], truth["classes"][c]
        assert row["causal_absorption_rate"] == pytest.approx(planted["causal_absorption_rate"], abs=1e-12), c
        assert row["causal_sample_portion"] == 1.0
        mine = [t for t in tokens if t["letter"] == c]
        assert sum(t["causal_absorption"] for t in mine) == row["num_causal_absorption"]
        counts = [row[k] for k in ("agree_both", "agree_projection_only", "agree_causal_only", "agree_neither",
                                   "agree_unsampled")]
        assert sum(counts) == row["num_probe_true_positives"]
        absorbed = {r for r, _ in planted.get("absorbed_rows", [])}
        if c in truth["decoy_classes"]:
            assert row["full_absorption_rate"] == pytest.approx(planted["full_absorption_rate"], abs=1e-9)
            assert planted["full_absorption_rate"] > 0
            assert row["num_causal_absorption"] == 0 and row["agree_projection_only"] == len(absorbed)
            assert all(abs(t["causal_top_score"]) < 1e-3 for t in mine if t["row"] in absorbed)
        else:
            assert row["agree_both"] == len(absorbed) and row["agree_projection_only"] == 0
            assert all(t["causal_top_score"] < -10 and t["causal_top_cos"] > 0.1 for t in mine if t["row"] in absorbed)
    saes = pq.read_table(out / "saes.parquet").to_pylist()[0]
    assert saes["num_causal_absorption"] == sum(r["num_causal_absorption"] for r in letters.values())
    [report] = (out / "saebench").glob("*.json")
    report = json.loads(report.read_text())
    assert report["eval_result_metrics"]["mean"]["mean_causal_absorption_score"] == pytest.approx(
        saes["mean_causal_absorption"])
    details = {d["first_letter"]: d for d in report["eval_result_details"]}
    assert details["a"]["causal_absorption_rate"] == letters["a"]["causal_absorption_rate"]


def test_causal_options_are_provenance_and_the_default_leaves_old_parts_valid(world, scored):
    """Another --causal-samples recomputes (and says why); a run without --causal records no causal options,
    so parts scored before --causal existed stay valid."""
    from actstore.run.provenance import Provenance, redo_reason
    from actstore.run.runner import resolve_saes
    from actstore.store.zarrstore import ActivationStore

    cfg, out = scored
    [source] = resolve_saes([str(world["decoy"])])
    with ActivationStore.open(world["store"]) as store:
        assert redo_reason(out, source, Provenance(store, cfg, "cpu")) is None
        other = type(cfg)(**{**cfg.__dict__, "causal_samples": 5})
        assert "causal" in redo_reason(out, source, Provenance(store, other, "cpu"))
        plain = type(cfg)(**{**cfg.__dict__, "causal": False})
        assert "causal" not in Provenance(store, plain, "cpu").options["score"]


CAPS = [f"\u2581{c.upper()}" for c in LETTERS]


def test_answer_tokens_prompt_and_paper_schemes():
    """prompt: every letter as the prompt's answers write it (' A' -> '▁A'); paper: the correct letter as
    tokenizer.encode('a')[-1] (lowercase, no space), the others still ' B', ' C', ...; a tokenizer with no lone
    lowercase letters refuses paper with a clear error."""
    from actstore.extract.synthetic import PROMPT_WORDS, SPECIALS, build_tokenizer

    with_lower = build_tokenizer(SPECIALS + PROMPT_WORDS + CAPS + list(LETTERS) + ["\u2581word", "word"])
    ids = {t: with_lower.convert_tokens_to_ids(t) for t in CAPS + list(LETTERS)}
    correct, answers = answer_token_ids(with_lower, FIRST_LETTER_TASK, "prompt", "word")
    assert correct == answers == [ids[c] for c in CAPS] and len(set(answers)) == 26
    correct, answers = answer_token_ids(with_lower, FIRST_LETTER_TASK, "paper", "word")
    assert correct == [ids[c] for c in LETTERS] and answers == [ids[c] for c in CAPS]
    without = build_tokenizer(SPECIALS + PROMPT_WORDS + CAPS + ["\u2581word", "word"])
    with pytest.raises(CausalError, match="no token for a lone lowercase letter"):
        answer_token_ids(without, FIRST_LETTER_TASK, "paper", "word")


class RecordingTokenizer:
    """A tokenizer that records the texts it is asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, text, **kwargs):
        self.texts.append(text)
        return self.tokenizer(text, **kwargs)


def test_last_letter_answer_tokens_come_from_its_template():
    """last_letter: the query line is its template ("word has the last letter:") and each class's token is what
    " " + its answer adds to it; a task with other answers (" yes", " no") gets those tokens, in class order; two
    answers that are one token are refused; paper is first_letter's alone."""
    from actstore.extract.synthetic import PROMPT_WORDS, SPECIALS, build_tokenizer

    tokenizer = build_tokenizer(SPECIALS + PROMPT_WORDS + CAPS + ["\u2581last", "\u2581yes", "\u2581no", "\u2581word"])
    recording = RecordingTokenizer(tokenizer)
    correct, answers = answer_token_ids(recording, LAST_LETTER_TASK, "prompt", "word")
    assert correct == answers == [tokenizer.convert_tokens_to_ids(t) for t in CAPS]
    assert recording.texts == ["word has the last letter:"] + [f"word has the last letter: {c.upper()}"
                                                                for c in LETTERS]
    asks = Task(name="labels:yn", classes=("n", "y"), label=lambda text: None, template="Is {word} a word? Answer:",
                answers=("no", "yes"), prompt_task="labels:yn", min_evaluated=2)
    tokenizer = build_tokenizer(SPECIALS + ["\u2581Is", "\u2581a", "\u2581word?", "\u2581Answer", ":", "\u2581yes",
                                            "\u2581no", "\u2581word"])
    assert answer_token_ids(tokenizer, asks, "prompt", "word")[1] == [tokenizer.convert_tokens_to_ids("\u2581no"),
                                                                      tokenizer.convert_tokens_to_ids("\u2581yes")]
    same = Task(name="labels:same", classes=("a", "b"), label=lambda text: None, template=asks.template,
                answers=("Maybe", "Perhaps"), prompt_task="labels:same", min_evaluated=2)  # both <unk>
    with pytest.raises(CausalError, match="answers ' Maybe' and ' Perhaps' are the same token"):
        answer_token_ids(tokenizer, same, "prompt", "word")
    with pytest.raises(InputError, match="--causal-answer-tokens paper is lasr-spelling's first-letter metric"):
        answer_token_ids(tokenizer, LAST_LETTER_TASK, "paper", "word")


def test_a_relabeling_task_has_no_causal_metric(world):
    """capitalized relabels first_letter's rows: their prompt asks for the first letter, so no answer of its own
    classes is the model's reply. The runner refuses it, before loading any model, with an error that says so."""
    from actstore.store.zarrstore import ActivationStore

    message = r"task capitalized has no causal metric: it relabels first_letter's rows, whose prompt asks"
    with pytest.raises(CausalError, match=message):
        check_task(CAPITALIZED_TASK)
    with ActivationStore.open(world["store"]) as store, pytest.raises(CausalError, match=message):
        CausalRunner.from_store(store, "cpu", CAPITALIZED_TASK, CausalConfig())
    with pytest.raises(CausalError, match=message):
        answer_token_ids(world["tokenizer"], CAPITALIZED_TASK, "prompt", "word")
    check_task(FIRST_LETTER_TASK)
    check_task(LAST_LETTER_TASK)
    assert isinstance(CausalError("x"), InputError)  # the CLI prints it in one line and exits 2


def test_a_task_whose_prompt_rows_are_not_in_the_store_is_named(world):
    """last_letter has a prompt of its own, in group vocab_last_letter; a store extracted for first_letter only
    has none: the runner says which group is missing and how to extract it."""
    from actstore.store.zarrstore import ActivationStore

    with ActivationStore.open(world["store"]) as store, pytest.raises(
            CausalError, match=r"no prompt rows of task last_letter \(group vocab_last_letter\); extract them with "
                               r"`actstore extract --task last_letter --resume`"):
        CausalRunner.from_store(store, "cpu", LAST_LETTER_TASK, CausalConfig())


def test_causal_arguments_are_checked(planted_store, tmp_path):
    from actstore.cli.checks import BadArgument, check
    from actstore.run.runner import ScoreCommandConfig

    def cfg(**kw):
        return ScoreCommandConfig(store=str(planted_store), saes=[], out=str(tmp_path / "r"), local=True, **kw)

    with pytest.raises(BadArgument, match="records no model"):
        check("score", cfg(causal=True))
    with pytest.raises(BadArgument, match="--causal-samples"):
        check("score", cfg(causal_samples=0))
    with pytest.raises(BadArgument, match="--causal-answer-tokens 'lowercase': expected one of paper, prompt"):
        check("score", cfg(causal_answer_tokens="lowercase"))
    with pytest.raises(BadArgument, match="--causal: task capitalized has no causal metric: it relabels "
                                          "first_letter's rows"):  # refused before the store is read
        check("score", cfg(causal=True, task="capitalized"))
    with pytest.raises(BadArgument, match=r"--task last_letter: .* holds no rows of its prompt \(group "
                                          r"vocab_last_letter\); extract them with `actstore extract --model .* "
                                          r"--task last_letter`"):  # the exact command (zarrstore.extract_command)
        check("score", cfg(task="last_letter"))


def test_report_and_explorer_show_the_agreement(world, scored):
    """The report's agreement tables hold the letters' counts; the explorer lists the decoy tokens (absorbed
    by projection only) with causal 0 and the planted absorbed tokens with causal 1."""
    from actstore.report.explorer import sae_payload
    from actstore.report.pages import agreement_section, load_results

    _, out = scored
    truth = json.loads((world["decoy"] / "truth.json").read_text())
    scored_rows, _ = load_results(out)
    letters = pq.read_table(out / "letters.parquet").to_pylist()
    text, tables = agreement_section(scored_rows, letters, scored_rows[0])
    decoy = truth["decoy_classes"][0]
    row = next(r for r in letters if r["letter"] == decoy)
    assert tables == 2 and "Projection vs causal absorption" in text
    assert (f"<td>{decoy}</td><td>{row['num_probe_true_positives']}</td>") in text
    assert agreement_section([{**r, "mean_causal_absorption": None} for r in scored_rows], letters, scored_rows[0]) \
        == ("", 0)
    payload = sae_payload(letters, pq.read_table(out / "tokens.parquet").to_pylist(), [])
    listed = {c: {t[0]: t[8] for t in tokens} for c, tokens in payload["tokens"].items()}
    for c in truth["evaluated_classes"]:
        want = 0 if c in truth["decoy_classes"] else 1
        assert {r: want for r, _ in truth["classes"][c].get("absorbed_rows", [])} == listed.get(c, {}), c


def test_a_model_folder_with_other_weights_is_refused(world, tmp_path, capsys):
    """The store records its model folder's digest; `score --causal` refuses a folder whose weights were replaced
    (before: the causal rate changed silently), and runs on the intact one. A copy of the world's store is pointed at
    a copy of its model, which is then given another model's weights of the same shape and size."""
    import shutil

    import zarr

    from actstore.cli.checks import check
    from actstore.cli.main import main
    from actstore.run.runner import ScoreCommandConfig
    from actstore.extract.synthetic import write_synthetic_model

    model, store = tmp_path / "model", tmp_path / "s.zarr"
    shutil.copytree(world["model_dir"], model)
    shutil.copytree(world["store"], store)
    root = zarr.open_group(store, mode="r+")
    extra = dict(root.attrs["extra"])
    extra["provenance"] = {**extra["provenance"], "location": str(model), "given": str(model)}
    root.attrs.update({"model": str(model), "extra": extra})
    argv = ["score", str(store), "--saes", str(world["decoy"]), "--out", str(tmp_path / "r"), "--local", "--causal",
            "--causal-samples", "2", "--bootstrap", "0"]
    check("score", ScoreCommandConfig(store=str(store), saes=[str(world["decoy"])], out=str(tmp_path / "r"),
                                      local=True, causal=True))  # the intact copy passes
    (model / "README.md").write_text("a model card")  # documents and hidden files change no number
    (model / ".gitattributes").write_text("*.safetensors filter=lfs")
    check("score", ScoreCommandConfig(store=str(store), saes=[str(world["decoy"])], out=str(tmp_path / "r"),
                                      local=True, causal=True))

    other = write_synthetic_model(tmp_path / "other", n_layers=2, seed=1, spelling=True, n_per_letter=20)
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    shutil.copyfile(other / "model.safetensors", weights)
    assert weights.stat().st_size == size
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"the model folder {model} is not the one the store" in err[0], err
    assert "(its files' sha256 differs: model.safetensors changed)" in err[0], err
    assert not (tmp_path / "r" / "parts").exists() or not any((tmp_path / "r" / "parts").iterdir())
