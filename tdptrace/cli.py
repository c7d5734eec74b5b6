"""The `tdptrace` command line: a thin typer app; each command group lives in tdptrace/commands/.

Importing this module stays cheap (typer and the command modules only: every heavy import happens inside the
command that needs it), so `tdptrace --help` and `tdptrace COMMAND --help` answer at once; help is plain
click text (rich's help renderer alone costs more than typer). Command modules keep their annotations
evaluated (no `from __future__ import annotations`): typer reads every command's signature to build the app,
and evaluating string annotations was most of the time `--help` took.
"""
from __future__ import annotations

import importlib
import sys

import typer

from tdptrace import __version__
from tdptrace.commands import Command, Group
from tdptrace.errors import TdpError, one_line

app = typer.Typer(
    name="tdptrace",
    help="Watch the KVM x86 TDP MMU: zap levels, mmu_lock hold time between yields, retained page tables.\n\n"
         "Durations everywhere read 500us, 10ms, 2s, 1m, 1h (a bare number is seconds); -p takes "
         "PID[,PID...]; commands that write refuse to replace an output without --force; --json prints "
         "the result as one JSON object. 'tdptrace COMMAND -h' shows a command's options and examples.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

# Each module in tdptrace/commands/ exposes register(app). Order = order in --help.
COMMAND_MODULES = [
    "record", "exercise", "doctor", "importing", "summary", "triage", "plot", "report", "export", "compare",
    "simulate", "calibrate", "top", "serve", "lab",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tdptrace {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """tdptrace: KVM TDP MMU zap tracing."""


def _register_all() -> None:
    for name in COMMAND_MODULES:
        modname = f"tdptrace.commands.{name}"
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:  # command not built in this version
                continue
            raise
        module.register(app)
    _use_command_class(app)


def _use_command_class(t: typer.Typer) -> None:
    """Every command, also one registered without them, gets tdptrace.options' Command and Group classes."""
    for info in t.registered_commands:
        if info.cls is None:
            info.cls = Command
    for group in t.registered_groups:
        if group.typer_instance is not None:
            if group.typer_instance.info.cls is None:
                group.typer_instance.info.cls = Group
            _use_command_class(group.typer_instance)


_register_all()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app and turns TdpError into one line on stderr and an exit status."""
    from tdptrace.textsafe import installed

    with installed():  # whatever a command prints, no control character from its data reaches the terminal
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    try:
        rc = app(args=argv, prog_name="tdptrace", standalone_mode=False)
    except TdpError as exc:
        print(f"tdptrace: error: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("tdptrace: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("tdptrace: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # usage errors (click's ClickException, vendored by recent typer)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `tdptrace` or `tdptrace lab` alone: the help, exit 2
            print(exc.format_message(), file=sys.stderr)
            return 2
        if callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int):
            ctx = getattr(exc, "ctx", None)
            where = f"; see '{ctx.command_path} -h'" if ctx is not None else ""
            print(f"tdptrace: error: {one_line(exc.format_message()).rstrip('.')}{where}", file=sys.stderr)
            return exc.exit_code
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
