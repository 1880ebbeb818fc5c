"""The five architectures sae-lens trains (standard ReLU+L1, TopK, BatchTopK, JumpReLU, Matryoshka BatchTopK), each
trained a few steps with sae-lens's own trainer on its synthetic data (`train_toy_sae`), loaded from the live
training object, from its `save_inference_model` folder and from its `save_model` folder, against sae-lens's own
inference encoder as the reference. Thresholds are then set by hand to cut about half of the positive
pre-activations, so every threshold decides something. sae-lens is imported once per test process (about 15 s in a
fresh one); the tests themselves take about 5 s."""

from __future__ import annotations

import pytest
import torch

from actstore.saes.loading import SAEError, from_sae_lens, load_sae_lens_dir

ARCHS = ["standard", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk"]
ENCODER = {"standard": "relu", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu",
           "matryoshka_batchtopk": "jumprelu"}
HOOK = "blocks.2.hook_resid_post"
FIELDS = ("w_enc", "b_enc", "w_dec", "b_dec", "threshold")


@pytest.fixture(scope="module")
def world():
    """A tiny sae-lens synthetic world (24 features in 16 dims) and 300 rows of it, plus noise."""
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary

    torch.manual_seed(0)
    features = FeatureDictionary(24, 16, seed=0)
    generator = ActivationGenerator(24, 0.15)
    with torch.no_grad():
        x = features(generator.sample(300)) + 0.05 * torch.randn(300, 16)
    return features, generator, x


def make(arch: str):
    from sae_lens.saes import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUTrainingSAE,
                               JumpReLUTrainingSAEConfig, MatryoshkaBatchTopKTrainingSAE,
                               MatryoshkaBatchTopKTrainingSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig,
                               TopKTrainingSAE, TopKTrainingSAEConfig)
    from sae_lens.saes.sae import SAEMetadata

    common = dict(d_in=16, d_sae=32, metadata=SAEMetadata(hook_name=HOOK))
    return {"standard": lambda: StandardTrainingSAE(StandardTrainingSAEConfig(**common, l1_coefficient=1e-3)),
            "topk": lambda: TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=4)),
            "batchtopk": lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, k=4)),
            "jumprelu": lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common)),
            "matryoshka_batchtopk": lambda: MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
                **common, k=4, matryoshka_widths=[8, 32]))}[arch]()


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """arch -> (training SAE, its save_inference_model folder, its save_model folder)."""
    from sae_lens.synthetic import train_toy_sae

    features, generator, x = world
    out = {}
    for arch in ARCHS:
        torch.manual_seed(1)
        sae = make(arch)
        train_toy_sae(sae, features, generator, training_samples=640, batch_size=64, lr=3e-3)
        with torch.no_grad():
            pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
            if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
                pre = pre * sae.W_dec.norm(dim=-1)
            positive = pre[pre > 0].sort().values  # about half of them fall below the threshold, none at it
            cut = (positive[len(positive) // 2] + positive[len(positive) // 2 + 1]) / 2
            if hasattr(sae, "topk_threshold"):
                sae.topk_threshold.fill_(cut.item())
            elif arch == "jumprelu":
                sae.threshold.copy_(cut * torch.rand(32, generator=torch.Generator().manual_seed(2)) * 2)
        folder = tmp_path_factory.mktemp(arch)
        sae.save_inference_model(folder / "inference")
        sae.save_model(folder / "training")
        out[arch] = sae, folder / "inference", folder / "training"
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_encodes_as_sae_lens_does_from_object_and_both_folders(world, trained, arch):
    from sae_lens import SAE

    x = world[2]
    sae, inference, training = trained[arch]
    reference = SAE.load_from_disk(str(inference))  # sae-lens's own inference SAE: JumpReLUSAE for BatchTopK
    theirs = reference.encode(x).detach()
    fires = theirs > 0
    assert 0.02 < fires.float().mean() < 0.9
    loaded = {"object": from_sae_lens(sae, "s"), "inference": load_sae_lens_dir(inference),
              "training": load_sae_lens_dir(training)}
    for how, ours in loaded.items():
        assert (ours.architecture, ours.source_architecture) == (ENCODER[arch], arch), how
        assert (ours.layer, ours.hook, ours.apply_b_dec_to_input) == (2, "resid_post", True), how
        assert ours.k == (4 if arch == "topk" else None), how
        encoded = ours.encode(x)
        torch.testing.assert_close(encoded, theirs, rtol=1e-6, atol=1e-6, msg=how)
        assert torch.equal(encoded > 0, fires), how  # every firing decision is sae-lens's
    if arch in ("standard", "topk", "jumprelu"):  # a TopK or ReLU training SAE encodes row by row: the same again
        torch.testing.assert_close(loaded["object"].encode(x), sae.encode(x).detach(), rtol=1e-6, atol=1e-6)
    if ENCODER[arch] == "jumprelu":
        pre = (x - sae.b_dec.detach()) @ loaded["object"].w_enc + loaded["object"].b_enc
        assert ((pre > 0) & ~fires).any()  # the thresholds silence some positive pre-activations
    if arch in ("batchtopk", "matryoshka_batchtopk"):  # one threshold, sae-lens's float64 buffer in float32
        expected = torch.full((32,), float(sae.topk_threshold), dtype=torch.float32)
        assert torch.equal(loaded["object"].threshold, expected) and float(sae.topk_threshold) > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_the_object_and_its_saved_folders_load_to_the_same_weights(trained, arch):
    """Bit for bit, except TopK's inference folder: sae-lens saves its rescale_acts_by_decoder_norm weights
    folded and keeps the flag, so they are folded once more by norms of 1 within rounding (sae-lens's own encode
    multiplies by the same norms)."""
    sae, inference, training = trained[arch]
    ours = from_sae_lens(sae, "s")
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk"):  # rescale_acts_by_decoder_norm, folded
        torch.testing.assert_close(ours.w_dec.norm(dim=1), torch.ones(32), rtol=0, atol=1e-6)
        assert not torch.allclose(sae.W_dec.detach().norm(dim=1), torch.ones(32), atol=1e-2)  # it was not before
    for folder in (inference, training):
        other = load_sae_lens_dir(folder)
        for name in FIELDS:
            a, b = getattr(ours, name), getattr(other, name)
            assert (a is None) == (b is None), name
            if a is None:
                continue
            if arch == "topk" and folder == inference:
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
            else:
                assert torch.equal(a, b), (folder.name, name)


needs_kernel = pytest.mark.skipif(not (torch.cuda.is_available() or __import__("os").environ.get("TRITON_INTERPRET")
                                       == "1"), reason="needs CUDA or TRITON_INTERPRET=1")


@needs_kernel
@pytest.mark.parametrize("arch", ["standard", "batchtopk", "jumprelu", "matryoshka_batchtopk"])
def test_thresholded_saes_take_the_fused_kernel_and_it_encodes_as_torch(world, trained, arch):
    """Every thresholded sae-lens SAE (b_dec subtracted from the input) through the Triton kernel (the interpreter
    on CPU, fp32) gives the torch encoder's lists; TopK stays on the torch encoder."""
    from actstore.score.encode import decoder_scale, encode_sparse, encode_sparse_fused, pick_backend

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sae = from_sae_lens(trained[arch][0], "s", device=device)
    x = world[2].to(device)
    assert sae.apply_b_dec_to_input and (sae.b_dec != 0).any()
    ref = encode_sparse(x, sae, decoder_scale(sae))
    fused = encode_sparse_fused(x, sae, decoder_scale(sae), token_chunk=128)  # 3 launches, the last partial
    assert torch.equal(fused.offsets, ref.offsets) and torch.equal(fused.index, ref.index)
    torch.testing.assert_close(fused.value, ref.value, rtol=0, atol=1e-5)
    assert fused.near == 0 and int(ref.offsets[-1]) > 0
    cuda = sae if device == "cuda" else None
    if cuda is not None:
        assert pick_backend("auto", cuda) == "triton"
    assert pick_backend("auto", from_sae_lens(trained["topk"][0], "t", device=device)) == "torch"


def test_unsupported_classes_normalizations_and_folders_say_what_is_expected(trained, tmp_path):
    from sae_lens.saes import GatedSAE, GatedSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig

    gated = GatedSAE(GatedSAEConfig(d_in=16, d_sae=32))
    with pytest.raises(SAEError, match=r"SAE g: sae-lens class GatedSAE is not supported; supported: StandardSAE, "
                                       r".*MatryoshkaBatchTopKTrainingSAE"):
        from_sae_lens(gated, "g")
    gated.save_model(tmp_path / "gated")  # a folder sae-lens loads, of a class actstore does not encode
    with pytest.raises(SAEError, match=r"SAE gated: sae-lens class GatedSAE is not supported"):
        load_sae_lens_dir(tmp_path / "gated")
    for norm, why in (("layer_norm", "by that row's own statistics"),
                      ("expected_average_only_in", r"fold_activation_norm_scaling_factor\(factor\)")):
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=16, d_sae=32, k=4, normalize_activations=norm))
        with pytest.raises(SAEError, match=rf"SAE n: normalize_activations is '{norm}'; expected 'none' .*{why}"):
            from_sae_lens(sae, "n")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "sae_weights.safetensors").write_bytes((trained["jumprelu"][1] / "sae_weights.safetensors").read_bytes())
    with pytest.raises(SAEError, match=r"bare: has no cfg.json; expected a folder written by sae-lens's save_model"):
        load_sae_lens_dir(bare)
    (bare / "cfg.json").write_text('{"architecture": "nonesuch", "d_in": 16, "d_sae": 32}')
    with pytest.raises(SAEError, match=r"architecture 'nonesuch', which sae-lens does not know \(it knows \[.*'batchtopk'"):
        load_sae_lens_dir(bare)
    (bare / "cfg.json").write_text("{not json")
    with pytest.raises(SAEError, match=r"cfg.json cannot be read as JSON"):
        load_sae_lens_dir(bare)


def test_score_finds_both_kinds_of_saved_folder_and_a_folder_of_them(trained, tmp_path):
    """`actstore score --saes FOLDER` with a save_inference_model folder and a save_model folder of a training SAE:
    each is one SAE, loaded as sae-lens's inference SAE encodes; their parent folder names both."""
    from actstore.errors import MissingFile
    from actstore.run.sources import resolve_saes

    _, inference, training = trained["matryoshka_batchtopk"]
    sources = resolve_saes([str(inference), str(training)])
    assert [s.name for s in sources] == ["inference", "training"]
    assert [s.key for s in resolve_saes([str(inference.parent)])] == [s.key for s in sources]
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(MissingFile, match=r"holds no params.npz files and no saved sae-lens folders \(it has "
                                          r"sae_weights.safetensors but no cfg.json"):
        resolve_saes([str(bare)])
    a, b = (s.load(16, "cpu", torch.float32) for s in sources)
    assert a.source_architecture == b.source_architecture == "matryoshka_batchtopk"
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)
    with pytest.raises(SAEError, match=r"reads d_model 16, the store holds d_model 8"):
        sources[0].load(8, "cpu", torch.float32)
