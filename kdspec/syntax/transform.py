"""Turn lark's parse tree into the :mod:`kdspec.syntax.ast` dataclasses, keeping spans."""

from __future__ import annotations

from typing import Any

from lark import Token, Transformer, Tree
from lark.exceptions import GrammarError, VisitError
from lark.tree import Meta

from kdspec.source import Span
from kdspec.syntax import ast


def _tok_span(tok: Token) -> Span:
    return Span(tok.start_pos or 0, tok.end_pos or 0)


def _meta_span(meta: Meta) -> Span:
    if getattr(meta, "empty", True):
        return Span(0, 0)
    return Span(meta.start_pos, meta.end_pos)


def _ident(tok: Token) -> ast.Ident:
    return ast.Ident(str(tok), _tok_span(tok))


def _unquote(tok: Token) -> str:
    body = str(tok)[1:-1]
    return body.replace('\\"', '"').replace("\\\\", "\\")


class ToAst(Transformer[Token, Any]):
    """Each rule's method takes the node's ``meta`` (its position) and its children.

    The methods are called straight from the class: lark's ``v_args(meta=True)`` would make a
    bound wrapper per node, and its token visit would raise and catch an ``AttributeError``
    per token (no terminal has a method here), together a tenth of `kdspec check`'s parse.
    """

    __visit_tokens__ = False

    def _call_userfunc(self, tree: Tree[Token], new_children: list[Any] | None = None) -> Any:
        children = new_children if new_children is not None else tree.children
        method = getattr(type(self), tree.data, None)
        if method is None:
            return self.__default__(tree.data, children, tree.meta)  # type: ignore[no-untyped-call]
        try:
            return method(self, tree.meta, children)
        except GrammarError:
            raise
        except Exception as exc:  # lark's contract: a rule's error comes out as a VisitError
            raise VisitError(tree.data, tree, exc) from exc  # type: ignore[no-untyped-call]

    # -- expressions ------------------------------------------------------------------------

    def number(self, meta: Meta, children: list[Token]) -> ast.Number:
        text = str(children[0])
        value = float(text)
        return ast.Number(
            int(value)
            if value.is_integer() and "." not in text and "e" not in text.lower()
            else value,
            text,
            _meta_span(meta),
        )

    def string(self, meta: Meta, children: list[Token]) -> ast.String:
        return ast.String(_unquote(children[0]), _meta_span(meta))

    def name(self, meta: Meta, children: list[Token]) -> ast.Name:
        return ast.Name(str(children[0]), _meta_span(meta))

    def call(self, meta: Meta, children: list[Any]) -> ast.Call:
        args, kwargs = children[1] if children[1] is not None else ((), ())
        return ast.Call(_ident(children[0]), args, kwargs, _meta_span(meta))

    def func(self, meta: Meta, children: list[Any]) -> ast.Call:
        args, kwargs = children[1] if len(children) > 1 and children[1] is not None else ((), ())
        return ast.Call(_ident(children[0]), args, kwargs, _meta_span(meta))

    def args(self, meta: Meta, children: list[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        positional = tuple(c for c in children if not isinstance(c, ast.Kwarg))
        kwargs = tuple(c for c in children if isinstance(c, ast.Kwarg))
        return positional, kwargs

    def kwarg(self, meta: Meta, children: list[Any]) -> ast.Kwarg:
        return ast.Kwarg(_ident(children[0]), children[1], _meta_span(meta))

    def attr(self, meta: Meta, children: list[Any]) -> ast.Attr:
        return ast.Attr(children[0], _ident(children[1]), _meta_span(meta))

    def module_path(self, meta: Meta, children: list[Any]) -> ast.ModulePath:
        tok = children[1]
        return ast.ModulePath(
            children[0], ast.String(_unquote(tok), _tok_span(tok)), _meta_span(meta)
        )

    def index(self, meta: Meta, children: list[Any]) -> ast.Index:
        return ast.Index(children[0], children[1], _meta_span(meta))

    def slice(self, meta: Meta, children: list[Any]) -> ast.Slice:
        return ast.Slice(children[0], children[1], _meta_span(meta))

    def call_index(self, meta: Meta, children: list[Any]) -> ast.CallIndex:
        text = str(children[1])
        value = float(text)
        n = int(value) if value.is_integer() else -1  # not a whole number: reported when lowering
        return ast.CallIndex(children[0], n, text, _meta_span(meta))

    def _apply(self, module: Any, args: Any, meta: Meta) -> ast.Apply:
        pos, kwargs = args if args is not None else ((), ())
        return ast.Apply(module, pos, kwargs, _meta_span(meta))

    def apply_attr(self, meta: Meta, children: list[Any]) -> ast.Apply:
        obj, name = children[0], children[1]
        span = Span(obj.span.start, _tok_span(name).end)
        return self._apply(ast.Attr(obj, _ident(name), span), children[2], meta)

    def apply_module_path(self, meta: Meta, children: list[Any]) -> ast.Apply:
        obj, tok = children[0], children[1]
        span = Span(obj.span.start, _tok_span(tok).end)
        path = ast.ModulePath(obj, ast.String(_unquote(tok), _tok_span(tok)), span)
        return self._apply(path, children[2], meta)

    def apply_index(self, meta: Meta, children: list[Any]) -> ast.Apply:
        obj, index = children[0], children[1]
        end = getattr(index, "span", obj.span).end
        return self._apply(ast.Index(obj, index, Span(obj.span.start, end + 1)), children[2], meta)

    def _binop(self, op: str, meta: Meta, children: list[Any]) -> ast.BinOp:
        return ast.BinOp(op, children[0], children[1], _meta_span(meta))

    def add(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        return self._binop("+", meta, children)

    def sub(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        return self._binop("-", meta, children)

    def mul(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        return self._binop("*", meta, children)

    def div(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        return self._binop("/", meta, children)

    def pow(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        return self._binop("^", meta, children)

    def lt(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        return self._binop("<", meta, children)

    def gt(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        return self._binop(">", meta, children)

    def le(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        return self._binop("<=", meta, children)

    def ge(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        return self._binop(">=", meta, children)

    def eq(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        return self._binop("==", meta, children)

    def ne(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        return self._binop("!=", meta, children)

    def neg(self, meta: Meta, children: list[Any]) -> ast.Neg:
        return ast.Neg(children[0], _meta_span(meta))

    def cond(self, meta: Meta, children: list[Any]) -> ast.Cond:
        return ast.Cond(children[0], children[1], children[2], _meta_span(meta))

    def list_expr(self, meta: Meta, children: list[Any]) -> ast.ListExpr:
        return ast.ListExpr(tuple(c for c in children if c is not None), _meta_span(meta))

    # -- statements -------------------------------------------------------------------------

    def cite(self, meta: Meta, children: list[Token]) -> ast.Cite:
        tok = children[0]
        return ast.Cite(ast.String(_unquote(tok), _tok_span(tok)), _meta_span(meta))

    def param(self, meta: Meta, children: list[Any]) -> ast.Param:
        return ast.Param(_ident(children[0]), children[1], _meta_span(meta))

    def role_kind(self, meta: Meta, children: list[Token]) -> str:
        return str(children[0])

    def frozen(self, meta: Meta, children: list[Any]) -> ast.RoleMod:
        return ast.RoleMod("frozen", span=_meta_span(meta))

    def trained(self, meta: Meta, children: list[Any]) -> ast.RoleMod:
        return ast.RoleMod("trained", span=_meta_span(meta))

    def role_init(self, meta: Meta, children: list[Any]) -> ast.RoleMod:
        return ast.RoleMod("init", init=children[0], span=_meta_span(meta))

    def sees(self, meta: Meta, children: list[Token]) -> ast.RoleMod:
        return ast.RoleMod("sees", view=_ident(children[0]), span=_meta_span(meta))

    def like(self, meta: Meta, children: list[Any]) -> ast.RoleMod:
        size = str(children[1]) if len(children) > 1 else None
        return ast.RoleMod("like", view=_ident(children[0]), size=size, span=_meta_span(meta))

    def size(self, meta: Meta, children: list[Token]) -> str:
        return str(children[0])

    def init_from(self, meta: Meta, children: list[Token]) -> ast.RoleMod:
        return ast.RoleMod("from", view=_ident(children[0]), span=_meta_span(meta))

    def role(self, meta: Meta, children: list[Any]) -> ast.Role:
        names = tuple(_ident(c) for c in children[1:] if isinstance(c, Token))
        mods = tuple(c for c in children[1:] if isinstance(c, ast.RoleMod))
        return ast.Role(children[0], names, mods, _meta_span(meta))

    def ensemble(self, meta: Meta, children: list[Any]) -> ast.Ensemble:
        return ast.Ensemble(_ident(children[0]), children[1], _meta_span(meta))

    def view(self, meta: Meta, children: list[Any]) -> ast.View:
        init = children[1] if len(children) > 1 else None
        return ast.View(_ident(children[0]), init, _meta_span(meta))

    def subset(self, meta: Meta, children: list[Any]) -> ast.Subset:
        init = children[1] if len(children) > 1 else None
        return ast.Subset(_ident(children[0]), init, _meta_span(meta))

    def let(self, meta: Meta, children: list[Any]) -> ast.Let:
        return ast.Let(_ident(children[0]), children[1], _meta_span(meta))

    def label(self, meta: Meta, children: list[Token]) -> ast.Ident:
        return _ident(children[0])

    def knowledge(self, meta: Meta, children: list[ast.Call]) -> tuple[ast.Call, ...]:
        return tuple(children)

    def mapping(self, meta: Meta, children: list[ast.Call]) -> tuple[str, ast.Call]:
        return ("mapping", children[0])

    def weight(self, meta: Meta, children: list[Any]) -> tuple[str, Any]:
        return ("weight", children[0])

    def on_subset(self, meta: Meta, children: list[Token]) -> tuple[str, ast.Ident]:
        return ("on", _ident(children[0]))

    @staticmethod
    def _clauses(children: list[Any]) -> dict[str, Any]:
        return {
            c[0]: c[1]
            for c in children
            if isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], str)
        }

    def transfer(self, meta: Meta, children: list[Any]) -> ast.Transfer:
        rest = list(children)
        label = rest.pop(0) if rest and isinstance(rest[0], ast.Ident) else None
        knowledge: tuple[ast.Call, ...] = ()
        if (
            rest
            and isinstance(rest[0], tuple)
            and (not rest[0] or isinstance(rest[0][0], ast.Call))
        ):
            knowledge = rest.pop(0)
        source, target = rest[0], rest[1]
        clauses = self._clauses(rest[2:])
        loss = next(c for c in rest[2:] if isinstance(c, ast.Call))
        return ast.Transfer(
            label,
            knowledge,
            source,
            target,
            clauses.get("mapping"),
            loss,
            clauses.get("weight"),
            clauses.get("on"),
            _meta_span(meta),
        )

    def supervise(self, meta: Meta, children: list[Any]) -> ast.Supervise:
        rest = list(children)
        label = rest.pop(0) if rest and isinstance(rest[0], ast.Ident) else None
        target = rest[0]
        loss = next(c for c in rest[1:] if isinstance(c, ast.Call))
        clauses = self._clauses(rest[1:])
        return ast.Supervise(
            label, target, loss, clauses.get("weight"), clauses.get("on"), _meta_span(meta)
        )

    def duration(self, meta: Meta, children: list[Any]) -> tuple[str, Any, str]:
        return ("duration", children[0], str(children[1]))

    def duration_unit(self, meta: Meta, children: list[Token]) -> str:
        return str(children[0])

    def repeat(self, meta: Meta, children: list[Any]) -> tuple[str, Any]:
        return ("repeat", children[0])

    def train(self, meta: Meta, children: list[Any]) -> ast.StageItem:
        return ast.StageItem("train", exprs=tuple(children), span=_meta_span(meta))

    def freeze(self, meta: Meta, children: list[Any]) -> ast.StageItem:
        return ast.StageItem("freeze", exprs=tuple(children), span=_meta_span(meta))

    def losses(self, meta: Meta, children: list[Token]) -> ast.StageItem:
        return ast.StageItem("losses", names=tuple(map(_ident, children)), span=_meta_span(meta))

    def handoff(self, meta: Meta, children: list[Token]) -> ast.StageItem:
        return ast.StageItem("handoff", names=tuple(map(_ident, children)), span=_meta_span(meta))

    def stage(self, meta: Meta, children: list[Any]) -> ast.Stage:
        duration = unit = repeat = None
        for c in children[1:]:
            if isinstance(c, tuple) and c[0] == "duration":
                duration, unit = c[1], c[2]
            elif isinstance(c, tuple) and c[0] == "repeat":
                repeat = c[1]
        items = tuple(c for c in children[1:] if isinstance(c, ast.StageItem))
        return ast.Stage(_ident(children[0]), duration, unit, repeat, items, _meta_span(meta))

    def use_only(self, meta: Meta, children: list[Token]) -> tuple[str, tuple[ast.Ident, ...]]:
        return ("only", tuple(map(_ident, children)))

    def dotted_name(self, meta: Meta, children: list[Token]) -> ast.Ident:
        return ast.Ident(".".join(map(str, children)), _meta_span(meta))

    def use(self, meta: Meta, children: list[Any]) -> ast.Use:
        method = children[0]
        args: tuple[Any, ...] = ()
        kwargs: tuple[Any, ...] = ()
        alias = None
        only: tuple[ast.Ident, ...] = ()
        for c in children[1:]:
            if isinstance(c, Token):
                alias = _ident(c)
            elif isinstance(c, tuple) and c and c[0] == "only":
                only = c[1]
            elif isinstance(c, tuple) and len(c) == 2:
                args, kwargs = c
        return ast.Use(method, args, kwargs, alias, only, _meta_span(meta))

    def claim(self, meta: Meta, children: list[Token]) -> ast.Claim:
        return ast.Claim(_ident(children[0]), tuple(map(_ident, children[1:])), _meta_span(meta))

    def predict(self, meta: Meta, children: list[Any]) -> ast.Predict:
        return ast.Predict(_ident(children[0]), children[1], _meta_span(meta))

    def method(self, meta: Meta, children: list[Any]) -> ast.Method:
        name = _ident(children[0])
        title = None
        body = []
        for c in children[1:]:
            if isinstance(c, Token):
                title = ast.String(_unquote(c), _tok_span(c))
            elif c is not None:
                body.append(c)
        return ast.Method(name, title, tuple(body), _meta_span(meta))

    def import_stmt(self, meta: Meta, children: list[Token]) -> ast.Import:
        alias = _ident(children[1]) if len(children) > 1 and children[1] is not None else None
        tok = children[0]
        return ast.Import(ast.String(_unquote(tok), _tok_span(tok)), alias, _meta_span(meta))

    def fparam(self, meta: Meta, children: list[Any]) -> ast.FunctionParam:
        default = children[1] if len(children) > 1 else None
        return ast.FunctionParam(_ident(children[0]), default, _meta_span(meta))

    def function(self, meta: Meta, children: list[Any]) -> ast.Function:
        params = tuple(c for c in children[1:] if isinstance(c, ast.FunctionParam))
        lets = tuple(c for c in children[1:] if isinstance(c, ast.Let))
        body = children[-1]
        block = bool(lets) or self._braced(meta, children)
        return ast.Function(_ident(children[0]), params, lets, body, block, _meta_span(meta))

    @staticmethod
    def _braced(meta: Meta, children: list[Any]) -> bool:
        # `def f(x) { return x }` has no lets; it ends in `}`, an `=` form ends in its body.
        body = children[-1]
        end = getattr(getattr(body, "span", None), "end", None)
        return end is not None and end < meta.end_pos

    def start(self, meta: Meta, children: list[Any]) -> ast.Module:
        imports = tuple(c for c in children if isinstance(c, ast.Import))
        methods = tuple(c for c in children if isinstance(c, ast.Method))
        functions = tuple(c for c in children if isinstance(c, ast.Function))
        return ast.Module(imports, methods, span=_meta_span(meta), functions=functions)
