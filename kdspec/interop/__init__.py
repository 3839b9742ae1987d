"""Other tools' formats in and out: torchdistill configs (import), plain PyTorch (export)."""
