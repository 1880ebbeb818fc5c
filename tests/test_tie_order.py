"""Which latents a ranking picks when values tie: `metrics.stable_top_k` takes the largest first and breaks ties by
the lowest index, on every device. It ranks the k-sparse candidates (the L1 probe's weights, where the converged
solver leaves many exact zeros), the absorbing latents of a token and a latent's top tokens; plain `torch.topk`
leaves tied entries in an order of its own, which differs between CPU and GPU."""

from __future__ import annotations

import pytest
import torch

from actstore.score.l1solver import solve_l1_probe
from actstore.score.metrics import absorption_terms, stable_top_k
from actstore.score.sparse import SparseActs, top_tokens


def reference(column: list[float], k: int) -> list[int]:
    """The rule, in plain Python: sort by (-value, index)."""
    return sorted(range(len(column)), key=lambda i: (-column[i], i))[:k]


def test_ties_by_hand():
    weight = torch.tensor([[0.0, 0.0, -1.0],
                           [0.5, 0.0, -1.0],
                           [0.0, 0.0, -2.0],
                           [0.5, 0.0, -1.0],
                           [0.0, 0.0, -3.0],
                           [-1.0, 0.0, -0.5],
                           [0.0, 1.0, -1.0],
                           [0.25, 0.0, -2.0]])  # (8 latents, 3 classes)
    values, index = stable_top_k(weight, 5, dim=0)
    # class 0: the tied 0.5s (latents 1 and 3) lowest first, then 0.25, then the tied zeros from latent 0 up;
    # class 1: latent 6, then zeros 0, 1, 2, 3; class 2: -0.5, then the tied -1s (0, 1, 3, 6)
    assert index.T.tolist() == [[1, 3, 7, 0, 2], [6, 0, 1, 2, 3], [5, 0, 1, 3, 6]]
    assert values.T.tolist() == [[0.5, 0.5, 0.25, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0], [-0.5, -1.0, -1.0, -1.0, -1.0]]


def test_plain_topk_would_fail_this_test():
    # a column of zeros but one weight: this torch's CPU topk returns the tied zeros as 1, 3, 4, 0, not 0, 1, 2, 3
    # (so a scorer ranking with it would pass none of these assertions), and a GPU returns yet another order
    weight = torch.zeros(1000, 3)
    weight[5, 0] = 2.0
    expected = [[5, 0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    assert stable_top_k(weight, 5, dim=0)[1].T.tolist() == expected
    assert weight.topk(5, dim=0).indices.T.tolist() != expected


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_rule_on_many_ties_any_layout(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (60, 7), generator=gen).float() / 2  # values in {-1, -0.5, 0, 0.5, 1}: ties everywhere
    for k in (1, 3, 10, 60, 100):
        index = stable_top_k(x, k, dim=0)[1]
        assert index.T.tolist() == [reference(x[:, c].tolist(), k) for c in range(7)]
        # the transpose, ranked along dim 1, non-contiguous: the same picks
        assert torch.equal(stable_top_k(x.T, k, dim=1)[1], index.T)
        assert torch.equal(stable_top_k(x.T.contiguous().T, k, dim=0)[1], index)
    cube = x.reshape(6, 10, 7)
    index = stable_top_k(cube, 4, dim=1)[1]  # (6, 4, 7)
    assert all(index[a, :, c].tolist() == reference(cube[a, :, c].tolist(), 4) for a in range(6) for c in range(7))
    assert stable_top_k(x, 0, dim=0)[1].shape == (0, 7)
    with pytest.raises(ValueError, match="NaN"):
        stable_top_k(torch.tensor([1.0, float("nan")]), 1)


def test_converged_solver_zeros_rank_by_latent_id():
    # the converged L1 solver leaves most weights of a class exactly 0: its k-sparse candidates beyond the
    # nonzero weights are the lowest-id latents among those zeros
    gen = torch.Generator().manual_seed(0)
    n, m, n_classes = 200, 40, 4
    labels = torch.arange(n) % n_classes
    logits = torch.randn(n, m, generator=gen) + 2.5 * (torch.arange(m)[None, :] % 10 == labels[:, None])
    dense = torch.where(logits > 1.2, logits.abs() + 0.1, torch.zeros(()))
    nz = dense.nonzero()
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = torch.bincount(nz[:, 0], minlength=n).cumsum(0)
    weight = solve_l1_probe(offsets, nz[:, 1], dense[nz[:, 0], nz[:, 1]], m, labels, n_classes, l1=0.05).weight
    candidates = stable_top_k(weight, 10, dim=0)[1].T.tolist()  # as the scorer ranks them
    zeros_picked = [sum(float(weight[i, c]) == 0 for i in candidates[c]) for c in range(n_classes)]
    assert min(zeros_picked) >= 3  # the ties are really there
    assert candidates == [reference(weight[:, c].tolist(), 10) for c in range(n_classes)]


def test_absorbers_and_top_tokens_take_the_lowest_first():
    # one token, 5 candidate latents; columns 1, 3 and 4 tie at proj 0.3: the 2 absorber slots are columns 1, 3
    acts = torch.tensor([[0.1, 0.3, 0.2, 0.3, 0.3]])
    terms = absorption_terms(acts, torch.ones(5), torch.zeros(5, dtype=torch.bool), min_cos=0.1, top_k=2)
    assert terms.top_slots.tolist() == [[1, 3]] and float(terms.top) == pytest.approx(0.6)
    # latent 2 is equally active (0.7) on rows 4, 1 and 6 and less on row 0: its top 2 rows are 1 and 4
    rows = [[2], [2], [], [0], [2], [], [2]]
    values = [[0.5], [0.7], [], [1.0], [0.7], [], [0.7]]
    offsets = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
    acts = SparseActs(offsets, torch.tensor(sum(rows, [])), torch.tensor(sum(values, [])), width=3)
    assert top_tokens(acts, [2, 0], 2) == {2: [(1, pytest.approx(0.7)), (4, pytest.approx(0.7))],
                                           0: [(3, 1.0)]}
