"""The one interface every detection method implements, and the plumbing they share.

A method is configured by keyword parameters (stored, not checked, in ``__init__``), learns from
normal images in ``fit`` while reporting progress and honouring a stop request, and for any images
returns raw anomaly scores (higher = more anomalous), plus embeddings and per-pixel anomaly maps
where it has them. It never decides what is anomalous: thresholds live in ``adcore.scoring``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adcore.device import pick_device, seed_everything
from adcore.photo_cache import image_shape
from adcore.preprocess import ResizeRule, aspect_shape, resize_to  # noqa: F401 - re-exported
from adcore.registry import Param, Registry, validate_params


class Cancelled(Exception):
    """Raised inside ``fit`` when the user asked the training to stop."""


COMMON_PARAMS = [
    Param("image_size", int, 128, "Images are resized to this square size (pixels) before the network.", 32, 512),
    Param("seed", int, 0, "Random seed: the same seed on the same device gives the same scores.", 0, 2**31 - 1),
]


@dataclass
class FitContext:
    """What ``fit`` gets from whoever runs it: device, augmentations, budget, progress and stop."""

    device: torch.device = field(default_factory=pick_device)
    augmentations: list[tuple[str, dict]] | None = None  # None: the method's defaults
    budget_s: float | None = None  # stop training (cleanly, keeping the model) after this long
    on_progress: Callable[[dict], None] | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    history: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    stopped_by_budget: bool = False  # set when a method ended training early because of budget_s
    # Images scored after some epochs, by group (e.g. hold-out normals, synthetic defects), so the run
    # shows how the score distributions separate during training; ``snapshots`` epochs, spread evenly.
    monitor: dict[str, Sequence[np.ndarray]] | None = None
    snapshots: int = 6
    # The trained method another one learns from (a student-teacher's teacher run), loaded by whoever
    # runs the fit from the folder ``Method.teacher_run()`` names (``adcore.training`` does): a method
    # never opens the run store itself.
    teacher: "Method | None" = None

    def check_cancel(self) -> None:
        if self.stop_event.is_set():
            raise Cancelled("training was cancelled")

    def out_of_budget(self) -> bool:
        """True once the time budget is spent; methods ask this to end training early (and cleanly)."""
        if self.budget_s is not None and time.monotonic() - self.started >= self.budget_s:
            self.stopped_by_budget = True
        return self.stopped_by_budget

    def report(
        self,
        *,
        step: int,
        total_steps: int,
        epoch: int | None = None,
        loss: float | None = None,
        images: int = 0,
        phase: str = "training",
        record: bool = True,
        **extra: Any,
    ) -> None:
        """Publish progress; ``images`` is the number of images processed so far in this phase.

        Also the place where a stop request takes effect, so every method that reports is cancellable.
        """
        self.check_cancel()
        event = {
            "step": step,
            "total_steps": total_steps,
            "epoch": epoch,
            "loss": loss,
            "images": images,
            "phase": phase,
            "elapsed_s": time.monotonic() - self.started,
            **extra,
        }
        if record and loss is not None:
            self.history.append(event)
        if self.on_progress is not None:
            self.on_progress(event)


@dataclass
class Prediction:
    """Raw outputs for N images. Maps have each input image's own size (H, W)."""

    scores: np.ndarray  # (N,) float64, higher = more anomalous
    embeddings: np.ndarray | None = None  # (N, D) float32
    anomaly_maps: list[np.ndarray] | None = None  # N arrays HxW float32
    reconstructions: list[np.ndarray] | None = None  # N arrays HWC uint8


def resize_images(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """HWC uint8 RGB images of any sizes -> (N, size, size, 3) uint8, squashed (no crop, so edges stay)."""
    return resize_to(images, size, size)


def to_tensor(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] on ``device``."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def upsample_maps(maps: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """(N, h, w) maps -> N float32 arrays at each image's (H, W), bilinear."""
    out = []
    for m, (h, w) in zip(maps, sizes):
        up = F.interpolate(m[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)
        out.append(up[0, 0].cpu().numpy().astype(np.float32))
    return out


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (N, H, W) maps, reflect-padded."""
    if sigma <= 0:
        return maps
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    m = maps[:, None]
    m = F.pad(m, (radius, radius, 0, 0), mode="reflect")
    m = F.conv2d(m, kernel.view(1, 1, 1, -1))
    m = F.pad(m, (0, 0, radius, radius), mode="reflect")
    m = F.conv2d(m, kernel.view(1, 1, -1, 1))
    return m[:, 0]


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Indices of one shuffled epoch in batches; the last short batch is kept if it has 2+ images."""
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) >= 2 or n < 2:
            yield idx


def steps_per_epoch(n: int, batch_size: int) -> int:
    """How many batches ``epoch_batches(n, batch_size, ...)`` yields per epoch."""
    return sum(1 for start in range(0, n, batch_size) if min(batch_size, n - start) >= 2 or n < 2)


def augment_batch(
    images: np.ndarray, specs: list[tuple[str, dict]], rng: np.random.Generator
) -> np.ndarray:
    """Apply the augmentation chain ``specs`` to each (H, W, 3) uint8 image; same shape out."""
    if not specs:
        return images
    from adcore.augment import compose

    return np.stack([compose(specs, image, rng).image for image in images])


class LossMeter:
    """Averages losses on the device and reads them back only when reporting (no per-step sync)."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._last = time.monotonic()

    def add(self, loss: torch.Tensor) -> None:
        detached = loss.detach()
        self._sum = detached if self._sum is None else self._sum + detached
        self._count += 1

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def pop(self) -> float | None:
        if self._sum is None:
            return None
        value = float(self._sum) / self._count
        self._sum, self._count, self._last = None, 0, time.monotonic()
        return value


class Method:
    """Base class: subclasses set the class attributes and implement ``_build`` (the unfitted
    inference module ``model_`` for a given config) and ``_fit`` (the fit wrapper: data,
    augmentations, progress, budget and cancel around filling ``model_``)."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[list[Param]] = []
    default_augmentations: ClassVar[list[tuple[str, dict]]] = []
    augmentation_role: ClassVar[str] = ""  # what augmentations mean to this method, in the user's words
    # Trained to find CutPaste / scar pastes: a run's synthetic-defect recall then overstates real recall.
    learns_pasted_defects: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params = params

    # -- configuration -------------------------------------------------------------------------
    @classmethod
    def param_specs(cls) -> list[Param]:
        return COMMON_PARAMS + cls.params

    def get_params(self) -> dict[str, Any]:
        """All parameters with defaults filled in; raises ValueError naming a bad one."""
        return validate_params(self.param_specs(), self.params)

    # -- learning ------------------------------------------------------------------------------
    def fit(self, images: Sequence[np.ndarray], ctx: FitContext | None = None) -> "Method":
        """Learn from normal images (HWC uint8 RGB, any sizes). Returns self."""
        ctx = ctx or FitContext()
        self.config_ = self.get_params()
        if len(images) < 2:
            raise ValueError(f"{self.name} needs at least 2 normal images to train, got {len(images)}")
        self._prepare(ctx)
        self._fit(self._fit_images(images), ctx)
        return self

    def _prepare(self, ctx: FitContext) -> None:
        """Everything ``fit`` sets up before it learns: the parameters, device, seeds, the
        augmentation chain and the (unfitted) modules."""
        self.config_ = self.get_params()
        self.device_ = ctx.device
        seed_everything(self.config_["seed"], ctx.device)
        self.rng_ = np.random.default_rng(self.config_["seed"])
        augmentations = self.default_augmentations if ctx.augmentations is None else ctx.augmentations
        self.augmentations_ = [(name, dict(p)) for name, p in augmentations]
        self._build()

    def _total_steps(self, n_images: int) -> int:
        """Optimisation steps in ``epochs`` passes over ``n_images`` (at least one per epoch)."""
        return self.config_["epochs"] * max(1, steps_per_epoch(n_images, self.config_["batch_size"]))

    def resize_rule(self) -> ResizeRule:
        """How a photo is resized for the network: by default the configured square, whatever its
        shape. An exported model carries this rule as data (``ResizeRule.to_dict``)."""
        return ResizeRule(self.config_["image_size"])

    def _input_shape(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) a photo of ``height`` x ``width`` pixels is resized to for the network."""
        return self.resize_rule().shape(height, width)

    def _fit_images(self, images: Sequence[np.ndarray]) -> Any:
        """What ``_fit`` receives: by default (N, S, S, 3) uint8 at the configured size."""
        return resize_images(images, self.config_["image_size"])

    def _shape_groups(self, images: Sequence[np.ndarray]) -> dict[tuple[int, int], list[int]]:
        """Indices of ``images`` by the (H, W) each becomes for the network, in order of first appearance."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(len(images)):
            groups.setdefault(self._input_shape(*image_shape(images, i)[:2]), []).append(i)
        return groups

    def _shaped_batches(
        self, images: Sequence[np.ndarray], batch_size: int
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(indices, (B, 3, H, W) tensor) batches of ``images`` at their input shapes. Images that
        become the same shape share batches; batches come in the order of their first image, so
        shapes interleave (a fit stopped by its budget has seen every shape) and with the default
        square every batch is simply in order."""
        batches = [
            (shape, members[start : start + batch_size])
            for shape, members in self._shape_groups(images).items()
            for start in range(0, len(members), batch_size)
        ]
        for (h, w), idx in sorted(batches, key=lambda batch: batch[1][0]):
            yield idx, to_tensor(resize_to([images[i] for i in idx], h, w), self.device_)

    def predict(self, images: Sequence[np.ndarray], batch_size: int = 32) -> Prediction:
        """Scores, and embeddings/maps/reconstructions where the method has them, for HWC uint8 images."""
        self.inference_module().eval()
        n = len(images)
        scores = np.zeros(n)
        embeddings: list = [None] * n
        maps: list = [None] * n
        recons: list = [None] * n
        with torch.inference_mode():
            for idx, x in self._shaped_batches(images, batch_size):
                out = self._predict_batch(x)
                scores[idx] = out["scores"].double().cpu().numpy()
                sizes = [image_shape(images, i)[:2] for i in idx]
                if out.get("embeddings") is not None:
                    for i, e in zip(idx, out["embeddings"].float().cpu().numpy()):
                        embeddings[i] = e
                if out.get("maps") is not None:
                    for i, m in zip(idx, upsample_maps(out["maps"], sizes)):
                        maps[i] = m
                if out.get("reconstructions") is not None:
                    rec = (out["reconstructions"].clamp(0, 1) * 255).round().byte()
                    for i, r, (h, w) in zip(idx, rec.permute(0, 2, 3, 1).cpu().numpy(), sizes):
                        recons[i] = np.asarray(Image.fromarray(r).resize((w, h), Image.BILINEAR))
        return Prediction(
            scores=scores,
            embeddings=np.stack(embeddings) if n and embeddings[0] is not None else None,
            anomaly_maps=maps if n and maps[0] is not None else None,
            reconstructions=recons if n and recons[0] is not None else None,
        )

    def score(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Image-level anomaly scores only (higher = more anomalous)."""
        return self.predict(images, batch_size).scores

    def record_epoch_scores(self, ctx: FitContext, epoch: int, epochs: int) -> None:
        """After epoch ``epoch`` (1-based) of ``epochs``: score ``ctx.monitor``'s images and add the
        distributions to the history, on ``ctx.snapshots`` evenly spread epochs (always the last).

        The inference module is put in eval mode for the scoring and each of its parts restored after.
        A no-op without monitor images.
        """
        if not ctx.monitor or epoch not in snapshot_epochs(epochs, ctx.snapshots):
            return
        module = self.inference_module()
        modes = [(m, m.training) for m in module.modules()]
        module.eval()
        scores = {}
        try:
            with torch.inference_mode():
                for group, images in ctx.monitor.items():
                    values = np.zeros(len(images))
                    for idx, x in self._shaped_batches(images, 32):
                        values[idx] = self._predict_batch(x)["scores"].double().cpu().numpy()
                    scores[group] = values.tolist()
        finally:
            for m, mode in modes:
                m.train(mode)
        ctx.history.append(
            {"epoch": epoch, "phase": "epoch scores", "scores": scores, "elapsed_s": time.monotonic() - ctx.started}
        )
        ctx.check_cancel()

    def teacher_run(self) -> Path | None:
        """The folder of a finished run this method learns from, which the caller loads and passes
        as ``FitContext.teacher``; None (the default) for a method that learns from no other run."""
        return None

    def run_details(self) -> dict[str, Any]:
        """What a training run stores about this fit beyond weights and scores (e.g. a self-configuring
        method's selection table), as JSON-able values under their own keys; nothing by default."""
        return {}

    # -- the fitted model and its persistence ---------------------------------------------------
    def inference_module(self) -> torch.nn.Module:
        """The fitted state and inference as one ``nn.Module`` (``model_``, built by ``_build`` and
        filled by ``_fit``): networks as submodules, memories, statistics and calibration as buffers.
        ``forward`` maps (B, 3, H, W) float images in [0, 1] at the network input shape to a dict with
        ``scores`` (B,) and, where the method has them, ``maps`` (B, H, W), ``embeddings`` (B, D) and
        ``reconstructions`` (B, 3, H, W). What is saved is its ``state_dict``.

        The module carries its preprocessing as data, ``resize_rule`` (how a photo becomes its input):
        what an export describes and a scorer resizes by."""
        self._check_fitted()
        self.model_.resize_rule = self.resize_rule()
        return self.model_

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Parts of the inference module whose weights come from an installed package (frozen ImageNet
        backbones, ``adcore.backbones``): not saved; one marker tensor ``<prefix><name>`` records which
        network it was, so loading can refuse a model whose network is not the one built now."""
        return []

    saved_alongside: ClassVar[tuple[str, ...]] = ()  # key prefixes of tensors saved beside the module's

    def _alongside_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors saved beside the module's state, under the ``saved_alongside`` prefixes: what
        ``_build_saved`` needs to build the module before its state loads (JSON as uint8, markers)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything learned, as plain tensors (saved with safetensors, never pickled): the inference
        module's ``state_dict`` without the frozen networks' weights (a marker each instead), and the
        ``_alongside_tensors``."""
        module = self.inference_module()
        frozen = _frozen_prefixes(module, self.frozen_modules())
        state = {k: v for k, v in module.state_dict().items() if not k.startswith(tuple(frozen))}
        state.update({prefix + name: torch.ones(1) for prefix, name in frozen.items()})
        state.update(self._alongside_tensors())
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | None = None) -> "Method":
        """Build the inference module from the parameters (and ``_build_saved``'s reading of ``state``),
        then load ``state`` into it strictly: a missing or unexpected tensor is an error."""
        self._set_up_unfitted(device)
        state = self._upgrade_state(dict(state))
        self._build_saved(state)
        module = self.inference_module()
        own = module.state_dict()
        state = {k: v for k, v in state.items() if not k.startswith(self.saved_alongside)}
        for prefix, name in _frozen_prefixes(module, self.frozen_modules()).items():
            saved = [k[len(prefix):] for k in state if k.startswith(prefix)]
            if saved != [name]:
                raise ValueError(
                    f"this model was fitted on {saved or 'an unknown'} backbone features but {name} was loaded "
                    "(were the ResNet-18 weights added to or removed from the torch cache since?)"
                )
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
            state.update({k: v for k, v in own.items() if k.startswith(prefix)})  # the installed weights
        module.load_state_dict(state, strict=True)
        module.eval()
        return self

    def _set_up_unfitted(self, device: torch.device | None) -> None:
        """The parameters and device of a method about to be built for loading (no seeds, no augmentations)."""
        self.config_ = self.get_params()
        self.device_ = device or pick_device()
        self.augmentations_ = []

    def _upgrade_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state saved by an older adcore, in today's key layout: where a method's layout changed, its
        old keys are mapped here (one place per method). Today's layout passes unchanged."""
        return state

    def _build_saved(self, state: dict[str, torch.Tensor]) -> None:
        """Build the unfitted inference module that ``state`` loads into; by default as ``fit`` does
        (``_build``). A method whose module's make-up is stored with it reads it from ``state``."""
        self._build()

    # -- for subclasses ------------------------------------------------------------------------
    def _build(self) -> None:
        raise NotImplementedError

    def _fit(self, images: np.ndarray, ctx: FitContext) -> None:
        """``images`` is what ``_fit_images`` gave: by default (N, S, S, 3) uint8 at the configured size."""
        raise NotImplementedError

    def _predict_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """``x`` is (B, 3, S, S) float in [0, 1]; returns scores (B,) and optional embeddings (B, D),
        maps (B, h, w) and reconstructions (B, 3, S, S): the inference module's outputs."""
        return self.inference_module()(x)

    def _check_fitted(self) -> None:
        if not hasattr(self, "config_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load a run first")


def _frozen_prefixes(module: torch.nn.Module, frozen: Sequence[torch.nn.Module]) -> dict[str, str]:
    """``{"<path in module>.": network name}`` of each frozen network (``Method.frozen_modules``) in ``module``."""
    ids = {id(m) for m in frozen}
    return {f"{path}.": m.name for path, m in module.named_modules(remove_duplicate=False) if id(m) in ids}


def snapshot_epochs(epochs: int, count: int) -> set[int]:
    """``count`` epochs out of 1..``epochs``, evenly spread, always including the last."""
    if epochs < 1 or count < 1:
        return set()
    return {int(round(epochs * (i + 1) / min(count, epochs))) for i in range(min(count, epochs))}


METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: adds a Method subclass to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return METHODS.register(cls.name)(cls)


def get_method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def build_method(name: str, **params: Any) -> Method:
    """A configured, unfitted method; parameters are checked here so bad input fails early."""
    method = get_method_class(name)(**params)
    method.get_params()
    return method


def build_saved_method(name: str, params: dict[str, Any]) -> Method:
    """``build_method`` for the parameters stored with a saved model. A parameter added to the method
    after the model was saved takes the value the model was fitted with (the class's
    ``defaults_of_older_models``), not today's default, so an old model scores as it did."""
    cls = get_method_class(name)
    return build_method(name, **{**getattr(cls, "defaults_of_older_models", {}), **params})
