"""Lower the syntax tree to the IR: resolve names, check calls against the vocabulary.

Lowering never stops at the first problem: every unresolved name, unknown function or bad
argument becomes a diagnostic and a placeholder in the IR, so later passes still run.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdspec.diagnostics import Diagnostic, Label, Severity, error
from kdspec.ir import models as ir
from kdspec.ir.evaluate import EvalError, evaluate
from kdspec.source import SourceFile, Span
from kdspec.syntax import ast
from kdspec.vocabulary import (
    ALIASES,
    CLAIM_DIMENSIONS,
    FUNCTIONS,
    PRELUDE_IMPL,
    REQUIRED,
    by_category,
)
from kdspec.vocabulary.axes import AXES, AXIS_SETS, BASE_AXES

PathKey = tuple[object, ...]


@dataclass
class SourceMap:
    """Spans of IR parts, keyed by IR path such as ``("term", "kd", "loss")``."""

    source: SourceFile
    spans: dict[PathKey, Span] = field(default_factory=dict)

    def span(self, *path: object) -> Span | None:
        """The span of a path, or of its nearest recorded ancestor."""
        key: PathKey = tuple(path)
        while key:
            if key in self.spans:
                return self.spans[key]
            key = key[:-1]
        return None

    def diagnostic(
        self,
        code: str,
        message: str,
        path: PathKey,
        label: str = "",
        *,
        severity: Severity = Severity.ERROR,
        notes: tuple[str, ...] = (),
        help: str | None = None,
        related: tuple[tuple[PathKey, str], ...] = (),
    ) -> Diagnostic:
        """A diagnostic pointing at the source of an IR path (and, secondary, related paths)."""
        span = self.span(*path)
        labels: list[Label] = [Label(span, label)] if span is not None else []
        for rel_path, rel_label in related:
            rel_span = self.span(*rel_path)
            if rel_span is not None:
                labels.append(Label(rel_span, rel_label, primary=False))
        return Diagnostic(
            code=code,
            severity=severity,
            message=message,
            source=self.source,
            labels=tuple(labels),
            notes=notes,
            help=help,
        )


@dataclass
class Lowered:
    """A lowered method with its source map."""

    method: ir.Method
    source_map: SourceMap


# Finds a method by name for `use`: returns (method ast, its file) or None.
MethodFinder = Callable[[str], "tuple[ast.Method, SourceFile] | None"]


def _a(noun: str) -> str:
    """``a transform``, ``an adapter``."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def did_you_mean(name: str, candidates: Iterable[str], *, declared: bool = False) -> str | None:
    """``did you mean `x`?`` where `x` is what the user meant, else None.

    ``declared``: the candidates are names the file itself declares (roles, parameters, views,
    terms), which carry no built-in meaning: the closest similar name is offered. Otherwise they
    are the language's own words (functions, their parameters, tap points), and a suggestion
    must keep the meaning, so looking alike is not enough: only a likely typo, at most one edit
    (two for names longer than 5 characters; a swap of neighbours counts as one) with the same
    digits (`l2` is not a typo of `l1`). `channel_sum` gets no `channel_dist`.
    """
    if declared:
        close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
        return f"did you mean `{close[0]}`?" if close else None
    budget = 1 if len(name) <= 5 else 2
    best: tuple[int, str] | None = None
    for cand in sorted(set(candidates)):
        if _digits(cand) != _digits(name):
            continue
        d = _edit_distance(name.lower(), cand.lower())
        if d <= budget and (best is None or d < best[0]):
            best = (d, cand)
    return f"did you mean `{best[1]}`?" if best else None


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance (insert, delete, substitute, swap neighbours)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


_CONSTANTS = {"true": 1.0, "false": 0.0}
# Where a call may stand in an expression (a side, a weight, a `let`, a `def` body).
EXPRESSION_CATEGORIES = ("transform", "primitive", "combine", "adapter", "schedule", "loss")
# Shape values: sizes of the batch and of the label space, usable anywhere...
GLOBAL_SHAPES = {"B": "batch", "classes": "class"}
# ... and sizes of a value, usable inside a `def` (of its first input): (axis, part).
VALUE_SHAPES: dict[str, tuple[str, int | None]] = {
    "C": ("channel", None),
    "HW": ("space", None),
    "H": ("space", 0),
    "W": ("space", 1),
    "tokens": ("token", None),
}
_UNITS = {"epochs": "epochs", "epoch": "epochs", "steps": "steps", "step": "steps", "%": "fraction"}
_APPLY_HELP = (
    "apply a module of a role to a value: `t.classifier(x)` (the final classifier), "
    '`t.stage[3](x)`, `t."layer4.1"(x)`'
)
_TAP_HELP = (
    "a tap reads `role.logits`, `role.embedding`, `role.input`, `role.output[...]`, "
    '`role.stage[k]` or `role."module.path"`, optionally followed by `.input`, `.output` '
    "or `.preact`"
)


class _MethodLowering:
    def __init__(
        self,
        method: ast.Method,
        source: SourceFile,
        finder: MethodFinder | None,
        overrides: dict[str, object],
        stack: tuple[str, ...],
        defs: DefTable | None = None,
    ):
        self.defs = defs
        self.used_defs: set[str] = set()
        self.m = method
        self.source = source
        self.finder = finder
        self.overrides = overrides
        self.stack = stack
        self.diags: list[Diagnostic] = []
        self.smap = SourceMap(source)
        self.smap.spans[("method",)] = method.span
        self.smap.spans[("method", "name")] = method.name.span
        self.params: dict[str, ir.Expr] = {}
        self.unknown: set[str] = set()  # unknown names already reported
        self.roles: dict[str, ir.Role] = {}
        self.ensembles: dict[str, ir.Ensemble] = {}
        self.data: dict[str, ir.DataPart] = {}
        self.lets: dict[str, ir.Let] = {}
        self.terms: dict[str, ir.Term] = {}
        self.stages: list[ir.Stage] = []
        self.claims: list[ir.Claim] = []
        self.predictions: dict[str, ir.Expr] = {}
        self.used_predictions: set[str] = set()  # from a `use`: a local `predict` replaces them
        self.uses: list[str] = []
        self.defined: dict[str, tuple[str, Span]] = {}  # name -> (what, span), for KD201
        self.local_terms = {
            st.label.name
            for st in method.body
            if isinstance(st, ast.Transfer | ast.Supervise) and st.label is not None
        }
        self.used_stages: list[tuple[str, tuple[ir.Stage, ...], dict[str, str], _Inliner]] = []
        self.folded_params: set[str] = set()

    # -- helpers ----------------------------------------------------------------------------

    def err(
        self, code: str, message: str, span: Span | None, label: str = "", **kw: object
    ) -> None:
        self.diags.append(error(code, message, self.source, span, label, **kw))

    def define(self, what: str, ident: ast.Ident) -> bool:
        """Record a definition; report a duplicate (KD201). Returns False on duplicates."""
        prior = self.defined.get(ident.name)
        if prior is not None:
            self.err(
                "KD201",
                f"`{ident.name}` is defined twice",
                ident.span,
                f"{what} `{ident.name}` redefined here",
                related=[Label(prior[1], f"first defined here as a {prior[0]}", primary=False)],
                help="give each parameter, role, ensemble, view, subset, let, term and stage its "
                "own name",
            )
            return False
        self.defined[ident.name] = (what, ident.span)
        return True

    def names_in_scope(self) -> list[str]:
        return [*self.params, *self.roles, *self.ensembles, *self.lets, *self.data]

    # -- expressions ------------------------------------------------------------------------

    def expr(self, e: ast.Expr, *, as_value: bool = False, path: PathKey | None = None) -> ir.Expr:
        """Lower an expression. ``as_value``: bare unknown words become strings (kwarg values).

        ``path``: the IR path of the expression; the spans of its parts are recorded under it
        (``(*path, "args", 0)``, ``(*path, "kwargs", "over")``, ``(*path, "left")``, ...), so a
        diagnostic about a part points at that part.
        """
        if path is not None:
            self.smap.spans.setdefault(path, e.span)

        def sub(*more: object) -> PathKey | None:
            return (*path, *more) if path is not None else None

        if isinstance(e, ast.Number):
            if not math.isfinite(e.value):
                self.err(
                    "KD205",
                    f"the number `{_shorten(e.text, 40)}` is too large for a float",
                    e.span,
                    "overflows to infinity",
                    help="numbers must be finite (at most about 1.8e308)",
                )
                return ir.Num(value=1.0)  # a placeholder inside every range: one error, not two
            return ir.Num(value=float(e.value))
        if isinstance(e, ast.String):
            return ir.Str(value=e.value)
        if isinstance(e, ast.Name):
            return self.name(e, as_value=as_value)
        if isinstance(e, ast.Call):
            return self.call(e, categories=EXPRESSION_CATEGORIES, path=path)
        if isinstance(e, ast.BinOp):
            return ir.BinOp(
                op=e.op,
                left=self.expr(e.left, path=sub("left")),
                right=self.expr(e.right, path=sub("right")),
            )
        if isinstance(e, ast.Neg):
            return ir.Neg(operand=self.expr(e.operand, path=sub("operand")))
        if isinstance(e, ast.Cond):
            return self.cond(e, as_value, path)
        if isinstance(e, ast.ListExpr):
            return ir.ListE(
                items=tuple(
                    self.expr(i, as_value=as_value, path=sub("items", k))
                    for k, i in enumerate(e.items)
                )
            )
        if isinstance(e, (ast.Attr, ast.ModulePath, ast.Index, ast.CallIndex)):
            return self.tap(e)
        if isinstance(e, ast.Apply):
            return self.apply(e, path)
        self.err("KD104", "unsupported expression", getattr(e, "span", None))
        return ir.Str(value="?")

    def cond(self, e: ast.Cond, as_value: bool, path: PathKey | None) -> ir.Expr:
        """``if c then a else b`` is ``choose(c, a, b)``: a choice made before training. In a
        method ``c`` is known now, so the branch it picks is the value; in a ``def`` the
        choice is made where the def is called (a condition read from the batch is KD216)."""
        sub = (lambda k: (*path, "args", k)) if path is not None else (lambda k: None)
        out = ir.Call(
            func="choose",
            args=(
                self.expr(e.cond, path=sub(0)),
                self.expr(e.then, as_value=as_value, path=sub(1)),
                self.expr(e.orelse, as_value=as_value, path=sub(2)),
            ),
        )
        cond = out.args[0]
        if isinstance(self, _FunctionLowering) or cond.find(ir.Call) is not None:
            return out
        try:
            holds = evaluate(cond, self.params)
        except EvalError:
            return out  # not known now: typing the call reports it (KD216)
        if isinstance(holds, bool) or not isinstance(holds, int | float):
            return out
        return out.args[1] if holds != 0 else out.args[2]

    def name(self, e: ast.Name, *, as_value: bool = False) -> ir.Expr:
        n = e.id
        if n in self.params:
            return ir.ParamRef(name=n)
        if n in self.roles or n in self.ensembles:
            return ir.Tap(role=n, point="output")
        if n in self.lets:
            return ir.LetRef(name=n)
        if n in _CONSTANTS:
            return ir.Num(value=_CONSTANTS[n])
        if n == "none":  # no value (a parameter left out): compared with `==` in `choose`
            return ir.Str(value=n)
        shape = self.shape_value(e)
        if shape is not None:
            return shape
        if as_value:
            return ir.Str(value=n)
        if n in self.data:
            self.err(
                "KD206",
                f"`{n}` is a {self.data[n].kind}, not a value",
                e.span,
                "used as a value here",
                help=f"pick a view per role: `s[{n}].logits`",
            )
            return ir.Str(value=n)
        if n not in self.unknown:  # one error per name, however often it is used
            self.unknown.add(n)
            self.err(
                "KD202",
                f"unknown name `{n}`",
                e.span,
                "not defined in this method",
                help=did_you_mean(n, self.names_in_scope(), declared=True)
                or f"declare it: `param {n} = ...`",
            )
        return ir.ParamRef(name=n)  # unresolved: later checks skip it, no cascade

    def shape_value(self, e: ast.Name) -> ir.Expr | None:
        """``B`` and ``classes`` anywhere; ``C``, ``HW``, ... only inside a ``def`` (KD214)."""
        if e.id in GLOBAL_SHAPES:
            return ir.Call(func="size", kwargs={"over": ir.Str(value=GLOBAL_SHAPES[e.id])})
        if e.id in VALUE_SHAPES:
            self.err(
                "KD214",
                f"`{e.id}` is the size of a value, and here there is none",
                e.span,
                "shape value out of scope",
                help=f"inside a `def` it is the size of its first input; elsewhere write "
                f"`size(x, over={VALUE_SHAPES[e.id][0]})`",
            )
            return ir.Num(value=1.0)
        return None

    def check_axis_words(self, e: ast.Expr) -> None:
        """KD313 for a bare word given as an axis that is no axis (`over=spaec`)."""
        words = e.items if isinstance(e, ast.ListExpr) else (e,)
        for w in words:
            if (
                not isinstance(w, ast.Name)
                or w.id in AXES
                or w.id in AXIS_SETS
                or self.is_value_name(w.id)
            ):
                continue
            self.err(
                "KD313",
                f"`{w.id}` is not an axis",
                w.span,
                "not an axis",
                help=did_you_mean(w.id, AXES) or f"axes: {', '.join(BASE_AXES)}",
            )

    def is_value_name(self, name: str) -> bool:
        """A name that stands for a value here (a parameter), not a bare word."""
        return name in self.params

    def def_call(self, e: ast.Call, implicit_inputs: int, path: PathKey | None) -> ir.Call:
        """A call of a user-defined function: arguments checked as for a built-in."""
        fname = e.func.name
        assert self.defs is not None
        fdef = self.defs.lower(fname, e.func.span, self.source)
        if fdef is None:
            return ir.Call(func=fname)
        self.used_defs.add(fname)

        def sub(*more: object) -> PathKey | None:
            return (*path, *more) if path is not None else None

        n_inputs = len(fdef.inputs) - implicit_inputs
        keywords = [p.name for p in fdef.params if p.default is not None]
        args = tuple(
            self.expr(a, path=sub("args", i)) for i, a in enumerate(e.args[: max(n_inputs, 0)])
        )
        extra = e.args[max(n_inputs, 0) :]
        kwargs: dict[str, ir.Expr] = {}
        if len(extra) > len(keywords):
            self.err(
                "KD204",
                f"`{fname}` takes at most {max(n_inputs, 0) + len(keywords)} "
                f"positional arguments, got {len(e.args)}",
                e.span,
                "too many arguments",
            )
        for pname, a in zip(keywords, extra, strict=False):
            kwargs[pname] = self.expr(a, as_value=True, path=sub("kwargs", pname))
        for kw in e.kwargs:
            if kw.name.name not in keywords:
                known = ", ".join(f"`{p}`" for p in keywords) or "no keyword arguments"
                self.err(
                    "KD204",
                    f"`{fname}` has no parameter `{kw.name.name}`",
                    kw.name.span,
                    "unknown keyword",
                    help=did_you_mean(kw.name.name, keywords) or f"`{fname}` takes {known}",
                )
                continue
            if kw.name.name in kwargs:
                self.err("KD204", f"`{kw.name.name}` given twice to `{fname}`", kw.span)
            kwargs[kw.name.name] = self.expr(
                kw.value, as_value=True, path=sub("kwargs", kw.name.name)
            )
        if len(args) < n_inputs:
            self.err(
                "KD204",
                f"`{fname}` needs {n_inputs} input{'s' * (n_inputs > 1)}, got {len(args)}",
                e.span,
                "missing input",
            )
        return ir.Call(func=fname, args=args, kwargs=kwargs)

    def call(
        self,
        e: ast.Call,
        categories: tuple[str, ...],
        implicit_inputs: int = 0,
        path: PathKey | None = None,
    ) -> ir.Call:
        fname = e.func.name
        fn = FUNCTIONS.get(fname)
        if fn is None and self.defs is not None and self.defs.has(fname):
            return self.def_call(e, implicit_inputs, path)
        if fn is None:
            pool = [n for c in categories for n in by_category(c)]
            self.err(
                "KD203",
                f"unknown function `{fname}`",
                e.func.span,
                "not in the vocabulary",
                help=did_you_mean(fname, pool)
                or (
                    f"kdspec calls it `{ALIASES[fname.lower()]}`"
                    if ALIASES.get(fname.lower()) in pool
                    else f"known: {', '.join(pool[:12])} ..."
                ),
            )
            # Keep what the call reads (taps, parameters, lets), so that later checks see them
            # used and report nothing else about it: one root cause, one diagnostic.
            return ir.Call(
                func=fname,
                args=tuple(self.expr(a, as_value=True) for a in e.args),
                kwargs={kw.name.name: self.expr(kw.value, as_value=True) for kw in e.kwargs},
            )
        if fn.category not in categories:
            wanted = " or ".join(categories)
            self.err(
                "KD203",
                f"`{fname}` is {_a(fn.category)}, not {_a(wanted)}",
                e.func.span,
                f"{_a(fn.category)} here",
                help=did_you_mean(fname, [n for c in categories for n in by_category(c)]),
            )

        def sub(*more: object) -> PathKey | None:
            return (*path, *more) if path is not None else None

        n_inputs = max(fn.inputs, 0) - implicit_inputs if fn.inputs >= 0 else len(e.args)
        # Optional trailing inputs (`relation(x[, y])`): tensors, not keyword values.
        given = sum(1 for a in e.args if not isinstance(a, ast.Number | ast.String))
        n_taken = min(n_inputs, max(n_inputs - fn.optional_inputs, given))
        args = tuple(
            self.expr(a, path=sub("args", i)) for i, a in enumerate(e.args[: max(n_taken, 0)])
        )
        kwargs: dict[str, ir.Expr] = {}
        extra = e.args[max(n_taken, 0) :]
        names = list(fn.params)
        if len(extra) > len(names):
            self.err(
                "KD204",
                f"`{fname}` takes at most {max(n_inputs, 0) + len(names)} "
                f"positional arguments, got {len(e.args)}",
                e.span,
                "too many arguments",
            )
        for pname, a in zip(names, extra, strict=False):
            kwargs[pname] = self.expr(
                a, as_value=fn.params[pname].check is None, path=sub("kwargs", pname)
            )
        for kw in e.kwargs:
            if kw.name.name not in fn.params:
                known = ", ".join(f"`{p}`" for p in fn.params) or "no keyword arguments"
                self.err(
                    "KD204",
                    f"`{fname}` has no parameter `{kw.name.name}`",
                    kw.name.span,
                    "unknown keyword",
                    help=did_you_mean(kw.name.name, fn.params) or f"`{fname}` takes {known}",
                )
                continue
            if kw.name.name in kwargs:
                self.err("KD204", f"`{kw.name.name}` given twice to `{fname}`", kw.span)
            numeric = fn.params[kw.name.name].check is not None
            kwargs[kw.name.name] = self.expr(
                kw.value, as_value=not numeric, path=sub("kwargs", kw.name.name)
            )
            if kw.name.name == "over":
                self.check_axis_words(kw.value)
        if fn.inputs > 0 and len(args) < n_inputs - fn.optional_inputs:
            self.err(
                "KD204",
                f"`{fname}` needs {n_inputs - fn.optional_inputs} "
                f"input{'s' * (n_inputs - fn.optional_inputs > 1)}, got {len(args)}",
                e.span,
                "missing input",
            )
        if fn.inputs < 0 and fn.category == "primitive" and not args:
            self.err("KD204", f"`{fname}` needs at least one input", e.span, "no input")
        for pname, p in fn.params.items():
            if p.default is REQUIRED and pname not in kwargs:
                self.err(
                    "KD204",
                    f"`{fname}` needs the parameter `{pname}`",
                    e.span,
                    f"missing `{pname}=`",
                )
        if fn.impl.startswith(PRELUDE_IMPL) and self.defs is not None:
            # Written in kdspec itself: the method carries the prelude def, and the compiler
            # expands the call as a user def's; its facts stay those of the vocabulary.
            if self.defs.lower(fname, e.func.span, self.source) is not None:
                self.used_defs.add(fname)
        return ir.Call(func=fname, args=args, kwargs=kwargs)

    def _const_int(self, e: ast.Expr | None) -> int | None:
        if e is None:
            return None
        if isinstance(e, ast.Number) and float(e.value).is_integer():
            return int(e.value)
        if isinstance(e, ast.Neg):
            inner = self._const_int(e.operand)
            return -inner if inner is not None else None
        if isinstance(e, ast.Name) and e.id in self.params:
            self.folded_params.add(e.id)
            value = self.params[e.id]
            if isinstance(value, ir.Num) and value.value.is_integer():
                return int(value.value)
        self.err(
            "KD206",
            "a layer index must be a whole number",
            getattr(e, "span", None),
            "not a whole number",
        )
        return None

    def tap(self, e: ast.Expr) -> ir.Expr:
        chain: list[ast.Expr] = []
        base: ast.Expr = e
        while isinstance(base, (ast.Attr, ast.ModulePath, ast.Index, ast.CallIndex)):
            chain.append(base)
            base = base.obj
        chain.reverse()
        if not isinstance(base, ast.Name):
            self.err(
                "KD206",
                "a tap must start with a role name",
                getattr(base, "span", None),
                "not a role",
                help=_TAP_HELP,
            )
            return ir.Str(value="?")
        role = base.id
        if role not in self.roles and role not in self.ensembles:
            if role in self.lets:
                self.err(
                    "KD206",
                    f"`{role}` is a let binding and has no tap points",
                    base.span,
                    help="taps are read from roles: `s.logits`",
                )
            elif role not in self.unknown:  # one error per name
                self.unknown.add(role)
                self.err(
                    "KD202",
                    f"unknown role `{role}`",
                    base.span,
                    "no such role",
                    help=did_you_mean(role, [*self.roles, *self.ensembles], declared=True)
                    or (
                        None
                        if role in self.defined  # defined as something else: KD201 says so
                        else f"declare it: `student {role}` (or `teacher {role}`, ...)"
                    ),
                )
            return ir.Str(value=role)
        view = None
        if chain and isinstance(chain[0], ast.Index) and isinstance(chain[0].index, ast.Name):
            vname = chain[0].index.id
            if self.data.get(vname) is None or self.data[vname].kind != "view":
                views = [n for n, d in self.data.items() if d.kind == "view"]
                self.err(
                    "KD202",
                    f"unknown view `{vname}`",
                    chain[0].index.span,
                    "not a declared view",
                    help=did_you_mean(vname, views, declared=True) or f"declare it: `view {vname}`",
                )
            view = vname
            chain = chain[1:]
        fields: dict[str, object] = {"role": role, "view": view}
        if not chain:
            return ir.Tap(point="output", **fields)
        head, rest = chain[0], chain[1:]
        select: list[str | int] = []
        if isinstance(head, ast.Attr) and head.name.name in (
            "logits",
            "embedding",
            "input",
            "output",
        ):
            fields["point"] = head.name.name
            if head.name.name in ("logits", "embedding", "input") and rest:
                self.err(
                    "KD206",
                    f"`{head.name.name}` takes no further selector",
                    rest[0].span,
                    "unexpected here",
                    help=_TAP_HELP,
                )
                rest = []
        elif isinstance(head, ast.Attr) and head.name.name == "stage":
            fields["point"] = "stage"
            if not rest or not isinstance(rest[0], ast.Index):
                self.err(
                    "KD206",
                    "`stage` needs an index: `stage[2]` or `stage[1..3]`",
                    head.span,
                    "missing index",
                    help=_TAP_HELP,
                )
                return ir.Str(value=role)
            idx = rest[0].index
            if isinstance(idx, ast.Slice):
                fields.update(
                    first=self._const_int(idx.lo), last=self._const_int(idx.hi), is_range=True
                )
            else:
                k = self._const_int(idx)
                fields.update(first=k, last=k)
            rest = rest[1:]
        elif isinstance(head, ast.ModulePath):
            fields["point"] = "module"
            fields["module"] = head.path.value
        else:
            where = head.name.name if isinstance(head, ast.Attr) else "?"
            self.err(
                "KD206",
                f"`{where}` is not a tap point",
                getattr(head, "span", None),
                "unknown tap point",
                help=did_you_mean(where, ["logits", "embedding", "input", "output", "stage"])
                or _TAP_HELP,
            )
            return ir.Str(value=role)
        for acc in rest:
            if (
                isinstance(acc, ast.Attr)
                and acc.name.name in ("input", "output", "preact")
                and not select
                and fields["point"] in ("stage", "module")
            ):
                fields["io"] = acc.name.name
            elif isinstance(acc, ast.CallIndex) and fields["point"] in ("stage", "module"):
                if acc.n < 0:
                    self.err(
                        "KD206",
                        "a call index must be a whole number",
                        acc.span,
                        "not a whole number",
                        help="calls count from 0: `@0`, `@1`, ...",
                    )
                fields["call"] = max(acc.n, 0)
            elif isinstance(acc, ast.Attr):
                select.append(acc.name.name)
            elif isinstance(acc, ast.Index) and isinstance(acc.index, ast.String):
                select.append(acc.index.value)
            elif isinstance(acc, ast.Index) and not isinstance(acc.index, ast.Slice):
                k = self._const_int(acc.index)
                if k is not None:
                    select.append(k)
            else:
                self.err(
                    "KD206",
                    "unsupported selector in a tap",
                    getattr(acc, "span", None),
                    help=_TAP_HELP,
                )
        fields["select"] = tuple(select)
        return ir.Tap(**fields)

    def apply(self, e: ast.Apply, path: PathKey | None) -> ir.Expr:
        """``t.classifier(x)``: a role's module applied to values (KD206 for what is no module)."""

        def sub(*more: object) -> PathKey | None:
            return (*path, *more) if path is not None else None

        args = tuple(self.expr(a, path=sub("args", i)) for i, a in enumerate(e.args))
        module = e.module
        base = module.obj
        if isinstance(module, ast.Index) and isinstance(base, ast.Attr):
            base = base.obj  # `t.stage[2]`
        # After an error: a call the vocabulary lacks, keeping what the inputs read, so that
        # the type checks skip it (one root cause, one diagnostic).
        failed = ir.Call(func="?", args=args)
        if not isinstance(base, ast.Name):
            self.err(
                "KD206",
                "only a role's module can be applied: `t.classifier(x)`, `t.stage[2](x)`",
                module.span,
                "not a module of a role",
                help=_APPLY_HELP,
            )
            return failed
        role = base.id
        if role not in self.roles:
            if role in self.ensembles:
                self.err(
                    "KD206",
                    f"`{role}` is an ensemble, which has no modules of its own",
                    base.span,
                    help="apply a member's module: `t1.classifier(x)`",
                )
            else:
                self.tap(base)  # KD202 for an unknown role, KD206 for a let, said once
            return failed
        fields: dict[str, object] = {"role": role, "args": args}
        if isinstance(module, ast.Attr) and module.name.name == "classifier":
            fields["point"] = "classifier"
        elif isinstance(module, ast.ModulePath):
            fields.update(point="module", module=module.path.value)
        elif (
            isinstance(module, ast.Index)
            and isinstance(module.obj, ast.Attr)
            and module.obj.name.name == "stage"
            and isinstance(module.obj.obj, ast.Name)
            and not isinstance(module.index, ast.Slice)
        ):
            fields.update(point="stage", index=self._const_int(module.index))
        else:
            what = module.name.name if isinstance(module, ast.Attr) else None
            value = what in ("logits", "embedding", "input", "output")
            self.err(
                "KD206",
                f"`{role}.{what}` is a value, not a module"
                if value
                else "this names no module of a role"
                if what is None
                else f"`{what}` is not a module of a role",
                module.span,
                "not a module",
                help=(did_you_mean(what, ["classifier", "stage"]) if what else None) or _APPLY_HELP,
            )
            return failed
        if e.kwargs:
            self.err(
                "KD204",
                "a module applied takes its inputs by position only",
                e.kwargs[0].span,
                "keyword argument",
            )
        if not args:
            self.err("KD204", "a module applied needs an input", e.span, "missing input")
        return ir.Apply(**fields)

    # -- statements -------------------------------------------------------------------------

    def lower(self) -> ir.Method:
        body = self.m.body
        # Definitions first, so statements may refer to names defined further down.
        for st in body:
            if isinstance(st, ast.Param):
                if self.define("parameter", st.name):
                    self.params[st.name.name] = ir.Num(value=0.0)  # placeholder during lowering
                    self.smap.spans[("param", st.name.name)] = st.span
            elif isinstance(st, ast.Role):
                for ident in st.names:
                    if self.define(st.kind, ident):
                        self.roles[ident.name] = ir.Role(
                            name=ident.name,
                            kind=st.kind,
                            mode="frozen" if st.kind == "teacher" else "trained",
                        )
                        self.smap.spans[("role", ident.name)] = ident.span
            elif isinstance(st, ast.Ensemble):
                if self.define("ensemble", st.name):
                    self.ensembles[st.name.name] = ir.Ensemble(name=st.name.name, members=())
                    self.smap.spans[("ensemble", st.name.name)] = st.span
            elif isinstance(st, (ast.View, ast.Subset)):
                kind = "view" if isinstance(st, ast.View) else "subset"
                if self.define(kind, st.name):
                    self.data[st.name.name] = ir.DataPart(name=st.name.name, kind=kind)
                    self.smap.spans[("data", st.name.name)] = st.span
            elif isinstance(st, ast.Let):
                if self.define("let", st.name):
                    self.lets[st.name.name] = ir.Let(name=st.name.name, value=ir.Num(value=0))
                    self.smap.spans[("let", st.name.name)] = st.span
        for st in body:
            if isinstance(st, ast.Param):
                self.params[st.name.name] = self.expr(st.value, as_value=True)
        self.apply_overrides()
        cites: list[str] = []
        for st in body:
            if isinstance(st, ast.Cite):
                cites.append(st.text.value)
            elif isinstance(st, ast.Role):
                self.role(st)
            elif isinstance(st, ast.Ensemble):
                self.ensemble(st)
            elif isinstance(st, (ast.View, ast.Subset)):
                self.datapart(st)
            elif isinstance(st, ast.Let):
                self.lets[st.name.name] = ir.Let(
                    name=st.name.name, value=self.expr(st.value, path=("let", st.name.name))
                )
        for st in body:
            if isinstance(st, ast.Use):
                self.use(st)
        for st in body:
            if isinstance(st, (ast.Transfer, ast.Supervise)):
                self.term(st)
        for st in body:
            if isinstance(st, ast.Stage):
                self.stage(st)
            elif isinstance(st, ast.Claim):
                self.claim(st)
            elif isinstance(st, ast.Predict):
                self.predict(st)
        self.adopt_stages()
        return ir.Method(
            name=self.m.name.name,
            title=self.m.title.value if self.m.title else None,
            cites=tuple(cites),
            params=self.params,
            roles=tuple(self.roles.values()),
            ensembles=tuple(self.ensembles.values()),
            data=tuple(self.data.values()),
            lets=tuple(self.lets.values()),
            terms=tuple(self.terms.values()),
            stages=tuple(self.stages),
            claims=tuple(self.claims),
            uses=tuple(self.uses),
            folded_params=tuple(sorted(self.folded_params)),
            functions=self.defs.closure(self.used_defs) if self.defs is not None else (),
            predictions=self.predictions,
        )

    def adopt_stages(self) -> None:
        """A method without stages of its own runs the stages of the one method it uses."""
        if self.stages or len(self.used_stages) != 1:
            return
        _, stages, renamed, inline = self.used_stages[0]
        own = [n for n, t in self.terms.items() if t.origin is None]
        last_named = max((i for i, st in enumerate(stages) if st.losses), default=-1)
        for i, stage in enumerate(stages):
            kept = [renamed[n] for n in stage.losses if n in renamed]
            if stage.losses and not kept:
                continue  # none of the stage's terms were used (`only`)
            if stage.losses and i == last_named:
                kept += own  # this method's own terms join the used method's last stage
            self.stages.append(
                stage.model_copy(
                    update={
                        "losses": tuple(kept),
                        "duration": inline(stage.duration) if stage.duration else None,
                        "repeat": inline(stage.repeat) if stage.repeat else None,
                        "train": tuple(
                            ir.Str(value=renamed.get(e.value, e.value))
                            if isinstance(e, ir.Str)
                            else e
                            for e in stage.train
                        ),
                    }
                )
            )

    def apply_overrides(self) -> None:
        for name, value in self.overrides.items():
            if name not in self.params:
                self.diags.append(
                    error(
                        "KD209",
                        f"`{name}` is not a parameter of method `{self.m.name.name}`",
                        self.source,
                        self.m.name.span,
                        "method declared here",
                        help=did_you_mean(name, self.params, declared=True)
                        or f"parameters: {', '.join(self.params) or 'none'}",
                    )
                )
                continue
            if isinstance(value, ir.Num | ir.Str | ir.ListE | ir.ParamRef | ir.BinOp | ir.Neg):
                self.params[name] = value  # already an expression (from `use` arguments)
            elif isinstance(value, (bool, int | float)):
                self.params[name] = ir.Num(value=float(value))
            else:
                text = str(value)
                try:
                    self.params[name] = ir.Num(value=float(text))
                except ValueError:
                    self.params[name] = ir.Str(value=text)

    def role(self, st: ast.Role) -> None:
        for ident in st.names:
            if ident.name not in self.roles or self.defined[ident.name][1] != ident.span:
                continue
            role = self.roles[ident.name]
            mode: str = role.mode
            source, options, view = None, {}, None
            like: str | None = None
            size: str | None = None
            init_from: str | None = None
            for mod in st.mods:
                if mod.kind in ("frozen", "trained"):
                    mode = mod.kind
                elif mod.kind in ("like", "from") and mod.view is not None:
                    other = mod.view.name
                    if other not in self.roles or other == ident.name:
                        self.err(
                            "KD202",
                            f"unknown role `{other}`"
                            if other != ident.name
                            else f"`{ident.name}` cannot be `{mod.kind}` itself",
                            mod.view.span,
                            "not a role of this method" if other != ident.name else "itself",
                            help=did_you_mean(other, [r for r in self.roles if r != ident.name]),
                        )
                    elif mod.kind == "like":
                        like, size = other, mod.size
                    else:
                        init_from = other
                elif mod.kind == "sees" and mod.view is not None:
                    view = mod.view.name
                    part = self.data.get(view)
                    if part is None or part.kind != "view":
                        self.err(
                            "KD202",
                            f"unknown view `{view}`",
                            mod.view.span,
                            help=did_you_mean(view, self.data, declared=True)
                            or f"declare `view {view}`",
                        )
                elif mod.kind == "init" and mod.init is not None:
                    call = self.call(mod.init, categories=("role_init",))
                    mode = {"ema": "ema", "virtual": "virtual", "snapshot": "snapshot"}.get(
                        call.func, mode
                    )
                    if call.args:
                        first = call.args[0]
                        if (
                            isinstance(first, ir.Tap)
                            and first.point == "output"
                            and first.role in self.roles
                        ):
                            source = first.role
                        else:
                            self.err(
                                "KD211",
                                f"`{call.func}` takes a role",
                                mod.init.span,
                                help=f"e.g. `= {call.func}(s)`",
                            )
                    options = dict(call.kwargs)
            self.roles[ident.name] = ir.Role(
                name=ident.name,
                kind=role.kind,
                mode=mode,
                source=source,
                options=options,
                view=view,
                like=like,
                size=size,
                init_from=init_from,
            )

    def ensemble(self, st: ast.Ensemble) -> None:
        call = self.call(st.init, categories=("combine",))
        members = []
        for a in call.args:
            if isinstance(a, ir.Tap) and a.point == "output" and a.role in self.roles:
                members.append(a.role)
            else:
                self.err(
                    "KD211",
                    "an ensemble combines roles",
                    st.init.span,
                    help="e.g. `ensemble ts = mean(t1, t2, t3)`",
                )
        for kw in st.init.kwargs:
            if kw.name.name == "weights":
                self.smap.spans[("ensemble", st.name.name, "weights")] = getattr(
                    kw.value, "span", kw.span
                )
        # The weights stay an expression (parameters, overrides, schedules); the count, signs
        # and sum are checked by `check_values` like every other value.
        self.ensembles[st.name.name] = ir.Ensemble(
            name=st.name.name, members=tuple(members), weights=call.kwargs.get("weights")
        )

    def datapart(self, st: ast.View | ast.Subset) -> None:
        kind = "view" if isinstance(st, ast.View) else "subset"
        if st.init is None:
            return
        call = self.call(st.init, categories=(kind,))
        self.data[st.name.name] = ir.DataPart(
            name=st.name.name,
            kind=kind,
            func=call.func,
            args=tuple(self.expr(a, as_value=True) for a in st.init.args)
            if call.func in ("exclude_classes", "only_classes")
            else call.args,
            kwargs=call.kwargs,
        )

    def _term_name(self, st: ast.Transfer | ast.Supervise) -> str:
        if st.label is not None:
            return st.label.name
        if isinstance(st, ast.Transfer) and st.knowledge:
            base = st.knowledge[0].func.name
        elif isinstance(st, ast.Supervise) and st.loss.func.name == "cross_entropy":
            base = "ce"
        else:
            base = st.loss.func.name
        name, k = base, 2
        while name in self.terms or name in self.defined:
            name, k = f"{base}_{k}", k + 1
        return name

    def term(self, st: ast.Transfer | ast.Supervise) -> None:
        name = self._term_name(st)
        if st.label is not None and not self.define("term", st.label):
            return
        if st.label is None:
            self.defined[name] = ("term", st.span)
        key = ("term", name)
        self.smap.spans[key] = st.span
        loss = self.call(st.loss, categories=("loss",), implicit_inputs=2, path=(*key, "loss"))
        self.smap.spans[(*key, "loss")] = st.loss.span
        weight: ir.Expr = ir.Num(value=1.0)
        if st.weight is not None:
            self.smap.spans[(*key, "weight")] = st.weight.span
            weight = self.expr(st.weight, path=(*key, "weight"))
        subset = None
        if st.on is not None:
            subset = st.on.name
            part = self.data.get(subset)
            if part is None or part.kind != "subset":
                self.err(
                    "KD202",
                    f"unknown subset `{subset}`",
                    st.on.span,
                    help=did_you_mean(
                        subset,
                        [n for n, d in self.data.items() if d.kind == "subset"],
                        declared=True,
                    )
                    or f"declare it: `subset {subset}`",
                )
        self.smap.spans[(*key, "target")] = st.target.span
        target = self.expr(st.target, path=(*key, "target"))
        if isinstance(st, ast.Supervise):
            self.terms[name] = ir.Term(
                name=name, kind="supervise", target=target, loss=loss, weight=weight, subset=subset
            )
            return
        knowledge = []
        for i, k in enumerate(st.knowledge):
            self.smap.spans[(*key, "knowledge", i)] = k.span
            knowledge.append(
                self.call(
                    k,
                    categories=("transform", "primitive"),
                    implicit_inputs=1,
                    path=(*key, "knowledge", i),
                )
            )
        self.smap.spans[(*key, "source")] = st.source.span
        source = self.expr(st.source, path=(*key, "source"))
        mapping = None
        if st.mapping is not None:
            mapping = self.call(st.mapping, categories=("mapping",)).func
            self.smap.spans[(*key, "mapping")] = st.mapping.span
        self.terms[name] = ir.Term(
            name=name,
            kind="transfer",
            knowledge=tuple(knowledge),
            source=source,
            target=target,
            mapping=mapping,
            loss=loss,
            weight=weight,
            subset=subset,
        )

    def stage(self, st: ast.Stage) -> None:
        if not self.define("stage", st.name):
            return
        key = ("stage", st.name.name)
        self.smap.spans[key] = st.span
        duration = self.expr(st.duration) if st.duration is not None else None
        unit = _UNITS.get(st.unit or "") if st.unit else None
        if duration is not None and unit == "fraction":
            duration = ir.BinOp(op="/", left=duration, right=ir.Num(value=100.0))
        if st.duration is not None:
            self.smap.spans[(*key, "duration")] = st.duration.span
        repeat = self.expr(st.repeat) if st.repeat is not None else None
        if st.repeat is not None:
            self.smap.spans[(*key, "repeat")] = st.repeat.span
        train: list[ir.Expr] = []
        freeze: list[ir.Expr] = []
        losses: list[str] = []
        handoffs: list[tuple[str, str]] = []
        for item in st.items:
            if item.kind in ("train", "freeze"):
                bucket = train if item.kind == "train" else freeze
                for e in item.exprs:
                    self.smap.spans[(*key, item.kind, len(bucket))] = e.span
                    if isinstance(e, ast.Name) and e.id not in self.roles and e.id not in self.lets:
                        bucket.append(ir.Str(value=e.id))  # a term: its adapters (checked later)
                    else:
                        bucket.append(self.expr(e))
            elif item.kind == "losses":
                for ident in item.names:
                    self.smap.spans[(*key, "losses", len(losses))] = ident.span
                    losses.append(ident.name)
            elif item.kind == "handoff":
                src, dst = item.names
                self.smap.spans[(*key, "handoff", len(handoffs))] = item.span
                for ident in (src, dst):
                    if ident.name not in self.roles:
                        self.err(
                            "KD307",
                            f"unknown role `{ident.name}` in handoff",
                            ident.span,
                            help=did_you_mean(ident.name, self.roles, declared=True),
                        )
                handoffs.append((src.name, dst.name))
        self.stages.append(
            ir.Stage(
                name=st.name.name,
                duration=duration,
                unit=unit,
                repeat=repeat,
                train=tuple(train),
                freeze=tuple(freeze),
                losses=tuple(losses),
                handoffs=tuple(handoffs),
            )
        )

    def predict(self, st: ast.Predict) -> None:
        """``predict s = expr``: the role's deployed predictions (evaluation reads them)."""
        role = st.role.name
        self.smap.spans[("predict", role)] = st.span
        value = self.expr(st.value, path=("predict", role, "value"))
        if role not in self.roles:
            self.err(
                "KD202",
                f"unknown role `{role}`",
                st.role.span,
                "no such role",
                help=did_you_mean(role, list(self.roles), declared=True),
            )
            return
        if role in self.predictions and role not in self.used_predictions:
            self.err("KD201", f"`{role}` has two `predict` statements", st.span, "second one")
            return
        self.used_predictions.discard(role)
        self.predictions[role] = value

    def claim(self, st: ast.Claim) -> None:
        dim = st.dimension.name
        self.smap.spans[("claim", len(self.claims))] = st.span
        allowed = CLAIM_DIMENSIONS.get(dim)
        if allowed is None:
            self.err(
                "KD212",
                f"unknown taxonomy dimension `{dim}`",
                st.dimension.span,
                help=did_you_mean(dim, CLAIM_DIMENSIONS)
                or f"dimensions: {', '.join(CLAIM_DIMENSIONS)}",
            )
        else:
            for v in st.values:
                if v.name not in allowed:
                    self.err(
                        "KD212",
                        f"`{v.name}` is not a value of `{dim}`",
                        v.span,
                        help=did_you_mean(v.name, allowed) or f"values: {', '.join(allowed)}",
                    )
        self.claims.append(ir.Claim(dimension=dim, values=tuple(v.name for v in st.values)))

    # -- composition ------------------------------------------------------------------------

    def use(self, st: ast.Use) -> None:
        name = st.method.name
        self.smap.spans[("use", len(self.uses))] = st.span
        if name in self.stack:
            self.err(
                "KD208",
                f"method `{name}` uses itself",
                st.method.span,
                "cycle of `use`",
                notes=[" -> ".join([*self.stack, name])],
            )
            return
        found = self.finder(name) if self.finder else None
        if found is None:
            self.err(
                "KD208",
                f"unknown method `{name}`",
                st.method.span,
                "not in this file, its imports or the library",
            )
            return
        other_ast, other_source = found
        args: dict[str, object] = {}
        other_params = [s.name.name for s in other_ast.body if isinstance(s, ast.Param)]
        for pname, a in zip(other_params, st.args, strict=False):
            args[pname] = self.expr(a, as_value=True)
        for kw in st.kwargs:
            args[kw.name.name] = self.expr(kw.value, as_value=True)
        sub = _MethodLowering(
            other_ast,
            other_source,
            self.finder,
            args,
            (*self.stack, self.m.name.name),
            self.defs.for_source(other_source) if self.defs is not None else None,
        )
        other = sub.lower()
        if self.defs is not None:
            self.defs.adopt(other.functions)
            self.used_defs |= {f.name for f in other.functions}
        for d in sub.diags:  # problems inside the used method are reported at the `use`
            self.err(d.code, f"in `use {name}`: {d.message}", st.span, "used here", help=d.help)
        self.uses.append(name)
        alias = st.alias.name if st.alias else name
        inline = _Inliner(other.params, set(args))
        for role in other.roles:
            mine = self.roles.get(role.name)
            role = role.model_copy(
                update={"options": {k: inline(v) for k, v in role.options.items()}}
            )
            if mine is None:
                self.roles[role.name] = role
                self.defined.setdefault(role.name, ("role", st.span))
            elif mine.kind != role.kind:
                self.err(
                    "KD208",
                    f"role `{role.name}` is a {mine.kind} here but a {role.kind} in `{name}`",
                    st.span,
                )
        for ens in other.ensembles:
            self.ensembles.setdefault(ens.name, ens)
        for part in other.data:
            self.data.setdefault(
                part.name,
                part.model_copy(
                    update={
                        "args": tuple(inline(a) for a in part.args),
                        "kwargs": {k: inline(v) for k, v in part.kwargs.items()},
                    }
                ),
            )
        for let in other.lets:
            self.lets.setdefault(let.name, ir.Let(name=let.name, value=inline(let.value)))
        wanted = {i.name for i in st.only}
        renamed: dict[str, str] = {}
        for ident in st.only:
            if other.term(ident.name) is None:
                self.err(
                    "KD208",
                    f"method `{name}` has no term `{ident.name}`",
                    ident.span,
                    help=did_you_mean(ident.name, [t.name for t in other.terms], declared=True),
                )
        for t in other.terms:
            if wanted and t.name not in wanted:
                continue
            clash = t.name in self.defined or t.name in self.local_terms
            tname = f"{alias}_{t.name}" if clash else t.name
            renamed[t.name] = tname
            self.defined[tname] = ("term", st.span)
            self.smap.spans[("term", tname)] = st.span
            self.terms[tname] = t.model_copy(
                update={
                    "name": tname,
                    "origin": alias,
                    "weight": inline(t.weight),
                    "source": inline(t.source) if t.source else None,
                    "target": inline(t.target),
                    "loss": inline(t.loss),
                    "knowledge": tuple(inline(k) for k in t.knowledge),
                }
            )
        for who, value in other.predictions.items():  # a `predict` here replaces these
            if who not in self.predictions:
                self.predictions[who] = inline(value)
                self.used_predictions.add(who)
                self.smap.spans[("predict", who)] = st.span
        if other.stages:
            self.used_stages.append((name, other.stages, renamed, inline))


class _Inliner:
    """Replace a used method's parameter references by their values (its params vanish)."""

    def __init__(self, params: dict[str, ir.Expr], given: set[str]):
        self.params = params
        self.given = given  # values given by the caller are in the caller's scope: not inlined

    def __call__(self, e: Any) -> Any:  # an expression in, the same kind of node out
        return e.transform(self._replace)

    def _replace(self, e: ir.Expr) -> ir.Expr:
        if isinstance(e, ir.ParamRef) and e.name in self.params:
            value = self.params[e.name]
            return value if e.name in self.given else self(value)
        return e


IMPORT_ROOTS: ContextVar[tuple[Path, ...]] = ContextVar("IMPORT_ROOTS", default=())
"""Folders the person running kdspec allowed imports from (``--import-root``), besides the
spec's own folder and the library. Set by the command line, never by a file being read."""

_LIBRARY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")


def _shorten(text: str, limit: int = 80) -> str:
    text = text.replace("\0", "\\0")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve_import(value: str, source: SourceFile, library: Path | None) -> Path | str:
    """The real path of an `import` (symlinks resolved), or why it is refused.

    An import must name a file inside an allowed root: the importing spec's folder, the
    method library, or a folder given with ``--import-root``. Symlinks are resolved before the
    check, so a link cannot lead out of a root.
    """
    if "\0" in value:
        return "the path contains a NUL character"
    try:
        base = Path(source.name).parent.resolve()
        path = (base / value).resolve()
        roots = [base, *(r.resolve() for r in IMPORT_ROOTS.get())]
        if library is not None:
            roots.append(library.resolve())
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a name too long
        return getattr(exc, "strerror", None) or "the path cannot be resolved"
    if not any(path.is_relative_to(root) for root in roots):
        return "outside the spec's folder, the library and every --import-root"
    return path


def make_finder(module: ast.Module, source: SourceFile, library: Path | None) -> MethodFinder:
    """Find methods for `use`: this file first, then its imports, then the library."""
    from kdspec.syntax import try_parse

    local = {m.name.name: (m, source) for m in module.methods}
    imported: dict[str, tuple[ast.Method, SourceFile]] = {}
    for imp in module.imports:
        path = resolve_import(imp.path.value, source, library)
        if isinstance(path, str):
            continue
        try:
            other_src = SourceFile.read(path)
        except OSError:
            continue
        other, _ = try_parse(other_src)
        if other is None:
            continue
        for m in other.methods:
            imported[m.name.name] = (m, other_src)
            if imp.alias is not None:
                imported[f"{imp.alias.name}.{m.name.name}"] = (m, other_src)

    def find(name: str) -> tuple[ast.Method, SourceFile] | None:
        if name in local:
            return local[name]
        if name in imported:
            return imported[name]
        if library is not None and _LIBRARY_NAME.fullmatch(name):
            try:
                lib_src = SourceFile.read(library / f"{name}.kd")
            except OSError:
                return None
            lib, _ = try_parse(lib_src)
            if lib is not None:
                for m in lib.methods:
                    if m.name.name == name:
                        return m, lib_src
                if lib.methods:
                    return lib.methods[0], lib_src
        return None

    return find


def check_imports(
    module: ast.Module, source: SourceFile, library: Path | None = None
) -> list[Diagnostic]:
    """KD105 for every import that cannot be read or parsed."""
    from kdspec.syntax import try_parse

    diags = []
    for imp in module.imports:
        path = resolve_import(imp.path.value, source, library)
        if isinstance(path, str):  # refused before it is opened: nothing of it is ever quoted
            diags.append(
                error(
                    "KD105",
                    f"import `{_shorten(imp.path.value)}` is not allowed",
                    source,
                    imp.path.span,
                    path,
                    help="imports resolve inside the spec's folder and the method library; "
                    "allow another folder with `--import-root DIR`",
                )
            )
            continue
        try:
            other_src = SourceFile.read(path)
        except OSError as exc:
            diags.append(
                error(
                    "KD105",
                    f"cannot read imported file `{_shorten(imp.path.value)}`",
                    source,
                    imp.path.span,
                    exc.strerror or "unreadable",
                )
            )
            continue
        _, errs = try_parse(other_src)
        diags.extend(errs)
    return diags


def lower_module(
    module: ast.Module,
    source: SourceFile,
    overrides: dict[str, object] | None = None,
    library: Path | None = None,
) -> tuple[list[Lowered], list[Diagnostic]]:
    """Lower every method of a parsed file.

    Args:
        module: the syntax tree.
        source: its file (for spans and relative imports).
        overrides: parameter values from the command line, applied to every method.
        library: the directory searched for methods named in `use`.

    Returns:
        The lowered methods and every diagnostic found while lowering.
    """
    finder = make_finder(module, source, library)
    diags = check_imports(module, source, library)
    defs = DefTable.for_module(module, source, library)
    out = []
    for m in module.methods:
        lowering = _MethodLowering(m, source, finder, dict(overrides or {}), (), defs)
        method = lowering.lower()
        diags.extend(lowering.diags)
        out.append(Lowered(method, lowering.smap))
    defs.lower_all()  # a def no method calls is still checked
    diags.extend(defs.diags)
    return out, diags


# ---------------------------------------------------------------------------------------------
# User-defined functions
# ---------------------------------------------------------------------------------------------


class _FunctionLowering(_MethodLowering):
    """Lowers a ``def`` body: its parameters are ``ArgRef``s, its lets are inlined."""

    def __init__(self, fn: ast.Function, source: SourceFile, defs: DefTable):
        shell = ast.Method(fn.name, None, ())
        super().__init__(shell, source, None, {}, (), defs)
        self.fn = fn
        self.arg_names = {p.name.name for p in fn.params}
        self.first_input = next((p.name.name for p in fn.params if p.default is None), None)
        self.local: dict[str, ir.Expr] = {}

    def name(self, e: ast.Name, *, as_value: bool = False) -> ir.Expr:
        n = e.id
        if n in self.arg_names:
            return ir.ArgRef(name=n)
        if n in self.local:
            return self.local[n]
        return super().name(e, as_value=as_value)

    def is_value_name(self, name: str) -> bool:
        return name in self.arg_names or name in self.local

    def is_keyword_param(self, name: str) -> bool:
        return any(p.name.name == name and p.default is not None for p in self.fn.params)

    def shape_value(self, e: ast.Name) -> ir.Expr | None:
        if e.id in VALUE_SHAPES and self.first_input is not None:
            axis, part = VALUE_SHAPES[e.id]
            kwargs: dict[str, ir.Expr] = {"over": ir.Str(value=axis)}
            if part is not None:
                kwargs["part"] = ir.Num(value=float(part))
            return ir.Call(func="size", args=(ir.ArgRef(name=self.first_input),), kwargs=kwargs)
        return super().shape_value(e)

    def lower_function(self) -> ir.FunctionDef:
        fn = self.fn
        params: list[ir.FunctionParam] = []
        seen: set[str] = set()
        keyword_seen = False
        for p in fn.params:
            if p.name.name in seen:
                self.err(
                    "KD213",
                    f"`{fn.name.name}` has two parameters called `{p.name.name}`",
                    p.name.span,
                    "repeated here",
                )
                continue
            seen.add(p.name.name)
            if p.default is None and keyword_seen:
                self.err(
                    "KD213",
                    f"tensor parameter `{p.name.name}` after a parameter with a default",
                    p.span,
                    "no default here",
                    help="put the tensor inputs first: `def f(x, y, T=4) = ...`",
                )
            keyword_seen = keyword_seen or p.default is not None
            default = self.expr(p.default, as_value=True) if p.default is not None else None
            params.append(ir.FunctionParam(name=p.name.name, default=default))
        for let in fn.lets:
            if let.name.name in self.local or let.name.name in self.arg_names:
                self.err("KD201", f"`{let.name.name}` is defined twice", let.name.span)
            self.local[let.name.name] = self.expr(let.value)
        body = self.expr(fn.body)
        return ir.FunctionDef(name=fn.name.name, params=tuple(params), body=body)


def _prelude_files() -> list[Path]:
    folder = Path(__file__).resolve().parents[1] / "prelude"
    return sorted(folder.glob("*.kd")) if folder.is_dir() else []


_DefsOfFile = tuple[dict[str, tuple[ast.Function, SourceFile]], list[Diagnostic]]
_PRELUDE_CACHE: dict[tuple[str, float], _DefsOfFile] = {}


def _module_defs(path: Path) -> _DefsOfFile:
    """The defs of a file (cached by modification time): the prelude, imported files."""
    from kdspec.syntax import try_parse

    try:
        key = (str(path), path.stat().st_mtime)
    except OSError:
        return {}, []
    if key not in _PRELUDE_CACHE:
        try:
            src = SourceFile.read(path)
        except OSError:
            return {}, []
        module, errs = try_parse(src)
        found = {f.name.name: (f, src) for f in module.functions} if module else {}
        _PRELUDE_CACHE[key] = (found, errs)
    return _PRELUDE_CACHE[key]


class DefTable:
    """Every ``def`` a file can call: its own, its imports', the prelude's; lowered on demand.

    A def is lowered once, in its own file (so its diagnostics point into that file); a def
    that reaches itself through its calls is KD215 and is left out of every method.
    """

    def __init__(self) -> None:
        self.asts: dict[str, tuple[ast.Function, SourceFile]] = {}
        self.lowered: dict[str, ir.FunctionDef] = {}
        self.recursive: set[str] = set()
        self.stack: list[str] = []
        self.diags: list[Diagnostic] = []
        self.local: set[str] = set()  # defined in the checked file itself

    @classmethod
    def for_module(
        cls, module: ast.Module, source: SourceFile, library: Path | None = None
    ) -> DefTable:
        table = cls()
        for path in _prelude_files():
            found, errs = _module_defs(path)
            table.asts.update(found)
            table.diags.extend(errs)
        for imp in module.imports:
            target = resolve_import(imp.path.value, source, library)
            if isinstance(target, str):  # refused (KD105 from check_imports): never read
                continue
            found, _ = _module_defs(target)
            table.asts.update(found)
        for fn in module.functions:
            name = fn.name.name
            if name in FUNCTIONS:
                table.diags.append(
                    error(
                        "KD201",
                        f"`{name}` is a built-in function of the language",
                        source,
                        fn.name.span,
                        "redefined here",
                        help="give your function another name",
                    )
                )
                continue
            if name in table.local:
                prior = table.asts[name][0]
                table.diags.append(
                    error(
                        "KD201",
                        f"`{name}` is defined twice",
                        source,
                        fn.name.span,
                        "redefined here",
                        related=[Label(prior.name.span, "first defined here", primary=False)],
                    )
                )
                continue
            table.local.add(name)
            table.asts[name] = (fn, source)
        return table

    def for_source(self, source: SourceFile) -> DefTable:
        """The table a method of another file (reached by `use`) sees: that file's defs too."""
        path = Path(source.name)
        if not path.is_file():
            return self
        found, _ = _module_defs(path.resolve())
        for name, entry in found.items():
            self.asts.setdefault(name, entry)
        return self

    def has(self, name: str) -> bool:
        return name in self.asts

    def adopt(self, functions: tuple[ir.FunctionDef, ...]) -> None:
        for f in functions:
            self.lowered.setdefault(f.name, f)

    def lower(self, name: str, span: Span | None, source: SourceFile) -> ir.FunctionDef | None:
        """The lowered def, or None if it recurses (KD215, reported at ``span``)."""
        if name in self.stack:
            cycle = [*self.stack[self.stack.index(name) :], name]
            self.recursive.update(cycle)
            self.diags.append(
                error(
                    "KD215",
                    f"function `{name}` calls itself",
                    source,
                    span,
                    "recursive call",
                    notes=[" -> ".join(cycle)],
                    help="functions are expanded where they are called, so they cannot recurse",
                )
            )
            return None
        if name in self.lowered:
            return None if name in self.recursive else self.lowered[name]
        fn, fsource = self.asts[name]
        self.stack.append(name)
        try:
            lowering = _FunctionLowering(fn, fsource, self)
            fdef = lowering.lower_function()
        finally:
            self.stack.pop()
        self.diags.extend(lowering.diags)
        self.lowered[name] = fdef
        return None if name in self.recursive else fdef

    def lower_all(self) -> None:
        for name in sorted(self.local):
            if name not in self.lowered and name not in self.stack:
                fn, src = self.asts[name]
                self.lower(name, fn.name.span, src)

    def closure(self, names: set[str]) -> tuple[ir.FunctionDef, ...]:
        """The defs named, and every def they call, in a stable order; recursive ones left out."""
        from kdspec.ir.functions import calls

        out: dict[str, ir.FunctionDef] = {}
        todo = sorted(names)
        while todo:
            n = todo.pop()
            if n in out or n in self.recursive or n not in self.lowered:
                continue
            out[n] = self.lowered[n]
            todo.extend(c for c in calls(out[n].body) if c in self.lowered)
            for p in out[n].params:
                todo.extend(c for c in calls(p.default) if c in self.lowered)
        return tuple(out[n] for n in sorted(out))
