"""Golden files: `tests/golden/<kind>/*.kd` against the expected output beside each one.

- ``parse/x.kd`` → ``parse/x.ast``: the syntax tree (``golden_util.dump_ast``);
- ``fmt/x.kd`` → ``fmt/x.fmt.kd``: the formatted text, which must also be a fixed point of the
  formatter and parse to the same tree;
- ``diag/x.kd`` → ``diag/x.err``: every diagnostic, rendered in full without colour. A file named
  ``kdNNN_*.kd`` must produce a ``KDNNN`` diagnostic.

Run ``pytest tests/test_golden.py --update-golden`` to rewrite the expected files, then review
the diff.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from golden_util import assert_golden, dump_ast

from kdspec.diagnostics import Diagnostic, render_many
from kdspec.source import SourceFile
from kdspec.syntax import parse_source, try_parse
from kdspec.syntax.fmt import format_text

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).parent.parent
KINDS = ("parse", "fmt", "diag", "run")
SYNTAX_CODES = ("KD101", "KD102", "KD103")


def _inputs(kind: str) -> list[Path]:
    pattern = "*.toml" if kind == "run" else "*.kd"
    return sorted(p for p in (GOLDEN / kind).glob(pattern) if not p.name.endswith(".fmt.kd"))


def _cases() -> Iterator[object]:
    for kind in KINDS:
        for path in _inputs(kind):
            yield pytest.param(kind, path, id=f"{kind}/{path.stem}")


def _source(path: Path) -> SourceFile:
    return SourceFile(path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8"))


def check_diagnostics(source: SourceFile) -> list[Diagnostic]:
    """Every diagnostic for a file: the whole checking pipeline once there is one, else parsing."""
    try:
        from kdspec.api import check_source  # type: ignore[import-not-found]
    except ImportError:
        return try_parse(source)[1]
    result = check_source(source)
    if isinstance(result, tuple):  # (lowered methods, diagnostics)
        result = result[-1]
    return list(result)


def _run_parse(source: SourceFile, path: Path) -> tuple[str, Path]:
    return dump_ast(parse_source(source), source), path.with_suffix(".ast")


def _run_fmt(source: SourceFile, path: Path) -> tuple[str, Path]:
    formatted = format_text(source.text, source.name)
    assert format_text(formatted) == formatted, "formatting is not idempotent"
    before, after = parse_source(source), parse_source(SourceFile(source.name, formatted))
    assert after == before, "formatting changed the syntax tree"
    assert [c.text.rstrip() for c in after.comments] == [c.text.rstrip() for c in before.comments]
    return formatted, path.with_suffix(".fmt.kd")


def compile_diagnostics(source: SourceFile) -> list[Diagnostic]:
    """KD4xx diagnostics of compiling onto the zoo models a ``# models: t=resnet8 ...`` line names.

    The example batch is digits-shaped (``[8, 1, 8, 8]``, 10 classes).
    """
    tokens = re.search(r"^# tokens:(.*)$", source.text, re.M)
    if tokens is not None:
        return _token_diagnostics(source, tokens.group(1).split())
    header = re.search(r"^# models:(.*)$", source.text, re.M)
    if header is None:
        return []
    import torch

    from kdspec.api import check_source
    from kdspec.compiler import compile_spec
    from kdspec.diagnostics import KdError
    from kdspec.zoo import build_model

    models = {}
    for item in header.group(1).split():
        role, name = item.split("=")
        models[role] = build_model(name, 10, 1)
    lowered, _ = check_source(source)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    try:
        compile_spec(lowered[0], models, (x, y, torch.arange(8)))
    except KdError as exc:
        return list(exc.diagnostics)
    return []


def _token_diagnostics(source: SourceFile, taps: list[str]) -> list[Diagnostic]:
    """KD4xx/KD5xx of compiling on token data: the taps a ``# tokens: t.logits ...`` line names
    given as [2, 5, 7] tensors, per-token labels (-100 at the padding) and an attention mask."""
    import torch

    from kdspec.api import check_source
    from kdspec.compiler import compile_spec
    from kdspec.diagnostics import KdError

    lowered, _ = check_source(source)
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = torch.randint(0, 7, (2, 5)).masked_fill(attention == 0, -100)
    batch: dict[str, object] = {tap: torch.randn(2, 5, 7) for tap in taps}
    batch.update(labels=labels, attention_mask=attention)
    try:
        compile_spec(lowered[0], None, batch)
    except KdError as exc:
        return list(exc.diagnostics)
    return []


def _run_diag(source: SourceFile, path: Path) -> tuple[str, Path]:
    diagnostics = check_diagnostics(source) + compile_diagnostics(source)
    assert diagnostics, "a diag golden must produce at least one diagnostic"
    code = re.match(r"(kd\d{3})_", path.name)
    if code:
        assert code.group(1).upper() in {d.code for d in diagnostics}
    return render_many(diagnostics, "full") + "\n", path.with_suffix(".err")


def _run_run(source: SourceFile, path: Path) -> tuple[str, Path]:
    """``run/x.toml`` → ``run/x.err``: a run file prepared for the spec its ``# spec:`` names."""
    from kdspec.api import load_method
    from kdspec.diagnostics import KdError
    from kdspec.runtime.job import JobOptions, prepare
    from kdspec.runtime.runfile import load_run

    name = re.search(r"^# spec: (\S+)$", source.text, re.M)
    assert name, "a run golden names its spec: `# spec: hinton`"
    spec = f"specs/{name.group(1)}.kd"
    diagnostics: list[Diagnostic] = []
    try:
        run = load_run(path.relative_to(ROOT))
        low = load_method(
            spec, overrides=dict(run.config.params), text=(ROOT / spec).read_text(encoding="utf-8")
        )
        prepare(low, run, JobOptions(log=lambda message: None))
    except KdError as exc:
        diagnostics = list(exc.diagnostics)
    code = re.match(r"(kd\d{3})_", path.name)
    assert code and code.group(1).upper() in {d.code for d in diagnostics}
    return render_many(diagnostics, "full") + "\n", path.with_suffix(".err")


RUNNERS: dict[str, Callable[[SourceFile, Path], tuple[str, Path]]] = {
    "parse": _run_parse,
    "fmt": _run_fmt,
    "diag": _run_diag,
    "run": _run_run,
}


@pytest.mark.parametrize(("kind", "path"), list(_cases()))
def test_golden(kind: str, path: Path, update_golden: bool) -> None:
    source = _source(path)
    assert source.text.startswith("# title:"), "golden inputs start with a `# title:` comment"
    actual, expected = RUNNERS[kind](source, path)
    assert_golden(expected, actual, update_golden)


def test_no_orphan_expected_files() -> None:
    """Every expected file has its input (a renamed input leaves no stale golden behind)."""
    inputs = {p.with_suffix("") for kind in KINDS for p in _inputs(kind)}
    for kind, suffix in (("parse", ".ast"), ("fmt", ".fmt.kd"), ("diag", ".err"), ("run", ".err")):
        for expected in (GOLDEN / kind).glob(f"*{suffix}"):
            stem = expected.name[: -len(suffix)]
            assert expected.with_name(stem) in inputs, f"{expected.name} has no input .kd"


# Codes a spec alone cannot produce: checked by the tests named beside them instead.
NOT_FROM_SPECS = {
    "KD104": "defensive: a parse tree the transformer cannot handle (fuzz tests assert it never "
    "happens)",
    "KD210": "asking the API for a method the file lacks (tests/cli)",
    "KD503": "a non-finite loss during training (tests/cli/test_cli_train.py)",
    "KD504": "a Distiller not told where training is (tests/runtime/test_own_loop.py)",
    "KD505": "unwritable run folders and caches (tests/security/test_train_files.py)",
    "KD601": "a torchdistill config setting (tests/interop/test_torchdistill_import.py)",
    "KD602": "an unreadable torchdistill config (tests/interop/test_torchdistill_import.py)",
    "KD603": "a method kdspec export cannot write out (tests/compiler/test_eject.py)",
    "KD409": "`hf:` folders whose tokenizers differ (tests/runtime/test_hf_source.py)",
}


def test_every_diagnostic_code_has_a_diag_golden() -> None:
    from kdspec.diagnostics import CODES

    rendered = "".join(p.read_text(encoding="utf-8") for p in GOLDEN.glob("*/*.err"))
    missing = [c for c in CODES if f"[{c}]" not in rendered and c not in NOT_FROM_SPECS]
    assert not missing, f"no golden/diag/*.err shows {missing}"
    assert set(NOT_FROM_SPECS) <= set(CODES)
