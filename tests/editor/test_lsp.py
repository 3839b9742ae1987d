"""The language server's handlers, called in-process on a real pygls server and workspace."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pygls")

from lsprotocol import types as lsp

from kdspec.editor import lsp as kdlsp

ROOT = Path(__file__).resolve().parents[2]
URI = "file:///tmp/kdspec-editor-test/m.kd"
GOOD = """method m {
  param T = 4
  teacher t
  student s
  transfer kd: softmax(T) from t.logits to s.logits with kl weight T^2
  supervise ce: s.logits with cross_entropy
}
"""


@pytest.fixture
def server():
    ls = kdlsp.build_server()
    init = ls.protocol.lsp_initialize(  # a generator in pygls 2: run it to the end
        lsp.InitializeParams(capabilities=lsp.ClientCapabilities(), root_uri="file:///tmp")
    )
    for _ in init if hasattr(init, "__next__") else ():
        pass
    published: list[lsp.PublishDiagnosticsParams] = []
    ls.text_document_publish_diagnostics = published.append  # type: ignore[method-assign]
    ls.published = published  # type: ignore[attr-defined]
    return ls


def open_doc(ls, text: str, version: int = 1) -> None:
    params = lsp.DidOpenTextDocumentParams(
        text_document=lsp.TextDocumentItem(
            uri=URI, language_id="kdspec", version=version, text=text
        )
    )
    ls.workspace.put_text_document(params.text_document)
    kdlsp.did_open(ls, params)


def test_diagnostics_published_on_open_and_on_change(server) -> None:
    open_doc(server, GOOD)
    assert server.published[-1].diagnostics == []
    change = lsp.DidChangeTextDocumentParams(
        text_document=lsp.VersionedTextDocumentIdentifier(uri=URI, version=2),
        content_changes=[
            lsp.TextDocumentContentChangePartial(
                range=lsp.Range(lsp.Position(4, 31), lsp.Position(4, 39)), text="t.logit"
            )
        ],
    )
    server.workspace.update_text_document(change.text_document, change.content_changes[0])
    kdlsp.did_change(server, change)
    diags = server.published[-1].diagnostics
    assert server.published[-1].uri == URI and server.published[-1].version == 2
    assert len(diags) == 1 and diags[0].severity == lsp.DiagnosticSeverity.Error
    assert diags[0].code.startswith("KD") and "logit" in diags[0].message
    assert diags[0].range.start == lsp.Position(4, 31)  # `t.logit`, 0-based line and column


def test_hover_completion_and_formatting(server) -> None:
    open_doc(server, GOOD.replace("  teacher t", "teacher t"))
    doc = lsp.TextDocumentIdentifier(uri=URI)
    hov = kdlsp.hover(server, lsp.HoverParams(text_document=doc, position=lsp.Position(4, 57)))
    assert hov is not None and "**kl**" in hov.contents.value
    items = kdlsp.completion(
        server, lsp.CompletionParams(text_document=doc, position=lsp.Position(4, 33))
    ).items
    assert [i.label for i in items][:2] == ["logits", "embedding"]
    assert items[0].kind == lsp.CompletionItemKind.Field
    edits = kdlsp.formatting(
        server,
        lsp.DocumentFormattingParams(text_document=doc, options=lsp.FormattingOptions(2, True)),
    )
    assert len(edits) == 1 and edits[0].new_text == GOOD


def _frame(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_kdspec_lsp_speaks_the_protocol_on_stdio() -> None:
    """One end-to-end smoke test of the command: initialize, then shut down cleanly."""
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"processId": None, "rootUri": None, "capabilities": {}}},
        {"jsonrpc": "2.0", "method": "initialized", "params": {}},
        {"jsonrpc": "2.0", "id": 2, "method": "shutdown"},
        {"jsonrpc": "2.0", "method": "exit"},
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "kdspec", "lsp"],
        input=b"".join(_frame(m) for m in messages),
        capture_output=True,
        timeout=60,
    )
    replies = [
        json.loads(part)
        for part in re.split(rb"Content-Length: \d+\r\n(?:[^\r\n]+\r\n)*\r\n", proc.stdout)
        if part
    ]
    init = next(r for r in replies if r.get("id") == 1)["result"]["capabilities"]
    assert init["hoverProvider"] and init["documentFormattingProvider"]
    assert "." in init["completionProvider"]["triggerCharacters"]
    assert init["textDocumentSync"]
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
