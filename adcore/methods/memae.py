"""Memory-augmented autoencoder (MemAE, Gong et al., ICCV 2019): the decoder only sees combinations
of learned normal patterns, so a defect is rebuilt as normal and stands out in the difference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adcore.methods.autoencoder import Autoencoder, ConvAutoencoder
from adcore.methods.base import register_method
from adcore.registry import Param


def hard_shrink_relu(weights: torch.Tensor, threshold: float, eps: float = 1e-12) -> torch.Tensor:
    """MemAE's continuous hard shrinkage: w -> max(w - t, 0) * w / (|w - t| + eps), which is w where
    w > t and 0 elsewhere but lets gradients through, then re-normalised so each row sums to 1."""
    if threshold <= 0:
        return weights
    shrunk = F.relu(weights - threshold) * weights / ((weights - threshold).abs() + eps)
    return shrunk / shrunk.sum(-1, keepdim=True).clamp_min(eps)


def address_entropy(weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean entropy of the addressing weights (..., M): low when each query uses few memory items."""
    return -(weights * (weights + eps).log()).sum(-1).mean()


class MemoryModule(nn.Module):
    """``size`` learned memory items of ``channels`` dimensions. Each latent vector (one per
    location of a (B, C, h, w) map) is replaced by a combination of items, weighted by a softmax of
    its cosine similarities to them (sharpened by ``temperature``), with small weights shrunk to 0."""

    def __init__(self, size: int, channels: int, shrink_threshold: float, temperature: float) -> None:
        super().__init__()
        self.items = nn.Parameter(torch.empty(size, channels))
        nn.init.uniform_(self.items, -1 / channels**0.5, 1 / channels**0.5)
        self.shrink_threshold, self.temperature = shrink_threshold, temperature

    def address(self, queries: torch.Tensor) -> torch.Tensor:
        """(N, C) latent vectors -> (N, M) addressing weights, each row summing to 1."""
        cosine = F.normalize(queries, dim=1) @ F.normalize(self.items, dim=1).t()
        return hard_shrink_relu(torch.softmax(cosine / self.temperature, dim=1), self.shrink_threshold)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> the rebuilt latent (B, C, h, w) and the weights (B*h*w, M)."""
        b, c, h, w = z.shape
        weights = self.address(z.permute(0, 2, 3, 1).reshape(-1, c))
        rebuilt = (weights @ self.items).view(b, h, w, c).permute(0, 3, 1, 2)
        return rebuilt, weights


class MemoryAutoencoder(nn.Module):
    """The autoencoder's encoder and decoder with a memory module between them."""

    def __init__(self, width: int, latent: int, memory_size: int, shrink_threshold: float, temperature: float) -> None:
        super().__init__()
        ae = ConvAutoencoder(width, latent)
        self.encoder, self.decoder = ae.encoder, ae.decoder
        self.memory = MemoryModule(memory_size, latent, shrink_threshold, temperature)

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rebuilt, weights = self.memory(self.encoder(x))
        return self.decoder(rebuilt), rebuilt, weights

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon, rebuilt, _ = self.forward_with_weights(x)
        return recon, rebuilt


@register_method
class MemAE(Autoencoder):
    name = "memae"
    title = "Memory-augmented autoencoder (MemAE)"
    summary = (
        "An autoencoder that may only rebuild a photo from a memory of normal patterns it learned, "
        "so a defect comes back repaired; where the rebuilt image differs, the map lights up."
    )
    params = [
        *Autoencoder.params,
        Param("memory_size", int, 100, "Number of memory items (normal patterns) the latent is rebuilt from.", 2, 4096),
        Param("shrink_threshold", float, 0.02, "Addressing weights below this are set to 0 (hard shrinkage); "
              "the paper uses 1/memory_size to 3/memory_size.", 0.0, 0.5),
        Param("entropy_weight", float, 0.0002, "Weight of the addressing-entropy loss (pushes towards few items).",
              0.0, 1.0),
        Param("temperature", float, 0.1, "Softmax temperature on the cosine similarities: at 1 the weights of "
              "hundreds of items are nearly equal and every latent becomes their average.", 0.01, 1.0, log=True),
    ]

    def _build_network(self) -> nn.Module:
        cfg = self.config_
        return MemoryAutoencoder(
            cfg["width"], cfg["latent_channels"], cfg["memory_size"], cfg["shrink_threshold"], cfg["temperature"]
        )

    def _training_loss(self, x: torch.Tensor) -> torch.Tensor:
        recon, _, weights = self.net_.forward_with_weights(x)
        return self._reconstruction_loss(x, recon) + self.config_["entropy_weight"] * address_entropy(weights)
