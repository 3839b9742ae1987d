"""The registry of diagnostic codes: ``KD<stage><nn>``; a code is never reused.

1xx syntax, 2xx names and values (lowering to the IR), 3xx method-graph passes,
4xx binding to models (compiler), 5xx runs and data, 6xx other tools (import, export).
"""

from __future__ import annotations

CODES: dict[str, tuple[str, str]] = {
    # code: (title, long description for `kdspec explain KDnnn`)
    "KD101": ("unexpected character", "The lexer met a character that no token starts with."),
    "KD102": ("unexpected token", "The parser met a token where the grammar expects another."),
    "KD103": ("unexpected end of file", "The file ended inside a method or statement."),
    "KD104": ("malformed syntax tree", "The parse tree could not be turned into a syntax tree."),
    "KD105": ("unreadable file", "A spec file or an imported file could not be read."),
    "KD106": (
        "nesting too deep",
        "An expression is nested deeper than the parser's limit (100 levels); split it with "
        "`let` or `param`.",
    ),
    "KD201": ("duplicate definition", "A name is defined twice in the same method."),
    "KD202": ("unknown name", "A name refers to no parameter, role, view, subset, let or term."),
    "KD203": ("unknown function", "A knowledge transform, loss, adapter or schedule is unknown."),
    "KD204": ("bad arguments", "A call has an unknown keyword, a missing or surplus argument."),
    "KD205": ("value out of range", "A value breaks its constraint (T > 0, weight >= 0, ...)."),
    "KD206": ("bad tap", "A tap expression names no valid tap point of a role."),
    "KD207": ("bad stage", "A stage has an invalid duration or repeat count."),
    "KD208": ("bad composition", "A `use` names an unknown method, or methods use each other."),
    "KD209": ("unknown parameter override", "A parameter given on the command line is unknown."),
    "KD210": ("no method", "A file defines no method, or not the one asked for."),
    "KD211": ("bad role", "A role modifier is invalid (e.g. `ema` of an unknown role)."),
    "KD212": ("bad claim", "A claim names an unknown taxonomy dimension or value."),
    "KD213": (
        "bad function definition",
        "A `def` repeats a parameter, or puts a tensor parameter after one with a default.",
    ),
    "KD214": (
        "shape value out of scope",
        "A size of a value (`C`, `H`, `W`, `HW`, `tokens`) is used where no value is in "
        "scope: outside a `def`, or in a `def` without tensor inputs.",
    ),
    "KD215": (
        "recursive function",
        "A `def` calls itself, directly or through other functions; functions are expanded "
        "where they are called, so they cannot recurse.",
    ),
    "KD216": (
        "condition not known before training",
        "The condition of an `if` reads a tensor, a size or a schedule: `if` chooses between "
        "formulas once, from numbers, words and parameters; `where(cond, a, b)` chooses per "
        "element.",
    ),
    "KD301": (
        "loss does not accept this knowledge",
        "The loss is not defined for the kind of "
        "knowledge given (e.g. KL needs distributions on both sides).",
    ),
    "KD302": (
        "knowledge kinds differ",
        "The two sides of a transfer carry different kinds of "
        "knowledge (e.g. a relation matrix against a feature map).",
    ),
    "KD303": ("no training signal", "A trained role receives gradient from no loss term."),
    "KD304": ("unused definition", "A view, subset, let or parameter is defined but never used."),
    "KD305": (
        "teaching cycle without stop-gradient",
        "Roles teach each other in a cycle and "
        "gradient flows back through every edge; wrap a side in `stopgrad(...)`.",
    ),
    "KD306": (
        "frozen role receives gradient",
        "A term sends gradient into a role that is frozen where the term is active.",
    ),
    "KD307": (
        "unknown stage reference",
        "A stage names a term, role or module set that does not exist.",
    ),
    "KD308": (
        "inconsistent self-distillation",
        "A role teaches itself from the same tap, view and data, which transfers nothing.",
    ),
    "KD309": ("inactive term", "A loss term is active in no stage."),
    "KD310": (
        "layer counts differ",
        "Teacher and student tap ranges have different lengths "
        "and no `map` rule says how to pair them.",
    ),
    "KD311": (
        "claim contradicts the graph",
        "A `claim` disagrees with what the method graph shows.",
    ),
    "KD312": (
        "wrong side",
        "A role appears where it cannot learn: a virtual teacher (a hand-designed "
        "distribution, no network) on the student side of a transfer.",
    ),
    "KD313": (
        "wrong axis",
        "An operation works along an axis its input does not have (e.g. `mean(x, over=space)` "
        "on logits, whose axes are (batch, class)).",
    ),
    "KD314": (
        "axes do not fit",
        "Two operands of an element-wise operation (or of `relation`) have axes that do not "
        "line up: one side's axes must contain the other's.",
    ),
    "KD316": (
        "per-sample loss without normaliser",
        "A loss gives one value per sample but the term's weight does not say how to "
        "normalise their sum (`weight 1 / B`, `weight w / sum(w, over=batch)`).",
    ),
    "KD317": (
        "weight not per sample",
        "A term's weight has axes other than the batch, or weighs samples of a loss that is "
        "already one number for the batch.",
    ),
    "KD318": (
        "loss not reduced",
        "A loss written as a `def` gives values along axes other than the batch; a loss is a "
        "number or one value per sample.",
    ),
    "KD319": (
        "applied module would be trained",
        "A term applies a role's module to another role's value (`t.classifier(x)`), and a "
        "stage where the term is active trains that role: the term's loss would train the "
        "module too. Keep the role frozen there (`freeze t`, or a frozen teacher).",
    ),
    "KD320": (
        "prediction does not read its role",
        "`predict s = ...` scores role `s` by a value that reads nothing of `s` (e.g. "
        "`predict s = t.logits`): the run would report another role's accuracy as `s`'s.",
    ),
    "KD401": ("unknown module path", "A tap names a submodule the model does not have."),
    "KD402": ("tap point not found", "An abstract tap point could not be resolved on a model."),
    "KD403": ("shape mismatch", "Tensor shapes cannot be matched by any adapter."),
    "KD404": ("unknown model", "A model source name is unknown or its package is missing."),
    "KD405": ("bad checkpoint", "A checkpoint could not be loaded or does not fit the model."),
    "KD406": ("import not allowed", "An `import:` model or data source was not allowed."),
    "KD407": ("teacher without weights", "A frozen teacher has no weights and no stage trains it."),
    "KD408": ("unbound role", "A role of the method has no model in the run."),
    "KD409": (
        "tokenizers differ",
        "The roles of a run read text through different tokenizers (vocabularies or special "
        "tokens): per-token knowledge would not line up.",
    ),
    "KD501": ("bad run file", "The run file is malformed or names unknown settings."),
    "KD502": ("bad data", "The data source is unknown or yields unexpected items."),
    "KD503": ("non-finite loss", "Training produced a NaN or infinite loss."),
    "KD504": (
        "training position unknown",
        "The method has schedules (or several stages and none was set), and a Distiller was "
        "called without knowing where training is. Iterate `distiller.stages(loader, "
        "epochs=...)` and its batches, which runs the stages and schedules as `kdspec train` "
        "does, or pass `progress=Progress.at(step, steps_per_epoch, stage_steps)`.",
    ),
    "KD505": (
        "cannot write outputs",
        "A run folder or the teacher cache is not writable, is a file, or the disk is full.",
    ),
    "KD601": (
        "not translatable",
        "A setting of another tool's config (`kdspec import torchdistill`) has no kdspec "
        "counterpart, or is approximated (a warning says how).",
    ),
    "KD602": ("unreadable config", "A config to import is not valid YAML or not of that tool."),
    "KD603": (
        "cannot export",
        "`kdspec export` cannot write the method as a plain script (the note lists what).",
    ),
}


# A spec that triggers the code, and the same spec fixed (shown by `kdspec explain KDnnn`).
EXAMPLES: dict[str, tuple[str, str]] = {
    "KD205": (
        "transfer kd: softmax(T=0) from t.logits to s.logits with kl weight -1",
        "transfer kd: softmax(T=4) from t.logits to s.logits with kl weight 16",
    ),
    "KD301": (
        "transfer hint: from t.stage[2] to s.stage[2] with kl",
        "transfer hint: from t.stage[2] to s.stage[2] with mse",
    ),
    "KD303": (
        "student s2   # nothing teaches s2\n"
        "  transfer kd: softmax(T=4) from t.logits to s.logits with kl",
        "student s2\n  transfer kd: softmax(T=4) from t.logits to s2.logits with kl",
    ),
    "KD310": (
        "# a teacher with 4 stages, a student with 2\n"
        "  transfer hints: from t.stage[..] to conv1x1(s.stage[..]) with mse",
        "# student stage i learns from teacher stage round((i+1) * 4/2) - 1: stages 2 and 4\n"
        "  transfer hints: from t.stage[..] to conv1x1(s.stage[..]) map uniform with mse\n"
        "  # or `map last` (the last 2 teacher stages), `map first`, `map all_pairs`,\n"
        "  # or equal ranges: from t.stage[3..4] to conv1x1(s.stage[1..2])",
    ),
    "KD504": (
        "for x, y in loader:\n    out = distiller((x, y))   # a spec with warmup(...)",
        "for stage in distiller.stages(loader, epochs=20):\n"
        "    for x, y in stage:\n"
        "        out = distiller((x, y))",
    ),
}


def describe(code: str) -> str | None:
    """``KD301: loss does not accept this knowledge``, its long description and an example."""
    entry = CODES.get(code.upper())
    if entry is None:
        return None
    title, text = entry
    out = f"{code.upper()}: {title}\n\n{text}"
    example = EXAMPLES.get(code.upper())
    if example is not None:
        bad, good = example
        out += f"\n\nFor example:\n\n  {bad}\n\nFixed:\n\n  {good}"
    return out
