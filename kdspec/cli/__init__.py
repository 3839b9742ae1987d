"""The ``kdspec`` command line: one module per subcommand."""
