"""Composition: `use` of another method (its parameters inlined), imports and the files they
name (each parsed once), and the defs a file can call."""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdspec.diagnostics import Diagnostic, error
from kdspec.ir import models as ir
from kdspec.ir.lower_core import LoweringState, MethodFinder, did_you_mean, shorten
from kdspec.lru import Lru
from kdspec.source import SourceFile
from kdspec.syntax import ast


class Composition(LoweringState):
    """The `use` part of a method's lowering: another method's roles, terms and stages merged in."""

    def use(self, st: ast.Use) -> None:
        """Merge the method `st` names in: its roles, ensembles, views, lets, terms, stages."""
        name = st.method.name
        self.smap.spans[("use", len(self.uses))] = st.span
        lowered = self._lower_used(st)
        if lowered is None:
            return
        other, args = lowered
        self.uses.append(name)
        inline = Inliner(other.params, set(args))
        self._merge_roles(other, inline, st)
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
        renamed = self._merge_terms(other, inline, st)
        for who, value in other.predictions.items():  # a `predict` here replaces these
            if who not in self.predictions:
                self.predictions[who] = inline(value)
                self.used_predictions.add(who)
                self.smap.spans[("predict", who)] = st.span
        if other.stages:
            self.used_stages.append((name, other.stages, renamed, inline))

    def _lower_used(self, st: ast.Use) -> tuple[ir.Method, dict[str, object]] | None:
        """The used method lowered with the arguments given (KD208 for cycles and unknowns);
        its problems are reported at the `use`."""
        name = st.method.name
        if name in self.stack:
            self.err(
                "KD208",
                f"method `{name}` uses itself",
                st.method.span,
                "cycle of `use`",
                notes=[" -> ".join([*self.stack, name])],
            )
            return None
        found = self.finder(name) if self.finder else None
        if found is None:
            self.err(
                "KD208",
                f"unknown method `{name}`",
                st.method.span,
                "not in this file, its imports or the library",
            )
            return None
        other_ast, other_source = found
        args: dict[str, object] = {}
        other_params = [s.name.name for s in other_ast.body if isinstance(s, ast.Param)]
        for pname, a in zip(other_params, st.args, strict=False):
            args[pname] = self.expr(a, as_value=True)
        for kw in st.kwargs:
            args[kw.name.name] = self.expr(kw.value, as_value=True)
        sub = type(self)(
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
        return other, args

    def _merge_roles(self, other: ir.Method, inline: Inliner, st: ast.Use) -> None:
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
                    f"role `{role.name}` is a {mine.kind} here but a {role.kind} in "
                    f"`{st.method.name}`",
                    st.span,
                )

    def _merge_terms(self, other: ir.Method, inline: Inliner, st: ast.Use) -> dict[str, str]:
        """The used terms (all, or those `only` names), renamed ``alias_name`` on a clash."""
        name = st.method.name
        alias = st.alias.name if st.alias else name
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
        return renamed


class Inliner:
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
    local = {m.name.name: (m, source) for m in module.methods}
    imported: dict[str, tuple[ast.Method, SourceFile]] = {}
    for imp in module.imports:
        path = resolve_import(imp.path.value, source, library)
        if isinstance(path, str):
            continue
        try:
            parsed = parse_file(path)
        except OSError:
            continue
        other, other_src = parsed.module, parsed.source
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
                parsed = parse_file(library / f"{name}.kd")
            except OSError:
                return None
            lib, lib_src = parsed.module, parsed.source
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
    diags = []
    for imp in module.imports:
        path = resolve_import(imp.path.value, source, library)
        if isinstance(path, str):  # refused before it is opened: nothing of it is ever quoted
            diags.append(
                error(
                    "KD105",
                    f"import `{shorten(imp.path.value)}` is not allowed",
                    source,
                    imp.path.span,
                    path,
                    help="imports resolve inside the spec's folder and the method library; "
                    "allow another folder with `--import-root DIR`",
                )
            )
            continue
        try:
            parsed = parse_file(path)
        except OSError as exc:
            diags.append(
                error(
                    "KD105",
                    f"cannot read imported file `{shorten(imp.path.value)}`",
                    source,
                    imp.path.span,
                    exc.strerror or "unreadable",
                )
            )
            continue
        diags.extend(parsed.errors)
    return diags


def prelude_files() -> list[Path]:
    folder = Path(__file__).resolve().parents[1] / "prelude"
    return sorted(folder.glob("*.kd")) if folder.is_dir() else []


@dataclass(frozen=True)
class ParsedFile:
    """A spec file read and parsed: its tree (``None`` when it does not parse) and errors."""

    source: SourceFile
    module: ast.Module | None
    errors: list[Diagnostic]


# Versions of files kept (an editor re-checks imports on every change): the library and the
# prelude, with room for imported files being edited.
_PARSED: Lru[tuple[str, int, int], ParsedFile] = Lru("parsed files", 128)


def parse_file(path: Path) -> ParsedFile:
    """``path`` read and parsed once per version (path, modification time and size): an
    imported file, a library method and the prelude are parsed once however many places
    (finding methods for `use`, checking imports, collecting defs) read them.

    Raises:
        OSError: the file cannot be read (see :meth:`SourceFile.read`).
    """
    from kdspec.syntax import try_parse

    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    hit = _PARSED.get(key)
    if hit is None:
        source = SourceFile.read(path)
        module, errors = try_parse(source)
        hit = _PARSED.put(key, ParsedFile(source, module, errors))
    return hit


DefsOfFile = tuple[dict[str, tuple[ast.Function, SourceFile]], list[Diagnostic]]


def module_defs(path: Path) -> DefsOfFile:
    """The defs of a file and its syntax errors: the prelude, imported files."""
    try:
        parsed = parse_file(path)
    except OSError:
        return {}, []
    module, src = parsed.module, parsed.source
    found = {f.name.name: (f, src) for f in module.functions} if module else {}
    return found, parsed.errors
