"""ShuffleNet V1 (Zhang et al., 2018) and V2 (Ma et al., 2018) for CIFAR.

Both follow RepDistiller's ``models/ShuffleNetv1.py`` (``ShuffleV1``: groups 3, widths
240/480/960) and ``models/ShuffleNetv2.py`` (``ShuffleV2``: net size 1). The stem is a stride-1
1x1 convolution and each of the three stages halves the resolution, so 32x32 inputs end at 4x4
and 8x8 digits at 1x1; pooling is adaptive, so both sizes run unchanged.

Every block ends in a ReLU module ``relu_out`` whose input is the block's pre-activation.
ShuffleNetV2 differs from the reference in *where* that ReLU sits: the reference applies it to
the right branch only and then concatenates the untouched left half. The left half is always the
(non-negative) output of an earlier ReLU, so ``relu(cat([left, right]))`` is the same function;
applying ``relu_out`` after the concatenation gives the compiler one tensor to tap.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "ChannelShuffle",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "ShuffleV1Block",
    "ShuffleV2Block",
    "ShuffleV2DownBlock",
    "shufflenetv1",
    "shufflenetv2",
]


class ChannelShuffle(nn.Module):
    """Interleave channels across ``groups``: ``[B, g*c, H, W] -> [B, c*g, H, W]``.

    Args:
        groups: Number of channel groups.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        """Shuffle channels.

        Args:
            x: Features ``[B, C, H, W]`` with ``C`` divisible by ``groups``.

        Returns:
            Features ``[B, C, H, W]`` with channels interleaved.
        """
        b, c, h, w = x.shape
        g = self.groups
        return x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleV1Block(nn.Module):
    """ShuffleNet V1 unit: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1, then add or concat.

    With ``stride == 2`` the shortcut is a 3x3 average pool and the result is concatenated, so
    the block outputs ``out_planes + in_planes`` channels.

    Args:
        in_planes: Input channels.
        out_planes: Channels of the residual branch.
        stride: 1 (add) or 2 (concat).
        groups: Groups of the pointwise convolutions.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        # The first unit sees the 24-channel stem, too narrow to split into groups.
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.relu1 = nn.ReLU()
        self.shuffle1 = ChannelShuffle(g)
        self.conv2 = nn.Conv2d(
            mid_planes,
            mid_planes,
            kernel_size=3,
            stride=stride,
            padding=1,
            groups=mid_planes,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = (
            nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        )
        self.relu_out = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the unit.

        Args:
            x: Input features ``[B, in_planes, H, W]``.

        Returns:
            ``[B, out_planes + in_planes, H/2, W/2]`` if ``stride == 2`` else
            ``[B, out_planes, H, W]``.
        """
        out = self.shuffle1(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return self.relu_out(preact)


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1 for CIFAR.

    Args:
        out_planes: Output channels of the three stages.
        num_blocks: Units per stage.
        groups: Groups of the pointwise convolutions.
        num_classes: Number of output logits.
        in_channels: Input image channels.
    """

    kd_stages: tuple[str, ...] = ("layer1", "layer2", "layer3")
    kd_classifier: str = "linear"

    def __init__(
        self,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            # The stride-2 unit concatenates its input, so its branch makes up the difference.
            cat_planes = self.in_planes if i == 0 else 0
            stride = 2 if i == 0 else 1
            layers.append(ShuffleV1Block(self.in_planes, out_planes - cat_planes, stride, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits.

        Args:
            x: Images ``[B, in_channels, H, W]``.

        Returns:
            Logits ``[B, num_classes]``.
        """
        out = self.relu(self.bn1(self.conv1(x)))  # [B, 24, H, W]
        out = self.layer1(out)  # [B, 240, H/2, W/2]
        out = self.layer2(out)  # [B, 480, H/4, W/4]
        out = self.layer3(out)  # [B, 960, H/8, W/8]
        out = self.flatten(self.avgpool(out))  # [B, 960]
        return self.linear(out)


class ShuffleV2Block(nn.Module):
    """ShuffleNet V2 basic unit: split channels, transform one half, concat, shuffle.

    Args:
        in_channels: Input (and output) channels.
        split_ratio: Fraction of channels passed through untouched.
    """

    def __init__(self, in_channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split_at = int(in_channels * split_ratio)
        c = in_channels - self.split_at
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.relu_out = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the unit.

        Args:
            x: Input features ``[B, C, H, W]``.

        Returns:
            Output features ``[B, C, H, W]``.
        """
        x1, x2 = x[:, : self.split_at], x[:, self.split_at :]
        out = self.relu1(self.bn1(self.conv1(x2)))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        # x1 is already non-negative, so this ReLU equals the reference's right-branch ReLU.
        out = self.relu_out(torch.cat([x1, out], 1))
        return self.shuffle(out)


class ShuffleV2DownBlock(nn.Module):
    """ShuffleNet V2 spatial down-sampling unit: two stride-2 branches, concat, shuffle.

    Args:
        in_channels: Input channels.
        out_channels: Output channels (each branch produces half).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # left branch
        self.conv1 = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size=3,
            stride=2,
            padding=1,
            groups=in_channels,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        # relu(cat(a, b)) == cat(relu(a), relu(b)): one module covers both branch outputs.
        self.relu_out = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the unit.

        Args:
            x: Input features ``[B, in_channels, H, W]``.

        Returns:
            Output features ``[B, out_channels, H/2, W/2]``.
        """
        left = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        right = self.relu3(self.bn3(self.conv3(x)))
        right = self.bn5(self.conv5(self.bn4(self.conv4(right))))
        out = self.relu_out(torch.cat([left, right], 1))
        return self.shuffle(out)


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2 for CIFAR.

    Args:
        out_channels: Channels of the three stages and of the final 1x1 convolution.
        num_blocks: Basic units per stage (after its down-sampling unit).
        num_classes: Number of output logits.
        in_channels: Input image channels.
    """

    kd_stages: tuple[str, ...] = ("layer1", "layer2", "layer3")
    kd_classifier: str = "linear"

    def __init__(
        self,
        out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
        num_blocks: tuple[int, int, int] = (3, 7, 3),
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu1 = nn.ReLU()
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2DownBlock(self.in_channels, out_channels)]
        layers += [ShuffleV2Block(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits.

        Args:
            x: Images ``[B, in_channels, H, W]``.

        Returns:
            Logits ``[B, num_classes]``.
        """
        out = self.relu1(self.bn1(self.conv1(x)))  # [B, 24, H, W]
        out = self.layer1(out)  # [B, 116, H/2, W/2]
        out = self.layer2(out)  # [B, 232, H/4, W/4]
        out = self.layer3(out)  # [B, 464, H/8, W/8]
        out = self.relu2(self.bn2(self.conv2(out)))  # [B, 1024, H/8, W/8]
        out = self.flatten(self.avgpool(out))  # [B, 1024]
        return self.linear(out)


def shufflenetv1(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV1:
    """ShuffleNet V1, groups 3 (RepDistiller ``ShuffleV1``, ~0.95M parameters at 100 classes)."""
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, in_channels)


def shufflenetv2(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV2:
    """ShuffleNet V2 1x (RepDistiller ``ShuffleV2``, ~1.36M parameters at 100 classes)."""
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes, in_channels)
