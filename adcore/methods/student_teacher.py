"""Student-teacher (after Bergmann et al., "Uninformed Students", CVPR 2020): small students learn
to predict a frozen teacher's dense features on normal parts; where they fail or disagree, the map
lights up."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adcore.backbones import BACKBONES, load_backbone
from adcore.encoders import normalize_exposure, warmup_cosine
from adcore.methods.autoencoder import map_score_params, map_statistic
from adcore.methods.base import (
    FitContext,
    Method,
    build_saved_method,
    gaussian_blur,
    register_method,
    to_tensor,
)
from adcore.methods.epochs import TrainingClock, train_epochs
from adcore.methods.patchcore import LAYER_CHOICES, parse_layers
from adcore.registry import Param

DEFAULT_TEACHER = "efficientnet_lite0"
STATISTICS_IMAGES = 160  # normal images the map's normalisation is measured on


# -- teachers --------------------------------------------------------------------------------------

def teacher_features(teacher: nn.Module, x: torch.Tensor, strides: Sequence[int], size: int) -> torch.Tensor:
    """(B, 3, S, S) prepared images -> the teacher's dense features (B, C, h, w). An ImageNet backbone
    (``strides`` given) gives its feature maps at ``strides``, the deeper ones upsampled to the finest
    and concatenated; another run's inference module gives its ``dense_features`` of the images
    resized to the ``size`` that run was fitted at."""
    if strides:
        features = teacher(x, list(strides))
        shape = features[strides[0]].shape[-2:]
        parts = [
            f if f.shape[-2:] == shape else F.interpolate(f, size=shape, mode="bilinear", align_corners=False)
            for f in (features[s] for s in strides)
        ]
        return torch.cat(parts, 1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return teacher.dense_features(x)


def _encode_json(value: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8)


def _decode_json(tensor: torch.Tensor) -> dict:
    return json.loads(bytes(tensor.cpu().tolist()).decode())


# -- students --------------------------------------------------------------------------------------

class Student(nn.Module):
    """A small fully convolutional net with a limited receptive field (so it sees local patches, as
    the paper's students do): log2(stride) stride-2 stages, two 3x3 convolutions, a 1x1 head to the
    teacher's channels."""

    def __init__(self, stride: int, width: int, out_channels: int) -> None:
        super().__init__()
        layers, cin = [], 3
        n_down = int(round(math.log2(stride)))
        for i in range(n_down):
            cout = width * 2 ** min(i, 2)
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True)]
            cin = cout
        for _ in range(2):
            layers += [nn.Conv2d(cin, cin, 3, 1, 1), nn.BatchNorm2d(cin), nn.LeakyReLU(0.1, inplace=True)]
        layers.append(nn.Conv2d(cin, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def regression_error_and_variance(predictions: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``predictions`` (K, B, C, h, w) of K students, ``target`` (B, C, h, w) -> per-location
    (B, h, w) squared error of the students' mean prediction, and the students' predictive variance
    (variance over students, averaged over channels): zero where all students agree."""
    mean = predictions.mean(0)
    error = (mean - target).pow(2).mean(1)
    variance = predictions.var(0, unbiased=False).mean(1)
    return error, variance


class StudentTeacherModel(nn.Module):
    """A fitted student-teacher's inference: the frozen ``teacher`` (an ImageNet backbone read at
    ``teacher_strides``, or another run's inference module with ``dense_features``) and the
    ``students`` (submodules), the per-channel mean and spread of the teacher's features on normal
    images (``feat_mean``, ``feat_std``) and the normal images' mean and spread of the regression
    error and of the students' variance (``map_stats``), buffers. ``forward`` maps (B, 3, S, S)
    float images in [0, 1] to ``scores`` (B,) and ``maps`` (B, S, S)."""

    def __init__(
        self, teacher: nn.Module, students: nn.ModuleList, *, channels: int, teacher_strides: Sequence[int],
        teacher_size: int, normalize: str, variance_weight: float, map_sigma: float, score_statistic: str,
        top_fraction: float,
    ) -> None:
        super().__init__()
        self.teacher, self.students = teacher, students
        self.register_buffer("feat_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("feat_std", torch.ones(1, channels, 1, 1))
        self.register_buffer("map_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))  # error mean, std, var mean, std
        self.teacher_strides, self.teacher_size = sorted(teacher_strides), teacher_size
        self.normalize, self.variance_weight, self.map_sigma = normalize, variance_weight, map_sigma
        self.score_statistic, self.top_fraction = score_statistic, top_fraction

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_exposure(x) if self.normalize == "image" else x

    def raw_teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> the teacher's features, as they are."""
        return teacher_features(self.teacher, self.input(x), self.teacher_strides, self.teacher_size)

    def student_predictions(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (K, B, C, h, w): every student's prediction."""
        xi = self.input(x)
        return torch.stack([s(xi) for s in self.students])

    def component_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised regression error and predictive variance, (B, h, w) each at the teacher's grid."""
        target = (self.raw_teacher_features(x) - self.feat_mean) / self.feat_std
        e, v = regression_error_and_variance(self.student_predictions(x), target)
        m = self.map_stats
        return (e - m[0]) / m[1], (v - m[2]) / m[3]

    def forward(self, x: torch.Tensor) -> dict:
        error, variance = self.component_maps(x)
        combined = error + self.variance_weight * variance
        maps = F.interpolate(combined[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps[:, 0], self.map_sigma)
        return {"scores": map_statistic(maps, self.score_statistic, self.top_fraction), "maps": maps}


@register_method
class StudentTeacher(Method):
    name = "student_teacher"
    title = "Student-teacher (Uninformed Students)"
    summary = (
        "A frozen teacher network describes every small patch of a photo; a few small student "
        "networks learn to give the same description on normal parts. Where the students miss the "
        "teacher or disagree with each other, the map lights up."
    )
    augmentation_role = "Not used: students learn the teacher's features of the normal photos as they are."
    params = [
        Param("teacher", str, DEFAULT_TEACHER, "efficientnet_lite0 (pretrained on ImageNet, frozen) or the "
              "folder of a finished run whose method gives dense features (e.g. an autoencoder, contrastive "
              "or CutPaste run). The teacher's weights are saved with this model."),
        Param("layers", str, "16+32", "For a pretrained teacher: feature maps regressed, by stride (finer = "
              "sharper maps, slower).", choices=LAYER_CHOICES),
        Param("normalize", str, "image", "image: each photo brought to the same brightness and contrast "
              "(median and quartiles) before teacher and students; none: photos as they are.",
              choices=("image", "none")),
        Param("students", int, 3, "Number of students; their disagreement is part of the map.", 1, 16),
        Param("student_width", int, 16, "Channels of each student's first layer (doubles twice).", 8, 256),
        Param("epochs", int, 20, "Passes over the normal images.", 1, 2000),
        Param("batch_size", int, 8, "Images per training step.", 2, 512),
        Param("learning_rate", float, 1e-3, "Adam learning rate.", 1e-5, 1e-1, log=True),
        Param("variance_weight", float, 0.25, "Map = normalised regression error + this x normalised "
              "variance of the students. The paper adds them (1); with a few small students trained for "
              "minutes their disagreement is partly noise (on the tile set a weight of 1 localised defects "
              "worst of 0, 0.25 and 1), so it counts a quarter by default.", 0.0, 4.0),
        Param("map_sigma", float, 4.0, "Gaussian smoothing of the anomaly map, in pixels at image_size.", 0.0, 32.0),
        *map_score_params(0.01),
    ]

    @classmethod
    def param_specs(cls) -> list[Param]:
        from dataclasses import replace

        # The pretrained teacher's ImageNet size; 224 px reached the tile-set targets within 600 s on 2 CPUs.
        return [replace(p, default=224) if p.name == "image_size" else p for p in super().param_specs()]

    # -- building ------------------------------------------------------------------------------
    def _uses_backbone(self) -> bool:
        return self.config_["teacher"] in BACKBONES

    @property
    def saved_alongside(self) -> tuple[str, ...]:
        # What describes the teacher, and a run teacher's own tensors saved beside its module's state.
        run_teacher = getattr(self, "teacher_method_", None)
        return ("teacher_meta",) + tuple(f"teacher.{p}" for p in (run_teacher.saved_alongside if run_teacher else ()))

    def frozen_modules(self) -> list[nn.Module]:
        run_teacher = getattr(self, "teacher_method_", None)
        return run_teacher.frozen_modules() if run_teacher else []

    def _alongside_tensors(self) -> dict[str, torch.Tensor]:
        state = {"teacher_meta": _encode_json({k: v for k, v in self.teacher_meta_.items() if k != "run"})}
        if self.teacher_method_ is not None:
            state.update({f"teacher.{k}": v for k, v in self.teacher_method_._alongside_tensors().items()})
        return state

    def _build_saved(self, state: dict[str, torch.Tensor]) -> None:
        # The teacher is rebuilt from the saved weights, so its run folder (or the pretrained weights
        # file) is not needed to load this model.
        meta = _decode_json(state["teacher_meta"])
        if meta["kind"] == "backbone":
            # The backbone really built (load_backbone may fall back to another), as saved.
            self._build_around(load_backbone(meta["name"], pretrained=False), None)
            return
        teacher = build_saved_method(meta["method"], meta["params"])
        teacher.load_state_dict({k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")},
                                device=self.device_)
        self._build_around(None, teacher, meta)

    def _build(self) -> None:
        if self._uses_backbone():
            self._build_around(load_backbone(self.config_["teacher"]), None)
        else:  # fitting: the caller loaded the teacher run (``FitContext.teacher``)
            teacher = self._given_teacher_
            meta = {"method": teacher.name, "params": teacher.get_params(), "run": self.config_["teacher"]}
            self._build_around(None, teacher, meta)

    def _build_around(self, backbone: nn.Module | None, teacher_method: Method | None, meta: dict | None = None) -> None:
        """The unfitted inference module around its teacher: an ImageNet ``backbone`` or a fitted
        ``teacher_method`` (with its ``meta``: method, parameters, run folder)."""
        cfg = self.config_
        self.teacher_method_ = teacher_method
        if backbone is not None:
            teacher, strides, size = backbone, sorted(parse_layers(cfg["layers"])), cfg["image_size"]
            self.teacher_meta_ = {"kind": "backbone", "name": backbone.name}
        else:
            if not callable(getattr(teacher_method, "dense_features", None)):
                raise ValueError(f"method {teacher_method.name!r} gives no dense features, so it cannot be a teacher")
            teacher, strides, size = teacher_method.inference_module(), [], teacher_method.config_["image_size"]
            self.teacher_meta_ = {"kind": "run", **meta}
        teacher.to(self.device_).eval().requires_grad_(False)
        with torch.inference_mode():
            probe = teacher_features(teacher, torch.zeros(1, 3, cfg["image_size"], cfg["image_size"], device=self.device_),
                                     strides, size)
        channels, side = probe.shape[1], probe.shape[-1]
        self.stride_ = 2 ** int(round(math.log2(cfg["image_size"] / side)))
        students = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"])  # each student its own random start, the same for a seed
            for _ in range(cfg["students"]):
                students.append(Student(self.stride_, cfg["student_width"], channels))
        self.model_ = StudentTeacherModel(
            teacher, nn.ModuleList(students), channels=channels, teacher_strides=strides, teacher_size=size,
            normalize=cfg["normalize"], variance_weight=cfg["variance_weight"], map_sigma=cfg["map_sigma"],
            score_statistic=cfg["score_statistic"], top_fraction=cfg["top_fraction"],
        ).to(self.device_)

    @property
    def students_(self) -> nn.ModuleList:
        """The students being trained (the inference module's)."""
        return self.model_.students

    def teacher_run(self) -> Path | None:
        """The run folder the ``teacher`` parameter names, or None for a pretrained backbone."""
        teacher = self.get_params()["teacher"]
        if teacher in BACKBONES:
            return None
        if not Path(teacher).is_dir():
            raise ValueError(
                f"teacher {teacher!r} is neither a pretrained backbone ({', '.join(BACKBONES.names())}) "
                "nor a run folder"
            )
        return Path(teacher)

    def fit(self, images, ctx: FitContext | None = None) -> "Method":
        ctx = ctx or FitContext()
        if self.teacher_run() is not None and ctx.teacher is None:
            raise ValueError(
                f"the teacher run {self.params['teacher']!r} must be loaded by the caller and passed as "
                "FitContext(teacher=...); adcore.training.train_run does this"
            )
        self._given_teacher_ = ctx.teacher
        try:
            return super().fit(images, ctx)
        finally:
            del self._given_teacher_

    # -- learning ------------------------------------------------------------------------------
    def _fit(self, images: np.ndarray, ctx: FitContext) -> None:
        cfg, device = self.config_, self.device_
        # The teacher is frozen: its features of every normal image are computed once.
        targets = []
        with torch.inference_mode():
            n_batches = math.ceil(len(images) / 32)
            for i, start in enumerate(range(0, len(images), 32), 1):
                targets.append(self.model_.raw_teacher_features(to_tensor(images[start : start + 32], device)))
                ctx.report(step=i, total_steps=n_batches, images=min(start + 32, len(images)),
                           phase="teacher features")
        targets = torch.cat(targets)
        mean, std = targets.mean((0, 2, 3), keepdim=True), targets.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
        self.model_.feat_mean, self.model_.feat_std = mean, std
        targets = ((targets - mean) / std).clone()

        params = [p for s in self.students_ for p in s.parameters()]
        opt = torch.optim.Adam(params, lr=cfg["learning_rate"], weight_decay=1e-5)
        # The learning rate warms up and then decays on a cosine over the training, measured in steps
        # or, with a time budget, in time (whichever is further along), so that a budget-cut
        # training still ends with a small learning rate instead of stopping at its peak. The
        # budget's last 5 % is for measuring the map on normal images.
        clock = TrainingClock(self._total_steps(len(images)), ctx.budget_s, ctx.started,
                              reserve_share=0.05, min_train_s=1.0)

        def step(idx: np.ndarray, done: int) -> torch.Tensor:
            for group in opt.param_groups:
                group["lr"] = cfg["learning_rate"] * warmup_cosine(clock.progress(done), 0.05)
            x = to_tensor(images[idx], device)
            target = targets[torch.from_numpy(idx).to(device)]
            loss = (self.model_.student_predictions(x) - target[None]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        self.students_.train()
        train_epochs(self, ctx, len(images), step, stop_after=clock.done)
        self.students_.eval()
        self._fit_map_statistics(images, targets, ctx)

    def _fit_map_statistics(self, images: np.ndarray, targets: torch.Tensor, ctx: FitContext) -> None:
        """Mean and spread of the regression error and of the variance over the normal images, so
        the two parts of the map are on one scale."""
        errors, variances = [], []
        # A few hundred images give plenty of locations for four numbers, and keep this pass short.
        chosen = np.linspace(0, len(images) - 1, min(len(images), STATISTICS_IMAGES)).round().astype(int)
        with torch.inference_mode():
            for start in range(0, len(chosen), 32):
                idx = chosen[start : start + 32]
                x = to_tensor(images[idx], self.device_)
                e, v = regression_error_and_variance(
                    self.model_.student_predictions(x), targets[torch.from_numpy(idx).to(self.device_)]
                )
                errors.append(e.flatten())
                variances.append(v.flatten())
                ctx.check_cancel()
        e, v = torch.cat(errors), torch.cat(variances)
        self.model_.map_stats = torch.stack([e.mean(), e.std().clamp_min(1e-6), v.mean(), v.std().clamp_min(1e-6)])
