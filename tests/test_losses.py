"""Contrastive losses against hand-computed values, and MoCo's key queue and momentum update."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adcore.losses import KeyQueue, info_nce, margin_contrastive, momentum_update, nt_xent, triplet

E1, E2 = [1.0, 0.0], [0.0, 1.0]
DIAG = [0.6, 0.8]  # unit vector: cosine 0.6 with E1, 0.8 with E2


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_nt_xent_matches_hand_computed_softmax():
    # Views: a1 = E1, b1 = E2 (image 1), a2 = DIAG, b2 = E1 (image 2); temperature 0.5.
    z1, z2 = t([E1, DIAG]), t([E2, E1])
    tau = 0.5
    # Cosine similarities of each view to the three others, its positive first.
    rows = {
        "a1": (0.0, [0.6, 1.0]),  # positive b1; negatives a2, b2
        "a2": (0.6, [0.6, 0.8]),  # positive b2; negatives a1, b1
        "b1": (0.0, [0.8, 0.0]),  # positive a1; negatives a2, b2
        "b2": (0.6, [1.0, 0.0]),  # positive a2; negatives a1, b1
    }
    expected = 0.0
    for pos, negs in rows.values():
        expected -= math.log(math.exp(pos / tau) / (math.exp(pos / tau) + sum(math.exp(n / tau) for n in negs)))
    expected /= 4
    assert nt_xent(z1, z2, tau).item() == pytest.approx(expected, rel=1e-9)
    # Only directions count: scaling the embeddings changes nothing.
    assert nt_xent(3 * z1, 0.5 * z2, tau).item() == pytest.approx(expected, rel=1e-9)


def test_nt_xent_is_lower_when_views_agree():
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    assert nt_xent(z, z + 0.01, 0.2) < nt_xent(z, torch.randn(8, 16), 0.2)


def test_info_nce_with_a_bank_of_negatives():
    q, k, bank = t([E1]), t([DIAG]), t([E1, E2])
    tau = 0.1
    expected = -math.log(math.exp(6.0) / (math.exp(6.0) + math.exp(10.0) + math.exp(0.0)))
    assert info_nce(q, k, bank, tau).item() == pytest.approx(expected, rel=1e-9)


def test_margin_loss_hinge_active_and_inactive():
    q, k = t([E1, E2]), t([DIAG, E2])
    d_pos = [math.sqrt(0.4**2 + 0.8**2), 0.0]  # |E1 - DIAG|, |E2 - E2|
    # In-batch negatives: q0 vs k1 = |E1 - E2| = sqrt(2); q1 vs k0 = |E2 - DIAG| = sqrt(0.36 + 0.04).
    d_neg = [math.sqrt(2.0), math.sqrt(0.4)]
    pos_term = sum(d * d for d in d_pos) / 2
    # margin 0.5: both negatives are farther than the margin -> hinge inactive, only positives count.
    assert margin_contrastive(q, k, 0.5).item() == pytest.approx(pos_term, rel=1e-9)
    # margin 1.0: only q1-k0 (0.632) is inside it.
    expected = pos_term + ((1.0 - d_neg[1]) ** 2 + 0.0) / 2
    assert margin_contrastive(q, k, 1.0).item() == pytest.approx(expected, rel=1e-9)
    # margin 2.0: both are.
    expected = pos_term + sum((2.0 - d) ** 2 for d in d_neg) / 2
    assert margin_contrastive(q, k, 2.0).item() == pytest.approx(expected, rel=1e-9)


def test_triplet_loss_hinge_active_and_inactive():
    q, k = t([E1, E2]), t([DIAG, E2])
    d_pos = [math.sqrt(0.8), 0.0]
    d_neg = [math.sqrt(2.0), math.sqrt(0.4)]  # anchor 0 vs k1, anchor 1 vs k0
    # margin 0.2: anchor 0: 0.894 - 1.414 + 0.2 < 0 (inactive); anchor 1: 0 - 0.632 + 0.2 < 0 (inactive).
    assert triplet(q, k, 0.2).item() == 0.0
    # margin 0.6: anchor 0 is active (0.894 - 1.414 + 0.6 = 0.08), anchor 1 is not (0 - 0.632 + 0.6 < 0).
    expected = ((d_pos[0] - d_neg[0] + 0.6) + 0.0) / 2
    assert triplet(q, k, 0.6).item() == pytest.approx(expected, rel=1e-9)
    # margin 1.0: both active.
    expected = ((d_pos[0] - d_neg[0] + 1.0) + (d_pos[1] - d_neg[1] + 1.0)) / 2
    assert triplet(q, k, 1.0).item() == pytest.approx(expected, rel=1e-9)


def test_margin_and_triplet_with_a_bank_use_every_bank_row():
    q, k, bank = t([E1]), t([E1]), t([E2, DIAG])
    d_bank = [math.sqrt(2.0), math.sqrt(0.8)]
    assert margin_contrastive(q, k, 1.0, bank).item() == pytest.approx(
        sum(max(0.0, 1.0 - d) ** 2 for d in d_bank) / 2, rel=1e-9
    )
    assert triplet(q, k, 1.0, bank).item() == pytest.approx(sum(max(0.0, 1.0 - d) for d in d_bank) / 2, rel=1e-9)


def test_key_queue_overwrites_the_oldest_keys_and_wraps_around():
    queue = KeyQueue(5, 2, torch.Generator().manual_seed(0))
    start = queue.keys.clone()
    assert torch.allclose(start.norm(dim=1), torch.ones(5))  # random unit vectors at first

    first = torch.arange(6.0).view(3, 2)
    queue.enqueue(first)
    assert int(queue.pointer) == 3
    assert torch.equal(queue.keys[:3], first) and torch.equal(queue.keys[3:], start[3:])

    second = 10 + torch.arange(6.0).view(3, 2)
    queue.enqueue(second)  # rows 3, 4, then wraps to 0
    assert int(queue.pointer) == 1
    assert torch.equal(queue.keys[3:], second[:2]) and torch.equal(queue.keys[0], second[2])
    assert torch.equal(queue.keys[1:3], first[1:])  # the two oldest-but-one survive

    many = 100 + torch.arange(14.0).view(7, 2)
    queue.enqueue(many)  # more than fit: the last five, starting at the pointer
    assert int(queue.pointer) == 1
    assert sorted(queue.keys[:, 0].tolist()) == sorted(many[2:, 0].tolist())
    assert torch.equal(queue.keys[1], many[2])


def test_momentum_update_moves_key_weights_towards_the_query_and_copies_statistics():
    query = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    key = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in query.parameters():
            p.fill_(1.0)
        for p in key.parameters():
            p.fill_(0.0)
    query[1].running_mean.fill_(5.0)
    momentum_update(key, query, 0.9)
    for p in key.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.1))
    momentum_update(key, query, 0.9)
    for p in key.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.9 * 0.1 + 0.1))
    assert torch.equal(key[1].running_mean, torch.full((2,), 5.0))
    assert all(p.grad is None for p in key.parameters())
