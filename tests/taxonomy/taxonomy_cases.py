"""Shared cases for the taxonomy tests: method sketches not (yet) in the library, loading
helpers, and the rename-and-reorder transformation used by the property tests.

The sketches follow /work/shared/reference/KD_METHODS.md; each is the smallest spec that has
the structure the label depends on, not a tuned recipe.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kdspec._resources import library_dir
from kdspec.api import check_source
from kdspec.diagnostics import Severity
from kdspec.graph import build_graph
from kdspec.ir import Lowered
from kdspec.source import SourceFile
from kdspec.syntax import ast, parse_source
from kdspec.taxonomy.classify import Classification, classify

LIBRARY = library_dir()

SKETCHES: dict[str, str] = {
    # Tung & Mori 2019: batch similarity matrix of the last stage.
    "sp": """method sp {
  param gamma = 3000
  teacher t
  student s
  transfer sp: similarity from t.stage[-1] to s.stage[-1] with frobenius weight gamma
  supervise ce: s.logits with cross_entropy
}""",
    # Passalis & Tefas 2018: conditional probabilities of sample affinities.
    "pkt": """method pkt {
  teacher t
  student s
  transfer pkt: pkt_affinity from t.embedding to s.embedding with kl weight 30000
  supervise ce: s.logits with cross_entropy
}""",
    # Tian et al. 2020: linear embeddings of the penultimate features, contrastive loss.
    "crd": """method crd {
  param beta = 0.8
  teacher t
  student s
  transfer crd: from embed(t.embedding, dim=128) to embed(s.embedding, dim=128)
      with info_nce(T=0.07) weight beta
  supervise ce: s.logits with cross_entropy
}""",
    # Furlanello et al. 2018: generation 0 learns from labels, then each generation teaches
    # the next one of the same architecture (`handoff s -> t` after every generation).
    "ban": """method ban {
  param T = 1
  teacher t
  student s
  supervise ce_t: t.logits with cross_entropy
  transfer kd: softmax(T) from t.logits to s.logits with kl
  supervise ce: s.logits with cross_entropy
  stage teacher { train t  losses ce_t }
  stage generation repeat 3 {
    train s
    losses kd, ce
    handoff s -> t
  }
}""",
    # Zhao et al. 2022: target and non-target parts of the logits, warmed up.
    "dkd": """method dkd {
  param T = 4
  param alpha = 1
  param beta = 8
  teacher t
  student s
  transfer tckd: binary_target(T) from t.logits to s.logits with kl weight alpha * T^2 * warmup(20)
  transfer nckd: non_target(T) from t.logits to s.logits with kl weight beta * T^2 * warmup(20)
  supervise ce: s.logits with cross_entropy
}""",
    # Huang & Wang 2017: distributions of each channel's spatial activations, MMD.
    "nst": """method nst {
  teacher t
  student s
  transfer nst: channel_dist from t.stage[..] to s.stage[..] map last with mmd weight 50
  supervise ce: s.logits with cross_entropy
}""",
    # Yim et al. 2017: Gram matrices between two layers, then the main task.
    "fsp": """method fsp {
  teacher t
  student s
  transfer fsp: from fsp(t.stage[1], t.stage[2]) to fsp(s.stage[1], s.stage[2]) with mse weight 50
  supervise ce: s.logits with cross_entropy
  stage init for 30 epochs { losses fsp }
  stage main { losses ce }
}""",
    # Yun et al. 2020: the network on another sample of the same class, stop-gradient.
    "cskd": """method cskd {
  param T = 4
  student s
  view pair = same_class
  transfer cls: softmax(T) from stopgrad(s[pair].logits) to s.logits with kl weight T^2
  supervise ce: s.logits with cross_entropy
}""",
    # Yuan et al. 2020 (Tf-KD_reg): a hand-designed virtual teacher.
    "tfkd_reg": """method tfkd_reg {
  param T = 20
  student s
  teacher v = virtual(correct=0.9)
  transfer reg: softmax(T) from v.logits to s.logits with kl weight 0.5 * T^2
  supervise ce: s.logits with cross_entropy weight 0.5
}""",
    # Huang et al. 2022: Pearson correlation per sample (inter-class) and per class (intra).
    "dist": """method dist {
  teacher t
  student s
  transfer inter: softmax from t.logits to s.logits with pearson(dim=1)
  transfer intra: softmax from t.logits to s.logits with pearson(dim=0)
  supervise ce: s.logits with cross_entropy
}""",
    # A teacher trained together with its student (online KD).
    "online": """method online {
  teacher t trained
  student s
  transfer kd: softmax(T=4) from stopgrad(t.logits) to s.logits with kl
  supervise ce_t: t.logits with cross_entropy
  supervise ce: s.logits with cross_entropy
  stage joint { train t, s }
}""",
}


def library_names() -> list[str]:
    """Names of the library specs present now."""
    return sorted(p.stem for p in LIBRARY.glob("*.kd"))


def library_text(name: str) -> str:
    return (LIBRARY / f"{name}.kd").read_text(encoding="utf-8")


def lower_text(
    text: str,
    name: str = "spec.kd",
    overrides: dict[str, object] | None = None,
    library: Path | None = None,
    allow_claims: bool = True,
) -> Lowered:
    """Lower and check a spec; fail on errors (a contradicted claim only if asked)."""
    lowered, diags = check_source(SourceFile(name, text), overrides, library)
    errors = [
        d
        for d in diags
        if d.severity is Severity.ERROR and not (allow_claims and d.code == "KD311")
    ]
    assert not errors, "\n".join(f"{d.code}: {d.message}" for d in errors)
    assert lowered
    return lowered[0]


def classify_text(text: str, **kw: object) -> Classification:
    return classify(build_graph(lower_text(text, **kw).method))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Renaming identifiers and reordering statements
# ---------------------------------------------------------------------------------------------


def defined_names(method: ast.Method) -> list[str]:
    """Every identifier the method defines: itself, parameters, roles, ensembles, views,
    subsets, lets, term labels and stages."""
    out = [method.name.name]
    for st in method.body:
        if isinstance(st, ast.Role):
            out += [i.name for i in st.names]
        elif isinstance(st, ast.Param | ast.Ensemble | ast.View | ast.Subset | ast.Let):
            out.append(st.name.name)
        elif isinstance(st, ast.Transfer | ast.Supervise) and st.label is not None:
            out.append(st.label.name)
        elif isinstance(st, ast.Stage):
            out.append(st.name.name)
    return list(dict.fromkeys(out))


def _idents(node: object, mapping: dict[str, str], out: list[tuple[int, int, str]]) -> None:
    """Spans of identifiers to rename: not attribute names (``t.logits``), keyword argument
    names (``softmax(T=T)``: only the value), function names, claims or `use` statements."""
    if isinstance(node, ast.Ident | ast.Name):
        name = node.name if isinstance(node, ast.Ident) else node.id
        if name in mapping:
            out.append((node.span.start, node.span.end, mapping[name]))
        return
    if isinstance(node, ast.Claim | ast.Use | ast.String | ast.Number):
        return
    if isinstance(node, tuple):
        for x in node:
            _idents(x, mapping, out)
        return
    if not dataclasses.is_dataclass(node):
        return
    skip = {
        ast.Kwarg: {"name"},
        ast.Attr: {"name"},
        ast.Call: {"func"},
    }.get(type(node), set())  # type: ignore[call-overload]
    for f in dataclasses.fields(node):
        if f.name not in skip and f.name != "span":
            _idents(getattr(node, f.name), mapping, out)


def rename(text: str, mapping: dict[str, str]) -> str:
    """Rename identifiers where the syntax tree has them (keywords and strings stay)."""
    module = parse_source(SourceFile("x.kd", text))
    spans: list[tuple[int, int, str]] = []
    _idents(module.methods, mapping, spans)
    for start, end, new in sorted(spans, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def statements(text: str) -> tuple[str, list[tuple[str, bool]], str]:
    """(header, [(statement text, keeps its place among stages)], footer) of a one-method file."""
    source = SourceFile("x.kd", text)
    module = parse_source(source)
    (method,) = module.methods
    body = method.body
    head = text[: body[0].span.start] if body else text[: method.span.end - 1]
    tail = text[body[-1].span.end :] if body else text[method.span.end - 1 :]
    items = [
        (text[st.span.start : st.span.end], isinstance(st, ast.Stage | ast.Use)) for st in body
    ]
    return head, items, tail


def rename_and_reorder(text: str, new_names: list[str], order: list[int]) -> str:
    """The spec with every defined identifier renamed (in definition order, to ``new_names``)
    and its statements permuted by ``order``; stages (and uses) keep their relative order,
    since the order of stages is part of the method."""
    module = parse_source(SourceFile("x.kd", text))
    names = defined_names(module.methods[0])
    mapping = dict(zip(names, new_names, strict=False))
    head, items, tail = statements(text)
    order = [i for i in order if i < len(items)] + [i for i in range(len(items)) if i not in order]
    permuted = [items[i] for i in order]
    fixed = iter([s for s, keep in items if keep])
    merged = [next(fixed) if keep else s for s, keep in permuted]
    return rename(head + "\n  ".join(merged) + tail, mapping)
