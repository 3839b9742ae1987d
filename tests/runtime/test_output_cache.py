"""[output_cache] through a run: the same steps as an uncached run, reused files, refusals."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from kdspec.api import load_method
from kdspec.diagnostics import KdError
from kdspec.runtime.job import JobOptions, compile_prepared, distill, enable_output_cache, prepare
from kdspec.runtime.runfile import parse_run
from kdspec.zoo import build_model

DOC = (Path(__file__).resolve().parents[2] / "docs" / "runfile.md").read_text(encoding="utf-8")
EXAMPLES = [t for t in re.findall(r"```toml\n(.*?)```", DOC, re.S) if "[output_cache]" in t]

RUN = """
[models]
t = "zoo:cnn_small"
s = "zoo:cnn_tiny"
[weights]
t = "t.pt"
[data]
source = "synthetic"
n = 120
num_classes = 4
input_shape = [1, 8, 8]
batch_size = 16
[train]
epochs = 3
"""


class _Steps:
    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_step(self, stage: str, values: dict[str, float]) -> None:
        self.steps.append(dict(values))


def _train(tmp_path: Path, cache: str = "", name: str = "out", spec: str = "hinton"):
    if not (tmp_path / "t.pt").exists():
        torch.manual_seed(0)
        torch.save(build_model("cnn_small", 4, 1).state_dict(), tmp_path / "t.pt")
    run = parse_run(RUN + cache, "run.toml", base_dir=tmp_path)
    steps, logs = _Steps(), []
    opts = JobOptions(cache_dir=tmp_path / "cache", callbacks=[steps], log=logs.append)
    distill(prepare(load_method(spec), run, opts), tmp_path / name, opts=opts)
    return steps.steps, [line for line in logs if line.startswith("output cache")]


def test_cached_runs_take_the_same_steps_and_a_second_run_reads_the_file(tmp_path) -> None:
    plain, none = _train(tmp_path)
    assert none == []
    memory, (line,) = _train(tmp_path, '[output_cache]\nstore = "memory"', "m")
    assert memory == plain and "in memory" in line
    disk, (line,) = _train(tmp_path, '[output_cache]\nstore = "disk"', "d")
    assert disk == plain and re.search(r" (\d+)/\1 rows", line)  # every sample filled
    assert len(list((tmp_path / "cache" / "outputs").glob("*.kdcache"))) == 1
    again, (line,) = _train(tmp_path, '[output_cache]\nstore = "disk"', "d2")
    assert again == plain and line.endswith(" 0 misses")  # the teacher never ran


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_documented_examples_train_and_report_their_error(tmp_path, example) -> None:
    plain, _ = _train(tmp_path)
    steps, (line,) = _train(tmp_path, example, "ex")
    assert "fp16" in line and "error: max abs" in line
    if "topk" in example:  # 4 classes: a top-64 keeps them all
        assert "top-64" in line
    for a, b in zip(plain, steps, strict=True):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) <= 1e-2 * max(1.0, abs(a[k])) for k in a)


def test_top_k_of_fewer_classes_reports_its_kl(tmp_path) -> None:
    _, (line,) = _train(tmp_path, '[output_cache]\nstore = "memory"\ntopk = 2')
    kl = float(re.search(r"max KL\(dense \|\| stored\) (\S+) nats", line).group(1))
    assert "top-2" in line and kl > 0


def test_a_cache_over_its_bound_is_a_kd501(tmp_path) -> None:
    with pytest.raises(KdError) as err:
        _train(tmp_path, '[output_cache]\nstore = "memory"\nmax_mb = 0.0001')
    d = err.value.diagnostics[0]
    assert d.code == "KD501" and "over its bound" in d.message


class _Noisy(torch.utils.data.Dataset):
    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y, index = self.base[i]
        return x + torch.randn_like(x), y, index


def test_random_training_data_and_random_views_are_refused(tmp_path) -> None:
    torch.save(build_model("cnn_small", 4, 1).state_dict(), tmp_path / "t.pt")
    run = parse_run(RUN + '[output_cache]\nstore = "memory"', "run.toml", base_dir=tmp_path)
    opts = JobOptions(cache_dir=tmp_path / "cache", log=lambda _: None)
    prep = prepare(load_method("hinton"), run, opts)
    noisy = dataclasses.replace(
        prep, data=dataclasses.replace(prep.data, transfer=_Noisy(prep.data.transfer))
    )
    with pytest.raises(KdError, match=r"training data is random \(item 0 differed"):
        enable_output_cache(compile_prepared(noisy, opts), noisy, opts)
    spec = """method noisy_teacher {
  teacher t
  student s
  view noisy = gaussian_noise(std=0.1)
  transfer kd: softmax(T=4) from t[noisy].logits to s.logits with kl
}"""
    prep = prepare(load_method("n.kd", text=spec), run, opts)
    with pytest.raises(KdError, match=r"view `noisy`.*random"):
        enable_output_cache(compile_prepared(prep, opts), prep, opts)


class _FakeTorchvision:
    """Enough of torchvision for `torchvision:CIFAR10` (uint8 images as tensors, no files)."""

    class transforms:
        class Compose:
            def __init__(self, steps) -> None:
                self.steps = steps

            def __call__(self, x):
                for step in self.steps:
                    x = step(x)
                return x

        class RandomCrop:
            def __init__(self, size, padding) -> None:
                pass

            def __call__(self, x):
                return torch.roll(x, int(torch.randint(-4, 5, (1,))), -1)

        class RandomHorizontalFlip:
            def __call__(self, x):
                return x.flip(-1) if torch.rand(()) < 0.5 else x

        class ToTensor:
            def __call__(self, x):
                return x.float() / 255

        class Normalize:
            def __init__(self, mean, std) -> None:
                self.mean = torch.tensor(mean).view(-1, 1, 1)
                self.std = torch.tensor(std).view(-1, 1, 1)

            def __call__(self, x):
                return (x - self.mean) / self.std

    class datasets:
        class CIFAR10:
            def __init__(self, root, train, download, transform) -> None:
                g = torch.Generator().manual_seed(int(train))
                n = 60 if train else 20
                self.data = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
                self.targets = (torch.arange(n) % 10).tolist()
                self.transform = transform

            def __len__(self) -> int:
                return len(self.data)

            def __getitem__(self, i):
                return self.transform(self.data[i]), self.targets[i]


def test_cifar_crop_flip_is_replayed_from_stored_parameters(tmp_path, monkeypatch) -> None:
    from kdspec.data.augment import ReplayedAugmentation
    from kdspec.data.vision import crop_flip

    monkeypatch.setitem(__import__("sys").modules, "torchvision", _FakeTorchvision)
    torch.manual_seed(0)
    torch.save(build_model("resnet8", 10, 3).state_dict(), tmp_path / "t.pt")
    text = """
[models]
t = "zoo:resnet8"
s = "zoo:resnet8"
[weights]
t = "t.pt"
[data]
source = "torchvision:CIFAR10"
root = "."
val_fraction = 0.0
batch_size = 20
[train]
epochs = 2
[output_cache]
store = "memory"
replays = 3
"""
    run = parse_run(text, "run.toml", base_dir=tmp_path)
    logs: list[str] = []
    opts = JobOptions(cache_dir=tmp_path / "cache", log=logs.append)
    prep = prepare(load_method("hinton"), run, opts)
    transfer = prep.data.transfer
    assert isinstance(transfer, ReplayedAugmentation) and transfer.replays == 3
    assert transfer.augment.key() == crop_flip("torchvision:CIFAR10").key()
    plain = prepare(load_method("hinton"), run.with_updates(output_cache={"store": "off"}), opts)
    assert not isinstance(plain.data.transfer, ReplayedAugmentation)  # the loader's own
    for i in (0, 7):  # the same sample, drawn many times: only its 3 stored augmentations
        seen = {r: x for x, _, _, r in (transfer[i] for _ in range(30))}
        base = transfer.base[i][0]
        assert set(seen) == {0, 1, 2}
        for r, x in seen.items():
            assert torch.equal(x, transfer.augment.apply(base, transfer.params[i, r]))
    distill(prep, tmp_path / "out", opts=opts)
    (line,) = [m for m in logs if m.startswith("output cache")]
    filled, rows = re.search(r"(\d+)/(\d+) rows", line).groups()
    assert int(rows) == 3 * 60 and 60 <= int(filled) <= 120  # two epochs of replays drawn


def test_kdspec_train_flags_turn_the_cache_and_folding_on(tmp_path, capsys) -> None:
    from kdspec.cli.main import main

    torch.manual_seed(0)
    torch.save(build_model("cnn_small", 4, 1).state_dict(), tmp_path / "t.pt")
    (tmp_path / "run.toml").write_text(RUN)
    args = ["train", "hinton", "--run", str(tmp_path / "run.toml"), "--epochs", "2"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--no-baseline"]
    assert main([*args, "--out", str(tmp_path / "a"), "--output-cache", "disk", "--fold-bn"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"output cache of `t` \(logits\): (\d+)/\1 rows, .* in `.*\.kdcache`", err)
    assert re.search(r"teacher `t`: [1-9]\d* batch norms folded into their convolutions", err)
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert "output cache" not in capsys.readouterr().err  # off unless asked for
