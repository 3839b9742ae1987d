"""CIFAR VGGs with batch norm, as defined in RepDistiller's ``models/vgg.py`` (``vggN_bn``).

Five conv blocks separated by 2x2 max-pools, global average pooling and a single linear
classifier (no VGG fully connected head). Each block is a ``Sequential`` whose last child is the
ReLU ``relu_out``: the block output is the post-activation feature and the input of
``blockK.relu_out`` is its pre-activation (RepDistiller's ``preact`` features).

``pool3`` only runs for inputs of height >= 64 (RepDistiller applies it at 64x64 only), so on
CIFAR and digits inputs a hook on ``pool3`` never fires.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import Tensor, nn

__all__ = ["VGG", "vgg8", "vgg11", "vgg13"]

# Channels of the convolutions in each of the five blocks (RepDistiller's cfg S, A, B).
_CFG: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


def _make_block(widths: tuple[int, ...], in_channels: int) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = []
    for i, width in enumerate(widths, start=1):
        last = i == len(widths)
        layers += [
            (f"conv{i}", nn.Conv2d(in_channels, width, kernel_size=3, padding=1)),
            (f"bn{i}", nn.BatchNorm2d(width)),
            ("relu_out" if last else f"relu{i}", nn.ReLU()),
        ]
        in_channels = width
    return nn.Sequential(OrderedDict(layers))


class VGG(nn.Module):
    """VGG-BN backbone for small images.

    Args:
        cfg: Convolution widths of the five blocks.
        num_classes: Number of output logits.
        in_channels: Input image channels.
    """

    kd_stages: tuple[str, ...] = ("block1", "block2", "block3", "block4")
    kd_classifier: str = "classifier"

    def __init__(
        self, cfg: tuple[tuple[int, ...], ...], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.block0 = _make_block(cfg[0], in_channels)
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.block1 = _make_block(cfg[1], cfg[0][-1])
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.block2 = _make_block(cfg[2], cfg[1][-1])
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.block3 = _make_block(cfg[3], cfg[2][-1])
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.block4 = _make_block(cfg[4], cfg[3][-1])
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(cfg[4][-1], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
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
        height = x.shape[2]
        x = self.pool0(self.block0(x))  # [B, 64, H/2, W/2]
        x = self.pool1(self.block1(x))  # [B, 128, H/4, W/4]
        x = self.pool2(self.block2(x))  # [B, 256, H/8, W/8]
        x = self.block3(x)  # [B, 512, H/8, W/8]
        if height >= 64:
            x = self.pool3(x)
        x = self.block4(x)  # [B, 512, H/8, W/8]
        x = self.flatten(self.pool4(x))  # [B, 512]
        return self.classifier(x)


def vgg8(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-8 with BN (RepDistiller ``vgg8_bn``, ~3.96M parameters at 100 classes)."""
    return VGG(_CFG["vgg8"], num_classes, in_channels)


def vgg11(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-11 with BN (RepDistiller ``vgg11_bn``, ~9.28M parameters at 100 classes)."""
    return VGG(_CFG["vgg11"], num_classes, in_channels)


def vgg13(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-13 with BN (RepDistiller ``vgg13_bn``, ~9.46M parameters at 100 classes)."""
    return VGG(_CFG["vgg13"], num_classes, in_channels)
