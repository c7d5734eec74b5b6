"""Every option of every command, enumerated from the typer app itself, so a new option is covered the day it is
added: invalid values exit non-zero with exactly one line on stderr and no traceback; every duration reads the
one grammar (500us, 10ms, 2s, 1m, 1h; a bare number is seconds) and every -p the one PID[,PID...] grammar;
metavars, examples, --force and --json are the same everywhere.

Each command runs from a valid base invocation with one option replaced. Work a command would start once its
options are accepted (recording, BPF, VMs, the lab, package installs) is replaced by a sentinel: reaching it
with an invalid value is a failure ("accepted"). Values by type: numbers that are not numbers, negative, NaN,
infinite or absurdly large; paths below a directory that does not exist; strings with a newline and control
characters, which must come back escaped on one line. Accepted values are checked by parsing alone (click's
make_context converts every option without running the command).
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import typing
from pathlib import Path

import pytest
import typer
from tracegen import Trace, leaf4k, nonleaf

from tdptrace.cli import app, main
from tdptrace.options import PID_MAX, DurationParser, parse_pids

NO_DIR = "/nonexistent-tdptrace-dir/sub/x"
BAD_TEXT = "bogus\n\x01value;$(id)`id`"
VALUES: dict[type, list[str]] = {
    int: ["x", "-1", "1" + "0" * 30],
    float: ["x", "-1", "nan", "inf"],
    str: [BAD_TEXT],
    Path: [NO_DIR],
}
# The duration grammar: every form, and what it must read as (ns).
DURATIONS = {"500us": 500_000, "10ms": 10_000_000, "2s": 2_000_000_000, "1m": 60_000_000_000,
             "1h": 3_600_000_000_000, "2": 2_000_000_000, "0.002": 2_000_000, "1.5s": 1_500_000_000}
NOT_DURATIONS = ["5x", "10 sec", "-1s", "nan", "inf", "1e3", "", "10ms;id", "1m30s", "ms"]
NOT_PIDS = ["x", "1,,2", "-1", "1;id", "0,5", str(PID_MAX), "", " ", "1.5", "0x10", "１２"]

# Options whose every value of a kind is legitimately accepted, with the reason (kept small on purpose).
ACCEPTS: dict[tuple[str, str, str], str] = {
    ("top", "--comm", BAD_TEXT): "any regular expression, this one included",
    ("lab run", "--chroot-cmd", BAD_TEXT): "a shell command run inside the lab guest, by design",
    ("lab run", "--out", NO_DIR): "the run directory is created with its parents, like mkdir -p",
    ("triage", "--top", "1" + "0" * 30): "more rows than there are: all of them are shown",
}
# Commands that print no result, so have no --json, with the reason.
NO_JSON = {"serve": "a server: its output is the /metrics page, not a result"}


class Accepted(Exception):
    """The command got past option checking and started its real work."""


def _sentinel(*_a, **_k):
    raise Accepted()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("opts")
    trace = d / "t.txt"
    trace.write_text(Trace().get_page(0, 1).spte(0, 2, 0, nonleaf(5)).spte(1, 1, 0, leaf4k(1))
                     .enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x200 can_yield=1 flush=0")
                     .spte(1, 1, leaf4k(1), 0).yield_().ret("tdp_mmu_zap_leafs", args="ret=1").text())
    assert main(["import", str(trace), "-o", str(d / "c.tdp"), "--kernel", "6.1.0", "-q"]) == 0
    assert main(["simulate", "-o", str(d / "sim.tdp"), "--size", "128M", "--workload", "kvmtouch", "--sptes",
                 "yes"]) == 0  # enough zap spans with SPTE events for calibrate
    return {"trace": trace, "cap": d / "c.tdp", "sim": d / "sim.tdp", "dir": d}


def base_args(cmd: str, f: dict[str, Path], out: Path) -> list[str]:
    """A valid invocation of `cmd` (output under `out`); numeric positionals come from POSITIONALS."""
    cap = str(f["cap"])
    return {
        "record": ["record", "-q", "-d", "1s", "-o", str(out / "r.tdp")],
        "exercise": ["exercise", "--mib", "4"],
        "doctor": ["doctor", "--json"],
        "import": ["import", str(f["trace"]), "-o", str(out / "i.tdp"), "-q"],
        "summary": ["summary", cap],
        "triage": ["triage", cap],
        "plot": ["plot", cap, "-o", str(out / "figs")],
        "report": ["report", cap, "-o", str(out / "r.html")],
        "export": ["export", cap, "-o", str(out / "t.perfetto-trace")],
        "compare": ["compare", cap, cap],
        "simulate": ["simulate", "-o", str(out / "s.tdp"), "--size", "64M"],
        "calibrate": ["calibrate", cap, "-o", str(out / "cal.json")],
        "top": ["top", "--once", "--json"],
        "serve": ["serve", "--listen", "127.0.0.1:19465"],
        "lab run": ["lab", "run", "--kernel", "6.1", "--mib", "64"],
        "lab kernels": ["lab", "kernels"],
        "lab probes": ["lab", "probes", "--kernel", "6.1"],
        "lab rootfs": ["lab", "rootfs", "--kernel", "6.1"],
    }[cmd]


# Commands with numeric (or duration) positional arguments: the valid values their invocation ends with.
POSITIONALS: dict[str, list[str]] = {"top": ["1", "1"], "serve": ["1"]}


def _unwrap(annotation):
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _kind(p) -> object:
    """'duration', 'pids', or the Python type the value is read as."""
    parser = p.type_descriptor.parameter_info.parser
    if isinstance(parser, DurationParser):
        return "duration"
    if parser is parse_pids:
        return "pids"
    return _unwrap(p.type_descriptor.annotation)


def _walk():
    """(command path, click command) for every leaf command of the app."""
    out = []

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
            return
        out.append((" ".join(path), cmd))
    walk(typer.main.get_command(app), [])
    return out


COMMANDS = _walk()


def _params():
    """(command path, click command, param, where) for every param; `where` is the option spellings, or the
    index of a numeric positional."""
    out = []
    for path, cmd in COMMANDS:
        positional = 0
        for p in cmd.params:
            if p.param_type_name == "argument":
                if _kind(p) in (int, float, "duration"):
                    out.append((path, cmd, p, (positional,)))
                positional += 1
            elif not getattr(p, "is_flag", False) and p.name != "help":
                out.append((path, cmd, p, tuple(p.opts)))
    return out


PARAMS = _params()
CASES = [(c, w, v) for c, _, p, w in PARAMS if _kind(p) not in ("duration", "pids") for v in VALUES.get(_kind(p), [])]
DURATION_PARAMS = [(c, cmd, p, w) for c, cmd, p, w in PARAMS if _kind(p) == "duration"]
PID_PARAMS = [(c, cmd, p, w) for c, cmd, p, w in PARAMS if _kind(p) == "pids"]


def test_every_command_is_enumerated():
    """The walk sees every registered command (a new command needs a base invocation above)."""
    names = {c for c, _ in COMMANDS}
    assert {"record", "import", "triage", "simulate", "top", "serve", "lab run"} <= names
    for c in names:
        base_args(c, {"trace": Path("t"), "cap": Path("c"), "dir": Path("d")}, Path("o"))  # KeyError if missing
    assert {c for c, _, _, w in PARAMS if isinstance(w[0], int)} <= set(POSITIONALS)
    # the grammar tests below have something to test
    assert {c for c, *_ in DURATION_PARAMS} >= {"record", "triage", "plot", "report", "compare", "top", "serve",
                                               "exercise", "simulate", "lab run"}
    assert {c for c, *_ in PID_PARAMS} == {"record", "top", "serve"}


@pytest.fixture
def no_real_work(monkeypatch):
    import tdptrace.lab.exercise
    import tdptrace.lab.host
    import tdptrace.lab.run
    import tdptrace.live.bcc_recorder
    import tdptrace.live.stats

    monkeypatch.setattr(tdptrace.live.bcc_recorder, "compile_program", _sentinel)
    monkeypatch.setattr(tdptrace.live.stats, "StatsReader", _sentinel)
    monkeypatch.setattr(tdptrace.lab.exercise, "run_exercise", _sentinel)
    monkeypatch.setattr(tdptrace.lab.run, "run", _sentinel)
    monkeypatch.setattr(tdptrace.lab.host, "ensure_host_packages", _sentinel)


def _replace(cmd: str, args: list[str], where: tuple, value: str) -> list[str]:
    """The base invocation (plus its positionals) with this option's value replaced (whichever spelling it uses)
    or added; an int in place of the spellings is the index of a positional argument."""
    pos = list(POSITIONALS.get(cmd, []))
    if isinstance(where[0], int):
        pos[where[0]] = value
    else:
        for i, a in enumerate(args):
            if a in where:
                args = args[:i + 1] + [value] + args[i + 2:]
                break
        else:
            args = args + [max(where, key=len), value]
    return args + (["--"] + pos if pos else [])


def _name(where: tuple) -> str:
    return f"arg{where[0]}" if isinstance(where[0], int) else max(where, key=len)


def _refused_in_one_line(args: list[str], capsys) -> str:
    """Run the command line; it must fail with one line on stderr and no traceback. Returns that line."""
    capsys.readouterr()
    try:
        rc = main(args)
    except Accepted:
        pytest.fail(f"`tdptrace {shlex.join(args)}` was accepted and started working")
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc != 0, f"`tdptrace {shlex.join(args)}` exited 0"
    assert "Traceback" not in "\n".join(err)
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("cmd,where,value", CASES, ids=[f"{c}-{_name(w)}-{v!r}"[:60] for c, w, v in CASES])
def test_invalid_option_value(cmd, where, value, files, tmp_path, capsys, no_real_work):
    args = _replace(cmd, base_args(cmd, files, tmp_path), where, value)
    opt = _name(where)
    capsys.readouterr()
    try:
        rc = main(args)
    except Accepted:
        if (cmd, opt, value) in ACCEPTS:
            return
        pytest.fail(f"`tdptrace {' '.join(args)!r}` accepted {opt} {value!r} and started working")
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    if (cmd, opt, value) in ACCEPTS and rc == 0:
        return
    assert rc != 0, f"{cmd} {opt} {value!r} exited 0"
    assert "Traceback" not in "\n".join(err)
    assert len(err) == 1, err


# -- durations ------------------------------------------------------------------------------------------------

def _parse(cmd: str, click_cmd, args: list[str]) -> dict:
    """The values a command line gives the command, converted but not run (no side effects)."""
    return click_cmd.make_context(cmd, args).params


@pytest.mark.parametrize("cmd,click_cmd,p,where", DURATION_PARAMS,
                         ids=[f"{c}-{_name(w)}" for c, _, _, w in DURATION_PARAMS])
def test_every_duration_reads_the_one_grammar(cmd, click_cmd, p, where, files, tmp_path, capsys, no_real_work):
    """500us, 10ms, 2s, 1m, 1h and bare seconds give the same ns for every duration option (refused in one
    line, 'out of range', where the option's own bounds exclude them); garbage is refused in one line, exit 2,
    naming the option."""
    parser: DurationParser = p.type_descriptor.parameter_info.parser
    base = base_args(cmd, files, tmp_path)[len(cmd.split()):]
    assert p.metavar in ("DURATION", "INTERVAL"), p.metavar
    assert "DURATION: 500us, 10ms, 2s, 1m, 1h; a bare number is seconds" in (p.help or "")
    for text, ns in DURATIONS.items():
        fits = (parser.lo < ns if parser.above_zero else parser.lo <= ns) and ns <= parser.hi
        args = _replace(cmd, base, where, text)
        if fits:
            assert _parse(cmd, click_cmd, args)[p.name] == ns, (cmd, _name(where), text)
        else:
            line = _refused_in_one_line(cmd.split() + args, capsys)
            assert "out of range" in line, line
    for text in NOT_DURATIONS:
        capsys.readouterr()
        rc = main(cmd.split() + _replace(cmd, base, where, text))
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (text, err)
        assert "is not a duration" in err or "too long" in err, (text, err)
        label = p.metavar if isinstance(where[0], int) else where[0]
        assert label in err, err


def test_duration_options_are_all_there_is():
    """No option takes a time in another way: nothing typed as a plain number talks of seconds or ms."""
    timeish = re.compile(r"\b(seconds?|ms|milliseconds?|microseconds?|minutes?|hours?)\b|-us\b|-seconds\b|-hours\b",
                         re.I)
    for cmd, _, p, where in PARAMS:
        if _kind(p) in (int, float):
            text = f"{' '.join(p.opts)} {p.metavar or ''} {p.help or ''}"
            assert not timeish.search(text), f"{cmd} {_name(where)} looks like a duration but is not one: {text}"


# -- process ids ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd,click_cmd,p,where", PID_PARAMS, ids=[c for c, *_ in PID_PARAMS])
def test_every_pid_option_reads_the_one_grammar(cmd, click_cmd, p, where, files, tmp_path, capsys, no_real_work):
    """-p PID, -p PID,PID, -p repeated, -p 0 (= all) and no -p mean the same everywhere; bad pids are refused in
    one line, exit 2, naming -p."""
    assert set(p.opts) == {"-p", "--pid"} and p.metavar == "PID[,PID...]"
    base = base_args(cmd, files, tmp_path)[len(cmd.split()):] + (["--"] + POSITIONALS[cmd] if cmd in POSITIONALS
                                                                 else [])
    for given, want in (([], []), (["-p", "4242"], [4242]), (["-p", "4242,4343"], [4242, 4343]),
                        (["-p", "4242", "--pid", "4343,17"], [4242, 4343, 17]), (["-p", "0"], []),
                        (["-p", "4242,4242"], [4242]), (["-p", str(PID_MAX - 1)], [PID_MAX - 1])):
        assert list(_parse(cmd, click_cmd, given + base)[p.name]) == want, given
    for text in NOT_PIDS:
        capsys.readouterr()
        rc = main(cmd.split() + ["-p", text] + base)
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (text, err)
        assert "'-p' / '--pid'" in err and ("process id" in err or "every process" in err), err


def test_every_process_filter_is_the_pid_option():
    for cmd, _, p, where in PARAMS:
        if "pid" in p.name or "-p" in where:
            assert _kind(p) == "pids", f"{cmd} {_name(where)} filters processes without the PID[,PID...] grammar"


# -- help, outputs, --json ------------------------------------------------------------------------------------

def test_metavars_name_what_is_given_and_no_python_types_show():
    for cmd, click_cmd in COMMANDS:
        for p in click_cmd.params:
            if getattr(p, "is_flag", False) or p.name == "help" or getattr(p, "hidden", False):
                continue
            assert p.metavar and re.fullmatch(r"[A-Z][A-Z0-9_:\[\],.]*", p.metavar), (cmd, p.name, p.metavar)
        text = click_cmd.get_help(click_cmd.make_context(cmd, ["--help"], resilient_parsing=True))
        assert not re.search(r"<\w[\w\[\], |]*>", text), (cmd, re.findall(r"<[^>]+>", text))
    for opt, what in (("-o", ("CAPTURE", "FILE", "DIR")),):
        for cmd, _, p, where in PARAMS:
            if opt in where:
                assert p.metavar in what, (cmd, p.metavar)


def _examples(click_cmd) -> list[str]:
    epilog = click_cmd.epilog or ""
    assert "Examples:" in epilog
    return [ln.split("  #")[0].strip() for ln in epilog.split("Examples:", 1)[1].splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


@pytest.mark.parametrize("cmd,click_cmd", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_every_command_has_examples_that_parse(cmd, click_cmd):
    """One or two (or three) real invocations in every command's help, each valid for the app as it is."""
    examples = _examples(click_cmd)
    assert 1 <= len(examples) <= 3, examples
    assert any(f"tdptrace {cmd}" in e for e in examples), examples
    root = typer.main.get_command(app)
    for e in examples:
        words = shlex.split(e.split(" | ")[0])
        words = words[words.index("tdptrace") + 1:]
        target, name = root, "tdptrace"
        while hasattr(target, "commands"):
            name = words.pop(0)
            target = target.commands[name]
        target.make_context(name, words)  # raises on an unknown option or a bad value


def test_every_writer_takes_force_and_every_result_json():
    for cmd, click_cmd in COMMANDS:
        opts = {o for p in click_cmd.params for o in p.opts}
        if "-o" in opts and cmd not in ("record",) or cmd == "record":
            assert "--force" in opts, f"{cmd} writes -o but has no --force"
        if cmd not in NO_JSON:
            assert "--json" in opts, f"{cmd} prints a result but has no --json"
        else:
            assert "--json" not in opts and "--json" in click_cmd.help, NO_JSON[cmd]


WRITERS = {
    "import": lambda f, o: ["import", str(f["trace"]), "-o", str(o), "-q"],
    "simulate": lambda f, o: ["simulate", "-o", str(o), "--size", "64M"],
    "plot": lambda f, o: ["plot", str(f["cap"]), "-o", str(o)],
    "report": lambda f, o: ["report", str(f["cap"]), "-o", str(o)],
    "compare": lambda f, o: ["compare", str(f["cap"]), str(f["cap"]), "-o", str(o)],
    "calibrate": lambda f, o: ["calibrate", str(f["sim"]), "-o", str(o)],
    "record": lambda f, o: ["record", "-q", "-d", "1s", "-o", str(o)],
    "lab run": lambda f, o: ["lab", "run", "-o", str(o)],
}


@pytest.mark.parametrize("cmd", sorted(WRITERS))
def test_writers_refuse_to_replace_without_force(cmd, files, tmp_path, capsys, no_real_work):
    """The second run into the same output is refused in one line naming --force; with --force it goes ahead
    (for record and lab run: up to the sentinel standing in for the recording or the VM)."""
    out = tmp_path / "out"
    args = WRITERS[cmd](files, out)
    if cmd == "record":
        shutil.copytree(files["cap"], out)  # an earlier capture (--force replaces captures only)
    elif cmd == "lab run":
        out.mkdir()
        (out / "trace.txt").write_text("an earlier run\n")
    else:
        capsys.readouterr()
        assert main(args + ["--json"]) == 0, capsys.readouterr().err
        wrote = json.loads(capsys.readouterr().out)["wrote"]
        assert wrote and all(Path(w).exists() for w in wrote), wrote
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) if out.is_dir() else out.stat()
    line = _refused_in_one_line(args, capsys)
    assert "--force" in line and ("already exists" in line or "already holds" in line), line
    after = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) if out.is_dir() else out.stat()
    assert before == after, "the refused run touched the earlier output"
    try:
        assert main(args + ["--force"]) == 0
    except Accepted:
        assert cmd in ("record", "lab run")
