"""Contrastive learning (SimCLR, optionally MoCo's momentum encoder and key queue) on normal images;
the anomaly score is the Gaussian density of the encoder's embeddings of the normal images."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from adcore.encoders import (
    EncoderFeatures,
    EncoderModel,
    ENCODER_PARAMS,
    OPTIM_PARAMS,
    GaussianDensity,
    build_encoder,
    make_optimizer,
    mlp_head,
    prepared_uint8,
    scheduled_step,
    time_one_pass,
)
from adcore.losses import KeyQueue, info_nce, margin_contrastive, momentum_update, nt_xent, triplet
from adcore.methods.base import (
    FitContext,
    Method,
    augment_batch,
    register_method,
    to_tensor,
)
from adcore.methods.epochs import TrainingClock, train_epochs
from adcore.registry import Param

class ContrastiveModel(EncoderModel):
    """A fitted contrastive encoder's inference: the encoder and its projection head (submodules) and
    the ``gaussian`` of the normal images' embeddings. ``forward`` maps (B, 3, S, S) float images in
    [0, 1] to ``scores`` (B,), the Mahalanobis distance of each embedding, and the ``embeddings``.
    (The MoCo momentum encoder and key queue only serve training and are not part of it.)"""

    def __init__(self, encoder: nn.Module, head: nn.Module, *, normalize: str) -> None:
        super().__init__(encoder, head, normalize=normalize)
        self.gaussian = GaussianDensity(encoder.embedding_dim)

    def forward(self, x: torch.Tensor) -> dict:
        embedding = self.encoder(self.input(x)).embedding
        return {"scores": self.gaussian(embedding), "embeddings": embedding}


@register_method
class Contrastive(EncoderFeatures, Method):
    name = "contrastive"
    title = "Contrastive learning (SimCLR / MoCo)"
    summary = (
        "Learns, from normal images only, to recognise two differently augmented views of the same "
        "photo among the others; a photo whose learned description lies far from the normal ones "
        "scores high. No map of where."
    )
    augmentation_role = (
        "Makes the two views of each photo: the network learns to ignore exactly these changes, so "
        "use variation normal parts really show, never changes that look like a defect."
    )
    default_augmentations = [
        ("random_resized_crop", {"min_scale": 0.5}),
        ("color_jitter", {"brightness": 0.2, "contrast": 0.2, "saturation": 0.0}),
    ]
    params = [
        Param("loss", str, "ntxent", "ntxent: InfoNCE over the batch (or the queue) with a temperature; margin: "
              "contrastive margin loss; triplet: triplet loss.", choices=("ntxent", "margin", "triplet")),
        Param("temperature", float, 0.2, "Softmax temperature of the ntxent loss.", 0.01, 2.0, log=True),
        Param("margin", float, 0.5, "Margin of the margin and triplet losses (distances of unit vectors, 0-2).",
              0.0, 2.0),
        Param("moco", bool, False, "MoCo: negatives from a queue of keys made by a momentum copy of the "
              "encoder (helps with small batches)."),
        Param("queue_size", int, 1024, "MoCo: keys kept as negatives.", 16, 65536, log=True),
        Param("momentum", float, 0.99, "MoCo: how slowly the key encoder follows the trained one.", 0.5, 0.9999),
        Param("epochs", int, 100, "Passes over the normal images (a time budget may end training sooner; the "
              "learning rate then anneals by time).", 1, 5000),
        Param("batch_size", int, 64, "Images per step (each seen as two views).", 2, 1024),
        *ENCODER_PARAMS,
        *OPTIM_PARAMS,
        Param("head_layers", int, 1, "Hidden layers of the MLP projection head.", 0, 4),
        Param("head_dim", int, 256, "Width of the projection head's hidden layers.", 8, 4096),
        Param("projection_dim", int, 64, "Dimension the loss compares (output of the projection head).", 2, 1024),
    ]

    # -- building --------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.config_
        encoder, self.encoder_name_ = build_encoder(cfg)
        head = mlp_head(encoder.embedding_dim, cfg["head_dim"], cfg["projection_dim"], cfg["head_layers"])
        self.model_ = ContrastiveModel(encoder, head, normalize=cfg["normalize"]).to(self.device_)

    # -- training --------------------------------------------------------------------------------
    def _loss(self, query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config_
        if cfg["loss"] == "ntxent":
            if negatives is None:
                return nt_xent(query, key, cfg["temperature"])
            return info_nce(query, key, negatives, cfg["temperature"])
        fn = margin_contrastive if cfg["loss"] == "margin" else triplet
        return fn(query, key, cfg["margin"], negatives)

    def _fit(self, images: np.ndarray, ctx: FitContext) -> None:
        cfg = self.config_
        encoder, head, device = self.encoder_, self.head_, self.device_
        sample = images[: min(len(images), 32)]
        self._embed(sample[:2])  # the first pass pays one-off costs that would skew the timing
        reserve = time_one_pass(lambda: self._embed(sample), len(sample), len(images)) * 1.3
        prepared = prepared_uint8(images, cfg["normalize"], device)
        opt = make_optimizer(list(encoder.parameters()) + list(head.parameters()), cfg)
        clock = TrainingClock(self._total_steps(len(images)), ctx.budget_s, ctx.started, reserve)
        key_net, queue = None, None
        if cfg["moco"]:
            key_net = copy.deepcopy(torch.nn.Sequential(encoder, head)).requires_grad_(False)
            gen = torch.Generator().manual_seed(cfg["seed"])
            queue = KeyQueue(cfg["queue_size"], cfg["projection_dim"], gen).to(device)
        encoder.train()
        head.train()

        def batch_loss(idx: np.ndarray) -> torch.Tensor:
            views = [to_tensor(augment_batch(prepared[idx], self.augmentations_, self.rng_), device) for _ in "ab"]
            query = head(encoder(views[0]).embedding)
            if key_net is None:
                return self._loss(query, head(encoder(views[1]).embedding), None)
            momentum_update(key_net, torch.nn.Sequential(encoder, head), cfg["momentum"])
            with torch.no_grad():
                key = key_net[1](key_net[0](views[1]).embedding)
            loss = self._loss(query, key, queue.keys.clone())
            queue.enqueue(key)
            return loss

        train_epochs(self, ctx, len(images), scheduled_step(opt, cfg, clock, batch_loss), stop_after=clock.done)
        encoder.eval()
        head.eval()
        self.model_.gaussian.fit(self._embed(images, ctx))

    def _embed(self, images: np.ndarray, ctx: FitContext | None = None) -> torch.Tensor:
        """(N, D) encoder embeddings of (N, S, S, 3) uint8 images, in eval mode."""
        was_training = self.encoder_.training
        self.encoder_.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), 64):
                out.append(self.encoder_(self._input(to_tensor(images[start : start + 64], self.device_))).embedding)
                if ctx is not None:
                    done = min(start + 64, len(images))
                    ctx.report(step=done, total_steps=len(images), images=done, phase="fitting the Gaussian")
        self.encoder_.train(was_training)
        return torch.cat(out)
