"""Student-teacher (after Bergmann et al., "Uninformed Students", CVPR 2020): small students learn
to predict a frozen teacher's dense features on normal parts; where they fail or disagree, the map
lights up."""

from __future__ import annotations

import json
import math
from pathlib import Path

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

class BackboneTeacher(nn.Module):
    """An ImageNet backbone's feature maps at ``strides``, the deeper ones upsampled to the finest
    and concatenated: (B, 3, S, S) in [0, 1] -> (B, C, S/s, S/s), s the finest stride."""

    def __init__(self, backbone: nn.Module, strides: list[int]) -> None:
        super().__init__()
        self.backbone, self.strides = backbone, sorted(strides)
        self.stride = self.strides[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x, self.strides)
        size = features[self.stride].shape[-2:]
        parts = [
            f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            for f in (features[s] for s in self.strides)
        ]
        return torch.cat(parts, 1)


class RunTeacher(nn.Module):
    """Another run's method as teacher, through its ``dense_features(x) -> (B, C, h, w)``."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        if not callable(getattr(method, "dense_features", None)):
            raise ValueError(f"method {method.name!r} gives no dense features, so it cannot be a teacher")
        self.method = method
        self.modules_ = nn.ModuleList(
            [m for m in vars(method).values() if isinstance(m, nn.Module)]
        )  # so .to() and requires_grad_ reach the teacher's networks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.method.config_["image_size"]
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return self.method.dense_features(x)


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

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | None = None) -> "Method":
        # The teacher is rebuilt from the saved weights, so its run folder (or the pretrained weights
        # file) is not needed to load this model.
        self._saved_teacher_ = {k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")}
        self._saved_teacher_["__meta__"] = state["teacher_meta"]
        try:
            return super().load_state_dict(state, device)
        finally:
            del self._saved_teacher_

    def _build(self) -> None:
        cfg = self.config_
        teacher_state = getattr(self, "_saved_teacher_", None)
        if self._uses_backbone():
            # The backbone really built (load_backbone may fall back to another), as saved.
            name = cfg["teacher"] if teacher_state is None else _decode_json(teacher_state["__meta__"])["name"]
            backbone = load_backbone(name, pretrained=teacher_state is None)
            self.teacher_ = BackboneTeacher(backbone, parse_layers(cfg["layers"]))
            self.teacher_meta_ = {"kind": "backbone", "name": backbone.name}
            if teacher_state is not None:
                weights = {k: v for k, v in teacher_state.items() if k != "__meta__"}
                self.teacher_.backbone.load_state_dict(weights, strict=True)
        else:
            self.teacher_ = RunTeacher(self._teacher_method(teacher_state))
        self.teacher_.to(self.device_).eval().requires_grad_(False)
        with torch.inference_mode():
            probe = self.teacher_(torch.zeros(1, 3, cfg["image_size"], cfg["image_size"], device=self.device_))
        channels, side = probe.shape[1], probe.shape[-1]
        self.stride_ = 2 ** int(round(math.log2(cfg["image_size"] / side)))
        students = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"])  # each student its own random start, the same for a seed
            for _ in range(cfg["students"]):
                students.append(Student(self.stride_, cfg["student_width"], channels))
        self.students_ = nn.ModuleList(students).to(self.device_)
        self.feat_mean_ = torch.zeros(1, channels, 1, 1, device=self.device_)
        self.feat_std_ = torch.ones(1, channels, 1, 1, device=self.device_)
        self.map_stats_ = torch.tensor([0.0, 1.0, 0.0, 1.0], device=self.device_)  # error mean, std, var mean, std

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

    def _teacher_method(self, teacher_state: dict[str, torch.Tensor] | None) -> Method:
        if teacher_state is not None:  # loading a saved model: the teacher comes from the state
            meta = _decode_json(teacher_state["__meta__"])
            method = build_saved_method(meta["method"], meta["params"])
            method.load_state_dict({k: v for k, v in teacher_state.items() if k != "__meta__"}, device=self.device_)
        else:  # fitting: the caller loaded the teacher run (``FitContext.teacher``)
            method = self._given_teacher_
            meta = {"method": method.name, "params": method.get_params(), "run": self.config_["teacher"]}
        self.teacher_meta_ = {"kind": "run", **meta}
        return method

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_exposure(x) if self.config_["normalize"] == "image" else x

    def _teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> the teacher's features, standardised per channel on normal images."""
        return (self.teacher_(self._input(x)) - self.feat_mean_) / self.feat_std_

    def _student_predictions(self, x: torch.Tensor) -> torch.Tensor:
        xi = self._input(x)
        return torch.stack([s(xi) for s in self.students_])

    # -- learning ------------------------------------------------------------------------------
    def _fit(self, images: np.ndarray, ctx: FitContext) -> None:
        cfg, device = self.config_, self.device_
        # The teacher is frozen: its features of every normal image are computed once.
        targets = []
        with torch.inference_mode():
            n_batches = math.ceil(len(images) / 32)
            for i, start in enumerate(range(0, len(images), 32), 1):
                targets.append(self.teacher_(self._input(to_tensor(images[start : start + 32], device))))
                ctx.report(step=i, total_steps=n_batches, images=min(start + 32, len(images)),
                           phase="teacher features")
        targets = torch.cat(targets)
        self.feat_mean_ = targets.mean((0, 2, 3), keepdim=True)
        self.feat_std_ = targets.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
        targets = ((targets - self.feat_mean_) / self.feat_std_).clone()

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
            loss = (self._student_predictions(x) - target[None]).pow(2).mean()
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
                    self._student_predictions(x), targets[torch.from_numpy(idx).to(self.device_)]
                )
                errors.append(e.flatten())
                variances.append(v.flatten())
                ctx.check_cancel()
        e, v = torch.cat(errors), torch.cat(variances)
        self.map_stats_ = torch.stack([e.mean(), e.std().clamp_min(1e-6), v.mean(), v.std().clamp_min(1e-6)])

    # -- scoring -------------------------------------------------------------------------------
    def _component_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised regression error and predictive variance, (B, h, w) each at the teacher's grid."""
        e, v = regression_error_and_variance(self._student_predictions(x), self._teacher_features(x))
        m = self.map_stats_
        return (e - m[0]) / m[1], (v - m[2]) / m[3]

    def _predict_batch(self, x: torch.Tensor) -> dict:
        cfg = self.config_
        self.students_.eval()
        error, variance = self._component_maps(x)
        combined = error + cfg["variance_weight"] * variance
        maps = F.interpolate(combined[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps[:, 0], cfg["map_sigma"])
        return {
            "scores": map_statistic(maps, cfg["score_statistic"], cfg["top_fraction"]),
            "maps": maps,
        }

    # -- persistence ---------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        state = {f"students.{k}": v for k, v in self.students_.state_dict().items()}
        state.update(feat_mean=self.feat_mean_, feat_std=self.feat_std_, map_stats=self.map_stats_)
        if isinstance(self.teacher_, BackboneTeacher):
            teacher = self.teacher_.backbone.state_dict()
        else:
            teacher = self.teacher_.method.state_dict()
        state.update({f"teacher.{k}": v for k, v in teacher.items()})
        state["teacher_meta"] = _encode_json({k: v for k, v in self.teacher_meta_.items() if k != "run"})
        return state

    def _load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        # The teacher was already rebuilt from the state in _build.
        self.students_.load_state_dict({k[len("students."):]: v for k, v in state.items() if k.startswith("students.")})
        self.feat_mean_, self.feat_std_ = state["feat_mean"], state["feat_std"]
        self.map_stats_ = state["map_stats"]
        self.students_.eval()
