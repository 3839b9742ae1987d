"""Token data on randomly initialised Hugging Face models (float64): masks, pooling, relations.

The specs read the models' outputs and tensors through taps only (no Python hooks); the
references below compute the same quantities by hand from the models' own outputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")

from kdspec.api import load_method  # noqa: E402
from kdspec.compiler import compile_spec  # noqa: E402

SPECS = Path(__file__).resolve().parents[2] / "specs"
VOCAB = 40


def bert(hidden: int, layers: int, heads: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertModel(config).double().eval()


def gpt2(hidden: int, layers: int, heads: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).double().eval()


def token_batch(lengths: list[int], width: int, seed: int = 0) -> dict[str, Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (0 after each length)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(lengths), width), generator=g)
    attention = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids * attention, "attention_mask": attention}


def masked_mean(h: Tensor, attention: Tensor) -> Tensor:
    m = attention.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1)


def linears(d: nn.Module) -> list[nn.Linear]:
    return [m for m in d.terms.modules() if isinstance(m, nn.Linear)]


def test_sentence_embedding_pools_over_the_attention_mask() -> None:
    t, s = bert(32, 2, 4, seed=0), bert(16, 1, 2, seed=1)
    batch = token_batch([6, 3, 5], width=8)
    d = compile_spec(load_method(SPECS / "sentence_embedding.kd"), {"t": t, "s": s}, batch)
    got = d.raw_terms(batch)["emb"]
    (adapter,) = linears(d)
    with torch.no_grad():
        zt = masked_mean(t(**batch).last_hidden_state, batch["attention_mask"])
    zs = adapter(masked_mean(s(**batch).last_hidden_state, batch["attention_mask"]))
    want = F.mse_loss(F.normalize(zs, dim=-1), F.normalize(zt, dim=-1))
    assert_close(got, want)
    # The padding is left out: the unmasked mean differs.
    plain = F.normalize(s(**batch).last_hidden_state.mean(1), dim=-1)
    assert float((F.normalize(adapter(plain), dim=-1) - F.normalize(zs, dim=-1)).abs().max()) > 1e-3


def test_more_padding_changes_no_sentence_embedding() -> None:
    t, s = bert(32, 2, 4, seed=0), bert(16, 1, 2, seed=1)
    short = token_batch([6, 3, 5], width=6)
    wide = {k: F.pad(v, (0, 4)) for k, v in short.items()}
    d = compile_spec(load_method(SPECS / "sentence_embedding.kd"), {"t": t, "s": s}, short)
    a, b = d.raw_terms(short)["emb"], d.raw_terms(wide)["emb"]
    assert_close(a, b)


def test_causal_lm_cross_entropy_matches_the_models_own_loss() -> None:
    """`supervise ce: s.logits with cross_entropy` on token data: the labels shift by one on a
    causal LM, -100 and padding are left out: the model's own `loss` given `labels`."""
    s = gpt2(16, 1, 2, seed=3)
    batch = token_batch([7, 4, 6], width=7, seed=2)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :2] = -100  # a prompt without loss
    text = "method ce_only {\n  student s\n  supervise ce: s.logits with cross_entropy\n}\n"
    low = load_method("ce.kd", text=text)
    full = {**batch, "labels": labels}
    d = compile_spec(low, {"s": s}, full)
    got = d.raw_terms(full)["ce"]
    logits = s(**batch).logits
    want = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    assert_close(got, want)
    own = s(**batch, labels=labels).loss  # transformers computes it in float32
    assert_close(got.float(), own)


def _capture(model: nn.Module, paths: list[str]) -> dict[str, Tensor]:
    """The outputs of submodules in one forward (the reference's own hooks)."""
    out: dict[str, Tensor] = {}
    handles = [
        model.get_submodule(p).register_forward_hook(
            lambda m, a, o, p=p: out.__setitem__(p, o)  # type: ignore[misc]
        )
        for p in paths
    ]
    try:
        model(**{k: v for k, v in BATCH.items()})
    finally:
        for h in handles:
            h.remove()
    return out


BATCH = token_batch([7, 3, 5, 6], width=7, seed=4)


def ref_relation(x: Tensor, n: int, attention: Tensor) -> Tensor:
    """MiniLMv2's relation: split [B, L, D] into n heads, softmax(x x^T / sqrt(D / n)) over
    the keys, padded keys at -inf (log-probabilities [B, n, L, L])."""
    b, length, dim = x.shape
    h = x.view(b, length, n, dim // n).transpose(1, 2)
    scores = h @ h.transpose(-1, -2) / math.sqrt(dim // n)
    keys = attention.bool()[:, None, None, :]
    return scores.masked_fill(~keys, float("-inf")).log_softmax(-1)


def ref_relation_kl(lt: Tensor, ls: Tensor, attention: Tensor) -> Tensor:
    """KL per query row over the real keys, mean over heads and real queries, then samples."""
    keys = attention.bool()[:, None, None, :]
    per_key = torch.where(keys, lt.exp() * (lt - ls), torch.zeros((), dtype=lt.dtype))
    rows = per_key.sum(-1)  # [B, n, L]
    q = attention.to(rows.dtype)[:, None, :]
    per_sample = (rows * q).sum((1, 2)) / (q.sum((1, 2)) * rows.shape[1])
    return per_sample.mean()


@pytest.mark.parametrize("n", [2, 4])
def test_minilm_v2_relations_with_different_head_counts(n: int) -> None:
    """A 4-head, 32-wide teacher and a 2-head, 16-wide student: n relation heads on both."""
    t, s = bert(32, 2, 4, seed=5), bert(16, 1, 2, seed=6)
    text = (SPECS / "minilm_v2.kd").read_text(encoding="utf-8")  # taps `stage[-1]`: 1 and 0
    low = load_method("minilm_v2.kd", text=text, overrides={"relation_heads": n})
    d = compile_spec(low, {"t": t, "s": s}, BATCH)
    got = d.raw_terms(BATCH)
    parts = ("query", "key", "value")
    tv = _capture(t, [f"encoder.layer.1.attention.self.{p}" for p in parts])
    sv = _capture(s, [f"encoder.layer.0.attention.self.{p}" for p in parts])
    mask = BATCH["attention_mask"]
    for name, part in zip(("qq", "kk", "vv"), parts, strict=True):
        lt = ref_relation(tv[f"encoder.layer.1.attention.self.{part}"], n, mask)
        ls = ref_relation(sv[f"encoder.layer.0.attention.self.{part}"], n, mask)
        want = ref_relation_kl(lt, ls, mask)
        assert_close(got[name], want)


def test_attention_heads_grouped_twelve_to_two() -> None:
    """`mean(att, over=head, groups=2)`: 4 teacher heads averaged in 2 consecutive groups, so
    that a 2-head student's attention maps match them head by head."""
    t, s = bert(32, 1, 4, seed=7), bert(16, 1, 2, seed=8)
    q, k = '"encoder.layer.0.attention.self.query"', '"encoder.layer.0.attention.self.key"'
    text = f"""
def attention_maps(q, k, n=2) =
    softmax(relation(heads(q, n=n), heads(k, n=n), over=token) / sqrt(C / n), over=token2)
def rows_kl(t, s) = mean(sum(t * (log(t) - log(s)), over=token2), over=[head, token])
method grouped {{
  teacher t
  student s
  let t_att = attention_maps(t.{q}, t.{k}, n=4)
  let s_att = attention_maps(s.{q}, s.{k}, n=2)
  transfer att: from mean(t_att, over=head, groups=2) to s_att with rows_kl weight 1 / B
}}
"""
    d = compile_spec(load_method("grouped.kd", text=text), {"t": t, "s": s}, BATCH)
    got = d.raw_terms(BATCH)["att"]
    paths = ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key"]
    tv, sv = _capture(t, paths), _capture(s, paths)
    mask = BATCH["attention_mask"]

    def maps(q: Tensor, k: Tensor, n: int) -> Tensor:
        b, length, dim = q.shape
        qh = q.view(b, length, n, dim // n).transpose(1, 2)
        kh = k.view(b, length, n, dim // n).transpose(1, 2)
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(dim // n)
        return scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf")).softmax(-1)

    pt = maps(*(tv[p] for p in paths), 4).view(4, 2, 2, 7, 7).mean(2)  # heads (0,1), (2,3)
    ps = maps(*(sv[p] for p in paths), 2)
    want = ref_relation_kl(pt.log(), ps.log(), mask)
    assert_close(got, want)


def test_hidden_states_per_token_with_a_layer_map() -> None:
    """`map uniform` pairs student layer i with teacher layer round((i+1)·4/2)-1; the built-in
    `mse` on token values sees the rows of the real tokens only (the attention mask)."""
    t, s = bert(32, 4, 4, seed=9), bert(16, 2, 2, seed=10)
    text = """
method hidden {
  teacher t
  student s
  transfer hid: from t.stage[..] to linear(s.stage[..]) map uniform with mse
}
"""
    d = compile_spec(load_method("hidden.kd", text=text), {"t": t, "s": s}, BATCH)
    got = d.raw_terms(BATCH)["hid"]
    adapters = linears(d)
    keep = BATCH["attention_mask"].bool()
    with torch.no_grad():
        th = t(**BATCH, output_hidden_states=True).hidden_states
    sh = s(**BATCH, output_hidden_states=True).hidden_states
    want = sum(
        F.mse_loss(adapter(sh[j + 1][keep]), th[i + 1][keep])
        for (i, j), adapter in zip([(1, 0), (3, 1)], adapters, strict=True)
    )
    assert_close(got, want)


def _section_blocks() -> list[str]:
    import re

    doc = (SPECS.parent / "docs" / "language.md").read_text(encoding="utf-8")
    section = doc[doc.index("## 15. Tokens and masks") :]
    return re.findall(r"^```kd\n(.*?)^```", section, re.M | re.S)


@pytest.mark.parametrize("index", range(4))
def test_the_language_docs_token_examples_compile_and_run(index: int) -> None:
    """Every ```kd block of docs/language.md section 15 compiles on BERTs and gives a finite,
    differentiable loss on a padded batch (with labels and a response mask)."""
    text = _section_blocks()[index]
    t, s = bert(32, 2, 4, seed=11), bert(16, 2, 2, seed=12)
    if "logits" in text:  # the LM example: BERTs with an LM head, labels and a response mask
        t = transformers.BertForMaskedLM(t.config).double().eval()
        s = transformers.BertForMaskedLM(s.config).double().eval()
    batch = dict(BATCH)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    batch["response_mask"] = batch["attention_mask"].clone()
    batch["response_mask"][:, :2] = 0
    d = compile_spec(load_method("doc.kd", text=text), {"t": t, "s": s}, batch)
    out = d(batch)
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    out.loss.backward()


def test_response_mask_keeps_only_response_tokens() -> None:
    """`rows(x, mask=response)`: the LM loss over response tokens only, by hand."""
    text = _section_blocks()[0]
    t = transformers.BertForMaskedLM(bert(32, 2, 4, seed=13).config).double().eval()
    s = transformers.BertForMaskedLM(bert(16, 2, 2, seed=14).config).double().eval()
    batch = {**BATCH, "response_mask": BATCH["attention_mask"].clone()}
    batch["response_mask"][:, :3] = 0
    d = compile_spec(load_method("doc.kd", text=text), {"t": t, "s": s}, batch)
    got = d.raw_terms(batch)["kd"]
    keep = batch["response_mask"].bool()  # a masked LM: no shift
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        lt = F.log_softmax(t(**inputs).logits / 2, -1)[keep]
    ls = F.log_softmax(s(**inputs).logits / 2, -1)[keep]
    want = (lt.exp() * (lt - ls)).sum(-1).mean()
    assert_close(got, want)


def test_minilm_v1_token_relation_leaves_padding_out() -> None:
    """`specs/minilm.kd` (the `token_relation` transform): on token data padded keys get no
    weight and padded query rows are left out of `kl`'s mean over rows."""
    config = bert(32, 2, 4, seed=15).config
    torch.manual_seed(15)
    t = transformers.BertForSequenceClassification(config).double().eval()
    small = bert(16, 2, 2, seed=16).config
    s = transformers.BertForSequenceClassification(small).double().eval()
    text = (SPECS / "minilm.kd").read_text(encoding="utf-8")  # taps `stage[-1]`: layer 1
    low = load_method("minilm.kd", text=text, overrides={"heads": 2})
    d = compile_spec(low, {"t": t, "s": s}, BATCH)
    got = d.raw_terms(BATCH)
    parts = [f"bert.encoder.layer.1.attention.self.{p}" for p in ("query", "key", "value")]
    tv, sv = _capture(t, parts), _capture(s, parts)
    keep = BATCH["attention_mask"].bool()

    def rel(a: Tensor, b: Tensor) -> Tensor:  # [B, 2, L, L] log-probabilities, keys masked
        n, (bsz, length, dim) = 2, a.shape
        ah = a.view(bsz, length, n, dim // n).transpose(1, 2)
        bh = b.view(bsz, length, n, dim // n).transpose(1, 2)
        scores = ah @ bh.transpose(-1, -2) / math.sqrt(dim // n)
        return scores.masked_fill(~keep[:, None, None, :], float("-inf")).log_softmax(-1)

    def kl(lt: Tensor, ls: Tensor) -> Tensor:  # over the real keys, mean over real query rows
        per_key = torch.where(keep[:, None, None, :], lt.exp() * (lt - ls), 0.0)
        rows = per_key.sum(-1)  # [B, 2, L]
        q = keep[:, None, :].expand(rows.shape)
        return rows[q].sum() / q.sum()

    q, k, v = parts
    want_att = kl(rel(tv[q], tv[k]), rel(sv[q], sv[k]))
    want_val = kl(rel(tv[v], tv[v]), rel(sv[v], sv[v]))
    assert_close(got["attention"], want_att)
    assert_close(got["value"], want_val)


def test_trainer_style_batches_carry_the_response_mask() -> None:
    """`{"x": inputs, "y": labels, "response_mask": ...}` (DistillTrainer's form) gives the
    same terms as the flat token batch."""
    text = _section_blocks()[0]
    t = transformers.BertForMaskedLM(bert(32, 2, 4, seed=17).config).double().eval()
    s = transformers.BertForMaskedLM(bert(16, 2, 2, seed=18).config).double().eval()
    flat = {**BATCH, "response_mask": BATCH["attention_mask"].clone()}
    flat["response_mask"][:, :3] = 0
    nested = {"x": dict(BATCH), "y": None, "response_mask": flat["response_mask"]}
    d = compile_spec(load_method("doc.kd", text=text), {"t": t, "s": s}, flat)
    assert_close(d.raw_terms(nested)["kd"], d.raw_terms(flat)["kd"], rtol=0.0)


def test_tinybert_attention_scores_zero_the_padded_keys() -> None:
    """`attention_scores` on token data: padded keys' scores are 0 on both sides (TinyBERT's
    `torch.where(att <= -1e2, 0, att)` on HF's masked scores), MSE over the real entries."""
    t, s = bert(32, 1, 4, seed=19), bert(16, 1, 2, seed=20)
    q, k = '"encoder.layer.0.attention.self.query"', '"encoder.layer.0.attention.self.key"'
    text = f"""
method tb {{
  teacher t
  student s
  transfer att:
      from attention_scores(t.{q}, t.{k}, heads=2)
      to attention_scores(s.{q}, s.{k}, heads=2)
      with mse
}}
"""
    d = compile_spec(load_method("tb.kd", text=text), {"t": t, "s": s}, BATCH)
    got = d.raw_terms(BATCH)["att"]
    paths = [p.strip('"') for p in (q, k)]
    tv, sv = _capture(t, paths), _capture(s, paths)
    keys = BATCH["attention_mask"].bool()[:, None, None, :]

    def scores(a: Tensor, b: Tensor) -> Tensor:  # HF's masked scores, then TinyBERT's zeroing
        bsz, length, dim = a.shape
        ah = a.view(bsz, length, 2, dim // 2).transpose(1, 2)
        bh = b.view(bsz, length, 2, dim // 2).transpose(1, 2)
        att = ah @ bh.transpose(-1, -2) / math.sqrt(dim // 2)
        att = att + (~keys).to(att.dtype) * -10000.0
        return torch.where(att <= -1e2, torch.zeros_like(att), att)

    # The library's `mse` is a mean over every entry, and on token data the mean leaves the
    # padding out: over the pairs of real tokens (TinyBERT averages over padded queries too).
    sq = (scores(*(sv[p] for p in paths)) - scores(*(tv[p] for p in paths))) ** 2
    real = (keys & BATCH["attention_mask"].bool()[:, None, :, None]).expand(sq.shape)
    assert_close(got, sq[real].mean())
