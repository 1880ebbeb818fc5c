"""The command line, the demo, the README's promises and the package layout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import storeworld
from actstore.cli.main import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "store.zarr"
    storeworld.build(path).close()
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_describes_a_complete_store(capsys, world):
    code, out, _ = run_cli(capsys, "info", str(world), "--json")
    info = json.loads(out)
    assert code == 0
    assert info["format_version"] == 1 and info["model"] == "world/tiny"
    assert info["layers"] == [0, 3, 7] and info["d_model"] == 1024 and info["dtype"] == "bfloat16"
    assert info["groups"] == {"vocab": storeworld.ROWS} and info["complete"] is True
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(world) for f in files)
    assert info["bytes_on_disk"] == on_disk
    # bf16 activations dominate: 3 layers x rows x 1024 x 2 bytes, plus chunk checksums and metadata.
    assert 3 * storeworld.ROWS * 1024 * 2 < on_disk < 3 * 12 * 1024 * 1024 * 2 * 1.01


def test_info_reports_an_incomplete_store_instead_of_failing(capsys, tmp_path):
    path = tmp_path / "s.zarr"
    storeworld.build(path, shards=[0, 1]).close()
    code, out, _ = run_cli(capsys, "info", str(path), "--json")
    info = json.loads(out)
    assert code == 0 and info["complete"] is False
    assert info["missing_shards"]["vocab/layer_03"] == 10 and len(info["missing_shards"]) == 8
    code, out, _ = run_cli(capsys, "info", str(path))
    assert "NO: 80 shards missing" in out


def test_verify_exit_codes_and_report(capsys, tmp_path, world):
    assert run_cli(capsys, "verify", str(world))[0] == 0
    path = tmp_path / "s.zarr"
    storeworld.build(path).close()
    shard = path / "vocab" / "layer_07" / "c" / "5" / "0"
    data = bytearray(shard.read_bytes())
    data[123] ^= 1
    shard.write_bytes(bytes(data))
    code, out, _ = run_cli(capsys, "verify", str(path))
    assert code == 1
    assert re.search(r"corrupt\s+vocab/layer_07 shard 5 \(rows 5120-6143\)", out)
    code, out, _ = run_cli(capsys, "verify", str(path), "--json")
    assert [(p["array"], p["shard"], p["kind"]) for p in json.loads(out)] == [("vocab/layer_07", 5, "corrupt")]


def test_errors_are_one_clear_line_and_exit_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", str(tmp_path))
    assert code == 2 and err.strip() == f"actstore info: error: {tmp_path} is not an actstore store: " \
                                        "it has no zarr.json (not a Zarr v3 group)"


@pytest.mark.slow
def test_demo_runs_checks_itself_and_resumes(capsys, tmp_path, ray_session):
    code, out, _ = run_cli(capsys, "demo", "--out", str(tmp_path / "demo"))
    assert code == 0, out
    assert "2110 vocabulary prompts and 8192 context tokens; computed 10302 rows" in out
    assert "checksum: ok" in out and "ground-truth probes saved in the store" in out
    layer0 = float(out.split("mean test F1 by layer: 0: ")[1].split(",")[0])
    assert layer0 >= 0.9
    assert "6. scored: 4 SAEs (4 computed now)" in out and "planted vs measured" in out and "all within" in out
    assert out.count("split classes: ") == 4 + 3 and "MISS" not in out
    # 10: the second task, a user's label file (vowel or consonant), beside the first in the same results folder
    assert "10. second task labels:vowels (2110 tokens labeled" in out and "labels:vowels: planted vs measured" in out
    assert out.count("all within") == 2 and out.count("all listed with their planted absorbers") == 2
    # the explorer lists exactly the planted absorbed tokens, each with its planted absorber (demo.py checks the
    # data files against truth.json; tests/test_explorer.py drives the page itself)
    assert "results/report/report.html" in out and "all listed with their planted absorbers" in out
    assert (tmp_path / "demo" / "results" / "explorer" / "index.html").exists()
    code, out, _ = run_cli(capsys, "demo", "--out", str(tmp_path / "demo"))
    assert code == 0 and "computed 0 rows" in out and "(resumed)" in out
    assert "4 already in" in out and "3 already in" in out and out.count("all within") == 2


@pytest.mark.slow
def test_the_real_model_demo_runs_its_whole_chain_on_a_model_folder(synth_model, tmp_path, monkeypatch, capsys,
                                                                     ray_session):
    """`make real-demo`'s chain (`actstore.cli.realdemo`) with the synthetic model in place of the fetched
    GGUF: extract, verify, probe F1 per layer, synthetic SAEs, score, planted against measured, report."""
    from actstore.cli import realdemo

    monkeypatch.setattr(realdemo, "fetch", lambda name: synth_model)
    code = realdemo.main(["demo", "smollm2", "--out", str(tmp_path / "real"), "--layers", "0",
                            "--tasks", "first_letter"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2110 vocabulary prompts (0 dropped); computed 2110 rows" in out and "checksum: ok" in out
    f1 = {int(l): float(v) for l, v in re.findall(r"layer (\d): mean test F1 (\d\.\d+), \d+ of 26 classes pass", out)}
    assert list(f1) == [0] and f1[0] >= 0.9
    assert "4 synthetic SAEs on layer" in out and "all within" in out and "MISS" not in out
    assert (tmp_path / "real" / "results" / "report" / "report.html").exists()


def test_readme_names_only_commands_that_exist():
    readme = (ROOT / "README.md").read_text()
    code = "\n".join(re.findall(r"^```[a-z]*\n(.*?)^```", readme, flags=re.M | re.S))
    named = set(re.findall(r"^actstore ([a-z-]+)", code, flags=re.M))
    assert named, "the README shows no actstore command"
    assert named <= set(COMMANDS), f"README names commands that do not exist: {named - set(COMMANDS)}"
    for command in COMMANDS:
        assert f"actstore {command}" in readme, f"README does not document `actstore {command}`"


def test_core_imports_without_ray_transformers_or_sae_lens(tmp_path):
    code = ("import sys, actstore.store.zarrstore, actstore.score.metrics, actstore.saes.loading, actstore.score.probes, actstore.kernels, "
            "actstore.cli.main; "
            "print(sorted(m for m in ('ray', 'transformers', 'sae_lens') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_synth_model_writes_a_loadable_hugging_face_directory(capsys, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    code, out, _ = run_cli(capsys, "synth-model", "--out", str(tmp_path / "m"), "--layers", "2", "--seed", "3")
    assert code == 0 and "2-layer synthetic Gemma2" in out
    config = AutoConfig.from_pretrained(tmp_path / "m")
    assert config.model_type == "gemma2" and config.num_hidden_layers == 2
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert tokenizer.convert_ids_to_tokens(tokenizer(" has")["input_ids"]) == ["<bos>", "\u2581has"]


def test_extract_cli_reports_an_unreachable_model_clearly(tmp_path, capsys, hub_offline):
    code, _, err = run_cli(capsys, "extract", "--model", "google/gemma-2-2b", "--out", str(tmp_path / "s.zarr"))
    assert code == 2
    assert err.startswith("actstore extract: error: could not load model 'google/gemma-2-2b'")
    assert "pass its directory as --model" in err and "Traceback" not in err
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("bug", [KeyError("n_layers"), TypeError("unsupported operand type(s) for +: 'int' and 'str'"),
                                 ValueError("too many values to unpack (expected 2)"), ZeroDivisionError("division by zero")])
def test_a_bug_is_an_internal_error_with_a_log_never_the_users_bad_input(capsys, world, tmp_path, monkeypatch, bug):
    """Only the input checks' errors (InputError) are exit 2; a KeyError, TypeError or ValueError from a bug in our
    code is exit 1 with one line naming a log file that holds the traceback."""
    import actstore.cli.main as cli

    def buggy(cfg):
        raise bug

    monkeypatch.setenv("ACTSTORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(cli.COMMANDS, "info", (cli.InfoConfig, buggy))
    code, out, err = run_cli(capsys, "info", str(world))
    assert code == 1 and out == ""
    (line,) = err.strip().splitlines()
    match = re.fullmatch(r"actstore info: internal error \(a bug in actstore, not in your input\): (\w+): (.+); "
                         r"the traceback is in (\S+); please report it with that file", line)
    assert match, line
    assert match[1] == type(bug).__name__ and match[2] == str(bug)
    log = Path(match[3])
    assert log.parent == tmp_path / "cache" / "logs"
    text = log.read_text()
    assert f"command: actstore info {world}" in text and "Traceback (most recent call last)" in text
    assert "in buggy" in text and f"{type(bug).__name__}: " in text


def test_the_input_checks_errors_are_exit_2_and_a_worker_failure_is_exit_1(capsys, world, tmp_path, monkeypatch):
    from actstore.errors import RunFailed

    code, _, err = run_cli(capsys, "probe", str(world), "--layers", "5")  # deep in the command: still an input check
    assert code == 2 and re.fullmatch(r"actstore probe: error: \S+ has layers \[0, 3, 7\]; --layers 5 asks for \[5\]",
                                      err.strip()), err
    import actstore.cli.main as cli

    def worker_failed(cfg):
        raise RunFailed("a model worker could not start: RuntimeError: CUDA out of memory", "Traceback (remote)\n")

    monkeypatch.setenv("ACTSTORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(cli.COMMANDS, "info", (cli.InfoConfig, worker_failed))
    code, _, err = run_cli(capsys, "info", str(world))
    match = re.fullmatch(r"actstore info: error: a model worker could not start: RuntimeError: CUDA out of memory "
                         r"\(the worker's traceback is in (\S+)\)", err.strip())
    assert code == 1 and match, err
    assert Path(match[1]).read_text().endswith("the worker's traceback:\nTraceback (remote)\n")


def test_contexts_that_are_not_utf8_text_or_whose_text_is_not_a_string_are_bad_input(tmp_path):
    from actstore.extract.contexts import read_documents
    from actstore.errors import InputError

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait\n".encode("latin-1"))
    with pytest.raises(InputError, match=rf"^{re.escape(str(latin1))} is not UTF-8 text \(invalid continuation byte "
                                         r"at byte 3\); expected UTF-8"):
        list(read_documents(str(latin1)))
    numbers = tmp_path / "n.jsonl"
    numbers.write_text('{"text": "fine"}\n{"text": 5}\n')
    with pytest.raises(InputError, match=rf"^{re.escape(str(numbers))}:2: 'text' is a int; expected a string$"):
        list(read_documents(str(numbers)))


def test_the_fused_backend_without_cuda_is_refused_before_any_work(capsys, world, tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, _, err = run_cli(capsys, "score", str(world), "--saes", str(tmp_path), "--out", str(tmp_path / "r"),
                           "--backend", "triton", "--device", "cpu")
    assert code == 2 and err.strip() == ("actstore score: error: --backend triton: the fused kernel runs on CUDA, and "
                                         "--device is cpu; use --backend torch (or auto) here"), err
    assert not (tmp_path / "r").exists()


def test_damaged_array_metadata_and_a_marker_that_is_not_an_object_are_named_not_internal_errors(capsys, tmp_path):
    store = tmp_path / "s.zarr"
    storeworld.build(store).close()
    meta = store / "vocab" / "layer_00" / "zarr.json"
    meta.write_text("{broken")
    (marker,) = sorted((store / "vocab" / "layer_03" / "_manifest").glob("*.json"))[-1:]
    original = marker.read_text()
    marker.write_text("[]")  # valid JSON, not a marker: that shard counts as unfinished
    code, out, _ = run_cli(capsys, "verify", str(store))
    assert code == 1
    assert out.splitlines()[0] == (f"structure  vocab/layer_00: its metadata file {meta} is damaged ("
                                   f"Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); "
                                   f"restore it from a copy, or make the store again")
    assert re.search(rf"incomplete vocab/layer_03 shard {int(marker.stem)} .*never finished", out), out
    marker.write_text(original)
    code, _, err = run_cli(capsys, "probe", str(tmp_path / "s.zarr"))
    assert code == 2 and f"its metadata file {meta} is damaged" in err, err


def test_score_options_renamed_to_classes_keep_their_old_spellings_hidden(capsys):
    """--min-classes and --causal-answer-tokens (and --task) are in the help; --min-letters and
    --causal-letter-tokens, their spellings before tasks, still parse into the same fields and are not shown."""
    import argparse

    from actstore.cli.main import build_parser
    from actstore.tasks.registry import task_names

    parser = build_parser()
    old = parser.parse_args(["score", "S", "--out", "O", "--min-letters", "7", "--causal-letter-tokens", "paper"])
    new = parser.parse_args(["score", "S", "--out", "O", "--min-classes", "7", "--causal-answer-tokens", "paper"])
    assert (old.min_classes, old.causal_answer_tokens) == (new.min_classes, new.causal_answer_tokens) == (7, "paper")
    default = parser.parse_args(["score", "S", "--out", "O"])
    assert (default.min_classes, default.causal_answer_tokens, default.task) == (2, "prompt", "first_letter")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["score"]
    text = sub.format_help()
    assert "--min-classes" in text and "--causal-answer-tokens" in text and "--task" in text
    assert "--min-letters" not in text and "--causal-letter-tokens" not in text
    assert all(name in " ".join(text.split()) for name in task_names())  # the task choices come from the registry


def test_typed_choices_and_the_task_are_checked_in_one_place_before_any_work(capsys, world, tmp_path):
    from actstore.cli.checks import BadArgument, choices
    from actstore.run.runner import ScoreCommandConfig

    for flag, value, expected in (("--backend", "cuda-magic", "expected one of auto, torch, triton"),
                                  ("--metric-version", "1.0", "expected one of saebench-0.3, saebench-0.6"),
                                  ("--null-kinds", "zero", "expected one of random_decoder, shuffled_firing"),
                                  ("--causal-letter-tokens", "mine", "expected one of paper, prompt")):
        code, _, err = run_cli(capsys, "score", str(world), "--saes", str(tmp_path), "--out", str(tmp_path / "r"),
                               flag, value)
        assert code == 2 and err.count("\n") == 1 and f"{value!r}: {expected}" in err, err
    code, _, err = run_cli(capsys, "score", str(world), "--saes", str(tmp_path), "--out", str(tmp_path / "r"),
                           "--task", "second_letter")
    assert code == 2 and "'second_letter': not a task; choose one of first_letter" in err, err
    assert not (tmp_path / "r").exists()
    with pytest.raises(BadArgument, match="--l1-solver 'fast': expected one of converged, saebench"):
        choices(ScoreCommandConfig("s", "o", l1_solver="fast"))


def test_score_command_config_derives_the_scorers_constants():
    """ScoreCommandConfig copies none of ScoreConfig's defaults: its scorer options take them from there, and
    score_config() gathers them (with --null and --causal*) into the ScoreConfig the workers score with."""
    import dataclasses

    from actstore.run.runner import ScoreCommandConfig
    from actstore.score.causal import CausalConfig
    from actstore.score.config import ScoreConfig

    assert ScoreCommandConfig("s", "o").score_config() == ScoreConfig()
    cfg = ScoreCommandConfig("s", "o", min_probe_f1=0.5, seeds=3, min_classes=4, null=True, causal=True,
                             causal_samples=9, causal_answer_tokens="paper")
    derived = cfg.score_config()
    assert derived.causal == CausalConfig(samples=9, answer_tokens="paper")
    assert derived == dataclasses.replace(ScoreConfig(), min_probe_f1=0.5, seeds=3, min_classes=4, causal=derived.causal,
                                          nulls=("random_decoder", "shuffled_firing"))
