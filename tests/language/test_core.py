"""The compositional core: typed primitives, `def`, learned tensors, per-sample weights.

Every spec below is compiled in functional mode (tensors given by tap text) and compared in
float64, loss and gradients, with the same quantity written in plain torch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close

from kdspec.api import load_method
from kdspec.compiler import compile_spec

B, K = 6, 5


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


def labels(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(seed))


def terms(text: str, tensors: dict, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    low = load_method("spec.kd", text=text)
    example = {k: v.detach() for k, v in tensors.items()}
    d = compile_spec(low, None, {**example, "labels": y}, num_classes=K)
    return d.evaluate_terms(tensors, y)


def close(a: torch.Tensor, b: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    assert_close(a, b)
    ga = torch.autograd.grad(a, inputs, retain_graph=True)
    gb = torch.autograd.grad(b, inputs, retain_graph=True)
    for x, y in zip(ga, gb, strict=True):
        assert_close(x, y)


def test_jensen_shannon_as_a_def():
    zt, zs = rand(B, K, seed=0), rand(B, K, seed=1)
    text = """
def kl_rows(p, q) = sum(p * (log(p) - log(q)), over=class)
def jsd(t, s, beta=0.5) {
  let m = beta * t + (1 - beta) * s
  return beta * kl_rows(t, m) + (1 - beta) * kl_rows(s, m)
}
method m {
  teacher t
  student s
  transfer j: softmax(T=2) from t.logits to s.logits with jsd(beta=0.3) weight 1 / B
}
"""
    got = terms(text, {"t.logits": zt, "s.logits": zs})["j"]
    pt, ps = F.softmax(zt / 2, 1), F.softmax(zs / 2, 1)
    m = 0.3 * pt + 0.7 * ps
    want = (0.3 * (pt * (pt / m).log()).sum(1) + 0.7 * (ps * (ps / m).log()).sum(1)).mean()
    close(got, want, [zt, zs])


def test_per_sample_weight_with_explicit_normaliser():
    zt, zs = rand(B, K, seed=2), rand(B, K, seed=3)
    text = """
def kl_rows(t, s) = sum(t * (log(t) - log(s)), over=class)
method m {
  teacher t
  student s
  let conf = max(softmax(stopgrad(t.logits)), over=class)
  transfer w: softmax from t.logits to s.logits with kl_rows weight conf / sum(conf, over=batch)
}
"""
    got = terms(text, {"t.logits": zt, "s.logits": zs})["w"]
    pt = F.softmax(zt, 1)
    rows = (pt * (F.log_softmax(zt, 1) - F.log_softmax(zs, 1))).sum(1)
    conf = pt.detach().max(1).values
    want = (rows * conf).sum() / conf.sum()
    close(got, want, [zs])


def test_relation_over_batch_cosine_and_reductions():
    ft, fs = rand(B, 3, 4, 4, seed=4), rand(B, 2, 4, 4, seed=5)
    text = """
def sample_relation(x) = normalize(relation(x, over=batch, kernel=cosine), over=batch2)
def mse_rows(t, s) = mean((s - t) ^ 2, over=batch2)
method m {
  teacher t
  student s
  transfer r: sample_relation from t.stage[1] to s.stage[1] with mse_rows weight 1 / B
}
"""
    got = terms(text, {"t.stage[1]": ft, "s.stage[1]": fs})["r"]

    def rel(x):
        v = F.normalize(x.flatten(1), dim=1)
        return F.normalize(v @ v.T, dim=1)

    want = ((rel(fs) - rel(ft)) ** 2).mean(1).mean()
    close(got, want, [ft, fs])


def test_mean_over_space_and_channel_attention():
    ft, fs = rand(B, 3, 4, 4, seed=6), rand(B, 3, 4, 4, seed=7)
    text = """
def att(x) = normalize(mean(x ^ 2, over=channel), over=space)
def sq(t, s) = sum((s - t) ^ 2, over=space)
method m {
  teacher t
  student s
  transfer a: att from t.stage[1] to s.stage[1] with sq weight 2 / B
}
"""
    got = terms(text, {"t.stage[1]": ft, "s.stage[1]": fs})["a"]

    def att(x):
        return F.normalize(x.pow(2).mean(1).flatten(1), dim=1)

    want = 2 * ((att(fs) - att(ft)) ** 2).sum(1).mean()
    close(got, want, [ft, fs])


def test_labels_and_masks():
    zs = rand(B, K, seed=8)
    y = labels()
    text = """
def true_prob(s) = at_label(s)
method m {
  student s
  supervise c: softmax(s.logits) with true_prob weight -1 / B
}
"""
    text = text.replace("weight -1 / B", "weight 1 / B")
    got = terms(text, {"s.logits": zs}, y)["c"]
    want = F.softmax(zs, 1).gather(1, y[:, None]).squeeze(1).mean()
    close(got, want, [zs])


def test_one_sided_regulariser():
    fs = rand(B, 7, seed=9)
    text = """
def l1_norm(x) = sum(abs(x), over=channel)
method m {
  student s
  supervise r: s.embedding with l1_norm weight 0.5 / B
}
"""
    got = terms(text, {"s.embedding": fs})["r"]
    close(got, 0.5 * fs.abs().sum(1).mean(), [fs])


def test_learned_scalar_and_gradient_reversal():
    zt, zs = rand(B, K, seed=10), rand(B, K, seed=11)
    text = """
def kl_rows(t, s) = sum(t * (log(t) - log(s)), over=class)
method m {
  teacher t
  student s
  let tau = 1 + softplus(grad_reverse(learned(init=0.5)))
  transfer k: from softmax(t.logits / tau) to softmax(s.logits / tau) with kl_rows weight 1 / B
}
"""
    low = load_method("spec.kd", text=text)
    d = compile_spec(low, None, {"t.logits": zt.detach(), "s.logits": zs.detach(), "labels": None})
    got = d.evaluate_terms({"t.logits": zt, "s.logits": zs})["k"]
    (param,) = [p for p in d.parameters() if p.dim() == 0]
    assert param in d.trainable_parameters()
    tau = 1 + F.softplus(torch.tensor(0.5, dtype=torch.float64, requires_grad=True))
    pt = F.softmax(zt / tau, 1)
    want = (pt * (F.log_softmax(zt / tau, 1) - F.log_softmax(zs / tau, 1))).sum(1).mean()
    close(got, want, [zs])
    # Gradient reversal: the temperature ascends the loss.
    (g_param,) = torch.autograd.grad(got, [param])
    t0 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    tau0 = 1 + F.softplus(t0)
    pt0 = F.softmax(zt.detach() / tau0, 1)
    ref = pt0 * (F.log_softmax(zt.detach() / tau0, 1) - F.log_softmax(zs.detach() / tau0, 1))
    (g_ref,) = torch.autograd.grad(ref.sum(1).mean(), [t0])
    assert_close(g_param.double(), -g_ref, rtol=1e-5)


@pytest.mark.parametrize(
    ("snippet", "code"),
    [
        ("transfer x: from mean(t.logits, over=space) to s.logits with mse", "KD313"),
        ("transfer x: from t.logits + t.embedding to s.logits with mse", "KD314"),
        ("transfer x: softmax from t.logits to s.logits with rows_kl", "KD316"),
        (
            "transfer softmax from t.logits to s.logits with kl weight max(s.logits, over=batch)",
            "KD317",
        ),
        ("transfer x: softmax from t.logits to s.logits with unreduced weight 1 / B", "KD318"),
        ("transfer x: from t.logits to s.logits with mse weight C", "KD214"),
        ("transfer x: from t.logits to s.logits with loops", "KD215"),
    ],
)
def test_new_ways_to_be_wrong(snippet: str, code: str):
    from kdspec.api import check_source
    from kdspec.source import SourceFile

    text = f"""
def rows_kl(t, s) = sum(t * (log(t) - log(s)), over=class)
def unreduced(t, s) = t * (log(t) - log(s))
def loops(t, s) = loops(s, t)
method m {{
  teacher t
  student s
  {snippet}
}}
"""
    _, diags = check_source(SourceFile("spec.kd", text))
    codes = {d.code for d in diags}
    assert code in codes, [d.message for d in diags]


@pytest.mark.parametrize("log_inputs", [False, True])
def test_a_new_distribution_loss_gets_what_its_declaration_says(monkeypatch, log_inputs):
    """Item 6: no hard-coded list decides who gets log-probabilities; the declaration does."""
    from kdspec.ops import LOSSES
    from kdspec.vocabulary import FUNCTIONS, Fn

    seen: list[torch.Tensor] = []

    def probe(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        seen.append(t.detach())
        return (t - s).abs().sum()

    fn = Fn("loss", inputs=2, accepts=frozenset({"distribution"}), log_inputs=log_inputs)
    monkeypatch.setitem(FUNCTIONS, "probe_loss", fn)
    monkeypatch.setitem(LOSSES, "probe_loss", probe)
    zt, zs = rand(B, K, seed=12), rand(B, K, seed=13)
    text = "method m {\n  teacher t\n  student s\n"
    text += "  transfer p: softmax(T=2) from t.logits to s.logits with probe_loss\n}\n"
    terms(text, {"t.logits": zt, "s.logits": zs})
    want = F.log_softmax(zt.detach() / 2, 1)
    assert_close(seen[-1], want if log_inputs else want.exp())


def test_mask_takes_its_documented_default_ratio():
    """`mask.ratio` is 0.5 in the table and in the code (it used to be required by the code)."""
    fs = rand(B, 4, 3, 3, seed=14)
    text = "method m {\n  student s\n  teacher t\n"
    text += "  transfer g: from t.stage[1] to mask(s.stage[1]) with mse\n}\n"
    got = terms(text, {"t.stage[1]": fs.detach() * 0, "s.stage[1]": fs})["g"]
    assert torch.isfinite(got)


def test_a_function_of_a_loss_value():
    """The log of a built-in loss, inside a `def`: `log(mse(t, s))`."""
    ft, fs = rand(B, 7, seed=15), rand(B, 7, seed=16)
    text = """
def log_mse(t, s) = log(mse(t, s))
method m {
  teacher t
  student s
  transfer l: from t.embedding to s.embedding with log_mse
}
"""
    got = terms(text, {"t.embedding": ft, "s.embedding": fs})["l"]
    close(got, F.mse_loss(fs, ft).log(), [ft, fs])


def _check(files: dict[str, str], main: str, tmp_path) -> list:
    from kdspec.api import check_source
    from kdspec.source import SourceFile

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    path = tmp_path / main
    return check_source(SourceFile(str(path), path.read_text()))


def test_defs_of_an_imported_file_and_of_a_used_method(tmp_path):
    files = {
        "defs.kd": "def kl_rows(t, s) = sum(t * (log(t) - log(s)), over=class)\n",
        "lib.kd": "def l1_rows(x) = sum(abs(x), over=channel)\n"
        "method sparse {\n  student s\n"
        "  supervise reg: s.embedding with l1_rows weight 0.01 / B\n}\n",
        "main.kd": 'import "defs.kd"\nimport "lib.kd"\nmethod m {\n  teacher t\n  student s\n'
        "  use sparse\n"
        "  transfer kd: softmax from t.logits to s.logits with kl_rows weight 1 / B\n}\n",
    }
    lowered, diags = _check(files, "main.kd", tmp_path)
    assert diags == []
    assert [f.name for f in lowered[0].method.functions] == ["kl_rows", "l1_rows"]


def test_a_file_of_defs_only_is_checked(tmp_path):
    files = {"defs.kd": "def bad(x) = mean(x, over=spaec) + nope(x)\ndef fine(x) = x\n"}
    _, diags = _check(files, "defs.kd", tmp_path)
    assert sorted(d.code for d in diags) == ["KD203", "KD313"]
    assert "did you mean `space`" in (next(d for d in diags if d.code == "KD313").help or "")


def test_a_def_error_is_reported_once_in_the_def(tmp_path):
    text = (
        "def att(x) = mean(x, over=spaec)\n"
        "method m {\n  teacher t\n  student s\n"
        "  transfer a: att from t.stage[1] to s.stage[1] with mse\n"
        "  transfer b: att from t.stage[2] to s.stage[2] with mse\n}\n"
    )
    _, diags = _check({"a.kd": text}, "a.kd", tmp_path)
    assert [(d.code, d.labels[0].span.start) for d in diags] == [("KD313", text.index("spaec"))]


def test_gaussian_with_a_learned_log_variance_head_and_per_channel_scale():
    """A mean (the student's embedding, scaled per channel) and a learned log-variance head."""
    ft, fs = rand(B, 7, seed=17), rand(B, 7, seed=18)
    text = """
def gauss_nll(t, s, logvar) = sum((t - s)^2, over=channel) / (2 * exp(logvar)) + C / 2 * logvar
method m {
  teacher t
  student s
  let scale = learned(s.embedding, over=channel, init=1.5)
  let logvar = head(s.embedding, init=0.25)
  transfer g: from t.embedding to scale * s.embedding with gauss_nll(logvar) weight 1 / B
}
"""
    low = load_method("spec.kd", text=text)
    example = {"t.embedding": ft.detach(), "s.embedding": fs.detach(), "labels": None}
    d = compile_spec(low, None, example)
    got = d.evaluate_terms({"t.embedding": ft, "s.embedding": fs})["g"]
    learned = {tuple(p.shape): p for p in d.trainable_parameters()}
    assert set(learned) == {(7,), (1, 7), (1,)}  # per-channel scale, head weight and bias
    logvar = torch.full((B,), 0.25, dtype=torch.float64)
    mean = 1.5 * fs
    want = ((ft - mean) ** 2).sum(1) / (2 * logvar.exp()) + 7 / 2 * logvar
    close(got, want.mean(), [ft, fs])
    (g_w,) = torch.autograd.grad(got, [learned[(1, 7)]])  # the head learns from the loss
    assert g_w.abs().sum() > 0


def test_per_token_logits_through_rows():
    """Language-model logits [B, L, V]: `rows` makes every token a sample (batch, class)."""
    zt, zs = rand(2, 3, K, seed=19), rand(2, 3, K, seed=20)
    text = """
def reverse_kl(t, s) = sum(s * (log(s) - log(t)), over=class)
method m {
  teacher t
  student s
  let tokens_kept = size(rows(s.logits), over=batch)
  transfer r: softmax from rows(t.logits) to rows(s.logits) with reverse_kl weight 1 / tokens_kept
}
"""
    got = terms(text, {"t.logits": zt, "s.logits": zs})["r"]
    lt, ls = F.log_softmax(zt, -1), F.log_softmax(zs, -1)
    want = (ls.exp() * (ls - lt)).sum(-1).mean()
    close(got, want, [zt, zs])


def test_learned_tensors_are_trained_by_the_stages_that_use_or_name_them():
    text = """
def kl_rows(t, s) = sum(t * (log(t) - log(s)), over=class)
method m {
  teacher t
  student s
  let tau = learned(init=2)
  supervise ce: s.logits with cross_entropy
  transfer kd: from softmax(t.logits / tau) to softmax(s.logits / tau) with kl_rows weight 1 / B
  stage warm for 1 epochs {
    losses ce
  }
  stage distil {
    losses ce, kd
  }
  stage tune {
    train tau
    losses ce
  }
}
"""
    zt, zs = rand(B, K, seed=21), rand(B, K, seed=22)
    low = load_method("spec.kd", text=text)
    d = compile_spec(
        low, None, {"t.logits": zt.detach(), "s.logits": zs.detach(), "labels": labels()}
    )
    (tau,) = [p for p in d.parameters() if p.dim() == 0]
    trained = {}
    for stage in ("warm", "distil", "tune"):
        d.set_stage(stage)
        trained[stage] = any(p is tau for p in d.trainable_parameters())
    assert trained == {"warm": False, "distil": True, "tune": True}


def test_functions_of_shape_values():
    """Numbers from shapes go through primitives too: log(classes), sqrt(C)."""
    fs = rand(B, 4, 3, 3, seed=23)
    zs = rand(B, K, seed=24)
    text = """
def spread(x) = sum(x^2, over=[channel, space]) / sqrt(C) / HW
method m {
  student s
  supervise a: s.stage[1] with spread weight log(classes) / B
}
"""
    got = terms(text, {"s.stage[1]": fs, "s.logits": zs})["a"]
    want = (fs**2).sum((1, 2, 3)) / 2.0 / 9 * torch.log(torch.tensor(float(K)))
    close(got, want.mean().double(), [fs])


def test_comparisons_of_numbers_fold_to_masks_not_powers():
    from kdspec.ir import models as ir
    from kdspec.ir.canonical import fold
    from kdspec.ir.evaluate import evaluate

    gt = ir.BinOp(op=">", left=ir.Num(value=3), right=ir.Num(value=2))
    assert evaluate(gt, {}) == 1.0
    assert evaluate(fold(gt), {}) == 1.0
    le = ir.BinOp(op="<=", left=ir.Num(value=3), right=ir.Num(value=2))
    assert evaluate(fold(le), {}) == 0.0


def test_schedules_inside_expressions_follow_training():
    """A schedule in a weight computed from the batch, and in a primitive's parameter."""
    from kdspec.compiler import Progress

    zt, zs = rand(B, K, seed=25), rand(B, K, seed=26)
    text = """
def kl_rows(t, s) = sum(t * (log(t) - log(s)), over=class)
method m {
  teacher t
  student s
  let reversed = grad_reverse(s.logits, scale=ramp(start=0, end=2))
  transfer k: softmax(T=2) from t.logits to reversed with kl_rows weight warmup(epochs=4) / B
}
"""
    low = load_method("spec.kd", text=text)
    d = compile_spec(low, None, {"t.logits": zt.detach(), "s.logits": zs.detach(), "labels": None})
    pt, ls = F.softmax(zt / 2, 1), F.log_softmax(zs / 2, 1)
    rows = (pt * (pt.log() - ls)).sum(1).mean()
    for epoch, factor, scale in ((1.0, 0.25, 0.2), (3.0, 0.75, 0.6)):
        out = d({"t.logits": zt, "s.logits": zs, "labels": None}, Progress(epoch, 10.0))
        assert_close(out.loss, factor * rows)
        (g,) = torch.autograd.grad(out.loss, [zs])
        (g_ref,) = torch.autograd.grad(factor * rows, [zs], retain_graph=True)
        assert_close(g, -scale * g_ref)


def test_each_imported_file_is_parsed_once(tmp_path, monkeypatch):
    import kdspec.syntax

    real = kdspec.syntax.try_parse
    parsed: list[str] = []

    def counting(source):  # type: ignore[no-untyped-def]
        parsed.append(source.name.rsplit("/", 1)[-1])
        return real(source)

    monkeypatch.setattr(kdspec.syntax, "try_parse", counting)
    files = {
        "defs.kd": "def kl_rows(t, s) = sum(t * (log(t) - log(s)), over=class)\n",
        "lib.kd": "def l1_rows(x) = sum(abs(x), over=channel)\n"
        "method sparse {\n  student s\n"
        "  supervise reg: s.embedding with l1_rows weight 0.01 / B\n}\n",
        "main.kd": 'import "defs.kd"\nimport "lib.kd"\nmethod m {\n  teacher t\n  student s\n'
        "  use sparse\n"
        "  transfer kd: softmax from t.logits to s.logits with kl_rows weight 1 / B\n}\n"
        "method n {\n  student s\n  use sparse\n}\n",
    }
    _, diags = _check(files, "main.kd", tmp_path)
    assert diags == []
    # Finding `sparse` for two `use`s, checking the imports and collecting defs read each
    # imported file; each is parsed once (the main file is the caller's to parse).
    assert sorted(n for n in parsed if n != "main.kd") == ["defs.kd", "lib.kd"]
    (tmp_path / "lib.kd").write_text(files["lib.kd"] + "# a new version\n")
    _check({}, "main.kd", tmp_path)
    assert sorted(n for n in parsed if n != "main.kd") == ["defs.kd", "lib.kd", "lib.kd"]
