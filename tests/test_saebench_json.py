"""The SAEBench JSON that `actstore score` writes validates with SAEBench's own pydantic model (a field-for-field copy:
tests/saebench_schema.py), for both metric versions and for JumpReLU, TopK and ReLU SAEs: integers where SAEBench
requires them (prompt_token_pos, llm_batch_size, eval_k_sparse_probe_batch_size), the installed sae-lens's version,
the SAE config as sae-lens writes it, and under saebench-0.3 only v0.3.2's config fields (no F1 filter)."""

from __future__ import annotations

import dataclasses
import json
from importlib.metadata import version
from types import SimpleNamespace

import pytest
from pydantic import TypeAdapter, ValidationError

from saebench_schema import (V032_CONFIG_FIELDS, V060_CONFIG_FIELDS, AbsorptionEvalOutput,
                             AbsorptionEvalOutputV032)

V060 = TypeAdapter(AbsorptionEvalOutput)
V032 = TypeAdapter(AbsorptionEvalOutputV032)
SAE_ID = "layer_0/width_1500/absorption_30"


def planted_cfg(**changes) -> dict:
    """The sae_cfg_dict expected of the planted JumpReLU SAE (d_model 64, 1500 latents, layer 0, float32 on CPU),
    written out by hand from sae-lens 6's SAEConfig.to_dict (sae_lens/saes/sae.py)."""
    cfg = {"d_in": 64, "d_sae": 1500, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": version("sae-lens"), "sae_lens_training_version": None,
                        "model_name": "planted", "hook_name": "blocks.0.hook_resid_post", "hook_head_index": None,
                        "prepend_bos": None},
           "architecture": "jumprelu", "hook_layer": 0, "hook_name": "blocks.0.hook_resid_post"}
    return {**cfg, **changes}


@pytest.fixture(scope="module")
def runs(planted_store, planted_saes, tmp_path_factory):
    """One `actstore score` run of a planted JumpReLU SAE per metric version: version -> its SAEBench JSON."""
    from actstore.run.runner import ScoreCommandConfig, run_score

    sae = next(str(p / "params.npz") for p in planted_saes if p.name == "absorption_30")
    reports = {}
    for metric_version in ("saebench-0.6", "saebench-0.3"):
        out = tmp_path_factory.mktemp(metric_version)
        run_score(ScoreCommandConfig(str(planted_store), str(out), saes=[sae], local=True, bootstrap=0,
                                     metric_version=metric_version), log=lambda *_: None)
        reports[metric_version] = json.loads(next((out / "saebench").glob("*_eval_results.json")).read_text())
    return reports


@pytest.mark.parametrize("metric_version", ["saebench-0.6", "saebench-0.3"])
def test_every_written_json_validates_with_saebench_model_and_holds_the_right_values(runs, metric_version):
    report = runs[metric_version]
    parsed = V060.validate_python(report)
    config = report["eval_config"]
    assert config["prompt_token_pos"] == parsed.eval_config.prompt_token_pos == -6  # the planted store names no
    assert report["eval_result_unstructured"]["actstore"]["prompt_token_pos_source"] == "saebench default"  # tokenizer
    assert config["llm_batch_size"] == 10  # SAEBench's default: the planted store records no extraction batch size
    assert report["sae_lens_version"] == version("sae-lens") and report["sae_lens_version"]
    assert report["sae_lens_id"] == SAE_ID
    assert report["sae_cfg_dict"] == planted_cfg()
    assert [d.first_letter for d in parsed.eval_result_details] == [d["first_letter"] for d in report["eval_result_details"]]
    if metric_version == "saebench-0.6":
        assert tuple(config) == V060_CONFIG_FIELDS
        assert (config["min_GT_probe_f1"], config["min_feats_for_eval"]) == (0.6, 2)
        assert (config["eval_k_sparse_probe_batch_size"], config["precalc_k_sparse_probe_sae_acts"]) == (24, True)
    else:  # v0.3.2's fields only: that version has no F1 filter, and the file claims none
        assert tuple(config) == V032_CONFIG_FIELDS
        V032.validate_python(report)
        assert report["eval_result_unstructured"]["actstore"]["min_classes"] == 2
        assert len(report["eval_result_details"]) == 26  # every letter with probe true positives


@pytest.mark.parametrize("field", ["prompt_token_pos", "eval_k_sparse_probe_batch_size", "llm_batch_size"])
def test_saebench_model_rejects_the_nulls_written_before(runs, field):
    """What actstore wrote before this fix (null in these integer fields) fails SAEBench's validator."""
    report = json.loads(json.dumps(runs["saebench-0.6"]))
    report["eval_config"][field] = None
    with pytest.raises(ValidationError, match=field):
        V060.validate_python(report)


def test_a_topk_json_validates_with_sae_lens_config_fields(planted_store, planted_saes, tmp_path):
    from actstore.run.results import record_result
    from actstore.saes.loading import load_params_npz
    from actstore.score.config import ScoreConfig
    from actstore.score.probes import load_probe
    from actstore.score.scorer import score_sae
    from actstore.store.layers import load_layer
    from actstore.store.zarrstore import ActivationStore

    folder = next(p for p in planted_saes if p.name == "absorption_30")
    sae = load_params_npz(folder / "params.npz", SAE_ID, layer=0)
    sae = dataclasses.replace(sae, architecture="topk", threshold=None, k=40)  # the planted SAE, 40 latents a row
    cfg = ScoreConfig(bootstrap=0, records=False, text_l0_rows=0)
    with ActivationStore.open(planted_store) as store:
        result = score_sae(sae, load_layer(store, 0), load_probe(store, 0), cfg)
        source = SimpleNamespace(key=f"x/{SAE_ID}", release="x", name=SAE_ID, layer=0, width=1500, l0=None,
                                 fingerprint="")
        for folder in ("parts", "saebench"):  # the runner makes them
            (tmp_path / folder).mkdir()
        record_result(tmp_path, source, sae, result, cfg, store.spec)
    report = json.loads(next((tmp_path / "saebench").glob("*.json")).read_text())
    V060.validate_python(report)
    assert report["sae_cfg_dict"] == planted_cfg(architecture="topk", k=40, rescale_acts_by_decoder_norm=False)


def test_sae_cfg_dict_round_trips_through_sae_lens(runs, planted_saes):
    """sae-lens itself reads the written config back (SAEConfig.from_dict) and writes the same fields (to_dict):
    every key but the pre-6 top-level hook_layer and hook_name is one of sae-lens's own. A ReLU SAE is sae-lens's
    `standard`."""
    from sae_lens.saes.sae import SAEConfig
    from sae_lens.saes.topk_sae import TopKSAEConfig

    from actstore.run.results import saebench_sae_cfg
    from actstore.saes.loading import load_params_npz

    folder = next(p for p in planted_saes if p.name == "absorption_30")
    relu = dataclasses.replace(load_params_npz(folder / "params.npz", SAE_ID, layer=0), architecture="relu",
                               threshold=None)
    spec = SimpleNamespace(model="planted", extra={})
    assert saebench_sae_cfg(relu, spec) == planted_cfg(architecture="standard")
    batchtopk = dataclasses.replace(relu, architecture="jumprelu", source_architecture="batchtopk")  # as saved
    batchtopk_cfg = saebench_sae_cfg(batchtopk, spec)  # for inference by sae-lens: a JumpReLU that records its training
    assert batchtopk_cfg == {**planted_cfg(), "metadata": {**planted_cfg()["metadata"], "training_architecture": "batchtopk"}}
    for cfg in (runs["saebench-0.6"]["sae_cfg_dict"], saebench_sae_cfg(relu, spec), batchtopk_cfg,
                planted_cfg(architecture="topk", k=40, rescale_acts_by_decoder_norm=False)):
        ours = {k: v for k, v in cfg.items() if k not in ("hook_layer", "hook_name")}
        assert SAEConfig.from_dict(cfg).to_dict() == ours
    assert set(TopKSAEConfig(d_in=64, d_sae=1500).to_dict()) == set(ours)


def test_prompt_token_pos_comes_from_the_store_its_tokenizer_or_saebench_default(synth_model, tmp_path):
    """The query's index from the prompt's end: recorded by the store, else counted with the store's tokenizer (the
    synthetic word-level one: " has the first letter:" is 5 tokens after the word, so -6; a 2-token tail, -3), else
    SAEBench's -6 (a tokenizer that is not there)."""
    from actstore.run.results import prompt_token_pos

    def spec(template="{word} has the first letter:", location=str(synth_model), **extra):
        prov = {"given": location, "location": location, "kind": "folder"}
        return SimpleNamespace(prompt_template=template, extra={"provenance": prov, "bos": {"token_id": 2}, **extra})

    assert prompt_token_pos(spec()) == (-6, "tokenizer")
    assert prompt_token_pos(spec("{word} answers:")) == (-3, "tokenizer")
    assert prompt_token_pos(spec(prompt_token_pos=-9)) == (-9, "store")
    assert prompt_token_pos(spec("{word} answers:", location=str(tmp_path / "gone"))) == (-6, "saebench default")
    assert prompt_token_pos(SimpleNamespace(prompt_template="", extra={})) == (-6, "saebench default")
