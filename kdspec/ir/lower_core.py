"""What every part of lowering shares: the source map, the lowered method, name suggestions,
and :class:`LoweringState`, the state of one method's lowering (the base of its parts:
:mod:`kdspec.ir.lower` for expressions and statements, :mod:`kdspec.ir.lower_taps` for taps,
:mod:`kdspec.ir.compose` for `use`)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kdspec.diagnostics import Diagnostic, Label, Severity, error
from kdspec.ir import models as ir
from kdspec.source import SourceFile, Span
from kdspec.syntax import ast

if TYPE_CHECKING:
    from kdspec.ir.compose import Inliner
    from kdspec.ir.lower import DefTable


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


def a_or_an(noun: str) -> str:
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
        # the distance is at least the difference in length: a 5,000-character name costs
        # nothing (computed, each candidate would cost 5,000 x its length steps)
        if abs(len(cand) - len(name)) > budget or _digits(cand) != _digits(name):
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


def shorten(text: str, limit: int = 80) -> str:
    text = text.replace("\0", "\\0")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class LoweringState:
    """One method being lowered: what it declared so far, its diagnostics and source map."""

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
        self.used_stages: list[tuple[str, tuple[ir.Stage, ...], dict[str, str], Inliner]] = []
        self.folded_params: set[str] = set()

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

    def expr(self, e: ast.Expr, *, as_value: bool = False, path: PathKey | None = None) -> ir.Expr:
        """Lower an expression (see :class:`kdspec.ir.lower._MethodLowering`)."""
        raise NotImplementedError

    def lower(self) -> ir.Method:
        """Lower the whole method (see :class:`kdspec.ir.lower._MethodLowering`)."""
        raise NotImplementedError
