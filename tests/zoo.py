"""Small pure-PyTorch model zoo used to exercise the ONNX channel-pruning compiler.

Every builder returns a freshly constructed ``nn.Module``; the construction is
deterministic given ``torch.manual_seed``.  The architectures follow the
torchvision designs but use narrow widths and few blocks so that each model
(except :func:`resnet50`, which is full size and only used by benchmarks) has
well under 2M parameters and exports to ONNX in a few seconds.

``ZOO`` maps a model name to ``(builder, example_input_shape)`` with batch 2.
:func:`export` writes a model to a single self-contained ``.onnx`` file with a
dynamic batch dimension, using either the legacy TorchScript exporter or the
dynamo exporter.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ZOO",
    "conv1d_net",
    "conv3d_net",
    "convnext",
    "densenet",
    "efficientnet",
    "export",
    "googlenet",
    "grouped_conv_net",
    "lenet",
    "mlp",
    "mnasnet",
    "mobilenet_v2",
    "mobilenet_v3",
    "randomize_bn",
    "regnet",
    "resnet50",
    "resnet_basic",
    "resnet_bottleneck",
    "resnext",
    "se_block_net",
    "shufflenet_v2",
    "squeezenet",
    "transformer_block",
    "unet",
    "vgg",
    "vit",
]


# --------------------------------------------------------------------------- #
# Shared building blocks
# --------------------------------------------------------------------------- #


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """Conv -> BatchNorm -> activation (activation may be ``None``)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: Callable[[], nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                cin,
                cout,
                kernel_size,
                stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """torchvision-style squeeze-excite: pool -> 1x1 conv -> act -> 1x1 conv -> gate."""

    def __init__(
        self,
        channels: int,
        squeeze: int,
        act: Callable[[], nn.Module] = nn.ReLU,
        gate: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
        return x * s


# --------------------------------------------------------------------------- #
# MLP / LeNet / VGG
# --------------------------------------------------------------------------- #


def mlp() -> nn.Module:
    """Linear/ReLU/Linear/ReLU/Linear. Input ``[N, 32]``."""
    return nn.Sequential(
        nn.Linear(32, 64),
        nn.ReLU(),
        nn.Linear(64, 48),
        nn.ReLU(),
        nn.Linear(48, 10),
    )


def lenet() -> nn.Module:
    """LeNet-5. Input ``[N, 1, 28, 28]``."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


class VGG(nn.Module):
    def __init__(self, cfg: list[int | str], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [
                    nn.Conv2d(cin, v, 3, padding=1),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg() -> nn.Module:
    """VGG-style with BN. Input ``[N, 3, 32, 32]``."""
    return VGG([16, 16, "M", 32, 32, "M", 64, 64, "M"])


# --------------------------------------------------------------------------- #
# ResNet family
# --------------------------------------------------------------------------- #


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision ResNet with configurable stem/stage widths."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        width: int = 64,
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = width
        self.groups = groups
        self.base_width = width_per_group
        if small_input:
            # CIFAR-style stem: 3x3 stride 1, no max-pool.
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        for i, n in enumerate(layers):
            stages.append(
                self._make_layer(block, width * 2**i, n, stride=1 if i == 0 else 2)
            )
        self.layer1 = stages[0]
        self.layer2 = stages[1]
        self.layer3 = stages[2] if len(stages) > 2 else nn.Identity()
        self.layer4 = stages[3] if len(stages) > 3 else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(
        self,
        block: type[BasicBlock | Bottleneck],
        planes: int,
        blocks: int,
        stride: int,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes, planes * block.expansion, 1, stride, bias=False
                ),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [
            block(
                self.inplanes, planes, stride, downsample, self.groups, self.base_width
            )
        ]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(
                    self.inplanes,
                    planes,
                    groups=self.groups,
                    base_width=self.base_width,
                )
            )
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet_basic() -> nn.Module:
    """ResNet-18-like (BasicBlock, 2 blocks per stage, 3 stages). Input ``[N, 3, 32, 32]``."""
    return ResNet(BasicBlock, [2, 2, 2], width=16, num_classes=10, small_input=True)


def resnet_bottleneck() -> nn.Module:
    """ResNet-50-like (Bottleneck, expansion 4). Input ``[N, 3, 32, 32]``."""
    return ResNet(Bottleneck, [2, 2, 2], width=16, num_classes=10, small_input=True)


def resnet50(width: int = 64) -> nn.Module:
    """Full-size torchvision-equivalent ResNet-50. Input ``[N, 3, 224, 224]``.

    With ``width=64`` the parameter count (25,557,032) matches
    ``torchvision.models.resnet50()`` exactly, as do the module names.
    """
    return ResNet(Bottleneck, [3, 4, 6, 3], width=width, num_classes=1000)


def resnext() -> nn.Module:
    """ResNeXt-style bottlenecks with grouped 3x3 conv (groups=8). Input ``[N, 3, 32, 32]``."""
    return ResNet(
        Bottleneck,
        [1, 2, 1],
        width=16,
        num_classes=10,
        groups=8,
        width_per_group=8,
        small_input=True,
    )


# --------------------------------------------------------------------------- #
# MobileNet / MNASNet / EfficientNet
# --------------------------------------------------------------------------- #


class InvertedResidual(nn.Module):
    """MobileNetV2 / MNASNet inverted residual block."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        expand_ratio: int,
        kernel_size: int = 3,
        act: Callable[[], nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__()
        hidden = round(cin * expand_ratio)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(cin, hidden, 1, act=act))
        layers += [
            ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, act=act),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width_mult: float = 0.25) -> None:
        super().__init__()
        # t, c, n, s  (a shortened torchvision setting)
        setting = [
            [1, 16, 1, 1],
            [6, 24, 2, 2],
            [6, 32, 2, 2],
            [6, 64, 2, 2],
            [6, 96, 1, 1],
        ]
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(320 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(3, cin, 3, 1, act=nn.ReLU6)]
        for t, c, n, s in setting:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(ConvBNAct(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x)


def mobilenet_v2() -> nn.Module:
    """MobileNetV2 (width 0.25, shortened). Input ``[N, 3, 32, 32]``."""
    return MobileNetV2()


class InvertedResidualV3(nn.Module):
    def __init__(
        self,
        cin: int,
        kernel: int,
        expanded: int,
        cout: int,
        use_se: bool,
        use_hs: bool,
        stride: int,
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        act: Callable[[], nn.Module] = nn.Hardswish if use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, act=act))
        layers.append(
            ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act)
        )
        if use_se:
            layers.append(
                SqueezeExcite(
                    expanded, _make_divisible(expanded // 4), nn.ReLU, nn.Hardsigmoid
                )
            )
        layers.append(ConvBNAct(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = out + x
        return out


class MobileNetV3(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        # cin, kernel, expanded, cout, use_se, use_hs, stride  (MobileNetV3-Small-ish)
        setting = [
            (16, 3, 16, 16, True, False, 2),
            (16, 3, 48, 24, False, False, 2),
            (24, 3, 64, 24, False, False, 1),
            (24, 5, 96, 40, True, True, 2),
            (40, 5, 120, 40, True, True, 1),
            (40, 5, 120, 48, True, True, 1),
        ]
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, 1, act=nn.Hardswish)]
        for cfg in setting:
            layers.append(InvertedResidualV3(*cfg))
        last_conv = 6 * setting[-1][3]
        layers.append(ConvBNAct(setting[-1][3], last_conv, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, 128),
            nn.Hardswish(),
            nn.Dropout(0.2),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def mobilenet_v3() -> nn.Module:
    """MobileNetV3-Small-like with hardswish and hardsigmoid SE. Input ``[N, 3, 32, 32]``."""
    return MobileNetV3()


class MNASNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        # torchvision MNASNet-0.5-ish stack; (kernel, expansion, cout, repeats, stride)
        stack = [
            (3, 3, 16, 2, 2),
            (5, 3, 24, 2, 2),
            (5, 6, 40, 2, 2),
            (3, 6, 48, 1, 1),
        ]
        layers: list[nn.Module] = [
            ConvBNAct(3, 16, 3, 1),
            # depthwise separable first block
            ConvBNAct(16, 16, 3, 1, groups=16),
            nn.Conv2d(16, 8, 1, bias=False),
            nn.BatchNorm2d(8),
        ]
        cin = 8
        for k, e, c, n, s in stack:
            for i in range(n):
                layers.append(
                    InvertedResidual(
                        cin, c, s if i == 0 else 1, e, kernel_size=k, act=nn.ReLU
                    )
                )
                cin = c
        layers.append(ConvBNAct(cin, 256, 1))
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x).mean([2, 3])
        return self.classifier(x)


def mnasnet() -> nn.Module:
    """MNASNet with 3x3 and depthwise 5x5 inverted residuals. Input ``[N, 3, 32, 32]``."""
    return MNASNet()


class MBConv(nn.Module):
    """EfficientNet MBConv: expand -> depthwise -> SE -> project (+ residual)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(cin, hidden, 1, act=nn.SiLU))
        layers += [
            ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU),
            SqueezeExcite(hidden, max(1, cin // 4), nn.SiLU, nn.Sigmoid),
            ConvBNAct(hidden, cout, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = out + x  # stochastic depth is identity in eval mode
        return out


class EfficientNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        # expand, kernel, stride, cin, cout, repeats
        setting = [
            (1, 3, 1, 16, 8, 1),
            (6, 3, 2, 8, 16, 2),
            (6, 5, 2, 16, 24, 2),
            (6, 3, 2, 24, 40, 2),
            (6, 5, 1, 40, 56, 1),
        ]
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, 1, act=nn.SiLU)]
        for e, k, s, cin, cout, n in setting:
            for i in range(n):
                layers.append(
                    MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e)
                )
        last = 4 * setting[-1][4]
        layers.append(ConvBNAct(setting[-1][4], last, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def efficientnet() -> nn.Module:
    """EfficientNet-B0-like MBConv stages with SiLU and SE. Input ``[N, 3, 32, 32]``."""
    return EfficientNet()


# --------------------------------------------------------------------------- #
# DenseNet / SqueezeNet / GoogLeNet
# --------------------------------------------------------------------------- #


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n: int, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(n):
            self.add_module(
                f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth, bn_size)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.AvgPool2d(2, 2),
        )


class DenseNet(nn.Module):
    def __init__(
        self,
        growth: int = 8,
        block_config: tuple[int, ...] = (3, 3, 3),
        init_features: int = 16,
        bn_size: int = 2,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, init_features, 3, 1, 1, bias=False),
            nn.BatchNorm2d(init_features),
            nn.ReLU(inplace=True),
        ]
        c = init_features
        for i, n in enumerate(block_config):
            layers.append(DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(block_config) - 1:
                layers.append(Transition(c, c // 2))
                c //= 2
        layers.append(nn.BatchNorm2d(c))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x)


def densenet() -> nn.Module:
    """DenseNet with 3 dense blocks (torch.cat) and transitions. Input ``[N, 3, 32, 32]``."""
    return DenseNet()


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [
                self.expand1x1_activation(self.expand1x1(x)),
                self.expand3x3_activation(self.expand3x3(x)),
            ],
            1,
        )


class SqueezeNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(32, 8, 16, 16),
            Fire(32, 8, 16, 16),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(32, 16, 32, 32),
            Fire(64, 16, 32, 32),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 24, 48, 48),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Conv2d(96, num_classes, 1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet() -> nn.Module:
    """SqueezeNet with Fire modules (expand1x1/expand3x3 concat). Input ``[N, 3, 32, 32]``."""
    return SqueezeNet()


class Inception(nn.Module):
    def __init__(
        self,
        cin: int,
        ch1: int,
        ch3red: int,
        ch3: int,
        ch5red: int,
        ch5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1 = ConvBNAct(cin, ch1, 1)
        self.branch2 = nn.Sequential(
            ConvBNAct(cin, ch3red, 1), ConvBNAct(ch3red, ch3, 3)
        )
        # torchvision also uses a 3x3 kernel for the "5x5" branch
        self.branch3 = nn.Sequential(
            ConvBNAct(cin, ch5red, 1), ConvBNAct(ch5red, ch5, 3)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, 1, 1, ceil_mode=True), ConvBNAct(cin, pool_proj, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1
        )


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(3, 16, 3, 1)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = ConvBNAct(16, 32, 3)
        self.inception3a = Inception(32, 16, 16, 24, 4, 8, 8)  # -> 56
        self.inception3b = Inception(56, 24, 24, 32, 8, 16, 16)  # -> 88
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(88, 32, 16, 40, 4, 12, 12)  # -> 96
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.conv1(x))
        x = self.conv2(x)
        x = self.inception3b(self.inception3a(x))
        x = self.inception4a(self.maxpool3(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


def googlenet() -> nn.Module:
    """GoogLeNet with three 4-branch Inception modules. Input ``[N, 3, 32, 32]``."""
    return GoogLeNet()


# --------------------------------------------------------------------------- #
# UNet
# --------------------------------------------------------------------------- #


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(ConvBNAct(cin, cout, 3), ConvBNAct(cout, cout, 3))


class UNet(nn.Module):
    def __init__(self, cin: int = 3, num_classes: int = 2, base: int = 8) -> None:
        super().__init__()
        b = base
        self.inc = DoubleConv(cin, b)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(b, 2 * b))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(2 * b, 4 * b))
        self.down3 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(4 * b, 8 * b))
        self.up1 = nn.ConvTranspose2d(8 * b, 4 * b, 2, stride=2)
        self.conv1 = DoubleConv(8 * b, 4 * b)
        self.up2 = nn.ConvTranspose2d(4 * b, 2 * b, 2, stride=2)
        self.conv2 = DoubleConv(4 * b, 2 * b)
        self.up3 = nn.ConvTranspose2d(2 * b, b, 2, stride=2)
        self.conv3 = DoubleConv(2 * b, b)
        self.outc = nn.Conv2d(b, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        y = self.conv1(torch.cat([x3, self.up1(x4)], 1))
        y = self.conv2(torch.cat([x2, self.up2(y)], 1))
        y = self.conv3(torch.cat([x1, self.up3(y)], 1))
        return self.outc(y)


def unet() -> nn.Module:
    """UNet (3 levels, ConvTranspose2d up-sampling, skip concat). Input ``[N, 3, 64, 64]``."""
    return UNet()


# --------------------------------------------------------------------------- #
# ShuffleNetV2
# --------------------------------------------------------------------------- #


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride > 1:
            self.branch1: nn.Module = nn.Sequential(
                ConvBNAct(cin, cin, 3, stride, groups=cin, act=None),
                ConvBNAct(cin, branch, 1),
            )
        else:
            assert cin == branch * 2
            self.branch1 = nn.Identity()
        self.branch2 = nn.Sequential(
            ConvBNAct(cin if stride > 1 else branch, branch, 1),
            ConvBNAct(branch, branch, 3, stride, groups=branch, act=None),
            ConvBNAct(branch, branch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        repeats = [2, 3, 2]
        channels = [24, 48, 96, 192]
        self.conv1 = ConvBNAct(3, 16, 3, 1)
        cin = 16
        stages: list[nn.Module] = []
        for n, cout in zip(repeats, channels[:3], strict=False):
            units = [ShuffleUnit(cin, cout, 2)]
            units += [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = ConvBNAct(cin, channels[3], 1)
        self.fc = nn.Linear(channels[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.conv1(x))))
        x = self.conv5(x).mean([2, 3])
        return self.fc(x)


def shufflenet_v2() -> nn.Module:
    """ShuffleNetV2 (chunk split, view/transpose/view shuffle, concat). Input ``[N, 3, 32, 32]``."""
    return ShuffleNetV2()


# --------------------------------------------------------------------------- #
# RegNet
# --------------------------------------------------------------------------- #


class RegNetBlock(nn.Module):
    """RegNet X/Y bottleneck: 1x1 -> grouped 3x3 -> [SE] -> 1x1, residual."""

    def __init__(
        self, cin: int, cout: int, stride: int, group_width: int, se_ratio: float | None
    ) -> None:
        super().__init__()
        width = cout  # bottleneck multiplier 1.0
        groups = width // group_width
        layers: list[nn.Module] = [
            ConvBNAct(cin, width, 1),
            ConvBNAct(width, width, 3, stride, groups=groups),
        ]
        if se_ratio:
            layers.append(SqueezeExcite(width, max(1, round(se_ratio * cin))))
        layers.append(ConvBNAct(width, cout, 1, act=None))
        self.f = nn.Sequential(*layers)
        self.proj: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.proj = ConvBNAct(cin, cout, 1, stride, act=None)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


class RegNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        # (depth, width, group_width, se_ratio): mixes RegNetY (SE) and RegNetX (no SE) stages
        stages_cfg = [(1, 24, 8, 0.25), (2, 48, 8, None), (2, 96, 16, 0.25)]
        self.stem = ConvBNAct(3, 16, 3, 1)
        cin = 16
        stages: list[nn.Module] = []
        for depth, w, gw, se in stages_cfg:
            blocks = [
                RegNetBlock(cin if i == 0 else w, w, 2 if i == 0 else 1, gw, se)
                for i in range(depth)
            ]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.trunk_output = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk_output(self.stem(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def regnet() -> nn.Module:
    """RegNetX/Y-style (group conv, SE in some stages). Input ``[N, 3, 32, 32]``."""
    return RegNet()


# --------------------------------------------------------------------------- #
# ConvNeXt
# --------------------------------------------------------------------------- #


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor (permute -> LN -> permute)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.layer_scale = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x)
        y = y.permute(0, 2, 3, 1)  # NCHW -> NHWC
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = self.layer_scale * y
        y = y.permute(0, 3, 1, 2)  # NHWC -> NCHW
        return x + y  # stochastic depth is identity in eval mode


class ConvNeXt(nn.Module):
    def __init__(
        self,
        depths: tuple[int, ...] = (1, 1, 2),
        dims: tuple[int, ...] = (16, 32, 64),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, dims[0], 2, 2), LayerNorm2d(dims[0], eps=1e-6))
        ]
        for i, (d, dim) in enumerate(zip(depths, dims, strict=False)):
            # layer scale 0.5 (not 1e-6) so the residual branch matters numerically
            layers.append(
                nn.Sequential(*[CNBlock(dim, layer_scale=0.5) for _ in range(d)])
            )
            if i + 1 < len(dims):
                layers.append(
                    nn.Sequential(
                        LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, dims[i + 1], 2, 2)
                    )
                )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            LayerNorm2d(dims[-1], eps=1e-6),
            nn.Flatten(1),
            nn.Linear(dims[-1], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def convnext() -> nn.Module:
    """ConvNeXt (dw 7x7, channels-last LN + MLP, layer scale). Input ``[N, 3, 32, 32]``."""
    return ConvNeXt()


# --------------------------------------------------------------------------- #
# Attention models
# --------------------------------------------------------------------------- #


class Attention(nn.Module):
    """Hand-written multi-head self-attention: Linear qkv -> heads -> softmax -> proj."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        assert dim % num_heads == 0
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # 3, B, H, N, D
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        out = torch.matmul(attn, v)  # B, H, N, D
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block."""

    def __init__(self, dim: int = 64, num_heads: int = 4, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def transformer_block() -> nn.Module:
    """One pre-norm transformer block (hand-written MHSA). Input ``[N, 16, 64]``."""
    return TransformerBlock(64, 4, 4)


class ViT(nn.Module):
    def __init__(
        self,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, patch, stride=patch)
        seq = (image_size // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
        self.blocks = nn.Sequential(
            *[TransformerBlock(dim, num_heads, 2) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x)  # N, D, H', W'
        x = x.flatten(2).transpose(1, 2)  # N, L, D
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit() -> nn.Module:
    """Tiny ViT (patch 4, dim 64, 2 blocks, cls token). Input ``[N, 3, 32, 32]``."""
    return ViT()


# --------------------------------------------------------------------------- #
# Misc: Conv1d / grouped conv / Conv3d / Linear-SE
# --------------------------------------------------------------------------- #


class Conv1dNet(nn.Module):
    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 4
        for cout, stride in [(16, 1), (32, 2), (32, 1), (64, 2)]:
            layers += [
                nn.Conv1d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm1d(cout),
                nn.ReLU(inplace=True),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def conv1d_net() -> nn.Module:
    """Conv1d+BN+ReLU stack, global pool, Linear. Input ``[N, 4, 64]``."""
    return Conv1dNet()


def grouped_conv_net() -> nn.Module:
    """Conv -> BN -> ReLU -> Conv(groups=4) -> BN -> ReLU -> Conv1x1 -> pool -> fc.

    Input ``[N, 3, 32, 32]``.
    """
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, groups=4, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 48, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(48, 10),
    )


def conv3d_net() -> nn.Module:
    """Small Conv3d stack. Input ``[N, 2, 8, 16, 16]``."""
    return nn.Sequential(
        nn.Conv3d(2, 8, 3, padding=1, bias=False),
        nn.BatchNorm3d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(2),
        nn.Conv3d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv3d(16, 16, 1),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


class LinearSE(nn.Module):
    """Squeeze-excite with Linear layers (the classic SENet formulation)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        y = torch.flatten(self.avg_pool(x), 1)
        y = self.fc(y).view(n, c, 1, 1)
        return x * y


def se_block_net() -> nn.Module:
    """Convs with a Linear-based squeeze-excite gate. Input ``[N, 3, 32, 32]``."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        LinearSE(32, 4),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


# --------------------------------------------------------------------------- #
# Detectors, gates and recurrent nets: channels that meet in slices
# --------------------------------------------------------------------------- #


class YConv(nn.Sequential):
    """Ultralytics' Conv: Conv2d (no bias) -> BatchNorm -> SiLU."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, g: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class YBottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1, self.cv2 = YConv(c1, c_, 3), YConv(c_, c2, 3, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8's C2f: cv1 -> chunk in two -> n bottlenecks on the second half -> concat -> cv2."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = YConv(c1, 2 * self.c, 1)
        self.cv2 = YConv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(self._block(shortcut) for _ in range(n))

    def _block(self, shortcut: bool) -> nn.Module:
        return YBottleneck(self.c, self.c, shortcut, e=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C3k(nn.Module):
    """YOLO11's C3k (a C3 with k x k bottlenecks)."""

    def __init__(self, c1: int, c2: int, n: int = 2, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1, self.cv2, self.cv3 = YConv(c1, c_, 1), YConv(c1, c_, 1), YConv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(YBottleneck(c_, c_, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k2(C2f):
    """YOLO11's C3k2: a C2f whose blocks are C3k (or bottlenecks)."""

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5,
                 shortcut: bool = True) -> None:
        self._c3k = c3k
        super().__init__(c1, c2, n, shortcut, e)

    def _block(self, shortcut: bool) -> nn.Module:
        return C3k(self.c, self.c, 2, shortcut) if self._c3k else YBottleneck(self.c, self.c, shortcut)


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1, self.cv2 = YConv(c1, c_, 1), YConv(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over ``reg_max`` bins, expectation by a fixed conv."""

    def __init__(self, c1: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    """YOLOv8 / YOLO11 detection head with DFL box decoding (anchors for a fixed image size)."""

    def __init__(self, nc: int, ch: tuple[int, ...], strides: tuple[int, ...], image: int,
                 yolo11: bool = False) -> None:
        super().__init__()
        self.nc, self.reg_max = nc, 16
        self.no = nc + 4 * self.reg_max
        c2, c3 = max(16, ch[0] // 4, self.reg_max * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(YConv(x, c2, 3), YConv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1))
                                 for x in ch)
        if yolo11:
            self.cv3 = nn.ModuleList(nn.Sequential(nn.Sequential(YConv(x, x, 3, g=x), YConv(x, c3, 1)),
                                                   nn.Sequential(YConv(c3, c3, 3, g=c3), YConv(c3, c3, 1)),
                                                   nn.Conv2d(c3, nc, 1)) for x in ch)
        else:
            self.cv3 = nn.ModuleList(nn.Sequential(YConv(x, c3, 3), YConv(c3, c3, 3), nn.Conv2d(c3, nc, 1))
                                     for x in ch)
        self.dfl = DFL(self.reg_max)
        anchors, stride_t = [], []
        for s in strides:
            n = image // s
            sy, sx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
            anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
            stride_t.append(torch.full((n * n, 1), float(s)))
        self.register_buffer("anchors", torch.cat(anchors).transpose(0, 1).unsqueeze(0))
        self.register_buffer("strides", torch.cat(stride_t).transpose(0, 1).unsqueeze(0))

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        shape = xs[0].shape
        outs = [torch.cat((self.cv2[i](x), self.cv3[i](x)), 1) for i, x in enumerate(xs)]
        x_cat = torch.cat([o.view(shape[0], self.no, -1) for o in outs], 2)
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        a = self.anchors
        dbox = torch.cat(((a - lt + a + rb) / 2, rb + lt), 1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class YOLO(nn.Module):
    """YOLOv8n / YOLO11n topology (backbone, PAN neck, Detect) at a reduced width."""

    def __init__(self, yolo11: bool = False, w: int = 4, nc: int = 4, image: int = 64) -> None:
        super().__init__()
        if yolo11:
            def block(c1, c2, n, sc, c3k=False, e=0.5):
                return C3k2(c1, c2, n, c3k, e, shortcut=sc)
        else:
            def block(c1, c2, n, sc, c3k=False, e=0.5):
                return C2f(c1, c2, n, sc)
        self.b0, self.b1 = YConv(3, 2 * w, 3, 2), YConv(2 * w, 4 * w, 3, 2)
        self.b2 = block(4 * w, 4 * w if not yolo11 else 8 * w, 1, True, e=0.25)
        c2 = 4 * w if not yolo11 else 8 * w
        self.b3 = YConv(c2, 8 * w, 3, 2)
        self.b4 = block(8 * w, 8 * w if not yolo11 else 16 * w, 2 if not yolo11 else 1, True, e=0.25)
        p3 = 8 * w if not yolo11 else 16 * w
        self.b5 = YConv(p3, 16 * w, 3, 2)
        self.b6 = block(16 * w, 16 * w, 2 if not yolo11 else 1, True, c3k=yolo11)
        self.b7 = YConv(16 * w, 32 * w, 3, 2)
        self.b8 = block(32 * w, 32 * w, 1, True, c3k=yolo11)
        self.b9 = SPPF(32 * w, 32 * w)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.h12 = block(32 * w + 16 * w, 16 * w, 1, False)
        self.h15 = block(16 * w + p3, 8 * w, 1, False)
        self.h16 = YConv(8 * w, 8 * w, 3, 2)
        self.h18 = block(8 * w + 16 * w, 16 * w, 1, False)
        self.h19 = YConv(16 * w, 16 * w, 3, 2)
        self.h21 = block(16 * w + 32 * w, 32 * w, 1, False, c3k=yolo11)
        self.detect = Detect(nc, (8 * w, 16 * w, 32 * w), (8, 16, 32), image, yolo11)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        h12 = self.h12(torch.cat((self.up(p5), p4), 1))
        h15 = self.h15(torch.cat((self.up(h12), p3), 1))
        h18 = self.h18(torch.cat((self.h16(h15), h12), 1))
        h21 = self.h21(torch.cat((self.h19(h18), p5), 1))
        return self.detect([h15, h18, h21])


def yolov8() -> nn.Module:
    return YOLO(yolo11=False)


def yolo11() -> nn.Module:
    return YOLO(yolo11=True)


class GLUNet(nn.Module):
    """Conv -> GLU over channels (Split, Sigmoid(b) * a) -> Conv, twice, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(4, 32, 3, padding=1), nn.Conv1d(16, 24, 3, padding=1)
        self.c3 = nn.Conv1d(12, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.glu(self.c1(x), dim=1)
        x = F.glu(self.c2(x), dim=1)
        return self.fc(self.c3(x).mean(-1))


def glu_net() -> nn.Module:
    return GLUNet()


class RNNNet(nn.Module):
    """Conv front end -> a recurrent layer over time -> linear head on every step."""

    def __init__(self, cell: str = "lstm", bidirectional: bool = True, layers: int = 2,
                 batch_first: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 12, 3, padding=1)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = rnn(12, 10, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        self.batch_first = batch_first
        self.fc = nn.Linear(10 * (2 if bidirectional else 1), 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, T)
        h = torch.relu(self.conv(x))
        seq = h.transpose(1, 2) if self.batch_first else h.permute(2, 0, 1)
        y, _ = self.rnn(seq)
        return self.fc(y)


def lstm_net() -> nn.Module:
    return RNNNet("lstm", True, 2, True)


def lstm_net_time_major() -> nn.Module:
    return RNNNet("lstm", True, 2, False)


def gru_net() -> nn.Module:
    return RNNNet("gru", True, 2, True)


def gru_net_time_major() -> nn.Module:
    return RNNNet("gru", False, 2, False)


class UnrolledLSTM(nn.Module):
    """An LSTM cell unrolled over 4 steps: Gemm of [x, h] -> Split in 4 gates -> Sigmoid/Tanh -> Mul/Add."""

    def __init__(self, din: int = 6, hidden: int = 12, steps: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(8, din)
        self.x2g, self.h2g = nn.Linear(din, 4 * hidden), nn.Linear(hidden, 4 * hidden)
        self.hidden, self.steps = hidden, steps
        self.out = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, steps, 8)
        n = x.shape[0]
        h = x.new_zeros(n, self.hidden)
        c = x.new_zeros(n, self.hidden)
        for t in range(self.steps):
            gates = self.x2g(torch.relu(self.inp(x[:, t]))) + self.h2g(h)
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.out(h)


def unrolled_lstm() -> nn.Module:
    return UnrolledLSTM()


class GroupedDeconvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 16, 4, stride=2, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.dw = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.bn(self.up(x)))
        x = torch.relu(self.dw(torch.relu(self.c2(x))))
        return self.head(x)


def grouped_deconv_net() -> nn.Module:
    return GroupedDeconvNet()


class AudioFrontEnd(nn.Module):
    """Reflect padding computed from the input length (as STFT front ends do), then 1-D convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(1, 16, 9, stride=4)
        self.c2 = nn.Conv1d(16, 16, 3, padding=1)
        self.c3 = nn.Conv1d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, T)
        pad = (x.shape[-1] % 4) + 4
        x = F.pad(x, (pad, pad), mode="reflect")
        x = torch.relu(self.c1(x))
        x = F.pad(torch.relu(self.c2(x)), (1, 1), mode="reflect")
        return self.fc(self.c3(x).mean(-1))


def audio_front_end() -> nn.Module:
    return AudioFrontEnd()


# --------------------------------------------------------------------------- #
# Registry, BN randomisation and export helper
# --------------------------------------------------------------------------- #

ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (mlp, (2, 32)),
    "lenet": (lenet, (2, 1, 28, 28)),
    "vgg": (vgg, (2, 3, 32, 32)),
    "resnet_basic": (resnet_basic, (2, 3, 32, 32)),
    "resnet_bottleneck": (resnet_bottleneck, (2, 3, 32, 32)),
    "resnet50": (resnet50, (2, 3, 224, 224)),
    "mobilenet_v2": (mobilenet_v2, (2, 3, 32, 32)),
    "mobilenet_v3": (mobilenet_v3, (2, 3, 32, 32)),
    "efficientnet": (efficientnet, (2, 3, 32, 32)),
    "densenet": (densenet, (2, 3, 32, 32)),
    "squeezenet": (squeezenet, (2, 3, 32, 32)),
    "googlenet": (googlenet, (2, 3, 32, 32)),
    "mnasnet": (mnasnet, (2, 3, 32, 32)),
    "unet": (unet, (2, 3, 64, 64)),
    "shufflenet_v2": (shufflenet_v2, (2, 3, 32, 32)),
    "resnext": (resnext, (2, 3, 32, 32)),
    "regnet": (regnet, (2, 3, 32, 32)),
    "convnext": (convnext, (2, 3, 32, 32)),
    "vit": (vit, (2, 3, 32, 32)),
    "conv1d_net": (conv1d_net, (2, 4, 64)),
    "grouped_conv_net": (grouped_conv_net, (2, 3, 32, 32)),
    "conv3d_net": (conv3d_net, (2, 2, 8, 16, 16)),
    "se_block_net": (se_block_net, (2, 3, 32, 32)),
    "transformer_block": (transformer_block, (2, 16, 64)),
    "yolov8": (yolov8, (2, 3, 64, 64)),
    "yolo11": (yolo11, (2, 3, 64, 64)),
    "glu_net": (glu_net, (2, 4, 16)),
    "lstm_net": (lstm_net, (2, 3, 7)),
    "lstm_net_time_major": (lstm_net_time_major, (2, 3, 7)),
    "gru_net": (gru_net, (2, 3, 7)),
    "gru_net_time_major": (gru_net_time_major, (2, 3, 7)),
    "unrolled_lstm": (unrolled_lstm, (2, 4, 8)),
    "grouped_deconv_net": (grouped_deconv_net, (2, 3, 16, 16)),
    "audio_front_end": (audio_front_end, (2, 1, 203)),
}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random stats and affine params so it is not an identity.

    Deterministic given ``seed`` (uses a private generator; the global RNG is untouched).
    Returns ``model`` for chaining.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                if m.track_running_stats and m.running_mean is not None:
                    assert m.running_var is not None
                    m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                    m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def _inline_external_data(path: str) -> None:
    """Make ``path`` a single self-contained ONNX file (no external-data side files)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(path, load_external_data=False)
    locations = {
        entry.value
        for init in model.graph.initializer
        if uses_external_data(init)
        for entry in init.external_data
        if entry.key == "location"
    }
    if not locations:
        return
    directory = os.path.dirname(os.path.abspath(path))
    onnx.load_external_data_for_model(model, directory)
    onnx.save_model(model, path, save_as_external_data=False)
    for name in locations:
        side = os.path.join(directory, name)
        if os.path.exists(side):
            os.remove(side)


def export(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: str | os.PathLike[str],
    dynamo: bool,
    opset: int | None = None,
) -> str:
    """Export ``model`` to ONNX at ``path`` and return the path as ``str``.

    The graph has one input ``"input"`` and one output ``"output"``, with a dynamic
    batch dimension (axis 0).  ``dynamo=False`` uses the legacy TorchScript exporter
    (default opset 13); ``dynamo=True`` uses ``torch.export`` (default opset 18).
    The result is always a single self-contained ``.onnx`` file.  The model is put
    in eval mode.
    """
    path = os.fspath(path)
    model.eval()
    # private generator: exporting must not perturb the global RNG state
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        # Known, intentional: the legacy exporter is deprecated, and torch's own
        # pytree internals emit a FutureWarning during torch.export.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings(
            "ignore", message=".*isinstance\\(treespec, LeafSpec\\)"
        )
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                model,
                (example,),
                path,
                input_names=["input"],
                output_names=["output"],
                opset_version=18 if opset is None else opset,
                dynamo=True,
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
            # external_data=False already embeds the weights; this is a cheap guard
            # that the file is self-contained (no ``.data`` side file).
            _inline_external_data(path)
        else:
            torch.onnx.export(
                model,
                (example,),
                path,
                input_names=["input"],
                output_names=["output"],
                opset_version=13 if opset is None else opset,
                dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                do_constant_folding=True,
            )
    return path
