"""SAE sources: the Gemma Scope catalog, params.npz files, local folders, sae-lens objects; bad files."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch

from actstore.cli.main import main
from actstore.saes.loading import (SAEError, SAEWeights, from_sae_lens, gemma_scope_catalog, layer_and_l0_from_id,
                                   load_params_npz, load_sae_lens_dir, local_saes, parse_width)


def test_gemma_scope_catalog_matches_the_release():
    """DESIGN.md's facts: 316 SAEs; 16k and 65k at all 26 layers (135 each); 32k/131k/262k/524k at layer 12
    (6 each); 1m at layers 5, 12, 19 (6 each); 4 embedding SAEs."""
    entries = gemma_scope_catalog()
    assert len(entries) == 316
    widths = collections.Counter(e.width for e in entries)
    assert widths == {16384: 135, 65536: 135, 32768: 6, 131072: 6, 262144: 6, 524288: 6, 1048576: 18, 4096: 4}
    assert {e.layer for e in entries if e.width == 16384} == set(range(26))
    assert {e.layer for e in entries if e.width == 1048576} == {5, 12, 19}
    assert {e.layer for e in entries if e.width in (32768, 131072, 262144, 524288)} == {12}
    assert [e.layer for e in entries if e.width == 4096] == [None] * 4
    one = [e for e in entries if e.id == "layer_12/width_16k/average_l0_82"][0]
    assert one.layer == 12 and one.l0 == 82 and one.repo_id == "google/gemma-scope-2b-pt-res"
    assert len(gemma_scope_catalog(layer=12, width=parse_width("16k"))) == 5


def test_saes_list_cli(capsys):
    assert main(["saes", "list", "--layer", "5", "--width", "1m", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 6 and all(e["layer"] == 5 and e["width"] == 2 ** 20 for e in listed)
    assert main(["saes", "list", "--release", "gemma-scope-9b-nope"]) == 2
    assert "unknown release 'gemma-scope-9b-nope'" in capsys.readouterr().err


@pytest.mark.parametrize("text,width", [("16k", 16384), ("32k", 32768), ("65k", 65536), ("131k", 131072),
                                        ("262k", 262144), ("524k", 524288), ("1m", 1048576), ("4k", 4096),
                                        ("300", 300)])
def test_parse_width(text, width):
    assert parse_width(text) == width


def write_params(path, d=12, m=20, seed=0, **override):
    rng = np.random.default_rng(seed)
    arrays = {"W_enc": rng.normal(size=(d, m)), "W_dec": rng.normal(size=(m, d)), "b_enc": rng.normal(size=m),
              "b_dec": rng.normal(size=d), "threshold": rng.random(m)}
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def test_params_npz_loads_and_encodes_as_jumprelu(tmp_path):
    arrays = write_params(tmp_path / "layer_3/width_16k/average_l0_7/params.npz")
    [(sae_id, path)] = local_saes(tmp_path)
    assert sae_id == "layer_3/width_16k/average_l0_7" and layer_and_l0_from_id(sae_id) == (3, 7.0)
    sae = load_params_npz(path, sae_id, *layer_and_l0_from_id(sae_id), d_model=12)
    assert (sae.width, sae.d_model, sae.layer, sae.l0, sae.architecture) == (20, 12, 3, 7.0, "jumprelu")
    assert np.array_equal(sae.w_dec.numpy(), arrays["W_dec"])
    x = torch.randn(9, 12)
    pre = x @ torch.from_numpy(arrays["W_enc"]) + torch.from_numpy(arrays["b_enc"])  # b_dec not subtracted
    expected = pre * (pre > torch.from_numpy(arrays["threshold"]))  # thresholds >= 0 here
    torch.testing.assert_close(sae.encode(x), expected, rtol=0, atol=0)
    half = load_params_npz(path, sae_id, dtype=torch.bfloat16)
    assert half.w_enc.dtype == torch.bfloat16


@pytest.mark.parametrize("override,match", [
    ({"threshold": None}, r"lacks \['threshold'\]"),
    ({"W_dec": np.zeros((20, 11), np.float32)}, "inconsistent shapes.*W_dec"),
    ({"b_enc": np.zeros(19, np.float32)}, "inconsistent shapes.*b_enc"),
    ({"W_enc": np.full((12, 20), np.nan, np.float32)}, r"NaN or inf in \['W_enc'\]"),
    ({"b_dec": np.array([np.inf] * 12, np.float32)}, r"NaN or inf in \['b_dec'\]"),
])
def test_bad_params_files_name_the_sae(tmp_path, override, match):
    path = tmp_path / "bad/params.npz"
    write_params(path, **override)
    with pytest.raises(SAEError, match=f"SAE bad: .*{match}"):
        load_params_npz(path, "bad")


def test_wrong_model_and_unreadable_files(tmp_path):
    write_params(tmp_path / "a/params.npz")
    with pytest.raises(SAEError, match="reads d_model 12, the store holds d_model 2304"):
        load_params_npz(tmp_path / "a/params.npz", "a", d_model=2304)
    (tmp_path / "b").mkdir()
    (tmp_path / "b/params.npz").write_bytes(b"not a zip")
    with pytest.raises(SAEError, match=r"SAE b: .*params.npz is not a zip archive .*expected Gemma Scope.s params.npz"):
        load_params_npz(tmp_path / "b/params.npz", "b")


@pytest.mark.parametrize("kind", ["jumprelu", "standard", "topk"])
def test_sae_lens_objects_and_saved_directories_encode_as_sae_lens_does(tmp_path, kind):
    from sae_lens import (JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE,
                          TopKSAEConfig)

    torch.manual_seed(0)
    cls, config = {"jumprelu": (JumpReLUSAE, JumpReLUSAEConfig(d_in=16, d_sae=40)),
                   "standard": (StandardSAE, StandardSAEConfig(d_in=16, d_sae=40)),
                   "topk": (TopKSAE, TopKSAEConfig(d_in=16, d_sae=40, k=5))}[kind]
    sae = cls(config)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(30, 16)
    ours = from_sae_lens(sae, "s")
    assert ours.apply_b_dec_to_input  # sae-lens's default: b_dec is subtracted first
    theirs = sae.encode(x).detach()
    assert (theirs > 0).any()
    torch.testing.assert_close(ours.encode(x), theirs, rtol=1e-6, atol=1e-6)
    sae.save_model(str(tmp_path / "saved"))
    torch.testing.assert_close(load_sae_lens_dir(tmp_path / "saved").encode(x), theirs, rtol=1e-6, atol=1e-6)
    if kind == "topk":
        assert ((ours.encode(x) > 0).sum(dim=1) <= 5).all()


def test_a_catalog_sae_offline_says_how_to_supply_it(hub_offline):
    """Offline with an empty Hugging Face cache: the fallback through sae-lens fails, and the SAEError names the
    SAE and where to put its params.npz. In this process (conftest's hub_offline), where sae-lens is imported
    once for the whole suite: a fresh process spent 15 of its 17 s importing it."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    from actstore.saes.loading import load_catalog_entry

    entry = [e for e in gemma_scope_catalog(layer=12) if e.id == "layer_12/width_16k/average_l0_82"][0]
    with pytest.raises(SAEError) as raised:
        load_catalog_entry(entry)
    message = str(raised.value)
    assert message.startswith("SAE gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82 is not in the Hugging Face")
    assert "layer_12/width_16k/average_l0_82/params.npz" in message.split("Supply it locally")[1]
    causes, err = [], raised.value
    while err is not None:
        causes.append(type(err))
        err = err.__cause__ or err.__context__
    assert OfflineModeIsEnabled in causes  # it was offline: huggingface_hub refused the request, none was sent


def test_a_catalog_sae_in_the_hugging_face_cache_loads_from_params_npz(tmp_path, monkeypatch):
    from actstore.saes import loading as saes

    entry = [e for e in gemma_scope_catalog(layer=0) if e.width == 16384][0]
    cached = tmp_path / "params.npz"
    write_params(cached, d=8, m=10)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache",
                        lambda repo, name: str(cached) if (repo, name) == (entry.repo_id, f"{entry.path}/params.npz")
                        else None)
    sae = saes.load_catalog_entry(entry)
    assert (sae.id, sae.layer, sae.l0, sae.width) == (entry.id, 0, entry.l0, 10)


def test_encoder_norms_are_kept_and_never_stale():
    """SAEWeights.enc_norm (the kernel's candidate band rests on it) equals float64 column norms, is computed
    once, and follows W_enc when it is replaced, edited in place, restricted or copied with other weights."""
    import dataclasses

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=gen)
    sae = SAEWeights("s", w.clone(), torch.zeros(16), torch.randn(16, 8, generator=gen), torch.zeros(8),
                     threshold=torch.zeros(16))
    exact = w.double().norm(dim=0)
    assert torch.allclose(sae.enc_norm.double(), exact, rtol=1e-6, atol=0)
    assert sae.enc_norm is sae.enc_norm  # kept
    sae.w_enc.mul_(2)
    assert torch.allclose(sae.enc_norm.double(), 2 * exact, rtol=1e-6, atol=0)
    sae.w_enc = w * 3
    assert torch.allclose(sae.enc_norm.double(), 3 * exact, rtol=1e-6, atol=0)
    assert torch.allclose(sae.latents(2, 5).enc_norm.double(), 3 * exact[2:5], rtol=1e-6, atol=0)
    assert torch.allclose(dataclasses.replace(sae, w_enc=w).enc_norm.double(), exact, rtol=1e-6, atol=0)
