"""Lower the syntax tree to the IR: resolve names, check calls against the vocabulary.

Lowering never stops at the first problem: every unresolved name, unknown function or bad
argument becomes a diagnostic and a placeholder in the IR, so later passes still run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdspec.diagnostics import Diagnostic, Label, error
from kdspec.ir import models as ir
from kdspec.ir.compose import (
    IMPORT_ROOTS,
    Composition,
    ParsedFile,
    check_imports,
    make_finder,
    module_defs,
    parse_file,
    prelude_files,
    resolve_import,
)
from kdspec.ir.evaluate import EvalError, evaluate
from kdspec.ir.lower_core import (
    Lowered,
    PathKey,
    SourceMap,
    a_or_an,
    did_you_mean,
    shorten,
)
from kdspec.ir.lower_taps import TapLowering
from kdspec.ir.traverse import transform
from kdspec.source import SourceFile, Span
from kdspec.syntax import ast
from kdspec.vocabulary import (
    ALIASES,
    CLAIM_DIMENSIONS,
    FUNCTIONS,
    PRELUDE_IMPL,
    REQUIRED,
    Fn,
    by_category,
)
from kdspec.vocabulary.axes import AXES, AXIS_SETS, BASE_AXES

__all__ = [
    "IMPORT_ROOTS",
    "DefTable",
    "Lowered",
    "ParsedFile",
    "SourceMap",
    "check_imports",
    "did_you_mean",
    "lower_module",
    "make_finder",
    "parse_file",
    "resolve_import",
]


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


class _MethodLowering(TapLowering, Composition):
    """Lowers one method: expressions, calls, roles, terms, stages, claims (taps in
    :mod:`kdspec.ir.lower_taps`, `use` in :mod:`kdspec.ir.compose`)."""

    # -- helpers ----------------------------------------------------------------------------

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
                    f"the number `{shorten(e.text, 40)}` is too large for a float",
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
        """A call of the vocabulary (or of a `def`) in one of ``categories``, checked."""
        fname = e.func.name
        fn = FUNCTIONS.get(fname)
        if fn is None and self.defs is not None and self.defs.has(fname):
            return self.def_call(e, implicit_inputs, path)
        if fn is None:
            return self._unknown_call(e, categories)
        if fn.category not in categories:
            wanted = " or ".join(categories)
            self.err(
                "KD203",
                f"`{fname}` is {a_or_an(fn.category)}, not {a_or_an(wanted)}",
                e.func.span,
                f"{a_or_an(fn.category)} here",
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
        self._call_keywords(e, fn, kwargs, sub)
        self._check_call_inputs(e, fn, len(args), n_inputs, kwargs)
        if fn.impl.startswith(PRELUDE_IMPL) and self.defs is not None:
            # Written in kdspec itself: the method carries the prelude def, and the compiler
            # expands the call as a user def's; its facts stay those of the vocabulary.
            if self.defs.lower(fname, e.func.span, self.source) is not None:
                self.used_defs.add(fname)
        return ir.Call(func=fname, args=args, kwargs=kwargs)

    def _unknown_call(self, e: ast.Call, categories: tuple[str, ...]) -> ir.Call:
        """KD203 for a function the vocabulary lacks; the call keeps what it reads."""
        fname = e.func.name
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

    def _call_keywords(
        self,
        e: ast.Call,
        fn: Fn,
        kwargs: dict[str, ir.Expr],
        sub: Callable[..., PathKey | None],
    ) -> None:
        """The keyword arguments of a call into ``kwargs`` (KD204 for unknown or repeated)."""
        fname = e.func.name
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

    def _check_call_inputs(
        self, e: ast.Call, fn: Fn, n_args: int, n_inputs: int, kwargs: dict[str, ir.Expr]
    ) -> None:
        """KD204 for missing tensor inputs and missing required parameters."""
        fname = e.func.name
        if fn.inputs > 0 and n_args < n_inputs - fn.optional_inputs:
            self.err(
                "KD204",
                f"`{fname}` needs {n_inputs - fn.optional_inputs} "
                f"input{'s' * (n_inputs - fn.optional_inputs > 1)}, got {n_args}",
                e.span,
                "missing input",
            )
        if fn.inputs < 0 and fn.category == "primitive" and not n_args:
            self.err("KD204", f"`{fname}` needs at least one input", e.span, "no input")
        for pname, p in fn.params.items():
            if p.default is REQUIRED and pname not in kwargs:
                self.err(
                    "KD204",
                    f"`{fname}` needs the parameter `{pname}`",
                    e.span,
                    f"missing `{pname}=`",
                )

    # -- statements -------------------------------------------------------------------------

    def break_let_cycles(self) -> None:
        """KD215 for a `let` defined through itself (directly or through other lets): typing,
        evaluating or compiling it would never end. After the error, the let reads those lets
        as unresolved names (as an unknown name is read: later checks skip them)."""
        reads = {
            name: [n.name for n in ir.walk(let.value) if isinstance(n, ir.LetRef)]
            for name, let in self.lets.items()
        }
        cyclic: dict[str, list[str]] = {}
        for start in self.lets:
            stack, seen = [(start, [start])], set()
            while stack and start not in cyclic:
                name, way = stack.pop()
                for nxt in reads.get(name, []):
                    if nxt == start:
                        cyclic[start] = [*way, start]
                    elif nxt not in seen:
                        seen.add(nxt)
                        stack.append((nxt, [*way, nxt]))
        reported: set[str] = set()
        for name, cycle in cyclic.items():
            if name in reported:  # one cycle, one diagnostic (at its first let)
                continue
            reported.update(cycle)
            self.err(
                "KD215",
                f"`let {name}` is defined through itself",
                self.smap.spans.get(("let", name)),
                "defined through itself",
                notes=[" -> ".join(cycle)],
                help="a `let` names a value computed once; give the inner use another name",
            )

        def unresolved(n: Any) -> Any:
            return ir.ParamRef(name=n.name) if isinstance(n, ir.LetRef) and n.name in cyclic else n

        for name in cyclic:
            self.lets[name] = ir.Let(name=name, value=transform(self.lets[name].value, unresolved))

    def lower(self) -> ir.Method:
        """The method's IR: names first, then parameters, declarations, `use`, terms, stages."""
        body = self.m.body
        self.declare_names()
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
        self.break_let_cycles()
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
        return self.assemble(cites)

    def declare_names(self) -> None:
        """Definitions first, so statements may refer to names defined further down."""
        for st in self.m.body:
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

    def assemble(self, cites: list[str]) -> ir.Method:
        """The lowered parts, assembled."""
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
        """Each role of the statement with its modifiers (mode, `like`, `from`, `sees`, init)."""
        for ident in st.names:
            if ident.name not in self.roles or self.defined[ident.name][1] != ident.span:
                continue
            role = self.roles[ident.name]
            fields: dict[str, Any] = {
                "mode": role.mode,
                "source": None,
                "options": {},
                "view": None,
                "like": None,
                "size": None,
                "init_from": None,
            }
            for mod in st.mods:
                self.role_modifier(ident, mod, fields)
            self.roles[ident.name] = ir.Role(name=ident.name, kind=role.kind, **fields)

    def role_modifier(self, ident: ast.Ident, mod: ast.RoleMod, fields: dict[str, Any]) -> None:
        """One modifier of role ``ident`` into its ``fields`` (KD202 for unknown names)."""
        if mod.kind in ("frozen", "trained"):
            fields["mode"] = mod.kind
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
                fields["like"], fields["size"] = other, mod.size
            else:
                fields["init_from"] = other
        elif mod.kind == "sees" and mod.view is not None:
            view = fields["view"] = mod.view.name
            part = self.data.get(view)
            if part is None or part.kind != "view":
                self.err(
                    "KD202",
                    f"unknown view `{view}`",
                    mod.view.span,
                    help=did_you_mean(view, self.data, declared=True) or f"declare `view {view}`",
                )
        elif mod.kind == "init" and mod.init is not None:
            self.role_init(mod.init, fields)

    def role_init(self, init: ast.Call, fields: dict[str, Any]) -> None:
        """``= ema(s, decay=...)`` and the like: the mode, the source role, the options."""
        call = self.call(init, categories=("role_init",))
        modes = {"ema": "ema", "virtual": "virtual", "snapshot": "snapshot"}
        fields["mode"] = modes.get(call.func, fields["mode"])
        if call.args:
            first = call.args[0]
            if isinstance(first, ir.Tap) and first.point == "output" and first.role in self.roles:
                fields["source"] = first.role
            else:
                self.err(
                    "KD211",
                    f"`{call.func}` takes a role",
                    init.span,
                    help=f"e.g. `= {call.func}(s)`",
                )
        fields["options"] = dict(call.kwargs)

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
        subset = self.term_subset(st.on) if st.on is not None else None
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

    def term_subset(self, on: ast.Ident) -> str:
        """The subset a term is computed on (``on hard``); KD202 when none is declared."""
        subset = on.name
        part = self.data.get(subset)
        if part is None or part.kind != "subset":
            self.err(
                "KD202",
                f"unknown subset `{subset}`",
                on.span,
                help=did_you_mean(
                    subset,
                    [n for n, d in self.data.items() if d.kind == "subset"],
                    declared=True,
                )
                or f"declare it: `subset {subset}`",
            )
        return subset

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
        point = self._applied_module(module, role)
        if point is None:
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
        return ir.Apply(role=role, args=args, **point)

    def _applied_module(self, module: ast.Expr, role: str) -> dict[str, object] | None:
        """Which module of ``role`` an applied module names (KD206 when it names none)."""
        fields: dict[str, object] = {}
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
            return None
        return fields

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


# The prelude's defs lowered once per process (they call only each other), by name and the
# text of their file: as many entries as the prelude has defs.
_PRELUDE_LOWERED: dict[
    tuple[str, str, int], tuple[ir.FunctionDef, list[Diagnostic], tuple[str, ...]]
] = {}


def _called(f: ir.FunctionDef) -> tuple[str, ...]:
    """The functions a def calls, in its body and its defaults, each once."""
    from kdspec.ir.functions import calls

    found = calls(f.body) + [c for p in f.params for c in calls(p.default)]
    return tuple(dict.fromkeys(found))


def _prelude_sources() -> frozenset[str]:
    return frozenset(str(path) for path in prelude_files())


def prelude_names() -> frozenset[str]:
    """The names of every def of the prelude (its vocabulary functions and `_` helpers)."""
    return frozenset(name for path in prelude_files() for name in module_defs(path)[0])


class DefTable:
    """Every ``def`` a file can call: its own, its imports', the prelude's; lowered on demand.

    A def is lowered once, in its own file (so its diagnostics point into that file); a def
    that reaches itself through its calls is KD215 and is left out of every method.
    """

    def __init__(self) -> None:
        self.asts: dict[str, tuple[ast.Function, SourceFile]] = {}
        self.lowered: dict[str, ir.FunctionDef] = {}
        self.recursive: set[str] = set()
        self.callees: dict[str, tuple[str, ...]] = {}  # what each lowered def calls
        self.stack: list[str] = []
        self.diags: list[Diagnostic] = []
        self.local: set[str] = set()  # defined in the checked file itself

    @classmethod
    def for_module(
        cls, module: ast.Module, source: SourceFile, library: Path | None = None
    ) -> DefTable:
        table = cls()
        for path in prelude_files():
            found, errs = module_defs(path)
            table.asts.update(found)
            table.diags.extend(errs)
        for imp in module.imports:
            target = resolve_import(imp.path.value, source, library)
            if isinstance(target, str):  # refused (KD105 from check_imports): never read
                continue
            found, _ = module_defs(target)
            table.asts.update(found)
        for fn in module.functions:
            name = fn.name.name
            if name in FUNCTIONS or name in prelude_names():  # the prelude's helpers too
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
        found, _ = module_defs(path.resolve())
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
        key = (name, fsource.name, hash(fsource.text))  # a str caches its hash
        cached = _PRELUDE_LOWERED.get(key)
        if cached is not None:
            return self._adopt_prelude(name, *cached, source)
        self.stack.append(name)
        try:
            lowering = _FunctionLowering(fn, fsource, self)
            fdef = lowering.lower_function()
        finally:
            self.stack.pop()
        self.diags.extend(lowering.diags)
        self.lowered[name] = fdef
        self.callees[name] = _called(fdef)
        if not self.recursive and fsource.name in _prelude_sources():
            _PRELUDE_LOWERED[key] = (fdef, list(lowering.diags), self.callees[name])
        return None if name in self.recursive else fdef

    def _adopt_prelude(
        self,
        name: str,
        fdef: ir.FunctionDef,
        diags: list[Diagnostic],
        callees: tuple[str, ...],
        source: SourceFile,
    ) -> ir.FunctionDef:
        """A prelude def lowered by an earlier spec of this process, with the defs it calls."""
        self.lowered[name] = fdef
        self.callees[name] = callees
        self.diags.extend(diags)
        for c in callees:
            if c in self.asts and c not in self.lowered:
                self.lower(c, None, source)
        return fdef

    def lower_all(self) -> None:
        for name in sorted(self.local):
            if name not in self.lowered and name not in self.stack:
                fn, src = self.asts[name]
                self.lower(name, fn.name.span, src)

    def closure(self, names: set[str]) -> tuple[ir.FunctionDef, ...]:
        """The defs named, and every def they call, in a stable order; recursive ones left out."""
        out: dict[str, ir.FunctionDef] = {}
        todo = sorted(names)
        while todo:
            n = todo.pop()
            if n in out or n in self.recursive or n not in self.lowered:
                continue
            out[n] = self.lowered[n]
            if n not in self.callees:  # adopted from another table (`use`)
                self.callees[n] = _called(out[n])
            todo.extend(c for c in self.callees[n] if c in self.lowered)
        return tuple(out[n] for n in sorted(out))
