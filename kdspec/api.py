"""The front end as functions: load, check and lower specs (no torch imported here)."""

from __future__ import annotations

from pathlib import Path

from kdspec import passes
from kdspec._resources import library_dir
from kdspec.diagnostics import Diagnostic, KdError, Severity, error
from kdspec.ir import Lowered
from kdspec.source import SourceFile
from kdspec.taxonomy.claims import check_claims


def check_source(
    source: SourceFile,
    overrides: dict[str, object] | None = None,
    library: Path | None = None,
) -> tuple[list[Lowered], list[Diagnostic]]:
    """Parse, lower and run every pass over one file.

    Args:
        source: the spec text and its name.
        overrides: parameter values (``--param T=2``) applied to every method of the file.
        library: where `use` finds methods not in this file (default: the shipped library).

    Returns:
        The lowered methods (empty on syntax errors) and all diagnostics, sorted.
    """
    return passes.check_source(source, overrides, library, extra=(check_claims,))


def library_spec(name: str | Path) -> Path | None:
    """The library file of a method name (``hinton``), unless ``name`` is an existing path."""
    path = Path(name)
    candidate = library_dir() / f"{name}.kd"
    if not path.exists() and path.name == str(name) and candidate.is_file():
        return candidate
    return None


def spec_files(paths: list[str | Path], *, library: bool = False) -> list[Path]:
    """The ``.kd`` files named by paths (folders are searched recursively).

    ``library``: a bare method name that is no path names the shipped library's spec.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        found = library_spec(p) if library else None
        if found is not None:
            out.append(found)
        elif p.is_dir():
            out.extend(sorted(p.rglob("*.kd")))
        else:
            out.append(p)
    return out


def read_source(path: str | Path) -> SourceFile | Diagnostic:
    """A spec file, or a KD105 diagnostic if it cannot be read."""
    try:
        return SourceFile.read(path)
    except OSError as exc:
        message = f"cannot read `{path}`: {exc.strerror or exc}"
        return error("KD105", message, SourceFile.named(path))


def load_method(
    spec: str | Path,
    name: str | None = None,
    overrides: dict[str, object] | None = None,
    *,
    text: str | None = None,
) -> Lowered:
    """Load one checked method from a file (or from ``text``).

    Raises:
        KdError: with every error diagnostic, if the spec has errors.

    Example:
        >>> low = load_method("hinton", text='''method hinton {
        ...   teacher t
        ...   student s
        ...   transfer softmax(T=4) from t.logits to s.logits with kl
        ... }''')
        >>> low.method.terms[0].name
        'softmax'
    """
    if text is not None:
        source = SourceFile(str(spec), text)
    else:
        path = library_spec(spec) or Path(spec)
        got = read_source(path)
        if isinstance(got, Diagnostic):
            raise KdError([got])
        source = got
    lowered, diags = check_source(source, overrides)
    errors = [d for d in diags if d.severity is Severity.ERROR]
    if errors:
        raise KdError(errors)
    if not lowered:
        raise KdError([error("KD210", "the file defines no method", source)])
    if name is None:
        return lowered[0]
    for low in lowered:
        if low.method.name == name:
            return low
    raise KdError(
        [
            error(
                "KD210",
                f"no method `{name}` in `{source.name}`",
                source,
                help="methods: " + ", ".join(low.method.name for low in lowered),
            )
        ]
    )
