"""sae-lens SAEs as SAEWeights: inference objects, training objects right after training, and the folders
sae-lens writes with `save_model` (an inference or a training SAE) and `save_inference_model`.

    from_sae_lens(sae, sae_id) -> SAEWeights        load_sae_lens_dir(path) -> SAEWeights

What each sae-lens class becomes (`SAEWeights.architecture` is the encoder, `source_architecture` the name sae-lens
trained it under, from the class or from `cfg.metadata.training_architecture`):

    sae-lens class                              encoder    weights and threshold
    StandardSAE, StandardTrainingSAE            relu       as they are (ReLU + L1 training)
    TopKSAE, TopKTrainingSAE                    topk       rescale_acts_by_decoder_norm folded (below); k from cfg
    JumpReLUSAE, JumpReLUTrainingSAE            jumprelu   threshold (exp(log_threshold) for an older object)
    BatchTopKTrainingSAE,                       jumprelu   threshold = the learned topk_threshold for every
    MatryoshkaBatchTopKTrainingSAE                         latent, rescale folded: what save_inference_model writes

BatchTopK and Matryoshka BatchTopK have no inference class: trained, they choose a batch's top k*N values, which
depends on the batch; sae-lens saves them for inference as JumpReLU SAEs with one threshold, and this does the same,
so an object and its saved inference folder load to identical weights.

rescale_acts_by_decoder_norm (TopK, BatchTopK; sae-lens's training default): pre = (x @ W_enc + b_enc) * |W_dec|
and decoding uses W_dec / |W_dec|. Folded exactly as sae-lens's save_inference_model does (n = |W_dec| clamped at
1e-8): W_enc * n, b_enc * n, W_dec / n; the encoder then gives the same activations with unit decoder rows. A
saved TopK inference folder keeps the flag over already folded weights; folding again multiplies by |W_dec| = 1
within rounding, as sae-lens's own encode does.

apply_b_dec_to_input (sae-lens's default) is kept: b_dec is subtracted from the input before encoding, by the torch
encoder and the fused kernel alike (`actstore.score.encode`). normalize_activations must be "none": a scaling or
whitening sae-lens keeps outside the SAE (expected_average_only_in, covariance_whitening) is folded in by its
trainer at the end of training, so an SAE that still names one has not been folded; constant_norm_rescale and
layer_norm rescale each row by its own statistics, which no weights can express.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from actstore.saes.weights import SAEError, SAEWeights

ENCODER_OF = {
    "StandardSAE": "relu", "StandardTrainingSAE": "relu",
    "TopKSAE": "topk", "TopKTrainingSAE": "topk",
    "JumpReLUSAE": "jumprelu", "JumpReLUTrainingSAE": "jumprelu",
    "BatchTopKTrainingSAE": "jumprelu", "MatryoshkaBatchTopKTrainingSAE": "jumprelu",
}
"""sae-lens class name -> the encoder (a key of actstore.saes.weights.ENCODERS) it loads as."""

HOOK = re.compile(r"(?:^|\.)(?:blocks|layers)\.(\d+)\.(?:hook_(resid_pre|resid_mid|resid_post|mlp_out|attn_out)$)?")


def from_sae_lens(sae, sae_id: str | None = None, dtype: torch.dtype = torch.float32,
                  device: str = "cpu") -> SAEWeights:
    """An sae-lens SAE object (a class of ENCODER_OF) as SAEWeights; SAEError for another class or a
    normalize_activations other than none."""
    kind = type(sae).__name__
    name = sae_id or kind
    encoder = ENCODER_OF.get(kind)
    if encoder is None:
        raise SAEError(f"SAE {name}: sae-lens class {kind} is not supported; supported: {', '.join(ENCODER_OF)} "
                       f"(standard ReLU, TopK, BatchTopK, JumpReLU and Matryoshka BatchTopK)")
    cfg = sae.cfg
    norm = getattr(cfg, "normalize_activations", "none")
    if norm != "none":
        how = ("its input scaling lives outside the SAE and is not folded in: fold it as sae-lens's trainer does at "
               "the end of training (sae.fold_activation_norm_scaling_factor(factor) or "
               "sae.fold_activation_whitening(...)) and pass the folded SAE"
               if norm in ("expected_average_only_in", "covariance_whitening") else
               "it rescales each input row by that row's own statistics, which no SAE weights can express")
        raise SAEError(f"SAE {name}: normalize_activations is {norm!r}; expected 'none' ({how})")
    with torch.no_grad():
        w_enc, b_enc, w_dec, b_dec = (t.detach() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
        threshold = _threshold(sae, b_enc) if encoder == "jumprelu" else None
        if getattr(cfg, "rescale_acts_by_decoder_norm", False):
            n = w_dec.norm(dim=-1).clamp(min=1e-8)  # sae-lens's get_W_dec_norm
            w_enc, b_enc, w_dec = w_enc * n, b_enc * n, w_dec / n[:, None]

    def move(t):
        return None if t is None else t.to(device=device, dtype=dtype)

    metadata = getattr(cfg, "metadata", None)
    hook = HOOK.search(getattr(metadata, "hook_name", None) or "")
    training = callable(getattr(cfg, "get_inference_config_class", None))  # a TrainingSAEConfig
    source = cfg.architecture() if training else (getattr(metadata, "training_architecture", None)
                                                  or cfg.architecture())
    return SAEWeights(
        name if sae_id else getattr(metadata, "sae_lens_id", None) or kind, move(w_enc), move(b_enc), move(w_dec),
        move(b_dec), encoder, move(threshold), k=int(cfg.k) if encoder == "topk" else None,
        layer=int(hook[1]) if hook else None, hook=hook[2] if hook and hook[2] else "resid_post",
        apply_b_dec_to_input=bool(cfg.apply_b_dec_to_input), source_architecture=str(source))


def _threshold(sae, b_enc: torch.Tensor) -> torch.Tensor:
    """A thresholded encoder's (m,) thresholds: JumpReLU's own, or BatchTopK's one learned threshold for every
    latent, computed as sae-lens's save_inference_model computes it (a float64 buffer, in b_enc's dtype)."""
    if hasattr(sae, "topk_threshold"):
        return torch.ones_like(b_enc) * sae.topk_threshold.item()
    if isinstance(getattr(sae, "threshold", None), torch.Tensor):
        return sae.threshold.detach()
    return torch.exp(sae.log_threshold.detach())  # JumpReLU objects of sae-lens before 6.x


def load_sae_lens_dir(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> SAEWeights:
    """A folder sae-lens wrote (cfg.json and sae_weights.safetensors): by `save_inference_model`, or by
    `save_model` of an inference or a training SAE (a training cfg.json has training fields such as
    decoder_init_norm, and BatchTopK's names an architecture only the training registry knows)."""
    path = Path(path)
    expect = ("expected a folder written by sae-lens's save_model or save_inference_model (cfg.json and "
              "sae_weights.safetensors)")
    try:
        cfg = json.loads((path / "cfg.json").read_text())
    except FileNotFoundError:
        raise SAEError(f"SAE {path}: has no cfg.json; {expect}") from None
    except (OSError, ValueError) as err:
        raise SAEError(f"SAE {path}: cfg.json cannot be read as JSON ({err}); {expect}") from None
    from sae_lens import SAE, TrainingSAE
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    architecture = cfg.get("architecture") if isinstance(cfg, dict) else None
    training = architecture in SAE_TRAINING_CLASS_REGISTRY and (
        "decoder_init_norm" in cfg or architecture not in SAE_CLASS_REGISTRY)
    if not training and architecture not in SAE_CLASS_REGISTRY:
        known = sorted(set(SAE_CLASS_REGISTRY) | set(SAE_TRAINING_CLASS_REGISTRY))
        raise SAEError(f"SAE {path}: cfg.json names architecture {architecture!r}, which sae-lens does not know "
                       f"(it knows {known}); {expect}")
    try:
        sae = (TrainingSAE if training else SAE).load_from_disk(str(path), device=device)
    except Exception as err:  # noqa: BLE001 - missing or damaged weights, a cfg sae-lens rejects
        detail = str(err).splitlines()[0] if str(err) else ""
        raise SAEError(f"SAE {path}: sae-lens cannot load it ({type(err).__name__}: {detail}); {expect}") from err
    return from_sae_lens(sae, path.name, dtype=dtype, device=device)
