"""``kdspec lsp``: a language server for ``.kd`` files (pygls, over stdio).

Publishes the checker's diagnostics as you type (on open and on every change), hovers with a
function's vocabulary entry and a side's resolved knowledge kind, completes role names, taps,
functions and term names, and formats with ``kdspec fmt``. The logic lives in
:mod:`kdspec.editor.analysis`; this module only converts to and from LSP types.

Positions: LSP counts characters in UTF-16 code units; we count code points, which agree on
everything but characters outside the Basic Multilingual Plane (emoji in comments).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer

from kdspec.diagnostics import Diagnostic, Severity
from kdspec.editor import analysis
from kdspec.source import SourceFile

__all__ = ["build_server", "to_lsp_diagnostic"]

_SEVERITY = {
    Severity.ERROR: lsp.DiagnosticSeverity.Error,
    Severity.WARNING: lsp.DiagnosticSeverity.Warning,
}
_KINDS = {
    "role": lsp.CompletionItemKind.Variable,
    "tap": lsp.CompletionItemKind.Field,
    "function": lsp.CompletionItemKind.Function,
    "term": lsp.CompletionItemKind.Reference,
    "param": lsp.CompletionItemKind.Constant,
    "keyword": lsp.CompletionItemKind.Keyword,
}


def _name(uri: str) -> str:
    """A file path for ``file:`` URIs (so `import` finds neighbours), else the URI itself."""
    parsed = urlparse(uri)
    return str(Path(unquote(parsed.path))) if parsed.scheme == "file" else uri


def _position(source: SourceFile, offset: int) -> lsp.Position:
    line, col = source.line_col(offset)
    return lsp.Position(line=line - 1, character=col - 1)


def _offset(text: str, pos: lsp.Position) -> int:
    return SourceFile("", text).offset(pos.line + 1, pos.character + 1)


def to_lsp_diagnostic(d: Diagnostic, text: str) -> lsp.Diagnostic:
    """A kdspec diagnostic as an LSP one: primary span, notes and help in the message."""
    source = SourceFile("", text)
    primary = next((lb for lb in d.labels if lb.primary and lb.source is None), None)
    start, end = (primary.span.start, primary.span.end) if primary else (0, 0)
    message = d.message
    if primary is not None and primary.message:
        message += f" ({primary.message})"
    for note in d.notes:
        message += f"\nnote: {note}"
    if d.help:
        message += f"\nhelp: {d.help}"
    related = [
        lsp.DiagnosticRelatedInformation(
            location=lsp.Location(
                uri="",
                range=lsp.Range(_position(source, lb.span.start), _position(source, lb.span.end)),
            ),
            message=lb.message,
        )
        for lb in d.labels
        if not lb.primary and lb.source is None and lb.message
    ]
    return lsp.Diagnostic(
        range=lsp.Range(start=_position(source, start), end=_position(source, end)),
        message=message,
        severity=_SEVERITY.get(d.severity, lsp.DiagnosticSeverity.Information),
        code=d.code,
        source="kdspec",
        related_information=related or None,
    )


def _publish(ls: LanguageServer, uri: str) -> None:
    doc = ls.workspace.get_text_document(uri)
    _, diags = analysis.analyse(doc.source, _name(uri))
    items = [to_lsp_diagnostic(d, doc.source) for d in diags]
    for item in items:
        for rel in item.related_information or []:
            rel.location.uri = uri
    ls.text_document_publish_diagnostics(
        lsp.PublishDiagnosticsParams(uri=uri, diagnostics=items, version=doc.version)
    )


def did_open(ls: LanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
    """Check the file as soon as it is opened."""
    _publish(ls, params.text_document.uri)


def did_change(ls: LanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
    """Check again on every edit (the workspace has applied the change already)."""
    _publish(ls, params.text_document.uri)


def hover(ls: LanguageServer, params: lsp.HoverParams) -> lsp.Hover | None:
    """A function's vocabulary entry, a side's kind, a role or a parameter."""
    doc = ls.workspace.get_text_document(params.text_document.uri)
    text = analysis.hover(doc.source, _name(doc.uri), _offset(doc.source, params.position))
    if text is None:
        return None
    return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text))


def completion(ls: LanguageServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    """Roles, taps, functions, term names and keywords, by context."""
    doc = ls.workspace.get_text_document(params.text_document.uri)
    items = analysis.completions(doc.source, _name(doc.uri), _offset(doc.source, params.position))
    return lsp.CompletionList(
        is_incomplete=False,
        items=[
            lsp.CompletionItem(
                label=c.label, kind=_KINDS.get(c.kind), detail=c.detail, insert_text=c.insert
            )
            for c in items
        ],
    )


def formatting(ls: LanguageServer, params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit]:
    """One edit replacing the whole buffer with ``kdspec fmt``'s layout (none if unchanged or
    if the buffer does not parse)."""
    doc = ls.workspace.get_text_document(params.text_document.uri)
    new = analysis.formatted(doc.source, _name(doc.uri))
    if new is None or new == doc.source:
        return []
    source = SourceFile("", doc.source)
    end = _position(source, len(doc.source))
    return [lsp.TextEdit(range=lsp.Range(lsp.Position(0, 0), end), new_text=new)]


def build_server() -> LanguageServer:
    """The language server with every feature registered (start it with ``start_io()``)."""
    server = LanguageServer("kdspec", _version())
    server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)(did_open)
    server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)(did_change)
    server.feature(lsp.TEXT_DOCUMENT_HOVER)(hover)
    server.feature(
        lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=[".", " ", "("])
    )(completion)
    server.feature(lsp.TEXT_DOCUMENT_FORMATTING)(formatting)
    return server


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("kdspec")
    except metadata.PackageNotFoundError:  # pragma: no cover - a bare source checkout
        return "0"
