"""Translate a torchdistill YAML config into a ``.kd`` spec and a run file.

What is translated: the teacher and student models, every ``WeightedSumLoss`` sub-term of
every stage (the module paths of their forward hooks become quoted module taps, their factors
become weights, their parameters the matching kdspec operators), the stages with their epoch
counts and trained prefixes (``sequential``), the optimizer, the step schedule, the batch size
and a CIFAR dataset. Each loss is written with the operators that compute torchdistill's
formula exactly (checked against torchdistill's own outputs in ``tests/reference/golden``),
not with the library method's defaults: torchdistill's ``SPKDLoss`` row-normalises with L1, its
``PKTLoss`` averages over pairs, and so on.

What is not (each gets a KD601 diagnostic pointing at the YAML line): losses that need
torchdistill's auxiliary modules (CRD's memory banks, VID's and AB's regressors, FT's
paraphraser, ReviewKD's fusion), student ``adaptations`` other than ``ConvReg``, per-stage
optimizers that differ, datasets other than CIFAR-10/100, and every setting kdspec has no
counterpart for. Reading a config never imports or calls anything: torchdistill's
``!import_call``/``!import_get`` tags are read as plain data.

Example:
    >>> result = convert('''
    ... models:
    ...   teacher_model: {key: resnet56}
    ...   student_model: {key: resnet20}
    ... train:
    ...   num_epochs: 240
    ...   criterion:
    ...     key: WeightedSumLoss
    ...     kwargs:
    ...       sub_terms:
    ...         kd:
    ...           criterion:
    ...             key: KDLoss
    ...             kwargs: {temperature: 4.0, alpha: 0.1, student_module_path: '.',
    ...                      teacher_module_path: '.'}
    ...           weight: 1.0
    ... ''', "kd.yaml")
    >>> print(result.spec)
    # Imported from the torchdistill config `kd.yaml` by `kdspec import torchdistill`.
    method kd "imported from torchdistill" {
      teacher t
      student s
      transfer kd: softmax(4) from t.logits to s.logits with kl weight (1 - 0.1) * 4^2
      supervise kd_ce: s.logits with cross_entropy weight 0.1
    }
    <BLANKLINE>
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from kdspec.diagnostics import Diagnostic, Severity, error, warning
from kdspec.source import SourceFile, Span

__all__ = ["Conversion", "convert"]

# torchdistill / torchvision model keys with a kdspec zoo twin of the same architecture.
_ZOO = {
    "resnet8": "resnet8",
    "resnet14": "resnet14",
    "resnet20": "resnet20",
    "resnet32": "resnet32",
    "resnet44": "resnet44",
    "resnet56": "resnet56",
    "resnet110": "resnet110",
    "resnet8x4": "resnet8x4",
    "resnet32x4": "resnet32x4",
    "wrn_16_2": "wrn_16_2",
    "wrn_40_1": "wrn_40_1",
    "wrn_40_2": "wrn_40_2",
    "wrn_16_1": "wrn_16_1",
    "wide_resnet40_1": "wrn_40_1",
    "wide_resnet40_2": "wrn_40_2",
    "wide_resnet16_2": "wrn_16_2",
    "vgg8": "vgg8",
    "vgg11": "vgg11",
    "vgg13": "vgg13",
}
# torchvision's ImageNet models (torchdistill's CIFAR ResNets and WRNs share some names).
_TORCHVISION = re.compile(
    r"^(resnet(18|34|50|101|152)|resnext\w+|wide_resnet(50|101)_2|densenet(121|161|169|201)"
    r"|alexnet|vgg(11|13|16|19)(_bn)?|mobilenet_v\d\w*|efficientnet\w*|inception_v3|googlenet)$"
)
_OPTIMIZERS = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw"}
# Losses that need torchdistill's auxiliary modules or state: not translatable one to one.
_NEEDS_AUX = {
    "CRDLoss": "its memory banks and Linear4CRD heads are torchdistill modules; "
    "`use crd` gives kdspec's CRD",
    "VIDLoss": "its Regressor4VID adaptation is a torchdistill module; "
    "`use vid` gives kdspec's VID",
    "AltActTransferLoss": "its connectors are torchdistill modules; `use ab` gives kdspec's AB",
    "FTLoss": "its paraphraser and translator are torchdistill modules; `use ft` gives kdspec's FT",
    "HierarchicalContextLoss": "its ABF fusion modules are torchdistill modules; "
    "`use reviewkd` gives kdspec's ReviewKD",
}


class _Map(dict):
    """A YAML mapping that remembers where each key and value is in the file."""

    spans: dict[str, Span]
    span: Span


class _Tagged(dict):
    """A torchdistill ``!tag`` node, kept as data (never imported or called)."""

    span: Span


MAX_YAML_DEPTH = 64
"""Nesting a torchdistill config never needs (about 6 levels); PyYAML's composer recurses once
per level, so a deeper file would end in a RecursionError instead of a diagnostic."""


class _Loader(yaml.SafeLoader):
    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_YAML_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.spans = {}
    out.span = Span(node.start_mark.index, node.end_mark.index)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[key] = loader.construct_object(value_node, deep=True)
        out.spans[str(key)] = Span(key_node.start_mark.index, value_node.end_mark.index)
    return out


def _construct_tag(loader: _Loader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        items = loader.construct_sequence(node, deep=True)
        if suffix == "join" and all(isinstance(i, str | int | float) for i in items):
            return "".join(str(i) for i in items)
        value: Any = items
    elif isinstance(node, yaml.MappingNode):
        value = _construct_mapping(loader, node)
    else:
        value = loader.construct_scalar(node)
    tagged = _Tagged(tag=suffix, value=value)
    tagged.span = Span(node.start_mark.index, node.end_mark.index)
    return tagged


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_multi_constructor("!", _construct_tag)


@dataclass
class Conversion:
    """The translated spec and run file, and what could not be translated."""

    spec: str
    run: str
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No error (warnings say what was approximated or dropped)."""
        return not any(d.severity is Severity.ERROR for d in self.diagnostics)


def _num(x: Any) -> str:
    """A number as spec text (whole floats without the ``.0``)."""
    f = float(x)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


def _weight(*factors: Any) -> str:
    """A product of factors as a spec expression, ones dropped (``0.9 * 4^2``)."""
    parts = [f for f in factors if f not in ("1", 1, 1.0)]
    return " * ".join(str(p) for p in parts) or "1"


class _Converter:
    def __init__(self, text: str, name: str):
        self.source = SourceFile(name, text)
        self.diags: list[Diagnostic] = []
        self.terms: list[tuple[str, list[str]]] = []  # (stage, spec lines)
        self.names: set[str] = set()

    # -- diagnostics -------------------------------------------------------------------------

    def _span(self, node: Any, key: str | None = None) -> Span | None:
        if key is not None and isinstance(node, _Map) and key in node.spans:
            return node.spans[key]
        return getattr(node, "span", None)

    def warn(self, message: str, node: Any = None, key: str | None = None, **kw: Any) -> None:
        self.diags.append(warning("KD601", message, self.source, self._span(node, key), **kw))

    def fail(self, message: str, node: Any = None, key: str | None = None, **kw: Any) -> None:
        self.diags.append(error("KD601", message, self.source, self._span(node, key), **kw))

    # -- taps ----------------------------------------------------------------------------------

    def tap(self, role: str, path: Any, io: Any = "output", *, logits_ok: bool = True) -> str:
        """torchdistill's (module path, io) as a kdspec tap: ``.`` output is the logits."""
        path = str(path or ".")
        io = str(io or "output")
        if path == "." and io == "output" and logits_ok:
            return f"{role}.logits"
        if path == ".":
            return f"{role}.input" if io == "input" else f"{role}.output"
        text = f'{role}."{path}"'
        return text + (".input" if io == "input" else "")

    def name(self, base: str) -> str:
        base = re.sub(r"\W", "_", base) or "term"
        if base[0].isdigit():
            base = "t_" + base
        name, k = base, 2
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    # -- losses ----------------------------------------------------------------------------------

    def sub_term(self, stage: str, key: str, term: Any, student_adapt: dict[str, str]) -> list[str]:
        crit = term.get("criterion") if isinstance(term, dict) else None
        if not isinstance(crit, dict) or "key" not in crit:
            self.fail(f"sub-term `{key}` has no `criterion.key`", term)
            return []
        cls = str(crit["key"])
        kw = crit.get("kwargs") or {}
        w = _num(term.get("weight", 1.0))
        wrapper = term.get("criterion_wrapper") or {}
        if cls in _NEEDS_AUX:
            self.fail(
                f"`{cls}` (sub-term `{key}`) is not translated: {_NEEDS_AUX[cls]}",
                crit,
                "key",
            )
            return []
        handler = getattr(self, f"loss_{cls}", None)
        if handler is None:
            self.fail(
                f"no kdspec translation for torchdistill loss `{cls}` (sub-term `{key}`)",
                crit,
                "key",
                help="write this term by hand (docs/language.md lists the losses)",
            )
            return []
        self.check_kwargs(cls, kw, crit)
        return handler(key, kw, w, wrapper, crit, student_adapt)

    _KNOWN_KW: ClassVar[dict[str, set[str]]] = {
        "KDLoss": {
            "student_module_path",
            "student_module_io",
            "teacher_module_path",
            "teacher_module_io",
            "temperature",
            "alpha",
            "beta",
            "reduction",
        },
        "CrossEntropyLoss": {"reduction"},
        "MSELoss": {"reduction"},
        "ATLoss": {"at_pairs", "mode"},
        "SPKDLoss": {"student_output_path", "teacher_output_path", "reduction"},
        "RKDLoss": {
            "student_output_path",
            "teacher_output_path",
            "dist_factor",
            "angle_factor",
            "reduction",
        },
        "PKTLoss": {
            "student_module_path",
            "student_module_io",
            "teacher_module_path",
            "teacher_module_io",
            "eps",
        },
        "FSPLoss": {"fsp_pairs"},
        "DISTLoss": {
            "student_module_path",
            "student_module_io",
            "teacher_module_path",
            "teacher_module_io",
            "beta",
            "gamma",
            "tau",
            "eps",
        },
    }

    def check_kwargs(self, cls: str, kw: dict[str, Any], crit: Any) -> None:
        for k in kw:
            if k not in self._KNOWN_KW.get(cls, set()):
                self.fail(f"`{cls}` parameter `{k}` has no kdspec translation", kw, k)

    def loss_KDLoss(self, key: str, kw: dict[str, Any], w: str, *_: Any) -> list[str]:
        if kw.get("reduction", "batchmean") != "batchmean":
            self.fail("`KDLoss` with a reduction other than `batchmean`", kw, "reduction")
        T = _num(kw.get("temperature", 1.0))
        src = self.tap("t", kw.get("teacher_module_path"), kw.get("teacher_module_io"))
        dst = self.tap("s", kw.get("student_module_path"), kw.get("student_module_io"))
        alpha = kw.get("alpha")
        name = self.name(key)
        if not alpha:  # torchdistill returns the bare KL: no T^2, no CE
            return [f"transfer {name}: softmax({T}) from {src} to {dst} with kl weight {w}"]
        beta = kw.get("beta")  # torchdistill: beta = 1 - alpha when not given
        beta_text = f"(1 - {_num(alpha)})" if beta is None else _num(beta)
        lines = [
            f"transfer {name}: softmax({T}) from {src} to {dst} with kl "
            f"weight {_weight(w, beta_text, f'{T}^2' if T != '1' else 1)}"
        ]
        ce = self.name(f"{key}_ce")
        lines.append(f"supervise {ce}: {dst} with cross_entropy weight {_weight(w, _num(alpha))}")
        return lines

    def _wrapped(self, key: str, wrapper: dict[str, Any], crit: Any) -> tuple[Any, Any] | None:
        kwargs = wrapper.get("kwargs") or {} if isinstance(wrapper, dict) else {}
        if not kwargs.get("input"):
            self.fail(f"sub-term `{key}` has no `criterion_wrapper.kwargs.input`", crit)
            return None
        return kwargs.get("input"), kwargs.get("target") or {}

    def _side(self, ref: dict[str, Any], adapt: dict[str, str]) -> str:
        role = "t" if ref.get("is_from_teacher") else "s"
        path = str(ref.get("module_path", "."))
        if role == "s" and path.startswith("+"):
            return adapt.get(path[1:], f'regressor(s."{path[1:]}")')
        return self.tap(role, path, ref.get("io", "output"))

    def loss_CrossEntropyLoss(
        self, key: str, kw: dict[str, Any], w: str, wrapper: Any, crit: Any, adapt: Any
    ) -> list[str]:
        if kw.get("reduction", "mean") != "mean":
            self.fail("`CrossEntropyLoss` with a reduction other than `mean`", kw, "reduction")
        sides = self._wrapped(key, wrapper, crit) if wrapper else ({"module_path": "."}, {})
        if sides is None:
            return []
        inp, target = sides
        if target and not target.get("uses_label", False):
            self.fail("`CrossEntropyLoss` against a module output instead of the labels", target)
            return []
        return [
            f"supervise {self.name(key)}: {self._side(inp, adapt)} with cross_entropy weight {w}"
        ]

    def loss_MSELoss(
        self, key: str, kw: dict[str, Any], w: str, wrapper: Any, crit: Any, adapt: Any
    ) -> list[str]:
        sides = self._wrapped(key, wrapper, crit)
        if sides is None:
            return []
        inp, target = sides
        if target.get("uses_label"):
            self.fail("`MSELoss` against the labels", target)
            return []
        red = str(kw.get("reduction", "mean"))
        if red not in ("mean", "sum"):
            self.fail(f"`MSELoss` reduction `{red}`", kw, "reduction")
        return [
            f"transfer {self.name(key)}: from {self._side(target, adapt)} to "
            f'{self._side(inp, adapt)} with mse(reduction="{red}") weight {w}'
        ]

    def loss_ATLoss(self, key: str, kw: dict[str, Any], w: str, *_: Any) -> list[str]:
        mode = kw.get("mode", "code")
        loss = "mse" if mode == "code" else "lp(squared=false)"
        if mode not in ("code", "paper"):
            self.fail(f"`ATLoss` mode `{mode}`", kw, "mode")
        lines = []
        for pair_name, pair in (kw.get("at_pairs") or {}).items():
            t, s = pair.get("teacher", {}), pair.get("student", {})
            src = self.tap("t", t.get("path"), t.get("io"), logits_ok=False)
            dst = self.tap("s", s.get("path"), s.get("io"), logits_ok=False)
            lines.append(
                f"transfer {self.name(f'{key}_{pair_name}')}: attention(p=2) from {src} to {dst} "
                f"with {loss} weight {_weight(w, _num(pair.get('weight', 1.0)))}"
            )
        return lines

    def _out_paths(self, kw: dict[str, Any]) -> tuple[str, str]:
        return (
            self.tap("t", kw.get("teacher_output_path"), "output", logits_ok=True),
            self.tap("s", kw.get("student_output_path"), "output", logits_ok=True),
        )

    def loss_SPKDLoss(self, key: str, kw: dict[str, Any], w: str, *_: Any) -> list[str]:
        if kw.get("reduction", "batchmean") != "batchmean":
            self.fail("`SPKDLoss` with a reduction other than `batchmean`", kw, "reduction")
        src, dst = self._out_paths(kw)
        # torchdistill normalises the Gram rows with F.normalize(G, 1): the L1 norm
        return [
            f"transfer {self.name(key)}: similarity(p=1) from {src} to {dst} with frobenius "
            f"weight {w}"
        ]

    def loss_RKDLoss(self, key: str, kw: dict[str, Any], w: str, *_: Any) -> list[str]:
        if kw.get("reduction", "mean") != "mean":
            self.fail("`RKDLoss` with a reduction other than `mean`", kw, "reduction")
        src, dst = self._out_paths(kw)
        lines = []
        for part, factor in (("distances", "dist_factor"), ("angles", "angle_factor")):
            f = float(kw.get(factor, 1.0) or 0.0)
            if f:
                lines.append(
                    f"transfer {self.name(f'{key}_{part}')}: flatten | {part} from {src} to {dst} "
                    f"with smooth_l1 weight {_weight(w, _num(f))}"
                )
        return lines

    def loss_PKTLoss(self, key: str, kw: dict[str, Any], w: str, *_: Any) -> list[str]:
        src = self.tap("t", kw.get("teacher_module_path"), kw.get("teacher_module_io"))
        dst = self.tap("s", kw.get("student_module_path"), kw.get("student_module_io"))
        eps = _num(kw.get("eps", 1e-7))
        return [
            f"transfer {self.name(key)}: pkt_affinity from {src} to {dst} "
            f'with kl(eps={eps}, reduction="mean") weight {w}'
        ]

    def loss_FSPLoss(self, key: str, kw: dict[str, Any], w: str, *_: Any) -> list[str]:
        lines = []
        for pair_name, pair in (kw.get("fsp_pairs") or {}).items():
            taps = {}
            for side, role in (("teacher", "t"), ("student", "s")):
                a, b = pair.get(f"{side}_first", {}), pair.get(f"{side}_second", {})
                taps[role] = (
                    f"fsp({self.tap(role, a.get('path'), a.get('io'), logits_ok=False)}, "
                    f'{self.tap(role, b.get("path"), b.get("io"), logits_ok=False)}, pool="max")'
                )
            lines.append(
                f"transfer {self.name(f'{key}_{pair_name}')}: from {taps['t']} to {taps['s']} "
                f"with lp(dim=1, squared=false) weight {_weight(w, _num(pair.get('weight', 1.0)))}"
            )
        return lines

    def loss_DISTLoss(self, key: str, kw: dict[str, Any], w: str, *_: Any) -> list[str]:
        src = self.tap("t", kw.get("teacher_module_path"), kw.get("teacher_module_io"))
        dst = self.tap("s", kw.get("student_module_path"), kw.get("student_module_io"))
        tau = _num(kw.get("tau", 1.0))
        out = []
        for part, dim, factor in (("inter", 1, "beta"), ("intra", 0, "gamma")):
            weight = _weight(w, _num(kw.get(factor, 1.0)), f"{tau}^2" if tau != "1" else 1)
            out.append(
                f"transfer {self.name(f'{key}_{part}')}: softmax({tau}) from {src} to {dst} "
                f"with pearson(dim={dim}) weight {weight}"
            )
        return out

    # -- stages ------------------------------------------------------------------------------

    def adaptations(self, student: dict[str, Any]) -> dict[str, str]:
        """``+name`` student modules torchdistill adds: ConvReg becomes kdspec's regressor."""
        out: dict[str, str] = {}
        adapt = student.get("adaptations") or {}
        seq = [str(m) for m in student.get("sequential") or []]
        for name, spec in adapt.items():
            key = spec.get("key") if isinstance(spec, dict) else None
            if key != "ConvReg":
                self.fail(
                    f"student adaptation `{name}` (`{key}`) has no kdspec translation", adapt, name
                )
                continue
            pos = seq.index(f"+{name}") if f"+{name}" in seq else len(seq)
            before = [m for m in seq[:pos] if not m.startswith("+")]
            if not before:
                self.fail(f"cannot tell which student module feeds `+{name}`", adapt, name)
                continue
            out[name] = f'regressor(s."{before[-1]}")'
            self.warn(
                f"`ConvReg` `{name}` becomes kdspec's `regressor` (a conv sized by shape "
                "inference); its layers differ from torchdistill's conv+BN+ReLU",
                adapt,
                name,
            )
        return out

    def stage(self, name: str, cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(term names, trained-part items) of one torchdistill stage; adds the terms."""
        student = cfg.get("student") or {}
        teacher = cfg.get("teacher") or {}
        if teacher.get("requires_grad"):
            self.fail(
                "a teacher with `requires_grad: True` (trained teachers)", teacher, "requires_grad"
            )
        if student.get("frozen_modules"):
            self.fail("student `frozen_modules`", student, "frozen_modules")
        adapt = self.adaptations(student)
        crit = cfg.get("criterion") or {}
        if crit.get("key") not in ("WeightedSumLoss", None):
            self.fail(
                f"criterion `{crit.get('key')}`: only `WeightedSumLoss` is translated", crit, "key"
            )
            return [], []
        kwargs = crit.get("kwargs") or {}
        if kwargs.get("model_term"):
            self.fail("`model_term` (losses the model computes itself)", kwargs, "model_term")
        names: list[str] = []
        for key, term in (kwargs.get("sub_terms") or {}).items():
            lines = self.sub_term(name, str(key), term, adapt)
            self.terms.append((name, lines))
            names += [line.split(":", 1)[0].split()[-1] for line in lines]
        train: list[str] = []
        seq = [m for m in student.get("sequential") or [] if not str(m).startswith("+")]
        if seq:  # torchdistill runs (and trains) only this prefix of the student
            train.append(f's."{seq[-1]}"')
        return names, train


def _iter_stages(train: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    keys = [k for k in train if re.fullmatch(r"stage\d+", str(k))]
    if keys:
        for k in sorted(keys, key=lambda k: int(str(k)[5:])):
            yield str(k), train[k]
    else:
        yield "distill", train


def _model(conv: _Converter, models: dict[str, Any], key: str, role: str) -> str:
    m = models.get(key) or {}
    name = str(m.get("key", "")) if isinstance(m, dict) else ""
    kwargs = m.get("kwargs") or {} if isinstance(m, dict) else {}
    if name == "wide_resnet" and {"depth", "k"} <= set(kwargs):
        name = f"wide_resnet{kwargs['depth']}_{kwargs['k']}"
    if name in _ZOO:
        return f"zoo:{_ZOO[name]}"
    if _TORCHVISION.match(name):
        return f"torchvision:{name}"
    conv.warn(
        f"model `{name or '?'}` of `{key}` has no known kdspec source; bind `{role}` by hand",
        models,
        key,
        help='`[models] ... = "zoo:NAME"`, `"timm:NAME"` or `"import:package.module:factory"`',
    )
    return f"TODO:{name or key}"


def convert(text: str, name: str = "config.yaml", method: str | None = None) -> Conversion:
    """Translate torchdistill YAML text into spec and run-file text (see the module doc)."""
    conv = _Converter(text, name)
    try:
        cfg = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        span = Span(mark.index, mark.index + 1) if mark is not None else None
        return Conversion(
            "", "", [error("KD602", f"not valid YAML: {exc}".split("\n")[0], conv.source, span)]
        )
    if not isinstance(cfg, dict) or "train" not in cfg or "models" not in cfg:
        return Conversion(
            "",
            "",
            [
                error(
                    "KD602",
                    "not a torchdistill config: it needs `models` and `train` sections",
                    conv.source,
                    None,
                )
            ],
        )
    method = method or re.sub(r"\W", "_", name.rsplit("/", 1)[-1].rsplit(".", 1)[0]) or "imported"
    if not re.match(r"[A-Za-z_]", method):
        method = "m_" + method
    models = cfg["models"]
    t_src = _model(conv, models, "teacher_model", "t")
    s_src = _model(conv, models, "student_model", "s")
    train = cfg["train"]
    stages: list[tuple[str, float, list[str], list[str]]] = []
    for stage_name, stage_cfg in _iter_stages(train):
        names, trained = conv.stage(stage_name, stage_cfg)
        stages.append((stage_name, float(stage_cfg.get("num_epochs", 0) or 0), names, trained))
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    spec = [
        f"# Imported from the torchdistill config `{base}` by `kdspec import torchdistill`.",
        f'method {method} "imported from torchdistill" {{',
        "  teacher t",
        "  student s",
    ]
    for _, lines in conv.terms:
        spec += [f"  {line}" for line in lines]
    if len(stages) > 1:
        for stage_name, epochs, names, trained in stages:
            header = f"  stage {stage_name}"
            if stage_name != stages[-1][0]:
                header += f" for {_num(epochs)} epochs"
            spec.append(header + " {")
            if trained:
                spec.append(f"    train {', '.join(trained + names)}")
            if names:
                spec.append(f"    losses {', '.join(names)}")
            spec.append("  }")
    elif stages and stages[0][3]:
        conv.fail("a one-stage config that trains only part of the student (`sequential`)", train)
    spec.append("}")
    run = _run_file(conv, cfg, t_src, s_src, stages, name)
    return Conversion("\n".join(spec) + "\n", run, conv.diags)


def _run_file(
    conv: _Converter,
    cfg: dict[str, Any],
    t_src: str,
    s_src: str,
    stages: list[tuple[str, float, list[str], list[str]]],
    name: str,
) -> str:
    train = cfg["train"]
    stage_cfgs = [c for _, c in _iter_stages(train)]
    last = stage_cfgs[-1]
    epochs = sum(s[1] for s in stages) or 1
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    lines = [
        f"# Run file imported from the torchdistill config `{base}`.",
        "",
        "[models]",
        f't = "{t_src}"',
        f's = "{s_src}"',
        "",
    ]
    data = _data_section(conv, cfg, train, last)
    lines += data
    opt_lines: list[str] = []
    opt = last.get("optimizer") or {}
    okey = opt.get("key")
    okw = opt.get("kwargs") or {}
    if okey in _OPTIMIZERS:
        opt_lines.append(f'optimizer = "{_OPTIMIZERS[okey]}"')
        for k in ("lr", "momentum", "weight_decay"):
            if k in okw:
                opt_lines.append(f"{k} = {okw[k]!r}")
        if okey == "SGD":
            opt_lines.append(f"nesterov = {'true' if okw.get('nesterov') else 'false'}")
    elif okey is not None:
        conv.fail(f"optimizer `{okey}`: kdspec runs SGD, Adam or AdamW", opt, "key")
    sched = last.get("scheduler") or {}
    if sched.get("key") == "MultiStepLR":
        skw = sched.get("kwargs") or {}
        # torchdistill's milestones count epochs of the stage; kdspec's, epochs of the whole run
        # (scaled to each stage), which agree for the last stage of a multi-stage run only when
        # the stages are equally long, so the milestones are given for the last stage's share.
        scale = epochs / max(float(last.get("num_epochs", epochs) or epochs), 1.0)
        ms = [float(m) * scale for m in skw.get("milestones", [])]
        opt_lines += [
            'schedule = "step"',
            f"milestones = [{', '.join(_num(m) for m in ms)}]",
            f"gamma = {skw.get('gamma', 0.1)!r}",
        ]
    elif sched.get("key") == "CosineAnnealingLR":
        opt_lines.append('schedule = "cosine"')
    elif sched:
        conv.fail(f"scheduler `{sched.get('key')}`", sched, "key")
    else:
        opt_lines.append('schedule = "none"')
    if len(stage_cfgs) > 1:
        first = [c.get("optimizer") for c in stage_cfgs[:-1]]
        if any(o and o != last.get("optimizer") for o in first):
            conv.warn(
                "each torchdistill stage has its own optimizer; the run file keeps the last "
                "stage's (kdspec gives every stage a fresh optimizer with one recipe)",
                stage_cfgs[0],
                "optimizer",
            )
    lines += ["[train]", f"epochs = {_num(epochs)}", *opt_lines, 'eval = "last"', ""]
    return "\n".join(lines)


def _data_section(
    conv: _Converter, cfg: dict[str, Any], train: dict[str, Any], last: dict[str, Any]
) -> list[str]:
    text = str(cfg.get("datasets", ""))
    source = "torchvision:CIFAR100" if "CIFAR100" in text.upper().replace("-", "") else None
    if source is None and "CIFAR10" in text.upper():
        source = "torchvision:CIFAR10"
    loader = train.get("train_data_loader") or last.get("train_data_loader") or {}
    batch = loader.get("batch_size") or (loader.get("kwargs") or {}).get("batch_size")
    lines = ["[data]"]
    if source is None:
        conv.warn(
            "the dataset is not CIFAR-10/100: the run file keeps the embedded digits data",
            cfg.get("datasets"),
            help="train on your own data with the Python API (`compile_spec`, docs/ecosystem.md)",
        )
    else:
        lines += [f'source = "{source}"', 'root = "data"', "val_fraction = 0.0", "augment = true"]
    if batch:
        lines.append(f"batch_size = {int(batch)}")
    return [*lines, ""]
