"""Sparse SAE activations: the CSR rows every scoring stage reads.

    acts = SparseActs(offsets, index, value, width)   # row r: latents index[offsets[r]:offsets[r + 1]]
    acts.rows(mask) / acts.split(n) / acts.dense_columns(latents) / acts.padded()
    transposed_csr(acts) -> (m, N) torch sparse CSR        top_tokens(acts, latents, n) -> each latent's top rows

`actstore.score.encode` produces them; the L1 probe, k-sparse probing and absorption read them.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from actstore.score.metrics import stable_top_k


class SparseActs(NamedTuple):
    """Sparse SAE activations in CSR form: row r's active latents are index[offsets[r]:offsets[r + 1]]."""

    offsets: torch.Tensor
    """(N + 1,) int64"""
    index: torch.Tensor
    """(nnz,) int64 latent ids, increasing within a row"""
    value: torch.Tensor
    """(nnz,) float32 folded activations (> 0 for JumpReLU and ReLU)"""
    width: int
    near: int = 0
    """firing decisions within rounding of the threshold (the fused kernel counts them; 0 for the torch
    reference, which is the definition)"""

    @property
    def l0(self) -> torch.Tensor:
        """(N,) active latents per row."""
        return self.offsets.diff()

    def rows(self, rows: torch.Tensor) -> SparseActs:
        """The given rows (an index tensor or a bool mask), in that order."""
        if rows.dtype == torch.bool:
            rows = rows.nonzero()[:, 0]
        rows = rows.to(self.offsets.device)
        starts, counts = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64, device=rows.device)
        offsets[1:] = counts.cumsum(0)
        # entry j of the new CSR comes from starts[row of j] + (j - offsets[row of j])
        owner = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
        take = starts[owner] + torch.arange(int(offsets[-1]), device=rows.device) - offsets[owner]
        return SparseActs(offsets, self.index[take], self.value[take], self.width, self.near)

    def split(self, n: int) -> tuple[SparseActs, SparseActs]:
        """The first n rows and the rest, as two SparseActs (views of this one's entries: no copy; one host
        read, where row n's entries start). `near` stays with the first: the count is not kept per row."""
        end = int(self.offsets[n])
        return (SparseActs(self.offsets[:n + 1], self.index[:end], self.value[:end], self.width, self.near),
                SparseActs(self.offsets[n:] - end, self.index[end:], self.value[end:], self.width))

    def dense_columns(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, len(latents)) activations of the given latents (distinct ids)."""
        column = torch.full((self.width,), -1, dtype=torch.int64, device=self.index.device)
        column[latents] = torch.arange(len(latents), device=self.index.device)
        out = torch.zeros(len(self.offsets) - 1, len(latents), device=self.value.device)
        hit = column[self.index] >= 0
        owner = torch.repeat_interleave(torch.arange(len(self.offsets) - 1, device=self.index.device), self.l0)
        out[owner[hit], column[self.index[hit]]] = self.value[hit]
        return out

    def padded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each row's entries padded to the longest row (at least 1): index, value (0 where padding) and a
        validity mask, each (N, L)."""
        n, width = len(self.offsets) - 1, max(1, int(self.l0.max())) if len(self.offsets) > 1 else 1
        slot = torch.arange(len(self.index), device=self.index.device)
        owner = torch.repeat_interleave(torch.arange(n, device=self.index.device), self.l0)
        slot = slot - self.offsets[owner]
        index = torch.zeros(n, width, dtype=torch.int64, device=self.index.device)
        value = torch.zeros(n, width, device=self.value.device)
        valid = torch.zeros(n, width, dtype=torch.bool, device=self.index.device)
        index[owner, slot], value[owner, slot], valid[owner, slot] = self.index, self.value, True
        return index, value, valid


def csr(offsets: torch.Tensor, index: torch.Tensor, value: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A torch sparse CSR matrix of the given shape (offsets (rows + 1,), column ids and values (nnz,))."""
    with warnings.catch_warnings():  # torch calls sparse CSR "beta"; the two products used here are plain
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(offsets, index, value, size=shape)


def transposed_csr(acts: SparseActs) -> torch.Tensor:
    """The activations transposed: (m, N) sparse CSR, row i holding latent i's (row, value) entries."""
    n = len(acts.offsets) - 1
    owner = torch.repeat_interleave(torch.arange(n, device=acts.index.device), acts.l0)  # (nnz,) each entry's row
    order = torch.argsort(acts.index * n + owner)
    offsets = torch.zeros(acts.width + 1, dtype=torch.int64, device=acts.index.device)
    offsets[1:] = torch.bincount(acts.index, minlength=acts.width).cumsum(0)
    return csr(offsets, owner[order], acts.value[order], (acts.width, n))


def top_tokens(acts: SparseActs, latents: list[int], n: int, chunk: int = 512) -> dict[int, list[tuple[int, float]]]:
    """For each latent, the n vocabulary rows on which it is most active: [(row, activation), ...] (rows where
    it is silent left out; equal activations: the lowest row first, `metrics.stable_top_k`). `chunk` latents at a
    time: N x chunk floats of memory however many absorb."""
    out = {}
    for lo in range(0, len(latents), chunk):
        block = latents[lo:lo + chunk]
        dense = acts.dense_columns(torch.tensor(block, device=acts.index.device))  # (N, chunk)
        values, rows = stable_top_k(dense, n, dim=0)  # equal activations: the lowest row first
        for j, latent in enumerate(block):
            out[latent] = [(int(r), float(v)) for r, v in zip(rows[:, j].tolist(), values[:, j].tolist()) if v > 0]
    return out
