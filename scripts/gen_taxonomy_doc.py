"""Generate ``docs/taxonomy.md``: the method library classified from its graphs.

Usage: ``python scripts/gen_taxonomy_doc.py [-o docs/taxonomy.md] [--check]``.

Every label in the document comes from :func:`kdspec.taxonomy.classify.classify` over a
library spec's graph, with the graph facts behind it, and a Mermaid picture of the graph. The
section on the surveys' disagreements (BAN, CRD, RKD, PKT, NST) classifies the library spec
when there is one, and otherwise a minimal sketch of the method kept in this script.
``--check`` exits 1 if the file on disk differs from what would be generated.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from kdspec._resources import library_dir
from kdspec.api import check_source
from kdspec.cli.taxonomy import evidence_text, markdown_table
from kdspec.diagnostics import Severity
from kdspec.graph import build_graph
from kdspec.graph.export import to_mermaid
from kdspec.source import SourceFile
from kdspec.taxonomy.classify import Classification, classify

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ("scheme", "knowledge", "topology", "teacher_state", "stages", "roles")


@dataclass(frozen=True)
class Disagreement:
    """A method the surveys label inconsistently, and what the graph decides."""

    name: str
    surveys: str
    decides: str
    sketch: str
    expected: tuple[tuple[str, ...], tuple[str, ...]]  # (scheme, knowledge) the prose explains


DISAGREEMENTS = (
    Disagreement(
        "ban",
        "Gou et al. Sec. 3.3 call Born-Again Networks self-distillation; their Table 3 lists "
        "them as multi-teacher and **online**.",
        "Each generation's teacher is frozen while its student trains (no stage trains both), "
        "so every step is **offline**; the generations are linked by `handoff s -> t`, which "
        "copies a trained student into the teacher: one architecture teaching itself across "
        "generations, hence **self** as well. The claim is `scheme = offline, self`; the "
        "topology is `self` (generations), not multi-teacher, because at any time one "
        "teacher teaches.",
        """method ban {
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
        (("offline", "self"), ("response",)),
    ),
    Disagreement(
        "crd",
        "Gou Table 4 labels CRD response-based; Gou Sec. 2.3 lists it under structured "
        "(relation) knowledge; the mechanism matches penultimate features.",
        "The matched quantity is neither the logits nor an element-wise feature: the "
        "contrastive loss (family contrastive) scores each sample's embedding "
        "against the other samples of the batch, so the knowledge is **relation** "
        "(contrastive), read at the embedding through learned `embed` heads on both sides.",
        """method crd {
  param beta = 0.8
  teacher t
  student s
  transfer crd: from embed(t.embedding, dim=128) to embed(s.embedding, dim=128)
      with info_nce(T=0.07) weight beta
  supervise ce: s.logits with cross_entropy
}""",
        (("offline",), ("relation",)),
    ),
    Disagreement(
        "rkd",
        "Gou Table 2: relation-based; Gou Table 6: 'RelK, FeaK'; the FLHonker list: "
        "'knowledge from logits'.",
        "Both transfers apply `distances`/`angles`, which relate the samples of a batch to "
        "each other, at the penultimate embedding (not the logits): **relation** only. The "
        "tap (embedding) is reported separately, so 'read at a feature layer' does not "
        "turn into a second category.",
        "",
        (("offline",), ("relation",)),
    ),
    Disagreement(
        "pkt",
        "Gou Table 2: relation-based; Gou's text also groups PKT with feature-based knowledge.",
        "`pkt_affinity` turns the batch's cosine affinities into conditional probabilities "
        "between samples: **relation**, whatever layer it reads.",
        """method pkt {
  teacher t
  student s
  transfer pkt: pkt_affinity from t.embedding to s.embedding with kl weight 30000
  supervise ce: s.logits with cross_entropy
}""",
        (("offline",), ("relation",)),
    ),
    Disagreement(
        "nst",
        "Gou: feature-based (hint layer, MMD); the FLHonker list: 'knowledge from logits'.",
        "`channel_dist` describes each channel's spatial activations *within one sample*, "
        "read at intermediate stages, and MMD compares the two sides sample by sample: "
        "**feature** (neuron selectivity). No logits are read, and no samples are related.",
        """method nst {
  teacher t
  student s
  transfer nst: channel_dist from t.stage[..] to s.stage[..] map last with mmd weight 50
  supervise ce: s.logits with cross_entropy
}""",
        (("offline",), ("feature",)),
    ),
)


def _load(source: SourceFile) -> list[Classification]:
    lowered, diags = check_source(source)
    errors = [d for d in diags if d.severity is Severity.ERROR and d.code != "KD311"]
    if errors:
        raise SystemExit(f"{source.name}: {errors[0].code} {errors[0].message}")
    return [classify(build_graph(low.method)) for low in lowered]


def _library() -> list[tuple[Path, Classification]]:
    out = []
    for path in sorted(library_dir().glob("*.kd")):
        source = SourceFile(path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8"))
        out.extend((path, c) for c in _load(source))
    return out


def _rules() -> str:
    return """\
## How the labels are derived

Every label is computed from the method graph (`kdspec graph SPEC`), never looked up by a
method's name; `kdspec taxonomy SPEC --why` prints the evidence, and a `claim` in a spec is
checked against it (KD311).

- **scheme**, per teaching edge, by one question: *is the teacher updated together with the
  student?* A teacher trained in a stage where it teaches a learner is **online**. A teacher
  frozen whenever it teaches is **offline**, including one trained in an earlier stage only
  (TAKD's assistant). A role teaching itself (exits, another view or a paired sample), a
  moving average or snapshot of the learner, and a virtual teacher are **self**. Generations
  linked by `handoff` are **offline** per generation and **self** as generations.
- **knowledge**, per transfer: **relation** when samples are related to each other
  (similarity, distances, angles, affinities, a contrastive loss, Pearson over the batch) or
  two different taps to each other (FSP's layers, MiniLM's queries and keys); otherwise
  **response** when both sides are read at the output layer (logits, the whole output,
  classifier exits); otherwise **feature** (intermediate taps matched element-wise). One rule
  for relations inside one tap: a channel Gram matrix or a layer's token relations with
  itself describe that layer's features, sample by sample, so they are **feature**. A method
  lists every category its transfers carry.
- **topology**: `mutual` (two roles teach each other) > `chain` (a path of two or more
  teaching hops through distinct roles) > `multi_teacher` (a learner with several external
  teachers) > `single_teacher`; `self` when every teaching edge stays within one network.
- **stages** count the learner's training phases (with repeats); they are kept apart from
  the scheme: FitNets has two student stages and an offline teacher.
- **architecture** (teacher-student relation) and **initialisation** (of each learner) are
  what the spec states: `teacher t like s` (same architecture), `student s like t smaller`
  (same family, another size), `student s from t` (starts from the teacher's weights, as in
  DistilBERT); a copy of the learner (self, moving average, snapshot, generations) is the same
  architecture, and `handoff` makes the next generation's teacher. A teacher stated to be the
  student's architecture and trained before it teaches adds **self** to the scheme (Tf-KD's
  self-training), as generations do.
- **algorithm** (Gou et al., Sec. 5) where the graph shows it: attention-based (attention
  maps or scores are transferred), graph-based (samples of a batch related to each other),
  multi-teacher, adversarial; cross-modal, data-free, quantized, lifelong and NAS-based
  distillation cannot be told from a spec today, and the evidence says so.
- **data preparation**, as in the seed paper's general model: modification (views:
  augmentation, noise, paired samples; which role sees which) and partitioning (subsets, and
  the terms that use them).
- The other dimensions (taps, layer mapping, transforms, adapters, losses, weights, ground
  truth) are read off the graph and reported as found.
"""


def _disagreements() -> str:
    lines = ["## Where the surveys disagree", ""]
    lines.append(
        'The surveys are Gou, Yu, Maybank & Tao, "Knowledge Distillation: A Survey", IJCV '
        "129:1789-1819 (2021), arXiv:2006.05525 (its text and Tables 1-6), and the community "
        "list FLHonker/Awesome-Knowledge-Distillation on GitHub. The graph-derived label "
        "replaces a lookup table: each entry shows the label and the graph facts that decide it."
    )
    lines.append("")
    for dis in DISAGREEMENTS:
        path = library_dir() / f"{dis.name}.kd"
        if path.exists():
            where = f"`specs/{dis.name}.kd`"
            (c, *_) = _load(SourceFile(f"specs/{dis.name}.kd", path.read_text(encoding="utf-8")))
        else:
            where = "a sketch below; no library spec yet"
            (c, *_) = _load(SourceFile(f"{dis.name}.kd", dis.sketch))
        if (c.scheme, c.knowledge) != dis.expected:
            raise SystemExit(
                f"{dis.name}: the graph now says scheme {c.scheme}, knowledge {c.knowledge}; "
                f"the explanation in this script assumes {dis.expected}: update it"
            )
        lines.append(f"### {dis.name.upper()}")
        lines.append("")
        lines.append(f"- **Surveys**: {dis.surveys}")
        lines.append(
            f"- **Graph** ({where}): scheme `{', '.join(c.scheme)}`, knowledge "
            f"`{', '.join(c.knowledge)}` ({c['knowledge'].value}), topology `{c.topology}`."
        )
        lines.append(f"- **Why**: {dis.decides}")
        for dim in ("scheme", "knowledge"):
            for e in c[dim].evidence:
                lines.append(f"  - {dim}: {e.text}")
        if not path.exists():
            lines += ["", "```", dis.sketch, "```"]
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class Survey:
    """Gou et al.'s labels for a library method (None: the survey gives none)."""

    scheme: tuple[str, ...] | None
    knowledge: tuple[str, ...] | None
    where: str


# Gou et al. (IJCV 2021): the scheme (offline/online/self, Sec. 3) and the knowledge category
# (response/feature/relation, Sec. 2 and Tables 1-2, 6) the survey gives each method, where
# it gives one. Methods the survey does not cover have no entry.
GOU: dict[str, Survey] = {
    "hinton": Survey(("offline",), ("response",), "Sec. 2.1, 3.1"),
    "fitnets": Survey(("offline",), ("feature",), "Table 1 (hint layer, L2)"),
    "at": Survey(("offline",), ("feature",), "Table 1; attention-based, Sec. 5.5"),
    "fsp": Survey(("offline",), ("relation",), "Table 2"),
    "nst": Survey(None, ("feature",), "Table 1 (hint layer, MMD)"),
    "sp": Survey(("offline",), ("relation",), "Table 2"),
    "rkd": Survey(None, ("relation",), "Table 2 (Table 6: relation and feature)"),
    "pkt": Survey(None, ("relation",), "Table 2 (Sec. 2.2 also feature-based)"),
    "ab": Survey(None, ("feature",), "Table 1 (pre-ReLU, L2)"),
    "ft": Survey(None, ("feature",), "Table 1 (paraphraser, L1)"),
    "crd": Survey(None, ("response",), "Table 4 (Sec. 2.3: structured knowledge)"),
    "crd_kd": Survey(None, ("response",), "Table 4, for CRD (Sec. 2.3: structured knowledge)"),
    "dml": Survey(("online",), ("response",), "Sec. 3.2"),
    "one": Survey(("online",), ("response",), "Sec. 3.2"),
    "byot": Survey(("self",), None, "Sec. 3.3"),
    "ban": Survey(("self",), ("response",), "Sec. 3.3 (Table 3: online, multi-teacher)"),
    "multi_teacher": Survey(("offline",), ("response",), "Sec. 5.2 (averaged response)"),
    "bert_pkd": Survey(None, ("feature",), "Sec. 7.2 ([CLS] of the hint layers)"),
    "cskd": Survey(("self",), ("response",), "Sec. 3.3"),
    "tfkd_self": Survey(("self",), ("response",), "Sec. 3.3"),
    "tfkd_reg": Survey(("self",), ("response",), "Sec. 3.3"),
    "ofd": Survey(None, ("feature",), "Table 1 (margin ReLU, pre-ReLU, L2)"),
    "semckd": Survey(None, ("feature",), "Table 1 (hint layer, L2)"),
}

# Why the graph's label differs from the survey's, for every cell that differs. The script
# fails when a disagreement has no explanation here, or an explanation no disagreement.
EXPLAIN: dict[str, str] = {
    "bert_pkd": "The survey labels BERT-PKD by its patient [CLS] matching of the hint layers "
    "(feature); the library spec also has the paper's soft-target term, response knowledge.",
    "fitnets": "The survey labels FitNets by its hint (feature). The library spec is the whole "
    "method as the paper trains it: the hint stage, then KD of the whole student, so it carries "
    "response knowledge too.",
    "semckd": "The survey labels SemCKD's cross-layer feature matching. The library spec adds "
    "the authors' KD term (soft targets at T = 4), which is response knowledge.",
    "crd": "The survey's Table 4 files CRD under response; its Sec. 2.3 calls it structured "
    "knowledge. The contrastive loss scores each sample's embedding against the other samples "
    "of the batch (a memory bank of negatives): samples related to each other, **relation**.",
    "crd_kd": "As for CRD (relation through the contrastive term); the KD term adds response.",
    "one": "The survey files ONE under online distillation. In the graph there is one network: "
    "its branches and their gated ensemble are parts of the student, trained together, so the "
    "network teaches itself (**self**, own ensemble). Online and self agree on what matters "
    "(nothing is pre-trained); the graph has no second network to call a teacher.",
    "ban": "Sec. 3.3 calls Born-Again Networks self-distillation; Table 3 lists them as "
    "online multi-teacher. Each generation's teacher is frozen while its student trains, so "
    "each step is **offline**; the generations of one architecture (`handoff`) make it "
    "**self** too. At any time one teacher teaches: topology self, not multi-teacher.",
    "tfkd_self": "The survey's self-distillation is stated in the spec (`teacher t like s`: a "
    "pre-trained copy of the student's architecture); the teacher is frozen while the student "
    "learns, so each step is also **offline**.",
}

# Where the labels agree but the graph says more than the survey.
REMARKS: dict[str, str] = {
    "dml": "The survey's labels (online, response) hold; what the survey does not show is the "
    "topology: no role is a teacher, two peers trained from scratch teach each other "
    "(**mutual**), and each KL moves only its student (a stop-gradient on the other side).",
    "byot": "The survey gives BYOT no knowledge category; the graph finds response (exits "
    "learn the deepest classifier's output) and feature (the exits' features) knowledge.",
}


def _labels(values: tuple[str, ...] | None) -> str:
    return ", ".join(values) if values else "-"


def _versus_gou(lib: list[tuple[Path, Classification]]) -> str:
    """The library against Gou et al.'s labels, every disagreement explained."""
    rows = [
        "## The library against Gou et al.",
        "",
        "Gou et al. label a method's scheme (Sec. 3) and knowledge (Sec. 2, Tables 1-2 and 6) "
        "where they cover it; `-` is no label. A cell agrees when the sets of labels are equal. "
        "The algorithm axis (Sec. 5) is derived from the graph where it can be (see the "
        "`algorithm` dimension).",
        "",
        "| method | Gou: scheme | Gou: knowledge | where | kdspec: scheme | kdspec: knowledge "
        "| kdspec: algorithm | agrees |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    cells = agree = 0
    seen = set()
    for _, c in lib:
        survey = GOU.get(c.method)
        if survey is None:
            continue
        seen.add(c.method)
        verdicts = []
        for mine, theirs in ((c.scheme, survey.scheme), (c.knowledge, survey.knowledge)):
            if theirs is None:
                continue
            cells += 1
            same = set(mine) == set(theirs)
            agree += same
            verdicts.append("yes" if same else "**no**")
        differs = "**no**" in verdicts
        if differs != (c.method in EXPLAIN):
            problem = "no explanation for a disagreement" if differs else "explained, but agrees"
            raise SystemExit(f"{c.method}: {problem} with Gou et al.: update EXPLAIN")
        rows.append(
            f"| `{c.method}` | {_labels(survey.scheme)} | {_labels(survey.knowledge)} | "
            f"{survey.where} | {', '.join(c.scheme)} | {', '.join(c.knowledge)} | "
            f"{c['algorithm'].value} | {', '.join(verdicts) or '-'} |"
        )
        if c.method in EXPLAIN or c.method in REMARKS:
            text = EXPLAIN.get(c.method) or REMARKS[c.method]
            notes.append(f"- **`{c.method}`**: {text}")
    missing = set(GOU) - seen
    if missing:
        raise SystemExit(f"survey labels for methods not in the library: {sorted(missing)}")
    rows += [
        "",
        f"{agree} of {cells} labelled cells agree. Where they differ, and where the graph says "
        "more than the survey:",
        "",
        *notes,
        "",
    ]
    return "\n".join(rows)


def generate() -> str:
    """The whole document."""
    lib = _library()
    found = [c for _, c in lib]
    parts = [
        "# Taxonomy of the method library",
        "",
        "<!-- Generated by `python scripts/gen_taxonomy_doc.py`; do not edit by hand. -->",
        "",
        _rules(),
        "## The library at a glance",
        "",
        markdown_table(found, SUMMARY),
        "",
        "## Every dimension",
        "",
        markdown_table(found),
        "",
        _versus_gou(lib),
        _disagreements(),
        "## Methods",
        "",
    ]
    for path, c in lib:
        kg_source = SourceFile(path.name, path.read_text(encoding="utf-8"))
        lowered, _ = check_source(kg_source)
        kg = build_graph(next(low.method for low in lowered if low.method.name == c.method))
        title = f": {kg.method.title}" if kg.method.title else ""
        parts.append(
            evidence_text(c, markdown=True).replace(
                f"### `{c.method}`", f"### `{c.method}`{title}", 1
            )
        )
        parts += [
            "",
            f"Source: `specs/{path.name}`.",
            "",
            "```mermaid",
            to_mermaid(kg, c.legend()).rstrip(),
            "```",
            "",
        ]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default=str(ROOT / "docs" / "taxonomy.md"))
    p.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = p.parse_args(argv)
    text = generate()
    out = Path(args.output)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            print(f"{out} is out of date: run python scripts/gen_taxonomy_doc.py", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
