"""Discover where a model can be tapped: one dry run with hooks on every module.

The abstract tap points of the language resolve here for any ``nn.Module``: ``logits`` (the
model's output, or its ``logits`` field), ``embedding`` (the input of the final classifier),
``stage[k]`` (the output of the k-th stage: a model's ``kd_stages`` hint, or the last module
before each change of spatial resolution, or the blocks of the longest ``ModuleList``),
``input``, and explicit module paths with ``.input``/``.output``/``.preact`` and a call index.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdspec.compiler.sequence import is_causal  # noqa: F401  (one copy; callers import it here)

ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Mish,
    nn.PReLU,
)
BATCH_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
)
"""Every batch norm torch ships, by its public classes."""


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a module output (tensor, tuple/list, dict or ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict) or hasattr(value, "values"):
        for v in value.values():
            t = first_tensor(v)
            if t is not None:
                return t
        return None
    if isinstance(value, list | tuple):
        for v in value:
            t = first_tensor(v)
            if t is not None:
                return t
    return None


def logits_of(output: Any) -> torch.Tensor | None:
    """The logits in a model's output: the tensor itself, a ``logits`` field, or the first item."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):
        return output.logits
    if isinstance(output, list | tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def call_model(model: Any, x: Any) -> Any:
    """A model's output on a batch input: a dict input (token data: ``input_ids``,
    ``attention_mask``) is passed as keywords, as Hugging Face models take it."""
    return model(**x) if isinstance(x, dict) else model(x)


def next_token_pairs(
    logits: torch.Tensor, labels: torch.Tensor, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of logits and their targets, ``[N, K]`` and ``[N]``, positions labelled ``-100``
    left out. Token labels follow the Hugging Face convention (unshifted): a causal model's
    logits at ``t`` are paired with the label at ``t + 1``."""
    if causal and logits.dim() == 3:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = (labels != -100).flatten()
    return logits.flatten(0, -2)[keep], labels.flatten()[keep]


def select(value: Any, path: tuple[str | int, ...]) -> Any:
    """Pick an element of a tuple/dict/ModelOutput output: ``("hidden_states", 4)``."""
    for key in path:
        if isinstance(key, int) or isinstance(value, dict):
            value = value[key]
        else:
            value = getattr(value, key)
    return value


@dataclass
class ModuleCall:
    """One call of one module during the dry run (post-order: children finish first)."""

    path: str
    order: int
    call: int
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None
    is_activation: bool
    is_batchnorm: bool


@dataclass
class ModelTaps:
    """What the dry run found: every module call, the classifier and the stages."""

    calls: list[ModuleCall]
    paths: list[str]
    classifier: str | None
    stages: list[str]
    logits_shape: tuple[int, ...] | None
    input_shape: tuple[int, ...]
    stage_source: str = "hint"
    call_counts: dict[str, int] = field(default_factory=dict)

    def first_call(self, path: str) -> ModuleCall | None:
        """The first call of a module, if it ran."""
        return next((c for c in self.calls if c.path == path), None)

    def suggest(self, path: str) -> list[str]:
        """Module paths close to a misspelt one."""
        return difflib.get_close_matches(path, self.paths, n=3, cutoff=0.5)

    def preact_source(self, path: str) -> tuple[str, int] | None:
        """The activation call whose input is the pre-activation of ``path``'s output.

        Returns the activation's path and call index: a block that reuses one ``nn.ReLU``
        (torchvision's ResNets) ends with that module's second call.
        """
        own = self.first_call(path)
        if own is None:
            return None
        if own.is_activation:
            return path, 0
        prefix = f"{path}." if path else ""
        inside = [c for c in self.calls if c.path.startswith(prefix) and c.order < own.order]
        if not inside:
            return None
        last = max(inside, key=lambda c: c.order)  # the submodule that produced the output
        if last.is_activation:
            return last.path, last.call
        if last.out_shape == own.out_shape and last.path.count(".") == path.count(".") + (
            1 if path else 0
        ):
            return self.preact_source(last.path)
        return None

    def preceding_batchnorm(self, path: str) -> str | None:
        """The batch norm that ran last before ``path`` finished (OFD's margin source)."""
        own = self.first_call(path)
        if own is None:
            return None
        norms = [c for c in self.calls if c.is_batchnorm and c.order < own.order]
        # The residual branch's norm, not a projection shortcut's (mdistiller's bn2 of the block).
        main = [c for c in norms if not any(k in c.path for k in ("shortcut", "downsample"))]
        pool = main or norms
        return max(pool, key=lambda c: c.order).path if pool else None

    def rows(self) -> list[tuple[str, str, str]]:
        """(tap, module path, shape) for listing with ``kdspec taps``."""
        out: list[tuple[str, str, str]] = [("input", "", _fmt(self.input_shape))]
        for k, path in enumerate(self.stages, start=1):
            call = self.first_call(path)
            out.append((f"stage[{k}]", path, _fmt(call.out_shape if call else None)))
        if self.classifier is not None:
            call = self.first_call(self.classifier)
            out.append(
                ("embedding", f"{self.classifier}.input", _fmt(call.in_shape if call else None))
            )
        out.append(("logits", self.classifier or "(output)", _fmt(self.logits_shape)))
        return out

    def module_rows(self) -> list[tuple[str, str, str]]:
        """(module path, type of call, output shape) for every module that ran."""
        seen: set[str] = set()
        out = []
        for c in sorted(self.calls, key=lambda c: c.order):
            if c.path in seen or not c.path:
                continue
            seen.add(c.path)
            n = self.call_counts.get(c.path, 1)
            out.append((c.path, f"x{n}" if n > 1 else "", _fmt(c.out_shape)))
        return out


def _fmt(shape: tuple[int, ...] | None) -> str:
    return "[" + ", ".join(map(str, shape)) + "]" if shape is not None else "?"


def _shape(t: torch.Tensor | None) -> tuple[int, ...] | None:
    return tuple(t.shape[1:]) if t is not None and t.dim() > 0 else None


_NOT_STAGES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def _chain(model: nn.Module, calls: list[ModuleCall]) -> list[str]:
    """The model's main path: top-level modules in execution order.

    A container is opened when its children change the spatial size (a ``features``
    Sequential holding the whole network); a residual stage keeps its own name.
    """
    first = {c.path: c for c in calls if c.call == 0}

    def ran_children(prefix: str) -> list[str]:
        module = model.get_submodule(prefix) if prefix else model
        kids = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_children()]
        return sorted((k for k in kids if k in first), key=lambda k: first[k].order)

    def expand(path: str) -> list[str]:
        kids = ran_children(path)
        sizes = {(first[k].out_shape or ())[1:] for k in kids if first[k].out_shape}
        if len(kids) >= 2 and len(sizes) >= 2:
            return [p for k in kids for p in expand(k)]
        return [path]

    return [
        p
        for k in ran_children("")
        for p in expand(k)
        if not isinstance(model.get_submodule(p), _NOT_STAGES)
    ]


def _heuristic_stages(
    model: nn.Module, calls: list[ModuleCall], classifier: str | None
) -> tuple[list[str], str]:
    by_path = {c.path: c for c in calls if c.call == 0}
    # Transformers and other block stacks: the blocks of the longest ModuleList that ran.
    best: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            items = [f"{name}.{i}" for i in range(len(module)) if f"{name}.{i}" in by_path]
            if len(items) > len(best):
                best = items
    chain = [p for p in _chain(model, calls) if p != classifier]
    spatial = [
        p
        for p in chain
        if by_path[p].out_shape is not None and len(by_path[p].out_shape or ()) == 3
    ]
    # one block is a stack too when it maps sequences (a 1-layer transformer), not vectors
    one_block = len(best) == 1 and len(by_path[best[0]].out_shape or ()) >= 2
    if (len(best) >= 2 or one_block) and len(spatial) < 2:
        return best, "blocks of the longest ModuleList"
    if spatial:
        groups: list[list[str]] = []
        for p in spatial:
            hw = (by_path[p].out_shape or ())[1:]
            if groups and (by_path[groups[-1][-1]].out_shape or ())[1:] == hw:
                groups[-1].append(p)
            else:
                groups.append([p])
        stages = [g[-1] for g in groups]
        blocks = [p for p in stages if any(True for _ in model.get_submodule(p).children())]
        if blocks:  # a resolution whose last module is a block (not a stem conv/bn/relu/pool)
            stages = blocks
        elif len(stages) > 1:
            stages = stages[1:]  # plain layers: the stem is not a stage (RepDistiller feat[1:-1])
        return stages, "last module before each change of spatial resolution"
    # Vectors only (MLPs): the activations of the chain, or its Linear layers.
    acts = [c.path for c in sorted(calls, key=lambda c: c.order) if c.is_activation and c.call == 0]
    if acts:
        return acts, "activations (vector model)"
    return best, "blocks of the longest ModuleList"


def _classifier(model: nn.Module, calls: list[ModuleCall], logits: Any) -> str | None:
    """The final classifier: the model's ``kd_classifier``, else the last ``nn.Linear`` whose
    output has the logits' shape."""
    classifier = getattr(model, "kd_classifier", None)
    if classifier is None and logits is not None:
        linears = [
            c
            for c in calls
            if c.out_shape == _shape(logits)
            and c.path
            and isinstance(model.get_submodule(c.path), nn.Linear)
        ]
        classifier = max(linears, key=lambda c: c.order).path if linears else None
    return classifier


def discover(model: nn.Module, example_input: Any) -> ModelTaps:
    """Dry-run ``model`` on ``example_input`` with a hook on every module.

    The model's train/eval state is restored afterwards, and every hook removed.
    """
    calls: list[ModuleCall] = []
    counts: dict[str, int] = {}
    handles = []
    names = {id(m): n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        path = names.get(id(module), "?")
        k = counts.get(path, 0)
        counts[path] = k + 1
        calls.append(
            ModuleCall(
                path=path,
                order=len(calls),
                call=k,
                in_shape=_shape(first_tensor(args)),
                out_shape=_shape(first_tensor(output)),
                is_activation=isinstance(module, ACTIVATIONS),
                is_batchnorm=isinstance(module, BATCH_NORMS),
            )
        )

    for _, module in model.named_modules():
        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            output = (
                model(example_input)
                if not isinstance(example_input, dict)
                else model(**example_input)
            )
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    logits = logits_of(output)
    classifier = _classifier(model, calls, logits)
    hint = getattr(model, "kd_stages", None)
    if hint:
        stages, source = list(hint), "the model's kd_stages"
    else:
        stages, source = _heuristic_stages(model, calls, classifier)
    first = first_tensor(example_input)
    return ModelTaps(
        calls=calls,
        paths=[n for n, _ in model.named_modules() if n],
        classifier=classifier,
        stages=stages,
        logits_shape=_shape(logits),
        input_shape=_shape(first) or (),
        stage_source=source,
        call_counts=counts,
    )
