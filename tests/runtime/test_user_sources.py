"""The user's own code through a run file: datasets (`import:`, ImageFolder), teachers that
bring their weights, and a teacher cache that follows the code behind an `import:` model."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from kdspec.api import load_method
from kdspec.cli.main import main
from kdspec.diagnostics import KdError
from kdspec.runtime import parse_run
from kdspec.runtime.data import build_data
from kdspec.runtime.job import JobOptions, prepare

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

DATA_MODULE = '''
import torch
from torch.utils.data import Dataset

CALLS = []


def _make(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    x[:, 0, 0, :] += torch.nn.functional.one_hot(y, 8).float() * 3  # learnable
    return x, y


class Blobs(Dataset):
    """A user's Dataset class with a `split` argument: items are plain (x, y) pairs."""

    def __init__(self, split, n=48, root=None):
        CALLS.append((split, n, root))
        self.x, self.y = _make(n, {"train": 0, "val": 1, "test": 2}[split])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def train_and_test(n=60):
    return Blobs("train", n), Blobs("test", n // 2)


def one(n=90):
    return Blobs("train", n)


def as_dict():
    return {"train": Blobs("train"), "test": Blobs("test")}


def not_data():
    return 42


class NoVal(Blobs):
    def __init__(self, split):
        if split == "val":
            raise KeyError("no validation split here")
        super().__init__(split)


def float_labels():
    return torch.utils.data.TensorDataset(torch.randn(10, 1, 8, 8), torch.rand(10))
'''


def _unique(tmp_path: Path, stem: str) -> str:
    return f"{stem}_{abs(hash(str(tmp_path))) % 10**8}"


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The current folder is a fresh user project; no permission from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KDSPEC_ALLOW_IMPORT", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    names: list[str] = []

    def write(stem: str, text: str) -> str:
        name = _unique(tmp_path, stem)
        (tmp_path / f"{name}.py").write_text(text)
        sys.modules.pop(name, None)
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def _run(text: str, tmp_path: Path):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return parse_run(text, str(path), base_dir=tmp_path)


# -- import: data sources -----------------------------------------------------------------------


def test_a_users_dataset_class_trains_through_a_run_file(user, tmp_path, capsys) -> None:
    mod = user("mydata", DATA_MODULE)
    (tmp_path / "run.toml").write_text(
        f'[data]\nsource = "import:{mod}:Blobs"\noptions = {{ n = 36 }}\nbatch_size = 12\n'
        'num_workers = 1\n[models]\nt = "zoo:cnn_tiny"\ns = "zoo:cnn_tiny"\n'
        "[train]\nepochs = 2\n[teacher]\nepochs = 2\n"
    )
    args = ["train", "hinton", "--run", "run.toml", "--out", "out", "--quiet"]
    args += ["--cache-dir", "cache", "--baseline"]
    assert main(args) == 1  # not allowed: the run file cannot allow it, the user must
    assert "error[KD406]" in capsys.readouterr().err
    assert main([*args, "--allow-import", mod]) == 0
    out = capsys.readouterr().out
    assert "s alone" in out and "s distilled (hinton)" in out
    assert [c[0] for c in sys.modules[mod].CALLS] == ["train", "val", "test"]
    assert {c[1] for c in sys.modules[mod].CALLS} == {36}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["data"] == {
        "source": f"import:{mod}:Blobs",
        "num_classes": 3,
        "train": 36,
        "transfer": 36,
        "val": 36,
        "test": 36,
        "exclude_classes": [],
    }


@pytest.mark.parametrize(
    ("factory", "sizes"),
    [
        ("train_and_test", (51, 9, 30)),  # val cut from train (15%, per class)
        ("one", (57, 15, 18)),  # val and test cut from one dataset
        ("as_dict", (42, 6, 48)),
    ],
)
def test_data_factories_return_any_group_of_splits(user, tmp_path, factory, sizes) -> None:
    mod = user("data", DATA_MODULE)
    run = _run(f'[data]\nsource = "import:{mod}:{factory}"\n', tmp_path)
    data = build_data(run, [mod])
    got = tuple(len(d) for d in (data.splits.train, data.splits.val, data.splits.test))
    assert got == sizes
    x, y, i = data.splits.train[0]
    assert x.shape == (1, 8, 8) and i == 0 and 0 <= int(y) < 3
    assert data.num_classes == 3 and data.in_channels == 1
    assert data.fingerprint["code"][mod]  # the data's code is part of teacher-cache keys


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("not_data", "returned int"),
        ("float_labels", "integer class indices"),
        ("NoVal", "raised KeyError: 'no validation split here'"),
    ],
)
def test_unusable_user_data_is_kd502(user, tmp_path, factory, message) -> None:
    mod = user("bad", DATA_MODULE)
    run = _run(f'[data]\nsource = "import:{mod}:{factory}"\n', tmp_path)
    with pytest.raises(KdError) as info:
        build_data(run, [mod])
    (diag,) = info.value.diagnostics
    assert diag.code == "KD502" and message in diag.message
    assert diag.source.line_col(diag.span.start)[0] == 2


def test_data_sources_share_the_import_permission(user, tmp_path) -> None:
    mod = user("perm", DATA_MODULE)
    run = _run(f'[data]\nsource = "import:{mod}:Blobs"\n', tmp_path)
    with pytest.raises(KdError) as info:
        build_data(run)
    assert info.value.diagnostics[0].code == "KD406"
    assert "--allow-import" in (info.value.diagnostics[0].help or "")
    run = _run('[data]\nsource = "import:os:listdir"\n', tmp_path)
    with pytest.raises(KdError) as info:
        build_data(run, ["os"])
    assert "not a data factory" in info.value.diagnostics[0].message


def test_source_specific_data_keys_are_rejected_elsewhere(tmp_path) -> None:
    for key, value in (("options", "{ n = 3 }"), ("image_size", "32")):
        run = _run(f'[data]\nsource = "digits"\n{key} = {value}\n', tmp_path)
        with pytest.raises(KdError) as info:
            build_data(run)
        (diag,) = info.value.diagnostics
        assert diag.code == "KD502" and f"`[data] {key}` is only used" in diag.message
        assert diag.source.line_col(diag.span.start)[0] == 3


# -- torchvision:ImageFolder --------------------------------------------------------------------


def test_image_folder_without_torchvision_is_a_clean_kd502(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails, as when absent
    (tmp_path / "imgs").mkdir()
    run = _run('[data]\nsource = "torchvision:ImageFolder"\nroot = "imgs"\n', tmp_path)
    with pytest.raises(KdError) as info:
        build_data(run)
    (diag,) = info.value.diagnostics
    assert diag.code == "KD502" and "pip install torchvision" in diag.message


def _fake_torchvision() -> types.ModuleType:
    """Enough of torchvision for ImageFolder: class folders of tensors saved with torch.save."""

    class ImageFolder:
        def __init__(self, root, transform=None):
            folder = Path(root)
            self.classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
            if not self.classes:
                raise FileNotFoundError(f"Couldn't find any class folder in {root}.")
            self.samples = [
                (f, c)
                for c, name in enumerate(self.classes)
                for f in sorted((folder / name).iterdir())
            ]
            self.targets = [c for _, c in self.samples]
            self.transform = transform

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            path, c = self.samples[i]
            x = torch.load(path)
            return (self.transform(x) if self.transform else x), c

    def _compose(fs):
        def apply(x):
            for f in fs:
                x = f(x)
            return x

        return apply

    tv = types.ModuleType("torchvision")
    tv.datasets = types.SimpleNamespace(ImageFolder=ImageFolder)
    names = ["Resize", "ToTensor", "Normalize", "RandomHorizontalFlip", "RandomCrop"]
    tv.transforms = types.SimpleNamespace(
        **{n: (lambda *a, **k: lambda x: x) for n in names}, Compose=_compose
    )
    return tv


def test_image_folder_layouts(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", _fake_torchvision())
    for split, n in (("train", 10), ("test", 4)):
        for c in ("cat", "dog"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for k in range(n):
                torch.save(torch.rand(3, 4, 4), tmp_path / "imgs" / split / c / f"{k}.pt")
    run = _run(
        '[data]\nsource = "torchvision:ImageFolder"\nroot = "imgs"\nimage_size = 4\n', tmp_path
    )
    data = build_data(run)
    assert data.num_classes == 2 and data.splits.input_shape == (3, 4, 4)
    assert (len(data.splits.train), len(data.splits.val), len(data.splits.test)) == (16, 4, 8)
    assert len(data.fingerprint["files"]) == 64
    # A val folder whose classes differ is refused.
    (tmp_path / "imgs" / "val" / "bird").mkdir(parents=True)
    torch.save(torch.rand(3, 4, 4), tmp_path / "imgs" / "val" / "bird" / "0.pt")
    with pytest.raises(KdError) as info:
        build_data(run)
    assert "classes" in info.value.diagnostics[0].message


# -- teachers: the cache follows the code; sources that bring weights are used as is --------------

TEACHER = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=4, in_channels=1):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * 64, 32)
        self.act = {act}
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))


def trained(num_classes=4, in_channels=1):
    torch.manual_seed(123)
    net = Net(num_classes, in_channels)
    with torch.no_grad():
        net.fc2.bias.fill_(0.5)
    return net
"""

TINY = """
[data]
source = "synthetic"
n = 160
num_classes = 4
input_shape = [1, 8, 8]
batch_size = 16
[models]
t = "import:{mod}:{factory}"
s = "zoo:cnn_tiny"
[teacher]
epochs = 3
{extra}
"""


def _prepare(tmp_path: Path, mod: str, factory: str = "Net", extra: str = ""):
    run = _run(TINY.format(mod=mod, factory=factory, extra=extra), tmp_path)
    logs: list[str] = []
    opts = JobOptions(cache_dir=tmp_path / "cache", allow_import=(mod,), log=logs.append)
    return prepare(load_method("hinton"), run, opts), logs


def test_the_teacher_cache_key_covers_the_code_of_an_import_model(user, tmp_path) -> None:
    mod = user("teacher", TEACHER.format(act="nn.ReLU()"))
    first, _ = _prepare(tmp_path, mod)
    assert first.teachers["t"]["reused"] is False
    again, logs = _prepare(tmp_path, mod)
    assert again.teachers["t"]["reused"] is True
    assert any("re-evaluated" in m for m in logs)
    # Same parameter shapes, other code: the cached weights are not this model's.
    sys.modules.pop(mod)
    (tmp_path / f"{mod}.py").write_text(TEACHER.format(act="nn.Sigmoid()"))
    changed, _ = _prepare(tmp_path, mod)
    assert changed.teachers["t"]["reused"] is False
    assert changed.teachers["t"]["cache"] != first.teachers["t"]["cache"]


def test_a_cached_teacher_that_no_longer_scores_its_record_is_retrained(user, tmp_path) -> None:
    mod = user("recheck", TEACHER.format(act="nn.ReLU()"))
    first, _ = _prepare(tmp_path, mod)
    sidecar = Path(first.teachers["t"]["cache"]) / "teacher.json"
    meta = json.loads(sidecar.read_text())
    recorded = meta["metrics"]["test_top1"]
    assert recorded == pytest.approx(first.teachers["t"]["test_top1"])
    meta["metrics"]["test_top1"] = recorded + 30 if recorded < 60 else recorded - 30
    sidecar.write_text(json.dumps(meta))
    again, logs = _prepare(tmp_path, mod)
    assert again.teachers["t"]["reused"] is False
    assert any("re-evaluated, its test top-1 is" in m and "retraining" in m for m in logs)


def test_a_teacher_whose_source_brings_weights_is_used_as_is(user, tmp_path) -> None:
    mod = user("pretrained", TEACHER.format(act="nn.ReLU()"))
    extra = "pretrain = false\n[pretrained]\nt = true\n"
    prep, logs = _prepare(tmp_path, mod, "trained", extra)
    assert torch.all(prep.models["t"].fc2.bias == 0.5)  # the factory's weights, untouched
    assert prep.teachers["t"]["pretrained"] == "from the source"
    assert not (tmp_path / "cache").exists()
    assert any("used as is, not pre-trained" in m for m in logs)
    # Without the key the same factory is assumed fresh: pretraining off is then KD407.
    with pytest.raises(KdError) as info:
        _prepare(tmp_path, mod, "trained", "pretrain = false\n")
    assert info.value.diagnostics[0].code == "KD407"


def test_pretrained_cannot_be_claimed_for_freshly_initialised_sources(tmp_path) -> None:
    run = _run(
        '[models]\nt = "zoo:cnn_small"\ns = "zoo:cnn_tiny"\n[pretrained]\nt = true\n', tmp_path
    )
    with pytest.raises(KdError) as info:
        prepare(load_method("hinton"), run, JobOptions(cache_dir=tmp_path / "c", log=print))
    (diag,) = info.value.diagnostics
    assert diag.code == "KD501" and "freshly initialised" in diag.message
    assert diag.source.line_col(diag.span.start)[0] == 5


def test_an_hf_folder_with_weights_is_not_pretrained_again(user, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    tokens = user(
        "tokens",
        "import torch\nfrom torch.utils.data import TensorDataset\n\n\n"
        "def make():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randint(0, 40, (60, 9), generator=g)\n"
        "    return TensorDataset(x, x[:, 0] % 3)\n",
    )
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "t")
    cfg.save_pretrained(tmp_path / "s")
    run = _run(
        f'[data]\nsource = "import:{tokens}:make"\nbatch_size = 8\n'
        '[models]\nt = "hf:t"\ns = "hf:s"\n[teacher]\npretrain = false\n',
        tmp_path,
    )
    logs: list[str] = []
    opts = JobOptions(cache_dir=tmp_path / "cache", allow_import=(tokens,), log=logs.append)
    prep = prepare(load_method("hinton"), run, opts)
    saved = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "t")
    for a, b in zip(prep.models["t"].parameters(), saved.parameters(), strict=True):
        assert torch.equal(a, b)
    assert prep.teachers["t"]["pretrained"] == "from the source"
    assert not (tmp_path / "cache").exists()


def test_a_role_table_key_that_names_no_role_is_an_error(capsys, tmp_path) -> None:
    """`[weights] teacher` for a role `t` would leave the checkpoint unused."""
    path = tmp_path / "r.toml"
    path.write_text(
        '[models]\nt = "zoo:cnn_small"\ns = "zoo:cnn_tiny"\n[weights]\nteacher = "t.pt"\n'
    )
    assert main(["train", "hinton", "--run", str(path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "error[KD501]: `[weights] teacher`: hinton has no role `teacher`" in err
    assert "r.toml:5:1" in err and "roles that take a model: `s`, `t`" in err
    # compare accepts a key when any compared method has the role.
    from kdspec.runtime.job import check_role_keys

    run = _run('[models]\nt = "zoo:cnn_small"\nt1 = "zoo:mlp"\ns = "zoo:cnn_tiny"\n', tmp_path)
    both = [load_method("hinton").method, load_method("multi_teacher").method]
    check_role_keys(run, both)
    with pytest.raises(KdError) as info:
        check_role_keys(run, both[:1])
    assert [d.message for d in info.value.diagnostics] == ["`[models] t1`: hinton has no role `t1`"]


def test_a_code_version_the_user_passes_is_part_of_the_teacher_key(user, tmp_path) -> None:
    mod = user("version", TEACHER.format(act="nn.ReLU()"))
    first, _ = _prepare(tmp_path, mod)
    same, _ = _prepare(tmp_path, mod)
    bumped, _ = _prepare(tmp_path, mod, extra='code_version = "2"\n')
    assert same.teachers["t"]["cache"] == first.teachers["t"]["cache"]
    assert bumped.teachers["t"]["reused"] is False
    assert bumped.teachers["t"]["cache"] != first.teachers["t"]["cache"]
