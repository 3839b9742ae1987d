"""Editor support: a Pygments lexer (``lexer``) and a language server (``lsp``).

Both are optional integrations: ``pip install 'kdspec[pygments]'`` / ``'kdspec[lsp]'``.
The words they highlight and complete come from the grammar and the vocabulary table, so a
new keyword or function shows up without touching this package (tests check both).
"""
