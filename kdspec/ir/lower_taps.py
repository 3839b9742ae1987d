"""Lowering taps: ``role.logits``, ``role.stage[k]``, ``role."module.path".output``, views and
ranges, checked against the roles, views and parameters a method declares."""

from __future__ import annotations

from kdspec.ir import models as ir
from kdspec.ir.lower_core import LoweringState, did_you_mean
from kdspec.syntax import ast

_TAP_HELP = (
    "a tap reads `role.logits`, `role.embedding`, `role.input`, `role.output[...]`, "
    '`role.stage[k]` or `role."module.path"`, optionally followed by `.input`, `.output` '
    "or `.preact`"
)


class TapLowering(LoweringState):
    """The tap part of a method's lowering."""

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
        """A tap (``s.stage[2].output``, ``t[clean].logits``...); ``ir.Str`` after an error."""
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
        if not self._known_role(base):
            return ir.Str(value=role)
        view = None
        if chain and isinstance(chain[0], ast.Index) and isinstance(chain[0].index, ast.Name):
            view = self._tap_view(chain[0].index)
            chain = chain[1:]
        fields: dict[str, object] = {"role": role, "view": view}
        if not chain:
            return ir.Tap(point="output", **fields)
        rest = self._tap_point(chain[0], chain[1:], fields)
        if rest is None:
            return ir.Str(value=role)
        fields["select"] = self._tap_selectors(rest, fields)
        return ir.Tap(**fields)

    def _known_role(self, base: ast.Name) -> bool:
        """Whether a tap's first word is a role or an ensemble (KD206/KD202 when not)."""
        role = base.id
        if role in self.roles or role in self.ensembles:
            return True
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
        return False

    def _tap_view(self, name: ast.Name) -> str:
        """The view a tap reads (``t[clean]``); KD202 when no such view is declared."""
        vname = name.id
        if self.data.get(vname) is None or self.data[vname].kind != "view":
            views = [n for n, d in self.data.items() if d.kind == "view"]
            self.err(
                "KD202",
                f"unknown view `{vname}`",
                name.span,
                "not a declared view",
                help=did_you_mean(vname, views, declared=True) or f"declare it: `view {vname}`",
            )
        return vname

    def _tap_point(
        self, head: ast.Expr, rest: list[ast.Expr], fields: dict[str, object]
    ) -> list[ast.Expr] | None:
        """The tap point ``head`` names into ``fields``; the selectors left, None on an error."""
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
                return None
            idx = rest[0].index
            if isinstance(idx, ast.Slice):
                fields.update(
                    first=self._const_int(idx.lo), last=self._const_int(idx.hi), is_range=True
                )
            else:
                k = self._const_int(idx)
                fields.update(first=k, last=k)
            rest = rest[1:]
            if rest and isinstance(rest[0], ast.ModulePath):  # `stage[-1]."attn.query"`
                fields["module"] = rest[0].path.value
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
            return None
        return rest

    def _tap_selectors(
        self, rest: list[ast.Expr], fields: dict[str, object]
    ) -> tuple[str | int, ...]:
        """``.output``/``.preact``, ``@k`` calls (into ``fields``) and the selected parts."""
        select: list[str | int] = []
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
        return tuple(select)
