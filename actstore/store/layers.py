"""A layer's rows of a store, as the scorer takes them (LayerData)."""

from __future__ import annotations

import torch

from actstore.score.scorer import LayerData


def load_layer(store, layer: int) -> LayerData:
    """A layer's vocabulary rows as float32 (N, d_model), and its context rows when the store has them, kept
    in the store's dtype (a million bf16 context tokens of Gemma is 4.6 GB; the scorer casts a tile at a time)."""
    data = LayerData(store.read("vocab", layer).float(), torch.as_tensor(store.column("vocab", "label")).long(),
                     torch.as_tensor(store.column("vocab", "split")).long())
    columns = store.columns("vocab")  # per-token records name their tokens
    if "token_id" in columns:
        data.token_id = torch.as_tensor(store.column("vocab", "token_id")).long()
    if "text" in columns:
        data.text = [str(t) for t in store.column("vocab", "text")]
    if "context" in store.groups:
        data.context_x = store.read("context", layer)  # (M, d_model)
        data.context_labels = torch.as_tensor(store.column("context", "label")).long()
    return data
