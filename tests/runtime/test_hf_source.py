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
