"""Small models for the embedded 8x8 single-channel digits data.

These train in seconds on a CPU, which makes them the default teacher/student pair of examples
and tests: ``cnn_small`` (~0.29M parameters) is the teacher, ``cnn_tiny`` (~0.4k parameters) and
``mlp`` are students. All accept any input resolution.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP", "SmallCNN", "cnn_small", "cnn_tiny", "mlp"]


class MLP(nn.Module):
    """Flatten -> ``Linear``/``ReLU`` hidden layers -> linear classifier.

    Inputs whose size differs from ``input_size`` are first average-pooled to it (a no-op at the
    native size), so the parameter count depends on ``input_size`` only.

    Args:
        num_classes: Number of output logits.
        in_channels: Input image channels.
        input_size: Side of the (square) image the first layer expects.
        hidden: Widths of the hidden layers; the outputs of ``hidden.reluK`` are the stages.
    """

    kd_stages: tuple[str, ...] = ("hidden.relu1", "hidden.relu2")
    kd_classifier: str = "fc"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 8,
        hidden: Sequence[int] = (128, 64),
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("mlp needs at least one hidden layer")
        self.resize = nn.AdaptiveAvgPool2d(input_size)
        self.flatten = nn.Flatten(1)
        layers: list[tuple[str, nn.Module]] = []
        width = in_channels * input_size * input_size
        for i, h in enumerate(hidden, start=1):
            layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU())]
            width = h
        self.hidden = nn.Sequential(OrderedDict(layers))
        self.fc = nn.Linear(width, num_classes)
        # Instance attribute: the number of stages follows `hidden`.
        self.kd_stages = tuple(f"hidden.relu{i}" for i in range(1, len(hidden) + 1))

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits.

        Args:
            x: Images ``[B, in_channels, H, W]``.

        Returns:
            Logits ``[B, num_classes]``.
        """
        x = self.flatten(self.resize(x))  # [B, in_channels * input_size**2]
        x = self.hidden(x)  # [B, hidden[-1]]
        return self.fc(x)


def _conv_stage(in_channels: int, width: int, depth: int) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = []
    for i in range(1, depth + 1):
        last = i == depth
        layers += [
            (f"conv{i}", nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)),
            (f"bn{i}", nn.BatchNorm2d(width)),
            ("relu_out" if last else f"relu{i}", nn.ReLU()),
        ]
        in_channels = width
    return nn.Sequential(OrderedDict(layers))


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages separated by 2x2 max-pools, then global average pooling and a linear.

    Stage ``k`` is the child ``stagek``; its last ReLU is ``stagek.relu_out``. On 8x8 inputs the
    stages run at 8x8, 4x4, 2x2, ...

    Args:
        widths: Channels of each stage (also sets the number of stages).
        depth: Convolutions per stage.
        num_classes: Number of output logits.
        in_channels: Input image channels.
    """

    kd_stages: tuple[str, ...] = ("stage1", "stage2", "stage3")
    kd_classifier: str = "fc"

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        depth: int = 2,
        num_classes: int = 10,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("cnn needs at least one stage")
        prev = in_channels
        for k, width in enumerate(widths, start=1):
            if k > 1:
                # ceil_mode keeps a 1x1 map alive if a caller feeds very small inputs.
                self.add_module(f"pool{k - 1}", nn.MaxPool2d(2, ceil_mode=True))
            self.add_module(f"stage{k}", _conv_stage(prev, width, depth))
            prev = width
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(prev, num_classes)
        self.kd_stages = tuple(f"stage{k}" for k in range(1, len(widths) + 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits.

        Args:
            x: Images ``[B, in_channels, H, W]``.

        Returns:
            Logits ``[B, num_classes]``.
        """
        for k in range(1, self.num_stages + 1):
            if k > 1:
                x = getattr(self, f"pool{k - 1}")(x)  # [B, C, ceil(H/2), ceil(W/2)]
            x = getattr(self, f"stage{k}")(x)  # [B, widths[k-1], H', W']
        x = self.flatten(self.avgpool(x))  # [B, widths[-1]]
        return self.fc(x)


def mlp(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 8,
    hidden: Sequence[int] = (128, 64),
) -> MLP:
    """Two-hidden-layer MLP (~17k parameters on 8x8x1 inputs with 10 classes)."""
    return MLP(num_classes, in_channels, input_size, hidden)


def cnn_small(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    """Three stages of two 3x3 convs, widths 32/64/128 (~0.29M parameters): a digits teacher."""
    return SmallCNN((32, 64, 128), 2, num_classes, in_channels)


def cnn_tiny(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    """Two stages of one 3x3 conv, widths 4/8 (~0.4k parameters): a digits student."""
    return SmallCNN((4, 8), 1, num_classes, in_channels)
