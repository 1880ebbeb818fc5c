"""One SAE's weights in their final dtype and device, and the encoders that run them (`ENCODERS`, keyed by
`SAEWeights.architecture`): JumpReLU, ReLU and TopK, each as sae-lens computes it. Every source
(`loading.py`, `saelens.py`) produces an SAEWeights; a source that cannot raises SAEError."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from actstore.errors import InputError
from actstore.score.metrics import jumprelu


class SAEError(InputError):
    """One SAE cannot be used; the message names it and says what to do. Other SAEs are unaffected."""


@dataclass
class SAEWeights:
    """One SAE, its weights already in their final dtype and device."""

    id: str
    w_enc: torch.Tensor
    """(d_model, width)"""
    b_enc: torch.Tensor
    """(width,)"""
    w_dec: torch.Tensor
    """(width, d_model)"""
    b_dec: torch.Tensor
    """(d_model,)"""
    architecture: str = "jumprelu"
    """A key of ENCODERS."""
    threshold: torch.Tensor | None = None
    """(width,) JumpReLU thresholds."""
    k: int | None = None
    """TopK's k."""
    layer: int | None = None
    hook: str = "resid_post"
    l0: float | None = None
    """The L0 the release reports (Gemma Scope's average_l0)."""
    apply_b_dec_to_input: bool = False
    """Subtract b_dec before encoding (sae-lens's option; Gemma Scope does not)."""
    source_architecture: str | None = None
    """The architecture sae-lens trained it as (standard, topk, batchtopk, jumprelu, matryoshka_batchtopk); None
    for Gemma Scope's params.npz. `architecture` is the encoder it runs as: a batchtopk SAE encodes as jumprelu."""
    _enc_norm: tuple | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __setattr__(self, name: str, value) -> None:
        if name == "w_enc":  # a new encoder: its norms are computed again when asked for
            object.__setattr__(self, "_enc_norm", None)
        object.__setattr__(self, name, value)

    @property
    def enc_norm(self) -> torch.Tensor:
        """(width,) float32 encoder column norms |W_enc[:, i]|, computed once and kept while W_enc is neither
        replaced nor edited in place (the scorer's reader thread computes them while the previous SAE is scored;
        restricted SAEs compute their own). The kernel's candidate band rests on them, so they are never stale."""
        version = self.w_enc._version
        if self._enc_norm is None or self._enc_norm[0] != version:
            self._enc_norm = (version, self.w_enc.float().norm(dim=0))
        return self._enc_norm[1]

    @property
    def width(self) -> int:
        return self.w_enc.shape[1]

    @property
    def d_model(self) -> int:
        return self.w_enc.shape[0]

    def latents(self, lo: int, hi: int) -> SAEWeights:
        """The SAE restricted to latents lo:hi (views, no copy). TopK has no meaning restricted (its k-th
        largest is over the whole row), so for TopK only the whole range is allowed."""
        return self if (lo, hi) == (0, self.width) else self._restricted(slice(lo, hi))

    def select(self, latents: torch.Tensor) -> SAEWeights:
        """The SAE restricted to the given latent ids (copies of those columns only)."""
        return self._restricted(latents)

    def _restricted(self, which) -> SAEWeights:
        if self.architecture == "topk":
            raise ValueError(f"SAE {self.id}: a TopK SAE encodes whole rows; it cannot be restricted to some latents")
        return dataclasses.replace(self, w_enc=self.w_enc[:, which], b_enc=self.b_enc[which], w_dec=self.w_dec[which],
                                   threshold=None if self.threshold is None else self.threshold[which])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d_model) -> (N, width) latent activations."""
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return ENCODERS[self.architecture](self, x)


def _topk(sae: SAEWeights, x: torch.Tensor) -> torch.Tensor:
    pre = x @ sae.w_enc + sae.b_enc
    values, indices = pre.topk(sae.k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


ENCODERS: dict[str, Callable[[SAEWeights, torch.Tensor], torch.Tensor]] = {
    "jumprelu": lambda sae, x: jumprelu(x, sae.w_enc, sae.b_enc, sae.threshold),
    "relu": lambda sae, x: torch.relu(x @ sae.w_enc + sae.b_enc),
    "topk": _topk,
}
