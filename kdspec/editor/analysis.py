"""What an editor asks of a spec while it is being typed: diagnostics, hover, completion, format.

Pure functions over the buffer's text (no language-server types here), so the language server
in :mod:`kdspec.editor.lsp` is a thin adapter and this logic is testable without ``pygls``.
Offsets are 0-based character offsets into the text, like :class:`kdspec.source.Span`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from kdspec.api import check_source
from kdspec.diagnostics import Diagnostic
from kdspec.graph import types
from kdspec.ir import Lowered
from kdspec.ir.printer import expr_text
from kdspec.source import SourceFile, Span
from kdspec.syntax import try_parse
from kdspec.syntax.fmt import format_module
from kdspec.vocabulary import FUNCTIONS, REQUIRED, ROLE_KINDS, TAP_IO, TAP_POINTS, Fn

__all__ = [
    "Completion",
    "analyse",
    "completions",
    "describe_function",
    "formatted",
    "hover",
    "word_at",
]

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ROLE_DECL = re.compile(
    r"\b(?:" + "|".join(ROLE_KINDS) + r")\s+([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)"
)
_NAMED = re.compile(r"\b(ensemble|param|let|view|subset)\s+([A-Za-z_]\w*)")
_LABEL = re.compile(r"\b(?:transfer|supervise)\s+([A-Za-z_]\w*)\s*:")
_CODE_ONLY = re.compile(r'#[^\n]*|"([^"\\\n]|\\.)*"')
_STATEMENTS = (
    "cite",
    "param",
    "teacher",
    "student",
    "assistant",
    "peer",
    "ensemble",
    "view",
    "subset",
    "let",
    "transfer",
    "supervise",
    "stage",
    "use",
    "claim",
    "predict",
)


@dataclass(frozen=True)
class Completion:
    """One completion item: the text, what it is (role, tap, function, ...) and a detail line."""

    label: str
    kind: str
    detail: str = ""
    insert: str | None = None


@lru_cache(maxsize=32)
def analyse(text: str, name: str) -> tuple[tuple[Lowered, ...], tuple[Diagnostic, ...]]:
    """Parse, lower and check a buffer (cached: hover and completion reuse the last check)."""
    lowered, diags = check_source(SourceFile(name, text))
    return tuple(lowered), tuple(diags)


def word_at(text: str, offset: int) -> tuple[str, Span] | None:
    """The identifier under (or just before) ``offset``, with its span."""
    for m in _WORD.finditer(text, max(0, offset - 64), min(len(text), offset + 64)):
        if m.start() <= offset <= m.end():
            return m.group(), Span(m.start(), m.end())
    return None


def describe_function(name: str) -> str:
    """The vocabulary entry of a function, as Markdown (what ``kdspec explain`` knows)."""
    fn: Fn = FUNCTIONS[name]
    params = ", ".join(
        p if spec.default is REQUIRED else f"{p}={spec.default!r}" for p, spec in fn.params.items()
    )
    lines = [f"**{name}**({params}) — {fn.category}", "", fn.doc or ""]
    facts = []
    if fn.accepts:
        facts.append("accepts " + ", ".join(f"`{k}`" for k in sorted(fn.accepts)))
    if fn.returns != "same":
        facts.append(f"yields `{fn.returns}`")
    if fn.needs_labels:
        facts.append("reads the labels")
    if fn.learned:
        facts.append("has trainable parameters")
    if fn.family:
        facts.append(f"family: {fn.family}")
    if facts:
        lines += ["", "; ".join(facts)]
    return "\n".join(lines).strip()


def _innermost(low: Lowered, offset: int, head: str) -> tuple[tuple[object, ...], Span] | None:
    best: tuple[tuple[object, ...], Span] | None = None
    for path, span in low.source_map.spans.items():
        if path and path[0] == head and span.start <= offset <= span.end:
            if best is None or span.end - span.start < best[1].end - best[1].start:
                best = (path, span)
    return best


def _side_kind(low: Lowered, offset: int) -> str | None:
    m = low.method
    for term in m.terms:
        for side, _expr, kind in types.term_sides(term, m):
            span = low.source_map.spans.get(("term", term.name, side))
            if span is not None and span.start <= offset <= span.end:
                what = "teacher side" if side == "source" else "student side"
                if term.kind == "supervise":
                    what = "supervised side"
                return f"{what} of `{term.name}`: carries `{kind}`"
    return None


def hover(text: str, name: str, offset: int) -> str | None:
    """Markdown for the position: a function's vocabulary entry, a side's resolved kind, a
    role or a parameter. None where there is nothing to say."""
    found = word_at(text, offset)
    parts: list[str] = []
    if found is not None and found[0] in FUNCTIONS:
        parts.append(describe_function(found[0]))
    lowered, _ = analyse(text, name)
    for low in lowered:
        span = low.source_map.spans.get(("method",))
        if span is not None and not span.start <= offset <= span.end:
            continue
        side = _side_kind(low, offset)
        if side is not None:
            parts.append(side)
        if found is None:
            continue
        word = found[0]
        role = low.method.role(word)
        if role is not None and not parts:
            parts.append(f"{role.kind} `{role.name}` ({role.mode})")
        param = low.method.params.get(word)
        if param is not None and not parts:
            parts.append(f"param `{word}` = {expr_text(param)}")
        break
    return "\n\n---\n\n".join(parts) or None


def _names(text: str, lowered: tuple[Lowered, ...]) -> dict[str, set[str]]:
    """Role, term, parameter ... names: from the checked IR, else read off the text."""
    out: dict[str, set[str]] = {k: set() for k in ("role", "term", "param", "let", "view")}
    for low in lowered:
        m = low.method
        out["role"] |= {r.name for r in m.roles} | {e.name for e in m.ensembles}
        out["term"] |= {t.name for t in m.terms}
        out["param"] |= set(m.params)
        out["let"] |= {x.name for x in m.lets}
    text = _CODE_ONLY.sub("", text)  # names in comments and strings are not declarations
    for match in _ROLE_DECL.finditer(text):
        out["role"] |= {n.strip() for n in match.group(1).split(",")}
    for kind, value in _NAMED.findall(text):
        key = {"ensemble": "role", "subset": "view"}.get(kind, kind)
        out[key].add(value)
    out["term"] |= set(_LABEL.findall(text))
    return out


def completions(text: str, name: str, offset: int) -> list[Completion]:
    """What may be typed at ``offset``: taps after ``role.``, term names after ``losses``,
    otherwise role names, functions, parameters and statement keywords."""
    before = text[:offset]
    lowered, _ = analyse(text, name) if try_parse(SourceFile(name, text))[0] else ((), ())
    names = _names(text, lowered)
    line = before.rsplit("\n", 1)[-1]
    tap_ctx = re.search(r"([A-Za-z_]\w*)(?:\[[A-Za-z_]\w*\])?\.(\w*)$", line)
    if tap_ctx and tap_ctx.group(1) in names["role"]:
        return [
            Completion(p, "tap", f"tap of `{tap_ctx.group(1)}`", "stage[" if p == "stage" else p)
            for p in TAP_POINTS
        ]
    if re.search(r"\]\.(\w*)$", line):  # t.stage[2].| : where in the stage
        return [Completion(p, "tap", "read the stage's " + p) for p in TAP_IO]
    if re.search(r"\b(losses|freeze|train)\b[^{}\n]*$", line) and "stage" in text[:offset]:
        items = [Completion(t, "term", "a loss term of this method") for t in sorted(names["term"])]
        items += [Completion(r, "role", "role") for r in sorted(names["role"])]
        return items
    with_ctx = re.search(r"\bwith\s+\w*$", line) is not None
    out: list[Completion] = []
    for fname in sorted(FUNCTIONS):
        fn = FUNCTIONS[fname]
        if with_ctx and fn.category != "loss":
            continue
        out.append(Completion(fname, "function", f"{fn.category}: {fn.doc}"))
    if with_ctx:
        return out
    out += [Completion(r, "role", "role") for r in sorted(names["role"])]
    out += [Completion(p, "param", "parameter") for p in sorted(names["param"] | names["let"])]
    if re.match(r"\s*\w*$", line):
        out += [Completion(k, "keyword", "statement") for k in _STATEMENTS]
    return out


def formatted(text: str, name: str) -> str | None:
    """The buffer in canonical layout (``kdspec fmt``); None if it does not parse."""
    source = SourceFile(name, text)
    module, _ = try_parse(source)
    if module is None:
        return None
    return format_module(module, text)
