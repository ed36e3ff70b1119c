"""Adversarially trained reconstruction after "Old is Gold" (OGNet, Zaheer et al., CVPR 2020): an
autoencoder (the generator) is trained against a discriminator, which is then taught to tell normal
photos and good reconstructions from pseudo-anomalies."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from adcore.methods.autoencoder import Autoencoder, AutoencoderModel
from adcore.methods.base import FitContext, augment_batch, register_method, to_tensor
from adcore.methods.epochs import train_epochs
from adcore.registry import Param

PHASE1_BUDGET_SHARE = 0.8  # of a time budget, the rest goes to the discriminator's second phase
DIVERGED_HINT = "try a lower learning_rate or adversarial_weight"


class Discriminator(nn.Module):
    """Four stride-2 convolutions (spectrally normalised, which keeps the adversarial game from
    blowing up), global average, one logit: high = "a normal photo"."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w, layers, cin = width, [], 3
        for cout in (w, 2 * w, 4 * w, 4 * w):
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear(cin, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))[:, 0]


def pseudo_anomalies(x: torch.Tensor, old_recon: torch.Tensor) -> torch.Tensor:
    """OGNet's pseudo-anomalies for a batch ``x`` (B, 3, H, W), B >= 2: the old (weaker) generator's
    reconstructions, and pixel-wise averages of each image with a different one of the batch."""
    mixed = (x + x.roll(1, dims=0)) / 2
    return torch.cat([old_recon, mixed])


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


class OGNetModel(AutoencoderModel):
    """A fitted OGNet's inference: the autoencoder's (generator, per-pixel difference statistics),
    the discriminator (submodule) and the normal images' mean and spread of the two score parts
    (``score_stats``: reconstruction mean, std, discriminator mean, std). The maps are the
    autoencoder's; the score mixes both parts, each standardised, by ``discriminator_weight``."""

    def __init__(self, *args, discriminator: nn.Module, discriminator_weight: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.disc = discriminator
        self.register_buffer("score_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        self.discriminator_weight = discriminator_weight

    def score_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Reconstruction score (B,), discriminator anomaly logit (B,), and the autoencoder's outputs."""
        out = super().forward(x)
        return out["scores"], -self.disc(x), out

    def forward(self, x: torch.Tensor) -> dict:
        recon_score, disc_score, out = self.score_parts(x)
        s, w = self.score_stats, self.discriminator_weight
        out["scores"] = (1 - w) * (recon_score - s[0]) / s[1] + w * (disc_score - s[2]) / s[3]
        return out


@register_method
class OGNet(Autoencoder):
    name = "ognet"
    title = "Adversarial autoencoder (Old is Gold)"
    summary = (
        "An autoencoder trained against a critic that learns what normal photos and good "
        "reconstructions look like; the score adds the critic's doubt to the reconstruction "
        "difference, and the map shows the difference."
    )
    params = [
        *Autoencoder.params,
        Param("discriminator_epochs", int, 5, "Passes of the second phase, where only the discriminator learns "
              "normal vs pseudo-anomalies.", 1, 500),
        Param("adversarial_weight", float, 0.05, "Weight of the adversarial loss for the generator (the "
              "reconstruction loss has weight 1).", 0.0, 10.0),
        Param("old_generator_at", float, 0.3, "The 'old' generator is the one after this fraction of the first "
              "phase: its weaker reconstructions are pseudo-anomalies.", 0.05, 0.9),
        Param("discriminator_weight", float, 0.5, "Image score = (1 - w) x the reconstruction score + w x the "
              "discriminator's anomaly logit, each standardised on the normal training images.", 0.0, 1.0),
    ]

    def _new_model(self, *args, **kwargs) -> OGNetModel:
        cfg = self.config_
        return OGNetModel(*args, discriminator=Discriminator(cfg["width"]),
                          discriminator_weight=cfg["discriminator_weight"], **kwargs)

    @property
    def disc_(self) -> nn.Module:
        """The discriminator being trained (the inference module's)."""
        return self.model_.disc

    # -- learning ------------------------------------------------------------------------------
    def _fit(self, images: np.ndarray, ctx: FitContext) -> None:
        cfg, device = self.config_, self.device_
        gen, disc = self.net_, self.disc_
        opt_g = torch.optim.Adam(gen.parameters(), lr=cfg["learning_rate"])
        opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
        total = self._total_steps(len(images))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt_g, max_lr=cfg["learning_rate"], total_steps=total, pct_start=0.1
        )
        phase1_s = None if ctx.budget_s is None else ctx.budget_s * PHASE1_BUDGET_SHARE
        old_step = max(1, int(total * cfg["old_generator_at"]))
        old_gen = None

        def step(idx: np.ndarray, done: int) -> torch.Tensor:
            nonlocal old_gen
            x = to_tensor(augment_batch(images[idx], self.augmentations_, self.rng_), device)
            recon = gen(x)[0]
            # Discriminator: real photos (label smoothed to 0.9) vs reconstructions.
            loss_d = (_bce(disc(x), 0.9) + _bce(disc(recon.detach()), 0.0)) / 2
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # Generator: rebuild the photo, and fool the discriminator a little.
            loss_g = self._reconstruction_loss(x, recon) + cfg["adversarial_weight"] * _bce(disc(recon), 1.0)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            sched.step()
            elapsed = time.monotonic() - ctx.started
            if old_gen is None and (
                done + 1 >= old_step or (phase1_s is not None and elapsed >= phase1_s * cfg["old_generator_at"])
            ):
                old_gen = copy.deepcopy(gen).eval().requires_grad_(False)
            return loss_g

        def phase1_over(done: int) -> bool:  # the rest of the budget is for the discriminator's phase
            return phase1_s is not None and time.monotonic() - ctx.started >= phase1_s

        gen.train()
        disc.train()
        train_epochs(self, ctx, len(images), step, phase="training generator", stop_after=phase1_over,
                     diverged_hint=DIVERGED_HINT)
        if old_gen is None:  # a budget shorter than a few steps
            old_gen = copy.deepcopy(gen).eval().requires_grad_(False)
        gen.eval().requires_grad_(False)
        self._fit_error_statistics(images, ctx)
        self._fit_discriminator(images, old_gen, ctx)
        disc.eval()
        gen.requires_grad_(True)
        self._fit_score_statistics(images, ctx)

    def _fit_discriminator(self, images: np.ndarray, old_gen: nn.Module, ctx: FitContext) -> None:
        """Phase 2, generator frozen: normal photos and the generator's reconstructions are labelled
        normal, the old generator's reconstructions and two-image averages pseudo-anomalous."""
        cfg, device, disc = self.config_, self.device_, self.disc_
        opt = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.999))

        def step(idx: np.ndarray, done: int) -> torch.Tensor:
            x = to_tensor(augment_batch(images[idx], self.augmentations_, self.rng_), device)
            with torch.no_grad():
                normal = torch.cat([x, self.net_(x)[0]])
                anomalous = pseudo_anomalies(x, old_gen(x)[0])
            loss = (_bce(disc(normal), 1.0) + _bce(disc(anomalous), 0.0)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        # No monitor scores in this phase: the image score's scale is measured after it.
        train_epochs(self, ctx, len(images), step, epochs=cfg["discriminator_epochs"],
                     phase="training discriminator", monitor=False, diverged_hint=DIVERGED_HINT)

    def _fit_score_statistics(self, images: np.ndarray, ctx: FitContext) -> None:
        """Mean and spread, on the normal images, of the two parts of the image score."""
        parts = []
        with torch.inference_mode():
            for start in range(0, len(images), 64):
                parts.append(torch.stack(self.model_.score_parts(to_tensor(images[start : start + 64], self.device_))[:2], 1))
                ctx.check_cancel()
        parts = torch.cat(parts)
        mean, std = parts.mean(0), parts.std(0).nan_to_num(1.0).clamp_min(1e-6)
        self.model_.score_stats = torch.stack([mean[0], std[0], mean[1], std[1]])

    # -- scoring -------------------------------------------------------------------------------
    def discriminator_scores(self, images: np.ndarray) -> np.ndarray:
        """The discriminator's anomaly logits for (N, S, S, 3) uint8 images (for checking training)."""
        with torch.inference_mode():
            return (-self.disc_(to_tensor(images, self.device_))).double().cpu().numpy()
