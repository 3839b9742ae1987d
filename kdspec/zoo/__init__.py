"""Model zoo: the CIFAR-100 KD benchmark architectures plus small models for 8x8 digits.

The CIFAR architectures follow RepDistiller (HobbitLong/RepDistiller ``models/``), so parameter
counts match the KD literature. Every model is a plain ``nn.Module`` that the compiler can tap
with forward hooks alone:

* ``forward(x)`` returns logits ``[B, num_classes]``;
* activations are (non-inplace) modules; residual blocks that end in a ReLU after the sum name
  it ``relu_out``, so the input of ``<block>.relu_out`` is the block's pre-activation;
* global pooling is a module and the classifier is a child module, so the classifier's input is
  the penultimate embedding;
* ``model.kd_stages`` lists the dotted paths of the stage outputs in forward order (the
  ``feat[1:-1]`` of RepDistiller: no stem, no embedding) and ``model.kd_classifier`` the path of
  the final classifier.

Example:
    >>> from kdspec.zoo import build_model
    >>> model = build_model("resnet8", num_classes=10, in_channels=1)
    >>> model.kd_stages, model.kd_classifier
    (('layer1', 'layer2', 'layer3'), 'fc')
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from kdspec.zoo.lm import lm_small, lm_tiny
from kdspec.zoo.mobilenetv2 import mobilenetv2
from kdspec.zoo.resnet import (
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
)
from kdspec.zoo.shufflenet import shufflenetv1, shufflenetv2
from kdspec.zoo.small import cnn_small, cnn_tiny, mlp
from kdspec.zoo.vgg import vgg8, vgg11, vgg13
from kdspec.zoo.wrn import wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

__all__ = ["ZOO_VERSION", "available_models", "build_model"]

# Part of the teacher-cache key: bump whenever any architecture or its initialisation changes.
ZOO_VERSION = "2"

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "resnet8": resnet8,
    "resnet14": resnet14,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "wrn_16_1": wrn_16_1,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "mobilenetv2": mobilenetv2,
    "shufflenetv1": shufflenetv1,
    "shufflenetv2": shufflenetv2,
    "mlp": mlp,
    "cnn_small": cnn_small,
    "cnn_tiny": cnn_tiny,
    "lm_small": lm_small,
    "lm_tiny": lm_tiny,
}

# RepDistiller's names for the same architectures.
_ALIASES: dict[str, str] = {
    "mobile_half": "mobilenetv2",
    "ShuffleV1": "shufflenetv1",
    "ShuffleV2": "shufflenetv2",
}


def available_models() -> list[str]:
    """List the names accepted by :func:`build_model`.

    Returns:
        Canonical model names, sorted (RepDistiller aliases are accepted but not listed).
    """
    return sorted(_REGISTRY)


def build_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: object) -> nn.Module:
    """Build a freshly initialised zoo model.

    Args:
        name: A name from :func:`available_models` (or a RepDistiller alias such as
            ``mobile_half``).
        num_classes: Number of output logits.
        in_channels: Input image channels (1 for digits, 3 for CIFAR).
        **kwargs: Architecture options, e.g. ``hidden=(256,)`` for ``mlp`` or
            ``stem_stride=1`` for ``mobilenetv2``.

    Returns:
        The model; ``model.kd_stages`` and ``model.kd_classifier`` name its tap points.

    Raises:
        KeyError: If ``name`` is unknown; the message suggests close matches.
        TypeError: If ``kwargs`` holds an option the architecture does not take.

    Example:
        >>> build_model("cnn_tiny", num_classes=10, in_channels=1).kd_stages
        ('stage1', 'stage2')
    """
    builder = _REGISTRY.get(_ALIASES.get(name, name))
    if builder is None:
        # Match case-insensitively so `ResNet56` suggests `resnet56`.
        by_lower = {k.lower(): k for k in [*_REGISTRY, *_ALIASES]}
        close = [by_lower[c] for c in difflib.get_close_matches(name.lower(), by_lower, n=3)]
        hint = f"; did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
        raise KeyError(f"unknown model `{name}`{hint} (available: {', '.join(available_models())})")
    return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
