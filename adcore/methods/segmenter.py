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
from adcore.methods.patchcore import PatchCore
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

    def _build(self) -> None:
        super()._build()
        dim = self.bank_.shape[1]
        self.segmenter_ = segmenter_head(dim, self.config_["segmenter_width"]).to(self.device_)
        # Per-channel standardisation of the features the segmenter sees, and the (mean, std) of the
        # memory's and the segmenter's patch scores on normal photos kept out of training.
        self.feature_mean_ = torch.zeros(dim, device=self.device_)
        self.feature_std_ = torch.ones(dim, device=self.device_)
        self.calibration_ = torch.tensor([0.0, 1.0, 0.0, 1.0], device=self.device_)

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
        self.feature_mean_ = self.bank_.mean(0)
        self.feature_std_ = self.bank_.std(0, unbiased=False).clamp_min(1e-6)
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
                    emb = self._standardised(self._embed(x))
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
    def _standardised(self, emb: torch.Tensor) -> torch.Tensor:
        return (emb - self.feature_mean_[:, None, None]) / self.feature_std_[:, None, None]

    def _calibration_scores(self, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            parts = [score(self._embed(x)).flatten() for _, x in self._shaped_batches(self.calibration_images_, 16)]
        return torch.cat(parts)

    def _calibrate_memory(self) -> None:
        values = self._calibration_scores(self._distances)
        self.calibration_[0], self.calibration_[1] = values.mean(), values.std(unbiased=False).clamp_min(1e-6)

    def _calibrate_segmenter(self) -> None:
        values = self._calibration_scores(lambda emb: self.segmenter_(self._standardised(emb)))
        self.calibration_[2], self.calibration_[3] = values.mean(), values.std(unbiased=False).clamp_min(1e-6)

    # -- scoring ---------------------------------------------------------------------------------
    def _predict_batch(self, x: torch.Tensor) -> dict:
        emb = self._embed(x)
        c, weight = self.calibration_, self.config_["segmenter_weight"]
        memory = (self._distances(emb) - c[0]) / c[1]
        segmenter = (self.segmenter_(self._standardised(emb)) - c[2]) / c[3]
        return self._outputs(x, emb, (1 - weight) * memory + weight * segmenter)

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        state = super()._state_tensors()
        state.update({f"segmenter.{k}": v for k, v in self.segmenter_.state_dict().items()})
        state.update(feature_mean=self.feature_mean_, feature_std=self.feature_std_, calibration=self.calibration_)
        return state

    def _load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        super()._load_state_tensors(state)
        prefix = "segmenter."
        self.segmenter_.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.segmenter_.eval()
        self.feature_mean_ = state["feature_mean"].float()
        self.feature_std_ = state["feature_std"].float()
        self.calibration_ = state["calibration"].float()
