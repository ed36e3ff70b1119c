"""PatchCore with a defect segmenter: the memory bank's distance map averaged with the map of a small
network trained, on the same frozen ImageNet features, to outline synthetic defects pasted onto the
normal photos (the discriminative half of DRAEM, Zavrtanik et al. 2021, on PatchCore's features).

The two maps answer different questions. The memory says "no normal patch looked like this", which
also fires on normal surface from a different batch of parts; the segmenter says "this looks like
something pasted onto the surface", which does not. Each map is put on the scale of normal photos
kept out of training (z-scores of their patch scores) before they are averaged.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adcore.augment import compose
from adcore.methods.base import FitContext, register_method, resize_to, snapshot_epochs, to_tensor
from adcore.methods.epochs import train_epochs
from adcore.methods.patchcore import PatchCore, PatchCoreModel
from adcore.registry import Param

CALIBRATION_SHARE = 0.1  # normal photos kept out of training to put both maps on one scale
MAX_CALIBRATION = 64
DEFECT_SHARE = 0.5  # training photos that get a pasted defect; the rest are shown as they are


def segmenter_head(channels: int, width: int) -> nn.Sequential:
    """Two 3x3 convolutions (each patch judged with its 8 neighbours) and a 1x1 to one logit per patch."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, 1, 1),
    )


class SegmenterModel(PatchCoreModel):
    """A fitted PatchCore + segmenter's inference: PatchCore's (backbone, memory), the segmenter head
    (submodule), the per-channel ``feature_mean`` and ``feature_std`` it standardises the patch
    features by, and the ``calibration`` (buffers: mean and std of the memory's and the segmenter's
    patch scores on held-out normal photos). The map mixes the two z-scored maps by ``segmenter_weight``."""

    def __init__(self, *args, segmenter: nn.Module, segmenter_weight: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        dim = self.bank.shape[1]
        self.segmenter = segmenter
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.register_buffer("calibration", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        self.segmenter_weight = segmenter_weight

    def standardised(self, emb: torch.Tensor) -> torch.Tensor:
        return (emb - self.feature_mean[:, None, None]) / self.feature_std[:, None, None]

    def forward(self, x: torch.Tensor) -> dict:
        emb = self.embed(x)
        c, weight = self.calibration, self.segmenter_weight
        memory = (self.distances(emb) - c[0]) / c[1]
        segmenter = (self.segmenter(self.standardised(emb)) - c[2]) / c[3]
        return self.outputs(x, emb, (1 - weight) * memory + weight * segmenter)


@register_method
class PatchCoreSegmenter(PatchCore):
    name = "patchcore_segmenter"
    title = "PatchCore + defect segmenter (pretrained)"
    summary = (
        "PatchCore's memory of normal patches, plus a small network trained on the same ImageNet "
        "features to outline defects pasted onto the normal photos. The memory finds what is new; the "
        "segmenter tells a defect from normal surface that merely looks different. Their maps are averaged."
    )
    augmentation_role = (
        "The defects the segmenter learns to outline: the chain is applied to half of the training photos "
        "and its pasted patches and scars (CutPaste, CutPaste-scar) are what it must find; crop and colour "
        "jitter add normal variation. The chain needs at least one pasting step."
    )
    default_augmentations: list[tuple[str, dict]] = [("cutpaste", {}), ("cutpaste_scar", {})]
    learns_pasted_defects = True
    params = PatchCore.params + [
        Param("epochs", int, 8, "Passes of the segmenter over the normal photos (a time budget may end "
              "training sooner).", 1, 500),
        Param("segmenter_width", int, 128, "Channels of the segmenter's two convolution layers.", 8, 1024),
        Param("learning_rate", float, 3e-4, "Adam's learning rate for the segmenter, annealed to zero "
              "over the epochs (cosine).", 1e-6, 1e-1, log=True),
        Param("segmenter_weight", float, 0.5, "Share of the segmenter's map in the final map (0: the "
              "memory's alone, as in PatchCore; 1: the segmenter's alone).", 0.0, 1.0),
    ]
    # Without a pasting step there is nothing for the segmenter to learn.
    _PASTING = ("cutpaste", "cutpaste_scar")

    def _new_model(self, backbone: nn.Module, bank: torch.Tensor, *args, **kwargs) -> SegmenterModel:
        cfg = self.config_
        return SegmenterModel(backbone, bank, *args, segmenter=segmenter_head(bank.shape[1], cfg["segmenter_width"]),
                              segmenter_weight=cfg["segmenter_weight"], **kwargs)

    @property
    def segmenter_(self) -> nn.Module:
        """The segmenter head being trained (the inference module's)."""
        return self.model_.segmenter

    # -- training --------------------------------------------------------------------------------
    def _fit(self, images: Sequence[np.ndarray], ctx: FitContext) -> None:
        if not any(name in self._PASTING for name, _ in self.augmentations_):
            raise ValueError(
                f"{self.name} learns to outline pasted defects, so its augmentations need cutpaste or "
                f"cutpaste_scar; got {[name for name, _ in self.augmentations_] or 'none'}"
            )
        n = len(images)
        n_cal = min(MAX_CALIBRATION, max(1, round(n * CALIBRATION_SHARE))) if n >= 3 else 0
        order = self.rng_.permutation(n)
        train = [images[i] for i in order[n_cal:]]
        # With fewer than 3 photos none can be spared: calibrate on the training photos (scores biased low).
        self.calibration_images_ = [images[i] for i in order[:n_cal]] or train
        super()._fit(train, ctx)
        bank = self.model_.bank
        self.model_.feature_mean, self.model_.feature_std = bank.mean(0), bank.std(0, unbiased=False).clamp_min(1e-6)
        self._calibrate_memory()
        self._train_segmenter(train, ctx)
        self._calibrate_segmenter()
        del self.calibration_images_

    def _train_segmenter(self, images: list[np.ndarray], ctx: FitContext) -> None:
        cfg = self.config_
        head = self.segmenter_
        opt = torch.optim.Adam(head.parameters(), lr=cfg["learning_rate"], weight_decay=1e-5)
        total = self._total_steps(len(images))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + np.cos(np.pi * min(i, total) / total)))
        pos_weight = torch.tensor(3.0, device=self.device_)
        head.train()

        def step(idx: np.ndarray, done: int) -> torch.Tensor:
            loss, count = 0.0, 0
            for x, target in self._defect_batches([images[i] for i in idx]):
                with torch.no_grad():
                    emb = self.model_.standardised(self._embed(x))
                logits = head(emb)
                cells = F.adaptive_avg_pool2d(target[:, None], logits.shape[-2:])
                # Positives are rare (a few patches per defect photo): weigh them up, as DRAEM's focal loss does.
                loss = loss + F.binary_cross_entropy_with_logits(
                    logits, cells, pos_weight=pos_weight, reduction="sum"
                )
                count += cells.numel()
            loss = loss / count
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            return loss

        train_epochs(self, ctx, len(images), step)
        head.eval()

    def _defect_batches(self, images: list[np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Photos grouped by input shape -> ((B, 3, H, W) input, (B, H, W) defect mask) pairs: about
        half the photos get the augmentation chain (and its pasted defects), the rest are unchanged."""
        out = []
        for (h, w), members in self._shape_groups(images).items():
            batch = resize_to([images[i] for i in members], h, w)
            masks = np.zeros((len(members), h, w), dtype=np.float32)
            for j in np.flatnonzero(self.rng_.random(len(members)) < DEFECT_SHARE):
                result = compose(self.augmentations_, batch[j], self.rng_)
                batch[j] = result.image
                if result.mask is not None:
                    masks[j] = result.mask
            out.append((to_tensor(batch, self.device_), torch.from_numpy(masks).to(self.device_)))
        return out

    def record_epoch_scores(self, ctx: FitContext, epoch: int, epochs: int) -> None:
        # Monitor scores mix both maps, so put the segmenter on its current scale first.
        if ctx.monitor and epoch in snapshot_epochs(epochs, ctx.snapshots):
            self.segmenter_.eval()
            self._calibrate_segmenter()
            self.segmenter_.train()
        super().record_epoch_scores(ctx, epoch, epochs)

    # -- calibration -----------------------------------------------------------------------------
    def _calibration_scores(self, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            parts = [score(self._embed(x)).flatten() for _, x in self._shaped_batches(self.calibration_images_, 16)]
        return torch.cat(parts)

    def _calibrate_memory(self) -> None:
        values = self._calibration_scores(self._distances)
        c = self.model_.calibration
        c[0], c[1] = values.mean(), values.std(unbiased=False).clamp_min(1e-6)

    def _calibrate_segmenter(self) -> None:
        values = self._calibration_scores(lambda emb: self.segmenter_(self.model_.standardised(emb)))
        c = self.model_.calibration
        c[2], c[3] = values.mean(), values.std(unbiased=False).clamp_min(1e-6)
