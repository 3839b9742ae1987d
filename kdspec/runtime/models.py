"""Build the models of a run's roles from source strings, and load their weights.

A source names where an architecture comes from:

* ``zoo:resnet8x4`` — :mod:`kdspec.zoo` (sized from the data: classes, input channels);
* ``torchvision:resnet18`` / ``timm:resnet18`` — freshly initialised (no pretrained download);
* ``hf:path/config.json`` or ``hf:path/to/dir`` — a transformers model built from a *local*
  config (with the folder's weights if it has them); never a hub download. Its head is the
  config's architecture (``...ForCausalLM``/``...LMHeadModel``: a causal LM, ``...ForMaskedLM``:
  a masked LM, ``BertModel`` & co.: the bare encoder, else a sequence classifier), or
  ``[model_options] role = { head = "causal_lm" }`` (``masked_lm``, ``base``,
  ``sequence_classification``). Its tokenizer, if the folder has one: :func:`hf_tokenizer`;
  roles whose tokenizers differ are KD409;
* ``import:pkg.module:factory`` — a class deriving from ``nn.Module`` or a function of the
  user's code returning one, only from modules the person running kdspec allows
  (``--allow-import pkg``, ``KDSPEC_ALLOW_IMPORT``, the user config; see
  :mod:`kdspec.runtime.imports`), since importing runs code.

Every failure is a diagnostic (KD404 unknown model, KD405 bad checkpoint, KD406 import not
allowed), pointing at the run file's key when there is one; never a traceback.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdspec.diagnostics import KdError
from kdspec.runtime.imports import (
    ImportRefused,
    allowed_imports,
    bindable,
    call_factory,
    code_fingerprint,
    import_factory,
)
from kdspec.runtime.runfile import Run
from kdspec.source import read_regular_file

__all__ = [
    "HF_HEADS",
    "SCHEMES",
    "brings_weights",
    "build_model_from_source",
    "check_tokenizers",
    "hf_tokenizer",
    "load_weights",
    "source_fingerprint",
]

SCHEMES = ("zoo", "torchvision", "timm", "hf", "import")

_INSTALL = {
    "torchvision": "install the build matching your torch with `pip install torchvision` "
    "(CPU-only torch: add `--index-url https://download.pytorch.org/whl/cpu`)",
    "timm": "install it with `pip install timm`",
    "transformers": "install it with `pip install transformers`",
}


def build_model_from_source(
    role: str,
    source: str,
    num_classes: int,
    in_channels: int,
    run: Run,
    allow_import: Iterable[str] = (),
) -> nn.Module:
    """Build the model of one role.

    Args:
        role: The role's name (diagnostics point at ``[models].<role>``).
        source: ``scheme:name`` (see the module docstring).
        num_classes: Outputs of the classifier.
        in_channels: Input channels of the data.
        run: The run (for diagnostics and relative paths).
        allow_import: Modules ``import:`` may load (merged with ``KDSPEC_ALLOW_IMPORT`` and the
            user config, :func:`~kdspec.runtime.imports.allowed_imports`).

    Returns:
        A freshly initialised model (weights are loaded separately, :func:`load_weights`).

    Raises:
        KdError: KD404 (unknown source or missing package) or KD406 (import not allowed).
    """
    scheme, sep, name = source.partition(":")
    keys = ("models", role)
    options = dict(run.config.model_options.get(role, {}))
    if not sep or scheme not in SCHEMES:
        close = difflib.get_close_matches(scheme, SCHEMES, n=1)
        hint = f"did you mean `{close[0]}:{name}`? " if close and sep else ""
        raise KdError(
            [
                run.diagnostic(
                    "KD404",
                    f"model source `{source}` of role `{role}` has no known scheme",
                    keys,
                    label="unknown source",
                    help=hint + "a source reads `zoo:NAME`, `torchvision:NAME`, `timm:NAME`, "
                    "`hf:LOCAL_PATH` or `import:package.module:factory`",
                )
            ]
        )
    try:
        if scheme == "zoo":
            return _zoo(role, name, num_classes, in_channels, run, options)
        if scheme == "torchvision":
            return _torchvision(role, name, num_classes, in_channels, run, options)
        if scheme == "timm":
            return _timm(role, name, num_classes, in_channels, run, options)
        if scheme == "hf":
            return _hf(role, name, num_classes, run, options)
        return _import(role, name, num_classes, in_channels, run, allow_import, options)
    except TypeError as exc:
        if not options:
            raise
        raise KdError(
            [
                run.diagnostic(
                    "KD404",
                    f"model `{source}` of role `{role}` does not take these options: {exc}",
                    ("model_options", role),
                    label="bad options",
                )
            ]
        ) from None


def _fail(run: Run, role: str, message: str, help_text: str | None, code: str = "KD404") -> KdError:
    return KdError([run.diagnostic(code, message, ("models", role), label=message, help=help_text)])


def _close(name: str, names: Iterable[str]) -> str | None:
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    return "did you mean " + ", ".join(f"`{by_lower[c]}`" for c in close) + "?" if close else None


MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32 weights: larger is a typo on a training run


def _zoo(
    role: str, name: str, num_classes: int, in_channels: int, run: Run, options: dict[str, Any]
) -> nn.Module:
    from kdspec.zoo import available_models, build_model

    try:
        with torch.device("meta"):  # sized first without memory: `hidden = [1e6, 1e6]`
            probe = build_model(name, num_classes=num_classes, in_channels=in_channels, **options)
        size = sum(p.numel() for p in probe.parameters())
        if size > MAX_PARAMETERS:
            raise KdError(
                [
                    run.diagnostic(
                        "KD404",
                        f"model `zoo:{name}` of role `{role}` would have {size:,} parameters, "
                        f"more than the {MAX_PARAMETERS:,} allowed",
                        ("model_options", role) if options else ("models", role),
                        label="too large",
                        help="check `[model_options]` and `num_classes` for a typo",
                    )
                ]
            )
        return build_model(name, num_classes=num_classes, in_channels=in_channels, **options)
    except KeyError:
        hint = _close(name, available_models())
        raise _fail(
            run,
            role,
            f"unknown zoo model `{name}`",
            (hint + " " if hint else "") + "zoo models: " + ", ".join(available_models()),
        ) from None


def _need(package: str, run: Run, role: str, source: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise _fail(
            run,
            role,
            f"model `{source}` needs `{package}`, which is not installed",
            _INSTALL[package],
        ) from None


def _torchvision(
    role: str, name: str, num_classes: int, in_channels: int, run: Run, options: dict[str, Any]
) -> nn.Module:
    tv = _need("torchvision", run, role, f"torchvision:{name}")
    names = tv.models.list_models()
    if name not in names:
        raise _fail(run, role, f"unknown torchvision model `{name}`", _close(name, names))
    if in_channels != 3:
        raise _fail(
            run,
            role,
            f"torchvision model `{name}` takes 3 input channels, the data has {in_channels}",
            "use a `zoo:` or `timm:` model (timm adapts the stem with `in_chans`)",
        )
    return tv.models.get_model(name, weights=None, num_classes=num_classes, **options)


def _timm(
    role: str, name: str, num_classes: int, in_channels: int, run: Run, options: dict[str, Any]
) -> nn.Module:
    timm = _need("timm", run, role, f"timm:{name}")
    names = timm.list_models()
    if name not in names:
        raise _fail(run, role, f"unknown timm model `{name}`", _close(name, names))
    return timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options
    )


# The head an `hf:` model gets: the transformers auto class of each `head` option.
HF_HEADS = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "masked_lm": "AutoModelForMaskedLM",
    "base": "AutoModel",
}


def _hf_head(config: Any, options: dict[str, Any], run: Run, role: str) -> str:
    """The ``head`` option, else the one the config's architecture names."""
    head = options.pop("head", None)
    if head is not None:
        if head not in HF_HEADS:
            raise KdError(
                [
                    run.diagnostic(
                        "KD404",
                        f"unknown `hf:` head `{head}` for role `{role}`",
                        ("model_options", role),
                        label="unknown head",
                        help="`head` is one of " + ", ".join(f"`{h}`" for h in HF_HEADS),
                    )
                ]
            )
        return str(head)
    arch = next(iter(getattr(config, "architectures", None) or []), "")
    if arch.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal_lm"
    if arch.endswith("ForMaskedLM"):
        return "masked_lm"
    if arch.endswith("Model"):
        return "base"
    return "sequence_classification"


def _hf(
    role: str, name: str, num_classes: int, run: Run, options: dict[str, Any] | None = None
) -> nn.Module:
    path = run.resolve_path(name)
    if not path.exists():
        raise _fail(
            run,
            role,
            f"`hf:` model `{name}` is not a local file or folder",
            "give a local `config.json` or a folder saved with `save_pretrained`; "
            "kdspec never downloads from the hub",
        )
    tf = _need("transformers", run, role, f"hf:{name}")
    config_file = path / "config.json" if path.is_dir() else path
    _hf_refuse_remote_code(role, name, config_file, run)
    options = dict(options or {})
    try:
        config = tf.AutoConfig.from_pretrained(str(config_file), trust_remote_code=False)
        head = _hf_head(config, options, run, role)
        if options:
            raise KdError(
                [
                    run.diagnostic(
                        "KD404",
                        f"`hf:` models take only `head` in `[model_options]`, not "
                        f"{', '.join(f'`{k}`' for k in sorted(options))}",
                        ("model_options", role),
                        label="unknown option",
                    )
                ]
            )
        if head == "sequence_classification":
            config.num_labels = num_classes
        cls = getattr(tf, HF_HEADS[head])
        if not brings_weights(role, f"hf:{name}", run):
            return cls.from_config(config, trust_remote_code=False)
        safetensors = (path / HF_WEIGHT_FILES[0]).is_file()
        if not safetensors:
            _hf_check_pickle(role, name, path / HF_WEIGHT_FILES[1], run)
        return cls.from_pretrained(
            str(path),
            config=config,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=safetensors,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise _fail(run, role, f"`hf:{name}` could not be loaded: {first}", None) from None


def _hf_refuse_remote_code(role: str, name: str, config_file: Path, run: Run) -> None:
    """KD404 for a config that is unreadable or maps to code in the folder (``auto_map``):
    kdspec never runs a model folder's code (``trust_remote_code`` is never set)."""
    try:
        config = json.loads(read_regular_file(config_file, 1 << 20))
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not JSON"
        raise _fail(
            run, role, f"`hf:{name}`: cannot read `{config_file}`: {detail}", None
        ) from None
    if not isinstance(config, dict):
        raise _fail(run, role, f"`hf:{name}`: `{config_file}` is not a JSON object", None)
    if "auto_map" in config:
        raise _fail(
            run,
            role,
            f"`hf:{name}` asks to run code from the model folder (`auto_map` in config.json)",
            "kdspec never runs code shipped with a model (no `trust_remote_code`); use a "
            "model class transformers has built in, or an `import:` factory you allow",
        )


def _hf_check_pickle(role: str, name: str, weights: Path, run: Run) -> None:
    """KD405 unless a ``pytorch_model.bin`` loads with ``weights_only`` (plain tensors)."""
    try:
        torch.load(weights, weights_only=True, map_location="cpu")
    except Exception as exc:  # an unpickler refusal, a corrupt zip, a truncated file...
        raise _fail(
            run,
            role,
            f"`hf:{name}`: `{weights.name}` is not a plain weights file "
            f"({type(exc).__name__}); it was not loaded",
            "only safetensors or `weights_only` pickles are loaded; a pickle that needs more "
            "could run code",
            code="KD405",
        ) from None


def _import(
    role: str,
    spec: str,
    num_classes: int,
    in_channels: int,
    run: Run,
    allowed: Iterable[str],
    options: dict[str, Any],
) -> nn.Module:
    try:
        factory = import_factory(spec, allowed_imports(allowed), nn.Module, "model")
    except ImportRefused as exc:
        raise _fail(run, role, exc.message, exc.help, code=exc.code) from None
    kwargs = bindable(factory, {"num_classes": num_classes, "in_channels": in_channels})
    try:
        model = call_factory(factory, {**kwargs, **options}, spec, "KD404")
    except ImportRefused as exc:
        keys = ("model_options", role) if exc.bad_arguments and options else ("models", role)
        raise KdError(
            [run.diagnostic(exc.code, exc.message, keys, label=exc.message, help=exc.help)]
        ) from None
    if not isinstance(model, nn.Module):
        raise _fail(
            run,
            role,
            f"`{spec}` returned {type(model).__name__}, not an `nn.Module`",
            None,
        )
    return model


HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _hf_has_weights(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in HF_WEIGHT_FILES)


def brings_weights(role: str, source: str, run: Run) -> bool:
    """Whether the model of ``role`` comes trained from its source (so it is used as is).

    An ``hf:`` folder holding weights does; ``[pretrained] role = true`` says an ``import:``
    factory returns a trained model (and ``false`` makes an ``hf:`` folder's model start
    fresh). ``zoo:``, ``torchvision:`` and ``timm:`` models are always freshly initialised.

    Raises:
        KdError: KD501 when ``[pretrained]`` claims weights a source cannot bring.
    """
    declared = run.config.pretrained.get(role)
    scheme, _, name = source.partition(":")
    has = scheme == "hf" and _hf_has_weights(run.resolve_path(name))
    if declared is None:
        return has
    if declared and scheme in ("zoo", "torchvision", "timm"):
        raise KdError(
            [
                run.diagnostic(
                    "KD501",
                    f"`{source}` is freshly initialised, so `[pretrained] {role} = true` is "
                    "not true",
                    ("pretrained", role),
                    label="claims trained weights",
                    help=f'give trained weights in `[weights] {role} = "path.pt"`, or remove '
                    "this line to pre-train it",
                )
            ]
        )
    if declared and scheme == "hf" and not has:
        raise KdError(
            [
                run.diagnostic(
                    "KD501",
                    f"`{source}` has no weight file ({', '.join(HF_WEIGHT_FILES)}), so "
                    f"`[pretrained] {role} = true` is not true",
                    ("pretrained", role),
                    label="claims trained weights",
                )
            ]
        )
    return bool(declared)


# Files a folder saved with a tokenizer's `save_pretrained` holds (any one of them).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


def hf_tokenizer(source: str, run: Run) -> Any:
    """The tokenizer of an ``hf:`` folder (None for other sources or a folder without one).

    Loaded from local files only, never with code from the folder.
    """
    scheme, _, name = source.partition(":")
    if scheme != "hf":
        return None
    path = run.resolve_path(name)
    folder = path if path.is_dir() else path.parent
    if not any((folder / f).is_file() for f in HF_TOKENIZER_FILES):
        return None
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise KdError(
            [
                run.diagnostic(
                    "KD404",
                    f"the tokenizer of `{source}` could not be loaded: {first}",
                    ("models",),
                    label="tokenizer",
                )
            ]
        ) from None


def _vocabulary_difference(a: Any, b: Any) -> str | None:
    """How two tokenizers differ (None: the same vocabulary and special tokens)."""
    va, vb = a.get_vocab(), b.get_vocab()
    if len(va) != len(vb):
        return f"{len(va)} tokens against {len(vb)}"
    moved = [t for t, i in va.items() if vb.get(t) != i]
    if moved:
        first = moved[0]
        return f"{len(moved)} tokens have other ids (`{first}`: {va[first]}, {vb.get(first)})"
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        if getattr(a, attr, None) != getattr(b, attr, None):
            return f"`{attr}` is {getattr(a, attr, None)} against {getattr(b, attr, None)}"
    return None


def check_tokenizers(sources: Mapping[str, str], run: Run) -> None:
    """KD409 when roles read text through different tokenizers.

    Per-token knowledge (logits over the vocabulary, token positions) lines up only when the
    teacher and the student share a tokenizer; roles whose source brings no tokenizer are not
    compared.

    Raises:
        KdError: KD409 naming both roles and how their vocabularies differ.
    """
    found = [(role, tok) for role, src in sources.items() if (tok := hf_tokenizer(src, run))]
    first_role, first = found[0] if found else ("", None)
    for role, tok in found[1:]:
        diff = _vocabulary_difference(first, tok)
        if diff is None:
            continue
        raise KdError(
            [
                run.diagnostic(
                    "KD409",
                    f"roles `{first_role}` and `{role}` have different tokenizers ({diff})",
                    ("models", role),
                    label="another tokenizer",
                    help="distil between models that share a tokenizer (token positions and "
                    "vocabulary classes must line up), e.g. a student saved with the "
                    "teacher's tokenizer",
                )
            ]
        )


def source_fingerprint(source: str, model: nn.Module, run: Run) -> dict[str, Any]:
    """What, besides the source string, determines a model built from ``source``.

    Part of the teacher-cache key: the sha256 of the user's code behind an ``import:`` model
    (its factory's module, the model's class and the user modules they use), the ``config.json``
    of an ``hf:`` model, the package version of ``torchvision:``/``timm:`` models. ``zoo:``
    models are covered by :data:`kdspec.zoo.ZOO_VERSION`.
    """
    scheme, _, name = source.partition(":")
    if scheme == "import":
        modules = [sys.modules.get(name.partition(":")[0])]
        modules += [sys.modules.get(c.__module__) for c in type(model).__mro__]
        return {"code": code_fingerprint(modules)}
    if scheme == "hf":
        path = run.resolve_path(name)
        config = path / "config.json" if path.is_dir() else path
        try:
            return {"config_sha256": hashlib.sha256(config.read_bytes()).hexdigest()}
        except OSError:
            return {}
    if scheme in ("torchvision", "timm"):
        try:
            return {"version": metadata.version(scheme)}
        except metadata.PackageNotFoundError:
            return {}
    return {}


def load_weights(model: nn.Module, role: str, path: str | Path, run: Run) -> None:
    """Load a checkpoint into a role's model (strictly: every key, every shape).

    Accepts a state dict, or a dict holding one under ``model`` or ``state_dict``
    (RepDistiller's teachers use ``model``); a ``module.`` prefix (DataParallel) is removed.

    Raises:
        KdError: KD405 naming the file and the first missing/unexpected/mismatched keys.
    """
    file = run.resolve_path(str(path))
    keys = ("weights", role)

    def fail(message: str, notes: list[str] | None = None, help_text: str | None = None) -> KdError:
        return KdError(
            [
                run.diagnostic(
                    "KD405",
                    message,
                    keys,
                    label="this checkpoint",
                    notes=notes or [],
                    help=help_text,
                )
            ]
        )

    if not file.is_file():
        raise fail(f"checkpoint `{file}` of role `{role}` does not exist")
    try:
        obj = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise fail(
            f"cannot load checkpoint `{file}` of role `{role}`",
            [f"torch.load said: {reason[:300]}"],
            "the file is corrupt or not a PyTorch checkpoint (kdspec loads with "
            "`weights_only=True`, so pickled objects other than tensors are refused)",
        ) from None
    state = _state_dict_of(obj)
    if state is None:
        raise fail(
            f"checkpoint `{file}` of role `{role}` holds no state dict",
            [f"found a {type(obj).__name__}"],
            "save `model.state_dict()` (or `{'model': model.state_dict()}`)",
        )
    expected = model.state_dict()
    if (
        state
        and all(k.startswith("module.") for k in state)
        and not any(k.startswith("module.") for k in expected)
    ):
        state = {k[len("module.") :]: v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and hasattr(state[k], "shape") and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        notes = []
        if missing:
            notes.append(f"missing keys ({len(missing)}): " + _first(missing))
        if unexpected:
            notes.append(f"unexpected keys ({len(unexpected)}): " + _first(unexpected))
        if mismatched:
            notes.append(f"shape mismatches ({len(mismatched)}): " + _first(mismatched))
        source = run.config.models.get(role, "the model")
        raise fail(
            f"checkpoint `{file}` does not fit role `{role}` ({source})",
            notes,
            "check that the checkpoint was saved from the same architecture and class count",
        )
    model.load_state_dict(state, strict=True)


def _state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and _is_state(inner):
                return dict(inner)
        if _is_state(obj):
            return dict(obj)
    return None


def _is_state(obj: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _first(items: list[str], n: int = 5) -> str:
    shown = ", ".join(f"`{k}`" for k in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")
