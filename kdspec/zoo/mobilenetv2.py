"""MobileNetV2 (Sandler et al., 2018) as defined in RepDistiller's ``models/mobilenetv2.py``.

``mobilenetv2`` is RepDistiller's ``mobile_half``: expansion ``T = 6`` and width multiplier 0.5.
Inverted-residual blocks end in a linear bottleneck (no ReLU after the sum), so they have no
``relu_out``. The stages tapped in the literature (RepDistiller's ``feat[1:-1]``) are
``blocks.1``, ``blocks.2``, ``blocks.4`` and ``blocks.6``.

For tiny inputs (8x8 digits) pass ``stem_stride=1``: the default stride-2 stem, as in the
reference, leaves a 1x1 map from ``blocks.3`` on, which still runs but discards spatial detail.
The stem stride changes no parameter.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """Pointwise expand -> depthwise 3x3 -> linear pointwise project, with a skip if shapes match.

    Args:
        inp: Input channels.
        oup: Output channels.
        stride: Stride of the depthwise convolution (1 or 2).
        expand_ratio: Expansion factor of the hidden width.

    Raises:
        ValueError: If ``stride`` is not 1 or 2.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and inp == oup
        hidden = inp * expand_ratio
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Input features ``[B, inp, H, W]``.

        Returns:
            Output features ``[B, oup, H / stride, W / stride]``.
        """
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for CIFAR-size inputs.

    Args:
        expansion: Expansion factor ``T`` of the inverted residual blocks.
        width_mult: Channel multiplier.
        num_classes: Number of output logits.
        in_channels: Input image channels.
        stem_stride: Stride of the first convolution (2 in the reference; 1 suits 8x8 inputs).
    """

    kd_stages: tuple[str, ...] = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")
    kd_classifier: str = "classifier"

    def __init__(
        self,
        expansion: int = 6,
        width_mult: float = 0.5,
        num_classes: int = 100,
        in_channels: int = 3,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        # t (expansion), c (channels), n (repeats), s (stride of the first repeat)
        setting = [
            (1, 16, 1, 1),
            (expansion, 24, 2, 1),
            (expansion, 32, 3, 2),
            (expansion, 64, 4, 2),
            (expansion, 96, 3, 1),
            (expansion, 160, 3, 2),
            (expansion, 320, 1, 1),
        ]
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, stem_stride)
        self.blocks = nn.ModuleList()
        for t, c, n, s in setting:
            out_channels = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t))
                channels = out_channels
            self.blocks.append(nn.Sequential(*stage))
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(last_channel, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits.

        Args:
            x: Images ``[B, in_channels, H, W]``.

        Returns:
            Logits ``[B, num_classes]``.
        """
        out = self.conv1(x)  # [B, 16, H/s, W/s] at width 0.5
        for block in self.blocks:
            out = block(out)  # ends at [B, 160, H/(8s), W/(8s)]
        out = self.conv2(out)  # [B, 1280, H/(8s), W/(8s)]
        out = self.flatten(self.avgpool(out))  # [B, 1280]
        return self.classifier(out)


def mobilenetv2(num_classes: int = 100, in_channels: int = 3, stem_stride: int = 2) -> MobileNetV2:
    """MobileNetV2 x0.5 (RepDistiller ``mobile_half``, ~0.81M parameters at 100 classes)."""
    return MobileNetV2(6, 0.5, num_classes, in_channels, stem_stride)
