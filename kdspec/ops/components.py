"""Method components: the named, method-specific modules that library specs call.

Generic adapters (:mod:`kdspec.ops.adapters`) map one tensor to one tensor. The components here
cover what a method needs beyond that, so that its spec stays a few lines:

* **Token transforms** (:data:`TRANSFORMS`, fixed, no parameters): ``rows`` (every row a
  sample); ``token``, MiniLM's ``token_relation`` and TinyBERT's ``attention_scores`` are
  written in kdspec (``kdspec/prelude/transforms.kd``).
* **List components** (:data:`COMPONENTS`, learned): modules over a whole *list* of tensors (the
  layers a side reads), sized on the compiler's dry run from example tensors and, where they
  map to the other side, from its shapes: ``abf`` (ReviewKD's attention-based fusion),
  ``paraphraser`` / ``paraphraser_decoder`` / ``translator`` (Factor Transfer), ``branches`` /
  ``gate`` (ONE), ``generator`` (MGD).
* **Learned losses** (:data:`LEARNED_LOSSES`): losses with parameters or state, built on the dry
  run from both sides' example tensors and a :class:`BuildContext`, then called as
  ``loss(teacher_list, student_list, env)``: ``crd_nce`` (CRD's memory banks and NCE) and
  ``semckd`` (SemCKD's learned layer attention).

Each builder documents the reference implementation it follows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdspec.ops.adapters import AdapterShapeError

__all__ = [
    "ABF",
    "COMPONENTS",
    "LEARNED_LOSSES",
    "TRANSFORMS",
    "BuildContext",
    "CRDLoss",
    "Gate",
    "ReviewFusion",
    "SemCKDLoss",
    "build_component",
    "build_learned_loss",
    "rows",
]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class BuildContext:
    """What a component may need besides tensor shapes.

    Attributes:
        num_classes: number of classes (ONE's branches).
        num_samples: size of the training set (CRD's memory banks).
    """

    num_classes: int | None = None
    num_samples: int | None = None


def _fail(name: str, why: str) -> AdapterShapeError:
    return AdapterShapeError(f"component `{name}`: {why}")


def _pick(shapes: Sequence[Shape] | None, i: int) -> Shape | None:
    if not shapes:
        return None
    return tuple(shapes[i if len(shapes) > 1 else 0])


def _maps(name: str, shape: Shape | None, what: str) -> Shape:
    if shape is None or len(shape) != 3:
        raise _fail(name, f"{what} must be a feature map [C, H, W], got {shape}")
    return shape


# --------------------------------------------------------------------------------------------
# Token transforms (fixed)
# --------------------------------------------------------------------------------------------


def rows(x: Tensor, mask: Tensor | None = None, token_dim: int = 1) -> Tensor:
    """Every row a sample: ``[..., D] -> [N, D]``.

    Losses that average over the batch (``kl``'s ``batchmean``) then average over tokens too, as
    DistilBERT does for its soft-target loss over ``[B, L, V]`` logits.

    Args:
        x: ``[B, ..., D]``.
        mask: ``[B, L]`` for token values (``L`` at dimension ``token_dim``, e.g. 2 for per-head
            ``[B, H, L, L]`` relations): only the rows of the tokens it keeps (1), in order.
        token_dim: the dimension of the tokens.

    Returns:
        ``[B * ..., D]``.
    """
    if mask is not None:
        lead = x.shape[: token_dim + 1]
        if (lead[0], lead[-1]) != tuple(mask.shape):
            raise ValueError(
                f"the token mask is {tuple(mask.shape)} (batch, tokens), but this value is "
                f"{tuple(x.shape)}"
            )
        view = mask.to(torch.bool).reshape(lead[0], *([1] * (token_dim - 1)), lead[-1])
        x = x[view.expand(lead)]
    return x.reshape(-1, x.shape[-1])


TRANSFORMS: dict[str, Callable[..., Tensor]] = {
    "rows": rows,
}
"""Fixed component transforms by spec name (looked up after :data:`kdspec.ops.TRANSFORMS`)."""


# --------------------------------------------------------------------------------------------
# List components
# --------------------------------------------------------------------------------------------


class PerLayer(nn.Module):
    """One module per element of a list; ``forward(xs) -> [m_i(x_i)]``."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        """Wrap the per-element modules.

        Args:
            modules: One module per list element.
        """
        super().__init__()
        self.layers = nn.ModuleList(modules)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        """Apply module i to element i.

        Args:
            xs: As many tensors as modules.

        Returns:
            The outputs, in order.
        """
        if len(xs) != len(self.layers):
            raise ValueError(f"built for {len(self.layers)} layers, got {len(xs)}")
        return [m(x) for m, x in zip(self.layers, xs, strict=True)]


class ABF(nn.Module):
    """ReviewKD attention-based fusion (Chen et al. CVPR'21; mdistiller ``ABF``).

    ``conv1`` (1x1 + BN) maps the student feature to ``mid`` channels; when ``fuse``, the
    residual from the deeper level is upsampled (nearest), both are weighed by a 2-channel
    sigmoid attention computed from their concatenation and summed; the result is resized
    (nearest) to the teacher's size and ``conv2`` (3x3 + BN) maps it to the teacher's channels.
    """

    def __init__(self, in_channels: int, mid: int, out_channels: int, fuse: bool) -> None:
        """Create one fusion block.

        Args:
            in_channels: Student channels at this level.
            mid: Channels of the fused (residual) path.
            out_channels: Teacher channels at this level.
            fuse: Whether a deeper level's residual is fused in (all but the deepest).
        """
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=1, bias=False), nn.BatchNorm2d(mid)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.att_conv = (
            nn.Sequential(nn.Conv2d(2 * mid, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        )
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)  # type: ignore[arg-type]  # torch typing of submodules
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)  # type: ignore[arg-type]  # torch typing of submodules

    def forward(
        self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Fuse one level.

        Args:
            x: Student feature ``[B, C, H, W]``.
            residual: The deeper level's fused feature ``[B, mid, h, w]`` (None at the deepest).
            out_size: Teacher ``(H', W')``.

        Returns:
            ``(output [B, C', H', W'], fused residual [B, mid, H', W'])``.
        """
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the deeper level's residual")
            y = F.interpolate(residual, (h, w), mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))  # [B, 2, H, W]
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


class ReviewFusion(nn.Module):
    """ReviewKD's review path: ABFs from the deepest student level to the shallowest."""

    def __init__(self, in_shapes: Sequence[Shape], out_shapes: Sequence[Shape], mid: int) -> None:
        """Create one ABF per level.

        Args:
            in_shapes: Student ``(C, H, W)`` per level, shallow to deep.
            out_shapes: Teacher ``(C, H, W)`` per level (same length).
            mid: Residual channels.
        """
        super().__init__()
        n = len(in_shapes)
        self.abfs = nn.ModuleList(
            ABF(in_shapes[i][0], mid, out_shapes[i][0], fuse=i < n - 1) for i in range(n)
        )
        self.out_sizes = [(int(s[1]), int(s[2])) for s in out_shapes]

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        """Fuse every level with the ones below it.

        Args:
            xs: Student features, shallow to deep.

        Returns:
            The fused features in the same order, each shaped like its teacher level.
        """
        n = len(self.abfs)
        if len(xs) != n:
            raise ValueError(f"abf was built for {n} levels, got {len(xs)}")
        outs: list[Tensor] = [xs[0]] * n
        residual: Tensor | None = None
        for i in range(n - 1, -1, -1):
            outs[i], residual = self.abfs[i](xs[i], residual, self.out_sizes[i])
        return outs


def _abf(
    inputs: list[list[Tensor]], hint: list[Shape] | None, ctx: BuildContext, mid: int | None = None
) -> nn.Module:
    xs = inputs[0]
    in_shapes = [_maps("abf", tuple(x.shape[1:]), "the student level") for x in xs]
    out_shapes = [_maps("abf", _pick(hint, i), "the teacher level") for i in range(len(xs))]
    width = int(mid) if mid else min(512, in_shapes[-1][0])
    return ReviewFusion(in_shapes, out_shapes, width)


def _lrelu_convs(channels: Sequence[int], bn: bool, transpose: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise(channels):
        layers.append(conv(c_in, c_out, 3, 1, 1))
        if bn:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


def _factor_channels(c: int, rate: float) -> int:
    k = int(c * float(rate))
    if k < 1:
        raise _fail("paraphraser", f"rate {rate} leaves no factor channels of {c}")
    return k


def _paraphraser(
    inputs: list[list[Tensor]], hint: list[Shape] | None, ctx: BuildContext, rate: float = 0.5
) -> nn.Module:
    """FT paraphraser encoder (RepDistiller ``Paraphraser.encoder``, no BN): C -> C -> kC -> kC."""
    layers = []
    for x in inputs[0]:
        c = _maps("paraphraser", tuple(x.shape[1:]), "the teacher feature")[0]
        k = _factor_channels(c, rate)
        layers.append(_lrelu_convs([c, c, k, k], bn=False))
    return PerLayer(layers)


def _paraphraser_decoder(
    inputs: list[list[Tensor]], hint: list[Shape] | None, ctx: BuildContext
) -> nn.Module:
    """FT paraphraser decoder (RepDistiller ``Paraphraser.decoder``): transposed convs kC -> C."""
    layers = []
    for i, x in enumerate(inputs[0]):
        k = _maps("paraphraser_decoder", tuple(x.shape[1:]), "the factor")[0]
        out = _maps("paraphraser_decoder", _pick(hint, i), "the reconstructed feature")
        if tuple(out[1:]) != tuple(x.shape[2:]):
            raise _fail("paraphraser_decoder", "the factor and the feature differ in size")
        layers.append(_lrelu_convs([k, k, out[0], out[0]], bn=False, transpose=True))
    return PerLayer(layers)


class _Translator(nn.Module):
    def __init__(self, c_in: int, c_out: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size
        self.encoder = _lrelu_convs([c_in, c_in, c_out, c_out], bn=True)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.adaptive_avg_pool2d(x, self.size)
        return self.encoder(x)


def _translator(
    inputs: list[list[Tensor]], hint: list[Shape] | None, ctx: BuildContext
) -> nn.Module:
    """FT translator (RepDistiller ``Translator``, with BN), sized to the paraphrased factor."""
    layers = []
    for i, x in enumerate(inputs[0]):
        c = _maps("translator", tuple(x.shape[1:]), "the student feature")[0]
        out = _maps("translator", _pick(hint, i), "the teacher factor")
        layers.append(_Translator(c, out[0], (out[1], out[2])))
    return PerLayer(layers)


class _Branches(nn.Module):
    def __init__(self, channels: int, width: int, n: int, num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(width, num_classes),
            )
            for _ in range(n)
        )

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        if len(xs) != 1:
            raise ValueError(f"branches take one shared feature map, got {len(xs)}")
        return [head(xs[0]) for head in self.heads]


MAX_BRANCHES = 256  # ONE uses 3; thousands would take minutes to build and never train
MAX_WIDTH = 1 << 14


def _branches(
    inputs: list[list[Tensor]],
    hint: list[Shape] | None,
    ctx: BuildContext,
    n: int = 2,
    width: int | None = None,
) -> nn.Module:
    """ONE branches: ``n`` new high-level blocks + classifiers on the shared trunk feature.

    Each branch is two 3x3 conv-BN-ReLU layers (``width`` channels, default the input's), global
    pooling and a linear classifier, standing in for the copied last stage of Lan et al.
    """
    if len(inputs[0]) != 1:
        raise _fail("branches", "branch from one trunk feature map")
    c = _maps("branches", tuple(inputs[0][0].shape[1:]), "the trunk feature")[0]
    if ctx.num_classes is None:
        raise _fail("branches", "the number of classes is unknown")
    if not 1 <= int(n) <= MAX_BRANCHES:
        raise _fail("branches", f"needs 1 <= n <= {MAX_BRANCHES}, got {n}")
    if width is not None and not 1 <= int(width) <= MAX_WIDTH:
        raise _fail("branches", f"needs 1 <= width <= {MAX_WIDTH}, got {width}")
    return _Branches(c, int(width or c), int(n), ctx.num_classes)


class Gate(nn.Module):
    """ONE gate (Lan et al.; authors' ``control_v1``): ``softmax(relu(BN(FC(GAP(x)))))``.

    ``forward([x], logits...)`` returns ``[sum_i g_i z_i]``, the gated ensemble of the branch
    logits ``z_i``.
    """

    def __init__(self, channels: int, n: int) -> None:
        """Create the gate.

        Args:
            channels: Channels of the trunk feature.
            n: Number of branch logits it weighs.
        """
        super().__init__()
        self.fc = nn.Linear(channels, n)
        self.bn = nn.BatchNorm1d(n)

    def weights(self, x: Tensor) -> Tensor:
        """Gate weights ``[B, n]`` (rows sum to 1) from the trunk feature ``[B, C, H, W]``."""
        g = self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return F.softmax(F.relu(self.bn(g)), dim=1)

    def forward(self, xs: list[Tensor], *logits: list[Tensor]) -> list[Tensor]:
        """Gate the branches.

        Args:
            xs: ``[trunk feature [B, C, H, W]]``.
            *logits: Lists of branch logits ``[B, K]``, concatenated in order.

        Returns:
            ``[ensemble logits [B, K]]``.
        """
        zs = [z for group in logits for z in group]
        if len(zs) != self.fc.out_features:
            raise ValueError(f"gate was built for {self.fc.out_features} branches, got {len(zs)}")
        g = self.weights(xs[0])  # [B, n]
        stacked = torch.stack(zs, dim=1)  # [B, n, K]
        return [(g.unsqueeze(-1) * stacked).sum(dim=1)]


def _gate(inputs: list[list[Tensor]], hint: list[Shape] | None, ctx: BuildContext) -> nn.Module:
    if len(inputs) < 2 or len(inputs[0]) != 1:
        raise _fail("gate", "call it as gate(trunk feature, branch logits...)")
    c = _maps("gate", tuple(inputs[0][0].shape[1:]), "the trunk feature")[0]
    n = sum(len(group) for group in inputs[1:])
    return _GateList(Gate(c, n))


class _GateList(nn.Module):
    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, *lists: list[Tensor]) -> list[Tensor]:
        return self.gate(lists[0], *lists[1:])


def _generator(
    inputs: list[list[Tensor]], hint: list[Shape] | None, ctx: BuildContext
) -> nn.Module:
    """MGD generation block (yzd-v/MGD ``generation``): conv3x3 - ReLU - conv3x3 to the target."""
    layers = []
    for i, x in enumerate(inputs[0]):
        c, h, w = _maps("generator", tuple(x.shape[1:]), "the student feature")
        out = _maps("generator", _pick(hint, i), "the teacher feature")
        if (h, w) != tuple(out[1:]):
            raise _fail("generator", f"spatial sizes differ: {(h, w)} vs {tuple(out[1:])}")
        layers.append(
            nn.Sequential(
                nn.Conv2d(c, out[0], 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(out[0], out[0], 3, padding=1),
            )
        )
    return PerLayer(layers)


ComponentBuilder = Callable[..., nn.Module]

COMPONENTS: dict[str, ComponentBuilder] = {
    "abf": _abf,
    "paraphraser": _paraphraser,
    "paraphraser_decoder": _paraphraser_decoder,
    "translator": _translator,
    "branches": _branches,
    "gate": _gate,
    "generator": _generator,
}
"""List components by spec name: ``builder(inputs, hint, ctx, **params) -> nn.Module``.

``inputs`` holds one list of example tensors per argument, ``hint`` the other side's shapes
(without the batch dim) or None; the module's ``forward(*lists)`` returns a list of tensors.
"""


def build_component(
    name: str,
    inputs: list[list[Tensor]],
    hint: list[Shape] | None,
    ctx: BuildContext,
    **params: Any,
) -> nn.Module:
    """Build a list component on example tensors, in their dtype and on their device.

    Args:
        name: A key of :data:`COMPONENTS`.
        inputs: One list of example tensors per argument of the call.
        hint: The other side's shapes (no batch dim), or None.
        ctx: Numbers of classes and samples.
        **params: The call's keyword parameters.

    Returns:
        The module.

    Raises:
        AdapterShapeError: The component cannot be built for these shapes.
    """
    module = COMPONENTS[name](inputs, hint, ctx, **params)
    first = inputs[0][0]
    return module.to(device=first.device, dtype=first.dtype)


# --------------------------------------------------------------------------------------------
# Learned losses
# --------------------------------------------------------------------------------------------


class CRDLoss(nn.Module):
    """CRD's NCE loss with momentum memory banks (Tian et al. ICLR'20; RepDistiller ``crd/``).

    Both embeddings are already projected and L2-normalised (``embed`` adapters). For each sample
    ``K`` negatives are drawn uniformly from the training set; the student embedding is scored
    against the teacher memory and vice versa (``exp(v·m / T) / Z``), and each score set goes
    through the NCE loss with noise probability ``1 / num_samples``. ``Z`` is fixed from the
    first training batch. After scoring, the memories of the batch's samples move towards the
    new embeddings (``momentum``) and are renormalised. Memory updates and ``Z`` are only taken
    in training mode, so the compiler's dry run leaves the state untouched.

    ``forward(t, s, env)`` needs ``env.index``, the batch's sample indices.
    """

    def __init__(
        self,
        dim: int,
        num_samples: int,
        k: int = 16384,
        T: float = 0.07,
        momentum: float = 0.5,
        eps: float = 1e-7,
    ) -> None:
        """Create the memory banks.

        Args:
            dim: Embedding size.
            num_samples: Training set size N (memory rows).
            k: Negatives per sample.
            T: Temperature.
            momentum: Memory momentum.
            eps: NCE smoothing constant.
        """
        super().__init__()
        self.k, self.T, self.momentum, self.eps = int(k), float(T), float(momentum), float(eps)
        self.num_samples = int(num_samples)
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(num_samples, dim) * 2 * stdv - stdv)
        self.register_buffer("memory_t", torch.rand(num_samples, dim) * 2 * stdv - stdv)
        self.register_buffer("z", torch.full((2,), -1.0))

    def sample_negatives(self, index: Tensor) -> Tensor:
        """Memory rows to score: column 0 the positive (the sample itself), then K draws.

        Args:
            index: Sample indices ``[B]``.

        Returns:
            ``[B, K + 1]`` int64.
        """
        idx = torch.randint(self.num_samples, (index.shape[0], self.k + 1), device=index.device)
        idx[:, 0] = index
        return idx

    def _scores_every_row(self, idx: Tensor) -> bool:
        return self.num_samples <= 4 * idx.shape[1]

    def _scores(self, memory: Tensor, v: Tensor, idx: Tensor) -> Tensor:
        """``v[b] · memory[idx[b, j]]`` as ``[B, K + 1]``.

        Gathering the rows first materialises ``[B, K + 1, D]`` (hundreds of MB per side at
        K=16384); when the bank has at most a few times K + 1 rows, scoring every row with one
        matrix product and gathering the scores is several times faster. Larger banks (ImageNet
        sized) gather rows with ``index_select``, which costs less than scoring every row.
        """
        b, k1 = idx.shape
        if self._scores_every_row(idx):
            return (v @ memory.T).gather(1, idx)
        rows = memory.index_select(0, idx.reshape(-1)).view(b, k1, -1)
        return torch.bmm(rows, v.unsqueeze(2)).squeeze(2)

    def _nce(self, p: Tensor) -> Tensor:
        mpn = self.k / self.num_samples
        log_d1 = torch.log(p[:, 0] / (p[:, 0] + mpn + self.eps))
        log_d0 = torch.log(mpn / (p[:, 1:] + mpn + self.eps))
        return -(log_d1.sum() + log_d0.sum()) / p.shape[0]

    def forward(self, t: list[Tensor], s: list[Tensor], env: Any) -> Tensor:
        """NCE loss of one batch (and, in training, the memory update).

        Args:
            t: ``[teacher embedding [B, D]]``.
            s: ``[student embedding [B, D]]``.
            env: Needs ``index`` (int64 ``[B]``).

        Returns:
            Scalar.
        """
        if len(t) != 1 or len(s) != 1:
            raise ValueError("crd_nce matches one embedding per side")
        vt, vs = t[0].reshape(t[0].shape[0], -1), s[0].reshape(s[0].shape[0], -1)
        index = getattr(env, "index", None)
        if index is None:
            raise ValueError("crd_nce needs the batch's sample indices: batches (x, y, index)")
        idx = self.sample_negatives(index.long())
        out_s = torch.exp(self._scores(self.memory_t, vs, idx) / self.T)  # type: ignore[arg-type]  # torch typing of submodules
        out_t = torch.exp(self._scores(self.memory_s, vt, idx) / self.T)  # type: ignore[arg-type]  # torch typing of submodules
        z = self.z.clone()  # type: ignore[operator]  # torch typing of submodules
        rows_ = self.memory_s.shape[0]  # type: ignore[index]  # torch typing of submodules
        if z[0] < 0:
            z[0] = out_s.detach().mean() * rows_
        if z[1] < 0:
            z[1] = out_t.detach().mean() * rows_
        loss = self._nce(out_s / z[0]) + self._nce(out_t / z[1])
        if self.training:
            with torch.no_grad():
                self.z.copy_(z)  # type: ignore[operator]  # torch typing of submodules
                pos, new_s, new_t = index.long(), vs.detach(), vt.detach()
                gather = getattr(env, "gather_batch", None)
                if gather is not None:  # data-parallel: every process's samples update the bank
                    pos, new_s, new_t = gather(pos), gather(new_s), gather(new_t)
                for name, v in (("memory_s", new_s), ("memory_t", new_t)):
                    memory: Tensor = getattr(self, name)
                    moved = memory[pos] * self.momentum + v.detach() * (1 - self.momentum)
                    rows = F.normalize(moved, p=2.0, dim=1, eps=0.0)
                    if self._scores_every_row(idx):
                        # the scores' backward reads the whole bank: write a new one
                        setattr(self, name, memory.index_put((pos,), rows))
                    else:
                        memory[pos] = rows
        return loss


def _crd_nce(
    t: list[Tensor],
    s: list[Tensor],
    ctx: BuildContext,
    k: int = 16384,
    T: float = 0.07,
    momentum: float = 0.5,
) -> nn.Module:
    if ctx.num_samples is None:
        raise _fail("crd_nce", "the memory banks need the training set size (`num_samples`)")
    if len(t) != 1 or len(s) != 1:
        raise _fail("crd_nce", "it matches one embedding per side")
    dt, ds = t[0][0].numel(), s[0][0].numel()
    if dt != ds:
        raise _fail("crd_nce", f"embedding sizes differ ({dt} vs {ds}); give both `embed` a `dim`")
    return CRDLoss(dt, ctx.num_samples, k=k, T=T, momentum=momentum)


class _MLPEmbed(nn.Module):
    """SemCKD ``MLPEmbed``: Linear(d, 2e) - ReLU - Linear(2e, e) - L2-normalise."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.linear1(x.reshape(x.shape[0], -1)))
        return F.normalize(self.linear2(x), p=2.0, dim=1, eps=0.0)


def _aa_embed(c_in: int, c_out: int) -> nn.Sequential:
    """SemCKD ``AAEmbed``: 1x1 conv - BN - ReLU - 3x3 conv - BN - ReLU - 1x1 conv (mid 2·C')."""
    mid = 2 * c_out
    return nn.Sequential(
        nn.Conv2d(c_in, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(),
        nn.Conv2d(mid, c_out, 1, bias=False),
    )


class SemCKDLoss(nn.Module):
    """SemCKD: every student layer learns from every teacher layer, weighed by learned attention.

    As DefangChen/SemCKD (``SelfA`` + ``SemCKDLoss``): each layer's batch similarity matrix
    ``F Fᵀ`` (``[B, B]``) is embedded by an MLP (queries for student layers, keys for teacher
    layers); ``softmax_j(q_i · k_j)`` weighs, per sample, the MSE between student layer i
    projected to teacher layer j's channels (``AAEmbed``; the larger map is average-pooled to the
    smaller size) and teacher layer j. The total is divided by ``B * n_student``.

    The query/key MLPs read b-dimensional similarity rows, so the largest batch size is fixed
    when the loss is built; a smaller last batch is zero-padded (the reference code drops it).
    """

    def __init__(
        self, t_shapes: Sequence[Shape], s_shapes: Sequence[Shape], batch: int, factor: int = 4
    ) -> None:
        """Create the projections and the attention MLPs.

        Args:
            t_shapes: Teacher ``(C, H, W)`` per layer.
            s_shapes: Student ``(C, H, W)`` per layer.
            batch: Batch size b.
            factor: Embedding size is ``b // factor``.
        """
        super().__init__()
        self.batch = int(batch)
        dim = max(1, self.batch // int(factor))
        self.keys = nn.ModuleList(_MLPEmbed(self.batch, dim) for _ in t_shapes)
        self.queries = nn.ModuleList(_MLPEmbed(self.batch, dim) for _ in s_shapes)
        self.proj = nn.ModuleList(
            nn.ModuleList(_aa_embed(s[0], t[0]) for t in t_shapes) for s in s_shapes
        )

    def _similarity(self, f: Tensor) -> Tensor:
        x = f.reshape(f.shape[0], -1)
        sim = x @ x.t()  # [B, B]
        # A smaller (last) batch: its rows are zero-padded to the built width, where the
        # reference code drops the incomplete batch instead.
        return F.pad(sim, (0, self.batch - sim.shape[1]))

    def attention(self, t: list[Tensor], s: list[Tensor]) -> Tensor:
        """Attention of each student layer over the teacher layers, ``[B, n_s, n_t]``."""
        keys = torch.stack([k(self._similarity(f)) for k, f in zip(self.keys, t, strict=True)], 2)
        queries = torch.stack(
            [q(self._similarity(f)) for q, f in zip(self.queries, s, strict=True)], 1
        )
        return F.softmax(torch.bmm(queries, keys), dim=-1)

    def pair(self, i: int, j: int, fs: Tensor, ft: Tensor) -> tuple[Tensor, Tensor]:
        """Student layer i projected to teacher layer j, and the teacher map at the same size."""
        s_h, t_h = fs.shape[2], ft.shape[2]
        if s_h > t_h:
            return self.proj[i][j](F.adaptive_avg_pool2d(fs, (t_h, t_h))), ft  # type: ignore[index]  # torch typing of submodules
        return self.proj[i][j](fs), F.adaptive_avg_pool2d(ft, (s_h, s_h))  # type: ignore[index]  # torch typing of submodules

    def forward(self, t: list[Tensor], s: list[Tensor], env: Any = None) -> Tensor:
        """Attention-weighted MSE over all (student, teacher) layer pairs.

        Args:
            t: Teacher feature maps.
            s: Student feature maps.
            env: Unused.

        Returns:
            Scalar.
        """
        b = s[0].shape[0]
        if b > self.batch:
            raise ValueError(f"semckd was built for batches of at most {self.batch}, got {b}")
        weight = self.attention(t, s)  # [B, n_s, n_t]
        cols = []
        for i, fs in enumerate(s):
            row = []
            for j, ft in enumerate(t):
                ps, pt = self.pair(i, j, fs, ft)
                row.append((ps - pt).pow(2).reshape(b, -1).mean(-1))  # [B]
            cols.append(torch.stack(row, dim=1))
        per = torch.stack(cols, dim=1)  # [B, n_s, n_t]
        return (weight * per).sum() / (b * len(s))


def _semckd(t: list[Tensor], s: list[Tensor], ctx: BuildContext, factor: int = 4) -> nn.Module:
    t_shapes = [_maps("semckd", tuple(x.shape[1:]), "a teacher layer") for x in t]
    s_shapes = [_maps("semckd", tuple(x.shape[1:]), "a student layer") for x in s]
    return SemCKDLoss(t_shapes, s_shapes, s[0].shape[0], factor=factor)


LossBuilder = Callable[..., nn.Module]

LEARNED_LOSSES: dict[str, LossBuilder] = {
    "crd_nce": _crd_nce,
    "semckd": _semckd,
}
"""Learned losses by spec name: ``builder(t, s, ctx, **params) -> nn.Module``.

``t`` and ``s`` are the example tensors of both sides (whole lists: a learned loss sees every
layer a side reads, unpaired); the module is called as ``module(t_list, s_list, env)``.
"""


def build_learned_loss(
    name: str, t: list[Tensor], s: list[Tensor], ctx: BuildContext, **params: Any
) -> nn.Module:
    """Build a learned loss on example tensors, in the student's dtype and on its device.

    Args:
        name: A key of :data:`LEARNED_LOSSES`.
        t: Teacher-side example tensors.
        s: Student-side example tensors.
        ctx: Numbers of classes and samples.
        **params: The loss call's keyword parameters.

    Returns:
        The module.
    """
    module = LEARNED_LOSSES[name](t, s, ctx, **params)
    return module.to(device=s[0].device, dtype=s[0].dtype)
