"""The command line's shared grammar: durations, process ids, the output-replacement rule, examples in help.

Every command builds its options from here, so that `-t 10ms`, `-d 2m`, `top 5` and `--hold 1.5` read the
same grammar (tdptrace.units: a bare number is seconds), `-p PID[,PID...]` means the same everywhere, and a
bad value is one line naming the option (exit 2) before any work starts. Range checks for the other numeric
options refuse NaN, infinities, negatives and absurd sizes the same way.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from tdptrace.errors import BadInput, TdpError
from tdptrace.units import GRAMMAR, fmt_duration, parse_duration

PID_MAX = 1 << 22  # /proc/sys/kernel/pid_max can be at most 2^22 on 64-bit
PID_METAVAR = "PID[,PID...]"
EXAMPLE_COLUMN = 44  # longest invocation whose comment goes on the same line
DURATION_HELP = f"DURATION: {GRAMMAR}"
PIDS_HELP = "A comma list, repeatable; 0 or none = all"

SECOND = 1_000_000_000
HOUR = 3600 * SECOND
DAY = 24 * HOUR
YEAR = 365 * DAY


def in_range(option: str, value: Optional[float], lo: float, hi: float, *, lo_open: bool = False,
             unit: str = "") -> None:
    """Raise BadInput unless lo <= value <= hi (lo < value with lo_open); None passes (option not given)."""
    if value is None:
        return
    ok = (lo < value if lo_open else lo <= value) and value <= hi  # False for NaN
    if not ok:
        low = f"above {_num(lo)}" if lo_open else f"from {_num(lo)}"
        raise BadInput(f"{option} {value} is out of range", f"give a number {low} to {_num(hi)}{unit}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# -- durations ------------------------------------------------------------------------------------------------

class DurationParser:
    """Text -> ns for one option, within [lo, hi] (lo excluded when above_zero); a failure is a usage error
    that click prefixes with the option's name. Marked so the option test finds every duration option."""

    kind = "duration"

    def __init__(self, lo: int = 0, hi: int = DAY, above_zero: bool = False) -> None:
        self.lo, self.hi, self.above_zero = lo, hi, above_zero

    def __call__(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value  # already converted (a default given in ns)
        try:
            ns = parse_duration(str(value))
        except TdpError as exc:
            raise typer.BadParameter(exc.line()) from None
        if self.above_zero and ns <= 0:
            raise typer.BadParameter(f"'{value}' must be above zero; give e.g. 10ms")
        if not (self.lo <= ns <= self.hi) or (self.above_zero and ns <= self.lo):
            low = f"above {fmt_duration(self.lo)}" if self.above_zero else f"from {fmt_duration(self.lo)}"
            raise typer.BadParameter(f"'{value}' is out of range; give a duration {low} to {fmt_duration(self.hi)}")
        return ns


def duration_option(*decls: str, help: str, lo: int = 0, hi: int = DAY, above_zero: bool = False,
                    hidden: bool = False) -> Any:
    """A DURATION option (the value reaches the command in ns)."""
    return typer.Option(*decls, metavar="DURATION", parser=DurationParser(lo, hi, above_zero), hidden=hidden,
                        help=f"{help} {DURATION_HELP}.")


def duration_argument(metavar: str, *, help: str, lo: int = 0, hi: int = DAY, above_zero: bool = False) -> Any:
    """A positional DURATION (e.g. top's INTERVAL), in ns."""
    return typer.Argument(metavar=metavar, parser=DurationParser(lo, hi, above_zero),
                          help=f"{help} {DURATION_HELP}.")


# -- process ids ----------------------------------------------------------------------------------------------

def parse_pids(value: Any) -> tuple[int, ...]:
    """'1234,5678' -> (1234, 5678); '0' -> () (all processes). Marked for the option test."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = str(value)
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() and p.isascii() for p in parts):
        raise typer.BadParameter(f"'{text}' is not a list of process ids; give {PID_METAVAR}, e.g. -p 1234,5678")
    pids = tuple(int(p) for p in parts)
    bad = [p for p in pids if p >= PID_MAX]
    if bad:
        raise typer.BadParameter(f"{bad[0]} is not a process id (pid_max is at most {PID_MAX})")
    if 0 in pids:
        if len(pids) > 1:
            raise typer.BadParameter(f"'{text}': 0 means every process; give it alone or leave -p out")
        return ()
    return pids


parse_pids.kind = "pids"  # type: ignore[attr-defined]


def _all_pids(value: Optional[Iterable[Any]]) -> list[int]:
    """The repeated -p values, flattened and without repeats; [] = every process."""
    out: list[int] = []
    for v in value or ():
        for p in (v if isinstance(v, tuple) else parse_pids(v)):
            if p not in out:
                out.append(p)
    return out


def pid_option(help: str) -> Any:
    """-p/--pid PID[,PID...], repeatable; the command gets a list of pids, empty meaning all."""
    return typer.Option("-p", "--pid", metavar=PID_METAVAR, parser=parse_pids, callback=_all_pids,
                        help=f"{help} {PIDS_HELP}.")


# -- outputs --------------------------------------------------------------------------------------------------

def refuse_existing(paths: Sequence[Path], force: bool, option: str = "-o") -> None:
    """The rule for every command that writes: an existing output is replaced only with --force."""
    if force:
        return
    for p in paths:
        if os.path.lexists(p):
            raise BadInput(f"{p} already exists", f"choose another {option} or pass --force to replace it")


def writer_json(wrote: Sequence[Path | str], **figures: Any) -> dict[str, Any]:
    """The --json object of a command that writes: what it wrote first, then its key figures."""
    return {"wrote": [str(p) for p in wrote], **figures}


def force_option(what: str = "the output at -o") -> Any:
    return typer.Option("--force", help=f"Replace {what} if it exists (refused without it).")


def json_option(what: str) -> Any:
    return typer.Option("--json", help=what)


# -- help -----------------------------------------------------------------------------------------------------

def examples(*lines: tuple[str, str]) -> str:
    """The 'Examples:' epilog of a command's help, one invocation and what it does per line, kept as written."""
    short = [len(cmd) for cmd, _ in lines if len(cmd) <= EXAMPLE_COLUMN]
    width = (max(short) if short else EXAMPLE_COLUMN) + 2
    out = []
    for cmd, what in lines:
        if not what:
            out.append(f"  {cmd}")
        elif len(cmd) <= EXAMPLE_COLUMN:
            out.append(f"  {cmd:<{width}}# {what}")
        else:  # a long invocation gets its comment on the next line, still in the comment column
            out.extend((f"  {cmd}", f"  {'':<{width}}# {what}"))
    return "\b\nExamples:\n" + "\n".join(out)


class _PlainHelpFlag:
    """-h/--help defaults to False, not None: typer then takes it for the bool it is instead of building a
    pydantic validator for it, which a group does for its own help flag on every `COMMAND --help`."""

    def get_help_option(self, ctx: Any) -> Any:
        opt = super().get_help_option(ctx)  # type: ignore[misc]
        if opt is not None and opt.default is None:
            opt.default = False
        return opt


class Group(_PlainHelpFlag, TyperGroup):
    """The root command and `lab`."""


class Command(_PlainHelpFlag, TyperCommand):
    """typer's command with two changes: a positional argument's help shows its metavar alone (not a Python
    type such as <float>), and the process-wide Arrow memory settings apply just before the command runs,
    so that `--help` never imports pyarrow."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            rv = param.get_help_record(ctx)
            if rv is None:
                continue
            if param.param_type_name == "argument":
                args.append((param.metavar or param.name.upper(), rv[1]))
            else:
                opts.append(rv)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """'[OPTIONS] CAPTURE [INTERVAL] [COUNT]': required positionals bare, optional ones in brackets."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name != "argument":
                continue
            name = p.metavar or p.name.upper()
            if p.nargs != 1 and not name.endswith("..."):
                name += "..."
            pieces.append(name if p.required else f"[{name}]")
        return pieces

    def invoke(self, ctx: Any) -> Any:
        from tdptrace import arrowmem

        arrowmem.configure()
        return super().invoke(ctx)


def command(app: typer.Typer, name: str, short: str, *example_lines: tuple[str, str], **settings: Any) -> Callable:
    """app.command(name) with this command class, `short` as its line in the command list, and an Examples
    section."""
    return app.command(name, cls=Command, short_help=short, epilog=examples(*example_lines) if example_lines else None,
                       **settings)
