"""Wide ResNets (Zagoruyko & Komodakis, 2016) as defined in RepDistiller's ``models/wrn.py``.

WRN blocks are pre-activation blocks: BN and ReLU come *before* each convolution and nothing
follows the residual sum, so these blocks have no ``relu_out``. A stage output (``blockK``) is
therefore already a pre-activation; the network's final ``bn1`` + ``relu`` act on ``block3``.
Activations are non-inplace modules, pooling is adaptive, and ``forward`` returns logits only.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["WideBasicBlock", "WideResNet", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


class WideBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut.

    When the channel count changes, the shortcut is a 1x1 convolution applied to the
    *activated* input (``relu1(bn1(x))``), as in the reference implementation.

    Args:
        in_planes: Input channels.
        out_planes: Output channels.
        stride: Stride of the first convolution.
        drop_rate: Dropout probability between the two convolutions.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(
            in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(drop_rate)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.conv_shortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.conv_shortcut = nn.Conv2d(
                in_planes, out_planes, kernel_size=1, stride=stride, bias=False
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Input features ``[B, in_planes, H, W]``.

        Returns:
            Output features ``[B, out_planes, H / stride, W / stride]``.
        """
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        out = self.conv2(self.dropout(out))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(act)
        return shortcut + out


class WideResNet(nn.Module):
    """WRN-depth-k for CIFAR: a 3x3 stem and three stages at strides 1, 2, 2.

    Args:
        depth: Total depth, ``6n + 4``.
        widen_factor: Channel multiplier ``k`` of the three stages.
        num_classes: Number of output logits.
        in_channels: Input image channels.
        drop_rate: Dropout probability inside blocks.

    Raises:
        ValueError: If ``depth`` is not ``6n + 4``.
    """

    kd_stages: tuple[str, ...] = ("block1", "block2", "block3")
    kd_classifier: str = "fc"

    def __init__(
        self,
        depth: int,
        widen_factor: int = 1,
        num_classes: int = 100,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"wide resnet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1, bias=False)
        self.block1 = self._make_stage(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = self._make_stage(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = self._make_stage(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(channels[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_stage(
        n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float
    ) -> nn.Sequential:
        # Flat Sequential (RepDistiller nests it as NetworkBlock.layer; same parameters).
        return nn.Sequential(
            *[
                WideBasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(n)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits.

        Args:
            x: Images ``[B, in_channels, H, W]``.

        Returns:
            Logits ``[B, num_classes]``.
        """
        out = self.conv1(x)  # [B, 16, H, W]
        out = self.block1(out)  # [B, 16k, H, W]
        out = self.block2(out)  # [B, 32k, H/2, W/2]
        out = self.block3(out)  # [B, 64k, H/4, W/4]
        out = self.relu(self.bn1(out))
        out = self.flatten(self.avgpool(out))  # [B, 64k]
        return self.fc(out)


def wrn_16_1(num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    """WRN-16-1 (~0.18M parameters at 100 classes)."""
    return WideResNet(16, 1, num_classes, in_channels, drop_rate)


def wrn_16_2(num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    """WRN-16-2 (~0.70M parameters at 100 classes)."""
    return WideResNet(16, 2, num_classes, in_channels, drop_rate)


def wrn_40_1(num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    """WRN-40-1 (~0.57M parameters at 100 classes)."""
    return WideResNet(40, 1, num_classes, in_channels, drop_rate)


def wrn_40_2(num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    """WRN-40-2 (~2.26M parameters at 100 classes)."""
    return WideResNet(40, 2, num_classes, in_channels, drop_rate)
