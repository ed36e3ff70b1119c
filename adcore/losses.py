"""Contrastive losses as plain functions of embeddings, and the MoCo key queue and momentum update.

Embeddings are (N, D) float tensors; row i of ``query`` and row i of ``key`` are two views of
the same image (a positive pair). Negatives are either the other rows of the batch (SimCLR) or a
shared bank of keys from earlier batches (MoCo's queue). Every loss is averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over 2N views: for each view, softmax cross-entropy of its cosine
    similarities / ``temperature`` to the 2N - 1 other views, the other view of its image as the class."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def info_nce(query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: for each query, cross-entropy over [its key, every row of ``negatives`` (M, D)]
    of cosine similarity / ``temperature``, its own key as the class."""
    q, k, neg = F.normalize(query, dim=1), F.normalize(key, dim=1), F.normalize(negatives, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ neg.T], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def _distances(query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor | None):
    """Euclidean distances between L2-normalised embeddings: positive (N,), negative (N, M) and a
    mask (N, M) of the negative pairs that count (in-batch: every other image's key)."""
    q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
    positive = (q - k).norm(dim=1)
    if negatives is None:
        negative = torch.cdist(q, k)
        valid = ~torch.eye(len(q), dtype=torch.bool, device=q.device)
    else:
        negative = torch.cdist(q, F.normalize(negatives, dim=1))
        valid = torch.ones_like(negative, dtype=torch.bool)
    return positive, negative, valid


def margin_contrastive(
    query: torch.Tensor, key: torch.Tensor, margin: float, negatives: torch.Tensor | None = None
) -> torch.Tensor:
    """Contrastive margin loss (Hadsell et al. 2006) on L2-normalised embeddings: mean squared
    distance of positive pairs plus mean of max(0, margin - d)^2 over negative pairs. Negatives:
    the other rows of ``key``, or the rows of ``negatives`` (M, D) when given."""
    positive, negative, valid = _distances(query, key, negatives)
    hinge = F.relu(margin - negative) ** 2
    return (positive**2).mean() + hinge[valid].mean()


def triplet(
    query: torch.Tensor, key: torch.Tensor, margin: float, negatives: torch.Tensor | None = None
) -> torch.Tensor:
    """Triplet loss on L2-normalised embeddings, over every (anchor, positive, negative) triple:
    mean of max(0, d(anchor, positive) - d(anchor, negative) + margin). Anchors are the rows of
    ``query``, positives the same rows of ``key``, negatives as in ``margin_contrastive``."""
    positive, negative, valid = _distances(query, key, negatives)
    hinge = F.relu(positive[:, None] - negative + margin)
    return hinge[valid].mean()


class KeyQueue(nn.Module):
    """MoCo's first-in first-out queue of ``size`` keys (dim D): each batch of keys overwrites the
    oldest ones, wrapping around at the end; starts as random unit vectors."""

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        size, n = len(self.keys), len(keys)
        if n > size:
            keys, n = keys[-size:], size
        rows = (self.pointer + torch.arange(n, device=self.keys.device)) % size
        self.keys[rows] = keys.detach().to(self.keys.dtype)
        self.pointer.copy_((self.pointer + n) % size)


@torch.no_grad()
def momentum_update(key_net: nn.Module, query_net: nn.Module, momentum: float) -> None:
    """key <- momentum * key + (1 - momentum) * query for every parameter; buffers (BatchNorm
    statistics) are copied from the query network."""
    for k, q in zip(key_net.parameters(), query_net.parameters()):
        k.mul_(momentum).add_(q.detach(), alpha=1.0 - momentum)
    for k, q in zip(key_net.buffers(), query_net.buffers()):
        k.copy_(q)
