"""CIFAR-style ResNets (He et al., 2016) as defined in RepDistiller's ``models/resnet.py``.

The layout and parameter counts follow RepDistiller so results can be compared with the
CIFAR-100 KD literature (CRD, Tian et al., 2020). Differences, all made so that the compiler
can tap any tensor with forward hooks and no model surgery:

* every activation is its own non-inplace ``nn.ReLU`` module (an inplace ReLU would overwrite a
  tensor a hook has already captured);
* the residual sum is out-of-place, and the ReLU after it is the child ``relu_out``, so the input
  of ``layerK.i.relu_out`` is the block's pre-activation;
* global pooling is ``AdaptiveAvgPool2d`` + ``Flatten`` modules (any input size works, the input
  of ``fc`` is the penultimate embedding) and ``forward`` returns logits only.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut.

    Args:
        inplanes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution.
        downsample: Projection applied to the shortcut, or ``None`` for identity.
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu_out = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Input features ``[B, inplanes, H, W]``.

        Returns:
            Output features ``[B, planes, H / stride, W / stride]``.
        """
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + residual)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck block with 4x channel expansion.

    Args:
        inplanes: Input channels.
        planes: Bottleneck width; the block outputs ``4 * planes`` channels.
        stride: Stride of the 3x3 convolution.
        downsample: Projection applied to the shortcut, or ``None`` for identity.
    """

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self.relu_out = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Input features ``[B, inplanes, H, W]``.

        Returns:
            Output features ``[B, 4 * planes, H / stride, W / stride]``.
        """
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu_out(out + residual)


class ResNet(nn.Module):
    """CIFAR ResNet: a 3x3 stem and three stages at strides 1, 2, 2.

    Args:
        depth: Total depth; ``6n + 2`` for basic blocks, ``9n + 2`` for bottlenecks.
        num_filters: Channels of the stem and of the three stages.
        block_name: ``"basicblock"`` or ``"bottleneck"`` (case-insensitive).
        num_classes: Number of output logits.
        in_channels: Input image channels.

    Raises:
        ValueError: If ``depth`` does not fit the block type or ``block_name`` is unknown.
    """

    kd_stages: tuple[str, ...] = ("layer1", "layer2", "layer3")
    kd_classifier: str = "fc"

    def __init__(
        self,
        depth: int,
        num_filters: tuple[int, int, int, int],
        block_name: str = "basicblock",
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck]
        if block_name.lower() == "basicblock":
            if (depth - 2) % 6 != 0:
                raise ValueError(f"basic-block resnet depth must be 6n+2, got {depth}")
            n, block = (depth - 2) // 6, BasicBlock
        elif block_name.lower() == "bottleneck":
            if (depth - 2) % 9 != 0:
                raise ValueError(f"bottleneck resnet depth must be 9n+2, got {depth}")
            n, block = (depth - 2) // 9, Bottleneck
        else:
            raise ValueError(f"block_name must be `basicblock` or `bottleneck`, got `{block_name}`")

        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes,
                    planes * block.expansion,
                    kernel_size=1,
                    stride=stride,
                    bias=False,
                ),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits.

        Args:
            x: Images ``[B, in_channels, H, W]`` (32x32 for CIFAR, 8x8 for digits).

        Returns:
            Logits ``[B, num_classes]``.
        """
        x = self.relu(self.bn1(self.conv1(x)))  # [B, C0, H, W]
        x = self.layer1(x)  # [B, C1, H, W]
        x = self.layer2(x)  # [B, C2, H/2, W/2]
        x = self.layer3(x)  # [B, C3, H/4, W/4]
        x = self.flatten(self.avgpool(x))  # [B, C3]
        return self.fc(x)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def resnet8(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-8 (~0.08M parameters at 100 classes)."""
    return ResNet(8, _NARROW, "basicblock", num_classes, in_channels)


def resnet14(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-14 (~0.18M parameters at 100 classes)."""
    return ResNet(14, _NARROW, "basicblock", num_classes, in_channels)


def resnet20(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-20 (~0.28M parameters at 100 classes)."""
    return ResNet(20, _NARROW, "basicblock", num_classes, in_channels)


def resnet32(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-32 (~0.47M parameters at 100 classes)."""
    return ResNet(32, _NARROW, "basicblock", num_classes, in_channels)


def resnet44(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-44 (~0.67M parameters at 100 classes)."""
    return ResNet(44, _NARROW, "basicblock", num_classes, in_channels)


def resnet56(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-56 (~0.86M parameters at 100 classes)."""
    return ResNet(56, _NARROW, "basicblock", num_classes, in_channels)


def resnet110(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-110 (~1.74M parameters at 100 classes)."""
    return ResNet(110, _NARROW, "basicblock", num_classes, in_channels)


def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-8 with 4x wider stages (~1.23M parameters at 100 classes)."""
    return ResNet(8, _WIDE, "basicblock", num_classes, in_channels)


def resnet32x4(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """ResNet-32 with 4x wider stages (~7.43M parameters at 100 classes)."""
    return ResNet(32, _WIDE, "basicblock", num_classes, in_channels)
