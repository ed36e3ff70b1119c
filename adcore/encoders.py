"""Trainable encoders for the self-supervised methods (contrastive, CutPaste), and what they share:
input preparation, the Gaussian of their embeddings, image patches, and the learning-rate schedule.

An encoder takes (B, 3, H, W) float images (already prepared by ``prepare``) and returns an
``EncoderOutput``: a pooled embedding (B, D) for image-level scoring and a dense feature map
(B, C, H/8, W/8) for maps and for other methods that use a trained run as a frozen teacher.
"""

from __future__ import annotations

import math
import time
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adcore.registry import Param

DENSE_STRIDE = 8  # the dense map: the stride-8 stage, with the stride-16 stage upsampled onto it


class EncoderOutput(NamedTuple):
    embedding: torch.Tensor  # (B, D): the last stage, averaged over positions
    dense: torch.Tensor  # (B, C, H/8, W/8)


# -- ResNet ----------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """ResNet basic block; attribute names match torchvision's so its ResNet-18 weights load."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetEncoder(nn.Module):
    """ResNet with basic blocks: ``width`` channels in the first stage, doubling in each of the
    four; ``blocks`` per stage. width 64 and blocks (2, 2, 2, 2) is ResNet-18."""

    def __init__(self, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four counts of at least 1, got {list(blocks)}")
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            stage = [BasicBlock(cin if b == 0 else cout, cout, 2 if i > 0 and b == 0 else 1) for b in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            cin = cout
        self.embedding_dim = 8 * width
        self.dense_channels = 2 * width + 4 * width
        # ImageNet input statistics, as torchvision's weights expect (harmless when trained from scratch).
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        x = (x - self.mean) / self.std
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        s8 = self.layer2(x)
        s16 = self.layer3(s8)
        s32 = self.layer4(s16)
        return EncoderOutput(s32.mean((2, 3)), _dense(s8, s16))


def _dense(s8: torch.Tensor, s16: torch.Tensor) -> torch.Tensor:
    up = F.interpolate(s16, size=s8.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([s8, up], 1)


class Lite0Encoder(nn.Module):
    """EfficientNet-Lite0 (``adcore.backbones``) as a trainable encoder, for ImageNet initialisation."""

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        from adcore.backbones import BACKBONES

        self.net = BACKBONES.get("efficientnet_lite0")(pretrained)
        channels = self.net.channels
        self.embedding_dim = channels[32]
        self.dense_channels = channels[8] + channels[16]

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        f = self.net(x, [8, 16, 32])
        return EncoderOutput(f[32].mean((2, 3)), _dense(f[8], f[16]))


# -- building one from the parameters --------------------------------------------------------------

ENCODER_PARAMS = [
    Param("encoder", str, "resnet", "Network: resnet (width and blocks below; 64 and 2,2,2,2 is ResNet-18) or "
          "efficientnet_lite0.", choices=("resnet", "efficientnet_lite0")),
    Param("width", int, 16, "ResNet channels in the first stage (doubling in each of four stages); 64 = ResNet-18.",
          4, 128),
    Param("blocks", str, "1,1,1,1", "ResNet blocks in each of the four stages: 2,2,2,2 = ResNet-18, 3,4,6,3 = "
          "ResNet-34; 1,1,1,1 is the smallest, for CPUs.", choices=("1,1,1,1", "2,2,2,2", "3,4,6,3")),
    Param("pretrained", bool, False, "Start from ImageNet weights (offline: EfficientNet-Lite0 always; ResNet-18 "
          "only if its weights are in the local torch cache, else Lite0 instead, with a warning)."),
    Param("normalize", str, "image", "image: each photo brought to the same brightness and contrast (median and "
          "quartiles) first, for varying exposure; none: photos as they are.", choices=("image", "none")),
]


def parse_blocks(text: str) -> list[int]:
    try:
        blocks = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"blocks: expected four comma-separated counts like 2,2,2,2, got {text!r}") from None
    if len(blocks) != 4 or min(blocks) < 1 or max(blocks) > 8:
        raise ValueError(f"blocks: expected four counts from 1 to 8 like 2,2,2,2, got {text!r}")
    return blocks


def build_encoder(config: dict) -> tuple[nn.Module, str]:
    """The encoder a method's ``config`` asks for, and the name of what was really built (a
    pretrained ResNet-18 falls back to EfficientNet-Lite0 when its weights are not cached)."""
    blocks = parse_blocks(config["blocks"])
    if config["encoder"] == "efficientnet_lite0":
        return Lite0Encoder(config["pretrained"]), "efficientnet_lite0"
    if not config["pretrained"]:
        return ResNetEncoder(config["width"], blocks), "resnet"
    if config["width"] != 64 or blocks != [2, 2, 2, 2]:
        raise ValueError("pretrained ResNet weights exist only for ResNet-18: width 64, blocks 2,2,2,2")
    from adcore.backbones import cached_resnet18_state

    state = cached_resnet18_state("a pretrained efficientnet_lite0 encoder")
    if state is None:
        return Lite0Encoder(True), "efficientnet_lite0"
    net = ResNetEncoder(64, blocks)
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=True)
    return net, "resnet"


def normalize_exposure(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> each image shifted and scaled so that its median is 0.45 and its
    interquartile range that of a spread of 0.225, over all pixels and channels: the same part
    photographed brighter or darker looks the same. Median and quartiles rather than mean and
    standard deviation, so a large dark or bright defect does not change how the rest looks."""
    if torch.onnx.is_in_onnx_export():
        q = torch.stack([_sorted_quartiles(image.flatten()) for image in x]).view(-1, 3, 1, 1, 1)
    else:
        levels = torch.tensor(_QUARTILES, device=x.device, dtype=x.dtype)
        q = torch.stack([torch.quantile(image.flatten(), levels) for image in x]).view(-1, 3, 1, 1, 1)
    spread = (q[:, 2] - q[:, 0]) / 1.349  # the interquartile range of a normal distribution is 1.349 sigma
    return (x - q[:, 1]) / (spread + 1e-3) * 0.225 + 0.45


_QUARTILES = (0.25, 0.5, 0.75)


def _sorted_quartiles(values: torch.Tensor) -> torch.Tensor:
    """``torch.quantile(values, _QUARTILES)`` (linear interpolation) by sorting, which ONNX has and
    quantile has not: the same ranks and weights (float32, as quantile computes them) and the same
    lerp, so an exported model normalises exposure as its run did."""
    n = values.numel()
    ordered = values.sort().values
    out = []
    for level in _QUARTILES:
        rank = float(np.float32(level) * np.float32(n - 1))
        low = math.floor(rank)
        high, weight = min(low + 1, n - 1), rank - low
        a, b = ordered[low], ordered[high]
        # torch.lerp's two branches, for its rounding
        out.append(a + weight * (b - a) if weight < 0.5 else b - (b - a) * (1 - weight))
    return torch.stack(out)


def prepare(x: torch.Tensor, normalize: str) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the network's input: with ``normalize="image"`` each photo's
    exposure is evened out (``normalize_exposure``) and the result clipped back to [0, 1]."""
    if normalize == "image":
        return normalize_exposure(x).clamp_(0.0, 1.0)
    return x


class EncoderModel(nn.Module):
    """What the inference modules of the self-supervised methods share: the trained ``encoder`` and
    the ``head`` it was trained with (submodules; the head is kept with the encoder it was trained
    with, though scoring uses the encoder alone), and the input preparation (``normalize``)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, *, normalize: str) -> None:
        super().__init__()
        self.encoder, self.head, self.normalize = encoder, head, normalize

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return prepare(x, self.normalize)

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> the trained encoder's (B, C, S/8, S/8) feature map: what a student
        network learns to match with this run as its teacher."""
        return self.encoder(self.input(x)).dense


class EncoderFeatures:
    """Mixin for methods whose inference module is an ``EncoderModel`` with an encoder from
    ``build_encoder``: handles on its parts, ``dense_features`` (the hook a student-teacher run uses
    to take such a run as its teacher), and the marker ``built.<name>`` saved beside the module's
    state, naming the encoder really built (a pretrained ResNet-18 may fall back to Lite0)."""

    saved_alongside = ("built.",)

    @property
    def encoder_(self) -> nn.Module:
        return self.model_.encoder

    @property
    def head_(self) -> nn.Module:
        return self.model_.head

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return prepare(x, self.config_["normalize"])

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """The inference module's ``dense_features``, in eval mode and without gradients."""
        module = self.inference_module().eval()
        with torch.no_grad():
            return module.dense_features(x)

    def _alongside_tensors(self) -> dict[str, torch.Tensor]:
        return {f"built.{self.encoder_name_}": torch.ones(1)}

    def _build_saved(self, state: dict[str, torch.Tensor]) -> None:
        """Build as ``fit`` does, after checking that the encoder that was trained is the one built now."""
        self._build()
        built = [k.split(".", 1)[1] for k in state if k.startswith("built.")]
        if built != [self.encoder_name_]:
            raise ValueError(
                f"this model was trained with a {built or 'unknown'} encoder but {self.encoder_name_} was built "
                "(were the ResNet-18 weights added to or removed from the torch cache since?)"
            )


def mlp_head(dim: int, hidden: int, out: int, layers: int) -> nn.Sequential:
    """``layers`` of Linear-BatchNorm-ReLU of width ``hidden``, then a Linear to ``out``."""
    parts: list[nn.Module] = []
    for _ in range(layers):
        parts += [nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        dim = hidden
    parts.append(nn.Linear(dim, out))
    return nn.Sequential(*parts)


# -- patches ---------------------------------------------------------------------------------------

def patch_grid(size: int, patch: int, stride: int) -> int:
    """Patches along one side of a ``size`` image; the last one always touches the far edge."""
    if patch >= size:
        return 1
    return math.ceil((size - patch) / stride) + 1


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    n = patch_grid(size, patch, stride)
    if patch >= size:
        return [0]
    return [min(i * stride, size - patch) for i in range(n)]


def extract_patches(x: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(B, C, S, S) -> (B * n * n, C, p, p): the patches of each image, row by row, image by image."""
    size = x.shape[-1]
    p = min(patch, size)
    starts = patch_starts(size, p, stride)
    rows = [x[:, :, t : t + p, l : l + p] for t in starts for l in starts]
    return torch.stack(rows, 1).flatten(0, 1)


def assemble_map(scores: torch.Tensor, size: int, patch: int, stride: int) -> torch.Tensor:
    """(B, n, n) patch scores -> (B, S, S) map: each pixel the mean score of the patches covering it."""
    p = min(patch, size)
    starts = patch_starts(size, p, stride)
    total = scores.new_zeros(scores.shape[0], size, size)
    count = scores.new_zeros(1, size, size)
    for i, t in enumerate(starts):
        for j, l in enumerate(starts):
            total[:, t : t + p, l : l + p] += scores[:, i, j, None, None]
            count[:, t : t + p, l : l + p] += 1
    return total / count


# -- the Gaussian of normal embeddings -------------------------------------------------------------

class GaussianDensity(nn.Module):
    """Mahalanobis distance to the Gaussian of normal embeddings (``adcore.scoring``'s ``gaussian``
    scorer: Ledoit-Wolf shrinkage), kept as tensors on the device so scoring needs no round trip."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("location", torch.zeros(dim))
        self.register_buffer("precision", torch.eye(dim))

    def fit(self, embeddings: torch.Tensor) -> "GaussianDensity":
        from adcore.scoring import build_scorer

        gaussian = build_scorer("gaussian").fit(embeddings.double().cpu().numpy())
        self.location = torch.from_numpy(gaussian.location_).float().to(self.location.device)
        self.precision = torch.from_numpy(gaussian.precision_).float().to(self.precision.device)
        return self

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        d = embeddings - self.location
        return torch.einsum("bi,ij,bj->b", d, self.precision, d).clamp_min(0).sqrt()


# -- optimisation ----------------------------------------------------------------------------------

OPTIM_PARAMS = [
    Param("optimizer", str, "adam", "adam or sgd (momentum 0.9).", choices=("adam", "sgd")),
    Param("learning_rate", float, 1e-3, "Peak learning rate (after warm-up; cosine decay to zero after).",
          1e-5, 1.0, log=True),
    Param("weight_decay", float, 1e-4, "L2 weight decay.", 0.0, 0.1),
    Param("warmup", float, 0.05, "Fraction of training spent warming the learning rate up linearly.", 0.0, 0.5),
]


def make_optimizer(params, config: dict) -> torch.optim.Optimizer:
    lr, wd = config["learning_rate"], config["weight_decay"]
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def warmup_cosine(progress: float, warmup: float) -> float:
    """Learning-rate factor at ``progress`` (0..1 of training): linear warm-up, then cosine to 0."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return (progress + 1e-3) / (warmup + 1e-3)
    return 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / max(1e-9, 1.0 - warmup)))


def scheduled_step(
    opt: torch.optim.Optimizer, config: dict, clock, batch_loss: Callable[[np.ndarray], torch.Tensor]
) -> Callable[[np.ndarray, int], torch.Tensor]:
    """The training step the self-supervised methods share, for ``methods.epochs.train_epochs``: the
    warm-up + cosine learning rate at ``clock``'s progress (a ``TrainingClock``), then one optimiser
    step on ``batch_loss(indices)``."""

    def step(idx: np.ndarray, done: int) -> torch.Tensor:
        for group in opt.param_groups:
            group["lr"] = config["learning_rate"] * warmup_cosine(clock.progress(done), config["warmup"])
        loss = batch_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def time_one_pass(fn, n_done: int, n_total: int) -> float:
    """Seconds a pass over ``n_total`` images should take, from ``fn()`` timed on ``n_done`` of them."""
    t0 = time.monotonic()
    fn()
    return (time.monotonic() - t0) * n_total / max(1, n_done)


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] -> (N, H, W, 3) uint8 on the CPU (for the numpy augmentations)."""
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def prepared_uint8(images: np.ndarray, normalize: str, device: torch.device) -> np.ndarray:
    """(N, S, S, 3) uint8 -> the same after ``prepare``: done once before training rather than at
    every step, so augmentations and pasted defects work on exposure-evened photos."""
    from adcore.methods.base import to_tensor

    if normalize == "none":
        return images
    return np.concatenate(
        [to_uint8_images(prepare(to_tensor(images[i : i + 64], device), normalize)) for i in range(0, len(images), 64)]
    )
