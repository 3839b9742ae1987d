"""Eject a compiled method as a standalone PyTorch script (``kdspec export``): no kdspec import.

The script holds, as readable code: the operators the method uses (copied from
:mod:`kdspec.ops`, with the helpers they call: the very code kdspec runs), the forward hooks
that read each tap, the adapters (sized as the compiler sized them), one function per loss
term, the stages (active terms, what each trains) and a training loop. Models bound to the
kdspec zoo are copied in too; other models become a ``build_models`` stub to fill in.

What ejects: teachers, students and assistants that are trained or frozen; taps on logits,
the input, module outputs and inputs (``stage[k]``, ``"path"``, ``.input``); transforms,
adapters and losses of :mod:`kdspec.ops` with constant arguments; the typed primitives
(:mod:`kdspec.ops.primitives`, called with the axes the compiler inferred), so the prelude's
functions and a spec's own ``def`` transforms and losses, ``let`` values and weights computed
from the batch; constant weights; stages with a fixed or shared length. What does not (an
:class:`EjectError` lists every reason): views, subsets, ensembles, learned tensors, virtual
teachers, EMA and snapshot roles, hand-offs and
repeats, learned losses and list components (CRD, SemCKD, ReviewKD, ...), ``resize``,
pre-activation taps, scheduled weights or arguments.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdspec.compiler.bind import unpack
from kdspec.compiler.distiller import Distiller
from kdspec.compiler.hooks import HookPoint
from kdspec.compiler.nodes import (
    AdapterNode,
    ArgNode,
    ConstNode,
    HoleNode,
    LearnedNode,
    LetNode,
    PipelineNode,
    PrimNode,
    TapNode,
    TransformNode,
)
from kdspec.ir.functions import STUDENT_SIDE, TEACHER_SIDE
from kdspec.ops import LOSSES, TRANSFORMS
from kdspec.ops import components as comp
from kdspec.ops import primitives as P
from kdspec.vocabulary import FUNCTIONS

__all__ = ["EjectError", "eject"]

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
    """Top-level definitions and their dependencies, copied from kdspec's modules in order.

    The script has one namespace: a definition whose name is a builtin (``sum`` of the
    primitives), a name of the script itself, or one another module's definition already took
    (``normalize`` of the transforms and of the primitives) is copied under a prefixed name, and
    every copied block's references to it are renamed.
    """

    def __init__(self, reserved: frozenset[str] = frozenset()) -> None:
        self.blocks: dict[tuple[str, str], ast.stmt] = {}  # (module, name) -> its node, in order
        self.imports: set[str] = set()
        self.names: dict[tuple[str, str], str] = {}  # (module, local name) -> the script's name
        self.taken: set[str] = set(reserved)
        self._trees: dict[str, tuple[ast.Module, str]] = {}

    def _tree(self, module: str) -> tuple[ast.Module, str]:
        if module not in self._trees:
            text = inspect.getsource(importlib.import_module(module))
            self._trees[module] = (ast.parse(text), text)
        return self._trees[module]

    def add(self, module: str, name: str) -> str:
        """Copy ``name`` of ``module`` (and what it uses); returns the name to call it by."""
        key = (module, name)
        if key in self.names:
            return self.names[key]
        tree, text = self._tree(module)
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        if node.module.startswith("kdspec"):
                            self.names[key] = self.add(node.module, alias.name)
                            return self.names[key]
                        self.imports.add(ast.get_source_segment(text, node) or "")
                        self.names[key] = name
                        return name
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if (alias.asname or alias.name).split(".")[0] == name:
                        self.imports.add(ast.get_source_segment(text, node) or "")
                        self.names[key] = name
                        return name
        found = next((n for n in tree.body if name in _defines(n)), None)
        if found is None:
            return name  # a builtin or a name the script itself defines
        final = name
        if final in self.taken or hasattr(builtins, final):
            final = f"{module.rsplit('.', 1)[-1]}_{name}"
        self.taken.add(final)
        self.names[key] = final  # before the dependencies (recursion)
        for used in sorted(_names_used(found) - _locals(found) - {name}):
            if any(used in _defines(n) for n in tree.body) or _imported(tree, used):
                self.add(module, used)
        self.blocks[key] = found
        return final

    def source(self) -> str:
        out = []
        for (module, _), node in self.blocks.items():
            text = self._tree(module)[1]
            renames = {
                local: final
                for (m, local), final in self.names.items()
                if m == module and local != final
            }
            out.append(textwrap.dedent(_renamed(text, node, renames)))
        return "\n\n\n".join(out)


def _renamed(text: str, node: ast.stmt, renames: dict[str, str]) -> str:
    """The source of ``node`` (decorators included), its name and free references renamed."""
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line.encode()))
    raw = text.encode()
    first_line = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    start = offsets[first_line - 1]
    end = offsets[(node.end_lineno or node.lineno) - 1] + (node.end_col_offset or 0)
    edits: list[tuple[int, int, str]] = []  # (start, end, new text), bytes of `raw`
    local = _locals(node)
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id in renames and n.id not in local:
            a = offsets[n.lineno - 1] + n.col_offset
            edits.append((a, a + len(n.id.encode()), renames[n.id]))
    if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in renames:
        a = raw.index(f" {node.name}".encode(), offsets[node.lineno - 1] + node.col_offset) + 1
        edits.append((a, a + len(node.name.encode()), renames[node.name]))
    out = raw[start:end]
    for a, b, new in sorted(set(edits), reverse=True):
        out = out[: a - start] + new.encode() + out[b - start :]
    return out.decode()


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


def _locals(node: ast.AST) -> set[str]:
    """Names a function binds itself (parameters, assignments): never renamed in it."""
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return set()
    out = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    out |= {a.arg for a in ast.walk(node) if isinstance(a, ast.arg)}
    return out


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
        # The term being written: its statements, temporaries and the def loss's sides.
        self.body: list[str] = []
        self.temps = 0
        self.indent = "    "
        self.sides: dict[str, str] = {}
        self.lets: dict[int, str] = {}

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
        points = self.d.compiled.points.get(node.tap) or []
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

    def bind(self, value: str) -> str:
        """A statement of the term's body computing ``value`` once; returns its variable."""
        name = f"h{self.temps}"
        self.temps += 1
        self.body.append(f"{self.indent}{name} = {value}")
        return name

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
                if not value.isidentifier():
                    value = self.bind(value)  # a step may read its input twice
            return value
        if isinstance(node, AdapterNode):
            if node.func in comp.COMPONENTS or len(node.extra):
                return self.fail(f"the list component `{node.func}`")
            child = self.expr(node.child, hole)
            first = self.adapter_index[id(node.adapters[0])] if len(node.adapters) else 0
            return f"adapt(self.adapters[{first}:{first + len(node.adapters)}], {child})"
        if isinstance(node, TransformNode):
            return self.transform(node, hole)
        if isinstance(node, ConstNode):
            if not isinstance(node.value, int | float) or isinstance(node.value, bool):
                return self.fail("a scheduled value in an expression")
            return f"[{float(node.value)!r}]"
        if isinstance(node, ArgNode):
            side = self.sides.get(node.name)
            return f"[{side}]" if side else self.fail(f"the argument `{node.name}`")
        if isinstance(node, PrimNode):
            return self.bind(self.prim(node, hole))
        if isinstance(node, LetNode):  # a shared value: computed once in each term reading it
            if id(node) not in self.lets:
                self.lets[id(node)] = self.bind(self.expr(node.inner, hole))
            return self.lets[id(node)]
        if isinstance(node, LearnedNode):
            return self.fail(f"the learned tensor `{node.func}`")
        return self.fail(f"`{type(node).__name__}` ({getattr(node, 'func', '')})")

    def transform(self, node: TransformNode, hole: str | None) -> str:
        args = [self.expr(i, hole) for i in node.inputs]
        args = [
            f"[num(v) for v in {a}]" if _maybe_number(i) else a
            for a, i in zip(args, node.inputs, strict=True)
        ]
        if node.func == "stopgrad":
            return f"[v.detach() for v in {args[0]}]"
        if node.func == "exp":
            return f"[v.exp() for v in {args[0]}]"
        if node.func == "resize":  # to the teacher side's spatial size (`hint`)
            fn_name = self.g.add("kdspec.compiler.nodes", "_resize")
            return f"[{fn_name}(v, hint, i) for i, v in enumerate({args[0]})]"
        if node.func == "margin_relu":
            return self.fail(f"the transform `{node.func}`")
        fn = TRANSFORMS.get(node.func, comp.TRANSFORMS.get(node.func))
        if fn is None:
            return self.fail(f"the transform `{node.func}`")
        name = self.g.add(fn.__module__, fn.__name__)
        kwargs = dict(node.kwargs)
        if kwargs.get("mask", "none") not in ("none", None):  # a mask of the batch, by name
            return self.fail(f"the token mask `{kwargs['mask']}` of `{node.func}`")
        if node.func in ("rows", "pool"):
            kwargs.pop("mask", None)  # `mask=none`: every row
        kw = self.kwargs(kwargs, f"`{node.func}`")
        if len(args) == 1:
            return f"[{name}(v{kw}) for v in {args[0]}]"
        vs = ", ".join(f"v{i}" for i in range(len(args)))
        return f"[{name}({vs}{kw}) for {vs} in pairs({', '.join(args)})]"

    def prim(self, node: PrimNode, hole: str | None) -> str:
        """A primitive per paired layer, as :class:`~kdspec.compiler.nodes.PrimNode` runs it."""
        args = [self.expr(i, hole) for i in node.inputs]
        func = node.func
        vs = [f"v{i}" for i in range(len(args))]
        reads = []
        for i, v in enumerate(vs):
            dist = i < len(node.in_dist) and node.in_dist[i]
            if func not in _NUMERIC and _maybe_number(node.inputs[i]):
                v = f"num({v})"  # `log(classes)`: a number read as a tensor
            elif dist and not node.keep_storage and func != "log":
                v = f"{v}.exp()"  # distributions are kept as log-probabilities
            reads.append(v)
        axes = f"axes={list(node.in_axes)!r}"
        kw = self.kwargs(node.kwargs, f"`{func}`")
        if func in P.BINARY:
            binary = self.g.add(P.__name__, "binary")
            call = f"{binary}({func!r}, {reads[0]}, {reads[1]}, {list(node.in_axes)!r})"
        elif func == "neg":
            call = f"-{reads[0]}"
        elif func == "log" and node.in_dist and node.in_dist[0]:
            call = reads[0]  # the stored log-probabilities, exactly
        elif func in LOSSES:
            loss = self.g.add(LOSSES[func].__module__, LOSSES[func].__name__)
            one = FUNCTIONS[func].inputs == 1  # a one-input loss takes the labels
            inputs = f"{reads[0]}, y" if one else ", ".join(reads)
            call = f"{loss}({inputs}{kw})"
        elif func == "size" and not args:
            if node.kwargs.get("over") == "batch":
                return "[float(y.shape[0])]"
            if self.d.num_classes is None:
                return self.fail("`size` of the classes, unknown here")
            return f"[{float(self.d.num_classes)!r}]"
        else:
            fn = P.PRIMITIVES.get(func)
            if fn is None:
                return self.fail(f"the primitive `{func}`")
            name = self.g.add(fn.__module__, fn.__name__)
            labels = ", labels=y" if func in ("label_mask", "at_label") else ""
            call = f"{name}({''.join(r + ', ' for r in reads)}{axes}{labels}{kw})"
            if func == "size":
                call = f"float({call})"
        if not args:
            return f"[{call}]"
        if len(args) == 1:
            return f"[{call} for v0 in {args[0]}]"
        return f"[{call} for {', '.join(vs)} in pairs({', '.join(args)})]"

    def term(self, name: str, t: Any) -> list[str]:
        self.body, self.temps, self.indent, self.sides, self.lets = [], 0, "    ", {}, {}
        learned = t.loss_node is None and (t.loss in comp.LEARNED_LOSSES or t.loss not in LOSSES)
        if learned:
            self.fail(f"the learned loss `{t.loss}` of `{name}`")
            return []
        if t.subset is not None:
            self.fail(f"the subset of `{name}`")
        spec = self.d.lowered.source_map
        text = ""
        span = spec.span("term", name) if spec.source is not None else None
        if span is not None:
            text = " ".join(spec.source.text[span.start : span.end].split())
        lines = [f"def term_{name}(self, taps, y):", f'    """{text or name}"""']
        if t.source is None:
            tgt = self.expr(t.target)
            src = None
        else:
            # Adapters and `resize` on the student side are sized from the teacher side's raw
            # value (before the knowledge pipeline): `hint` holds its shapes.
            if isinstance(t.source, PipelineNode):
                self.body.append(f"    raw = {self.expr(t.source.inner)}")
                self.body.append("    hint = [tuple(v.shape[1:]) for v in raw]")
                src = self.expr(PipelineNode(HoleNode(), [*t.source.steps]), "raw")
            else:
                self.body.append(f"    raw = {self.expr(t.source)}")
                self.body.append("    hint = [tuple(v.shape[1:]) for v in raw]")
                src = "raw"
            tgt = self.expr(t.target)
        self.body.append("    total = 0.0")
        if t.loss_node is not None:
            self.loss_of_expression(t, src, tgt)
        else:
            self.builtin_loss(t, src, tgt)
        return lines + self.body

    def builtin_loss(self, t: Any, src: str | None, tgt: str) -> None:
        fn = self.g.add(LOSSES[t.loss].__module__, LOSSES[t.loss].__name__)
        kw = self.kwargs(t.loss_kwargs, f"`{t.loss}` of `{t.name}`")
        if src is None:
            self.body += [f"    for v in {tgt}:", f"        total = total + {fn}(v, y{kw})"]
        else:
            self.body.append(f"    for s, t in pairs({src}, {tgt}):")
            if t.to_probs:
                self.body.append("        s, t = s.exp(), t.exp()")
            self.body.append(f"        total = total + {fn}(s, t{kw})")
        if t.weight_node is not None:  # a weight computed from the batch
            self.body.append(f"    total = total * {self.expr(t.weight_node)}[0]")
        self.body.append("    return total")

    def loss_of_expression(self, t: Any, src: str | None, tgt: str) -> None:
        """A loss written as a `def`: its body per paired layer, summed after the weight."""
        self.sides = {STUDENT_SIDE: "student", TEACHER_SIDE: "teacher"}
        if src is None:
            self.body.append(f"    for student in {tgt}:")
        else:
            self.body.append(f"    for teacher, student in pairs({src}, {tgt}):")
        self.indent = "        "
        value = f"{self.expr(t.loss_node)}[0]"
        if t.weight_node is not None:
            value = f"{value} * {self.expr(t.weight_node)}[0]"
        self.body.append(f"        total = total + torch.as_tensor({value}).sum()")
        self.indent = "    "
        self.body.append("    return total")


# Primitives that take numbers as they are (sizes and arithmetic); the others read tensors.
_NUMERIC = frozenset({"size", "+", "-", "*", "/", "^"})


def _maybe_number(node: Any) -> bool:
    """Whether a node's values may be plain numbers (constants, sizes, their arithmetic)."""
    if isinstance(node, ConstNode):
        return True
    if isinstance(node, PrimNode) and node.func == "size":
        return True
    if isinstance(node, PrimNode) and (node.func in P.BINARY or node.func == "neg"):
        return all(_maybe_number(i) for i in node.inputs)
    return False


# ------------------------------------------------------------------------------ the script


# Names the script defines itself (runtime, method, loop): copied operators never take them.
_SCRIPT_NAMES = frozenset(
    {"pairs", "num", "adapt", "logits_of", "read_taps", "Method", "build_models", "your_model"}
    | {"make_data", "STUDENT", "plan", "train", "method", "loader"}
)

_RUNTIME = '''
def pairs(*lists):
    """Zip lists of tensors, repeating lists of length one (one tap against a range)."""
    n = max(len(x) for x in lists)
    return [tuple(x[0] if len(x) == 1 else x[i] for x in lists) for i in range(n)]


def num(v):
    """A number computed in the spec (`2`, `B`) as a tensor, for primitives written for tensors."""
    if isinstance(v, int | float):
        return torch.as_tensor(float(v), dtype=torch.get_default_dtype())
    return v


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
    g = _Gatherer(_SCRIPT_NAMES)
    g.imports |= {
        "import math",
        "import torch",
        "import torch.nn.functional as F",
        "import torch.utils.data",
        "from torch import nn",
    }
    w = _Writer(d, g)
    m = d.method
    _refuse_what_cannot_be_written(d, w)
    calls = _adapter_calls(d, example_batch) if not w.reasons else []
    term_code: list[str] = []
    for name, t in d.terms.items():
        term_code += ["", *w.term(name, t)]
    if w.reasons:
        raise EjectError(sorted(set(w.reasons)))
    if calls:
        g.add("kdspec.ops.adapters", "build_adapter")
    trained, stages = _stage_table(d)
    adapters = ",\n            ".join(
        f"build_adapter({f!r}, {i!r}, {o!r}{w.kwargs(kw, f)})" for f, i, o, kw in calls
    )
    points = {
        role: {k: (p.kind, p.path, p.io) for k, p in pts.items()} for role, pts in w.points.items()
    }
    method = _method_class(d, points, trained, stages, adapters)
    method += ["    " + line if line else "" for line in term_code]
    x = unpack(example_batch).x
    roles = [r for r in m.roles if r.name in d.roles]
    models = _models_code(g, roles, sources or {}, d.num_classes, tuple(x.shape[1:]))
    student = d.eval_roles()[0]
    return _script_text(m.name, title, g, method, models, student)


def _script_text(
    name: str, title: str, g: _Gatherer, method: list[str], models: str, student: str
) -> str:
    """The whole script: docstring, imports, operators, taps, the method, models, loop."""
    header = [
        '"""' + (title or f"{name}: a knowledge distillation method") + ".",
        "",
        f"Exported by `kdspec export` from the method `{name}`: plain PyTorch, no kdspec import.",
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


def _refuse_what_cannot_be_written(d: Distiller, w: _Writer) -> None:
    """Every construct the script has no code for, as a reason in ``w``."""
    m = d.method
    for role in m.roles:
        if role.mode not in ("trained", "frozen"):
            w.fail(f"the {role.mode} role `{role.name}`")
    for what, items in (("view", m.data), ("ensemble", m.ensembles)):
        for item in items:
            w.fail(f"the {what} `{getattr(item, 'name', item)}`")
    for who in m.predictions:  # the script would score the bare model
        w.fail(f"the `predict` of `{who}`")
    for plan in d.stage_plans:
        if plan.repeat != 1 or plan.handoffs:
            w.fail(f"repeats or hand-offs of stage `{plan.name}`")
    for name in d.terms:
        if name not in d.compiled.const_weights:
            w.fail(f"the scheduled weight of `{name}`")


def _stage_table(d: Distiller) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The trained roles, and per stage (name, duration, unit, active terms, parameters)."""
    trained = sorted({r for p in d.stage_plans for r in _stage_roles(d, p.name)})
    stages = []
    param_names = _script_param_names(d)
    for plan in d.stage_plans:
        d.set_stage(plan.name)
        params = [param_names[id(p)] for p in d.trainable_parameters()]
        active = [t.name for t in d.compiled.active_terms(d.stage)]
        stages.append((plan.name, plan.duration, plan.unit, active, params))
    d.reset_stage()
    return trained, stages


def _method_class(
    d: Distiller,
    points: dict[str, Any],
    trained: list[str],
    stages: list[tuple[Any, ...]],
    adapters: str,
) -> list[str]:
    """The script's ``Method`` module, up to its terms."""
    weights = {n: d.compiled.const_weights[n] for n in d.terms}
    trained_roles = sorted(set(trained))
    return [
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
