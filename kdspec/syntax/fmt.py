"""Syntax tree to canonical text: the inverse of parsing (``kdspec fmt``).

One layout, chosen so that ``parse(format_text(x)) == parse(x)`` and formatting is idempotent:

- two spaces of indentation per ``{ }`` block, one statement or stage item per line;
- canonical spacing (``a * b``, ``T^2``, ``t.stage[1..3]``, ``f(x, T=4)``, ``for 25%``), numbers
  as written, strings re-quoted, and only the parentheses that precedence needs;
- a ``transfer`` or ``supervise`` longer than :data:`MAX_WIDTH` breaks before each clause;
- no comment is ever lost: a comment after a statement on its line stays there, a comment inside
  a statement moves above it, any other comment stays a full-line comment where it was;
- one blank line is kept where the source had at least one, and one always separates methods.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kdspec.diagnostics import KdError
from kdspec.source import SourceFile
from kdspec.syntax import ast, try_parse

__all__ = ["MAX_WIDTH", "format_expr", "format_module", "format_text", "quote"]

MAX_WIDTH = 100
INDENT = "  "
CONTINUATION = "    "

# Binding strength, loosest first; mirrors the `?comparison`, `?sum`, ... chain of the grammar.
_COND, _COMPARE, _SUM, _PRODUCT, _UNARY, _POWER, _POSTFIX, _ATOM = range(0, 8)

# op: (precedence of the result, least precedence of the left operand, ... of the right operand)
_BINARY = {
    "+": (_SUM, _SUM, _PRODUCT),
    "-": (_SUM, _SUM, _PRODUCT),
    "*": (_PRODUCT, _PRODUCT, _UNARY),
    "/": (_PRODUCT, _PRODUCT, _UNARY),
    "^": (_POWER, _POSTFIX, _UNARY),  # right-associative: `a^b^c` is `a^(b^c)`
    **{op: (_COMPARE, _SUM, _SUM) for op in ("<", ">", "<=", ">=", "==", "!=")},
}

_BLANK_LINE = re.compile(r"\n[ \t\f\r]*\n")


# ---------------------------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------------------------


def quote(value: str) -> str:
    r"""A string literal that parses back to ``value``, escaping as little as possible.

    A backslash is doubled only where it would otherwise escape what follows it (a quote, a
    backslash, or the closing quote): the parser keeps other escapes as written, so ``"\n"``
    stays ``"\n"``.

    Example:
        >>> print(quote('say "hi"'))
        "say \"hi\""
        >>> print(quote("C:\\specs\\"))
        "C:\specs\\"
    """
    out = []
    for i, ch in enumerate(value):
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            following = value[i + 1 : i + 2]
            out.append("\\\\" if following in ('"', "\\", "") else "\\")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _number(node: ast.Number) -> str:
    return node.text or repr(node.value)


def _args(args: Sequence[ast.Expr], kwargs: Sequence[ast.Kwarg]) -> str:
    parts = [format_expr(a) for a in args]
    parts.extend(f"{k.name.name}={format_expr(k.value)}" for k in kwargs)
    return ", ".join(parts)


def _call(node: ast.Call) -> str:
    """A call atom: the parentheses are part of the syntax (``f()``)."""
    return f"{node.func.name}({_args(node.args, node.kwargs)})"


def _func(node: ast.Call) -> str:
    """A loss, knowledge or mapping: ``kl`` and ``kl()`` are the same, printed ``kl``."""
    if not node.args and not node.kwargs:
        return node.func.name
    return _call(node)


def _with_prec(node: ast.Expr | ast.Slice) -> tuple[str, int]:
    match node:
        case ast.Number():
            return _number(node), _ATOM
        case ast.String():
            return quote(node.value), _ATOM
        case ast.Name():
            return node.id, _ATOM
        case ast.Call():
            return _call(node), _ATOM
        case ast.ListExpr():
            return "[" + ", ".join(format_expr(i) for i in node.items) + "]", _ATOM
        case ast.Attr():
            return f"{_operand(node.obj, _POSTFIX)}.{node.name.name}", _POSTFIX
        case ast.ModulePath():
            return f"{_operand(node.obj, _POSTFIX)}.{quote(node.path.value)}", _POSTFIX
        case ast.Index():
            return f"{_operand(node.obj, _POSTFIX)}[{format_expr(node.index)}]", _POSTFIX
        case ast.Apply():
            module, _ = _with_prec(node.module)
            return f"{module}({_args(node.args, node.kwargs)})", _POSTFIX
        case ast.CallIndex():
            index = node.n if node.n >= 0 else node.text  # keep a bad index as written
            return f"{_operand(node.obj, _POSTFIX)}@{index}", _POSTFIX
        case ast.Neg():
            return "-" + _operand(node.operand, _UNARY), _UNARY
        case ast.Cond():
            parts = (format_expr(node.cond), format_expr(node.then), format_expr(node.orelse))
            return "if {} then {} else {}".format(*parts), _COND
        case ast.BinOp():
            prec, left, right = _BINARY[node.op]
            sep = "" if node.op == "^" else " "
            text = f"{_operand(node.left, left)}{sep}{node.op}{sep}{_operand(node.right, right)}"
            return text, prec
        case ast.Slice():
            # `t.stage[1..3]`, but `t.stage[1 .. n + 1]`: spaced when a bound is an operation.
            bounds = [b for b in (node.lo, node.hi) if b is not None]
            dots = " .. " if any(isinstance(b, ast.BinOp) for b in bounds) else ".."
            lo = format_expr(node.lo) if node.lo is not None else ""
            hi = format_expr(node.hi) if node.hi is not None else ""
            return f"{lo}{dots}{hi}".strip(), _ATOM
    raise TypeError(f"not an expression node: {type(node).__name__}")


def _operand(node: ast.Expr, least: int) -> str:
    text, prec = _with_prec(node)
    return f"({text})" if prec < least else text


def format_expr(node: ast.Expr | ast.Slice) -> str:
    """One expression in canonical form, with only the parentheses precedence needs.

    Example:
        >>> from kdspec.syntax import parse_text
        >>> m = parse_text("method m { let w = ((a+b))*(c^(d^e)) - (-(f)) }")
        >>> format_expr(m.methods[0].body[0].value)
        '(a + b) * c^d^e - -f'
    """
    return _with_prec(node)[0]


# ---------------------------------------------------------------------------------------------
# Statements (one logical line each; stages and methods are blocks, laid out below)
# ---------------------------------------------------------------------------------------------


def _names(names: Sequence[ast.Ident]) -> str:
    return ", ".join(n.name for n in names)


def _role_mod(mod: ast.RoleMod) -> str:
    if mod.kind == "init" and mod.init is not None:
        return f"= {_call(mod.init)}"
    if mod.kind == "sees" and mod.view is not None:
        return f"sees {mod.view.name}"
    if mod.kind == "like" and mod.view is not None:
        return f"like {mod.view.name}" + (f" {mod.size}" if mod.size else "")
    if mod.kind == "from" and mod.view is not None:
        return f"from {mod.view.name}"
    return mod.kind


def _clauses(node: ast.Transfer | ast.Supervise) -> tuple[str, list[str]]:
    """The head of a loss statement and the clauses a long one breaks before."""
    head = ["transfer" if isinstance(node, ast.Transfer) else "supervise"]
    if node.label is not None:
        head.append(f"{node.label.name}:")
    clauses = []
    if isinstance(node, ast.Transfer):
        if node.knowledge:
            head.append(" | ".join(_func(k) for k in node.knowledge))
        clauses.append(f"from {format_expr(node.source)}")
        clauses.append(f"to {format_expr(node.target)}")
        if node.mapping is not None:
            clauses.append(f"map {_func(node.mapping)}")
    else:
        head.append(format_expr(node.target))
    clauses.append(f"with {_func(node.loss)}")
    if node.weight is not None:
        clauses.append(f"weight {format_expr(node.weight)}")
    if node.on is not None:
        clauses.append(f"on {node.on.name}")
    return " ".join(head), clauses


def _stage_item(item: ast.StageItem) -> str:
    if item.kind == "handoff":
        return f"handoff {item.names[0].name} -> {item.names[1].name}"
    if item.kind == "losses":
        return f"losses {_names(item.names)}"
    return f"{item.kind} " + ", ".join(format_expr(e) for e in item.exprs)


def _statement(node: Any) -> str:
    match node:
        case ast.Import():
            alias = f" as {node.alias.name}" if node.alias is not None else ""
            return f"import {quote(node.path.value)}{alias}"
        case ast.Cite():
            return f"cite {quote(node.text.value)}"
        case ast.Param():
            return f"param {node.name.name} = {format_expr(node.value)}"
        case ast.Role():
            mods = "".join(" " + _role_mod(m) for m in node.mods)
            return f"{node.kind} {_names(node.names)}{mods}"
        case ast.Ensemble():
            return f"ensemble {node.name.name} = {_call(node.init)}"
        case ast.View() | ast.Subset():
            keyword = "view" if isinstance(node, ast.View) else "subset"
            init = f" = {_call(node.init)}" if node.init is not None else ""
            return f"{keyword} {node.name.name}{init}"
        case ast.Let():
            return f"let {node.name.name} = {format_expr(node.value)}"
        case ast.Transfer() | ast.Supervise():
            head, clauses = _clauses(node)
            return " ".join([head, *clauses])
        case ast.Use():
            args = f"({_args(node.args, node.kwargs)})" if node.args or node.kwargs else ""
            alias = f" as {node.alias.name}" if node.alias is not None else ""
            only = f" only {_names(node.only)}" if node.only else ""
            return f"use {node.method.name}{args}{alias}{only}"
        case ast.Claim():
            return f"claim {node.dimension.name} = {_names(node.values)}"
        case ast.Predict():
            return f"predict {node.role.name} = {format_expr(node.value)}"
        case ast.StageItem():
            return _stage_item(node)
    raise TypeError(f"not a statement node: {type(node).__name__}")


def _function_lines(node: ast.Function, indent: str) -> list[str]:
    params = ", ".join(
        p.name.name + (f"={format_expr(p.default)}" if p.default is not None else "")
        for p in node.params
    )
    head = f"{indent}def {node.name.name}({params})"
    if not node.block:
        return [f"{head} = {format_expr(node.body)}"]
    lets = [f"{indent}{INDENT}{_statement(let)}" for let in node.lets]
    return [f"{head} {{", *lets, f"{indent}{INDENT}return {format_expr(node.body)}", f"{indent}}}"]


def _stage_header(node: ast.Stage) -> str:
    parts = [f"stage {node.name.name}"]
    if node.duration is not None:
        unit = node.unit or "epochs"
        # `for 25%`, but `for warm_epochs %`: the sign sticks to a number only.
        sep = "" if unit == "%" and isinstance(node.duration, ast.Number) else " "
        parts.append(f"for {format_expr(node.duration)}{sep}{unit}")
    if node.repeat is not None:
        parts.append(f"repeat {format_expr(node.repeat)}")
    return " ".join(parts)


def _method_header(node: ast.Method) -> str:
    title = f" {quote(node.title.value)}" if node.title is not None else ""
    return f"method {node.name.name}{title}"


# ---------------------------------------------------------------------------------------------
# Layout: blocks, comments and blank lines
# ---------------------------------------------------------------------------------------------


@dataclass
class _Slot:
    """A statement with the comments that go with it."""

    node: Any
    leading: list[ast.Comment] = field(default_factory=list)  # full-line comments before it
    hoisted: list[ast.Comment] = field(default_factory=list)  # comments from inside it
    inner: list[ast.Comment] = field(default_factory=list)  # inside its braces (blocks only)
    trailing: ast.Comment | None = None  # after it, on its last line


def _children(node: Any) -> tuple[Any, ...]:
    if isinstance(node, ast.Method):
        return node.body
    if isinstance(node, ast.Stage):
        return node.items
    return ()


def _header_parts(node: Any) -> list[Any]:
    if isinstance(node, ast.Method):
        return [node.name] + ([node.title] if node.title is not None else [])
    parts = [node.name, node.duration, node.repeat]
    return [p for p in parts if p is not None]


def _is_block(node: Any) -> bool:
    return isinstance(node, ast.Method | ast.Stage)


def _comment(c: ast.Comment) -> str:
    return c.text.rstrip()


class _Layout:
    def __init__(self, module: ast.Module, source_text: str | None):
        self.tree = module
        self.text = source_text
        self.comments = sorted(module.comments, key=lambda c: (c.span.start, c.span.end))
        self._starts = [c.span.start for c in self.comments]

    # -- source queries (all answer "no" without the source text) --------------------------

    def same_line(self, a: int, b: int) -> bool:
        return self.text is not None and a <= b and "\n" not in self.text[a:b]

    def blank_between(self, a: int, b: int) -> bool:
        return self.text is not None and a <= b and _BLANK_LINE.search(self.text, a, b) is not None

    def _comment_at(self, pos: int) -> ast.Comment | None:
        i = bisect.bisect_right(self._starts, pos) - 1
        if i >= 0 and self.comments[i].span.start <= pos < self.comments[i].span.end:
            return self.comments[i]
        return None

    def open_brace(self, node: Any) -> int:
        """Offset of the ``{`` of a block: the last token before its first item (or ``}``)."""
        children = _children(node)
        pos: int = children[0].span.start if children else node.span.end - 1
        if self.text is None:  # the best guess: right after the last header part with a span
            header_end: int = max(part.span.end for part in _header_parts(node))
            return min(pos, header_end)
        while pos > node.span.start:
            ch = self.text[pos - 1]
            comment = self._comment_at(pos - 1)
            if comment is not None:
                pos = comment.span.start
            elif ch.isspace():
                pos -= 1
            elif ch == "{":
                return pos - 1
            else:
                break
        return pos

    # -- comment placement -------------------------------------------------------------------

    def assign(
        self, children: Sequence[Any], comments: Sequence[ast.Comment], open_pos: int | None
    ) -> tuple[ast.Comment | None, list[_Slot], list[ast.Comment]]:
        """Share a block's comments among its children: (on the `{` line, per child, at end)."""
        slots = [_Slot(c) for c in children]
        starts = [c.span.start for c in children]
        on_brace: ast.Comment | None = None
        dangling: list[ast.Comment] = []
        for c in comments:
            pos = c.span.start
            k = bisect.bisect_right(starts, pos) - 1
            if k >= 0 and pos < children[k].span.end:  # inside child k
                child = children[k]
                if _is_block(child) and pos > self.open_brace(child):
                    slots[k].inner.append(c)
                else:
                    slots[k].hoisted.append(c)
                continue
            if k >= 0 and slots[k].trailing is None and self.same_line(children[k].span.end, pos):
                slots[k].trailing = c
            elif (
                k < 0
                and on_brace is None
                and open_pos is not None
                and self.same_line(open_pos, pos)
            ):
                on_brace = c
            elif k + 1 < len(slots):
                slots[k + 1].leading.append(c)
            else:
                dangling.append(c)
        return on_brace, slots, dangling

    # -- emission ----------------------------------------------------------------------------

    def emit(
        self,
        slots: list[_Slot],
        dangling: list[ast.Comment],
        indent: str,
        out: list[str],
        *,
        top: bool = False,
    ) -> None:
        """Append the lines of a block body (or of the whole file, when ``top``)."""
        prev_end: int | None = None

        def gap(start: int, force: bool) -> None:
            if (force and out) or (
                prev_end is not None and out and self.blank_between(prev_end, start)
            ):
                if out[-1] != "":
                    out.append("")

        for slot in slots:
            node = slot.node
            force = top and isinstance(node, ast.Method)  # one blank line between methods
            for c in slot.leading:
                gap(c.span.start, force)
                force = False
                out.append(indent + _comment(c))
                prev_end = c.span.end
            gap(node.span.start, force)
            out.extend(indent + _comment(c) for c in slot.hoisted)
            lines = self.node_lines(node, indent, slot.inner)
            if slot.trailing is not None:
                lines[-1] += "  " + _comment(slot.trailing)
            out.extend(lines)
            prev_end = max(node.span.end, slot.trailing.span.end if slot.trailing else 0)
        for c in dangling:
            gap(c.span.start, False)
            out.append(indent + _comment(c))
            prev_end = c.span.end

    def node_lines(self, node: Any, indent: str, inner: list[ast.Comment]) -> list[str]:
        if isinstance(node, ast.Function):
            return _function_lines(node, indent)
        if isinstance(node, ast.Method):
            return self.block_lines(_method_header(node), node, inner, indent)
        if isinstance(node, ast.Stage):
            return self.block_lines(_stage_header(node), node, inner, indent)
        if isinstance(node, ast.Transfer | ast.Supervise):
            head, clauses = _clauses(node)
            line = indent + " ".join([head, *clauses])
            if len(line) <= MAX_WIDTH:
                return [line]
            return [indent + head, *(indent + CONTINUATION + c for c in clauses)]
        return [indent + _statement(node)]

    def block_lines(
        self, header: str, node: Any, inner: list[ast.Comment], indent: str
    ) -> list[str]:
        children = _children(node)
        if not children and not inner:
            return [f"{indent}{header} {{}}"]
        on_brace, slots, dangling = self.assign(children, inner, self.open_brace(node))
        head = f"{indent}{header} {{"
        if on_brace is not None:
            head += "  " + _comment(on_brace)
        body: list[str] = []
        self.emit(slots, dangling, indent + INDENT, body)
        return [head, *body, indent + "}"]

    def render(self) -> str:
        children = [*self.tree.imports, *self.tree.functions, *self.tree.methods]
        children.sort(key=lambda n: n.span.start)  # type: ignore[attr-defined]
        _, slots, dangling = self.assign(children, self.comments, None)
        out: list[str] = []
        self.emit(slots, dangling, "", out, top=True)
        return "\n".join(out) + "\n"


def format_module(module: ast.Module, source_text: str | None = None) -> str:
    """Lay a syntax tree out in the canonical form.

    Args:
        module: a parsed file; its ``comments`` are all kept.
        source_text: the text ``module`` was parsed from. Without it the formatter cannot see
            which line a comment was on, nor blank lines: every comment becomes a full-line
            comment above the statement that follows it, and only methods are spaced apart.

    Returns:
        The formatted text, ending with exactly one newline.
    """
    return _Layout(module, source_text).render()


def format_text(text: str, name: str = "<string>") -> str:
    r"""Format spec text.

    Raises:
        KdError: the text has syntax errors (KD1xx diagnostics attached).

    Example:
        >>> print(format_text("method kd{teacher t frozen  student s # the student\n}"), end="")
        method kd {
          teacher t frozen
          student s  # the student
        }
    """
    module, diagnostics = try_parse(SourceFile(name, text))
    if module is None:
        raise KdError(diagnostics)
    return format_module(module, text)
