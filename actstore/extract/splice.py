"""Run a model's later blocks from a stored residual: the causal metric's precompute (actstore.score.causal).

    cache = ResidualCache(model, input_ids, layer, pad_id)    # block `layer`'s output per prompt, computed once
    with spliced_blocks(model, layer, resid, cache.as_tuple):  # blocks 0..layer hand back `resid` (B, T, d)
        logits = model(input_ids=ids, attention_mask=mask, ...).logits
    with replaced_output(model, layer, resid): ...             # the whole model, block `layer`'s output replaced

The model's own forward still embeds the tokens and builds rotary embeddings and masks; only the blocks are
swapped, and restored on exit.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from actstore.extract.model import block_output, decoder_layers, pad


class _Skip(torch.nn.Module):
    """Stands in for an early block: hands its input on (the stored residual replaces it at block L)."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.as_tuple else hidden_states


class _Inject(_Skip):
    """Stands in for block L: returns the stored (spliced) residual."""

    def __init__(self, resid: torch.Tensor, as_tuple: bool):
        super().__init__(as_tuple)
        self.resid = resid

    def forward(self, hidden_states, *args, **kwargs):
        return (self.resid,) if self.as_tuple else self.resid


@contextmanager
def spliced_blocks(model, layer: int, resid: torch.Tensor, as_tuple: bool):
    """Within the block, the model's blocks 0..layer are replaced: its forward embeds the tokens (the only early
    cost), hands the embeddings through, and block `layer` outputs `resid` (B, T, d); the later blocks run as
    they are. Restored on exit."""
    blocks = decoder_layers(model)
    originals = [blocks[i] for i in range(layer + 1)]
    try:
        for i in range(layer):
            blocks[i] = _Skip(as_tuple)
        blocks[layer] = _Inject(resid, as_tuple)
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


@contextmanager
def replaced_output(model, layer: int, resid: torch.Tensor):
    """The whole model runs; block `layer`'s output is replaced by `resid` (the baseline of the benchmark)."""
    def hook(module, args, output):
        return (resid, *output[1:]) if isinstance(output, tuple) else resid

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class ResidualCache:
    """The residual stream after one block at every position of the vocabulary prompts, computed on first
    request in batches (the model runs up to that block and stops), kept per row."""

    def __init__(self, model, input_ids: list[list[int]], layer: int, pad_id: int, batch: int = 32):
        self.model, self.input_ids, self.layer, self.pad_id, self.batch = model, input_ids, layer, pad_id, batch
        self.rows: dict[int, torch.Tensor] = {}
        self.as_tuple = False
        self.forwards = 0
        """prompts run through the early blocks (each once)"""

    @torch.no_grad()
    def get(self, rows: list[int]) -> list[torch.Tensor]:
        missing = [r for r in dict.fromkeys(rows) if r not in self.rows]
        device = next(self.model.parameters()).device
        for lo in range(0, len(missing), self.batch):
            chunk = missing[lo:lo + self.batch]
            batch, offsets = pad([self.input_ids[r] for r in chunk], self.pad_id, side="left")
            out = block_output(self.model, self.layer, batch.input_ids.to(device), batch.attention_mask.to(device))
            self.as_tuple = isinstance(out, tuple)
            x = out[0] if self.as_tuple else out  # (B, T, d)
            self.forwards += len(chunk)
            for j, r in enumerate(chunk):
                self.rows[r] = x[j, int(offsets[j]):].detach().clone()
        return [self.rows[r] for r in rows]
