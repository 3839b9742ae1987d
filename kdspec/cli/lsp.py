"""``kdspec lsp``: run the language server on stdin/stdout (for editors; needs ``kdspec[lsp]``).

Editors start it themselves; e.g. Neovim::

    vim.lsp.start({ name = "kdspec", cmd = { "kdspec", "lsp" } })
"""

from __future__ import annotations

import argparse

from kdspec.cli.common import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lsp", help="language server for editors (stdio)", description=__doc__)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from kdspec.editor.lsp import build_server
    except ModuleNotFoundError as exc:
        if exc.name not in ("pygls", "lsprotocol") and not str(exc.name).startswith("pygls."):
            raise
        raise UsageError(
            "`kdspec lsp` needs the language-server extra: pip install 'kdspec[lsp]'"
        ) from None
    build_server().start_io()
    return 0
