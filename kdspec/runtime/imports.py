"""`import:` sources: importing user code only with the permission of the person running kdspec.

A run file may name ``import:package.module:name`` as a model source (``[models]``) or a data
source (``[data] source``). Importing a module runs its code, so the permission never comes
from the file being loaded (a downloaded run file could otherwise run anything); it comes from
the person running the command, in one of three places, merged:

* the command line: ``--allow-import MOD[,MOD]`` (train, compare, reproduce, taps);
* the environment: ``KDSPEC_ALLOW_IMPORT=MOD[,MOD]``;
* the user's config file, outside any project: ``$XDG_CONFIG_HOME/kdspec/config.toml``
  (default ``~/.config/kdspec/config.toml``) with ``allow_import = ["MOD", ...]``.

Allowing ``pkg`` allows ``pkg`` and its submodules. The current folder is put on the import
path while an allowed module is imported, so ``import:mymodels:Net`` finds ``./mymodels.py``.

Even in an allowed module, only a *factory* is called, and it is checked before the call:

* a class deriving from the expected base (``nn.Module`` for models, ``Dataset`` for data), or
* a Python function whose return annotation is such a class, or
* a class or Python function defined in an allowed module that is the user's own code (a
  file outside the standard library and the installed packages); what it returns is checked.

So ``import:os:system`` (a builtin) and ``import:torch.hub:load`` (an installed package's
loader, unannotated) are refused even when ``os`` or ``torch`` is allowed.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import sysconfig
import tomllib
import traceback
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_VAR",
    "ImportRefused",
    "allowed_imports",
    "bindable",
    "call_factory",
    "code_fingerprint",
    "import_factory",
    "is_user_code",
    "split_modules",
    "user_config_path",
]

ENV_VAR = "KDSPEC_ALLOW_IMPORT"
CONFIG_SHOWN = "~/.config/kdspec/config.toml"  # how messages name the user config file


class ImportRefused(Exception):
    """Why an ``import:`` source was not imported or not called.

    Attributes:
        code: The diagnostic code (KD406 not allowed or not a factory, KD404 not found).
        message: One line for the diagnostic.
        help: What to do about it.
    """

    def __init__(
        self, code: str, message: str, help: str | None = None, bad_arguments: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.help = help
        self.bad_arguments = bad_arguments


def user_config_path() -> Path:
    """The user's kdspec config file (``$XDG_CONFIG_HOME/kdspec/config.toml``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "kdspec" / "config.toml"


def split_modules(items: Iterable[str]) -> list[str]:
    """``["a,b", " c "]`` -> ``["a", "b", "c"]`` (the flag and the variable take lists)."""
    return [m.strip() for item in items for m in str(item).split(",") if m.strip()]


def _from_config() -> list[str]:
    path = user_config_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    value = data.get("allow_import", [])
    if isinstance(value, str):
        value = [value]
    return split_modules(v for v in value if isinstance(v, str)) if isinstance(value, list) else []


def allowed_imports(cli: Iterable[str] = ()) -> tuple[str, ...]:
    """The modules the person running kdspec allows: flag + environment + user config."""
    found = [*split_modules(cli), *split_modules([os.environ.get(ENV_VAR, "")]), *_from_config()]
    return tuple(dict.fromkeys(found))


def _is_allowed(module: str, allowed: Iterable[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def where_permission_comes_from(top: str) -> str:
    """The help text of every "not allowed" diagnostic."""
    return (
        f"importing runs its code, so only you can allow it: pass `--allow-import {top}`, "
        f'set `{ENV_VAR}={top}`, or add `allow_import = ["{top}"]` to {CONFIG_SHOWN}'
    )


def _library_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    return [Path(r).resolve() for r in roots if r]


def is_user_code(module: Any) -> bool:
    """True for a module loaded from a file outside the standard library and installed packages."""
    file = getattr(module, "__file__", None)
    if not file:
        return False  # builtin or frozen modules
    path = Path(file).resolve()
    return not any(path.is_relative_to(root) for root in _library_roots())


def _cwd_on_path() -> None:
    """Put the current folder last on the import path (it can shadow no installed module).

    It stays there: data-loader workers started by ``spawn`` re-import the user's module
    from the parent's path.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def call_factory(factory: Any, kwargs: dict[str, Any], spec: str, code: str) -> Any:
    """Call an ``import:`` factory; what goes wrong in the user's code is a diagnostic.

    Raises:
        ImportRefused: ``code`` with ``bad_arguments`` when the keywords do not fit the
            signature; ``code`` naming the exception and where it was raised otherwise.
    """
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ImportRefused(
            code, f"`import:{spec}` does not take these arguments: {exc}", bad_arguments=True
        ) from None
    except ValueError:  # no signature to check (some builtin classes)
        pass
    try:
        return factory(**kwargs)
    except Exception as exc:
        raise ImportRefused(
            code,
            f"`import:{spec}` raised {type(exc).__name__}: {str(exc).strip()[:300]}",
            f"raised at {_where(exc)}, in the code `import:{spec}` runs",
        ) from None


def _returns(fn: Any, base: type) -> bool:
    """Whether ``fn``'s return annotation names a subclass of ``base`` (or a union of them)."""
    try:
        ret = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that does not resolve says nothing
        return False
    union = typing.get_origin(ret) in (typing.Union, types.UnionType)
    candidates = typing.get_args(ret) if union else (ret,)
    return bool(candidates) and all(isinstance(c, type) and issubclass(c, base) for c in candidates)


def import_factory(spec: str, allowed: Iterable[str], base: type, what: str = "model") -> Any:
    """Import ``package.module:name`` and return it if it is a factory of ``base``.

    Args:
        spec: ``package.module:name`` (the part after ``import:``).
        allowed: Modules the person running kdspec allowed (see :func:`allowed_imports`).
        base: The class the factory must make (``nn.Module``, ``Dataset``).
        what: ``model`` or ``data``, for messages.

    Raises:
        ImportRefused: KD406 when the module is not allowed or the name is not a factory;
            KD404 when the module or the name does not exist.
    """
    allowed = tuple(allowed)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ImportRefused(
            "KD404", f"bad import source `import:{spec}`", "write `import:package.module:name`"
        )
    top = module_name.split(".")[0]
    if not _is_allowed(module_name, allowed):
        raise ImportRefused(
            "KD406", f"importing `{module_name}` is not allowed", where_permission_comes_from(top)
        )
    _cwd_on_path()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        if not isinstance(exc, ImportError):
            raise ImportRefused(
                "KD404",
                f"importing `{module_name}` raised {type(exc).__name__}: {str(exc).strip()[:300]}",
                f"raised at {_where(exc)}",
            ) from None
        raise ImportRefused(
            "KD404",
            f"cannot import `{module_name}`: {exc}",
            f"kdspec looks for it in the current folder ({os.getcwd()}) and on the Python path; "
            "run kdspec from the folder that holds it, or add its folder to `PYTHONPATH`",
        ) from None
    factory = getattr(module, attr, None)
    if factory is None:
        import difflib

        names = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=3, cutoff=0.6)
        raise ImportRefused(
            "KD404",
            f"`{module_name}` has no {what} factory `{attr}`",
            ("did you mean " + ", ".join(f"`{c}`" for c in close) + "?") if close else None,
        )
    why = _not_a_factory(factory, base, allowed)
    if why is not None:
        raise ImportRefused(
            "KD406",
            f"`{module_name}:{attr}` is not a {what} factory: {why}",
            f"name a class deriving from `{_public_name(base)}`, or a function "
            f"of your own module that returns one (annotate it `-> {base.__qualname__}` if it "
            "lives in an installed package)",
        )
    return factory


def code_fingerprint(modules: Iterable[Any], limit: int = 500) -> dict[str, str]:
    """sha256 of the source of the user's code reachable from ``modules``.

    Follows the globals of each module of the user's own code (see :func:`is_user_code`) to the
    modules, classes and functions it uses, and hashes every such module's file; installed
    packages and kdspec itself are left out (their versions are recorded elsewhere). A change
    to the code that defines a model or a dataset, even one that keeps every parameter shape
    (a different activation), changes the fingerprint.

    Returns:
        Module name -> sha256 of its file, for every user-code module reached.
    """
    import hashlib

    out: dict[str, str] = {}
    todo = [m for m in modules if m is not None]
    seen: set[str] = set()
    while todo and len(seen) < limit:
        module = todo.pop()
        name = getattr(module, "__name__", None)
        if not isinstance(name, str) or name in seen:
            continue
        seen.add(name)
        if name == "kdspec" or name.startswith("kdspec.") or not is_user_code(module):
            continue
        try:
            out[name] = hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()
        except OSError:
            out[name] = "unreadable"
        for value in list(vars(module).values()):
            target = value if isinstance(value, types.ModuleType) else None
            if target is None:
                owner = getattr(value, "__module__", None)
                target = sys.modules.get(owner) if isinstance(owner, str) else None
            if target is not None and getattr(target, "__name__", None) not in seen:
                todo.append(target)
    return dict(sorted(out.items()))


def bindable(fn: Any, candidates: dict[str, Any]) -> dict[str, Any]:
    """The candidate keywords ``fn`` accepts (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(candidates)
    return {k: v for k, v in candidates.items() if k in params}


def _public_name(cls: type) -> str:
    """``torch.nn.Module`` rather than ``torch.nn.modules.module.Module``."""
    for public in ("torch.nn", "torch.utils.data"):
        module = sys.modules.get(public)
        if module is not None and getattr(module, cls.__qualname__, None) is cls:
            return f"{public}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _not_a_factory(factory: Any, base: type, allowed: Iterable[str]) -> str | None:
    """None if ``factory`` may be called to make a ``base``, else why not."""
    is_class = inspect.isclass(factory)
    if is_class and issubclass(factory, base):
        return None
    if not is_class and not inspect.isfunction(factory):
        return f"it is a {type(factory).__name__}, not a class or a Python function"
    if not is_class and _returns(factory, base):
        return None
    home = sys.modules.get(getattr(factory, "__module__", "") or "")
    if home is None or not _is_allowed(home.__name__, allowed):
        return f"it is defined in `{factory.__module__}`, which you did not allow"
    if not is_user_code(home):
        kind = f"a class not deriving from `{base.__qualname__}`" if is_class else "a function"
        return f"it is {kind} of the standard library or of an installed package"
    return None
