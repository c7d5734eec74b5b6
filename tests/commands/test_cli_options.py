"""Every option of every command, fed invalid values: exit non-zero, exactly one line on stderr, no traceback.

Commands and options are enumerated from the typer app itself, so a new option is covered the day it is added.
Each command runs from a valid base invocation with one option replaced. Work a command would start once its
options are accepted (recording, BPF, VMs, the lab, package installs) is replaced by a sentinel: reaching it
with an invalid value is a failure ("accepted"). Values by type: numbers that are not numbers, negative, NaN,
infinite or absurdly large; paths below a directory that does not exist; strings with a newline and control
characters, which must come back escaped on one line.
"""
from __future__ import annotations

import typing
from pathlib import Path

import pytest
import typer
from tracegen import Trace, leaf4k, nonleaf

from tdptrace.cli import app, main

NO_DIR = "/nonexistent-tdptrace-dir/sub/x"
BAD_TEXT = "bogus\n\x01value;$(id)`id`"
VALUES: dict[type, list[str]] = {
    int: ["x", "-1", "1" + "0" * 30],
    float: ["x", "-1", "nan", "inf"],
    str: [BAD_TEXT],
    Path: [NO_DIR],
}

# Options whose every value of a kind is legitimately accepted, with the reason (kept small on purpose).
ACCEPTS: dict[tuple[str, str, str], str] = {
    ("top", "--comm", BAD_TEXT): "any regular expression, this one included",
    ("lab run", "--chroot-cmd", BAD_TEXT): "a shell command run inside the lab guest, by design",
    ("lab run", "--out", NO_DIR): "the run directory is created with its parents, like mkdir -p",
    ("triage", "--top", "1" + "0" * 30): "more rows than there are: all of them are shown",
}


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
    return {"trace": trace, "cap": d / "c.tdp", "dir": d}


def base_args(cmd: str, f: dict[str, Path], out: Path) -> list[str]:
    """A valid invocation of `cmd` (output under `out`)."""
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
        "compare": ["compare", cap, cap],
        "simulate": ["simulate", "-o", str(out / "s.tdp"), "--size", "64M"],
        "calibrate": ["calibrate", cap, "-o", str(out / "cal.json")],
        "top": ["top", "--once", "--json", "1"],  # the positional INTERVAL last (POSITIONALS replaces it)
        "serve": ["serve", "--listen", "127.0.0.1:19465"],
        "lab run": ["lab", "run", "--kernel", "6.1", "--mib", "64"],
        "lab kernels": ["lab", "kernels"],
        "lab probes": ["lab", "probes", "--kernel", "6.1"],
        "lab rootfs": ["lab", "rootfs", "--kernel", "6.1"],
    }[cmd]


def _unwrap(annotation):
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _commands():
    """(command path, option name, value) for every valued option of every command of the app."""
    root = typer.main.get_command(app)
    out = []

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
            return
        positional = 0
        for p in cmd.params:
            kind = _unwrap(p.type_descriptor.annotation)
            if p.param_type_name == "argument":
                if kind in (int, float):  # numeric positionals: replaced by position (POSITIONALS below)
                    out.extend((" ".join(path), (positional,), v) for v in VALUES[kind])
                positional += 1
                continue
            if getattr(p, "is_flag", False) or p.name in ("help",):
                continue
            opt = max(p.opts, key=len)
            for v in VALUES.get(kind, []):
                out.append((" ".join(path), tuple(p.opts), v))
    walk(root, [])
    return out


CASES = _commands()


def test_every_command_is_enumerated():
    """The walk sees every registered command (a new command needs a base invocation above)."""
    names = {c for c, _, _ in CASES}
    assert {"record", "import", "triage", "simulate", "top", "serve", "lab run"} <= names
    for c in names:
        base_args(c, {"trace": Path("t"), "cap": Path("c"), "dir": Path("d")}, Path("o"))  # KeyError if missing
    assert {c for c, o, _ in CASES if isinstance(o[0], int)} <= set(POSITIONALS)


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


# Commands with numeric positional arguments: the valid positionals their base invocation ends with.
POSITIONALS: dict[str, list[str]] = {"top": ["1", "1"]}


def _replace(args: list[str], opts: tuple, value: str) -> list[str]:
    """The base invocation with this option's value replaced (whichever spelling it uses) or added; an int
    in place of the spellings is the index of a positional argument (see POSITIONALS)."""
    if isinstance(opts[0], int):
        cmd = args[0]
        pos = list(POSITIONALS[cmd])
        pos[opts[0]] = value
        return args[:-1] + ["--"] + pos if cmd == "top" else args + ["--"] + pos
    for i, a in enumerate(args):
        if a in opts:
            return args[:i + 1] + [value] + args[i + 2:]
    return args + [max(opts, key=len), value]


def _name(opts: tuple) -> str:
    return f"arg{opts[0]}" if isinstance(opts[0], int) else max(opts, key=len)


@pytest.mark.parametrize("cmd,opts,value", CASES, ids=[f"{c}-{_name(o)}-{v!r}"[:60] for c, o, v in CASES])
def test_invalid_option_value(cmd, opts, value, files, tmp_path, capsys, no_real_work):
    args = _replace(base_args(cmd, files, tmp_path), opts, value)
    opt = _name(opts)
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
