"""Run a Hugging Face causal LM and take the residual stream after the requested blocks.

Forward hooks on the decoder layers capture each requested block's output (resid_post): unlike
`hidden_states[L + 1]`, that is right for the last block too (transformers applies the final norm to the
last entry). The forward pass stops after the deepest requested block. Batches are padded (left or right)
with position ids computed from the attention mask, so a padded row gets the activations it would get
alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


class ModelLoadError(RuntimeError):
    """The model could not be loaded (no network, gated weights, a wrong path)."""


class _Stop(Exception):
    """Raised by the deepest hook to end the forward pass early."""


def load_config_and_tokenizer(name: str, revision: str | None = None):
    """(config, tokenizer) of a model id or directory, without its weights."""
    from transformers import AutoConfig, AutoTokenizer

    with _explained(name, revision):
        return AutoConfig.from_pretrained(name, revision=revision), AutoTokenizer.from_pretrained(name, revision=revision)


def load_model(name: str, revision: str | None = None, device: str = "cpu", dtype: torch.dtype | None = None):
    """A Hugging Face causal LM from an id or local directory, in eval mode on `device`; Gemma-2 gets eager
    attention (sdpa cannot softcap). Failing offline or on gated weights, a ModelLoadError says what to do."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    with _explained(name, revision):
        config = AutoConfig.from_pretrained(name, revision=revision)
        kwargs = {"attn_implementation": "eager"} if config.model_type.startswith("gemma2") else {}
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype, **kwargs)
    return model.to(device).eval()


@contextmanager
def _explained(name: str, revision: str | None):
    try:
        yield
    except (OSError, ValueError) as err:  # hub errors (offline, gated, missing) are OSError subclasses
        raise ModelLoadError(
            f"could not load model {name!r}" + (f" at revision {revision!r}" if revision else "") +
            f": {str(err).splitlines()[0]}\nWithout network access or for gated weights (Gemma), download it "
            f"where you can (`hf download {name}`), copy it here, and pass its directory as --model, or point "
            f"HF_HOME at a cache that holds it (and set HF_HUB_OFFLINE=1)."
        ) from err


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of transformer blocks of a causal LM (Gemma/Llama/Mistral style, GPT-2, GPT-NeoX)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}; supported layouts: model.layers, "
                     f"transformer.h, gpt_neox.layers, model.decoder.layers")


@dataclass
class Batch:
    """Padded token ids of several prompts."""

    input_ids: torch.Tensor
    """(B, T) token ids, padded."""
    attention_mask: torch.Tensor
    """(B, T) 1 for real tokens, 0 for padding."""


def pad(sequences: list[list[int]], pad_id: int, side: str = "right") -> tuple[Batch, torch.Tensor]:
    """Pad token id lists into a Batch; also returns each row's offset (where its first token sits)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    offsets = torch.zeros(len(sequences), dtype=torch.long)
    for i, seq in enumerate(sequences):
        lo = 0 if side == "right" else width - len(seq)
        ids[i, lo:lo + len(seq)] = torch.tensor(seq)
        mask[i, lo:lo + len(seq)] = 1
        offsets[i] = lo
    return Batch(ids, mask), offsets


class ResidualReader:
    """Captures resid_post of chosen blocks for padded batches."""

    def __init__(self, model, layers: list[int]):
        blocks = decoder_layers(model)
        bad = [l for l in layers if not 0 <= l < len(blocks)]
        if bad:
            raise ValueError(f"the model has blocks 0-{len(blocks) - 1}; asked for {bad}")
        self.model, self.layers, self.blocks = model, sorted(layers), blocks
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, batch: Batch) -> dict[int, torch.Tensor]:
        """layer -> (B, T, d_model) block output, in the model's dtype, on the model's device."""
        captured: dict[int, torch.Tensor] = {}
        deepest = self.layers[-1]

        def hook(layer):
            def capture(module, args, output):
                captured[layer] = output[0] if isinstance(output, tuple) else output
                if layer == deepest:
                    raise _Stop

            return capture

        handles = [self.blocks[l].register_forward_hook(hook(l)) for l in self.layers]
        mask = batch.attention_mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        try:
            self.model(input_ids=batch.input_ids.to(self.device), attention_mask=mask, position_ids=positions,
                       use_cache=False)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return captured
