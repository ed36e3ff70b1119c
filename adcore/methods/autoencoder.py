"""Convolutional autoencoder: the anomaly map is the reconstruction difference, normalised per pixel."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adcore.methods.base import (
    FitContext,
    Method,
    augment_batch,
    gaussian_blur,
    register_method,
    to_tensor,
)
from adcore.methods.epochs import train_epochs
from adcore.registry import Param


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvAutoencoder(nn.Module):
    """Four stride-2 stages down to a ``latent``-channel bottleneck at 1/16 size, and back."""

    def __init__(self, width: int, latent: int) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            _down(3, w), _down(w, 2 * w), _down(2 * w, 4 * w), _down(4 * w, 4 * w), nn.Conv2d(4 * w, latent, 1)
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, 4 * w, 1),
            nn.ReLU(inplace=True),
            _up(4 * w, 4 * w),
            _up(4 * w, 2 * w),
            _up(2 * w, w),
            nn.ConvTranspose2d(w, w, 4, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 3, 3, 1, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return self.decoder(z), z


def box_mean(t: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, H, W) -> the mean over each ``window`` x ``window`` box, reflect-padded (same size), summed
    from shifted slices: ``F.avg_pool2d``'s result in any dtype, also float64 in ONNX (whose pooling is
    float32 only)."""
    pad = window // 2
    t = F.pad(t, (pad,) * 4, mode="reflect")
    h, w = t.shape[-2] - 2 * pad, t.shape[-1] - 2 * pad
    rows = sum(t[..., i : i + h, :] for i in range(window))
    return sum(rows[..., j : j + w] for j in range(window)) / (window * window)


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 7, exact: bool = False) -> torch.Tensor:
    """Per-pixel SSIM (B, H, W) of images in [0, 1], averaged over channels; box window.

    ``exact``: computed in float64 (returned as float32). The variances E[x^2] - E[x]^2 cancel most of
    float32's digits: measured, float32 puts an autoencoder's image score 1.7e-4 (relative) off the
    float64 value, more than two float32 implementations (torch, onnxruntime) may differ by."""
    if exact:
        return ssim_map(x.double(), y.double(), window, exact=False).float()
    c1, c2 = 0.01**2, 0.03**2
    pad = window // 2
    if x.dtype == torch.float64:
        pool = lambda t: box_mean(t, window)  # noqa: E731
    else:
        pool = lambda t: F.avg_pool2d(F.pad(t, (pad,) * 4, mode="reflect"), window, 1)  # noqa: E731
    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx**2, pool(y * y) - my**2, pool(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(1)


def top_k_mean(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the top ``fraction`` of each map's pixels: robust to a single hot pixel, sees small defects."""
    flat = maps.flatten(1)
    k = max(1, int(round(int(flat.shape[1]) * fraction)))  # int(): a constant when traced for export
    return flat.topk(k, dim=1).values.mean(1)


SCORE_STATISTICS = ("top_mean", "max", "mean")


def map_statistic(maps: torch.Tensor, statistic: str, fraction: float) -> torch.Tensor:
    """(B, H, W) anomaly maps -> (B,) image scores: ``top_mean`` (mean of the top ``fraction`` of
    pixels), ``max`` (the hottest pixel: sharpest for tiny defects, least robust) or ``mean`` (the
    whole map: for defects that cover much of the part)."""
    if statistic == "top_mean":
        return top_k_mean(maps, fraction)
    if statistic == "max":
        return maps.flatten(1).max(1).values
    if statistic == "mean":
        return maps.flatten(1).mean(1)
    raise ValueError(f"unknown score statistic {statistic!r}; known: {', '.join(SCORE_STATISTICS)}")


def map_score_params(top_fraction: float = 0.01) -> list[Param]:
    """The image-score parameters every map-based method here shares."""
    return [
        Param("score_statistic", str, "top_mean", "Image score from the map: top_mean = mean of the hottest "
              "top_fraction of pixels; max = the hottest pixel; mean = the whole map.", choices=SCORE_STATISTICS),
        Param("top_fraction", float, top_fraction, "For top_mean: the fraction of map pixels averaged.",
              1e-4, 1.0, log=True),
    ]


def difference_map(x: torch.Tensor, recon: torch.Tensor, loss: str, sigma: float) -> torch.Tensor:
    """(B, H, W) raw difference of images and their reconstructions: mean absolute difference over
    channels, plus the SSIM dissimilarity for ``loss="mse+ssim"`` (``exact``, so that an ONNX export
    gives the same maps), smoothed by ``sigma`` pixels."""
    diff = (x - recon).abs().mean(1)
    if loss == "mse+ssim":
        diff = diff + (1 - ssim_map(x, recon, exact=True)) / 2
    return gaussian_blur(diff, sigma)


class AutoencoderModel(nn.Module):
    """A fitted autoencoder's inference: the network (submodule; ``net(x)`` gives the reconstruction
    and the latent) and the per-pixel mean and spread of the normal images' difference (buffers).
    ``forward`` maps (B, 3, S, S) float images in [0, 1] to ``scores`` (B,), z-scored difference
    ``maps`` (B, S, S), pooled latent ``embeddings`` and the ``reconstructions``."""

    def __init__(
        self, net: nn.Module, err_mean: torch.Tensor, err_std: torch.Tensor, *, loss: str, map_sigma: float,
        score_statistic: str, top_fraction: float,
    ) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("err_mean", err_mean)
        self.register_buffer("err_std", err_std)
        self.loss, self.map_sigma = loss, map_sigma
        self.score_statistic, self.top_fraction = score_statistic, top_fraction

    def raw_map(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """(B, H, W) difference of images and their reconstructions, before the z-score."""
        return difference_map(x, recon, self.loss, self.map_sigma)

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> the encoder's latent (B, latent_channels, S/16, S/16): lets a
        student-teacher run use this autoencoder as its teacher."""
        return self.net.encoder(x)

    def forward(self, x: torch.Tensor) -> dict:
        recon, z = self.net(x)
        maps = (self.raw_map(x, recon) - self.err_mean) / self.err_std
        return {
            "scores": map_statistic(maps, self.score_statistic, self.top_fraction),
            "embeddings": F.adaptive_avg_pool2d(z, 1).flatten(1),
            "maps": maps,
            "reconstructions": recon,
        }


@register_method
class Autoencoder(Method):
    name = "autoencoder"
    title = "Convolutional autoencoder"
    summary = (
        "Learns to rebuild normal parts; where the rebuilt image differs from the photo more than it "
        "does on normal parts, the map lights up."
    )
    augmentation_role = (
        "Training augmentation: the autoencoder learns to rebuild every augmented view, so use only "
        "variation that normal parts really show (small shifts, lighting)."
    )
    default_augmentations = [("color_jitter", {"brightness": 0.05, "contrast": 0.05})]
    params = [
        Param("epochs", int, 40, "Passes over the normal images.", 1, 2000),
        Param("batch_size", int, 16, "Images per training step.", 2, 512),
        Param("learning_rate", float, 2e-3, "Adam learning rate.", 1e-5, 1e-1, log=True),
        Param("width", int, 16, "Channels of the first layer (doubles twice with depth).", 8, 128),
        Param("latent_channels", int, 16, "Channels of the bottleneck at 1/16 of the image size.", 1, 256),
        Param("loss", str, "mse+ssim", "Reconstruction loss.", choices=("mse", "mse+ssim")),
        Param("map_sigma", float, 2.0, "Gaussian smoothing of the difference map, in pixels at image_size.", 0.0, 16.0),
        *map_score_params(0.01),
    ]

    def _build(self) -> None:
        cfg = self.config_
        size = cfg["image_size"]
        # Per-pixel statistics of the difference on normal images: the map is a z-score against them.
        self.model_ = self._new_model(
            self._build_network(), torch.zeros(size, size), torch.ones(size, size), loss=cfg["loss"],
            map_sigma=cfg["map_sigma"], score_statistic=cfg["score_statistic"], top_fraction=cfg["top_fraction"],
        ).to(self.device_)

    @property
    def net_(self) -> nn.Module:
        """The network being trained (the inference module's)."""
        return self.model_.net

    def _new_model(self, *args, **kwargs) -> AutoencoderModel:
        """The unfitted inference module (a subclass may extend the autoencoder's)."""
        return AutoencoderModel(*args, **kwargs)

    def _build_network(self) -> nn.Module:
        """The network: ``net(x)`` returns (reconstruction, latent); ``net.encoder`` maps x to the latent."""
        return ConvAutoencoder(self.config_["width"], self.config_["latent_channels"])

    def _fit(self, images: np.ndarray, ctx: FitContext) -> None:
        cfg = self.config_
        net, device = self.net_, self.device_
        opt = torch.optim.Adam(net.parameters(), lr=cfg["learning_rate"])
        total = self._total_steps(len(images))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["learning_rate"], total_steps=total, pct_start=0.1)

        def step(idx: np.ndarray, done: int) -> torch.Tensor:
            x = to_tensor(augment_batch(images[idx], self.augmentations_, self.rng_), device)
            loss = self._training_loss(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            return loss

        net.train()
        train_epochs(self, ctx, len(images), step)
        net.eval()
        self._fit_error_statistics(images, ctx)

    def _reconstruction_loss(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        loss = F.mse_loss(recon, x)
        if self.config_["loss"] == "mse+ssim":
            loss = loss + (1 - ssim_map(x, recon).mean()) * 0.5
        return loss

    def _training_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The loss of one training batch ``x`` (B, 3, S, S); subclasses add their own terms."""
        return self._reconstruction_loss(x, self.net_(x)[0])

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """The inference module's ``dense_features``, in eval mode: what a student-teacher run learns from."""
        return self.inference_module().eval().dense_features(x)

    def _fit_error_statistics(self, images: np.ndarray, ctx: FitContext) -> None:
        """Mean and spread of the raw difference at each pixel over the normal images."""
        maps = []
        with torch.inference_mode():
            for start in range(0, len(images), 64):
                x = to_tensor(images[start : start + 64], self.device_)
                maps.append(self.model_.raw_map(x, self.net_(x)[0]))
                ctx.check_cancel()
        maps = torch.cat(maps)
        mean = maps.mean(0)
        std = maps.std(0) if len(maps) > 1 else torch.ones_like(mean)
        # Floor the spread so pixels that happened to be easy do not explode.
        self.model_.err_mean, self.model_.err_std = mean, torch.clamp(std, min=float(std.median()) * 0.5 + 1e-6)
