"""`hf:` model sources: a transformers classifier built from a local config, then distilled."""

from __future__ import annotations

import pytest
import torch

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.runtime.models import build_model_from_source
from kdspec.runtime.runfile import default_run

transformers = pytest.importorskip("transformers")


def _save(tmp_path, name, hidden, layers):
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
        output_hidden_states=True,
    )
    folder = tmp_path / name
    cfg.save_pretrained(folder)
    return folder


def test_hf_models_build_from_local_configs_and_distil(tmp_path):
    run = default_run()
    t = build_model_from_source("t", f"hf:{_save(tmp_path, 't', 16, 4)}", 3, 1, run)
    s = build_model_from_source("s", f"hf:{_save(tmp_path, 's', 8, 2)}", 3, 1, run)
    assert isinstance(t, transformers.BertForSequenceClassification)
    text = """method pkd {
  teacher t
  student s
  transfer kd: softmax(T=2) from t.logits to s.logits with kl
  transfer cls: normalize from t.output.hidden_states[-1] to linear(s.output.hidden_states[-1])
      with mse
  supervise ce: s.logits with cross_entropy
}"""
    ids, y = torch.randint(0, 40, (4, 9)), torch.tensor([0, 1, 2, 1])
    d = compile_spec(load_method("pkd.kd", text=text), {"t": t, "s": s}, (ids, y))
    out = d((ids, y))
    out.loss.backward()
    assert set(out.terms) == {"kd", "cls", "ce"}
    assert d.num_classes == 3
    assert all(p.grad is None for p in t.parameters())
    assert any(p.grad is not None for p in s.parameters())


def test_hf_source_must_be_local(tmp_path):
    from kdspec.diagnostics import KdError

    with pytest.raises(KdError) as info:
        build_model_from_source("t", "hf:bert-base-uncased", 2, 1, default_run())
    assert "never downloads" in (info.value.diagnostics[0].help or "")


# --- language models: heads from the config's architecture, tokenizers (issue 14) -------------


def _save_config(tmp_path, name, config):
    folder = tmp_path / name
    config.save_pretrained(folder)
    return folder


def _bert_config(arch: str | None = None, hidden: int = 8):
    return transformers.BertConfig(
        vocab_size=40,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
        architectures=[arch] if arch else None,
    )


@pytest.mark.parametrize(
    ("arch", "options", "cls"),
    [
        ("GPT2LMHeadModel", {}, "GPT2LMHeadModel"),
        ("GPT2LMHeadModel", {"head": "base"}, "GPT2Model"),
        ("BertForMaskedLM", {}, "BertForMaskedLM"),
        ("BertModel", {}, "BertModel"),
        (None, {}, "BertForSequenceClassification"),
        (None, {"head": "causal_lm"}, "BertLMHeadModel"),
    ],
)
def test_hf_heads_follow_the_architecture_or_the_head_option(tmp_path, arch, options, cls):
    from kdspec.runtime.runfile import Run, RunConfig

    if arch and arch.startswith("GPT2"):
        config = transformers.GPT2Config(
            vocab_size=40,
            n_embd=8,
            n_layer=1,
            n_head=2,
            n_positions=16,
            architectures=[arch],
            bos_token_id=0,
            eos_token_id=0,
        )
    else:
        config = _bert_config(arch)
        config.is_decoder = options.get("head") == "causal_lm"
    folder = _save_config(tmp_path, "m", config)
    run = Run(RunConfig(model_options={"t": options}))
    model = build_model_from_source("t", f"hf:{folder}", 3, 1, run)
    assert type(model).__name__ == cls


def test_hf_unknown_head_is_a_diagnostic(tmp_path):
    from kdspec.diagnostics import KdError
    from kdspec.runtime.runfile import Run, RunConfig

    folder = _save_config(tmp_path, "m", _bert_config("BertModel"))
    run = Run(RunConfig(model_options={"t": {"head": "causal"}}))
    with pytest.raises(KdError) as info:
        build_model_from_source("t", f"hf:{folder}", 3, 1, run)
    d = info.value.diagnostics[0]
    assert d.code == "KD404" and "`causal_lm`" in (d.help or "")


def test_hf_causal_lm_loads_its_safetensors_weights(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=40, n_embd=8, n_layer=1, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    saved = transformers.GPT2LMHeadModel(config)
    saved.save_pretrained(tmp_path / "lm")
    assert (tmp_path / "lm" / "model.safetensors").is_file()
    model = build_model_from_source("t", f"hf:{tmp_path / 'lm'}", 3, 1, default_run())
    assert isinstance(model, transformers.GPT2LMHeadModel)
    for (k, a), b in zip(saved.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def _tokenizer_folder(tmp_path, name, words):
    folder = tmp_path / name
    folder.mkdir()
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tok = transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})
    tok.save_pretrained(folder)
    _bert_config("BertModel").save_pretrained(folder)
    return folder


def test_tokenizers_of_hf_folders_load_and_differences_are_kd409(tmp_path):
    from kdspec.diagnostics import KdError
    from kdspec.diagnostics.render import render_many
    from kdspec.runtime.models import check_tokenizers, hf_tokenizer

    run = default_run()
    a = _tokenizer_folder(tmp_path, "a", ["hello", "world"])
    b = _tokenizer_folder(tmp_path, "b", ["hello", "world"])
    c = _tokenizer_folder(tmp_path, "c", ["world", "hello"])
    tok = hf_tokenizer(f"hf:{a}", run)
    assert tok(["hello world"])["input_ids"][0] == [2, 5, 6, 3]
    assert hf_tokenizer("zoo:resnet8", run) is None
    check_tokenizers({"t": f"hf:{a}", "s": f"hf:{b}", "x": "zoo:resnet8"}, run)  # the same
    with pytest.raises(KdError) as info:
        check_tokenizers({"t": f"hf:{a}", "s": f"hf:{c}"}, run)
    (d,) = info.value.diagnostics
    assert d.code == "KD409"
    assert "`t` and `s`" in d.message and "other ids" in d.message
    text = render_many([d], "full").replace(str(tmp_path), "TMP")
    assert "error[KD409]: roles `t` and `s` have different tokenizers" in text
