"""The output cache of frozen teachers' taps: keyed by sample (and replay), exact or lossy."""

from __future__ import annotations

import re

import pytest
import torch
from tolerance import assert_close

from kdspec.api import load_method
from kdspec.compiler import compile_spec
from kdspec.zoo import build_model

FITNETS = """method fitnets {
  teacher t
  student s
  transfer hint: from t.stage[2] to regressor(s.stage[2]) with mse
  transfer kd: softmax(T=4) from t.logits to s.logits with kl
  supervise ce: s.logits with cross_entropy
}"""

NOISY = """method noisy {
  teacher t
  student s
  view noisy = gaussian_noise(std=0.1)
  transfer kd: softmax(T=4) from t[noisy].logits to s.logits with kl
}"""

N = 24


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 1, 8, 8, generator=g), torch.randint(0, 10, (N,), generator=g)


def compiled(text: str = FITNETS, seed: int = 0):
    torch.manual_seed(seed)
    t, s = build_model("resnet8", 10, 1), build_model("cnn_tiny", 10, 1)
    x, y = data()
    return compile_spec(
        load_method("f.kd", text=text),
        {"t": t, "s": s},
        (x[:4], y[:4], torch.arange(4)),
        num_samples=N,
    )


def counting(d):
    calls = []
    d.roles["t"].register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls


def test_cached_terms_equal_a_recompute_and_the_teacher_runs_once_per_sample() -> None:
    x, y = data()
    plain, cached = compiled(), compiled()
    cached.cache_frozen_outputs()
    calls = counting(cached)
    batches = [torch.arange(0, 8), torch.arange(8, 24), torch.tensor([5, 17, 2, 9])]
    for epoch in range(2):
        for idx in batches:
            a = plain((x[idx], y[idx], idx)).grad_terms
            b = cached((x[idx], y[idx], idx)).grad_terms
            assert a.keys() == b.keys()
            for k in a:  # exact: the cache keeps the teacher's own fp32 values
                assert torch.equal(a[k], b[k]), (epoch, k)
    assert len(calls) == 2  # the first two batches cover every sample; the rest are hits
    assert cached._teacher_cache.hits == 2 * 3 - 2 and not any(
        p.grad is not None for p in cached.roles["t"].parameters()
    )


def test_the_cache_needs_indices_and_refuses_random_views() -> None:
    d = compiled()
    d.cache_frozen_outputs()
    x, y = data()
    with pytest.raises(ValueError, match="sample indices"):
        d((x[:4], y[:4]))
    noisy = compiled(NOISY)
    with pytest.raises(ValueError, match=r"view `noisy`.*random"):
        noisy.cache_frozen_outputs()


def test_evaluation_batches_bypass_the_cache() -> None:
    d = compiled()
    d.cache_frozen_outputs()
    x, y = data()
    idx = torch.arange(4)
    d((x[:4], y[:4], idx))
    d.eval()
    other = torch.randn(4, 1, 8, 8)  # e.g. validation samples with the same positions
    ref = compiled()
    ref((x[:4], y[:4], idx))  # the same batch norm statistics in the student
    ref.eval()
    assert_close(d((other, y[:4], idx)).loss, ref((other, y[:4], idx)).loss)


# --- storage: disk (one mapped file), fp16, top-k, size bound, corruption, key -------------


def record(cache):
    """What a cache is given to store and what its lookups return."""
    seen = {"store": [], "lookup": []}
    store, lookup = cache.store, cache.lookup

    def stored(role, view, values, *a, **k):
        seen["store"].append({p: v.clone() for p, v in values.items()})
        return store(role, view, values, *a, **k)

    def looked_up(*a, **k):
        found = lookup(*a, **k)
        seen["lookup"].append(found)
        return found

    cache.store, cache.lookup = stored, looked_up
    return seen


def same(a_steps, b_steps) -> bool:
    """Equal terms, step by step, bit for bit."""
    return all(
        a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for a, b in zip(a_steps, b_steps, strict=True)
    )


def _spec(tmp_path, **kw):
    from kdspec.compiler.teacher_cache import CacheSpec

    return CacheSpec(**{"store": "disk", "folder": tmp_path, **kw})


def _epochs(d, n=2, replay=None):
    x, y = data()
    out = []
    for _ in range(n):
        for idx in (torch.arange(0, 12), torch.arange(12, 24)):
            batch = (x[idx], y[idx], idx) if replay is None else (x[idx], y[idx], idx, replay[idx])
            out.append({k: v.detach() for k, v in d(batch).grad_terms.items()})
    return out


def test_a_disk_cache_is_one_file_reused_by_the_next_run_exactly(tmp_path) -> None:
    plain = _epochs(compiled())
    first = compiled()
    first.cache_frozen_outputs(spec=_spec(tmp_path), identity={"data": "test"})
    assert same(plain, _epochs(first))
    first._teacher_cache.flush()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len([f for f in files if f.endswith(".kdcache")]) == 1, files  # not one per sample
    again = compiled()
    again.cache_frozen_outputs(spec=_spec(tmp_path), identity={"data": "test"})
    calls = counting(again)
    assert same(plain, _epochs(again))
    assert calls == [] and again._teacher_cache.misses == 0  # every row read from the file


def test_the_key_covers_weights_data_and_storage(tmp_path) -> None:
    def files():
        return {p.name for p in tmp_path.glob("*.kdcache")}

    seen = []
    for seed, identity, spec in (
        (0, {"data": "a"}, {}),
        (1, {"data": "a"}, {}),  # other teacher weights
        (0, {"data": "b"}, {}),  # other data
        (0, {"data": "a"}, {"dtype": "fp16"}),  # other storage
    ):
        d = compiled(seed=seed)
        d.cache_frozen_outputs(spec=_spec(tmp_path, **spec), identity=identity)
        _epochs(d, 1)
        seen.append(files())
    assert [len(s) for s in seen] == [1, 2, 3, 4]


def test_a_corrupt_file_is_detected_and_rebuilt_with_one_line(tmp_path) -> None:
    d = compiled()
    d.cache_frozen_outputs(spec=_spec(tmp_path), identity={})
    _epochs(d, 1)
    d._teacher_cache.flush()
    (path,) = tmp_path.glob("*.kdcache")
    from kdspec.compiler.teacher_cache import _read_header

    last = _read_header(path)["fields"][-1]  # the logits: one flipped byte in row 23's values
    raw = bytearray(path.read_bytes())
    raw[last["offset"] + 23 * 40 + 5] ^= 0xFF  # 10 fp32 logits per row
    path.write_bytes(bytes(raw))
    for damage in ("flip", "truncate"):
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[:-100])
        messages: list[str] = []
        again = compiled()
        again.cache_frozen_outputs(spec=_spec(tmp_path), identity={}, log=messages.append)
        calls = counting(again)
        plain = _epochs(compiled(), 1)
        assert same(plain, _epochs(again, 1))
        assert len(messages) == 1 and "corrupt" in messages[0] and "rebuilding" in messages[0]
        assert ("row 23 fails its checksum" if damage == "flip" else "bytes where") in messages[0]
        assert len(calls) == 2  # recomputed, not read from the damaged rows
        again._teacher_cache.flush()


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_fp16_values_are_within_the_reported_error(tmp_path, store) -> None:
    d = compiled()
    cache = d.cache_frozen_outputs(spec=_spec(tmp_path, store=store, dtype="fp16"), identity={})
    seen = record(cache)
    x, y = data()
    idx = torch.arange(N)
    d((x, y, idx))
    d((x, y, idx))
    exact, read = seen["store"][0], seen["lookup"][-1]
    err = max(float((read[p] - exact[p]).abs().max()) for p in exact)
    assert 0 < err <= cache._groups[next(iter(cache._groups))].error.abs
    assert all(read[p].dtype == torch.float32 for p in read)
    (line,) = cache.summary()
    assert (
        "fp16" in line
        and f"max abs {cache._groups[next(iter(cache._groups))].error.abs:.2e}" in line
    )


def test_topk_keeps_the_k_largest_and_reports_the_kl() -> None:
    from kdspec.compiler.hooks import HookPoint
    from kdspec.compiler.teacher_cache import CacheSpec, TeacherCache

    cache = TeacherCache(6, CacheSpec(topk=3))
    logits = torch.randn(6, 5, 10, dtype=torch.float64)  # [B, tokens, vocabulary]
    point = HookPoint("logits")
    cache.store("t", None, {point: logits}, torch.arange(6))
    got = cache.lookup("t", None, [point], torch.arange(6))[point]
    p = logits.softmax(-1)
    q = got.softmax(-1)
    top = p.topk(3, -1).indices
    assert_close(q.gather(-1, top), p.gather(-1, top))  # kept (float64)
    rest = 1 - p.gather(-1, top).sum(-1, keepdim=True)
    others = q.scatter(-1, top, 0.0)
    assert_close(others.sum(-1, keepdim=True), rest, scale=1.0)  # the rest of the mass kept
    kl = (p * (p.log() - q.log())).sum(-1).max()
    (line,) = cache.summary()
    assert "top-3" in line and f"{float(kl):.2e}" in line


def test_the_size_bound_refuses_a_cache_that_does_not_fit(tmp_path) -> None:
    from kdspec.compiler.teacher_cache import CacheError

    d = compiled()
    d.cache_frozen_outputs(spec=_spec(tmp_path, max_mb=1e-4), identity={})
    x, y = data()
    with pytest.raises(CacheError, match=r"MiB.*over its bound of 0\.0001 MiB.*fp16"):
        d((x[:4], y[:4], torch.arange(4)))


def test_replayed_augmentation_is_cached_per_sample_and_replay(tmp_path) -> None:
    from kdspec.data import IndexedTensorDataset
    from kdspec.data.augment import CropFlip, ReplayedAugmentation

    x, y = data()
    ds = ReplayedAugmentation(IndexedTensorDataset(x, y), CropFlip(8, 2, fill=-1.0), 3, seed=0)
    items = [ds[i] for i in range(N)]
    xa = torch.stack([it[0] for it in items])
    replay = torch.tensor([it[3] for it in items])
    plain, cached = compiled(), compiled()
    cached.cache_frozen_outputs(spec=_spec(tmp_path, replays=3), identity={"aug": ds.key()})
    calls = counting(cached)
    idx = torch.arange(N)
    for r in range(3):  # every replay of every sample: each computed once, then read
        rep = torch.full((N,), r)
        batch = (torch.stack([ds.augment.apply(x[i], ds.params[i, r]) for i in range(N)]), y, idx)
        for _ in range(2):
            a, b = plain(batch).grad_terms, cached((*batch, rep)).grad_terms
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(calls) == 3
    a, b = plain((xa, y, idx)).grad_terms, cached((xa, y, idx, replay)).grad_terms
    assert all(torch.equal(a[k], b[k]) for k in a) and len(calls) == 3  # the loader's batch: hits
    with pytest.raises(ValueError, match="replays"):
        cached((xa, y, idx))  # no replay column


def test_crop_flip_equals_pad_crop_flip_by_hand() -> None:
    from kdspec.data.augment import CropFlip

    x = torch.randn(3, 6, 6)
    fill = [-1.0, 0.5, 2.0]
    aug = CropFlip(6, 2, fill)
    padded = torch.stack(
        [torch.nn.functional.pad(x[c], (2, 2, 2, 2), value=fill[c]) for c in range(3)]
    )
    for top, left, flip in ((0, 0, 0), (4, 1, 1), (2, 3, 0)):
        want = padded[:, top : top + 6, left : left + 6]
        want = want.flip(-1) if flip else want
        assert torch.equal(aug.apply(x, torch.tensor([top, left, flip])), want)
    params = aug.sample(500, 6, 6, torch.Generator().manual_seed(0))
    assert (
        params[:, :2].min() == 0
        and params[:, :2].max() == 4
        and set(params[:, 2].tolist()) == {0, 1}
    )


class _TinyLM(torch.nn.Module):
    """Token ids -> per-token logits [B, T, V], called with the batch's dict of inputs."""

    def __init__(self, vocab: int = 50) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 16)
        self.out = torch.nn.Linear(16, vocab)

    def forward(self, input_ids, attention_mask=None):
        return self.out(torch.tanh(self.emb(input_ids)))


def test_lm_logits_stored_as_fp16_top_k_per_token_are_read_offline(tmp_path) -> None:
    """Issue 14 item 5: the teacher runs once; each token keeps its 8 largest logits."""
    torch.manual_seed(0)
    n, length, k = 12, 7, 8
    ids = torch.randint(0, 50, (n, length))

    def batch(i):
        return ({"input_ids": ids[i], "attention_mask": torch.ones_like(ids[i])}, ids[i], i)

    spec_text = """method lmkd {
  teacher t
  student s
  transfer kd: softmax(T=2) from rows(t.logits) to rows(s.logits) with kl
}"""
    t = _TinyLM()
    d = compile_spec(
        load_method("l.kd", text=spec_text),
        {"t": t, "s": _TinyLM()},
        batch(torch.arange(4)),
        num_samples=n,
    )
    d.train()
    cache = d.cache_frozen_outputs(spec=_spec(tmp_path, dtype="fp16", topk=k), identity={})
    seen = record(cache)
    calls = counting(d)
    for _ in range(2):
        for i in (torch.arange(0, 6), torch.arange(6, 12)):
            d(batch(i)).loss.backward()
    assert len(calls) == 2  # the first epoch only
    with torch.no_grad():
        dense = t(ids).double()
    read = torch.cat([found[next(iter(found))] for found in seen["lookup"] if found]).double()
    p, q = dense.softmax(-1), read.softmax(-1)
    top = p.topk(k, -1).indices
    # the logits are stored in fp16: probabilities to its precision
    assert_close(q.gather(-1, top), p.gather(-1, top), rtol=2e-3, scale=1.0)
    rest = (1 - p.gather(-1, top).sum(-1, keepdim=True)) / (50 - k)
    others = rest.expand_as(p).scatter(-1, top, 0.0)  # the rest of the mass, spread evenly
    assert_close(q.scatter(-1, top, 0.0), others, rtol=2e-3, scale=1.0)
    kl = (p * (p.log() - q.log())).sum(-1)
    (line,) = cache.summary()
    found = re.search(r"max KL\(dense \|\| stored\) (\S+) nats \(mean (\S+)\)", line)
    for reported, want in zip(map(float, found.groups()), (kl.max(), kl.mean()), strict=True):
        assert abs(reported - float(want)) <= 0.05 * float(want)
    (path,) = tmp_path.glob("*.kdcache")
    row = length * (k * 2 + k * 4 + 4)  # fp16 values, int32 indices, one fill per token
    assert n * row <= path.stat().st_size <= n * row + 4096 and f"{n}/{n} rows" in line


@pytest.mark.parametrize("lossy", [{"dtype": "fp16"}, {"topk": 3}])
def test_the_filling_epoch_trains_on_the_values_later_epochs_read(tmp_path, lossy) -> None:
    d = compiled()
    cache = d.cache_frozen_outputs(spec=_spec(tmp_path, store="memory", **lossy), identity={})
    given: list[dict] = []
    store = cache.store

    def kept(*a, **k):
        given.append(store(*a, **k))
        return given[-1]

    cache.store = kept
    seen = record(cache)
    x, y = data()
    idx = torch.arange(N)
    d((x, y, idx))
    d((x, y, idx))
    read = seen["lookup"][-1]
    assert read is not None and given[0].keys() == read.keys()
    assert all(torch.equal(given[0][p], read[p]) for p in read)
