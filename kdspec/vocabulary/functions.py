"""The vocabulary of the language: every function a spec may call, as a table.

Each entry says what category it is (knowledge transform, adapter, loss, schedule, ...), which
keyword parameters it takes with their defaults and constraints, and how it types knowledge:
which kinds of knowledge it accepts and which kind it yields. The type checker pass, the
compiler and ``kdspec explain`` all read this one table, so adding a function is one row here
plus its implementation in :mod:`kdspec.ops`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kdspec.vocabulary.axes import AXES, MASKS

# Kinds of knowledge a value can carry. "features" is any raw tensor read at a tap.
KINDS = (
    "logits",
    "embedding",
    "features",
    "distribution",
    "attention",
    "gram",
    "similarity",
    "distance",
    "angle",
    "channel_distribution",
    "gaussian",
    "scalar",
)
TENSOR_KINDS = frozenset(KINDS) - {"scalar"}
# Raw tensors may be matched with each other even if read at different kinds of tap
# (an embedding against a feature map pooled to a vector is still a feature match).
RAW_KINDS = frozenset({"logits", "embedding", "features"})

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """A keyword parameter: default (REQUIRED if none) and a constraint for KD205."""

    default: object = REQUIRED
    check: str | None = None  # "positive" | "nonneg" | "unit" (0..1) | "int" | "posint" | ...
    choices: tuple[str, ...] = ()  # the words a word-valued parameter accepts


@dataclass(frozen=True)
class Fn:
    """One function of the language.

    Attributes:
        category: transform | adapter | loss | schedule | combine | role_init | view | subset
            | mapping.
        params: keyword parameters (positional arguments fill them in order after the inputs).
        inputs: number of tensor inputs (``-1`` variadic; transforms used as a knowledge
            pipeline get their input implicitly).
        accepts: kinds of knowledge accepted (empty: anything tensor-like).
        returns: the kind produced; ``"same"`` keeps the input's kind.
        needs_labels: uses the batch's labels (DKD parts, virtual teachers).
        learned: has trainable parameters (adapters, learned losses).
        family: loss family, or the knowledge family a transform belongs to (for taxonomy).
        doc: one line for ``kdspec explain`` and docs.
        teacher_accepts: the teacher side's kinds where they differ from the student's.
        axes: the rule giving the output axes from the input axes
            (:data:`kdspec.vocabulary.axes.RULES`); None where the axes are unknown.
        optional_inputs: how many of the trailing tensor inputs may be left out.
        log_inputs: a loss written in Python takes distributions as log-probabilities (else
            probabilities); a prelude loss reads probabilities, and ``log(p)`` exactly.
        impl: where the implementation lives, ``"kdspec.ops.module:function"``.
    """

    category: str
    params: dict[str, Param] = field(default_factory=dict)
    inputs: int = 1
    accepts: frozenset[str] = frozenset()
    returns: str = "same"
    needs_labels: bool = False
    learned: bool = False
    family: str = ""
    doc: str = ""
    teacher_accepts: frozenset[str] | None = None  # losses whose sides differ (VID)
    axes: str | None = None  # the axis rule (kdspec.vocabulary.axes.RULES); None: unknown
    optional_inputs: int = 0  # trailing tensor inputs that may be left out (`relation(x[, y])`)
    log_inputs: bool = False  # a Python distribution loss that takes log-probabilities
    impl: str = ""  # "module:function" of the implementation, checked against its signature


# Views that generate the batch's responses, and the kind of role whose model generates them
# (the method's first role of that kind): it is used by the view even if no term taps it.
GENERATED_VIEWS: dict[str, str] = {"on_policy": "student", "teacher_generations": "teacher"}


def _p(**params: object) -> dict[str, Param]:
    out: dict[str, Param] = {}
    for name, spec in params.items():
        if isinstance(spec, tuple):
            out[name] = Param(*spec)
        else:
            out[name] = Param(spec)
    return out


_FEATURE_LIKE = frozenset({"features", "embedding", "logits"})
# A loss's `reduction`: the same three words everywhere (`_reduce` in kdspec/prelude/losses.kd).
_REDUCTIONS = ("batchmean", "mean", "sum")
_BATCHMEAN, _MEAN = ("batchmean", None, _REDUCTIONS), ("mean", None, _REDUCTIONS)

FUNCTIONS: dict[str, Fn] = {
    # --- knowledge transforms -------------------------------------------------------------
    "softmax": Fn(
        "transform",
        _p(T=(1.0, "positive"), over=(None, None, AXES), mask=(None, None, MASKS)),
        returns="distribution",
        accepts=_FEATURE_LIKE,
        family="soft targets",
        doc="temperature softmax along `over` (default the last axis: classes of logits)",
        axes="along",
        impl="kdspec.ops.primitives:softmax",
    ),
    "log_softmax": Fn(
        "transform",
        _p(T=(1.0, "positive"), over=(None, None, AXES), mask=(None, None, MASKS)),
        accepts=_FEATURE_LIKE,
        family="soft targets",
        doc="log-softmax with temperature along `over` (default the last axis), a plain tensor",
        axes="along",
        impl="kdspec.ops.primitives:log_softmax",
    ),
    "zscore": Fn(
        "transform",
        _p(eps=(1e-7, "nonneg")),
        family="standardised logits",
        doc="z-score standardisation along the last axis",
    ),
    "attention": Fn(
        "transform",
        _p(p=(2.0, "positive")),
        accepts=_FEATURE_LIKE,
        returns="attention",
        family="attention map",
        doc="spatial attention map: mean_c |x|^p, flattened, L2-normalised",
    ),
    "normalize": Fn(
        "transform",
        _p(p=(2.0, "positive"), over=(None, None, AXES)),
        doc="Lp normalisation along `over`; without `over`, per sample (3-D: the last axis)",
        axes="along",
        impl="kdspec.ops.primitives:normalize",
    ),
    "flatten": Fn("transform", doc="flatten all but the batch axis"),
    "pool": Fn(
        "transform",
        _p(size=(1, "posint"), mask=(None, None, MASKS)),
        doc="adaptive average pooling (of token features: the mean over the batch's mask)",
        axes="pool",
    ),
    "interpolate": Fn("transform", _p(size=REQUIRED), doc="bilinear resize to a spatial size"),
    "gram": Fn(
        "transform",
        accepts=_FEATURE_LIKE,
        returns="gram",
        family="gram",
        doc="channel Gram matrix F Fᵀ / HW per sample",
    ),
    "fsp": Fn(
        "transform",
        _p(pool=("avg", None, ("avg", "max"))),
        inputs=2,
        accepts=_FEATURE_LIKE,
        returns="gram",
        family="fsp",
        doc="flow of solution procedure: Gram matrix between two layers",
    ),
    "similarity": Fn(
        "transform",
        _p(p=(2.0, "positive")),
        accepts=_FEATURE_LIKE,
        returns="similarity",
        family="sample similarity",
        doc="batch similarity matrix x xᵀ with normalised rows",
    ),
    "distances": Fn(
        "transform",
        _p(normalize=True),
        accepts=_FEATURE_LIKE,
        returns="distance",
        family="sample distance",
        doc="pairwise distances between samples, divided by their mean",
    ),
    "angles": Fn(
        "transform",
        accepts=_FEATURE_LIKE,
        returns="angle",
        family="sample angle",
        doc="cosines of the angles formed by sample triplets",
    ),
    "pkt_affinity": Fn(
        "transform",
        _p(eps=(1e-7, "nonneg")),
        accepts=_FEATURE_LIKE,
        returns="distribution",
        family="sample similarity distribution",
        doc="cosine affinities between samples as conditional probabilities",
    ),
    "channel_dist": Fn(
        "transform",
        accepts=_FEATURE_LIKE,
        returns="channel_distribution",
        family="neuron selectivity",
        doc="each channel's spatial activation pattern, L2-normalised",
    ),
    "binary_target": Fn(
        "transform",
        _p(T=(1.0, "positive")),
        accepts=_FEATURE_LIKE,
        returns="distribution",
        needs_labels=True,
        family="target class",
        doc="DKD: [p_target, 1 - p_target]",
    ),
    "non_target": Fn(
        "transform",
        _p(T=(1.0, "positive")),
        accepts=_FEATURE_LIKE,
        returns="distribution",
        needs_labels=True,
        family="non-target classes",
        doc="DKD: distribution over the non-target classes",
    ),
    "binarize": Fn(
        "transform",
        accepts=_FEATURE_LIKE,
        family="activation boundary",
        doc="1 where the pre-activation is positive, else 0",
    ),
    "margin_relu": Fn(
        "transform",
        accepts=_FEATURE_LIKE,
        family="margin ReLU",
        doc="OFD teacher transform: max(x, m) with m from batch-norm statistics",
    ),
    "mask": Fn(
        "transform",
        _p(ratio=(0.5, "unit"), mode=("channel", None, ("channel", "spatial"))),
        family="masked features",
        doc="MGD: randomly zero channels (or positions)",
    ),
    "resize": Fn(
        "transform",
        accepts=_FEATURE_LIKE,
        doc="pool or interpolate a feature map to the other side's spatial size",
    ),
    "stopgrad": Fn(
        "transform",
        doc="stop the gradient (detach)",
        axes="same",
        impl="kdspec.ops.primitives:stopgrad",
    ),
    # --- combining several roles or values -------------------------------------------------
    "mean": Fn(
        "combine",
        _p(
            weights=None, over=(None, None, AXES), mask=(None, None, MASKS), groups=(None, "posint")
        ),
        inputs=-1,
        doc="with `over=`: the mean along axes (over tokens: the batch's mask; `groups=n`: "
        "n means of consecutive groups, the axis stays); else the (weighted) mean of several "
        "values (of distributions, the mean of the probabilities)",
        axes="elementwise",
        impl="kdspec.ops.primitives:mean",
    ),
    "weighted": Fn("combine", _p(weights=REQUIRED), inputs=-1, doc="weighted mean"),
    # --- adapters (learned, sized by shape inference) --------------------------------------
    "conv1x1": Fn("adapter", learned=True, family="conv", doc="1x1 convolution"),
    "conv_bn": Fn("adapter", learned=True, family="conv", doc="1x1 convolution + batch norm"),
    "regressor": Fn(
        "adapter",
        learned=True,
        family="conv",
        doc="FitNets convolutional regressor to the teacher's shape",
    ),
    "linear": Fn(
        "adapter", _p(dim=(None, "posint")), learned=True, family="linear", doc="linear map"
    ),
    "mlp": Fn(
        "adapter",
        _p(hidden=(None, "posint"), dim=(None, "posint")),
        learned=True,
        family="mlp",
        doc="two-layer perceptron",
    ),
    "embed": Fn(
        "adapter",
        _p(dim=(128, "posint")),
        learned=True,
        returns="embedding",
        family="linear",
        doc="CRD: linear embedding to dim, L2-normalised",
    ),
    "classifier_head": Fn(
        "adapter",
        _p(num_classes=(None, "posint")),
        learned=True,
        returns="logits",
        family="head",
        doc="auxiliary classifier (exit) on an intermediate feature",
    ),
    "vid_regressor": Fn(
        "adapter",
        _p(init_pred_var=(5.0, "positive")),
        learned=True,
        returns="gaussian",
        family="conv",
        doc="VID: predicts a Gaussian (mean, variance) of the teacher feature",
    ),
    "identity": Fn("adapter", doc="no adapter"),
    # --- losses ------------------------------------------------------------------------------
    "kl": Fn(
        "loss",
        _p(reduction=_BATCHMEAN, eps=(0.0, "nonneg")),
        inputs=2,
        accepts=frozenset({"distribution"}),
        family="divergence",
        doc="Kullback-Leibler divergence KL(teacher || student)",
    ),
    "soft_ce": Fn(
        "loss",
        _p(reduction=_BATCHMEAN),
        inputs=2,
        accepts=frozenset({"distribution"}),
        family="divergence",
        doc="cross-entropy against the teacher's distribution",
    ),
    "cross_entropy": Fn(
        "loss",
        _p(label_smoothing=(0.0, "unit")),
        inputs=1,
        accepts=frozenset({"logits"}),
        family="supervised",
        doc="cross-entropy with the ground-truth labels",
    ),
    "mse": Fn("loss", _p(reduction=_MEAN), inputs=2, family="L2", doc="mean squared error"),
    "l1": Fn("loss", _p(reduction=_MEAN), inputs=2, family="L1", doc="mean absolute error"),
    "smooth_l1": Fn(
        "loss",
        _p(beta=(1.0, "positive"), reduction=_MEAN),
        inputs=2,
        family="Huber",
        doc="Huber / smooth L1",
    ),
    "cosine": Fn("loss", inputs=2, family="cosine", doc="1 - cosine similarity"),
    "lp": Fn(
        "loss",
        _p(p=(2.0, "positive"), dim=None, squared=True, reduction=_BATCHMEAN),
        inputs=2,
        family="L2",
        doc="Lp norm of the difference",
    ),
    "frobenius": Fn(
        "loss",
        inputs=2,
        family="L2",
        doc="squared Frobenius norm per sample (per sample pair for a relation between samples)",
    ),
    "mmd": Fn(
        "loss",
        _p(kernel=("poly", None, ("poly", "linear", "rbf")), gamma=(1.0, "positive")),
        inputs=2,
        accepts=frozenset({"channel_distribution"}),
        family="MMD",
        doc="maximum mean discrepancy between channel distributions",
    ),
    "pearson": Fn(
        "loss",
        _p(dim=(1, "int"), eps=(1e-8, "nonneg")),
        inputs=2,
        accepts=frozenset({"distribution"}),
        family="correlation",
        doc="1 - Pearson correlation (DIST)",
    ),
    "ab_hinge": Fn(
        "loss",
        _p(margin=(1.0, "nonneg"), reduction=_BATCHMEAN),
        inputs=2,
        accepts=_FEATURE_LIKE,
        family="hinge",
        doc="activation-boundary hinge (AB)",
    ),
    "partial_l2": Fn(
        "loss",
        inputs=2,
        accepts=_FEATURE_LIKE,
        family="L2",
        doc="OFD partial L2: skips positions where the student is below a negative teacher",
    ),
    "gaussian_nll": Fn(
        "loss",
        inputs=2,
        accepts=frozenset({"gaussian"}),
        teacher_accepts=_FEATURE_LIKE,
        family="variational",
        doc="VID: negative log-likelihood of the teacher under the student's Gaussian",
    ),
    "hcl": Fn(
        "loss",
        inputs=2,
        accepts=_FEATURE_LIKE,
        family="L2",
        doc="ReviewKD hierarchical context loss (MSE over a spatial pyramid)",
    ),
    "info_nce": Fn(
        "loss",
        _p(T=(0.07, "positive")),
        inputs=2,
        family="contrastive",
        doc="in-batch contrastive (InfoNCE) loss",
    ),
    # --- schedules (in weight expressions) -------------------------------------------------
    "warmup": Fn(
        "schedule",
        _p(epochs=(1, "positive")),
        inputs=0,
        doc="linear warm-up from 0 to 1 over the first epochs of the stage",
    ),
    "ramp": Fn(
        "schedule", _p(start=0.0, end=1.0), inputs=0, doc="linear from start to end over the stage"
    ),
    "cosine_schedule": Fn(
        "schedule", _p(start=1.0, end=0.0), inputs=0, doc="cosine from start to end over the stage"
    ),
    "step": Fn(
        "schedule",
        _p(every=(1, "positive"), gamma=(0.1, "nonneg")),
        inputs=0,
        doc="multiply by gamma every n epochs",
    ),
    "anneal": Fn(
        "schedule",
        _p(start=1.0, end=0.0),
        inputs=0,
        doc="linear annealing from start to end over the stage (FitNets' λ)",
    ),
    # --- role initialisers -----------------------------------------------------------------
    "ema": Fn(
        "role_init",
        _p(decay=(0.999, "unit")),
        inputs=1,
        doc="exponential moving average of another role's weights",
    ),
    "virtual": Fn(
        "role_init",
        _p(correct=(0.9, "unit")),
        inputs=0,
        needs_labels=True,
        doc="a hand-designed teacher: `correct` on the true class, uniform elsewhere",
    ),
    "snapshot": Fn(
        "role_init", inputs=1, doc="a frozen copy of another role, taken at a stage boundary"
    ),
    # --- data views and subsets ------------------------------------------------------------
    "gaussian_noise": Fn(
        "view",
        _p(std=(0.1, "nonneg"), k=(1, "posint")),
        inputs=0,
        doc="add Gaussian noise to the input (k > 1: k noisy views of each sample)",
    ),
    "augment": Fn(
        "view",
        _p(strength=(1.0, "nonneg"), k=(1, "posint")),
        inputs=0,
        doc="random shifts and noise (bound to a real augmentation by the run; k > 1: k "
        "augmented views of each sample)",
    ),
    "rotations": Fn(
        "view",
        _p(k=(4, "quarter_turns")),
        inputs=0,
        doc="k views of each sample, rotated by 0, 90, ... degrees (square images; view i is "
        "the rotation by i quarter turns)",
    ),
    "same_class": Fn("view", inputs=0, doc="another sample of the same class (CS-KD pairs)"),
    "clean": Fn("view", inputs=0, doc="the data as is"),
    "on_policy": Fn(
        "view",
        _p(
            lmbda=(0.5, "unit"),
            max_new_tokens=(32, "posint"),
            temperature=(1.0, "positive"),
        ),
        inputs=0,
        doc="token data: a fraction `lmbda` of the responses replaced by the student's samples "
        "(GKD); every role sees it",
    ),
    "teacher_generations": Fn(
        "view",
        _p(max_new_tokens=(32, "posint"), temperature=(0.0, "nonneg")),
        inputs=0,
        doc="token data: every response replaced by the teacher's generation (greedy at "
        "temperature 0), generated once per sample (sequence-level KD); every role sees it",
    ),
    "exclude_classes": Fn("subset", inputs=-1, doc="the training data without some classes"),
    "only_classes": Fn("subset", inputs=-1, doc="the training data of some classes only"),
    "fraction": Fn(
        "subset",
        _p(p=(0.1, "unit")),
        inputs=0,
        doc="a fixed random fraction (e.g. the labelled part)",
    ),
    # --- layer mapping rules (teacher and student of different depth) ----------------------
    "one_to_one": Fn("mapping", inputs=0, doc="pair layers in order (lengths must match)"),
    "uniform": Fn(
        "mapping",
        inputs=0,
        doc="student layer i takes teacher layer round((i+1)·n_t/n_s)-1 (uniform skip)",
    ),
    "last": Fn("mapping", inputs=0, doc="pair the last layers of the longer side"),
    "first": Fn("mapping", inputs=0, doc="pair the first layers of the longer side"),
    "all_pairs": Fn("mapping", inputs=0, doc="every student layer with every teacher layer"),
    # --- method components (kdspec.ops.components) -----------------------------------------
    "token": Fn(
        "transform",
        _p(index=(0, "int")),
        accepts=_FEATURE_LIKE,
        family="token",
        doc="one token of [B, L, D] token features (0: BERT's [CLS])",
    ),
    "rows": Fn(
        "transform",
        _p(mask=(None, None, MASKS)),
        doc="every row a sample: [..., D] -> [N, D] (per-token losses); of token values, only "
        "the tokens the batch's mask keeps",
    ),
    "token_relation": Fn(
        "transform",
        _p(heads=(12, "posint")),
        inputs=2,
        accepts=_FEATURE_LIKE,
        returns="distribution",
        family="self-attention relation",
        doc="MiniLM: per-head softmax(a bᵀ/√d) of token features (queries·keys, values·values)",
    ),
    "attention_scores": Fn(
        "transform",
        _p(heads=(12, "posint")),
        inputs=2,
        accepts=_FEATURE_LIKE,
        returns="attention",
        family="attention scores",
        doc="TinyBERT: unnormalised per-head attention scores a bᵀ/√d (queries·keys)",
    ),
    "abf": Fn(
        "adapter",
        _p(mid=(None, "posint")),
        learned=True,
        family="review fusion",
        doc="ReviewKD: attention-based fusion of each student level with the deeper ones (ABF)",
    ),
    "paraphraser": Fn(
        "adapter",
        _p(rate=(0.5, "positive")),
        learned=True,
        family="paraphraser",
        doc="FT: paraphraser encoder, teacher feature -> factor with rate·C channels",
    ),
    "paraphraser_decoder": Fn(
        "adapter",
        learned=True,
        family="paraphraser",
        doc="FT: paraphraser decoder, reconstructs the teacher feature from its factor",
    ),
    "translator": Fn(
        "adapter",
        learned=True,
        family="translator",
        doc="FT: translator, student feature -> the teacher factor's shape",
    ),
    "branches": Fn(
        "adapter",
        _p(n=(2, "posint"), width=(None, "posint")),
        learned=True,
        returns="logits",
        family="head",
        doc="ONE: n new branches (conv blocks + classifier) on a shared trunk feature",
    ),
    "gate": Fn(
        "adapter",
        inputs=-1,
        learned=True,
        returns="logits",
        family="gate",
        doc="ONE: gated ensemble sum_i g_i(x) z_i of branch logits, g from the trunk feature x",
    ),
    "generator": Fn(
        "adapter",
        learned=True,
        family="generator",
        doc="MGD: generation block (conv3x3-ReLU-conv3x3) to the teacher's channels",
    ),
    "crd_nce": Fn(
        "loss",
        _p(k=(16384, "posint"), T=(0.07, "positive"), momentum=(0.5, "unit")),
        inputs=2,
        learned=True,
        accepts=frozenset({"embedding"}),
        family="contrastive",
        doc="CRD: NCE against memory banks of every training sample's embeddings (needs indices)",
    ),
    "semckd": Fn(
        "loss",
        _p(factor=(4, "posint")),
        inputs=2,
        learned=True,
        accepts=_FEATURE_LIKE,
        family="L2",
        doc="SemCKD: every student layer to every teacher layer, weighed by learned attention",
    ),
}


# Axis rules of the named functions (kdspec.vocabulary.axes.RULES); unknown ones stay None.
_NAMED_AXES = {
    "same": "conv1x1 conv_bn regressor generator identity zscore binarize margin_relu mask "
    "resize interpolate channel_dist",
    "vector": "embed flatten token",
    "linear": "linear mlp",
    "class_vector": "classifier_head binary_target non_target branches gate",
    "spatial": "attention",
    "channel_matrix": "gram fsp",
    "sample_matrix": "similarity distances pkt_affinity",
    "elementwise": "weighted",
    "rows": "rows",
    "token_matrix": "attention_scores",
    "token_rows": "token_relation",
}
for _rule, _names in _NAMED_AXES.items():
    for _name in _names.split():
        FUNCTIONS[_name] = replace(FUNCTIONS[_name], axes=_rule)


# Where each named function is implemented ("module:function"); tests/ops/test_vocabulary.py
# binds every declared parameter and default against that function's signature. `prelude:NAME`
# is the `def NAME` of kdspec/prelude/*.kd: the function is written in kdspec itself.
PRELUDE_IMPL = "prelude:"
_IMPLS = {
    "prelude": "zscore attention similarity gram channel_dist non_target binarize partial_l2 "
    "binary_target distances attention_scores token_relation token angles fsp "
    "pkt_affinity hcl info_nce frobenius kl soft_ce mse l1 smooth_l1 cosine lp mmd pearson "
    "ab_hinge gaussian_nll cross_entropy flatten mask",
    "kdspec.ops.transforms": "pool interpolate margin_relu weighted",
    "kdspec.ops.adapters": "conv1x1=_conv1x1 conv_bn=_conv_bn regressor=_regressor "
    "linear=_linear mlp=_mlp embed=_embed classifier_head=_classifier_head "
    "vid_regressor=_vid_regressor identity=_identity",
    "kdspec.ops.components": "rows abf=_abf "
    "paraphraser=_paraphraser paraphraser_decoder=_paraphraser_decoder translator=_translator "
    "branches=_branches gate=_gate generator=_generator crd_nce=_crd_nce semckd=_semckd",
    "kdspec.compiler.nodes": "resize=_resize virtual=VirtualNode",
    "kdspec.ir.evaluate": "warmup=schedule_value ramp=schedule_value "
    "cosine_schedule=schedule_value step=schedule_value anneal=schedule_value",
    "kdspec.compiler.views": "gaussian_noise=make_view augment=make_view same_class=make_view "
    "clean=make_view rotations=make_view on_policy=make_view teacher_generations=make_view "
    "exclude_classes=make_subset only_classes=make_subset fraction=make_subset",
    "kdspec.compiler.build": "one_to_one=_mapping_pairs uniform=_mapping_pairs "
    "last=_mapping_pairs first=_mapping_pairs all_pairs=_mapping_pairs",
    "kdspec.compiler.distiller": "ema=Distiller.after_step snapshot=Distiller.set_stage",
}
for _module, _entries in _IMPLS.items():
    for _entry in _entries.split():
        _name, _, _func = _entry.partition("=")
        FUNCTIONS[_name] = replace(FUNCTIONS[_name], impl=f"{_module}:{_func or _name}")


def _prim(doc: str, axes: str, impl: str, inputs: int = 1, **kw: object) -> Fn:
    return Fn(
        "primitive",
        inputs=inputs,
        returns=str(kw.pop("returns", "features")),
        doc=doc,
        axes=axes,
        impl=f"kdspec.ops.primitives:{impl}",
        **kw,  # type: ignore[arg-type]
    )


def _unary(doc: str, name: str) -> Fn:
    return _prim(doc, "same", name)


def _reduction(doc: str, name: str, **params: object) -> Fn:
    params = {**params, "over": (REQUIRED, None, AXES), "mask": (None, None, MASKS)}
    return _prim(doc, "reduce", name, params=_p(**params))


# The core of tensor primitives (issue 9): typed by axes, usable in every expression, in
# knowledge pipelines, in losses and in `def` bodies. Element-wise `+ - * / ^`, unary minus and
# the comparisons `< > <= >= == !=` are operators of the grammar, typed by the same axis rules.
PRIMITIVES: dict[str, Fn] = {
    "exp": _unary("e to the power x, element-wise", "exp"),
    "log": _unary(
        "natural logarithm, element-wise (of a distribution: its exact log-probabilities)", "log"
    ),
    "abs": _unary("absolute value, element-wise", "abs"),
    "sqrt": _unary("square root, element-wise", "sqrt"),
    "sigmoid": _unary("logistic function, element-wise", "sigmoid"),
    "softplus": _unary("log(1 + e^x), element-wise", "softplus"),
    "relu": _unary("max(x, 0), element-wise", "relu"),
    "tanh": _unary("hyperbolic tangent, element-wise", "tanh"),
    "clamp": _prim(
        "limit to [min, max], element-wise (either bound may be left out)",
        "same",
        "clamp",
        params=_p(min=None, max=None),
    ),
    "pow": _prim("x to the power p, element-wise", "same", "pow", params=_p(p=REQUIRED)),
    "where": _prim(
        "element-wise choice: a where cond is non-zero, else b", "elementwise", "where", inputs=3
    ),
    "gaussian": _prim(
        "a Gaussian from its mean and its variance (broadcastable to the mean, e.g. "
        "`exp(head(x))`), as `vid_regressor` predicts one: what `gaussian_nll` compares with",
        "same",
        "gaussian",
        inputs=2,
        returns="gaussian",
    ),
    "gaussian_mean": _prim(
        "the mean of a Gaussian (the `gaussian` value of `vid_regressor`)", "same", "gaussian_mean"
    ),
    "gaussian_var": _prim(
        "the variance of a Gaussian (the `gaussian` value of `vid_regressor`), broadcastable "
        "to its mean",
        "same",
        "gaussian_var",
    ),
    "choose": _prim(
        "a if cond, else b; cond is known before training (numbers, words, `none`, parameters: "
        '`reduction == "sum"`), and only the chosen value is typed and computed',
        "same",
        "choose",
        inputs=3,
        returns="same",
    ),
    "sum": _reduction("sum along axes", "sum"),
    "std": _reduction(
        "standard deviation along axes (correction=1: unbiased)", "std", correction=(1, "int")
    ),
    "var": _reduction("variance along axes (correction=1: unbiased)", "var", correction=(1, "int")),
    "max": _reduction("largest value along axes", "max"),
    "min": _reduction("smallest value along axes", "min"),
    "logsumexp": _reduction("log of the sum of exponentials along axes", "logsumexp"),
    "norm": _reduction("Lp norm along axes", "norm", p=(2.0, "positive")),
    "median": _reduction("median along one axis (the lower of the two middle values)", "median"),
    "quantile": _reduction(
        "q-quantile along axes (linear interpolation)", "quantile", q=(0.5, "unit")
    ),
    "relation": _prim(
        "relation between the rows along `over` of x (or of x and y): every axis but batch, "
        "head and `over` is contracted; kernel dot | cosine | rbf (exp(-gamma d²)) | distance "
        "| sqdistance",
        "relation",
        "relation",
        inputs=2,
        optional_inputs=1,
        params=_p(
            over=(REQUIRED, None, AXES),
            kernel=("dot", None, ("dot", "cosine", "rbf", "distance", "sqdistance")),
            gamma=(1.0, "positive"),
            mask=(None, None, MASKS),
        ),
        returns="similarity",
    ),
    "differences": _prim(
        "the difference x_j - x_i of every pair of rows along `over`: (batch, channel) -> "
        "(batch, batch2, channel), batch kept first; RKD's angles are "
        "`relation(differences(x, over=batch), over=batch2, kernel=cosine)`",
        "differences",
        "differences",
        params=_p(over=(REQUIRED, None, AXES)),
        returns="same",
    ),
    "shrink": _prim(
        "x adaptively pooled over `space` (`mode` avg | max) to the smaller of its own and "
        "y's size in each spatial dimension, unchanged where x is not larger (FSP's maps of "
        "two stages: `shrink(a, b)` and `shrink(b, a)` have one size)",
        "shrink",
        "shrink",
        inputs=2,
        params=_p(mode=("avg", None, ("avg", "max"))),
        returns="same",
    ),
    "eye": _prim(
        "the identity matrix shaped like a relation matrix x (..., a, a2): 1 where the row and "
        "the column are the same, 0 elsewhere (RKD's zeroed diagonal: `r * (1 - eye(r))`)",
        "matrix",
        "eye",
    ),
    "diag": _prim(
        "the diagonal of a relation matrix x (..., a, a2) -> (..., a): each row's entry at its "
        "own column (InfoNCE's positives: `diag(relation(t, s, over=batch))`)",
        "matrix",
        "diag",
        returns="same",
    ),
    "select": _prim(
        "the entries at one position `index` of the axis `over`, which goes away: "
        "`select(tokens(x), over=token, index=0)` is BERT's [CLS] token",
        "select",
        "select",
        params=_p(over=(REQUIRED, None, AXES), index=(0, "int")),
        returns="same",
    ),
    "random": _prim(
        "uniform random numbers in [0, 1), drawn anew at every step: one per entry of x, or "
        "with `over` one per position of those axes, shared along the others (MGD's channel "
        "mask: `x * (random(x, over=[batch, channel]) >= ratio)`)",
        "random",
        "random",
        params=_p(over=(None, None, AXES)),
    ),
    "merge": _prim(
        "the adjacent axes `over` joined into one `channel` axis (the batch stays): "
        "`merge(x, over=sample)` is one vector per sample, (batch, channel, space) -> "
        "(batch, channel)",
        "merge",
        "merge",
        params=_p(over=(REQUIRED, None, AXES)),
        returns="same",
    ),
    "stack": _prim(
        "the inputs (equal axes) side by side along a new last axis `over`: "
        "`stack(p, 1 - p, over=class)` is (batch) -> (batch, class)",
        "joined",
        "stack",
        inputs=-1,
        params=_p(over=(REQUIRED, None, AXES)),
    ),
    "concat": _prim(
        "the inputs (equal axes) joined end to end along their axis `over`",
        "joined",
        "concat",
        inputs=-1,
        params=_p(over=(REQUIRED, None, AXES)),
    ),
    "size": _prim(
        "the size of an axis of x, a number (without x: `over=batch` the batch size, "
        "`over=class` the number of classes); `part=0`/`1`: H or W of `space`",
        "size",
        "size",
        inputs=1,
        optional_inputs=1,
        params=_p(over=(REQUIRED, None, AXES), part=None),
        returns="scalar",
    ),
    "label_mask": _prim(
        "1 at the true class, 0 elsewhere, shaped like x (needs a class axis); a row labelled "
        "-100 (ignored, as in F.cross_entropy) is all 0; `target=view`: at the index of each "
        "row's view instead",
        "needs_class",
        "label_mask",
        needs_labels=True,
        params=_p(target=("label", None, ("label", "view"))),
    ),
    "at_label": _prim(
        "x at the true class (the class axis goes away); `target=view`: at the index of "
        "each row's view",
        "drop_class",
        "at_label",
        needs_labels=True,
        params=_p(target=("label", None, ("label", "view"))),
    ),
    "same_source": _prim(
        "1 where rows i and j of x are views of the same sample (a view with k > 1 gives k "
        "rows per sample), else 0; `diagonal=false` leaves out i = j",
        "batch_matrix",
        "same_source",
        params=_p(diagonal=True),
    ),
    "view_index": _prim(
        "which view of its sample each row of x is (0 to k - 1; 0 without an expanding view)",
        "batch_only",
        "view_index",
    ),
    "topk": _prim(
        "1 at the k largest entries along `over` (default the last axis), 0 elsewhere",
        "along",
        "topk",
        params=_p(k=(1, "posint"), over=(None, None, AXES)),
    ),
    "rank": _prim(
        "rank of each entry along `over` (default the last axis): 0 for the largest",
        "along",
        "rank",
        params=_p(over=(None, None, AXES)),
    ),
    "grad_reverse": _prim(
        "identity forward; the gradient is multiplied by -scale (gradient reversal)",
        "same",
        "grad_reverse",
        params=_p(scale=(1.0, "nonneg")),
        returns="same",
    ),
    "tokens": _prim(
        "read features as token features: (batch, channel, space) -> (batch, token, channel)",
        "tokens",
        "tokens",
        returns="same",
    ),
    "heads": _prim(
        "split token features into n heads: (batch, token, channel) -> "
        "(batch, head, token, channel)",
        "heads",
        "heads",
        params=_p(n=(12, "posint")),
        returns="same",
    ),
    "learned": _prim(
        "a learned tensor: a number, one value per `over` axis of x (`learned(x, "
        "over=channel)`) or per training sample (`over=batch`), starting at `init`",
        "learned",
        "learned",
        inputs=1,
        optional_inputs=1,
        params=_p(over=(None, None, AXES), init=0.0),
        learned=True,
    ),
    "head": _prim(
        "a learned linear head on x's per-sample features (pooled): one value per sample "
        "(dim=1) or dim values; weights start at 0 and the bias at `init`",
        "head",
        "head",
        params=_p(dim=(1, "posint"), init=0.0),
        learned=True,
    ),
}
FUNCTIONS.update(PRIMITIVES)

ROLE_KINDS = ("teacher", "student", "assistant", "peer")
TAP_POINTS = ("logits", "embedding", "input", "output", "stage")
TAP_IO = ("output", "input", "preact")
CLAIM_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "scheme": ("offline", "online", "self"),
    "knowledge": ("response", "feature", "relation"),
    "topology": ("single_teacher", "multi_teacher", "chain", "mutual", "self"),
    "stages": ("single", "multi"),
}


# Names other libraries give our functions (PyTorch, torchdistill): a KD203 suggests ours.
ALIASES: dict[str, str] = {
    "kl_div": "kl",
    "kldiv": "kl",
    "kl_divergence": "kl",
    "kldivloss": "kl",
    "mse_loss": "mse",
    "mseloss": "mse",
    "l1_loss": "l1",
    "l1loss": "l1",
    "smooth_l1_loss": "smooth_l1",
    "huber": "smooth_l1",
    "cross_entropy_loss": "cross_entropy",
    "crossentropyloss": "cross_entropy",
    "ce": "cross_entropy",
    "cosine_similarity": "cosine",
    "cosine_loss": "cosine",
}


def by_category(category: str) -> list[str]:
    """Names of the functions of one category, sorted."""
    return sorted(name for name, fn in FUNCTIONS.items() if fn.category == category)
