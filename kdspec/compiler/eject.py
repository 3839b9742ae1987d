"""Eject a compiled method as a standalone PyTorch script (``kdspec export``): no kdspec import.

The script holds, as readable code: the operators the method uses (copied from
:mod:`kdspec.ops`, with the helpers they call: the very code kdspec runs), the forward hooks
that read each tap, the adapters (sized as the compiler sized them), one function per loss
term, the stages (active terms, what each trains) and a training loop. Models bound to the
kdspec zoo are copied in too; other models become a ``build_models`` stub to fill in.

What ejects: teachers, students and assistants that are trained or frozen; taps on logits,
the input, module outputs and inputs (``stage[k]``, ``"path"``, ``.input``); transforms,
adapters and losses of :mod:`kdspec.ops` with constant arguments; constant weights; stages
with a fixed or shared length. What does not (an :class:`EjectError` lists every reason):
views, subsets, ensembles, ``let``, virtual teachers, EMA and snapshot roles, hand-offs and
repeats, learned losses and list components (CRD, SemCKD, ReviewKD, ...), ``resize``,
pre-activation taps, scheduled weights or arguments.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdspec.compiler.distiller import Distiller, _unpack
from kdspec.compiler.hooks import HookPoint
from kdspec.compiler.nodes import (
    AdapterNode,
    HoleNode,
    PipelineNode,
    TapNode,
    TransformNode,
)
from kdspec.ops import LOSSES, TRANSFORMS
from kdspec.ops import components as comp
from kdspec.ops.transforms import UNSCALED

__all__ = ["EjectError", "eject"]

_IMPL = {"mask": "mask_features"}
_PLAIN = (int, float, str, bool, type(None))


def iter_adapters(d: Distiller) -> list[nn.Module]:
    """Every built adapter, in term order (the order of the script's ``adapters`` list)."""
    return [
        a
        for term in d.terms.values()
        for node in term.modules()
        if isinstance(node, AdapterNode)
        for a in node.adapters
    ]


class EjectError(Exception):
    """The method uses something the exporter cannot write out (``reasons`` says what)."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


# ------------------------------------------------------------------------------ source gathering


class _Gatherer:
    """Top-level definitions and their dependencies, copied from kdspec's modules in order."""

    def __init__(self) -> None:
        self.blocks: dict[tuple[str, str], str] = {}  # (module, name) -> source, in order
        self.imports: set[str] = set()
        self._trees: dict[str, tuple[ast.Module, str]] = {}

    def _tree(self, module: str) -> tuple[ast.Module, str]:
        if module not in self._trees:
            text = inspect.getsource(importlib.import_module(module))
            self._trees[module] = (ast.parse(text), text)
        return self._trees[module]

    def add(self, module: str, name: str) -> str:
        """Copy ``name`` of ``module`` (and what it uses); returns the name to call it by."""
        key = (module, name)
        if key in self.blocks:
            return name
        tree, text = self._tree(module)
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        if node.module.startswith("kdspec"):
                            return self.add(node.module, alias.name)
                        self.imports.add(ast.get_source_segment(text, node) or "")
                        return name
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if (alias.asname or alias.name).split(".")[0] == name:
                        self.imports.add(ast.get_source_segment(text, node) or "")
                        return name
        found = next((n for n in tree.body if name in _defines(n)), None)
        if found is None:
            if name in dir(__builtins__) or hasattr(__builtins__, name):
                return name
            return name  # a builtin or a name the script itself defines
        self.blocks[key] = ""  # reserve (recursion)
        for used in sorted(_names_used(found) - {name}):
            if any(used in _defines(n) for n in tree.body) or _imported(tree, used):
                self.add(module, used)
        self.blocks.pop(key)
        self.blocks[key] = ast.get_source_segment(text, found, padded=True) or ""
        return name

    def source(self) -> str:
        return "\n\n\n".join(textwrap.dedent(b) for b in self.blocks.values() if b)


def _defines(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.FunctionDef | ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def _imported(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            if any((a.asname or a.name).split(".")[0] == name for a in node.names):
                return True
    return False


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


# ------------------------------------------------------------------------------ the method


@dataclass
class _Point:
    key: str  # name in the script's tap dict, e.g. "layer2:output"
    kind: str
    path: str
    io: str


def _point_key(p: HookPoint) -> str:
    return p.kind if p.kind != "module" else f"{p.path}:{p.io}"


class _Writer:
    def __init__(self, d: Distiller, gather: _Gatherer):
        self.d = d
        self.g = gather
        self.reasons: list[str] = []
        self.adapter_index: dict[int, int] = {id(m): i for i, m in enumerate(iter_adapters(d))}
        self.points: dict[str, dict[str, _Point]] = {}

    def fail(self, why: str) -> str:
        self.reasons.append(why)
        return "None"

    def kwargs(self, kw: dict[str, Any], where: str) -> str:
        for k, v in kw.items():
            ok = isinstance(v, _PLAIN) or (
                isinstance(v, list | tuple) and all(isinstance(x, _PLAIN) for x in v)
            )
            if not ok:
                self.fail(f"{where}: argument `{k}` is not a constant")
        return "".join(f", {k}={v!r}" for k, v in kw.items())

    def tap(self, node: TapNode) -> str:
        points = self.d._points.get(node.tap) or []
        exprs = []
        for p in points:
            if p.kind not in ("module", "logits", "input", "output") or p.call or p.select:
                self.fail(f"tap `{node.tap.role}` at `{p.path or p.kind}` ({p.io}, call {p.call})")
                continue
            if p.kind == "module" and p.io not in ("output", "input"):
                self.fail(f"tap of `{p.path}` {p.io}")
                continue
            key = _point_key(p)
            self.points.setdefault(node.tap.role, {})[key] = _Point(key, p.kind, p.path, p.io)
            exprs.append(f"taps[{node.tap.role!r}][{key!r}]")
        if node.indices is not None:
            exprs = [exprs[i] for i in node.indices]
        return "[" + ", ".join(exprs) + "]"

    def expr(self, node: Any, hole: str | None = None) -> str:
        if isinstance(node, TapNode):
            return self.tap(node)
        if isinstance(node, HoleNode):
            assert hole is not None
            return hole
        if isinstance(node, PipelineNode):
            value = self.expr(node.inner, hole)
            for step in node.steps:
                value = self.expr(step, value)
            return value
        if isinstance(node, AdapterNode):
            if node.func in comp.COMPONENTS or len(node.extra):
                return self.fail(f"the list component `{node.func}`")
            child = self.expr(node.child, hole)
            first = self.adapter_index[id(node.adapters[0])] if len(node.adapters) else 0
            return f"adapt(self.adapters[{first}:{first + len(node.adapters)}], {child})"
        if isinstance(node, TransformNode):
            args = [self.expr(i, hole) for i in node.inputs]
            if node.func == "stopgrad":
                return f"[v.detach() for v in {args[0]}]"
            if node.func == "exp":
                return f"[v.exp() for v in {args[0]}]"
            if node.func == "resize":  # to the teacher side's spatial size (`hint`)
                fn_name = self.g.add("kdspec.compiler.nodes", "_resize")
                return f"[{fn_name}(v, hint, i) for i, v in enumerate({args[0]})]"
            if node.func == "margin_relu":
                return self.fail(f"the transform `{node.func}`")
            impl = _IMPL.get(node.func, node.func)
            fn = UNSCALED[impl] if node.unscaled else TRANSFORMS.get(impl)
            if fn is None:
                return self.fail(f"the transform `{node.func}`")
            name = self.g.add(fn.__module__, fn.__name__)
            kw = self.kwargs(node.kwargs, f"`{node.func}`")
            if node.func in ("binary_target", "non_target"):  # read the labels
                return f"[{name}(v, y{kw}) for v in {args[0]}]"
            if len(args) == 1:
                return f"[{name}(v{kw}) for v in {args[0]}]"
            vs = ", ".join(f"v{i}" for i in range(len(args)))
            return f"[{name}({vs}{kw}) for {vs} in pairs({', '.join(args)})]"
        return self.fail(f"`{type(node).__name__}` ({getattr(node, 'func', '')})")

    def term(self, name: str, t: Any) -> list[str]:
        if t.loss in comp.LEARNED_LOSSES or t.loss not in LOSSES:
            self.fail(f"the learned loss `{t.loss}` of `{name}`")
            return []
        if t.subset is not None:
            self.fail(f"the subset of `{name}`")
        fn = self.g.add(LOSSES[t.loss].__module__, LOSSES[t.loss].__name__)
        kw = self.kwargs(t.loss_kwargs, f"`{t.loss}` of `{name}`")
        spec = self.d.lowered.source_map
        text = ""
        span = spec.span("term", name) if spec.source is not None else None
        if span is not None:
            text = " ".join(spec.source.text[span.start : span.end].split())
        lines = [f"def term_{name}(self, taps, y):", f'    """{text or name}"""']
        if t.source is None:
            lines += [
                "    total = 0.0",
                f"    for v in {self.expr(t.target)}:",
                f"        total = total + {fn}(v, y{kw})",
                "    return total",
            ]
            return lines
        # Adapters and `resize` on the student side are sized from the teacher side's raw
        # value (before the knowledge pipeline): `hint` holds its shapes.
        if isinstance(t.source, PipelineNode):
            lines.append(f"    raw = {self.expr(t.source.inner)}")
            steps: list[Any] = [*t.source.steps]
            src = self.expr(PipelineNode(HoleNode(), steps), "raw")
        else:
            lines.append(f"    raw = {self.expr(t.source)}")
            src = "raw"
        lines += ["    hint = [tuple(v.shape[1:]) for v in raw]", f"    src = {src}"]
        lines += [f"    tgt = {self.expr(t.target)}", "    total = 0.0"]
        lines.append("    for s, t in pairs(src, tgt):")
        if t.to_probs:
            lines.append("        s, t = s.exp(), t.exp()")
        lines += [f"        total = total + {fn}(s, t{kw})", "    return total"]
        return lines


# ------------------------------------------------------------------------------ the script


_RUNTIME = '''
def pairs(*lists):
    """Zip lists of tensors, repeating lists of length one (one tap against a range)."""
    n = max(len(x) for x in lists)
    return [tuple(x[0] if len(x) == 1 else x[i] for x in lists) for i in range(n)]


def adapt(adapters, values):
    """Each layer through its own adapter."""
    return [a(v) for a, v in zip(adapters, values, strict=True)]


def logits_of(output):
    """The logits in a model's output: the tensor, a `logits` field, or the first item."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


def read_taps(model, x, points):
    """Run `model` on `x` with forward hooks at `points`; returns {point: tensor}."""
    values, handles = {}, []
    for key, (kind, path, io) in points.items():
        if kind != "module":
            continue
        module = model.get_submodule(path)
        if io == "input":  # read before the module runs: an in-place module overwrites it
            def pre(m, args, key=key):
                v = args[0]
                values[key] = v.clone() if getattr(m, "inplace", False) else v
            handles.append(module.register_forward_pre_hook(pre))
        else:
            def post(m, args, out, key=key):
                values[key] = out
            handles.append(module.register_forward_hook(post))
    try:
        output = model(x)
    finally:
        for h in handles:
            h.remove()
    for key, (kind, _, _) in points.items():
        if kind == "logits":
            values[key] = logits_of(output)
        elif kind == "output":
            values[key] = output
        elif kind == "input":
            values[key] = x
    return values
'''


def eject(
    d: Distiller, example_batch: Any, *, sources: dict[str, str] | None = None, title: str = ""
) -> str:
    """The standalone script for a compiled method (see the module docstring).

    Args:
        d: the compiled method.
        example_batch: ``(x, y)``, a batch the models accept (the adapters' shapes).
        sources: each role's model source (``zoo:NAME`` models are copied into the script).
        title: a line for the script's docstring.

    Raises:
        EjectError: with every construct that cannot be written out.
    """
    g = _Gatherer()
    g.imports |= {
        "import math",
        "import torch",
        "import torch.nn.functional as F",
        "import torch.utils.data",
        "from torch import nn",
    }
    w = _Writer(d, g)
    m = d.method
    for role in m.roles:
        if role.mode not in ("trained", "frozen"):
            w.fail(f"the {role.mode} role `{role.name}`")
    for what, items in (("view", m.data), ("ensemble", m.ensembles), ("let", m.lets)):
        for item in items:
            w.fail(f"the {what} `{getattr(item, 'name', item)}`")
    for who in m.predictions:  # the script would score the bare model
        w.fail(f"the `predict` of `{who}`")
    for plan in d.stage_plans:
        if plan.repeat != 1 or plan.handoffs:
            w.fail(f"repeats or hand-offs of stage `{plan.name}`")
    for name in d.terms:
        if name not in d._const_weights:
            w.fail(f"the scheduled weight of `{name}`")
    calls = _adapter_calls(d, example_batch) if not w.reasons else []
    term_code: list[str] = []
    for name, t in d.terms.items():
        term_code += ["", *w.term(name, t)]
    if w.reasons:
        raise EjectError(sorted(set(w.reasons)))
    if calls:
        g.add("kdspec.ops.adapters", "build_adapter")

    roles = [r for r in m.roles if r.name in d.roles]
    trained = sorted({r for p in d.stage_plans for r in _stage_roles(d, p.name)})
    stages = []
    param_names = _script_param_names(d)
    for plan in d.stage_plans:
        d.set_stage(plan.name)
        params = [param_names[id(p)] for p in d.trainable_parameters()]
        active = [t.name for t in d._active(d._stage)]
        stages.append((plan.name, plan.duration, plan.unit, active, params))
    d._stage = None

    adapters = ",\n            ".join(
        f"build_adapter({f!r}, {i!r}, {o!r}{w.kwargs(kw, f)})" for f, i, o, kw in calls
    )
    weights = {n: d._const_weights[n] for n in d.terms}
    points = {
        role: {k: (p.kind, p.path, p.io) for k, p in pts.items()} for role, pts in w.points.items()
    }
    trained_roles = sorted(set(trained))
    method = [
        "class Method(nn.Module):",
        '    """The compiled method: models, adapters, loss terms and stages."""',
        "",
        f"    WEIGHTS = {weights!r}",
        f"    POINTS = {points!r}",
        f"    TRAINED = {trained_roles!r}  # run in train mode with gradients",
        "    # (name, duration, unit, active terms, trained parameters)",
        f"    STAGES = {stages!r}",
        "",
        "    def __init__(self, models):",
        "        super().__init__()",
        "        self.roles = nn.ModuleDict(models)",
        "        self.adapters = nn.ModuleList([",
        f"            {adapters}" if adapters else "",
        "        ])",
        "        self.stage = self.STAGES[0]",
        "",
        "    def set_stage(self, name):",
        '        """Enter a stage: its terms count and its parameters get gradients."""',
        "        self.stage = next(s for s in self.STAGES if s[0] == name)",
        "        params = dict(self.named_parameters())",
        "        for n, p in params.items():",
        "            p.requires_grad_(n in self.stage[4])",
        "        return [params[n] for n in self.stage[4]]",
        "",
        "    def read(self, x):",
        '        """Every tap of every role (frozen roles in eval mode, without a graph)."""',
        "        taps = {}",
        "        for role, points in self.POINTS.items():",
        "            model = self.roles[role]",
        "            if role in self.TRAINED and role in self.trained_now():",
        "                taps[role] = read_taps(model, x, points)",
        "                continue",
        "            was_training = model.training",
        "            model.eval()",
        "            try:",
        "                with torch.no_grad():",
        "                    taps[role] = read_taps(model, x, points)",
        "            finally:",
        "                model.train(was_training)",
        "        return taps",
        "",
        "    def trained_now(self):",
        '        """Roles with a parameter trained in the current stage."""',
        "        return {n.split('.')[1] for n in self.stage[4] if n.startswith('roles.')}",
        "",
        "    def forward(self, x, y):",
        '        """Total loss and each weighted term for one batch."""',
        "        taps = self.read(x)",
        "        terms, total = {}, None",
        "        for name in self.stage[3]:",
        "            value = getattr(self, f'term_{name}')(taps, y) * self.WEIGHTS[name]",
        "            terms[name] = value",
        "            total = value if total is None else total + value",
        "        return total, terms",
    ]
    method += ["    " + line if line else "" for line in term_code]
    x = _unpack(example_batch).x
    models = _models_code(g, roles, sources or {}, d.num_classes, tuple(x.shape[1:]))
    student = d.eval_roles()[0]
    header = [
        '"""' + (title or f"{m.name}: a knowledge distillation method") + ".",
        "",
        f"Exported by `kdspec export` from the method `{m.name}`: plain PyTorch, no kdspec import.",
        "The operators below are copied from kdspec.ops (the code kdspec runs); the adapters are",
        "sized as the compiler sized them for the models it was exported with.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        *sorted(i for i in g.imports if i),
        "",
    ]
    body = [
        "# " + "-" * 90 + " operators (from kdspec.ops)",
        "",
        g.source(),
        "",
        "",
        "# " + "-" * 90 + " taps",
        _RUNTIME,
        "",
        "# " + "-" * 90 + " the method",
        "",
        "\n".join(method),
        "",
        "",
        models,
        "",
        f"STUDENT = {student!r}",
        "",
        _LOOP,
    ]
    return "\n".join(header + body).rstrip() + "\n"


_LOOP = '''# ------------------------------------------------------------------------- training


def plan(stages, epochs, steps_per_epoch):
    """Steps per stage: fixed lengths (epochs, steps, % of the run) first, the rest shared."""
    fixed = {}
    for i, (_, duration, unit, _, _) in enumerate(stages):
        if duration is not None:
            fixed[i] = {"fraction": duration * epochs, "steps": duration / steps_per_epoch}.get(
                unit, duration
            )
    rest = [i for i in range(len(stages)) if i not in fixed]
    share = max(0.0, epochs - sum(fixed.values())) / len(rest) if rest else 0.0
    out = []
    for i, (name, duration, unit, _, _) in enumerate(stages):
        steps = max(1, round(fixed.get(i, share) * steps_per_epoch))
        out.append((name, int(duration) if unit == "steps" else steps))
    return out


def train(method, loader, epochs=20, lr=0.05, momentum=0.9, weight_decay=5e-4):
    """Each stage with a fresh SGD optimizer and a cosine schedule over the stage."""
    for name, steps in plan(method.STAGES, epochs, len(loader)):
        params = method.set_stage(name)
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                              nesterov=momentum > 0)
        done = 0
        while done < steps:
            for x, y, *_ in loader:
                if done == steps:
                    break
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done / steps))
                loss, terms = method(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
            print(f"{name}: step {done}/{steps} loss {float(loss):.4f} "
                  + " ".join(f"{k} {float(v):.4f}" for k, v in terms.items()))
    return method


if __name__ == "__main__":
    torch.manual_seed(0)
    method = Method(build_models())
    loader = torch.utils.data.DataLoader(make_data(), batch_size=64, shuffle=True)
    train(method, loader)
    torch.save(method.roles[STUDENT].state_dict(), "student.pt")
'''


def _models_code(
    g: _Gatherer, roles: list[Any], sources: dict[str, str], num_classes: Any, shape: tuple
) -> str:
    lines = [
        "# " + "-" * 90 + " models and data",
        "",
        "",
        f"def build_models(num_classes={num_classes!r}, in_channels={shape[0]!r}):",
        '    """The models of each role (zoo models copied above; put your own here)."""',
        "    return {",
    ]
    for role in roles:
        src = sources.get(role.name, "")
        scheme, _, name = src.partition(":")
        if scheme == "zoo":
            from kdspec.zoo import _ALIASES, _REGISTRY

            fn = _REGISTRY[_ALIASES.get(name, name)]
            call = g.add(fn.__module__, fn.__name__)
            lines.append(
                f"        {role.name!r}: {call}(num_classes=num_classes, in_channels=in_channels),"
            )
        else:
            lines.append(f"        {role.name!r}: your_model({src or role.name!r}),")
    lines += [
        "    }",
        "",
        "",
        "def your_model(source):",
        '    raise NotImplementedError(f"build the model bound to {source} here")',
        "",
        "",
        "def make_data(n=512):",
        '    """Stand-in random data of the exported input shape: replace with your dataset."""',
        f"    x = torch.randn(n, *{shape!r})",
        f"    y = torch.randint(0, {num_classes!r}, (n,))",
        "    return torch.utils.data.TensorDataset(x, y)",
    ]
    return "\n".join(lines)


def _stage_roles(d: Distiller, stage: str) -> set[str]:
    d.set_stage(stage)
    names = {id(p) for p in d.trainable_parameters()}
    return {r for r, m in d.roles.items() if any(id(p) in names for p in m.parameters())}


def _script_param_names(d: Distiller) -> dict[int, str]:
    out = {id(p): f"roles.{n}" for n, p in d.roles.named_parameters()}
    for i, a in enumerate(iter_adapters(d)):
        for n, p in a.named_parameters():
            out[id(p)] = f"adapters.{i}.{n}"
    return out


def _adapter_calls(d: Distiller, batch: Any) -> list[tuple[str, tuple[int, ...], Any, dict]]:
    """``(func, in_shape, out_shape, kwargs)`` of every adapter as the compiler built it.

    One forward of every term records each adapter's input and output shapes; the out shape is
    the one the compiler sized it to (the teacher side's shape) wherever it had one.
    """
    seen: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    handles = []
    for a in iter_adapters(d):

        def hook(m: nn.Module, args: Any, out: Any) -> None:
            o = out[0] if isinstance(out, tuple | list) else out
            if args and isinstance(args[0], torch.Tensor) and isinstance(o, torch.Tensor):
                seen[id(m)] = (tuple(args[0].shape[1:]), tuple(o.shape[1:]))

        handles.append(a.register_forward_hook(hook))
    modes = [(m, m.training) for m in d.modules()]
    d.eval()  # no batch-norm statistics move: exporting leaves the models as they were
    try:
        with torch.no_grad():
            d.raw_terms(batch)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.train(mode)
    out = []
    terms: list[Any] = list(d.terms.values())
    for t in terms:
        for side, root in (("source", t.source), ("target", t.target)):
            if root is None:
                continue
            for node in root.modules():
                if not isinstance(node, AdapterNode):
                    continue
                for a in node.adapters:
                    kw = {k: v for k, v in node.kwargs.items() if v is not None}
                    if id(a) not in seen:
                        raise EjectError([f"the adapter `{node.func}` of `{t.name}` on a list"])
                    in_shape, out_shape = seen[id(a)]
                    sized = side == "target" and node.func != "classifier_head" and "dim" not in kw
                    if node.func == "classifier_head":
                        kw.setdefault("num_classes", d.num_classes)
                    if node.func == "embed":
                        kw.setdefault("dim", 128)
                    out.append((node.func, in_shape, out_shape if sized else None, kw))
    return out
