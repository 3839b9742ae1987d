"""Fuzz kdspec's front end: specs, run files and ``--param`` values.

Every case runs in a worker process under a memory limit and a time limit; a case that raises
anything but a diagnostic is an *internal error*, one that runs past the time limit a *hang*.

Cases come from four generators, mixed by a seed (the same seed gives the same cases):

- ``grammar``: random sentences of ``grammar/kdspec.lark`` (hypothesis' lark strategy);
- ``mutate``: token-level mutations and splices of every library spec (delete, duplicate,
  swap, replace a number by an extreme one, wrap an expression in deep nesting, splice two
  specs, inject bytes: NUL, invalid UTF-8, a BOM);
- ``patho``: the pathological files of issue 13 (deep nesting, overflowing numbers, long names,
  NUL in import paths, `/dev/zero` and FIFO imports, thousands of terms with claims);
- ``run``: run files (valid ones mutated, deep arrays, odd types and sizes) and ``param``:
  ``--param`` values, each checked against a library spec.

Usage::

    python scripts/fuzz.py --cases 2000 --seed 1          # what CI runs (a sample)
    python scripts/fuzz.py --cases 200000 --seed 9 --jobs 2  # the same cases on two workers
    nice python scripts/fuzz.py --cases 200000 --seed 7   # a long run
    python scripts/fuzz.py --cases 200000 --keep-slow slow/  # keep the slow inputs ...
    python scripts/fuzz.py --replay slow/                   # ... and rerun them, fresh

It prints cases run, internal errors (grouped by signature, with a shortest input for each),
hangs, the slowest cases (with the command that was slow) and the workers' peak memory, and
exits 1 if any internal error or hang was found. Workers live for the whole run (restarted
only after a hang, a death or running out of memory), as `kdspec lsp` does: state a process
gathers shows up as memory and as slow cases that `--replay` finds fast in a fresh worker.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import multiprocessing as mp
import multiprocessing.connection
import os
import random
import resource
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.kd"))
RUNS = sorted((ROOT / "runs").glob("*.toml")) + sorted((ROOT / "tests/golden/run").glob("*.toml"))

MEMORY_LIMIT = 2 * 1024**3  # bytes of address space per worker
PREPARE_SHARE = 0.1  # run files whose job is also prepared (models built): the slow part
TIME_LIMIT = 10.0  # CPU seconds per case before it is called a hang
SLOW_LIMIT = 2.0  # CPU seconds of one command (check, fmt, graph, ...; a run file's prepare)
PLANT_CRASH = "KDSPEC_FUZZ_PLANT_CRASH"  # set: workers replace the checker by a crash (self-test)
WALL_LIMIT = 120.0  # wall seconds (catches a case blocked without using CPU)


@dataclass
class Case:
    kind: str  # "spec", "run" or "param"
    origin: str  # which generator made it
    data: bytes  # the file (spec or run file), or the --param value
    spec: str = ""  # for "run" and "param": the library spec it is checked with
    prepare: bool | None = None  # for "run": prepare its job (None: drawn from the data)


# -- generators ----------------------------------------------------------------------------

EXTREME_NUMBERS = [
    "0", "1", "1e400", "1e308", "1e-9", "1e-400", "99999999999999999999999999", "0.0",
    "1000000000", "1e9", "2^2^2^2^2^2", "10^400", "0^-1", "(0-8)^0.5", "1/0", "1e308*10",
]  # fmt: skip
EXTREME_NAMES = ["a" * 300, "x" * 5000, "_", "method", "teacher", "nan", "inf", "__class__"]
INJECT = ["\0", "\udcff", "\ufeff", "\r", "\t", "\f", "\u2028", "é", '"', "\\", "#", "\n" * 3]


def _library() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in SPECS]


def _tokens(text: str) -> list[tuple[int, int, str]]:
    """(start, end, type) of the tokens of a spec (with lark's lexer; errors end the list)."""
    from kdspec.syntax.grammar import parser

    lark, comments = parser()
    out = []
    with contextlib.suppress(Exception):
        for tok in lark.lex(text):
            out.append((tok.start_pos, tok.end_pos, tok.type))
    comments.clear()
    return out


def _nest(rng: random.Random, inner: str) -> str:
    depth = rng.choice([2, 10, 50, 51, 99, 100, 101, 150, 245, 490, 1000, 5000])
    shape = rng.choice(["neg", "list", "call", "paren", "pow", "idx"])
    if shape == "neg":
        return "- " * depth + inner
    if shape == "list":
        return "[" * depth + inner + "]" * depth
    if shape == "call":
        return "one(" * depth + inner + ")" * depth
    if shape == "paren":
        return "(" * depth + inner + ")" * depth
    if shape == "pow":
        return "^".join([inner] * depth)
    return inner + "[1]" * depth


def _cached_tokens(cache: dict[int, list], i: int, text: str) -> list:
    if i not in cache:  # not setdefault: that would lex on every call
        cache[i] = _tokens(text)
    return cache[i]


def mutate(rng: random.Random, texts: list[str], token_cache: dict[int, list]) -> str:
    """One to four token-level edits of a library spec (or a splice of two).

    Edits are applied from the last token to the first, so the token positions of the
    original stay valid (no re-lexing between edits).
    """
    i = rng.randrange(len(texts))
    text = texts[i]
    toks = _cached_tokens(token_cache, i, text)
    if not toks:
        return text
    picked = sorted({rng.randrange(len(toks)) for _ in range(rng.randint(1, 4))}, reverse=True)
    for k in picked:
        a, b, kind = toks[k]
        op = rng.randrange(9)
        if op == 0:  # delete a token
            text = text[:a] + text[b:]
        elif op == 1:  # duplicate a token
            text = text[:b] + " " + text[a:b] + text[b:]
        elif op == 2:  # replace by a token of another spec
            j = rng.randrange(len(texts))
            other = _cached_tokens(token_cache, j, texts[j])
            if other:
                c, d, _ = other[rng.randrange(len(other))]
                text = text[:a] + texts[j][c:d] + text[b:]
        elif op == 3:  # an extreme number
            if kind == "NUMBER" or rng.random() < 0.3:
                text = text[:a] + rng.choice(EXTREME_NUMBERS) + text[b:]
        elif op == 4:  # an extreme name
            if kind == "NAME":
                text = text[:a] + rng.choice(EXTREME_NAMES) + text[b:]
        elif op == 5:  # deep nesting around a token
            text = text[:a] + _nest(rng, text[a:b]) + text[b:]
        elif op == 6:  # splice: this spec's head, another spec's tail
            j = rng.randrange(len(texts))
            cut = rng.randrange(len(texts[j]) + 1)
            text = text[:a] + texts[j][cut:]
        elif op == 7:  # odd characters
            text = text[:a] + rng.choice(INJECT) + text[a:]
        else:  # a statement of another spec, repeated
            j = rng.randrange(len(texts))
            lines = [ln for ln in texts[j].splitlines() if ln.strip().startswith(STATEMENTS)]
            if lines:
                line = rng.choice(lines)
                text = text[:b] + "\n" + (line + "\n") * rng.choice([1, 2, 20]) + text[b:]
    return text


STATEMENTS = ("transfer", "let", "param", "stage", "use", "claim", "view", "subset", "teacher")


def _grammar_cases(seed: int) -> Iterator[str]:
    """Sentences of the grammar, from hypothesis' lark strategy (seeded, no database)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st
    from hypothesis.extra.lark import from_lark
    from lark import Lark

    from kdspec.syntax.grammar import grammar_text

    grammar = Lark(grammar_text(), parser="lalr", start="start")
    explicit = {
        "NAME": st.sampled_from(["t", "s", "kd", "T", "logits", "softmax", "kl", "a" * 40]),
        "NUMBER": st.sampled_from([*EXTREME_NUMBERS[:9], "4", "0.5", "2"]),
        "STRING": st.sampled_from(['"layer1"', '"x.kd"', '"\\""', '""', '"' + "a" * 300 + '"']),
    }
    strategy = from_lark(grammar, explicit=explicit)
    out: list[str] = []

    @hseed(seed)
    @settings(
        max_examples=500,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def collect(data: st.DataObject) -> None:
        out.append(data.draw(strategy))

    while True:
        out.clear()
        with contextlib.suppress(Exception):
            collect()
        yield from out
        seed += 1
        collect = hseed(seed)(collect)  # type: ignore[assignment]


def pathological() -> list[tuple[str, bytes]]:
    """The hostile files of issue 13, each as (name, bytes)."""
    m = "method m {{\n  teacher t\n  student s\n{body}\n}}\n"
    kd = "  transfer softmax(T=4) from t.logits to s.logits with kl"
    out: list[tuple[str, str | bytes]] = []
    for n in (99, 100, 101, 245, 490, 1000, 20000):
        out.append((f"neg{n}", m.format(body=f"  param p = {'- ' * n}1\n{kd}")))
        out.append((f"list{n}", m.format(body=f"  param p = {'[' * n}1{']' * n}\n{kd}")))
        out.append((f"call{n}", m.format(body=f"{kd} weight {'one(' * n}1{')' * n}")))
        out.append((f"paren{n}", m.format(body=f"{kd} weight {'(' * n}1{')' * n}")))
        out.append((f"pow{n}", m.format(body=f"  param p = {'^'.join(['2'] * n)}\n{kd}")))
    for expr in ["1e400", "2^2^2^2^2^2", "one(1e308)", "1e308*10", "-1e400", "0^-1", "1/0"]:
        out.append((f"num {expr}", m.format(body=f"{kd} weight {expr}")))
        out.append((f"T {expr}", m.format(body=kd.replace("T=4", f"T={expr}"))))
        out.append(
            (f"repeat {expr}", m.format(body=f"{kd}\n  stage a repeat {expr} {{ train s }}"))
        )
        out.append(
            (f"for {expr}", m.format(body=f"{kd}\n  stage a for {expr} epochs {{ train s }}"))
        )
    out.append(("long use", m.format(body=f"{kd}\n  use {'a' * 300}")))
    out.append(("long use 2", m.format(body=f"{kd}\n  use {'a' * 5000}(T=1)")))
    out.append(("long dotted use", m.format(body=f"{kd}\n  use {'.'.join(['a' * 200] * 30)}")))
    for path in ["\0x.kd", "a\0b", "/dev/zero", "/proc/self/environ", "../" * 40 + "etc/passwd",
                 "a" * 5000, "/", ".", "", "fifo.kd", "/dev/stdin", "x/../../y.kd"]:  # fmt: skip
        out.append((f"import {path[:20]!r}", f'import "{path}"\n' + m.format(body=kd)))
    out.append(("bom", "\ufeff" + m.format(body=kd)))
    out.append(("latin1", m.format(body=kd + "  # caf\xe9").encode("latin-1")))
    out.append(("bad utf8", b"method m { teacher t student s # \xff\xfe\n}"))
    out.append(("nul", m.format(body=kd + "\0")))
    many = "\n".join(
        f"  transfer k{i}: softmax(T=4) from t.logits to s.logits with kl" for i in range(1500)
    )
    out.append(("claims+1500 terms", m.format(body=f"{many}\n  claim transfer = offline")))
    out.append(
        (
            "2000 params",
            m.format(body="\n".join(f"  param p{i} = {i}" for i in range(2000)) + "\n" + kd),
        )
    )
    out.append(
        (
            "2000 lets",
            m.format(body="\n".join(f"  let l{i} = t.logits" for i in range(2000)) + "\n" + kd),
        )
    )
    negs = "- " * 90
    chain = [m.format(body=f"  param p = 1\n{kd} weight p").replace("method m", "method m0")]
    chain += [
        f"method m{i} {{\n teacher t\n student s\n param p = 1\n use m{i - 1}(p = {negs}p)\n}}\n"
        for i in range(1, 15)
    ]
    out.append(("use chain of deep expressions", "".join(reversed(chain))))
    out.append(("empty", ""))
    out.append(("only bom", "\ufeff"))
    return [(n, t if isinstance(t, bytes) else t.encode("utf-8", "surrogatepass")) for n, t in out]


def run_files(rng: random.Random, templates: list[str]) -> str:
    """A run file: a mutated real one, or a hostile one."""
    choice = rng.randrange(6)
    if choice == 0:
        depth = rng.choice([10, 100, 500, 1000, 3000])
        return f"[data]\nseed = {'[' * depth}1{']' * depth}\n"
    if choice == 1:
        depth = rng.choice([10, 100, 500, 1000, 3000])
        return "[params]\n" + "a = " + "{x = " * depth + "1" + "}" * depth + "\n"
    if choice == 2:
        key = rng.choice(
            ["[data]\nn", "[data]\nnum_classes", "[data]\nbatch_size", "[train]\nepochs",
             "[train]\nlr", "[data]\ninput_shape", "[teacher]\nepochs", "[data]\nval_fraction",
             "[data]\nexclude_classes", "[models]\ns", "[params]\nT", "[train]\nseed"]
        )  # fmt: skip
        value = rng.choice(
            ["1e9", "1000000000", "-1", "0", "nan", "inf", "-inf", "1e400", '"x"', "[1e6, 1e6]",
             "[]", "{}", "true", "99999999999999999999", '"' + "a" * 5000 + '"',
             "[0,1,2,3,4,5,6,7,8,9]",
             '"import:os:system"', '"hf:/etc"', '"zoo:' + "a" * 300 + '"', "1979-05-27"]
        )  # fmt: skip
        return f"{key} = {value}\n"
    text = rng.choice(templates)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(text) + 1)
        op = rng.randrange(4)
        if op == 0:
            text = text[:i] + text[i + rng.randint(1, 10) :]
        elif op == 1:
            noise = [*list("[]{}=\",.\n#'"), "1e400", "nan", "\x00"]
            text = text[:i] + rng.choice(noise) + text[i:]
        elif op == 2:
            j = rng.randrange(len(text) + 1)
            text = text[:i] + text[min(i, j) : max(i, j)] + text[i:]
        else:
            lines = text.splitlines(keepends=True)
            rng.shuffle(lines)
            text = "".join(lines)
    return text


PARAM_VALUES = [
    "1e400", "nan", "inf", "-inf", "1e-9", "0", "-1", "2^2^2^2^2^2", "[[[[1]]]]",
    "[" * 500 + "]" * 500, '"x"', "t.logits", "", "=", "1 2", "(((", "a" * 300, "- " * 600 + "1",
    "\0", "1e308*10", "one(1)",
    "softmax(T=1e400)", "99999999999999999999999", "0x10", "1_000", "True", "None",
]  # fmt: skip


def generate(seed: int) -> Iterator[Case]:
    """An endless, seeded stream of cases from every generator."""
    rng = random.Random(seed)
    texts = _library()
    token_cache: dict[int, list] = {}
    param_tokens: dict[int, list] = {}  # lexing is the generator's main cost: once per text
    templates = [p.read_text(encoding="utf-8") for p in RUNS]
    patho = pathological()
    grammar = _grammar_cases(seed)
    for name, data in patho:  # the hostile files always run first
        yield Case("spec", f"patho:{name}", data)
    while True:
        r = rng.random()
        if r < 0.55:
            yield Case(
                "spec", "mutate", mutate(rng, texts, token_cache).encode("utf-8", "surrogatepass")
            )
        elif r < 0.70:
            yield Case("spec", "grammar", next(grammar).encode("utf-8", "surrogatepass"))
        elif r < 0.85:
            yield Case(
                "run", "run", run_files(rng, templates).encode("utf-8", "surrogatepass"), "hinton"
            )
        else:
            spec = rng.choice(["hinton", "fitnets", "at", "dkd", "crd", "rkd"])
            value = (
                rng.choice(PARAM_VALUES)
                if rng.random() < 0.7
                else mutate(rng, PARAM_VALUES, param_tokens)
            )
            name = rng.choice(["T", "alpha", "weight", "beta", "x", "a" * 300])
            yield Case("param", "param", f"{name}={value}".encode("utf-8", "surrogatepass"), spec)


# -- running one case ----------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    from kdspec.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _command(argv[0]):
        code = main(argv)
    if code not in (0, 1, 2) or "internal error" in err.getvalue():  # 2: a usage error
        raise RuntimeError(f"exit {code}: {err.getvalue()[-300:]}")
    return code


COMMANDS = [["graph", "--format", "dot"], ["graph", "--format", "mermaid"], ["taxonomy", "--why"],
            ["identify"], ["ir"], ["explain"], ["diff", "hinton"]]  # fmt: skip


def run_case(case: Case, folder: Path, prepare_runs: bool, sample_commands: bool = True) -> None:
    """Run one case through every command that reads it; raise on an internal error."""
    if case.kind == "spec":
        path = folder / "fuzz.kd"
        path.write_bytes(case.data)
        formatted = _check_spec(path)
        if formatted is not None:  # a clean spec also goes through the commands that read one
            pick = random.Random(case.data)
            for argv in pick.sample(COMMANDS, k=1 if sample_commands else len(COMMANDS)):
                _cli([*argv, str(path)])
            if _check_text(formatted) is None:
                raise RuntimeError("`fmt` turned a clean spec into one with errors")
    elif case.kind == "run":
        path = folder / "fuzz.toml"
        path.write_bytes(case.data)
        with _command("run file"):
            _run_file(path, case.spec, prepare_runs)
    else:
        spec = str(ROOT / "specs" / f"{case.spec}.kd")
        _cli(["check", "--param", case.data.decode("utf-8", "surrogateescape"), spec])


def _check_spec(path: Path) -> str | None:
    """What `kdspec check` (both formats) and `kdspec fmt --check` do, without the CLI's
    start-up cost; the formatted text if the spec has no errors, else None."""
    from kdspec.api import read_source
    from kdspec.diagnostics import Diagnostic, render_many

    source = read_source(path)
    if isinstance(source, Diagnostic):
        render_many([source], "full")
        return None
    return _check_text(source.text, source.name)


def _check_text(text: str, name: str = "fuzz.kd") -> str | None:
    from kdspec.api import check_source
    from kdspec.diagnostics import Severity, render_many
    from kdspec.source import SourceFile
    from kdspec.syntax import try_parse
    from kdspec.syntax.fmt import format_module

    source = SourceFile(name, text)
    with _command("check"):
        _, diags = check_source(source)
        render_many(diags, "full")
        render_many(diags, "json")
    with _command("fmt"):
        module, _ = try_parse(source)
        formatted = format_module(module, source.text) if module is not None else None
    return None if any(d.severity is Severity.ERROR for d in diags) else formatted


_LONGEST: list[Any] = [0.0, ""]  # CPU seconds and name of the current case's slowest command


@contextlib.contextmanager
def _command(name: str) -> Iterator[None]:
    start = time.process_time()
    try:
        yield
    finally:
        spent = time.process_time() - start
        if spent > _LONGEST[0]:
            _LONGEST[:] = [spent, name]


def _run_file(path: Path, spec: str, prepare_runs: bool) -> None:
    """Read a run file and prepare its job without training (models built, data loaded)."""
    from kdspec.api import load_method
    from kdspec.diagnostics import KdError
    from kdspec.runtime.job import JobOptions, prepare
    from kdspec.runtime.runfile import load_run

    try:
        run = load_run(path)
        low = load_method(spec, overrides=dict(run.config.params))
        if prepare_runs:  # data and models built; teachers never trained (KD407 instead)
            teacher = run.config.teacher.model_copy(update={"pretrain": False})
            config = run.config.model_copy(update={"teacher": teacher})
            prepare(low, dataclasses.replace(run, config=config), JobOptions(log=lambda m: None))
    except KdError:
        pass


# -- worker and driver ---------------------------------------------------------------------


def _worker(conn: mp.connection.Connection) -> None:  # type: ignore[name-defined]
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.environ["KDSPEC_DEBUG"] = "1"  # internal errors raise instead of printing
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from kdspec.cli import main as cli_main

    cli_main.build_parser = functools.cache(cli_main.build_parser)  # argparse set-up once
    if os.environ.get(PLANT_CRASH):  # the harness's own test: every check crashes
        import kdspec.api

        def planted(*args: object, **kwargs: object) -> None:
            raise ZeroDivisionError("planted")

        kdspec.api.check_source = planted  # type: ignore[assignment]
    folder = Path(tempfile.mkdtemp(prefix="kdspec-fuzz-"))
    os.mkfifo(folder / "fifo.kd")
    _warm_up(folder)
    conn.send("ready")
    age = 0  # cases this worker ran before the current one
    while True:
        case = conn.recv()
        if case is None:
            return
        t0, c0 = time.perf_counter(), time.process_time()
        _LONGEST[:] = [0.0, ""]
        prepare = case.prepare
        if prepare is None:
            prepare = random.Random(case.data).random() < PREPARE_SHARE
        try:
            run_case(case, folder, prepare_runs=prepare)
            result = None
        except MemoryError:
            result = ("MemoryError", f"out of memory (limit {MEMORY_LIMIT >> 20} MiB)")
        except BaseException as exc:
            tb = traceback.extract_tb(exc.__traceback__)
            frame = next(
                (f for f in reversed(tb) if "/kdspec/" in f.filename), tb[-1] if tb else None
            )
            where = f"{Path(frame.filename).name}:{frame.lineno}" if frame else "?"
            result = (f"{type(exc).__name__} at {where}", f"{type(exc).__name__}: {exc}"[:300])
        cpu = time.process_time() - c0
        conn.send(Done(result, time.perf_counter() - t0, cpu, *_LONGEST, age, prepare, _rss_mib()))
        age += 1


@dataclass
class Done:
    """What a worker says about a case it ran."""

    result: tuple[str, str] | None  # (signature, message) of an internal error, else None
    wall: float  # seconds of the whole case
    cpu: float  # CPU seconds of the whole case
    command_cpu: float  # CPU seconds of its slowest command
    command: str  # which command that was
    age: int  # cases the worker had run before this one
    prepare: bool | None  # a run file's job was prepared (None: unknown, drawn from the data)
    rss: int  # the worker's resident memory after it, in MiB


def _rss_mib() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") >> 20
    except (OSError, IndexError, ValueError):
        return 0


def _warm_up(folder: Path) -> None:
    """Run a library spec through every command and prepare every template run file, so
    that no case pays for a worker's first imports (torch, the text data): one-time start-up
    costs, the same for any input (up to 2 CPU s for the first language-model job)."""
    spec = Case("spec", "warm-up", (ROOT / "specs" / "hinton.kd").read_bytes())
    with contextlib.suppress(Exception):
        run_case(spec, folder, prepare_runs=False, sample_commands=False)
    for path in RUNS:
        with contextlib.suppress(Exception):
            run_case(Case("run", "warm-up", path.read_bytes(), "hinton"), folder, True)


def _cpu_seconds(pid: int | None) -> float:
    """CPU time used so far by a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class _Worker:
    """One worker process and the case it is running (None: idle)."""

    proc: mp.Process
    conn: Any
    case: Case | None = None
    cpu0: float = 0.0
    wall0: float = 0.0
    retried: bool = False  # running a case again after a MemoryError

    def send(self, case: Case) -> None:
        self.case, self.cpu0, self.wall0 = case, _cpu_seconds(self.proc.pid), time.perf_counter()
        self.conn.send(case)

    def over_limit(self) -> bool:
        """A hang: the case used TIME_LIMIT seconds of CPU, or WALL_LIMIT seconds of wall time
        (a blocked read uses no CPU). CPU time is the measure because a loaded machine
        stretches wall time many-fold."""
        return (
            _cpu_seconds(self.proc.pid) - self.cpu0 > TIME_LIMIT
            or time.perf_counter() - self.wall0 > WALL_LIMIT
        )


@dataclass
class Report:
    cases: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    examples: dict[str, Case] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    hangs: list[Case] = field(default_factory=list)
    slowest: list[tuple[float, float, Case, str]] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)
    slow: int = 0  # inputs under 100 KB whose slowest command took over SLOW_LIMIT CPU s
    rss: int = 0  # the most resident memory a worker had after a case, in MiB
    oldest: int = 0  # the most cases one worker ran (workers restart only after a hang or death)

    def add_done(self, case: Case, done: Done, keep: Path | None) -> None:
        """Count a case's times and memory; keep a slow input (with its command) in ``keep``."""
        self.rss, self.oldest = max(self.rss, done.rss), max(self.oldest, done.age + 1)
        if done.command_cpu > SLOW_LIMIT and len(case.data) < 100_000:
            self.slow += 1
            if keep is not None:
                _keep(keep, f"slow-{self.slow:04d}", case, done)
        self.slowest.append((done.command_cpu, done.cpu, case, done.command))
        self.slowest = sorted(self.slowest, key=lambda x: -x[0])[:5]

    def add_error(self, sig: str, message: str, case: Case) -> None:
        self.errors[sig] += 1
        old = self.examples.get(sig)
        if old is None or len(case.data) < len(old.data):
            self.examples[sig] = case
            self.messages[sig] = message

    def print(self, elapsed: float, out: Callable[[str], None] = print) -> None:
        out(
            f"cases run: {self.cases} ("
            + ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items()))
            + f") in {elapsed:.0f} s"
        )
        out(f"internal errors: {sum(self.errors.values())} in {len(self.errors)} signatures")
        for sig, n in self.errors.most_common():
            case = self.examples[sig]
            out(f"  {n:6d}  {sig}: {self.messages[sig]}")
            out(
                f"          shortest input ({case.kind}, {case.origin}, {len(case.data)} bytes): "
                f"{case.data[:200]!r}"
            )
        out(f"hangs (over {TIME_LIMIT:g} CPU s or {WALL_LIMIT:g} s): {len(self.hangs)}")
        for case in self.hangs[:5]:
            out(f"          {case.kind} {case.origin} {len(case.data)} bytes: {case.data[:200]!r}")
        out(f"inputs under 100 KB with a command over {SLOW_LIMIT:g} CPU s: {self.slow}")
        out("slowest (CPU s of its slowest command, CPU s of the whole case, bytes, origin):")
        for spent, cpu, case, command in sorted(self.slowest, key=lambda x: -x[0])[:5]:
            out(
                f"  {spent:7.2f} {cpu:7.2f} {len(case.data):8d}  {case.kind} {case.origin}"
                f" ({command})"
            )
        out(f"worker memory: at most {self.rss} MiB resident; oldest worker: {self.oldest} cases")


def _keep(folder: Path, name: str, case: Case, done: Done) -> None:
    """Write a case (its input and what it was run as) to ``folder`` to replay it."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.input").write_bytes(case.data)
    meta = {"kind": case.kind, "origin": case.origin, "spec": case.spec, "prepare": done.prepare}
    meta.update(dataclasses.asdict(done))
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def _kept(folder: Path) -> Iterator[tuple[str, Case, dict[str, Any]]]:
    import json

    for meta_file in sorted(folder.glob("*.json")):
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        data = meta_file.with_suffix(".input").read_bytes()
        case = Case(meta["kind"], meta["origin"], data, meta["spec"], meta.get("prepare"))
        yield meta_file.stem, case, meta


def _start_worker() -> _Worker:
    # Spawned, not forked: a forked child inherits the parent's thread pools (OpenMP) with
    # their locks possibly held, and can deadlock in its first tensor operation.
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(child,), daemon=True)
    proc.start()
    if parent.poll(WALL_LIMIT):  # warmed up: its first case's time is its own
        with contextlib.suppress(EOFError):
            parent.recv()
    return _Worker(proc, parent)


def replay(folder: Path, out: Callable[[str], None] = print) -> list[tuple[str, Done | None]]:
    """Run every case kept in ``folder`` again, each in a fresh worker (warmed up, as every
    worker is): a case slow only in a long-lived worker points at state the worker gathered,
    not at the input."""
    results: list[tuple[str, Done | None]] = []
    out("case: CPU s of the slowest command when kept (worker age, memory) -> in a fresh worker")
    for name, case, meta in _kept(folder):
        w = _start_worker()
        try:
            w.send(case)
            done = w.conn.recv() if w.conn.poll(WALL_LIMIT) else None
        except EOFError:
            done = None
        finally:
            with contextlib.suppress(Exception):
                w.conn.send(None)
            w.proc.join(timeout=5)
            if w.proc.is_alive():
                w.proc.kill()
        results.append((name, done))
        was = f"{meta['command_cpu']:.2f} ({meta['command']}; age {meta['age']}, {meta['rss']} MiB)"
        now = "no answer" if done is None else f"{done.command_cpu:.2f} ({done.command})"
        out(f"{name}: {case.kind} {case.origin} {len(case.data)} bytes: {was} -> {now}")
    return results


def fuzz(
    cases: int, seed: int, progress_every: int = 0, jobs: int = 1, keep: Path | None = None
) -> Report:
    """Run the first ``cases`` cases of the seeded stream on ``jobs`` workers; slow inputs
    are written to ``keep`` (when given) to be replayed."""
    report = Report()
    start = _start_worker

    def restart(w: _Worker) -> _Worker:
        w.proc.kill()
        w.proc.join()
        return start()

    stream = generate(seed)
    workers = [start() for _ in range(max(1, jobs))]
    t0 = time.perf_counter()
    sent = 0
    try:
        while True:
            for w in workers:
                if w.case is None and sent < cases:
                    case = next(stream)
                    sent += 1
                    report.by_kind[case.kind] += 1
                    w.send(case)
            busy = [w for w in workers if w.case is not None]
            if not busy:
                break
            ready = mp.connection.wait([w.conn for w in busy], timeout=0.5)
            for i, w in enumerate(workers):
                if w.case is None:
                    continue
                case = w.case
                if w.conn not in ready:
                    if w.over_limit():
                        report.cases += 1
                        report.hangs.append(case)
                        if keep is not None:
                            hang = Done(None, time.perf_counter() - w.wall0, TIME_LIMIT, TIME_LIMIT,
                                        "hang", -1, case.prepare, 0)  # fmt: skip
                            _keep(keep, f"hang-{len(report.hangs):04d}", case, hang)
                        workers[i] = restart(w)
                    continue
                report.cases += 1
                try:
                    done: Done = w.conn.recv()
                except EOFError:  # the worker died (memory limit, a crash in C code)
                    report.add_error("worker died", f"exit code {w.proc.exitcode}", case)
                    workers[i] = restart(w)
                    continue
                w.case = None
                if done.result is not None and done.result[0] == "MemoryError" and not w.retried:
                    # Memory a long-lived worker gathered (caches) or this input's own? The
                    # case runs again once in a fresh worker; only a second failure counts.
                    report.cases -= 1
                    workers[i] = restart(w)
                    workers[i].retried = True
                    workers[i].send(case)
                    continue
                workers[i].retried = False
                if done.result is not None:
                    report.add_error(done.result[0], done.result[1], case)
                report.add_done(case, done, keep)
                if progress_every and report.cases % progress_every == 0:
                    report.print(time.perf_counter() - t0)
                    sys.stdout.flush()
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                w.conn.send(None)
        for w in workers:
            w.proc.join(timeout=5)
            if w.proc.is_alive():
                w.proc.kill()
    report.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--progress", type=int, default=0, help="print a report every N cases")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (the same cases)")
    ap.add_argument(
        "--keep-slow",
        type=Path,
        metavar="DIR",
        help="write each slow input (and the command that was slow) and each hang to DIR",
    )
    ap.add_argument(
        "--replay", type=Path, metavar="DIR", help="run the inputs kept in DIR in fresh workers"
    )
    args = ap.parse_args(argv)
    if args.replay is not None:
        replay(args.replay)
        return 0
    report = fuzz(args.cases, args.seed, args.progress, args.jobs, args.keep_slow)
    report.print(report.elapsed)  # type: ignore[attr-defined]
    return 1 if report.errors or report.hangs else 0


if __name__ == "__main__":
    sys.exit(main())
