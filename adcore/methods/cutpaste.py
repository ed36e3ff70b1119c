"""CutPaste (Li et al. 2021): learn to tell normal images (or patches) from ones with a pasted
patch or scar, then score by the Gaussian density of the learned embeddings of normal images."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adcore.augment import apply
from adcore.encoders import (
    EncoderFeatures,
    EncoderModel,
    ENCODER_PARAMS,
    OPTIM_PARAMS,
    GaussianDensity,
    assemble_map,
    build_encoder,
    extract_patches,
    make_optimizer,
    mlp_head,
    patch_grid,
    prepared_uint8,
    scheduled_step,
    time_one_pass,
)
from adcore.methods.base import (
    FitContext,
    Method,
    augment_batch,
    gaussian_blur,
    register_method,
    to_tensor,
)
from adcore.methods.epochs import TrainingClock, train_epochs
from adcore.registry import Param

# The pretext classes of each variant, in label order (0 is always the normal image).
VARIANTS = {"binary": ("normal", "cutpaste"), "scar": ("normal", "cutpaste_scar"),
            "3way": ("normal", "cutpaste", "cutpaste_scar")}
# CutPaste's patch area, as a fraction of what the network sees (Li et al.: 2-15 %).
AREA = (0.02, 0.15)
PATCH_ROWS = 4096  # patches encoded at once when scoring
MAX_GAUSSIAN_ROWS = 100_000  # normal patch embeddings the Gaussian is fitted on (a random subset beyond)


class CutPasteModel(EncoderModel):
    """A fitted CutPaste's inference: the encoder and its classifier head (submodules) and the
    Gaussians of the normal images' whole-image and patch embeddings (``image_gaussian``,
    ``patch_gaussian``). ``forward`` maps (B, 3, S, S) float images in [0, 1] to ``scores`` (B,),
    ``maps`` (B, S, S: each pixel the mean score of the patches covering it, smoothed) and the
    whole-image ``embeddings``."""

    def __init__(self, encoder: nn.Module, head: nn.Module, *, normalize: str, patch_size: int,
                 patch_stride: int, map_sigma: float, image_score: str) -> None:
        super().__init__(encoder, head, normalize=normalize)
        self.image_gaussian = GaussianDensity(encoder.embedding_dim)
        self.patch_gaussian = GaussianDensity(encoder.embedding_dim)
        self.patch_size, self.patch_stride, self.map_sigma = patch_size, patch_stride, map_sigma
        self.image_score = image_score

    def patch_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared (B, 3, S, S) -> (B * n * n, D) embeddings of its patches, row by row."""
        patches = extract_patches(x, self.patch_size, self.patch_stride)
        chunks = [patches[i : i + PATCH_ROWS] for i in range(0, len(patches), PATCH_ROWS)]
        return torch.cat([self.encoder(chunk).embedding for chunk in chunks])

    def forward(self, x: torch.Tensor) -> dict:
        x = self.input(x)
        size = x.shape[-1]
        embedding = self.encoder(x).embedding
        n = patch_grid(size, min(self.patch_size, size), self.patch_stride)
        patch_scores = self.patch_gaussian(self.patch_embeddings(x)).view(len(x), n, n)
        maps = gaussian_blur(assemble_map(patch_scores, size, self.patch_size, self.patch_stride), self.map_sigma)
        if self.image_score == "patch_max":
            scores = patch_scores.flatten(1).max(1).values
        else:
            scores = self.image_gaussian(embedding)
        return {"scores": scores, "embeddings": embedding, "maps": maps}


@register_method
class CutPaste(EncoderFeatures, Method):
    name = "cutpaste"
    title = "CutPaste (self-supervised)"
    summary = (
        "Learns, from normal images only, to spot a pasted patch or a thin scar; what the network "
        "learned describes normal texture, and a patch that lies far from every normal patch lights up."
    )
    augmentation_role = (
        "Applied to every training image before the patch or scar is pasted: variation normal parts "
        "really show (lighting, small shifts). The pasted defects themselves are the method's own."
    )
    default_augmentations: list[tuple[str, dict]] = []
    learns_pasted_defects = True
    params = [
        Param("variant", str, "3way", "Pretext task: binary (normal vs pasted patch), scar (normal vs pasted "
              "thin scar) or 3way (normal / patch / scar).", choices=tuple(VARIANTS)),
        Param("epochs", int, 150, "Passes over the normal images (a time budget may end training sooner; the "
              "learning rate then anneals by time).", 1, 5000),
        Param("batch_size", int, 32, "Normal images per step (each also shown with every pasted defect).", 2, 512),
        *ENCODER_PARAMS,
        *OPTIM_PARAMS,
        Param("head_layers", int, 1, "Hidden layers of the MLP classifier head.", 0, 4),
        Param("head_dim", int, 128, "Width of the MLP head's hidden layers.", 8, 2048),
        Param("patch_size", int, 32, "Side (pixels at image_size) of the patches the map is made of; also "
              "what the network is trained on with train_on=patches.", 8, 512),
        Param("patch_stride", int, 8, "Step between neighbouring patches (pixels at image_size).", 1, 256),
        Param("train_on", str, "patches", "patches: train on random patches (small defects fill more of "
              "what the network sees); images: on whole images, as in the paper's image-level model.",
              choices=("patches", "images")),
        Param("image_score", str, "patch_max", "patch_max: the most anomalous patch; image: Gaussian of the "
              "whole-image embedding (the paper's image-level score).", choices=("patch_max", "image")),
        Param("map_sigma", float, 4.0, "Gaussian smoothing of the anomaly map, in pixels at image_size.", 0.0, 32.0),
    ]

    # -- building --------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.config_
        encoder, self.encoder_name_ = build_encoder(cfg)
        head = mlp_head(encoder.embedding_dim, cfg["head_dim"], len(VARIANTS[cfg["variant"]]), cfg["head_layers"])
        self.model_ = CutPasteModel(
            encoder, head, normalize=cfg["normalize"], patch_size=cfg["patch_size"], patch_stride=cfg["patch_stride"],
            map_sigma=cfg["map_sigma"], image_score=cfg["image_score"],
        ).to(self.device_)

    # -- training --------------------------------------------------------------------------------
    def _crop_size(self) -> int:
        cfg = self.config_
        return min(cfg["patch_size"], cfg["image_size"]) if cfg["train_on"] == "patches" else cfg["image_size"]

    def _pretext_batch(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prepared (S, S, 3) uint8 image in every pretext class -> network input (B * classes, 3, c, c)
        and labels. Defects are pasted on the whole image, with the patch area scaled to the crop,
        and the crop is placed so that it shows the defect."""
        cfg, rng = self.config_, self.rng_
        size, crop = cfg["image_size"], self._crop_size()
        scale = (crop / size) ** 2
        area = {"area_min": max(0.001, AREA[0] * scale), "area_max": max(0.001, AREA[1] * scale)}
        images = augment_batch(images, self.augmentations_, rng)
        out, corners, labels = [], [], []
        for label, kind in enumerate(VARIANTS[cfg["variant"]]):
            for image in images:
                if kind == "normal":
                    out.append(image)
                    corners.append(rng.integers(0, size - crop + 1, 2))
                    labels.append(label)
                    continue
                pasted = apply(kind, image, rng, **(area if kind == "cutpaste" else {}))
                out.append(pasted.image)
                labels.append(label)
                rows, cols = np.nonzero(pasted.mask) if pasted.mask.any() else ([size // 2], [size // 2])
                centre = np.array([np.mean(rows), np.mean(cols)])
                offset = rng.uniform(0.2, 0.8, 2) * crop
                corners.append(np.clip(np.round(centre - offset), 0, size - crop).astype(int))
        x = to_tensor(np.stack(out), self.device_)
        if crop < size:
            x = torch.stack([x[i, :, t : t + crop, l : l + crop] for i, (t, l) in enumerate(corners)])
        return x, torch.tensor(labels, device=self.device_)

    def _fit(self, images: np.ndarray, ctx: FitContext) -> None:
        cfg = self.config_
        encoder, head = self.encoder_, self.head_
        # Time the pass over the normal images that follows training, to keep it inside the budget.
        sample = images[: min(len(images), 16)]
        self._embed_normal(sample[:2])  # the first pass pays one-off costs that would skew the timing
        reserve = time_one_pass(lambda: self._embed_normal(sample), len(sample), len(images)) * 1.3
        prepared = prepared_uint8(images, cfg["normalize"], self.device_)
        opt = make_optimizer(list(encoder.parameters()) + list(head.parameters()), cfg)
        clock = TrainingClock(self._total_steps(len(images)), ctx.budget_s, ctx.started, reserve)
        encoder.train()
        head.train()

        def batch_loss(idx: np.ndarray) -> torch.Tensor:
            x, y = self._pretext_batch(prepared[idx])
            return F.cross_entropy(head(encoder(x).embedding), y)

        train_epochs(self, ctx, len(images), scheduled_step(opt, cfg, clock, batch_loss), stop_after=clock.done)
        encoder.eval()
        head.eval()
        self._fit_gaussians(images, ctx)

    def _embed_normal(self, images: np.ndarray, ctx: FitContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-image and patch embeddings of (N, S, S, 3) uint8 normal images, in eval mode."""
        was_training = self.encoder_.training
        self.encoder_.eval()
        whole, patches = [], []
        with torch.inference_mode():
            for start in range(0, len(images), 32):
                x = self._input(to_tensor(images[start : start + 32], self.device_))
                whole.append(self.encoder_(x).embedding)
                patches.append(self.model_.patch_embeddings(x))
                if ctx is not None:
                    ctx.report(step=min(start + 32, len(images)), total_steps=len(images),
                               images=min(start + 32, len(images)), phase="fitting the Gaussian")
        self.encoder_.train(was_training)
        return torch.cat(whole), torch.cat(patches)

    def _fit_gaussians(self, images: np.ndarray, ctx: FitContext) -> None:
        whole, patches = self._embed_normal(images, ctx)
        if len(patches) > MAX_GAUSSIAN_ROWS:
            keep = torch.from_numpy(self.rng_.choice(len(patches), MAX_GAUSSIAN_ROWS, replace=False))
            patches = patches[keep.to(patches.device)]
        self.model_.image_gaussian.fit(whole)
        self.model_.patch_gaussian.fit(patches)
